"""The Intra-op panel's logic (mrml/intraop_actions.py) on a real slicer-core scene."""

import os
import unittest

import numpy as np

from test_mrml_fixture import MRMLSceneTestCase
from test_intraop import GEOM, small_case

from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.fileio import write_csv
from SeedImplantPlannerLib.core.geometry import ImageGeometry


class IntraopSessionTest(MRMLSceneTestCase):

    def test_load_find_correct_and_replan(self):
        from SeedImplantPlannerLib.imaging import ctsim
        from SeedImplantPlannerLib.mrml import scene_io
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        from SeedImplantPlannerLib.mrml.volumes import add_scalar_volume
        from SeedImplantPlannerLib.planning import ctcases, intraop
        from SeedImplantPlannerLib.planning.needles import NEEDLE_TABLE_COLUMNS, needle_table
        plan, seg, (anatomy, g) = small_case()
        ps = scene_io.build_plan_scene(self.ctx, seeds=plan.seeds, prescription_Gy=plan.prescription_Gy,
                                       ct=(anatomy.astype(np.int16), g), segmentation=seg, target="GTV",
                                       forbidden=["Bone"], needles=plan.used_needles(),
                                       seed_needle_numbers=plan.seed_needle, dose_geometry=GEOM)
        session = IntraopSession(ps)
        with self.assertRaises(InputError):
            session.plan()                       # nothing planned in this scene yet
        ps.plan = plan
        needles, seeds, _ = ctcases.implant_scenario(plan, n_loaded=3, rng_seed=4)
        ctg = ImageGeometry((56, 56, 20), (1.0, 1.0, 2.0), (-27.5, -27.5, -19.0))
        ct, ctg, truth = ctsim.simulate_ct((anatomy, g), ctg, needles=needles, seeds=seeds, slice_thickness_mm=2.0,
                                           rng_seed=2)
        ct_node = add_scalar_volume(self.scene, ct, ctg, "Intra-op CT")
        path = os.path.join(self.tmp, "needles.csv")
        write_csv(path, needle_table(intraop.needles_from_dicts(truth["needles"])), NEEDLE_TABLE_COLUMNS)

        found, matching = session.find_needles(ct_node)
        planned = {n.name for n in plan.used_needles()}
        self.assertGreaterEqual(sum(1 for n in found if n.GetAttribute("SeedImplantPlanner.NeedleName") in planned),
                                len(needles) - 1)
        self.assertIn("planned found", matching.summary_line())
        lines = session.load_needles(path)             # a corrected table replaces the found lines
        self.assertEqual(len(lines), len(needles))
        self.assertTrue(all(not n.GetLocked() for n in lines))
        # the user drags one tip by 2 mm: the re-plan uses the corrected needle
        tip = np.array(lines[0].GetNthControlPointPositionWorld(1)) + [2.0, 0.0, 0.0]
        lines[0].SetNthControlPointPositionWorld(1, tip)
        seeds_node = session.find_seeds(ct_node, expected=len(seeds))
        self.assertGreaterEqual(seeds_node.GetNumberOfControlPoints(), 2)
        res = session.replan(ct_node, time_limit_s=1.0)
        moved = [n for n in res.needles_in_place if n.name == lines[0].GetAttribute("SeedImplantPlanner.NeedleName")][0]
        np.testing.assert_allclose(moved.tip, tip, atol=1e-6)
        self.assertEqual(len(res.found_seeds), seeds_node.GetNumberOfControlPoints())
        roles = {self.scene.GetNthNodeByClass(i, "vtkMRMLTableNode").GetAttribute("SeedImplantPlanner.Role")
                 for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLTableNode"))}
        self.assertTrue({"NeedleDeviations", "ReplanOptions", "DVHCompare"} <= roles)
        shown, numbers = ps.seeds()
        self.assertEqual(len(shown), len(res.plan.seeds))
        # a second re-plan replaces the tables instead of adding more
        session.replan(ct_node, time_limit_s=0.5)
        n_dev = sum(1 for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLTableNode"))
                    if self.scene.GetNthNodeByClass(i, "vtkMRMLTableNode").GetAttribute("SeedImplantPlanner.Role")
                    == "NeedleDeviations")
        self.assertEqual(n_dev, 1)
        self.assertIs(session.plan(), plan)   # deviations stay against the original plan


if __name__ == "__main__":
    unittest.main()
