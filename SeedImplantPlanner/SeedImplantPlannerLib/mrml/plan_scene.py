"""A plan in the MRML scene: its nodes, their parameter node, live updates, and the saved scene.

:class:`PlanScene` ties the nodes of one plan together through a parameter node
(``vtkMRMLScriptedModuleNode`` with attribute ``ModuleName = SeedImplantPlanner``), stored the way
Slicer's ``parameterNodeWrapper`` stores it (numbers and strings as parameters, ``True``/``False``
for booleans, nodes as node references with the parameter's name as role, lists as ``name.len`` +
``name.<i>``), so the module's wrapper class reads what the library wrote and the other way round.
Nodes are never looked up by name.

Live updates (:meth:`PlanScene.start_live_updates`): moving, adding or removing a seed in a view,
or moving a needle (its seeds move with it, keeping their distance from the tip), updates the dose
with :class:`dose.DoseGrid` incremental edits, then the dose volume, isodose models, DVH table and
metrics table. Events are coalesced through a ``schedule(callback)`` function: the default runs
the update at once; the Slicer module passes a zero-delay Qt timer so a drag updates once per
event-loop turn.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from . import adapters as ma
from ..core import progress as _progress
from ..core.errors import InputError, SeedPlanError
from ..core.geometry import ImageGeometry
from ..physics.seeds import SeedSet

MODULE_NAME = "SeedImplantPlanner"
NEEDLE_DATA_ATTRIBUTE = "SeedImplantPlanner.Needle"

#: Parameters with their defaults (names shared with the module's parameterNodeWrapper class).
DEFAULTS = {
    "targetSegmentId": "",
    "seedModel": "I125_OncoSeed_6711",
    "strengthValue": 0.5,
    "strengthUnit": "mCi",
    "referenceDate": "",
    "implantDate": "",
    "prescriptionDoseGy": 145.0,
    "doseGridSpacingMm": 2.0,
    "doseMarginMm": 15.0,
    "doseEngine": "fast",
    "isodoseLevelsPercent": "50, 90, 100, 150, 200",
    "needlesLocked": False,
    "needleSpacingMm": 10.0,
    "seedSpacingMm": 10.0,
    "goalPreset": "",
    "liveUpdate": True,
}
NODE_PARAMETERS = ("ctVolume", "segmentation", "seedsNode", "doseVolume", "dvhTable", "dvhChart", "metricsTable",
                   "doseColorTable")
NODE_LIST_PARAMETERS = ("needleNodes", "isodoseModels")
STRING_LIST_PARAMETERS = ("organSegmentIds", "forbiddenSegmentIds")


# ------------------------------------------------------------------------------------------------
# parameter node (parameterNodeWrapper layout)
# ------------------------------------------------------------------------------------------------
class PlanParameters:
    """Typed access to the module's parameter node, in parameterNodeWrapper's storage layout."""

    def __init__(self, node):
        self.node = node

    @staticmethod
    def create(scene):
        """A new singleton parameter node of the module in ``scene`` (reused if present)."""
        node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(MODULE_NAME)
            node.SetAttribute("ModuleName", MODULE_NAME)
            node.SetName(scene.GenerateUniqueName(MODULE_NAME))
            node = scene.AddNode(node)
        params = PlanParameters(node)
        for k, v in DEFAULTS.items():
            if not node.GetParameter(k):
                params.set(k, v)
        return params

    def set(self, name, value):
        """Store a number, string or bool parameter."""
        if isinstance(value, bool):
            self.node.SetParameter(name, "True" if value else "False")
        else:
            self.node.SetParameter(name, str(value))

    def get(self, name):
        """A parameter converted to the type of its default (str when no default)."""
        raw = self.node.GetParameter(name)
        default = DEFAULTS.get(name)
        if raw == "" and default is not None:
            return default
        if isinstance(default, bool):
            return raw == "True"
        if isinstance(default, float):
            try:
                return float(raw)
            except ValueError:
                raise InputError(f"parameter {name} is not a number: {raw!r}") from None
        return raw

    def set_node(self, name, node):
        """Reference ``node`` (or None) under role ``name``."""
        self.node.SetParameter(name, "")
        self.node.SetNodeReferenceID(name, node.GetID() if node is not None else None)

    def get_node(self, name):
        """The node referenced under role ``name`` (or None)."""
        return self.node.GetNodeReference(name)

    def set_node_list(self, name, nodes):
        """Reference a list of nodes (``name.len`` and ``name.<i>``)."""
        old = self._len(name)
        for i, n in enumerate(nodes):
            self.set_node(f"{name}.{i}", n)
        for i in range(len(nodes), old):
            self.node.SetNodeReferenceID(f"{name}.{i}", None)
            self.node.UnsetParameter(f"{name}.{i}")
        self.node.SetParameter(f"{name}.len", str(len(nodes)))

    def get_node_list(self, name):
        """The referenced nodes of a node list (missing entries skipped)."""
        out = []
        for i in range(self._len(name)):
            n = self.get_node(f"{name}.{i}")
            if n is not None:
                out.append(n)
        return out

    def set_string_list(self, name, values):
        """Store a list of strings (``name.len`` and ``name.<i>``)."""
        old = self._len(name)
        values = [str(v) for v in values]
        for i, v in enumerate(values):
            self.node.SetParameter(f"{name}.{i}", v)
        for i in range(len(values), old):
            self.node.UnsetParameter(f"{name}.{i}")
        self.node.SetParameter(f"{name}.len", str(len(values)))

    def get_string_list(self, name):
        """A stored list of strings."""
        return [self.node.GetParameter(f"{name}.{i}") for i in range(self._len(name))]

    def _len(self, name):
        raw = self.node.GetParameter(f"{name}.len")
        return int(raw) if raw else 0

    def isodose_levels(self):
        """Isodose levels (% of prescription) from the comma-separated parameter."""
        return parse_levels(self.get("isodoseLevelsPercent"))


def parse_levels(text):
    """'50, 90, 100' -> (50.0, 90.0, 100.0); InputError naming a bad entry."""
    out = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip().rstrip("%")
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise InputError(f"isodose level {part!r} is not a number (give percentages such as 50, 90, 100)") from None
        if not math.isfinite(v) or v <= 0:
            raise InputError(f"isodose level {part!r} must be a positive percentage")
        out.append(v)
    if not out:
        raise InputError("no isodose level given (e.g. 50, 90, 100, 150, 200)")
    return tuple(sorted(set(out)))


# ------------------------------------------------------------------------------------------------
# evaluation on the dose grid (composition of structures, dvh, metrics, goals)
# ------------------------------------------------------------------------------------------------
class Evaluation:
    """Evaluates a dose for the plan's structures (:func:`evaluation.evaluate_plan`) and shapes the result
    for the DVH and metrics table nodes.

    Two things keep repeated evaluations (live edits) cheap without changing any number:

    - the dose is cropped to a box holding every structure (as far as it lies on the grid) and every
      voxel at or above the prescription, plus two voxels, so samples, DVHs and indices (V_ref
      included) are those of the whole grid. The box is grown by a few voxels and kept while the
      needed box stays inside it, so successive evaluations share one crop grid;
    - on that crop grid, a structure that the evaluation samples at voxel centres (not small or thin,
      entirely on the grid) is replaced once by its voxel-centre mask on the crop grid: the same
      voxels, so the same samples, without resampling it at every call.
    """

    MAX_DVH_ROWS = 600
    PAD_VOXELS = 2
    STABLE_MARGIN_VOXELS = 6

    def __init__(self, structures, roles, prescription_Gy, goals=None, supersample="auto"):
        self.structures = list(structures)
        self.roles = list(roles)
        self.prescription_Gy = float(prescription_Gy)
        self.goals = goals
        self.supersample = supersample
        self.result = None
        self._box_key = None
        self._box = None
        self._crop_key = None
        self._crop_box = None
        self._subst_key = None
        self._subst = {}

    def _structure_boxes(self, structures, geometry):
        key = (geometry, tuple(id(s) for s in structures))
        if self._box_key != key:
            lo = np.full(3, np.inf)
            hi = np.full(3, -np.inf)
            for s in structures:
                idx = np.argwhere(s.mask)
                if not len(idx):
                    continue
                a, b = idx.min(axis=0)[::-1] - 1, idx.max(axis=0)[::-1] + 1  # (i, j, k), one voxel out
                corners = np.array([[x, y, z] for x in (a[0], b[0]) for y in (a[1], b[1]) for z in (a[2], b[2])], float)
                ijk = geometry.ras_to_ijk(s.geometry.ijk_to_ras(corners))
                lo = np.minimum(lo, ijk.min(axis=0))
                hi = np.maximum(hi, ijk.max(axis=0))
            self._box_key, self._box = key, (lo, hi)
        return self._box[0].copy(), self._box[1].copy()

    def crop(self, dose_Gy, geometry: ImageGeometry, structures):
        """(dose, geometry) cropped to the structures' box and the prescription-dose box (see class doc)."""
        lo, hi = self._structure_boxes(structures, geometry)
        hot = np.asarray(dose_Gy) >= self.prescription_Gy
        for axis, name in ((2, 0), (1, 1), (0, 2)):  # array axes k, j, i -> index i, j, k
            other = tuple(a for a in range(3) if a != axis)
            nz = np.flatnonzero(np.any(hot, axis=other))
            if nz.size:
                lo[name] = min(lo[name], nz[0])
                hi[name] = max(hi[name], nz[-1])
        size = np.asarray(geometry.size)
        need_a = np.clip(np.floor(lo).astype(int) - self.PAD_VOXELS, 0, size - 1)
        need_b = np.clip(np.ceil(hi).astype(int) + self.PAD_VOXELS, 0, size - 1)
        if np.any(need_b < need_a):
            return dose_Gy, geometry
        key = (geometry, tuple(id(s) for s in structures))
        if self._crop_key == key and np.all(self._crop_box[0] <= need_a) and np.all(self._crop_box[1] >= need_b):
            a, b = self._crop_box
        else:
            a = np.clip(need_a - self.STABLE_MARGIN_VOXELS, 0, size - 1)
            b = np.clip(need_b + self.STABLE_MARGIN_VOXELS, 0, size - 1)
            self._crop_key, self._crop_box = key, (a, b)
        if np.all(a == 0) and np.all(b == size - 1):
            return dose_Gy, geometry
        sub = dose_Gy[a[2]:b[2] + 1, a[1]:b[1] + 1, a[0]:b[0] + 1]
        g = ImageGeometry(tuple(b - a + 1), geometry.spacing, tuple(geometry.ijk_to_ras(a.astype(float))),
                          geometry.direction)
        return sub, g

    def _on_grid(self, structures, geometry):
        """Structures with the voxel-centre-sampled ones replaced by their masks on ``geometry`` (cached)."""
        from ..evaluation.dvh import is_small_or_thin
        from ..evaluation.structures import Structure, fraction_outside, mask_on_grid
        if self.supersample not in ("auto", "off", 1):
            return structures
        key = (geometry, tuple(id(s) for s in structures))
        if self._subst_key != key:
            self._subst_key, self._subst = key, {}
            for s in structures:
                if fraction_outside(s, geometry) > 0.0:
                    continue
                center = mask_on_grid(s, geometry)
                if not center.any():
                    continue
                sub = Structure(s.name, center, geometry, s.color)
                if self.supersample == "auto" and (is_small_or_thin(center, s.volume_cc)
                                                   or is_small_or_thin(center, sub.volume_cc)):
                    continue  # sub-voxel sampling reads the structure's own grid: keep it
                self._subst[id(s)] = sub
        return [self._subst.get(id(s), s) for s in structures]

    def evaluate(self, dose_Gy, geometry: ImageGeometry):
        """(dose bins Gy, {name: cumulative %}, metric rows, n failed goals) for ``dose_Gy``."""
        from ..evaluation.evaluate import evaluate_plan
        from ..evaluation.structures import fraction_outside
        rows, inside = [], []
        target = None
        for s, role in zip(self.structures, self.roles):
            if role == "target":
                target = s.name
            elif fraction_outside(s, geometry) >= 1.0 - 1e-12:
                rows.append({"structure": s.name, "metric": "-", "value": None, "unit": "",
                             "goal": "outside the dose grid", "passed": None})
                continue
            inside.append(s)
        if not inside:
            return np.zeros(1), {}, rows, 0
        dose_Gy, geometry = self.crop(dose_Gy, geometry, inside)
        ev = evaluate_plan(dose_Gy, geometry, self._on_grid(inside, geometry), self.prescription_Gy, target=target,
                           goals=self.goals, supersample=self.supersample)
        self.result = ev
        step = max(1, int(math.ceil(len(ev.dvhs[0].edges_Gy) / self.MAX_DVH_ROWS)))
        bins = ev.dvhs[0].edges_Gy[::step]
        curves = {d.name: d.cumulative_percent[::step] for d in ev.dvhs}
        goal_rows = [{"structure": g["structure"], "metric": g["metric"], "value": g["value"], "unit": g["unit"],
                      "goal": g["goal"], "passed": g["passed"]} for g in ev.goal_results]
        metric_rows = [{"structure": r["structure"], "metric": r["metric"], "value": r["value"], "unit": r["unit"],
                        "goal": "", "passed": None} for r in ev.metric_rows()]
        return bins, curves, goal_rows + metric_rows + rows, ev.n_goals_failed


