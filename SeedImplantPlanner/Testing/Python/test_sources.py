"""Seed model library: shipped constants and tables pinned, user models, malformed files, strength units."""

import copy
import hashlib
import json
import os
import tempfile
import unittest
from pathlib import Path

import numpy as np

from SeedImplantPlannerLib.core.errors import InputError, SeedModelError
from SeedImplantPlannerLib.physics.sources import builtin_models_dir, get_model, load_model_file, load_models
from SeedImplantPlannerLib.physics.strength import strength_at, to_air_kerma_strength_U

#: (Lambda cGy/h/U, L cm, T1/2 d, table digest): a change to any shipped number fails here.
PINNED = {
    "I125_BEBIG_I25.S06": (1.012, 0.35, 59.4, "972f25df3d5671a0"),
    "I125_Best_2301": (1.018, 0.40, 59.4, "49e630f2d09b2c58"),
    "I125_IsoAid_IAI-125A": (0.981, 0.30, 59.4, "54334a3450f2ff71"),
    "I125_OncoSeed_6711": (0.965, 0.30, 59.4, "e728a6e43a5b80c5"),
    "Pd103_TheraSeed_200": (0.686, 0.423, 16.991, "03a0d4f6d8f20b32"),
}

#: TG-43U1 model 6711 tables written out in full (Rivard et al. 2004, as in the reference copy).
G_6711 = [1.055, 1.078, 1.082, 1.071, 1.042, 1.0, 0.908, 0.814, 0.632, 0.496, 0.364, 0.27, 0.199, 0.148,
          0.109, 0.0803]
F_6711_0DEG = [0.333, 0.37, 0.442, 0.488, 0.52, 0.55]
PHI_6711 = [0.973, 0.944, 0.941, 0.942, 0.943, 0.944]


def table_digest(m):
    parts = [m.g_r_cm, m.g_L, m.F_r_cm, m.F_theta_deg, m.F]
    if m.phi_an is not None:
        parts += [m.phi_r_cm, m.phi_an]
    return hashlib.sha256(json.dumps([np.asarray(p).round(6).tolist() for p in parts]).encode()).hexdigest()[:16]


class TestShippedModels(unittest.TestCase):
    def test_all_five_models_with_pinned_constants_and_tables(self):
        models = load_models()
        self.assertEqual(sorted(models), sorted(PINNED))
        for mid, (lam, length, t_half, digest) in PINNED.items():
            m = models[mid]
            self.assertEqual((m.dose_rate_constant, m.active_length_cm, m.half_life_days), (lam, length, t_half))
            self.assertEqual(table_digest(m), digest, f"{mid}: a shipped TG-43 table changed")
            self.assertTrue(m.source_file.endswith(".json"))

    def test_capsule_dimensions_pinned(self):
        # outer capsule (mm) as described in TG-43U1 / TG-43U1S1; the seed finder sizes seeds from these
        want = {"I125_OncoSeed_6711": (4.5, 0.8), "I125_Best_2301": (5.0, 0.8), "I125_BEBIG_I25.S06": (4.5, 0.8),
                "I125_IsoAid_IAI-125A": (4.5, 0.8), "Pd103_TheraSeed_200": (4.5, 0.826)}
        models = load_models()
        for mid, dims in want.items():
            self.assertEqual((models[mid].capsule_length_mm, models[mid].capsule_diameter_mm), dims, mid)

    def test_6711_tables_in_full(self):
        m = get_model("I125_OncoSeed_6711")
        np.testing.assert_array_equal(m.g_L, G_6711)
        np.testing.assert_array_equal(m.F[0], F_6711_0DEG)
        np.testing.assert_array_equal(m.F[-1], np.ones(6))
        np.testing.assert_array_equal(m.phi_an, PHI_6711)
        self.assertEqual(m.F_theta_deg.tolist(), [0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90])

    def test_formalisms_and_conversion_factors(self):
        models = load_models()
        self.assertEqual(models["I125_IsoAid_IAI-125A"].formalisms, ("2D",))
        self.assertEqual(models["Pd103_TheraSeed_200"].formalisms, ("2D",))
        self.assertEqual(models["I125_OncoSeed_6711"].formalisms, ("2D", "1D"))
        for m in models.values():
            if m.nuclide == "I-125":
                self.assertEqual(m.u_per_mci, 1.270)
            else:
                self.assertIsNone(m.u_per_mci)
        self.assertIn("1D unavailable", models["Pd103_TheraSeed_200"].summary()["notes"])

    def test_shipped_files_are_the_reference_copy(self):
        ref = Path(__file__).resolve().parents[3].parent / "shared" / "tg43"
        if not ref.is_dir():
            self.skipTest(f"reference copy {ref} not present on this machine")
        for path in builtin_models_dir().glob("*.json"):
            self.assertEqual(json.loads(path.read_text()), json.loads((ref / path.name).read_text()), path.name)


