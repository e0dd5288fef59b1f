"""A saved intra-operative review read back from a real .mrb (mrml/intraop_state.py), as the module and the web page do.

The case (intraop_moved_case.py): a plan on a simulated planning CT and an intra-operative CT of the
same patient after a known rigid motion, with the plan's needles in place and seeds implanted. The
review is made with the module's logic (IntraopSession on a slicer-core scene: registration, needle
table, seeds found, re-plan), the scene saved as a .mrb and loaded into a fresh scene; the state read
back must be the one left: the intra-op CT under its registration with the same record, the options,
the needles and seeds where they were, the deviation table. A registration node whose record is
missing, unreadable, edited or not rigid: said in one sentence, the transform and everything else kept.
"""

import json
import os
import shutil
import tempfile
import unittest

import numpy as np

from test_mrml_fixture import HAVE_SLICER, MRMLSceneTestCase

from SeedImplantPlannerLib.imaging.registration import RegistrationResult, write_transform

CASE = {}


def setUpModule():
    if not HAVE_SLICER:
        return
    from intraop_moved_case import make_moved_case
    CASE["tmp"] = tempfile.mkdtemp(prefix="seedplan-intraop-restore-")
    CASE.update(make_moved_case(os.path.join(CASE["tmp"], "case")))
    CASE["tfm"] = os.path.join(CASE["tmp"], "truth.tfm")
    write_transform(CASE["tfm"], RegistrationResult(CASE["truth_matrix"]))


def tearDownModule():
    if "tmp" in CASE:
        shutil.rmtree(CASE["tmp"], ignore_errors=True)


def positions(node):
    return np.array([node.GetNthControlPointPositionWorld(i) for i in range(node.GetNumberOfControlPoints())])


