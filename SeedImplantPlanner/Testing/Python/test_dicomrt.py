"""DICOM RT export and read-back: CT series, RT Structure Set, brachy RT Plan and RT Dose.

Every test writes real files, reads them back with pydicom (and SimpleITK for images), checks the
required attributes of each IOD, value representations and UID consistency, and compares the
physics: seeds and dose survive the round trip, recomputing the dose from the RT Plan gives the
RT Dose.
"""

import os
import tempfile
import unittest
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom import config as dcm_config
from pydicom.uid import UID
from pydicom.valuerep import validate_value

from SeedImplantPlannerLib.dicom import export, rtimport, rtplan_read
from SeedImplantPlannerLib.dicom.contours import contours_to_mask, mask_to_contours
from SeedImplantPlannerLib.physics.dose import compute_dose_Gy, dose_at_points_Gy
from SeedImplantPlannerLib.core.errors import CancelledError, InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.core.imageio import write_image
from SeedImplantPlannerLib.physics.seeds import SeedSet
from SeedImplantPlannerLib.imaging.segio import Segmentation

M6711 = "I125_OncoSeed_6711"
PD = "Pd103_TheraSeed_200"

COMMON_T1 = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality")
COMMON_T2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
             "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber", "Manufacturer")
IMAGE_T1 = ("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
            "HighBit", "PixelRepresentation", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient",
            "PixelData", "FrameOfReferenceUID")
REQUIRED = {
    "CT": (COMMON_T1 + IMAGE_T1 + ("ImageType", "RescaleIntercept", "RescaleSlope"),
           COMMON_T2 + ("PositionReferenceIndicator", "InstanceNumber", "SliceThickness", "KVP", "AcquisitionNumber",
                        "PatientPosition")),
    "RTDOSE": (COMMON_T1 + IMAGE_T1 + ("NumberOfFrames", "FrameIncrementPointer", "DoseUnits", "DoseType",
                                       "DoseSummationType", "GridFrameOffsetVector", "DoseGridScaling",
                                       "ReferencedRTPlanSequence"),
               COMMON_T2 + ("SliceThickness", "PositionReferenceIndicator", "OperatorsName")),
    "RTPLAN": (COMMON_T1 + ("RTPlanLabel", "RTPlanGeometry", "BrachyTreatmentTechnique", "BrachyTreatmentType",
                            "TreatmentMachineSequence", "SourceSequence", "ApplicationSetupSequence",
                            "FractionGroupSequence", "DoseReferenceSequence"),
               COMMON_T2 + ("RTPlanDate", "RTPlanTime", "OperatorsName")),
    "RTSTRUCT": (COMMON_T1 + ("StructureSetLabel", "StructureSetROISequence", "ROIContourSequence",
                              "RTROIObservationsSequence", "ReferencedFrameOfReferenceSequence"),
                 COMMON_T2 + ("StructureSetDate", "StructureSetTime", "OperatorsName")),
}
SOURCE_T1 = ("SourceNumber", "SourceType", "SourceIsotopeName", "SourceIsotopeHalfLife", "ReferenceAirKermaRate",
             "SourceStrengthReferenceDate", "SourceStrengthReferenceTime")
CHANNEL_T1 = ("ChannelNumber", "ChannelTotalTime", "SourceMovementType", "ReferencedSourceNumber",
              "NumberOfControlPoints", "BrachyControlPointSequence")
CP_T1 = ("ControlPointIndex", "ControlPointRelativePosition")


