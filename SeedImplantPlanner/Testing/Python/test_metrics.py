"""Metrics (names, definitions, CI/EI/HI), goals (syntax, files, presets, pass/fail) and plan evaluation."""

import tempfile
import unittest
from pathlib import Path

import numpy as np

from SeedImplantPlannerLib.evaluation.dvh import DoseSamples
from SeedImplantPlannerLib.core.errors import GeometryError, InputError
from SeedImplantPlannerLib.evaluation.evaluate import evaluate_plan
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.evaluation.goals import goals_from_text, list_presets, load_goals, parse_goal
from SeedImplantPlannerLib.evaluation.metrics import conformity_indices, parse_metric, structure_metrics
from SeedImplantPlannerLib.evaluation.structures import Structure


class TestMetricNames(unittest.TestCase):
    def test_parse(self):
        self.assertEqual(parse_metric("D90").kind, "D_pct")
        self.assertEqual(parse_metric("d2cc").name, "D2cc")
        self.assertEqual(parse_metric("D0.1cc").x, 0.1)
        self.assertEqual(parse_metric("V150").kind, "V_rx")
        self.assertEqual(parse_metric("V20Gy").name, "V20Gy")
        self.assertEqual(parse_metric("dmean").name, "Dmean")
        self.assertTrue(parse_metric("CI").is_index)
        for bad in ("X90", "D150", "Dfoo", ""):
            with self.assertRaises(InputError):
                parse_metric(bad)

    def test_definitions_on_known_samples(self):
        # 100 voxels of 0.01 cc with doses 1..100 Gy, prescription 50 Gy
        s = DoseSamples("T", np.arange(1.0, 101.0), 0.01)
        m = structure_metrics(s, ["D90", "D100", "D50", "D0.1cc", "D2cc", "V100", "V150", "V200", "V40Gy",
                                  "Dmean", "Dmin", "Dmax"], 50.0)
        self.assertEqual(m["D90"]["Gy"], 11.0)      # hottest 90 voxels are 11..100
        self.assertEqual(m["D100"]["Gy"], 1.0)
        self.assertEqual(m["D50"]["Gy"], 51.0)
        self.assertEqual(m["D0.1cc"]["Gy"], 91.0)   # hottest 10 voxels
        self.assertTrue(np.isnan(m["D2cc"]["Gy"]))   # structure is 1 cc
        self.assertAlmostEqual(m["V100"]["percent"], 51.0)   # >= 50 Gy: 50..100
        self.assertAlmostEqual(m["V100"]["cc"], 0.51)
        self.assertAlmostEqual(m["V150"]["percent"], 26.0)   # >= 75 Gy
        self.assertAlmostEqual(m["V200"]["percent"], 1.0)    # >= 100 Gy
        self.assertAlmostEqual(m["V40Gy"]["percent"], 61.0)
        self.assertAlmostEqual(m["Dmean"]["Gy"], 50.5)
        self.assertEqual((m["Dmin"]["Gy"], m["Dmax"]["Gy"]), (1.0, 100.0))

    def test_conformity_indices(self):
        # target 10 voxels, 8 covered; 4 covered voxels outside the target; 2 target voxels >= 1.5 Rx
        dose = np.zeros((1, 1, 20))
        target = np.zeros((1, 1, 20), bool)
        target[0, 0, :10] = True
        dose[0, 0, 2:10] = 100.0
        dose[0, 0, 8:10] = 160.0
        dose[0, 0, 10:14] = 120.0
        ix = conformity_indices(dose, 0.5, target, 100.0)
        self.assertAlmostEqual(ix["CI"], (8 / 10) * (8 / 12))
        self.assertAlmostEqual(ix["EI"], 4 / 10)
        self.assertAlmostEqual(ix["HI"], (8 - 2) / 8)
        self.assertAlmostEqual(ix["V_ref_cc"], 6.0)
        body = np.zeros_like(target)
        body[0, 0, :12] = True
        self.assertAlmostEqual(conformity_indices(dose, 0.5, target, 100.0, body)["EI"], 2 / 10)


