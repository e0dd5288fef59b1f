"""The planning pipeline: needles, obstacle checks, candidates, optimisation, dose and evaluation.

:func:`plan_from_masks` (segment masks on one grid) and :func:`plan_case` (files) build needles,
check them against forbidden structures, list candidate positions, optimise the loading
(:mod:`optimizer`), and compute the dose on a grid around the target with :mod:`dose` and the
metrics with :mod:`evaluation`; :func:`planfile.write_plan_folder` writes the plan folder.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from .loading import LoadingRules, TargetRegion, candidate_positions, uniform_loading
from .needles import Needle, mask_points
from .optimizer import optimize
from .planfile import Plan
from .problem import Goals, OARConstraint, build_problem
from ..physics.seeds import SeedSet

DEFAULT_MODEL = "I125_OncoSeed_6711"
DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def parse_direction(text):
    """A direction from a letter (R, L, A, P, S, I: the way the needle travels) or 'x,y,z'."""
    if isinstance(text, (list, tuple, np.ndarray)):
        v = np.asarray(text, dtype=float)
    else:
        t = str(text).strip().upper()
        if t in DIRECTIONS:
            v = np.asarray(DIRECTIONS[t], dtype=float)
        else:
            try:
                v = np.asarray([float(p) for p in t.replace(";", ",").split(",")], dtype=float)
            except ValueError:
                raise InputError(f"direction {text!r}: use one of R, L, A, P, S, I or 'x,y,z'") from None
    if v.shape != (3,) or not np.all(np.isfinite(v)) or np.linalg.norm(v) < 1e-9:
        raise InputError(f"direction {text!r}: need three finite numbers, not all zero")
    return v / np.linalg.norm(v)


def _jittered_points(mask, geometry, n, rng):
    """``n`` random points inside ``mask`` voxels (uniform within each chosen voxel), RAS mm."""
    k, j, i = np.nonzero(mask)
    idx = rng.choice(len(i), size=n, replace=len(i) < n)
    ijk = np.stack([i[idx], j[idx], k[idx]], axis=1).astype(float) + rng.uniform(-0.5, 0.5, size=(n, 3))
    return geometry.ijk_to_ras(ijk)


def _mask_points_near(mask, geometry, points, margin_mm):
    """Voxel centres of ``mask`` inside the index box around ``points`` grown by ``margin_mm``."""
    ijk = geometry.ras_to_ijk(points)
    pad = np.ceil(margin_mm / np.asarray(geometry.spacing)).astype(int) + 1
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + pad, np.asarray(geometry.size) - 1)
    sub = mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    k, j, i = np.nonzero(sub)
    return geometry.ijk_to_ras(np.stack([i + lo[0], j + lo[1], k + lo[2]], axis=1).astype(float))


def _source_dict(model, strength_U, strength_value, strength_unit, reference_date, implant_date):
    return {"model": model.model_id, "nuclide": model.nuclide, "strength_U": float(strength_U),
            "strength_entered": {"value": float(strength_value), "unit": strength_unit},
            "reference_date": None if reference_date is None else str(reference_date),
            "implant_date": None if implant_date is None else str(implant_date),
            "half_life_days": model.half_life_days, "U_per_mCi": model.u_per_mci}


def plan_from_masks(geometry, masks: dict, target: str, *, oars=(), forbidden=(), body=None,
                    model_id=DEFAULT_MODEL, strength=0.5, strength_unit="U", reference_date=None, implant_date=None,
                    prescription_Gy=None, goals: Goals | None = None, needle_mode="template", direction="P",
                    template_spacing_mm=10.0, template_point=None, needles=None, approach=None, entry_center=None,
                    entry_radius_mm=60.0, rules: LoadingRules | None = None, obstacle_margin_mm=5.0,
                    method="anneal", time_limit_s=8.0, rng_seed=0, fixed_seeds: SeedSet | None = None,
                    implanted_needles=None, allow_new_needles=True, formalism="2D", n_target_points=3000,
                    n_check_points=6000, usable_length_mm=200.0, gauge=18, image_geometry=None,
                    optimizer_options=None, progress=None) -> Plan:
    """Plan a seed implant on segment masks (all on ``geometry``); the library entry point.

    ``masks``: {segment name: bool mask [k, j, i]}. ``target`` names the target; ``oars`` is a list
    of :class:`problem.OARConstraint` (or names: reported, no limit); ``forbidden`` the names of
    structures no needle may cross (with ``obstacle_margin_mm``). ``needle_mode``: "template"
    (parallel template along ``direction``), "freehand" (``needles``: list of Needle or (entry, tip)
    pairs) or "fan" (automatic non-coplanar candidates from a skin region: ``approach`` direction
    or ``entry_center``). Re-planning: ``fixed_seeds`` are already implanted (their dose counts,
    they are not moved) and ``implanted_needles`` are needles where the intra-operative CT shows
    them (loaded at no needle cost); with ``allow_new_needles=False`` only they are used.
    ``optimizer_options`` go to :func:`optimizer.optimize` (needle_weight, coverage_buffer,
    mip_points, anneal_iterations). Returns a :class:`Plan` with its optimiser report; goals that
    cannot be met are stated in ``plan.optimizer['unmet']`` and the best plan found is returned.
    """
    from ..physics.dose import dose_factor_h
    from .nomogram import estimate
    from .obstacles import obstacle_map_for
    from ..physics.sources import get_model
    from ..physics.strength import strength_at
    from ..physics.tg43 import TG43Kernel
    t_start = time.monotonic()
    rules = rules or LoadingRules()
    model = get_model(model_id)
    strength_U = strength_at(model, strength, strength_unit, reference_date, implant_date)
    if goals is None:
        if prescription_Gy is None:
            raise InputError("no prescription dose given")
        goals = Goals(float(prescription_Gy))
    elif prescription_Gy is not None and abs(goals.prescription_Gy - float(prescription_Gy)) > 1e-9:
        raise InputError(f"prescription {prescription_Gy} Gy differs from the goals' {goals.prescription_Gy} Gy")
    rx = goals.prescription_Gy
    if not target:
        raise InputError("no target structure given")
    names = {k.lower(): k for k in masks}

    def get_mask(name, what):
        key = names.get(str(name).strip().lower())
        if key is None:
            raise InputError(f"{what} '{name}' not found (segments: {', '.join(masks) or 'none'})")
        m = np.asarray(masks[key], dtype=bool)
        if m.shape != geometry.shape:
            raise InputError(f"{what} '{name}': mask shape {m.shape} does not match the grid {geometry.shape}")
        return key, m

    target_name, tmask = get_mask(target, "target")
    if not tmask.any():
        raise InputError(f"the target '{target_name}' is empty (no voxel)")
    if image_geometry is not None:
        inside = image_geometry.contains_ras(mask_points(tmask, geometry))
        if not inside.any():
            raise InputError(f"the target '{target_name}' lies outside the image")
        if not inside.all():
            raise InputError(f"{100 * (1 - inside.mean()):.1f}% of the target '{target_name}' lies outside the image")
    body_name, bmask = get_mask(body, "body") if body else (None, None)
    forb = {}
    for f in forbidden:
        k, m = get_mask(f, "forbidden structure")
        forb[k] = m
    if not oars and goals.oars:
        oars = goals.oars  # organ limits given through the goals only
    oar_cons = [o if isinstance(o, OARConstraint) else OARConstraint(str(o)) for o in oars]
    oar_masks = {}
    for o in oar_cons:
        k, m = get_mask(o.name, "organ at risk")
        o.name = k
        oar_masks[k] = m
    goals.oars = oar_cons
    warnings = []
    rng = np.random.default_rng(rng_seed)
    _progress.report(progress, 0.0, "plan: needles")

    # -- needles -------------------------------------------------------------------------------
    tpts_all = mask_points(tmask, geometry)
    all_needles = make_needles(geometry, tmask, bmask, forb, needle_mode=needle_mode, direction=direction,
                               template_spacing_mm=template_spacing_mm, template_point=template_point,
                               needles=needles, approach=approach, entry_center=entry_center,
                               entry_radius_mm=entry_radius_mm, obstacle_margin_mm=obstacle_margin_mm,
                               usable_length_mm=usable_length_mm, gauge=gauge, rng_seed=rng_seed,
                               implanted_needles=implanted_needles, allow_new_needles=allow_new_needles)
    _progress.report(progress, 0.08, "plan: obstacles")

    # -- obstacles and lengths ---------------------------------------------------------------------
    hits = []
    if forb:
        omap = obstacle_map_for(geometry, forb, obstacle_margin_mm, all_needles)
        hits = omap.check_all(all_needles)
    blocked = {h.needle_number for h in hits}
    usable, too_long = [], []
    for n in all_needles:
        if n.number in blocked and not n.fixed:
            continue
        if n.too_long and not n.fixed:
            too_long.append(n)
            continue
        usable.append(n)
    if not usable:
        raise InputError(f"no feasible needle path: all {len(all_needles)} needle(s) cross a forbidden structure "
                         f"(margin {obstacle_margin_mm:g} mm) or are longer than their usable length")
    _progress.report(progress, 0.12, "plan: candidates")

    # -- candidates and sample points --------------------------------------------------------------
    region = TargetRegion(tmask, geometry, rules.target_margin_mm)
    if fixed_seeds is not None and len(fixed_seeds):
        from ..physics.dose import require_seeds_in_grid
        require_seeds_in_grid(geometry, fixed_seeds, "image of the segmentation (fixed seeds: check RAS vs LPS)")
    cands = candidate_positions(usable, region, rules, None if fixed_seeds is None else fixed_seeds.positions)
    if len(cands) == 0:
        raise InputError(f"no candidate seed position: no usable needle passes through the target '{target_name}' "
                         f"with the first seed {rules.tip_offset_mm:g} mm from its tip")
    kernel = TG43Kernel(model, formalism)
    gy_per_U_h = dose_factor_h(model) / 100.0
    opt_pts = _jittered_points(tmask, geometry, n_target_points, rng)
    chk_pts = _jittered_points(tmask, geometry, n_check_points, rng)
    oar_samples = []
    if oar_cons:
        from scipy.spatial import cKDTree
        ttree = cKDTree(tpts_all[:: max(1, len(tpts_all) // 4000)])
        for o in oar_cons:
            m = oar_masks[o.name]
            if not m.any():
                warnings.append(f"organ at risk '{o.name}' is empty")
                continue
            opts = _mask_points_near(m, geometry, tpts_all, 30.0)
            if not len(opts):
                continue
            dist = ttree.query(opts)[0]
            near = dist <= 30.0
            if not near.any():
                continue
            opts, dist = opts[near], dist[near]
            n_keep = min(len(opts), 3000)
            pick = np.sort(rng.choice(len(opts), n_keep, replace=False)) if len(opts) > n_keep else np.arange(len(opts))
            voxel_cc = geometry.voxel_volume_cc * len(opts) / n_keep
            oar_samples.append((o, opts[pick], voxel_cc, dist[pick]))
    fixed_kernels = None
    if fixed_seeds is not None and len(fixed_seeds):
        fixed_kernels = {m: (TG43Kernel(get_model(m), formalism), dose_factor_h(get_model(m)) / 100.0)
                         for m in dict.fromkeys(fixed_seeds.models)}
    needle_cost = np.array([0.0 if n.fixed else 1.0 for n in usable])
    _progress.report(progress, 0.15, "plan: dose-influence matrix")
    prob = build_problem(cands, len(usable), needle_cost, opt_pts, chk_pts, kernel, gy_per_U_h, strength_U, goals,
                         oar_samples, fixed_seeds, rules.min_distance_mm, fixed_kernels)
    t_matrix = time.monotonic() - t_start
    res = optimize(prob, method, time_limit_s, rng_seed, progress=_progress.scaled(progress, 0.3, 0.95),
                   **(optimizer_options or {}))
    _progress.report(progress, 0.96, "plan: seeds")

    # -- result ------------------------------------------------------------------------------------
    sel = np.flatnonzero(res.selected)
    new_seeds = SeedSet(cands.positions[sel], cands.axes[sel], np.full(len(sel), strength_U), [model.model_id] * len(sel))
    # number the loaded needles 1..U (in template / path order) and the unused ones after them, so the
    # loading table reads needle 1, 2, 3 ... in the room; names (template hole labels) are kept
    used_numbers = {usable[k].number for k in cands.needle_index[sel]}
    order = [n for n in all_needles if n.number in used_numbers] + [n for n in all_needles if n.number not in used_numbers]
    new_number = {n.number: i for i, n in enumerate(order, start=1)}
    renamed = {}
    for n in order:
        if n.name == f"N{n.number}":  # automatic name follows the number
            renamed[n.name] = f"N{new_number[n.number]}"
            n.name = renamed[n.name]
        n.number = new_number[n.number]
    for h in hits:
        h.needle_number = new_number[h.needle_number]
        h.needle = renamed.get(h.needle, h.needle)
        fixed_needle = any(n.fixed and n.number == h.needle_number for n in order)
        warnings.append(h.describe() + ("" if fixed_needle else ": not loaded"))
    for n in too_long:
        warnings.append(f"needle {n.name} ({n.depth_mm:.1f} mm) is longer than its usable length "
                        f"{n.usable_length_mm:g} mm: not loaded")
    all_needles = order
    seed_needle = [usable[k].number for k in cands.needle_index[sel]]
    s_tip = list(cands.s_from_tip_mm[sel])
    fixed_flags = [False] * len(sel)
    if fixed_seeds is not None and len(fixed_seeds):
        new_seeds = SeedSet.concatenate([fixed_seeds, new_seeds])
        seed_needle = [0] * len(fixed_seeds) + seed_needle
        s_tip = [np.nan] * len(fixed_seeds) + s_tip
        fixed_flags = [True] * len(fixed_seeds) + fixed_flags
    try:
        nomo = estimate(tmask, geometry, rx, strength_U, model).to_dict()
        n_new = int(len(sel))
        if nomo["n_seeds"] and abs(n_new + int(sum(fixed_flags)) - nomo["n_seeds"]) > 0.35 * nomo["n_seeds"]:
            warnings.append(f"the plan uses {n_new + int(sum(fixed_flags))} seeds, the nomogram suggests about "
                            f"{nomo['n_seeds']}: check the plan")
    except InputError as exc:
        nomo = {"unavailable": str(exc)}
    if not res.goals_met:
        warnings.append(res.message)
    optimizer_info = {"method": res.method, "status": res.status, "message": res.message, "goals_met": res.goals_met,
                      "unmet": res.unmet, "seconds_search": round(res.seconds, 3),
                      "seconds_total": round(time.monotonic() - t_start, 3), "seconds_matrix": round(t_matrix, 3),
                      "rng_seed": rng_seed, "time_limit_s": time_limit_s, "n_candidates": len(cands),
                      "n_target_points": n_target_points, "n_check_points": n_check_points,
                      "sampled": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.sampled.items()}}
    plan = Plan(_source_dict(model, strength_U, strength, strength_unit, reference_date, implant_date), rx, goals, rules,
                all_needles, new_seeds, seed_needle, s_tip, fixed_flags, formalism,
                {"target": target_name, "oars": [o.name for o in oar_cons], "forbidden": list(forb), "body": body_name,
                 "needle_mode": needle_mode, "direction": None if needle_mode != "template" else
                 [float(v) for v in parse_direction(direction)], "obstacle_margin_mm": obstacle_margin_mm},
                optimizer_info, nomo, [h.to_row() for h in hits], warnings)
    _progress.report(progress, 1.0, "plan: done")
    return plan


def make_needles(geometry, tmask, bmask=None, forbidden_masks=None, *, needle_mode="template", direction="P",
                 template_spacing_mm=10.0, template_point=None, needles=None, approach=None, entry_center=None,
                 entry_radius_mm=60.0, obstacle_margin_mm=5.0, usable_length_mm=200.0, gauge=18, rng_seed=0,
                 implanted_needles=None, allow_new_needles=True):
    """Needles of a plan, numbered 1..N: implanted ones (fixed) first, then the new ones of ``needle_mode``.

    Modes and arguments as in :func:`plan_from_masks`; ``forbidden_masks`` ({name: mask}) steer the
    fan candidates (template and free-hand needles are checked afterwards, see :func:`check_needles`).
    """
    from .needles import fan_candidates, freehand_needles, parallel_template, renumber
    from .obstacles import obstacle_map_for
    forb = dict(forbidden_masks or {})
    tmask = np.asarray(tmask, dtype=bool)
    if not tmask.any():
        raise InputError("the target is empty (no voxel)")
    tpts_all = mask_points(tmask, geometry)
    implanted = [copy.deepcopy(n) for n in (implanted_needles or [])]  # the caller's needles stay untouched
    for n in implanted:
        n.fixed = True
        n.kind = "implanted" if n.kind == "freehand" else n.kind
    new = []
    if allow_new_needles:
        if needle_mode == "template":
            new = parallel_template(tmask, geometry, parse_direction(direction), template_spacing_mm, template_point,
                                    bmask, gauge=gauge, usable_length_mm=usable_length_mm)
        elif needle_mode == "freehand":
            if not needles:
                raise InputError("free-hand mode needs needle paths (entry and tip of each needle)")
            new = [copy.deepcopy(n) if isinstance(n, Needle) else None for n in needles]
            if any(n is None for n in new):
                new = freehand_needles(needles, gauge=gauge, usable_length_mm=usable_length_mm)
        elif needle_mode == "fan":
            if bmask is None:
                raise InputError("fan candidates need a body (skin) segment: give the body structure")
            from .needles import MaskSampler, skin_point
            if entry_center is None:
                app = parse_direction(approach if approach is not None else "A")
                entry_center = skin_point(MaskSampler(bmask, geometry), tpts_all.mean(axis=0), app)
                if entry_center is None:
                    raise InputError("the target centroid is not inside the body segment: cannot find the skin "
                                     "entry region")
            entry_center = np.asarray(entry_center, float).reshape(3)
            omap = None
            if forb:
                # distance maps only on the box around the target and the entry region
                r = float(entry_radius_mm)
                box = np.vstack([tpts_all, entry_center - r, entry_center + r])
                omap = obstacle_map_for(geometry, forb, obstacle_margin_mm, (), box)
            new = fan_candidates(tmask, geometry, bmask, None, entry_center, entry_radius_mm, template_spacing_mm, omap,
                                 usable_length_mm, gauge, rng_seed=rng_seed)
        else:
            raise InputError(f"unknown needle mode {needle_mode!r} (use template, freehand or fan)")
    all_needles = renumber(implanted + list(new))
    if not all_needles:
        raise InputError("no needles: give implanted needles or allow new ones")
    return all_needles


def check_needles(geometry, forbidden_masks, needles, margin_mm=5.0):
    """Hits (:class:`obstacles.Hit`) of ``needles`` against the forbidden structures, and length warnings."""
    from .obstacles import length_flags, obstacle_map_for
    hits = []
    if forbidden_masks:
        hits = obstacle_map_for(geometry, forbidden_masks, margin_mm, needles).check_all(needles)
    return hits, length_flags(needles)


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


def evaluate(plan: Plan, dose_Gy, dose_geometry, structures, progress=None):
    """Evaluate the plan's dose on its structures (:func:`evaluation.evaluate_plan`); stores metrics."""
    from ..evaluation.evaluate import evaluate_plan
    ev = evaluate_plan(dose_Gy, dose_geometry, structures, plan.prescription_Gy, target=plan.structures.get("target"),
                       body=None, metrics=["D90", "V100", "V150", "V200", "Dmax", "D2cc", "D0.1cc"], on_outside="skip",
                       progress=progress)
    plan.evaluation = ev
    plan.metrics = ev.to_dict()
    plan.metrics["goal_check"] = goal_check(plan, ev)
    return ev