def oblique(size=(40, 34, 18), spacing=(1.5, 1.4, 2.0), origin=(-28.0, -22.0, -17.0), deg=(18.0, 9.0)):
    a, b = np.radians(deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return ImageGeometry(size, spacing, origin, rz @ rx)


def ellipsoid(g, centre, radii):
    c = g.voxel_centers_ras() - np.asarray(centre)
    return np.linalg.norm(c / np.asarray(radii), axis=-1) <= 1.0


def make_case(g=None):
    """Small synthetic case: CT, GTV/PTV/Rectum, seeds of two models with various axes and strengths."""
    g = g or oblique()
    ct = np.where(ellipsoid(g, (0, 0, 0), (26, 22, 30)), 35, -1000).astype(np.int16)
    seg = Segmentation.from_masks(g, {"GTV": ellipsoid(g, (1, 0, 0), (9, 7, 8)),
                                      "PTV": ellipsoid(g, (1, 0, 0), (12, 10, 11)),
                                      "Rectum": ellipsoid(g, (0, -15, 0), (4, 4, 9))})
    rng = np.random.default_rng(7)
    pos = np.array([[x, y, z] for x in (-5.0, 5.0) for y in (-4.25, 4.75) for z in (-6.0, 0.5, 7.0)])
    pos += rng.normal(0, 0.3, pos.shape)
    axes = rng.normal(0, 1, pos.shape) + [0, 0, 3]
    sk = np.round(rng.uniform(0.4, 0.9, len(pos)), 4)
    models = [M6711] * 9 + [PD] * 3
    seeds = SeedSet(pos, axes, sk, models)
    return g, ct, seg, seeds


def validate_elements(ds, where):
    """Every element's value conforms to its VR (length, characters, UID syntax)."""
    for elem in ds.iterall():
        if elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "UN") or elem.value is None:
            continue
        values = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) else [elem.value]
        for v in values:
            if elem.VR in ("DS", "IS", "PN", "DA", "TM", "DT", "UI"):
                v = getattr(v, "original_string", None) or str(v)
            try:
                validate_value(elem.VR, v, dcm_config.RAISE)
            except ValueError as exc:
                raise AssertionError(f"{where}: {elem.keyword or elem.tag}: {exc}") from None
        if elem.VR == "UI" and elem.value:
            assert UID(str(elem.value)).is_valid, f"{where}: invalid UID {elem.keyword}={elem.value}"


class DicomCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def check_iod(self, ds, kind):
        t1, t2 = REQUIRED[kind]
        for key in t1:
            self.assertIn(key, ds, f"{kind}: Type 1 {key} missing")
            self.assertNotIn(ds[key].value, (None, "", []), f"{kind}: Type 1 {key} empty")
        for key in t2:
            self.assertIn(key, ds, f"{kind}: Type 2 {key} missing")
        self.assertEqual(ds.Modality, kind)
        self.assertEqual(ds.SOPClassUID, ds.file_meta.MediaStorageSOPClassUID)
        self.assertEqual(ds.SOPInstanceUID, ds.file_meta.MediaStorageSOPInstanceUID)
        validate_elements(ds, kind)

    def export(self, name="out", **kw):
        g, ct, seg, seeds = make_case(kw.pop("geometry", None))
        dose_g = kw.pop("dose_geometry", None) or g.cropped_to_box(seeds.positions.min(0), seeds.positions.max(0), 2.0, 12.0)
        dose, _ = compute_dose_Gy(dose_g, seeds)
        args = dict(ct_geometry=g, segmentation=seg, dose_Gy=dose, dose_geometry=dose_g,
                    strength_reference="2026-11-20T09:30")
        args.update(kw)
        old = dcm_config.settings.writing_validation_mode
        dcm_config.settings.writing_validation_mode = dcm_config.RAISE
        try:
            res = export.export_plan_dicom(self.dir / name, ct, seeds, 145.0, **args)
        finally:
            dcm_config.settings.writing_validation_mode = old
        return res, g, ct, seg, seeds, dose, dose_g


