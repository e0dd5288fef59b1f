"""MRML adapters: library objects <-> Slicer nodes (volumes, segments, needles, seeds, dose, isodoses, tables).

Qt-free; the scene and nodes come in as arguments; only classes shipped by ``slicer-core`` are
used, so the same code runs inside 3D Slicer and in tests on real nodes.

Conventions kept by these adapters (documented once here):
- Volumes: array ``[k, j, i]`` with an :class:`ImageGeometry` (RAS) <-> scalar volume node
  (IJKToRAS matrix). Dose volumes are in Gy and carry the SlicerRT dose marks: node attribute
  ``DicomRtImport.DoseVolume = "1"`` and, on their subject hierarchy study item,
  ``DicomRtImport.DoseUnitName = "GY"`` and ``DicomRtImport.DoseUnitValue = "1.0"``, so SlicerRT's
  Isodose and Dose Volume Histogram modules accept them.
- Needles: one markups line node per needle, control point 0 = entry, 1 = tip, named
  "Needle <n>" (n from 1), attribute ``SeedImplantPlanner.NeedleNumber``.
- Seeds: one markups fiducial node, one control point per seed. Each control point's
  orientation matrix has the seed axis as its third column; its description holds
  ``sk_U=<strength>; model=<model id>[; needle=<n>]``. Points without a description (added by
  hand in a view) get the node attributes ``SeedImplantPlanner.DefaultStrengthU`` and
  ``SeedImplantPlanner.DefaultModel`` and the axis of their orientation.
- Isodose surfaces: one model node per level (% of the prescription), visible in 3D and as
  lines in the slice views.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..core.errors import GeometryError, InputError
from ..core.geometry import ImageGeometry
from ..physics.seeds import SeedSet

DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
DOSE_UNIT_NAME_ATTRIBUTE = "DicomRtImport.DoseUnitName"
DOSE_UNIT_VALUE_ATTRIBUTE = "DicomRtImport.DoseUnitValue"
NEEDLE_NUMBER_ATTRIBUTE = "SeedImplantPlanner.NeedleNumber"
DEFAULT_STRENGTH_ATTRIBUTE = "SeedImplantPlanner.DefaultStrengthU"
DEFAULT_MODEL_ATTRIBUTE = "SeedImplantPlanner.DefaultModel"
ISODOSE_LEVEL_ATTRIBUTE = "SeedImplantPlanner.IsodoseLevelPercent"
PRESCRIPTION_ATTRIBUTE = "SeedImplantPlanner.PrescriptionGy"
ROLE_ATTRIBUTE = "SeedImplantPlanner.Role"

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

_SEED_DESC_RE = re.compile(r"(\w+)\s*=\s*([^;]+)")


def _slicer():
    import slicer  # noqa: PLC0415
    return slicer


def _vtk():
    import vtk  # noqa: PLC0415
    return vtk


# ------------------------------------------------------------------------------------------------
# matrices and volumes
# ------------------------------------------------------------------------------------------------
def vtk_matrix(m) -> "vtk.vtkMatrix4x4":
    """A vtkMatrix4x4 from a (4, 4) array."""
    out = _vtk().vtkMatrix4x4()
    m = np.asarray(m, float)
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, m[r, c])
    return out


def numpy_matrix(vm) -> np.ndarray:
    """A (4, 4) array from a vtkMatrix4x4."""
    return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)])


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
    return display


# ------------------------------------------------------------------------------------------------
# subject hierarchy
# ------------------------------------------------------------------------------------------------
def subject_hierarchy(scene):
    """The scene's subject hierarchy node."""
    return _slicer().vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def ensure_study(scene, patient_name="Patient", study_name="Seed implant plan", item=None):
    """Subject hierarchy study item (created with a patient parent unless ``item`` is given)."""
    sh = subject_hierarchy(scene)
    if item:
        return item
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), patient_name)
    return sh.CreateStudyItem(patient, study_name)


def place_in_study(scene, node, study_item):
    """Put ``node`` under ``study_item`` in the subject hierarchy (creating its item if needed)."""
    sh = subject_hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(study_item, node)
    else:
        sh.SetItemParent(item, study_item)
    return item


def ensure_folder(scene, parent_item, name, item=None):
    """Subject hierarchy folder item under ``parent_item`` (``item`` reused when given)."""
    sh = subject_hierarchy(scene)
    if item and sh.GetItemName(item):
        return item
    return sh.CreateFolderItem(parent_item, name)


def study_of(scene, node):
    """The study item above ``node`` in the subject hierarchy (0 if none)."""
    sh = subject_hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    while item and item != sh.GetSceneItemID():
        if sh.GetItemLevel(item) == "Study":
            return item
        item = sh.GetItemParent(item)
    return 0


