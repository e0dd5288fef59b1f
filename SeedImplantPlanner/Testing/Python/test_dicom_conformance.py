"""DICOM RT export checked by an independent validator and by what other tools expect.

dicom3tools' dciodvfy on every exported object (no errors, no warnings); the 32-bit RT Dose, on
which dciodvfy 2022 aborts, as a 16-bit copy plus pydicom checks; axis-aligned grids written in
the head-first-supine order tools expect; needles as Source Applicators of the per-seed channels.
"""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.dicom import export, rtimport, rtplan_read
from test_dicomrt import DicomCase, make_case, oblique

DCIODVFY = shutil.which("dciodvfy")
NO_DCIODVFY = ("dciodvfy (Debian package dicom3tools, installed by ./run.sh setup) is not on PATH: "
               "apt-get install dicom3tools")
#: dciodvfy warnings accepted because the standard leaves the choice to the writer (docs/dicom.md lists
#: each with its reason). None remain: every object validates without warnings.
ACCEPTED_WARNINGS = ()


def dciodvfy(path):
    """(errors, warnings): the lines dicom3tools' IOD validator prints for ``path``."""
    r = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (r.stdout + r.stderr).splitlines()
    if r.returncode not in (0, 1) and not any(l.startswith(("Error", "Warning")) for l in lines):
        raise AssertionError(f"dciodvfy failed on {path} (exit {r.returncode}): {' | '.join(lines[-3:])}")
    errors = [l for l in lines if l.startswith("Error")]
    warnings = [l for l in lines if l.startswith("Warning") and not any(a in l for a in ACCEPTED_WARNINGS)]
    return errors, warnings


def rtdose_16bit_copy(src, dst):
    """The RT Dose ``src`` with its pixels requantised to 16 bits (dciodvfy 2022 aborts on 32-bit RT Dose
    pixel data): every other attribute is the file's own, so validating the copy validates them."""
    d = pydicom.dcmread(src)
    dose = d.pixel_array.astype(float) * float(d.DoseGridScaling)
    scaling = float(f"{dose.max() / 65535 * (1 + 1e-7):.8e}")
    d.BitsAllocated, d.BitsStored, d.HighBit = 16, 16, 15
    d.DoseGridScaling = f"{scaling:.8e}"
    d.PixelData = np.rint(dose / scaling).astype("<u2").tobytes()
    d.save_as(dst)
    return Path(dst)


class ConformanceCase(DicomCase):
    def assertValidates(self, paths):
        """dciodvfy reports no error and no warning (beyond ACCEPTED_WARNINGS) for any of ``paths``."""
        if DCIODVFY is None:
            self.skipTest(NO_DCIODVFY)
        report = {}
        for p in paths:
            errors, warnings = dciodvfy(p)
            if errors or warnings:
                report[Path(p).name] = errors + warnings
        self.assertEqual(report, {}, "dciodvfy findings")


AXIAL_RAS = ImageGeometry((40, 34, 18), (1.5, 1.4, 2.0), (-28.0, -22.0, -17.0))  # RAS identity: -x, -y in LPS