def optimizer_goals(goal_set, prescription_Gy, target, organs):
    """:class:`optimizer.Goals` from the goals of a :class:`goals.GoalSet` that the optimiser can aim at.

    Target: ``V100 >= x%``, ``D90 >= x% | Gy``, ``V150 <= x%``, ``V200 <= x%``; organs: ``Dmax``,
    ``D2cc``, ``D0.1cc <= x Gy | %``. Every other goal is still checked in the metrics table.
    Without a goal set (or with nothing that maps) the optimiser's defaults apply.
    """
    from ..planning.problem import Goals, OARConstraint
    rx = float(prescription_Gy)
    kw = {}
    oars = []
    names = [target] + list(organs)
    if goal_set is not None:
        entry = goal_set.entry_for(target, names)
        for g in (entry.goals if entry is not None else []):
            m, up = g.metric.name, g.op in (">=", ">")
            if m == "V100" and up and g.unit == "%":
                kw["v100_min"] = g.limit / 100.0
            elif m == "D90" and up and g.unit in ("%rx", "Gy"):
                kw["d90_min_frac"] = g.limit / 100.0 if g.unit == "%rx" else g.limit / rx
            elif m in ("V150", "V200") and not up and g.unit == "%":
                kw["v150_max" if m == "V150" else "v200_max"] = g.limit / 100.0
        for organ in organs:
            entry = goal_set.entry_for(organ, names)
            limits = {}
            for g in (entry.goals if entry is not None else []):
                key = {"Dmax": "dmax_Gy", "D2cc": "d2cc_Gy", "D0.1cc": "d0_1cc_Gy"}.get(g.metric.name)
                if key and g.op in ("<=", "<") and g.unit in ("Gy", "%rx"):
                    limits[key] = g.limit if g.unit == "Gy" else g.limit / 100.0 * rx
            oars.append(OARConstraint(organ, **limits) if limits else organ)
    else:
        oars = list(organs)
    return Goals(rx, oars=[o for o in oars if not isinstance(o, str)], **kw), oars


