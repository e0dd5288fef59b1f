"""Plan comparison: gamma index (Low 1998) on analytic cases, metric deltas, grid checks."""

import math
import unittest

import numpy as np

from SeedImplantPlannerLib.physics import dose as D
from SeedImplantPlannerLib.evaluation.compare import compare_plans, gamma_index, resample_dose
from SeedImplantPlannerLib.core.errors import GeometryError, InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.physics.seeds import SeedSet
from SeedImplantPlannerLib.evaluation.structures import Structure


class TestGamma(unittest.TestCase):
    def setUp(self):
        self.g = ImageGeometry((40, 8, 8), (1.0, 1.0, 1.0), (0, 0, 0))
        x = self.g.voxel_centers_ras()[..., 0]
        self.x = x
        self.ramp = 100.0 + 10.0 * x  # 10 Gy/mm gradient along x

    def test_identical_is_zero(self):
        r = gamma_index(self.ramp, self.ramp, self.g, normalization_Gy=100.0)
        self.assertEqual(r.pass_rate_percent, 100.0)
        self.assertEqual(np.nanmax(r.gamma), 0.0)

    def test_dose_difference_in_a_flat_region(self):
        flat = np.full(self.g.shape, 100.0)
        r = gamma_index(flat, flat * 1.02, self.g, normalization_Gy=100.0)
        np.testing.assert_allclose(r.gamma[np.isfinite(r.gamma)], 2.0 / 3.0)
        self.assertEqual(r.pass_rate_percent, 100.0)
        r = gamma_index(flat, flat * 1.045, self.g, normalization_Gy=100.0)
        np.testing.assert_allclose(r.gamma[np.isfinite(r.gamma)], 1.5)
        self.assertEqual(r.pass_rate_percent, 0.0)

    def test_shift_in_a_steep_gradient_is_distance_to_agreement(self):
        # evaluated = reference shifted by 1 mm along x: gamma = 0.5 (1 mm / 2 mm) away from the edges
        shifted = 100.0 + 10.0 * (self.x - 1.0)
        r = gamma_index(self.ramp, shifted, self.g, normalization_Gy=100.0, threshold_percent=0.0)
        inner = r.gamma[:, :, 2:-2]
        np.testing.assert_allclose(inner, 0.5, atol=1e-9)
        shifted3 = 100.0 + 10.0 * (self.x - 3.0)
        r3 = gamma_index(self.ramp, shifted3, self.g, normalization_Gy=100.0, threshold_percent=0.0)
        self.assertTrue(np.all(r3.gamma[:, :, 4:-4] > 1.0))

    def test_low_dose_threshold_and_bad_criteria(self):
        low = np.where(self.x < 20, 5.0, 100.0)
        r = gamma_index(low, low, self.g, normalization_Gy=100.0, threshold_percent=10.0)
        self.assertEqual(r.n_evaluated, int(np.count_nonzero(self.x >= 20)))
        with self.assertRaisesRegex(InputError, "distance to agreement"):
            gamma_index(low, low, self.g, dta_mm=0.0, normalization_Gy=100.0)
        bad = low.copy()
        bad[0, 0, 0] = np.nan
        with self.assertRaisesRegex(InputError, "evaluated dose holds 1 NaN"):
            gamma_index(low, bad, self.g, normalization_Gy=100.0)


class TestComparePlans(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.g = ImageGeometry((25, 25, 25), (1.5, 1.5, 1.5), (-18, -18, -18))
        pos = np.array([[x, y, 0.0] for x in (-5.0, 5.0) for y in (-5.0, 5.0)])
        axes = np.tile([0, 0, 1.0], (4, 1))
        cls.a = D.compute_dose_Gy(cls.g, SeedSet(pos, axes, 0.6, "I125_OncoSeed_6711"), method="direct")[0]
        cls.b = D.compute_dose_Gy(cls.g, SeedSet(pos + [0.0, 3.0, 0.0], axes, 0.6, "I125_OncoSeed_6711"), method="direct")[0]
        r = np.linalg.norm(cls.g.voxel_centers_ras(), axis=-1)
        cls.structs = [Structure("GTV", r <= 9.0, cls.g)]

    def test_deltas_difference_and_gamma(self):
        c = compare_plans(self.a, self.g, self.b, self.g, self.structs, 145.0, labels=("pre", "post"))
        rows = {(r["structure"], r["metric"]): r for r in c.delta_rows}
        d90 = rows[("GTV", "D90")]
        self.assertAlmostEqual(d90["delta"], d90["B"] - d90["A"])
        np.testing.assert_allclose(c.difference_Gy, (self.b - self.a).astype(np.float32))
        self.assertLess(c.gamma.pass_rate_percent, 100.0)
        self.assertGreater(c.gamma.pass_rate_percent, 50.0)
        same = compare_plans(self.a, self.g, self.a, self.g, self.structs, 145.0)
        self.assertEqual(same.gamma.pass_rate_percent, 100.0)
        self.assertTrue(all(r["delta"] == 0 for r in same.delta_rows if r["delta"] is not None))

    def test_grid_mismatch(self):
        other = ImageGeometry((25, 25, 25), (1.5, 1.5, 1.5), (-17, -18, -18))
        with self.assertRaisesRegex(GeometryError, "geometry mismatch between dose grids A and B"):
            compare_plans(self.a, self.g, self.a, other, self.structs, 145.0)
        # with resampling, B is interpolated onto A's grid
        c = compare_plans(self.a, self.g, self.a, other, self.structs, 145.0, resample=True, gamma=False)
        self.assertEqual(c.difference_Gy.shape, self.a.shape)
        far = ImageGeometry((25, 25, 25), (1.5, 1.5, 1.5), (500, 500, 500))
        with self.assertRaisesRegex(GeometryError, "do not overlap"):
            compare_plans(self.a, self.g, self.a, far, self.structs, 145.0, resample=True)

    def test_resample_is_exact_for_a_linear_field(self):
        src = ImageGeometry((10, 10, 10), (2.0, 2.0, 2.0), (0, 0, 0))
        dst = ImageGeometry((9, 9, 9), (1.7, 1.7, 1.7), (1.1, 1.2, 1.3))
        c = src.voxel_centers_ras()
        f = 3.0 * c[..., 0] - 2.0 * c[..., 1] + c[..., 2] + 50
        out = resample_dose(f, src, dst)
        cd = dst.voxel_centers_ras()
        np.testing.assert_allclose(out, 3.0 * cd[..., 0] - 2.0 * cd[..., 1] + cd[..., 2] + 50, atol=1e-9)
        self.assertTrue(math.isfinite(float(out.sum())))


if __name__ == "__main__":
    unittest.main()
