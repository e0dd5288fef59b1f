"""End-to-end: `seedplan intraop` on a simulated intra-operative CT (ctsim) of a small plan."""

import csv
import json
import sys
import tempfile
import unittest
from pathlib import Path

from seedplan_cli import seedplan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SeedImplantPlanner"))
sys.path.insert(0, str(ROOT / "SeedImplantPlanner" / "Testing" / "Python"))

from SeedImplantPlannerLib.core.fileio import write_csv  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.core.imageio import write_image  # noqa: E402
from SeedImplantPlannerLib.imaging import ctsim  # noqa: E402
from SeedImplantPlannerLib.imaging.segio import write_segmentation  # noqa: E402
from SeedImplantPlannerLib.planning import ctcases, intraop  # noqa: E402
from SeedImplantPlannerLib.planning.needles import NEEDLE_TABLE_COLUMNS, needle_table  # noqa: E402
from SeedImplantPlannerLib.planning.planfile import write_plan  # noqa: E402
from test_intraop import small_case  # noqa: E402


class TestIntraopCommand(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.dir = Path(cls.tmp.name)
        plan, seg, anatomy = small_case()
        needles, seeds, _ = ctcases.implant_scenario(plan, n_loaded=3, rng_seed=4)
        g = ImageGeometry((56, 56, 20), (1.0, 1.0, 2.0), (-27.5, -27.5, -19.0))
        ct, g, truth = ctsim.simulate_ct(anatomy, g, needles=needles, seeds=seeds, slice_thickness_mm=2.0, rng_seed=2)
        write_image(d / "ct.nrrd", ct, g)
        write_segmentation(d / "seg.seg.nrrd", seg)
        write_plan(d / "plan.json", plan)
        write_csv(d / "needles.csv", needle_table(intraop.needles_from_dicts(truth["needles"])), NEEDLE_TABLE_COLUMNS)
        far = ImageGeometry((20, 20, 10), (1.0, 1.0, 2.0), (400.0, 400.0, 400.0))
        write_image(d / "far.nrrd", ct[:10, :20, :20], far)
        cls.plan, cls.truth, cls.seeds = plan, truth, seeds
        cls.result = seedplan("intraop", "--ct", d / "ct.nrrd", "--plan", d / "plan.json", "--segmentation",
                           d / "seg.seg.nrrd", "--needles", d / "needles.csv", "--implanted", len(seeds),
                           "--time-limit", 1.5, "--out", d / "out")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_outputs(self):
        r = self.result
        self.assertIn(r.returncode, (0, 3), r.stderr)
        out = self.dir / "out"
        for name in ("plan/plan.json", "needle_deviations.csv", "seeds_implanted.csv", "options.csv",
                     "dose_implanted.nrrd", "dose_planned.nrrd", "dvh_compare.csv", "dvh_compare.png", "dvh.csv",
                     "metrics.csv", "goals.csv", "report.html", "scene.mrb", "intraop_summary.json"):
            self.assertTrue((out / name).exists(), name)
        with open(out / "needle_deviations.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        planned = {n.name: n.number for n in self.plan.needles}
        in_place = [r for r in rows if r["status"] == "in place"]
        self.assertEqual(len(in_place), len(self.truth["needles"]))
        for row in in_place:
            self.assertEqual(int(row["number"]), planned[row["name"]])
        summary = json.loads((out / "intraop_summary.json").read_text())
        self.assertEqual(summary["needles_in_place"], len(self.truth["needles"]))
        self.assertIn("needles in place", r.stdout)
        self.assertIn("Needle deviations", (out / "report.html").read_text())
        plan = json.loads((out / "plan" / "plan.json").read_text())
        self.assertEqual(sum(1 for s in plan["seeds"] if s["fixed"]), summary["seeds_implanted_found"])

    def test_bad_input_exit_2_nothing_written(self):
        d = self.dir
        cases = [
            ("plan in another frame", ["--ct", d / "far.nrrd", "--plan", d / "plan.json"], "does not overlap"),
            ("missing needle file", ["--ct", d / "ct.nrrd", "--plan", d / "plan.json", "--needles", d / "nope.csv"],
             "nope.csv"),
            ("negative implanted count", ["--ct", d / "ct.nrrd", "--plan", d / "plan.json", "--implanted", "-1"],
             "--implanted"),
        ]
        for what, args, text in cases:
            with self.subTest(what):
                out = d / f"bad_{what.replace(' ', '_')}"
                base = ["--segmentation", d / "seg.seg.nrrd", "--out", out]
                if "--needles" not in args:
                    base += ["--needles", d / "needles.csv"]
                r = seedplan("intraop", *args, *base)
                self.assertEqual(r.returncode, 2, r.stderr)
                lines = [ln for ln in r.stderr.splitlines() if ln.startswith("seedplan: error:")]
                self.assertEqual(len(lines), 1, r.stderr)
                self.assertIn(text, lines[0])
                self.assertFalse(out.exists())

    def test_needles_found_on_the_ct_when_no_table_is_given(self):
        d = self.dir
        r = seedplan("intraop", "--ct", d / "ct.nrrd", "--plan", d / "plan.json", "--segmentation", d / "seg.seg.nrrd",
                     "--no-options", "--no-scene", "--time-limit", 1.0, "--out", d / "out_found")
        self.assertIn(r.returncode, (0, 3), r.stderr)
        self.assertIn("planned found", r.stdout)
        with open(d / "out_found" / "needle_deviations.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        truth = {n["name"]: n for n in self.truth["needles"]}
        in_place = [row for row in rows if row["status"] == "in place"]
        self.assertGreaterEqual(len(in_place), len(truth) - 1)
        for row in in_place:
            self.assertIn(row["name"], truth)

    def test_more_seeds_found_than_implanted_is_said(self):
        d = self.dir
        r = seedplan("intraop", "--ct", d / "ct.nrrd", "--plan", d / "plan.json", "--segmentation", d / "seg.seg.nrrd",
                     "--needles", d / "needles.csv", "--implanted", 1, "--no-options", "--no-scene", "--time-limit", 1.0,
                     "--out", d / "out_one")
        self.assertIn(r.returncode, (0, 3), r.stderr)
        self.assertIn("seeds found but 1 implanted", r.stderr)


if __name__ == "__main__":
    unittest.main()
