"""Re-plan of the remaining seeds on an intra-operative CT, with the cheap options when the goals fail.

Part of the intra-operative chain (:mod:`planning.intraop`): :func:`replan_with` re-plans once
along the needles in place with the found seeds fixed (:func:`pipeline.plan_from_masks`, the
plan's source, prescription, goals, structures and rules); :func:`replan_options` tries the
plan's rules first, then seed spacing 5 mm, no margin between seeds and the target edge, then
new needles (adopted only when allowed), and says which option meets the goals. The re-plan's
needles keep the plan's numbers and names (:func:`restore_numbers`). Units: mm, RAS, Gy, U.
"""

from __future__ import annotations

import copy

import numpy as np

from ..core import progress as _progress
from ..physics.seeds import SeedSet
from .loading import LoadingRules
from .planfile import Plan


def restore_numbers(new: Plan, placed, plan: Plan):
    """Give the re-plan's needles the plan's numbers (in-place needles) or numbers after them (new ones)."""
    top = max([n.number for n in plan.needles] + [n.number for n in placed] + [0])
    mapping = {}
    names = {n.name for n in plan.needles}
    for i, n in enumerate(new.needles):
        if i < len(placed):
            mapping[n.number] = placed[i].number
            n.name = placed[i].name
        else:
            top += 1
            mapping[n.number] = top
            if n.name in names or not n.name:
                n.name = f"new-{n.name or top}"
    for n in new.needles:
        n.number = mapping[n.number]
    new.seed_needle = np.array([mapping.get(int(v), 0) if v > 0 else 0 for v in new.seed_needle], dtype=int)
    new.needles.sort(key=lambda n: n.number)
    return new


def _struct_masks(seg, plan: Plan):
    names = [plan.structures.get("target")] + list(plan.structures.get("oars") or []) + \
        list(plan.structures.get("forbidden") or []) + [plan.structures.get("body")]
    masks = {}
    for name in names:
        if not name:
            continue
        s = seg.find(name)
        masks[s.name] = seg.mask(s.segment_id)
    return masks


def replan_with(plan: Plan, seg, fixed: SeedSet, placed, *, allow_new_needles=False, spacing_mm=None,
                target_margin_mm=None, time_limit_s=4.0, rng_seed=0, progress=None):
    """One re-plan of the remaining seeds (see the module doc); returns (plan, dose, dose geometry, evaluation)."""
    from ..evaluation.structures import structures_from_segmentation
    from .pipeline import plan_from_masks
    from .plan_dose import compute_dose, evaluate
    r = plan.rules.to_dict()
    if spacing_mm is not None:
        r["spacing_mm"] = float(spacing_mm)
    if target_margin_mm is not None:
        r["target_margin_mm"] = float(target_margin_mm)
    rules = LoadingRules(**r)
    masks = _struct_masks(seg, plan)
    target = plan.structures["target"]
    st = plan.structures
    direction = st.get("direction") or "P"
    goals = copy.deepcopy(plan.goals)
    new = plan_from_masks(
        seg.geometry, masks, seg.find(target).name, oars=goals.oars, forbidden=list(st.get("forbidden") or []),
        body=st.get("body"), model_id=plan.model_id, strength=plan.strength_U, strength_unit="U", goals=goals,
        needle_mode=st.get("needle_mode") if st.get("needle_mode") in ("template", "fan") else "template",
        direction=direction, template_spacing_mm=float(st.get("template_spacing_mm", 5.0)), rules=rules,
        obstacle_margin_mm=float(st.get("obstacle_margin_mm", 5.0)), time_limit_s=time_limit_s, rng_seed=rng_seed,
        fixed_seeds=fixed if len(fixed) else None, implanted_needles=placed, allow_new_needles=allow_new_needles,
        formalism=plan.formalism, progress=_progress.scaled(progress, 0.0, 0.7))
    new.source = dict(plan.source)
    new.structures.update({k: v for k, v in plan.structures.items() if k in ("image", "segmentation")})
    new = restore_numbers(new, placed, plan)
    tmask = masks[seg.find(target).name]
    dose, g = compute_dose(new, seg.geometry, tmask, 2.0, progress=_progress.scaled(progress, 0.7, 0.9))
    names = [seg.find(target).name] + [o.name for o in goals.oars]
    structs = structures_from_segmentation(seg, list(dict.fromkeys(names)), allow_empty=False)
    ev = evaluate(new, dose, g, structs, progress=_progress.scaled(progress, 0.9, 1.0))
    return new, dose, g, ev


