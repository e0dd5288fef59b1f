"""End-to-end: `seedplan find-seeds` and `seedplan verify` on synthetic post-implant CT files."""

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

from SeedImplantPlannerLib.imaging import phantoms as pp  # noqa: E402
from SeedImplantPlannerLib.core.fileio import write_csv  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.core.imageio import write_image  # noqa: E402
from SeedImplantPlannerLib.physics.seeds import SEED_COLUMNS, SeedSet, read_seeds_csv, seeds_to_rows  # noqa: E402
from SeedImplantPlannerLib.imaging.segio import Segmentation, write_segmentation  # noqa: E402

M6711 = "I125_OncoSeed_6711"




class TestFindAndVerify(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.dir = Path(cls.tmp.name)
        g = cls.g = ImageGeometry((70, 70, 60), (1.0, 1.0, 1.25), (-34.5, -34.5, -36.875))
        ct, masks = pp.make_water_phantom(g, 4, with_bone=True)
        c = g.voxel_centers_ras()
        ctv = np.sum((c - [-5.0, 3.0, 0.0]) ** 2 / np.array([16.0, 14.0, 18.0]) ** 2, axis=-1) <= 1.0
        far = np.sum((c - [0.0, 0.0, 30.0]) ** 2, axis=-1) <= 3.0 ** 2   # a small structure far from the seeds
        plan = pp.plan_in_mask(ctv, g, spacing_mm=8.0, margin_mm=1.0, strength_U=0.55)
        cls.plan = plan
        truth = pp.simulate_implant(plan, 5, n_migrated=1, migration_mm=(9.0, 12.0), n_touching=2,
                                    needle_shift_mm=1.0)
        cls.truth = truth
        write_image(d / "post.nrrd", pp.make_postimplant_ct(ct, g, truth.seeds, 5), g)
        write_image(d / "pre.nrrd", ct, g)
        write_segmentation(d / "seg.seg.nrrd", Segmentation.from_masks(g, {"Body": masks["Body"], "CTV": ctv,
                                                                           "Far": far, "Empty": np.zeros_like(far)}))
        write_csv(d / "plan.csv", seeds_to_rows(plan), SEED_COLUMNS)
        # a segmentation on a grid that does not overlap the CT
        g_far = ImageGeometry((10, 10, 10), (1.0, 1.0, 1.0), (200.0, 200.0, 200.0))
        write_segmentation(d / "elsewhere.seg.nrrd", Segmentation.from_masks(g_far, {"CTV": np.ones(g_far.shape, bool)}))

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

    def test_find_seeds_then_verify(self):
        d = self.dir
        r = seedplan("find-seeds", "--ct", d / "post.nrrd", "--roi", d / "seg.seg.nrrd", "--roi-segment", "CTV",
                     "--margin", "15", "--planned", d / "plan.csv", "--out", d / "found.csv", "--report",
                     d / "found.json")
        self.assertEqual(r.returncode, 0, r.stderr)
        found = read_seeds_csv(d / "found.csv")
        self.assertEqual(len(found), len(self.truth.seeds))
        self.assertTrue(np.all(found.strengths_U == 0.55))
        self.assertEqual(set(found.models), {M6711})
        with open(d / "found.csv", newline="") as fh:
            row = next(csv.DictReader(fh))
        self.assertTrue({"confidence", "cluster_id", "seeds_in_cluster"} <= set(row))
        rep = json.loads((d / "found.json").read_text())
        self.assertEqual(rep["found"], len(found))
        self.assertEqual(rep["expected"], len(self.plan))
        dd = np.linalg.norm(self.truth.seeds.positions[:, None] - found.positions[None], axis=-1)
        self.assertLess(float(np.max(dd.min(axis=1))), 0.6)

        out = d / "verify"
        r = seedplan("verify", "--planned", d / "plan.csv", "--found", d / "found.csv", "--out-dir", out,
                     "--reference", d / "pre.nrrd", "--spacing", "2", "--max-distance", "6", "--structures",
                     d / "seg.seg.nrrd", "--target", "CTV", "--rx", "145", "--implant-date", "2026-03-01",
                     "--ct-date", "2026-03-31")
        self.assertEqual(r.returncode, 0, r.stderr)
        s = json.loads((out / "summary.json").read_text())
        self.assertEqual(s["planned"], len(self.plan))
        self.assertEqual(s["found"], len(found))
        self.assertEqual(s["matched"] + s["missing"], s["planned"])
        self.assertGreaterEqual(s["missing"], 1)  # the migrated seed moved > 6 mm
        self.assertEqual(s["missing"], s["unexpected"])
        self.assertEqual(set(s["target"]["metrics"]), {"D90", "V100", "V150"})
        self.assertIn("D90", r.stdout)
        with open(out / "matches.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        self.assertEqual(len(rows), s["matched"] + s["missing"] + s["unexpected"])
        self.assertEqual(sum(r_["status"] == "matched" for r_ in rows), s["matched"])
        from SeedImplantPlannerLib.core.imageio import read_image
        dp, gp = read_image(out / "dose_planned.nrrd")
        df, gf = read_image(out / "dose_found.nrrd")
        da, _ = read_image(out / "dose_found_after_ct.nrrd")
        self.assertTrue(gp.matches(gf))
        self.assertEqual(gp.spacing, (2.0, 2.0, 2.0))
        self.assertGreater(float(dp.max()), 145.0)
        self.assertAlmostEqual(float(da.max() / df.max()), s["dose"]["strength_fraction_at_ct"], places=4)

    def test_bad_inputs_exit_2_with_one_line(self):
        d = self.dir
        out = d / "bad.csv"
        common = ("--sk", "0.5", "--model", M6711, "--out", out)
        self.assertFailsWith(seedplan("find-seeds", "--ct", d / "pre.nrrd", *common), "no metal|no seeds found", out)
        self.assertFailsWith(seedplan("find-seeds", "--ct", d / "post.nrrd", "--roi", d / "seg.seg.nrrd",
                                      "--roi-segment", "Empty", *common), "empty", out)
        self.assertFailsWith(seedplan("find-seeds", "--ct", d / "post.nrrd", "--roi", d / "seg.seg.nrrd",
                                      "--roi-segment", "Far", "--margin", "0", *common), "no metal|no seeds", out)
        self.assertFailsWith(seedplan("find-seeds", "--ct", d / "post.nrrd", "--roi", d / "elsewhere.seg.nrrd",
                                      *common), "does not overlap the CT", out)
        self.assertFailsWith(seedplan("find-seeds", "--ct", d / "post.nrrd", "--out", out), "--sk", out)
        self.assertFailsWith(seedplan("find-seeds", "--ct", d / "missing.nrrd", *common), "not found", out)
        self.assertFailsWith(seedplan("find-seeds", "--ct", d / "post.nrrd", "--sk", "0.5", "--model", "NoSuch",
                                      "--out", out), "NoSuch", out)
        self.assertFailsWith(seedplan("verify", "--planned", d / "plan.csv", "--found", d / "missing.csv",
                                      "--out-dir", d / "v_bad"), "missing.csv", d / "v_bad")
        self.assertFailsWith(seedplan("verify", "--planned", d / "plan.csv", "--found", d / "plan.csv",
                                      "--out-dir", d / "v_bad", "--implant-date", "2026-01-01"),
                             "both the implant date and the CT date", d / "v_bad")


if __name__ == "__main__":
    unittest.main()
