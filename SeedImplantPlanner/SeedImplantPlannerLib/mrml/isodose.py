"""MRML adapters for isodose surfaces: one model node per level (% of the prescription), visible in 3D
and as lines in the slice views.

Each model carries SlicerRT's isodose marker ``DicomRtImport.IsodoseModel = "1"`` (SlicerRT's
``vtkSlicerRtCommon::IsIsodoseModelNode`` tests for the attribute on a model node; its Isodose
logic writes "1"), so SlicerRT's subject hierarchy shows them as isodose surfaces.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from .nodes import PRESCRIPTION_ATTRIBUTE, ROLE_ATTRIBUTE, _vtk, subject_hierarchy, vtk_matrix

ISODOSE_LEVEL_ATTRIBUTE = "SeedImplantPlanner.IsodoseLevelPercent"
ISODOSE_MODEL_ATTRIBUTE = "DicomRtImport.IsodoseModel"

DEFAULT_ISODOSE_LEVELS_PCT = (50.0, 90.0, 100.0, 150.0, 200.0)

#: Isodose line colours by level (% of prescription); other levels take colours from the palette.
ISODOSE_COLORS = {
    50.0: (0.00, 0.75, 1.00),   # sky blue
    90.0: (0.00, 1.00, 0.00),   # green
    100.0: (1.00, 1.00, 0.00),  # yellow: the prescription isodose
    150.0: (1.00, 0.50, 0.00),  # orange
    200.0: (1.00, 0.00, 1.00),  # magenta
}
_EXTRA_ISODOSE_COLORS = [(0.5, 1.0, 0.5), (0.6, 0.3, 1.0), (0.0, 1.0, 0.8), (1.0, 0.75, 0.8), (0.6, 0.6, 0.0)]


def isodose_color(level_pct, index=0):
    """Colour of an isodose level (% of prescription)."""
    return ISODOSE_COLORS.get(float(level_pct), _EXTRA_ISODOSE_COLORS[index % len(_EXTRA_ISODOSE_COLORS)])


def hot_box(dose_Gy, level_Gy, pad=1):
    """Index box (lo (i, j, k), hi (i, j, k)) of the voxels at or above ``level_Gy`` (+ ``pad``), or None."""
    hot = np.asarray(dose_Gy) >= level_Gy
    lo, hi = [], []
    for axis in (2, 1, 0):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(np.any(hot, axis=other))
        if nz.size == 0:
            return None
        lo.append(max(0, int(nz[0]) - pad))
        hi.append(min(hot.shape[axis] - 1, int(nz[-1]) + pad))
    return np.array(lo), np.array(hi)


def isodose_polydata(dose_Gy, geometry: ImageGeometry, level_Gy, box=None):
    """Isodose surface (vtkPolyData in RAS mm) of a dose array at ``level_Gy`` (flying edges).

    ``box`` (lo, hi) limits the work to an index box that holds every voxel above the level.
    """
    vtk = _vtk()
    from vtk.util import numpy_support  # noqa: PLC0415
    if box is not None:
        lo, hi = box
        dose_Gy = np.asarray(dose_Gy)[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
        geometry = ImageGeometry(tuple(hi - lo + 1), geometry.spacing, tuple(geometry.ijk_to_ras(lo.astype(float))),
                                 geometry.direction)
    img = vtk.vtkImageData()
    img.SetDimensions(*geometry.size)
    arr = np.ascontiguousarray(dose_Gy, dtype=np.float32)
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(arr.ravel(), deep=False))
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, float(level_Gy))
    fe.ComputeNormalsOn()
    fe.ComputeScalarsOff()
    tf = vtk.vtkTransform()
    tf.SetMatrix(vtk_matrix(geometry.ijk_to_ras_matrix))
    tpf = vtk.vtkTransformPolyDataFilter()
    tpf.SetInputConnection(fe.GetOutputPort())
    tpf.SetTransform(tf)
    tpf.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(tpf.GetOutput())
    del arr
    return out


def update_isodose_models(scene, dose_Gy, geometry: ImageGeometry, prescription_Gy, levels_pct=DEFAULT_ISODOSE_LEVELS_PCT,
                          nodes=None, folder_item=0, opacity_3d=0.25, reference=None, target_prescriptions=None):
    """Create or update one model node per isodose level (% of prescription); returns the nodes.

    Existing ``nodes`` (matched by their level attribute) are reused; nodes for levels no longer
    asked for are removed. Several targets: ``reference`` names the target whose prescription the
    % levels refer to (node names "Isodose 100% of GTV_RP Rx"); ``target_prescriptions`` ({other
    target: Gy}) add each other target's own prescription isodose ("Isodose GTV_Groin Rx 140 Gy",
    its level attribute in % of the reference prescription) unless a % level already gives it.
    """
    rx = float(prescription_Gy)
    names = {}
    for tname, trx in (target_prescriptions or {}).items():
        pct = round(100.0 * float(trx) / rx, 3)
        if not any(abs(pct - float(v)) < 1e-6 for v in levels_pct):
            levels_pct = tuple(levels_pct) + (pct,)
            names[pct] = f"Isodose {tname} Rx {float(trx):g} Gy"
    by_level = {}
    for node in nodes or []:
        lvl = node.GetAttribute(ISODOSE_LEVEL_ATTRIBUTE)
        if lvl is not None:
            by_level[float(lvl)] = node
    sh = subject_hierarchy(scene)
    out = []
    levels = [float(v) for v in levels_pct]
    for level in levels:
        if not math.isfinite(level) or level <= 0:
            raise InputError(f"isodose level must be a positive percentage, got {level!r}")
    # one box for every level: the voxels above the lowest level (+1 voxel so surfaces close inside it)
    box = hot_box(dose_Gy, rx * min(levels) / 100.0, pad=1)
    for idx, level in enumerate(levels):
        poly = isodose_polydata(dose_Gy, geometry, rx * level / 100.0, box) if box is not None else \
            _vtk().vtkPolyData()
        node = by_level.pop(level, None)
        name = names.get(round(level, 3)) or (f"Isodose {level:g}% of {reference} Rx" if reference else
                                                f"Isodose {level:g}%")
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
            node.CreateDefaultDisplayNodes()
            node.SetAttribute(ISODOSE_LEVEL_ATTRIBUTE, f"{level:g}")
            node.SetAttribute(ROLE_ATTRIBUTE, "Isodose")
            display = node.GetDisplayNode()
            display.SetColor(*isodose_color(level, idx))
            display.SetOpacity(opacity_3d)
            display.SetBackfaceCulling(False)
            display.SetVisibility2D(True)  # slice intersection lines
            display.SetSliceIntersectionThickness(2)
            display.SetScalarVisibility(False)
            if folder_item:
                sh.SetItemParent(sh.GetItemByDataNode(node) or sh.CreateItem(folder_item, node), folder_item)
        node.SetName(name)
        node.SetAttribute(PRESCRIPTION_ATTRIBUTE, f"{rx:g}")
        node.SetAttribute(ISODOSE_MODEL_ATTRIBUTE, "1")  # also on models of scenes saved before it was written
        node.SetAndObservePolyData(poly)
        out.append(node)
    for stale in by_level.values():
        scene.RemoveNode(stale)
    return out