# ------------------------------------------------------------------------------------------------
# needles as nodes
# ------------------------------------------------------------------------------------------------
def needle_to_node(scene, needle, locked=False, node=None):
    """Line node (straight) or curve node (curved catheter) of a :class:`needles.Needle` or (entry, tip)."""
    curved = bool(getattr(needle, "curved", False))
    number = int(getattr(needle, "number", 0) or 0)
    if curved:
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", f"Needle {number}")
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetPointLabelsVisibility(False)
        import slicer  # noqa: PLC0415
        slicer.util.updateMarkupsControlPointsFromArray(node, np.asarray(needle.control_points, float))
        node.SetAttribute(ma.NEEDLE_NUMBER_ATTRIBUTE, str(number))
        node.SetAttribute(ma.ROLE_ATTRIBUTE, "Needle")
        node.SetLocked(bool(locked))
    else:
        entry, tip = ma.needle_endpoints(needle)
        node = ma.needle_line_node(scene, entry, tip, number, locked, node)
    if hasattr(needle, "to_dict"):
        node.SetName(f"Needle {number}" + (f" ({needle.name})" if needle.name and needle.name != f"N{number}" else ""))
        node.SetAttribute(NEEDLE_DATA_ATTRIBUTE, json.dumps(needle.to_dict()))
    return node


def node_to_needle(node):
    """A :class:`needles.Needle` from a needle node (end points from the node, the rest from its data)."""
    from ..planning.needles import Needle
    import slicer  # noqa: PLC0415
    data = json.loads(node.GetAttribute(NEEDLE_DATA_ATTRIBUTE) or "{}")
    number = int(node.GetAttribute(ma.NEEDLE_NUMBER_ATTRIBUTE) or data.get("number", 0) or 0)
    pts = slicer.util.arrayFromMarkupsControlPoints(node)
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