# ------------------------------------------------------------------------------------------------
# segmentations
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# needles
# ------------------------------------------------------------------------------------------------
def needle_endpoints(needle):
    """(entry, tip) RAS mm of a needle given as an object with ``entry``/``tip`` or a pair."""
    if hasattr(needle, "entry") and hasattr(needle, "tip"):
        entry, tip = needle.entry, needle.tip
    elif hasattr(needle, "entry_ras") and hasattr(needle, "tip_ras"):
        entry, tip = needle.entry_ras, needle.tip_ras
    else:
        entry, tip = needle
    entry = np.asarray(entry, float).reshape(3)
    tip = np.asarray(tip, float).reshape(3)
    if not (np.all(np.isfinite(entry)) and np.all(np.isfinite(tip))) or np.linalg.norm(tip - entry) < 1e-6:
        raise InputError(f"needle has zero length or non-finite end points: entry {entry.tolist()}, tip {tip.tolist()}")
    return entry, tip


def needle_line_node(scene, entry, tip, number, locked=False, node=None, color=(0.85, 0.85, 0.85)):
    """Create (or update ``node``) the line node of needle ``number`` (point 0 entry, 1 tip)."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"Needle {number}")
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetPropertiesLabelVisibility(False)
        display.SetPointLabelsVisibility(False)
        display.SetLineThickness(0.3)
        display.SetGlyphScale(1.5)
    node.SetAttribute(NEEDLE_NUMBER_ATTRIBUTE, str(int(number)))
    node.SetAttribute(ROLE_ATTRIBUTE, "Needle")
    pts = np.vstack([entry, tip]).astype(float)
    with _slicer().util.NodeModify(node):
        if node.GetNumberOfControlPoints() != 2:
            node.RemoveAllControlPoints()
            node.AddControlPoint(pts[0], "entry")
            node.AddControlPoint(pts[1], "tip")
        else:
            node.SetNthControlPointPosition(0, pts[0])
            node.SetNthControlPointPosition(1, pts[1])
        node.SetLocked(bool(locked))
    return node


def needles_to_line_nodes(scene, needles, locked=False, nodes=None, folder_item=0):
    """Line nodes for ``needles`` (objects with entry/tip or (entry, tip) pairs), numbered from 1.

    Existing ``nodes`` are reused in order; extra ones are removed from the scene.
    """
    nodes = list(nodes or [])
    out = []
    sh = subject_hierarchy(scene)
    for n, needle in enumerate(needles, start=1):
        entry, tip = needle_endpoints(needle)
        node = needle_line_node(scene, entry, tip, n, locked, nodes[n - 1] if n <= len(nodes) else None)
        if folder_item:
            item = sh.GetItemByDataNode(node) or sh.CreateItem(folder_item, node)
            sh.SetItemParent(item, folder_item)
        out.append(node)
    for extra in nodes[len(out):]:
        scene.RemoveNode(extra)
    return out


def line_nodes_to_needles(nodes):
    """[(entry, tip)] RAS mm from needle line nodes (nodes with fewer than 2 points are refused)."""
    out = []
    for node in nodes:
        if node.GetNumberOfControlPoints() < 2:
            raise InputError(f"needle '{node.GetName()}' needs an entry and a tip point "
                             f"(has {node.GetNumberOfControlPoints()})")
        out.append((np.array(node.GetNthControlPointPosition(0)), np.array(node.GetNthControlPointPosition(1))))
    return out


def set_needles_locked(nodes, locked=True):
    """Lock or unlock needle line nodes against editing in the views."""
    for node in nodes:
        node.SetLocked(bool(locked))


# ------------------------------------------------------------------------------------------------
# seeds
# ------------------------------------------------------------------------------------------------
def axis_to_orientation(axis) -> np.ndarray:
    """A rotation matrix whose third column is the unit ``axis`` (first two columns orthonormal)."""
    z = np.asarray(axis, float)
    z = z / np.linalg.norm(z)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.column_stack([x, y, z])


def format_seed_description(strength_U, model_id, needle=None):
    """Machine-readable control point description of one seed."""
    text = f"sk_U={float(strength_U):.6g}; model={model_id}"
    if needle is not None and int(needle) > 0:
        text += f"; needle={int(needle)}"
    return text


def parse_seed_description(text):
    """Dict of the ``key=value`` fields of a seed description (empty dict for free text)."""
    return {k: v.strip() for k, v in _SEED_DESC_RE.findall(text or "")}


def seeds_to_fiducial_node(scene, seeds: SeedSet, node=None, name="Seeds", needle_numbers=None,
                           default_strength_U=None, default_model=None, color=(0.2, 1.0, 0.2)):
    """Write ``seeds`` into a markups fiducial node (created if ``node`` is None); returns the node."""
    slicer = _slicer()
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetPointLabelsVisibility(False)
        display.SetGlyphScale(1.2)
        display.SetGlyphTypeFromString("Sphere3D")
        node.SetMarkupLabelFormat("S%d")
    node.SetAttribute(ROLE_ATTRIBUTE, "Seeds")
    if default_strength_U is None and len(seeds):
        default_strength_U = float(np.median(seeds.strengths_U))
    if default_model is None and len(seeds):
        default_model = seeds.models[0]
    if default_strength_U is not None:
        node.SetAttribute(DEFAULT_STRENGTH_ATTRIBUTE, f"{float(default_strength_U):.6g}")
    if default_model:
        node.SetAttribute(DEFAULT_MODEL_ATTRIBUTE, str(default_model))
    n = len(seeds)
    with slicer.util.NodeModify(node):
        node.RemoveAllControlPoints()
        if n:
            slicer.util.updateMarkupsControlPointsFromArray(node, seeds.positions)
        for i in range(n):
            node.SetNthControlPointOrientationMatrix(i, axis_to_orientation(seeds.axes[i]).ravel().tolist())
            needle = None if needle_numbers is None else needle_numbers[i]
            node.SetNthControlPointDescription(i, format_seed_description(seeds.strengths_U[i], seeds.models[i], needle))
            node.SetNthControlPointLabel(i, f"S{i + 1}")
    return node


def seed_from_control_point(node, i):
    """(position, axis, strength_U, model, needle number or 0) of control point ``i``."""
    pos = np.array(node.GetNthControlPointPosition(i))
    # 9 values, row-major: the axis (third column) is at 2, 5, 8
    axis = np.array(node.GetNthControlPointOrientationMatrix(i))[[2, 5, 8]]
    fields = parse_seed_description(node.GetNthControlPointDescription(i))
    strength = fields.get("sk_U") or node.GetAttribute(DEFAULT_STRENGTH_ATTRIBUTE)
    model = fields.get("model") or node.GetAttribute(DEFAULT_MODEL_ATTRIBUTE)
    label = node.GetNthControlPointLabel(i) or f"point {i + 1}"
    if strength is None or model is None:
        raise InputError(f"seeds '{node.GetName()}': seed {label} has no strength or model (set the node's "
                         f"defaults {DEFAULT_STRENGTH_ATTRIBUTE} / {DEFAULT_MODEL_ATTRIBUTE})")
    try:
        strength = float(strength)
    except ValueError:
        raise InputError(f"seeds '{node.GetName()}': seed {label}: strength is not a number: {strength!r}") from None
    needle = int(fields.get("needle", "0") or 0)
    return pos, axis, strength, model, needle


def fiducial_node_to_seeds(node):
    """(SeedSet, needle numbers array) from a seeds fiducial node (see module doc)."""
    n = node.GetNumberOfControlPoints()
    pos = np.zeros((n, 3))
    axes = np.zeros((n, 3))
    sk = np.zeros(n)
    models = []
    needles = np.zeros(n, dtype=int)
    for i in range(n):
        pos[i], axes[i], sk[i], model, needles[i] = seed_from_control_point(node, i)
        models.append(model)
    return SeedSet(pos, axes, sk, models), needles


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


# ------------------------------------------------------------------------------------------------
# isodose surfaces
# ------------------------------------------------------------------------------------------------
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
                          nodes=None, folder_item=0, opacity_3d=0.25):
    """Create or update one model node per isodose level (% of prescription); returns the nodes.

    Existing ``nodes`` (matched by their level attribute) are reused; nodes for levels no longer
    asked for are removed.
    """
    rx = float(prescription_Gy)
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
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLModelNode", f"Isodose {level:g}%")
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
        node.SetAttribute(PRESCRIPTION_ATTRIBUTE, f"{rx:g}")
        node.SetAndObservePolyData(poly)
        out.append(node)
    for stale in by_level.values():
        scene.RemoveNode(stale)
    return out


# ------------------------------------------------------------------------------------------------
# tables and plots
# ------------------------------------------------------------------------------------------------
def _set_table_columns(table_node, columns):
    """Replace the columns of a table node: ``columns`` is a list of (name, values) pairs."""
    vtk = _vtk()
    table = table_node.GetTable()
    with _slicer().util.NodeModify(table_node):
        table_node.RemoveAllColumns()
        for name, values in columns:
            values = list(values)
            if values and isinstance(values[0], str):
                arr = vtk.vtkStringArray()
                for v in values:
                    arr.InsertNextValue(v)
            else:
                # 6 significant digits: what the table's .tsv file keeps, so a saved scene reloads equal
                arr = vtk.vtkDoubleArray()
                arr.SetNumberOfTuples(len(values))
                for r, v in enumerate(values):
                    arr.SetValue(r, float(f"{float(v):.6g}"))
            arr.SetName(name)
            table.AddColumn(arr)
        table.Modified()
    return table_node


def update_dvh_nodes(scene, dose_bins_Gy, curves, table_node=None, chart_node=None, colors=None,
                     prescription_Gy=None):
    """DVH table (dose column, cumulative volume % per structure) and plot chart; returns both.

    ``curves`` maps structure name -> cumulative volume % at ``dose_bins_Gy``.
    """
    dose_bins_Gy = np.asarray(dose_bins_Gy, float)
    for name, v in curves.items():
        if len(v) != len(dose_bins_Gy):
            raise InputError(f"DVH of {name!r} has {len(v)} values for {len(dose_bins_Gy)} dose bins")
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", "DVH")
        table_node.SetAttribute(ROLE_ATTRIBUTE, "DVH")
    cols = [("Dose (Gy)", dose_bins_Gy)] + [(f"{name} V (%)", np.asarray(v, float)) for name, v in curves.items()]
    _set_table_columns(table_node, cols)
    for c, _ in cols:
        table_node.SetColumnUnitLabel(c, "Gy" if c == "Dose (Gy)" else "%")
    if prescription_Gy is not None:
        table_node.SetAttribute(PRESCRIPTION_ATTRIBUTE, f"{float(prescription_Gy):g}")
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "DVH chart")
        chart_node.SetTitle("Dose volume histogram")
        chart_node.SetXAxisTitle("Dose (Gy)")
        chart_node.SetYAxisTitle("Volume (%)")
        chart_node.SetAttribute(ROLE_ATTRIBUTE, "DVHChart")
    existing = {}
    for i in range(chart_node.GetNumberOfPlotSeriesNodes()):
        s = chart_node.GetNthPlotSeriesNode(i)
        existing[s.GetYColumnName()] = s
    wanted = [f"{name} V (%)" for name in curves]
    for idx, (name, col) in enumerate(zip(curves, wanted)):
        series = existing.pop(col, None)
        if series is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"DVH {name}")
            series.SetPlotType(series.PlotTypeLine)
            series.SetMarkerStyle(series.MarkerStyleNone)
            series.SetXColumnName("Dose (Gy)")
            series.SetYColumnName(col)
            series.SetLineWidth(2)
            chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
        series.SetAndObserveTableNodeID(table_node.GetID())
        if colors and name in colors:
            series.SetColor(*colors[name])
    for stale in existing.values():
        chart_node.RemovePlotSeriesNodeID(stale.GetID())
        scene.RemoveNode(stale)
    return table_node, chart_node


METRIC_COLUMNS = ("Structure", "Metric", "Value", "Unit", "Goal", "Pass")


def update_metrics_table(scene, rows, table_node=None):
    """Metrics table node: one row per metric with its goal and pass/fail; returns the node.

    ``rows`` are dicts with keys structure, metric, value, unit, goal (text, may be empty) and
    passed (True, False or None when no goal).
    """
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", "Plan metrics")
        table_node.SetAttribute(ROLE_ATTRIBUTE, "Metrics")
    cols = {c: [] for c in METRIC_COLUMNS}
    for r in rows:
        cols["Structure"].append(str(r.get("structure", "")))
        cols["Metric"].append(str(r["metric"]))
        v = r.get("value")
        cols["Value"].append("" if v is None or not np.isfinite(v) else f"{float(v):.4g}")
        cols["Unit"].append(str(r.get("unit", "")))
        cols["Goal"].append(str(r.get("goal", "") or ""))
        p = r.get("passed")
        cols["Pass"].append("" if p is None else ("pass" if p else "FAIL"))
    # string columns even when empty (a table node needs typed columns)
    vtk = _vtk()
    table = table_node.GetTable()
    with _slicer().util.NodeModify(table_node):
        table_node.RemoveAllColumns()
        for c in METRIC_COLUMNS:
            arr = vtk.vtkStringArray()
            arr.SetName(c)
            for v in cols[c]:
                arr.InsertNextValue(v)
            table.AddColumn(arr)
        table.Modified()
    n_fail = sum(1 for r in rows if r.get("passed") is False)
    table_node.SetAttribute("SeedImplantPlanner.FailedGoals", str(n_fail))
    return table_node


def table_columns(table_node) -> dict:
    """``{column name: numpy array or list of str}`` of a table node."""
    table = table_node.GetTable()
    out = {}
    for c in range(table.GetNumberOfColumns()):
        col = table.GetColumn(c)
        if col.IsA("vtkStringArray"):
            out[col.GetName()] = [col.GetValue(r) for r in range(col.GetNumberOfValues())]
        else:
            out[col.GetName()] = np.array([col.GetValue(r) for r in range(col.GetNumberOfTuples())])
    return out