class TestGoals(unittest.TestCase):
    def test_parse_and_check(self):
        g = parse_goal("V100 >= 95%")
        self.assertEqual((g.metric.name, g.op, g.limit, g.unit), ("V100", ">=", 95.0, "%"))
        self.assertEqual(g.check({"percent": 96.0, "cc": 1.0}, 145), (96.0, True))
        g = parse_goal("D2cc <= 100 Gy")
        self.assertEqual(g.check({"Gy": 100.5}, 145), (100.5, False))
        g = parse_goal("D90 >= 100%")
        self.assertEqual(g.unit, "%rx")
        v, ok = g.check({"Gy": 150.0}, 145.0)
        self.assertAlmostEqual(v, 103.448, places=3)
        self.assertTrue(ok)
        self.assertEqual(parse_goal("V100 < 1 cc").check({"percent": 3, "cc": 0.99}, 145), (0.99, True))
        self.assertEqual(parse_goal("CI >= 0.6").check({"value": 0.5}, 145), (0.5, False))
        self.assertIsNone(parse_goal("D2cc <= 100 Gy").check({"Gy": float("nan")}, 145)[1])

    def test_unknown_syntax_names_the_goal(self):
        for bad, msg in (("V100 about 95%", "cannot read goal 'V100 about 95%'"),
                         ("D2cc <= 100", "a dose goal needs a unit"),
                         ("V100 >= 95 Gy", "a volume goal needs a unit"),
                         ("Q5 >= 3 Gy", "unknown metric 'Q5'"),
                         ("CI >= 0.6 %", "CI has no unit")):
            with self.assertRaisesRegex(InputError, msg):
                parse_goal(bad)

    def test_text_file_and_errors_with_line_numbers(self):
        gs = goals_from_text("# my goals\nPTV: V100 >= 95%; D90 >= 100%\nRectum: D2cc <= 145 Gy\n")
        self.assertEqual([e.name for e in gs.structures], ["PTV", "Rectum"])
        self.assertEqual(len(gs.structures[0].goals), 2)
        with self.assertRaisesRegex(InputError, "line 2: cannot read goal"):
            goals_from_text("PTV: V100 >= 95%\nRectum: D2cc is low\n", "g.txt")

    def test_presets_load_with_sources(self):
        presets = list_presets()
        self.assertIn("prostate_I125", presets)
        self.assertIn("ct_soft_tissue_I125", presets)
        p = load_goals("prostate_I125")
        self.assertEqual(p.prescription_Gy, 145.0)
        urethra = p.for_structure("urethra")
        self.assertEqual([g.text for g in urethra.goals], ["D5 <= 150%", "D10 <= 150%", "D30 <= 125%"])
        self.assertTrue(all(g.source for e in p.structures for g in e.goals))
        self.assertEqual(p.target_entry().name, "Prostate")
        with self.assertRaisesRegex(InputError, "no such file or preset"):
            load_goals("no_such_preset")

    def test_json_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "g.json"
            f.write_text('{"structures": [{"name": "GTV", "role": "target", "goals": ["V100 >= 90%"]}]}')
            self.assertEqual(load_goals(f).structures[0].goals[0].limit, 90.0)
            f.write_text('{"structures": [{"name": "GTV", "goals": ["V100 >= lots"]}]}')
            with self.assertRaisesRegex(InputError, "cannot read goal 'V100 >= lots'"):
                load_goals(f)


