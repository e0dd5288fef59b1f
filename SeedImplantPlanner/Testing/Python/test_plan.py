"""Plan file (versioned JSON), plan folder from real files, and bad input of the planning pipeline."""

import csv
import json
import math
import tempfile
import unittest
from pathlib import Path

import numpy as np

from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.core.imageio import read_image, write_image
from SeedImplantPlannerLib.planning.loading import LoadingRules
from SeedImplantPlannerLib.planning.needles import curved_catheter
from SeedImplantPlannerLib.planning.pipeline import parse_direction, plan_case, plan_from_masks
from SeedImplantPlannerLib.planning.planfile import (PLAN_VERSION, Plan, read_plan, read_plan_seeds, write_plan,
                                                    write_plan_folder)
from SeedImplantPlannerLib.planning.problem import OARConstraint
from SeedImplantPlannerLib.imaging.segio import Segmentation, write_segmentation

GEOM = ImageGeometry((44, 44, 44), (1.5, 1.5, 1.5), (-32.25, -32.25, -32.25))
OPTS = dict(prescription_Gy=120.0, strength=0.5, direction="P", template_spacing_mm=5.0, body="Body",
            rules=LoadingRules(spacing_mm=5.0, min_distance_mm=4.0), n_target_points=1200, n_check_points=2500,
            time_limit_s=60.0, optimizer_options={"anneal_iterations": 10000}, rng_seed=1)


def masks():
    c = GEOM.voxel_centers_ras()
    target = np.linalg.norm(c, axis=-1) <= 11.0  # about 5.6 cc
    bowel = (c[..., 0] >= 16.0) & (np.abs(c[..., 1]) <= 15) & (np.abs(c[..., 2]) <= 15)
    bone = (c[..., 1] >= 15.0) & (c[..., 1] <= 19.0) & (np.abs(c[..., 0] - 9.5) <= 1.5) & (np.abs(c[..., 2]) <= 2)
    body = np.linalg.norm(c, axis=-1) <= 31.0
    return {"GTV": target, "Bowel": bowel, "Bone": bone, "Body": body}


class PlanFileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.masks = masks()
        cls.plan = plan_from_masks(GEOM, cls.masks, "GTV", oars=[OARConstraint("Bowel", d2cc_Gy=150.0)],
                                   forbidden=["Bone"], **OPTS)

    def test_round_trip(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "plan.json"
            write_plan(path, self.plan)
            doc = json.loads(path.read_text())
            self.assertEqual(doc["format"], "SeedImplantPlanner.plan")
            self.assertEqual(doc["version"], PLAN_VERSION)
            self.assertEqual(doc["source"]["model"], "I125_OncoSeed_6711")
            self.assertEqual(doc["source"]["strength_U"], 0.5)
            self.assertEqual(doc["prescription_Gy"], 120.0)
            self.assertEqual(doc["goals"]["oars"][0]["d2cc_Gy"], 150.0)
            back = read_plan(path)
            np.testing.assert_allclose(back.seeds.positions, self.plan.seeds.positions, atol=1e-4)
            np.testing.assert_allclose(back.seeds.axes, self.plan.seeds.axes, atol=1e-6)
            np.testing.assert_array_equal(back.seed_needle, self.plan.seed_needle)
            self.assertEqual([n.name for n in back.needles], [n.name for n in self.plan.needles])
            self.assertEqual(back.loading_rows(), self.plan.loading_rows())
            self.assertEqual(len(read_plan_seeds(path)), len(self.plan.seeds))

    def test_refuses_other_formats_and_newer_versions(self):
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "x.json"
            doc = self.plan.to_dict()
            doc["version"] = PLAN_VERSION + 1
            p.write_text(json.dumps(doc))
            with self.assertRaisesRegex(InputError, "version .* is not supported"):
                read_plan(p)
            p.write_text(json.dumps({"seeds": []}))
            with self.assertRaisesRegex(InputError, "not a SeedImplantPlanner plan"):
                read_plan(p)
            p.write_text("{broken")
            with self.assertRaisesRegex(InputError, "not valid JSON"):
                read_plan(p)
            doc = self.plan.to_dict()
            del doc["seeds"][0]["position_ras_mm"]
            p.write_text(json.dumps(doc))
            with self.assertRaisesRegex(InputError, "malformed plan file"):
                Plan.from_dict(json.loads(p.read_text()), str(p))

    def test_needles_avoid_the_forbidden_bone(self):
        self.assertTrue(self.plan.optimizer["goals_met"], self.plan.optimizer["message"])
        blocked = {h["needle"] for h in self.plan.obstacles}
        self.assertTrue(blocked)  # the bone bar blocks some template holes ...
        used = {n.name for n in self.plan.used_needles()}
        self.assertFalse(used & blocked)  # ... and none of them is loaded
        self.assertTrue(all(h["structure"] == "Bone" for h in self.plan.obstacles))
        for h in self.plan.obstacles:  # hits name existing needles by number and name
            self.assertEqual(self.plan.needle_by_number(h["number"]).name, h["needle"])

    def test_loaded_needles_are_numbered_first(self):
        used = self.plan.used_needles()
        self.assertEqual([n.number for n in used], list(range(1, len(used) + 1)))
        self.assertEqual(sorted(n.number for n in self.plan.needles), list(range(1, len(self.plan.needles) + 1)))
        self.assertEqual([r["number"] for r in self.plan.loading_rows()], list(range(1, len(used) + 1)))


class PlanFolderTest(unittest.TestCase):
    def test_plan_case_from_files_writes_the_folder(self):
        m = masks()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            ct = np.where(m["Body"], 40, -1000).astype(np.int16)
            ct[m["Bone"]] = 700
            write_image(tmp / "ct.nrrd", ct, GEOM)
            write_segmentation(tmp / "seg.seg.nrrd", Segmentation.from_masks(GEOM, m))
            plan, dose, g = plan_case(tmp / "ct.nrrd", tmp / "seg.seg.nrrd", "GTV",
                                      oars=[OARConstraint("Bowel", d2cc_Gy=150.0)], forbidden=["Bone"],
                                      dose_spacing_mm=2.0, dose_engine="direct", **OPTS)
            files = write_plan_folder(tmp / "out", plan, dose, g)
            names = {p.name for p in files}
            for f in ("plan.json", "needles.csv", "loading.csv", "seeds.csv", "obstacles.csv", "dose.nrrd",
                      "metrics.csv", "metrics.json", "summary.txt"):
                self.assertIn(f, names)
            arr, dg = read_image(tmp / "out" / "dose.nrrd")
            self.assertTrue(dg.matches(g))
            self.assertGreater(float(arr.max()), 120.0)
            with open(tmp / "out" / "loading.csv") as fh:
                rows = list(csv.DictReader(fh))
            self.assertEqual(sum(int(r["n_seeds"]) for r in rows), len(plan.seeds))
            checks = {r["goal"]: r for r in plan.metrics["goal_check"]}
            self.assertTrue(checks["target V100 >= %"]["passed"], checks)
            self.assertTrue(checks["target D90 >= Gy"]["passed"], checks)
            self.assertTrue(checks["Bowel D2cc <= Gy"]["passed"], checks)
            # the dose engine's own metrics on the dose grid
            self.assertGreaterEqual(plan.metrics["structures"][0]["metrics"]["V100"]["percent"], 95.0)


class CurvedCatheterPlanTest(unittest.TestCase):
    def test_seeds_along_curved_catheters_take_the_local_tangent(self):
        m = masks()
        cats = []
        for k, x in enumerate((-6.0, 0.0, 6.0)):
            for z in (-6.0, 0.0, 6.0):
                # arcs bending in x on their way from the anterior skin through the target
                cp = [[x - 8.0, 30.0, z], [x - 2.0, 12.0, z], [x + 2.0, 0.0, z], [x - 2.0, -12.0, z]]
                cats.append(curved_catheter(len(cats) + 1, cp))
        p = plan_from_masks(GEOM, m, "GTV", needle_mode="freehand", needles=cats,
                            **{**OPTS, "rules": LoadingRules(spacing_mm=5.0, min_distance_mm=3.0, tip_offset_mm=1.0)})
        self.assertGreater(len(p.seeds), 0)
        for pos, ax, num, s in zip(p.seeds.positions, p.seeds.axes, p.seed_needle, p.seed_s_from_tip_mm):
            n = p.needle_by_number(num)
            self.assertTrue(n.curved)
            np.testing.assert_allclose(pos, n.point_from_tip(s), atol=1e-6)
            np.testing.assert_allclose(ax, n.tangent_from_tip(s), atol=1e-6)
        self.assertGreater(len({tuple(np.round(a, 3)) for a in p.seeds.axes}), 3)  # not one global axis


class BadInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.masks = masks()

    def test_target_problems(self):
        with self.assertRaisesRegex(InputError, "no target"):
            plan_from_masks(GEOM, self.masks, "", **OPTS)
        with self.assertRaisesRegex(InputError, "target 'PTV' not found"):
            plan_from_masks(GEOM, self.masks, "PTV", **OPTS)
        empty = dict(self.masks, GTV=np.zeros(GEOM.shape, bool))
        with self.assertRaisesRegex(InputError, "target 'GTV' is empty"):
            plan_from_masks(GEOM, empty, "GTV", **OPTS)
        small_image = ImageGeometry((10, 10, 10), (1.0, 1.0, 1.0), (100.0, 100.0, 100.0))
        with self.assertRaisesRegex(InputError, "lies outside the image"):
            plan_from_masks(GEOM, self.masks, "GTV", image_geometry=small_image, **OPTS)

    def test_no_feasible_needle_path(self):
        c = GEOM.voxel_centers_ras()
        wall = dict(self.masks, Bone=(c[..., 1] >= 14.0) & (c[..., 1] <= 18.0))  # a plate between skin and target
        with self.assertRaisesRegex(InputError, "no feasible needle path"):
            plan_from_masks(GEOM, wall, "GTV", forbidden=["Bone"], **OPTS)

    def test_strength_in_mci_decayed_to_the_implant_date(self):
        p = plan_from_masks(GEOM, self.masks, "GTV", **{**OPTS, "strength": 0.4, "strength_unit": "mCi",
                                                         "reference_date": "2026-10-28", "implant_date": "2026-11-27"})
        expected = 0.4 * 1.270 * math.exp(-math.log(2) * 30.0 / 59.4)
        self.assertAlmostEqual(p.strength_U, expected, places=9)
        np.testing.assert_allclose(p.seeds.strengths_U, expected)
        self.assertEqual(p.source["strength_entered"], {"value": 0.4, "unit": "mCi"})
        self.assertEqual(p.source["implant_date"], "2026-11-27")

    def test_needles_too_long_for_the_path(self):
        with self.assertRaisesRegex(InputError, "no feasible needle path"):
            plan_from_masks(GEOM, self.masks, "GTV", **{**OPTS, "usable_length_mm": 15.0})

    def test_bad_numbers(self):
        with self.assertRaisesRegex(InputError, "seed strength must be > 0"):
            plan_from_masks(GEOM, self.masks, "GTV", **{**OPTS, "strength": 0.0})
        with self.assertRaisesRegex(InputError, "spacing must be > 0"):
            plan_from_masks(GEOM, self.masks, "GTV", **{**OPTS, "template_spacing_mm": -1.0})
        with self.assertRaisesRegex(InputError, "prescription dose must be > 0"):
            plan_from_masks(GEOM, self.masks, "GTV", **{**OPTS, "prescription_Gy": 0.0})
        with self.assertRaisesRegex(InputError, "direction"):
            parse_direction("up")
        np.testing.assert_allclose(parse_direction("L"), [-1, 0, 0])
        np.testing.assert_allclose(parse_direction("0,3,4"), [0, 0.6, 0.8])


if __name__ == "__main__":
    unittest.main()
