"""Core subcommands: ``sources``, ``point-dose`` and ``dose``."""

from __future__ import annotations

import sys

import numpy as np

from ..physics import dose as _dose
from ..core.errors import InputError, SeedModelError
from ..core.fileio import write_csv
from ..core.geometry import ImageGeometry
from ..physics.seeds import read_points_csv, read_seeds_csv
from ..physics.sources import load_models


def _add_dose_options(p):
    p.add_argument("--formalism", choices=("2D", "1D"), default="2D",
                   help="TG-43U1 formalism (default 2D line source; 1D only for models with phi_an)")
    p.add_argument("--time-h", type=float, default=None,
                   help="also report dose accumulated up to this many hours after implant")
    p.add_argument("--model-dir", action="append", default=[],
                   help="folder with extra seed model JSON files (repeatable)")


def cmd_sources(args):
    """List the seed models: id, nuclide, Lambda, L, half-life, formalisms, status."""
    models = load_models(args.model_dir)
    cols = ("model", "nuclide", "Lambda_cGy_per_h_per_U", "L_cm", "half_life_d", "formalisms", "U_per_mCi")
    rows = [m.summary() for m in models.values()]
    if args.json:
        import json
        print(json.dumps(rows, indent=1))
        return 0
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)) + "  notes")
    for r in rows:
        print("  ".join(str(r[c] if r[c] is not None else "-").ljust(w) for c, w in zip(cols, widths)) + "  "
              + (r["notes"] or ""))
    return 0


