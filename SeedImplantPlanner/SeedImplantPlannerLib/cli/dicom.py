"""DICOM RT subcommands: ``export-dicom`` (plan -> CT, RT Structure Set, RT Plan, RT Dose) and
``dicom-seeds`` (seeds of a brachy RT Plan -> seeds CSV)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.errors import InputError


def _read_seeds(args):
    """(SeedSet, needle name per seed or None, the plan's needles or None, prescription Gy or None, strength date
    or None) from --seeds."""
    path = Path(args.seeds)
    if path.suffix.lower() == ".json":
        try:
            from ..planning.planfile import read_plan
        except ImportError as exc:
            raise InputError(f"{path}: plan files need the planning module ({exc})") from exc
        plan = read_plan(path)
        if not len(plan.seeds):
            raise InputError(f"{path}: the plan has no seeds")
        from ..dicom.rtplan import plan_needle_names
        needle_names = plan_needle_names(plan)
        date = plan.source.get("implant_date") if isinstance(plan.source, dict) else None
        return plan.seeds, needle_names, list(plan.needles), plan.prescription_Gy, date
    from ..physics.seeds import read_seeds_csv
    return read_seeds_csv(path, default_model=args.model), None, None, None, None


def _read_dose(path):
    """Dose array and geometry of a dose image; refuses images marked as another quantity or unit."""
    from ..core.imageio import geometry_of, read_sitk
    import SimpleITK as sitk
    image = read_sitk(path)
    meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    quantity = meta.get("SeedPlan_Quantity")
    if quantity is not None and quantity != "total":
        raise InputError(f"{path}: dose image holds quantity '{quantity}'; an RT Dose needs the total dose to "
                         "full decay (seedplan dose without --time-h)")
    unit = meta.get("SeedPlan_Unit")
    if unit is not None and unit != "Gy":
        raise InputError(f"{path}: dose image unit is '{unit}', expected Gy")
    return sitk.GetArrayFromImage(image).astype(np.float64), geometry_of(image)


def cmd_export_dicom(args):
    """Write the plan as DICOM RT files into a new folder."""
    from .main import ProgressBar
    from ..dicom.common import PatientInfo
    from ..dicom.export import export_plan_dicom
    from .common import require_known_models
    seeds, needle_names, plan_needles, plan_rx, plan_date = _read_seeds(args)
    require_known_models(seeds, args.seeds, args.model_dir)
    rx = args.prescription_Gy if args.prescription_Gy is not None else plan_rx
    if rx is None:
        raise InputError("no prescription: give --prescription-Gy (a seeds CSV carries none)")
    segmentation = None
    if args.segmentation:
        from ..imaging.segio import read_segmentation
        segmentation = read_segmentation(args.segmentation)
    dose = dose_geometry = None
    if args.dose:
        dose, dose_geometry = _read_dose(args.dose)
    needles = plan_needles
    if args.needles:
        try:
            doc = json.loads(Path(args.needles).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"{args.needles}: cannot read needle file: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise InputError(f"{args.needles}: needle file is not valid JSON: {exc}") from exc
        needles = doc.get("needles") if isinstance(doc, dict) else doc
        if not isinstance(needles, list):
            raise InputError(f"{args.needles}: expected a JSON list of needles or an object with a 'needles' list")
    patient = PatientInfo(name=args.patient_name or "", patient_id=args.patient_id or "")
    bar = ProgressBar("dicom", enabled=not args.quiet)
    res = export_plan_dicom(args.out, args.ct, seeds, rx, segmentation=segmentation, needles=needles,
                            seed_needle_names=None if args.needles else needle_names,
                            setup_type=args.setup_type, laterality=args.laterality,
                            strength_reference=args.strength_date or plan_date, dose_Gy=dose,
                            dose_geometry=dose_geometry, patient=patient, target_name=args.target,
                            plan_label=args.label, model_dirs=args.model_dir, overwrite=args.overwrite, progress=bar)
    written = [f"{len(res['ct'])} CT slices" if res["ct"] else "CT reused (DICOM series)"]
    for key in ("rtstruct", "rtplan", "rtdose"):
        if res[key] is not None:
            written.append(Path(res[key]).name)
    print(f"wrote {res['folder']}: {', '.join(written)}; {len(seeds)} seeds, prescription {float(rx):g} Gy")
    return 0


def cmd_dicom_seeds(args):
    """Seeds of a brachytherapy RT Plan to a seeds CSV (RAS mm, U)."""
    from ..dicom.rtplan_read import read_rtplan_seeds
    from ..core.fileio import write_csv
    from ..physics.seeds import SEED_COLUMNS, seeds_to_rows
    strength = None if args.strength is None else (args.strength, args.unit)
    seeds, info = read_rtplan_seeds(args.plan, at=args.at, model_dirs=args.model_dir, strength=strength)
    if args.ct:
        from ..dicom.rtplan_read import check_plan_on_ct
        check_plan_on_ct(seeds, info, args.ct)
    rows = seeds_to_rows(seeds)
    columns = list(SEED_COLUMNS) + ["needle"]
    for r, name in zip(rows, info["needle_names"]):
        r["needle"] = name
    if not info["permanent"]:  # a temporary implant: each seed's dwell time matters for its dose
        columns.append("dwell_time_s")
        for r, t in zip(rows, info["dwell_times_s"]):
            r["dwell_time_s"] = "" if t is None else f"{t:.10g}"
    write_csv(args.out, rows, columns)
    when = info["strengths_decayed_to"] or info["strength_reference"]
    print(f"wrote {args.out}: {len(seeds)} seeds ({', '.join(sorted(set(seeds.models)))}), technique "
          f"{info['technique'] or '-'}, strengths at {when or 'the source reference date'}")
    for note in info["notes"]:
        print(f"seedplan: note: {note}")
    if info["unresolved_models"]:
        print(f"seedplan: warning: unknown seed model(s) {', '.join(info['unresolved_models'])}: add their TG-43 "
              "data (--model-dir) before computing dose")
    return 0


def register(sub):
    """Add the DICOM subcommands."""
    from ..dicom.image_series import LATERALITIES
    from ..dicom.rtplan import APPLICATION_SETUP_TYPES, DEFAULT_SETUP_TYPE
    p = sub.add_parser("export-dicom", help="write CT, RT Structure Set, RT Plan and RT Dose (DICOM) of a plan")
    p.add_argument("--ct", required=True, help="planning CT: image file (written as a CT series) or DICOM series folder "
                                                "(reused: same study and frame of reference; FOLDER::SERIES_UID "
                                                "picks one of several series)")
    p.add_argument("--seeds", required=True, help="seeds CSV (RAS mm, U) or plan JSON")
    p.add_argument("--model", help="seed model id for a seeds CSV without a model column")
    p.add_argument("--prescription-Gy", type=float, help="prescription dose (Gy); default: the plan file's")
    p.add_argument("--segmentation", help=".seg.nrrd or labelmap: written as an RT Structure Set on the CT slices")
    p.add_argument("--dose", help="total dose image (Gy, e.g. from seedplan dose): written as RT Dose")
    p.add_argument("--needles", help="needle JSON (a list, or an object with 'needles'): each seed's needle (the path "
                                     "it lies on) becomes its channel's Source Applicator; default: the plan's needles")
    p.add_argument("--target", help="structure the prescription refers to (default: PTV, CTV or GTV)")
    p.add_argument("--strength-date", help="date/time at which the seed strengths apply (default: the plan's "
                                           "implant date, else now)")
    p.add_argument("--patient-name", help="patient name (default: anonymous synthetic)")
    p.add_argument("--patient-id", help="patient id (default: synthetic SIP-...)")
    p.add_argument("--label", default="SeedPlan", help="RT Plan label (16 characters kept)")
    p.add_argument("--setup-type", default=DEFAULT_SETUP_TYPE, choices=APPLICATION_SETUP_TYPES,
                   help="RT Plan Application Setup Type, a defined term of the standard (default %(default)s: "
                        "template-guided interstitial implant)")
    p.add_argument("--laterality", default="U", choices=LATERALITIES,
                   help="Image Laterality of a written CT series: U unpaired body part (default), B both sides, "
                        "R or L for a paired one (breast)")
    p.add_argument("--model-dir", action="append", default=[], help="folder with extra seed model JSON files")
    p.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty output folder")
    p.add_argument("--out", required=True, help="output folder (created; written atomically)")
    p.set_defaults(func=cmd_export_dicom)

    p = sub.add_parser("dicom-seeds", help="seeds of a brachytherapy RT Plan (DICOM) to a seeds CSV")
    p.add_argument("--plan", required=True, help="RT Plan file (.dcm)")
    p.add_argument("--at", help="decay the strengths from the source reference date to this date/time")
    p.add_argument("--strength", type=float, help="seed strength for sources without a Reference Air Kerma Rate "
                                                  "(at the source's reference date)")
    p.add_argument("--unit", choices=("U", "mCi"), default="U", help="unit of --strength (default U)")
    p.add_argument("--ct", help="CT the plan belongs to (DICOM folder, FOLDER::SERIES_UID or image): refuses another "
                                "frame of reference or seeds outside it")
    p.add_argument("--model-dir", action="append", default=[], help="folder with extra seed model JSON files")
    p.add_argument("--out", required=True, help="output seeds CSV")
    p.set_defaults(func=cmd_dicom_seeds)
