"""A plan in the MRML scene: its nodes, tied together through the module's parameter node.

:class:`PlanScene` keeps the CT, segmentation, needles, seeds and dose of one plan as nodes
referenced from the parameter node (:mod:`.parameters`; nodes are never looked up by name) and
keeps the outputs up to date. Its parts by concern: :mod:`.evaluation_nodes` (evaluation and the
dose, isodose, DVH and metrics nodes), :mod:`.live_update` (edits in the views),
:mod:`.planning_actions` (planning on the scene's segments), :mod:`.scene_io` (build or save a
whole plan scene in one call).
"""

from __future__ import annotations

import math

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from ..physics.seeds import SeedSet
from . import markups, segmentations, volumes
from .evaluation_nodes import PlanOutputs
from .intraop_registration import plan_ct_problem
from .live_update import LiveUpdates
from .nodes import ROLE_ATTRIBUTE, children, ensure_study, place_in_study, study_of, subject_hierarchy
from .parameters import PlanParameters
from .planning_actions import PlanningActions


class PlanScene(LiveUpdates, PlanOutputs, PlanningActions):
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
        self.original_plan = None  # the plan being implanted, while the scene shows an intra-operative re-plan
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
            item = study_of(self.scene, node) if node is not None else 0
            if item:
                return item
        if not self._study:
            self._study = ensure_study(self.scene)
        return self._study

    def _folder(self, name):
        sh = subject_hierarchy(self.scene)
        study = self.study_item()
        for child in children(sh, study):
            if sh.GetItemName(child) == name and sh.GetItemDataNode(child) is None:
                return child
        return sh.CreateFolderItem(study, name)

    # -- inputs ------------------------------------------------------------------------------------
    def ct_node(self):
        """The plan's CT node (None without one). Raises InputError naming it when it cannot be the plan's CT:
        it lies under a transform, e.g. the registered intra-operative CT (:func:`intraop_registration.plan_ct_problem`)."""
        node = self.params.get_node("ctVolume")
        problem = plan_ct_problem(node)
        if problem:
            raise InputError(problem)
        return node

    def set_ct_node(self, node):
        """Make the volume ``node`` (already in the scene) the plan's CT; refused (InputError, nothing changed) when it
        cannot be (:func:`intraop_registration.plan_ct_problem`)."""
        problem = plan_ct_problem(node)
        if problem:
            raise InputError(problem)
        self.params.set_node("ctVolume", node)
        self._evaluation = None
        return node

    def check_ct_choice(self, previous=None):
        """For a selector that sets ``ctVolume`` directly (the module's Inputs): when the node now chosen cannot be the
        plan's CT, ``ctVolume`` goes back to ``previous`` (when that one can be, else none) and the reason is
        returned; None when the choice stands."""
        problem = plan_ct_problem(self.params.get_node("ctVolume"))
        if problem is None:
            return None
        ok = previous is not None and self.scene.IsNodePresent(previous) and plan_ct_problem(previous) is None
        self.params.set_node("ctVolume", previous if ok else None)
        self._evaluation = None
        return problem

    def set_ct(self, array, geometry: ImageGeometry, name="CT"):
        """Add (or update) the CT volume node (a new node when the current one cannot be the plan's CT)."""
        old = self.params.get_node("ctVolume")
        node = volumes.add_scalar_volume(self.scene, array, geometry, name, None if plan_ct_problem(old) else old)
        volumes.set_ct_display(node)
        self.params.set_node("ctVolume", node)
        place_in_study(self.scene, node, self.study_item())
        return node

    def set_segmentation(self, seg, name="Segmentation"):
        """Use a segmentation node, or build one from a :class:`segio.Segmentation`."""
        if hasattr(seg, "GetSegmentation"):
            node = seg
        else:
            node = segmentations.segmentation_from_segio(self.scene, seg, name, self.params.get_node("ctVolume"))
        self.params.set_node("segmentation", node)
        place_in_study(self.scene, node, self.study_item())
        self._evaluation = None
        return node

    def set_roles(self, target, organs=(), forbidden=()):
        """Target, organs at risk and forbidden structures, by segment name or ID."""
        seg = self.params.get_node("segmentation")
        if seg is None:
            raise InputError("set a segmentation before choosing the target and organs")
        ids = segmentations.segment_ids(seg)

        def sid(x):
            return x if x in ids else segmentations.segment_id_by_name(seg, x)
        self.params.set("targetSegmentId", sid(target))
        self.params.set_string_list("organSegmentIds", [sid(o) for o in organs])
        self.params.set_string_list("forbiddenSegmentIds", [sid(o) for o in forbidden])
        self._evaluation = None

    def set_targets(self, targets):
        """Several targets in one implant: ``[(segment name or ID, prescription Gy, seed strength or None), ...]``
        or :class:`targets.TargetSpec` entries (also carrying a template direction and goals).

        The first is the plan's target (``targetSegmentId``, ``prescriptionDoseGy``; its strength, when
        given, becomes the plan's ``strengthValue``); the others are stored with their own
        prescription, strength (in ``strengthUnit``; None = the plan's), template direction and goals.
        Evaluation, DVH, isodoses, metrics and planning then treat each target against its own prescription.
        """
        from ..planning.targets import GOAL_KEYS, TargetSpec, format_target_spec
        seg = self.params.get_node("segmentation")
        if seg is None:
            raise InputError("set a segmentation before choosing the targets")
        specs = []
        for t in targets:
            if isinstance(t, TargetSpec):
                specs.append(t)
            else:
                name, rx, strength = tuple(t) + (None,) * (3 - len(tuple(t)))
                specs.append(TargetSpec(name, rx, strength))
        if not specs:
            raise InputError("no target given")
        ids = segmentations.segment_ids(seg)
        out = []
        for sp in specs:
            name = sp.name
            sid = name if name in ids else segmentations.segment_id_by_name(seg, name)
            rx = float(sp.prescription_Gy) if sp.prescription_Gy is not None else None
            if rx is None or not math.isfinite(rx) or rx <= 0:
                raise InputError(f"target '{name}': the prescription must be a positive dose in Gy, got {rx!r}")
            strength = sp.strength
            if strength is not None and not (math.isfinite(float(strength)) and float(strength) > 0):
                raise InputError(f"target '{name}': the seed strength must be > 0, got {strength!r}")
            goals = format_target_spec(TargetSpec("x", **{f: getattr(sp, f) for f, _ in GOAL_KEYS})).partition(":")[2]
            out.append((sid, rx, None if strength is None else float(strength), sp.direction or "", goals))
        if len({t[0] for t in out}) != len(out):
            raise InputError("the same target is given twice")
        self.params.set("targetSegmentId", out[0][0])
        self.params.set("prescriptionDoseGy", out[0][1])
        if out[0][2] is not None:
            self.params.set("strengthValue", out[0][2])
        self.params.set_string_list("extraTargetSegmentIds", [t[0] for t in out[1:]])
        self.params.set_string_list("extraTargetPrescriptionsGy", [f"{t[1]:g}" for t in out[1:]])
        self.params.set_string_list("extraTargetStrengths", ["" if t[2] is None else f"{t[2]:g}" for t in out[1:]])
        self.params.set_string_list("extraTargetDirections", [t[3] for t in out[1:]])
        self.params.set_string_list("extraTargetGoals", [t[4] for t in out[1:]])
        self._evaluation = None

    def targets(self):
        """The plan's targets: [{segment_id, name, prescription_Gy, strength (in strengthUnit), direction (or None),
        goals ({v100, d90, v150, v200, d90_max}: the ones given for this target, fractions)}], first = the plan's."""
        from ..planning.targets import GOAL_KEYS, parse_target
        seg = self.params.get_node("segmentation")
        first = self.params.get("targetSegmentId")
        if seg is None or not first:
            return []
        rows = [(first, self.params.get("prescriptionDoseGy"), self.params.get("strengthValue"), "", "")]
        ids = self.params.get_string_list("extraTargetSegmentIds")
        rxs = self.params.get_string_list("extraTargetPrescriptionsGy")
        strengths = self.params.get_string_list("extraTargetStrengths")
        directions = self.params.get_string_list("extraTargetDirections")
        goals = self.params.get_string_list("extraTargetGoals")
        for k, sid in enumerate(ids):
            rx = float(rxs[k]) if k < len(rxs) and rxs[k] else self.params.get("prescriptionDoseGy")
            st = float(strengths[k]) if k < len(strengths) and strengths[k] else self.params.get("strengthValue")
            rows.append((sid, rx, st, directions[k] if k < len(directions) else "", goals[k] if k < len(goals) else ""))
        out = []
        for sid, rx, st, direction, goal_text in rows:
            segment = seg.GetSegmentation().GetSegment(sid)
            if segment is None:
                raise InputError(f"target segment {sid!r} is not in the segmentation")
            own = parse_target(f"{segment.GetName()}:{goal_text}") if goal_text else None
            out.append({"segment_id": sid, "name": segment.GetName(), "prescription_Gy": float(rx), "strength": st,
                        "direction": direction or None,
                        "goals": {f: getattr(own, f) for f, _ in GOAL_KEYS if own is not None and getattr(own, f) is not None}})
        return out

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
        sh = subject_hierarchy(self.scene)
        nodes = []
        for i, needle in enumerate(needles):
            if getattr(needle, "number", None) is None:
                entry, tip = markups.needle_endpoints(needle)
                needle = _Pair(i + 1, entry, tip)
            reuse = old[i] if i < len(old) and old[i].IsA(
                "vtkMRMLMarkupsCurveNode" if getattr(needle, "curved", False) else "vtkMRMLMarkupsLineNode") else None
            node = markups.needle_to_node(self.scene, needle, locked, reuse)
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
        return [markups.node_to_needle(n) for n in nodes]

    def add_needle_node(self):
        """A new, empty needle line node (next number) for placing a free-hand needle: entry, then tip."""
        nodes = self.params.get_node_list("needleNodes")
        number = 1 + max([int(n.GetAttribute(markups.NEEDLE_NUMBER_ATTRIBUTE) or 0) for n in nodes] + [0])
        node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"Needle {number}")
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetPropertiesLabelVisibility(False)
        display.SetPointLabelsVisibility(False)
        node.SetAttribute(markups.NEEDLE_NUMBER_ATTRIBUTE, str(number))
        node.SetAttribute(ROLE_ATTRIBUTE, "Needle")
        sh = subject_hierarchy(self.scene)
        folder = self._folder("Needles")
        sh.SetItemParent(sh.GetItemByDataNode(node) or sh.CreateItem(folder, node), folder)
        self.params.set_node_list("needleNodes", nodes + [node])
        return node

    def remove_needle_node(self, node):
        """Take ``node`` out of the plan's needles and the scene (e.g. a free-hand placement that was cancelled)."""
        nodes = self.params.get_node_list("needleNodes")
        if node not in nodes:
            raise InputError(f"'{node.GetName()}' is not one of the plan's needles")
        self.params.set_node_list("needleNodes", [n for n in nodes if n is not node])
        kept = []
        for observed, tag in self._observations:
            if observed is node:
                observed.RemoveObserver(tag)
            else:
                kept.append((observed, tag))
        self._observations = kept
        self._needle_state.pop(node.GetID(), None)
        if node.GetScene() is not None:
            self.scene.RemoveNode(node)

    def set_needles_locked(self, locked):
        """Lock or unlock every needle node."""
        markups.set_needles_locked(self.params.get_node_list("needleNodes"), locked)
        self.params.set("needlesLocked", bool(locked))

    def set_seeds(self, seeds: SeedSet, needle_numbers=None):
        """Write the seeds into the plan's fiducial node (created on first use)."""
        node = markups.seeds_to_fiducial_node(self.scene, seeds, self.params.get_node("seedsNode"),
                                              needle_numbers=needle_numbers)
        self.params.set_node("seedsNode", node)
        place_in_study(self.scene, node, self.study_item())
        return node

    def seeds(self):
        """(SeedSet, needle numbers) of the seeds node."""
        node = self.params.get_node("seedsNode")
        if node is None:
            return SeedSet(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), []), np.zeros(0, int)
        return markups.fiducial_node_to_seeds(node)

    # -- dose --------------------------------------------------------------------------------------
    def dose_geometry(self, spacing_mm=None, margin_mm=None):
        """Dose grid: the box of every target plus a margin, at ``spacing_mm``, oriented as the CT."""
        spacing = float(self.params.get("doseGridSpacingMm") if spacing_mm is None else spacing_mm)
        margin = float(self.params.get("doseMarginMm") if margin_mm is None else margin_mm)
        ct = self.ct_node()
        seg = self.params.get_node("segmentation")
        target = self.params.get("targetSegmentId")
        if seg is not None and target:
            boxes = []
            for sid in [target] + self.params.get_string_list("extraTargetSegmentIds"):
                s = segmentations.segment_structure(seg, sid)
                idx = np.argwhere(s.mask)[:, ::-1]
                if len(idx):
                    boxes.append(s.geometry.ijk_to_ras(np.array([idx.min(axis=0), idx.max(axis=0)], float)))
            corners = np.vstack(boxes)
            lo, hi = corners.min(axis=0), corners.max(axis=0)
        else:
            seeds, _ = self.seeds()
            if not len(seeds):
                raise InputError("no target and no seeds: cannot place the dose grid")
            lo, hi = seeds.positions.min(axis=0), seeds.positions.max(axis=0)
        if ct is not None:
            ref = volumes.geometry_from_volume(ct)
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

    # -- report and files ----------------------------------------------------------------------------
    def write_report(self, path, pdf_path=None):
        """HTML report (and PDF) of the current dose and evaluation (:func:`report.write_report`)."""
        from ..reporting.report import write_report
        ev = self._evaluator()
        dose, geometry = self.dose_array()
        ev.evaluate(dose, geometry)
        if ev.result is None:
            raise InputError("nothing to report: choose a target segment and compute the dose")
        sub, _ = ev.crop(dose, geometry, ev.structures)
        ct_node = self.ct_node()
        ct = (volumes.volume_array(ct_node), volumes.geometry_from_volume(ct_node)) if ct_node is not None else None
        seeds, _ = self.seeds()
        plan = self.plan.to_dict() if getattr(self, "plan", None) is not None else None
        if plan is not None:  # the plan's own goals checked on the dose as it is now (seeds may have been edited)
            from ..planning.plan_dose import goal_check
            plan["metrics"] = {**(plan.get("metrics") or {}), "goal_check": goal_check(self.plan, ev.result)}
        targets = self.targets() if self.params.get_string_list("extraTargetSegmentIds") else []
        if len(targets) > 1 and not (plan or {}).get("targets"):
            # no plan object with its targets (seeds placed by hand or loaded): the scene's targets
            from ..physics.sources import get_model
            from ..physics.strength import strength_at
            model = get_model(self.params.get("seedModel"), self.model_dirs)
            ref, implant = self.params.get("referenceDate") or None, self.params.get("implantDate") or None
            rows = []
            for t in targets:
                s_u = strength_at(model, t["strength"], self.params.get("strengthUnit"), ref, implant)
                rows.append({"name": t["name"], "prescription_Gy": t["prescription_Gy"], "strength_U": s_u,
                             "strength_mCi": s_u / model.u_per_mci if model.u_per_mci else None})
            plan = {**(plan or {}), "targets": rows} if plan is None or "format" not in plan else plan
        return write_report(path, ev.result, sub, structures=ev.structures, plan=plan, seeds=seeds, ct=ct,
                            pdf_path=pdf_path)

    def save(self, path):
        """Write the whole plan scene to a .mrb bundle, with the plan's record (:mod:`.plan_record`); returns its path."""
        self.record_plan()
        return self.ctx.save_mrb(path)

    def record_plan(self):
        """Keep :attr:`plan` (as the scene shows it) and :attr:`original_plan` in the scene (:mod:`.plan_record`)."""
        from .plan_record import write_plan_records
        return write_plan_records(self)

    def restore_plan(self):
        """Rebuild :attr:`plan` and :attr:`original_plan` from the plan records of an opened scene
        (:func:`plan_record.read_plan_records`, cross-checked against the nodes); returns the
        :class:`plan_record.PlanRecordState`. Without a usable record both stay as they are."""
        from .plan_record import read_plan_records
        state = read_plan_records(self)
        if state.plan is not None:
            self.plan = state.plan
            self.original_plan = state.original
        return state

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
        return ([target] if target else []) + self.params.get_string_list("extraTargetSegmentIds") + \
            self.params.get_string_list("organSegmentIds") + self.params.get_string_list("forbiddenSegmentIds")


def parse_target_list(text, unit=None):
    """The module's and the web page's "Other targets" field -> [TargetSpec] (:func:`targets.parse_target_list`:
    ``NAME:rx=Gy,strength=S,direction=D,v100=%,...; ...``, the ``--target`` syntax, or ``NAME:Rx[:strength]``)."""
    from ..planning.targets import parse_target_list as parse
    return parse(text, unit)


def format_target_list(targets):
    """The field's text of :meth:`PlanScene.targets` rows (after the first): the inverse of :func:`parse_target_list`."""
    from ..planning.targets import TargetSpec, format_target_list as fmt
    return fmt([TargetSpec(t["name"], t["prescription_Gy"], t.get("strength"), direction=t.get("direction"),
                           **(t.get("goals") or {})) for t in targets])


class _Pair:
    """A straight needle given only by its end points."""

    curved = False

    def __init__(self, number, entry, tip):
        self.number, self.entry, self.tip = number, entry, tip