def _rotation_between(a, b):
    """Rotation matrix turning unit vector ``a`` onto unit vector ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-12:
        if c > 0:
            return np.eye(3)
        axis = ma.axis_to_orientation(a)[:, 0]
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1.0 / (1.0 + c))


# ------------------------------------------------------------------------------------------------
# the plan scene
# ------------------------------------------------------------------------------------------------
class PlanScene:
    """The nodes of one plan in a scene, with dose, isodose, DVH and metrics kept up to date."""

    def __init__(self, ctx, parameter_node=None):
        self.ctx = ctx
        self.scene = ctx.scene
        self.params = PlanParameters(parameter_node) if parameter_node is not None else PlanParameters.create(ctx.scene)
        self.dose_grid = None
        self.goals = None
        self.model_dirs = ()
        self._evaluation = None
        self._observations = []
        self._needle_state = {}
        self._study = 0
        self.plan = None
        self._static_dose = None
        self._dirty_seeds = False
        self._busy = False
        self.schedule = None
        self.on_updated = None
        self.last_update = {}

    # -- scene layout ------------------------------------------------------------------------------
    def study_item(self):
        """The plan's subject hierarchy study item (the one holding its nodes; created on first use)."""
        for role in ("ctVolume", "doseVolume", "seedsNode", "segmentation"):
            node = self.params.get_node(role)
            item = ma.study_of(self.scene, node) if node is not None else 0
            if item:
                return item
        if not self._study:
            self._study = ma.ensure_study(self.scene)
        return self._study

    def _folder(self, name):
        sh = ma.subject_hierarchy(self.scene)
        study = self.study_item()
        for child in _children(sh, study):
            if sh.GetItemName(child) == name and sh.GetItemDataNode(child) is None:
                return child
        return sh.CreateFolderItem(study, name)

    # -- inputs ------------------------------------------------------------------------------------
    def set_ct(self, array, geometry: ImageGeometry, name="CT"):
        """Add (or update) the CT volume node."""
        node = ma.add_scalar_volume(self.scene, array, geometry, name, self.params.get_node("ctVolume"))
        ma.set_ct_display(node)
        self.params.set_node("ctVolume", node)
        ma.place_in_study(self.scene, node, self.study_item())
        return node

    def set_segmentation(self, seg, name="Segmentation"):
        """Use a segmentation node, or build one from a :class:`segio.Segmentation`."""
        if hasattr(seg, "GetSegmentation"):
            node = seg
        else:
            node = ma.segmentation_from_segio(self.scene, seg, name, self.params.get_node("ctVolume"))
        self.params.set_node("segmentation", node)
        ma.place_in_study(self.scene, node, self.study_item())
        self._evaluation = None
        return node

    def set_roles(self, target, organs=(), forbidden=()):
        """Target, organs at risk and forbidden structures, by segment name or ID."""
        seg = self.params.get_node("segmentation")
        if seg is None:
            raise InputError("set a segmentation before choosing the target and organs")
        ids = ma.segment_ids(seg)

        def sid(x):
            return x if x in ids else ma.segment_id_by_name(seg, x)
        self.params.set("targetSegmentId", sid(target))
        self.params.set_string_list("organSegmentIds", [sid(o) for o in organs])
        self.params.set_string_list("forbiddenSegmentIds", [sid(o) for o in forbidden])
        self._evaluation = None

    def set_prescription(self, prescription_Gy):
        """Prescription dose (Gy)."""
        rx = float(prescription_Gy)
        if not math.isfinite(rx) or rx <= 0:
            raise InputError(f"prescription must be a positive dose in Gy, got {prescription_Gy!r}")
        self.params.set("prescriptionDoseGy", rx)
        self._evaluation = None

    def set_goals(self, goals):
        """Goal set (:class:`goals.GoalSet`) for pass/fail in the metrics table (None: no goals)."""
        self.goals = goals
        self._evaluation = None

    # -- needles and seeds ---------------------------------------------------------------------------
    def set_needles(self, needles, locked=None):
        """One markups node per needle (numbered), in the "Needles" folder; returns the nodes."""
        locked = self.params.get("needlesLocked") if locked is None else bool(locked)
        old = self.params.get_node_list("needleNodes")
        folder = self._folder("Needles")
        sh = ma.subject_hierarchy(self.scene)
        nodes = []
        for i, needle in enumerate(needles):
            if getattr(needle, "number", None) is None:
                entry, tip = ma.needle_endpoints(needle)
                needle = _Pair(i + 1, entry, tip)
            reuse = old[i] if i < len(old) and old[i].IsA(
                "vtkMRMLMarkupsCurveNode" if getattr(needle, "curved", False) else "vtkMRMLMarkupsLineNode") else None
            node = needle_to_node(self.scene, needle, locked, reuse)
            sh.SetItemParent(sh.GetItemByDataNode(node) or sh.CreateItem(folder, node), folder)
            nodes.append(node)
        for extra in old:
            if extra not in nodes:
                self.scene.RemoveNode(extra)
        self.params.set_node_list("needleNodes", nodes)
        self.params.set("needlesLocked", bool(locked))
        self._remember_needles()
        return nodes

    def needles(self, skip_incomplete=False):
        """The plan's needles (:class:`needles.Needle`) read back from their nodes.

        With ``skip_incomplete`` a needle still being placed (fewer than 2 points) is left out.
        """
        nodes = self.params.get_node_list("needleNodes")
        if skip_incomplete:
            nodes = [n for n in nodes if n.GetNumberOfControlPoints() >= 2]
        return [node_to_needle(n) for n in nodes]

    def add_needle_node(self):
        """A new, empty needle line node (next number) for placing a free-hand needle: entry, then tip."""
        nodes = self.params.get_node_list("needleNodes")
        number = 1 + max([int(n.GetAttribute(ma.NEEDLE_NUMBER_ATTRIBUTE) or 0) for n in nodes] + [0])
        node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"Needle {number}")
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetPropertiesLabelVisibility(False)
        display.SetPointLabelsVisibility(False)
        node.SetAttribute(ma.NEEDLE_NUMBER_ATTRIBUTE, str(number))
        node.SetAttribute(ma.ROLE_ATTRIBUTE, "Needle")
        sh = ma.subject_hierarchy(self.scene)
        folder = self._folder("Needles")
        sh.SetItemParent(sh.GetItemByDataNode(node) or sh.CreateItem(folder, node), folder)
        self.params.set_node_list("needleNodes", nodes + [node])
        return node

    def set_needles_locked(self, locked):
        """Lock or unlock every needle node."""
        ma.set_needles_locked(self.params.get_node_list("needleNodes"), locked)
        self.params.set("needlesLocked", bool(locked))

    def set_seeds(self, seeds: SeedSet, needle_numbers=None):
        """Write the seeds into the plan's fiducial node (created on first use)."""
        node = ma.seeds_to_fiducial_node(self.scene, seeds, self.params.get_node("seedsNode"),
                                         needle_numbers=needle_numbers)
        self.params.set_node("seedsNode", node)
        ma.place_in_study(self.scene, node, self.study_item())
        return node

    def seeds(self):
        """(SeedSet, needle numbers) of the seeds node."""
        node = self.params.get_node("seedsNode")
        if node is None:
            return SeedSet(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), []), np.zeros(0, int)
        return ma.fiducial_node_to_seeds(node)

    # -- dose --------------------------------------------------------------------------------------
    def dose_geometry(self, spacing_mm=None, margin_mm=None):
        """Dose grid: the target's box plus a margin, at ``spacing_mm``, oriented as the CT."""
        spacing = float(self.params.get("doseGridSpacingMm") if spacing_mm is None else spacing_mm)
        margin = float(self.params.get("doseMarginMm") if margin_mm is None else margin_mm)
        ct = self.params.get_node("ctVolume")
        seg = self.params.get_node("segmentation")
        target = self.params.get("targetSegmentId")
        if seg is not None and target:
            s = ma.segment_structure(seg, target)
            idx = np.argwhere(s.mask)[:, ::-1]
            corners = s.geometry.ijk_to_ras(np.array([idx.min(axis=0), idx.max(axis=0)], float))
            lo, hi = corners.min(axis=0), corners.max(axis=0)
        else:
            seeds, _ = self.seeds()
            if not len(seeds):
                raise InputError("no target and no seeds: cannot place the dose grid")
            lo, hi = seeds.positions.min(axis=0), seeds.positions.max(axis=0)
        if ct is not None:
            ref = ma.geometry_from_volume(ct)
            return ref.cropped_to_box(lo, hi, spacing=spacing, margin_mm=margin)
        return ImageGeometry.from_bounds(lo - margin, hi + margin, spacing)

    def compute_dose(self, geometry: ImageGeometry | None = None, method=None, progress=None):
        """Full dose computation on ``geometry`` (default :meth:`dose_geometry`) and refresh of all outputs."""
        from ..physics.dose import DoseGrid
        seeds, _ = self.seeds()
        if not len(seeds):
            raise InputError("the plan has no seeds: nothing to compute")
        geometry = geometry or self.dose_geometry()
        method = method or self.params.get("doseEngine")
        sub = _progress.scaled(progress, 0.0, 0.85)
        self.dose_grid = DoseGrid(geometry, seeds, method=method, model_dirs=self.model_dirs, progress=sub)
        self._evaluation = None
        self.refresh_outputs(progress=_progress.scaled(progress, 0.85, 1.0))
        return self.dose_grid

    def use_dose(self, dose_Gy, geometry: ImageGeometry):
        """Show a dose computed elsewhere (no live updates until :meth:`compute_dose`)."""
        self.dose_grid = None
        self._static_dose = (np.asarray(dose_Gy, float), geometry)
        self.refresh_outputs()

    def dose_array(self):
        """(dose Gy array, geometry) currently shown."""
        if self.dose_grid is not None:
            return self.dose_grid.dose_Gy(), self.dose_grid.geometry
        static = self._static_dose
        if static is None:
            raise InputError("no dose computed yet")
        return static

    # -- outputs -----------------------------------------------------------------------------------
    def _evaluator(self):
        if self._evaluation is None:
            seg = self.params.get_node("segmentation")
            structures, roles = [], []
            if seg is not None:
                target = self.params.get("targetSegmentId")
                if target:
                    structures.append(ma.segment_structure(seg, target))
                    roles.append("target")
                for sid in self.params.get_string_list("organSegmentIds"):
                    structures.append(ma.segment_structure(seg, sid))
                    roles.append("oar")
            self._evaluation = Evaluation(structures, roles, self.params.get("prescriptionDoseGy"), self.goals)
        return self._evaluation

    def refresh_outputs(self, progress=None, isodoses=True, evaluation=True):
        """Update dose volume, isodose models, DVH and metrics tables from the current dose."""
        import time
        t0 = time.perf_counter()
        dose, geometry = self.dose_array()
        rx = self.params.get("prescriptionDoseGy")
        timing = {}
        dose_node = ma.update_dose_volume(self.scene, dose, geometry, rx, self.params.get_node("doseVolume"),
                                          study_item=self.study_item(), color_node=self.params.get_node("doseColorTable"))
        if self.params.get_node("doseVolume") is None:
            self.params.set_node("doseVolume", dose_node)
            self.params.set_node("doseColorTable", self.scene.GetNodeByID(dose_node.GetDisplayNode().GetColorNodeID()))
            ma.place_in_study(self.scene, dose_node, self.study_item())
        timing["dose_volume_s"] = time.perf_counter() - t0
        _progress.report(progress, 0.2, "dose volume")
        if isodoses:
            t = time.perf_counter()
            old = self.params.get_node_list("isodoseModels")
            folder = self._folder("Isodose surfaces") if not old else 0
            models = ma.update_isodose_models(self.scene, dose, geometry, rx, self.params.isodose_levels(), old,
                                              folder_item=folder)
            self.params.set_node_list("isodoseModels", models)
            timing["isodoses_s"] = time.perf_counter() - t
        _progress.report(progress, 0.6, "isodose surfaces")
        ev = self._evaluator()
        if evaluation and ev.structures:
            t = time.perf_counter()
            bins, curves, rows, failed = ev.evaluate(dose, geometry)
            colors = {s.name: s.color for s in ev.structures}
            table, chart = ma.update_dvh_nodes(self.scene, bins, curves, self.params.get_node("dvhTable"),
                                               self.params.get_node("dvhChart"), colors, rx)
            metrics = ma.update_metrics_table(self.scene, rows, self.params.get_node("metricsTable"))
            for role, n in (("dvhTable", table), ("dvhChart", chart), ("metricsTable", metrics)):
                if self.params.get_node(role) is None:
                    self.params.set_node(role, n)
                    ma.place_in_study(self.scene, n, self.study_item())
            timing["evaluation_s"] = time.perf_counter() - t
            self.last_update["failed_goals"] = failed
        _progress.report(progress, 1.0, "evaluation")
        timing["total_s"] = time.perf_counter() - t0
        self.last_update.update(timing)
        if self.on_updated is not None:
            self.on_updated(self)
        return timing

    # -- live updates ------------------------------------------------------------------------------
    def start_live_updates(self, schedule=None):
        """Observe the seeds and needle nodes; edits in the views update dose and outputs."""
        self.stop_live_updates()
        self.schedule = schedule
        seeds = self.params.get_node("seedsNode")
        if seeds is not None:
            for ev in (seeds.PointModifiedEvent, seeds.PointAddedEvent, seeds.PointRemovedEvent):
                self._observations.append((seeds, seeds.AddObserver(ev, self._on_seeds_event)))
        for node in self.params.get_node_list("needleNodes"):
            self._observations.append((node, node.AddObserver(node.PointModifiedEvent, self._on_needle_event)))
        self._observations.append((self.scene, self.scene.AddObserver(self.scene.StartCloseEvent,
                                                                      lambda *a: self.stop_live_updates())))
        self._remember_needles()

    def stop_live_updates(self):
        """Remove the observers."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []

    def _remember_needles(self):
        self._needle_state = {}
        for node in self.params.get_node_list("needleNodes"):
            if node.GetNumberOfControlPoints() >= 2:
                self._needle_state[node.GetID()] = (np.array(node.GetNthControlPointPosition(0)),
                                                    np.array(node.GetNthControlPointPosition(
                                                        node.GetNumberOfControlPoints() - 1)))

    def _on_seeds_event(self, caller, event):
        if self._busy:
            self._dirty_seeds = True
            return
        self._request_update()

    def _request_update(self):
        self._dirty_seeds = True
        if self.schedule is None:
            self._update_from_event()
        else:
            self.schedule(self._update_from_event)

    def _update_from_event(self):
        """update_from_seeds for an observer: bad input (a half-edited seed) is logged, not raised into VTK."""
        try:
            return self.update_from_seeds()
        except SeedPlanError as exc:
            self.last_update = {"error": str(exc)}
            logging.getLogger(__name__).warning("plan not updated: %s", exc)
            return None

    def _on_needle_event(self, caller, event):
        if self._busy:
            return
        self.move_seeds_with_needle(caller)

    def move_seeds_with_needle(self, needle_node):
        """Move the seeds of ``needle_node`` with it (same distance from the tip, axis along it)."""
        old = self._needle_state.get(needle_node.GetID())
        n = needle_node.GetNumberOfControlPoints()
        if old is None or n < 2:
            self._remember_needles()
            return
        new_entry = np.array(needle_node.GetNthControlPointPosition(0))
        new_tip = np.array(needle_node.GetNthControlPointPosition(n - 1))
        old_entry, old_tip = old
        if np.allclose(new_entry, old_entry) and np.allclose(new_tip, old_tip):
            return
        number = int(needle_node.GetAttribute(ma.NEEDLE_NUMBER_ATTRIBUTE) or 0)
        seeds_node = self.params.get_node("seedsNode")
        self._needle_state[needle_node.GetID()] = (new_entry, new_tip)
        if seeds_node is None or number <= 0:
            return
        rot = _rotation_between(old_tip - old_entry, new_tip - new_entry)
        self._busy = True
        try:
            import slicer  # noqa: PLC0415
            with slicer.util.NodeModify(seeds_node):
                for i in range(seeds_node.GetNumberOfControlPoints()):
                    fields = ma.parse_seed_description(seeds_node.GetNthControlPointDescription(i))
                    if int(fields.get("needle", "0") or 0) != number:
                        continue
                    p = np.array(seeds_node.GetNthControlPointPosition(i))
                    seeds_node.SetNthControlPointPosition(i, *(new_tip + rot @ (p - old_tip)))
                    m = np.array(seeds_node.GetNthControlPointOrientationMatrix(i)).reshape(3, 3)
                    seeds_node.SetNthControlPointOrientationMatrix(i, (rot @ m).ravel().tolist())
        finally:
            self._busy = False
        self._request_update()

    def update_from_seeds(self):
        """Bring the dose up to date with the seeds node (incremental where possible), then the outputs."""
        if not self._dirty_seeds:
            return None
        self._dirty_seeds = False
        if self.dose_grid is None:
            return None
        self._busy = True
        try:
            seeds, _ = self.seeds()
            kind = self.sync_dose_grid(seeds)
        finally:
            self._busy = False
        if kind is None:
            return None
        return self.refresh_outputs()

    def sync_dose_grid(self, seeds: SeedSet):
        """Apply the difference between the dose grid's seeds and ``seeds`` (move/add/remove, else full).

        Returns what was done ("moved 1", "added 2", "removed 1", "full") or None when nothing changed.
        """
        import time
        t = time.perf_counter()
        grid = self.dose_grid
        old = grid.seeds
        n_old, n_new = len(old), len(seeds)
        same_source = (n_old == n_new and np.allclose(old.strengths_U, seeds.strengths_U)
                       and list(old.models) == list(seeds.models))
        kind = "full"
        if same_source:
            moved = np.flatnonzero(np.any(np.abs(old.positions - seeds.positions) > 1e-9, axis=1)
                                   | np.any(np.abs(old.axes - seeds.axes) > 1e-9, axis=1))
            if len(moved) == 0:
                return None
            if len(moved) <= max(8, n_new // 10):
                for i in moved:
                    grid.move_seed(int(i), seeds.positions[i], seeds.axes[i])
                kind = f"moved {len(moved)}"
        elif n_new > n_old and _prefix_equal(old, seeds, n_old):
            for i in range(n_old, n_new):
                grid.add_seed(seeds.positions[i], seeds.axes[i], seeds.strengths_U[i], seeds.models[i])
            kind = f"added {n_new - n_old}"
        elif n_new == n_old - 1:
            gone = _removed_index(old, seeds)
            if gone is not None:
                grid.remove_seed(gone)
                kind = "removed 1"
        if kind == "full":
            if n_new:
                grid.set_seeds(seeds)
            else:
                for i in range(n_old - 1, -1, -1):
                    grid.remove_seed(i)
        self.last_update = {"dose_edit": kind, "dose_s": time.perf_counter() - t}
        return kind

    # -- planning (the library's pipeline on the scene's segments) ------------------------------------
    def seed_strength_U(self):
        """Air-kerma strength per seed (U) at the implant date, from the source parameters."""
        from ..physics.sources import get_model
        from ..physics.strength import strength_at
        model = get_model(self.params.get("seedModel"), self.model_dirs)
        ref = self.params.get("referenceDate") or None
        implant = self.params.get("implantDate") or None
        return strength_at(model, self.params.get("strengthValue"), self.params.get("strengthUnit"), ref, implant)

    def reference_geometry(self):
        """Grid the segments are sampled on for planning: the CT's, else the target segment's own."""
        ct = self.params.get_node("ctVolume")
        if ct is not None:
            return ma.geometry_from_volume(ct)
        seg, target = self.params.get_node("segmentation"), self.params.get("targetSegmentId")
        if seg is None or not target:
            raise InputError("choose a CT or a segmentation with a target segment first")
        return ma.segment_structure(seg, target).geometry

    def masks_on(self, geometry, segment_ids):
        """``{segment name: mask on geometry}`` for ``segment_ids`` of the plan's segmentation."""
        from ..evaluation.structures import mask_on_grid
        seg = self.params.get_node("segmentation")
        if seg is None:
            raise InputError("no segmentation chosen")
        out = {}
        for sid in segment_ids:
            s = ma.segment_structure(seg, sid)
            out[s.name] = mask_on_grid(s, geometry)
        return out

    def _names(self, ids):
        seg = self.params.get_node("segmentation")
        return [seg.GetSegmentation().GetSegment(i).GetName() for i in ids]

    def plan_implant(self, needle_mode="template", direction="P", template_spacing_mm=10.0, needles=None,
                     approach=None, method="anneal", time_limit_s=8.0, goals=None, progress=None):
        """Inverse planning (:func:`pipeline.plan_from_masks`): needles, seed loading, dose; returns the Plan.

        ``needle_mode``: "template", "fan" or "freehand" (``needles``, default: the plan's needle nodes).
        ``goals`` (:class:`optimizer.Goals`) default to :func:`optimizer_goals` of the plan's goal set.
        """
        from ..planning.pipeline import plan_from_masks
        target = self.params.get("targetSegmentId")
        if not target:
            raise InputError("choose the target segment first")
        organs = self.params.get_string_list("organSegmentIds")
        forbidden = self.params.get_string_list("forbiddenSegmentIds")
        geometry = self.reference_geometry()
        masks = self.masks_on(geometry, [target] + organs + forbidden)
        if needle_mode == "freehand" and needles is None:
            needles = self.needles()
            if not needles:
                raise InputError("free-hand planning needs needles: add needle lines first")
        ref, implant = self.params.get("referenceDate") or None, self.params.get("implantDate") or None
        target_name, organ_names = self._names([target])[0], self._names(organs)
        rx = self.params.get("prescriptionDoseGy")
        oars = organ_names
        if goals is None and self.goals is not None:
            goals, oars = optimizer_goals(self.goals, rx, target_name, organ_names)
        plan = plan_from_masks(geometry, masks, target_name, oars=oars,
                               forbidden=self._names(forbidden), model_id=self.params.get("seedModel"),
                               strength=self.params.get("strengthValue"), strength_unit=self.params.get("strengthUnit"),
                               reference_date=ref, implant_date=implant,
                               prescription_Gy=rx, goals=goals,
                               needle_mode=needle_mode, direction=direction, template_spacing_mm=template_spacing_mm,
                               needles=needles, approach=approach, method=method, time_limit_s=time_limit_s,
                               progress=_progress.scaled(progress, 0.0, 0.75))
        self.plan = plan
        used = {int(n) for n in plan.seed_needle if n > 0}
        self.set_needles([n for n in plan.needles if n.number in used] or plan.needles)
        self.set_seeds(plan.seeds, plan.seed_needle)
        self.compute_dose(progress=_progress.scaled(progress, 0.75, 1.0))
        return plan

    def load_seeds_uniformly(self, spacing_mm=None, progress=None):
        """Seeds every ``spacing_mm`` along the plan's needles inside the target (no optimisation)."""
        from ..planning.loading import LoadingRules, TargetRegion, candidate_positions, uniform_loading
        needles = self.needles()
        if not needles:
            raise InputError("no needles: add or generate needles before loading seeds")
        target = self.params.get("targetSegmentId")
        if not target:
            raise InputError("choose the target segment first")
        s = ma.segment_structure(self.params.get_node("segmentation"), target)
        rules = LoadingRules(spacing_mm=float(spacing_mm or self.params.get("seedSpacingMm")))
        cands = candidate_positions(needles, TargetRegion(s.mask, s.geometry), rules)
        if not len(cands):
            raise InputError("no seed position of the needles lies inside the target")
        chosen = uniform_loading(cands, rules)
        idx = np.flatnonzero(chosen) if chosen.dtype == bool else np.asarray(chosen, int)
        seeds = SeedSet(cands.positions[idx], cands.axes[idx], self.seed_strength_U(), self.params.get("seedModel"))
        numbers = np.array([needles[i].number for i in cands.needle_index[idx]])
        self.set_seeds(seeds, numbers)
        self.compute_dose(progress=progress)
        return seeds

    def needle_obstacles(self, margin_mm=5.0):
        """Needle x forbidden-structure hits (:class:`obstacles.Hit`) of the plan's needles."""
        from ..planning.obstacles import obstacle_map_for
        forbidden = self.params.get_string_list("forbiddenSegmentIds")
        needles = self.needles()
        if not forbidden or not needles:
            return []
        geometry = self.reference_geometry()
        omap = obstacle_map_for(geometry, self.masks_on(geometry, forbidden), margin_mm, needles)
        return omap.check_all(needles)

    def seed_summary(self):
        """{'count', 'total_U', 'total_mCi' (None when no conversion)} of the seeds node."""
        from ..physics.sources import get_model
        seeds, _ = self.seeds()
        total = float(seeds.strengths_U.sum()) if len(seeds) else 0.0
        mci = 0.0
        for m, idx in seeds.model_groups().items():
            factor = get_model(m, self.model_dirs).u_per_mci
            if factor is None:
                mci = None
                break
            mci += float(seeds.strengths_U[idx].sum()) / factor
        return {"count": len(seeds), "total_U": total, "total_mCi": mci}

    def write_report(self, path, pdf_path=None):
        """HTML report (and PDF) of the current dose and evaluation (:func:`report.write_report`)."""
        from ..reporting.report import write_report
        ev = self._evaluator()
        dose, geometry = self.dose_array()
        ev.evaluate(dose, geometry)
        if ev.result is None:
            raise InputError("nothing to report: choose a target segment and compute the dose")
        sub, _ = ev.crop(dose, geometry, ev.structures)
        ct_node = self.params.get_node("ctVolume")
        ct = (ma.volume_array(ct_node), ma.geometry_from_volume(ct_node)) if ct_node is not None else None
        seeds, _ = self.seeds()
        plan = self.plan.to_dict() if getattr(self, "plan", None) is not None else None
        return write_report(path, ev.result, sub, structures=ev.structures, plan=plan, seeds=seeds, ct=ct,
                            pdf_path=pdf_path)

    # -- files ---------------------------------------------------------------------------------------
    def save(self, path):
        """Write the whole plan scene to a .mrb bundle; returns its path."""
        return self.ctx.save_mrb(path)

    def write_pictures(self, out_dir, prefix="plan", size=(512, 512), views=None):
        """PNG pictures (axial, sagittal, coronal, 3d) of the plan; returns {view: path}."""
        from . import render
        return render.write_plan_pictures(
            self.ctx, out_dir, ct_node=self.params.get_node("ctVolume"), dose_node=self.params.get_node("doseVolume"),
            segmentation_node=self.params.get_node("segmentation"), seeds_node=self.params.get_node("seedsNode"),
            needle_nodes=self.params.get_node_list("needleNodes"),
            isodose_nodes=self.params.get_node_list("isodoseModels"), size=size,
            views=views or render.VIEWS, prefix=prefix, segments_3d=self.segments_in_use())

    def segments_in_use(self):
        """IDs of the target, organ-at-risk and forbidden segments."""
        target = self.params.get("targetSegmentId")
        return ([target] if target else []) + self.params.get_string_list("organSegmentIds") + \
            self.params.get_string_list("forbiddenSegmentIds")


