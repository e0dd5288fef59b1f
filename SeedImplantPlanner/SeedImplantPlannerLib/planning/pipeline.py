"""The planning pipeline: needles, obstacle checks, candidates, optimisation, dose and evaluation.

:func:`plan_from_masks` (segment masks on one grid) and :func:`plan_case` (files) build needles
(:func:`make_needles`, or the direction search of :mod:`directions`), check them against
forbidden structures, list candidate positions (:mod:`assemble`), optimise the loading
(:mod:`optimizer`); :func:`plan_case` then computes the dose on a grid around the targets and the
metrics (:mod:`plan_dose`); :func:`planfile.write_plan_folder` writes the plan folder.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from .loading import LoadingRules
from .needles import Needle, mask_points
from .clearance import DEFAULT_CLEARANCE_MM
from .optimizer import DEFAULT_NEEDLE_WEIGHT, optimize
from .planfile import Plan
from .problem import Goals, OARConstraint
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


def _source_dict(model, strength_U, strength_value, strength_unit, reference_date, implant_date):
    return {"model": model.model_id, "nuclide": model.nuclide, "strength_U": float(strength_U),
            "strength_entered": {"value": float(strength_value), "unit": strength_unit},
            "reference_date": None if reference_date is None else str(reference_date),
            "implant_date": None if implant_date is None else str(implant_date),
            "half_life_days": model.half_life_days, "U_per_mCi": model.u_per_mci}


def _target_specs(target, targets):
    """TargetSpec list from ``target`` (name, spec or list) and ``targets``; duplicates merged or refused."""
    from .targets import TargetSpec, merge_specs
    given = list(targets) if targets else ([] if target is None else
                                           list(target) if isinstance(target, (list, tuple)) else [target])
    specs = [t if isinstance(t, TargetSpec) else TargetSpec(str(t)) for t in given if t is not None and str(t).strip()]
    if not specs:
        raise InputError("no target structure given")
    return merge_specs(specs)


def plan_from_masks(geometry, masks: dict, target=None, *, targets=None, oars=(), forbidden=(), body=None,
                    skin_mask=None, model_id=DEFAULT_MODEL, strength=0.5, strength_unit="U", reference_date=None,
                    implant_date=None, prescription_Gy=None, goals: Goals | None = None, needle_mode="template",
                    direction="P", template_spacing_mm=10.0, template_point=None, needles=None, approach=None,
                    entry_center=None, entry_radius_mm=60.0, rules: LoadingRules | None = None, obstacle_margin_mm=5.0,
                    method="anneal", time_limit_s=8.0, rng_seed=0, fixed_seeds: SeedSet | None = None,
                    implanted_needles=None, allow_new_needles=True, formalism="2D", n_target_points=3000,
                    n_check_points=6000, usable_length_mm=200.0, gauge=18, image_geometry=None, max_needles=None,
                    needle_clearance_mm=DEFAULT_CLEARANCE_MM, allow_needle_crossing=False, search_time_s=12.0,
                    optimizer_options=None, soft_bound_time_s=1.0, progress=None) -> Plan:
    """Plan a seed implant on segment masks (all on ``geometry``); the library entry point.

    ``masks``: {segment name: bool mask [k, j, i]}. ``target`` names the target (or ``targets``:
    several :class:`targets.TargetSpec`, each with its own prescription, goals and strength, planned
    as one implant: one set of seeds whose dose adds up everywhere). ``oars`` is a list of
    :class:`problem.OARConstraint` (or names: reported, no limit); ``forbidden`` the names of
    structures no needle may cross (with ``obstacle_margin_mm``). ``needle_mode``: "template"
    (parallel template along ``direction``), "freehand" (``needles``: list of Needle or (entry, tip)
    pairs), "fan" (automatic non-coplanar candidates from a skin region: ``approach`` direction
    or ``entry_center``) or "auto" (the planner chooses among templates in several directions and
    fans from several skin regions, :mod:`directions`, within ``search_time_s``). The skin is
    the outside of ``body`` united with every given mask (or ``skin_mask``, e.g. from all labels or
    the CT, :func:`targets.skin_region`). ``max_needles`` limits the new needles; needles whose
    surfaces come closer than ``needle_clearance_mm`` inside the patient are never both loaded
    unless ``allow_needle_crossing``. Re-planning: ``fixed_seeds`` are already implanted (their
    dose counts, they are not moved) and ``implanted_needles`` are needles where the
    intra-operative CT shows them (loaded at no needle cost); with ``allow_new_needles=False`` only
    they are used. ``optimizer_options`` go to :func:`optimizer.optimize` (needle_weight,
    coverage_buffer, mip_points, anneal_iterations). A soft goal still traded gets a lower bound on
    the same candidates within ``soft_bound_time_s`` (:mod:`bounds`; 0 = none): the trade message
    says whether the goal is infeasible with these needles. Returns a :class:`Plan` with its optimiser
    report; goals that cannot be met are stated in ``plan.optimizer['unmet']`` and the best plan
    found is returned.
    """
    from ..physics.dose import dose_factor_h
    from .assemble import TargetInfo, assemble, blocking_report
    from .bounds import bound_traded, describe as describe_bound
    from .clearance import clashing_pairs
    from .directions import search_target
    from .nomogram import estimate
    from .obstacles import obstacle_map_for
    from .targets import check_overlaps, skin_region
    from ..physics.sources import get_model
    from ..physics.strength import strength_at
    from ..physics.tg43 import TG43Kernel
    t_start = time.monotonic()
    rules = rules or LoadingRules()
    model = get_model(model_id)
    strength_U = strength_at(model, strength, strength_unit, reference_date, implant_date)
    specs = _target_specs(target, targets)
    if goals is not None and prescription_Gy is not None and abs(goals.prescription_Gy - float(prescription_Gy)) > 1e-9:
        raise InputError(f"prescription {prescription_Gy} Gy differs from the goals' {goals.prescription_Gy} Gy")
    if goals is None and prescription_Gy is None and any(s.prescription_Gy is None for s in specs):
        missing = [s.name for s in specs if s.prescription_Gy is None]
        raise InputError("no prescription dose given" + ("" if len(specs) == 1 else
                                                          f" for target(s) {', '.join(missing)}"))
    if max_needles is not None and not (isinstance(max_needles, (int, np.integer)) and max_needles >= 1):
        raise InputError(f"the needle limit must be a whole number >= 1, got {max_needles!r}")
    names = {k.lower(): k for k in masks}

    def get_mask(name, what):
        key = names.get(str(name).strip().lower())
        if key is None:
            raise InputError(f"{what} '{name}' not found (segments: {', '.join(masks) or 'none'})")
        m = np.asarray(masks[key], dtype=bool)
        if m.shape != geometry.shape:
            raise InputError(f"{what} '{name}': mask shape {m.shape} does not match the grid {geometry.shape}")
        return key, m

    tinfos = []
    for spec in specs:
        tname, tm = get_mask(spec.name, "target")
        if not tm.any():
            raise InputError(f"the target '{tname}' is empty (no voxel)")
        if image_geometry is not None:
            inside = image_geometry.contains_ras(mask_points(tm, geometry))
            if not inside.any():
                raise InputError(f"the target '{tname}' lies outside the image")
            if not inside.all():
                raise InputError(f"{100 * (1 - inside.mean()):.1f}% of the target '{tname}' lies outside the image")
        own = any(getattr(spec, f) is not None for f in ("prescription_Gy", "v100", "d90", "v150", "v200", "d90_max"))
        tg = goals if (goals is not None and not own) else spec.goals(goals, prescription_Gy)
        if tg is goals and len(specs) > 1:
            tg = spec.goals(goals, prescription_Gy)
        s_U = strength_U if spec.strength is None else strength_at(model, spec.strength, spec.strength_unit or
                                                                   strength_unit, reference_date, implant_date)
        tinfos.append(TargetInfo(tname, tm, tg, float(s_U)))
    if len({t.name for t in tinfos}) != len(tinfos):
        raise InputError("the same target is given twice")
    check_overlaps(geometry, {t.name: t.mask for t in tinfos})
    plan_goals = tinfos[0].goals
    rx = plan_goals.prescription_Gy
    body_name, body_mask = get_mask(body, "body") if body else (None, None)
    forb = {}
    for f in forbidden:
        k, m = get_mask(f, "forbidden structure")
        forb[k] = m
    if not oars and goals is not None and goals.oars:
        oars = goals.oars  # organ limits given through the goals only
    oar_cons = [o if isinstance(o, OARConstraint) else OARConstraint(str(o)) for o in oars]
    oar_masks = {}
    for o in oar_cons:
        k, m = get_mask(o.name, "organ at risk")
        o.name = k
        oar_masks[k] = m
    plan_goals.oars = oar_cons
    if skin_mask is not None:
        bmask = np.asarray(skin_mask, dtype=bool)
    elif body_mask is not None:
        bmask = skin_region(geometry, body_mask, [t.mask for t in tinfos] + list(forb.values()) + list(oar_masks.values()))
    else:
        bmask = None
    warnings = []
    rng = np.random.default_rng(rng_seed)
    kernel = TG43Kernel(model, formalism)
    gy_per_U_h = dose_factor_h(model) / 100.0
    fixed_kernels = None
    if fixed_seeds is not None and len(fixed_seeds):
        fixed_kernels = {m: (TG43Kernel(get_model(m), formalism), dose_factor_h(get_model(m)) / 100.0)
                         for m in dict.fromkeys(fixed_seeds.models)}
    _progress.report(progress, 0.0, "plan: needles")

    # -- needles -------------------------------------------------------------------------------
    search_rows = []
    implanted = [copy.deepcopy(n) for n in (implanted_needles or [])]
    for n in implanted:
        n.fixed = True
        n.kind = "implanted" if n.kind == "freehand" else n.kind
    new = []
    # each target's own template direction (TargetSpec.direction) over the plan-wide one
    t_dirs = [parse_direction(sp.direction) if sp.direction else None for sp in specs]
    if allow_new_needles and needle_mode == "auto":
        sub = _progress.scaled(progress, 0.0, 0.5)
        n_search = max(1, sum(d is None for d in t_dirs))
        for k, t in enumerate(tinfos):
            if t_dirs[k] is not None:  # the user fixed this target's direction: its template, no search
                fixed_dir = make_needles(geometry, t.mask, bmask, forb, needle_mode="template", direction=t_dirs[k],
                                         template_spacing_mm=template_spacing_mm, usable_length_mm=usable_length_mm,
                                         gauge=gauge)
                new.extend(fixed_dir)
                search_rows.append({"target": t.name, "set": "template, direction given by the user", "kind": "template",
                                    "direction": [round(float(v), 4) for v in t_dirs[k]],
                                    "needles_proposed": len(fixed_dir), "chosen": True})
                continue
            chosen, rows = search_target(
                geometry, t, bmask, forb, oar_cons, oar_masks, kernel, gy_per_U_h, rules, obstacle_margin_mm,
                template_spacing_mm, entry_radius_mm, usable_length_mm, gauge, rng_seed, max_needles,
                None if allow_needle_crossing else needle_clearance_mm, search_time_s / n_search, warnings, _progress.scaled(sub, k / len(tinfos), (k + 1) / len(tinfos)))
            new.extend(chosen)
            search_rows.extend(rows)
    elif allow_new_needles and needle_mode == "freehand":
        new = make_needles(geometry, tinfos[0].mask, bmask, forb, needle_mode="freehand", needles=needles, gauge=gauge,
                           usable_length_mm=usable_length_mm)
    elif allow_new_needles:
        for t, t_dir in zip(tinfos, t_dirs):
            new.extend(make_needles(geometry, t.mask, bmask, forb, needle_mode=needle_mode,
                                    direction=direction if t_dir is None else t_dir,
                                    template_spacing_mm=template_spacing_mm, template_point=template_point,
                                    approach=approach, entry_center=entry_center, entry_radius_mm=entry_radius_mm,
                                    obstacle_margin_mm=obstacle_margin_mm, usable_length_mm=usable_length_mm,
                                    gauge=gauge, rng_seed=rng_seed))
    from .needles import renumber
    all_needles = renumber(implanted + list(new))
    if not all_needles:
        raise InputError("no needles: give implanted needles or allow new ones")
    _progress.report(progress, 0.5 if needle_mode == "auto" else 0.08, "plan: obstacles")

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
    # a target no usable needle reaches: say which structures are in the way
    from .needles import MaskSampler
    reachable, unreachable = [], []
    for t in tinfos:
        inside = MaskSampler(t.mask, geometry)
        through = [n for n in all_needles if inside(n.sample_path(1.0)[0]).any()]
        usable_ids = {id(n) for n in usable}
        ok = [n for n in through if id(n) in usable_ids]
        if ok:
            reachable.append(t)
        else:
            unreachable.append(blocking_report(through, hits, too_long, t.name)
                               + f" (safety margin {obstacle_margin_mm:g} mm)")
    warnings.extend(unreachable)
    if not reachable:
        raise InputError("; ".join(unreachable))
    if not usable:
        raise InputError(f"no feasible needle path: all {len(all_needles)} needle(s) cross a forbidden structure "
                         f"(margin {obstacle_margin_mm:g} mm) or are longer than their usable length")
    _progress.report(progress, 0.55 if needle_mode == "auto" else 0.12, "plan: candidates")

    # -- problem and optimisation ------------------------------------------------------------------
    if fixed_seeds is not None and len(fixed_seeds):
        from ..physics.dose import require_seeds_in_grid
        require_seeds_in_grid(geometry, fixed_seeds, "image of the segmentation (fixed seeds: check RAS vs LPS)")
    conflicts = None
    if not allow_needle_crossing:
        pairs = clashing_pairs(usable, needle_clearance_mm)
        conflicts = np.array([p for p in pairs if not (usable[p[0]].fixed and usable[p[1]].fixed)], int).reshape(-1, 2)
    prob, cands, strengths, owner = assemble(
        geometry, usable, tinfos, plan_goals, oar_cons, oar_masks, kernel, gy_per_U_h, rules, rng,
        n_target_points=n_target_points, n_check_points=n_check_points, fixed_seeds=fixed_seeds,
        fixed_kernels=fixed_kernels, max_needles=max_needles, needle_conflicts=conflicts, warnings=warnings)
    t_matrix = time.monotonic() - t_start
    res = optimize(prob, method, time_limit_s, rng_seed,
                   progress=_progress.scaled(progress, 0.6 if needle_mode == "auto" else 0.3, 0.95),
                   **(optimizer_options or {}))
    _progress.report(progress, 0.96, "plan: seeds")

    # -- result ------------------------------------------------------------------------------------
    sel = np.flatnonzero(res.selected)
    new_seeds = SeedSet(cands.positions[sel], cands.axes[sel], strengths[sel], [model.model_id] * len(sel))
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
    nomo = None
    target_rows = []
    for k, t in enumerate(tinfos):
        n_t = int(np.count_nonzero(owner[sel] == k))
        row = {"name": t.name, "prescription_Gy": t.goals.prescription_Gy, "goals": t.goals.to_dict(),
               "strength_U": t.strength_U, "n_seeds": n_t}
        if specs[k].direction:  # this target's own template direction, as given
            row["direction"] = specs[k].direction
        try:
            est = estimate(t.mask, geometry, t.goals.prescription_Gy, t.strength_U, model).to_dict()
            if est["n_seeds"] and abs(n_t - est["n_seeds"]) > 0.35 * est["n_seeds"] and len(tinfos) > 1:
                warnings.append(f"target {t.name}: the plan uses {n_t} seeds, the nomogram suggests about "
                                f"{est['n_seeds']}: check the plan")
        except InputError as exc:
            est = {"unavailable": str(exc)}
        row["nomogram"] = est
        target_rows.append(row)
        if k == 0:
            nomo = est
    if len(tinfos) == 1 and nomo and nomo.get("n_seeds"):
        n_all = int(len(sel)) + int(sum(fixed_flags))
        if abs(n_all - nomo["n_seeds"]) > 0.35 * nomo["n_seeds"]:
            warnings.append(f"the plan uses {n_all} seeds, the nomogram suggests about {nomo['n_seeds']}: check the plan")
    if not res.goals_met:
        warnings.append(res.message)
    traded = [r for r in res.sampled.get("soft_goals", []) if not r["met"]]
    if traded and soft_bound_time_s and res.goals_met:
        # is the traded goal infeasible with these needles, or did the optimiser stop short? (bounds.py)
        bound_traded(prob, traded, soft_bound_time_s, rng_seed=rng_seed)
    for r in traded:
        warnings.append(f"soft goal traded: {r['target'] if len(tinfos) > 1 else 'target'} {r['goal']} {r['limit']:g}: "
                        f"best found {r['value']:.1f} (over by {r['excess']:.1f}) to meet the hard goals with these "
                        f"needles" + (f"; {describe_bound(r)}" if "verdict" in r else ""))
    n_costly = len({usable[k].number for k in cands.needle_index[sel] if not usable[k].fixed})
    optimizer_info = {"method": res.method, "status": res.status, "message": res.message, "goals_met": res.goals_met,
                      "unmet": res.unmet, "soft_traded": traded, "seconds_search": round(res.seconds, 3),
                      "seconds_total": round(time.monotonic() - t_start, 3), "seconds_matrix": round(t_matrix, 3),
                      "rng_seed": rng_seed, "time_limit_s": time_limit_s, "n_candidates": len(cands),
                      "n_target_points": n_target_points, "n_check_points": n_check_points,
                      "max_needles": max_needles, "n_new_needles": n_costly,
                      "needle_weight": (optimizer_options or {}).get("needle_weight", DEFAULT_NEEDLE_WEIGHT),
                      "needle_clearance_mm": None if allow_needle_crossing else needle_clearance_mm,
                      "n_needle_clashes": 0 if conflicts is None else int(len(conflicts)), "unreachable": unreachable,
                      "sampled": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.sampled.items()}}
    if search_rows:
        optimizer_info["direction_search"] = search_rows
    structures = {"target": tinfos[0].name, "oars": [o.name for o in oar_cons], "forbidden": list(forb),
                  "body": body_name, "needle_mode": needle_mode,
                  "direction": None if needle_mode != "template" else [float(v) for v in parse_direction(
                      direction if t_dirs[0] is None else t_dirs[0])],
                  "obstacle_margin_mm": obstacle_margin_mm}
    if needle_mode == "template" and len(tinfos) > 1:
        structures["target_directions"] = {
            t.name: [round(float(v), 6) for v in parse_direction(direction if d is None else d)]
            for t, d in zip(tinfos, t_dirs)}
    if len(tinfos) > 1:
        structures["targets"] = [t.name for t in tinfos]
    plan = Plan(_source_dict(model, tinfos[0].strength_U, strength if specs[0].strength is None else specs[0].strength,
                             strength_unit if specs[0].strength is None else (specs[0].strength_unit or strength_unit),
                             reference_date, implant_date), rx, plan_goals, rules,
                all_needles, new_seeds, seed_needle, s_tip, fixed_flags, formalism, structures,
                optimizer_info, nomo, [h.to_row() for h in hits], warnings, targets=target_rows if len(tinfos) > 1 else [])
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
    from .needle_layouts import fan_candidates, parallel_template, skin_point
    from .needles import MaskSampler, freehand_needles, renumber
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


def plan_case(image_path, seg_path, target=None, oars=(), forbidden=(), body=None, *, dose_spacing_mm=2.0,
              dose_engine=None, goal_set=None, progress=None, **kwargs):
    """Plan from files: CT (may be None) and segmentation; returns (plan, dose, dose geometry).

    Keyword arguments are those of :func:`plan_from_masks` (``targets`` for several targets). The
    skin the needles enter through is the outside of the union of every segment when ``body`` is
    given (a labelmap's body label excludes the organs); without a body, automatic modes (fan,
    auto) use the CT's air boundary, else the union of every segment. The dose is computed on a
    grid around the targets (``dose_spacing_mm``) and evaluated on the segmentation; the plan's
    ``dose_grid`` stays attached for manual edits. ``goal_set`` (:class:`goals.GoalSet`): its goals are
    checked on the plan's dose too (``plan.metrics["goals"]``), every target against its own prescription.
    Write the result with :func:`write_plan_folder`.
    """
    from ..imaging.segio import read_segmentation
    from ..evaluation.structures import structures_from_segmentation
    from .plan_dose import compute_dose, evaluate
    from .targets import TargetSpec, skin_region
    image_geometry = None
    if image_path is not None:
        from ..core.imageio import geometry_of, read_sitk
        image_geometry = geometry_of(read_sitk(image_path))
    seg = read_segmentation(seg_path, reference_geometry=image_geometry)  # the CT grid for an RT Structure Set
    specs = _target_specs(target, kwargs.pop("targets", None))
    specs = [TargetSpec(**{**{k: getattr(sp, k) for k in sp.__dataclass_fields__}, "name": seg.find(sp.name).name})
             for sp in specs]
    wanted = [o.name if isinstance(o, OARConstraint) else o for o in oars] + list(forbidden) + ([body] if body else [])
    masks = {}
    for name in [sp.name for sp in specs] + wanted:
        if not name:
            continue
        s = seg.find(name)
        masks[s.name] = seg.mask(s.segment_id)
    if image_geometry is not None:  # here the files are known: name them (plan_from_masks only sees arrays)
        for sp in specs:
            pts = mask_points(masks[sp.name], seg.geometry)
            inside = image_geometry.contains_ras(pts)
            if len(pts) and not inside.all():
                lo, hi = image_geometry.bounds_ras()
                share = "the" if not inside.any() else f"{100 * (1 - inside.mean()):.1f}% of the"
                raise InputError(f"{seg_path}: {share} target '{sp.name}' lies outside the image {image_path}: the "
                                 f"target spans RAS {np.round(pts.min(0), 1).tolist()} to {np.round(pts.max(0), 1).tolist()}"
                                 f" mm, the image {np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm")
    mode = kwargs.get("needle_mode", "template")
    if kwargs.get("skin_mask") is None and (body or mode in ("fan", "auto")):
        skin = None
        if not body and image_path is not None and mode in ("fan", "auto"):
            from ..core.imageio import read_image
            ct, ct_geometry = read_image(image_path)
            if ct.shape == seg.geometry.shape and np.allclose(ct_geometry.origin, seg.geometry.origin, atol=1e-3):
                skin = skin_region(seg.geometry, ct_hu=ct)
        if skin is None:
            skin = skin_region(seg.geometry, None, [seg.mask(s.segment_id) for s in seg.segments])
        kwargs["skin_mask"] = skin
    plan = plan_from_masks(seg.geometry, masks, targets=specs, oars=oars, forbidden=forbidden, body=body,
                           image_geometry=image_geometry, progress=_progress.scaled(progress, 0.0, 0.6), **kwargs)
    plan.structures["image"] = None if image_path is None else str(image_path)
    plan.structures["segmentation"] = str(seg_path)
    tnames = [sp.name for sp in specs]
    tmask = np.zeros(seg.geometry.shape, dtype=bool)
    for n in tnames:
        tmask |= masks[n]
    dose, g = compute_dose(plan, seg.geometry, tmask, dose_spacing_mm, engine=dose_engine,
                           progress=_progress.scaled(progress, 0.6, 0.9))
    names = tnames + plan.structures["oars"]
    structs = structures_from_segmentation(seg, list(dict.fromkeys(names)), allow_empty=False)
    evaluate(plan, dose, g, structs, progress=_progress.scaled(progress, 0.9, 1.0), goal_set=goal_set)
    return plan, dose, g
