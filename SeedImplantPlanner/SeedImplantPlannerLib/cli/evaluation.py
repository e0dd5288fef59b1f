"""Evaluation subcommands: ``dvh``, ``metrics``, ``compare``, ``report``, ``margin`` and ``goals``.

Inputs are a dose image in Gy (NRRD/NIfTI/MHA, e.g. from ``seedplan dose``) and a segmentation
(``.seg.nrrd`` or a labelmap with a ``.labels.json`` sidecar) on any grid. Every output file is
written atomically.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np

from ..core.errors import InputError


#: Notes for stderr, printed only once a command has succeeded (errors stay one line).
_NOTES = []


def _flush_notes():
    for n in _NOTES:
        print(f"seedplan: note: {n}", file=sys.stderr)
    _NOTES.clear()


def _read_dose(path, what="dose"):
    from ..core.imageio import read_image
    from ..evaluation.dvh import check_dose
    arr, geometry = read_image(path)
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{path}: {what} image is not numeric")
    arr = arr.astype(np.float64)
    check_dose(arr, geometry, f"{what} grid {path}")
    return arr, geometry


def _structures(args):
    from ..evaluation.structures import read_structures
    names = None
    if getattr(args, "names", None):
        names = [n.strip() for n in ",".join(args.names).split(",") if n.strip()]
    return read_structures(args.structures, names)


def _goals(args):
    from ..evaluation.goals import load_goals
    return load_goals(args.goals) if getattr(args, "goals", None) else None


def _rx(args, goals):
    _NOTES.clear()
    if args.rx is not None:
        return args.rx
    if goals is not None and goals.prescription_Gy:
        _NOTES.append(f"prescription {goals.prescription_Gy:g} Gy taken from goals '{goals.name}'")
        return goals.prescription_Gy
    raise InputError("no prescription dose: give --rx GY (or goals with a prescription_Gy)")


def _supersample(v):
    if v in ("auto", "on", "off"):
        return v
    try:
        n = int(v)
    except ValueError:
        raise InputError(f"--supersample must be auto, on, off or an integer, got {v!r}") from None
    return n


def _radiobiology(args, goals):
    if not getattr(args, "bed", False):
        return None
    from ..physics.radiobiology import TISSUES
    if args.tissue:
        base = TISSUES[args.tissue]
    else:
        base = TISSUES["prostate_tumour"] if goals is not None and "prostate" in goals.name.lower() else TISSUES["tumour"]
    target = base.with_(alpha_beta_Gy=args.alpha_beta, repair_half_time_h=args.repair_half_time_h,
                        alpha_per_Gy=args.alpha, t_pot_days=args.t_pot_days, t_kickoff_days=args.kickoff_days)
    oar = TISSUES["late_normal"].with_(alpha_beta_Gy=args.oar_alpha_beta)
    return {"target": target, "oar": oar}


def _plan_target_prescriptions(plan, structures, target):
    """{name: Rx Gy} of a plan file's targets other than ``target`` that are among ``structures``."""
    names = {s.name.lower(): s.name for s in structures} if not isinstance(structures, dict) else \
        {str(n).lower(): n for n in structures}
    out = {}
    for t in (plan or {}).get("targets") or []:
        if not isinstance(t, dict) or not t.get("name") or t.get("prescription_Gy") is None:
            continue
        n = names.get(str(t["name"]).lower())
        if n is not None and (target is None or n.lower() != str(target).lower()):
            out[n] = float(t["prescription_Gy"])
    return out


