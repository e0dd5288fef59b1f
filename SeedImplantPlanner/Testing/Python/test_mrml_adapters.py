"""MRML adapters on real nodes: volumes, segments, needles, seeds, dose, isodoses, DVH and metrics tables."""

import unittest

import numpy as np

from test_mrml_fixture import MODEL, MRMLSceneTestCase, oblique_direction, small_seed_set, sphere_mask

from SeedImplantPlannerLib.mrml import isodose, markups, segmentations, tables, volumes
from SeedImplantPlannerLib.mrml.nodes import study_of, subject_hierarchy
from SeedImplantPlannerLib.physics.dose import DoseGrid
from SeedImplantPlannerLib.core.errors import GeometryError, InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.physics.seeds import SeedSet


class VolumeAdapterTest(MRMLSceneTestCase):

    def test_oblique_volume_keeps_array_and_geometry(self):
        g = ImageGeometry((7, 5, 4), (0.8, 1.1, 2.5), (10.0, -4.0, 3.0), oblique_direction())
        arr = np.arange(np.prod(g.shape), dtype=np.float32).reshape(g.shape)
        node = volumes.add_scalar_volume(self.scene, arr, g, "V")
        back = volumes.geometry_from_volume(node)
        self.assertTrue(back.matches(g, 1e-6))
        np.testing.assert_allclose(back.direction_matrix, g.direction_matrix, atol=1e-9)
        np.testing.assert_array_equal(volumes.volume_array(node), arr)

    def test_shape_mismatch_is_refused(self):
        g = ImageGeometry((4, 4, 4), (1, 1, 1), (0, 0, 0))
        with self.assertRaises(GeometryError):
            volumes.add_scalar_volume(self.scene, np.zeros((3, 4, 4)), g, "bad")


class SegmentAdapterTest(MRMLSceneTestCase):

    def setUp(self):
        super().setUp()
        self.g = ImageGeometry((40, 40, 32), (1.0, 1.0, 1.25), (-20.0, -20.0, -20.0))
        self.seg = segmentations.add_segmentation(self.scene)
        self.ptv = segmentations.add_segment_from_mask(self.seg, sphere_mask(self.g, (0, 0, 0), 10.0), self.g, "PTV", (1, 0, 0))

    def test_segment_mask_on_the_same_grid_is_exact(self):
        np.testing.assert_array_equal(segmentations.segment_mask(self.seg, self.ptv, self.g), sphere_mask(self.g, (0, 0, 0), 10.0))

    def test_segment_mask_on_an_oblique_dose_grid(self):
        dose_g = ImageGeometry((24, 24, 20), (1.3, 1.3, 1.5), (-14.0, -15.0, -13.0), oblique_direction())
        got = segmentations.segment_mask(self.seg, self.ptv, dose_g)
        # voxel-centre sampling: agrees with the analytic sphere except within one source voxel of its surface
        r = np.linalg.norm(dose_g.voxel_centers_ras(), axis=-1)
        far = np.abs(r - 10.0) > 1.0
        np.testing.assert_array_equal(got[far], (r <= 10.0)[far])
        self.assertGreater(got.sum(), 0.9 * (r <= 10.0).sum())

    def test_margin_expansion_writes_a_new_segment(self):
        n_before = self.seg.GetSegmentation().GetNumberOfSegments()
        new_id = segmentations.expand_segment(self.seg, self.ptv, 5.0, "PTV+5")
        self.assertEqual(self.seg.GetSegmentation().GetNumberOfSegments(), n_before + 1)
        self.assertEqual(self.seg.GetSegmentation().GetSegment(new_id).GetName(), "PTV+5")
        big = ImageGeometry((60, 60, 48), (1.0, 1.0, 1.25), (-30.0, -30.0, -30.0))
        grown = segmentations.segment_mask(self.seg, new_id, big)
        r = np.linalg.norm(big.voxel_centers_ras(), axis=-1)
        self.assertTrue(np.all(grown[r <= 14.0]))  # 10 mm sphere (voxelised) + 5 mm
        self.assertFalse(np.any(grown[r >= 16.6]))
        # the source segment is untouched
        np.testing.assert_array_equal(segmentations.segment_mask(self.seg, self.ptv, self.g), sphere_mask(self.g, (0, 0, 0), 10.0))

    def test_segment_lookup_by_name_and_errors(self):
        self.assertEqual(segmentations.segment_id_by_name(self.seg, "ptv"), self.ptv)
        with self.assertRaises(InputError) as cm:
            segmentations.segment_id_by_name(self.seg, "Rectum")
        self.assertIn("PTV", str(cm.exception))
        with self.assertRaises(InputError):
            segmentations.expand_segment(self.seg, self.ptv, -1.0, "bad")

    def test_segmentation_from_segio_keeps_names_and_colours(self):
        from SeedImplantPlannerLib.imaging.segio import Segmentation
        masks = {"GTV": sphere_mask(self.g, (0, 0, 0), 6.0), "OAR": sphere_mask(self.g, (12, 0, 0), 4.0)}
        s = Segmentation.from_masks(self.g, masks, {"GTV": (0.9, 0.1, 0.1), "OAR": (0.1, 0.6, 0.9)})
        node = segmentations.segmentation_from_segio(self.scene, s, "from file")
        for name, mask in masks.items():
            sid = segmentations.segment_id_by_name(node, name)
            np.testing.assert_array_equal(segmentations.segment_mask(node, sid, self.g), mask)
        oar = node.GetSegmentation().GetSegment(segmentations.segment_id_by_name(node, "OAR"))
        np.testing.assert_allclose(oar.GetColor(), (0.1, 0.6, 0.9), atol=1e-6)


