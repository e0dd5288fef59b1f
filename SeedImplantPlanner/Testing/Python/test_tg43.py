"""TG-43U1 kernel: table nodes, reference values, symmetry, superposition, rules beyond the tables."""

import math
import unittest

import numpy as np

from SeedImplantPlannerLib.physics.dose import dose_at_points_Gy, dose_factor_h, dose_rate_at_points
from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.physics.seeds import SeedSet
from SeedImplantPlannerLib.physics.sources import load_models
from SeedImplantPlannerLib.physics.strength import decay_factor
from SeedImplantPlannerLib.physics.tg43 import (TG43Kernel, geometry_factor_line, geometry_factor_line_reference,
                                        interp_anisotropy, interp_radial)

MODELS = load_models()
M6711 = "I125_OncoSeed_6711"


def rotation_matrix(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = math.cos(angle / 2.0)
    b, c, d = -axis * math.sin(angle / 2.0)
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c + a * d), 2 * (b * d - a * c)],
                     [2 * (b * c - a * d), a * a + c * c - b * b - d * d, 2 * (c * d + a * b)],
                     [2 * (b * d + a * c), 2 * (c * d - a * b), a * a + d * d - b * b - c * c]])


class TestTableNodes(unittest.TestCase):
    def test_dose_rate_at_every_F_node_of_every_model(self):
        """At each (r, theta) node: S_K * Lambda * G ratio * g_L * F within 0.1 % (no F interpolation)."""
        sk = 0.7
        for mid, m in MODELS.items():
            k = TG43Kernel(m)
            for i, th in enumerate(m.F_theta_deg):
                for j, r in enumerate(m.F_r_cm):
                    cos_t = math.cos(math.radians(th))
                    # independent line-source geometry: beta from the two end points (TG-43U1 Eq. 4)
                    half = m.active_length_cm / 2.0
                    z, rho = r * cos_t, r * math.sin(math.radians(th))
                    if rho < 1e-12:
                        G = 1.0 / (r * r - half * half)
                    else:
                        beta = math.atan((z + half) / rho) - math.atan((z - half) / rho)
                        G = beta / (m.active_length_cm * rho)
                    G0 = 2.0 * math.atan(half) / m.active_length_cm
                    g = float(np.interp(r, m.g_r_cm, m.g_L))
                    expected = sk * m.dose_rate_constant * G / G0 * g * m.F[i, j]
                    got, capped = k.dose_rate_per_U(np.array([r]), np.array([cos_t]))
                    self.assertFalse(capped[0], f"{mid} node r={r} theta={th} must not be capped")
                    self.assertAlmostEqual(sk * got[0] / expected, 1.0, delta=1e-3, msg=f"{mid} r={r} th={th}")

    def test_reference_point_equals_sk_lambda(self):
        for mid, m in MODELS.items():
            for formalism in m.formalisms:
                rate, _ = TG43Kernel(m, formalism).dose_rate_per_U(np.array([1.0]), np.array([0.0]))
                want = m.dose_rate_constant
                if formalism == "1D":
                    want *= float(np.interp(1.0, m.phi_r_cm, m.phi_an))
                self.assertAlmostEqual(rate[0], want, places=9, msg=f"{mid} {formalism}")

    def test_6711_total_dose_to_full_decay(self):
        seeds = SeedSet([[0, 0, 0]], [[0, 0, 1]], [1.0], [M6711])
        dose, rate, _ = dose_at_points_Gy([[10.0, 0, 0]], seeds)
        self.assertAlmostEqual(rate[0], 0.965, places=9)
        self.assertAlmostEqual(dose[0] * 100.0, 1984.72, delta=0.01)  # cGy
        self.assertAlmostEqual(dose_factor_h(MODELS[M6711]), 59.4 * 24 / math.log(2), places=9)

    def test_dose_to_time(self):
        seeds = SeedSet([[0, 0, 0]], [[0, 0, 1]], [1.0], [M6711])
        tau = MODELS[M6711].mean_life_h
        half_life_h = 59.4 * 24
        d_t, _, _ = dose_at_points_Gy([[10.0, 0, 0]], seeds, quantity="to_time", t_hours=half_life_h)
        d_inf, _, _ = dose_at_points_Gy([[10.0, 0, 0]], seeds)
        self.assertAlmostEqual(d_t[0] / d_inf[0], 0.5, places=9)
        self.assertAlmostEqual(tau, half_life_h / math.log(2), places=9)
        with self.assertRaises(InputError):
            dose_at_points_Gy([[10.0, 0, 0]], seeds, quantity="to_time", t_hours=float("nan"))

    def test_geometry_factor_matches_point_source_far_away(self):
        g = geometry_factor_line(np.array([50.0]), np.array([0.3]), 0.3)
        self.assertAlmostEqual(g[0] * 50.0 ** 2, 1.0, places=4)
        self.assertAlmostEqual(geometry_factor_line_reference(0.3), 2 * math.atan(0.15) / 0.3, places=12)


