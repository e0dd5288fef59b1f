"""End-to-end: `seedplan sources`, `point-dose` and `dose` through the command line with real files."""

import csv
import math
import tempfile
import unittest
from pathlib import Path

import numpy as np

from seedplan_cli import seedplan  # noqa: E402
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
M6711 = "I125_OncoSeed_6711"
HEADER = "x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model\n"




class CliCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def file(self, name, text):
        p = self.dir / name
        p.write_text(text)
        return p

    def assertFailsWith(self, result, pattern):
        self.assertNotEqual(result.returncode, 0, result.stdout)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertRegex(lines[0], "^seedplan: error: .*" + pattern)


class TestSources(CliCase):
    def test_lists_every_model(self):
        r = seedplan("sources")
        self.assertEqual(r.returncode, 0, r.stderr)
        for mid in (M6711, "I125_Best_2301", "I125_BEBIG_I25.S06", "I125_IsoAid_IAI-125A", "Pd103_TheraSeed_200"):
            self.assertIn(mid, r.stdout)
        self.assertRegex(r.stdout, r"Pd103_TheraSeed_200\s+Pd-103\s+0.686\s+0.423\s+16.991\s+2D ")
        self.assertIn("1D unavailable", r.stdout)

    def test_malformed_user_model_named(self):
        (self.dir / "m").mkdir()
        self.file("m/bad.json", '{"model_id": "x", "radionuclide": "I-125"}')
        r = seedplan("sources", "--model-dir", self.dir / "m")
        self.assertFailsWith(r, "bad.json: field 'dose_rate_constant_cGy_per_h_per_U': missing")


class TestPointDose(CliCase):
    def test_independent_check_values(self):
        seeds = self.file("s.csv", HEADER + f"0,0,0,0,0,1,0.5,{M6711}\n")
        pts = self.file("p.csv", "x_mm,y_mm,z_mm\n10,0,0\n0,0,20\n")
        out = self.dir / "out.csv"
        r = seedplan("point-dose", "--seeds", seeds, "--points", pts, "--out", out, "--time-h", 24 * 59.4)
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = list(csv.DictReader(out.open()))
        self.assertAlmostEqual(float(rows[0]["dose_rate_cGy_per_h"]), 0.5 * 0.965, places=5)
        self.assertAlmostEqual(float(rows[0]["total_dose_Gy"]), 0.5 * 19.8472, places=3)
        self.assertAlmostEqual(float(rows[0][f"dose_to_{24 * 59.4:g}h_Gy"]), 0.5 * 19.8472 / 2, places=3)
        # on the axis at 2 cm: S Lambda G_L(2,0)/G_L(1,90) g(2) F(2,0)
        L = 0.3
        expected = 0.5 * 0.965 * (1 / (4 - L * L / 4)) / (2 * math.atan(L / 2) / L) * 0.814 * 0.442
        self.assertAlmostEqual(float(rows[1]["dose_rate_cGy_per_h"]), expected, places=5)

    def test_1d_option_and_refusal(self):
        seeds = self.file("s.csv", HEADER + "0,0,0,0,0,1,0.5,Pd103_TheraSeed_200\n")
        pts = self.file("p.csv", "x_mm,y_mm,z_mm\n10,0,0\n")
        r = seedplan("point-dose", "--seeds", seeds, "--points", pts, "--formalism", "1D")
        self.assertFailsWith(r, "1D formalism is unavailable for Pd103_TheraSeed_200")

    def test_bad_inputs(self):
        pts = self.file("p.csv", "x_mm,y_mm,z_mm\n10,0,0\n")
        cases = {
            HEADER + "0,0,0,0,0,1,0.5,NoSuchSeed\n": "unknown seed model 'NoSuchSeed'",
            "x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,model\n0,0,0,0,0,1,m\n": "missing column.*sk_U",
            HEADER + f"0,0,0,0,0,1,nan,{M6711}\n": "strength is not finite",
            HEADER + f"0,0,0,0,0,1,-1,{M6711}\n": "strength must be > 0",
            HEADER + f"0,0,0,0,0,0,0.5,{M6711}\n": "zero-length",
        }
        for text, pattern in cases.items():
            out = self.dir / "never.csv"
            r = seedplan("point-dose", "--seeds", self.file("s.csv", text), "--points", pts, "--out", out)
            self.assertFailsWith(r, pattern)
            self.assertFalse(out.exists())


