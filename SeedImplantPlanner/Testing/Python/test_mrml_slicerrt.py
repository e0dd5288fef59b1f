"""SlicerRT-native nodes on real MRML nodes: per-structure DVH tables in SlicerRT's DoseVolumeHistogram
layout (attributes, references, metrics table) and the isodose marker, also after a .mrb round trip.

What SlicerRT reads is restated from its sources (DoseVolumeHistogram logic and MRML node,
DvhComparison.py, vtkSlicerRtCommon): its DVH comparison lists table nodes that carry
``DoseVolumeHistogram.DVH``, takes column 0 as dose and column 1 as volume (%), the structure
volume from ``DoseVolumeHistogram.Volume (cc)``, the chart series from ``doseVolumeRef``,
``segmentationRef`` and ``DoseVolumeHistogram.SegmentID``, and the metrics table view from
``dvhMetricsTableRef``.
"""

import os
import unittest

import numpy as np

from test_mrml_fixture import MRMLSceneTestCase
from test_mrml_plan import PlanSceneTestCase

from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.mrml import isodose, parameters, plan_scene, slicerrt_dvh as rt, tables, volumes
from SeedImplantPlannerLib.mrml.nodes import subject_hierarchy

DVH_ATTRIBUTE = "DoseVolumeHistogram.DVH"


def slicerrt_dvh_selector(scene):
    """The table nodes SlicerRT's DVH comparison selectors list (node type + attribute filter)."""
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLTableNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode"))]
    return [n for n in nodes if n.GetAttribute(DVH_ATTRIBUTE) is not None]


def slicerrt_dvh_agreement(dvh1, dvh2, dose_node, volume_criterion=1.0, dose_criterion=1.0):
    """Agreement acceptance % of two DVH tables, restated from SlicerRT's CompareDvhTables (Ebert 2010)."""
    t1, t2 = dvh1.GetTable(), dvh2.GetTable()
    if t1.GetNumberOfRows() < t2.GetNumberOfRows():
        baseline, current, volume_node = t1, t2, dvh2
    else:
        baseline, current, volume_node = t2, t1, dvh1
    total_cc = float(volume_node.GetAttribute("DoseVolumeHistogram.Volume (cc)"))
    dose_max = float(dose_node.GetImageData().GetScalarRange()[1])
    cur = np.array([[current.GetValue(r, 0).ToDouble(), current.GetValue(r, 1).ToDouble()]
                    for r in range(current.GetNumberOfRows())])
    accepted = 0
    for i in range(baseline.GetNumberOfRows()):
        di, vi = baseline.GetValue(i, 0).ToDouble(), baseline.GetValue(i, 1).ToDouble()
        gamma = np.sqrt((100.0 * (cur[:, 1] - vi) / (volume_criterion * total_cc)) ** 2
                        + (100.0 * (cur[:, 0] - di) / (dose_criterion * dose_max)) ** 2).min()
        accepted += gamma <= 1.0
    return 100.0 * accepted / baseline.GetNumberOfRows()


def created_references(node):
    role = "DoseVolumeHistogram.createdDvhArrayRef"
    return [node.GetNthNodeReferenceID(role, i) for i in range(node.GetNumberOfNodeReferences(role))]


def metric_value(metrics_node, structure, metric):
    cols = tables.table_columns(metrics_node)
    for s, m, v in zip(cols["Structure"], cols["Metric"], cols["Value"]):
        if s == structure and m == metric:
            return float(v)
    raise AssertionError(f"no {metric} of {structure} in the metrics table")