class TestConformance(ConformanceCase):
    """Every exported object through dicom3tools' dciodvfy; the 32-bit RT Dose through pydicom and a 16-bit copy."""

    def validate_export(self, res):
        files = list(res["ct"]) + [res[k] for k in ("rtstruct", "rtplan") if res[k] is not None]
        if res["rtdose"] is not None:
            rd = pydicom.dcmread(res["rtdose"])
            self.check_iod(rd, "RTDOSE")
            self.assertEqual((rd.BitsAllocated, rd.BitsStored, rd.HighBit, rd.PixelRepresentation), (32, 32, 31, 0))
            self.assertEqual(rd.SamplesPerPixel, 1)
            self.assertEqual(rd.PhotometricInterpretation, "MONOCHROME2")
            self.assertEqual(len(rd.PixelData), rd.Rows * rd.Columns * int(rd.NumberOfFrames) * 4)
            self.assertEqual(len(rd.GridFrameOffsetVector), int(rd.NumberOfFrames))
            self.assertEqual(rd.FrameIncrementPointer, pydicom.tag.Tag(0x3004, 0x000C))
            files.append(rtdose_16bit_copy(res["rtdose"], self.dir / f"{Path(res['folder']).name}_dose16.dcm"))
        self.assertValidates(files)
        return files

    def test_oblique_export_validates(self):
        res, *_ = self.export(needles=[{"number": 1, "name": "A1", "entry_ras_mm": [-5.0, -4.25, -60.0],
                                        "tip_ras_mm": [-5.0, -4.25, 20.0]}])
        files = self.validate_export(res)
        self.assertEqual(len(files), len(res["ct"]) + 3)

    def test_axial_export_validates(self):
        res, *_ = self.export(geometry=AXIAL_RAS)
        self.validate_export(res)

    def test_plan_without_structures_dose_or_needles_validates(self):
        g, ct, seg, seeds = make_case(AXIAL_RAS)
        res = export.export_plan_dicom(self.dir / "bare", ct, seeds, 145.0, ct_geometry=g,
                                       seed_needle_names=["A1"] * 3 + [""] * (len(seeds) - 3))
        self.validate_export(res)
        channels = pydicom.dcmread(res["rtplan"]).ApplicationSetupSequence[0].ChannelSequence
        # a needle name without its geometry: named (Type 3), no Source Applicator Number / ID / Length
        self.assertEqual([getattr(c, "SourceApplicatorName", None) for c in channels[:4]], ["A1", "A1", "A1", None])
        self.assertFalse(any("SourceApplicatorNumber" in c for c in channels))

    def test_dicom_ct_folder_export_validates(self):
        res, g, ct, seg, seeds, dose, dose_g = self.export("first", geometry=AXIAL_RAS)
        again = export.export_plan_dicom(self.dir / "second", res["ct"][0].parent, seeds, 145.0, segmentation=seg,
                                         dose_Gy=dose, dose_geometry=dose_g)
        self.validate_export(again)