class NeedleAdapterTest(MRMLSceneTestCase):

    def test_needles_round_trip_through_numbered_locked_line_nodes(self):
        needles = [((0.0, 0.0, -40.0), (0.0, 0.0, 10.0)), ((5.0, 3.0, -40.0), (7.0, 3.0, 12.0))]
        nodes = markups.needles_to_line_nodes(self.scene, needles, locked=True)
        self.assertEqual([n.GetName() for n in nodes], ["Needle 1", "Needle 2"])
        self.assertTrue(all(n.GetLocked() for n in nodes))
        self.assertEqual([n.GetAttribute(markups.NEEDLE_NUMBER_ATTRIBUTE) for n in nodes], ["1", "2"])
        back = markups.line_nodes_to_needles(nodes)
        for (e, t), (be, bt) in zip(needles, back):
            np.testing.assert_allclose(be, e)
            np.testing.assert_allclose(bt, t)
        markups.set_needles_locked(nodes, False)
        self.assertFalse(any(n.GetLocked() for n in nodes))

    def test_reusing_nodes_updates_and_removes_extras(self):
        nodes = markups.needles_to_line_nodes(self.scene, [((0, 0, 0), (0, 0, 9)), ((1, 0, 0), (1, 0, 9))])
        again = markups.needles_to_line_nodes(self.scene, [((2, 0, 0), (2, 0, 9))], nodes=nodes)
        self.assertIs(again[0], nodes[0])
        self.assertIsNone(nodes[1].GetScene())
        np.testing.assert_allclose(markups.line_nodes_to_needles(again)[0][0], (2, 0, 0))

    def test_zero_length_needle_is_refused(self):
        with self.assertRaises(InputError):
            markups.needles_to_line_nodes(self.scene, [((1, 1, 1), (1, 1, 1))])

    def test_needle_objects_with_entry_and_tip(self):
        from SeedImplantPlannerLib.planning.needles import Needle
        n = Needle(3, entry=(0, 0, -30), tip=(0, 0, 5))
        node = markups.needles_to_line_nodes(self.scene, [n])[0]
        np.testing.assert_allclose(markups.line_nodes_to_needles([node])[0][1], (0, 0, 5))


