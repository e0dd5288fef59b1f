"""End-to-end: `seedplan find-needles` on a simulated intra-operative CT, then the table into `seedplan plan`'s reader."""

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

from SeedImplantPlannerLib.core.imageio import read_image, write_image  # noqa: E402
from SeedImplantPlannerLib.imaging import ctsim  # noqa: E402
from SeedImplantPlannerLib.imaging.segio import Segmentation, write_segmentation  # noqa: E402
from SeedImplantPlannerLib.planning.needles import read_needles  # noqa: E402


class TestFindNeedles(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.dir = Path(cls.tmp.name)
        ct_path, truth_path = ctsim.make_case("intraop_1mm", d / "case")
        cls.ct = ct_path
        cls.truth = ctsim.read_truth(truth_path)
        ct, g = read_image(ct_path)
        cls.g = g
        inside = [n for n in cls.truth["needles"] if n["tip_inside_ct"]]
        cls.inside = inside
        # the plan: the true needles moved 2 mm and numbered 11.. with names
        with open(d / "planned.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["number", "name", "entry_x_mm", "entry_y_mm", "entry_z_mm", "tip_x_mm", "tip_y_mm", "tip_z_mm"])
            for k, n in enumerate(inside):
                e = np.asarray(n["entry_ras"]) + [0.0, 2.0, 0.0]
                t = np.asarray(n["tip_ras"]) + [0.0, 2.0, 0.0]
                w.writerow([11 + k, f"plan-{n['name']}", *np.round(e, 3), *np.round(t, 3)])
        with open(d / "far.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["entry_x_mm", "entry_y_mm", "entry_z_mm", "tip_x_mm", "tip_y_mm", "tip_z_mm"])
            w.writerow([500, 500, 500, 520, 500, 500])
        # a CT with no metal (the phantom's soft tissue only) and a segmentation outside the CT
        plain = np.clip(ct, -1024, 200).astype(np.int16)
        write_image(d / "plain.nrrd", plain, g)
        from SeedImplantPlannerLib.core.geometry import ImageGeometry
        g_far = ImageGeometry((10, 10, 10), (1.0, 1.0, 1.0), (300.0, 300.0, 300.0))
        write_segmentation(d / "elsewhere.seg.nrrd", Segmentation.from_masks(g_far, {"GTV": np.ones(g_far.shape, bool)}))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def assertFailsWith(self, result, pattern, no_file=None):
        self.assertEqual(result.returncode, 2, result.stderr + result.stdout)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertRegex(lines[0], "^seedplan: error: .*(?:" + pattern + ")")
        if no_file is not None:
            self.assertFalse(Path(no_file).exists(), no_file)

    def test_needles_matched_to_the_plan(self):
        d = self.dir
        r = seedplan("find-needles", "--ct", self.ct, "--plan", d / "planned.csv", "--out", d / "needles.csv",
                     "--deviations", d / "dev.csv", "--report", d / "needles.json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"needles: {len(self.inside)} of {len(self.inside)} planned found", r.stdout)
        # the table is what `seedplan plan --implanted-needles` reads: numbers and names of the plan kept
        needles = read_needles(d / "needles.csv")
        by_name = {n.name: n for n in needles}
        for k, n in enumerate(self.inside):
            got = by_name[f"plan-{n['name']}"]
            self.assertEqual(got.number, 11 + k)
            self.assertLess(np.linalg.norm(got.tip - np.asarray(n["tip_ras"])), 2.0)
        with open(d / "dev.csv", newline="") as fh:
            dev = list(csv.DictReader(fh))
        matched = [row for row in dev if row["status"] == "matched"]
        self.assertEqual(len(matched), len(self.inside))
        for row in matched:  # the plan was moved 2 mm: that is the deviation found
            self.assertAlmostEqual(float(row["tip_mm"]), 2.0, delta=1.5)
            self.assertLess(float(row["angle_deg"]), 2.0)
        unplanned = [row for row in dev if row["status"] == "unplanned"]
        self.assertEqual(len(unplanned), 1)   # the needle partly outside the CT was not in this plan
        rep = json.loads((d / "needles.json").read_text())
        self.assertEqual(rep["found"], len(needles))
        self.assertEqual(rep["matching"]["matched"], len(self.inside))
        self.assertTrue(all("reason" in x for x in rep["rejected"]))

    def test_without_plan(self):
        d = self.dir
        r = seedplan("find-needles", "--ct", self.ct, "--out", d / "plain_needles.csv")
        self.assertEqual(r.returncode, 0, r.stderr)
        needles = read_needles(d / "plain_needles.csv")
        self.assertEqual(len(needles), len(self.truth["needles"]))
        self.assertEqual([n.name for n in needles], [f"N{k}" for k in range(1, len(needles) + 1)])

    def test_seeds_beside_the_needles_found(self):
        d = self.dir
        r = seedplan("find-needles", "--ct", self.ct, "--out", d / "n_for_seeds.csv")
        self.assertEqual(r.returncode, 0, r.stderr)
        # the seed model's capsule sizes the seeds: Best 2301 is 5.0 mm long
        r = seedplan("find-seeds", "--ct", self.ct, "--sk", "0.5", "--model", "I125_Best_2301", "--needles",
                     d / "n_for_seeds.csv", "--out", d / "seeds.csv", "--report", d / "seeds.json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rep = json.loads((d / "seeds.json").read_text())
        self.assertEqual(rep["seed_capsule_mm"], {"length": 5.0, "diameter": 0.8})
        self.assertEqual(rep["needles_in_place"], len(self.truth["needles"]))
        self.assertTrue(all(x.get("reason") for x in rep["rejected"]))
        with open(d / "seeds.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        found = np.array([[float(x["x_mm"]), float(x["y_mm"]), float(x["z_mm"])] for x in rows])
        implanted = [s for s in self.truth["seeds"] if s.get("arrangement") == "implanted"]
        for s in implanted:
            self.assertLess(float(np.min(np.linalg.norm(found - s["center_ras"], axis=1))), 1.0)
        self.assertTrue(all(0.0 <= float(x["confidence"]) <= 1.0 for x in rows))
        r = seedplan("find-seeds", "--ct", self.ct, "--sk", "0.5", "--model", "I125_OncoSeed_6711", "--needles",
                     d / "n_for_seeds.csv", "--no-needles", "--out", d / "never_seeds.csv")
        self.assertFailsWith(r, "--needles or --no-needles", d / "never_seeds.csv")

    def test_bad_inputs_exit_2_with_one_line(self):
        d = self.dir
        out = d / "never.csv"
        self.assertFailsWith(seedplan("find-needles", "--ct", d / "plain.nrrd", "--out", out), "no metal", out)
        self.assertFailsWith(seedplan("find-needles", "--ct", self.ct, "--plan", d / "far.csv", "--out", out),
                             "do not overlap the CT", out)
        self.assertFailsWith(seedplan("find-needles", "--ct", self.ct, "--roi", d / "elsewhere.seg.nrrd",
                                      "--roi-segment", "GTV", "--out", out), "does not overlap the CT", out)
        self.assertFailsWith(seedplan("find-needles", "--ct", self.ct, "--deviations", d / "x.csv", "--out", out),
                             "--deviations needs --plan", out)
        self.assertFailsWith(seedplan("find-needles", "--ct", self.ct, "--min-length", "0", "--out", out),
                             "min-length", out)


if __name__ == "__main__":
    unittest.main()
