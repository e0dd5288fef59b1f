"""The plan object kept in its scene: written when the scene is saved, rebuilt when it is opened again.

The nodes of a plan scene (:mod:`.plan_scene`: CT, segmentation, needles, seeds, dose) do not hold
everything a :class:`planning.planfile.Plan` is: the source (model, strength as entered, dates),
the loading rules, the goals the plan was made for, the needles without seeds, each seed's distance
from its needle's tip and whether it was already implanted, the optimizer's record. Without them
the intra-operative chain (web page) and the module's Intra-op steps cannot continue a re-opened
scene. So the plan's own file content (:meth:`Plan.to_dict`, the ``plan.json`` format, versioned)
is stored in the scene, as a text node:

- ``Plan record`` (role ``PlanRecord``, kind ``shown``): the plan the scene shows, with the seeds as
  the seeds node holds them when it was saved (:func:`plan_as_shown`: seeds moved, added or deleted in
  the views are taken in);
- ``Plan record (being implanted)`` (role ``PlanRecord``, kind ``original``): after an intra-operative
  re-plan, the plan being implanted (the scene shows the re-plan).

:func:`write_plan_records` writes them (replacing earlier ones); :meth:`plan_scene.PlanScene.save` calls
it, and so does a scene save started elsewhere (Slicer's File > Save: the plan scene observes the
scene's StartSaveEvent while its live updates run). :func:`read_plan_records` rebuilds the plans and
cross-checks the shown one against the nodes it refers to: the seeds node (count, positions within
:data:`SEED_TOLERANCE_MM`, needle numbers), the needle nodes (numbers, entry and tip), the prescription of
the parameter node and the structures the plan names in the segmentation. A scene without a record
(saved before it was kept, or by hand), with one that cannot be read (not JSON, another format, a newer
version) or that does not match its nodes gives no plan and one sentence naming the problem; nothing
in the scene is changed, the rest of the scene is used as it is.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from .nodes import ROLE_ATTRIBUTE

PLAN_RECORD_ROLE = "PlanRecord"
#: attribute of a plan record node: ``shown`` (the plan the scene shows) or ``original`` (the plan being implanted)
RECORD_KIND_ATTRIBUTE = "SeedImplantPlanner.PlanRecordKind"
RECORD_NAMES = {"shown": "Plan record", "original": "Plan record (being implanted)"}
#: largest distance (mm) between a seed of the record and the same seed of the seeds node: the plan file rounds to 1e-4 mm
SEED_TOLERANCE_MM = 0.01
#: largest distance (mm) between a needle end of the record and the needle node's
NEEDLE_TOLERANCE_MM = 0.01


def record_nodes(scene, kind=None):
    """The plan record text nodes of ``scene`` (of ``kind`` when given), in scene order."""
    out = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTextNode")):
        n = scene.GetNthNodeByClass(i, "vtkMRMLTextNode")
        if n is not None and n.GetAttribute(ROLE_ATTRIBUTE) == PLAN_RECORD_ROLE and \
                (kind is None or n.GetAttribute(RECORD_KIND_ATTRIBUTE) == kind):
            out.append(n)
    return out


def plan_as_shown(plan, seeds, numbers, prescription_Gy=None):
    """``plan`` with the seeds as a scene shows them (``seeds`` a SeedSet, ``numbers`` their needle numbers): the plan
    itself (a copy) when they are its seeds, else a copy whose seeds, needle numbers and distances from the tip are the
    scene's (numbers of needles the plan lacks become 0 = loose; already-implanted flags kept while the count is the
    same). ``prescription_Gy``: the scene's, when given."""
    out = copy.copy(plan)
    out.dose_grid = None
    out.evaluation = None
    numbers = np.asarray(numbers, int).reshape(-1) if len(numbers) else np.zeros(len(seeds), int)
    same = len(seeds) == len(plan.seeds) and (not len(seeds) or (
        np.abs(np.asarray(seeds.positions) - plan.seeds.positions).max() <= 1e-6
        and np.array_equal(numbers, plan.seed_needle)))
    if not same:
        known = {n.number for n in plan.needles}
        numbers = np.array([n if n in known else 0 for n in numbers], int)
        s_tip = np.full(len(seeds), np.nan)
        for i in range(len(seeds)):
            if numbers[i] > 0:
                needle = plan.needle_by_number(numbers[i])
                pts, depth = needle.sample_path(0.25)
                k = int(np.argmin(np.linalg.norm(pts - seeds.positions[i], axis=1)))
                s_tip[i] = needle.depth_mm - depth[k]
        fixed = plan.seed_fixed.copy() if len(plan.seed_fixed) == len(seeds) else np.zeros(len(seeds), bool)
        out.seeds, out.seed_needle, out.seed_s_from_tip_mm, out.seed_fixed = seeds, numbers, s_tip, fixed
        out.__post_init__()
    if prescription_Gy is not None:
        out.prescription_Gy = float(prescription_Gy)
    return out


