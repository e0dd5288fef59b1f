"""Plan report: self-contained HTML (plan summary, needle table when needles exist, goals, pictures) and PDF."""

import base64
import os
import re
import tempfile
import unittest
from pathlib import Path

import numpy as np

from SeedImplantPlannerLib.physics import dose as D
from SeedImplantPlannerLib.reporting.charts import PLANES, distinct_colors
from SeedImplantPlannerLib.evaluation.evaluate import evaluate_plan
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.evaluation.goals import goals_from_text
from SeedImplantPlannerLib.reporting.report import needle_table, plan_summary, write_report
from SeedImplantPlannerLib.physics.seeds import SeedSet
from SeedImplantPlannerLib.evaluation.structures import Structure


class TestReport(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.g = ImageGeometry((24, 24, 20), (1.5, 1.5, 2.0), (-17.25, -17.25, -19))
        pos = np.array([[x, y, z] for x in (-4.0, 4.0) for y in (-4.0, 4.0) for z in (-5.0, 0.0, 5.0)])
        cls.seeds = SeedSet(pos, np.tile([0, 0, 1.0], (len(pos), 1)), 0.5, "I125_OncoSeed_6711")
        cls.dose = D.compute_dose_Gy(cls.g, cls.seeds, method="direct")[0]
        c = cls.g.voxel_centers_ras()
        cls.structs = [Structure("Body", np.ones(cls.g.shape, bool), cls.g, (0.8, 0.8, 0.6)),
                       Structure("PTV", np.linalg.norm(c, axis=-1) <= 9.0, cls.g, (0.9, 0.1, 0.1)),
                       Structure("Rectum", np.hypot(c[..., 0], c[..., 1] + 14) <= 3.0, cls.g, (0.9, 0.1, 0.1))]
        goals = goals_from_text("PTV: V100 >= 90%; V150 <= 10%\nRectum: D2cc <= 145 Gy")
        cls.ev = evaluate_plan(cls.dose, cls.g, cls.structs, 145.0, goals=goals, radiobiology=True)

    def images(self, html):
        return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]

    def test_html_and_pdf_with_needles(self):
        plan = {"source_model": "I125_OncoSeed_6711", "implant_date": "2026-11-27",
                "needles": [{"needle": 1, "entry_ras_mm": [4.0, 4.0, -40.0], "seeds": 3, "loading": "S-X-S-X-S"},
                            {"needle": 2, "entry_ras_mm": [-4.0, 4.0, -40.0], "seeds": 3, "loading": "S-X-S-X-S"}]}
        with tempfile.TemporaryDirectory() as tmp:
            out = write_report(Path(tmp) / "r.html", self.ev, self.dose, structures=self.structs, plan=plan,
                               seeds=self.seeds, pdf_path=Path(tmp) / "r.pdf")
            html = Path(out["html"]).read_text()
            pdf = Path(out["pdf"]).read_bytes()
            self.assertEqual(sorted(p.name for p in Path(tmp).iterdir()), ["r.html", "r.pdf"])  # no temp files left
        self.assertTrue(pdf.startswith(b"%PDF"))
        self.assertGreaterEqual(pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page "), 5)
        self.assertNotIn("src=\"http", html)  # self-contained
        imgs = self.images(html)
        self.assertEqual(len(imgs), 3)  # DVH, slices, dose/BED against time
        self.assertTrue(all(i.startswith(b"\x89PNG") for i in imgs))
        self.assertIn("<td>Number of seeds</td><td>12</td>", html)
        self.assertIn("<td>Number of needles</td><td>2</td>", html)
        self.assertIn("<th>loading</th>", html)
        self.assertIn("<td>S-X-S-X-S</td>", html)
        self.assertIn("6 U", html)  # total air-kerma strength 12 x 0.5 U
        self.assertRegex(html, r"<tr class=\"(pass|fail)\"><td>PTV</td><td>V100 &gt;= 90%</td>")
        self.assertIn("Radiobiology", html)

    def test_without_needles_the_table_says_so(self):
        self.assertIsNone(needle_table({"needles": []}))
        rows = dict(plan_summary(self.ev, None, None))
        self.assertEqual(rows["Number of needles"], "- (no needles yet)")
        self.assertEqual(rows["Prescription dose"], "145 Gy")
        with tempfile.TemporaryDirectory() as tmp:
            out = write_report(Path(tmp) / "r.html", self.ev, self.dose, structures=self.structs)
            html = Path(out["html"]).read_text()
        self.assertIn("No needles in this plan yet.", html)

    def test_plan_file_dict_is_mapped(self):
        from SeedImplantPlannerLib.reporting.report import normalize_plan
        d = {"format": "not-a-real-plan", "source": {"model": "I125_OncoSeed_6711", "strength_U": 0.635,
                                                     "implant_date": "2026-11-27"},
             "summary": {"n_seeds": 12, "n_needles_used": 4, "total_strength_U": 7.62},
             "needles": [{"number": 1, "name": "T1", "entry_ras_mm": [0, 0, 0]}]}
        p = normalize_plan(d)
        self.assertEqual((p["source_model"], p["n_needles"], p["implant_date"]), ("I125_OncoSeed_6711", 4, "2026-11-27"))
        self.assertEqual(p["needles"], [{"number": 1, "name": "T1"}])  # geometry lists left out of the table
        rows = dict(plan_summary(self.ev, d))
        self.assertEqual(rows["Strength per seed at implant date"], "0.635 U")

    def test_evaluate_and_report_in_one_call(self):
        from SeedImplantPlannerLib.reporting.report import evaluate_and_report
        far_g = ImageGeometry((4, 4, 4), (1.0, 1.0, 1.0), (300, 300, 300))
        far = Structure("Kidney", np.ones(far_g.shape, bool), far_g)
        with tempfile.TemporaryDirectory() as tmp:
            ev, paths = evaluate_and_report(Path(tmp) / "r.html", self.dose, self.g, self.structs + [far], 145.0,
                                            goals="ct_soft_tissue_I125", target="PTV", seeds=self.seeds)
            html = Path(paths["html"]).read_text()
        self.assertIn("'Kidney' lies entirely outside the dose grid: not evaluated", ev.warnings)
        self.assertIn("&#x27;Kidney&#x27; lies entirely outside the dose grid", html)
        self.assertEqual(html.count("data:image/png;base64,"), 3)
        self.assertIn("BED", html)
        self.assertEqual(ev.target, "PTV")

    def test_picture_conventions(self):
        axial, coronal, sagittal = PLANES
        np.testing.assert_array_equal(axial[1], [-1, 0, 0])   # patient right on the left (radiological)
        self.assertEqual(axial[3][:2], ("R", "L"))
        np.testing.assert_array_equal(sagittal[1], [0, -1, 0])  # anterior on the left
        self.assertEqual(sagittal[3][:2], ("A", "P"))
        # structures sharing a colour get distinct ones
        cols = distinct_colors(["PTV", "Rectum"], {"PTV": (0.9, 0.1, 0.1), "Rectum": (0.9, 0.1, 0.1)})
        self.assertNotEqual(cols["PTV"], cols["Rectum"])


class MultiTargetReportTest(unittest.TestCase):
    """Two targets with their own prescriptions and seed strengths in one report."""

    @classmethod
    def setUpClass(cls):
        cls.g = ImageGeometry((50, 24, 20), (1.5, 1.5, 2.0), (-36.75, -17.25, -19))
        pa = np.array([[x, y, z] for x in (-22.0, -14.0) for y in (-4.0, 4.0) for z in (-5.0, 0.0, 5.0)])
        pb = np.array([[x, y, z] for x in (14.0, 22.0) for y in (-4.0, 4.0) for z in (-5.0, 0.0, 5.0)])
        cls.seeds = SeedSet(np.vstack([pa, pb]), np.tile([0, 0, 1.0], (24, 1)), np.r_[np.full(12, 0.3), np.full(12, 0.42)],
                            "I125_OncoSeed_6711")
        cls.dose = D.compute_dose_Gy(cls.g, cls.seeds, method="direct")[0]
        c = cls.g.voxel_centers_ras()
        cls.ma = np.linalg.norm(c - [-18.0, 0, 0], axis=-1) <= 9.0
        cls.mb = np.linalg.norm(c - [18.0, 0, 0], axis=-1) <= 9.0
        cls.structs = [Structure("GTV_A", cls.ma, cls.g, (0.9, 0.1, 0.1)), Structure("GTV_B", cls.mb, cls.g, (0.1, 0.3, 0.9)),
                       Structure("Bowel", np.hypot(c[..., 0], c[..., 1] + 14) <= 3.0, cls.g, (0.8, 0.6, 0.2))]
        # evaluated against the first target's prescription, as the plan scene and seedplan report do
        cls.ev = evaluate_plan(cls.dose, cls.g, cls.structs, 145.0, target="GTV_A")
        cls.plan = {"format": "SeedImplantPlanner.plan", "source": {"model": "I125_OncoSeed_6711", "strength_U": 0.5,
                                                                     "U_per_mCi": 1.27},
                    "summary": {"n_seeds": 24, "n_needles_used": 8},
                    "targets": [{"name": "GTV_A", "prescription_Gy": 145.0, "strength_U": 0.5, "n_seeds": 12,
                                 "goals": {"v100_min": 0.95, "d90_min_frac": 1.0, "v150_max": 0.6, "v200_max": 0.2}},
                                {"name": "GTV_B", "prescription_Gy": 120.0, "strength_U": 0.7, "n_seeds": 12,
                                 "goals": {"v100_min": 0.95, "d90_min_frac": 1.0, "v150_max": 0.6, "v200_max": 0.2}}],
                    "metrics": {"goal_check": [{"goal": "GTV_B V150 <= % (soft)", "value": 70.0, "limit": 60.0,
                                                "passed": False}]}}

    def test_every_target_against_its_own_prescription(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = write_report(Path(tmp) / "r.html", self.ev, self.dose, structures=self.structs, plan=self.plan,
                               seeds=self.seeds, pdf_path=Path(tmp) / "r.pdf")
            html = Path(out["html"]).read_text()
            self.assertTrue(Path(out["pdf"]).read_bytes().startswith(b"%PDF"))
        rows = dict(plan_summary(self.ev, self.plan, self.seeds))
        self.assertEqual(rows["Prescription dose"],
                         "GTV_A 145 Gy; GTV_B 120 Gy (each target's metrics against its own prescription)")
        self.assertEqual(rows["Strength per seed at implant date"],
                         "GTV_A 0.5 U (0.3937 mCi apparent); GTV_B 0.7 U (0.5512 mCi apparent)")
        self.assertIn("Targets (each against its own prescription)", html)
        table = html.split("Targets (each against its own prescription)")[1].split("</table>")[0]
        cells = {r[0]: r for r in (re.findall(r"<td>([^<]*)</td>", tr) for tr in table.split("<tr>")[2:])}
        # V100 and D90 of each target recomputed here from the dose array at the voxel centres, own Rx
        for name, mask, rx in (("GTV_A", self.ma, 145.0), ("GTV_B", self.mb, 120.0)):
            d = self.dose[mask]
            self.assertEqual(cells[name][1], f"{rx:g}")
            self.assertAlmostEqual(float(cells[name][6]), 100.0 * np.mean(d >= rx), delta=3.0, msg=name)
            d90 = float(cells[name][5].split()[0])
            self.assertAlmostEqual(d90, np.percentile(d, 10.0), delta=0.04 * np.percentile(d, 10.0), msg=name)
        # GTV_B's V100 is against 120 Gy, not the evaluation's 145 Gy
        self.assertGreater(float(cells["GTV_B"][6]), 100.0 * np.mean(self.dose[self.mb] >= 145.0) + 5.0)
        self.assertIn("V100 (of Rx 120 Gy)", html)
        self.assertIn("TRADED", html)  # the plan's own goal check, soft goal traded
        imgs = self.images(html)
        self.assertEqual(len(imgs), 3)  # DVH with both Rx marked, one dose picture per target
        self.assertIn("Dose wash around GTV_B: isodose lines in % of its prescription 120 Gy", html)
        self.assertIn("Dose wash around GTV_A: isodose lines in % of its prescription 145 Gy", html)
        if os.environ.get("SEEDPLAN_KEEP_PICTURES"):
            for k, png in enumerate(imgs):
                Path(os.environ["SEEDPLAN_KEEP_PICTURES"], f"multi_{k}.png").write_bytes(png)

    def images(self, html):
        return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


if __name__ == "__main__":
    unittest.main()
