"""``seedplan intraop``: re-plan the rest of an implant on an intra-operative CT.

    seedplan intraop --ct intraop.nrrd --plan plan/plan.json [--needles needles.csv]
                     [--segmentation seg.seg.nrrd] [--implanted N] [--allow-new-needles]
                     [--no-options] [--time-limit S] [--no-scene]
                     [--register [PLANNING_CT] | --transform transform.tfm] --out DIR

The needles in place are found on the CT (needle finder + matching to the plan's needles), or
come from ``--needles`` (a needle table as ``--implanted-needles`` reads, names as in the plan,
e.g. ``find-needles`` output corrected by hand). See
:mod:`planning.intraop` for the chain. Writes into DIR (all files appear together, or none):
``plan/`` (the re-plan folder), ``needle_deviations.csv``, ``seeds_implanted.csv``,
``options.csv``, ``dose_implanted.nrrd``, ``dose_planned.nrrd``, ``dvh_compare.csv``/``.png``
(target DVH: plan, implanted seeds, re-plan), ``dvh.csv``, ``metrics.csv``, ``goals.csv``,
``report.html``, ``scene.mrb`` and ``intraop_summary.json``. Exit 3 when the goals are not met.
``--register`` first registers the CT rigidly to the planning CT (default: the plan's image) and
``--transform`` reads such a registration (``seedplan register``, or a transform saved in Slicer);
the CT's grid is then re-labelled in the planning frame (imaging/registration.py, no resampling),
so the needles and seeds found, the deviations and the re-plan are in the plan's frame, and
``registration.tfm`` / ``registration.json`` are written too (docs/registration.md). The scene then holds the
planning CT as the plan's CT and the intra-operative CT in its scanner coordinates under the registration's
transform node (:func:`mrml.intraop_scene.save_intraop_scene`), as the module and the web page make it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..core.errors import InputError

EXIT_GOALS_NOT_MET = 3


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def write_intraop_folder(tmp, result, ct, ct_geometry, seg, *, scene=True, progress=None, planning_ct=None,
                         scanner_geometry=None, ct_name="Intra-op CT", source_file=None):
    """Write every output of ``seedplan intraop`` into folder ``tmp``; returns the file names.

    ``ct_geometry``: the CT's grid as the chain used it (in the plan's frame). With a registration the
    scene holds the CT on ``scanner_geometry`` under the registration transform node and
    ``planning_ct`` (array, geometry; optional) as the plan's CT (:func:`mrml.intraop_scene.save_intraop_scene`);
    ``source_file``: the CT's file, recorded on its node."""
    from ..core.fileio import write_csv, write_text
    from ..core.imageio import write_image
    from ..evaluation.dvh import write_dvh_csv
    from ..evaluation.evaluate import write_goals_csv, write_metrics_csv
    from ..planning.intraop import NEEDLE_DEVIATION_COLUMNS, OPTION_COLUMNS, SEED_FOUND_COLUMNS
    from ..planning.planfile import write_plan_folder
    from ..reporting.charts import save_png
    tmp = Path(tmp)
    plan, ev = result.plan, result.evaluation
    write_plan_folder(tmp / "plan", plan, result.dose_Gy, result.dose_geometry)
    write_csv(tmp / "needle_deviations.csv", result.needle_rows, NEEDLE_DEVIATION_COLUMNS)
    write_csv(tmp / "seeds_implanted.csv", result.seed_rows, SEED_FOUND_COLUMNS)
    write_csv(tmp / "options.csv", result.options, OPTION_COLUMNS)
    meta = {"SeedPlan_Unit": "Gy", "SeedPlan_Formalism": plan.formalism}
    write_image(tmp / "dose_implanted.nrrd", result.implanted_dose_Gy.astype(np.float32), result.dose_geometry, meta)
    write_image(tmp / "dose_planned.nrrd", result.planned_dose_Gy.astype(np.float32), result.dose_geometry, meta)
    bins, curves = result.target_dvh_curves()
    rows = [{"dose_Gy": f"{b:.3f}", **{k: f"{v[i]:.3f}" for k, v in curves.items()}} for i, b in enumerate(bins)]
    write_csv(tmp / "dvh_compare.csv", rows, ["dose_Gy"] + list(curves))
    save_png(_dvh_compare_figure(bins, curves, plan.prescription_Gy), tmp / "dvh_compare.png")
    write_dvh_csv(tmp / "dvh.csv", list(ev.dvhs), plan.prescription_Gy)
    write_metrics_csv(tmp / "metrics.csv", ev)
    write_goals_csv(tmp / "goals.csv", ev)
    _write_report(tmp / "report.html", result, ct, ct_geometry)
    files = ["plan/", "needle_deviations.csv", "seeds_implanted.csv", "options.csv", "dose_implanted.nrrd",
             "dose_planned.nrrd", "dvh_compare.csv", "dvh_compare.png", "dvh.csv", "metrics.csv", "goals.csv",
             "report.html"]
    if getattr(result, "registration", None) is not None:
        from ..imaging.registration import write_transform
        write_transform(tmp / "registration.tfm", result.registration)
        write_transform(tmp / "registration.json", result.registration)
        files += ["registration.tfm", "registration.json"]
    if scene:
        from ..mrml.intraop_scene import save_intraop_scene
        save_intraop_scene(tmp / "scene.mrb", result, (ct, ct_geometry), seg, progress=progress,
                           planning_ct=planning_ct, scanner_geometry=scanner_geometry, ct_name=ct_name,
                           source_file=source_file)
        files.append("scene.mrb")
    summary = dict(result.summary())
    summary["deviation_line"] = result.deviation_line()
    summary["plan_summary"] = plan.summary()
    summary["files"] = files + ["intraop_summary.json"]
    write_text(tmp / "intraop_summary.json", json.dumps(summary, indent=1, default=_json_default) + "\n")
    return summary["files"]


