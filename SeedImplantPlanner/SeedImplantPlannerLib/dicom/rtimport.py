"""Read DICOM RT objects back: seeds from a brachy RT Plan, dose from an RT Dose, masks from an RT Structure Set.

Everything comes back in the library's conventions: RAS mm, arrays [k, j, i], strengths in U.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry, LPS_TO_RAS
from ..physics.seeds import SeedSet
from .common import RTDOSE_STORAGE, RTPLAN_STORAGE, RTSTRUCT_STORAGE


def _read(path, sop_class, what):
    import pydicom
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # pydicom raises InvalidDicomError, OSError, ValueError...
        raise InputError(f"{path}: not a readable DICOM file ({exc})") from exc
    if str(getattr(ds, "SOPClassUID", "")) != sop_class:
        raise InputError(f"{path}: not an {what} (SOP Class UID {getattr(ds, 'SOPClassUID', 'missing')})")
    return path, ds


def _lps_to_ras(v):
    return np.asarray(v, dtype=float) @ LPS_TO_RAS.T


def _dicom_datetime(date, time):
    date = str(date or "").strip()
    time = str(time or "").strip()
    if not date:
        return None
    try:
        d = _dt.datetime.strptime(date, "%Y%m%d")
    except ValueError:
        return None
    t = (time.split(".")[0] + "000000")[:6]
    try:
        return d.replace(hour=int(t[:2]), minute=int(t[2:4]), second=int(t[4:6]))
    except ValueError:
        return d


def _float_or_none(item, keyword):
    """Float value of ``item.keyword``, None when absent, empty or not a number."""
    value = getattr(item, keyword, None)
    if value in (None, ""):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _resolve_model(src, known):
    """Model id for a Source item: its description / model id if known, else by nuclide and length."""
    for key in ("SourceDescription", "SourceModelID"):
        v = str(getattr(src, key, "") or "").strip()
        if v in known:
            return v, True
    iso = str(getattr(src, "SourceIsotopeName", "")).strip().upper().replace(" ", "")
    length_mm = _float_or_none(src, "ActiveSourceLength")
    cands = []
    for mid, m in known.items():
        if m.nuclide.upper().replace(" ", "") != iso:
            continue
        if length_mm is not None and abs(m.active_length_cm * 10.0 - length_mm) > 0.05:
            continue
        cands.append(mid)
    if len(cands) == 1:
        return cands[0], True
    fallback = (str(getattr(src, "SourceDescription", "") or "") or str(getattr(src, "SourceModelID", "") or "")
                or f"unknown_{iso or 'source'}").strip()
    return fallback, False


def read_rtplan_seeds(path, at=None, model_dirs=()):
    """Seeds of a brachytherapy RT Plan: ``(SeedSet, info)``.

    Every channel of every Application Setup is read. A channel whose control points all lie at
    one position is one seed there; otherwise each dwell (two consecutive control points at one
    position with increasing Cumulative Time Weight) is a seed. The seed axis is the Control
    Point Orientation (LPS -> RAS); without it, the channel direction, else +S (noted in
    ``info["notes"]``). Strengths are the sources' Reference Air Kerma Rate (U) at the Source
    Strength Reference Date/Time, decayed to ``at`` (date or date-time) when given.
    ``info``: technique, type, prescription_Gy, frame_of_reference_uid, strength_reference,
    needle_names (Source Applicator ID per seed), channel_numbers, sources, unresolved_models, notes.
    """
    from ..physics.sources import load_models
    path, ds = _read(path, RTPLAN_STORAGE, "RT Plan")
    if "ApplicationSetupSequence" not in ds or not ds.ApplicationSetupSequence:
        raise InputError(f"{path}: RT Plan has no Application Setup Sequence (not a brachytherapy plan)")
    known = load_models(model_dirs)
    notes = []
    sources = {}
    for src in getattr(ds, "SourceSequence", []):
        num = int(src.SourceNumber)
        akr = _float_or_none(src, "ReferenceAirKermaRate")
        if akr is None:
            raise InputError(f"{path}: source {num}: Reference Air Kerma Rate missing or not a number")
        if akr <= 0:
            raise InputError(f"{path}: source {num}: Reference Air Kerma Rate is {akr:g}: nobody can compute a dose "
                             "from a source of zero strength")
        model_id, ok = _resolve_model(src, known)
        half_life = _float_or_none(src, "SourceIsotopeHalfLife")
        ref = _dicom_datetime(getattr(src, "SourceStrengthReferenceDate", ""),
                              getattr(src, "SourceStrengthReferenceTime", ""))
        sources[num] = {"number": num, "model": model_id, "resolved": ok, "air_kerma_rate_U": akr,
                        "isotope": str(getattr(src, "SourceIsotopeName", "")), "half_life_days": half_life,
                        "reference_datetime": ref,
                        "active_length_mm": _float_or_none(src, "ActiveSourceLength")}
    if not sources:
        raise InputError(f"{path}: RT Plan has no Source Sequence")
    when = None
    if at is not None:
        from ..physics.strength import parse_datetime
        when = parse_datetime(at)
    pos, axes, sk, models, needle_names, channel_numbers = [], [], [], [], [], []
    for setup in ds.ApplicationSetupSequence:
        for ch in getattr(setup, "ChannelSequence", []):
            cnum = int(ch.ChannelNumber)
            snum = int(ch.ReferencedSourceNumber)
            if snum not in sources:
                raise InputError(f"{path}: channel {cnum} refers to source {snum}, which is not in the Source Sequence")
            src = sources[snum]
            cps = sorted(getattr(ch, "BrachyControlPointSequence", []), key=lambda c: int(c.ControlPointIndex))
            if not cps:
                raise InputError(f"{path}: channel {cnum} has no Brachy Control Point Sequence")
            try:
                p = np.array([[float(v) for v in c.ControlPoint3DPosition] for c in cps])
            except AttributeError:
                raise InputError(f"{path}: channel {cnum}: a control point has no Control Point 3D Position") from None
            w = np.array([float(c.CumulativeTimeWeight) if getattr(c, "CumulativeTimeWeight", "") not in ("", None)
                          else np.nan for c in cps])
            orient = [np.asarray(c.ControlPointOrientation, dtype=float) if "ControlPointOrientation" in c else None
                      for c in cps]
            if np.allclose(p, p[0], atol=1e-6, rtol=0):
                dwell = [0]
            else:
                dwell = [i for i in range(len(cps) - 1) if np.allclose(p[i], p[i + 1], atol=1e-6, rtol=0)
                         and (np.isnan(w[i]) or w[i + 1] > w[i])]
                if not dwell:
                    dwell = list(range(len(cps)))
                    notes.append(f"channel {cnum}: no dwell pairs; every control point taken as a seed")
            chord = p[-1] - p[0]
            for i in dwell:
                if orient[i] is not None and np.linalg.norm(orient[i]) > 1e-6:
                    a = _lps_to_ras(orient[i])
                elif np.linalg.norm(chord) > 1e-6:
                    a = _lps_to_ras(chord)
                    notes.append(f"channel {cnum}: no Control Point Orientation; seed axis along the channel")
                else:
                    a = np.array([0.0, 0.0, 1.0])
                    notes.append(f"channel {cnum}: no Control Point Orientation; seed axis set to +S")
                strength = src["air_kerma_rate_U"]
                if when is not None:
                    if src["reference_datetime"] is None or not src["half_life_days"]:
                        raise InputError(f"{path}: source {snum} lacks a reference date or half-life; cannot decay to {at}")
                    hours = (when - src["reference_datetime"]).total_seconds() / 3600.0
                    strength *= math.exp(-math.log(2.0) * hours / (src["half_life_days"] * 24.0))
                pos.append(_lps_to_ras(p[i]))
                axes.append(a)
                sk.append(strength)
                models.append(src["model"])
                needle_names.append(str(getattr(ch, "SourceApplicatorID", "") or getattr(ch, "SourceApplicatorName", "")
                                        or ""))
                channel_numbers.append(cnum)
    if not pos:
        raise InputError(f"{path}: RT Plan has no channels, hence no seeds")
    seeds = SeedSet(np.array(pos), np.array(axes), np.array(sk), models)
    rx = None
    for dref in getattr(ds, "DoseReferenceSequence", []):
        if "TargetPrescriptionDose" in dref and dref.TargetPrescriptionDose not in ("", None):
            rx = float(dref.TargetPrescriptionDose)
            break
    refs = {s["reference_datetime"] for s in sources.values()}
    info = {
        "path": path, "sop_instance_uid": str(ds.SOPInstanceUID), "plan_label": str(getattr(ds, "RTPlanLabel", "")),
        "technique": str(getattr(ds, "BrachyTreatmentTechnique", "")), "type": str(getattr(ds, "BrachyTreatmentType", "")),
        "prescription_Gy": rx, "frame_of_reference_uid": str(getattr(ds, "FrameOfReferenceUID", "") or ""),
        "study_instance_uid": str(getattr(ds, "StudyInstanceUID", "")),
        "strength_reference": refs.pop() if len(refs) == 1 else None, "strengths_decayed_to": when,
        "needle_names": needle_names, "channel_numbers": channel_numbers, "sources": list(sources.values()),
        "unresolved_models": sorted({s["model"] for s in sources.values() if not s["resolved"]}),
        "notes": list(dict.fromkeys(notes)),
    }
    if info["technique"] != "PERMANENT":
        info["notes"].append(f"Brachy Treatment Technique is {info['technique'] or 'missing'}, not PERMANENT")
    return seeds, info


def rtdose_geometry(ds, path="RT Dose"):
    """ImageGeometry (RAS) and frame order of an RT Dose dataset's grid."""
    try:
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ps = [float(v) for v in ds.PixelSpacing]
        nk = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: RT Dose lacks image plane attributes ({exc})") from exc
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if nk > 1:
        off = np.array([float(v) for v in ds.GridFrameOffsetVector])
        if len(off) != nk:
            raise InputError(f"{path}: Grid Frame Offset Vector has {len(off)} values for {nk} frames")
        if off[0] != 0.0:  # absolute z positions (axial grids only): make them relative
            off = off - off[0]
        steps = np.diff(off)
        if not np.allclose(steps, steps[0], rtol=1e-4, atol=1e-4) or steps[0] == 0:
            raise InputError(f"{path}: RT Dose frames are not equally spaced; cannot form a regular grid")
        dk = float(steps[0])
    else:
        dk = float(getattr(ds, "SliceThickness", 0) or 1.0)
    kdir = normal if dk > 0 else -normal
    direction_lps = np.column_stack([row, col, kdir])
    g = ImageGeometry.from_lps((int(ds.Columns), int(ds.Rows), nk), (ps[1], ps[0], abs(dk)), ipp, direction_lps)
    return g