class TestDoseGrid(CliCase):
    def make_reference(self):
        img = sitk.Image(30, 24, 20, sitk.sitkInt16)
        img.SetSpacing((1.5, 1.5, 2.0))
        img.SetOrigin((20.0, 10.0, -15.0))  # LPS
        a = math.radians(15)
        img.SetDirection((math.cos(a), -math.sin(a), 0, math.sin(a), math.cos(a), 0, 0, 0, 1))
        path = self.dir / "ct.nrrd"
        sitk.WriteImage(img, str(path))
        return path, img

    def test_dose_on_reference_geometry(self):
        ref_path, ref = self.make_reference()
        centre_lps = np.array(ref.TransformContinuousIndexToPhysicalPoint((14.5, 11.5, 9.5)))
        c = centre_lps * [-1, -1, 1]  # RAS
        seeds = self.file("s.csv", HEADER + f"{c[0]},{c[1]},{c[2]},0.3,0.2,1,0.6,{M6711}\n"
                          + f"{c[0] + 8},{c[1]},{c[2] + 2},0.3,0.2,1,0.6,{M6711}\n")
        out = self.dir / "dose.nrrd"
        r = seedplan("dose", "--seeds", seeds, "--reference", ref_path, "--out", out, "--engine", "direct")
        self.assertEqual(r.returncode, 0, r.stderr)
        img = sitk.ReadImage(str(out))
        self.assertEqual(img.GetSize(), ref.GetSize())
        np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(img.GetSpacing(), ref.GetSpacing(), atol=1e-9)
        np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-9)
        dose = sitk.GetArrayFromImage(img)
        # spot check against the point engine at a voxel 6 mm from the first seed
        from SeedImplantPlannerLib.physics.dose import dose_at_points_Gy
        from SeedImplantPlannerLib.physics.seeds import read_seeds_csv
        idx = (20, 11, 9)
        p = np.array(ref.TransformIndexToPhysicalPoint(idx)) * [-1, -1, 1]
        want, _, _ = dose_at_points_Gy([p], read_seeds_csv(seeds))
        self.assertAlmostEqual(float(dose[idx[2], idx[1], idx[0]]) / want[0], 1.0, delta=5e-3)
        self.assertIn("2 seeds", r.stdout)

    def test_crop_around_seeds_at_chosen_spacing(self):
        ref_path, ref = self.make_reference()
        seeds = self.file("s.csv", HEADER + f"-25,-20,-5,0,0,1,0.6,{M6711}\n")
        out = self.dir / "crop.nrrd"
        r = seedplan("dose", "--seeds", seeds, "--reference", ref_path, "--out", out, "--crop-margin", 6,
                     "--spacing", 0.5, "--engine", "direct")
        self.assertEqual(r.returncode, 0, r.stderr)
        img = sitk.ReadImage(str(out))
        self.assertEqual(img.GetSize(), (25, 25, 25))
        np.testing.assert_allclose(img.GetSpacing(), (0.5, 0.5, 0.5), atol=1e-9)
        np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-9)
        dose = sitk.GetArrayFromImage(img)
        corner = np.array(img.TransformIndexToPhysicalPoint((0, 0, 0))) * [-1, -1, 1]
        from SeedImplantPlannerLib.physics.dose import dose_at_points_Gy
        from SeedImplantPlannerLib.physics.seeds import read_seeds_csv
        want, _, _ = dose_at_points_Gy([corner], read_seeds_csv(seeds))
        self.assertAlmostEqual(float(dose[0, 0, 0]) / want[0], 1.0, places=5)

    def test_bad_inputs_leave_no_file(self):
        ref_path, _ = self.make_reference()
        out = self.dir / "dose.nrrd"
        outside = self.file("o.csv", HEADER + f"500,500,500,0,0,1,0.5,{M6711}\n")
        self.assertFailsWith(seedplan("dose", "--seeds", outside, "--reference", ref_path, "--out", out),
                             "1 seed\\(s\\) lie outside the dose grid")
        bad_img = self.file("bad.nrrd", "garbage")
        ok = self.file("s.csv", HEADER + f"-20,-10,-15,0,0,1,0.5,{M6711}\n")
        self.assertFailsWith(seedplan("dose", "--seeds", ok, "--reference", bad_img, "--out", out),
                             "unreadable image")
        self.assertFailsWith(seedplan("dose", "--seeds", ok, "--box", 0, 0, 0, -5, 5, 5, "--out", out),
                             "empty grid")
        self.assertFailsWith(seedplan("dose", "--seeds", ok, "--out", out), "no dose grid")
        self.assertFalse(out.exists())
        self.assertEqual(sorted(p.name for p in self.dir.iterdir() if p.name.startswith(".")), [])


if __name__ == "__main__":
    unittest.main()