class _Pair:
    """A straight needle given only by its end points."""

    curved = False

    def __init__(self, number, entry, tip):
        self.number, self.entry, self.tip = number, entry, tip


def _children(sh, item):
    import vtk  # noqa: PLC0415
    ids = vtk.vtkIdList()
    sh.GetItemChildren(item, ids)
    return [ids.GetId(i) for i in range(ids.GetNumberOfIds())]


def _prefix_equal(a: SeedSet, b: SeedSet, n):
    return (np.allclose(a.positions[:n], b.positions[:n]) and np.allclose(a.axes[:n], b.axes[:n])
            and np.allclose(a.strengths_U[:n], b.strengths_U[:n]) and list(a.models[:n]) == list(b.models[:n]))


def _removed_index(old: SeedSet, new: SeedSet):
    """Index of the one seed of ``old`` missing from ``new`` (order kept), or None."""
    n = len(new)
    for i in range(len(old)):
        if i == n or not np.allclose(old.positions[i], new.positions[i]):
            keep = np.ones(len(old), bool)
            keep[i] = False
            rest = old.subset(keep)
            if np.allclose(rest.positions, new.positions) and np.allclose(rest.strengths_U, new.strengths_U):
                return i
            return None
    return None


# ------------------------------------------------------------------------------------------------
# one call for the command line
# ------------------------------------------------------------------------------------------------
def build_plan_scene(ctx, *, seeds: SeedSet, prescription_Gy, ct=None, segmentation=None, target=None, organs=(),
                     forbidden=(), needles=(), seed_needle_numbers=None, dose=None, dose_geometry=None,
                     dose_method="fast", isodose_levels_pct=ma.DEFAULT_ISODOSE_LEVELS_PCT, goals=None,
                     parameters=None, needles_locked=True, progress=None) -> PlanScene:
    """Build the whole plan in ``ctx``'s scene and compute or show its dose; returns the PlanScene.

    ``ct`` is (array, ImageGeometry); ``segmentation`` a :class:`segio.Segmentation`; ``target``,
    ``organs`` and ``forbidden`` segment names; ``needles`` :class:`needles.Needle` objects or
    (entry, tip) pairs; ``seed_needle_numbers`` the needle number of each seed (0 = none);
    ``dose`` an (array Gy, ImageGeometry) computed elsewhere, else the dose is computed on
    ``dose_geometry`` (default: target box + margin) with ``dose_method``; ``goals`` a
    :class:`goals.GoalSet`; ``parameters`` extra parameter-node values (see :data:`DEFAULTS`).
    """
    plan = PlanScene(ctx)
    for k, v in (parameters or {}).items():
        plan.params.set(k, v)
    plan.params.set("isodoseLevelsPercent", ", ".join(f"{float(v):g}" for v in isodose_levels_pct))
    plan.params.set("doseEngine", dose_method)
    plan.set_prescription(prescription_Gy)
    if ct is not None:
        plan.set_ct(*ct)
    if segmentation is not None:
        plan.set_segmentation(segmentation)
        if target is not None:
            plan.set_roles(target, organs, forbidden)
    if needles is not None and len(needles):
        plan.set_needles(needles, locked=needles_locked)
    plan.set_seeds(seeds, seed_needle_numbers)
    plan.set_goals(goals)
    if dose is not None:
        plan.use_dose(*dose)
    else:
        plan.compute_dose(dose_geometry, dose_method, progress=progress)
    return plan