class SeedAdapterTest(MRMLSceneTestCase):

    def test_seeds_round_trip_with_axes_strengths_models_and_needles(self):
        axes = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 0], [0.3, -0.2, 0.9]], float)
        seeds = SeedSet([[0, 0, 0], [5, 0, 0], [0, 5, 3], [-4, 2, 1]], axes, [0.6, 0.61, 0.7, 0.5],
                        [MODEL, MODEL, "I125_Best_2301", MODEL])
        node = markups.seeds_to_fiducial_node(self.scene, seeds, needle_numbers=[1, 1, 2, 0])
        self.assertEqual(node.GetNumberOfControlPoints(), 4)
        back, needles = markups.fiducial_node_to_seeds(node)
        np.testing.assert_allclose(back.positions, seeds.positions)
        np.testing.assert_allclose(back.axes, seeds.axes, atol=1e-12)
        np.testing.assert_allclose(back.strengths_U, seeds.strengths_U)
        self.assertEqual(back.models, seeds.models)
        np.testing.assert_array_equal(needles, [1, 1, 2, 0])
        # the orientation is a proper rotation whose third column is the axis
        m = np.array(node.GetNthControlPointOrientationMatrix(3)).reshape(3, 3)
        np.testing.assert_allclose(m.T @ m, np.eye(3), atol=1e-12)
        self.assertAlmostEqual(np.linalg.det(m), 1.0)

    def test_a_point_added_by_hand_takes_the_node_defaults(self):
        node = markups.seeds_to_fiducial_node(self.scene, small_seed_set(1), default_strength_U=0.55,
                                              default_model=MODEL)
        node.AddControlPoint(3.0, 4.0, 5.0)
        seeds, needles = markups.fiducial_node_to_seeds(node)
        self.assertEqual(len(seeds), 2)
        self.assertAlmostEqual(seeds.strengths_U[1], 0.55)
        self.assertEqual(seeds.models[1], MODEL)
        np.testing.assert_allclose(seeds.axes[1], (0, 0, 1))  # identity orientation: axis along S
        self.assertEqual(needles[1], 0)

    def test_bad_strength_text_names_the_seed(self):
        node = markups.seeds_to_fiducial_node(self.scene, small_seed_set(1))
        node.SetNthControlPointDescription(0, f"sk_U=abc; model={MODEL}")
        with self.assertRaises(InputError) as cm:
            markups.fiducial_node_to_seeds(node)
        self.assertIn("S1", str(cm.exception))

    def test_description_format_parses_back(self):
        text = markups.format_seed_description(0.635, MODEL, 7)
        self.assertEqual(markups.parse_seed_description(text), {"sk_U": "0.635", "model": MODEL, "needle": "7"})
        self.assertEqual(markups.parse_seed_description("free text"), {})


class DoseAdapterTest(MRMLSceneTestCase):

    def setUp(self):
        super().setUp()
        self.g = ImageGeometry((30, 30, 24), (1.5, 1.5, 1.5), (-22.0, -22.0, -17.0))
        self.seeds = small_seed_set(2, 10.0)
        self.dose = DoseGrid(self.g, self.seeds, method="direct").dose_Gy()
        self.rx = 145.0

    def test_dose_volume_is_marked_as_slicerrt_dose(self):
        node = volumes.update_dose_volume(self.scene, self.dose, self.g, self.rx)
        self.assertEqual(node.GetAttribute("DicomRtImport.DoseVolume"), "1")
        sh = subject_hierarchy(self.scene)
        study = study_of(self.scene, node)
        self.assertTrue(study)
        self.assertEqual(sh.GetItemLevel(study), "Study")
        self.assertEqual(sh.GetItemAttribute(study, "DicomRtImport.DoseUnitName"), "GY")
        self.assertEqual(float(sh.GetItemAttribute(study, "DicomRtImport.DoseUnitValue")), 1.0)
        np.testing.assert_allclose(volumes.volume_array(node), self.dose.astype(np.float32))
        self.assertEqual(node.GetVoxelValueUnits().GetCodeValue(), "Gy")

    def test_dose_display_colour_table_and_window(self):
        node = volumes.update_dose_volume(self.scene, self.dose, self.g, self.rx)
        d = node.GetDisplayNode()
        color = d.GetColorNode()
        self.assertTrue(color.IsA("vtkMRMLColorTableNode"))
        self.assertEqual(color.GetNumberOfColors(), 256)
        self.assertAlmostEqual(d.GetWindow(), 2.0 * self.rx)
        self.assertAlmostEqual(d.GetLevel(), self.rx)
        self.assertTrue(d.GetApplyThreshold())
        self.assertAlmostEqual(d.GetLowerThreshold(), 0.3 * self.rx)
        low, high = [0.0] * 4, [0.0] * 4
        color.GetColor(0, low)
        color.GetColor(255, high)
        self.assertGreater(low[2], low[0])  # cold end blue
        self.assertGreater(high[0], high[2])  # hot end red

    def test_updating_keeps_the_node_and_study_marks(self):
        node = volumes.update_dose_volume(self.scene, self.dose, self.g, self.rx)
        again = volumes.update_dose_volume(self.scene, 2 * self.dose, self.g, self.rx, node=node)
        self.assertIs(again, node)
        np.testing.assert_allclose(volumes.volume_array(node), (2 * self.dose).astype(np.float32), rtol=1e-6)
        self.assertEqual(self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), 1)

    def test_bad_prescription_is_refused(self):
        with self.assertRaises(InputError):
            volumes.update_dose_volume(self.scene, self.dose, self.g, 0.0)

    def test_isodose_models_at_percent_levels(self):
        nodes = isodose.update_isodose_models(self.scene, self.dose, self.g, self.rx)
        self.assertEqual([n.GetName() for n in nodes], [f"Isodose {v:g}%" for v in isodose.DEFAULT_ISODOSE_LEVELS_PCT])
        colors = {tuple(round(c, 3) for c in n.GetDisplayNode().GetColor()) for n in nodes}
        self.assertEqual(len(colors), len(nodes))
        from scipy.ndimage import map_coordinates
        for level, node in zip(isodose.DEFAULT_ISODOSE_LEVELS_PCT, nodes):
            d = node.GetDisplayNode()
            self.assertTrue(d.GetVisibility2D())  # lines in the slice views
            poly = node.GetPolyData()
            self.assertGreater(poly.GetNumberOfPoints(), 50)
            pts = np.array([poly.GetPoint(i) for i in range(0, poly.GetNumberOfPoints(), 7)])
            ijk = self.g.ras_to_ijk(pts)
            vals = map_coordinates(self.dose, ijk[:, ::-1].T, order=1)
            np.testing.assert_allclose(vals, self.rx * level / 100.0, rtol=1e-3)

    def test_isodose_update_reuses_nodes_and_drops_old_levels(self):
        nodes = isodose.update_isodose_models(self.scene, self.dose, self.g, self.rx, (50, 100))
        again = isodose.update_isodose_models(self.scene, self.dose, self.g, self.rx, (100, 150), nodes=nodes)
        self.assertIs(again[0], nodes[1])
        self.assertIsNone(nodes[0].GetScene())
        self.assertEqual(again[1].GetName(), "Isodose 150%")