def _evaluate(args, dose=None, geometry=None, structures=None, progress=None, plan=None):
    from ..evaluation.evaluate import evaluate_plan
    goals = _goals(args)
    rx = _rx(args, goals)
    if dose is None:
        dose, geometry = _read_dose(args.dose)
    if structures is None:
        structures = _structures(args)
    point_dose = None
    half_life = getattr(args, "half_life_days", None)
    if getattr(args, "seeds", None):
        from .common import read_seed_input
        from ..evaluation.evaluate import check_point_dose_matches, seed_point_dose, seeds_half_life_days
        seeds = read_seed_input(args.seeds)
        point_dose = seed_point_dose(seeds, args.formalism)
        check_point_dose_matches(dose, geometry, point_dose, rx, what=f"dose grid {getattr(args, 'dose', '')}")
        if half_life is None and getattr(args, "bed", False):
            half_life = seeds_half_life_days(seeds)
    if half_life is None:
        half_life = 59.4
    ev = evaluate_plan(dose, geometry, structures, rx, target=args.target, body=args.body, goals=goals,
                       metrics=args.metric or None, supersample=_supersample(args.supersample),
                       radiobiology=_radiobiology(args, goals), half_life_days=half_life,
                       dose_at_points=point_dose, progress=progress,
                       # a plan with several targets: each target against its own prescription and goals
                       target_prescriptions=_plan_target_prescriptions(plan, structures, args.target) or None,
                       # structures named with --names must lie on the grid; of "every structure in
                       # the file", those entirely outside a cropped dose grid are skipped with a warning
                       on_outside="error" if getattr(args, "names", None) else "skip",
                       dvh_max_dose_Gy=(rx * args.dvh_max_percent / 100.0
                                        if getattr(args, "dvh_max_percent", None) is not None else None))
    return ev, dose, geometry, structures


def _bar(args, label):
    from .main import ProgressBar
    return ProgressBar(label, enabled=not getattr(args, "quiet", False))


def _print_metrics(ev, stream=sys.stdout):
    from ..evaluation.metrics import format_value, parse_metric
    for s in ev.samples:
        samp = "voxel centres" if s.factor == 1 else f"{s.factor}^3 sub-voxels"
        own = f", Rx {ev.target_prescriptions[s.name]:g} Gy" if s.name in ev.target_prescriptions else ""
        print(f"{s.name} ({ev.roles[s.name]}{own}, {s.volume_cc:.2f} cc, {samp})", file=stream)
        for name, value in ev.metrics[s.name].items():
            print(f"  {name:<8} {format_value(parse_metric(name), value, ev.prescription_of(s.name))}", file=stream)
    if ev.radiobiology:
        print("Radiobiology (BED / EQD2, Gy):", file=stream)
        for name, r in ev.radiobiology.items():
            items = [f"{k[4:-3]} {v:.1f}/{r['EQD2_' + k[4:]]:.1f}" for k, v in r.items() if k.startswith("BED_")]
            print(f"  {name}: " + ", ".join(items), file=stream)
    if ev.goal_results:
        print("Goals:", file=stream)
        for g in ev.goal_results:
            v = "-" if g["value"] is None else f"{g['value']:.2f} {g['unit']}".strip()
            own = f" (Rx {g['prescription_Gy']:g} Gy)" if ev.target_prescriptions and "prescription_Gy" in g else ""
            print(f"  [{g['status'].upper() if g['passed'] is not None else g['status']}] {g['structure']}: "
                  f"{g['goal']}{own} (value {v})", file=stream)
    for w in ev.warnings:
        print(f"seedplan: warning: {w}", file=sys.stderr)
    _flush_notes()


def cmd_dvh(args):
    """Cumulative and differential DVHs as CSV and/or PNG."""
    from ..reporting.charts import dvh_figure, save_png
    from ..evaluation.dvh import write_dvh_csv
    if not args.csv and not args.png:
        raise InputError("nothing to write: give --csv and/or --png")
    ev, *_ = _evaluate(args, progress=_bar(args, "dvh"))
    if args.csv:
        write_dvh_csv(args.csv, ev.dvhs, ev.prescription_Gy)
        print(f"wrote {args.csv}: {len(ev.dvhs)} structures, bin {ev.dvhs[0].bin_Gy:.4g} Gy")
    if args.png:
        save_png(dvh_figure([("plan", ev.dvhs)], ev.colors, ev.prescription_Gy), args.png)
        print(f"wrote {args.png}")
    for w in ev.warnings:
        print(f"seedplan: warning: {w}", file=sys.stderr)
    _flush_notes()
    return 0


