"""The intra-operative state a saved scene holds, read back for the module's Intra-op panel and the web page.

A scene saved after an intra-operative review (``seedplan intraop`` / ``--register``, the module's
Intra-op panel, the web page's save) holds, besides the plan (:mod:`.plan_scene`):

- the intra-operative CT (role ``IntraopCT``; the file it was read from in the attribute
  ``SeedImplantPlanner.SourceFile`` when known), under the ``IntraopRegistration`` transform node
  when it was registered to the planning CT (:mod:`.intraop_registration`: the matrix and the
  registration's record: quality, warnings, options);
- the needles in place as found (line nodes, role ``FoundNeedle``, plan name in
  ``SeedImplantPlanner.NeedleName`` or the node name ``Found <name>``) and the implanted seeds found
  (``ImplantedSeeds``), in the plan's frame;
- after a re-plan, the deviation table (``NeedleDeviations``, the re-plan's advice in an attribute),
  the options table (``ReplanOptions``) and the plan-vs-now DVH chart (``DVHCompareChart``).

:func:`read_intraop_state` reads all of it in one place, so the module and the web page show a
re-opened scene as it was left (registration result, chosen CT, options, needles, deviations). A
registration transform whose record is missing, unreadable or no longer matches the matrix (edited
in the Transforms module) is kept as it is (the matrix is what the views show): the state says so
in ``problem`` and the registration's warnings, and its quality is reported as not checked.
:func:`show_found_needles` draws needles in place in that layout (used by both front ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import InputError
from . import intraop_registration as _reg
from .intraop_scene import ADVICE_ATTRIBUTE, FOUND_NEEDLE_COLOR, GOALS_MET_ATTRIBUTE, INTRAOP_CT_ROLE, SOURCE_FILE_ATTRIBUTE
from .markups import NEEDLE_NUMBER_ATTRIBUTE, needle_line_node
from .nodes import ROLE_ATTRIBUTE

FOUND_NEEDLE_ROLE = "FoundNeedle"
IMPLANTED_SEEDS_ROLE = "ImplantedSeeds"
NEEDLE_NAME_ATTRIBUTE = "SeedImplantPlanner.NeedleName"


def _nodes(scene, cls, role=None):
    out = []
    for i in range(scene.GetNumberOfNodesByClass(cls)):
        n = scene.GetNthNodeByClass(i, cls)
        if n is not None and (role is None or n.GetAttribute(ROLE_ATTRIBUTE) == role):
            out.append(n)
    return out


# -- needles in place ---------------------------------------------------------------------------------
def found_needle_nodes(scene):
    """The needles-in-place line nodes (role ``FoundNeedle``) of the scene."""
    return _nodes(scene, "vtkMRMLMarkupsLineNode", FOUND_NEEDLE_ROLE)


def show_found_needles(scene, needles, locked=False, slice_projection=False):
    """Draw ``needles`` (Needle objects, plan names) as orange line nodes ``Found <name>`` (role ``FoundNeedle``,
    plan number and name in attributes), replacing the earlier ones; returns the nodes. The module draws them
    unlocked (the user drags them to correct), the web page locked with their projection in the slice views."""
    for node in found_needle_nodes(scene):
        scene.RemoveNode(node)
    out = []
    for k, n in enumerate(needles, start=1):
        node = needle_line_node(scene, n.entry, n.tip, n.number, locked=locked, color=FOUND_NEEDLE_COLOR)
        node.SetName(f"Found {n.name}" if n.name else f"Found needle {k}")
        node.SetAttribute(ROLE_ATTRIBUTE, FOUND_NEEDLE_ROLE)
        node.SetAttribute(NEEDLE_NAME_ATTRIBUTE, n.name or "")
        if slice_projection:
            node.GetDisplayNode().SetSliceProjection(True)
            node.GetDisplayNode().SetSliceProjectionOpacity(0.8)
        out.append(node)
    return out


def needles_of_nodes(nodes):
    """Needles in place (Needle, kind "implanted", fixed) as the line nodes show them now (world coordinates);
    nodes without two points are skipped. Number: the plan's (attribute), else the order."""
    from ..planning.needles import Needle
    out = []
    for k, node in enumerate(nodes, start=1):
        if node.GetNumberOfControlPoints() < 2:
            continue
        entry = np.array(node.GetNthControlPointPositionWorld(0))
        tip = np.array(node.GetNthControlPointPositionWorld(1))
        if not (np.all(np.isfinite(entry)) and np.all(np.isfinite(tip))) or np.linalg.norm(tip - entry) < 1e-6:
            continue
        name = node.GetAttribute(NEEDLE_NAME_ATTRIBUTE) or node.GetName().replace("Found ", "", 1)
        try:
            number = int(node.GetAttribute(NEEDLE_NUMBER_ATTRIBUTE) or k)
        except ValueError:
            number = k
        out.append(Needle(number, entry, tip, name=name, kind="implanted", fixed=True))
    return out


