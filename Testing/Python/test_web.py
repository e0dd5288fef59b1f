"""End-to-end tests of ``seedplan serve`` in a real browser.

The server runs as a subprocess on a free 127.0.0.1 port over a temporary folder holding a small
case and a plan made with the library; Debian's Chromium (``/usr/bin/chromium``, or
``$SEEDPLAN_CHROMIUM``) is driven through playwright, never a downloaded browser. The tests run in
order on one page (opening, isodose levels, a seed moved from the panel and one dragged in a view,
inverse plan cancelled and completed, saving and re-opening, bad input) and check the views on
screenshots. Screenshots are kept in ``$SEEDPLAN_WEB_SHOTS`` when that is set.
"""

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SeedImplantPlanner"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "SeedImplantPlanner" / "Testing" / "Python"))

from test_web_session import (make_case, make_intraop_ct, make_two_target_case,  # noqa: E402  (the small cases
                              seedplan_cli)  # both web test files use)

CHROMIUM = os.environ.get("SEEDPLAN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _why_no_browser():
    """None when the browser test can run, else the reason (shown as the skip message)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (./run.sh setup installs it from pyproject's test extra)"
    try:
        import trame_slicer  # noqa: F401
    except ImportError:
        return "trame-slicer is not installed (pip install 'seedimplantplanner[web]')"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"Debian's chromium is not installed at {CHROMIUM} (./run.sh installs it as root)"
    return None


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_array(data):
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def coloured_fraction(rgb):
    """Fraction of strongly coloured pixels (dose wash, isodose lines), as opposed to grey CT and black."""
    return float(np.mean(rgb.max(axis=2) - rgb.min(axis=2) > 90))


def bone_dice(a, b):
    """Dice of the white, uncoloured pixels (bone at the soft-tissue window) of two views, below their top 30 %
    (the needles' streaks run there)."""
    def bone(rgb):
        m = (rgb.min(axis=2) > 215) & (rgb.max(axis=2) - rgb.min(axis=2) < 20)
        m[: int(0.3 * m.shape[0])] = False
        return m
    ma, mb = bone(a), bone(b)
    return float(2.0 * (ma & mb).sum() / max(int(ma.sum() + mb.sum()), 1))


@unittest.skipIf(_why_no_browser() is not None, _why_no_browser() or "")
class WebPlannerInBrowserTest(unittest.TestCase):
    """One server, one page; the tests run in name order and build on each other."""

    @classmethod
    def setUpClass(cls):
        from SeedImplantPlannerLib.planning.pipeline import plan_case
        from SeedImplantPlannerLib.planning.planfile import write_plan_folder
        cls.tmp = Path(tempfile.mkdtemp(prefix="seedplan-web-test-"))
        cls.served = cls.tmp / "served"
        ct, seg = make_case(cls.served / "case")
        plan, dose, g = plan_case(ct, seg, "GTV", oars=["Rectum"], body="Body", strength=0.5, strength_unit="mCi",
                                  prescription_Gy=145.0, direction="R", template_spacing_mm=10.0, time_limit_s=1.0)
        write_plan_folder(cls.served / "plan", plan, dose, g)
        cls.n_seeds = len(plan.seeds)
        # a plan file from a newer program version, and a segmentation that misses the CT
        newer = json.loads((cls.served / "plan" / "plan.json").read_text())
        newer["version"] = 99
        (cls.served / "plan-v99").mkdir()
        (cls.served / "plan-v99" / "plan.json").write_text(json.dumps(newer))
        make_case(cls.served / "far", shift_mm=(400.0, 0.0, 0.0))
        # a plan with two targets, each with its own prescription, made by the command line
        make_two_target_case(cls.served / "case2")
        r = seedplan_cli("plan", "--image", "case2/ct.nrrd", "--segmentation", "case2/seg.seg.nrrd",
                         "--target", "GTV:rx=120", "--target", "Node:rx=140,strength=0.7,direction=R",
                         "--strength", "0.5", "--unit", "mCi", "--oar", "Rectum", "--body", "Body", "--direction", "S",
                         "--goals", "ct_soft_tissue_I125", "--template-spacing", "7", "--time-limit", "2", "--out",
                         "plan2", cwd=cls.served)
        # exit 0 when the plan meets every goal, 3 when the best plan found misses one (written all the same)
        goals_met = (cls.served / "plan2" / "plan.json").is_file() and \
            json.loads((cls.served / "plan2" / "plan.json").read_text())["optimizer"].get("goals_met")
        if r.returncode not in (0, 3) or (r.returncode == 3) != ("goals not met" in r.stderr) or \
                (r.returncode == 0 and goals_met is not True) or not (cls.served / "plan2" / "plan.json").is_file():
            raise RuntimeError(f"seedplan plan failed or its exit code {r.returncode} does not say whether the goals "
                               f"are met: {r.stderr}")
        (cls.served / "broken.mrb").write_bytes(b"this is not a zip archive")
        # needles "found on the intra-operative CT": the used needles with their tips 4 mm off
        rows = []
        for n in plan.used_needles():
            t = np.asarray(n.tip, float) + np.array([0.0, 4.0, 0.0])
            rows.append({"number": n.number, "name": n.name, "entry_x_mm": n.entry[0], "entry_y_mm": n.entry[1],
                         "entry_z_mm": n.entry[2], "tip_x_mm": t[0], "tip_y_mm": t[1], "tip_z_mm": t[2]})
        cls.n_used_needles = len(rows)
        make_intraop_ct(ct, plan.used_needles(), cls.served / "intraop_ct.nrrd")
        with open(cls.served / "implanted.csv", "w", encoding="utf-8") as fh:
            fh.write(",".join(rows[0]) + "\n" + "".join(
                ",".join(v if isinstance(v, str) else f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values())
                + "\n" for r in rows))
        # a plan on a simulated planning CT and an intra-operative CT of the patient after a known motion
        from intraop_moved_case import make_moved_case
        cls.moved = make_moved_case(cls.served / "moved")
        cls.shots = Path(os.environ["SEEDPLAN_WEB_SHOTS"]) if os.environ.get("SEEDPLAN_WEB_SHOTS") else cls.tmp / "shots"
        cls.shots.mkdir(parents=True, exist_ok=True)

        cls.port = free_port()
        cls.url = f"http://127.0.0.1:{cls.port}/"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT / "SeedImplantPlanner") + os.pathsep + env.get("PYTHONPATH", "")
        cls.server_tmp = cls.tmp / "server-tmp"  # the server's temporary files (its uploads folder) land here
        cls.server_tmp.mkdir()
        env["TMPDIR"] = str(cls.server_tmp)
        cls.log = open(cls.tmp / "server.log", "w+", encoding="utf-8")
        cls.server = subprocess.Popen([sys.executable, "-m", "SeedImplantPlannerLib.cli", "serve", str(cls.served),
                                       "--port", str(cls.port)], stdout=cls.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(cls.url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if cls.server.poll() is not None or time.monotonic() > deadline:
                cls.log.seek(0)
                text = cls.log.read()[-3000:]
                cls._stop_server()
                raise RuntimeError(f"seedplan serve did not start:\n{text}")
            time.sleep(0.3)

        from playwright.sync_api import sync_playwright
        cls.pw = sync_playwright().start()
        try:
            cls.browser = cls.pw.chromium.launch_persistent_context(
                str(cls.tmp / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": 1400, "height": 900})
        except Exception as exc:  # noqa: BLE001 - a sandbox where chromium cannot start at all
            cls.pw.stop()
            cls._stop_server()
            raise unittest.SkipTest(f"chromium cannot start here: {exc}") from exc
        cls.page = cls.browser.new_page()
        cls.page.set_default_timeout(60000)
        cls.page.goto(cls.url)
        cls.page.wait_for_selector("#open-btn")

    @classmethod
    def _stop_server(cls):
        if cls.server.poll() is None:
            cls.server.terminate()
            try:
                cls.server.wait(20)
            except subprocess.TimeoutExpired:
                cls.server.kill()
                cls.server.wait(10)
        cls.log.close()

    @classmethod
    def tearDownClass(cls):
        cls.browser.close()
        cls.pw.stop()
        cls._stop_server()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------------
    def message(self):
        loc = self.page.locator("#message")
        return loc.inner_text() if loc.count() else ""

    def wait_message(self, *words, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.message()
            if all(w.lower() in text.lower() for w in words):
                return text
            self.page.wait_for_timeout(200)
        self.fail(f"no message with {words} within {timeout_s} s; last message: {text!r}")

    def clear_message(self):
        self.page.evaluate("() => { const b = document.querySelector('#message .v-alert__close button'); if (b) b.click(); }")
        self.page.wait_for_function("() => !document.querySelector('#message')")

    def open_path(self, text):
        self.clear_message()
        self.page.locator("#open-path").fill(text)
        self.page.keyboard.press("Tab")
        self.page.locator("#open-btn").click()

    def views(self, name, settle_ms=1500):
        """Screenshot of the four views (saved under ``name``) as an RGB array."""
        self.page.wait_for_timeout(settle_ms)
        data = self.page.locator("#views").screenshot(path=str(self.shots / f"{name}.png"))
        return png_array(data)

    def quadrants(self, rgb):
        h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
        return {"axial": rgb[:h, :w], "3d": rgb[:h, w:], "coronal": rgb[h:, :w], "sagittal": rgb[h:, w:]}

    def metrics_text(self):
        return self.page.locator("#metrics-table").inner_text()

    def upload_folders(self):
        return sorted(self.server_tmp.glob("seedplan-web-uploads-*"))

    def server_alive(self):
        self.assertIsNone(self.server.poll(), "the server process ended")
        with urllib.request.urlopen(self.url, timeout=5) as r:
            self.assertEqual(r.status, 200)

    # -- tests -----------------------------------------------------------------------------------
    def test_1_open_plan_shows_views_with_dose(self):
        before = self.views("0_empty", settle_ms=300)
        self.assertLess(coloured_fraction(before), 0.01)
        self.open_path("plan")
        self.wait_message("opened", "plan")
        self.assertIn(f"{self.n_seeds} seeds", self.page.locator("#plan-facts").inner_text())
        rgb = self.views("1_opened", settle_ms=3000)
        for name, q in self.quadrants(rgb).items():
            self.assertGreater(q.std(), 10.0, f"{name} view is blank")
        for name in ("axial", "coronal", "sagittal"):
            self.assertGreater(coloured_fraction(self.quadrants(rgb)[name]), 0.03, f"{name} view shows no dose colours")
        self.assertIn("D90", self.metrics_text())
        self.assertRegex(self.metrics_text(), r"\bpass\b|\bFAIL\b", "no goal pass/fail in the metrics table")
        self.assertGreater(self.page.locator("#dvh-chart path.js-line").count(), 0, "DVH chart has no curves")

    def test_2_isodose_levels_change_the_lines(self):
        before = self.quadrants(self.views("2a_isodose_before", settle_ms=200))["axial"]
        self.clear_message()
        self.page.locator("#isodose-levels").fill("30, 100")
        self.page.locator("#isodose-btn").click()
        self.wait_message("isodose lines at 30, 100")
        after = self.quadrants(self.views("2b_isodose_30_100"))["axial"]
        changed = np.mean(np.any(np.abs(after - before) > 40, axis=2))
        self.assertGreater(changed, 0.002, "the isodose lines did not change in the axial view")

    def test_3_move_seed_from_panel_updates_metrics(self):
        before = self.metrics_text()
        self.clear_message()
        self.page.locator("#seed-index").fill("1")
        self.page.locator("#seed-dx").fill("8")
        self.page.locator("#move-seed-btn").click()
        self.wait_message("seed 1 moved")
        self.page.wait_for_function("(b) => document.querySelector('#metrics-table').innerText !== b", arg=before)
        self.assertNotEqual(before, self.metrics_text())
        self.page.locator("#seed-dx").fill("0")
        self.views("3_seed_moved")

    def test_4_drag_seed_in_view_updates_metrics(self):
        rgb = self.views("4a_before_drag", settle_ms=300)
        box = self.page.locator("#views").bounding_box()
        axial = self.quadrants(rgb)["axial"]
        # seeds on the slice are bright green glyphs (seeds of other slices are dimmer projections)
        green = (axial[..., 1] > 235) & (axial[..., 0] < 120) & (axial[..., 2] < 120)
        ys, xs = np.nonzero(green)
        self.assertGreater(len(xs), 0, "no seed glyph found in the axial view")
        c = np.array(axial.shape[:2]) / 2
        k = int(np.argmin((ys - c[0]) ** 2 + (xs - c[1]) ** 2))
        near = (np.abs(ys - ys[k]) <= 4) & (np.abs(xs - xs[k]) <= 4)
        y0, x0 = float(ys[near].mean()), float(xs[near].mean())
        seeds_state = "() => JSON.stringify(window.trame.state.get('seed_rows'))"
        seeds_before = self.page.evaluate(seeds_state)
        metrics_before = self.metrics_text()
        count_before = self.page.evaluate("() => window.trame.state.get('update_count')")
        m = self.page.mouse
        m.move(box["x"] + x0, box["y"] + y0)
        self.page.wait_for_timeout(300)
        m.down()
        for step in range(1, 11):
            m.move(box["x"] + x0 + 2.5 * step, box["y"] + y0 + 1.0 * step)
            self.page.wait_for_timeout(40)
        m.up()
        self.page.wait_for_function("(c) => window.trame.state.get('update_count') > c", arg=count_before)
        self.page.wait_for_function("(b) => document.querySelector('#metrics-table').innerText !== b",
                                    arg=metrics_before)
        self.assertNotEqual(seeds_before, self.page.evaluate(seeds_state), "no seed moved")
        self.views("4b_after_drag")

    def test_5_inverse_plan_cancel_then_complete(self):
        seeds_before = self.page.locator("#plan-facts").inner_text()
        self.clear_message()
        self.page.locator("#time-limit").fill("60")
        self.page.locator("#plan-btn").click()
        self.page.wait_for_selector("#plan-progress", state="visible")
        self.page.wait_for_function("() => window.trame.state.get('plan_fraction') > 0")
        self.page.locator("#cancel-btn").click()
        self.wait_message("cancelled", timeout_s=90)
        self.assertEqual(seeds_before, self.page.locator("#plan-facts").inner_text())
        self.clear_message()
        self.page.locator("#time-limit").fill("1")
        self.page.locator("#plan-btn").click()
        text = self.wait_message("plan ready", timeout_s=120)
        self.assertIn("seeds on", text)
        rgb = self.views("5_replanned", settle_ms=2500)
        self.assertGreater(coloured_fraction(self.quadrants(rgb)["axial"]), 0.03)

    def test_6_save_and_reopen(self):
        facts = self.page.locator("#plan-facts").inner_text()
        self.clear_message()
        self.page.locator("#save-folder-name").fill("saved-plan")
        self.page.locator("#save-folder-btn").click()
        self.wait_message("plan folder saved")
        self.page.locator("#save-mrb-name").fill("saved.mrb")
        self.page.locator("#save-mrb-btn").click()
        self.wait_message("scene saved", timeout_s=90)
        self.assertTrue((self.served / "saved-plan" / "plan.json").is_file())
        self.assertTrue((self.served / "saved-plan" / "dose.nrrd").is_file())
        mrb = self.served / "saved.mrb"
        stamp = mrb.stat().st_mtime_ns
        self.clear_message()
        self.page.locator("#save-mrb-btn").click()
        self.wait_message("exists already")
        self.assertEqual(stamp, mrb.stat().st_mtime_ns, "an existing bundle was overwritten")
        self.open_path("saved.mrb")
        self.wait_message("opened saved.mrb", timeout_s=90)
        self.assertEqual(facts, self.page.locator("#plan-facts").inner_text())
        rgb = self.views("6a_reopened_mrb", settle_ms=2500)
        self.assertGreater(coloured_fraction(self.quadrants(rgb)["axial"]), 0.03)
        self.open_path("saved-plan")
        self.wait_message("opened saved-plan", timeout_s=90)
        self.assertEqual(facts, self.page.locator("#plan-facts").inner_text())

    def test_7_bad_input_leaves_the_plan_open(self):
        facts = self.page.locator("#plan-facts").inner_text()
        source = self.page.locator("#plan-source").inner_text()
        self.open_path("../")
        self.wait_message("outside the folder")
        self.open_path("plan-v99")
        self.wait_message("version 99", "not supported")
        self.open_path("broken.mrb")
        self.wait_message("not a scene bundle")
        self.clear_message()
        self.page.locator("#ct-path").fill("far/ct.nrrd")
        self.page.locator("#seg-path").fill("far/seg.seg.nrrd")
        self.page.locator("#open-case-btn").click()
        self.wait_message("does not overlap the CT")
        self.clear_message()
        self.page.locator("#upload").set_input_files(files=[{"name": "scan.nrrd", "mimeType": "application/octet-stream",
                                                             "buffer": b"NRRD0004\ngarbage"},
                                                            {"name": "seg.seg.nrrd", "mimeType": "application/octet-stream",
                                                             "buffer": b"not a segmentation"}])
        text = self.wait_message("scan.nrrd")
        self.assertRegex(text, "unreadable|cannot read")
        self.assertNotIn("seedplan-web-uploads", text)
        self.assertEqual(len(self.upload_folders()), 1, "the upload went into one private folder")
        self.assertEqual(facts, self.page.locator("#plan-facts").inner_text())
        self.assertEqual(source, self.page.locator("#plan-source").inner_text())
        self.server_alive()
        self.assertFalse((self.served.parent / "saved.mrb").exists())
        self.views("7_after_bad_input", settle_ms=300)

    def test_8_intraop_page_compares_and_replans(self):
        self.open_path("plan")  # the plan whose needles the intra-operative CT and CSV were made from
        self.wait_message("opened plan", timeout_s=90)
        self.page.locator("#page-intraop").click()
        self.clear_message()
        self.page.locator("#implanted-path").fill("implanted.csv")
        self.page.locator("#implanted-btn").click()
        self.wait_message(f"{self.n_used_needles} implanted needles read")
        rows = self.page.evaluate("() => window.trame.state.get('deviation_rows')")
        self.assertEqual(len(rows), self.n_used_needles)
        for r in rows:
            self.assertAlmostEqual(r["tip_mm"], 4.0, places=1)
            self.assertAlmostEqual(r["entry_mm"], 0.0, places=1)
        rgb = self.quadrants(self.views("8a_implanted_needles"))["axial"]
        orange = (rgb[..., 0] > 200) & (rgb[..., 1] > 90) & (rgb[..., 1] < 170) & (rgb[..., 2] < 60)
        self.assertGreater(int(orange.sum()), 20, "implanted needles not drawn")
        # the intra-operative chain on those needles (a CT without metal: no seed implanted yet)
        self.clear_message()
        self.page.locator("#intraop-ct-path").fill("case/ct.nrrd")
        self.page.locator("#intraop-chain-btn").click()
        text = self.wait_message(f"{self.n_used_needles} needles in place", timeout_s=180)
        self.assertIn("tip off by 4.0 mm", text)
        rows = self.page.evaluate("() => window.trame.state.get('deviation_rows')")
        self.assertEqual(sum(r["note"] == "in place" for r in rows), self.n_used_needles)
        self.views("8b_intraop_chain", settle_ms=2000)
        self.page.locator("#page-plan").click()
        self.open_path("plan")
        self.wait_message("opened plan", timeout_s=90)
        self.page.locator("#page-intraop").click()
        self.clear_message()
        self.page.locator("#intraop-ct-path").fill("intraop_ct.nrrd")
        self.page.locator("#find-needles-btn").click()
        self.wait_message("planned found", timeout_s=120)
        rows = self.page.evaluate("() => window.trame.state.get('deviation_rows')")
        self.assertGreaterEqual(len(rows), 1)
        self.assertTrue(all(r["note"].startswith("matched") for r in rows), rows)
        self.views("8c_intraop_ct_needles_found", settle_ms=2000)
        self.clear_message()
        self.page.locator("#replan-btn").click()
        self.wait_message("plan ready", timeout_s=120)
        self.views("8d_replanned_on_implanted_needles", settle_ms=2000)
        self.page.locator("#page-plan").click()
        self.server_alive()

    def test_8r_intraop_registration(self):
        """The patient moved since the planning CT: register on the page (bad input first), then the chain."""
        from SeedImplantPlannerLib.imaging.registration import RegistrationResult
        self.open_path("moved/plan")
        self.wait_message("opened", timeout_s=90)
        self.page.locator("#page-intraop").click()
        self.assertIn("not registered", self.page.locator("#registration-none").inner_text())
        # the registration's options (seedplan register --metric bone / --translation-only): off by default
        for box in ("#register-bone-metric", "#register-translation-only"):
            self.assertFalse(self.page.locator(box).is_checked(), box)
        self.clear_message()
        self.page.locator("#intraop-ct-path").fill("moved/intraop_far.nrrd")
        self.page.locator("#register-btn").click()
        self.wait_message("registration failed", "do not overlap", timeout_s=120)
        self.assertEqual(self.page.locator("#registration-result").count(), 0)
        self.server_alive()
        self.clear_message()
        self.page.locator("#intraop-ct-path").fill("moved/intraop_moved.nrrd")
        self.page.locator("#register-btn").click()
        self.wait_message("registered to the planning CT", timeout_s=120)
        shown = self.page.locator("#registration-result").inner_text()
        for words in ("moved/intraop_moved.nrrd", "patient moved R", "turned", "bone Dice", "accepted"):
            self.assertIn(words, shown)
        state = self.page.evaluate("() => window.trame.state.get('registration')")
        self.assertIn(f"({state['shift_norm_mm']:.1f} mm)", shown)
        self.assertIn(f"-> {state['bone_dice']:.2f}", shown)
        self.assertGreater(state["bone_dice"], state["bone_dice_before"])
        truth = RegistrationResult(self.moved["truth_matrix"])
        self.assertAlmostEqual(state["rotation_angle_deg"], truth.rotation_angle_deg, delta=0.5)
        self.page.screenshot(path=str(self.shots / "8r1_registered_page.png"))
        # the views show the intra-operative CT aligned on the planning CT: bone on the same pixels
        registered = self.quadrants(self.views("8r1_registered_views", settle_ms=2500))["axial"]
        self.page.locator("#show-intraop").click()                      # the planning CT behind the plan
        planning = self.quadrants(self.views("8r1_planning_ct_views", settle_ms=2500))["axial"]
        self.page.locator("#show-intraop").click()
        dice_registered = bone_dice(registered, planning)
        # the needles as found on the intra-operative CT (its own frame), then the chain in the plan's frame
        self.clear_message()
        self.page.locator("#implanted-path").fill("moved/needles_on_intraop.csv")
        self.page.locator("#implanted-btn").click()
        self.wait_message("implanted needles read")
        self.clear_message()
        self.page.locator("#intraop-chain-btn").click()
        self.wait_message("registered to the planning CT", "needles in place", timeout_s=180)
        rows = {r["implanted"]: r for r in self.page.evaluate("() => window.trame.state.get('deviation_rows')")
                if r["note"] == "in place"}
        truth_dev = {n["name"]: n["deviation"] for n in self.moved["needles"]}
        self.assertEqual(set(rows), set(truth_dev))
        for name, dev in truth_dev.items():
            self.assertAlmostEqual(rows[name]["tip_mm"], dev["tip_mm"], delta=1.0)
            self.assertAlmostEqual(rows[name]["angle_deg"], dev["angle_deg"], delta=0.5)
        self.page.screenshot(path=str(self.shots / "8r2_chain_page.png"))
        self.views("8r2_chain_registered_views", settle_ms=2500)
        self.clear_message()
        self.page.locator("#clear-registration-btn").click()
        self.wait_message("scanner coordinates")
        self.assertIn("not registered", self.page.locator("#registration-none").inner_text())
        scanner = self.quadrants(self.views("8r3_scanner_coordinates_views", settle_ms=2500))["axial"]
        dice_scanner = bone_dice(scanner, planning)
        self.assertGreater(dice_registered, 0.75, (dice_registered, dice_scanner))
        self.assertLess(dice_scanner, dice_registered - 0.15, (dice_registered, dice_scanner))
        self.page.locator("#page-plan").click()
        self.open_path("plan")  # the next tests work on the first plan
        self.wait_message("opened plan", timeout_s=90)

    def test_8s_intraop_scene_reopened(self):
        """A scene written by `seedplan intraop --register`, opened on the page: the review as it was left."""
        r = seedplan_cli("intraop", "--ct", "moved/intraop_moved.nrrd", "--plan", "moved/plan/plan.json",
                         "--needles", "moved/needles_on_intraop.csv", "--implanted", str(len(self.moved["seeds"])),
                         "--time-limit", "1", "--no-options", "--register", "--out", "moved-reg", cwd=self.served)
        self.assertIn(r.returncode, (0, 3), r.stderr)
        written = json.loads((self.served / "moved-reg" / "registration.json").read_text())
        with open(self.served / "moved-reg" / "needle_deviations.csv", newline="", encoding="utf-8") as fh:
            table = list(csv.DictReader(fh))
        self.page.locator("#page-plan").click()
        self.open_path("moved-reg/scene.mrb")
        text = self.wait_message("opened moved-reg/scene.mrb", "restored from the scene", timeout_s=120)
        self.assertIn("registered to the planning CT", text)
        replan = json.loads((self.served / "moved-reg" / "plan" / "plan.json").read_text())
        self.assertIn(f"plan rebuilt from the scene: {len(replan['seeds'])} seeds", text)
        self.assertIn("the plan being implanted", text)
        self.assertNotIn("warning", text)
        goals_met = json.loads((self.served / "moved-reg" / "intraop_summary.json").read_text())["goals_met"]
        self.assertEqual(self.page.evaluate("() => window.trame.state.get('message_type')"),
                         "success" if goals_met else "warning")     # goals not met: said as the chain says it
        self.page.locator("#page-intraop").click()
        # the result box, the CT field and the options as the command line left them
        shown = self.page.locator("#registration-result").inner_text()
        for words in ("moved/intraop_moved.nrrd", "registered to the planning CT", "patient moved R", "bone Dice",
                      "accepted"):
            self.assertIn(words, shown)
        self.assertEqual(self.page.locator("#registration-none").count(), 0)
        state = self.page.evaluate("() => window.trame.state.get('registration')")
        self.assertAlmostEqual(state["bone_dice"], round(written["quality"]["bone_dice"], 3), places=3)
        self.assertIn(f"-> {state['bone_dice']:.2f}", shown)
        self.assertEqual(self.page.locator("#intraop-ct-path").input_value(), "moved/intraop_moved.nrrd")
        for box in ("#register-bone-metric", "#register-translation-only"):
            self.assertFalse(self.page.locator(box).is_checked(), box)
        self.assertTrue(self.page.locator("#clear-registration-btn").is_enabled())
        # the deviation table of the command line's chain
        rows = self.page.evaluate("() => window.trame.state.get('deviation_rows')")
        self.assertEqual([r["implanted"] for r in rows], [t["name"] for t in table])
        self.assertEqual(sum(r["note"] == "in place" for r in rows), sum(t["status"] == "in place" for t in table))
        for r, t in zip(rows, table):
            if t["tip_mm"]:
                self.assertAlmostEqual(r["tip_mm"], float(t["tip_mm"]), delta=0.051)
        self.assertIn("in place", self.page.locator("#deviation-table").inner_text())
        self.page.screenshot(path=str(self.shots / "8s1_reopened_page.png"))
        # the intra-operative CT shown aligned on the planning CT: bone on the same pixels
        registered = self.quadrants(self.views("8s1_reopened_registered_views", settle_ms=2500))["axial"]
        self.page.locator("#show-intraop").click()
        planning = self.quadrants(self.views("8s1_reopened_planning_ct_views", settle_ms=2500))["axial"]
        self.page.locator("#show-intraop").click()
        # the chain runs on from the re-opened scene (the plan rebuilt from it; it refused before: no plan file)
        self.clear_message()
        self.page.locator("#intraop-chain-btn").click()
        self.wait_message("intraop_moved.nrrd (registered to the planning CT)", "needles in place", timeout_s=240)
        rows = {r["implanted"]: r for r in self.page.evaluate("() => window.trame.state.get('deviation_rows')")
                if r["note"] == "in place"}
        self.assertEqual(set(rows), {n["name"] for n in self.moved["needles"]})
        self.page.screenshot(path=str(self.shots / "8s3_reopened_chain_page.png"))
        self.clear_message()
        self.page.locator("#clear-registration-btn").click()
        text = self.wait_message("scanner coordinates", "moved with the CT")
        self.assertIn("the plan being implanted is shown again", text)
        original = json.loads((self.served / "moved" / "plan" / "plan.json").read_text())
        self.assertEqual(len(self.page.evaluate("() => window.trame.state.get('seed_rows')")), len(original["seeds"]))
        scanner = self.quadrants(self.views("8s2_reopened_scanner_views", settle_ms=2500))["axial"]
        dice_registered, dice_scanner = bone_dice(registered, planning), bone_dice(scanner, planning)
        self.assertGreater(dice_registered, 0.75, (dice_registered, dice_scanner))
        self.assertLess(dice_scanner, dice_registered - 0.15, (dice_registered, dice_scanner))
        self.page.locator("#page-plan").click()
        self.open_path("plan")  # the next tests work on the first plan
        self.wait_message("opened plan", timeout_s=90)

    def test_9_place_free_hand_needle(self):
        count = "() => window.trame.state.get('needle_rows').length"
        before = self.page.evaluate(count)
        self.page.locator(".v-expansion-panel-title", has_text="Needles (").click()
        self.clear_message()
        self.page.locator("#place-needle-btn").click()
        self.wait_message("click the needle's entry point")
        box = self.page.locator("#views").bounding_box()
        w, h = box["width"] / 2, box["height"] / 2  # the axial view is the top-left quarter
        self.page.mouse.click(box["x"] + 0.85 * w, box["y"] + 0.45 * h)
        self.wait_message("now click the tip")
        self.page.mouse.click(box["x"] + 0.45 * w, box["y"] + 0.5 * h)
        self.wait_message("placed")
        self.assertEqual(self.page.evaluate(count), before + 1)
        self.views("9_free_hand_needle")

    def test_a_report_download(self):
        with self.page.expect_download() as info:
            self.page.locator("#report-btn").click()
        path = info.value.path()
        html = Path(path).read_text(encoding="utf-8", errors="replace")
        self.assertIn("<html", html.lower())
        self.assertIn("D90", html)

    def test_b_click_links_the_cursor(self):
        before = self.quadrants(self.views("b1_before_click", settle_ms=300))
        box = self.page.locator("#views").bounding_box()
        w, h = box["width"] / 2, box["height"] / 2
        self.page.mouse.click(box["x"] + 0.25 * w, box["y"] + 0.75 * h)  # in the body, away from the plan
        self.page.wait_for_function("() => window.trame.state.get('cursor_ras') !== null")
        self.assertIn("cursor R", self.page.locator("#cursor").inner_text())
        after = self.quadrants(self.views("b2_after_click"))
        for name in ("coronal", "sagittal"):
            changed = np.mean(np.any(np.abs(after[name] - before[name]) > 30, axis=2))
            self.assertGreater(changed, 0.01, f"the {name} view did not move to the clicked point")

    def test_c_two_targets_each_against_its_own_rx(self):
        self.open_path("plan2")
        self.wait_message("opened", "plan2")
        self.page.wait_for_function("() => (window.trame.state.get('target_rx') || []).length === 2")
        self.assertEqual(self.page.locator("#target-list").inner_text().strip(),
                         "targets: GTV Rx 120 Gy, Node Rx 140 Gy (direction R)")
        field = self.page.locator("#other-targets").input_value()
        self.assertTrue(field.startswith("Node:rx=140,strength="), field)  # the --target syntax, its direction kept
        self.assertIn(",direction=R", field)
        # the DVH chart marks both prescriptions, each named
        self.page.wait_for_function("() => document.querySelectorAll('#dvh-chart .annotation-text').length === 2")
        notes = sorted(t.strip() for t in self.page.locator("#dvh-chart .annotation-text").all_text_contents())
        self.assertEqual(notes, ["Rx GTV 120 Gy", "Rx Node 140 Gy"])
        rows = self.page.evaluate("() => window.trame.state.get('metric_rows')")
        own = {(r["Structure"], r["Metric"]) for r in rows}
        self.assertIn(("Node", "V100 (Rx 140 Gy)"), own)
        self.assertIn(("GTV", "V100 (Rx 120 Gy)"), own)
        # goals of the preset (written for "the target") for both targets, each against its own Rx
        self.page.evaluate("() => { window.trame.state.set('goal_preset', 'ct_soft_tissue_I125'); }")
        self.page.locator("#goals-apply").click()
        self.wait_message("goals: ct_soft_tissue_I125")
        self.page.wait_for_function("() => (window.trame.state.get('metric_rows') || []).some("
                                    "r => r.Goal === 'V100 >= 90% (Rx 140 Gy)')")
        rows = self.page.evaluate("() => window.trame.state.get('metric_rows')")
        goals = {(r["Structure"], r["Goal"]): r for r in rows if r["Goal"]}
        for name, rx in (("GTV", 120), ("Node", 140)):
            self.assertIn((name, f"V100 >= 90% (Rx {rx} Gy)"), goals)
            self.assertIn(goals[(name, f"D90 >= 100% (Rx {rx} Gy)")]["Pass"], ("pass", "FAIL"))
        self.page.screenshot(path=str(self.shots / "c1_two_targets.png"))
        self.page.locator("#dvh-chart").screenshot(path=str(self.shots / "c2_two_targets_dvh.png"))
        self.page.locator("#metrics-table").screenshot(path=str(self.shots / "c3_two_targets_metrics.png"))
        self.page.locator("#plan-btn").scroll_into_view_if_needed()
        self.page.screenshot(path=str(self.shots / "c4_two_targets_plan_panel.png"))
        # back to one target from the field: one Rx line, no per-target rows
        self.clear_message()
        self.page.locator("#other-targets").fill("")
        self.page.locator("#other-targets-btn").click()
        self.wait_message("one target")
        self.page.wait_for_function("() => document.querySelectorAll('#dvh-chart .annotation-text').length === 0")
        self.assertEqual(self.page.locator("#target-list").inner_text().strip(), "")

    def test_z_stopping_the_server_removes_its_uploads(self):
        if not self.upload_folders():  # run on its own: upload something first
            self.page.locator("#upload").set_input_files(files=[{"name": "scene.mrb", "mimeType": "application/zip",
                                                                 "buffer": b"not a zip"}])
            self.wait_message("scene.mrb")
        self.assertTrue(self.upload_folders(), "an upload should have made the server's private uploads folder")
        self.server.terminate()  # what the tests' teardown and a service manager do (SIGTERM)
        self.server.wait(30)
        self.assertEqual(self.upload_folders(), [], "seedplan serve left its uploads folder behind")


class ServeCommandTest(unittest.TestCase):
    """``seedplan serve`` refuses unsafe or impossible options before starting anything."""

    def test_other_addresses_need_allow_remote(self):
        from seedplan_cli import seedplan
        with tempfile.TemporaryDirectory() as tmp:
            r = seedplan("serve", tmp, "--host", "0.0.0.0", "--port", str(free_port()), timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--allow-remote", r.stderr)
        self.assertIn("seedplan: error:", r.stderr)

    def test_missing_folder(self):
        from seedplan_cli import seedplan
        r = seedplan("serve", "/no/such/folder-for-seedplan", timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertIn("does not exist", r.stderr)

    def test_loopback_rule(self):
        from SeedImplantPlannerLib.cli.serve import check_bind, is_loopback
        for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
            self.assertTrue(is_loopback(host), host)
        for host in ("0.0.0.0", "192.168.1.5", "example.org", "::"):
            self.assertFalse(is_loopback(host), host)
        self.assertEqual(check_bind("127.0.0.1", False), "127.0.0.1")
        import contextlib
        import io as _io
        err = _io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(check_bind("0.0.0.0", True), "0.0.0.0")
        self.assertIn("warning", err.getvalue())


if __name__ == "__main__":
    unittest.main()