def cmd_metrics(args):
    """Metrics, goals and (optionally) BED; table on stdout, CSV/JSON files on request."""
    from ..evaluation.evaluate import write_goals_csv, write_metrics_csv
    from ..core.fileio import write_json
    if args.goals_csv and not args.goals:
        raise InputError("--goals-csv needs --goals")
    plan = _read_plan(args.plan)
    notes = _defaults_from_plan(args, plan)
    ev, *_ = _evaluate(args, progress=_bar(args, "metrics"), plan=plan)
    _NOTES.extend(notes)
    # option checks that need the evaluation, before any file is written
    if args.goals_csv and not ev.goal_results:
        raise InputError("--goals-csv needs --goals with goals for the evaluated structures")
    if args.time_curve_csv or args.time_curve_png:
        _time_curve_target_d90(ev)
    _print_metrics(ev)
    if args.csv:
        write_metrics_csv(args.csv, ev)
        print(f"wrote {args.csv}")
    if args.goals_csv:
        write_goals_csv(args.goals_csv, ev)
        print(f"wrote {args.goals_csv}")
    if args.json:
        write_json(args.json, ev.to_dict())
        print(f"wrote {args.json}")
    if args.time_curve_csv or args.time_curve_png:
        _write_time_curve(args, ev)
    if args.fail_on_goals and ev.n_goals_failed:
        print(f"seedplan: {ev.n_goals_failed} goal(s) failed", file=sys.stderr)
        return 1
    return 0


def _time_curve_target_d90(ev):
    """D90 of the target (Gy) for the time curve; InputError without a target."""
    if ev.target is None or "D90" not in ev.metrics.get(ev.target, {}) \
            or not math.isfinite(ev.metrics[ev.target]["D90"]["Gy"]):
        raise InputError("the dose/BED time curve needs a target (give --target)")
    return ev.metrics[ev.target]["D90"]["Gy"]


def _write_time_curve(args, ev):
    """Dose (and BED) accumulated against time at the target's D90 (CSV and/or PNG)."""
    from ..physics.radiobiology import LQParams, time_curve
    d90 = _time_curve_target_d90(ev)
    rb = ev.radiobiology.get(ev.target)
    params = LQParams(**rb["parameters"]) if rb else None
    c = time_curve(d90, rb["half_life_days"] if rb else (args.half_life_days or 59.4), params)
    if args.time_curve_csv:
        from ..core.fileio import write_csv
        cols = [k for k in ("t_days", "dose_Gy", "bed_Gy", "bed_repop_Gy") if k in c]
        write_csv(args.time_curve_csv, [{k: f"{c[k][i]:.6g}" for k in cols} for i in range(len(c["t_days"]))], cols)
        print(f"wrote {args.time_curve_csv}")
    if args.time_curve_png:
        from ..reporting.charts import save_png, time_curve_figure
        save_png(time_curve_figure({f"{ev.target} D90 ({d90:.0f} Gy)": c}), args.time_curve_png)
        print(f"wrote {args.time_curve_png}")