# -- tables -----------------------------------------------------------------------------------------------
def table_rows(node):
    """Rows ({column: value}) of a table node; numbers as float, empty cells as ""."""
    from .tables import table_columns
    if node is None:
        return []
    cols = table_columns(node)
    n = max((len(v) for v in cols.values()), default=0)
    rows = []
    for r in range(n):
        row = {}
        for name, values in cols.items():
            v = values[r] if r < len(values) else ""
            row[name] = v if isinstance(v, str) else float(v)
        rows.append(row)
    return rows


# -- the whole state --------------------------------------------------------------------------------------
@dataclass
class IntraopState:
    """What a scene holds of an intra-operative review (see the module doc); empty fields when absent."""

    ct_node: object = None                 # the intra-operative CT volume node
    source_file: str = ""                  # the file it was read from, when recorded
    registration_node: object = None       # the IntraopRegistration transform node it lies under
    registration: object = None            # imaging.registration.RegistrationResult (None: scanner coordinates)
    record: str = "none"                   # registration_record status
    problem: str | None = None             # the registration record's problem (None when fine)
    needle_nodes: list = field(default_factory=list)
    needles: list = field(default_factory=list)    # planning.needles.Needle in world coordinates, plan names
    seeds_node: object = None              # implanted seeds found (fiducials)
    deviation_rows: list = field(default_factory=list)
    advice: str = ""                       # the re-plan's advice (goals met, or the option that would meet them)
    goals_met: bool | None = None          # whether the re-plan meets the goals (None: not recorded)
    option_rows: list = field(default_factory=list)
    dvh_chart: object = None
    notes: list = field(default_factory=list)      # other things the user should know (several CTs, ...)

    @property
    def empty(self) -> bool:
        return self.ct_node is None and not self.needle_nodes and self.seeds_node is None and not self.deviation_rows

    def options(self):
        """The registration's options as the panel's check boxes: {"bone_metric": bool, "translation_only": bool}."""
        r = self.registration if self.record == "stored" else None
        return {"bone_metric": bool(r is not None and r.metric == "bone"),
                "translation_only": bool(r is not None and r.translation_only)}

    def deviation_line(self):
        """The deviation table's one-line summary (as after the re-plan), or "" without a table."""
        from ..planning.intraop import deviation_line
        return deviation_line(self.deviation_rows) if self.deviation_rows else ""

    def summary(self):
        """One line: what was restored from the scene."""
        if self.empty:
            return ""
        parts = []
        if self.ct_node is not None:
            reg = ("registered to the planning CT" if self.record == "stored" else
                   "under a transform of unknown quality" if self.registration is not None else
                   "under a transform that is not rigid" if self.record == "unusable" else "not registered")
            parts.append(f"intra-op CT '{self.ct_node.GetName()}' {reg}")
        if self.needles and not self.deviation_rows:      # (else the deviation line counts them)
            parts.append(f"{len(self.needles)} needles in place")
        if self.seeds_node is not None:
            parts.append(f"{self.seeds_node.GetNumberOfControlPoints()} implanted seeds found")
        if self.deviation_rows:
            parts.append(self.deviation_line())
        if self.advice:
            parts.append(self.advice)
        text = "intra-operative review restored from the scene: " + "; ".join(parts)
        for extra in ([self.problem] if self.problem else []) + list(self.notes):
            text += f"; warning: {extra}"
        return text


