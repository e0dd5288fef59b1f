"""MRML adapters for markups: needles (line or curve nodes) and seeds (one fiducial node).

- Needles: one markups line node per needle, control point 0 = entry, 1 = tip, named
  "Needle <n>" (n from 1), attribute ``SeedImplantPlanner.NeedleNumber``; a curved catheter is a
  curve node. A :class:`needles.Needle` keeps its other data (gauge, name, ...) as JSON in the node
  attribute ``SeedImplantPlanner.Needle``.
- Seeds: one markups fiducial node, one control point per seed. Each control point's
  orientation matrix has the seed axis as its third column; its description holds
  ``sk_U=<strength>; model=<model id>[; needle=<n>]``. Points without a description (added by
  hand in a view) get the node attributes ``SeedImplantPlanner.DefaultStrengthU`` and
  ``SeedImplantPlanner.DefaultModel`` and the axis of their orientation.
"""

from __future__ import annotations

import json
import re

import numpy as np

from ..core.errors import InputError
from ..physics.seeds import SeedSet
from .nodes import ROLE_ATTRIBUTE, _slicer, subject_hierarchy

NEEDLE_NUMBER_ATTRIBUTE = "SeedImplantPlanner.NeedleNumber"
DEFAULT_STRENGTH_ATTRIBUTE = "SeedImplantPlanner.DefaultStrengthU"
DEFAULT_MODEL_ATTRIBUTE = "SeedImplantPlanner.DefaultModel"
NEEDLE_DATA_ATTRIBUTE = "SeedImplantPlanner.Needle"

_SEED_DESC_RE = re.compile(r"(\w+)\s*=\s*([^;]+)")


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


def needle_to_node(scene, needle, locked=False, node=None):
    """Line node (straight) or curve node (curved catheter) of a :class:`needles.Needle` or (entry, tip)."""
    curved = bool(getattr(needle, "curved", False))
    number = int(getattr(needle, "number", 0) or 0)
    if curved:
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", f"Needle {number}")
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetPointLabelsVisibility(False)
        _slicer().util.updateMarkupsControlPointsFromArray(node, np.asarray(needle.control_points, float))
        node.SetAttribute(NEEDLE_NUMBER_ATTRIBUTE, str(number))
        node.SetAttribute(ROLE_ATTRIBUTE, "Needle")
        node.SetLocked(bool(locked))
    else:
        entry, tip = needle_endpoints(needle)
        node = needle_line_node(scene, entry, tip, number, locked, node)
    if hasattr(needle, "to_dict"):
        node.SetName(f"Needle {number}" + (f" ({needle.name})" if needle.name and needle.name != f"N{number}" else ""))
        node.SetAttribute(NEEDLE_DATA_ATTRIBUTE, json.dumps(needle.to_dict()))
    return node


def node_to_needle(node):
    """A :class:`needles.Needle` from a needle node (end points from the node, the rest from its data)."""
    from ..planning.needles import Needle  # noqa: PLC0415
    data = json.loads(node.GetAttribute(NEEDLE_DATA_ATTRIBUTE) or "{}")
    number = int(node.GetAttribute(NEEDLE_NUMBER_ATTRIBUTE) or data.get("number", 0) or 0)
    pts = _slicer().util.arrayFromMarkupsControlPoints(node)
    if len(pts) < 2:
        raise InputError(f"needle '{node.GetName()}' needs an entry and a tip point (has {len(pts)})")
    data["number"] = number
    if node.IsA("vtkMRMLMarkupsCurveNode") and len(pts) > 2:
        data["control_points_ras_mm"] = pts.tolist()
    else:
        data.pop("control_points_ras_mm", None)
    data["entry_ras_mm"] = pts[0].tolist()
    data["tip_ras_mm"] = pts[-1].tolist()
    return Needle.from_dict(data, where=f"needle node '{node.GetName()}'")


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