def _dvh_compare_figure(bins, curves, prescription_Gy):
    from ..reporting.charts import _plt
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 5.0), layout="constrained")
    styles = [("0.45", "--"), ("#d49a00", ":"), ("#c81e1e", "-")]
    for (label, v), (color, ls) in zip(curves.items(), styles):
        ax.plot(bins, v, color=color, linestyle=ls, linewidth=2, label=label)
    ax.axvline(prescription_Gy, color="0.3", linewidth=0.8)
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)")
    ax.set_ylim(0, 102)
    ax.set_xlim(0, bins[-1])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title("Target DVH: plan, seeds implanted, re-plan")
    return fig


def _write_report(path, result, ct, ct_geometry):
    """The plan report of the re-plan, followed by the intra-operative sections (deviations, options)."""
    import html
    from ..core.fileio import write_text
    from ..reporting.report import write_report
    from .demo import report_plan_dict
    plan = result.plan
    write_report(path, result.evaluation, result.dose_Gy, structures=[], plan=report_plan_dict(plan), seeds=plan.seeds,
                 ct=(ct, ct_geometry), title="Intra-operative re-plan")
    text = Path(path).read_text(encoding="utf-8")

    def table(rows, cols):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>"
                       for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"
    dev_cols = ["number", "name", "status", "entry_mm", "tip_mm", "angle_deg", "depth_mm"]
    opt_cols = ["option", "seed_spacing_mm", "target_margin_mm", "new_needles", "adopted", "goals_met", "n_new_seeds",
                "n_needles_used", "v100_pct", "d90_Gy", "unmet"]
    reg = getattr(result, "registration", None)
    reg_line = f"<p>CT registered to the planning CT: {html.escape(reg.summary_line())}</p>" if reg is not None else ""
    section = (f"<h2>Intra-operative review</h2>{reg_line}<p>{html.escape(result.deviation_line())}</p>"
               f"<p>Seeds already implanted (found): {len(result.found_seeds)}; new seeds: "
               f"{int((~plan.seed_fixed).sum())}. {html.escape(result.advice[:1].upper() + result.advice[1:])}.</p>"
               f"<h3>Needle deviations from the plan</h3>{table(result.needle_rows, dev_cols)}"
               f"<h3>Re-plan options tried</h3>{table(result.options, opt_cols)}")
    if result.warnings:
        section += "<h3>Warnings</h3><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings) + "</ul>"
    text = text.replace("</body>", section + "</body>") if "</body>" in text else text + section
    write_text(path, text)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def cmd_intraop(args):
    """Intra-operative re-plan (module doc)."""
    from .main import ProgressBar
    from ..core.fileio import atomic_folder
    from ..core.imageio import read_image
    from ..imaging.segio import read_segmentation
    from ..planning.intraop import run_intraop
    from ..planning.needles import read_needles
    from ..planning.planfile import read_plan
    t0 = time.monotonic()
    if args.implanted is not None and args.implanted < 0:
        raise InputError(f"--implanted must be >= 0, got {args.implanted}")
    if not args.time_limit > 0:
        raise InputError(f"--time-limit must be > 0 s, got {args.time_limit:g}")
    plan = read_plan(args.plan)
    seg_path = args.segmentation or plan.structures.get("segmentation")
    if not seg_path:
        raise InputError(f"{args.plan}: the plan names no segmentation; give --segmentation")
    if not Path(seg_path).exists():
        raise InputError(f"segmentation {seg_path} not found (give --segmentation)")
    needles = read_needles(args.needles, plan.needles[0].gauge if plan.needles else 18) if args.needles else None
    ct, geometry = read_image(args.ct)
    if np.issubdtype(ct.dtype, np.floating) and not np.all(np.isfinite(ct)):
        raise InputError(f"{args.ct}: CT holds non-finite voxels (NaN or Inf)")
    seg = read_segmentation(seg_path)
    scanner_geometry = geometry
    geometry, needles, registration = _registration_step(args, plan, ct, geometry, needles)
    bar = ProgressBar("intraop", enabled=not args.quiet)
    t_needles = None
    if needles is None:
        from ..planning.intraop import check_frames, find_needles_in_place
        check_frames(geometry, plan)
        t1 = time.monotonic()
        needles, matching, found = find_needles_in_place(ct, geometry, plan, seg, progress=ProgressBar(
            "needles", enabled=not args.quiet))
        t_needles = time.monotonic() - t1
        print(matching.summary_line())
        if not needles:
            raise InputError(f"{args.ct}: no needle of the plan found on the CT ({len(found)} needle(s) found, "
                             f"{len(found.rejected)} object(s) rejected): give --needles")
    result = run_intraop(ct, geometry, plan, seg, needles, expected_implanted=args.implanted or None,
                         allow_new_needles=args.allow_new_needles, try_options=not args.no_options,
                         time_limit_s=args.time_limit, rng_seed=args.random_seed, progress=bar,
                         registration=registration)
    if t_needles is not None:
        result.timings["find_needles_s"] = t_needles
        result.timings["total_s"] = result.timings.get("total_s", 0.0) + t_needles
    scene = not args.no_scene
    if scene:
        import importlib.util
        if importlib.util.find_spec("slicer") is None:
            print("seedplan: warning: slicer-core is not installed: no Slicer scene", file=sys.stderr)
            scene = False
    planning_ct = _planning_ct_for_scene(args, plan) if scene and registration is not None else None
    with atomic_folder(args.out) as tmp:
        files = write_intraop_folder(tmp, result, ct, geometry, seg, scene=scene,
                                     progress=ProgressBar("scene", enabled=not args.quiet), planning_ct=planning_ct,
                                     scanner_geometry=scanner_geometry, ct_name=f"Intra-op CT {Path(args.ct).name}",
                                     source_file=Path(args.ct).resolve())
    print(result.deviation_line())
    for o in result.options:
        print(f"  option {o['option']}: V100 {o['v100_pct']} %, D90 {o['d90_Gy']} Gy, goals "
              f"{'met' if o['goals_met'] else 'not met'}{' (adopted)' if o['adopted'] else ''}")
    print(f"{len(result.found_seeds)} seeds already implanted, {int((~result.plan.seed_fixed).sum())} new seeds; "
          f"{result.advice} ({time.monotonic() - t0:.1f} s)")
    for w in result.warnings:
        print(f"seedplan: warning: {w}", file=sys.stderr)
    print(f"wrote {args.out}: " + ", ".join(files))
    if not result.goals_met:
        print(f"seedplan: warning: goals not met: {result.advice}", file=sys.stderr)
        return EXIT_GOALS_NOT_MET
    return 0