def read_rtdose(path):
    """Dose (Gy, float64 [k, j, i]), its ImageGeometry (RAS) and an info dict from an RT Dose file."""
    path, ds = _read(path, RTDOSE_STORAGE, "RT Dose")
    g = rtdose_geometry(ds, path)
    arr = ds.pixel_array.reshape(g.shape).astype(np.float64)
    scaling = float(getattr(ds, "DoseGridScaling", 1.0) or 1.0)
    info = {"units": str(getattr(ds, "DoseUnits", "")), "type": str(getattr(ds, "DoseType", "")),
            "summation": str(getattr(ds, "DoseSummationType", "")), "scaling": scaling,
            "referenced_plan_uid": (str(ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID)
                                    if "ReferencedRTPlanSequence" in ds and ds.ReferencedRTPlanSequence else None),
            "frame_of_reference_uid": str(getattr(ds, "FrameOfReferenceUID", ""))}
    return arr * scaling, g, info


def read_rtstruct(path, geometry: ImageGeometry | None = None):
    """ROIs of an RT Structure Set: ``{name: {"number", "color", "type", "contours" [(n, 3) RAS], "mask"}}``.

    With ``geometry`` each ROI's contours are also rasterised onto it (``mask``, even-odd per slice).
    """
    from .contours import contours_to_mask
    path, ds = _read(path, RTSTRUCT_STORAGE, "RT Structure Set")
    names = {int(r.ROINumber): str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", [])}
    types = {int(o.ReferencedROINumber): str(getattr(o, "RTROIInterpretedType", "") or "")
             for o in getattr(ds, "RTROIObservationsSequence", [])}
    out = {}
    for rc in getattr(ds, "ROIContourSequence", []):
        n = int(rc.ReferencedROINumber)
        contours = []
        for c in getattr(rc, "ContourSequence", []):
            pts = np.array([float(v) for v in c.ContourData]).reshape(-1, 3)
            contours.append(_lps_to_ras(pts))
        color = tuple(int(v) for v in getattr(rc, "ROIDisplayColor", [255, 0, 0]))
        entry = {"number": n, "color": color, "type": types.get(n, ""), "contours": contours}
        if geometry is not None:
            entry["mask"] = contours_to_mask(contours, geometry)
        out[names.get(n, f"ROI_{n}")] = entry
    return out