def cmd_compare(args):
    """Compare dose B against dose A: metric deltas, DVH overlay, difference volume, gamma index."""
    from ..reporting.charts import dvh_figure, gamma_figure, save_png
    from ..evaluation.compare import compare_plans, write_deltas_csv
    from ..core.fileio import write_json
    from ..core.imageio import write_image
    if args.gamma_map and args.no_gamma:
        raise InputError("--gamma-map needs the gamma index (remove --no-gamma)")
    goals = _goals(args)
    rx = _rx(args, goals)
    a, ga = _read_dose(args.dose_a, "dose A")
    b, gb = _read_dose(args.dose_b, "dose B")
    structures = _structures(args)
    kw = dict(target=args.target, body=args.body, goals=goals, metrics=args.metric or None,
              supersample=_supersample(args.supersample))
    cmp = compare_plans(a, ga, b, gb, structures, rx, labels=tuple(args.labels), resample=args.resample,
                        gamma=not args.no_gamma, dose_percent=args.gamma_dose_percent, dta_mm=args.gamma_dta_mm,
                        threshold_percent=args.gamma_threshold_percent, evaluate_kwargs=kw,
                        progress=_bar(args, "compare"))
    la, lb = cmp.label_a, cmp.label_b
    print(f"{'structure':<12} {'metric':<8} {la:>12} {lb:>12} {'delta':>10}  unit")
    for r in cmp.delta_rows:
        f = (lambda v: "-" if v is None or not math.isfinite(v) else f"{v:.2f}")
        print(f"{r['structure']:<12} {r['metric']:<8} {f(r['A']):>12} {f(r['B']):>12} {f(r['delta']):>10}  {r['unit']}")
    if cmp.gamma is not None:
        s = cmp.gamma.summary()
        print(f"gamma {s['criteria']}, threshold {s['threshold_percent']:g}% of {s['normalization_Gy']:g} Gy: "
              f"{s['pass_rate_percent']:.2f}% pass ({s['n_evaluated']} voxels)")
    if args.csv:
        write_deltas_csv(args.csv, cmp)
        print(f"wrote {args.csv}")
    if args.png:
        save_png(dvh_figure([(la, cmp.eval_a.dvhs), (lb, cmp.eval_b.dvhs)], cmp.eval_a.colors, rx,
                            title=f"DVH: {lb} (dashed) vs {la} (solid)"), args.png)
        print(f"wrote {args.png}")
    if args.diff:
        write_image(args.diff, cmp.difference_Gy, ga, {"SeedPlan_Quantity": f"dose {lb} - {la}", "SeedPlan_Unit": "Gy"})
        print(f"wrote {args.diff}")
    if args.gamma_map:
        if cmp.gamma is None:
            raise InputError("--gamma-map needs the gamma index (remove --no-gamma)")
        write_image(args.gamma_map, np.nan_to_num(cmp.gamma.gamma, nan=-1.0).astype(np.float32), ga,
                    {"SeedPlan_Quantity": "gamma (-1 = not evaluated)"})
        print(f"wrote {args.gamma_map}")
    if args.gamma_png and cmp.gamma is not None:
        save_png(gamma_figure(cmp.gamma), args.gamma_png)
        print(f"wrote {args.gamma_png}")
    if args.json:
        write_json(args.json, cmp.to_dict())
        print(f"wrote {args.json}")
    for label, ev in ((la, cmp.eval_a), (lb, cmp.eval_b)):
        for w in ev.warnings:  # e.g. supersampling lowered to the sample limit, structures partly off the grid
            print(f"seedplan: warning: {label}: {w}", file=sys.stderr)
    _flush_notes()
    return 0