class TestSymmetryAndSuperposition(unittest.TestCase):
    def setUp(self):
        self.rng = np.random.default_rng(7)

    def test_symmetry_about_transverse_plane_and_axis(self):
        axis = np.array([0.3, -0.5, 0.8])
        axis /= np.linalg.norm(axis)
        seeds = SeedSet([[1.0, 2.0, 3.0]], [axis], [0.6], [M6711])
        # two unit vectors perpendicular to the axis
        u = np.cross(axis, [1, 0, 0])
        u /= np.linalg.norm(u)
        v = np.cross(axis, u)
        for along, across in [(4.0, 7.0), (12.0, 3.0), (25.0, 20.0), (2.0, 30.0)]:
            p_up = seeds.positions[0] + along * axis + across * u
            p_down = seeds.positions[0] - along * axis + across * u
            p_rot = seeds.positions[0] + along * axis + across * (0.6 * u + 0.8 * v)
            r, _ = dose_rate_at_points([p_up, p_down, p_rot], seeds)
            self.assertAlmostEqual(r[0] / r[1], 1.0, places=12)
            self.assertAlmostEqual(r[0] / r[2], 1.0, places=12)

    def test_superposition(self):
        pos = self.rng.uniform(-20, 20, (5, 3))
        axes = self.rng.normal(size=(5, 3))
        sk = self.rng.uniform(0.3, 0.8, 5)
        pts = self.rng.uniform(-40, 40, (50, 3))
        all_seeds = SeedSet(pos, axes, sk, [M6711, M6711, "I125_Best_2301", M6711, "I125_BEBIG_I25.S06"])
        total, _ = dose_rate_at_points(pts, all_seeds)
        parts = sum(dose_rate_at_points(pts, all_seeds.subset([i]))[0] for i in range(5))
        np.testing.assert_allclose(total, parts, rtol=1e-12)
        doubled = SeedSet(pos, axes, 2 * sk, all_seeds.models)
        np.testing.assert_allclose(dose_rate_at_points(pts, doubled)[0], 2 * total, rtol=1e-12)

    def test_rotating_seed_axis_rotates_dose(self):
        pts = self.rng.uniform(-30, 30, (40, 3))
        centre = np.array([2.0, -1.0, 4.0])
        axis = np.array([0.0, 0.0, 1.0])
        R = rotation_matrix([1.0, 2.0, 0.5], 0.7)
        a = dose_rate_at_points(pts, SeedSet([centre], [axis], [0.5], [M6711]))[0]
        pts_rot = (pts - centre) @ R.T + centre
        b = dose_rate_at_points(pts_rot, SeedSet([centre], [R @ axis], [0.5], [M6711]))[0]
        np.testing.assert_allclose(a, b, rtol=1e-10)
        c = dose_rate_at_points(pts, SeedSet([centre], [R @ axis], [0.5], [M6711]))[0]
        self.assertGreater(np.max(np.abs(c / a - 1)), 0.05, "a rotated axis must change the dose pattern")

    def test_axis_direction_sign_does_not_matter(self):
        pts = self.rng.uniform(-30, 30, (40, 3))
        a = dose_rate_at_points(pts, SeedSet([[0, 0, 0]], [[0.2, 0.1, 1]], [0.5], [M6711]))[0]
        b = dose_rate_at_points(pts, SeedSet([[0, 0, 0]], [[-0.2, -0.1, -1]], [0.5], [M6711]))[0]
        np.testing.assert_allclose(a, b, rtol=1e-12)

    def test_kernel_normalises_the_axis_it_is_given(self):
        k = TG43Kernel(MODELS[M6711])
        pts = self.rng.uniform(-30, 30, (20, 3))
        a, _ = k.dose_rate_at_points(pts, [1, 2, 3], [0.0, 0.0, 1.0], 0.5)
        b, _ = k.dose_rate_at_points(pts, [1, 2, 3], [0.0, 0.0, 7.5], 0.5)
        np.testing.assert_allclose(a, b, rtol=1e-12)
        with self.assertRaisesRegex(InputError, "zero length"):
            k.dose_rate_at_points(pts, [1, 2, 3], [0.0, 0.0, 0.0], 0.5)

    def test_decay_by_date(self):
        m = MODELS[M6711]
        self.assertAlmostEqual(decay_factor(m, "2026-01-01", "2026-03-01T00:00"), 2 ** (-59 / 59.4), places=12)
        pd = MODELS["Pd103_TheraSeed_200"]
        self.assertAlmostEqual(decay_factor(pd, "2026-01-01T00:00", "2026-01-17T23:47:02.400"), 0.5, places=6)


