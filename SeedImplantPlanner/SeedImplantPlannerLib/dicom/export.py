"""DICOM RT export of a seed implant plan: CT series, RT Structure Set, RT Plan (brachy), RT Dose.

Entry point: :func:`export_plan_dicom`: checks the inputs, writes every object into a temporary
folder and renames it into place (nothing half-written). The objects are written by
:mod:`image_series` (CT), :mod:`rtstruct`, :mod:`rtplan` and :mod:`rtdose`; what they share
(UIDs, patient and study modules) is in :mod:`common`. Read-back: :mod:`rtimport`.

Design choices (documented in docs/dicom.md):
- One study, one Frame of Reference. A CT given as NRRD/NIfTI/MHA (or an array) is written as a
  new CT series (``CT/`` sub-folder, one file per slice); a CT given as a DICOM series folder is
  not rewritten: its Study Instance UID, Frame of Reference UID, patient module and SOP Instance
  UIDs are reused and referenced.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..core import progress as _progress
from ..core.dicomseries import split_series_path
from ..core.errors import InputError
from ..core.fileio import check_output_path, ensure_folder
from ..core.geometry import ImageGeometry
from ..physics.seeds import SeedSet
from ..physics.sources import SeedModel, get_model
from .common import CT_STORAGE, PatientInfo, StudyContext, boxes_overlap, grid_box, new_uid, parse_datetime
from .image_series import LATERALITIES, axis_aligned, study_from_dicom_folder, write_ct_series
from .rtdose import write_rtdose
from .rtplan import DEFAULT_SETUP_TYPE, check_setup_type, seed_applicators, write_rtplan
from .rtstruct import write_rtstruct

# -- checks ------------------------------------------------------------------------------------

def _check_inputs(seeds, prescription_Gy, dose_Gy, dose_geometry, ct_geometry, segmentation, model, model_dirs=()):
    if seeds is None or len(seeds) == 0:
        raise InputError("no seeds: an RT Plan needs at least one seed")
    seeds.validate()
    try:
        rx = float(prescription_Gy)
    except (TypeError, ValueError):
        raise InputError(f"prescription dose is not a number: {prescription_Gy!r}") from None
    if not math.isfinite(rx) or rx <= 0:
        raise InputError(f"prescription dose must be a positive finite number of Gy, got {prescription_Gy!r}")
    models = {}
    for m in dict.fromkeys(seeds.models):
        models[m] = get_model(m, model_dirs)
    if model is not None:
        mid = model.model_id if isinstance(model, SeedModel) else str(model)
        other = sorted(set(seeds.models) - {mid})
        if other:
            raise InputError(f"seed model '{mid}' was given but the seeds use {', '.join(other)}")
    lo, hi = grid_box(ct_geometry)
    outside = ~np.all((seeds.positions >= lo) & (seeds.positions <= hi), axis=1)
    if np.any(outside):
        i = int(np.flatnonzero(outside)[0])
        raise InputError(f"{int(outside.sum())} seed(s) lie outside the CT (seed {i + 1} at RAS "
                         f"{np.round(seeds.positions[i], 1).tolist()} mm): different frame of reference, "
                         "or LPS coordinates given as RAS?")
    if dose_Gy is not None:
        if dose_geometry is None:
            raise InputError("a dose array needs its grid geometry (dose_geometry)")
        d = np.asarray(dose_Gy)
        if d.shape != dose_geometry.shape:
            raise InputError(f"dose array shape {d.shape} does not match its grid {dose_geometry.shape}")
        bad = ~np.isfinite(d)
        if np.any(bad):
            raise InputError(f"dose grid has {int(bad.sum())} NaN or infinite voxel(s)")
        if d.size and float(d.min()) < -1e-6 * max(float(d.max()), 1e-12):
            raise InputError(f"dose grid has negative values (min {float(d.min()):.4g} Gy); physical dose is >= 0")
        if not boxes_overlap(*grid_box(dose_geometry), lo, hi):
            raise InputError("the dose grid does not overlap the CT: different frame of reference?")
    if segmentation is not None:
        if not segmentation.segments:
            raise InputError("segmentation has no segments")
        if not boxes_overlap(*grid_box(segmentation.geometry), lo, hi):
            raise InputError("the segmentation does not overlap the CT: different frame of reference?")
    return rx, models


def _target_roi(roi_numbers: dict, target_name):
    if not roi_numbers:
        if target_name:
            raise InputError(f"target '{target_name}' given but no segmentation to find it in")
        return None
    if target_name:
        for name, n in roi_numbers.items():
            if name.lower() == str(target_name).strip().lower():
                return n
        raise InputError(f"no segment named '{target_name}' (segments: {', '.join(roi_numbers)})")
    for pref in ("ptv", "ctv", "gtv", "prostate", "target"):
        for name, n in roi_numbers.items():
            if name.lower() == pref:
                return n
    for pref in ("ptv", "ctv", "gtv"):
        for name, n in roi_numbers.items():
            if name.lower().startswith(pref):
                return n
    return None


# -- atomic folder -----------------------------------------------------------------------------

def _publish(tmp: Path, out_dir: Path, overwrite: bool):
    """Move the finished temporary folder into place (replacing ``out_dir`` only with ``overwrite``)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()):
            if not overwrite:
                raise InputError(f"{out_dir}: folder exists and is not empty (choose a new folder or overwrite)")
            old = Path(tempfile.mkdtemp(prefix="." + out_dir.name + ".old.", dir=out_dir.parent))
            os.rmdir(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
            return
        os.rmdir(out_dir)
    os.replace(tmp, out_dir)


# -- public API --------------------------------------------------------------------------------

def export_plan_dicom(out_dir, ct, seeds: SeedSet, prescription_Gy, *, ct_geometry: ImageGeometry | None = None,
                      segmentation=None, needles=None, seed_needle_names=None, model=None, strength_reference=None,
                      dose_Gy=None, dose_geometry: ImageGeometry | None = None, patient: PatientInfo | None = None,
                      target_name=None, plan_label="SeedPlan", dose_comment=None, model_dirs=(), overwrite=False,
                      setup_type=DEFAULT_SETUP_TYPE, laterality="U", progress=None) -> dict:
    """Write a plan as DICOM RT into the new folder ``out_dir``; returns the written paths.

    ``ct``: path of a CT image (NRRD, NIfTI, MHA: written as a new CT series) or of a DICOM CT
    series folder (reused, not rewritten), or an array [k, j, i] with ``ct_geometry``.
    ``seeds``: SeedSet (RAS mm, strengths in U at ``strength_reference``, default now).
    ``segmentation``: segio.Segmentation or None (no RT Structure Set then). ``needles``: Needle
    objects or their ``to_dict()`` form: each seed's channel gets its needle as Source Applicator
    (``seed_needle_names`` names each seed's needle among them; without names, the needle path a
    seed lies on). ``dose_Gy`` on ``dose_geometry``: total dose to full decay (RT Dose), or None.
    Axis-aligned CT and dose grids are written along +x, +y, +z (Image Orientation 1\\0\\0\\0\\1\\0),
    oblique ones as they are. ``patient``: PatientInfo (defaults: anonymous synthetic ids; a DICOM
    CT's own patient and study data always win). ``setup_type``: Application Setup Type, one of
    :data:`rtplan.APPLICATION_SETUP_TYPES`. ``laterality``: Image Laterality of a written CT series
    (U unpaired body part, the default; B, R, L). ``model_dirs``: extra seed model folders. ``overwrite``
    replaces a non-empty ``out_dir``; ``progress(fraction, text)`` returning False cancels (nothing
    is written). Returns ``{"folder", "ct": [paths], "rtstruct", "rtplan", "rtdose"}`` (absent
    objects are None).
    """
    out_dir = Path(out_dir)
    now = _dt.datetime.now().replace(microsecond=0)
    strength_ref = now if strength_reference is None else parse_datetime(strength_reference)
    _progress.report(progress, 0.0, "DICOM: checking inputs")
    ct_path = None
    if isinstance(ct, (str, os.PathLike)):
        ct_path, _ = split_series_path(ct)
        if not ct_path.exists():
            raise InputError(f"{ct_path}: CT not found")
    if ct_path is not None and ct_path.is_dir():
        ct_geometry, first, uids, attrs = study_from_dicom_folder(ct)
        ct_array = None
        study = StudyContext(str(first.StudyInstanceUID), str(first.FrameOfReferenceUID), now.strftime("%Y%m%d"),
                       now.strftime("%H%M%S"), attrs, ct_geometry, str(first.SeriesInstanceUID), str(first.SOPClassUID),
                       uids, False)
        src = ct_path.resolve()
        dst = out_dir.resolve()
        if dst == src or src in dst.parents or dst in src.parents:
            raise InputError(f"{out_dir}: the export folder must not be the CT folder, inside it or around it")
    else:
        if ct_path is not None:
            from ..core.imageio import read_image
            ct_array, ct_geometry = read_image(ct_path)
        else:
            if ct is None or ct_geometry is None:
                raise InputError("no CT: give a CT image path, a DICOM series folder, or an array with ct_geometry")
            ct_array = np.asarray(ct)
            if ct_array.shape != ct_geometry.shape:
                raise InputError(f"CT array shape {ct_array.shape} does not match its grid {ct_geometry.shape}")
        ct_array, ct_geometry = axis_aligned(ct_array, ct_geometry)
        info = (patient or PatientInfo()).filled()
        attrs = {"PatientName": info.name, "PatientID": info.patient_id, "PatientBirthDate": info.birth_date,
                 "PatientSex": info.sex, "StudyID": info.study_id, "AccessionNumber": info.accession_number,
                 "ReferringPhysicianName": info.referring_physician, "StudyDescription": info.study_description}
        study = StudyContext(new_uid(), new_uid(), now.strftime("%Y%m%d"), now.strftime("%H%M%S"), attrs, ct_geometry,
                       new_uid(), CT_STORAGE, [new_uid() for _ in range(ct_geometry.size[2])], True)
    rx, models = _check_inputs(seeds, prescription_Gy, dose_Gy, dose_geometry, ct_geometry, segmentation, model,
                               model_dirs)
    applicators = seed_applicators(seeds, needles, seed_needle_names)
    check_setup_type(setup_type)
    if laterality not in LATERALITIES:
        raise InputError(f"laterality {laterality!r}: use one of {', '.join(LATERALITIES)}")
    if not str(plan_label or "").strip():
        raise InputError("the RT Plan label is empty (RT Plan Label is a Type 1 attribute): give a label")
    if dose_Gy is not None:
        dose_Gy, dose_geometry = axis_aligned(np.asarray(dose_Gy, dtype=float), dose_geometry)

    check_output_path(out_dir, "folder")
    ensure_folder(out_dir.parent, out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not overwrite)):
        raise InputError(f"{out_dir}: folder exists and is not empty (choose a new folder or overwrite)")
    tmp = Path(tempfile.mkdtemp(prefix="." + out_dir.name + ".", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    result = {"folder": out_dir, "ct": [], "rtstruct": None, "rtplan": None, "rtdose": None}
    try:
        ct_paths = []
        if study.ct_written:
            ct_paths = write_ct_series(tmp / "CT", ct_array, ct_geometry, study, now,
                                       _progress.scaled(progress, 0.0, 0.4), laterality)
        rtstruct_ds, roi_numbers = None, {}
        if segmentation is not None:
            rtstruct_ds, roi_numbers = write_rtstruct(tmp / "RTSTRUCT.dcm", segmentation, study, now,
                                                       _progress.scaled(progress, 0.4, 0.8))
        target = _target_roi(roi_numbers, target_name)
        _progress.report(progress, 0.85, "DICOM: RT Plan")
        plan_ds = write_rtplan(tmp / "RTPLAN.dcm", seeds, models, rx, strength_ref, study, now, rtstruct_ds, target,
                               applicators, plan_label, setup_type)
        if dose_Gy is not None:
            _progress.report(progress, 0.9, "DICOM: RT Dose")
            comment = dose_comment or f"TG-43U1 total dose to full decay, {len(seeds)} seeds"
            write_rtdose(tmp / "RTDOSE.dcm", np.maximum(np.asarray(dose_Gy, dtype=float), 0.0), dose_geometry,
                          study, now, plan_ds, comment)
        _publish(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result["ct"] = [out_dir / "CT" / p.name for p in ct_paths]
    if segmentation is not None:
        result["rtstruct"] = out_dir / "RTSTRUCT.dcm"
    result["rtplan"] = out_dir / "RTPLAN.dcm"
    if dose_Gy is not None:
        result["rtdose"] = out_dir / "RTDOSE.dcm"
    _progress.report(progress, 1.0, "DICOM: done")
    return result