def _set_record(scene, kind, plan, study_item=0):
    nodes = record_nodes(scene, kind)
    if plan is None:            # the plan being implanted is shown again: its record goes
        for n in nodes:
            scene.RemoveNode(n)
        return None
    node = nodes[0] if nodes else scene.AddNewNodeByClass("vtkMRMLTextNode", RECORD_NAMES[kind])
    for extra in nodes[1:]:
        scene.RemoveNode(extra)
    node.SetAttribute(ROLE_ATTRIBUTE, PLAN_RECORD_ROLE)
    node.SetAttribute(RECORD_KIND_ATTRIBUTE, kind)
    node.SetText(json.dumps(plan.to_dict(), sort_keys=True))
    if study_item:
        from .nodes import place_in_study
        place_in_study(scene, node, study_item)
    return node


def write_plan_records(plan_scene):
    """Record ``plan_scene.plan`` as the scene shows it (:func:`plan_as_shown`) and ``plan_scene.original_plan`` (the
    plan being implanted after a re-plan; None removes its record) in the scene. Without a plan (seeds placed by
    hand, or an opened scene whose record could not be used) the scene's records are left as they are, so a
    re-opened scene says the same. Returns {kind: node or None}."""
    ps = plan_scene
    scene = ps.scene
    if ps.plan is None:
        return {k: (record_nodes(scene, k) or [None])[0] for k in RECORD_NAMES}
    seeds, numbers = ps.seeds()
    shown = plan_as_shown(ps.plan, seeds, numbers, ps.params.get("prescriptionDoseGy"))
    study = ps.study_item()
    return {"shown": _set_record(scene, "shown", shown, study),
            "original": _set_record(scene, "original", getattr(ps, "original_plan", None), study)}


@dataclass
class PlanRecordState:
    """What :func:`read_plan_records` found: ``plan`` (the plan the scene shows) and ``original`` (the plan being
    implanted, after a re-plan) rebuilt, or None; ``status`` ``stored`` / ``missing`` / ``unreadable`` / ``mismatch``;
    ``problem``: one sentence when the plan could not be rebuilt (also when only the original's record is bad)."""

    plan: object = None
    original: object = None
    status: str = "missing"
    problem: str = ""

    def summary(self):
        """One line for a status label or the page's message."""
        if self.plan is None:
            return self.problem
        p = self.plan
        text = (f"plan rebuilt from the scene: {len(p.seeds)} seeds on {len(p.used_needles())} needles, "
                f"prescription {p.prescription_Gy:g} Gy")
        if self.original is not None:
            text += f"; the plan being implanted ({len(self.original.seeds)} seeds) kept beside the re-plan"
        return text + (f"; {self.problem}" if self.problem else "")


def _parse(node, where):
    from ..planning.planfile import Plan
    text = node.GetText() or ""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{where} is not valid JSON ({exc})") from exc
    return Plan.from_dict(doc, where)


def _segment_names(seg_node):
    if seg_node is None:
        return None
    seg = seg_node.GetSegmentation()
    return {seg.GetNthSegment(i).GetName().lower() for i in range(seg.GetNumberOfSegments())}


def _structure_problem(plan, seg_node, where):
    names = _segment_names(seg_node)
    if names is None:
        return None
    st = plan.structures or {}
    wanted = [st.get("target")] + list(st.get("oars") or []) + list(st.get("forbidden") or []) + \
        [t.get("name") for t in plan.targets or [] if isinstance(t, dict)]
    missing = [str(n) for n in dict.fromkeys(w for w in wanted if w) if str(n).lower() not in names]
    if missing:
        return (f"{where} names structure(s) {', '.join(repr(m) for m in missing)} that the scene's segmentation "
                f"'{seg_node.GetName()}' does not hold")
    return None