class TestEvaluatePlan(unittest.TestCase):
    def setUp(self):
        self.g = ImageGeometry((30, 30, 30), (1.0, 1.0, 1.0), (-15, -15, -15))
        c = self.g.voxel_centers_ras()
        r = np.linalg.norm(c, axis=-1)
        self.dose = 145.0 * np.clip(12.0 / np.maximum(r, 1.0), 0, 3)  # 145 Gy at r = 12 mm
        self.structs = [Structure("Body", np.ones(self.g.shape, bool), self.g),
                        Structure("PTV", r <= 11.0, self.g),
                        Structure("Rectum", (np.abs(c[..., 0]) <= 4) & (c[..., 1] <= -13) & (np.abs(c[..., 2]) <= 8), self.g)]

    def test_goals_and_roles(self):
        gs = goals_from_text("PTV: V100 >= 95%; D90 >= 100%; V150 <= 20%\nRectum: D2cc <= 100 Gy\nBladder: Dmax <= 200 Gy")
        ev = evaluate_plan(self.dose, self.g, self.structs, 145.0, goals=gs)
        self.assertEqual(ev.target, "PTV")
        self.assertEqual(ev.body, "Body")
        st = {(r["structure"], r["goal"]): r for r in ev.goal_results}
        self.assertEqual(st[("PTV", "V100 >= 95%")]["status"], "pass")
        self.assertEqual(st[("PTV", "V150 <= 20%")]["status"], "fail")
        self.assertEqual(st[("Bladder", "Dmax <= 200 Gy")]["status"], "not evaluated (structure missing)")
        self.assertIn("CI", ev.metrics["PTV"])
        arr = ev.dvh_arrays()["PTV"]
        self.assertEqual(arr["cumulative_percent"][0], 100.0)
        self.assertAlmostEqual(arr["dose_Gy"][1], 0.145)
        d = ev.to_dict()
        self.assertEqual(d["structures"][1]["name"], "PTV")
        self.assertIsNone(d["structures"][2]["metrics"]["D2cc"]["Gy"])  # rectum is below 2 cc: NaN -> None

    def test_required_structure_missing_and_prescription(self):
        with self.assertRaisesRegex(InputError, "required structure 'Prostate'"):
            evaluate_plan(self.dose, self.g, self.structs[:1] + self.structs[2:], 145.0, goals=load_goals("prostate_I125"))
        for rx in (0.0, -5.0, float("nan")):
            with self.assertRaisesRegex(InputError, "prescription dose must be > 0 Gy"):
                evaluate_plan(self.dose, self.g, self.structs, rx)

    def test_structure_outside_a_cropped_grid_error_or_skip(self):
        far_g = ImageGeometry((5, 5, 5), (1.0, 1.0, 1.0), (100, 100, 100))
        far = Structure("SpinalCanal", np.ones(far_g.shape, bool), far_g)
        with self.assertRaisesRegex(GeometryError, "'SpinalCanal' lies entirely outside the dose grid"):
            evaluate_plan(self.dose, self.g, self.structs + [far], 145.0)
        ev = evaluate_plan(self.dose, self.g, self.structs + [far], 145.0, on_outside="skip")
        self.assertNotIn("SpinalCanal", ev.metrics)
        self.assertIn("'SpinalCanal' lies entirely outside the dose grid: not evaluated", ev.warnings)

    def test_target_partly_outside_the_grid_is_refused(self):
        other = ImageGeometry((30, 30, 30), (1.0, 1.0, 1.0), (0, -15, -15))
        ptv = Structure("PTV", np.ones(other.shape, bool), other)
        with self.assertRaisesRegex(GeometryError, "'PTV': 50.0% of its volume lies outside"):
            evaluate_plan(self.dose, self.g, [ptv], 145.0, target="PTV")


if __name__ == "__main__":
    unittest.main()