def _planning_ct_for_scene(args, plan):
    """The planning CT (array, geometry) the scene shows the registered CT on: ``--register``'s, else the plan's
    image; None (with a warning) when the plan's image is not found beside a ``--transform``."""
    from ..core.imageio import read_image
    path = args.register or plan.structures.get("image")
    if args.register is None and (not path or not Path(path).exists()):
        print(f"seedplan: warning: the plan's planning CT ({path or 'not named in the plan'}) is not found: scene.mrb "
              "holds the registered CT without it", file=sys.stderr)
        return None
    return read_image(path)


def _registration_step(args, plan, ct, geometry, needles):
    """``--register`` / ``--transform``: the CT's geometry in the planning frame, the ``--needles`` table (written
    on the intra-op CT's frame) mapped the same way, and the registration (None without either option)."""
    if args.register is None and not args.transform:
        return geometry, needles, None
    from .main import ProgressBar
    from ..imaging.registration import align_to_planning
    if args.register is not None and args.transform:
        raise InputError("give --register or --transform, not both")
    planning_ct = None
    if args.register is not None:
        planning_ct = args.register or plan.structures.get("image")
        if not planning_ct:
            raise InputError(f"{args.plan}: the plan names no planning CT; give --register PLANNING_CT")
    geometry, reg = align_to_planning(ct, geometry, planning_ct, args.transform or None,
                                      ct_name=f"{args.ct} (intra-operative CT)",
                                      progress=ProgressBar("register", enabled=not args.quiet))
    print(reg.summary_line())
    if needles is not None:
        needles = [n.moved(reg) for n in needles]
    return geometry, needles, reg