class TestExportFiles(DicomCase):
    def test_every_iod_complete_and_uids_consistent(self):
        res, g, ct, seg, seeds, dose, dose_g = self.export()
        self.assertEqual(len(res["ct"]), g.size[2])
        cts = [pydicom.dcmread(p) for p in res["ct"]]
        plan = pydicom.dcmread(res["rtplan"])
        rs = pydicom.dcmread(res["rtstruct"])
        rd = pydicom.dcmread(res["rtdose"])
        for ds in cts[:2]:
            self.check_iod(ds, "CT")
        self.check_iod(plan, "RTPLAN")
        self.check_iod(rs, "RTSTRUCT")
        self.check_iod(rd, "RTDOSE")
        everything = cts + [plan, rs, rd]
        self.assertEqual(len({d.StudyInstanceUID for d in everything}), 1)
        self.assertEqual(len({d.PatientID for d in everything}), 1)
        self.assertTrue(str(plan.PatientID).startswith("SIP-"))
        for_uid = cts[0].FrameOfReferenceUID
        self.assertTrue(all(d.FrameOfReferenceUID == for_uid for d in everything))
        sop = [d.SOPInstanceUID for d in everything]
        self.assertEqual(len(set(sop)), len(sop))
        self.assertEqual(len({d.SeriesInstanceUID for d in cts}), 1)
        self.assertEqual(len({d.SeriesInstanceUID for d in (cts[0], plan, rs, rd)}), 4)
        # references: dose -> plan -> structure set -> CT images, frame of reference
        self.assertEqual(rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID, plan.SOPInstanceUID)
        self.assertEqual(plan.RTPlanGeometry, "PATIENT")
        self.assertEqual(plan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID, rs.SOPInstanceUID)
        ref_for = rs.ReferencedFrameOfReferenceSequence[0]
        self.assertEqual(ref_for.FrameOfReferenceUID, for_uid)
        series = ref_for.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        self.assertEqual(ref_for.RTReferencedStudySequence[0].ReferencedSOPInstanceUID, cts[0].StudyInstanceUID)
        self.assertEqual(series.SeriesInstanceUID, cts[0].SeriesInstanceUID)
        self.assertEqual({i.ReferencedSOPInstanceUID for i in series.ContourImageSequence},
                         {d.SOPInstanceUID for d in cts})
        for roi in rs.StructureSetROISequence:
            self.assertEqual(roi.ReferencedFrameOfReferenceUID, for_uid)
        # nothing but the results in the parent folder: the temporary folder was renamed
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["out"])
        self.assertEqual(sorted(p.name for p in (self.dir / "out").iterdir()),
                         ["CT", "RTDOSE.dcm", "RTPLAN.dcm", "RTSTRUCT.dcm"])

    def test_ct_series_reads_back_with_simpleitk(self):
        res, g, ct, *_ = self.export()
        reader = sitk.ImageSeriesReader()
        folder = str(res["ct"][0].parent)
        files = reader.GetGDCMSeriesFileNames(folder, reader.GetGDCMSeriesIDs(folder)[0])
        reader.SetFileNames(files)
        image = reader.Execute()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ct)
        origin, direction = g.to_lps()
        np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-4)
        np.testing.assert_allclose(image.GetSpacing(), g.spacing, atol=1e-6)
        np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), direction, atol=1e-6)

    def test_dicom_ct_folder_is_reused_not_rewritten(self):
        res, g, ct, seg, seeds, dose, dose_g = self.export("first")
        ct_folder = res["ct"][0].parent
        cts = {tuple(np.round(np.asarray(d.ImagePositionPatient, float), 3)): d
               for d in (pydicom.dcmread(p) for p in res["ct"])}
        again = export.export_plan_dicom(self.dir / "second", ct_folder, seeds, 145.0, segmentation=seg,
                                          dose_Gy=dose, dose_geometry=dose_g)
        self.assertEqual(again["ct"], [])
        self.assertFalse((self.dir / "second" / "CT").exists())
        first_ct = next(iter(cts.values()))
        for key in ("rtplan", "rtstruct", "rtdose"):
            ds = pydicom.dcmread(again[key])
            self.assertEqual(ds.StudyInstanceUID, first_ct.StudyInstanceUID)
            self.assertEqual(ds.PatientID, first_ct.PatientID)
            self.assertEqual(ds.FrameOfReferenceUID, first_ct.FrameOfReferenceUID)
        rs = pydicom.dcmread(again["rtstruct"])
        # each contour references the CT slice it lies on
        normal = np.cross(*np.reshape(np.asarray(first_ct.ImageOrientationPatient, float), (2, 3)))
        by_uid = {d.SOPInstanceUID: d for d in cts.values()}
        checked = 0
        for rc in rs.ROIContourSequence:
            for c in rc.ContourSequence:
                image = by_uid[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
                pts = np.reshape(np.asarray(c.ContourData, float), (-1, 3))
                np.testing.assert_allclose(pts @ normal, float(np.asarray(image.ImagePositionPatient, float) @ normal),
                                           atol=1e-3)
                checked += 1
        self.assertGreater(checked, 10)
        with self.assertRaisesRegex(InputError, "must not be the CT folder"):
            export.export_plan_dicom(ct_folder / "rt", ct_folder, seeds, 145.0)
        # a folder holding the CT next to an earlier RT Dose still resolves to the CT series
        mixed = self.dir / "mixed"
        mixed.mkdir()
        for p in list(res["ct"]) + [res["rtdose"]]:
            (mixed / p.name).write_bytes(p.read_bytes())
        third = export.export_plan_dicom(self.dir / "third", mixed, seeds, 145.0, segmentation=seg)
        refs = pydicom.dcmread(third["rtstruct"]).ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        self.assertEqual(refs.RTReferencedSeriesSequence[0].SeriesInstanceUID, first_ct.SeriesInstanceUID)


class TestRtPlan(DicomCase):
    def test_seeds_round_trip_and_dose_recomputes(self):
        needles = [{"number": 1, "name": "A1", "entry_ras_mm": [-5.0, -4.25, -60.0], "tip_ras_mm": [-5.0, -4.25, 20.0]}]
        res, g, ct, seg, seeds, dose, dose_g = self.export(needles=needles)
        back, info = rtplan_read.read_rtplan_seeds(res["rtplan"])
        self.assertEqual(len(back), len(seeds))
        np.testing.assert_allclose(back.positions, seeds.positions, rtol=0, atol=1e-9)
        np.testing.assert_allclose(back.strengths_U, seeds.strengths_U, rtol=1e-12, atol=0)
        np.testing.assert_allclose(back.axes, seeds.axes, rtol=0, atol=1e-6)  # Control Point Orientation is FL
        self.assertEqual(back.models, seeds.models)
        self.assertEqual(info["technique"], "PERMANENT")
        self.assertEqual(info["type"], "LDR")
        self.assertEqual(info["prescription_Gy"], 145.0)
        self.assertEqual(info["unresolved_models"], [])
        self.assertEqual(info["notes"], [])
        self.assertEqual(str(info["strength_reference"]), "2026-11-20 09:30:00")
        self.assertEqual(info["channel_numbers"], list(range(1, len(seeds) + 1)))
        on_a1 = [n == "A1" for n in info["needle_names"]]
        self.assertEqual(sum(on_a1), 3)  # the three seeds at x=-5, y~-4.25 lie within 2 mm of needle A1
        # the same dose from the read-back plan: at points and on the RT Dose grid
        pts = np.random.default_rng(3).uniform(-20, 20, (300, 3))
        d0 = dose_at_points_Gy(pts, seeds)[0]
        d1 = dose_at_points_Gy(pts, back)[0]
        np.testing.assert_allclose(d1, d0, rtol=1e-6)
        redo, _ = compute_dose_Gy(dose_g, back)
        file_dose, file_g, _ = rtimport.read_rtdose(res["rtdose"])
        self.assertTrue(file_g.matches(dose_g))
        np.testing.assert_allclose(file_dose, redo, rtol=0, atol=1e-6 * dose.max())

    def test_plan_attributes(self):
        res, g, ct, seg, seeds, *_ = self.export()
        plan = pydicom.dcmread(res["rtplan"])
        self.assertEqual(plan.BrachyTreatmentTechnique, "PERMANENT")
        self.assertEqual(plan.BrachyTreatmentType, "LDR")
        self.assertEqual(len(plan.ApplicationSetupSequence), 1)
        sources = {int(s.SourceNumber): s for s in plan.SourceSequence}
        self.assertEqual(len(sources), len(set(zip(seeds.models, seeds.strengths_U))))
        for s in sources.values():
            for key in SOURCE_T1:
                self.assertNotIn(s[key].value, (None, ""), key)
            self.assertGreater(float(s.ReferenceAirKermaRate), 0)
            self.assertEqual(s.SourceStrengthReferenceDate, "20261120")
            self.assertEqual(s.SourceStrengthReferenceTime, "093000")
            self.assertGreater(float(s.ActiveSourceLength), 0)
            self.assertIn(s.SourceIsotopeName, ("I-125", "Pd-103"))
            self.assertAlmostEqual(float(s.SourceIsotopeHalfLife), 59.4 if s.SourceIsotopeName == "I-125" else 16.991)
        setup = plan.ApplicationSetupSequence[0]
        self.assertGreater(float(setup.TotalReferenceAirKerma), 0)
        channels = setup.ChannelSequence
        self.assertEqual([int(c.ChannelNumber) for c in channels], list(range(1, len(seeds) + 1)))
        for i, ch in enumerate(channels):
            for key in CHANNEL_T1:
                self.assertIn(key, ch)
            self.assertEqual(ch.SourceMovementType, "FIXED")
            src = sources[int(ch.ReferencedSourceNumber)]
            self.assertEqual(float(src.ReferenceAirKermaRate), seeds.strengths_U[i])
            cps = ch.BrachyControlPointSequence
            self.assertGreaterEqual(len(cps), 2)
            self.assertEqual(int(ch.NumberOfControlPoints), len(cps))
            self.assertEqual([float(c.CumulativeTimeWeight) for c in cps], [0.0, float(ch.FinalCumulativeTimeWeight)])
            self.assertEqual([int(c.ControlPointIndex) for c in cps], [0, 1])
            lps = seeds.positions[i] * [-1, -1, 1]
            for c in cps:
                for key in CP_T1:
                    self.assertIn(key, c)
                np.testing.assert_allclose(np.asarray(c.ControlPoint3DPosition, float), lps, atol=1e-9)
                np.testing.assert_allclose(c.ControlPointOrientation, seeds.axes[i] * [-1, -1, 1], atol=1e-6)
        fg = plan.FractionGroupSequence[0]
        self.assertEqual(int(fg.NumberOfBrachyApplicationSetups), 1)
        self.assertEqual(int(fg.NumberOfBeams), 0)
        self.assertEqual(int(fg.ReferencedBrachyApplicationSetupSequence[0].ReferencedBrachyApplicationSetupNumber),
                         int(setup.ApplicationSetupNumber))
        dref = plan.DoseReferenceSequence[0]
        self.assertEqual(float(dref.TargetPrescriptionDose), 145.0)
        self.assertEqual(dref.DoseReferenceStructureType, "VOLUME")
        rs = pydicom.dcmread(res["rtstruct"])
        names = {int(r.ROINumber): r.ROIName for r in rs.StructureSetROISequence}
        self.assertEqual(names[int(dref.ReferencedROINumber)], "PTV")

    def test_zero_air_kerma_plan_is_refused_on_read(self):
        res, *_ = self.export()
        plan = pydicom.dcmread(res["rtplan"])
        plan.SourceSequence[0].ReferenceAirKermaRate = "0"
        bad = self.dir / "zero.dcm"
        plan.save_as(bad)
        with self.assertRaisesRegex(InputError, "zero strength"):
            rtplan_read.read_rtplan_seeds(bad)

    def test_needle_channel_with_dwell_pairs_is_read_as_seeds(self):
        # layout of other systems: one channel per needle, seeds as dwell pairs, no orientation
        res, g, ct, seg, seeds, *_ = self.export()
        plan = pydicom.dcmread(res["rtplan"])
        channels = plan.ApplicationSetupSequence[0].ChannelSequence
        first = channels[0]
        cps = []
        for n, ch in enumerate(channels[:3]):
            for c in (0, 1):
                cp = pydicom.Dataset()
                cp.ControlPointIndex = len(cps)
                cp.ControlPointRelativePosition = str(10 * n)
                cp.ControlPoint3DPosition = ch.BrachyControlPointSequence[0].ControlPoint3DPosition
                cp.CumulativeTimeWeight = str(n + c)
                cps.append(cp)
        first.BrachyControlPointSequence = cps
        first.NumberOfControlPoints = len(cps)
        first.FinalCumulativeTimeWeight = "3"
        first.SourceMovementType = "STEPWISE"
        plan.ApplicationSetupSequence[0].ChannelSequence = [first] + list(channels[3:])
        path = self.dir / "needle_channels.dcm"
        plan.save_as(path)
        back, info = rtplan_read.read_rtplan_seeds(path)
        self.assertEqual(len(back), len(seeds))
        np.testing.assert_allclose(back.positions, seeds.positions, atol=1e-9)
        chord = seeds.positions[2] - seeds.positions[0]
        np.testing.assert_allclose(back.axes[:3], np.tile(chord / np.linalg.norm(chord), (3, 1)), atol=1e-9)
        np.testing.assert_allclose(back.axes[3:], seeds.axes[3:], atol=1e-6)
        self.assertEqual(info["channel_numbers"][:4], [1, 1, 1, 4])
        self.assertTrue(any("seed axis along the channel" in n for n in info["notes"]))

    def test_strengths_decay_to_a_later_date(self):
        res, g, ct, seg, seeds, *_ = self.export()
        back, info = rtplan_read.read_rtplan_seeds(res["rtplan"], at="2027-01-19T09:30")
        i125 = np.array([m == M6711 for m in seeds.models])
        np.testing.assert_allclose(back.strengths_U[i125], seeds.strengths_U[i125] * 0.5 ** (60 / 59.4), rtol=1e-12)


class TestRtDose(DicomCase):
    def check_dose(self, res, dose, dose_g):
        rd = pydicom.dcmread(res["rtdose"])
        self.assertEqual((rd.DoseUnits, rd.DoseType, rd.DoseSummationType), ("GY", "PHYSICAL", "PLAN"))
        self.assertEqual((rd.BitsAllocated, rd.PixelRepresentation), (32, 0))
        scaling = float(rd.DoseGridScaling)
        self.assertLessEqual(dose.max() / scaling, 2 ** 32 - 1)
        self.assertGreater(dose.max() / scaling, 0.99 * (2 ** 32 - 1))  # the scaling uses the full range
        offsets = np.asarray(rd.GridFrameOffsetVector, float)
        self.assertEqual(offsets[0], 0.0)
        self.assertTrue(np.all(np.diff(offsets) > 0))
        # pydicom read-back: exact geometry, values within half a scaling step
        back, g, info = rtimport.read_rtdose(res["rtdose"])
        self.assertEqual(info["units"], "GY")
        ok = np.abs(back - dose) <= 0.5 * scaling + 1e-12 * dose.max()
        self.assertTrue(ok.all(), f"max error {np.abs(back - dose).max()} > {0.5 * scaling}")
        # SimpleITK (GDCM) read-back: raw stored values x Dose Grid Scaling, geometry
        image = sitk.ReadImage(str(res["rtdose"]))
        raw = sitk.GetArrayFromImage(image).astype(float)
        sitk_scaling = float(image.GetMetaData("3004|000e"))
        return back, g, raw * sitk_scaling, image

    def test_oblique_grid(self):
        g = oblique()
        dose_g = ImageGeometry((15, 13, 11), (2.0, 1.8, 2.5), (-14.0, -12.0, -12.0), g.direction)
        res, _, _, _, _, dose, _ = self.export(dose_geometry=dose_g)
        back, bg, sitk_dose, image = self.check_dose(res, dose, dose_g)
        self.assertTrue(bg.matches(dose_g, tol_mm=1e-6))
        np.testing.assert_allclose(bg.spacing, dose_g.spacing, atol=1e-9)
        np.testing.assert_allclose(sitk_dose, back, rtol=0, atol=1e-12 * dose.max())
        origin, direction = dose_g.to_lps()
        np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-6)
        np.testing.assert_allclose(image.GetSpacing(), dose_g.spacing, atol=1e-6)
        np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), direction, atol=1e-6)

    def test_left_handed_grid_written_along_the_normal(self):
        g = oblique()
        d = g.direction_matrix.copy()
        d[:, 2] *= -1  # k axis against row x column
        dose_g = ImageGeometry((12, 11, 9), (2.0, 2.0, 2.5), (-12.0, -10.0, 10.0), d)
        res, _, _, _, _, dose, _ = self.export(dose_geometry=dose_g)
        back, bg, sitk_dose, image = self.check_dose(res, dose[::-1], dose_g)
        # same voxel centres, slices stored in reverse order
        np.testing.assert_allclose(bg.voxel_centers_ras(), dose_g.voxel_centers_ras()[::-1], atol=1e-6)
        np.testing.assert_allclose(sitk_dose, back, rtol=0, atol=1e-12 * dose.max())

    def test_dose_written_into_a_nrrd_reads_identically(self):
        # the dose NRRD a user exports from `seedplan dose` and the RT Dose hold the same grid
        res, g, ct, seg, seeds, dose, dose_g = self.export()
        nrrd = write_image(self.dir / "dose.nrrd", dose.astype(np.float32), dose_g)
        back, bg, _ = rtimport.read_rtdose(res["rtdose"])
        image = sitk.ReadImage(str(nrrd))
        np.testing.assert_allclose(image.GetOrigin(), dose_g.to_lps()[0], atol=1e-6)
        self.assertTrue(bg.matches(dose_g))