class TableAdapterTest(MRMLSceneTestCase):

    def test_dvh_table_and_chart(self):
        bins = np.linspace(0, 300, 7)
        curves = {"PTV": [100, 99, 95, 60, 20, 5, 0], "Rectum": [100, 30, 5, 1, 0, 0, 0]}
        table, chart = tables.update_dvh_nodes(self.scene, bins, curves, colors={"PTV": (1, 0, 0)})
        cols = tables.table_columns(table)
        self.assertEqual(list(cols), ["Dose (Gy)", "PTV V (%)", "Rectum V (%)"])
        np.testing.assert_allclose(cols["PTV V (%)"], curves["PTV"])
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 2)
        series = chart.GetNthPlotSeriesNode(0)
        self.assertIs(series.GetTableNode(), table)
        self.assertEqual(series.GetXColumnName(), "Dose (Gy)")
        # update with one structure fewer: its series goes away
        table2, chart2 = tables.update_dvh_nodes(self.scene, bins, {"PTV": curves["PTV"]}, table, chart)
        self.assertIs(table2, table)
        self.assertEqual(chart2.GetNumberOfPlotSeriesNodes(), 1)
        with self.assertRaises(InputError):
            tables.update_dvh_nodes(self.scene, bins, {"PTV": [1, 2]})

    def test_metrics_table_with_pass_fail(self):
        rows = [{"structure": "PTV", "metric": "D90", "value": 150.2, "unit": "Gy", "goal": "D90 >= 145 Gy",
                 "passed": True},
                {"structure": "Rectum", "metric": "V100", "value": 1.4, "unit": "cc", "goal": "V100 < 1 cc",
                 "passed": False},
                {"structure": "PTV", "metric": "CI", "value": 0.71, "unit": "", "goal": "", "passed": None}]
        node = tables.update_metrics_table(self.scene, rows)
        cols = tables.table_columns(node)
        self.assertEqual(list(cols), list(tables.METRIC_COLUMNS))
        self.assertEqual(cols["Pass"], ["pass", "FAIL", ""])
        self.assertEqual(cols["Value"][0], "150.2")
        self.assertEqual(node.GetAttribute("SeedImplantPlanner.FailedGoals"), "1")


if __name__ == "__main__":
    unittest.main()
