"""End-to-end: `seedplan demo` plans the bundled sample case and writes every promised output."""

import csv
import json
import os
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


class TestDemo(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = Path(cls.tmp.name) / "demo"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT / "SeedImplantPlanner") + os.pathsep + env.get("PYTHONPATH", "")
        env["LC_ALL"] = "C"  # as under a bare CI shell: output must not depend on a UTF-8 locale
        # a relative output folder, as in the README's command
        cls.result = subprocess.run([sys.executable, "-m", "SeedImplantPlannerLib.cli", "--quiet", "demo",
                                     "--out", "demo"], cwd=cls.tmp.name, capture_output=True, text=True, encoding="utf-8",
                                    errors="replace", env=env, timeout=900)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_runs_and_reports(self):
        self.assertEqual(self.result.returncode, 0, self.result.stderr[-3000:])
        self.assertRegex(self.result.stdout, r"plan: \d+ seeds on \d+ needles")
        summary = json.loads((self.out / "demo_summary.json").read_text())
        self.assertGreater(len(summary["files"]), 25)
        for rel in summary["files"]:
            self.assertTrue((self.out / rel).exists(), rel)
        self.assertGreaterEqual(summary["target_metrics"]["V100"]["percent"], 95.0)
        self.assertGreaterEqual(summary["target_metrics"]["D90"]["Gy"], 120.0)
        self.assertEqual(summary["goals_failed"], 0)

    def test_dose_is_on_the_ct_grid_and_matches_point_dose(self):
        from SeedImplantPlannerLib.physics.dose import dose_at_points_Gy
        from SeedImplantPlannerLib.core.imageio import read_image
        from SeedImplantPlannerLib.planning.planfile import read_plan_seeds
        dose, g = read_image(self.out / "plan" / "dose.nrrd")
        _, ct_g = read_image(ROOT / "Resources" / "SampleCase" / "SampleCT.nrrd")
        self.assertTrue(g.matches(ct_g))
        seeds = read_plan_seeds(self.out / "plan" / "plan.json")
        rng = np.random.default_rng(3)
        idx = np.argwhere(dose > 20.0)
        idx = idx[rng.choice(len(idx), 200, replace=False)]
        pts = g.ijk_to_ras(idx[:, ::-1])
        near = np.min(np.linalg.norm(pts[:, None] - seeds.positions[None], axis=2), axis=1)
        keep = near >= 2.0
        want, _, _ = dose_at_points_Gy(pts[keep], seeds)
        got = dose[tuple(idx[keep].T)]
        self.assertLess(float(np.max(np.abs(got / want - 1))), 0.005)

    def test_plan_folder_tables(self):
        rows = list(csv.DictReader((self.out / "plan" / "loading.csv").open()))
        self.assertGreater(len(rows), 3)
        seeds = list(csv.DictReader((self.out / "plan" / "seeds.csv").open()))
        self.assertEqual(len(seeds), json.loads((self.out / "demo_summary.json").read_text())["plan"]["n_seeds"])
        dvh = list(csv.reader((self.out / "dvh.csv").open()))
        self.assertIn("GTV", ",".join(dvh[0]))

    def test_report_scene_pictures_dicom(self):
        html = (self.out / "report.html").read_text()
        for needle in ("GTV", "D90", "V100", "Needle", "<img"):
            self.assertIn(needle, html)
        self.assertTrue((self.out / "report.pdf").read_bytes().startswith(b"%PDF"))
        with zipfile.ZipFile(self.out / "scene.mrb") as z:
            names = z.namelist()
        self.assertTrue(any(n.endswith(".mrml") for n in names), names)
        from SeedImplantPlannerLib.mrml.render import png_to_array
        for view in ("axial", "sagittal", "coronal", "3d"):
            img = png_to_array(self.out / "pictures" / f"plan_{view}.png")
            self.assertGreater(float(img[..., :3].std()), 10.0, view)
        import pydicom
        plan = pydicom.dcmread(self.out / "dicom" / "RTPLAN.dcm")
        self.assertEqual(plan.BrachyTreatmentTechnique, "PERMANENT")
        self.assertGreater(float(plan.SourceSequence[0].ReferenceAirKermaRate), 0.0)
        self.assertTrue((self.out / "postimplant" / "verification.json").exists())

    def test_dicom_objects_pass_dciodvfy(self):
        # dicom3tools' IOD validator on every object the demo wrote (./run.sh installs the Debian package);
        # dciodvfy 2022 aborts on 32-bit RT Dose pixels: the RT Dose goes through as a 16-bit copy
        import shutil
        import pydicom
        if shutil.which("dciodvfy") is None:
            self.skipTest("dciodvfy (Debian package dicom3tools, installed by ./run.sh setup) is not on PATH")
        folder = self.out / "dicom"
        rd = pydicom.dcmread(folder / "RTDOSE.dcm")
        self.assertEqual((rd.BitsAllocated, rd.PixelRepresentation), (32, 0))
        dose = rd.pixel_array.astype(float) * float(rd.DoseGridScaling)
        scaling = float(f"{dose.max() / 65535 * (1 + 1e-7):.8e}")
        rd.BitsAllocated, rd.BitsStored, rd.HighBit, rd.DoseGridScaling = 16, 16, 15, f"{scaling:.8e}"
        rd.PixelData = np.rint(dose / scaling).astype("<u2").tobytes()
        copy = self.out / "RTDOSE_16bit.dcm"
        rd.save_as(copy)
        files = sorted((folder / "CT").glob("*.dcm")) + [folder / "RTSTRUCT.dcm", folder / "RTPLAN.dcm", copy]
        findings = {}
        for f in files:
            r = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=120)
            lines = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith(("Error", "Warning"))]
            if lines:
                findings[f.name] = lines
        self.assertEqual(findings, {})
        ct = pydicom.dcmread(files[0], stop_before_pixels=True)
        self.assertEqual([float(v) for v in ct.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        channels = pydicom.dcmread(folder / "RTPLAN.dcm").ApplicationSetupSequence[0].ChannelSequence
        self.assertTrue(all("SourceApplicatorNumber" in c and c.SourceApplicatorType == "RIGID" for c in channels))

    def test_report_renders_in_a_real_browser(self):
        import re
        import shutil
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        if browser is None:
            self.skipTest("chromium is not installed (./run.sh installs it)")
        html = (self.out / "report.html").read_text()
        self.assertIsNone(re.search(r'(src|href)="(https?:)?//', html), "the report must be self-contained")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={self.out / 'chromium-profile'}"]
        url = (self.out / "report.html").resolve().as_uri()
        dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, encoding="utf-8",
                             errors="replace", timeout=120)
        self.assertIn("Needle loading", dom.stdout)
        self.assertIn("Cumulative DVH", dom.stdout)
        shot = self.out / "report_screenshot.png"
        subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", url],
                       capture_output=True, timeout=120)
        from SeedImplantPlannerLib.mrml.render import png_to_array
        img = png_to_array(shot)
        self.assertEqual(img.shape[:2], (2400, 1200))
        self.assertGreater(float(img[..., :3].std()), 20.0, "the rendered report looks blank")


if __name__ == "__main__":
    unittest.main()