def check_plan_against_scene(plan, plan_scene, where="the plan record"):
    """The first way ``plan`` does not match the nodes of ``plan_scene`` it refers to (one sentence), or None."""
    ps = plan_scene
    seeds, numbers = ps.seeds()
    n = len(plan.seeds)
    if ps.params.get_node("seedsNode") is None and n:
        return f"{where} holds {n} seeds but the scene has no seeds node"
    if len(seeds) != n:
        return (f"{where} holds {n} seeds, the seeds node '{ps.params.get_node('seedsNode').GetName()}' "
                f"{len(seeds)}: the seeds were changed after the plan was recorded")
    if n:
        d = np.linalg.norm(np.asarray(seeds.positions) - plan.seeds.positions, axis=1)
        k = int(np.argmax(d))
        if d[k] > SEED_TOLERANCE_MM:
            return (f"{where}: seed {k + 1} lies {d[k]:.2f} mm from seed {k + 1} of the seeds node (more than "
                    f"{SEED_TOLERANCE_MM:g} mm): the seeds were changed after the plan was recorded")
        numbers = np.asarray(numbers, int).reshape(-1) if len(numbers) else np.zeros(n, int)
        bad = np.flatnonzero(numbers != plan.seed_needle)
        if len(bad):
            k = int(bad[0])
            return (f"{where}: seed {k + 1} is on needle {int(plan.seed_needle[k])} in the record but on needle "
                    f"{int(numbers[k])} in the seeds node")
    rx = ps.params.get("prescriptionDoseGy")
    if rx is not None and abs(float(rx) - plan.prescription_Gy) > 1e-9 * max(1.0, abs(plan.prescription_Gy)):
        return (f"{where} prescribes {plan.prescription_Gy:g} Gy, the scene's parameters {float(rx):g} Gy: the "
                "prescription was changed after the plan was recorded")
    nodes = ps.params.get_node_list("needleNodes")
    if nodes:
        by_number = {}
        for node in nodes:
            try:
                needle = _needle_of_node(node)
            except InputError:
                continue
            by_number[needle.number] = needle
        for number, needle in sorted(by_number.items()):
            try:
                own = plan.needle_by_number(number)
            except InputError:
                return f"{where} has no needle number {number}, but the scene's needle nodes have"
            far = max(float(np.linalg.norm(own.tip - needle.tip)), float(np.linalg.norm(own.entry - needle.entry)))
            if far > NEEDLE_TOLERANCE_MM:
                return (f"{where}: needle {number} ('{own.name}') lies {far:.2f} mm from the scene's needle node: the "
                        "needles were moved after the plan was recorded")
    return _structure_problem(plan, ps.params.get_node("segmentation"), where)


def _needle_of_node(node):
    """The needle a needle node shows (:func:`markups.node_to_needle`)."""
    from .markups import node_to_needle
    return node_to_needle(node)


def read_plan_records(plan_scene):
    """Rebuild the plan (and the plan being implanted) the scene records; changes nothing in the scene.

    Returns a :class:`PlanRecordState`: a missing, unreadable or mismatched record gives no plan and a sentence that
    names the node and the problem."""
    ps = plan_scene
    nodes = record_nodes(ps.scene, "shown")
    if not nodes:
        if record_nodes(ps.scene, "original"):
            return PlanRecordState(status="missing", problem="the scene holds the record of the plan being implanted "
                                   "but not of the plan it shows: the plan is not rebuilt; plan again")
        return PlanRecordState(status="missing", problem=(
            "the scene holds no plan record (saved before plans were kept in scenes, or its 'Plan record' node was "
            "deleted): the plan is not rebuilt, the scene's CT, segmentation, needles, seeds and dose are shown as "
            "they are; plan again (or open the plan folder) to re-plan or run the intra-operative steps"))
    node = nodes[0]
    where = f"plan record '{node.GetName()}'"
    note = f" ({len(nodes)} plan records in the scene: the first one is used)" if len(nodes) > 1 else ""
    try:
        plan = _parse(node, where)
    except InputError as exc:
        return PlanRecordState(status="unreadable", problem=f"{exc}: the plan is not rebuilt, the rest of the scene is "
                               "kept; plan again (or open the plan folder)" + note)
    problem = check_plan_against_scene(plan, ps, where)
    if problem:
        return PlanRecordState(status="mismatch", problem=f"{problem}: the plan is not rebuilt, the rest of the scene "
                               "is kept; plan again (or open the plan folder)" + note)
    state = PlanRecordState(plan=plan, status="stored", problem=note.strip(" ()"))
    originals = record_nodes(ps.scene, "original")
    if originals:
        where = f"plan record '{originals[0].GetName()}'"
        try:
            original = _parse(originals[0], where)
            bad = _structure_problem(original, ps.params.get_node("segmentation"), where)
        except InputError as exc:
            original, bad = None, str(exc)
        if bad:
            state.problem = "; ".join(p for p in (state.problem, f"{bad}: the plan being implanted is not rebuilt "
                                                  "(the re-plan shown is)") if p)
        else:
            state.original = original
    return state


def scene_segmentation(plan_scene):
    """Every segment of the plan's segmentation as a :class:`segio.Segmentation` on the plan's reference grid (the
    CT's): what the intra-operative chain takes as the plan's structures."""
    from ..imaging.segio import Segmentation
    from .segmentations import segment_ids
    ps = plan_scene
    seg_node = ps.params.get_node("segmentation")
    if seg_node is None:
        raise InputError("the scene's plan has no segmentation")
    geometry = ps.reference_geometry()
    ids = segment_ids(seg_node)
    seg = seg_node.GetSegmentation()
    colors = {seg.GetSegment(i).GetName(): tuple(seg.GetSegment(i).GetColor()) for i in ids}
    return Segmentation.from_masks(geometry, ps.masks_on(geometry, ids), colors)