def save_plan_scene(path, *, seeds: SeedSet, prescription_Gy, ct=None, segmentation=None, target=None, organs=(),
                    forbidden=(), needles=(), seed_needle_numbers=None, dose=None, dose_geometry=None,
                    dose_method="fast", isodose_levels_pct=ma.DEFAULT_ISODOSE_LEVELS_PCT, goals=None,
                    parameters=None, pictures_dir=None, picture_prefix="plan", progress=None) -> dict:
    """Save a whole plan as a Slicer scene bundle (.mrb), optionally with its PNG pictures.

    Arguments as :func:`build_plan_scene`. Returns ``{"mrb": Path, "pictures": {view: Path},
    "timing": {...}}`` (pictures empty without ``pictures_dir``).
    """
    from .scene import create_scene
    ctx = create_scene()
    try:
        plan = build_plan_scene(ctx, seeds=seeds, prescription_Gy=prescription_Gy, ct=ct, segmentation=segmentation,
                                target=target, organs=organs, forbidden=forbidden, needles=needles,
                                seed_needle_numbers=seed_needle_numbers, dose=dose, dose_geometry=dose_geometry,
                                dose_method=dose_method, isodose_levels_pct=isodose_levels_pct, goals=goals,
                                parameters=parameters, progress=_progress.scaled(progress, 0.0, 0.8))
        pictures = {}
        if pictures_dir is not None:
            pictures = plan.write_pictures(pictures_dir, prefix=picture_prefix)
        _progress.report(progress, 0.9, "saving the scene")
        mrb = plan.save(Path(path))
        _progress.report(progress, 1.0, "scene saved")
        return {"mrb": mrb, "pictures": pictures, "timing": dict(plan.last_update)}
    finally:
        ctx.close()
