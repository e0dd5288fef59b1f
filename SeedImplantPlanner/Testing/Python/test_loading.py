"""Seed loading: candidate positions, spacing rules, loading table, nomogram, manual edits with incremental dose."""

import math
import unittest

import numpy as np

from SeedImplantPlannerLib.physics.dose import DoseGrid
from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.planning.loading import (LoadingRules, TargetRegion, candidate_positions, loading_row,
                                           uniform_loading)
from SeedImplantPlannerLib.planning.needles import Needle, curved_catheter
from SeedImplantPlannerLib.planning.nomogram import WU_COEFF_U, estimate, principal_dimensions_cm
from SeedImplantPlannerLib.planning.planfile import Plan
from SeedImplantPlannerLib.planning.problem import Goals
from SeedImplantPlannerLib.physics.seeds import SeedSet

GEOM = ImageGeometry((40, 40, 40), (1.0, 1.0, 1.0), (-19.5, -19.5, -19.5))
M6711 = "I125_OncoSeed_6711"


def box(lo, hi, geometry=GEOM):
    c = geometry.voxel_centers_ras()
    return np.all((c >= np.asarray(lo)) & (c <= np.asarray(hi)), axis=-1)


class CandidateTest(unittest.TestCase):
    def setUp(self):
        self.target = box((-10, -10, -10), (10, 10, 10))
        self.region = TargetRegion(self.target, GEOM)

    def test_positions_from_tip_inside_target(self):
        n = Needle(1, (0, 0, 60), (0, 0, -10))  # tip on the target's far face
        c = candidate_positions([n], self.region, LoadingRules(spacing_mm=5.0, tip_offset_mm=2.0))
        # from the tip: 2, 7, 12, 17 mm -> z = -8, -3, 2, 7 (z = 12 is outside)
        np.testing.assert_allclose(c.s_from_tip_mm, [2, 7, 12, 17])
        np.testing.assert_allclose(c.positions[:, 2], [-8, -3, 2, 7])
        np.testing.assert_allclose(c.axes, np.tile([0, 0, -1.0], (4, 1)))  # needle direction entry -> tip

    def test_margin_admits_positions_just_outside(self):
        n = Needle(1, (0, 0, 60), (0, 0, -10))
        rules = LoadingRules(spacing_mm=5.0, tip_offset_mm=2.0, target_margin_mm=3.0)
        c = candidate_positions([n], TargetRegion(self.target, GEOM, 3.0), rules)
        self.assertIn(12.0, np.round(c.positions[:, 2], 6))  # 2 mm outside the face at z = 10

    def test_curved_catheter_seeds_follow_the_tangent(self):
        t = np.linspace(0, math.pi / 2, 7)
        cp = np.stack([15 * np.cos(t) - 15, 15 * np.sin(t) - 8, np.zeros_like(t)], axis=1)
        cath = curved_catheter(1, cp)
        c = candidate_positions([cath], TargetRegion(box((-20, -20, -5), (20, 20, 5)), GEOM),
                                LoadingRules(spacing_mm=5.0, tip_offset_mm=1.0))
        self.assertGreater(len(c), 2)
        for p, a, s in zip(c.positions, c.axes, c.s_from_tip_mm):
            np.testing.assert_allclose(a, cath.tangent_from_tip(s), atol=1e-9)
            radial = p - np.array([-15.0, -8.0, 0.0])
            self.assertAlmostEqual(float(a @ radial) / np.linalg.norm(radial), 0.0, delta=0.03)

    def test_min_distance_between_needles_and_fixed_seeds(self):
        a = Needle(1, (0, 0, 60), (0, 0, -10))
        b = Needle(2, (3, 0, 60), (3, 0, -10))  # 3 mm away: every level conflicts
        rules = LoadingRules(spacing_mm=10.0, tip_offset_mm=2.0, min_distance_mm=5.0)
        c = candidate_positions([a, b], self.region, rules)
        pairs = c.conflicts(rules.min_distance_mm)
        self.assertEqual(len(pairs), 2)
        self.assertTrue(np.all(c.needle_index[pairs[:, 0]] != c.needle_index[pairs[:, 1]]))
        chosen = uniform_loading(c, rules)
        self.assertEqual(int(chosen.sum()), 2)  # one needle's seeds only
        fixed = candidate_positions([a], self.region, rules, fixed_positions=[[0, 0, -8.0]])
        self.assertNotIn(-8.0, np.round(fixed.positions[:, 2], 6))

    def test_bad_rules(self):
        with self.assertRaisesRegex(InputError, "spacing must be > 0"):
            LoadingRules(spacing_mm=0)
        with self.assertRaisesRegex(InputError, "spacing must be > 0"):
            LoadingRules(spacing_mm=-5)
        with self.assertRaisesRegex(InputError, "tip offset must be >= 0"):
            LoadingRules(tip_offset_mm=-1)
        with self.assertRaisesRegex(InputError, "stranded"):
            LoadingRules(spacing_mm=3.0, stranded=True)


