"""MRML adapters for segmentations: masks ``[k, j, i]`` on an :class:`ImageGeometry` <-> segments
(binary labelmaps), :class:`segio.Segmentation` -> segmentation node, segments as :class:`structures.Structure`.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import GeometryError, InputError
from ..core.geometry import ImageGeometry
from .nodes import _slicer, _vtk, numpy_matrix, vtk_matrix
from .volumes import geometry_from_matrix


def oriented_image(array, geometry: ImageGeometry):
    """A vtkOrientedImageData (uint8 labelmap) from an array [k, j, i] and geometry."""
    from vtk.util import numpy_support  # noqa: PLC0415
    img = _slicer().vtkOrientedImageData()
    img.SetDimensions(*geometry.size)
    img.SetImageToWorldMatrix(vtk_matrix(geometry.ijk_to_ras_matrix))
    data = numpy_support.numpy_to_vtk(np.ascontiguousarray(array, dtype=np.uint8).ravel(), deep=True,
                                      array_type=_vtk().VTK_UNSIGNED_CHAR)
    img.GetPointData().SetScalars(data)
    return img


def _oriented_image_to_array(img):
    """(array [k, j, i], ImageGeometry, extent origin offset) of a vtkOrientedImageData."""
    from vtk.util import numpy_support  # noqa: PLC0415
    ext = img.GetExtent()
    dims = (ext[1] - ext[0] + 1, ext[3] - ext[2] + 1, ext[5] - ext[4] + 1)
    if min(dims) < 1 or img.GetPointData().GetScalars() is None:
        return None, None
    vm = _vtk().vtkMatrix4x4()
    img.GetImageToWorldMatrix(vm)
    m = numpy_matrix(vm)
    origin = m[:3, :3] @ np.array(ext[0::2], float) + m[:3, 3]
    m[:3, 3] = origin
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(dims[::-1])
    return arr, geometry_from_matrix(m, dims)


def add_segmentation(scene, name="Segmentation", reference_volume=None):
    """A new segmentation node with display nodes (geometry from ``reference_volume`` if given)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    if reference_volume is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    return node


def add_segment_from_mask(segmentation_node, mask, geometry: ImageGeometry, name, color=(1.0, 0.0, 0.0)):
    """Add a binary mask (array [k, j, i] on ``geometry``) as a new segment; returns its ID."""
    mask = np.asarray(mask)
    if mask.shape != geometry.shape:
        raise GeometryError(f"mask shape {mask.shape} does not match grid shape {geometry.shape} ({name})")
    img = oriented_image(mask.astype(bool), geometry)
    return segmentation_node.AddSegmentFromBinaryLabelmapRepresentation(img, name, list(map(float, color)))


def segmentation_from_segio(scene, seg, name="Segmentation", reference_volume=None):
    """Segmentation node from a :class:`segio.Segmentation` (segment names, colours kept)."""
    node = add_segmentation(scene, name, reference_volume)
    for s in seg.segments:
        add_segment_from_mask(node, seg.mask(s.segment_id), seg.geometry, s.name, s.color)
    return node


def segment_ids(segmentation_node):
    """IDs of the segments of a segmentation node, in order."""
    seg = segmentation_node.GetSegmentation()
    return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]


def segment_id_by_name(segmentation_node, name):
    """ID of the segment named ``name`` (case-insensitive); InputError listing the names if absent."""
    seg = segmentation_node.GetSegmentation()
    low = str(name).strip().lower()
    ids = segment_ids(segmentation_node)
    hits = [i for i in ids if seg.GetSegment(i).GetName().lower() == low]
    if len(hits) != 1:
        names = ", ".join(seg.GetSegment(i).GetName() for i in ids)
        raise InputError(f"segmentation '{segmentation_node.GetName()}': no single segment named {name!r} "
                         f"(segments: {names or 'none'})")
    return hits[0]


def _segment_labelmap(segmentation_node, segment_id):
    """(array [k, j, i] bool, ImageGeometry) of a segment's binary labelmap in its own geometry."""
    seg = segmentation_node.GetSegmentation()
    segment = seg.GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' has no segment with ID {segment_id!r}")
    if segmentation_node.GetParentTransformNode() is not None:
        raise InputError(f"segmentation '{segmentation_node.GetName()}' is under a transform: harden it first")
    labelmap_name = _slicer().vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not seg.ContainsRepresentation(labelmap_name):
        if not segmentation_node.CreateBinaryLabelmapRepresentation():
            raise InputError(f"segmentation '{segmentation_node.GetName()}': cannot make a binary labelmap")
    img = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if img is None:
        return None, None
    arr, geom = _oriented_image_to_array(img)
    if arr is None:
        return None, None
    return arr == segment.GetLabelValue(), geom


def segment_structure(segmentation_node, segment_id):
    """A :class:`structures.Structure` of a segment: its mask on its own labelmap grid, name and colour."""
    from ..evaluation.structures import Structure  # noqa: PLC0415
    mask, geom = _segment_labelmap(segmentation_node, segment_id)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if mask is None or not mask.any():
        raise InputError(f"segment '{segment.GetName()}' of '{segmentation_node.GetName()}' is empty")
    return Structure(segment.GetName(), mask, geom, tuple(segment.GetColor()))


def segment_mask(segmentation_node, segment_id, geometry: ImageGeometry) -> np.ndarray:
    """Bool mask [k, j, i] of a segment on ``geometry`` (e.g. the dose grid; oblique grids work).

    Voxel-centre sampling as :func:`structures.mask_on_grid` (the evaluation's definition).
    """
    from ..evaluation.structures import mask_on_grid  # noqa: PLC0415
    return mask_on_grid(segment_structure(segmentation_node, segment_id), geometry)


def expand_segment(segmentation_node, segment_id, margin_mm, name, color=None):
    """Write a new segment = ``segment_id`` grown by ``margin_mm`` (see :func:`structures.expand_margin`).

    The labelmap is padded first so the grown segment is not clipped at its extent; returns the new ID.
    """
    from ..evaluation.structures import expand_margin  # noqa: PLC0415
    m = np.broadcast_to(np.asarray(margin_mm, float), (3,))
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise InputError(f"margin must be finite and >= 0 mm, got {margin_mm!r}")
    s = segment_structure(segmentation_node, segment_id)
    geom = s.geometry
    pad = np.ceil(float(m.max()) / np.asarray(geom.spacing)).astype(int) + 1  # (i, j, k)
    padded = np.pad(s.mask, [(pad[2], pad[2]), (pad[1], pad[1]), (pad[0], pad[0])])
    pgeom = ImageGeometry(tuple(np.asarray(geom.size) + 2 * pad), geom.spacing,
                          tuple(geom.ijk_to_ras(-pad.astype(float))), geom.direction)
    grown = expand_margin(padded, pgeom, margin_mm, name=s.name)
    if color is None:
        color = tuple(min(1.0, c * 0.6 + 0.4) for c in s.color)
    return add_segment_from_mask(segmentation_node, grown, pgeom, name, color)
