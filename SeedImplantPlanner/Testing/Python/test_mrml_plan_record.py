"""The plan object kept in its scene and rebuilt from a real .mrb (mrml/plan_record.py).

The case (intraop_moved_case.py): a plan made by the planning pipeline on a simulated planning CT
(its plan.json written by write_plan_folder) and an intra-operative CT after a known rigid motion.
The plan scene is built on slicer-core nodes, saved as a .mrb and loaded into a fresh scene: the plan
rebuilt must be the plan saved (its whole plan-file form, seeds, needles, prescription, goals, loading
rules), the dose recomputed from the rebuilt seeds must be the dose the scene saved, and the module's
intra-operative steps must continue on it. After a re-plan the plan being implanted comes back beside
it. A scene without a record, or with one that cannot be read or does not match its nodes: no plan,
one sentence naming the node and the problem, nothing in the scene changed.
"""

import json
import os
import shutil
import tempfile
import unittest

import numpy as np

from test_mrml_fixture import HAVE_SLICER, MRMLSceneTestCase

CASE = {}


def setUpModule():
    if not HAVE_SLICER:
        return
    from intraop_moved_case import make_moved_case
    CASE["tmp"] = tempfile.mkdtemp(prefix="seedplan-plan-record-")
    CASE.update(make_moved_case(os.path.join(CASE["tmp"], "case")))


def tearDownModule():
    if "tmp" in CASE:
        shutil.rmtree(CASE["tmp"], ignore_errors=True)


def positions(node):
    return np.array([node.GetNthControlPointPositionWorld(i) for i in range(node.GetNumberOfControlPoints())])


