"""``seedplan demo``: the full job on the bundled sample case, start to finish.

1. read the sample case (synthetic CT + segmentation of a left retroperitoneal tumour);
2. inverse-plan I-125 seeds along a parallel template from the patient's left flank, needles
   kept 5 mm clear of bone, bowel, vessels, kidneys and the spinal canal;
3. compute the TG-43U1 dose, evaluate DVH, metrics and goals (CT-guided soft-tissue preset),
   BED/EQD2;
4. write the plan folder (plan file, needle loading table, seeds, dose NRRD, metrics), the DVH
   (CSV + PNG), the HTML and PDF report, the Slicer scene (.mrb) with its pictures, and the DICOM
   RT export (CT, RT Structure Set, RT Plan, RT Dose);
5. verify a simulated post-implant CT: find the seeds, compute the delivered dose, compare.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..core.errors import InputError

TARGET = "GTV"
BODY = "Body"
FORBIDDEN = ("Bone", "Bowel", "Vessels", "Kidneys", "SpinalCanal")
ORGANS = ("Bowel", "Vessels", "Kidneys", "Psoas", "SpinalCanal", "Bone")
MODEL = "I125_OncoSeed_6711"


def report_plan_dict(plan) -> dict:
    """The plan as the plain dict the report renders (summary and needle loading table)."""
    s = plan.summary()
    return {"source_model": plan.model_id, "strength_U": plan.strength_U,
            "implant_date": plan.source.get("implant_date"), "reference_date": plan.source.get("reference_date"),
            "n_needles": s["n_needles_used"], "needles": plan.loading_rows(),
            "notes": f"optimiser: {plan.optimizer.get('method')} - {plan.optimizer.get('message')}"}


def _step(args, label):
    from .main import ProgressBar
    return ProgressBar(label, enabled=not args.quiet)


def run_demo(out, *, strength_mCi=0.6, prescription_Gy=120.0, direction="R", time_limit_s=8.0, quiet=False,
             reference_date="2026-11-20", implant_date="2026-11-27",
             skip_scene=False, skip_dicom=False, skip_verification=False):
    """Run the whole demo into folder ``out``; returns {what: path} of everything written."""
    from types import SimpleNamespace
    args = SimpleNamespace(quiet=quiet)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    timings = {}

    from ..samplecase.generator import sample_case_paths
    ct_path, seg_path = sample_case_paths(cache_dir=out / "case")
    from ..core.imageio import read_image
    from ..imaging.segio import read_segmentation
    ct, ct_geometry = read_image(ct_path)
    seg = read_segmentation(seg_path)

    # 1-2. plan
    t0 = time.monotonic()
    from ..planning.problem import OARConstraint
    from ..planning.pipeline import plan_case
    from ..planning.plan_dose import evaluate
    from ..planning.planfile import write_plan_folder
    plan, dose, dose_geometry = plan_case(
        ct_path, seg_path, TARGET, oars=[OARConstraint("Bowel", d2cc_Gy=100.0), "Vessels"], forbidden=FORBIDDEN, body=BODY,
        model_id=MODEL, strength=strength_mCi, strength_unit="mCi", reference_date=reference_date,
        implant_date=implant_date, prescription_Gy=prescription_Gy,
        needle_mode="template", direction=direction, template_spacing_mm=5.0, time_limit_s=time_limit_s,
        rng_seed=0, progress=_step(args, "plan"))
    timings["plan_s"] = time.monotonic() - t0
    # Dose on the whole CT grid, so every organ's DVH covers the whole organ (the planner's own
    # grid is cropped around the target); the plan keeps this grid for incremental edits.
    t0 = time.monotonic()
    from ..physics.dose import DoseGrid
    grid = DoseGrid(ct_geometry, plan.seeds, plan.formalism, "fast", progress=_step(args, "dose"))
    plan.attach_dose_grid(grid)
    dose, dose_geometry = grid.dose_Gy("total"), ct_geometry
    timings["dose_s"] = time.monotonic() - t0
    from ..evaluation.structures import structures_from_segmentation
    evaluate(plan, dose, dose_geometry, structures_from_segmentation(seg, [TARGET, "Bowel", "Vessels"]))
    for p in write_plan_folder(out / "plan", plan, dose, dose_geometry):
        written[f"plan/{p.name}"] = p

    # 3. evaluation and report
    t0 = time.monotonic()
    from ..reporting.report import evaluate_and_report
    from ..evaluation.structures import structures_from_segmentation
    structures = structures_from_segmentation(seg, [TARGET, *ORGANS, BODY])
    ev, paths = evaluate_and_report(
        out / "report.html", dose, dose_geometry, structures, prescription_Gy, goals="ct_soft_tissue_I125",
        target=TARGET, body=BODY, plan=report_plan_dict(plan), seeds=plan.seeds, ct=(ct, ct_geometry),
        radiobiology=True, pdf_path=out / "report.pdf", title="SeedImplantPlanner demo: sample case",
        progress=_step(args, "evaluate"))
    written["report.html"] = Path(paths["html"])
    written["report.pdf"] = Path(paths["pdf"])
    from ..reporting.charts import dvh_figure, save_png
    from ..evaluation.dvh import write_dvh_csv
    from ..evaluation.evaluate import write_goals_csv, write_metrics_csv
    dvhs = list(ev.dvhs)
    write_dvh_csv(out / "dvh.csv", dvhs, prescription_Gy)
    save_png(dvh_figure([("plan", dvhs)], colors=ev.colors, prescription_Gy=prescription_Gy), out / "dvh.png")
    write_metrics_csv(out / "metrics.csv", ev)
    write_goals_csv(out / "goals.csv", ev)
    written.update({"dvh.csv": out / "dvh.csv", "dvh.png": out / "dvh.png", "metrics.csv": out / "metrics.csv",
                    "goals.csv": out / "goals.csv"})
    timings["evaluate_report_s"] = time.monotonic() - t0

    # 4a. Slicer scene and pictures (need slicer-core: pip install "seedimplantplanner[mrml]")
    if not skip_scene and not _slicer_available():
        import sys
        print("seedplan: warning: slicer-core is not installed: no Slicer scene or pictures "
              "(pip install 'seedimplantplanner[mrml]', or use ./run.sh demo)", file=sys.stderr)
        skip_scene = True
    if not skip_scene:
        t0 = time.monotonic()
        from ..evaluation.goals import load_goals
        from ..mrml.scene_io import save_plan_scene
        used = plan.used_needles()
        res = save_plan_scene(
            out / "scene.mrb", seeds=plan.seeds, prescription_Gy=prescription_Gy, ct=(ct, ct_geometry),
            segmentation=seg, target=TARGET, organs=[o for o in ORGANS if o != "Bone"], forbidden=list(FORBIDDEN),
            needles=used, seed_needle_numbers=plan.seed_needle, dose=(dose, dose_geometry),
            goals=load_goals("ct_soft_tissue_I125"), pictures_dir=out / "pictures", plan=plan,
            progress=_step(args, "scene"))
        written["scene.mrb"] = Path(res["mrb"])
        for view, p in res["pictures"].items():
            written[f"pictures/{Path(p).name}"] = Path(p)
        timings["scene_s"] = time.monotonic() - t0

    # 4b. DICOM RT
    if not skip_dicom:
        t0 = time.monotonic()
        from ..dicom.export import export_plan_dicom
        from ..dicom.rtplan import plan_needle_names
        d = export_plan_dicom(out / "dicom", ct_path, plan.seeds, prescription_Gy, segmentation=seg,
                              needles=list(plan.needles), seed_needle_names=plan_needle_names(plan), model=MODEL,
                              strength_reference=plan.source.get("implant_date"), dose_Gy=dose,
                              dose_geometry=dose_geometry, target_name=TARGET, overwrite=True,
                              progress=_step(args, "dicom"))
        for key in ("rtplan", "rtdose", "rtstruct"):
            if d.get(key):
                written[f"dicom/{Path(d[key]).name}"] = Path(d[key])
        written["dicom/CT"] = Path(d["folder"]) / "CT"
        timings["dicom_s"] = time.monotonic() - t0

    # 5. simulated post-implant CT: find the seeds, delivered dose, comparison
    if not skip_verification:
        t0 = time.monotonic()
        written.update(_verification(out, plan, ct, ct_geometry, seg, dose, dose_geometry, prescription_Gy, args))
        timings["verification_s"] = time.monotonic() - t0

    summary = {"plan": plan.summary(), "optimizer": {k: plan.optimizer.get(k) for k in ("method", "message")},
               "target_metrics": {k: ev.metrics[TARGET][k] for k in ("D90", "V100", "V150", "V200")
                                  if k in ev.metrics.get(TARGET, {})},
               "goals_failed": ev.n_goals_failed,
               "timings_s": {k: round(v, 2) for k, v in timings.items()},
               "files": sorted(written)}  # relative to the output folder
    from ..core.fileio import write_text
    write_text(out / "demo_summary.json", json.dumps(summary, indent=1, default=_json_default) + "\n")
    written["demo_summary.json"] = out / "demo_summary.json"
    return written, plan, ev, summary


def _slicer_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("slicer") is not None


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if hasattr(v, "to_dict"):
        return v.to_dict()
    return str(v)


def _verification(out, plan, ct, ct_geometry, seg, dose, dose_geometry, prescription_Gy, args):
    from ..core.fileio import write_csv, write_json
    from ..core.imageio import write_image
    from ..imaging.phantoms import make_postimplant_case
    from ..imaging.seedfinder import find_seeds
    from ..physics.seeds import SEED_COLUMNS, seeds_to_rows
    from ..evaluation.structures import expand_margin
    from ..evaluation.verification import MATCH_COLUMNS, verify_implant
    folder = out / "postimplant"
    post, truth = make_postimplant_case(ct, ct_geometry, plan.seeds, random_seed=1, n_migrated=2)
    write_image(folder / "postimplant_ct.nrrd", post, ct_geometry)
    roi = expand_margin(seg.mask(TARGET), ct_geometry, 25.0)
    found = find_seeds(post, ct_geometry, expected_count=len(plan.seeds), roi_mask=roi, progress=_step(args, "find seeds"))
    found_set = found.to_seedset(plan.strength_U, plan.model_id)
    write_csv(folder / "found_seeds.csv", seeds_to_rows(found_set), SEED_COLUMNS)
    target = np.zeros(dose_geometry.shape, dtype=bool)
    from ..evaluation.structures import mask_on_grid, structures_from_segmentation
    target = mask_on_grid(structures_from_segmentation(seg, [TARGET])[0], dose_geometry)
    result = verify_implant(plan.seeds, found, dose_geometry, strength_U=plan.strength_U, model=plan.model_id,
                            target=target, prescription_Gy=prescription_Gy, progress=_step(args, "verify"))
    write_image(folder / "delivered_dose.nrrd", np.asarray(result["dose_found_Gy"], np.float32), dose_geometry)
    write_csv(folder / "seed_matches.csv", result["rows"], MATCH_COLUMNS)
    write_json(folder / "verification.json", json.loads(json.dumps(result["summary"], default=_json_default)))
    return {f"postimplant/{n}": folder / n for n in ("postimplant_ct.nrrd", "found_seeds.csv", "seed_matches.csv",
                                                      "delivered_dose.nrrd", "verification.json")}


def cmd_demo(args):
    """Run the demo and print where everything went."""
    if not (args.strength > 0 and args.prescription > 0) or not np.isfinite([args.strength, args.prescription]).all():
        raise InputError(f"--strength and --prescription must be finite and > 0, got {args.strength:g} mCi and "
                         f"{args.prescription:g} Gy")
    out = Path(args.out)
    new_folder = not out.exists()
    try:
        written, plan, ev, summary = run_demo(out, strength_mCi=args.strength, prescription_Gy=args.prescription,
                                              direction=args.direction, time_limit_s=args.time_limit, quiet=args.quiet,
                                              reference_date=args.reference_date, implant_date=args.implant_date,
                                              skip_scene=args.no_scene, skip_dicom=args.no_dicom,
                                              skip_verification=args.no_verification)
    except BaseException:
        # an error or Ctrl-C/SIGTERM part-way: a folder this run created is removed, not left half-filled
        # (in an existing folder each file written so far is complete; demo_summary.json comes last)
        if new_folder:
            import shutil
            shutil.rmtree(out, ignore_errors=True)
        raise
    s = summary["plan"]
    print(f"plan: {s['n_seeds']} seeds on {s['n_needles_used']} needles, total {s['total_strength_U']:.2f} U"
          + (f" ({s['total_activity_mCi']:.1f} mCi)" if "total_activity_mCi" in s else ""))
    for k, v in summary["target_metrics"].items():
        text = f"{v['Gy']:.1f} Gy ({100 * v['Gy'] / args.prescription:.1f}% Rx)" if "Gy" in v else \
            f"{v['percent']:.1f}% ({v['cc']:.1f} cc)"
        print(f"  {TARGET} {k}: {text}")
    print(f"goals failed: {summary['goals_failed']} (see goals.csv)")
    scene = "; open scene.mrb in 3D Slicer" if "scene.mrb" in written else ""
    print(f"wrote {len(written)} outputs into {args.out}/ (see demo_summary.json){scene}")
    return 0


def register(sub):
    """Add the ``demo`` subcommand."""
    p = sub.add_parser("demo", help="plan the bundled sample case end to end (plan, dose, report, scene, DICOM)")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--strength", type=float, default=0.6,
                   help="apparent activity per seed at the reference date, mCi (default 0.6)")
    p.add_argument("--reference-date", default="2026-11-20", help="date of the seeds' calibration (default 2026-11-20)")
    p.add_argument("--implant-date", default="2026-11-27", help="implant date (default 2026-11-27)")
    p.add_argument("--prescription", type=float, default=120.0, help="prescription dose, Gy (default 120)")
    p.add_argument("--direction", default="R", help="needle insertion direction (default R: from the left flank)")
    p.add_argument("--time-limit", type=float, default=8.0, help="optimiser time limit, s (default 8)")
    p.add_argument("--no-scene", action="store_true", help="skip the Slicer scene and pictures")
    p.add_argument("--no-dicom", action="store_true", help="skip the DICOM RT export")
    p.add_argument("--no-verification", action="store_true", help="skip the simulated post-implant verification")
    p.set_defaults(func=cmd_demo)
