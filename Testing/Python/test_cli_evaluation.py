"""End-to-end: `seedplan dvh`, `metrics`, `compare`, `report`, `margin`, `goals` with real files, and bad input."""

import csv
import json
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

from seedplan_cli import seedplan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SeedImplantPlanner"))

from SeedImplantPlannerLib.physics import dose as D  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.core.imageio import read_image, write_image  # noqa: E402
from SeedImplantPlannerLib.imaging.segio import Segmentation, read_segmentation, write_segmentation  # noqa: E402
from SeedImplantPlannerLib.physics.seeds import SeedSet  # noqa: E402




class EvaluationCli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.dir = Path(cls.tmp.name)
        # CT-like grid (LPS-stored, RAS inside) with the segmentation; a coarser dose grid around the implant
        ct = ImageGeometry((50, 50, 30), (1.0, 1.0, 1.5), (-25, -25, -22))
        c = ct.voxel_centers_ras()
        r = np.linalg.norm(c, axis=-1)
        masks = {"Body": np.hypot(c[..., 0], c[..., 1]) <= 24, "GTV": r <= 10,
                 "Urethra": (np.hypot(c[..., 0], c[..., 1] + 1) <= 2.5) & (np.abs(c[..., 2]) <= 15),
                 "Rectum": (np.hypot(c[..., 0], c[..., 1] + 18) <= 5) & (np.abs(c[..., 2]) <= 15),
                 "Empty": np.zeros(ct.shape, bool)}
        write_segmentation(d / "seg.seg.nrrd", Segmentation.from_masks(ct, masks))
        pos = np.array([[x, y, z] for x in (-6.0, 0.0, 6.0) for y in (-6.0, 0.0, 6.0) for z in (-6.0, 0.0, 6.0)
                        if (x, y) != (0.0, 0.0)])
        seeds = SeedSet(pos, np.tile([0, 0, 1.0], (len(pos), 1)), 0.45, "I125_OncoSeed_6711")
        with open(d / "seeds.csv", "w") as fh:
            fh.write("x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model\n")
            for p in pos:
                fh.write(f"{p[0]},{p[1]},{p[2]},0,0,1,0.45,I125_OncoSeed_6711\n")
        cls.dg = ImageGeometry((24, 24, 20), (2.0, 2.0, 2.0), (-23, -23, -19))
        dose = D.compute_dose_Gy(cls.dg, seeds, method="direct")[0]
        write_image(d / "dose.nrrd", dose.astype(np.float32), cls.dg)
        moved = SeedSet(pos + [1.0, 0.0, 0.0], seeds.axes, 0.45, "I125_OncoSeed_6711")
        write_image(d / "dose_b.nrrd", D.compute_dose_Gy(cls.dg, moved, method="direct")[0].astype(np.float32), cls.dg)
        bad = dose.copy()
        bad[3, 4, 5] = np.nan
        write_image(d / "dose_nan.nrrd", bad.astype(np.float32), cls.dg)
        far = ImageGeometry((10, 10, 10), (2.0, 2.0, 2.0), (200, 200, 200))
        write_image(d / "dose_far.nrrd", np.ones(far.shape, np.float32), far)
        shifted = ImageGeometry((24, 24, 20), (2.0, 2.0, 2.0), (-22, -23, -19))
        write_image(d / "dose_shifted.nrrd", dose.astype(np.float32), shifted)
        (d / "bad_goals.txt").write_text("GTV: V100 >= 95%\nRectum: D2cc is fine\n")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_ok(self, *args):
        r = seedplan(*args, cwd=self.dir)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        return r

    def assertFailsWith(self, result, pattern):
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertRegex(lines[0], "^seedplan: error: .*" + pattern)

    # -- happy paths ------------------------------------------------------------------------
    def test_metrics_with_preset_goals_and_bed(self):
        r = self.run_ok("metrics", "--dose", "dose.nrrd", "--structures", "seg.seg.nrrd", "--names", "Body,GTV,Urethra,Rectum",
                        "--goals", "prostate_I125", "--bed", "--csv", "m.csv", "--json", "m.json", "--goals-csv", "g.csv",
                        "--time-curve-csv", "t.csv", "--time-curve-png", "t.png")
        self.assertIn("prescription 145 Gy taken from goals", r.stderr)
        self.assertRegex(r.stdout, r"\[(PASS|FAIL)\] GTV: V100 >= 95%")
        self.assertRegex(r.stdout, r"\[(PASS|FAIL)\] Urethra: D10 <= 150%")
        self.assertIn("Urethra (oar", r.stdout)
        self.assertIn("sub-voxels", r.stdout)
        rows = list(csv.DictReader(open(self.dir / "m.csv")))
        by = {(x["structure"], x["metric"]): x for x in rows}
        self.assertEqual(by[("GTV", "D90")]["unit"], "Gy")
        self.assertEqual(by[("GTV", "V100cc")]["unit"], "cc")
        doc = json.loads((self.dir / "m.json").read_text())
        self.assertEqual(doc["target"], "GTV")
        t = list(csv.DictReader(open(self.dir / "t.csv")))
        self.assertEqual(list(t[0]), ["t_days", "dose_Gy", "bed_Gy"])
        self.assertAlmostEqual(float(t[-1]["dose_Gy"]), doc["structures"][1]["metrics"]["D90"]["Gy"], delta=0.01 * float(t[-1]["dose_Gy"]))
        self.assertTrue((self.dir / "t.png").read_bytes().startswith(b"\x89PNG"))
        self.assertIn("BED_D90_Gy", doc["radiobiology"]["GTV"])
        self.assertTrue(all(g["status"] in ("pass", "fail", "not evaluated (structure missing)", "undefined")
                            for g in doc["goals"]))
        r = seedplan("metrics", "--dose", "dose.nrrd", "--structures", "seg.seg.nrrd", "--names", "Body,GTV",
                     "--rx", "145", "--goals", "prostate_I125", "--metric", "V300", "--fail-on-goals", cwd=self.dir)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("V300", r.stdout)

    def test_exact_subvoxel_dose_from_seeds(self):
        r = self.run_ok("metrics", "--dose", "dose.nrrd", "--structures", "seg.seg.nrrd", "--names", "Urethra",
                        "--rx", "145", "--seeds", "seeds.csv", "--json", "e.json")
        u = json.loads((self.dir / "e.json").read_text())["structures"][0]
        self.assertGreater(u["supersampling"], 1)
        self.assertIn("D0.1cc", r.stdout)
        bad = seedplan("metrics", "--dose", "dose_b.nrrd", "--structures", "seg.seg.nrrd", "--names", "Urethra",
                       "--rx", "145", "--seeds", "seeds.csv", cwd=self.dir)
        self.assertFailsWith(bad, "the seeds do not reproduce the dose grid dose_b.nrrd")

    def test_dvh_csv_and_png(self):
        self.run_ok("dvh", "--dose", "dose.nrrd", "--structures", "seg.seg.nrrd", "--names", "GTV,Rectum", "--rx", "145",
                    "--csv", "dvh.csv", "--png", "dvh.png")
        rows = list(csv.DictReader(open(self.dir / "dvh.csv")))
        self.assertAlmostEqual(float(rows[1]["dose_Gy"]), 0.145)
        self.assertEqual(float(rows[0]["GTV_cum_percent"]), 100.0)
        self.assertTrue((self.dir / "dvh.png").read_bytes().startswith(b"\x89PNG"))

    def test_compare_writes_every_output(self):
        r = self.run_ok("compare", "--dose-a", "dose.nrrd", "--dose-b", "dose_b.nrrd", "--structures", "seg.seg.nrrd",
                        "--names", "GTV,Rectum", "--rx", "145", "--labels", "pre", "post", "--csv", "c.csv",
                        "--png", "c.png", "--diff", "diff.nrrd", "--gamma-map", "gamma.nrrd", "--json", "c.json")
        self.assertRegex(r.stdout, r"gamma 3%/2 mm global, threshold 10% of 145 Gy: \d+\.\d+% pass")
        diff, g = read_image(self.dir / "diff.nrrd")
        a, _ = read_image(self.dir / "dose.nrrd")
        b, _ = read_image(self.dir / "dose_b.nrrd")
        np.testing.assert_allclose(diff, b - a, atol=1e-3)
        self.assertTrue(g.matches(self.dg))
        rows = list(csv.DictReader(open(self.dir / "c.csv")))
        self.assertEqual(list(rows[0]), ["structure", "metric", "unit", "pre", "post", "delta"])
        doc = json.loads((self.dir / "c.json").read_text())
        self.assertGreater(doc["gamma"]["n_evaluated"], 100)

    def test_report_html_and_pdf(self):
        plan = {"implant_date": "2026-11-27", "needles": [{"needle": 1, "seeds": 3, "loading": "S-S-S"}]}
        (self.dir / "plan.json").write_text(json.dumps(plan))
        self.run_ok("report", "--dose", "dose.nrrd", "--structures", "seg.seg.nrrd", "--names", "Body,GTV,Urethra,Rectum",
                    "--goals", "prostate_I125", "--seeds", "seeds.csv", "--plan", "plan.json", "--bed",
                    "--out", "report.html", "--pdf", "report.pdf")
        html = (self.dir / "report.html").read_text()
        self.assertIn("<td>Number of seeds</td><td>24</td>", html)
        self.assertIn("<td>S-S-S</td>", html)
        self.assertEqual(html.count("data:image/png;base64,"), 3)
        self.assertTrue((self.dir / "report.pdf").read_bytes().startswith(b"%PDF"))

    def test_report_takes_the_plans_prescription_over_a_presets(self):
        # the prostate preset's 145 Gy is a default; the plan says 120 Gy: its metrics are against 120 Gy
        (self.dir / "plan120.json").write_text(json.dumps({"prescription_Gy": 120.0, "implant_date": "2026-11-27"}))
        r = self.run_ok("report", "--dose", "dose.nrrd", "--structures", "seg.seg.nrrd", "--names",
                        "Body,GTV,Urethra,Rectum", "--goals", "prostate_I125", "--plan", "plan120.json",
                        "--out", "report120.html")
        self.assertIn("prescription 120 Gy taken from plan plan120.json", r.stderr)
        self.assertIn("rather than the goals' prescription", r.stderr)
        html = (self.dir / "report120.html").read_text()
        self.assertIn("<td>Prescription dose</td><td>120 Gy", html)

    def test_margin_and_goals_listing(self):
        r = self.run_ok("margin", "--structures", "seg.seg.nrrd", "--source", "GTV", "--margin", "3", "3", "5",
                        "--name", "PTV", "--out", "seg_ptv.seg.nrrd")
        self.assertIn("clipped to Body", r.stdout)
        seg = read_segmentation(self.dir / "seg_ptv.seg.nrrd")
        self.assertIn("PTV", seg.names())
        self.assertTrue(np.all(seg.mask("PTV")[seg.mask("GTV")]))
        self.assertGreater(seg.mask("PTV").sum(), seg.mask("GTV").sum())
        r = self.run_ok("goals")
        self.assertIn("prostate_I125", r.stdout)
        self.assertIn("ct_soft_tissue_I125", r.stdout)

    # -- bad input: one line, exit 2, no output file ------------------------------------------
    def check_bad(self, args, pattern, out=None):
        r = seedplan(*args, cwd=self.dir)
        self.assertFailsWith(r, pattern)
        if out:
            self.assertFalse((self.dir / out).exists())

    def test_bad_inputs(self):
        base = ["metrics", "--structures", "seg.seg.nrrd", "--csv", "bad.csv"]
        self.check_bad(base + ["--dose", "dose.nrrd", "--rx", "145", "--names", "GTV,Bladder"],
                       "no segment named 'Bladder'", "bad.csv")
        self.check_bad(base + ["--dose", "dose.nrrd", "--rx", "145", "--names", "GTV,Empty"],
                       "structure 'Empty' is empty", "bad.csv")
        self.check_bad(base + ["--dose", "dose_far.nrrd", "--rx", "145", "--names", "GTV"],
                       "structure 'GTV' lies entirely outside the dose grid", "bad.csv")
        self.check_bad(base + ["--dose", "dose_nan.nrrd", "--rx", "145", "--names", "GTV"],
                       r"dose grid dose_nan.nrrd holds 1 NaN/Inf voxel\(s\)", "bad.csv")
        self.check_bad(base + ["--dose", "dose.nrrd", "--rx", "0", "--names", "GTV"],
                       "prescription dose must be > 0 Gy", "bad.csv")
        self.check_bad(base + ["--dose", "dose.nrrd", "--rx", "-5", "--names", "GTV"],
                       "prescription dose must be > 0 Gy", "bad.csv")
        self.check_bad(base + ["--dose", "dose.nrrd", "--names", "GTV"], "no prescription dose", "bad.csv")
        self.check_bad(base + ["--dose", "dose.nrrd", "--rx", "145", "--names", "GTV", "--goals", "bad_goals.txt"],
                       "bad_goals.txt, line 2: cannot read goal 'D2cc is fine'",
                       "bad.csv")
        self.check_bad(["compare", "--dose-a", "dose.nrrd", "--dose-b", "dose_shifted.nrrd", "--structures",
                        "seg.seg.nrrd", "--names", "GTV", "--rx", "145", "--csv", "bad.csv"],
                       "geometry mismatch between dose grids A and B", "bad.csv")
        (self.dir / "broken_plan.json").write_text("{not json")
        self.check_bad(["report", "--dose", "dose.nrrd", "--structures", "seg.seg.nrrd", "--names", "GTV",
                        "--rx", "145", "--plan", "broken_plan.json", "--out", "bad.html"],
                       "broken_plan.json: plan is not valid JSON", "bad.html")