def _intraop_ct_candidates(scene):
    """Volumes that are an intra-operative CT: role ``IntraopCT`` or lying under a registration node (web and module
    scenes of earlier versions carry no role), newest last."""
    transforms = {n.GetID() for n in _reg.registration_nodes(scene)}
    out = []
    for n in _nodes(scene, "vtkMRMLScalarVolumeNode"):
        if n.GetAttribute(ROLE_ATTRIBUTE) == INTRAOP_CT_ROLE or n.GetTransformNodeID() in transforms:
            out.append(n)
    return out


def read_intraop_state(scene, plan_ct=None):
    """The intra-operative review held by ``scene`` (:class:`IntraopState`); nothing in the scene changes.

    ``plan_ct``: the plan's CT node, never taken as the intra-operative CT. The CT chosen is the one
    under a registration node when there is one (the last added), else the last with the role. A CT
    under a non-rigid transform is reported in ``problem`` (its registration None)."""
    state = IntraopState()
    cts = [n for n in _intraop_ct_candidates(scene) if n is not plan_ct]
    registered = [n for n in cts if n.GetParentTransformNode() is not None]
    ct = (registered or cts or [None])[-1]
    if ct is not None:
        state.ct_node = ct
        state.source_file = ct.GetAttribute(SOURCE_FILE_ATTRIBUTE) or ""
        parent = ct.GetParentTransformNode()
        if parent is not None and parent.GetAttribute(ROLE_ATTRIBUTE) == _reg.REGISTRATION_ROLE:
            state.registration_node = parent
        try:
            state.registration, state.record, state.problem = _reg.registration_record(ct)
        except InputError as exc:
            state.record, state.problem = "unusable", str(exc)
        if len(cts) > 1:
            state.notes.append(f"the scene holds {len(cts)} intra-operative CTs ("
                               + ", ".join(f"'{n.GetName()}'" for n in cts) + f"): '{ct.GetName()}' is shown")
    for node in _reg.registration_nodes(scene):
        if ct is None or node is not ct.GetParentTransformNode():
            if not any(n.GetTransformNodeID() == node.GetID() for n in _nodes(scene, "vtkMRMLScalarVolumeNode")):
                state.notes.append(f"the registration '{node.GetName()}' has no CT under it")
    state.needle_nodes = found_needle_nodes(scene)
    state.needles = needles_of_nodes(state.needle_nodes)
    seeds = _nodes(scene, "vtkMRMLMarkupsFiducialNode", IMPLANTED_SEEDS_ROLE)
    state.seeds_node = seeds[-1] if seeds else None
    dev = _nodes(scene, "vtkMRMLTableNode", "NeedleDeviations")
    state.deviation_rows = table_rows(dev[-1]) if dev else []
    state.advice = (dev[-1].GetAttribute(ADVICE_ATTRIBUTE) or "") if dev else ""
    met = dev[-1].GetAttribute(GOALS_MET_ATTRIBUTE) if dev else None
    state.goals_met = None if met not in ("0", "1") else met == "1"
    opts = _nodes(scene, "vtkMRMLTableNode", "ReplanOptions")
    state.option_rows = table_rows(opts[-1]) if opts else []
    charts = _nodes(scene, "vtkMRMLPlotChartNode", "DVHCompareChart")
    state.dvh_chart = charts[-1] if charts else None
    return state
