"""DICOM image series in a folder: find them, pick one, put its slices in order and check the geometry.

A folder may hold several series (a CT and its RT objects, two CT series, a scout). The image
series are those whose files carry Image Position and Orientation (Patient) and are not RT objects;
one is chosen by its Series Instance UID: given as ``FOLDER::SERIES_UID`` (or ``series_uid=``),
or the only image series of the folder; otherwise the error lists every series. The slices are
sorted by their position along the slice normal (row x column of Image Orientation), whatever the
file names or Instance Numbers say, and refused with the reason when:

- they do not share one Image Orientation (Patient), or two lie at the same position;
- a slice is missing: a gap between two neighbours of a whole multiple of the slice spacing
  (the gap is named by its positions and files), or the spacing is uneven;
- the series was acquired with a gantry tilt: consecutive slice origins are shifted within the
  slice plane, so the voxels form a sheared grid that a regular image grid cannot hold. Such a
  series is refused, not resampled (resampling would invent voxels); reconstruct it without tilt
  on the scanner or resample it in a tool that says how.

Reading the pixels is left to SimpleITK (GDCM) with the files in that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

SERIES_SEPARATOR = "::"
RT_MODALITIES = ("RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE", "RTRECORD", "REG", "SEG", "PR", "SR", "KO")
#: positions agree within this (mm); spacing steps within this fraction of the spacing
POSITION_TOL_MM = 0.01
SPACING_RTOL = 1e-3


@dataclass
class Series:
    """One image series of a folder: its files (unordered) with their headers."""

    uid: str
    modality: str = ""
    description: str = ""
    number: str = ""
    files: list = field(default_factory=list)
    headers: list = field(default_factory=list)

    def label(self) -> str:
        """One line naming the series for an error message."""
        return (f"{self.uid} ({self.modality or '?'}, {len(self.files)} file(s)"
                + (f", series {self.number}" if self.number else "") + (f", '{self.description}'" if self.description else "")
                + ")")


def split_series_path(path):
    """``(folder, series_uid or None)`` of ``FOLDER`` or ``FOLDER::SERIES_UID``."""
    text = str(path)
    if SERIES_SEPARATOR in text:
        folder, uid = text.rsplit(SERIES_SEPARATOR, 1)
        if uid.strip():
            return Path(folder), uid.strip()
    return Path(text), None


def _is_dicom_file(f: Path) -> bool:
    try:
        with open(f, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _headerless_image(f: Path):
    """Header of ``f`` when it is a DICOM image data set without the Part 10 preamble, else None (not DICOM)."""
    import warnings
    import pydicom
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = pydicom.dcmread(str(f), stop_before_pixels=True, force=True)
            ok = bool(str(getattr(d, "SOPClassUID", "") or "")) and "ImagePositionPatient" in d
    except Exception:  # not DICOM at all: text, images of other formats
        return None
    return d if ok else None


def image_series(folder) -> dict:
    """``{Series Instance UID: Series}`` of the image series in ``folder`` (see :func:`_scan`)."""
    return _scan(folder)[0]


def _scan(folder):
    """``({Series Instance UID: Series}, enhanced multi-frame files)`` of ``folder``.

    RT objects and non-DICOM files are skipped; enhanced multi-frame images (positions per frame)
    are listed apart, not read. A file that starts like DICOM (Part 10 preamble) but cannot be read
    is an error naming it; a file without the preamble counts when it parses as an image data set
    with a SOP Class UID and an Image Position (Patient).
    """
    import pydicom
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    out, enhanced = {}, []
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        part10 = _is_dicom_file(f)
        d = None if part10 else _headerless_image(f)  # a data set without the Part 10 preamble (older exports)
        if not part10 and d is None:
            continue
        try:
            if part10:
                d = pydicom.dcmread(str(f), stop_before_pixels=True)
            modality = str(getattr(d, "Modality", "") or "").upper()
            has_geometry = "ImagePositionPatient" in d and "ImageOrientationPatient" in d
            uid = str(getattr(d, "SeriesInstanceUID", "") or "")
            sop = str(getattr(d, "SOPClassUID", "") or "")
        except Exception as exc:  # pydicom raises several types for damaged files
            raise InputError(f"{f}: corrupt DICOM file ({type(exc).__name__}: {exc})") from exc
        if not sop:
            raise InputError(f"{f}: corrupt DICOM file (no SOP Class UID could be read)")
        if modality in RT_MODALITIES or not has_geometry:
            if modality not in RT_MODALITIES and "PerFrameFunctionalGroupsSequence" in d:
                enhanced.append(f)
            continue
        if not uid:
            raise InputError(f"{f}: image file without a Series Instance UID")
        s = out.setdefault(uid, Series(uid, modality, str(getattr(d, "SeriesDescription", "") or ""),
                                       str(getattr(d, "SeriesNumber", "") or "")))
        s.files.append(f)
        s.headers.append(d)
    return out, enhanced


def select_series(folder, series_uid=None) -> Series:
    """The image series of ``folder`` with ``series_uid``, or its only one; errors list the series found."""
    folder = Path(folder)
    found, enhanced = _scan(folder)
    if series_uid is not None:
        if series_uid not in found:
            listed = "; ".join(s.label() for s in found.values()) or "none"
            raise InputError(f"{folder}: no image series with Series Instance UID {series_uid} (image series: {listed})")
        return found[series_uid]
    if not found:
        if enhanced:
            raise InputError(f"{folder}: {enhanced[0].name} is an enhanced multi-frame image (positions per frame), "
                             "which is not read; export the series as single-frame slices")
        raise InputError(f"{folder}: folder holds no DICOM image series (CT, MR...)")
    if len(found) > 1:
        listed = "; ".join(s.label() for s in found.values())
        raise InputError(f"{folder}: {len(found)} image series in one folder, pick one as "
                         f"FOLDER{SERIES_SEPARATOR}SERIES_UID: {listed}")
    return next(iter(found.values()))


def ordered_slices(series: Series, where=None):
    """``(files, headers, spacing_mm)`` of ``series`` sorted along the slice normal, after the checks above."""
    where = where or f"series {series.uid}"
    hs = series.headers
    iops = np.array([[float(v) for v in h.ImageOrientationPatient] for h in hs])
    if np.any(np.abs(iops - iops[0]) > 1e-4):
        k = int(np.flatnonzero(np.any(np.abs(iops - iops[0]) > 1e-4, axis=1))[0])
        raise InputError(f"{where}: slices with different Image Orientation (Patient) ({series.files[0].name}, "
                         f"{series.files[k].name}): not one volume")
    row, col = iops[0, :3], iops[0, 3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise InputError(f"{where}: Image Orientation (Patient) rows and columns are not orthonormal")
    ipp = np.array([[float(v) for v in h.ImagePositionPatient] for h in hs])
    along = ipp @ normal
    order = np.argsort(along, kind="stable")
    files = [series.files[i] for i in order]
    headers = [hs[i] for i in order]
    ipp, along = ipp[order], along[order]
    if len(files) < 2:
        raise InputError(f"{where}: only one slice; a 3D image needs at least two")
    steps = np.diff(along)
    dup = np.flatnonzero(steps < POSITION_TOL_MM)
    if len(dup):
        i = int(dup[0])
        raise InputError(f"{where}: two slices at the same position {along[i]:.2f} mm along the normal "
                         f"({files[i].name}, {files[i + 1].name}): duplicate or mixed acquisitions")
    spacing = float(np.min(steps))
    ratio = steps / spacing
    whole = np.rint(ratio)
    off = np.abs(ratio - whole) * spacing > max(POSITION_TOL_MM, SPACING_RTOL * spacing)
    if np.any(off):
        i = int(np.flatnonzero(off)[0])
        raise InputError(f"{where}: uneven slice spacing ({steps[i]:.3f} mm between {files[i].name} and "
                         f"{files[i + 1].name}, {spacing:.3f} mm elsewhere): not a regular grid")
    gaps = np.flatnonzero(whole > 1)
    if len(gaps):
        i = int(gaps[0])
        n = int(whole[i]) - 1
        raise InputError(f"{where}: {n} slice(s) missing between {along[i]:.2f} and {along[i + 1]:.2f} mm along the "
                         f"slice normal ({files[i].name} and {files[i + 1].name}: gap {steps[i]:.2f} mm, spacing "
                         f"{spacing:.2f} mm)" + (f"; {len(gaps)} gaps in all" if len(gaps) > 1 else ""))
    shift = np.diff(ipp, axis=0) - steps[:, None] * normal  # in-plane part of the slice-to-slice offset
    inplane = np.linalg.norm(shift, axis=1)
    if np.max(inplane) > POSITION_TOL_MM * max(1.0, spacing):
        tilt = float(np.degrees(np.arctan2(np.median(inplane), spacing)))
        raise InputError(f"{where}: gantry tilt of about {tilt:.1f} deg (slice origins shift {np.median(inplane):.2f} mm "
                         "within the slice plane per slice): refused, not resampled; reconstruct the series without "
                         "tilt (or resample it to an orthogonal grid) first")
    return files, headers, spacing


def read_dicom_series(path, series_uid=None):
    """SimpleITK image of a DICOM series folder (``FOLDER`` or ``FOLDER::SERIES_UID``), slices in order.

    Returns ``(image, series, files, headers)``: the checked series, its ordered files and their headers.
    """
    import SimpleITK as sitk
    folder, uid = split_series_path(path)
    series = select_series(folder, series_uid or uid)
    files, headers, _ = ordered_slices(series, f"{folder}: series {series.uid}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise InputError(f"{folder}: unreadable image series {series.uid} ({lines[-1] if lines else 'SimpleITK error'})") from exc
    return image, series, files, headers
