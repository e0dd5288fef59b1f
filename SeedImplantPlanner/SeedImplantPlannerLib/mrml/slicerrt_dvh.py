"""Per-structure DVH tables in SlicerRT's DoseVolumeHistogram layout, so SlicerRT lists and compares them.

Read from SlicerRT's sources (DoseVolumeHistogram/Logic/vtkSlicerDoseVolumeHistogramModuleLogic.cxx,
DoseVolumeHistogram/MRML/vtkMRMLDoseVolumeHistogramNode.cxx, DvhComparison/DvhComparison.py);
what SlicerRT's ``ComputeDvh`` writes for one structure, written here from the product's own DVH:

- a ``vtkMRMLTableNode`` named ``<segment>_DvhTable`` with the double columns ``Dose`` (Gy,
  first) and ``Volume`` (cumulative, % of the structure volume, second) - the comparison logic
  reads column 0 as dose and column 1 as volume;
- attributes ``DoseVolumeHistogram.DVH = "1"`` (the DVH comparison's table selectors list only
  tables carrying it), ``DoseVolumeHistogram.SegmentID``, ``DoseVolumeHistogram.Volume (cc)`` (the
  comparison's volume criterion refers to it), ``DoseVolumeHistogram.DoseVolumeOversamplingFactor``
  (here the sub-voxel sampling factor per axis the product used for the structure, 1 = voxel
  centres) and ``DoseVolumeHistogram.TableRow`` (its row in the metrics table);
- node references ``doseVolumeRef`` (the dose volume), ``segmentationRef`` (the segmentation) and
  ``dvhMetricsTableRef`` (the metrics table);
- the metrics table in SlicerRT's layout: columns ``Show`` (bits), ``Structure``, ``Volume name``,
  ``Volume (cc)``, ``Mean dose (GY)``, ``Min dose (GY)``, ``Max dose (GY)`` (the unit is the dose
  study's ``DicomRtImport.DoseUnitName``), one row per structure, referencing each DVH table under
  the role ``DoseVolumeHistogram.<dose node ID>_<segmentation node ID>_<segment ID>``;
- on the segmentation and the dose volume, references ``DoseVolumeHistogram.createdDvhArrayRef``
  to each DVH table.

SlicerRT names the table after the segment ID, which for its DICOM imports is the ROI name; the
product's segment IDs are generated, so the table is named after the segment's name (what a
user picks from in the DVH comparison); nothing in SlicerRT reads the name back. The curves are
the product's DVH (the same bins as its wide DVH table), not a recomputation by SlicerRT's
algorithm; ``Show`` is 0 because these tables are drawn in the product's own chart.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError
from .nodes import ROLE_ATTRIBUTE, _slicer, _vtk, subject_hierarchy
from .volumes import DOSE_UNIT_NAME_ATTRIBUTE

DVH_ATTRIBUTE_PREFIX = "DoseVolumeHistogram."
DVH_IDENTIFIER_ATTRIBUTE = DVH_ATTRIBUTE_PREFIX + "DVH"
DVH_SEGMENT_ID_ATTRIBUTE = DVH_ATTRIBUTE_PREFIX + "SegmentID"
DVH_VOLUME_CC_ATTRIBUTE = DVH_ATTRIBUTE_PREFIX + "Volume (cc)"
DVH_OVERSAMPLING_ATTRIBUTE = DVH_ATTRIBUTE_PREFIX + "DoseVolumeOversamplingFactor"
DVH_TABLE_ROW_ATTRIBUTE = DVH_ATTRIBUTE_PREFIX + "TableRow"
DVH_CREATED_REFERENCE_ROLE = DVH_ATTRIBUTE_PREFIX + "createdDvhArrayRef"
DOSE_VOLUME_REFERENCE_ROLE = "doseVolumeRef"
SEGMENTATION_REFERENCE_ROLE = "segmentationRef"
DVH_METRICS_TABLE_REFERENCE_ROLE = "dvhMetricsTableRef"
DVH_TABLE_NAME_POSTFIX = "_DvhTable"
DOSE_COLUMN = "Dose"
VOLUME_COLUMN = "Volume"

#: Role attribute values of the product for these nodes.
TABLE_ROLE = "SlicerRtDvh"
METRICS_ROLE = "SlicerRtDvhMetrics"


def metrics_columns(dose_unit="GY"):
    """Column names of SlicerRT's DVH metrics table for a dose in ``dose_unit``."""
    return ("Show", "Structure", "Volume name", "Volume (cc)", f"Mean dose ({dose_unit})", f"Min dose ({dose_unit})",
            f"Max dose ({dose_unit})")