class IntraopRestoreTest(MRMLSceneTestCase):

    def build(self):
        """The plan's scene (planning CT, segmentation, plan) and the moved intra-op CT as a volume node."""
        from SeedImplantPlannerLib.mrml import scene_io
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        from SeedImplantPlannerLib.mrml.volumes import add_scalar_volume
        plan = CASE["plan_obj"]
        ps = scene_io.build_plan_scene(self.ctx, seeds=plan.seeds, prescription_Gy=plan.prescription_Gy,
                                       ct=CASE["planning_ct"], segmentation=CASE["segmentation"], target="GTV",
                                       forbidden=["Bone"], needles=plan.used_needles(),
                                       seed_needle_numbers=plan.seed_needle, dose_geometry=CASE["planning_ct"][1])
        ps.plan = plan
        ct_node = add_scalar_volume(self.scene, *CASE["intraop_ct"], "Intra-op CT")
        return ps, IntraopSession(ps), ct_node

    def reopen(self, ps, name):
        """Save ``ps``'s scene as a .mrb, load it into a fresh scene; (plan scene, IntraopSession) there."""
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        from SeedImplantPlannerLib.mrml.plan_scene import PlanScene
        mrb = os.path.join(self.tmp, name)
        ps.save(mrb)
        self.assertTrue(os.path.getsize(mrb) > 0)
        ctx = self.fresh_scene()
        ctx.load_mrb(mrb)
        ps2 = PlanScene(ctx, ctx.scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode"))
        return ps2, IntraopSession(ps2)

    def test_module_review_comes_back_as_left(self):
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        ps, session, ct = self.build()
        made = session.register(ct)
        session.load_needles(CASE["needles_csv"], ct)
        session.find_seeds(ct, expected=len(CASE["seeds"]))
        result = session.replan(ct, time_limit_s=1.0)
        needles_before = {n.GetName(): positions(n) for n in session.needle_nodes()}
        seeds_before = positions(session.seeds_node())
        world_before = reg.world_geometry(ct)

        ps2, session2 = self.reopen(ps, "module.mrb")
        state = session2.restore()
        # the intra-op CT under its registration, with the record it was made with
        self.assertEqual(state.ct_node.GetName(), "Intra-op CT")
        self.assertIsNot(state.ct_node, ps2.params.get_node("ctVolume"))
        self.assertIs(state.registration_node, state.ct_node.GetParentTransformNode())
        self.assertEqual(state.record, "stored")
        self.assertIsNone(state.problem)
        np.testing.assert_allclose(state.registration.matrix_ras, made.matrix_ras, atol=1e-9)
        self.assertEqual(state.registration.quality, made.quality)
        self.assertEqual(state.registration.warnings, made.warnings)
        self.assertEqual(reg.panel_report(state.registration)["lines"], reg.panel_report(made)["lines"])
        self.assertEqual(state.options(), {"bone_metric": False, "translation_only": False})
        g = session2.ct(state.ct_node)[1]
        np.testing.assert_allclose(g.origin, world_before.origin, atol=1e-6)
        np.testing.assert_allclose(g.direction_matrix, world_before.direction_matrix, atol=1e-9)
        # the needles in place and the implanted seeds where they were (the user's corrections kept)
        self.assertEqual(len(state.needles), len(needles_before))
        for node in state.needle_nodes:
            np.testing.assert_allclose(positions(node), needles_before[node.GetName()], atol=1e-6)
        self.assertEqual({n.name for n in state.needles}, {n["name"] for n in CASE["needles"]})
        np.testing.assert_allclose(positions(state.seeds_node), seeds_before, atol=1e-6)
        self.assertEqual([n.name for n in session2.needles()], [n.name for n in session.needles()])
        # the deviation table as the re-plan wrote it (6 significant digits in the saved table)
        self.assertEqual(len(state.deviation_rows), len(result.needle_rows))
        for got, want in zip(state.deviation_rows, result.needle_rows):
            self.assertEqual(got["name"], want["name"])
            self.assertEqual(got["status"], want["status"])
            for key in ("tip_mm", "angle_deg", "entry_mm"):
                if want.get(key) not in ("", None):
                    self.assertAlmostEqual(float(got[key]), float(want[key]), places=3)
        self.assertEqual(state.deviation_line(), result.deviation_line())
        self.assertEqual(state.advice, result.advice)
        self.assertIs(state.goals_met, bool(result.goals_met))
        self.assertEqual(len(state.option_rows), len(result.options))
        self.assertIsNotNone(state.dvh_chart)
        text = state.summary()
        for words in ("intra-op CT 'Intra-op CT' registered to the planning CT", f"{len(needles_before)} needles in place",
                      f"{len(seeds_before)} implanted seeds found", result.deviation_line(), result.advice):
            self.assertIn(words, text)
        self.assertNotIn("warning", text)

    def test_options_and_a_transform_file_come_back(self):
        ps, session, ct = self.build()
        made = session.register(ct, metric="bone", translation_only=True)
        state = self.reopen(ps, "options.mrb")[1].restore()
        self.assertEqual(state.options(), {"bone_metric": True, "translation_only": True})
        from SeedImplantPlannerLib.mrml.intraop_registration import panel_report
        self.assertIn("registered with: bone window metric, translation only (no rotation)",
                      panel_report(state.registration)["lines"])
        np.testing.assert_allclose(state.registration.matrix_ras, made.matrix_ras, atol=1e-9)
        # a transform file: stored too (no quality), its shift stated at the target's centre
        session.load_transform(ct, CASE["tfm"])
        state = self.reopen(ps, "tfm.mrb")[1].restore()
        self.assertEqual(state.record, "stored")
        self.assertFalse(state.registration.report()["checked"])
        np.testing.assert_allclose(state.registration.matrix_ras, CASE["truth_matrix"], atol=1e-9)
        self.assertIn("at the target centre", panel_report(state.registration)["lines"][0])
        self.assertEqual(state.options(), {"bone_metric": False, "translation_only": False})

    def test_missing_or_corrupt_record_is_said_and_nothing_is_lost(self):
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        from SeedImplantPlannerLib.mrml.nodes import vtk_matrix
        ps, session, ct = self.build()
        session.load_transform(ct, CASE["tfm"])
        session.load_needles(CASE["needles_csv"], ct)
        node = session.registration_node(ct)
        record = json.loads(node.GetAttribute(reg.REGISTRATION_ATTRIBUTE))
        tips = {n.GetName(): positions(n) for n in session.needle_nodes()}
        wrong_format = dict(record, format="something else")
        cases = {"missing": (None, "holds no registration record"),
                 "unreadable": ('{"format": "seedplan-rigid-transform", "matrix_ras": [[1, 0', "is unreadable"),
                 "unreadable-format": (json.dumps(wrong_format), "is unreadable"),
                 "unreadable-matrix": (json.dumps(dict(record, matrix_ras="four by four")), "is unreadable")}
        for name, (text, words) in cases.items():
            with self.subTest(name):
                if text is None:
                    node.RemoveAttribute(reg.REGISTRATION_ATTRIBUTE)
                else:
                    node.SetAttribute(reg.REGISTRATION_ATTRIBUTE, text)
                ps2, session2 = self.reopen(ps, f"{name}.mrb")
                state = session2.restore()
                self.assertEqual(state.record, name.split("-")[0])
                self.assertIn(words, state.problem)
                self.assertIn(f"transform '{node.GetName()}'", state.problem)
                self.assertIn("the transform is kept as it is, its quality was not checked here", state.problem)
                # nothing lost: the CT stays under the transform, the matrix is the one the views show
                self.assertIs(state.ct_node.GetParentTransformNode(), state.registration_node)
                np.testing.assert_allclose(state.registration.matrix_ras, CASE["truth_matrix"], atol=1e-9)
                self.assertEqual(state.registration.quality, {})
                self.assertIn(state.problem, state.registration.warnings)
                self.assertIn(f"warning: {state.problem}", reg.panel_report(state.registration)["lines"])
                self.assertIn(f"warning: {state.problem}", state.summary())
                self.assertEqual(state.options(), {"bone_metric": False, "translation_only": False})
                for n in state.needle_nodes:
                    np.testing.assert_allclose(positions(n), tips[n.GetName()], atol=1e-6)
                # reading changes nothing: the record is left as it was found
                self.assertEqual(state.registration_node.GetAttribute(reg.REGISTRATION_ATTRIBUTE), text)
                # the module's label says the same (its logic reads the registration through the same record)
                np.testing.assert_allclose(session2.registration(state.ct_node).matrix_ras, CASE["truth_matrix"],
                                           atol=1e-9)
                self.assertIn(state.problem, session2.registration(state.ct_node).warnings)
        # edited by hand after the record was made
        node.SetAttribute(reg.REGISTRATION_ATTRIBUTE, json.dumps(record))
        m = np.array(CASE["truth_matrix"], float)
        m[1, 3] += 3.0
        node.SetMatrixTransformToParent(vtk_matrix(m))
        state = self.reopen(ps, "edited.mrb")[1].restore()
        self.assertEqual(state.record, "edited")
        self.assertIn("set or edited by hand", state.problem)
        np.testing.assert_allclose(state.registration.matrix_ras, m, atol=1e-9)
        # not rigid (scaled in the Transforms module): said, not raised; the CT and the needles stay
        m = np.array(CASE["truth_matrix"], float)
        m[:3, :3] *= 1.1
        node.SetMatrixTransformToParent(vtk_matrix(m))
        state = self.reopen(ps, "scaled.mrb")[1].restore()
        self.assertEqual(state.record, "unusable")
        self.assertIsNone(state.registration)
        self.assertIn("not rigid", state.problem)
        self.assertIsNotNone(state.ct_node.GetParentTransformNode())
        self.assertEqual(len(state.needles), len(tips))
        self.assertIn("'Intra-op CT' under a transform that is not rigid", state.summary())
        self.assertIn(f"warning: {state.problem}", state.summary())

    def test_a_scene_without_a_review_is_empty(self):
        ps, session, ct = self.build()
        self.scene.RemoveNode(ct)
        state = self.reopen(ps, "plain.mrb")[1].restore()
        self.assertTrue(state.empty)
        self.assertEqual(state.summary(), "")
        self.assertIsNone(state.registration)
        self.assertEqual(state.notes, [])


if __name__ == "__main__":
    unittest.main()
