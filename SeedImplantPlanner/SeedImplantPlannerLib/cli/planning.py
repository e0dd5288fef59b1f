"""Planning subcommands: ``plan`` (needles, loading, inverse planning -> plan folder) and ``nomogram``.

Exit codes: 0 plan written with every goal met; 2 bad input (one line ``seedplan: error: ...``);
3 plan written but goals not met (one line ``seedplan: warning: ...`` naming them).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.errors import InputError

EXIT_GOALS_NOT_MET = 3


def parse_oar(text):
    """``NAME[:LIMIT=Gy,...]`` with limits Dmax, D2cc, D0.1cc -> OARConstraint."""
    from ..planning.problem import OARConstraint
    name, _, spec = str(text).partition(":")
    name = name.strip()
    if not name:
        raise InputError(f"organ at risk {text!r}: empty name (use NAME or NAME:D2cc=100,Dmax=200)")
    keys = {"dmax": "dmax_Gy", "d2cc": "d2cc_Gy", "d0.1cc": "d0_1cc_Gy"}
    kw = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        k, eq, v = part.partition("=")
        if not eq or k.strip().lower() not in keys:
            raise InputError(f"organ at risk {text!r}: limit {part!r} must be Dmax=Gy, D2cc=Gy or D0.1cc=Gy")
        try:
            val = float(v)
        except ValueError:
            raise InputError(f"organ at risk {text!r}: limit {part!r} is not a number") from None
        kw[keys[k.strip().lower()]] = val
    oc = OARConstraint(name, **kw)
    oc.limits()
    return oc


#: The planner's goals when neither the command line nor a goal file gives them (fractions, as TargetSpec).
GOAL_DEFAULTS = {"v100": 0.95, "d90": 1.0, "v150": 0.60, "v200": 0.20, "d90_max": None}


def goal_row_is_soft(row):
    """A goal-file row the planner treats as a soft goal (a target's V150/V200 <= or D90 <=): traded, not failed."""
    return "prescription_Gy" in row and row.get("op") in ("<=", "<") and row.get("metric") in ("V150", "V200", "D90")


def _apply_goal_set(goal_set, specs, oars, given, rx):
    """Targets and organs with the goals of ``goal_set``: each target the goals written for it (or for "the
    target"), against its own prescription, where neither ``--target NAME:...`` nor a plan-wide option
    (``given``, None = not given) sets them; each ``--oar NAME`` without limits the file's Dmax/D2cc/D0.1cc."""
    from ..planning.problem import OARConstraint
    from ..planning.targets import TargetSpec, organ_limits_from_goal_set, target_goals_from_goal_set
    names = [sp.name for sp in specs] + [o.name for o in oars]
    out = []
    for sp in specs:
        own_rx = sp.prescription_Gy if sp.prescription_Gy is not None else rx
        from_file = target_goals_from_goal_set(goal_set, sp.name, names, own_rx)
        values = {k: getattr(sp, k) for k in sp.__dataclass_fields__}
        for k, v in from_file.items():
            if values[k] is None and given.get(k) is None:
                values[k] = v
        out.append(TargetSpec(**values))
    new_oars = []
    for o in oars:
        has = any(getattr(o, k) is not None for k in ("dmax_Gy", "d2cc_Gy", "d0_1cc_Gy"))
        limits = {} if has else organ_limits_from_goal_set(goal_set, o.name, names, rx)
        new_oars.append(OARConstraint(o.name, **limits) if limits else o)
    return out, new_oars


def cmd_plan(args):
    """Plan a seed implant from an image and a segmentation; write the plan folder."""
    from .main import ProgressBar
    from ..planning.loading import LoadingRules
    from ..planning.problem import Goals
    from ..planning.pipeline import plan_case
    from ..planning.planfile import write_plan_folder
    from ..physics.strength import check_strength_value
    from ..planning.targets import merge_specs, parse_target
    specs = merge_specs([parse_target(t, args.unit) for t in args.target])
    goal_set = None
    if args.goals:
        from ..evaluation.goals import load_goals
        goal_set = load_goals(args.goals)
        if args.prescription is None and goal_set.prescription_Gy and any(sp.prescription_Gy is None for sp in specs):
            args.prescription = float(goal_set.prescription_Gy)
            print(f"seedplan: note: prescription {args.prescription:g} Gy taken from goals '{goal_set.name}' "
                  "(targets without rx=)", file=sys.stderr)
    no_strength = [sp.name for sp in specs if sp.strength is None]
    if args.strength is None and no_strength:
        raise InputError(f"no seed strength for target(s) {', '.join(no_strength)}: give --strength or "
                         "--target NAME:strength=VALUE")
    for sp in specs:
        check_strength_value(sp.strength if sp.strength is not None else args.strength,
                             "seed strength" if len(specs) == 1 else f"{sp.name} seed strength")
    for name, value, low in (("--time-limit", args.time_limit, 0.0), ("--dose-spacing", args.dose_spacing, 0.0),
                             ("--template-spacing", args.template_spacing, 0.0), ("--seed-spacing", args.seed_spacing, 0.0)):
        if not value > low:
            raise InputError(f"{name} must be > 0, got {value:g}")
    for name, value in (("--v100", args.v100), ("--v150", args.v150), ("--v200", args.v200)):
        if value is not None and not 0.0 <= value <= 100.0:
            raise InputError(f"{name} is a percentage of the target volume between 0 and 100, got {value:g}")
    if args.d90 is not None and not 0.0 < args.d90 <= 300.0:
        raise InputError(f"--d90 is a percentage of the prescription in (0, 300], got {args.d90:g}")
    if args.d90_max is not None and not 0.0 < args.d90_max <= 300.0:
        raise InputError(f"--d90-max is a percentage of the prescription in (0, 300], got {args.d90_max:g}")
    if args.max_needles is not None and args.max_needles < 1:
        raise InputError(f"--max-needles must be at least 1, got {args.max_needles}")
    if not args.needle_clearance >= 0:
        raise InputError(f"--needle-clearance must be >= 0 mm, got {args.needle_clearance:g}")
    if not args.search_time > 0:
        raise InputError(f"--search-time must be > 0 s, got {args.search_time:g}")
    if not args.anneal_iterations >= 1:
        raise InputError(f"--anneal-iterations must be >= 1, got {args.anneal_iterations}")
    if not args.needle_weight >= 0:
        raise InputError(f"--needle-weight must be >= 0, got {args.needle_weight:g}")
    if not args.margin >= 0:
        raise InputError(f"--margin must be >= 0 mm, got {args.margin:g}")
    if args.prescription is not None and not args.prescription > 0:
        raise InputError(f"prescription dose must be > 0 Gy, got {args.prescription}")
    missing = [sp.name for sp in specs if sp.prescription_Gy is None]
    if args.prescription is None and missing:
        raise InputError(f"no prescription dose for target(s) {', '.join(missing)}: give --prescription or "
                         "--target NAME:rx=Gy")
    rules = LoadingRules(spacing_mm=args.seed_spacing, tip_offset_mm=args.tip_offset, target_margin_mm=args.target_margin,
                         min_distance_mm=args.min_distance, stranded=args.stranded)
    rx = args.prescription if args.prescription is not None else specs[0].prescription_Gy
    # plan-wide goals: the command line's where given, else the defaults (a goal file comes between, per target)
    given = {"v100": args.v100, "d90": args.d90, "v150": args.v150, "v200": args.v200, "d90_max": args.d90_max}
    wide = {k: (GOAL_DEFAULTS[k] if v is None else v / 100.0) for k, v in given.items()}
    goals = Goals(rx, wide["v100"], wide["d90"], wide["v150"], wide["v200"], [], wide["d90_max"])
    oars = [parse_oar(o) for o in args.oar]
    if goal_set is not None:
        specs, oars = _apply_goal_set(goal_set, specs, oars, given, rx)
    needles = None
    if args.needles:
        from ..planning.needles import read_needles
        needles = read_needles(args.needles, args.gauge, args.usable_length)
    implanted = None
    if args.implanted_needles:
        from ..planning.needles import read_needles
        implanted = read_needles(args.implanted_needles, args.gauge, args.usable_length)
    fixed = None
    if args.fixed_seeds:
        from .common import read_seed_input
        fixed = read_seed_input(args.fixed_seeds, ct=args.image)
    mode = args.needle_mode
    if mode == "freehand" and not needles:
        raise InputError("--needle-mode freehand needs --needles FILE (entry and tip of each needle)")
    bar = ProgressBar("plan", enabled=not args.quiet)
    plan_goals = goals if args.prescription is not None else None
    if plan_goals is None:
        # no plan-wide prescription: every target brings its own, the command-line goals are its defaults
        from ..planning.targets import TargetSpec
        specs = [TargetSpec(**{**{k: getattr(sp, k) for k in sp.__dataclass_fields__},
                               **{k: getattr(sp, k) if getattr(sp, k) is not None else wide[k] for k in wide}})
                 for sp in specs]
    plan, dose, g = plan_case(
        args.image, args.segmentation, None, targets=specs, oars=oars, forbidden=args.forbidden, body=args.body,
        dose_spacing_mm=args.dose_spacing, dose_engine=args.engine, progress=bar,
        model_id=args.model, strength=args.strength if args.strength is not None else specs[0].strength,
        strength_unit=args.unit, reference_date=args.reference_date,
        implant_date=args.implant_date, goals=plan_goals, needle_mode=mode, direction=args.direction,
        template_spacing_mm=args.template_spacing, template_point=args.template_point, needles=needles,
        approach=args.approach, entry_center=args.entry, entry_radius_mm=args.entry_radius, rules=rules,
        obstacle_margin_mm=args.margin, method=args.method, time_limit_s=args.time_limit, rng_seed=args.random_seed,
        fixed_seeds=fixed, implanted_needles=implanted, allow_new_needles=not args.no_new_needles,
        usable_length_mm=args.usable_length, gauge=args.gauge, formalism=args.formalism, max_needles=args.max_needles,
        needle_clearance_mm=args.needle_clearance, allow_needle_crossing=args.allow_needle_crossing,
        search_time_s=args.search_time, goal_set=goal_set,
        optimizer_options={"needle_weight": args.needle_weight, "anneal_iterations": args.anneal_iterations})
    written = write_plan_folder(args.out, plan, dose, g)
    from ..planning.planfile import plan_report
    print(plan_report(plan))
    print(f"wrote {args.out}: " + ", ".join(p.name for p in written))
    failed = [r for r in plan.metrics.get("goal_check", []) if not r["passed"] and "soft" not in r["goal"]]
    said = {(r.get("structure"), r.get("metric"), r.get("op")) for r in failed}  # the same goal is named once
    failed_file = [r for r in plan.metrics.get("goals", []) if r.get("passed") is False and not goal_row_is_soft(r)
                   and (r["structure"], r["metric"], r["op"]) not in said]
    if failed or failed_file or not plan.optimizer.get("goals_met", False):
        what = "; ".join([f"{r['goal']} {r['limit']:g}: got {('n/a' if r['value'] is None else format(r['value'], '.2f'))}"
                          for r in failed] + [f"{r['structure']} {r['goal']}" + (
                              f" (Rx {r['prescription_Gy']:g} Gy)" if "prescription_Gy" in r else "")
                              + f": got {r['value']:.2f} {r['unit']}".rstrip() for r in failed_file]) \
            or plan.optimizer.get("message", "")
        for extra in plan.optimizer.get("unreachable", []) + ([plan.optimizer["message"]] if "needle limit" in
                                                                plan.optimizer.get("message", "") else []):
            what += f"; {extra}"
        print(f"seedplan: warning: goals not met ({what}); the best plan found was written to {args.out}",
              file=sys.stderr)
        return EXIT_GOALS_NOT_MET
    return 0


def cmd_needles(args):
    """Needle paths only: needle table and obstacle report (no seeds, no dose)."""
    from ..core.fileio import write_csv
    from ..planning.needles import NEEDLE_TABLE_COLUMNS, needle_table, read_needles
    from ..planning.obstacles import HIT_COLUMNS
    from ..planning.pipeline import check_needles, make_needles
    from ..imaging.segio import read_segmentation
    if not args.template_spacing > 0:
        raise InputError(f"--template-spacing must be > 0, got {args.template_spacing:g}")
    if not args.margin >= 0:
        raise InputError(f"--margin must be >= 0 mm, got {args.margin:g}")
    seg = read_segmentation(args.segmentation)
    if not args.target:
        raise InputError("no target structure given")
    tmask = seg.mask(seg.find(args.target).segment_id)
    if not tmask.any():
        raise InputError(f"the target '{args.target}' is empty (no voxel)")
    bmask = seg.mask(seg.find(args.body).segment_id) if args.body else None
    forb = {seg.find(f).name: seg.mask(seg.find(f).segment_id) for f in args.forbidden}
    given = read_needles(args.needles, args.gauge, args.usable_length) if args.needles else None
    if args.needle_mode == "freehand" and not given:
        raise InputError("--needle-mode freehand needs --needles FILE (entry and tip of each needle)")
    needles = make_needles(seg.geometry, tmask, bmask, forb, needle_mode=args.needle_mode, direction=args.direction,
                           template_spacing_mm=args.template_spacing, template_point=args.template_point,
                           needles=given, approach=args.approach, entry_center=args.entry,
                           entry_radius_mm=args.entry_radius, obstacle_margin_mm=args.margin,
                           usable_length_mm=args.usable_length, gauge=args.gauge, rng_seed=args.random_seed)
    hits, too_long = check_needles(seg.geometry, forb, needles, args.margin)
    out = Path(args.out)
    from ..core.fileio import atomic_folder
    with atomic_folder(out) as tmp:
        write_csv(tmp / "needles.csv", needle_table(needles), NEEDLE_TABLE_COLUMNS)
        write_csv(tmp / "obstacles.csv", [h.to_row() for h in hits], HIT_COLUMNS)
    blocked = {h.needle_number for h in hits}
    print(f"{len(needles)} needle(s); {len(blocked)} meet a forbidden structure; {len(too_long)} too long")
    for h in hits:
        print(h.describe())
    for t in too_long:
        print(t)
    print(f"wrote {out / 'needles.csv'}, {out / 'obstacles.csv'}")
    return 0


def cmd_nomogram(args):
    """Print the nomogram estimate (seeds, total strength) for a target."""
    from ..planning.nomogram import estimate
    from ..imaging.segio import read_segmentation
    from ..physics.sources import get_model
    from ..physics.strength import strength_at
    seg = read_segmentation(args.segmentation)
    if not args.target:
        raise InputError("no target structure given")
    s = seg.find(args.target)
    mask = seg.mask(s.segment_id)
    if not mask.any():
        raise InputError(f"the target '{s.name}' is empty (no voxel)")
    model = get_model(args.model)
    sk = strength_at(model, args.strength, args.unit, args.reference_date, args.implant_date)
    est = estimate(mask, seg.geometry, args.prescription, sk, model)
    print(est.describe())
    print(f"dimensions (principal axes): {', '.join(f'{d:.2f}' for d in est.dimensions_cm)} cm")
    for n in est.notes:
        print(f"note: {n}")
    print(f"source: {est.source}")
    return 0


def _add_source_options(p, strength_required=True):
    p.add_argument("--model", default="I125_OncoSeed_6711", help="seed model id (see `seedplan sources`)")
    p.add_argument("--strength", type=float, required=strength_required,
                   help="strength per seed (see --unit)" + ("" if strength_required else
                                                            "; the default of targets without strength="))
    p.add_argument("--unit", choices=("U", "mCi"), default="U", help="strength unit (default U = air-kerma strength)")
    p.add_argument("--reference-date", help="date the strength refers to (ISO), decayed to --implant-date")
    p.add_argument("--implant-date", help="implant date (ISO)")


def _add_needle_options(p, modes=("template", "freehand", "fan")):
    """Needle-path options shared by `seedplan plan` and `seedplan needles`."""
    p.add_argument("--needle-mode", choices=modes, default="template",
                   help="parallel template, free-hand needles from --needles, automatic fan candidates"
                        + (", or auto (the planner chooses templates or fans in several directions)" if "auto" in modes
                           else ""))
    p.add_argument("--direction", default="P",
                   help="template insertion direction: R, L, A, P, S, I (the way the needle travels) or x,y,z")
    p.add_argument("--template-spacing", type=float, default=10.0, help="template hole / fan needle spacing, mm")
    p.add_argument("--template-point", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="a point of the template plane (RAS mm); default on the skin (with --body)")
    p.add_argument("--needles", help="free-hand needles: CSV (entry_x_mm..tip_z_mm) or JSON (curved catheters)")
    p.add_argument("--approach", help="fan mode: side of the body the needles come from (R, L, A, P, S, I or x,y,z)")
    p.add_argument("--entry", type=float, nargs=3, metavar=("X", "Y", "Z"), help="fan mode: centre of the entry region")
    p.add_argument("--entry-radius", type=float, default=60.0, help="fan mode: entry region radius, mm (default 60)")
    p.add_argument("--gauge", type=int, default=18, help="needle gauge (default 18)")
    p.add_argument("--usable-length", type=float, default=200.0, help="needle usable length, mm (default 200)")


def register(sub):
    """Add the planning subcommands."""
    p = sub.add_parser("plan", help="plan needles and seeds (inverse planning) and write a plan folder")
    p.add_argument("--image", help="planning CT (NRRD, NIfTI, MHA or DICOM folder): checks the target lies inside it")
    p.add_argument("--segmentation", required=True, help="segmentation (.seg.nrrd or labelmap with names)")
    p.add_argument("--target", required=True, action="append", metavar="NAME[:rx=Gy,strength=S,...]",
                   help="target segment (repeatable: several targets in one implant), optionally with its own "
                        "prescription and strength and goals: rx=Gy, strength=VALUE (in --unit), v100=%%, d90=%%, "
                        "v150=%%, v200=%%, d90max=%%, direction=R|L|A|P|S|I|x;y;z (this target's template "
                        "direction, over --direction; in auto mode it fixes this target's template)")
    p.add_argument("--oar", action="append", default=[], metavar="NAME[:LIMITS]",
                   help="organ at risk with optional limits, e.g. Bowel:D2cc=100,Dmax=200 (repeatable)")
    p.add_argument("--forbidden", nargs="+", default=[], metavar="NAME",
                   help="structures no needle may cross (bone, vessels, bowel, nerves, ...)")
    p.add_argument("--body", help="body (skin) segment: template placement on the skin, fan entries")
    p.add_argument("--margin", type=float, default=5.0, help="safety margin around forbidden structures, mm (default 5)")
    _add_source_options(p, strength_required=False)
    p.add_argument("--prescription", type=float,
                   help="prescription dose, Gy (full decay); the default of targets without rx=")
    p.add_argument("--goals", help="goal preset (see 'seedplan goals') or goals file: each target's goals (its own "
                                   "entry, else the file's target goals) and the limits of --oar organs given without "
                                   "limits; checked on the plan's dose, every target against its own prescription")
    p.add_argument("--v100", type=float, help="goal: V100 >= this %% of the target (default: --goals, else 95)")
    p.add_argument("--d90", type=float, help="goal: D90 >= this %% of prescription (default: --goals, else 100)")
    p.add_argument("--v150", type=float, help="soft goal: V150 <= this %% (default: --goals, else 60)")
    p.add_argument("--v200", type=float, help="soft goal: V200 <= this %% (default: --goals, else 20)")
    p.add_argument("--d90-max", type=float, help="soft goal: D90 <= this %% of prescription (default: none)")
    _add_needle_options(p, modes=("template", "freehand", "fan", "auto"))
    p.add_argument("--max-needles", type=int, help="at most this many new needles (default: no limit)")
    p.add_argument("--needle-clearance", type=float, default=3.0,
                   help="minimum distance between two needles' surfaces inside the patient, mm (default 3)")
    p.add_argument("--allow-needle-crossing", action="store_true", help="let needles pass closer than the clearance")
    p.add_argument("--search-time", type=float, default=12.0,
                   help="auto mode: time budget of the direction search, s (default 12)")
    p.add_argument("--seed-spacing", type=float, default=10.0, help="seed spacing along a needle, mm (10 or 5)")
    p.add_argument("--tip-offset", type=float, default=5.0, help="first seed centre from the needle tip, mm")
    p.add_argument("--target-margin", type=float, default=0.0, help="seeds allowed this far outside the target, mm")
    p.add_argument("--min-distance", type=float, default=5.0, help="minimum distance to seeds of other needles, mm")
    p.add_argument("--stranded", action="store_true", help="stranded seeds with spacers (else loose seeds)")
    p.add_argument("--method", choices=("anneal", "mip", "greedy"), default="anneal", help="optimiser (default anneal)")
    p.add_argument("--time-limit", type=float, default=8.0, help="optimiser time limit, s (best plan so far returned)")
    p.add_argument("--random-seed", type=int, default=0, help="random seed (same seed, same plan)")
    p.add_argument("--anneal-iterations", type=int, default=40000,
                   help="annealing iterations (default 40000; more can save a few seeds, see docs/planning.md)")
    p.add_argument("--needle-weight", type=float, default=1.0,
                   help="how many seeds one more needle is worth to the optimiser (default 1; see docs/planning.md)")
    p.add_argument("--fixed-seeds", help="re-planning: seeds already implanted (seeds CSV, plan JSON or brachy RT Plan .dcm)")
    p.add_argument("--implanted-needles", help="re-planning: needles as the intra-operative CT shows them (CSV/JSON)")
    p.add_argument("--no-new-needles", action="store_true", help="re-planning: load only the implanted needles")
    p.add_argument("--formalism", choices=("2D", "1D"), default="2D", help="TG-43U1 formalism (default 2D)")
    p.add_argument("--dose-spacing", type=float, default=2.0, help="dose grid spacing, mm (default 2)")
    p.add_argument("--engine", choices=("fast", "direct"), default=None, help="dose grid engine (default fast)")
    p.add_argument("--out", required=True, help="output plan folder")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("needles", help="needle paths only: needle table and forbidden-structure report")
    p.add_argument("--segmentation", required=True, help="segmentation (.seg.nrrd or labelmap with names)")
    p.add_argument("--target", required=True, help="target segment name")
    p.add_argument("--forbidden", nargs="+", default=[], metavar="NAME", help="structures no needle may cross")
    p.add_argument("--body", help="body (skin) segment")
    p.add_argument("--margin", type=float, default=5.0, help="safety margin, mm (default 5)")
    _add_needle_options(p)
    p.add_argument("--random-seed", type=int, default=0, help="random seed of the fan candidates")
    p.add_argument("--out", required=True, help="output folder (needles.csv, obstacles.csv)")
    p.set_defaults(func=cmd_needles)

    p = sub.add_parser("nomogram", help="quick estimate of seed count and total strength (Wu et al. power law)")
    p.add_argument("--segmentation", required=True, help="segmentation (.seg.nrrd or labelmap with names)")
    p.add_argument("--target", required=True, help="target segment name")
    _add_source_options(p)
    p.add_argument("--prescription", type=float, required=True, help="prescription dose, Gy")
    p.set_defaults(func=cmd_nomogram)
