"""Registration in the Intra-op panel's logic (mrml/intraop_actions.py, mrml/intraop_registration.py) on a real
slicer-core scene, with a simulated intra-operative CT of a patient who moved (intraop_moved_case.py).

- the transform direction, checked point by point with Slicer's own nodes and storage node: the
  node's transform-to-parent is the planning-from-intra-op matrix (RAS), its ``.tfm`` is the ITK
  planning -> intra-op transform (LPS), a control point under it lands on its planning position;
- registering, the needle table and the seeds found, the re-plan: all in the plan's frame, the
  deviations those of the implant alone (not the motion);
- markups found before a registration move with the CT; a scene saved and re-opened keeps the
  transform, the CT under it and the quality record;
- refusals (no planning CT, no overlap, quality check, cancel) change nothing in the scene.
"""

import os
import shutil
import tempfile
import unittest

import numpy as np

from test_mrml_fixture import HAVE_SLICER, MRMLSceneTestCase

from SeedImplantPlannerLib.core.errors import CancelledError, InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.imaging.registration import (RegistrationError, RegistrationResult, read_transform,
                                                        rotation_angle_deg, write_transform)

CASE = {}


def setUpModule():
    if not HAVE_SLICER:
        return
    from intraop_moved_case import make_moved_case
    CASE["tmp"] = tempfile.mkdtemp(prefix="seedplan-intraop-register-")
    CASE.update(make_moved_case(os.path.join(CASE["tmp"], "case")))


def tearDownModule():
    if "tmp" in CASE:
        shutil.rmtree(CASE["tmp"], ignore_errors=True)


def lps(p):
    return np.asarray(p, float) * [-1.0, -1.0, 1.0]