class TestRulesBeyondTables(unittest.TestCase):
    def test_radial_dose_function_extrapolation(self):
        m = MODELS[M6711]
        self.assertEqual(interp_radial(np.array([0.01]), m.g_r_cm, m.g_L)[0], m.g_L[0])
        g12 = interp_radial(np.array([12.0]), m.g_r_cm, m.g_L)[0]
        mu = math.log(m.g_L[-2] / m.g_L[-1])
        self.assertAlmostEqual(g12, m.g_L[-1] * math.exp(-2 * mu), places=12)
        far = interp_radial(np.array([15.0, 30.0, 100.0]), m.g_r_cm, m.g_L)
        self.assertTrue(np.all(far > 0) and np.all(np.diff(far) < 0))
        # continuity at the last tabulated radius, and close to linear extrapolation 1 cm beyond
        self.assertAlmostEqual(interp_radial(np.array([10.0]), m.g_r_cm, m.g_L)[0], m.g_L[-1], places=12)
        linear = m.g_L[-1] + (m.g_L[-1] - m.g_L[-2])
        self.assertLess(abs(interp_radial(np.array([11.0]), m.g_r_cm, m.g_L)[0] - linear) / m.g_L[-1], 0.1)

    def test_anisotropy_nearest_radius_outside_table_never_one_or_zero(self):
        m = MODELS[M6711]
        small = interp_anisotropy(np.array([0.2]), np.array([0.0]), m.F_r_cm, m.F_theta_deg, m.F)[0]
        large = interp_anisotropy(np.array([9.0]), np.array([0.0]), m.F_r_cm, m.F_theta_deg, m.F)[0]
        self.assertEqual(small, m.F[0, 0])
        self.assertEqual(large, m.F[0, -1])
        # mirrored about the transverse plane for 0-90 deg tables
        a = interp_anisotropy(np.array([1.5]), np.array([25.0]), m.F_r_cm, m.F_theta_deg, m.F)[0]
        b = interp_anisotropy(np.array([1.5]), np.array([155.0]), m.F_r_cm, m.F_theta_deg, m.F)[0]
        self.assertEqual(a, b)

    def test_no_nan_or_inf_inside_the_seed_and_capped_points_counted(self):
        for mid, m in MODELS.items():
            k = TG43Kernel(m)
            half = m.active_length_cm / 2
            r = np.array([0.0, 1e-9, half * 0.5, half, half + 1e-6, k.r_cap_cm, 0.5])
            for cos_t in (1.0, -1.0, 0.0, 0.5):
                rate, capped = k.dose_rate_per_U(r, np.full(r.shape, cos_t))
                self.assertTrue(np.all(np.isfinite(rate)) and np.all(rate > 0), f"{mid} cos={cos_t}: {rate}")
                np.testing.assert_array_equal(capped, r < k.r_cap_cm)
            self.assertLess(k.r_cap_cm, min(m.F_r_cm[0], 0.25 + 1e-9), f"{mid}: cap must not hide tabulated data")
        seeds = SeedSet([[0, 0, 0]], [[0, 0, 1]], [1.0], [M6711])
        rate, n_capped = dose_rate_at_points([[0, 0, 0], [0, 0, 1.0], [0, 0, 5.0]], seeds)
        self.assertEqual(n_capped, 2)
        self.assertTrue(np.all(np.isfinite(rate)))

    def test_unavailable_1d_is_refused_with_reason(self):
        with self.assertRaisesRegex(InputError, "phi_an"):
            TG43Kernel(MODELS["I125_IsoAid_IAI-125A"], "1D")
        with self.assertRaisesRegex(InputError, "formalism"):
            TG43Kernel(MODELS[M6711], "3D")