class TestSeveralTargetsGoals(unittest.TestCase):
    """Goals written for "the target" give every target of a plan its own rows against its own Rx."""

    @classmethod
    def setUpClass(cls):
        from SeedImplantPlannerLib.physics import dose as D
        from SeedImplantPlannerLib.physics.seeds import SeedSet
        cls.g = ImageGeometry((50, 24, 20), (1.5, 1.5, 2.0), (-36.75, -17.25, -19))
        pa = np.array([[x, y, z] for x in (-22.0, -14.0) for y in (-4.0, 4.0) for z in (-5.0, 0.0, 5.0)])
        pb = np.array([[x, y, z] for x in (14.0, 22.0) for y in (-4.0, 4.0) for z in (-5.0, 0.0, 5.0)])
        seeds = SeedSet(np.vstack([pa, pb]), np.tile([0, 0, 1.0], (24, 1)),
                        np.r_[np.full(12, 0.3), np.full(12, 0.42)], "I125_OncoSeed_6711")
        cls.dose = D.compute_dose_Gy(cls.g, seeds, method="direct")[0]
        c = cls.g.voxel_centers_ras()
        cls.ma = np.linalg.norm(c - [-18.0, 0, 0], axis=-1) <= 9.0
        cls.mb = np.linalg.norm(c - [18.0, 0, 0], axis=-1) <= 9.0
        cls.structs = [Structure("GTV_RP", cls.ma, cls.g), Structure("GTV_Groin", cls.mb, cls.g),
                       Structure("Bowel", np.hypot(c[..., 0], c[..., 1] + 14) <= 3.0, cls.g)]
        cls.rx = {"GTV_RP": 145.0, "GTV_Groin": 120.0}

    def evaluate(self, goals):
        return evaluate_plan(self.dose, self.g, self.structs, self.rx["GTV_RP"], target="GTV_RP", goals=goals,
                             target_prescriptions={"GTV_Groin": self.rx["GTV_Groin"]})

    def test_preset_target_goals_for_every_target(self):
        # the CT-guided preset names its target PTV (aliases CTV, GTV, ...): neither target is named so
        ev = self.evaluate("ct_soft_tissue_I125")
        rows = {(r["structure"], r["metric"]): r for r in ev.goal_results}
        dvh = {d.name: d for d in ev.dvhs}
        for name, mask in (("GTV_RP", self.ma), ("GTV_Groin", self.mb)):
            rx = self.rx[name]
            v100, d90 = rows[(name, "V100")], rows[(name, "D90")]
            self.assertEqual(v100["prescription_Gy"], rx)
            # the goal row equals the target's own DVH read at its own Rx ...
            self.assertAlmostEqual(v100["value"], float(np.interp(rx, dvh[name].edges_Gy, dvh[name].cumulative_percent)),
                                   delta=0.5, msg=name)
            # ... and the dose array at its voxel centres (independent of the evaluation library)
            d = self.dose[mask]
            self.assertAlmostEqual(v100["value"], 100.0 * np.mean(d >= rx), delta=2.0, msg=name)
            self.assertAlmostEqual(d90["value"], 100.0 * np.percentile(d, 10.0) / rx, delta=3.0, msg=name)
            self.assertEqual(v100["passed"], v100["value"] >= 90.0)
            self.assertEqual(d90["passed"], d90["value"] >= 100.0)
            # metrics and indices of each target against its own Rx
            self.assertAlmostEqual(ev.metrics[name]["V100"]["percent"], v100["value"], places=9)
            self.assertIn("CI", ev.metrics[name])
        # GTV_Groin's V100 against 120 Gy is not the value against the first target's 145 Gy
        self.assertGreater(rows[("GTV_Groin", "V100")]["value"], 100.0 * np.mean(self.dose[self.mb] >= 145.0) + 5.0)
        self.assertEqual(ev.target_prescriptions, self.rx)
        self.assertEqual(ev.roles["GTV_Groin"], "target")
        self.assertFalse(any(r["status"].startswith("not evaluated") for r in ev.goal_results))
        self.assertEqual({r["prescription_Gy"] for r in ev.to_dict()["goals"] if r["structure"] == "GTV_Groin"}, {120.0})

    def test_text_file_target_line_and_a_target_of_its_own(self):
        gs = goals_from_text("Target: V100 >= 95%; D90 >= 100%\nGTV_Groin: V100 >= 80%\nBowel: D2cc <= 100 Gy")
        ev = self.evaluate(gs)
        got = sorted((r["structure"], r["goal"]) for r in ev.goal_results)
        self.assertEqual(got, [("Bowel", "D2cc <= 100 Gy"), ("GTV_Groin", "V100 >= 80%"), ("GTV_RP", "D90 >= 100%"),
                               ("GTV_RP", "V100 >= 95%")])
        groin = next(r for r in ev.goal_results if r["structure"] == "GTV_Groin")
        self.assertAlmostEqual(groin["value"], 100.0 * np.mean(self.dose[self.mb] >= 120.0), delta=2.0)
        self.assertNotIn("prescription_Gy", next(r for r in ev.goal_results if r["structure"] == "Bowel"))

    def test_one_target_with_another_name_takes_the_target_goals(self):
        # before: "required structure 'PTV' is missing" although the target was named
        ev = evaluate_plan(self.dose, self.g, self.structs[:1], 145.0, target="GTV_RP", goals="ct_soft_tissue_I125")
        self.assertEqual(sorted(r["metric"] for r in ev.goal_results), ["D90", "V100"])
        self.assertEqual(ev.target_prescriptions, {})

    def test_bad_target_prescriptions(self):
        for bad, says in (({"Kidney": 120.0}, "not among the structures"), ({"GTV_Groin": -1.0}, "GTV_Groin"),
                          ({"GTV_RP": 100.0}, "two prescriptions")):
            with self.assertRaisesRegex(InputError, says):
                evaluate_plan(self.dose, self.g, self.structs, 145.0, target="GTV_RP", target_prescriptions=bad)