class TestUserModels(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        self.base = json.loads((builtin_models_dir() / "I125_OncoSeed_6711.json").read_text())

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, name, doc):
        p = self.dir / name
        p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
        return p

    def test_user_model_is_added(self):
        doc = copy.deepcopy(self.base)
        doc["model_id"] = "My_I125_seed"
        doc["dose_rate_constant_cGy_per_h_per_U"] = {"value": 0.95, "sources": ["my measurement"]}
        self.write("mine.json", doc)
        models = load_models([self.dir])
        self.assertEqual(models["My_I125_seed"].dose_rate_constant, 0.95)
        self.assertEqual(len(models), 6)

    def test_env_variable_folder(self):
        doc = copy.deepcopy(self.base)
        doc["model_id"] = "Env_seed"
        self.write("env.json", doc)
        os.environ["SEEDPLAN_MODEL_PATH"] = str(self.dir)
        try:
            self.assertIn("Env_seed", load_models())
        finally:
            del os.environ["SEEDPLAN_MODEL_PATH"]

    def test_malformed_files_name_file_and_field(self):
        cases = {
            "missing_lambda.json": (lambda d: d.pop("dose_rate_constant_cGy_per_h_per_U"), "dose_rate_constant"),
            "negative_L.json": (lambda d: d.__setitem__("L_eff_cm", {"value": -0.3}), "L_eff_cm"),
            "nan_half.json": (lambda d: d.__setitem__("half_life_days", {"value": "x"}), "half_life_days"),
            "g_len.json": (lambda d: d["radial_dose_function"]["g_L"].pop(), "radial_dose_function.g_L"),
            "r_order.json": (lambda d: d["radial_dose_function"]["r_cm"].reverse(), "radial_dose_function.r_cm"),
            "F_shape.json": (lambda d: d["anisotropy_function_2D"]["F"].pop(), "anisotropy_function_2D.F"),
            "F_zero.json": (lambda d: d["anisotropy_function_2D"]["F"][0].__setitem__(0, 0.0),
                            "anisotropy_function_2D.F"),
            "theta.json": (lambda d: d["anisotropy_function_2D"].__setitem__("theta_deg", [5.0 * i for i in range(1, 12)]),
                           "anisotropy_function_2D.theta_deg"),
            "no_id.json": (lambda d: d.pop("model_id"), "model_id"),
            "mci_no_source.json": (lambda d: d.__setitem__("apparent_activity_U_per_mCi", {"value": 1.3}),
                                   "apparent_activity_U_per_mCi.sources"),
            "capsule_len.json": (lambda d: d.__setitem__("capsule_mm", {"length": -4.5, "diameter": 0.8}), "length"),
            "capsule_fat.json": (lambda d: d.__setitem__("capsule_mm", {"length": 0.5, "diameter": 0.8}), "capsule_mm"),
        }
        for name, (mutate, field) in cases.items():
            doc = copy.deepcopy(self.base)
            doc["model_id"] = "x_" + name
            mutate(doc)
            path = self.write(name, doc)
            with self.assertRaises(SeedModelError) as ctx:
                load_model_file(path)
            self.assertIn(name, str(ctx.exception))
            self.assertIn(f"field '{field}", str(ctx.exception))

    def test_not_json_and_duplicate_ids(self):
        p = self.write("broken.json", "{ not json")
        with self.assertRaisesRegex(SeedModelError, "broken.json: not valid JSON"):
            load_model_file(p)
        p.unlink()
        self.write("dup.json", self.base)
        with self.assertRaisesRegex(SeedModelError, "shipped model"):
            load_models([self.dir])

    def test_unknown_model(self):
        with self.assertRaisesRegex(SeedModelError, "unknown seed model 'Nope'.*I125_OncoSeed_6711"):
            get_model("Nope")


class TestStrength(unittest.TestCase):
    def test_units(self):
        m = get_model("I125_OncoSeed_6711")
        self.assertAlmostEqual(to_air_kerma_strength_U(0.5, "mCi", m), 0.635, places=12)
        self.assertEqual(to_air_kerma_strength_U(0.6, "U", m), 0.6)
        pd = get_model("Pd103_TheraSeed_200")
        with self.assertRaisesRegex(InputError, "mCi is not accepted for Pd-103"):
            to_air_kerma_strength_U(1.0, "mCi", pd)
        for bad in (0, -1, float("nan"), float("inf"), "abc"):
            with self.assertRaises(InputError):
                to_air_kerma_strength_U(bad, "U", m)
        with self.assertRaisesRegex(InputError, "unit"):
            to_air_kerma_strength_U(1.0, "Ci", m)

    def test_decay_to_implant_date(self):
        m = get_model("I125_OncoSeed_6711")
        s = strength_at(m, 0.7, "mCi", "2026-01-01", "2026-02-28T12:00")
        self.assertAlmostEqual(s, 0.7 * 1.27 * 2 ** (-(58.5 / 59.4)), places=12)
        with self.assertRaisesRegex(InputError, "ISO date"):
            strength_at(m, 0.7, "mCi", "01/02/2026", "2026-02-28")


if __name__ == "__main__":
    unittest.main()
