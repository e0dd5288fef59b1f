"""MRML adapters for volumes: array ``[k, j, i]`` + :class:`ImageGeometry` (RAS) <-> scalar volume node
(IJKToRAS matrix); the CT display and the dose volume.

Dose volumes are in Gy and carry the SlicerRT dose marks: node attribute
``DicomRtImport.DoseVolume = "1"`` and, on their subject hierarchy study item,
``DicomRtImport.DoseUnitName = "GY"`` and ``DicomRtImport.DoseUnitValue = "1.0"``, so SlicerRT's
Isodose and Dose Volume Histogram modules accept them.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import GeometryError, InputError
from ..core.geometry import ImageGeometry
from .nodes import (PRESCRIPTION_ATTRIBUTE, ROLE_ATTRIBUTE, _slicer, _vtk, ensure_study, numpy_matrix, place_in_study,
                    study_of, subject_hierarchy, vtk_matrix)

DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
DOSE_UNIT_NAME_ATTRIBUTE = "DicomRtImport.DoseUnitName"
DOSE_UNIT_VALUE_ATTRIBUTE = "DicomRtImport.DoseUnitValue"


# ------------------------------------------------------------------------------------------------
# volumes
# ------------------------------------------------------------------------------------------------
def geometry_from_matrix(ijk_to_ras, size) -> ImageGeometry:
    """ImageGeometry from a 4x4 IJK->RAS matrix and (ni, nj, nk)."""
    m = np.asarray(ijk_to_ras, float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise GeometryError(f"degenerate IJK to RAS matrix (zero spacing): {m.tolist()}")
    return ImageGeometry(tuple(int(s) for s in size), tuple(spacing), tuple(m[:3, 3]), m[:3, :3] / spacing[None, :])


def geometry_from_volume(node) -> ImageGeometry:
    """ImageGeometry of a volume node (its IJK->RAS matrix and image dimensions)."""
    image = node.GetImageData()
    if image is None:
        raise InputError(f"volume '{node.GetName()}' has no image data")
    vm = _vtk().vtkMatrix4x4()
    node.GetIJKToRASMatrix(vm)
    return geometry_from_matrix(numpy_matrix(vm), image.GetDimensions())


def volume_array(node) -> np.ndarray:
    """Voxel array [k, j, i] of a scalar volume node (a copy)."""
    return np.array(_slicer().util.arrayFromVolume(node), copy=True)


def update_volume(node, array, geometry: ImageGeometry):
    """Set a volume node's voxels (array [k, j, i]) and geometry."""
    array = np.asarray(array)
    if array.shape != geometry.shape:
        raise GeometryError(f"array shape {array.shape} does not match grid shape {geometry.shape}")
    node.SetIJKToRASMatrix(vtk_matrix(geometry.ijk_to_ras_matrix))
    _slicer().util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    return node


def add_scalar_volume(scene, array, geometry: ImageGeometry, name, node=None):
    """Create (or update ``node``) a scalar volume node with display node from an array and geometry."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        node.CreateDefaultDisplayNodes()
    update_volume(node, array, geometry)
    return node


def set_ct_display(node, window=400.0, level=40.0):
    """Grey soft-tissue window for a CT volume."""
    display = node.GetDisplayNode() or (node.CreateDefaultDisplayNodes() or node.GetDisplayNode())
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    display.AutoWindowLevelOff()
    display.SetWindowLevel(float(window), float(level))


# ------------------------------------------------------------------------------------------------
# dose volume
# ------------------------------------------------------------------------------------------------
def dose_color_table(scene, node=None, name="SeedImplantPlanner dose"):
    """A 256-entry colour table for dose colour wash; with the window 0..2 x prescription the
    prescription sits at green-yellow, 150 % at orange and 200 % at red."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
        node.SetAttribute(ROLE_ATTRIBUTE, "DoseColorTable")
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    stops = np.array([[0.0, 0.0, 0.0, 0.5], [0.25, 0.0, 0.2, 1.0], [0.42, 0.0, 0.8, 1.0], [0.5, 0.1, 0.9, 0.2],
                      [0.6, 0.9, 0.95, 0.0], [0.75, 1.0, 0.55, 0.0], [1.0, 0.85, 0.0, 0.0]])
    x = np.linspace(0, 1, 256)
    rgb = np.column_stack([np.interp(x, stops[:, 0], stops[:, c]) for c in (1, 2, 3)])
    for i in range(256):
        node.SetColor(i, f"c{i}", rgb[i, 0], rgb[i, 1], rgb[i, 2], 1.0)
    return node


def mark_dose_volume(scene, dose_node, study_item=None, unit_value=1.0):
    """Mark ``dose_node`` as a SlicerRT dose volume (node attribute and study-level dose unit)."""
    dose_node.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
    study = study_item or study_of(scene, dose_node)
    if not study:
        study = ensure_study(scene)
        place_in_study(scene, dose_node, study)
    sh = subject_hierarchy(scene)
    sh.SetItemAttribute(study, DOSE_UNIT_NAME_ATTRIBUTE, "GY")
    sh.SetItemAttribute(study, DOSE_UNIT_VALUE_ATTRIBUTE, f"{float(unit_value):g}")
    return study


def update_dose_volume(scene, dose_Gy, geometry: ImageGeometry, prescription_Gy, node=None, name="Dose",
                       study_item=None, color_node=None):
    """Create or update the dose volume node (Gy) with colour wash display and SlicerRT marks."""
    rx = float(prescription_Gy)
    if not math.isfinite(rx) or rx <= 0:
        raise InputError(f"prescription must be a positive dose in Gy, got {prescription_Gy!r}")
    new = node is None
    node = add_scalar_volume(scene, np.asarray(dose_Gy, dtype=np.float32), geometry, name, node)
    node.SetAttribute(PRESCRIPTION_ATTRIBUTE, f"{rx:g}")
    node.SetAttribute(ROLE_ATTRIBUTE, "Dose")
    node.SetVoxelValueUnits(_slicer().vtkCodedEntry())
    units = node.GetVoxelValueUnits()
    units.SetValueSchemeMeaning("Gy", "UCUM", "Gray")
    node.SetVoxelValueUnits(units)
    if new:
        display = node.GetDisplayNode()
        ct = color_node or dose_color_table(scene)
        display.SetAndObserveColorNodeID(ct.GetID())
        display.AutoWindowLevelOff()
        # Colour wash from 0 to 2 x prescription; below 30 % of the prescription transparent.
        display.SetWindowLevelMinMax(0.0, 2.0 * rx)
        display.AutoThresholdOff()
        display.SetApplyThreshold(True)
        display.SetThreshold(0.3 * rx, 1e9)
        mark_dose_volume(scene, node, study_item)
    return node