def dvh_reference_role(dose_node, segmentation_node, segment_id):
    """Role under which SlicerRT's metrics table references the DVH table of one structure."""
    return f"{DVH_ATTRIBUTE_PREFIX}{dose_node.GetID()}_{segmentation_node.GetID()}_{segment_id}"


def _rounded(values):
    """Values to 6 significant digits: what a table's .tsv keeps, so a saved scene reloads equal."""
    return np.array([float(f"{float(v):.6g}") for v in np.asarray(values, float).ravel()])


def _double_array(name, values):
    from vtk.util import numpy_support  # noqa: PLC0415
    arr = numpy_support.numpy_to_vtk(_rounded(values), deep=True, array_type=_vtk().VTK_DOUBLE)
    arr.SetName(name)
    return arr


def _dose_unit_name(scene, dose_node):
    """The dose unit of the study above ``dose_node`` (SlicerRT's attribute), "GY" when none is set."""
    sh = subject_hierarchy(scene)
    item = sh.GetItemByDataNode(dose_node)
    unit = sh.GetAttributeFromItemAncestor(item, DOSE_UNIT_NAME_ATTRIBUTE, "Study") if item else ""
    return unit or "GY"


def update_slicerrt_dvh_tables(scene, dose_node, segmentation_node, structures, dose_bins_Gy, tables=None,
                               metrics_node=None, parent_item=0):
    """Write one SlicerRT-layout DVH table per structure and SlicerRT's metrics table; returns (tables, metrics).

    ``structures``: one dict per structure with ``segment_id``, ``name``, ``volume_percent``
    (cumulative, at ``dose_bins_Gy``), ``volume_cc``, ``mean_Gy``, ``min_Gy``, ``max_Gy`` and
    ``oversampling`` (sub-voxel factor per axis). Existing ``tables`` are reused by segment ID,
    the others removed; ``metrics_node`` is reused when given. With ``parent_item`` (a subject
    hierarchy item, e.g. the plan's study) the metrics table goes under it and the DVH tables under
    the metrics table, as SlicerRT arranges them.
    """
    dose_bins_Gy = np.asarray(dose_bins_Gy, float)
    segmentation = segmentation_node.GetSegmentation()
    for s in structures:
        if segmentation.GetSegment(s["segment_id"]) is None:
            raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segment with ID {s['segment_id']!r}")
        if len(s["volume_percent"]) != len(dose_bins_Gy):
            raise InputError(f"DVH of {s['name']!r} has {len(s['volume_percent'])} values for "
                             f"{len(dose_bins_Gy)} dose bins")
        if not s["volume_cc"] > 0:
            raise InputError(f"DVH of {s['name']!r}: structure volume must be > 0 cc, got {s['volume_cc']!r}")
    slicer, vtk = _slicer(), _vtk()
    sh = subject_hierarchy(scene)
    if metrics_node is None:
        metrics_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName("DvhMetrics"))
        metrics_node.SetAttribute(ROLE_ATTRIBUTE, METRICS_ROLE)
    by_segment = {t.GetAttribute(DVH_SEGMENT_ID_ATTRIBUTE): t for t in (tables or [])}
    stale_ids = {t.GetID() for t in (tables or [])}

    # the metrics table: one row per structure, SlicerRT's columns
    columns = metrics_columns(_dose_unit_name(scene, dose_node))
    with slicer.util.NodeModify(metrics_node):
        for role in [metrics_node.GetNthNodeReferenceRole(i) for i in range(metrics_node.GetNumberOfNodeReferenceRoles())]:
            if role.startswith(DVH_ATTRIBUTE_PREFIX):
                metrics_node.RemoveNodeReferenceIDs(role)
        metrics_node.RemoveAllColumns()
        table = metrics_node.GetTable()
        show = vtk.vtkBitArray()
        show.SetName(columns[0])
        show.SetNumberOfTuples(len(structures))
        for r in range(len(structures)):
            show.SetValue(r, 0)
        table.AddColumn(show)
        for name, values in ((columns[1], [s["name"] for s in structures]),
                             (columns[2], [dose_node.GetName()] * len(structures))):
            arr = vtk.vtkStringArray()
            arr.SetName(name)
            for v in values:
                arr.InsertNextValue(v)
            table.AddColumn(arr)
        for name, key in zip(columns[3:], ("volume_cc", "mean_Gy", "min_Gy", "max_Gy")):
            table.AddColumn(_double_array(name, [s[key] for s in structures]))
        table.Modified()

    out = []
    for row, s in enumerate(structures):
        node = by_segment.pop(s["segment_id"], None)
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLTableNode",
                                           scene.GenerateUniqueName(s["name"] + DVH_TABLE_NAME_POSTFIX))
            node.SetAttribute(ROLE_ATTRIBUTE, TABLE_ROLE)
        elif not node.GetName().startswith(s["name"] + DVH_TABLE_NAME_POSTFIX):  # segment renamed
            node.SetName(scene.GenerateUniqueName(s["name"] + DVH_TABLE_NAME_POSTFIX))
        stale_ids.discard(node.GetID())
        with slicer.util.NodeModify(node):
            node.RemoveAllColumns()
            t = node.GetTable()
            t.AddColumn(_double_array(DOSE_COLUMN, dose_bins_Gy))
            t.AddColumn(_double_array(VOLUME_COLUMN, s["volume_percent"]))
            t.Modified()
            node.SetColumnUnitLabel(DOSE_COLUMN, "Gy")
            node.SetColumnUnitLabel(VOLUME_COLUMN, "%")
            node.SetAttribute(DVH_IDENTIFIER_ATTRIBUTE, "1")
            node.SetAttribute(DVH_SEGMENT_ID_ATTRIBUTE, s["segment_id"])
            node.SetAttribute(DVH_VOLUME_CC_ATTRIBUTE, f"{float(s['volume_cc']):.6g}")
            node.SetAttribute(DVH_OVERSAMPLING_ATTRIBUTE, str(int(s["oversampling"])))
            node.SetAttribute(DVH_TABLE_ROW_ATTRIBUTE, str(row))
            node.SetNodeReferenceID(DOSE_VOLUME_REFERENCE_ROLE, dose_node.GetID())
            node.SetNodeReferenceID(SEGMENTATION_REFERENCE_ROLE, segmentation_node.GetID())
            node.SetNodeReferenceID(DVH_METRICS_TABLE_REFERENCE_ROLE, metrics_node.GetID())
        metrics_node.SetNodeReferenceID(dvh_reference_role(dose_node, segmentation_node, s["segment_id"]), node.GetID())
        out.append(node)

    # SlicerRT's back references from the inputs; references to other DVH tables are kept
    for source in (segmentation_node, dose_node):
        have = _created_references(source)
        for i in reversed(range(len(have))):
            if have[i] in stale_ids:
                source.RemoveNthNodeReferenceID(DVH_CREATED_REFERENCE_ROLE, i)
        have = _created_references(source)
        for node in out:
            if node.GetID() not in have:
                source.AddNodeReferenceID(DVH_CREATED_REFERENCE_ROLE, node.GetID())
    for stale in by_segment.values():
        scene.RemoveNode(stale)

    # subject hierarchy as SlicerRT arranges it: the metrics table in the study, DVH tables under it
    if parent_item:
        metrics_item = sh.GetItemByDataNode(metrics_node) or sh.CreateItem(parent_item, metrics_node)
        if sh.GetItemParent(metrics_item) != parent_item:
            sh.SetItemParent(metrics_item, parent_item)
        for node in out:
            item = sh.GetItemByDataNode(node) or sh.CreateItem(metrics_item, node)
            if sh.GetItemParent(item) != metrics_item:
                sh.SetItemParent(item, metrics_item)
    return out, metrics_node


def _created_references(node):
    """IDs ``node`` references under SlicerRT's ``createdDvhArrayRef`` role, in order."""
    return [node.GetNthNodeReferenceID(DVH_CREATED_REFERENCE_ROLE, i)
            for i in range(node.GetNumberOfNodeReferences(DVH_CREATED_REFERENCE_ROLE))]