class TestOneVersusTwoD(unittest.TestCase):
    def test_1d_and_2d_agree_on_average_over_solid_angle(self):
        """phi_an(r) is the solid-angle average of the 2D dose over the 1D geometry: check the data's spread.

        At each phi_an radius the 4 pi-averaged 2D dose rate, divided by the 1D dose rate (line
        geometry), equals 1 within the consistency of the published tables (a few per cent).
        """
        for mid, m in MODELS.items():
            if m.phi_an is None:
                continue
            k2, k1 = TG43Kernel(m, "2D"), TG43Kernel(m, "1D")
            theta = np.linspace(0.0, np.pi, 2001)
            w = np.sin(theta)
            ratios = []
            for r in m.phi_r_cm:
                if r < m.F_r_cm[0] or r > m.F_r_cm[-1]:
                    continue
                d2, _ = k2.dose_rate_per_U(np.full(theta.shape, r), np.cos(theta))
                avg = np.trapezoid(d2 * w, theta) / np.trapezoid(w, theta)
                d1, _ = k1.dose_rate_per_U(np.array([r]), np.array([0.0]))
                ratios.append(avg / d1[0])
            ratios = np.array(ratios)
            off = np.abs(ratios - 1) > 0.01
            if mid == "I125_Best_2301":
                # Known data finding (docs/dose-engine.md): the single public transcription of 2301
                # phi_an gives 0.945 at 1 cm where its own F table averages to 0.995 (5 %) and
                # 0.987 at 2 cm (1.2 %); every other radius agrees within 1 %.
                self.assertEqual(np.flatnonzero(off).tolist(), [0, 1], f"{mid}: {np.round(ratios, 4)}")
                self.assertTrue(np.all(np.abs(ratios - 1) < 0.06))
            else:
                self.assertFalse(np.any(off), f"{mid}: {np.round(ratios, 4)}")

    def test_1d_transverse_axis_ratio_is_phi_an_over_F90(self):
        m = MODELS[M6711]
        k2, k1 = TG43Kernel(m, "2D"), TG43Kernel(m, "1D")
        for r, phi in zip(m.phi_r_cm, m.phi_an):
            d2, _ = k2.dose_rate_per_U(np.array([r]), np.array([0.0]))
            d1, _ = k1.dose_rate_per_U(np.array([r]), np.array([0.0]))
            self.assertAlmostEqual(d1[0] / d2[0], phi, places=9)


if __name__ == "__main__":
    unittest.main()
