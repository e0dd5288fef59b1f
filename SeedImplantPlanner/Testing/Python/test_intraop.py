"""Intra-operative re-plan (planning/intraop.py) on a simulated CT (imaging/ctsim.py) of a small plan."""

import tempfile
import unittest

import numpy as np

from SeedImplantPlannerLib.core.errors import GeometryError, InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.imaging import ctsim
from SeedImplantPlannerLib.imaging.segio import Segmentation
from SeedImplantPlannerLib.planning import ctcases, intraop
from SeedImplantPlannerLib.planning.loading import LoadingRules
from SeedImplantPlannerLib.planning.pipeline import plan_from_masks

GEOM = ImageGeometry((40, 40, 40), (1.5, 1.5, 1.5), (-29.25, -29.25, -29.25))


def small_case():
    """A 9 mm-radius target in a water body, needles from inferior (across the axial slices), 8 mm template."""
    c = GEOM.voxel_centers_ras()
    masks = {"GTV": np.linalg.norm(c, axis=-1) <= 9.0,
             "Body": ((c[..., 0] ** 2 + c[..., 1] ** 2) <= 27.0 ** 2) & (c[..., 2] > -27.0),
             "Bone": (np.abs(c[..., 0] - 18.0) <= 2.0) & (np.abs(c[..., 1]) <= 2.0) & (c[..., 2] > -27.0)}
    plan = plan_from_masks(GEOM, masks, "GTV", forbidden=["Bone"], body="Body", prescription_Gy=120.0, strength=0.6,
                           direction="S", template_spacing_mm=8.0, rules=LoadingRules(spacing_mm=7.0, min_distance_mm=5.0),
                           n_target_points=800, n_check_points=1500, time_limit_s=2.0, rng_seed=1)
    plan.structures["direction"] = [0.0, 0.0, 1.0]
    seg = Segmentation.from_masks(GEOM, masks, {"GTV": (1, 0, 0), "Body": (0.9, 0.8, 0.7), "Bone": (1, 1, 0.8)})
    anatomy = np.where(masks["Body"], 30.0, -1000.0).astype(np.float32)
    anatomy[masks["Bone"]] = 350.0
    return plan, seg, (anatomy, GEOM)


class IntraopTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.plan, cls.seg, cls.anatomy = small_case()
        cls.needles, cls.seeds, cls.info = ctcases.implant_scenario(cls.plan, n_loaded=3, rng_seed=4)
        ct_geom = ImageGeometry((56, 56, 20), (1.0, 1.0, 2.0), (-27.5, -27.5, -19.0))
        cls.ct, cls.ct_geom, cls.truth = ctsim.simulate_ct(cls.anatomy, ct_geom, needles=cls.needles, seeds=cls.seeds,
                                                           slice_thickness_mm=2.0, rng_seed=2)
        cls.found_needles = intraop.needles_from_dicts(cls.truth["needles"])
        cls.res = intraop.run_intraop(cls.ct, cls.ct_geom, cls.plan, cls.seg, cls.found_needles,
                                      expected_implanted=len(cls.seeds), time_limit_s=1.5)

    def test_scenario(self):
        used = self.plan.used_needles()
        self.assertEqual(self.info["n_loaded_withdrawn"], 3)
        self.assertEqual(len(self.needles), len(used) - 3)
        self.assertEqual(len(self.seeds), int(sum((self.plan.seed_needle == n.number).sum() for n in used[:3])))
        for n in self.needles:
            self.assertGreaterEqual(n["deviation"]["entry_mm"], 2.0 - 1e-9)
            self.assertLessEqual(n["deviation"]["entry_mm"], 5.0 + 1e-9)
            self.assertGreaterEqual(n["deviation"]["angle_deg"], 1.0 - 1e-6)
            self.assertLessEqual(n["deviation"]["angle_deg"], 4.0 + 1e-6)

    def test_needles_keep_plan_names_numbers_and_deviations(self):
        res = self.res
        planned = {n.name: n.number for n in self.plan.needles}
        for n in res.needles_in_place:
            self.assertEqual(n.number, planned[n.name])
        in_place = [r for r in res.needle_rows if r["status"] == "in place"]
        self.assertEqual(len(in_place), len(self.needles))
        truth = {n["name"]: n["deviation"] for n in self.needles}
        for r in in_place:
            self.assertAlmostEqual(r["tip_mm"], truth[r["name"]]["tip_mm"], places=2)
            self.assertAlmostEqual(r["angle_deg"], truth[r["name"]]["angle_deg"], places=2)
        missing = [r for r in res.needle_rows if r["status"].startswith("not in the CT")]
        self.assertEqual(sorted(r["name"] for r in missing), sorted(self.info["loaded_needles"]))
        # re-planned seeds ride on needles in place, with their plan numbers
        new = ~res.plan.seed_fixed
        self.assertTrue(set(res.plan.seed_needle[new].tolist()) <= {n.number for n in res.needles_in_place})
        self.assertIn("needles in place", res.deviation_line())

    def test_needle_tips_not_run_on_along_seeds_beside_them(self):
        # the needle finder on this CT (2 mm slices, 1 mm pixels): two seeds of a withdrawn track lie
        # 1.7-1.8 mm beside needle Tp1p0, one ahead of its tip. Measured on the CT, the tip stops
        # where the needle's own steel ends, not at the end of the seed beside it (it ran on 2.8 mm
        # along the seed before; 1.1 mm now, the same as Tp0p1 without a seed beside it: the tip
        # inside a 2 mm slice is known to about half a slice)
        in_place, _, _ = intraop.find_needles_in_place(self.ct, self.ct_geom, self.plan, self.seg)
        truth = {n.name: n for n in self.found_needles}
        self.assertEqual(sorted(n.name for n in in_place), sorted(truth))
        true_seeds = np.array([s["center_ras"] for s in self.seeds])
        for n in in_place:
            t = truth[n.name]
            self.assertLess(float(np.linalg.norm(n.tip - t.tip)), 1.5, n.name)
        t = truth["Tp1p0"]
        beside = intraop.point_segment_distance(true_seeds, t.tip + 4.0 * t.direction, t.entry)
        self.assertEqual(int(np.count_nonzero(beside < 2.0)), 2)    # the case still holds its seeds beside the needle

    def test_seed_search_takes_the_needles_out(self):
        # the seed finder takes out the needles passing through the seed region (each listed), and
        # nothing kept lies on a needle in place
        roi = np.ones(self.ct.shape, bool)
        found, keep, rejected, _ = intraop.find_implanted_seeds(self.ct, self.ct_geom, roi, self.found_needles,
                                                                len(self.seeds))
        self.assertGreaterEqual(found.needles_in_place, 1)
        self.assertEqual(sum(r["reason"].startswith("needle in place") for r in rejected), found.needles_in_place)
        # nothing kept lies in a needle's lumen: off its axis by more than its radius, or ahead of its tip
        for n in self.found_needles:
            d = intraop.point_segment_distance(found.positions[keep], n.tip, n.entry)
            ahead = (found.positions[keep] - n.tip) @ n.direction > intraop.LUMEN_TIP_TOLERANCE_MM
            self.assertTrue(np.all((d > n.outer_radius_mm + intraop.LUMEN_TOLERANCE_MM) | ahead), d)

    def test_implanted_seeds_found_fixed_and_matched(self):
        res = self.res
        true = np.array([s["center_ras"] for s in self.seeds])
        found = res.found_seeds.positions
        # no needle point is taken for a seed: every seed found is a true one (seeds merged with a
        # needle in place are rejected with it and listed)
        d = np.linalg.norm(found[:, None] - true[None], axis=-1).min(axis=1)
        # 3 of 4: the two seeds away from needles, and the upper seed lying 1.8 mm beside needle
        # Tp1p0 (off its axis by more than the needle's and the seed's radii: deposited, not in the
        # needle's lumen). The lower seed beside Tp1p0 is missed (a known limit of the seed finder,
        # issue 9): in 2 mm slices with 1 mm pixels its core lies under the needle's steel, both
        # clipped at the CT's 3071 HU ceiling, and after the needle's subtraction only 0.33 seed of
        # its metal is left
        self.assertEqual(len(found), 3)
        self.assertLess(float(d.max()), 1.0)
        self.assertEqual(len(found) < len(true), len(res.rejected) > 0)
        self.assertEqual(int(res.plan.seed_fixed.sum()), len(found))
        np.testing.assert_allclose(res.plan.seeds.positions[res.plan.seed_fixed], found, atol=1e-3)
        self.assertTrue(all(r["planned_seed"] != "" for r in res.seed_rows))
        self.assertGreater(float(res.implanted_dose_Gy.max()), 0.0)
        self.assertTrue(res.options[0]["option"] == "as planned")
        self.assertEqual(sum(1 for o in res.options if o["adopted"]), 1)
        bins, curves = res.target_dvh_curves()
        self.assertEqual(len(curves), 3)
        for v in curves.values():
            self.assertAlmostEqual(float(v[0]), 100.0)
            self.assertTrue(np.all(np.diff(v) <= 1e-9))

    def test_bad_input(self):
        far = ImageGeometry((20, 20, 10), (1.0, 1.0, 2.0), (500.0, 500.0, 500.0))
        with self.assertRaises(GeometryError):
            intraop.run_intraop(np.zeros(far.shape, np.int16), far, self.plan, self.seg, self.found_needles)
        twice = self.found_needles[:1] * 2
        with self.assertRaises(InputError):
            intraop.assign_plan_numbers(twice, self.plan)
        with self.assertRaises(InputError):
            intraop.run_intraop(np.zeros((3, 3, 3)), self.ct_geom, self.plan, self.seg, self.found_needles)

    def test_no_metal_means_nothing_implanted_yet(self):
        blank, g, _ = ctsim.simulate_ct(self.anatomy, self.ct_geom, slice_thickness_mm=2.0, noise=False)
        res = intraop.run_intraop(blank, g, self.plan, self.seg, self.found_needles, time_limit_s=1.0, try_options=False)
        self.assertEqual(len(res.found_seeds), 0)
        self.assertTrue(any("no seeds implanted yet" in w for w in res.warnings))
        self.assertFalse(res.plan.seed_fixed.any())

    def test_unmet_goals_try_the_cheap_options(self):
        import copy
        plan = copy.deepcopy(self.plan)
        # not reachable along the needles in place (20 % there); new needles reach 99.9 % (with the three
        # implanted seeds fixed; 99.99 % was reachable with two)
        plan.goals.v100_min = 0.995
        res = intraop.run_intraop(self.ct, self.ct_geom, plan, self.seg, self.found_needles, time_limit_s=0.5,
                                  implanted_seeds=self.res.found_seeds)
        names = [o["option"] for o in res.options]
        self.assertEqual(names, ["as planned", "seed spacing 5 mm", "new needles"])
        self.assertEqual([o["seed_spacing_mm"] for o in res.options], [7.0, 5.0, 5.0])
        self.assertFalse(res.options[0]["goals_met"])
        self.assertFalse(res.options[1]["goals_met"])
        # new needles meet them but are not allowed: reported, not adopted
        self.assertTrue(res.options[2]["goals_met"])
        self.assertFalse(res.goals_met)
        self.assertEqual(res.adopted, "as planned")
        self.assertIn("new needles would meet them", res.advice)
        self.assertEqual(int(res.plan.seed_fixed.sum()), len(self.res.found_seeds))
        allowed = intraop.run_intraop(self.ct, self.ct_geom, plan, self.seg, self.found_needles, time_limit_s=0.5,
                                      implanted_seeds=self.res.found_seeds, allow_new_needles=True)
        self.assertEqual(allowed.adopted, "new needles")
        self.assertTrue(allowed.goals_met)
        top = max(n.number for n in plan.needles)
        new = [n for n in allowed.plan.used_needles() if n.number > top]
        self.assertTrue(new)
        planned_names = {n.name for n in plan.needles}
        self.assertTrue(all(n.name not in planned_names for n in new))   # a new needle never takes a plan name

    def test_unplanned_needle_listed(self):
        extra = intraop.needles_from_dicts([{"name": "X1", "entry_ras": [0, 3, -40], "tip_ras": [0, 3, -5]}])
        placed, unplanned = intraop.assign_plan_numbers(self.found_needles + extra, self.plan)
        self.assertEqual([n.name for n in unplanned], ["X1"])
        self.assertGreater(unplanned[0].number, max(n.number for n in self.plan.needles))
        rows = intraop.needle_rows(self.plan, placed, unplanned)
        self.assertEqual(rows[-1]["status"], "unplanned")


if __name__ == "__main__":
    unittest.main()
