"""Two runs writing the same output at once leave one complete, valid result.

- two `seedplan dose` processes (different seed strengths) write one NRRD at the same moment: the
  file is afterwards exactly one run's dose, and no temporary file is left;
- two writers of one plan folder (``write_plan_folder``, different plans, many rounds) leave a
  folder whose files all come from one plan, with no marker or temporary folder left;
- a folder still carrying the incomplete marker (a run killed while moving its files in) is
  refused by every reader.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import unittest
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SeedImplantPlanner"))

from SeedImplantPlannerLib.core.errors import InputError  # noqa: E402
from SeedImplantPlannerLib.core.fileio import INCOMPLETE_MARKER  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.core.imageio import read_image  # noqa: E402
from SeedImplantPlannerLib.physics.dose import compute_dose_Gy  # noqa: E402
from SeedImplantPlannerLib.physics.seeds import SeedSet, read_seeds_csv  # noqa: E402

M6711 = "I125_OncoSeed_6711"


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT / "SeedImplantPlanner") + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _plan(strength_U):
    from SeedImplantPlannerLib.planning.loading import LoadingRules
    from SeedImplantPlannerLib.planning.problem import Goals
    from SeedImplantPlannerLib.planning.planfile import Plan
    seeds = SeedSet([[-5.0, 0, 0], [0, 0, 0], [5.0, 0, 0]], [[0, 0, 1.0]] * 3, strength_U, M6711)
    source = {"model": M6711, "nuclide": "I-125", "strength_U": strength_U, "strength_value": strength_U,
              "strength_unit": "U", "reference_date": None, "implant_date": "2026-11-27"}
    return Plan(source, 120.0, Goals(120.0), LoadingRules(), [], seeds, [0, 0, 0], [np.nan] * 3, [False] * 3)


class ConcurrentWritesTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_two_dose_runs_one_output(self):
        box = ["--box", "-20", "-20", "-20", "20", "20", "20", "--spacing", "1", "--engine", "direct"]
        out_dir = self.dir / "out"
        out_dir.mkdir()
        out = out_dir / "dose.nrrd"
        expected = {}
        procs = []
        for strength in (0.5, 0.9):
            f = self.dir / f"seeds_{strength}.csv"
            f.write_text("x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model\n"
                         + "".join(f"{x},0,0,0,0,1,{strength},{M6711}\n" for x in (-6, 0, 6)))
            g = ImageGeometry.from_bounds([-20] * 3, [20] * 3, 1.0)
            expected[strength] = compute_dose_Gy(g, read_seeds_csv(f), method="direct")[0].astype(np.float32)
            procs.append(subprocess.Popen([sys.executable, "-m", "SeedImplantPlannerLib.cli", "--quiet", "dose",
                                           "--seeds", str(f), *box, "--out", str(out)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()))
        for p in procs:
            _, err = p.communicate(timeout=120)
            self.assertEqual(p.returncode, 0, err)
        self.assertEqual(sorted(x.name for x in out_dir.iterdir()), ["dose.nrrd"], "temporary files left")
        dose, _ = read_image(out)
        matches = [s for s, a in expected.items() if np.array_equal(dose, a)]
        self.assertEqual(len(matches), 1, "the file is not exactly one run's dose")
        print(f"\ntwo concurrent `seedplan dose` runs: the file holds the S_K {matches[0]} U run's dose, complete")

    def test_two_writers_one_plan_folder(self):
        from SeedImplantPlannerLib.planning.planfile import read_plan, write_plan_folder
        folder = self.dir / "plan"
        plans = {s: _plan(s) for s in (0.4, 0.8)}
        errors = []

        def writer(strength):
            try:
                for _ in range(15):
                    write_plan_folder(folder, plans[strength])
            except Exception as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(s,)) for s in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        plan = read_plan(folder / "plan.json")
        seeds = read_seeds_csv(folder / "seeds.csv")
        self.assertIn(plan.strength_U, plans)
        self.assertTrue(np.all(seeds.strengths_U == plan.strength_U), "seeds.csv and plan.json from different runs")
        summary = (folder / "summary.txt").read_text()
        self.assertIn(f"at {plan.strength_U:.4g} U", summary)
        self.assertFalse((folder / INCOMPLETE_MARKER).exists())
        self.assertEqual([p.name for p in self.dir.iterdir() if p.name.startswith(".")], [], "temporary folders left")

    def test_incomplete_folder_refused_by_readers(self):
        from SeedImplantPlannerLib.planning.planfile import read_plan, write_plan_folder
        from SeedImplantPlannerLib.core.imageio import write_image, read_image as read_img
        folder = self.dir / "plan"
        write_plan_folder(folder, _plan(0.5))
        g = ImageGeometry((4, 4, 4), (1, 1, 1), (0, 0, 0))
        write_image(folder / "dose.nrrd", np.zeros(g.shape, np.float32), g)
        (folder / INCOMPLETE_MARKER).write_text("a run was killed while moving its files in\n")
        for what, call in (("plan file", lambda: read_plan(folder / "plan.json")),
                           ("seeds CSV", lambda: read_seeds_csv(folder / "seeds.csv")),
                           ("image", lambda: read_img(folder / "dose.nrrd"))):
            with self.subTest(what=what):
                with self.assertRaisesRegex(InputError, f"{what} is in an incomplete folder"):
                    call()
        from seedplan_cli import seedplan
        r = seedplan("dose", "--seeds", folder / "plan.json", "--box", "-10", "-10", "-10", "10", "10", "10",
                     "--out", self.dir / "dose.nrrd")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertRegex(r.stderr.strip(), "^seedplan: error: .*plan.json: plan file is in an incomplete folder")
        self.assertFalse((self.dir / "dose.nrrd").exists())
        # a complete rewrite clears the marker
        write_plan_folder(folder, _plan(0.5))
        self.assertFalse((folder / INCOMPLETE_MARKER).exists())
        self.assertEqual(json.loads((folder / "plan.json").read_text())["source"]["strength_U"], 0.5)


if __name__ == "__main__":
    unittest.main()
