"""`seedplan intraop --transform` / `--register`: the intra-operative CT of a patient who moved after the
planning CT, brought into the plan's frame before the chain (imaging/registration.py hook).

The CT is simulated (imaging/ctsim.py) with the small test case's anatomy, needles and implanted seeds
all moved by a known rigid motion; the needle table is written in the moved CT's frame (as
find-needles would write it). With the registration the deviations are those of the implant alone;
without it they include the motion.
"""

import csv
import json
import math
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

from seedplan_cli import seedplan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SeedImplantPlanner"))
sys.path.insert(0, str(ROOT / "SeedImplantPlanner" / "Testing" / "Python"))

from SeedImplantPlannerLib.core.fileio import write_csv  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.core.imageio import write_image  # noqa: E402
from SeedImplantPlannerLib.imaging import ctsim  # noqa: E402
from SeedImplantPlannerLib.imaging.registration import RegistrationResult, write_transform  # noqa: E402
from SeedImplantPlannerLib.imaging.segio import write_segmentation  # noqa: E402
from SeedImplantPlannerLib.planning import ctcases, intraop  # noqa: E402
from SeedImplantPlannerLib.planning.needles import NEEDLE_TABLE_COLUMNS, needle_table  # noqa: E402
from SeedImplantPlannerLib.planning.planfile import write_plan  # noqa: E402
from test_intraop import small_case  # noqa: E402

A = math.radians(3.0)
R = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(A), -math.sin(A)], [0.0, math.sin(A), math.cos(A)]])   # tilts the needles
T = np.array([2.5, -2.0, 1.5])


def move(p):
    return (np.asarray(p, float) @ R.T + T).tolist()


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class IntraopWithRegistration(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.dir = Path(cls.tmp.name)
        plan, seg, (arr, ag) = small_case()
        needles, seeds, _ = ctcases.implant_scenario(plan, n_loaded=3, rng_seed=4)
        # the patient moved: the anatomy's grid, the needles and the seeds, by x -> R x + T
        moved_anat = ImageGeometry(ag.size, ag.spacing, tuple(move(ag.origin)), tuple(map(tuple, R @ ag.direction_matrix)))
        for n in needles:
            n["entry_ras"], n["tip_ras"] = move(n["entry_ras"]), move(n["tip_ras"])
            n["bend_direction"] = (R @ np.asarray(n["bend_direction"])).tolist()
        for s in seeds:
            s["center_ras"], s["axis"] = move(s["center_ras"]), (R @ np.asarray(s["axis"])).tolist()
        g = ImageGeometry((56, 56, 20), (1.0, 1.0, 2.0), (-27.5, -27.5, -19.0))
        ct, g, truth = ctsim.simulate_ct((arr, moved_anat), g, needles=needles, seeds=seeds, slice_thickness_mm=2.0,
                                         rng_seed=2)
        write_image(d / "ct.nrrd", ct, g)
        write_segmentation(d / "seg.seg.nrrd", seg)
        write_plan(d / "plan.json", plan)
        write_csv(d / "needles.csv", needle_table(intraop.needles_from_dicts(truth["needles"])), NEEDLE_TABLE_COLUMNS)
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = R.T, -R.T @ T                   # planning-from-new
        write_transform(d / "t.json", RegistrationResult(m))
        write_transform(d / "t.tfm", RegistrationResult(m))
        cls.needles, cls.seeds = needles, seeds
        common = ["intraop", "--ct", d / "ct.nrrd", "--plan", d / "plan.json", "--segmentation", d / "seg.seg.nrrd",
                  "--needles", d / "needles.csv", "--implanted", len(seeds), "--time-limit", 1.0, "--no-scene",
                  "--no-options"]
        cls.with_reg = seedplan(*common, "--transform", d / "t.tfm", "--out", d / "reg")
        cls.without = seedplan(*common, "--out", d / "noreg")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_deviations_are_the_implant_alone(self):
        self.assertIn(self.with_reg.returncode, (0, 3), self.with_reg.stderr)
        self.assertIn(self.without.returncode, (0, 3), self.without.stderr)
        self.assertIn("registration: patient moved", self.with_reg.stdout)
        truth = {n["name"]: n["deviation"] for n in self.needles}
        reg = {r["name"]: r for r in rows(self.dir / "reg" / "needle_deviations.csv") if r["status"] == "in place"}
        noreg = {r["name"]: r for r in rows(self.dir / "noreg" / "needle_deviations.csv") if r["status"] == "in place"}
        self.assertEqual(set(reg), set(truth))
        for name, dev in truth.items():
            self.assertAlmostEqual(float(reg[name]["tip_mm"]), dev["tip_mm"], delta=0.05, msg=name)
            self.assertAlmostEqual(float(reg[name]["angle_deg"]), dev["angle_deg"], delta=0.05, msg=name)
        # without the registration the motion (3 deg, 3.5 mm) is read as needle deviation
        err_reg = np.median([abs(float(reg[n]["angle_deg"]) - truth[n]["angle_deg"]) for n in reg])
        err_noreg = np.median([abs(float(noreg[n]["angle_deg"]) - truth[n]["angle_deg"]) for n in noreg])
        self.assertGreater(err_noreg, 1.0)
        self.assertLess(err_reg, 0.05)

    def test_seeds_in_the_plan_frame_and_registration_recorded(self):
        found = rows(self.dir / "reg" / "seeds_implanted.csv")
        # the same seeds are found with and without the registration (the finder runs on the same voxels)
        self.assertGreater(len(found), 0)
        self.assertEqual(len(found), len(rows(self.dir / "noreg" / "seeds_implanted.csv")))
        truth = np.array([(np.asarray(s["center_ras"]) - T) @ R for s in self.seeds])   # back in the plan frame
        pos = np.array([[float(r["x_mm"]), float(r["y_mm"]), float(r["z_mm"])] for r in found])
        d = np.linalg.norm(pos[:, None, :] - truth[None], axis=-1).min(axis=1)
        self.assertLess(float(d.max()), 1.0, d)
        summary = json.loads((self.dir / "reg" / "intraop_summary.json").read_text())
        self.assertAlmostEqual(summary["registration"]["rotation_angle_deg"], 3.0, places=6)
        self.assertIn("registration.tfm", summary["files"])
        self.assertTrue((self.dir / "reg" / "registration.json").exists())
        self.assertIn("CT registered to the planning CT", (self.dir / "reg" / "report.html").read_text())
        self.assertIsNone(json.loads((self.dir / "noreg" / "intraop_summary.json").read_text())["registration"])

    def test_register_and_transform_together_is_refused(self):
        d = self.dir
        r = seedplan("intraop", "--ct", d / "ct.nrrd", "--plan", d / "plan.json", "--segmentation", d / "seg.seg.nrrd",
                     "--needles", d / "needles.csv", "--register", d / "ct.nrrd", "--transform", d / "t.json",
                     "--out", d / "both")
        self.assertEqual(r.returncode, 2)
        self.assertIn("give --register or --transform, not both", r.stderr)
        self.assertFalse((d / "both").exists())


if __name__ == "__main__":
    unittest.main()
