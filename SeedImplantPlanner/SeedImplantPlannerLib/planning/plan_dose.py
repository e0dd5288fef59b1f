"""Dose and evaluation of a plan: dose grid around the targets, metrics, the plan's own goal check.

:func:`compute_dose` attaches a :class:`dose.DoseGrid` of the plan's seeds (incremental manual
edits update it), :func:`evaluate` runs the evaluation library on the plan's structures (every
target against its own prescription) and stores the metrics with :func:`goal_check`'s rows;
:func:`uniform_plan` is the plain uniform loading of the plan's needles (benchmark reference).
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError
from ..physics.seeds import SeedSet
from .loading import LoadingRules, TargetRegion, candidate_positions, uniform_loading
from .needles import mask_points
from .planfile import Plan
from .problem import Goals


def uniform_plan(plan: Plan, geometry, target_mask, spacing_mm=None, margin_mm=None):
    """Plain uniform loading on the plan's usable needles (the benchmark baseline): (SeedSet, needles used).

    Every candidate position at ``spacing_mm`` (default: the plan's) inside the target plus
    ``margin_mm`` (default: the plan's) is loaded, except those closer than the minimum distance
    to a seed already loaded on another needle.
    """
    base = plan.rules.to_dict()
    if spacing_mm is not None:
        base["spacing_mm"] = spacing_mm
    if margin_mm is not None:
        base["target_margin_mm"] = margin_mm
    rules = LoadingRules(**base)
    blocked = {int(h["number"]) for h in plan.obstacles}
    usable = [n for n in plan.needles if n.number not in blocked and not n.too_long]
    cands = candidate_positions(usable, TargetRegion(target_mask, geometry, rules.target_margin_mm), rules)
    sel = np.flatnonzero(uniform_loading(cands, rules))
    seeds = SeedSet(cands.positions[sel], cands.axes[sel], np.full(len(sel), plan.strength_U), [plan.model_id] * len(sel))
    return seeds, [usable[k] for k in sorted(set(cands.needle_index[sel].tolist()))]


def dose_grid_geometry(plan: Plan, geometry, target_mask, spacing_mm=2.0, margin_mm=20.0):
    """Dose grid around the target and the seeds (plus ``margin_mm``), axis-aligned with ``geometry``."""
    pts = mask_points(target_mask, geometry)
    allp = np.vstack([pts, plan.seeds.positions]) if len(plan.seeds) else pts
    return geometry.cropped_to_box(allp.min(axis=0), allp.max(axis=0), spacing_mm, margin_mm)


def compute_dose(plan: Plan, geometry, target_mask, spacing_mm=2.0, margin_mm=20.0, engine=None, progress=None):
    """Attach a :class:`dose.DoseGrid` of the plan's seeds and return (dose Gy array, dose geometry)."""
    from ..physics.dose import DoseGrid
    if not len(plan.seeds):
        raise InputError("the plan has no seeds: no dose to compute")
    g = dose_grid_geometry(plan, geometry, target_mask, spacing_mm, margin_mm)
    grid = DoseGrid(g, plan.seeds, plan.formalism, engine or "fast", progress=progress)
    plan.attach_dose_grid(grid)
    return grid.dose_Gy("total"), g


def evaluate(plan: Plan, dose_Gy, dose_geometry, structures, progress=None, goal_set=None):
    """Evaluate the plan's dose on its structures (:func:`evaluation.evaluate_plan`); stores metrics.

    With several targets, each target's dose metrics (V100, V150, ...), indices and goals are
    relative to its own prescription. ``goal_set`` (:class:`goals.GoalSet`): its goals are checked too
    (``plan.metrics["goals"]``), every target against the goals written for it or for "the target".
    """
    from ..evaluation.evaluate import evaluate_plan
    wanted = ["D90", "V100", "V150", "V200", "Dmax", "D2cc", "D0.1cc"]
    names = {s.name for s in structures}
    first = plan.structures.get("target")
    others = {str(r["name"]): float(r["prescription_Gy"]) for r in plan.targets
              if r["name"] in names and r["name"] != first}
    ev = evaluate_plan(dose_Gy, dose_geometry, structures, plan.prescription_Gy, target=first, body=None,
                       goals=goal_set, metrics=wanted, on_outside="skip", target_prescriptions=others or None,
                       progress=progress)
    plan.evaluation = ev
    plan.metrics = ev.to_dict()
    plan.metrics["goal_check"] = goal_check(plan, ev)
    return ev


def goal_check(plan: Plan, ev) -> list:
    """The plan's own goals checked on the evaluated dose ``ev`` (:class:`evaluation.Evaluation`).

    Rows: goal (label), value, limit, passed, and structure, metric, op, unit, soft and, for a
    target, its prescription_Gy. Every target against its own prescription (the plan's, recomputed
    from the evaluation's samples if the evaluation used another one); organ limits on the total dose.
    """
    from ..evaluation.metrics import structure_metrics
    rows = []

    def add(what, value, limit, passed, structure, metric, op, unit, soft=False, rx=None):
        row = {"goal": what, "value": None if value is None else round(float(value), 4), "limit": limit,
               "passed": bool(passed), "structure": structure, "metric": metric, "op": op, "unit": unit, "soft": soft}
        if rx is not None:
            row["prescription_Gy"] = float(rx)
        rows.append(row)

    if plan.targets:
        targets = [(r["name"], Goals.from_dict(r["goals"]), r["name"]) for r in plan.targets]
    else:
        targets = [(plan.structures.get("target"), plan.goals, "target")]
    for name, g, label in targets:
        m = ev.metrics.get(name, {})
        if not m:
            continue
        rx = g.prescription_Gy
        own = ev.prescription_of(name) if hasattr(ev, "prescription_of") else ev.prescription_Gy
        if abs(own - rx) > 1e-9:  # evaluated against another prescription: this target's own, from its samples
            sample = next(s for s in ev.samples if s.name == name)
            m = structure_metrics(sample, ["V100", "D90", "V150", "V200"], rx)
        add(f"{label} V100 >= %", m["V100"]["percent"], 100 * g.v100_min, m["V100"]["percent"] >= 100 * g.v100_min - 1e-9,
            name, "V100", ">=", "%", rx=rx)
        add(f"{label} D90 >= Gy", m["D90"]["Gy"], g.d90_min_frac * rx, m["D90"]["Gy"] >= g.d90_min_frac * rx - 1e-9,
            name, "D90", ">=", "Gy", rx=rx)
        add(f"{label} V150 <= % (soft)", m["V150"]["percent"], 100 * g.v150_max, m["V150"]["percent"] <= 100 * g.v150_max,
            name, "V150", "<=", "%", True, rx)
        add(f"{label} V200 <= % (soft)", m["V200"]["percent"], 100 * g.v200_max, m["V200"]["percent"] <= 100 * g.v200_max,
            name, "V200", "<=", "%", True, rx)
        if g.d90_max_frac is not None:
            add(f"{label} D90 <= Gy (soft)", m["D90"]["Gy"], g.d90_max_frac * rx, m["D90"]["Gy"] <= g.d90_max_frac * rx,
                name, "D90", "<=", "Gy", True, rx)
    for o in plan.goals.oars:
        mo = ev.metrics.get(o.name, {})
        for vol, lim, lab in o.limits():
            key = {"Dmax": "Dmax", "D2cc": "D2cc", "D0.1cc": "D0.1cc"}[lab]
            v = mo.get(key, {}).get("Gy")
            if v is not None and not math.isfinite(v):
                v = None
            add(f"{o.name} {lab} <= Gy", v, lim, v is None or v <= lim + 1e-9, o.name, lab, "<=", "Gy")
    return rows