@unittest.skipUnless(HAVE_SLICER, "slicer-core is not installed")
class PlanRecordTest(MRMLSceneTestCase):

    def build(self, plan=None, record=True):
        """The plan scene of the case (planning CT, segmentation, the plan's needles and seeds, dose on the CT grid)."""
        from SeedImplantPlannerLib.mrml import scene_io
        plan = plan or CASE["plan_obj"]
        return scene_io.build_plan_scene(self.ctx, seeds=plan.seeds, prescription_Gy=plan.prescription_Gy,
                                         ct=CASE["planning_ct"], segmentation=CASE["segmentation"], target="GTV",
                                         forbidden=["Bone"], needles=plan.used_needles(),
                                         seed_needle_numbers=plan.seed_needle, dose_geometry=CASE["planning_ct"][1],
                                         plan=plan if record else None)

    def reopen(self, ps, name, save=None):
        """Save ``ps``'s scene as a .mrb (``save``: how, default PlanScene.save), load it into a fresh scene; its
        PlanScene."""
        from SeedImplantPlannerLib.mrml.plan_scene import PlanScene
        mrb = os.path.join(self.tmp, name)
        (save or ps.save)(mrb)
        ctx = self.fresh_scene()
        ctx.load_mrb(mrb)
        return PlanScene(ctx, ctx.scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode"))

    def test_plan_rebuilt_from_the_mrb_equals_the_plan_saved(self):
        from SeedImplantPlannerLib.mrml import plan_record, volumes
        from SeedImplantPlannerLib.physics.dose import DoseGrid
        from SeedImplantPlannerLib.planning.planfile import read_plan
        plan = read_plan(os.path.join(CASE["tmp"], "case", "plan", "plan.json"))   # the plan file as written
        ps = self.build(plan)
        saved_dose, saved_geometry = ps.dose_array()
        ps2 = self.reopen(ps, "plan.mrb")
        self.assertEqual(len(plan_record.record_nodes(ps2.scene, "shown")), 1)
        self.assertEqual(plan_record.record_nodes(ps2.scene, "original"), [])
        state = ps2.restore_plan()
        self.assertEqual((state.status, state.problem), ("stored", ""))
        got = state.plan
        self.assertIs(ps2.plan, got)
        self.assertIsNone(ps2.original_plan)
        # the whole plan-file form, key by key (seeds, needles, source, goals, rules, optimizer, structures ...)
        want = plan.to_dict()
        self.assertEqual(sorted(got.to_dict()), sorted(want))
        for key in want:
            self.assertEqual(got.to_dict()[key], want[key], key)
        np.testing.assert_allclose(got.seeds.positions, plan.seeds.positions, atol=1e-4)
        np.testing.assert_allclose(got.seeds.axes, plan.seeds.axes, atol=1e-6)
        np.testing.assert_array_equal(got.seeds.strengths_U, plan.seeds.strengths_U)
        np.testing.assert_array_equal(got.seed_needle, plan.seed_needle)
        np.testing.assert_array_equal(got.seed_fixed, plan.seed_fixed)
        np.testing.assert_allclose(got.seed_s_from_tip_mm, plan.seed_s_from_tip_mm, atol=1e-3, equal_nan=True)
        self.assertEqual([n.to_dict() for n in got.needles], [n.to_dict() for n in plan.needles])
        self.assertGreater(len(got.needles), len(got.used_needles()))   # needles without seeds come back too
        self.assertEqual(got.prescription_Gy, 145.0)
        self.assertEqual(got.goals.to_dict(), plan.goals.to_dict())
        self.assertEqual(got.rules.to_dict(), plan.rules.to_dict())
        self.assertEqual(got.source, plan.source)
        # the dose recomputed from the rebuilt plan on the saved dose grid is the dose the scene saved
        dose_node = ps2.params.get_node("doseVolume")
        g = volumes.geometry_from_volume(dose_node)
        self.assertEqual(g.size, saved_geometry.size)
        np.testing.assert_allclose(g.origin, saved_geometry.origin, atol=1e-6)
        np.testing.assert_allclose(g.spacing, saved_geometry.spacing, atol=1e-9)
        in_scene = volumes.volume_array(dose_node)
        again = DoseGrid(g, got.seeds, method=ps2.params.get("doseEngine")).dose_Gy()
        np.testing.assert_allclose(in_scene, saved_dose, rtol=1e-5, atol=1e-6)
        rx = got.prescription_Gy
        inside = again > 0.1 * rx
        self.assertGreater(int(inside.sum()), 1000)
        np.testing.assert_allclose(again[inside], in_scene[inside], rtol=1e-4)
        # the module's intra-operative steps take it as the plan being implanted (no "plan the implant first")
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        session = IntraopSession(ps2)
        self.assertIs(session.plan(), got)
        self.assertEqual(session.segmentation().find("GTV").name, "GTV")

    def test_module_continues_after_reopening_and_the_plan_being_implanted_comes_back(self):
        """Open the plan scene in a fresh scene (no plan object), register the intra-op CT, load the needle table, find
        the seeds, re-plan; save; open again: the re-plan and the plan being implanted are rebuilt."""
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        from SeedImplantPlannerLib.mrml.volumes import add_scalar_volume
        plan = CASE["plan_obj"]
        ps = self.reopen(self.build(), "first.mrb")
        session = IntraopSession(ps)
        self.assertIsNone(ps.plan)
        state = session.restore_plan()
        self.assertEqual(state.status, "stored", state.problem)
        ct = add_scalar_volume(ps.scene, *CASE["intraop_ct"], "Intra-op CT")
        session.register(ct)
        session.load_needles(CASE["needles_csv"], ct)
        session.find_seeds(ct, expected=len(CASE["seeds"]))
        result = session.replan(ct, time_limit_s=1.0)
        self.assertEqual(result.original.to_dict()["seeds"], plan.to_dict()["seeds"])
        ps3 = self.reopen(ps, "second.mrb")
        session3 = IntraopSession(ps3)
        state = session3.restore_plan()
        self.assertEqual((state.status, state.problem), ("stored", ""))
        self.assertIn("the plan being implanted", state.summary())
        self.assertEqual(state.plan.to_dict()["seeds"], result.plan.to_dict()["seeds"])
        self.assertEqual(state.plan.to_dict()["needles"], result.plan.to_dict()["needles"])
        self.assertEqual(int(state.plan.seed_fixed.sum()), int(result.plan.seed_fixed.sum()))
        self.assertGreater(int(state.plan.seed_fixed.sum()), 0)    # the implanted seeds kept as already implanted
        self.assertEqual(state.original.to_dict(), plan.to_dict())
        self.assertIs(session3.plan(), state.original)            # compared with the plan being implanted

    def test_seeds_edited_in_the_views_are_recorded_when_the_scene_is_saved(self):
        """A seed dragged in the views after planning: the record written at save (PlanScene.save, or Slicer's own save:
        StartSaveEvent) holds the seeds as the scene shows them."""
        from SeedImplantPlannerLib.mrml import plan_record
        ps = self.build()
        ps.plan = CASE["plan_obj"]
        ps.start_live_updates()
        node = ps.params.get_node("seedsNode")
        p = np.array(node.GetNthControlPointPosition(0)) + [1.5, 0.0, 0.0]
        node.SetNthControlPointPosition(0, *p)
        ps.scene.InvokeEvent(ps.scene.StartSaveEvent)          # what Slicer's save dialog does first
        rec = json.loads(plan_record.record_nodes(ps.scene, "shown")[0].GetText())
        np.testing.assert_allclose(rec["seeds"][0]["position_ras_mm"], p, atol=1e-4)
        ps.stop_live_updates()
        ps2 = self.reopen(ps, "edited.mrb", save=self.ctx.save_mrb)      # written as Slicer would: no PlanScene.save
        state = ps2.restore_plan()
        self.assertEqual(state.status, "stored", state.problem)
        np.testing.assert_allclose(state.plan.seeds.positions[0], p, atol=1e-4)
        self.assertEqual(len(state.plan.seeds), len(CASE["plan_obj"].seeds))

    def test_scene_without_a_usable_record_says_why_and_keeps_everything(self):
        from SeedImplantPlannerLib.mrml import plan_record
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        from SeedImplantPlannerLib.core.errors import InputError
        # a scene saved before plans were kept in scenes (no record)
        old = self.reopen(self.build(record=False), "old.mrb")
        state = old.restore_plan()
        self.assertEqual(state.status, "missing")
        self.assertIsNone(state.plan)
        self.assertIn("the scene holds no plan record", state.problem)
        self.assertIsNone(old.plan)
        self.assertEqual(len(old.seeds()[0]), len(CASE["plan_obj"].seeds))
        with self.assertRaises(InputError) as cm:
            IntraopSession(old).plan()
        self.assertIn("plan the implant first", str(cm.exception))
        self.assertIn("no plan record", str(cm.exception))
        # a record the user or a tool broke, read back from a .mrb
        ps = self.build()
        ps.record_plan()
        plan_record.record_nodes(ps.scene, "shown")[0].SetText('{"format": "SeedImplantPlanner.plan", "vers')
        broken = self.reopen(ps, "broken.mrb", save=self.ctx.save_mrb)
        state = broken.restore_plan()
        self.assertEqual(state.status, "unreadable")
        self.assertIn("plan record 'Plan record' is not valid JSON", state.problem)
        self.assertIsNone(broken.plan)

        # records that cannot be read, or that do not match the nodes they refer to: said, nothing changed
        good = self.reopen(self.build(), "good.mrb")
        node = plan_record.record_nodes(good.scene, "shown")[0]
        text = node.GetText()
        doc = json.loads(text)
        seeds_node = good.params.get_node("seedsNode")
        seeds_before = positions(seeds_node)

        def edited(**changes):
            return json.dumps({**doc, **changes})
        first_seed = dict(doc["seeds"][0], position_ras_mm=[v + 0.5 for v in doc["seeds"][0]["position_ras_mm"]])
        used = {s["needle"] for s in doc["seeds"]}
        first_needle = next(dict(n, tip_ras_mm=[n["tip_ras_mm"][0] + 2.0] + n["tip_ras_mm"][1:]) for n in doc["needles"]
                            if n["number"] in used)
        needles = [first_needle if n["number"] == first_needle["number"] else n for n in doc["needles"]]
        cases = [
            ("unreadable", '{"format": 1', "is not valid JSON"),
            ("unreadable", edited(format="SomethingElse.plan"), "not a SeedImplantPlanner plan file"),
            ("unreadable", edited(version=99), "plan file version 99 is not supported"),
            ("unreadable", edited(seeds=[{"position_ras_mm": [0, 0]}]), "malformed plan file"),
            ("mismatch", edited(seeds=doc["seeds"][1:]), f"holds {len(doc['seeds']) - 1} seeds, the seeds node"),
            ("mismatch", edited(seeds=[first_seed] + doc["seeds"][1:]), "seed 1 lies 0.87 mm from seed 1"),
            ("mismatch", edited(prescription_Gy=160.0), "prescribes 160 Gy, the scene's parameters 145 Gy"),
            ("mismatch", edited(needles=needles), f"needle {first_needle['number']} ('{first_needle['name']}') lies "
                                                  "2.00 mm from the scene's needle node"),
            ("mismatch", edited(structures={**doc["structures"], "target": "Prostate"}),
             "names structure(s) 'Prostate' that the scene's segmentation"),
        ]
        for status, content, words in cases:
            with self.subTest(words=words):
                node.SetText(content)
                state = plan_record.read_plan_records(good)
                self.assertEqual(state.status, status)
                self.assertIsNone(state.plan)
                self.assertIn(words, state.problem)
                self.assertIn("plan record 'Plan record'", state.problem)
                self.assertIn("the rest of the scene is kept", state.problem)
                self.assertEqual(node.GetText(), content)                    # the record is left as it is
                np.testing.assert_allclose(positions(seeds_node), seeds_before, atol=0)
                # a PlanScene save without a plan leaves the record for the next reader to judge
                good.record_plan()
                self.assertEqual(node.GetText(), content)
        node.SetText(text)
        self.assertEqual(good.restore_plan().status, "stored")
        # a broken record of the plan being implanted: the re-plan shown is still rebuilt, the problem said
        extra = good.scene.AddNewNodeByClass("vtkMRMLTextNode", "Plan record (being implanted)")
        extra.SetAttribute("SeedImplantPlanner.Role", "PlanRecord")
        extra.SetAttribute(plan_record.RECORD_KIND_ATTRIBUTE, "original")
        extra.SetText("not json")
        state = plan_record.read_plan_records(good)
        self.assertIsNotNone(state.plan)
        self.assertIsNone(state.original)
        self.assertIn("plan record 'Plan record (being implanted)' is not valid JSON", state.problem)
        self.assertIn("the plan being implanted is not rebuilt", state.problem)


if __name__ == "__main__":
    unittest.main()