def goal_check(plan: Plan, ev) -> list:
    """The plan's own goals checked on the evaluated dose: rows (goal, value, limit, passed)."""
    rows = []
    t = plan.structures.get("target")
    m = ev.metrics.get(t, {})
    g = plan.goals

    def add(what, value, limit, passed):
        rows.append({"goal": what, "value": None if value is None else round(float(value), 4), "limit": limit,
                     "passed": bool(passed)})

    if m:
        add("target V100 >= %", m["V100"]["percent"], 100 * g.v100_min, m["V100"]["percent"] >= 100 * g.v100_min - 1e-9)
        add("target D90 >= Gy", m["D90"]["Gy"], g.d90_min_frac * g.prescription_Gy,
            m["D90"]["Gy"] >= g.d90_min_frac * g.prescription_Gy - 1e-9)
        add("target V150 <= % (soft)", m["V150"]["percent"], 100 * g.v150_max, m["V150"]["percent"] <= 100 * g.v150_max)
        add("target V200 <= % (soft)", m["V200"]["percent"], 100 * g.v200_max, m["V200"]["percent"] <= 100 * g.v200_max)
    for o in g.oars:
        mo = ev.metrics.get(o.name, {})
        for vol, lim, lab in o.limits():
            key = {"Dmax": "Dmax", "D2cc": "D2cc", "D0.1cc": "D0.1cc"}[lab]
            v = mo.get(key, {}).get("Gy")
            if v is not None and not math.isfinite(v):
                v = None
            add(f"{o.name} {lab} <= Gy", v, lim, v is None or v <= lim + 1e-9)
    return rows