def _failed_goals(plan: Plan):
    return [r for r in plan.metrics.get("goal_check", []) if not r["passed"] and "soft" not in str(r["goal"])]


def _option_row(name, plan: Plan, ev, spacing, margin, new_needles, adopted):
    failed = _failed_goals(plan)
    tm = ev.metrics.get(plan.structures.get("target"), {}) if hasattr(ev, "metrics") else {}
    return {"option": name, "seed_spacing_mm": spacing, "target_margin_mm": margin, "new_needles": new_needles,
            "adopted": adopted, "goals_met": not failed, "n_new_seeds": int((~plan.seed_fixed).sum()),
            "n_needles_used": len(plan.used_needles()),
            "v100_pct": None if "V100" not in tm else round(float(tm["V100"]["percent"]), 2),
            "d90_Gy": None if "D90" not in tm else round(float(tm["D90"]["Gy"]), 2),
            "unmet": "; ".join(f"{r['goal']} {r['limit']:g}" for r in failed)}



def replan_options(plan: Plan, seg, fixed: SeedSet, placed, *, allow_new_needles=False, try_options=True,
                   time_limit_s=4.0, rng_seed=0, progress=None):
    """The re-plan as the plan, then the cheap options in turn until one meets the goals.

    Options (``try_options``): seed spacing 5 mm (when the plan's is larger), no target margin
    (when the plan has one), new needles. The first option meeting the goals is adopted; one that
    needs new needles is adopted only with ``allow_new_needles`` (else reported). Returns
    ``((plan, dose, dose geometry, evaluation) adopted, adopted option name, option rows,
    goals met, advice sentence)``.
    """
    base_spacing = plan.rules.spacing_mm
    base_margin = plan.rules.target_margin_mm
    attempts = [("as planned", None, None, False)]
    if try_options:
        if base_spacing > 5.0:
            attempts.append(("seed spacing 5 mm", 5.0, None, False))
        if base_margin > 0.0:
            attempts.append(("no target margin", 5.0 if base_spacing > 5.0 else None, 0.0, False))
        attempts.append(("new needles", 5.0 if base_spacing > 5.0 else None, 0.0 if base_margin > 0 else None, True))
    options, best, adopted = [], None, None
    n_att = len(attempts)
    for a, (name, spacing, margin, new_needles) in enumerate(attempts):
        sub = _progress.scaled(progress, a / n_att, (a + 1) / n_att)
        _progress.report(progress, a / n_att, f"re-plan: {name}")
        res = replan_with(plan, seg, fixed, placed, allow_new_needles=new_needles, spacing_mm=spacing,
                          target_margin_mm=margin, time_limit_s=time_limit_s, rng_seed=rng_seed, progress=sub)
        may_adopt = (not new_needles) or allow_new_needles
        met = not _failed_goals(res[0])
        row = _option_row(name, res[0], res[3], spacing if spacing is not None else base_spacing,
                          margin if margin is not None else base_margin, new_needles, False)
        options.append(row)
        if best is None:
            best, adopted = res, name
        if met and may_adopt:
            best, adopted = res, name
            break
        if met:         # met only with new needles, which are not allowed: reported, not adopted
            break
    for row in options:
        row["adopted"] = row["option"] == adopted
    goals_met = not _failed_goals(best[0])
    return best, adopted, options, goals_met, _advice(options, adopted, allow_new_needles, goals_met)


def _advice(options, adopted, allow_new_needles, goals_met):
    """One sentence on what meets the goals."""
    meeting = [o for o in options if o["goals_met"]]
    if goals_met:
        if adopted == "as planned":
            return "the re-plan meets the goals with the plan's loading rules"
        return f"the goals are met with: {adopted} (adopted)"
    if meeting:
        o = meeting[0]
        if o["new_needles"] and not allow_new_needles:
            return (f"the goals are not met along the needles in place; new needles would meet them "
                    f"({o['n_needles_used']} needles, V100 {o['v100_pct']} %): allow them (--allow-new-needles)")
        return f"{o['option']} would meet the goals"
    tried = ", ".join(o["option"] for o in options)
    return (f"no option tried meets the goals ({tried}); the best plan found is written: consider more needles, "
            "a higher seed strength, or accept the shortfall")
