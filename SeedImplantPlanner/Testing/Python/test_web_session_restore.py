"""The web planner opening a saved scene that holds an intra-operative review (web/session_intraop.py restore_intraop).

Real parts only: the moved case (intraop_moved_case.py: a plan on a simulated planning CT, an
intra-operative CT of the same patient after a known rigid motion with needles in place and seeds
implanted), ``seedplan intraop --register`` run as a child process writing its scene.mrb, the page's
session on a slicer-core scene opening it (or its own save). The page must show the review as it was
left: the registration result and the CT under it, the CT field, the options, the needles in place
and the deviation table; a CT whose file is not at hand is worked on from the scene; a registration
record that is missing or unreadable is said and the transform kept.
"""

import csv
import json
import shutil
import tempfile
import unittest
from pathlib import Path

import numpy as np

from test_web_session import HAVE_SLICER, _SessionOnServedFolder, seedplan_cli

if HAVE_SLICER:
    from SeedImplantPlannerLib.mrml.scene import create_scene
    from SeedImplantPlannerLib.web.paths import ServedFolder
    from SeedImplantPlannerLib.web.session import PlannerSession


def run_job(session, job, timeout_s=300):
    assert job.wait(timeout_s), "job did not finish"
    return session.apply_job()


def assert_same_seeds(test, got, want):
    """The seeds of two plans: positions as the plan file keeps them (1e-4 mm), axes (the file's 6 decimals, normalised
    again when read: 2e-6), strengths, needle numbers, distances from the tip, already implanted."""
    np.testing.assert_allclose(got.seeds.positions, want.seeds.positions, atol=1e-4)
    np.testing.assert_allclose(got.seeds.axes, want.seeds.axes, atol=2e-6)
    np.testing.assert_allclose(got.seeds.strengths_U, want.seeds.strengths_U, rtol=1e-12)
    test.assertEqual(list(got.seed_needle), list(want.seed_needle))
    np.testing.assert_allclose(got.seed_s_from_tip_mm, want.seed_s_from_tip_mm, atol=1e-3, equal_nan=True)
    test.assertEqual(list(got.seed_fixed), list(want.seed_fixed))


