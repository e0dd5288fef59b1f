"""Insertion directions chosen by the planner: candidate needle sets and how they are ranked.

For a target the planner proposes needle *sets*, each one way a physicist could implant it:

- a parallel template in each of eight axial directions (anterior, posterior, left, right and
  the four obliques between them), placed on the skin where the ray from the target centroid
  against the insertion direction leaves the patient;
- non-coplanar fans (3D-printed template style) from the skin regions closest to the target
  (the three axial directions with the shortest skin-to-centroid depth).

Every needle of a set is checked against the forbidden structures with the safety margin and
against its usable length (maximum depth); a set is *screened* by its reach (fraction of target
points within ``reach_mm`` of a usable candidate seed position) and the best-reaching sets are
*trial-planned* quickly (fewer sample points, shorter annealing). Among the sets that meet the
hard goals, the one with the smallest soft-goal excess (V150, V200, D90 upper bound; in steps of
:data:`SOFT_STEP` points) wins, then the one with the fewest needles, then fewer seeds; if none
meets the hard goals, the one with the best coverage. When the winner still trades soft goals,
the best template direction tried (the winner itself, or the best template when a fan won) is
trial-planned again with holes :data:`FINER_FACTORS` x closer, in turn, and wins if it ranks better
(a finer lattice gives the optimiser room against hot spots, at the cost of more needles: the
30 cc groin mass at 0.7 mCi goes from V200 about 40 % on 8 fan needles to about 25 % on 19). The ranking and every set's outcome are kept in the plan
(``plan.optimizer['direction_search']``) so the choice can be checked.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import InputError

#: Axial insertion directions tried for parallel templates (the way the needle travels, RAS).
TEMPLATE_DIRECTIONS = {
    "P": (0.0, -1.0, 0.0), "A": (0.0, 1.0, 0.0), "R": (1.0, 0.0, 0.0), "L": (-1.0, 0.0, 0.0),
    "PR": (1.0, -1.0, 0.0), "PL": (-1.0, -1.0, 0.0), "AR": (1.0, 1.0, 0.0), "AL": (-1.0, 1.0, 0.0),
}
#: How many skin regions (closest first) get a fan of non-coplanar candidates.
N_FAN_REGIONS = 3
#: Soft-goal excess (percentage points, summed over the soft goals) below which two sets count as
#: equally good on hot spots, so that the one with fewer needles wins.
SOFT_STEP = 5.0
#: When the winning set trades soft goals, the best template direction is tried with holes this much
#: closer, in turn, while the soft goals still trade (more needles give the optimiser room against hot spots).
FINER_FACTORS = (0.7, 0.5)


@dataclass
class NeedleSet:
    """One proposal: a label, its needles, and what screening and trial planning found."""

    label: str
    kind: str  # "template" or "fan"
    needles: list
    direction: tuple | None = None  # template insertion direction, or fan approach direction
    usable: list = field(default_factory=list)
    reach: float = 0.0
    note: str = ""
    trial: dict | None = None

    def to_row(self) -> dict:
        """Plain summary for the plan file."""
        out = {"set": self.label, "kind": self.kind,
               "direction": None if self.direction is None else [round(float(v), 4) for v in self.direction],
               "needles_proposed": len(self.needles),
               "needles_usable": len(self.usable), "reach_percent": round(100.0 * self.reach, 1)}
        if self.note:
            out["note"] = self.note
        if self.trial:
            out.update(self.trial)
        return out


def _entry_side(label):
    """The skin side a needle travelling ``label`` enters from (P -> 'anterior', PR -> 'anterior left', ...)."""
    side = {"P": "anterior", "A": "posterior", "R": "left", "L": "right"}
    return " ".join(side[c] for c in label)


def skin_depths(skin_sampler, centroid, directions, t_max=600.0, step=1.0):
    """{label: depth (mm) from ``centroid`` to the skin going against each insertion direction}."""
    out = {}
    t = np.arange(0.0, t_max, step)
    for lab, d in directions.items():
        d = np.asarray(d, float) / np.linalg.norm(d)
        inside = skin_sampler(centroid[None, :] - t[:, None] * d[None, :])
        out_idx = np.flatnonzero(~inside)
        out[lab] = float(t[out_idx[0]]) if len(out_idx) and inside[0] else math.inf
    return out


def propose_sets(geometry, tmask, skin, obstacle_map, *, template_spacing_mm=10.0, fan_spacing_mm=10.0,
                 entry_radius_mm=60.0, usable_length_mm=200.0, gauge=18, rng_seed=0, fans=True):
    """Candidate needle sets for one target (see module doc); needles not yet obstacle-checked for templates."""
    from .needle_layouts import fan_candidates, parallel_template, skin_point
    from .needles import MaskSampler, mask_points
    if skin is None:
        raise InputError("the planner needs the patient outline (a body segment, the labels or the CT) to choose "
                         "insertion directions")
    sampler = MaskSampler(skin, geometry)
    centroid = mask_points(tmask, geometry).mean(axis=0)
    if not sampler(centroid[None, :])[0]:
        raise InputError("the target centroid is outside the patient outline: cannot find skin entry regions")
    sets = []
    for lab, d in TEMPLATE_DIRECTIONS.items():
        d = np.asarray(d, float) / np.linalg.norm(d)
        try:
            needles = parallel_template(tmask, geometry, d, template_spacing_mm, None, skin, gauge=gauge,
                                        usable_length_mm=usable_length_mm)
        except InputError as exc:
            sets.append(NeedleSet(f"template from {_entry_side(lab)}", "template", [], tuple(d), note=str(exc)))
            continue
        sets.append(NeedleSet(f"template from {_entry_side(lab)}", "template", needles, tuple(float(v) for v in d)))
    if fans:
        depth = skin_depths(sampler, centroid, TEMPLATE_DIRECTIONS)
        for lab in sorted(depth, key=lambda k: (depth[k], k))[:N_FAN_REGIONS]:
            if not math.isfinite(depth[lab]):
                continue
            approach = -np.asarray(TEMPLATE_DIRECTIONS[lab], float)
            approach /= np.linalg.norm(approach)
            centre = skin_point(sampler, centroid, approach)
            try:
                needles = fan_candidates(tmask, geometry, skin, None, centre, entry_radius_mm, fan_spacing_mm,
                                         obstacle_map, usable_length_mm, gauge, rng_seed=rng_seed)
            except InputError as exc:
                sets.append(NeedleSet(f"fan from {_entry_side(lab)}", "fan", [], tuple(approach), note=str(exc)))
                continue
            sets.append(NeedleSet(f"fan from {_entry_side(lab)}", "fan", needles, tuple(float(v) for v in approach)))
    return sets


def screen(sets, obstacle_map, target_points, positions_of, reach_mm):
    """Fill ``usable`` (no forbidden structure within the margin, not too long) and ``reach`` of each set.

    ``positions_of(needles)`` gives the candidate seed positions (P, 3) of a list of needles.
    """
    from scipy.spatial import cKDTree
    for s in sets:
        if not s.needles:
            continue
        blocked = {id(n) for n in s.needles if obstacle_map is not None and obstacle_map.check(n)}
        s.usable = [n for n in s.needles if id(n) not in blocked and not n.too_long]
        if not s.usable:
            s.note = s.note or "every needle meets a forbidden structure or is too long"
            continue
        pos = positions_of(s.usable)
        if not len(pos):
            s.note = s.note or "no candidate seed position in the target"
            continue
        s.reach = float(np.mean(cKDTree(pos).query(target_points)[0] <= reach_mm))
    return sets


def pick(sets, trial_plan, max_trials=5, budget_s=20.0, progress=None, reach_ratio=0.8):
    """Trial-plan the best-reaching sets (``trial_plan(set) -> dict``) and return the winner (see module doc).

    At most ``max_trials`` sets are trial-planned, best reach first, and only those reaching at
    least ``reach_ratio`` x the best reach; the search stops early when ``budget_s`` is used up.
    """
    from ..core import progress as _progress
    order = sorted([s for s in sets if s.usable and s.reach > 0], key=lambda s: (-round(s.reach, 3), len(s.usable)))
    tried = []
    t0 = time.monotonic()
    best_reach = order[0].reach if order else 0.0
    for k, s in enumerate(order):
        if k >= max_trials:
            s.note = s.note or "not trial-planned: lower reach than the sets tried"
            continue
        if tried and time.monotonic() - t0 > budget_s:
            s.note = s.note or "not trial-planned: direction search time budget used"
            continue
        if s.reach < reach_ratio * best_reach:
            s.note = s.note or f"not trial-planned: reaches {100 * s.reach:.0f}% of the target"
            continue
        _progress.report(progress, k / max(1, min(max_trials, len(order))), f"plan: trying {s.label}")
        s.trial = trial_plan(s)
        tried.append(s)
    if not tried:
        return None
    return min(tried, key=rank_key)


def rank_key(s):
    """Sort key of a trial-planned set: hard goals, soft excess (steps of SOFT_STEP), needles, seeds."""
    t = s.trial
    if not t["goals_met"]:
        return (1, -t["coverage_percent"], t["soft_excess"], t["needles"], s.label)
    return (0, math.floor(t["soft_excess"] / SOFT_STEP), t["needles"], t["seeds"], t["soft_excess"], s.label)


def finer_template(best, geometry, tmask, skin, spacing_mm, usable_length_mm=200.0, gauge=18, factor=FINER_FACTORS[0]):
    """The winning template direction again at ``factor`` x the hole spacing (more freedom against hot spots)."""
    from .needle_layouts import parallel_template
    d = np.asarray(best.direction, float)
    try:
        needles = parallel_template(tmask, geometry, d, factor * spacing_mm, None, skin, gauge=gauge,
                                    usable_length_mm=usable_length_mm)
    except InputError as exc:
        return NeedleSet(f"{best.label}, {factor * spacing_mm:g} mm holes", "template", [], best.direction,
                         note=str(exc))
    return NeedleSet(f"{best.label}, {factor * spacing_mm:g} mm holes", "template", needles, best.direction)


def search_target(geometry, t, skin, forb, oar_cons, oar_masks, kernel, gy_per_U_h, rules, margin_mm,
                       template_spacing_mm, entry_radius_mm, usable_length_mm, gauge, rng_seed, max_needles, clearance_mm,
                       budget_s, warnings, progress):
    """Needles of the best needle set for target ``t`` (an :class:`assemble.TargetInfo`) and the search rows.

    Proposes the sets (:func:`propose_sets`), screens them on a distance map of all forbidden
    structures together (``margin_mm``), trial-plans the best-reaching ones within ``budget_s``
    (:func:`pick`) and retries a winning template that trades soft goals with finer holes. Returns
    (needles of the winner, one row per set for ``plan.optimizer['direction_search']``); raises
    InputError when no set reaches the target. ``warnings`` (a list) gets a line when the winner
    misses the hard goals.
    """
    import copy
    from .assemble import TargetInfo, assemble
    from .clearance import clashing_pairs
    from .loading import TargetRegion, candidate_positions
    from .needles import mask_points
    from .obstacles import obstacle_map_for
    from .optimizer import optimize
    tpts = mask_points(t.mask, geometry)
    omap = None
    if forb:
        # one distance map of all forbidden structures together: the search only needs usable or not
        # (the plan's own check names the structures)
        union = np.zeros(geometry.shape, dtype=bool)
        for m in forb.values():
            union |= m
        omap = obstacle_map_for(geometry, {"forbidden structures": union}, margin_mm, (),
                                np.vstack([tpts.min(axis=0) - usable_length_mm, tpts.max(axis=0) + usable_length_mm]))
    sets = propose_sets(geometry, t.mask, skin, omap, template_spacing_mm=template_spacing_mm,
                        fan_spacing_mm=max(template_spacing_mm, 8.0), entry_radius_mm=entry_radius_mm,
                        usable_length_mm=usable_length_mm, gauge=gauge, rng_seed=rng_seed)
    region = TargetRegion(t.mask, geometry, rules.target_margin_mm)
    rng = np.random.default_rng(rng_seed)
    sample = tpts[rng.choice(len(tpts), min(len(tpts), 4000), replace=False)]
    screen(sets, omap, sample, lambda ns: candidate_positions(ns, region, rules).positions,
           reach_mm=max(6.0, 0.75 * rules.spacing_mm))

    def trial(s):
        info = TargetInfo(t.name, t.mask, t.goals, t.strength_U, region)
        conf = None if clearance_mm is None else clashing_pairs(s.usable, clearance_mm)
        prob, cands, _, _ = assemble(geometry, s.usable, [info], t.goals, oar_cons, oar_masks, kernel, gy_per_U_h,
                                     rules, np.random.default_rng(rng_seed), n_target_points=1200,
                                     n_check_points=2500, max_needles=max_needles, needle_conflicts=conf)
        r = optimize(prob, "anneal", 3.0, rng_seed, anneal_iterations=15000)
        d = prob.fixed_chk + prob.D_chk @ r.selected.astype(float)
        soft = sum(row["excess"] for row in r.sampled.get("soft_goals", []))
        return {"goals_met": bool(r.goals_met), "needles": int(r.sampled.get("n_needles", 0)),
                "seeds": int(r.sampled.get("n_seeds", 0)),
                "coverage_percent": round(100.0 * float(np.mean(d >= t.goals.prescription_Gy - 1e-6)), 1),
                "soft_excess": round(float(soft), 2)}

    best = pick(sets, trial, budget_s=budget_s, progress=progress)
    if best is not None and best.trial["goals_met"] and best.trial["soft_excess"] > 0:
        # hot spots traded: the best template direction tried (the winner, or the best-ranked template
        # when a fan won) again with closer holes, FINER_FACTORS in turn while the soft goals still trade
        templates = [s for s in sets if s.kind == "template" and s.trial and s.trial["goals_met"]]
        base = min(templates, key=rank_key) if templates else None
        for factor in (FINER_FACTORS if base is not None else ()):
            finer = finer_template(base, geometry, t.mask, skin, template_spacing_mm, usable_length_mm, gauge, factor)
            screen([finer], omap, sample, lambda ns: candidate_positions(ns, region, rules).positions,
                   reach_mm=max(6.0, 0.75 * rules.spacing_mm))
            sets.append(finer)
            if not finer.usable:
                continue
            finer.trial = trial(finer)
            if rank_key(finer) < rank_key(best):
                best = finer
            if best.trial["soft_excess"] <= 0:
                break
    rows = []
    for s in sets:
        row = {"target": t.name, **s.to_row(), "chosen": s is best}
        rows.append(row)
    if best is None:
        reasons = "; ".join(f"{s.label}: {s.note or 'no usable needle'}" for s in sets)
        raise InputError(f"no insertion direction reaches the target '{t.name}' ({reasons})")
    if not best.trial["goals_met"]:
        warnings.append(f"target {t.name}: no needle set meets the goals in the direction search; the best one "
                        f"({best.label}) is used")
    return [copy.deepcopy(n) for n in best.usable], rows
