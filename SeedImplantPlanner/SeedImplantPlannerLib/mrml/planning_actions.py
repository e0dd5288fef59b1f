"""Planning on the plan scene's segments: inverse planning, uniform seed loading, needle obstacle checks,
seed strength and totals (the library's planning pipeline with the scene's nodes as input and output).
"""

from __future__ import annotations

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..physics.seeds import SeedSet
from .segmentations import segment_structure
from .volumes import geometry_from_volume


def optimizer_goals(goal_set, prescription_Gy, target, organs):
    """:class:`optimizer.Goals` from the goals of a :class:`goals.GoalSet` that the optimiser can aim at.

    Target (its own entry, else the goals for "the target"): ``V100 >= x%``, ``D90 >= x% | Gy``,
    ``D90 <= x% | Gy``, ``V150 <= x%``, ``V200 <= x%``; organs: ``Dmax``, ``D2cc``, ``D0.1cc <= x Gy | %``
    (:func:`targets.target_goals_from_goal_set`). Every other goal is still checked in the metrics table.
    Without a goal set (or with nothing that maps) the optimiser's defaults apply.
    """
    from ..planning.problem import Goals, OARConstraint
    from ..planning.targets import organ_limits_from_goal_set, target_goals_from_goal_set
    rx = float(prescription_Gy)
    names = [target] + list(organs)
    if goal_set is None:
        return Goals(rx), list(organs)
    own = target_goals_from_goal_set(goal_set, target, names, rx)
    field_of = {"v100": "v100_min", "d90": "d90_min_frac", "v150": "v150_max", "v200": "v200_max",
                "d90_max": "d90_max_frac"}
    kw = {field_of[k]: v for k, v in own.items()}
    oars = []
    for organ in organs:
        limits = organ_limits_from_goal_set(goal_set, organ, names, rx)
        oars.append(OARConstraint(organ, **limits) if limits else organ)
    return Goals(rx, oars=[o for o in oars if not isinstance(o, str)], **kw), oars


class PlanningActions:
    """Planning steps of a :class:`plan_scene.PlanScene` (mixed into it).

    Uses the plan's ``params``, ``goals``, ``model_dirs``, ``needles()``, ``set_needles()``,
    ``set_seeds()``, ``seeds()`` and ``compute_dose()``.
    """

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
        ct = self.ct_node()
        if ct is not None:
            return geometry_from_volume(ct)
        seg, target = self.params.get_node("segmentation"), self.params.get("targetSegmentId")
        if seg is None or not target:
            raise InputError("choose a CT or a segmentation with a target segment first")
        return segment_structure(seg, target).geometry

    def masks_on(self, geometry, segment_ids):
        """``{segment name: mask on geometry}`` for ``segment_ids`` of the plan's segmentation."""
        from ..evaluation.structures import mask_on_grid
        seg = self.params.get_node("segmentation")
        if seg is None:
            raise InputError("no segmentation chosen")
        out = {}
        for sid in segment_ids:
            s = segment_structure(seg, sid)
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
        With several targets (:meth:`plan_scene.PlanScene.set_targets`) they are planned as one
        implant, each with its own prescription and seed strength (``targets.TargetSpec``).
        """
        from ..planning.pipeline import plan_from_masks
        target = self.params.get("targetSegmentId")
        if not target:
            raise InputError("choose the target segment first")
        organs = self.params.get_string_list("organSegmentIds")
        forbidden = self.params.get_string_list("forbiddenSegmentIds")
        extra = self.params.get_string_list("extraTargetSegmentIds")
        geometry = self.reference_geometry()
        masks = self.masks_on(geometry, [target] + extra + organs + forbidden)
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
        specs = self.target_specs(organ_names) if extra else None
        plan = plan_from_masks(geometry, masks, None if specs else target_name, targets=specs, oars=oars,
                               forbidden=self._names(forbidden), model_id=self.params.get("seedModel"),
                               strength=self.params.get("strengthValue"), strength_unit=self.params.get("strengthUnit"),
                               reference_date=ref, implant_date=implant,
                               prescription_Gy=rx, goals=goals,
                               needle_mode=needle_mode, direction=direction, template_spacing_mm=template_spacing_mm,
                               needles=needles, approach=approach, method=method, time_limit_s=time_limit_s,
                               progress=_progress.scaled(progress, 0.0, 0.75))
        self.show_plan(plan)
        self.compute_dose(progress=_progress.scaled(progress, 0.75, 1.0))
        return plan

    def target_specs(self, organ_names=()):
        """Every target of the scene as a :class:`targets.TargetSpec` for the planner: its own prescription,
        strength (``strengthUnit``), template direction, and goals: those given for it in the "Other
        targets" field over the goal set's goals for it (or for "the target"), each against its own Rx."""
        from ..planning.targets import TargetSpec, target_goals_from_goal_set
        unit = self.params.get("strengthUnit")
        rows = self.targets()
        names = [t["name"] for t in rows] + list(organ_names)
        return [TargetSpec(t["name"], t["prescription_Gy"], strength=t["strength"], strength_unit=unit,
                           direction=t.get("direction"),
                           **{**target_goals_from_goal_set(self.goals, t["name"], names, t["prescription_Gy"]),
                              **(t.get("goals") or {})})
                for t in rows]

    def show_plan(self, plan, locked=None):
        """Put ``plan`` (planning.planfile.Plan) into the scene: its needles that carry seeds (every needle
        when none does) and its seeds with their needle numbers; ``locked`` as in ``set_needles`` (None:
        the parameter node's needlesLocked); recorded in the scene (:meth:`record_plan`, ``original_plan`` cleared).
        The dose is left to the caller. Returns the used needle numbers."""
        self.plan = plan
        self.original_plan = None   # a plan shown is no re-plan (the intra-operative re-plan sets it after this)
        used = {int(n) for n in plan.seed_needle if n > 0}
        self.set_needles([n for n in plan.needles if n.number in used] or plan.needles, locked=locked)
        self.set_seeds(plan.seeds, plan.seed_needle)
        self.record_plan()     # kept in the scene, so a scene saved by any means rebuilds it (plan_record)
        return used

    def load_seeds_uniformly(self, spacing_mm=None, progress=None):
        """Seeds every ``spacing_mm`` along the plan's needles inside the target (no optimisation)."""
        from ..planning.loading import LoadingRules, TargetRegion, candidate_positions, uniform_loading
        needles = self.needles()
        if not needles:
            raise InputError("no needles: add or generate needles before loading seeds")
        target = self.params.get("targetSegmentId")
        if not target:
            raise InputError("choose the target segment first")
        s = segment_structure(self.params.get_node("segmentation"), target)
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