def csv_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@unittest.skipUnless(HAVE_SLICER, "slicer-core is not installed (pip install slicer-core)")
class WebRestoreTest(_SessionOnServedFolder, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        from intraop_moved_case import make_moved_case
        cls.tmp = Path(tempfile.mkdtemp(prefix="seedplan-web-restore-"))
        cls.root = cls.tmp / "served"
        cls.case = make_moved_case(cls.root / "moved")
        r = seedplan_cli("intraop", "--ct", "moved/intraop_moved.nrrd", "--plan", "moved/plan/plan.json",
                         "--needles", "moved/needles_on_intraop.csv", "--implanted", str(len(cls.case["seeds"])),
                         "--time-limit", "1", "--no-options", "--register", "--out", "reg", cwd=cls.root)
        if r.returncode not in (0, 3):
            raise RuntimeError(f"seedplan intraop --register failed (exit {r.returncode}): {r.stderr}")
        cls.exit_code = r.returncode
        cls.written = json.loads((cls.root / "reg" / "registration.json").read_text())
        # the same scene where the intra-operative CT's file is not at hand (another served folder)
        cls.elsewhere = cls.tmp / "elsewhere"
        cls.elsewhere.mkdir()
        shutil.copy(cls.root / "reg" / "scene.mrb", cls.elsewhere / "scene.mrb")

    def check_page_restored(self, session, ct_text):
        """The page's registration, CT field and deviations after opening reg/scene.mrb."""
        from SeedImplantPlannerLib.imaging.registration import RegistrationResult
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        written = RegistrationResult.from_dict(self.written)
        self.assertIn("intra-operative review restored from the scene: intra-op CT 'Intra-op CT intraop_moved.nrrd' "
                      "registered to the planning CT", session.open_note)
        self.assertNotIn("warning", session.open_note)
        summary = json.loads((self.root / "reg" / "intraop_summary.json").read_text())
        self.assertIn(summary["advice"], session.open_note)
        self.assertEqual(self.exit_code, 0 if summary["goals_met"] else 3)     # exit 3: the re-plan misses a goal
        self.assertIs(session.restored.goals_met, bool(summary["goals_met"]))
        rep = session.registration_report()
        self.assertEqual(rep["ct"], ct_text)
        self.assertEqual(rep["lines"], reg.panel_report(written)["lines"])
        self.assertTrue(rep["checked"])
        np.testing.assert_allclose(session.registration.matrix_ras, written.matrix_ras, atol=1e-9)
        self.assertEqual(session.intraop_ct_text(), ct_text)
        # the CT shown is the scene's, under the registration node (aligned on the planning CT), not the plan's CT
        node = session.intraop_ct_node
        self.assertIs(node.GetParentTransformNode(), session.registration_node)
        np.testing.assert_allclose(reg.world_matrix(node), written.matrix_ras, atol=1e-9)
        self.assertIsNone(session.plan_scene.params.get_node("ctVolume").GetParentTransformNode())
        self.assertEqual(session.restored.options(), {"bone_metric": False, "translation_only": False})
        # the deviation table as the command line wrote it (needle_deviations.csv)
        want = csv_rows(self.root / "reg" / "needle_deviations.csv")
        got = session.needle_deviations()
        self.assertEqual([r["implanted"] for r in got], [r["name"] for r in want])
        self.assertEqual([r["note"] for r in got], [r["status"] for r in want])
        for g, w in zip(got, want):
            for key in ("tip_mm", "angle_deg", "entry_mm"):
                if w[key]:
                    self.assertAlmostEqual(g[key], round(float(w[key]), 1), delta=0.051)
            if w["status"] == "in place":
                self.assertEqual(g["needle"], int(w["number"]))
        # the needles in place: drawn locked, in the plan's frame, the truth's tips within 1 mm
        truth = RegistrationResult(self.case["truth_matrix"])
        tips = {n["name"]: truth.map_points(n["tip_ras"]) for n in self.case["needles"]}
        self.assertEqual({n.name for n in session.implanted_needles}, set(tips))
        for n in session.implanted_needles:
            self.assertLess(np.linalg.norm(n.tip - tips[n.name]), 1.0, n.name)
        for line in session.restored.needle_nodes:
            self.assertTrue(line.GetLocked())
        return written

    def test_cli_scene_comes_back_on_the_page(self):
        session = self.session
        session.open_path("reg/scene.mrb")
        written = self.check_page_restored(session, "moved/intraop_moved.nrrd")
        before = {n.name: n.tip.copy() for n in session.implanted_needles}
        seeds = session.restored.seeds_node
        seeds_before = np.array([seeds.GetNthControlPointPositionWorld(i) for i in range(seeds.GetNumberOfControlPoints())])
        self.assertEqual(len(seeds_before), int(json.loads((self.root / "reg" / "intraop_summary.json").read_text())
                                                   ["seeds_implanted_found"]))
        # the page works on from there: back to scanner coordinates, the needles move with the CT and the
        # command line's deviation table (of the registered frame) gives way to the needles as they now are
        # the plan the scene records is rebuilt: the re-plan shown, the plan being implanted beside it
        from SeedImplantPlannerLib.planning.planfile import read_plan
        self.assertEqual(session.plan_record.status, "stored", session.plan_record.problem)
        self.assertIn("plan rebuilt from the scene", session.open_note)
        replan = read_plan(self.root / "reg" / "plan" / "plan.json")
        original = read_plan(self.root / "moved" / "plan" / "plan.json")
        for got, want in ((session.plan, replan), (session.restored_original, original)):
            assert_same_seeds(self, got, want)
            for key in ("needles", "prescription_Gy", "goals", "source", "loading_rules"):
                self.assertEqual(got.to_dict()[key], want.to_dict()[key], key)
        self.assertIsNotNone(session.case_segmentation.find("GTV"))
        # the page works on from there: back to scanner coordinates, the needles move with the CT, the re-plan (made
        # in the registered frame) gives way to the plan being implanted and the command line's deviation table to
        # the needles as they now are
        message = session.clear_registration()
        self.assertIn("back to its scanner coordinates", message)
        self.assertIn("the plan being implanted is shown again", message)
        assert_same_seeds(self, session.plan, original)
        self.assertEqual(len(session.plan_scene.seeds()[0]), len(original.seeds))
        self.assertIsNone(session.restored_original)
        self.assertIsNone(session.intraop_ct_node.GetParentTransformNode())
        inv = np.linalg.inv(written.matrix_ras)
        for n in session.implanted_needles:
            np.testing.assert_allclose(n.tip, inv[:3, :3] @ before[n.name] + inv[:3, 3], atol=1e-6)
        self.assertEqual(session.scene_deviation_rows, [])
        seeds_after = np.array([seeds.GetNthControlPointPositionWorld(i) for i in range(seeds.GetNumberOfControlPoints())])
        np.testing.assert_allclose(seeds_after, seeds_before @ inv[:3, :3].T + inv[:3, 3], atol=1e-6)
        self.assertEqual({r["note"] for r in session.needle_deviations()} - {"", "no planned needle within 30 mm"}, set())
        # registered again from the file the scene names: the needles come back
        message = run_job(session, session.start_register(session.intraop_ct_text()))
        self.assertIn("intraop_moved.nrrd registered to the planning CT", message)
        for n in session.implanted_needles:
            np.testing.assert_allclose(n.tip, session.registration.map_points(
                inv[:3, :3] @ before[n.name] + inv[:3, 3]), atol=1e-6)

    def test_chain_continues_after_opening_the_cli_scene(self):
        """The intra-operative chain on a re-opened `seedplan intraop --register` scene (it refused before: no plan)."""
        session = self.session
        session.open_path("reg/scene.mrb")
        self.assertIsNotNone(session.plan)
        message = run_job(session, session.start_intraop(session.intraop_ct_text(), time_limit_s=1.0))
        result = session.intraop_result
        self.assertIsNotNone(result)
        self.assertIn("intraop_moved.nrrd (registered to the planning CT)", message)
        self.assertIn(result.deviation_line(), message)
        np.testing.assert_allclose(result.registration.matrix_ras, self.written["matrix_ras"], atol=1e-9)
        self.assertEqual({r["name"] for r in result.needle_rows if r["status"] == "in place"},
                         {n["name"] for n in self.case["needles"]})
        self.assertEqual(len(result.needles_in_place), len(self.case["needles"]))
        self.assertGreater(len(result.found_seeds), 0)
        self.assertIs(session.plan, result.plan)
        # compared with the plan being implanted (recorded beside the command line's re-plan), as the module does
        from SeedImplantPlannerLib.planning.planfile import read_plan
        assert_same_seeds(self, result.original, read_plan(self.root / "moved" / "plan" / "plan.json"))
        self.assertIs(session.plan_scene.original_plan, result.original)

    def test_planning_scene_reopened_continues_to_the_chain(self):
        """Yesterday's planning scene saved by the page, opened in a new session: the plan is rebuilt as it was, and the
        registration, needle table and chain run on it; the same scene without its plan record (an older scene) is
        opened with the reason said, and the chain refuses by name."""
        from SeedImplantPlannerLib.core.errors import InputError
        from SeedImplantPlannerLib.mrml import plan_record
        session = self.session
        session.open_path("moved/plan")
        path = session.save_mrb("planned.mrb")
        ctx = create_scene()
        other = PlannerSession(ctx, ServedFolder(self.root))
        self.addCleanup(ctx.close)
        self.addCleanup(other.close)
        other.open_path("planned.mrb")
        self.assertEqual(other.plan_record.status, "stored", other.plan_record.problem)
        want = session.plan
        self.assertIn(f"plan rebuilt from the scene: {len(want.seeds)} seeds on {len(want.used_needles())} needles, "
                      f"prescription {want.prescription_Gy:g} Gy", other.open_note)
        self.assertEqual(other.plan.to_dict(), want.to_dict())
        self.assertEqual(set(other.case_segmentation.names()), set(session.case_segmentation.names()))
        run_job(other, other.start_register("moved/intraop_moved.nrrd"))
        other.load_implanted_needles("moved/needles_on_intraop.csv")
        message = run_job(other, other.start_intraop("moved/intraop_moved.nrrd", time_limit_s=1.0))
        result = other.intraop_result
        self.assertIn(result.deviation_line(), message)
        assert_same_seeds(self, result.original, want)
        self.assertEqual(len(result.needles_in_place), len(self.case["needles"]))
        # the same scene without its record (as saved before plans were kept in scenes)
        scratch = create_scene()
        try:
            scratch.load_mrb(path)
            for node in plan_record.record_nodes(scratch.scene):
                scratch.scene.RemoveNode(node)
            scratch.save_mrb(self.root / "planned-old.mrb")
        finally:
            scratch.close()
        ctx = create_scene()
        old = PlannerSession(ctx, ServedFolder(self.root))
        self.addCleanup(ctx.close)
        self.addCleanup(old.close)
        old.open_path("planned-old.mrb")
        self.assertIn("the scene holds no plan record", old.open_note)
        self.assertIsNone(old.plan)
        self.assertEqual(len(old.plan_scene.seeds()[0]), len(want.seeds))          # the rest of the scene is there
        self.assertTrue(old.has_dose())
        with self.assertRaisesRegex(InputError, "needs the plan and its segmentation: open a plan folder, a .mrb that "
                                                "records its plan"):
            old.start_intraop("moved/intraop_moved.nrrd")

    def test_scene_ct_without_its_file(self):
        """The .mrb opened where the intra-op CT's file is not: the page names it "scene: ..." and works on its voxels."""
        from SeedImplantPlannerLib.imaging.registration import RegistrationResult
        ctx = create_scene()
        session = PlannerSession(ctx, ServedFolder(self.elsewhere))
        self.addCleanup(ctx.close)
        self.addCleanup(session.close)
        session.open_path("scene.mrb")
        label = "scene: Intra-op CT intraop_moved.nrrd"
        self.check_page_restored(session, label)
        self.assertEqual(session.registration_report()["ct"], label)
        # the needle finder on the scene's CT, in the plan's frame through the restored registration
        message = run_job(session, session.start_find_needles(label))
        self.assertIn("Intra-op CT intraop_moved.nrrd", message)
        truth = RegistrationResult(self.case["truth_matrix"])
        tips = {n["name"]: truth.map_points(n["tip_ras"]) for n in self.case["needles"]}
        matched = [r for r in session.needle_matching.rows() if r["status"] == "matched"]
        self.assertGreaterEqual(len(matched), len(tips) - 2)
        err = [np.linalg.norm(n.tip - tips[n.name]) for n in session.implanted_needles if n.name in tips]
        self.assertLess(float(np.median(err)), 2.0, err)
        # the CT shown again under the same registration node, still named after the scene's CT
        self.assertIs(session.intraop_ct_node.GetParentTransformNode(), session.registration_node)
        self.assertEqual(session.intraop_ct_node.GetName(), "Intra-op CT intraop_moved.nrrd")
        self.assertEqual(session.intraop_ct_text(), label)
        # a name that is neither a file nor the scene's CT is refused by name
        with self.assertRaisesRegex(Exception, "scene: nothing"):
            session.start_find_needles("scene: nothing")

    def test_page_save_round_trip(self):
        """The page's own save: registration, needles CSV, chain -> .mrb -> opened in a new session: the same page."""
        session = self.session
        session.open_path("moved/plan")
        run_job(session, session.start_register("moved/intraop_moved.nrrd", **session.register_options(True, False)))
        session.load_implanted_needles("moved/needles_on_intraop.csv")
        run_job(session, session.start_intraop("moved/intraop_moved.nrrd", time_limit_s=1.0))
        rows = session.needle_deviations()
        report = session.registration_report()
        needles = {n.name: (n.entry.copy(), n.tip.copy()) for n in session.implanted_needles}
        path = session.save_mrb("page.mrb")
        ctx = create_scene()
        other = PlannerSession(ctx, ServedFolder(self.root))
        self.addCleanup(ctx.close)
        self.addCleanup(other.close)
        other.open_path(session.served.relative(path))
        self.assertIn("registered to the planning CT", other.open_note)
        # the page's plan comes back: the re-plan shown and the plan being implanted (the plan folder's)
        from SeedImplantPlannerLib.planning.planfile import read_plan
        self.assertEqual(other.plan_record.status, "stored", other.plan_record.problem)
        assert_same_seeds(self, other.plan, session.current_plan())
        self.assertEqual(other.plan.to_dict()["needles"], session.plan.to_dict()["needles"])
        self.assertEqual(other.plan.prescription_Gy, session.plan.prescription_Gy)
        assert_same_seeds(self, other.restored_original, read_plan(self.root / "moved" / "plan" / "plan.json"))
        self.assertEqual(other.intraop_ct_text(), "moved/intraop_moved.nrrd")
        back = other.registration_report()
        self.assertEqual(back["lines"], report["lines"])
        self.assertIn("registered with: bone window metric", back["lines"])
        self.assertEqual(other.restored.options(), {"bone_metric": True, "translation_only": False})
        self.assertEqual(len(other.needle_deviations()), len(rows))
        for g, w in zip(other.needle_deviations(), rows):
            self.assertEqual((g["implanted"], g["needle"], g["note"]), (w["implanted"], w["needle"], w["note"]))
            for key in ("tip_mm", "angle_deg", "entry_mm"):
                self.assertEqual(g[key], w[key])
        found = session.intraop_result.found_seeds
        self.assertGreater(len(found), 0)
        self.assertEqual(other.restored.seeds_node.GetNumberOfControlPoints(), len(found))
        self.assertEqual(set(needles), {n.name for n in other.implanted_needles})
        for n in other.implanted_needles:
            np.testing.assert_allclose(n.entry, needles[n.name][0], atol=1e-6)
            np.testing.assert_allclose(n.tip, needles[n.name][1], atol=1e-6)

    def test_missing_or_unreadable_record_is_said_and_kept(self):
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        from SeedImplantPlannerLib.mrml.plan_scene import PlanScene
        for name, text, words in (("missing", None, "holds no registration record"),
                                  ("unreadable", "{not json", "is unreadable")):
            with self.subTest(name):
                scratch = create_scene()
                try:
                    scratch.load_mrb(self.root / "reg" / "scene.mrb")
                    node = reg.registration_nodes(scratch.scene)[0]
                    if text is None:
                        node.RemoveAttribute(reg.REGISTRATION_ATTRIBUTE)
                    else:
                        node.SetAttribute(reg.REGISTRATION_ATTRIBUTE, text)
                    PlanScene(scratch, scratch.scene.GetSingletonNode("SeedImplantPlanner",
                                                                      "vtkMRMLScriptedModuleNode")).save(
                        self.root / f"{name}.mrb")
                finally:
                    scratch.close()
                ctx = create_scene()
                session = PlannerSession(ctx, ServedFolder(self.root))
                try:
                    session.open_path(f"{name}.mrb")
                    self.assertIn("under a transform of unknown quality", session.open_note)
                    self.assertIn(words, session.open_note)
                    self.assertIn("the transform is kept as it is", session.open_note)
                    rep = session.registration_report()
                    self.assertFalse(rep["checked"])
                    self.assertTrue(any(words in w for w in rep["warnings"]))
                    np.testing.assert_allclose(session.registration.matrix_ras, self.written["matrix_ras"], atol=1e-9)
                    self.assertIs(session.intraop_ct_node.GetParentTransformNode(), session.registration_node)
                    self.assertEqual(len(session.needle_deviations()),
                                     len(csv_rows(self.root / "reg" / "needle_deviations.csv")))
                    self.assertEqual(len(session.implanted_needles), len(self.case["needles"]))
                finally:
                    session.close()
                    ctx.close()


if __name__ == "__main__":
    unittest.main()