class SlicerRtDvhTablesTest(PlanSceneTestCase):

    def assert_slicerrt_layout(self, scene, p):
        """Every per-structure table of the plan ``p`` (PlanParameters) in SlicerRT's layout; returns them by name."""
        seg, dose = p.get_node("segmentation"), p.get_node("doseVolume")
        metrics = p.get_node("slicerRtDvhMetricsTable")
        dvh_tables = p.get_node_list("slicerRtDvhTables")
        self.assertIsNotNone(metrics)
        by_name = {}
        metric_cols = tables.table_columns(metrics)
        self.assertEqual(list(metric_cols), ["Show", "Structure", "Volume name", "Volume (cc)", "Mean dose (GY)",
                                             "Min dose (GY)", "Max dose (GY)"])
        self.assertTrue(metrics.GetTable().GetColumn(0).IsA("vtkBitArray"))
        wide = tables.table_columns(p.get_node("dvhTable"))
        for node in dvh_tables:
            sid = node.GetAttribute("DoseVolumeHistogram.SegmentID")
            name = seg.GetSegmentation().GetSegment(sid).GetName()
            by_name[name] = node
            self.assertEqual(node.GetName(), f"{name}_DvhTable")
            self.assertEqual(node.GetAttribute(DVH_ATTRIBUTE), "1")
            self.assertGreater(float(node.GetAttribute("DoseVolumeHistogram.Volume (cc)")), 0.0)
            self.assertGreaterEqual(int(node.GetAttribute("DoseVolumeHistogram.DoseVolumeOversamplingFactor")), 1)
            # references SlicerRT's chart, comparison and metrics view follow
            self.assertIs(node.GetNodeReference("doseVolumeRef"), dose)
            self.assertEqual(dose.GetAttribute("DicomRtImport.DoseVolume"), "1")  # the comparison's dose selector
            self.assertIs(node.GetNodeReference("segmentationRef"), seg)
            self.assertIs(node.GetNodeReference("dvhMetricsTableRef"), metrics)
            role = f"DoseVolumeHistogram.{dose.GetID()}_{seg.GetID()}_{sid}"
            self.assertIs(metrics.GetNodeReference(role), node)
            row = int(node.GetAttribute("DoseVolumeHistogram.TableRow"))
            self.assertEqual(metric_cols["Structure"][row], name)
            self.assertEqual(metric_cols["Volume name"][row], dose.GetName())
            self.assertAlmostEqual(metric_cols["Volume (cc)"][row],
                                   float(node.GetAttribute("DoseVolumeHistogram.Volume (cc)")), places=9)
            self.assertIn(node.GetID(), created_references(seg))
            self.assertIn(node.GetID(), created_references(dose))
            # columns: Dose (Gy) first, Volume (%) second, the product's own DVH curve
            t = node.GetTable()
            self.assertEqual([t.GetColumn(0).GetName(), t.GetColumn(1).GetName()], ["Dose", "Volume"])
            self.assertEqual((node.GetColumnUnitLabel("Dose"), node.GetColumnUnitLabel("Volume")), ("Gy", "%"))
            cols = tables.table_columns(node)
            np.testing.assert_allclose(cols["Dose"], wide["Dose (Gy)"], rtol=1e-12)
            np.testing.assert_allclose(cols["Volume"], wide[f"{name} V (%)"], rtol=1e-12)
            self.assertEqual(cols["Dose"][0], 0.0)
            self.assertAlmostEqual(cols["Volume"][0], 100.0, places=6)
            self.assertTrue(np.all(np.diff(cols["Volume"]) <= 1e-9))
        self.assertEqual(sorted(slicerrt_dvh_selector(scene), key=lambda n: n.GetID()),
                         sorted(dvh_tables, key=lambda n: n.GetID()))
        return by_name

    def test_one_slicerrt_table_per_evaluated_structure(self):
        plan = self.build()
        p = plan.params
        by_name = self.assert_slicerrt_layout(self.scene, p)
        self.assertEqual(sorted(by_name), ["OAR", "PTV"])  # target and organ; the forbidden Bone is not evaluated
        # the SlicerRT metrics equal the product's metrics table, and the volumes the segments' own
        metrics = tables.table_columns(p.get_node("slicerRtDvhMetricsTable"))
        seg = p.get_node("segmentation")
        voxel_cc = 1.5 ** 3 / 1000.0  # the case's segmentation grid
        for name, tol in (("PTV", 0.05), ("OAR", 0.12)):
            row = int(by_name[name].GetAttribute("DoseVolumeHistogram.TableRow"))
            for col, metric in (("Mean dose (GY)", "Dmean"), ("Max dose (GY)", "Dmax")):
                self.assertAlmostEqual(metrics[col][row], metric_value(p.get_node("metricsTable"), name, metric),
                                       delta=1e-3 * metrics[col][row], msg=(name, metric))
            self.assertLessEqual(metrics["Min dose (GY)"][row], metrics["Mean dose (GY)"][row])
            self.assertLessEqual(metrics["Mean dose (GY)"][row], metrics["Max dose (GY)"][row])
            sid = by_name[name].GetAttribute("DoseVolumeHistogram.SegmentID")
            from SeedImplantPlannerLib.mrml.segmentations import segment_structure
            seg_cc = segment_structure(seg, sid).mask.sum() * voxel_cc
            self.assertAlmostEqual(metrics["Volume (cc)"][row] / seg_cc, 1.0, delta=tol, msg=name)
        # subject hierarchy as SlicerRT arranges it: metrics table in the study, DVH tables under it
        sh = subject_hierarchy(self.scene)
        metrics_item = sh.GetItemByDataNode(p.get_node("slicerRtDvhMetricsTable"))
        self.assertEqual(sh.GetItemParent(metrics_item), plan.study_item())
        for node in by_name.values():
            self.assertEqual(sh.GetItemParent(sh.GetItemByDataNode(node)), metrics_item)

    def test_isodose_models_carry_the_slicerrt_marker(self):
        plan = self.build()
        models = plan.params.get_node_list("isodoseModels")
        self.assertEqual(len(models), 5)
        for m in models:
            self.assertTrue(m.IsA("vtkMRMLModelNode"))
            self.assertEqual(m.GetAttribute("DicomRtImport.IsodoseModel"), "1")
            self.assertIsNotNone(m.GetAttribute(isodose.ISODOSE_LEVEL_ATTRIBUTE))

    def test_slicerrt_comparison_reads_the_tables(self):
        plan = self.build()
        p = plan.params
        dose = p.get_node("doseVolume")
        ptv = self.assert_slicerrt_layout(self.scene, p)["PTV"]
        self.assertEqual(slicerrt_dvh_agreement(ptv, ptv, dose), 100.0)
        # a second plan (seeds moved 4 mm) in the same scene: its PTV table is listed and differs
        before = tables.table_columns(ptv)["Volume"].copy()
        copy = self.scene.AddNewNodeByClass("vtkMRMLTableNode", "PTV before")
        copy.Copy(ptv)
        node = p.get_node("seedsNode")
        plan.start_live_updates()
        self.addCleanup(plan.stop_live_updates)
        for i in range(node.GetNumberOfControlPoints()):
            q = np.array(node.GetNthControlPointPosition(i))
            node.SetNthControlPointPosition(i, *(q + (4.0, 0.0, 0.0)))
        after = tables.table_columns(ptv)["Volume"]
        self.assertFalse(len(after) == len(before) and np.allclose(after, before))
        self.assertIn(copy, slicerrt_dvh_selector(self.scene))
        self.assertLess(slicerrt_dvh_agreement(copy, ptv, dose), 100.0)

    def test_live_edits_update_the_tables_in_place(self):
        plan = self.build()
        p = plan.params
        ids = [n.GetID() for n in p.get_node_list("slicerRtDvhTables")]
        metrics_id = p.get_node("slicerRtDvhMetricsTable").GetID()
        plan.start_live_updates()
        self.addCleanup(plan.stop_live_updates)
        node = p.get_node("seedsNode")
        q = np.array(node.GetNthControlPointPosition(0))
        node.SetNthControlPointPosition(0, *(q + (-5.0, 3.0, 0.0)))
        self.assertEqual(plan.last_update["dose_edit"], "moved 1")
        self.assertEqual([n.GetID() for n in p.get_node_list("slicerRtDvhTables")], ids)
        self.assertEqual(p.get_node("slicerRtDvhMetricsTable").GetID(), metrics_id)
        self.assert_slicerrt_layout(self.scene, p)
        self.assertEqual(len(slicerrt_dvh_selector(self.scene)), 2)

    def test_a_structure_no_longer_evaluated_loses_its_table_and_references(self):
        plan = self.build()
        p = plan.params
        oar = self.assert_slicerrt_layout(self.scene, p)["OAR"]
        oar_id = oar.GetID()
        plan.set_roles("PTV", [], ["Bone"])
        plan.refresh_outputs()
        by_name = self.assert_slicerrt_layout(self.scene, p)
        self.assertEqual(sorted(by_name), ["PTV"])
        self.assertIsNone(self.scene.GetNodeByID(oar_id))
        self.assertNotIn(oar_id, created_references(p.get_node("segmentation")))
        self.assertNotIn(oar_id, created_references(p.get_node("doseVolume")))
        self.assertEqual(tables.table_columns(p.get_node("slicerRtDvhMetricsTable"))["Structure"], ["PTV"])

    def test_renamed_segment_renames_its_table(self):
        plan = self.build()
        p = plan.params
        ptv = self.assert_slicerrt_layout(self.scene, p)["PTV"]
        seg = p.get_node("segmentation")
        seg.GetSegmentation().GetSegment(p.get("targetSegmentId")).SetName("CTV")
        plan.set_roles(p.get("targetSegmentId"), p.get_string_list("organSegmentIds"), ["Bone"])
        plan.refresh_outputs()
        by_name = self.assert_slicerrt_layout(self.scene, p)
        self.assertIs(by_name["CTV"], ptv)  # the same node, renamed
        self.assertEqual(ptv.GetName(), "CTV_DvhTable")

    def test_slicerrt_nodes_survive_mrb_save_and_load(self):
        plan = self.build()
        p = plan.params
        saved = {name: tables.table_columns(n) for name, n in self.assert_slicerrt_layout(self.scene, p).items()}
        saved_metrics = tables.table_columns(p.get_node("slicerRtDvhMetricsTable"))
        path = plan.save(os.path.join(self.tmp, "plan.mrb"))
        other = self.fresh_scene()
        other.load_mrb(path)
        q = parameters.PlanParameters(other.scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode"))
        loaded = self.assert_slicerrt_layout(other.scene, q)
        self.assertEqual(sorted(loaded), sorted(saved))
        for name, cols in saved.items():
            back = tables.table_columns(loaded[name])
            np.testing.assert_array_equal(back["Dose"], cols["Dose"])
            np.testing.assert_array_equal(back["Volume"], cols["Volume"])
        back = tables.table_columns(q.get_node("slicerRtDvhMetricsTable"))
        self.assertEqual(back["Structure"], saved_metrics["Structure"])
        np.testing.assert_array_equal(back["Show"], saved_metrics["Show"])
        for col in ("Volume (cc)", "Mean dose (GY)", "Min dose (GY)", "Max dose (GY)"):
            np.testing.assert_array_equal(back[col], saved_metrics[col])
        for m in q.get_node_list("isodoseModels"):
            self.assertEqual(m.GetAttribute("DicomRtImport.IsodoseModel"), "1")
        # the reloaded plan recomputes into the same nodes (no second set of SlicerRT tables)
        again = plan_scene.PlanScene(other, q.node)
        again.compute_dose(volumes.geometry_from_volume(q.get_node("doseVolume")))
        self.assertEqual(len(slicerrt_dvh_selector(other.scene)), 2)
        self.assertEqual(other.scene.GetNumberOfNodesByClass("vtkMRMLTableNode"), 5)  # DVH, metrics, 2 + 1 SlicerRT


class SlicerRtDvhAdapterTest(MRMLSceneTestCase):
    """Bad input to the adapter is refused with the structure or segment named, before any node is written."""

    def setUp(self):
        super().setUp()
        from SeedImplantPlannerLib.core.geometry import ImageGeometry
        from test_mrml_fixture import sphere_mask
        from SeedImplantPlannerLib.mrml import segmentations
        g = ImageGeometry((20, 20, 20), (1.0, 1.0, 1.0), (-10.0, -10.0, -10.0))
        self.seg = segmentations.add_segmentation(self.scene)
        self.sid = segmentations.add_segment_from_mask(self.seg, sphere_mask(g, (0, 0, 0), 5.0), g, "PTV")
        self.dose = volumes.update_dose_volume(self.scene, np.ones(g.shape, np.float32), g, 1.0)
        self.bins = np.array([0.0, 0.5, 1.0])
        self.good = {"segment_id": self.sid, "name": "PTV", "volume_percent": [100.0, 100.0, 0.0],
                     "volume_cc": 0.5, "mean_Gy": 1.0, "min_Gy": 1.0, "max_Gy": 1.0, "oversampling": 1}

    def write(self, **change):
        s = dict(self.good, **change)
        return rt.update_slicerrt_dvh_tables(self.scene, self.dose, self.seg, [s], self.bins)

    def assert_refused(self, pattern, **change):
        n_tables = self.scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
        with self.assertRaisesRegex(InputError, pattern):
            self.write(**change)
        self.assertEqual(self.scene.GetNumberOfNodesByClass("vtkMRMLTableNode"), n_tables)

    def test_unknown_segment(self):
        self.assert_refused("has no segment with ID 'nope'", segment_id="nope")

    def test_curve_of_the_wrong_length(self):
        self.assert_refused("DVH of 'PTV' has 2 values for 3 dose bins", volume_percent=[100.0, 0.0])

    def test_empty_structure(self):
        self.assert_refused("DVH of 'PTV': structure volume must be > 0 cc", volume_cc=0.0)

    def test_good_input_writes_one_table(self):
        (node,), metrics = self.write()
        self.assertEqual(node.GetName(), "PTV_DvhTable")
        self.assertEqual(tables.table_columns(metrics)["Structure"], ["PTV"])


if __name__ == "__main__":
    unittest.main()