def _read_plan(path):
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise InputError(f"{path}: cannot read plan ({exc.strerror})") from exc
    except ValueError as exc:
        raise InputError(f"{path}: plan is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputError(f"{path}: plan must be a JSON object")
    return doc


def _defaults_from_plan(args, plan):
    """Prescription, target and body of a report taken from its plan file where not given.

    A plan written by `seedplan plan` holds its prescription (every target's in `targets`, the first
    one's at the top) and the structures it was planned on; asking for `--rx` again would invite a
    second, contradicting prescription. An explicit ``--rx`` keeps precedence; a goal preset's or file's
    prescription (a default for plans without one) does not replace the plan's.
    """
    notes = []
    if plan is None:
        return notes
    rx = plan.get("prescription_Gy")
    valid = isinstance(rx, (int, float)) and not isinstance(rx, bool) and np.isfinite(rx) and rx > 0
    if args.rx is None and (valid or not getattr(args, "goals", None)):  # else the goals' prescription
        if not valid:
            raise InputError(f"{args.plan}: plan has no valid prescription_Gy ({rx!r}): give --rx GY")
        args.rx = float(rx)
        notes.append(f"prescription {args.rx:g} Gy taken from plan {args.plan}"
                     + (" (each target's metrics in the report use its own)" if plan.get("targets") else "")
                     + (" rather than the goals' prescription" if getattr(args, "goals", None) else ""))
    names = plan.get("structures") if isinstance(plan.get("structures"), dict) else {}
    chosen = None  # structures picked with --names: the plan's target or body only when among them
    if getattr(args, "names", None):
        chosen = {n.strip() for n in ",".join(args.names).split(",") if n.strip()}
    for option in ("target", "body"):
        if (getattr(args, option, None) is None and isinstance(names.get(option), str)
                and (chosen is None or names[option] in chosen)):
            setattr(args, option, names[option])
            notes.append(f"{option} {names[option]!r} taken from plan {args.plan}")
    return notes


def cmd_report(args):
    """Self-contained HTML report (and optional PDF)."""
    from ..reporting.report import write_report
    plan = _read_plan(args.plan)
    notes = _defaults_from_plan(args, plan)
    ev, dose, geometry, structures = _evaluate(args, progress=_bar(args, "report"), plan=plan)
    _NOTES.extend(notes)
    seeds = None
    if args.seeds:
        from .common import read_seed_input
        seeds = read_seed_input(args.seeds)  # also used for exact sub-voxel dose (see _evaluate)
    ct = None
    if args.ct:
        from ..core.imageio import read_image
        ct = read_image(args.ct)
    comparison = None
    if args.compare_dose:
        from ..evaluation.compare import compare_plans
        b, gb = _read_dose(args.compare_dose, "comparison dose")
        comparison = compare_plans(dose, geometry, b, gb, structures, ev.prescription_Gy,
                                   labels=tuple(args.labels), resample=args.resample,
                                   evaluate_kwargs=dict(target=args.target, body=args.body, goals=_goals(args),
                                                        supersample=_supersample(args.supersample)))
    out = write_report(args.out, ev, dose, structures=structures, plan=plan, seeds=seeds, ct=ct,
                       title=args.title, pdf_path=args.pdf, comparison=comparison)
    _print_metrics(ev)
    print(f"wrote {out['html']}" + (f" and {out['pdf']}" if out["pdf"] else ""))
    return 0


def cmd_margin(args):
    """Add an expanded structure (e.g. PTV = GTV + margin, clipped to the body) to a segmentation."""
    from ..imaging.segio import Segmentation, read_segmentation, write_segmentation
    from ..evaluation.structures import expand_structure, find_structure, structures_from_segmentation
    seg = read_segmentation(args.structures)
    allst = structures_from_segmentation(seg, allow_empty=True)
    src = find_structure(allst, args.source)
    body = None
    if args.body is None:
        from ..evaluation.structures import BODY_NAMES, guess_role_structure
        body = guess_role_structure(allst, BODY_NAMES)
    elif args.body.lower() != "none":
        body = find_structure(allst, args.body)
    new = expand_structure(src, args.margin, body, args.name)
    if any(s.name.lower() == new.name.lower() for s in allst):
        if not args.replace:
            raise InputError(f"structure '{new.name}' already exists (pass --replace to overwrite it)")
        allst = [s for s in allst if s.name.lower() != new.name.lower()]
    masks = {s.name: s.mask for s in allst}
    masks[new.name] = new.mask
    colors = {s.name: s.color for s in allst}
    colors[new.name] = new.color
    write_segmentation(args.out, Segmentation.from_masks(seg.geometry, masks, colors))
    print(f"wrote {args.out}: {new.name} = {src.name} + {args.margin} mm"
          + (f" clipped to {body.name}" if body else "") + f", {new.volume_cc:.2f} cc (from {src.volume_cc:.2f} cc)")
    return 0


def cmd_goals(args):
    """List the goal presets, or show the goals of a preset or file."""
    from ..evaluation.goals import list_presets, load_goals
    if not args.show:
        for name, title in list_presets().items():
            print(f"{name:<24} {title}")
        return 0
    gs = load_goals(args.show)
    print(f"{gs.name}: {gs.title}" + (f" (prescription {gs.prescription_Gy:g} Gy)" if gs.prescription_Gy else ""))
    for e in gs.structures:
        alias = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
        print(f"  {e.name} [{e.role}]{alias}")
        for g in e.goals:
            print(f"    {g.text}" + (f"   -- {g.source}" if g.source else ""))
    for s in gs.sources:
        print(f"  source: {s}")
    return 0


def _add_common(p, dose=True):
    if dose:
        p.add_argument("--dose", required=True, help="dose image in Gy (NRRD, NIfTI, MHA)")
    p.add_argument("--structures", required=True, help="segmentation: .seg.nrrd or labelmap (+ .labels.json)")
    p.add_argument("--names", action="append", help="only these structures (comma-separated, repeatable)")
    p.add_argument("--rx", type=float, help="prescription dose in Gy (default: the goals' prescription)")
    p.add_argument("--goals", help="goal preset name (see 'seedplan goals') or goals file (JSON or text)")
    p.add_argument("--target", help="target structure (default: from the goals, else PTV/CTV/GTV/Prostate)")
    p.add_argument("--body", help="body structure (reference isodose volume for CI/EI; default Body/External)")
    p.add_argument("--metric", action="append", help="extra metric for every structure, e.g. D95 or V120 (repeatable)")
    p.add_argument("--supersample", default="auto",
                   help="sub-voxel sampling: auto (small/thin structures), on, off, or a factor (default auto)")
    if dose:
        p.add_argument("--seeds", help="seeds CSV or plan file that produced the dose (total dose): sub-voxel doses "
                                       "are then computed exactly (TG-43) instead of interpolated")
        p.add_argument("--formalism", choices=("2D", "1D"), default="2D", help="TG-43 formalism for --seeds")


def _add_bed(p):
    p.add_argument("--bed", action="store_true", help="also compute BED and EQD2 (Dale 1985, permanent implant)")
    p.add_argument("--tissue", choices=("prostate_tumour", "tumour", "late_normal"),
                   help="target parameter set (default prostate_tumour with prostate goals, else tumour)")
    p.add_argument("--alpha-beta", type=float, help="target alpha/beta in Gy")
    p.add_argument("--repair-half-time-h", type=float, help="target repair half-time in hours")
    p.add_argument("--alpha", type=float, help="target alpha in 1/Gy (needed for repopulation)")
    p.add_argument("--t-pot-days", type=float, help="potential doubling time in days (turns repopulation on)")
    p.add_argument("--kickoff-days", type=float, help="repopulation onset in days (default 0)")
    p.add_argument("--oar-alpha-beta", type=float, help="alpha/beta of organs at risk in Gy (default 3)")
    p.add_argument("--half-life-days", type=float,
                   help="source half-life in days (default: the --seeds model's, else I-125 59.4)")


def register(sub):
    """Add the evaluation subcommands."""
    p = sub.add_parser("dvh", help="dose-volume histograms (CSV, PNG)")
    _add_common(p)
    p.add_argument("--csv", help="output CSV (cumulative and differential, bins of 0.1%% of the prescription)")
    p.add_argument("--png", help="output DVH chart (PNG)")
    p.add_argument("--dvh-max-percent", type=float, default=1000.0,
                   help="last DVH bin at this %% of the prescription; it holds every higher dose (default 1000)")
    p.set_defaults(func=cmd_dvh)

    p = sub.add_parser("metrics", help="DVH metrics, conformity indices, goals, BED/EQD2")
    _add_common(p)
    _add_bed(p)
    p.add_argument("--csv", help="metrics CSV")
    p.add_argument("--goals-csv", help="goal results CSV")
    p.add_argument("--json", help="everything as JSON")
    p.add_argument("--plan", help="plan file (plan.json) of this dose: with several targets, each target's metrics "
                                  "and goals against its own prescription; its prescription, target and body as defaults")
    p.add_argument("--fail-on-goals", action="store_true", help="exit 1 when a goal fails")
    p.add_argument("--time-curve-csv", help="dose (and BED with --bed) accumulated against time at the target D90 (CSV)")
    p.add_argument("--time-curve-png", help="the same curve as a PNG chart")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("compare", help="compare two dose grids: metric deltas, DVH overlay, difference, gamma")
    p.add_argument("--dose-a", required=True, help="reference dose (Gy), e.g. the pre-plan")
    p.add_argument("--dose-b", required=True, help="evaluated dose (Gy), e.g. intra-operative or post-implant")
    _add_common(p, dose=False)
    p.add_argument("--labels", nargs=2, default=["A", "B"], metavar=("LABEL_A", "LABEL_B"))
    p.add_argument("--resample", action="store_true", help="interpolate B onto A's grid when the grids differ")
    p.add_argument("--no-gamma", action="store_true", help="skip the gamma index")
    p.add_argument("--gamma-dose-percent", type=float, default=3.0, help="global dose criterion, %% of Rx (default 3)")
    p.add_argument("--gamma-dta-mm", type=float, default=2.0, help="distance to agreement in mm (default 2)")
    p.add_argument("--gamma-threshold-percent", type=float, default=10.0,
                   help="low-dose threshold, %% of Rx (default 10)")
    p.add_argument("--csv", help="metric deltas CSV")
    p.add_argument("--png", help="DVH overlay PNG")
    p.add_argument("--diff", help="dose difference B - A (NRRD, Gy)")
    p.add_argument("--gamma-map", help="gamma map (NRRD; -1 where not evaluated)")
    p.add_argument("--gamma-png", help="gamma histogram PNG")
    p.add_argument("--json", help="summary JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="plan report: one self-contained HTML page (and a PDF)")
    _add_common(p)
    _add_bed(p)
    p.add_argument("--out", required=True, help="output HTML")
    p.add_argument("--pdf", help="also write a multi-page PDF")
    p.add_argument("--plan", help="plan JSON (plain dict: source_model, strength_U, implant_date, needles, ...)")
    p.add_argument("--ct", help="CT image drawn under the dose wash")
    p.add_argument("--title", default="Seed implant plan report")
    p.add_argument("--compare-dose", help="second dose grid to compare with (appended to the report)")
    p.add_argument("--labels", nargs=2, default=["plan", "compared"], metavar=("LABEL_A", "LABEL_B"))
    p.add_argument("--resample", action="store_true", help="interpolate the compared dose onto the grid")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("margin", help="add an expanded structure (PTV = GTV + margin, clipped to the body)")
    p.add_argument("--structures", required=True, help="input .seg.nrrd or labelmap")
    p.add_argument("--source", required=True, help="structure to expand, e.g. GTV")
    p.add_argument("--margin", type=float, nargs="+", required=True,
                   help="margin in mm: one value, or three (R-L A-P S-I)")
    p.add_argument("--name", help="name of the new structure (default <source>+<margin>mm)")
    p.add_argument("--body", help="clip to this structure ('none' to disable; default Body/External if present)")
    p.add_argument("--replace", action="store_true", help="overwrite a structure of the same name")
    p.add_argument("--out", required=True, help="output .seg.nrrd")
    p.set_defaults(func=cmd_margin)

    p = sub.add_parser("goals", help="list goal presets or show a goal set")
    p.add_argument("--show", help="preset name or goals file to show")
    p.set_defaults(func=cmd_goals)