def plan_case(image_path, seg_path, target, oars=(), forbidden=(), body=None, *, dose_spacing_mm=2.0,
              dose_engine=None, progress=None, **kwargs):
    """Plan from files: CT (for the geometry check, may be None) and segmentation; returns (plan, dose, dose geometry).

    Keyword arguments are those of :func:`plan_from_masks`. The dose is computed on a grid around
    the target (``dose_spacing_mm``) and evaluated on the segmentation; the plan's
    ``dose_grid`` stays attached for manual edits. Write the result with :func:`write_plan_folder`.
    """
    from ..imaging.segio import read_segmentation
    from ..evaluation.structures import structures_from_segmentation
    image_geometry = None
    if image_path is not None:
        from ..core.imageio import geometry_of, read_sitk
        image_geometry = geometry_of(read_sitk(image_path))
    seg = read_segmentation(seg_path, reference_geometry=image_geometry)  # the CT grid for an RT Structure Set
    wanted = [target] + [o.name if isinstance(o, OARConstraint) else o for o in oars] + list(forbidden) + \
        ([body] if body else [])
    masks = {}
    for name in wanted:
        if not name:
            continue
        s = seg.find(name)
        masks[s.name] = seg.mask(s.segment_id)
    if not target:
        raise InputError("no target structure given")
    plan = plan_from_masks(seg.geometry, masks, seg.find(target).name, oars=oars, forbidden=forbidden, body=body,
                           image_geometry=image_geometry, progress=_progress.scaled(progress, 0.0, 0.6), **kwargs)
    plan.structures["image"] = None if image_path is None else str(image_path)
    plan.structures["segmentation"] = str(seg_path)
    tmask = masks[plan.structures["target"]]
    dose, g = compute_dose(plan, seg.geometry, tmask, dose_spacing_mm, engine=dose_engine,
                           progress=_progress.scaled(progress, 0.6, 0.9))
    names = [plan.structures["target"]] + plan.structures["oars"]
    structs = structures_from_segmentation(seg, list(dict.fromkeys(names)), allow_empty=False)
    evaluate(plan, dose, g, structs, progress=_progress.scaled(progress, 0.9, 1.0))
    return plan, dose, g
