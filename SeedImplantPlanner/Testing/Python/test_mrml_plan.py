"""The plan in the scene: parameter node layout, live updates from seed and needle edits, .mrb round trip."""

import os
import unittest

import numpy as np

from test_mrml_fixture import MODEL, MRMLSceneTestCase, sphere_mask

from SeedImplantPlannerLib.mrml import (isodose, markups, parameters, plan_scene, planning_actions, scene_io,
                                        segmentations, tables, volumes)
from SeedImplantPlannerLib.mrml.nodes import study_of, subject_hierarchy
from SeedImplantPlannerLib.physics.dose import DoseGrid
from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.planning.needles import Needle
from SeedImplantPlannerLib.imaging.segio import Segmentation
from SeedImplantPlannerLib.physics.seeds import SeedSet

RX = 120.0


def make_case():
    """A small synthetic case: CT, segmentation (PTV, OAR, Bone), 3 needles along S with 2 seeds each."""
    g = ImageGeometry((36, 36, 30), (1.5, 1.5, 1.5), (-26.0, -26.0, -22.0))
    c = g.voxel_centers_ras()
    ct = np.where(np.linalg.norm(c, axis=-1) < 24, 40, -1000).astype(np.int16)
    masks = {"PTV": sphere_mask(g, (0, 0, 0), 9.0), "OAR": sphere_mask(g, (16, 0, 0), 4.0),
             "Bone": sphere_mask(g, (-18, -14, 0), 4.0)}
    seg = Segmentation.from_masks(g, masks, {"PTV": (0.9, 0.1, 0.1), "OAR": (0.1, 0.6, 0.9),
                                             "Bone": (0.95, 0.9, 0.7)})
    needles = [Needle(i + 1, entry=(x, y, -20.0), tip=(x, y, 8.0)) for i, (x, y) in enumerate([(-5, 0), (5, 0), (0, 6)])]
    pos, axes, nums = [], [], []
    for n in needles:
        for s in (3.0, 11.0):
            pos.append(n.tip - s * n.direction)
            axes.append(n.direction)
            nums.append(n.number)
    seeds = SeedSet(np.array(pos), np.array(axes), 0.6, MODEL)
    return g, ct, seg, needles, seeds, np.array(nums)


class PlanSceneTestCase(MRMLSceneTestCase):

    def build(self, **kw):
        g, ct, seg, needles, seeds, nums = make_case()
        self.g, self.seeds = g, seeds
        args = dict(seeds=seeds, prescription_Gy=RX, ct=(ct, g), segmentation=seg, target="PTV", organs=["OAR"],
                    forbidden=["Bone"], needles=needles, seed_needle_numbers=nums, dose_method="direct",
                    parameters={"doseMarginMm": 12.0, "doseGridSpacingMm": 2.0})
        args.update(kw)
        return scene_io.build_plan_scene(self.ctx, **args)


