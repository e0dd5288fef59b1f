"""End-to-end: `seedplan dose` -> `seedplan export-dicom` -> `seedplan dicom-seeds`, with real files."""

import csv
import tempfile
import unittest
from pathlib import Path

import numpy as np

from seedplan_cli import seedplan  # noqa: E402
import pydicom
import SimpleITK as sitk

from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.core.imageio import write_image
from SeedImplantPlannerLib.imaging.segio import Segmentation, write_segmentation

ROOT = Path(__file__).resolve().parents[2]

M6711 = "I125_OncoSeed_6711"




class CliDicom(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        a = np.radians(12.0)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        self.g = ImageGeometry((36, 32, 16), (1.5, 1.5, 2.5), (-26.0, -23.0, -19.0), rot)
        c = self.g.voxel_centers_ras()
        body = np.linalg.norm(c / [24, 20, 40], axis=-1) <= 1
        self.ct = self.dir / "ct.nrrd"
        write_image(self.ct, np.where(body, 30, -1000).astype(np.int16), self.g)
        gtv = np.linalg.norm(c / [9, 8, 9], axis=-1) <= 1
        self.seg = self.dir / "case.seg.nrrd"
        write_segmentation(self.seg, Segmentation.from_masks(self.g, {"GTV": gtv, "Body": body}))
        self.seeds = self.dir / "seeds.csv"
        rows = ["x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U"]
        for x in (-4.5, 4.5):
            for z in (-6.0, 0.0, 6.0):
                rows.append(f"{x},{1.25},{z},0.1,0.2,1,0.635")
        self.seeds.write_text("\n".join(rows) + "\n")

    def tearDown(self):
        self.tmp.cleanup()

    def dose(self):
        out = self.dir / "dose.nrrd"
        r = seedplan("dose", "--seeds", self.write_with_model(), "--reference", self.ct, "--crop-margin", "10",
                     "--spacing", "2", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        return out

    def write_with_model(self):
        p = self.dir / "seeds_model.csv"
        lines = self.seeds.read_text().splitlines()
        p.write_text("\n".join([lines[0] + ",model"] + [ln + "," + M6711 for ln in lines[1:]]) + "\n")
        return p

    def test_export_and_read_back(self):
        dose = self.dose()
        out = self.dir / "dicom"
        r = seedplan("export-dicom", "--ct", self.ct, "--seeds", self.seeds, "--model", M6711, "--segmentation", self.seg,
                     "--dose", dose, "--prescription-Gy", "145", "--strength-date", "2026-11-27T08:00",
                     "--patient-id", "PHANTOM01", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("RTPLAN.dcm", r.stdout)
        files = sorted(p.name for p in out.iterdir())
        self.assertEqual(files, ["CT", "RTDOSE.dcm", "RTPLAN.dcm", "RTSTRUCT.dcm"])
        self.assertEqual(len(list((out / "CT").glob("*.dcm"))), self.g.size[2])
        plan = pydicom.dcmread(out / "RTPLAN.dcm")
        rd = pydicom.dcmread(out / "RTDOSE.dcm")
        rs = pydicom.dcmread(out / "RTSTRUCT.dcm")
        self.assertEqual({d.PatientID for d in (plan, rd, rs)}, {"PHANTOM01"})
        self.assertEqual(len({d.StudyInstanceUID for d in (plan, rd, rs)}), 1)
        self.assertEqual(len({d.FrameOfReferenceUID for d in (plan, rd, rs)}), 1)
        self.assertEqual(plan.BrachyTreatmentTechnique, "PERMANENT")
        self.assertEqual(plan.SourceSequence[0].ReferenceAirKermaRate, 0.635)
        self.assertEqual(plan.SourceSequence[0].SourceStrengthReferenceDate, "20261127")
        self.assertEqual({o.RTROIInterpretedType for o in rs.RTROIObservationsSequence}, {"GTV", "EXTERNAL"})
        # the RT Dose is the NRRD dose: same grid (SimpleITK), values within the scaling step
        nrrd = sitk.ReadImage(str(dose))
        dimg = sitk.ReadImage(str(out / "RTDOSE.dcm"))
        np.testing.assert_allclose(dimg.GetOrigin(), nrrd.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(dimg.GetSpacing(), nrrd.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(dimg.GetDirection(), nrrd.GetDirection(), atol=1e-6)
        scaling = float(rd.DoseGridScaling)
        got = sitk.GetArrayFromImage(dimg).astype(float) * scaling
        np.testing.assert_allclose(got, sitk.GetArrayFromImage(nrrd), rtol=1e-6, atol=scaling)
        # RT Plan -> seeds CSV: the same seeds
        back = self.dir / "back.csv"
        r = seedplan("dicom-seeds", "--plan", out / "RTPLAN.dcm", "--out", back)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(back, newline="") as fh:
            rows = list(csv.DictReader(fh))
        with open(self.seeds, newline="") as fh:
            orig = list(csv.DictReader(fh))
        self.assertEqual(len(rows), len(orig))
        for a, b in zip(rows, orig):
            self.assertEqual(a["model"], M6711)
            self.assertAlmostEqual(float(a["sk_U"]), float(b["sk_U"]), places=9)
            for k in ("x_mm", "y_mm", "z_mm"):
                self.assertAlmostEqual(float(a[k]), float(b[k]), places=4)
        # the read-back CSV computes the same dose as the original through `seedplan dose`
        redo = self.dir / "redo.nrrd"
        r = seedplan("dose", "--seeds", back, "--reference", self.ct, "--crop-margin", "10", "--spacing", "2",
                     "--out", redo)
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(redo))),
                                   sitk.GetArrayFromImage(nrrd), rtol=1e-5)

    def test_plan_json_input(self):
        from SeedImplantPlannerLib.planning.loading import LoadingRules
        from SeedImplantPlannerLib.planning.needles import Needle
        from SeedImplantPlannerLib.planning.problem import Goals
        from SeedImplantPlannerLib.planning.planfile import Plan, write_plan
        from SeedImplantPlannerLib.physics.seeds import read_seeds_csv
        seeds = read_seeds_csv(self.write_with_model())
        needles = [Needle(1, [-4.5, 1.25, -40.0], [-4.5, 1.25, 10.0], name="L1"),
                   Needle(2, [4.5, 1.25, -40.0], [4.5, 1.25, 10.0], name="R1")]
        source = {"model": M6711, "strength_U": 0.635, "implant_date": "2026-12-01"}
        plan = Plan(source, 150.0, Goals(150.0), LoadingRules(), needles, seeds, [1, 1, 1, 2, 2, 2],
                    [16.0, 10.0, 4.0, 16.0, 10.0, 4.0], [False] * 6)
        plan_path = write_plan(self.dir / "plan.json", plan)
        out = self.dir / "dicom"
        r = seedplan("export-dicom", "--ct", self.ct, "--seeds", plan_path, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(p.name for p in out.iterdir()), ["CT", "RTPLAN.dcm"])
        ds = pydicom.dcmread(out / "RTPLAN.dcm")
        self.assertEqual(float(ds.DoseReferenceSequence[0].TargetPrescriptionDose), 150.0)
        self.assertEqual(ds.SourceSequence[0].SourceStrengthReferenceDate, "20261201")
        self.assertEqual([c.SourceApplicatorID for c in ds.ApplicationSetupSequence[0].ChannelSequence],
                         ["L1"] * 3 + ["R1"] * 3)
        # the exported CT series is a DICOM input in its turn: same study, no new CT
        again = self.dir / "again"
        r = seedplan("export-dicom", "--ct", out / "CT", "--seeds", plan_path, "--out", again)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("CT reused", r.stdout)
        self.assertEqual(pydicom.dcmread(again / "RTPLAN.dcm").StudyInstanceUID, ds.StudyInstanceUID)

    def test_bad_inputs_exit_2_and_write_nothing(self):
        dose = self.dose()
        img = sitk.ReadImage(str(dose))
        arr = sitk.GetArrayFromImage(img)
        arr[0, 0, 0] = np.nan
        nan_dose = self.dir / "nan.nrrd"
        bad = sitk.GetImageFromArray(arr)
        bad.CopyInformation(img)
        sitk.WriteImage(bad, str(nan_dose))
        far = self.dir / "far.nrrd"
        moved = sitk.GetImageFromArray(sitk.GetArrayFromImage(img))
        moved.CopyInformation(img)
        moved.SetOrigin((400.0, 400.0, 400.0))
        sitk.WriteImage(moved, str(far))
        rate = self.dir / "rate.nrrd"
        r = seedplan("dose", "--seeds", self.write_with_model(), "--reference", self.ct, "--crop-margin", "5",
                     "--spacing", "3", "--time-h", "24", "--out", rate)
        self.assertEqual(r.returncode, 0, r.stderr)
        empty = self.dir / "empty.csv"
        empty.write_text("x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model\n")
        base = ["--ct", self.ct, "--seeds", self.seeds, "--model", M6711, "--prescription-Gy", "145"]
        cases = [
            (["--dose", nan_dose], "NaN"),
            (["--dose", far], "does not overlap the CT"),
            (["--dose", rate], "quantity 'to_time'"),
            (["--prescription-Gy", "-5"], "prescription"),
            (["--seeds", empty], "no rows"),
            (["--segmentation", self.dir / "missing.seg.nrrd"], "not found"),
        ]
        out = self.dir / "out"
        for extra, message in cases:
            with self.subTest(message):
                r = seedplan("export-dicom", *base, *extra, "--out", out)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertRegex(r.stderr.strip(), f"^seedplan: error: .*{message}")
                self.assertEqual(len(r.stderr.strip().splitlines()), 1)
                self.assertFalse(out.exists())
                self.assertEqual([p.name for p in self.dir.iterdir() if p.name.startswith(".")], [])
        no_rx = seedplan("export-dicom", "--ct", self.ct, "--seeds", self.seeds, "--model", M6711, "--out", out)
        self.assertEqual(no_rx.returncode, 2)
        self.assertIn("--prescription-Gy", no_rx.stderr)

    def test_rt_plans_of_other_layouts_on_the_command_line(self):
        out = self.dir / "dicom"
        r = seedplan("export-dicom", "--ct", self.ct, "--seeds", self.seeds, "--model", M6711, "--prescription-Gy",
                     "145", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        plan = pydicom.dcmread(out / "RTPLAN.dcm")
        # a plan whose sources carry no strength: refused with the attribute named, read with --strength
        for src in plan.SourceSequence:
            del src.ReferenceAirKermaRate
            del src.SourceStrength
            del src.SourceStrengthUnits
        nostrength = self.dir / "nostrength.dcm"
        plan.save_as(nostrength)
        seeds_csv = self.dir / "back.csv"
        r = seedplan("dicom-seeds", "--plan", nostrength, "--out", seeds_csv)
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr.strip(), r"^seedplan: error: .*nostrength.dcm: source 1: Reference Air Kerma Rate "
                                           r"\(300A,022A\) is missing.*--strength")
        self.assertFalse(seeds_csv.exists())
        r = seedplan("dicom-seeds", "--plan", nostrength, "--strength", "0.5", "--unit", "mCi", "--ct", out / "CT",
                     "--out", seeds_csv)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(seeds_csv) as fh:
            rows = list(csv.DictReader(fh))
        self.assertEqual(len(rows), 6)
        self.assertTrue(all(abs(float(row["sk_U"]) - 0.635) < 1e-12 for row in rows))
        # a temporary LDR implant: the dwell time of each seed goes into the CSV
        plan.BrachyTreatmentTechnique = "INTERSTITIAL"
        temporary = self.dir / "temporary.dcm"
        plan.save_as(temporary)
        r = seedplan("dicom-seeds", "--plan", temporary, "--strength", "0.635", "--out", seeds_csv)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("temporary implant", r.stdout)
        with open(seeds_csv) as fh:
            rows = list(csv.DictReader(fh))
        self.assertIn("dwell_time_s", rows[0])
        self.assertAlmostEqual(float(rows[0]["dwell_time_s"]), 59.4 * 86400 / np.log(2), delta=1.0)
        ldr_temporary = pydicom.dcmread(out / "RTPLAN.dcm")
        ldr_temporary.BrachyTreatmentTechnique = "INTERSTITIAL"
        temporary = self.dir / "temporary_with_strength.dcm"
        ldr_temporary.save_as(temporary)
        r = seedplan("dose", "--seeds", temporary, "--reference", self.ct, "--out", self.dir / "never.nrrd")
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr.strip(), r"^seedplan: error: .*temporary_with_strength.dcm: a temporary implant .*totals to "
                                           r"full decay")
        # an RT Plan as seeds input of `seedplan dose`, checked against the CT's frame of reference
        dose = self.dir / "plan_dose.nrrd"
        r = seedplan("dose", "--seeds", out / "RTPLAN.dcm", "--reference", out / "CT", "--crop-margin", "10",
                     "--spacing", "2", "--out", dose)
        self.assertEqual(r.returncode, 0, r.stderr)
        moved = pydicom.dcmread(out / "RTPLAN.dcm")
        moved.FrameOfReferenceUID = pydicom.uid.generate_uid()
        other = self.dir / "other_frame.dcm"
        moved.save_as(other)
        r = seedplan("dose", "--seeds", other, "--reference", out / "CT", "--out", self.dir / "never.nrrd")
        self.assertEqual(r.returncode, 2)
        self.assertRegex(r.stderr.strip(), r"^seedplan: error: .*other_frame.dcm: RT Plan frame of reference .* is not "
                                           r"the CT's")
        self.assertFalse((self.dir / "never.nrrd").exists())
        # the CT given as FOLDER::SERIES_UID
        uid = pydicom.dcmread(next((out / "CT").iterdir()), stop_before_pixels=True).SeriesInstanceUID
        r = seedplan("dicom-seeds", "--plan", out / "RTPLAN.dcm", "--ct", f"{out / 'CT'}::{uid}", "--out", seeds_csv)
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