class LoadingTableTest(unittest.TestCase):
    def test_sequence_from_tip(self):
        n = Needle(4, (0, 0, 100), (0, 0, 0), name="B3")
        row = loading_row(n, [25.0, 5.0, 15.0, 45.0], LoadingRules(spacing_mm=10.0, stranded=True))
        self.assertEqual(row["n_seeds"], 4)
        self.assertEqual(row["positions_from_tip_mm"], "5.0;15.0;25.0;45.0")
        # gap to the first seed's near end 5 - 2.25, spacers = centre gap - 4.5 mm seed
        self.assertEqual(row["sequence_from_tip"], "gap 2.8 | S | sp 5.5 | S | sp 5.5 | S | sp 15.5 | S")
        self.assertEqual(row["spacers_mm"], "5.5;5.5;15.5")
        self.assertEqual(loading_row(n, [], LoadingRules())["sequence_from_tip"], "empty")


class NomogramTest(unittest.TestCase):
    def test_wu_power_law_constant(self):
        # a 40 x 30 x 20 mm box: average dimension 3.0 cm (principal extents incl. one voxel)
        g = ImageGeometry((60, 60, 60), (1.0, 1.0, 1.0), (-29.5, -29.5, -29.5))
        m = box((-19.5, -14.5, -9.5), (19.5, 14.5, 9.5), g)
        dims, vol = principal_dimensions_cm(m, g)
        np.testing.assert_allclose(dims, (4.0, 3.0, 2.0), atol=1e-6)
        self.assertAlmostEqual(vol, 24.0, places=6)
        est = estimate(m, g, 145.0, 0.5, M6711)
        self.assertEqual(WU_COEFF_U, 1.69)
        self.assertAlmostEqual(est.total_strength_U, 1.69 * 9.0, places=9)
        self.assertEqual(est.n_seeds, math.ceil(1.69 * 9.0 / 0.5))
        self.assertAlmostEqual(est.total_activity_mCi, 1.69 * 9.0 / 1.270, places=9)
        half = estimate(m, g, 72.5, 0.5, M6711)
        self.assertAlmostEqual(half.total_strength_U, est.total_strength_U / 2, places=9)

    def test_other_models_and_nuclides(self):
        g = ImageGeometry((30, 30, 30), (1.0, 1.0, 1.0), (-14.5, -14.5, -14.5))
        m = box((-10, -10, -10), (10, 10, 10), g)
        ref = estimate(m, g, 145.0, 0.5, M6711)
        other = estimate(m, g, 145.0, 0.5, "I125_Best_2301")
        self.assertAlmostEqual(other.total_strength_U, ref.total_strength_U * 0.965 / 1.018, places=9)
        with self.assertRaisesRegex(InputError, "Pd-103"):
            estimate(m, g, 125.0, 2.0, "Pd103_TheraSeed_200")
        with self.assertRaisesRegex(InputError, "empty"):
            estimate(np.zeros(g.shape, bool), g, 145.0, 0.5, M6711)


class ManualEditTest(unittest.TestCase):
    def test_edits_update_the_dose_incrementally(self):
        g = ImageGeometry((16, 16, 16), (2.0, 2.0, 2.0), (-15.0, -15.0, -15.0))
        needle = Needle(1, (0, 0, 40), (0, 0, -10))
        s = np.array([5.0, 15.0])
        seeds = SeedSet(needle.point_from_tip(s), needle.tangent_from_tip(s), 0.5, M6711)
        plan = Plan({"model": M6711, "strength_U": 0.5}, 120.0, Goals(120.0), LoadingRules(), [needle], seeds,
                    [1, 1], s, [False, False])
        plan.attach_dose_grid(DoseGrid(g, seeds, method="direct"))
        i = plan.add_seed((0.7, 0.2, 8.0), needle_number=1)  # snapped onto the needle
        np.testing.assert_allclose(plan.seeds.positions[i], [0, 0, 8.0], atol=0.2)
        self.assertAlmostEqual(plan.seed_s_from_tip_mm[i], 18.0, delta=0.2)
        plan.move_seed(0, (0, 0, -2.0))
        self.assertAlmostEqual(plan.seed_s_from_tip_mm[0], 8.0, delta=0.2)
        plan.add_seed((6.0, 6.0, 0.0), axis=(1, 0, 0))  # a loose seed
        plan.delete_seed(1)
        self.assertEqual(len(plan.seeds), 3)
        full = DoseGrid(g, plan.seeds, method="direct").dose_Gy()
        np.testing.assert_allclose(plan.dose_grid.dose_Gy(), full, rtol=1e-9, atol=1e-9)
        with self.assertRaisesRegex(InputError, "no seed with index 7"):
            plan.delete_seed(7)
        with self.assertRaisesRegex(InputError, "needs its axis"):
            plan.add_seed((0, 0, 0))


if __name__ == "__main__":
    unittest.main()