class ParameterNodeTest(MRMLSceneTestCase):

    def test_layout_matches_parameter_node_wrapper(self):
        p = parameters.PlanParameters.create(self.scene)
        node = p.node
        self.assertEqual(node.GetAttribute("ModuleName"), "SeedImplantPlanner")
        self.assertEqual(node.GetSingletonTag(), "SeedImplantPlanner")
        self.assertIs(parameters.PlanParameters.create(self.scene).node, node)  # singleton
        p.set("prescriptionDoseGy", 145.0)
        p.set("needlesLocked", True)
        self.assertEqual(node.GetParameter("prescriptionDoseGy"), "145.0")
        self.assertEqual(node.GetParameter("needlesLocked"), "True")
        self.assertEqual(p.get("prescriptionDoseGy"), 145.0)
        self.assertIs(p.get("needlesLocked"), True)
        vol = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        p.set_node("ctVolume", vol)
        self.assertEqual(node.GetParameter("ctVolume"), "")
        self.assertEqual(node.GetNodeReferenceID("ctVolume"), vol.GetID())
        lines = [self.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode") for _ in range(3)]
        p.set_node_list("needleNodes", lines)
        self.assertEqual(node.GetParameter("needleNodes.len"), "3")
        self.assertEqual(node.GetNodeReferenceID("needleNodes.2"), lines[2].GetID())
        p.set_node_list("needleNodes", lines[:1])
        self.assertEqual(p.get_node_list("needleNodes"), lines[:1])
        self.assertIsNone(node.GetNodeReferenceID("needleNodes.2"))
        p.set_string_list("organSegmentIds", ["a", "b"])
        self.assertEqual(node.GetParameter("organSegmentIds.1"), "b")
        self.assertEqual(p.get_string_list("organSegmentIds"), ["a", "b"])

    def test_isodose_levels_parse(self):
        self.assertEqual(parameters.parse_levels("100, 50%; 150"), (50.0, 100.0, 150.0))
        for bad in ("", "abc", "-5"):
            with self.assertRaises(InputError):
                parameters.parse_levels(bad)


class PlanBuildTest(PlanSceneTestCase):

    def test_whole_plan_is_in_the_scene(self):
        plan = self.build()
        p = plan.params
        for role in ("ctVolume", "segmentation", "seedsNode", "doseVolume", "dvhTable", "dvhChart", "metricsTable"):
            self.assertIsNotNone(p.get_node(role), role)
        self.assertEqual(len(p.get_node_list("needleNodes")), 3)
        self.assertEqual(len(p.get_node_list("isodoseModels")), 5)
        seg = p.get_node("segmentation")
        self.assertEqual(seg.GetSegmentation().GetSegment(p.get("targetSegmentId")).GetName(), "PTV")
        self.assertEqual(len(p.get_string_list("forbiddenSegmentIds")), 1)
        # dose equals the library's dose on the plan's grid
        dose = volumes.volume_array(p.get_node("doseVolume"))
        ref = DoseGrid(plan.dose_grid.geometry, self.seeds, method="direct").dose_Gy()
        np.testing.assert_allclose(dose, ref.astype(np.float32), rtol=1e-6)
        cols = tables.table_columns(p.get_node("dvhTable"))
        self.assertIn("PTV V (%)", cols)
        self.assertAlmostEqual(cols["PTV V (%)"][0], 100.0)
        metrics = tables.table_columns(p.get_node("metricsTable"))
        self.assertIn("D90", metrics["Metric"])
        self.assertIn("CI", metrics["Metric"])
        # every plan node sits in the plan's study
        study = plan.study_item()
        for role in ("ctVolume", "doseVolume", "seedsNode", "segmentation", "metricsTable"):
            self.assertEqual(study_of(self.scene, p.get_node(role)), study, role)
        # needles read back as Needle objects
        back = plan.needles()
        self.assertEqual([n.number for n in back], [1, 2, 3])
        np.testing.assert_allclose(back[1].tip, (5.0, 0.0, 8.0))

    def test_goals_give_pass_and_fail(self):
        from SeedImplantPlannerLib.evaluation.goals import goals_from_text
        goals = goals_from_text("PTV: V100 >= 0%; D90 >= 10000 Gy\nOAR: Dmax <= 100000 Gy")
        plan = self.build(goals=goals)
        cols = tables.table_columns(plan.params.get_node("metricsTable"))
        rows = list(zip(cols["Structure"], cols["Metric"], cols["Pass"]))
        self.assertIn(("PTV", "V100", "pass"), rows)
        self.assertIn(("PTV", "D90", "FAIL"), rows)
        self.assertIn(("OAR", "Dmax", "pass"), rows)
        self.assertEqual(plan.last_update["failed_goals"], 1)


class PlanningWorkflowTest(PlanSceneTestCase):
    """What the module's Needles, Seeds and Evaluation panels run, on the scene's segments."""

    def test_uniform_loading_along_the_needles(self):
        plan = self.build()
        seeds = plan.load_seeds_uniformly(5.0)
        got, numbers = plan.seeds()
        self.assertEqual(len(got), len(seeds))
        self.assertTrue(set(numbers) <= {1, 2, 3})
        self.assertAlmostEqual(got.strengths_U[0], plan.seed_strength_U())
        self.assertAlmostEqual(plan.seed_strength_U(), 0.5 * 1.27)  # default 0.5 mCi of I-125
        summary = plan.seed_summary()
        self.assertEqual(summary["count"], len(seeds))
        self.assertAlmostEqual(summary["total_mCi"], 0.5 * len(seeds))
        self.assertEqual(len(plan.dose_grid.seeds), len(seeds))

    def test_strength_decays_between_reference_and_implant_dates(self):
        plan = self.build()
        plan.params.set("strengthUnit", "U")
        plan.params.set("strengthValue", 0.8)
        plan.params.set("referenceDate", "2026-01-01")
        plan.params.set("implantDate", "2026-03-01")  # 59 days: about one I-125 half-life
        self.assertAlmostEqual(plan.seed_strength_U(), 0.8 * 0.5 ** (59 / 59.4), places=2)

    def test_needle_through_a_forbidden_structure_is_reported(self):
        plan = self.build()
        self.assertEqual(plan.needle_obstacles(), [])
        bad = Needle(4, entry=(-18.0, -14.0, -20.0), tip=(-18.0, -14.0, 8.0))  # through "Bone"
        plan.set_needles(plan.needles() + [bad])
        hits = plan.needle_obstacles()
        self.assertEqual([(h.needle_number, h.structure) for h in hits], [(4, "Bone")])

    def test_inverse_planning_fills_needles_and_seeds(self):
        from SeedImplantPlannerLib.evaluation.goals import goals_from_text
        plan = self.build(goals=goals_from_text("PTV: V100 >= 90%\nOAR: Dmax <= 200%"))
        result = plan.plan_implant("template", "S", 5.0, time_limit_s=0.5)
        self.assertAlmostEqual(result.goals.v100_min, 0.90)
        self.assertEqual(result.goals.oars[0].dmax_Gy, 2.0 * RX)
        seeds, numbers = plan.seeds()
        self.assertEqual(len(seeds), len(result.seeds))
        self.assertTrue(np.all(numbers > 0))
        self.assertTrue(set(numbers) <= {n.number for n in plan.needles()})
        self.assertEqual(len(plan.dose_grid.seeds), len(seeds))

    def test_goal_set_becomes_optimizer_goals(self):
        from SeedImplantPlannerLib.evaluation.goals import goals_from_text
        from SeedImplantPlannerLib.planning.problem import OARConstraint
        gs = goals_from_text("PTV: V100 >= 97%; D90 >= 110%; V150 <= 55%; CI >= 0.6\n"
                             "OAR: D2cc <= 100 Gy; Dmax <= 150%; V100 < 1 cc")
        goals, oars = planning_actions.optimizer_goals(gs, RX, "PTV", ["OAR", "Other"])
        self.assertAlmostEqual(goals.v100_min, 0.97)
        self.assertAlmostEqual(goals.d90_min_frac, 1.10)
        self.assertAlmostEqual(goals.v150_max, 0.55)
        self.assertIsInstance(oars[0], OARConstraint)
        self.assertEqual((oars[0].d2cc_Gy, oars[0].dmax_Gy), (100.0, 1.5 * RX))
        self.assertEqual(oars[1], "Other")
        default, names = planning_actions.optimizer_goals(None, RX, "PTV", ["OAR"])
        self.assertEqual(names, ["OAR"])
        self.assertEqual(default.prescription_Gy, RX)

    def test_report_export(self):
        plan = self.build()
        out = plan.write_report(os.path.join(self.tmp, "report.html"))
        text = open(out["html"], encoding="utf-8").read()
        self.assertIn("PTV", text)
        self.assertIn("D90", text)


class EvaluationCropTest(PlanSceneTestCase):

    def assert_same_as_whole_grid(self, ev, dose, g, goals):
        from SeedImplantPlannerLib.evaluation.evaluate import evaluate_plan
        bins, curves, rows, failed = ev.evaluate(dose, g)
        ref = evaluate_plan(dose, g, ev.structures, RX, target="PTV", goals=goals)
        self.assertEqual(failed, ref.n_goals_failed)
        got = {(r["structure"], r["metric"]): r["value"] for r in rows if not r["goal"]}
        for r in ref.metric_rows():
            np.testing.assert_allclose(got[(r["structure"], r["metric"])], r["value"], rtol=1e-12, err_msg=str(r))
        self.assertEqual([(s.name, s.factor) for s in ev.result.samples], [(s.name, s.factor) for s in ref.samples])
        step = int(np.ceil(len(ref.dvhs[0].edges_Gy) / ev.MAX_DVH_ROWS))
        for d in ref.dvhs:
            np.testing.assert_array_equal(curves[d.name], d.cumulative_percent[::step])

    def test_cropped_evaluation_equals_the_whole_grid(self):
        from SeedImplantPlannerLib.evaluation.goals import goals_from_text
        goals = goals_from_text("PTV: V100 >= 90%; D90 >= 100%\nOAR: D0.1cc <= 100%")
        # a target above the small-structure volume (sampled at voxel centres) and a small organ
        g = ImageGeometry((44, 44, 44), (1.5, 1.5, 1.5), (-32.25, -32.25, -32.25))
        seg = Segmentation.from_masks(g, {"PTV": sphere_mask(g, (0, 0, 0), 18.0),
                                          "OAR": sphere_mask(g, (25, 0, 0), 4.0)})
        off = np.array([-8.0, 0.0, 8.0])
        pos = np.array([[x, y, z] for x in off for y in off for z in off])
        seeds = SeedSet(pos, np.tile((0.0, 0.0, 1.0), (len(pos), 1)), 0.6, MODEL)
        plan = scene_io.build_plan_scene(self.ctx, seeds=seeds, prescription_Gy=RX, segmentation=seg, target="PTV",
                                         organs=["OAR"], goals=goals, dose_method="direct",
                                         parameters={"doseMarginMm": 25.0, "doseGridSpacingMm": 1.5})
        dose, g = plan.dose_array()
        ev = plan._evaluator()
        sub, sg = ev.crop(dose, g, ev.structures)
        self.assertLess(sub.size, dose.size)
        self.assert_same_as_whole_grid(ev, dose, g, goals)
        # the large target is read from its cached mask on the crop grid; the small OAR keeps its own grid
        self.assertEqual([s.name for s in ev.structures if id(s) in ev._subst], ["PTV"])
        crop_before = ev._crop_box
        # after a seed edit the same crop grid and cache serve, with the same numbers as the whole grid
        node = plan.params.get_node("seedsNode")
        plan.start_live_updates()
        self.addCleanup(plan.stop_live_updates)
        node.SetNthControlPointPosition(0, 2.0, -3.0, 1.0)
        dose2, _ = plan.dose_array()
        self.assertFalse(np.allclose(dose2, dose))
        self.assert_same_as_whole_grid(ev, dose2, g, goals)
        self.assertIs(ev._crop_box, crop_before)


class LiveUpdateTest(PlanSceneTestCase):

    def assert_dose_matches_full_recompute(self, plan):
        seeds, _ = plan.seeds()
        ref = DoseGrid(plan.dose_grid.geometry, seeds, method="direct").dose_Gy()
        np.testing.assert_allclose(plan.dose_grid.dose_Gy(), ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(volumes.volume_array(plan.params.get_node("doseVolume")), ref.astype(np.float32),
                                   rtol=1e-5, atol=1e-4)

    def test_moving_a_seed_updates_dose_isodoses_dvh_and_metrics(self):
        plan = self.build()
        plan.start_live_updates()
        self.addCleanup(plan.stop_live_updates)
        node = plan.params.get_node("seedsNode")
        iso = plan.params.get_node_list("isodoseModels")[2].GetPolyData()
        iso_points_before = iso.GetNumberOfPoints()
        dvh_before = tables.table_columns(plan.params.get_node("dvhTable"))["PTV V (%)"].copy()
        metrics_before = tables.table_columns(plan.params.get_node("metricsTable"))["Value"]
        p = np.array(node.GetNthControlPointPosition(0))
        node.SetNthControlPointPosition(0, *(p + (-6.0, 4.0, 0.0)))
        self.assertEqual(plan.last_update["dose_edit"], "moved 1")
        self.assert_dose_matches_full_recompute(plan)
        new_iso = plan.params.get_node_list("isodoseModels")[2].GetPolyData()
        self.assertNotEqual((new_iso.GetNumberOfPoints(), id(new_iso)), (iso_points_before, id(iso)))
        dvh_after = tables.table_columns(plan.params.get_node("dvhTable"))["PTV V (%)"]
        self.assertFalse(len(dvh_after) == len(dvh_before) and np.allclose(dvh_after, dvh_before))
        self.assertNotEqual(tables.table_columns(plan.params.get_node("metricsTable"))["Value"], metrics_before)

    def test_adding_and_removing_seeds_in_the_view(self):
        plan = self.build()
        plan.start_live_updates()
        self.addCleanup(plan.stop_live_updates)
        node = plan.params.get_node("seedsNode")
        node.AddControlPoint(0.0, -3.0, 0.0)
        self.assertEqual(plan.last_update["dose_edit"], "added 1")
        self.assertEqual(len(plan.dose_grid.seeds), 7)
        self.assert_dose_matches_full_recompute(plan)
        node.RemoveNthControlPoint(2)
        self.assertEqual(plan.last_update["dose_edit"], "removed 1")
        self.assertEqual(len(plan.dose_grid.seeds), 6)
        self.assert_dose_matches_full_recompute(plan)

    def test_moving_a_needle_moves_its_seeds(self):
        plan = self.build()
        plan.start_live_updates()
        self.addCleanup(plan.stop_live_updates)
        needle = plan.params.get_node_list("needleNodes")[1]  # needle 2: seeds 2 and 3
        before, nums = plan.seeds()
        shift = np.array([2.0, -1.0, 1.5])
        needle.SetLocked(False)
        for i in range(2):
            needle.SetNthControlPointPosition(i, *(np.array(needle.GetNthControlPointPosition(i)) + shift))
        after, _ = plan.seeds()
        moved = nums == 2
        np.testing.assert_allclose(after.positions[moved], before.positions[moved] + shift, atol=1e-9)
        np.testing.assert_allclose(after.positions[~moved], before.positions[~moved])
        self.assert_dose_matches_full_recompute(plan)

    def test_tilting_a_needle_turns_its_seed_axes(self):
        plan = self.build()
        plan.start_live_updates()
        self.addCleanup(plan.stop_live_updates)
        needle = plan.params.get_node_list("needleNodes")[0]
        entry = np.array(needle.GetNthControlPointPosition(0))
        needle.SetNthControlPointPosition(0, *(entry + (6.0, 0.0, 0.0)))
        after, nums = plan.seeds()
        tip = np.array(needle.GetNthControlPointPosition(1))
        direction = (tip - needle.GetNthControlPointPosition(0))
        direction /= np.linalg.norm(direction)
        for i in np.flatnonzero(nums == 1):
            np.testing.assert_allclose(np.abs(after.axes[i] @ direction), 1.0, atol=1e-9)
            # the seed stays on the needle at its distance from the tip
            d = after.positions[i] - tip
            np.testing.assert_allclose(np.linalg.norm(np.cross(d, direction)), 0.0, atol=1e-9)
        self.assert_dose_matches_full_recompute(plan)

    def test_bad_seed_edit_is_reported_not_raised(self):
        plan = self.build()
        plan.start_live_updates()
        self.addCleanup(plan.stop_live_updates)
        node = plan.params.get_node("seedsNode")
        with self.assertLogs("SeedImplantPlannerLib.mrml.live_update", "WARNING"):
            node.SetNthControlPointDescription(0, f"sk_U=-1; model={MODEL}")
            node.SetNthControlPointPosition(0, 0.0, 0.0, 0.0)
        self.assertIn("strength", plan.last_update["error"])
        self.assertEqual(len(plan.dose_grid.seeds), 6)  # the dose grid kept its last good state

    def test_scheduler_coalesces_events(self):
        plan = self.build()
        pending = []
        plan.start_live_updates(schedule=pending.append)
        self.addCleanup(plan.stop_live_updates)
        node = plan.params.get_node("seedsNode")
        for k in range(3):
            p = np.array(node.GetNthControlPointPosition(1))
            node.SetNthControlPointPosition(1, *(p + (1.0, 0.0, 0.0)))
        self.assertEqual(len(pending), 3)
        pending[0]()
        self.assertEqual(plan.last_update["dose_edit"], "moved 1")
        self.assertIsNone(pending[1]())  # nothing left to do
        self.assert_dose_matches_full_recompute(plan)


class FreeHandNeedleTest(PlanSceneTestCase):
    """A free-hand needle node added for placement, kept when placed, taken out when the placement is cancelled."""

    def test_added_needle_is_numbered_next_and_kept_when_placed(self):
        plan = self.build()
        node = plan.add_needle_node()
        self.assertEqual(node.GetAttribute(markups.NEEDLE_NUMBER_ATTRIBUTE), "4")
        self.assertEqual(plan.params.get_node_list("needleNodes")[-1], node)
        self.assertEqual(len(plan.needles(skip_incomplete=True)), 3)  # not placed yet
        node.AddControlPoint(-8.0, 4.0, -20.0)
        node.AddControlPoint(-8.0, 4.0, 6.0)
        needles = plan.needles()
        self.assertEqual([n.number for n in needles], [1, 2, 3, 4])
        np.testing.assert_allclose(needles[-1].tip, (-8.0, 4.0, 6.0))

    def test_cancelled_placement_leaves_no_needle_and_no_observer(self):
        plan = self.build()
        plan.start_live_updates()
        self.addCleanup(plan.stop_live_updates)
        node = plan.add_needle_node()
        node.AddControlPoint(-8.0, 4.0, -20.0)  # entry placed, then the placement is cancelled
        plan.start_live_updates()  # the module restarts live updates: the new node is observed too
        n_observed = len(plan._observations)
        self.assertIn(node, [observed for observed, _tag in plan._observations])
        plan.remove_needle_node(node)
        self.assertIsNone(node.GetScene())
        self.assertEqual(len(plan.params.get_node_list("needleNodes")), 3)
        self.assertEqual(plan.params.node.GetParameter("needleNodes.len"), "3")
        self.assertEqual(len(plan._observations), n_observed - 1)
        self.assertNotIn(node, [observed for observed, _tag in plan._observations])
        self.assertEqual([n.number for n in plan.needles()], [1, 2, 3])
        # the other needles still drive their seeds
        needle = plan.params.get_node_list("needleNodes")[1]
        before, nums = plan.seeds()
        needle.SetLocked(False)
        for i in range(2):
            needle.SetNthControlPointPosition(i, *(np.array(needle.GetNthControlPointPosition(i)) + (1.0, 0.0, 0.0)))
        after, _ = plan.seeds()
        np.testing.assert_allclose(after.positions[nums == 2], before.positions[nums == 2] + (1.0, 0.0, 0.0),
                                   atol=1e-9)

    def test_removing_a_node_that_is_not_a_needle_of_the_plan_is_refused(self):
        plan = self.build()
        other = self.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "Ruler")
        with self.assertRaisesRegex(InputError, "'Ruler' is not one of the plan's needles"):
            plan.remove_needle_node(other)
        self.assertIsNotNone(other.GetScene())


class RoundTripTest(PlanSceneTestCase):

    def test_plan_scene_survives_mrb_save_and_load(self):
        from SeedImplantPlannerLib.evaluation.goals import goals_from_text
        plan = self.build(goals=goals_from_text("PTV: V100 >= 90%"))
        p = plan.params
        path = plan.save(os.path.join(self.tmp, "plan.mrb"))
        other = self.fresh_scene()
        other.load_mrb(path)
        node = other.scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode")
        self.assertIsNotNone(node)
        q = parameters.PlanParameters(node)
        # parameters
        for name in parameters.DEFAULTS:
            self.assertEqual(q.get(name), p.get(name), name)
        for name in parameters.STRING_LIST_PARAMETERS:
            self.assertEqual(q.get_string_list(name), p.get_string_list(name), name)
        # volumes: arrays, geometry, attributes
        for role in ("ctVolume", "doseVolume"):
            a, b = p.get_node(role), q.get_node(role)
            self.assertIsNotNone(b, role)
            np.testing.assert_array_equal(volumes.volume_array(b), volumes.volume_array(a))
            self.assertTrue(volumes.geometry_from_volume(b).matches(volumes.geometry_from_volume(a), 1e-6))
        dose = q.get_node("doseVolume")
        self.assertEqual(dose.GetAttribute("DicomRtImport.DoseVolume"), "1")
        sh = subject_hierarchy(other.scene)
        study = study_of(other.scene, dose)
        self.assertEqual(sh.GetItemAttribute(study, "DicomRtImport.DoseUnitName"), "GY")
        self.assertEqual(sh.GetItemAttribute(study, "DicomRtImport.DoseUnitValue"), "1")
        self.assertEqual(dose.GetDisplayNode().GetColorNode().GetID(), q.get_node("doseColorTable").GetID())
        self.assertAlmostEqual(dose.GetDisplayNode().GetWindow(), 2 * RX)
        # segmentation
        for sid in [p.get("targetSegmentId")] + p.get_string_list("organSegmentIds"):
            np.testing.assert_array_equal(segmentations.segment_mask(q.get_node("segmentation"), sid, self.g),
                                          segmentations.segment_mask(p.get_node("segmentation"), sid, self.g))
        # seeds: positions, axes, strengths, models, needle numbers
        s1, n1 = plan.seeds()
        s2, n2 = markups.fiducial_node_to_seeds(q.get_node("seedsNode"))
        np.testing.assert_allclose(s2.positions, s1.positions, atol=1e-6)
        np.testing.assert_allclose(s2.axes, s1.axes, atol=1e-6)
        np.testing.assert_allclose(s2.strengths_U, s1.strengths_U)
        self.assertEqual(s2.models, s1.models)
        np.testing.assert_array_equal(n2, n1)
        # needles: points, lock state, numbers and their data
        a_needles, b_needles = p.get_node_list("needleNodes"), q.get_node_list("needleNodes")
        self.assertEqual(len(b_needles), len(a_needles))
        for a, b in zip(a_needles, b_needles):
            self.assertEqual(b.GetName(), a.GetName())
            self.assertEqual(b.GetLocked(), a.GetLocked())
            self.assertEqual(b.GetAttribute(markups.NEEDLE_NUMBER_ATTRIBUTE), a.GetAttribute(markups.NEEDLE_NUMBER_ATTRIBUTE))
            self.assertEqual(b.GetAttribute(markups.NEEDLE_DATA_ATTRIBUTE), a.GetAttribute(markups.NEEDLE_DATA_ATTRIBUTE))
            np.testing.assert_allclose(markups.line_nodes_to_needles([b])[0], markups.line_nodes_to_needles([a])[0], atol=1e-6)
        # isodoses: polydata, colours, attributes
        for a, b in zip(p.get_node_list("isodoseModels"), q.get_node_list("isodoseModels")):
            self.assertEqual(b.GetAttribute(isodose.ISODOSE_LEVEL_ATTRIBUTE), a.GetAttribute(isodose.ISODOSE_LEVEL_ATTRIBUTE))
            self.assertEqual(b.GetPolyData().GetNumberOfPoints(), a.GetPolyData().GetNumberOfPoints())
            np.testing.assert_allclose(b.GetDisplayNode().GetColor(), a.GetDisplayNode().GetColor())
            self.assertTrue(b.GetDisplayNode().GetVisibility2D())
        # tables and chart
        for role in ("dvhTable", "metricsTable"):
            ta, tb = tables.table_columns(p.get_node(role)), tables.table_columns(q.get_node(role))
            self.assertEqual(list(tb), list(ta), role)
            for k in ta:
                if isinstance(ta[k], list):
                    self.assertEqual(tb[k], ta[k], (role, k))
                else:
                    np.testing.assert_allclose(tb[k], ta[k], rtol=1e-6, err_msg=f"{role} {k}")
        chart = q.get_node("dvhChart")
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), p.get_node("dvhChart").GetNumberOfPlotSeriesNodes())
        self.assertIs(chart.GetNthPlotSeriesNode(0).GetTableNode(), q.get_node("dvhTable"))

    def test_loaded_plan_can_be_edited_live(self):
        plan = self.build()
        path = plan.save(os.path.join(self.tmp, "plan.mrb"))
        other = self.fresh_scene()
        other.load_mrb(path)
        loaded = plan_scene.PlanScene(other, other.scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode"))
        loaded.compute_dose(volumes.geometry_from_volume(loaded.params.get_node("doseVolume")))
        np.testing.assert_allclose(loaded.dose_grid.dose_Gy().astype(np.float32),
                                   volumes.volume_array(plan.params.get_node("doseVolume")), rtol=1e-5, atol=1e-4)
        loaded.start_live_updates()
        self.addCleanup(loaded.stop_live_updates)
        node = loaded.params.get_node("seedsNode")
        node.SetNthControlPointPosition(0, 1.0, 1.0, 1.0)
        self.assertEqual(loaded.last_update["dose_edit"], "moved 1")
        # the loaded scene reuses its nodes: no duplicates
        # DVH and metrics tables, and SlicerRT's metrics table with one DVH table per structure (PTV, OAR)
        self.assertEqual(other.scene.GetNumberOfNodesByClass("vtkMRMLTableNode"), 5)
        self.assertEqual(other.scene.GetNumberOfNodesByClass("vtkMRMLModelNode"), 5)

    def test_save_plan_scene_in_one_call(self):
        g, ct, seg, needles, seeds, nums = make_case()
        out = scene_io.save_plan_scene(os.path.join(self.tmp, "out", "demo.mrb"), seeds=seeds, prescription_Gy=RX,
                                       ct=(ct, g), segmentation=seg, target="PTV", organs=["OAR"], needles=needles,
                                       seed_needle_numbers=nums, dose_method="direct",
                                       parameters={"doseMarginMm": 10.0, "doseGridSpacingMm": 2.0})
        self.assertTrue(out["mrb"].is_file())
        self.assertEqual(out["pictures"], {})
        other = self.fresh_scene()
        other.load_mrb(out["mrb"])
        self.assertEqual(other.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode"), 3)
        self.assertEqual(other.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode"), 1)

    def test_save_plan_scene_with_a_dose_computed_elsewhere(self):
        g, ct, seg, needles, seeds, nums = make_case()
        dg = ImageGeometry((20, 20, 18), (1.5, 1.5, 1.5), (-14.0, -14.0, -12.0))
        dose = DoseGrid(dg, seeds, method="direct").dose_Gy()
        out = scene_io.save_plan_scene(os.path.join(self.tmp, "given.mrb"), seeds=seeds, prescription_Gy=RX,
                                       segmentation=seg, target="PTV", needles=needles, seed_needle_numbers=nums,
                                       dose=(dose, dg))
        other = self.fresh_scene()
        other.load_mrb(out["mrb"])
        q = parameters.PlanParameters(other.scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode"))
        np.testing.assert_allclose(volumes.volume_array(q.get_node("doseVolume")), dose.astype(np.float32))
        self.assertTrue(volumes.geometry_from_volume(q.get_node("doseVolume")).matches(dg, 1e-6))
        self.assertIn("PTV V (%)", tables.table_columns(q.get_node("dvhTable")))

    def test_missing_inputs_are_named(self):
        plan = plan_scene.PlanScene(self.ctx)
        with self.assertRaises(InputError):
            plan.set_roles("PTV")
        with self.assertRaises(InputError):
            plan.compute_dose(ImageGeometry((4, 4, 4), (1, 1, 1), (0, 0, 0)), "direct")


class MultiTargetSceneTest(PlanSceneTestCase):
    """Two targets with their own prescriptions and seed strengths: metrics, DVH marks, isodoses, planning, report."""

    def build_two(self):
        g, ct, seg, needles, seeds, nums = make_case()
        masks = {s.name: seg.mask(s.segment_id) for s in seg.segments}
        masks["GTV2"] = sphere_mask(g, (-14.0, 12.0, 0.0), 5.0)
        seg2 = Segmentation.from_masks(g, masks, {"PTV": (0.9, 0.1, 0.1), "OAR": (0.1, 0.6, 0.9),
                                                  "Bone": (0.95, 0.9, 0.7), "GTV2": (0.2, 0.8, 0.2)})
        extra = SeedSet(np.array([[-14.0, 12.0, -2.5], [-14.0, 12.0, 2.5]]), np.tile([0, 0, 1.0], (2, 1)), 0.4, MODEL)
        self.seeds2 = SeedSet.concatenate([seeds, extra])
        self.g2 = g
        self.gtv2 = masks["GTV2"]
        plan = scene_io.build_plan_scene(
            self.ctx, seeds=self.seeds2, prescription_Gy=RX, ct=(ct, g), segmentation=seg2, target="PTV",
            organs=["OAR"], forbidden=["Bone"], needles=needles, seed_needle_numbers=np.r_[nums, 0, 0],
            dose_method="direct", parameters={"doseMarginMm": 12.0, "doseGridSpacingMm": 2.0})
        plan.set_targets([("PTV", RX), ("GTV2", 90.0, 0.4)])
        plan.compute_dose(method="direct")
        return plan

    def test_each_target_against_its_own_prescription(self):
        from SeedImplantPlannerLib.physics.dose import dose_at_points_Gy
        from SeedImplantPlannerLib.planning.needles import mask_points
        plan = self.build_two()
        self.assertEqual([(t["name"], t["prescription_Gy"], t["strength"]) for t in plan.targets()],
                         [("PTV", RX, 0.5), ("GTV2", 90.0, 0.4)])
        cols = tables.table_columns(plan.params.get_node("metricsTable"))
        rows = {(s, m): (v, u) for s, m, v, u in zip(cols["Structure"], cols["Metric"], cols["Value"], cols["Unit"])}
        self.assertEqual(rows[("GTV2", "Prescription")], ("90", "Gy"))
        self.assertEqual(rows[("PTV", "Prescription")], ("120", "Gy"))
        self.assertEqual(rows[("GTV2", "Seed strength")], ("0.4", "mCi"))
        # V100 and D90 of GTV2 against its own 90 Gy, recomputed with the direct TG-43 sum at its voxel centres
        d = dose_at_points_Gy(mask_points(self.gtv2, self.g2), self.seeds2)[0]
        self.assertAlmostEqual(float(rows[("GTV2", "V100 (Rx 90 Gy)")][0]), 100.0 * np.mean(d >= 90.0), delta=4.0)
        self.assertAlmostEqual(float(rows[("GTV2", "D90 (Rx 90 Gy)")][0]), np.percentile(d, 10.0),
                               delta=0.05 * np.percentile(d, 10.0))
        self.assertNotIn(("GTV2", "V100"), rows)  # never against the other target's prescription
        self.assertIn(("PTV", "V100 (Rx 120 Gy)"), rows)
        # the DVH chart marks both prescriptions
        chart = plan.params.get_node("dvhChart")
        names = {chart.GetNthPlotSeriesNode(i).GetName() for i in range(chart.GetNumberOfPlotSeriesNodes())}
        self.assertTrue({"Rx PTV 120 Gy", "Rx GTV2 90 Gy", "DVH PTV", "DVH GTV2"} <= names, names)
        rx_cols = tables.table_columns(chart.GetNodeReference("dvhPrescriptions"))
        np.testing.assert_array_equal(rx_cols["GTV2 Rx dose (Gy)"], [90.0, 90.0])
        self.assertEqual(plan.params.get_node("dvhTable").GetAttribute(tables.TARGET_PRESCRIPTIONS_ATTRIBUTE),
                         "PTV=120;GTV2=90")
        # isodoses: % of the first target's Rx, and the second target's own prescription surface
        models = {m.GetName(): m for m in plan.params.get_node_list("isodoseModels")}
        self.assertIn("Isodose 100% of PTV Rx", models)
        own = models["Isodose GTV2 Rx 90 Gy"]
        self.assertEqual(own.GetAttribute(isodose.ISODOSE_LEVEL_ATTRIBUTE), "75")
        self.assertGreater(own.GetPolyData().GetNumberOfPoints(), 0)
        # report: both prescriptions
        out = plan.write_report(os.path.join(self.tmp, "two.html"))
        text = open(out["html"], encoding="utf-8").read()
        self.assertIn("GTV2", text)
        self.assertIn("V100 (of Rx 90 Gy)", text)

    def test_other_targets_field_of_the_module(self):
        from SeedImplantPlannerLib.planning.targets import TargetSpec
        plan = self.build_two()
        self.assertEqual(plan_scene.format_target_list(plan.targets()[1:]), "GTV2:rx=90,strength=0.4")
        self.assertEqual(plan_scene.parse_target_list(" GTV2:90:0.4 ; OAR:100"),
                         [TargetSpec("GTV2", 90.0, 0.4), TargetSpec("OAR", 100.0)])
        self.assertEqual(plan_scene.parse_target_list(""), [])
        for bad, says in (("GTV2", "give its prescription"), ("GTV2:lots", "must be numbers"),
                          ("GTV2:-5", "must be a positive"), ("GTV2:rx=90,direction=Q", "direction='Q'"),
                          ("GTV2:rx=90,v150=150", "between 0 and 100")):
            with self.assertRaisesRegex(InputError, says):
                plan_scene.parse_target_list(bad)
        with self.assertRaisesRegex(InputError, "given twice"):
            plan.set_targets([("PTV", RX), ("PTV", 90.0)])
        # the --target syntax: direction and goals of the other target kept in the parameter node and shown back
        text = "GTV2:rx=90,strength=0.4,direction=1;-1;0,v150=65,d90max=140"
        plan.set_targets([("PTV", RX)] + plan_scene.parse_target_list(text, "mCi"))
        self.assertEqual(plan.params.get_string_list("extraTargetDirections"), ["1;-1;0"])
        self.assertEqual(plan.params.get_string_list("extraTargetGoals"), ["v150=65,d90max=140"])
        second = plan.targets()[1]
        self.assertEqual((second["direction"], second["goals"]), ("1;-1;0", {"v150": 0.65, "d90_max": 1.4}))
        self.assertEqual(plan_scene.format_target_list(plan.targets()[1:]), text)
        specs = plan.target_specs(["OAR"])
        self.assertEqual((specs[1].direction, specs[1].v150, specs[1].d90_max, specs[1].prescription_Gy),
                         ("1;-1;0", 0.65, 1.4, 90.0))
        self.assertIsNone(specs[0].direction)
        plan.set_targets([("PTV", RX)])  # back to one target: the extra lists are emptied
        self.assertEqual(plan.params.get_string_list("extraTargetSegmentIds"), [])
        self.assertEqual(plan.params.get_string_list("extraTargetDirections"), [])
        self.assertEqual(len(plan.targets()), 1)

    def test_goal_preset_gives_every_target_its_rows(self):
        """The CT-guided preset's target goals (written for "the target") for both targets, each at its own Rx."""
        from SeedImplantPlannerLib.evaluation.goals import load_goals
        from SeedImplantPlannerLib.physics.dose import dose_at_points_Gy
        from SeedImplantPlannerLib.planning.needles import mask_points
        plan = self.build_two()
        plan.set_targets([("PTV", RX), ("GTV2", 70.0, 0.4)])  # GTV2 meets its goals at 70 Gy, PTV not at 120 Gy
        plan.set_goals(load_goals("ct_soft_tissue_I125"))
        plan.refresh_outputs()
        cols = tables.table_columns(plan.params.get_node("metricsTable"))
        rows = list(zip(cols["Structure"], cols["Metric"], cols["Value"], cols["Goal"], cols["Pass"]))
        goal_rows = {(s, g): (float(v), p) for s, m, v, g, p in rows if g.startswith(("D90 >=", "V100 >="))}
        self.assertEqual(sorted(goal_rows), [("GTV2", "D90 >= 100% (Rx 70 Gy)"), ("GTV2", "V100 >= 90% (Rx 70 Gy)"),
                                             ("PTV", "D90 >= 100% (Rx 120 Gy)"), ("PTV", "V100 >= 90% (Rx 120 Gy)")])
        dvh = tables.table_columns(plan.params.get_node("dvhTable"))
        dose_col = np.asarray(dvh["Dose (Gy)"], float)
        for name, mask, rx in (("PTV", None, RX), ("GTV2", self.gtv2, 70.0)):
            v100, ok = goal_rows[(name, f"V100 >= 90% (Rx {rx:g} Gy)")]
            # the goal row equals this target's own DVH curve (chart table) read at its own Rx
            curve = np.asarray(dvh[f"{name} V (%)"], float)
            self.assertAlmostEqual(v100, float(np.interp(rx, dose_col, curve)), delta=1.0, msg=name)
            self.assertEqual(ok, "pass" if v100 >= 90.0 else "FAIL")
            if mask is not None:  # and the direct TG-43 sum at its voxel centres
                d = dose_at_points_Gy(mask_points(mask, self.g2), self.seeds2)[0]
                self.assertAlmostEqual(v100, 100.0 * np.mean(d >= rx), delta=4.0)
                d90, ok90 = goal_rows[(name, "D90 >= 100% (Rx 70 Gy)")]
                self.assertAlmostEqual(d90, 100.0 * np.percentile(d, 10.0) / rx, delta=0.05 * 100.0 * np.percentile(d, 10.0) / rx)
                self.assertEqual((ok, ok90), ("pass", "pass"))
        self.assertEqual([goal_rows[("PTV", g)][1] for g in ("D90 >= 100% (Rx 120 Gy)", "V100 >= 90% (Rx 120 Gy)")],
                         ["FAIL", "FAIL"])
        # failed goals counted over both targets
        self.assertEqual(plan.last_update["failed_goals"], sum(1 for *_, p in rows if p == "FAIL"))

    def test_planning_two_targets_with_their_own_strengths(self):
        plan = self.build_two()
        result = plan.plan_implant("template", "S", 5.0, time_limit_s=1.0)
        self.assertEqual([(t["name"], t["prescription_Gy"]) for t in result.targets], [("PTV", RX), ("GTV2", 90.0)])
        self.assertEqual(sorted(set(np.round(result.seeds.strengths_U, 4))),
                         sorted({round(t["strength_U"], 4) for t in result.targets}))
        seeds, _ = plan.seeds()
        self.assertEqual(len(seeds), len(result.seeds))
        cols = tables.table_columns(plan.params.get_node("metricsTable"))
        rows = {(s, m): v for s, m, v in zip(cols["Structure"], cols["Metric"], cols["Value"])}
        self.assertEqual(int(rows[("GTV2", "Seeds")]), result.targets[1]["n_seeds"])
        out = plan.write_report(os.path.join(self.tmp, "two_planned.html"))
        text = open(out["html"], encoding="utf-8").read()
        self.assertIn("PTV 120 Gy; GTV2 90 Gy", text)

    def test_planned_per_target_goals_in_the_metrics_table(self):
        """The planner's own goals of each target (the field's v150=, the defaults) as rows checked on the
        current dose against the target's own Rx, and the report's plan goals the same numbers."""
        from SeedImplantPlannerLib.physics.dose import dose_at_points_Gy
        from SeedImplantPlannerLib.planning.needles import mask_points
        from SeedImplantPlannerLib.planning.targets import TargetSpec
        plan = self.build_two()
        plan.set_targets([("PTV", RX), TargetSpec("GTV2", 90.0, 0.4, v150=0.7, v200=0.3)])
        result = plan.plan_implant("template", "S", 5.0, time_limit_s=1.0)
        self.assertEqual((result.targets[1]["goals"]["v150_max"], result.targets[1]["goals"]["v200_max"]), (0.7, 0.3))
        cols = tables.table_columns(plan.params.get_node("metricsTable"))
        rows = {(st, g): (v, p) for st, g, v, p in zip(cols["Structure"], cols["Goal"], cols["Value"], cols["Pass"])
                if g.startswith("plan goal")}
        self.assertIn(("GTV2", "plan goal V150 <= 70% (Rx 90 Gy) (soft)"), rows)
        self.assertIn(("GTV2", "plan goal V200 <= 30% (Rx 90 Gy) (soft)"), rows)
        self.assertIn(("PTV", "plan goal V150 <= 60% (Rx 120 Gy) (soft)"), rows)
        seeds, _ = plan.seeds()
        d = dose_at_points_Gy(mask_points(self.gtv2, self.g2), seeds)[0]
        for goal, level, limit in (("plan goal V100 >= 95% (Rx 90 Gy)", 90.0, 95.0),
                                   ("plan goal V150 <= 70% (Rx 90 Gy) (soft)", 135.0, -70.0)):
            value, passed = rows[("GTV2", goal)]
            self.assertAlmostEqual(float(value), 100.0 * np.mean(d >= level), delta=4.0)
            self.assertEqual(passed, "pass" if (float(value) >= limit if limit > 0 else float(value) <= -limit)
                             else "FAIL")
        # the report's plan goals: the same rows, on the dose as it is now
        out = plan.write_report(os.path.join(self.tmp, "two_goals.html"))
        text = open(out["html"], encoding="utf-8").read()
        self.assertIn(f"<td>GTV2 V150 &lt;= % (soft)</td><td>{float(rows[('GTV2', 'plan goal V150 <= 70% (Rx 90 Gy) (soft)')][0]):.2f}</td>",
                      text)


if __name__ == "__main__":
    unittest.main()