class IntraopRegistrationTest(MRMLSceneTestCase):

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

    def assert_close_to_truth(self, result, tol_mm=1.0, tol_deg=0.5):
        """The registration maps points of the target region and of the bone within ``tol_mm`` of the truth."""
        truth = RegistrationResult(CASE["truth_matrix"])
        pts = np.array([[-15.0, 8.0, 5.0], [0.0, -28.0, 0.0], [38.0, -5.0, 0.0], [-38.0, 5.0, 0.0], [0.0, 40.0, 20.0]])
        err = np.linalg.norm(result.map_points(pts) - truth.map_points(pts), axis=1).max()
        self.assertLess(err, tol_mm, result.summary_line())
        self.assertLess(rotation_angle_deg(result.rotation.T @ truth.rotation), tol_deg, result.summary_line())

    def test_direction_convention_point_by_point(self):
        """A known point: intra-op CT point q = R p + t must land on its planning position p."""
        import SimpleITK as sitk
        import vtk
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        from SeedImplantPlannerLib.mrml.nodes import numpy_matrix
        from SeedImplantPlannerLib.mrml.volumes import add_scalar_volume
        from intraop_moved_case import move
        truth = RegistrationResult(CASE["truth_matrix"])
        ct, g = CASE["intraop_ct"]
        ct_node = add_scalar_volume(self.scene, ct, g, "Intra-op CT")
        node, change = reg.set_registration(self.scene, ct_node, truth)
        np.testing.assert_allclose(change, CASE["truth_matrix"], atol=1e-9)
        p_plan = np.array([-15.0, 8.0, 5.0])             # the target's centre in the planning frame
        q = move(p_plan)                                 # where the intra-op CT sees it
        # a control point placed at q on the intra-op CT (under the same transform) is at p in world = plan frame
        f = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        f.AddControlPoint(q.tolist())
        f.SetAndObserveTransformNodeID(node.GetID())
        w = [0.0, 0.0, 0.0]
        f.GetNthControlPointPositionWorld(0, w)
        np.testing.assert_allclose(w, p_plan, atol=1e-6)
        # Slicer's own transform of a point from the CT's frame to world
        to_world = vtk.vtkGeneralTransform()
        node.GetTransformToWorld(to_world)
        np.testing.assert_allclose(to_world.TransformPoint(*q), p_plan, atol=1e-6)
        # the CT's grid in world coordinates: voxel ijk of the intra-op CT -> its planning position
        ijk = np.array([[10.0, 20.0, 3.0], [120.0, 90.0, 25.0]])
        wg = reg.world_geometry(ct_node)
        np.testing.assert_allclose(wg.ijk_to_ras(ijk), move(g.ijk_to_ras(ijk), (truth.rotation, truth.translation_mm)),
                                   atol=1e-6)
        np.testing.assert_allclose(truth.map_points(q), p_plan, atol=1e-9)
        # files: our .tfm read by Slicer's storage node gives the same transform-to-parent, and the other way
        path = os.path.join(self.tmp, "ours.tfm")
        write_transform(path, truth)
        loaded = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "loaded")
        storage = self.scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
        storage.SetFileName(path)
        self.assertEqual(storage.ReadData(loaded), 1)
        vm = vtk.vtkMatrix4x4()
        loaded.GetMatrixTransformToParent(vm)
        np.testing.assert_allclose(numpy_matrix(vm), truth.matrix_ras, atol=1e-9)
        out = os.path.join(self.tmp, "slicer.tfm")
        storage.SetFileName(out)
        self.assertEqual(storage.WriteData(node), 1)
        np.testing.assert_allclose(read_transform(out).matrix_ras, truth.matrix_ras, atol=1e-9)
        # the ITK file itself is the resampling transform: planning point (LPS) -> intra-op point (LPS)
        np.testing.assert_allclose(sitk.ReadTransform(path).TransformPoint(tuple(lps(p_plan))), lps(q), atol=1e-6)

    def test_register_then_needles_seeds_and_replan_in_the_plan_frame(self):
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        ps, session, ct_node = self.build()
        seen = []
        result = session.register(ct_node, progress=lambda f, t: seen.append(f))
        self.assertEqual(seen[-1], 1.0)
        self.assert_close_to_truth(result)
        rep = result.report()
        self.assertTrue(rep["checked"])
        self.assertGreater(rep["bone_dice"], 0.8)
        self.assertLess(rep["bone_dice_before"], rep["bone_dice"])
        self.assertTrue(rep["verdict"].startswith("accepted"))
        self.assertIn("bone Dice", "\n".join(rep["lines"]))
        # a real transform node; the CT under it; the plan's CT chosen by default
        node = session.registration_node(ct_node)
        self.assertTrue(node.IsA("vtkMRMLLinearTransformNode"))
        self.assertIs(ct_node.GetParentTransformNode(), node)
        np.testing.assert_allclose(reg.world_matrix(ct_node), result.matrix_ras, atol=1e-12)
        self.assertIsNone(ps.params.get_node("ctVolume").GetParentTransformNode())
        # the needle table as found on the intra-op CT (its own frame) is mapped into the plan's frame
        lines = session.load_needles(str(CASE["needles_csv"]), ct_node)
        self.assertEqual(len(lines), len(CASE["needles"]))
        seeds_node = session.find_seeds(ct_node, expected=len(CASE["seeds"]))
        found = np.array([seeds_node.GetNthControlPointPositionWorld(i) for i in range(seeds_node.GetNumberOfControlPoints())])
        self.assertGreaterEqual(len(found), len(CASE["seeds"]) - 1)
        d = np.linalg.norm(found[:, None, :] - CASE["seeds_plan_frame"][None], axis=-1).min(axis=1)
        self.assertLess(float(np.median(d)), 1.5, d)
        res = session.replan(ct_node, time_limit_s=1.0)
        self.assertEqual(res.registration.to_dict()["matrix_ras"], result.to_dict()["matrix_ras"])
        self.assertEqual(res.registration.quality, result.quality)
        self.assertEqual(res.summary()["registration"]["matrix_ras"], result.to_dict()["matrix_ras"])
        truth = {n["name"]: n["deviation"] for n in CASE["needles"]}
        rows = {r["name"]: r for r in res.needle_rows if r["status"] == "in place"}
        self.assertEqual(set(rows), set(truth))
        # deviations of the implant alone: the 8.7 mm / 4.7 deg motion is gone (registration error < 1 mm)
        tip_err = [abs(float(rows[n]["tip_mm"]) - truth[n]["tip_mm"]) for n in truth]
        ang_err = [abs(float(rows[n]["angle_deg"]) - truth[n]["angle_deg"]) for n in truth]
        self.assertLess(max(tip_err), 1.0, tip_err)
        self.assertLess(max(ang_err), 0.5, ang_err)

    def test_needle_finder_after_registration(self):
        _ps, session, ct_node = self.build()
        session.register(ct_node)
        found, matching = session.find_needles(ct_node)
        truth = {n["name"]: n for n in CASE["needles"]}
        errs = []
        for node in found:
            name = node.GetAttribute("SeedImplantPlanner.NeedleName")
            if name in truth:
                tip = np.array(node.GetNthControlPointPositionWorld(1))
                errs.append(np.linalg.norm(tip - RegistrationResult(CASE["truth_matrix"]).map_points(truth[name]["tip_ras"])))
        self.assertGreaterEqual(len(errs), len(truth) - 2, matching.summary_line())
        self.assertLess(float(np.median(errs)), 2.0, errs)

    def test_markups_move_with_the_ct_and_the_scene_keeps_the_registration(self):
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        from SeedImplantPlannerLib.mrml.plan_scene import PlanScene
        _ps, session, ct_node = self.build()
        # found before any registration: in the intra-op CT's scanner frame
        lines = session.load_needles(str(CASE["needles_csv"]), ct_node)
        tips_before = np.array([n.GetNthControlPointPositionWorld(1) for n in lines])
        seeds = session.find_seeds(ct_node, expected=len(CASE["seeds"]))
        seeds_before = np.array([seeds.GetNthControlPointPosition(i) for i in range(seeds.GetNumberOfControlPoints())])
        axes_before = np.array([np.array(seeds.GetNthControlPointOrientationMatrix(i))[[2, 5, 8]]
                                for i in range(seeds.GetNumberOfControlPoints())])
        path = os.path.join(self.tmp, "t.tfm")
        write_transform(path, RegistrationResult(CASE["truth_matrix"]))
        result = session.load_transform(ct_node, path)
        rep = reg.panel_report(session.registration(ct_node))
        self.assertFalse(rep["checked"])
        self.assertIn("no quality check", rep["verdict"])
        self.assertTrue(rep["lines"][0].endswith("at the target centre"), rep["lines"])
        np.testing.assert_allclose(result.centre_ras, CASE["segmentation"].geometry.ijk_to_ras(
            np.argwhere(CASE["segmentation"].mask(CASE["segmentation"].find("GTV").segment_id)).mean(axis=0)[::-1]),
            atol=1e-6)
        truth = RegistrationResult(CASE["truth_matrix"])
        tips = np.array([n.GetNthControlPointPositionWorld(1) for n in session.needle_nodes()])
        np.testing.assert_allclose(tips, truth.map_points(tips_before), atol=1e-6)
        s = session.seeds_node()
        pos = np.array([s.GetNthControlPointPosition(i) for i in range(s.GetNumberOfControlPoints())])
        np.testing.assert_allclose(pos, truth.map_points(seeds_before), atol=1e-6)
        axes = np.array([np.array(s.GetNthControlPointOrientationMatrix(i))[[2, 5, 8]] for i in range(len(pos))])
        np.testing.assert_allclose(axes, truth.map_directions(axes_before), atol=1e-6)
        # the registration made here is stored with the node and comes back from a saved scene
        made = session.register(ct_node)
        tips_made = np.array([n.GetNthControlPointPositionWorld(1) for n in session.needle_nodes()])
        RM = made.matrix_ras @ np.linalg.inv(CASE["truth_matrix"])
        np.testing.assert_allclose(tips_made, tips @ RM[:3, :3].T + RM[:3, 3], atol=1e-6)
        mrb = os.path.join(self.tmp, "intraop.mrb")
        _ps.save(mrb)
        ctx = self.fresh_scene()
        ctx.load_mrb(mrb)
        ps2 = PlanScene(ctx, ctx.scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode"))
        nodes = reg.registration_nodes(ctx.scene)
        self.assertEqual(len(nodes), 1)
        ct2 = [ctx.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
               for i in range(ctx.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))
               if ctx.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetName() == "Intra-op CT"][0]
        self.assertEqual(ct2.GetTransformNodeID(), nodes[0].GetID())
        back = IntraopSession(ps2).registration(ct2)
        np.testing.assert_allclose(back.matrix_ras, made.matrix_ras, atol=1e-6)
        self.assertEqual(back.quality["bone_dice"], made.quality["bone_dice"])
        self.assertEqual(back.warnings, made.warnings)
        # edited by hand in the Transforms module: the edited matrix is used, with a warning
        m = made.matrix_ras.copy()
        m[0, 3] += 2.0
        from SeedImplantPlannerLib.mrml.nodes import vtk_matrix
        nodes[0].SetMatrixTransformToParent(vtk_matrix(m))
        edited = IntraopSession(ps2).registration(ct2)
        np.testing.assert_allclose(edited.matrix_ras, m, atol=1e-9)
        self.assertTrue(any("by hand" in w for w in edited.warnings))
        self.assertIn("at the RAS origin", reg.panel_report(edited)["lines"][0])
        # back to the scanner coordinates: the markups follow
        session.clear_registration(ct_node)
        self.assertIsNone(ct_node.GetParentTransformNode())
        np.testing.assert_allclose([n.GetNthControlPointPositionWorld(1) for n in session.needle_nodes()], tips_before,
                                   atol=1e-6)

    def test_refusals_change_nothing(self):
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        from SeedImplantPlannerLib.mrml.volumes import add_scalar_volume
        ps, session, ct_node = self.build()
        good = session.register(ct_node)
        lines = session.load_needles(str(CASE["needles_csv"]), ct_node)
        tips = np.array([n.GetNthControlPointPositionWorld(1) for n in lines])
        ids = sorted(self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes()))

        def unchanged():
            names = sorted(self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes()))
            self.assertEqual(names, ids)
            np.testing.assert_allclose(reg.world_matrix(ct_node), good.matrix_ras, atol=1e-12)
            np.testing.assert_allclose([n.GetNthControlPointPositionWorld(1) for n in session.needle_nodes()], tips,
                                       atol=1e-12)
        with self.assertRaisesRegex(RegistrationError, "quality|overlaps poorly"):
            session.register(ct_node, min_bone_dice=0.995)         # refused by the quality check
        unchanged()
        with self.assertRaises(CancelledError):
            session.register(ct_node, progress=lambda f, t: f < 0.3)
        unchanged()
        ct, g = CASE["intraop_ct"]
        far = add_scalar_volume(self.scene, ct, ImageGeometry(g.size, g.spacing,
                                                              tuple(np.asarray(g.origin) + [400.0, 400.0, 0.0])), "Far CT")
        ids = sorted(self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes()))
        with self.assertRaisesRegex(RegistrationError, "do not overlap"):
            session.register(far)
        self.assertIsNone(far.GetParentTransformNode())
        unchanged()
        with self.assertRaisesRegex(InputError, "both the intra-operative and the planning CT"):
            session.register(ct_node, ct_node)
        with self.assertRaisesRegex(InputError, "choose the intra-operative CT"):
            session.register(None)
        ps.params.set_node("ctVolume", None)
        with self.assertRaisesRegex(InputError, "no planning CT"):
            session.register(ct_node)
        with self.assertRaisesRegex(InputError, "transform file"):
            session.load_transform(ct_node, os.path.join(self.tmp, "missing.tfm"))
        unchanged()

    def test_registered_ct_refused_as_the_plans_ct(self):
        """Planning on the intra-op CT under its registration would make the plan in that scanner's frame: refused by
        name, nothing changed; the Inputs selector (which sets ctVolume directly) is put back to the planning CT."""
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        from SeedImplantPlannerLib.mrml.nodes import vtk_matrix
        ps, session, ct_node = self.build()
        planning = ps.params.get_node("ctVolume")
        session.load_transform(ct_node, self._truth_tfm())
        self.assertIsNone(reg.plan_ct_problem(planning))
        problem = reg.plan_ct_problem(ct_node)
        for words in ("'Intra-op CT' is the intra-operative CT registered", "'Intra-op CT registration (planning from",
                      "Choose the planning CT"):
            self.assertIn(words, problem)
        with self.assertRaisesRegex(InputError, "'Intra-op CT' is the intra-operative CT registered"):
            ps.set_ct_node(ct_node)
        self.assertIs(ps.params.get_node("ctVolume"), planning)
        geometry = ps.reference_geometry()
        # the module's selector sets the parameter itself: the choice is taken back, the reason returned
        ps.params.set_node("ctVolume", ct_node)
        self.assertIn("Choose the planning CT", ps.check_ct_choice(previous=planning))
        self.assertIs(ps.params.get_node("ctVolume"), planning)
        self.assertIsNone(ps.check_ct_choice(previous=planning))
        # if it gets there anyway (a script, an old scene): every use of the plan's CT refuses with the same message
        ps.params.set_node("ctVolume", ct_node)
        for call in (ps.reference_geometry, ps.dose_geometry, lambda: ps.plan_implant(time_limit_s=1.0),
                     lambda: ps.write_report(os.path.join(self.tmp, "r.html")), lambda: session.find_needles(ct_node),
                     lambda: session.register(ct_node)):
            with self.assertRaisesRegex(InputError, "'Intra-op CT' is the intra-operative CT registered"):
                call()
        self.assertIn("Choose the planning CT", ps.check_ct_choice(previous=None))
        self.assertIsNone(ps.params.get_node("ctVolume"))          # no acceptable previous choice: none
        ps.set_ct_node(planning)
        self.assertEqual(ps.reference_geometry(), geometry)
        # another transform: refused unless it is the identity; back in scanner coordinates the CT is acceptable
        other = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
        moved = np.eye(4)
        moved[0, 3] = 5.0
        other.SetMatrixTransformToParent(vtk_matrix(moved))
        planning.SetAndObserveTransformNodeID(other.GetID())
        self.assertIn("lies under the transform 'Shift'", reg.plan_ct_problem(planning))
        other.SetMatrixTransformToParent(vtk_matrix(np.eye(4)))
        self.assertIsNone(reg.plan_ct_problem(planning))
        session.clear_registration(ct_node)
        self.assertIsNone(reg.plan_ct_problem(ct_node))

    def _truth_tfm(self):
        path = os.path.join(self.tmp, "truth.tfm")
        write_transform(path, RegistrationResult(CASE["truth_matrix"]))
        return path


if __name__ == "__main__":
    unittest.main()