def register(sub):
    """Add ``intraop``."""
    p = sub.add_parser("intraop", help="re-plan the remaining seeds on an intra-operative CT with the needles in place")
    p.add_argument("--ct", required=True, help="intra-operative CT (NRRD, NIfTI, MHA or a DICOM series folder)")
    p.add_argument("--plan", required=True, help="the plan (plan.json) being implanted")
    p.add_argument("--needles", help="needles in place (CSV/JSON needle table, names as in the plan, e.g. find-needles "
                   "output corrected by hand); default: found on the CT and matched to the plan")
    p.add_argument("--segmentation", help="the plan's segmentation (default: the one the plan names)")
    p.add_argument("--implanted", type=int, help="number of seeds implanted so far (helps the seed finder)")
    p.add_argument("--allow-new-needles", action="store_true", help="the re-plan may add needles")
    p.add_argument("--no-options", action="store_true", help="do not try the cheap options when goals are not met")
    p.add_argument("--time-limit", type=float, default=4.0, help="optimiser time per re-plan attempt, s (default 4)")
    p.add_argument("--random-seed", type=int, default=0, help="optimiser random seed")
    p.add_argument("--no-scene", action="store_true", help="skip the Slicer scene")
    p.add_argument("--register", nargs="?", const="", metavar="PLANNING_CT",
                   help="register the CT rigidly to the planning CT first (default: the plan's image); the patient may "
                   "have moved since the planning CT")
    p.add_argument("--transform", help="or use this registration (seedplan register .tfm/.json, or a rigid transform "
                   "saved in 3D Slicer: planning CT -> intra-op CT, LPS)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_intraop, output_options={"out": "folder"})
