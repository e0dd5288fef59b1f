"""Read DICOM RT objects back: dose from an RT Dose, masks from an RT Structure Set (seeds from RT Plans: rtplan_read).

Everything comes back in the library's conventions: RAS mm, arrays [k, j, i], strengths in U.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry, LPS_TO_RAS
from .common import RTDOSE_STORAGE, RTSTRUCT_STORAGE


def read_dataset(path, sop_class, what):
    """(path, dataset) of a DICOM file that must be of ``sop_class`` (``what`` names it in errors)."""
    import pydicom
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        ds = pydicom.dcmread(str(path))
        sop = str(getattr(ds, "SOPClassUID", "") or "")
        modality = str(getattr(ds, "Modality", "") or "")
    except Exception as exc:  # pydicom raises InvalidDicomError, OSError, ValueError, struct errors...
        raise InputError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    if not sop:
        raise InputError(f"{path}: not a readable DICOM file (no SOP Class UID could be read: damaged, or not a "
                         "DICOM object)")
    if sop != sop_class:
        kind = pydicom.uid.UID(sop).name
        raise InputError(f"{path}: expected an {what}, but the file is {kind} (Modality {modality or 'missing'}, "
                         f"SOP Class UID {sop or 'missing'})")
    return path, ds


def lps_to_ras_vec(v):
    """LPS (..., 3) to RAS."""
    return np.asarray(v, dtype=float) @ LPS_TO_RAS.T


def dicom_datetime(date, time):
    """datetime of a DICOM DA and TM pair, None without a valid date."""
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


def float_or_none(item, keyword):
    """Float value of ``item.keyword``, None when absent, empty or not a number."""
    value = getattr(item, keyword, None)
    if value in (None, ""):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


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
    path, ds = read_dataset(path, RTDOSE_STORAGE, "RT Dose")
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
    path, ds = read_dataset(path, RTSTRUCT_STORAGE, "RT Structure Set")
    names = {int(r.ROINumber): str(r.ROIName) for r in getattr(ds, "StructureSetROISequence", [])}
    types = {int(o.ReferencedROINumber): str(getattr(o, "RTROIInterpretedType", "") or "")
             for o in getattr(ds, "RTROIObservationsSequence", [])}
    out = {}
    for rc in getattr(ds, "ROIContourSequence", []):
        n = int(rc.ReferencedROINumber)
        contours = []
        for c in getattr(rc, "ContourSequence", []):
            pts = np.array([float(v) for v in c.ContourData]).reshape(-1, 3)
            contours.append(lps_to_ras_vec(pts))
        color = tuple(int(v) for v in getattr(rc, "ROIDisplayColor", [255, 0, 0]))
        entry = {"number": n, "color": color, "type": types.get(n, ""), "contours": contours}
        name = names.get(n, f"ROI_{n}")
        if geometry is not None:
            try:
                entry["mask"] = contours_to_mask(contours, geometry)
            except InputError as exc:
                raise InputError(f"{path}: ROI '{name}': {exc}") from None
        out[name] = entry
    return out
