"""Radiobiology of permanent implants (Dale 1985): closed forms against direct integration and worked values."""

import math
import unittest

import numpy as np

from SeedImplantPlannerLib.evaluation.dvh import DoseSamples
from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.physics.radiobiology import (I125_HALF_LIFE_DAYS, TISSUES, LQParams, bed_Gy, bed_to_time_Gy,
                                                decay_constant_per_h, dose_to_time_Gy, effective_treatment_time_h,
                                                eqd2_Gy, structure_radiobiology, time_curve)


def bed_by_integration(total_dose, half_life_days, params, t_end_h, n=400_000):
    """Dale's defining integrals, evaluated numerically: D(T) + (2/(a/b)) int R(t) q(t) dt, q' = R - mu q."""
    lam = decay_constant_per_h(half_life_days)
    mu = params.mu_per_h
    r0 = total_dose * lam
    t = np.linspace(0.0, t_end_h, n + 1)
    h = t[1] - t[0]
    r = r0 * np.exp(-lam * t)
    # exact update of q over a step for piecewise-exponential R (q' = R - mu q)
    q = np.zeros_like(t)
    a = math.exp(-mu * h)
    for_step = r0 * (np.exp(-lam * h) - a) / (mu - lam)
    for i in range(n):
        q[i + 1] = q[i] * a + for_step * math.exp(-lam * t[i])
    integrand = r * q
    quad = h * (integrand.sum() - 0.5 * (integrand[0] + integrand[-1]))
    dose = total_dose * (1 - math.exp(-lam * t_end_h))
    return dose + 2.0 / params.alpha_beta_Gy * quad


class TestBED(unittest.TestCase):
    def test_worked_value_I125_145Gy(self):
        # I-125, 145 Gy, a/b 2 Gy, T_rep 1.5 h: BED = 145 (1 + 145 lambda / ((mu + lambda) 2)) = 156.0 Gy
        # (value computed from Dale's formula in ../shared/DOMAIN.md, "about 156 Gy"; not a published table value)
        p = LQParams(2.0, 1.5)
        lam = math.log(2) / (59.4 * 24)
        expected = 145 * (1 + 145 * lam / ((math.log(2) / 1.5 + lam) * 2.0))
        self.assertAlmostEqual(float(bed_Gy(145.0, 59.4, p)), expected, places=10)
        self.assertAlmostEqual(float(bed_Gy(145.0, 59.4, p)), 156.0, delta=0.05)
        self.assertAlmostEqual(float(eqd2_Gy(bed_Gy(145.0, 59.4, p), 2.0)), 78.0, delta=0.05)

    def test_finite_time_formula_matches_direct_integration(self):
        p = LQParams(3.0, 1.0)
        for t_days in (1.0, 30.0, 200.0):
            closed = float(bed_to_time_Gy(145.0, I125_HALF_LIFE_DAYS, p, t_days * 24))
            numeric = bed_by_integration(145.0, I125_HALF_LIFE_DAYS, p, t_days * 24)
            self.assertAlmostEqual(closed, numeric, delta=1e-4 * closed)

    def test_full_decay_limit(self):
        p = TISSUES["tumour"]
        self.assertAlmostEqual(float(bed_to_time_Gy(120.0, 59.4, p, 1e7)), float(bed_Gy(120.0, 59.4, p)), places=6)
        # Pd-103 (17 d) gives a higher BED than I-125 for the same physical dose (higher dose rate)
        self.assertGreater(float(bed_Gy(120.0, 16.991, p)), float(bed_Gy(120.0, 59.4, p)))

    def test_repopulation(self):
        p = TISSUES["prostate_tumour"].with_(t_pot_days=42.0)
        t_eff = float(effective_treatment_time_h(145.0, 59.4, p))
        lam = decay_constant_per_h(59.4)
        # at T_eff the dose rate equals ln2 / (alpha T_pot): cell kill no longer outpaces repopulation
        self.assertAlmostEqual(145.0 * lam * math.exp(-lam * t_eff), math.log(2) / (0.15 * 42 * 24), places=12)
        self.assertAlmostEqual(t_eff / 24, 234.6, delta=0.5)
        with_repop = float(bed_Gy(145.0, 59.4, p))
        without = float(bed_Gy(145.0, 59.4, TISSUES["prostate_tumour"]))
        expected = float(bed_to_time_Gy(145.0, 59.4, p, t_eff)) - math.log(2) * t_eff / (0.15 * 42 * 24)
        self.assertAlmostEqual(with_repop, expected, places=9)
        self.assertLess(with_repop, without)
        kicked = float(bed_Gy(145.0, 59.4, p.with_(t_kickoff_days=30.0)))
        self.assertGreater(kicked, with_repop)
        # BED never decreases with dose, so BED(D90) is the D90 of the BED distribution
        d = np.linspace(1, 400, 200)
        b = bed_Gy(d, 59.4, p)
        self.assertTrue(np.all(np.diff(b) >= 0))
        self.assertTrue(np.all(np.diff(b[d >= 20]) > 0))

    def test_time_curve(self):
        c = time_curve(145.0, 59.4, TISSUES["tumour"], t_days=[0, 59.4, 1e5])
        np.testing.assert_allclose(c["dose_Gy"], [0, 72.5, 145.0], atol=1e-9)
        self.assertAlmostEqual(c["bed_Gy"][-1], float(bed_Gy(145.0, 59.4, TISSUES["tumour"])), places=6)
        np.testing.assert_allclose(dose_to_time_Gy(145.0, 59.4, 59.4 * 24), 72.5)

    def test_structure_values_and_defaults_with_sources(self):
        s = DoseSamples("PTV", np.full(100, 145.0), 0.01)
        r = structure_radiobiology(s, 59.4, LQParams(2.0, 1.5), {"D90": 145.0})
        self.assertAlmostEqual(r["BED_D90_Gy"], r["BED_mean_Gy"], places=9)
        for key, p in TISSUES.items():
            self.assertTrue(p.source, key)
        self.assertEqual((TISSUES["prostate_tumour"].alpha_beta_Gy, TISSUES["prostate_tumour"].repair_half_time_h), (3.1, 0.5))

    def test_half_life_from_the_seed_model(self):
        from SeedImplantPlannerLib.evaluation.evaluate import seeds_half_life_days
        from SeedImplantPlannerLib.physics.seeds import SeedSet
        pd = SeedSet([[0, 0, 0]], [[0, 0, 1]], [2.0], ["Pd103_TheraSeed_200"])
        self.assertAlmostEqual(seeds_half_life_days(pd), 16.991)
        self.assertEqual(seeds_half_life_days(None), 59.4)
        mixed = SeedSet([[0, 0, 0], [0, 0, 5]], [[0, 0, 1]] * 2, [2.0, 0.5], ["Pd103_TheraSeed_200", "I125_OncoSeed_6711"])
        with self.assertRaisesRegex(InputError, "several half-lives"):
            seeds_half_life_days(mixed)

    def test_bad_parameters(self):
        with self.assertRaisesRegex(InputError, "alpha/beta must be a finite number > 0"):
            LQParams(0.0, 1.5)
        with self.assertRaisesRegex(InputError, "needs alpha"):
            LQParams(3.0, 1.5, t_pot_days=42.0)
        with self.assertRaisesRegex(InputError, "half-life must be > 0"):
            bed_Gy(145.0, -1.0, LQParams(3.0, 1.5))
        with self.assertRaisesRegex(InputError, "total dose must be finite"):
            bed_Gy(float("nan"), 59.4, LQParams(3.0, 1.5))


if __name__ == "__main__":
    unittest.main()