class TestOrientation(ConformanceCase):
    """Axis-aligned grids are written along +x, +y, +z (LPS); oblique grids keep their orientation."""

    def test_axial_ct_is_written_head_first_supine_order(self):
        res, g, ct, *_ = self.export(geometry=AXIAL_RAS)
        cts = sorted((pydicom.dcmread(p) for p in res["ct"]), key=lambda d: int(d.InstanceNumber))
        for d in cts:
            self.assertEqual([float(v) for v in d.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
            self.assertEqual(d.PatientPosition, "HFS")
            self.assertEqual(d.ImageLaterality, "U")
            self.assertNotIn("Laterality", d)
        z = [float(d.ImagePositionPatient[2]) for d in cts]
        self.assertTrue(np.all(np.diff(z) > 0))
        # what a reader of the first slice sees: row along +x (patient's left), column along +y (posterior),
        # the orientation that tools classify as HFS and not prone (prone is -1\0\0\0\-1\0)
        row = np.asarray(cts[0].ImageOrientationPatient[:3], float)
        col = np.asarray(cts[0].ImageOrientationPatient[3:], float)
        self.assertEqual((row[0], col[1]), (1.0, 1.0))
        # same voxels at the same places: every CT value read back at its patient position
        reader = sitk.ImageSeriesReader()
        folder = str(res["ct"][0].parent)
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder, reader.GetGDCMSeriesIDs(folder)[0]))
        image = reader.Execute()
        arr = sitk.GetArrayFromImage(image)
        self.assertEqual(arr.shape, ct.shape)
        lps = g.voxel_centers_ras().reshape(-1, 3) * [-1, -1, 1]
        idx = np.array([image.TransformPhysicalPointToIndex(tuple(p)) for p in lps[::97]])
        np.testing.assert_array_equal(arr[idx[:, 2], idx[:, 1], idx[:, 0]], ct.reshape(-1)[::97])
        np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), np.eye(3), atol=1e-12)

    def test_axial_dose_is_written_along_plus_x_y_z(self):
        g = AXIAL_RAS
        dose_g = ImageGeometry((15, 13, 11), (2.0, 1.8, 2.5), (-14.0, -12.0, -12.0))
        res, _, _, _, seeds, dose, _ = self.export(geometry=g, dose_geometry=dose_g)
        rd = pydicom.dcmread(res["rtdose"])
        self.assertEqual([float(v) for v in rd.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        back, bg, _ = rtimport.read_rtdose(res["rtdose"])
        np.testing.assert_allclose(bg.to_lps()[1], np.eye(3), atol=1e-12)
        # the dose at each original voxel centre is the value read back at that centre
        ijk = np.rint(bg.ras_to_ijk(dose_g.voxel_centers_ras().reshape(-1, 3))).astype(int)
        np.testing.assert_allclose(bg.ijk_to_ras(ijk), dose_g.voxel_centers_ras().reshape(-1, 3), atol=1e-6)
        scaling = float(rd.DoseGridScaling)
        np.testing.assert_allclose(back[ijk[:, 2], ijk[:, 1], ijk[:, 0]], dose.reshape(-1), atol=0.5 * scaling)

    def test_permuted_axes_are_reordered(self):
        # i along S, j along R, k along A (a sagittal-like grid): still axis-aligned, written axially
        d = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)
        g = ImageGeometry((12, 10, 8), (2.0, 1.5, 2.5), (-9.0, -8.0, -11.0), d)
        arr = np.arange(np.prod(g.shape), dtype=float).reshape(g.shape)
        from SeedImplantPlannerLib.dicom.image_series import axis_aligned
        a2, g2 = axis_aligned(arr, g)
        np.testing.assert_allclose(g2.to_lps()[1], np.eye(3), atol=1e-12)
        self.assertEqual(sorted(g2.size), sorted(g.size))
        # every voxel keeps its value at its centre
        ijk = np.rint(g2.ras_to_ijk(g.voxel_centers_ras().reshape(-1, 3))).astype(int)
        np.testing.assert_allclose(g2.ijk_to_ras(ijk), g.voxel_centers_ras().reshape(-1, 3), atol=1e-9)
        np.testing.assert_array_equal(a2[ijk[:, 2], ijk[:, 1], ijk[:, 0]], arr.reshape(-1))
        # oblique grids are left as they are
        a3, g3 = axis_aligned(arr, oblique(size=g.size))
        self.assertIs(a3, arr)


class TestNeedleApplicators(ConformanceCase):
    def test_needles_are_source_applicators_of_their_seeds(self):
        needles = [{"number": 4, "name": "A1", "entry_ras_mm": [-5.0, -4.25, -60.0], "tip_ras_mm": [-5.0, -4.25, 20.0],
                    "usable_length_mm": 150.0},
                   {"number": 7, "name": "B2", "entry_ras_mm": [5.0, 4.75, -60.0], "tip_ras_mm": [5.0, 4.75, 20.0]}]
        res, g, ct, seg, seeds, *_ = self.export(needles=needles)
        plan = pydicom.dcmread(res["rtplan"])
        setup = plan.ApplicationSetupSequence[0]
        self.assertEqual(setup.ApplicationSetupType, "PERINEAL")
        channels = setup.ChannelSequence
        self.assertEqual(len(channels), len(seeds))  # one channel per seed: every seed is a channel of its own
        on = {}
        for ch in channels:
            if "SourceApplicatorNumber" in ch:
                self.assertEqual(ch.SourceApplicatorType, "RIGID")
                on.setdefault((int(ch.SourceApplicatorNumber), ch.SourceApplicatorID, float(ch.SourceApplicatorLength)),
                              []).append(int(ch.ChannelNumber))
                self.assertIn("ReferencedROINumber", ch)
        self.assertEqual(sorted(on), [(4, "A1", 150.0), (7, "B2", 80.0)])  # B2: its path length, 80 mm
        self.assertEqual([len(v) for _, v in sorted(on.items())], [3, 3])
        back, info = rtplan_read.read_rtplan_seeds(res["rtplan"])
        self.assertEqual(sum(n == "A1" for n in info["needle_names"]), 3)
        self.assertEqual(sum(n == "B2" for n in info["needle_names"]), 3)

    def test_setup_type_and_laterality_options(self):
        res, *_ = self.export(setup_type="SYED_NEBLETT", laterality="B")
        self.assertEqual(pydicom.dcmread(res["rtplan"]).ApplicationSetupSequence[0].ApplicationSetupType, "SYED_NEBLETT")
        self.assertEqual(pydicom.dcmread(res["ct"][0]).ImageLaterality, "B")
        g, ct, seg, seeds = make_case()
        for kw, msg in ((dict(setup_type="OTHER"), "not a defined term"), (dict(laterality="X"), "laterality"),
                        (dict(seed_needle_names=["Z9"] * len(seeds), needles=[{"name": "A1", "entry_ras_mm": [0, 0, 0],
                                                                                "tip_ras_mm": [0, 0, 9]}]),
                         "needle 'Z9' is not among")):
            with self.subTest(msg), self.assertRaisesRegex(InputError, msg):
                export.export_plan_dicom(self.dir / "bad", ct, seeds, 145.0, ct_geometry=g, **kw)
            self.assertFalse((self.dir / "bad").exists())


if __name__ == "__main__":
    import unittest
    unittest.main()