if __name__ == "__main__":
    unittest.main()


class CroppedDoseReportTest(unittest.TestCase):
    """A report on a dose grid cropped around the implant, from a segmentation with distant organs."""

    def test_distant_organs_skipped_unless_named(self):
        case = ROOT / "Resources" / "SampleCase"
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            seeds = tmp / "seeds.csv"
            seeds.write_text("x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model\n"
                             "-72,-2,0,1,0,0,0.7,I125_OncoSeed_6711\n-62,-2,0,1,0,0,0.7,I125_OncoSeed_6711\n")
            r = seedplan("dose", "--seeds", seeds, "--reference", case / "SampleCT.nrrd", "--crop-margin", 40,
                         "--out", tmp / "dose.nrrd")
            self.assertEqual(r.returncode, 0, r.stderr)
            seg = case / "SampleSegmentation.seg.nrrd"
            r = seedplan("report", "--dose", tmp / "dose.nrrd", "--structures", seg, "--rx", 120,
                         "--out", tmp / "report.html")
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            html = (tmp / "report.html").read_text()
            self.assertIn("outside the dose grid", html)
            r = seedplan("report", "--dose", tmp / "dose.nrrd", "--structures", seg, "--names", "GTV,SpinalCanal",
                         "--rx", 120, "--out", tmp / "named.html")
            self.assertNotEqual(r.returncode, 0)
            self.assertRegex(r.stderr.strip(), "^seedplan: error: structure 'SpinalCanal' lies entirely outside")
            self.assertFalse((tmp / "named.html").exists())