class TestRtStruct(DicomCase):
    def test_contours_rasterise_back_to_the_masks(self):
        res, g, ct, seg, *_ = self.export()
        rois = rtimport.read_rtstruct(res["rtstruct"], g)
        self.assertEqual(set(rois), {"GTV", "PTV", "Rectum"})
        self.assertEqual({n: r["type"] for n, r in rois.items()}, {"GTV": "GTV", "PTV": "PTV", "Rectum": "ORGAN"})
        for name, roi in rois.items():
            m = seg.mask(name)
            dice = 2 * np.count_nonzero(m & roi["mask"]) / (m.sum() + roi["mask"].sum())
            self.assertGreaterEqual(dice, 0.95, name)
            color = tuple(int(round(255 * c)) for c in seg.find(name).color)
            self.assertEqual(roi["color"], color)
        # coordinates are LPS in the file: the RAS read-back lies on the CT slices, inside the CT box
        rs = pydicom.dcmread(res["rtstruct"])
        pts_lps = np.reshape(np.asarray(rs.ROIContourSequence[0].ContourSequence[0].ContourData, float), (-1, 3))
        ijk = g.ras_to_ijk(pts_lps * [-1, -1, 1])
        np.testing.assert_allclose(ijk[:, 2], np.rint(ijk[:, 2]), atol=1e-4)  # 0.1 um digits
        self.assertTrue(np.all((ijk >= -0.5) & (ijk <= np.asarray(g.size) - 0.5)))
        for c in rs.ROIContourSequence[0].ContourSequence:
            self.assertEqual(c.ContourGeometricType, "CLOSED_PLANAR")
            self.assertEqual(int(c.NumberOfContourPoints) * 3, len(c.ContourData))

    def test_segmentation_on_another_grid_is_resampled_to_the_ct(self):
        g = oblique()
        fine = ImageGeometry((70, 60, 50), (0.6, 0.6, 0.7), (-20.0, -18.0, -17.0))
        sphere_fine = ellipsoid(fine, (2, 1, 0), (9, 9, 9))
        seg = Segmentation.from_masks(fine, {"GTV": sphere_fine})
        res, *_ = self.export(segmentation=seg)
        rois = rtimport.read_rtstruct(res["rtstruct"], g)
        expected = ellipsoid(g, (2, 1, 0), (9, 9, 9))
        got = rois["GTV"]["mask"]
        dice = 2 * np.count_nonzero(expected & got) / (expected.sum() + got.sum())
        self.assertGreaterEqual(dice, 0.95)

    def test_holes_survive(self):
        g = ImageGeometry((30, 30, 3), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
        c = g.voxel_centers_ras()
        r = np.hypot(c[..., 0] - 15, c[..., 1] - 15)
        ring = (r <= 10) & (r >= 4)
        contours = [pts for _, pts in mask_to_contours(ring, g)]
        self.assertEqual(len(contours), 6)  # outer and inner boundary on each slice
        np.testing.assert_array_equal(contours_to_mask(contours, g), ring)


class TestBadInput(DicomCase):
    def assertNoOutput(self):
        self.assertEqual(list(self.dir.iterdir()), [])

    def test_refusals_leave_nothing(self):
        g, ct, seg, seeds = make_case()
        dg = g.cropped_to_box(seeds.positions.min(0), seeds.positions.max(0), 3.0, 6.0)
        dose = np.ones(dg.shape)
        out = self.dir / "out"
        cases = [
            (dict(seeds=seeds.subset(np.zeros(len(seeds), bool))), "no seeds"),
            (dict(dose_Gy=np.where(np.arange(dose.size).reshape(dose.shape) == 5, np.nan, dose)), "NaN"),
            (dict(dose_Gy=np.ones((2, 2, 2))), "does not match its grid"),
            (dict(dose_geometry=ImageGeometry(dg.size, dg.spacing, (500.0, 500.0, 500.0))), "does not overlap the CT"),
            (dict(seeds=SeedSet(seeds.positions + [0, 0, 300], seeds.axes, seeds.strengths_U, seeds.models)),
             "outside the CT"),
            (dict(prescription_Gy=0.0), "prescription"),
            (dict(prescription_Gy=float("nan")), "prescription"),
            (dict(dose_Gy=-dose), "negative"),
            (dict(dose_geometry=None), "needs its grid geometry"),
            (dict(target_name="Bladder"), "no segment named 'Bladder'"),
            (dict(model="I125_Best_2301"), "seeds use"),
        ]
        for change, message in cases:
            args = dict(seeds=seeds, prescription_Gy=145.0, ct_geometry=g, segmentation=seg, dose_Gy=dose,
                        dose_geometry=dg)
            args.update(change)
            with self.subTest(message):
                with self.assertRaisesRegex(InputError, message):
                    export.export_plan_dicom(out, ct, args.pop("seeds"), args.pop("prescription_Gy"), **args)
                self.assertNoOutput()

    def test_existing_folder_needs_overwrite_and_cancel_is_clean(self):
        g, ct, seg, seeds = make_case()
        out = self.dir / "out"
        out.mkdir()
        (out / "keep.txt").write_text("user file")
        with self.assertRaisesRegex(InputError, "not empty"):
            export.export_plan_dicom(out, ct, seeds, 145.0, ct_geometry=g)
        self.assertEqual([p.name for p in out.iterdir()], ["keep.txt"])
        with self.assertRaises(CancelledError):
            export.export_plan_dicom(out, ct, seeds, 145.0, ct_geometry=g, overwrite=True,
                                      progress=lambda f, t: f < 0.3)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["out"])
        self.assertEqual([p.name for p in out.iterdir()], ["keep.txt"])
        res = export.export_plan_dicom(out, ct, seeds, 145.0, ct_geometry=g, overwrite=True)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["CT", "RTPLAN.dcm"])
        self.assertIsNone(res["rtdose"])
        plan = pydicom.dcmread(res["rtplan"])
        self.assertEqual(plan.RTPlanGeometry, "TREATMENT_DEVICE")
        self.assertEqual(plan.DoseReferenceSequence[0].DoseReferenceStructureType, "SITE")
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["out"])
        self.assertEqual(oct(os.stat(out).st_mode & 0o777)[-3:], oct(0o777 & ~_umask())[-3:])


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


if __name__ == "__main__":
    unittest.main()
