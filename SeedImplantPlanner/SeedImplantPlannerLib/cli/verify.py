"""Image-side subcommands: ``find-needles`` (needles in an intra-operative CT, matched to the plan),
``find-seeds`` (seeds in a CT) and ``verify`` (found vs planned seeds).

    seedplan find-needles --ct intraop.nrrd [--plan plan.json] [--roi seg --roi-segment GTV --margin 30]
                          --out needles.csv [--deviations deviations.csv] [--report needles.json]

    seedplan find-seeds --ct post.nrrd [--roi seg.seg.nrrd --roi-segment GTV --margin 10]
                        [--expected N] (--sk U --model ID | --planned plan.csv) --out found.csv
    seedplan verify --planned plan.csv --found found.csv --out-dir DIR
                    [--reference CT | --spacing MM] [--structures seg --target GTV --rx Gy]
                    [--implant-date D --ct-date D] [--register rigid] [--transform t.tfm]
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

from ..core.errors import GeometryError, InputError
from ..core.fileio import write_csv, write_json
from ..physics.seeds import SEED_COLUMNS

FOUND_COLUMNS = SEED_COLUMNS + ("confidence", "cluster_id", "seeds_in_cluster")
FOUND_NEEDLE_EXTRA = ("entry_on", "confidence", "bend_mm", "diameter_mm", "gauge_measured", "tip_dir_x", "tip_dir_y",
                      "tip_dir_z")


def roi_from_segmentation(path, segment, margin_mm, ct_geometry):
    """ROI mask on the CT grid: ``segment`` of the segmentation at ``path`` grown by ``margin_mm``."""
    from ..evaluation.structures import Structure, expand_margin, mask_on_grid, read_structures, find_structure
    structures = read_structures(path, allow_empty=True)
    if segment is None:
        from ..evaluation.structures import TARGET_NAMES, guess_role_structure
        st = guess_role_structure(structures, TARGET_NAMES)
        if st is None:
            raise InputError(f"{path}: give --roi-segment (no segment named {'/'.join(TARGET_NAMES)}; segments: "
                             f"{', '.join(s.name for s in structures)})")
    else:
        st = find_structure(structures, segment)
    if st.n_voxels == 0:
        raise InputError(f"{path}: ROI segment '{st.name}' is empty")
    if margin_mm and margin_mm > 0:
        st = Structure(st.name, expand_margin(st.mask, st.geometry, margin_mm, name=st.name), st.geometry)
    elif margin_mm is not None and margin_mm < 0:
        raise InputError(f"--margin must be >= 0 mm, got {margin_mm:g}")
    mask = mask_on_grid(st, ct_geometry)
    if not mask.any():
        lo, hi = ct_geometry.bounds_ras()
        raise GeometryError(f"ROI segment '{st.name}' of {path} does not overlap the CT (CT spans RAS "
                            f"{np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm, segment centre "
                            f"{np.round(st.centroid_ras(), 1).tolist()} mm): mismatched geometry")
    return mask, st.name


def read_planned_needles(path):
    """Planned needles from a plan file (its loaded needles, else all) or a needle CSV/JSON."""
    from ..planning.needles import read_needles
    if str(path).lower().endswith(".json"):
        import json
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        except (OSError, ValueError):
            doc = None
        if isinstance(doc, dict) and "seeds" in doc and "needles" in doc:
            from ..planning.planfile import read_plan
            plan = read_plan(path)
            return plan.used_needles() or list(plan.needles)
    return read_needles(path)


def cmd_find_needles(args):
    """Find the needles in an intra-operative CT; write the needle table (and deviations from the plan)."""
    from .main import ProgressBar
    from ..core.imageio import read_image
    from ..imaging.needlefinder import find_needles
    from ..planning.needle_match import DEVIATION_COLUMNS, match_needles
    from ..planning.needles import NEEDLE_TABLE_COLUMNS
    if args.min_length <= 0:
        raise InputError(f"--min-length must be > 0 mm, got {args.min_length:g}")
    if args.deviations and not args.plan:
        raise InputError("--deviations needs --plan (the planned needles to compare with)")
    ct, geometry = read_image(args.ct)
    planned = read_planned_needles(args.plan) if args.plan else []
    if planned:
        tips = np.array([n.tip for n in planned])
        entries = np.array([n.entry for n in planned])
        if not (geometry.contains_ras(tips, margin_voxels=2.0).any() or geometry.contains_ras(entries, 2.0).any()):
            lo, hi = geometry.bounds_ras()
            raise GeometryError(f"the planned needles of {args.plan} do not overlap the CT {args.ct} (CT spans RAS "
                                f"{np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm, planned tips around "
                                f"{np.round(tips.mean(axis=0), 1).tolist()} mm): plan and CT are not in one frame")
    roi, roi_name = None, "whole CT"
    if args.roi:
        roi, roi_name = roi_from_segmentation(args.roi, args.roi_segment, args.margin, geometry)
    elif args.roi_segment:
        raise InputError("--roi-segment needs --roi SEGMENTATION")
    bar = ProgressBar("find-needles", enabled=not args.quiet)
    found = find_needles(ct, geometry, region_mask=roi, progress=bar, threshold_hu=args.threshold,
                         expected_directions=[n.direction for n in planned] or None, min_length_mm=args.min_length)
    if not found:
        reasons = Counter(r["reason"].split(" (")[0] for r in found.rejected)
        raise InputError(f"no needle found in {args.ct} ({roi_name}): metal above {found.threshold_hu:.0f} HU, but "
                         + (("rejected as: " + ", ".join(f"{k} x{v}" for k, v in reasons.items())) if reasons
                            else "no straight line of steel reaching the skin"))
    matching = match_needles(found, planned, max_tip_mm=args.max_tip, max_angle_deg=args.max_angle)
    needles = matching.needles()
    extra = {m.number: m.found for m in matching.rows_ if m.found is not None}
    rows = []
    for n in needles:
        r = n.table_row()
        f = extra[n.number]
        r.update(entry_on=f.entry_on, confidence=f"{f.confidence:.3f}", bend_mm=f"{f.bend_mm:.2f}",
                 diameter_mm="" if f.diameter_mm is None else f"{f.diameter_mm:.2f}",
                 gauge_measured="yes" if f.gauge_measured else "no",
                 **{f"tip_dir_{a}": f"{v:.4f}" for a, v in zip("xyz", f.tip_direction)})
        rows.append(r)
    cols = NEEDLE_TABLE_COLUMNS + FOUND_NEEDLE_EXTRA
    write_csv(args.out, rows, cols)
    if args.deviations:
        write_csv(args.deviations, matching.rows(), DEVIATION_COLUMNS)
    if args.report:
        rep = found.summary()
        rep.update({"ct": str(args.ct), "roi": roi_name, "plan": str(args.plan) if args.plan else None,
                    "matching": matching.summary() if planned else None})
        write_json(args.report, rep)
    print(f"wrote {args.out}: {len(found)} needle(s) found (threshold {found.threshold_hu:.0f} HU, {roi_name})")
    if planned:
        print(matching.summary_line())
    for w in found.warnings:
        print(f"seedplan: warning: {w}", file=sys.stderr)
    return 0


def cmd_find_seeds(args):
    """Find the seeds in a post-implant CT and write them as a seeds CSV."""
    from .main import ProgressBar
    from ..core.imageio import read_image
    from ..imaging.seedfinder import find_seeds
    from ..physics.sources import get_model
    if args.needles and args.no_needles:
        raise InputError("give --needles or --no-needles, not both")
    ct, geometry = read_image(args.ct)
    if np.issubdtype(ct.dtype, np.floating) and not np.all(np.isfinite(ct)):
        raise InputError(f"{args.ct}: CT holds {int(np.count_nonzero(~np.isfinite(ct)))} non-finite voxel(s) "
                         "(NaN or Inf)")
    planned = None
    if args.planned:
        from .common import read_seed_input
        planned = read_seed_input(args.planned, args.model_dir)
    sk, model = args.sk, args.model
    if sk is None and planned is not None:
        sk = float(np.median(planned.strengths_U))
    if model is None and planned is not None:
        model = Counter(planned.models).most_common(1)[0][0]
    if sk is None or model is None:
        raise InputError("the seeds CSV needs a strength and a model: give --sk (U) and --model, or --planned PLAN")
    if not np.isfinite(sk) or sk <= 0:
        raise InputError(f"--sk must be a strength > 0 U, got {sk:g}")
    seed_model = get_model(model, args.model_dir)  # unknown model ids fail here, before the search
    capsule = {}
    if seed_model.capsule_length_mm is not None:
        capsule = {"seed_length_mm": seed_model.capsule_length_mm, "seed_diameter_mm": seed_model.capsule_diameter_mm}
    expected = args.expected if args.expected is not None else (len(planned) if planned is not None else None)
    roi = None
    roi_name = "body"
    if args.roi:
        roi, roi_name = roi_from_segmentation(args.roi, args.roi_segment, args.margin, geometry)
    elif args.roi_segment:
        raise InputError("--roi-segment needs --roi SEGMENTATION")
    bar = ProgressBar("find-seeds", enabled=not args.quiet)
    needles = None
    if args.no_needles:
        needles = []
    elif args.needles:
        from ..imaging.needlefinder import FoundNeedle
        from ..planning.needles import read_needles
        needles = [FoundNeedle.from_line(n.entry, n.tip, radius_mm=n.outer_radius_mm)
                   for n in read_needles(args.needles)]
    found = find_seeds(ct, geometry, expected_count=expected, roi_mask=roi, threshold_hu=args.threshold, progress=bar,
                       needles=needles, **capsule)
    write_csv(args.out, found.rows(sk, model), FOUND_COLUMNS)
    if args.report:
        rep = found.summary()
        rep.update({"ct": str(args.ct), "roi": roi_name, "margin_mm": args.margin if args.roi else None,
                    "sk_U": sk, "model": model})
        write_json(args.report, rep)
    msg = (f"wrote {args.out}: {len(found)} seeds (threshold {found.threshold_hu:.0f} HU, ROI {roi_name}, "
           f"{int(np.count_nonzero(found.seeds_in_cluster > 1))} from split clusters")
    if expected is not None:
        msg += f", expected {expected}"
    print(msg + ")")
    for w in found.warnings:
        print(f"seedplan: warning: {w}", file=sys.stderr)
    return 0


def _dose_geometry(args, planned, found):
    from ..core.geometry import ImageGeometry
    if args.reference:
        from ..core.imageio import geometry_of, read_sitk
        g = geometry_of(read_sitk(args.reference))
        if args.spacing:
            pos = np.vstack([planned.positions, found.positions])
            g = g.cropped_to_box(pos.min(axis=0), pos.max(axis=0), args.spacing, args.dose_margin)
        return g
    pos = np.vstack([planned.positions, found.positions])
    return ImageGeometry.from_bounds(pos.min(axis=0) - args.dose_margin, pos.max(axis=0) + args.dose_margin,
                                     args.spacing or 2.0)


def cmd_verify(args):
    """Match found seeds to the plan; displacements, missing/unexpected seeds, both doses, summary."""
    from .main import ProgressBar
    from .common import read_seed_input
    from ..core.imageio import write_image
    from ..physics.seeds import read_seeds_csv
    from ..evaluation.verification import MATCH_COLUMNS, verify_implant
    from .common import require_known_models
    planned = read_seed_input(args.planned, args.model_dir)
    found = read_seeds_csv(args.found)
    registration = None
    if args.transform:  # found on a CT registered to the planning CT (seedplan register): into the plan's frame
        from ..imaging.registration import read_transform
        from ..physics.seeds import SeedSet
        registration = read_transform(args.transform)
        found = SeedSet(registration.map_points(found.positions), registration.map_directions(found.axes),
                        found.strengths_U, found.models)
    if not args.no_dose:  # the found seeds' dose uses their own models
        require_known_models(found, args.found, args.model_dir)
    out_dir = Path(args.out_dir)
    if args.max_distance <= 0:
        raise InputError(f"--max-distance must be > 0 mm, got {args.max_distance:g}")
    target = None
    if args.structures:
        from ..evaluation.structures import find_structure, read_structures, guess_role_structure, TARGET_NAMES
        structures = read_structures(args.structures, allow_empty=True)
        target = (find_structure(structures, args.target) if args.target
                  else guess_role_structure(structures, TARGET_NAMES))
        if target is None:
            raise InputError(f"{args.structures}: give --target (segments: {', '.join(s.name for s in structures)})")
        if args.rx is None:
            raise InputError("--structures needs --rx (prescription dose in Gy) for the target metrics")
    elif args.target:
        raise InputError("--target needs --structures SEGMENTATION")
    dose_geometry = None if args.no_dose else _dose_geometry(args, planned, found)
    bar = ProgressBar("verify", enabled=not args.quiet)
    res = verify_implant(planned, found, dose_geometry, max_distance_mm=args.max_distance, register=args.register,
                         implant_date=args.implant_date, ct_date=args.ct_date, formalism=args.formalism,
                         method=args.engine, model_dirs=args.model_dir, target=target, prescription_Gy=args.rx,
                         compute_dose=not args.no_dose, progress=bar)
    summary = res["summary"]
    summary["inputs"] = {"planned": str(args.planned), "found": str(args.found)}
    if registration is not None:
        summary["inputs"]["transform"] = str(args.transform)
        summary["ct_registration"] = registration.to_dict()
    files = {"matches": str(out_dir / "matches.csv"), "summary": str(out_dir / "summary.json")}
    from ..core.fileio import atomic_folder
    with atomic_folder(out_dir) as tmp:  # all files appear together, or none
        write_csv(tmp / "matches.csv", res["rows"], MATCH_COLUMNS)
        if not args.no_dose:
            meta = {"SeedPlan_Unit": "Gy", "SeedPlan_Formalism": args.formalism}
            write_image(tmp / "dose_planned.nrrd", res["dose_planned_Gy"].astype(np.float32), dose_geometry,
                        dict(meta, SeedPlan_Quantity="total", SeedPlan_Seeds="planned"))
            write_image(tmp / "dose_found.nrrd", res["dose_found_Gy"].astype(np.float32), dose_geometry,
                        dict(meta, SeedPlan_Quantity="total", SeedPlan_Seeds="found"))
            files.update({"dose_planned": str(out_dir / "dose_planned.nrrd"), "dose_found": str(out_dir / "dose_found.nrrd")})
            if "dose_found_after_ct_Gy" in res:
                write_image(tmp / "dose_found_after_ct.nrrd", res["dose_found_after_ct_Gy"].astype(np.float32),
                            dose_geometry, dict(meta, SeedPlan_Quantity="total after CT date", SeedPlan_Seeds="found"))
                files["dose_found_after_ct"] = str(out_dir / "dose_found_after_ct.nrrd")
        summary["files"] = files
        write_json(tmp / "summary.json", summary)
    d = summary["displacement"]
    line = (f"verify: {summary['matched']} of {summary['planned']} planned seeds matched "
            f"({summary['found']} found), {summary['missing']} missing, {summary['unexpected']} unexpected")
    if d.get("matched"):
        line += f"; displacement median {d['median_mm']:.1f} mm, 95th percentile {d['p95_mm']:.1f} mm"
    print(line)
    if "target" in summary:
        t = summary["target"]
        print("target " + t["name"] + ": " + ", ".join(
            f"{k} {v['planned']:.1f} -> {v['found']:.1f} {v['unit']} ({v['delta']:+.1f})" for k, v in t["metrics"].items()))
    print(f"wrote {out_dir}/")
    return 0


def register(sub):
    """Add ``find-needles``, ``find-seeds`` and ``verify``."""
    p = sub.add_parser("find-needles", help="find the needles in an intra-operative CT (and their deviations from the plan)")
    p.add_argument("--ct", required=True, help="CT image (NRRD, NIfTI, MHA or a DICOM series folder)")
    p.add_argument("--plan", help="plan file (plan.json) or needle CSV/JSON: planned needles to match (names, numbers)")
    p.add_argument("--roi", help="segmentation holding the search region (needles must pass through it)")
    p.add_argument("--roi-segment", help="segment of --roi (default PTV/CTV/GTV/Prostate/Target)")
    p.add_argument("--margin", type=float, default=10.0, help="margin around the ROI segment in mm (default 10)")
    p.add_argument("--threshold", type=float, help="needle metal threshold in HU (default automatic)")
    p.add_argument("--min-length", type=float, default=20.0, help="shortest needle searched for, mm of steel (default 20)")
    p.add_argument("--max-tip", type=float, default=20.0, help="largest planned-to-found tip distance matched, mm")
    p.add_argument("--max-angle", type=float, default=15.0, help="largest planned-to-found angle matched, deg")
    p.add_argument("--out", required=True, help="output needle CSV (the format --implanted-needles reads)")
    p.add_argument("--deviations", help="output CSV of deviations from the plan (needs --plan)")
    p.add_argument("--report", help="also write a JSON report (threshold, rejected objects, matching summary)")
    p.set_defaults(func=cmd_find_needles)

    p = sub.add_parser("find-seeds", help="find the seeds in a post-implant or intra-operative CT")
    p.add_argument("--ct", required=True, help="CT image (NRRD, NIfTI, MHA or a DICOM series folder)")
    p.add_argument("--roi", help="segmentation (.seg.nrrd or labelmap) holding the search region")
    p.add_argument("--roi-segment", help="segment of --roi to search in (default PTV/CTV/GTV/Prostate/Target)")
    p.add_argument("--margin", type=float, default=10.0, help="margin around the ROI segment in mm (default 10)")
    p.add_argument("--expected", type=int, help="number of seeds implanted (default: the --planned count)")
    p.add_argument("--threshold", type=float, help="metal threshold in HU (default automatic)")
    p.add_argument("--sk", type=float, help="air-kerma strength written for every seed (U)")
    p.add_argument("--model", help="seed model id written for every seed (see 'seedplan sources')")
    p.add_argument("--planned", help="planned seeds (CSV or plan): default strength, model and expected count")
    p.add_argument("--model-dir", action="append", default=[], help="folder with extra seed model JSON files")
    p.add_argument("--needles", help="needles in place (needle CSV/JSON, e.g. from find-needles): default searched for")
    p.add_argument("--no-needles", action="store_true", help="the CT holds no needle (post-implant): skip the needle search")
    p.add_argument("--report", help="also write a JSON report (threshold, clusters, rejected objects, warnings)")
    p.add_argument("--out", required=True, help="output seeds CSV (x_mm,...,sk_U,model + confidence, cluster)")
    p.set_defaults(func=cmd_find_seeds)

    p = sub.add_parser("verify", help="compare found seeds with the plan: displacements, missing seeds, dose")
    p.add_argument("--planned", required=True, help="planned seeds CSV or plan file")
    p.add_argument("--found", required=True, help="found seeds CSV (e.g. from find-seeds)")
    p.add_argument("--out-dir", required=True, help="output folder: matches.csv, summary.json, dose NRRDs")
    p.add_argument("--max-distance", type=float, default=10.0, help="largest planned-to-found match distance, mm")
    p.add_argument("--register", choices=("none", "translation", "rigid"), default="none",
                   help="align the found seeds onto the plan first (when the CTs are not in one frame)")
    p.add_argument("--transform", help="registration of the CT the seeds were found on to the planning CT (seedplan "
                   "register .tfm/.json, or a rigid transform saved in 3D Slicer): found seeds mapped into the plan's frame "
                   "first")
    p.add_argument("--reference", help="image whose grid carries the dose (default: a box around the seeds)")
    p.add_argument("--spacing", type=float, nargs="+", help="dose grid spacing in mm (default 2 for the box)")
    p.add_argument("--dose-margin", type=float, default=15.0, help="dose box margin around the seeds, mm")
    p.add_argument("--no-dose", action="store_true", help="only match; no dose")
    p.add_argument("--structures", help="segmentation with the target, for D90 / V100 / V150 deltas")
    p.add_argument("--target", help="target segment (default PTV/CTV/GTV/Prostate/Target)")
    p.add_argument("--rx", type=float, help="prescription dose in Gy (needed with --structures)")
    p.add_argument("--implant-date", help="implant date (ISO), with --ct-date: dose remaining after the CT")
    p.add_argument("--ct-date", help="post-implant CT date (ISO)")
    p.add_argument("--engine", choices=("fast", "direct"), default="fast", help="dose grid engine (default fast)")
    p.add_argument("--formalism", choices=("2D", "1D"), default="2D", help="TG-43U1 formalism")
    p.add_argument("--model-dir", action="append", default=[], help="folder with extra seed model JSON files")
    p.set_defaults(func=cmd_verify)