def cmd_point_dose(args):
    """Independent point-dose check: dose rate and total dose from a seeds CSV at listed points."""
    seeds = require_known_models(read_seeds_csv(args.seeds), args.seeds, args.model_dir)
    points = read_points_csv(args.points)
    total, rate, n_capped = _dose.dose_at_points_Gy(points, seeds, args.formalism, "total", None, args.model_dir)
    cols = ["x_mm", "y_mm", "z_mm", "dose_rate_cGy_per_h", "total_dose_Gy"]
    if args.time_h is not None:
        to_t, _, _ = _dose.dose_at_points_Gy(points, seeds, args.formalism, "to_time", args.time_h, args.model_dir)
        cols.append(f"dose_to_{args.time_h:g}h_Gy")
    rows = []
    for i, p in enumerate(points):
        row = {"x_mm": f"{p[0]:.3f}", "y_mm": f"{p[1]:.3f}", "z_mm": f"{p[2]:.3f}",
               "dose_rate_cGy_per_h": f"{rate[i]:.6g}", "total_dose_Gy": f"{total[i]:.6g}"}
        if args.time_h is not None:
            row[cols[-1]] = f"{to_t[i]:.6g}"
        rows.append(row)
    if args.out:
        write_csv(args.out, rows, cols)
    else:
        import csv
        w = csv.DictWriter(sys.stdout, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    if n_capped:
        print(f"seedplan: warning: {n_capped} point(s) lie inside a seed's cap radius; their dose is capped",
              file=sys.stderr)
    return 0


def require_known_models(seeds, path, model_dirs=()):
    """SeedModelError naming ``path`` and the first seed whose model is not among the known models.

    Checked right after a seed file is read, so the message names the file (the dose engine, which
    looks the models up later, only knows the model id).
    """
    models = load_models(model_dirs)  # a malformed model file raises here, naming that file
    for i, m in enumerate(seeds.models):
        if m not in models:
            raise SeedModelError(f"{path}: seed {i + 1}: unknown seed model '{m}' (known: {', '.join(sorted(models))}; "
                                 "add its TG-43 data with --model-dir or SEEDPLAN_MODEL_PATH)")
    return seeds


def read_seed_input(path, model_dirs=(), ct=None, require_inside=True):
    """Seeds from a CSV, a plan JSON file (:func:`planfile.read_plan_seeds`) or a brachy RT Plan (``.dcm``).

    An RT Plan's seeds are checked against ``ct`` when given (same frame of reference, and with
    ``require_inside`` inside the CT).
    """
    path = str(path)
    if path.lower().endswith(".json"):
        from ..planning.planfile import read_plan_seeds
        return require_known_models(read_plan_seeds(path), path, model_dirs)
    if path.lower().endswith(".dcm"):
        from ..dicom.rtplan_read import check_plan_on_ct, read_rtplan_seeds
        seeds, info = read_rtplan_seeds(path, model_dirs=model_dirs)
        if not info["permanent"]:
            raise InputError(f"{path}: a temporary implant (Brachy Treatment Technique {info['technique'] or 'missing'}, "
                             "not PERMANENT): its seeds are removed after their dwell times, while this product's doses "
                             "are totals to full decay; seedplan dicom-seeds lists the seeds with their dwell times")
        if info["unresolved_models"]:
            raise InputError(f"{path}: unknown seed model(s) {', '.join(info['unresolved_models'])}: add their TG-43 "
                             "data (--model-dir) or convert with seedplan dicom-seeds")
        if ct is not None:
            check_plan_on_ct(seeds, info, ct, require_inside)
        for note in info["notes"]:
            print(f"seedplan: note: {path}: {note}", file=sys.stderr)
        return seeds
    return require_known_models(read_seeds_csv(path), path, model_dirs)


def grid_from_args(args, seeds):
    """Dose grid from --reference (image, optionally cropped around the seeds) or --box."""
    if args.reference:
        from ..core.imageio import read_sitk, geometry_of
        ref = geometry_of(read_sitk(args.reference))
        if args.crop_margin is not None:
            if args.crop_margin < 0:
                raise InputError(f"--crop-margin must be >= 0 mm, got {args.crop_margin:g}")
            pos = seeds.positions
            ref = ref.cropped_to_box(pos.min(axis=0), pos.max(axis=0), args.spacing, args.crop_margin)
        elif args.spacing:
            ref = ref.resampled(args.spacing)
        return ref
    if args.box:
        lo = np.array(args.box[:3], float)
        hi = np.array(args.box[3:], float)
        return ImageGeometry.from_bounds(lo, hi, args.spacing or 1.0)
    raise InputError("no dose grid: give --reference IMAGE or --box XMIN YMIN ZMIN XMAX YMAX ZMAX")


def cmd_dose(args):
    """Dose grid (Gy) from seeds on a reference image's geometry or an explicit box; writes NRRD."""
    from .main import ProgressBar
    from ..core.imageio import write_image
    seeds = read_seed_input(args.seeds, args.model_dir, ct=args.reference, require_inside=False)
    geometry = grid_from_args(args, seeds)
    if geometry.n_voxels == 0:
        raise InputError("empty dose grid")
    if not args.allow_outside:
        _dose.require_seeds_in_grid(geometry, seeds, "dose grid (check RAS vs LPS coordinates, or pass --allow-outside)")
    quantity = "to_time" if args.time_h is not None else "total"
    bar = ProgressBar("dose", enabled=not args.quiet)
    dose, n_capped = _dose.compute_dose_Gy(geometry, seeds, args.formalism, quantity, args.time_h,
                                           args.engine, args.model_dir, bar)
    write_image(args.out, dose.astype(np.float32), geometry,
                {"SeedPlan_Quantity": quantity, "SeedPlan_Unit": "Gy", "SeedPlan_Formalism": args.formalism})
    print(f"wrote {args.out}: {len(seeds)} seeds, grid {geometry.size} at {geometry.spacing} mm, "
          f"max {float(dose.max()):.1f} Gy, {n_capped} voxel(s) capped inside seeds")
    return 0


def register(sub):
    """Add the core subcommands."""
    p = sub.add_parser("sources", help="list the seed models and their TG-43 parameters")
    p.add_argument("--model-dir", action="append", default=[], help="folder with extra seed model JSON files")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_sources)

    p = sub.add_parser("point-dose", help="dose rate and total dose at points (independent check)")
    p.add_argument("--seeds", required=True, help="seeds CSV: x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model")
    p.add_argument("--points", required=True, help="points CSV: x_mm,y_mm,z_mm")
    p.add_argument("--out", help="output CSV (default: standard output)")
    _add_dose_options(p)
    p.set_defaults(func=cmd_point_dose)

    p = sub.add_parser("dose", help="dose grid (Gy, NRRD) from seeds")
    p.add_argument("--seeds", required=True, help="seeds CSV, plan JSON or brachy RT Plan (.dcm)")
    p.add_argument("--reference", help="reference image (NRRD, NIfTI, MHA or a DICOM series folder)")
    p.add_argument("--box", nargs=6, type=float, metavar=("XMIN", "YMIN", "ZMIN", "XMAX", "YMAX", "ZMAX"),
                   help="explicit RAS box (mm) instead of a reference image")
    p.add_argument("--spacing", type=float, nargs="+", help="grid spacing in mm (1 or 3 values)")
    p.add_argument("--crop-margin", type=float, metavar="MM",
                   help="restrict the reference grid to the seeds' bounding box plus MM (orientation kept)")
    p.add_argument("--engine", choices=("fast", "direct"), default="fast", help="grid engine (default fast)")
    p.add_argument("--allow-outside", action="store_true", help="accept seeds outside the dose grid")
    p.add_argument("--out", required=True, help="output dose image (.nrrd)")
    _add_dose_options(p)
    p.set_defaults(func=cmd_dose)
