"""Image series: the CT series written for an image-file CT, the shared image-plane writer (CT and RT Dose),
and the study context of an existing DICOM CT series folder (reused, never rewritten)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from .common import (CT_STORAGE, PATIENT_STUDY_KEYWORDS, StudyContext, base_dataset, ds_list, ds_string, lps_to_ras,
                     ras_to_lps, save_dataset)


def study_from_dicom_folder(folder) -> tuple:
    """Geometry and identifiers of the image series (CT, MR...) in a DICOM folder (``FOLDER::SERIES_UID`` picks one).

    The series is chosen and checked by :mod:`core.dicomseries` (RT objects next to the CT are
    skipped; several image series need the UID; out-of-order slices are sorted, missing slices and
    gantry tilt refused). Returns ``(geometry, first header, SOP Instance UID of slice k, patient
    and study attributes)``.
    """
    from ..core.dicomseries import read_dicom_series
    from ..core.imageio import geometry_of
    image, series, files, headers = read_dicom_series(folder)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{folder}: expected a 3D scalar image series")
    geometry = geometry_of(image)
    first = headers[0]
    for f, d in zip(files, headers):  # the grid SimpleITK built must put slice k at file k's position
        k = geometry.ras_to_ijk(lps_to_ras(np.asarray([float(v) for v in d.ImagePositionPatient])))[2]
        if abs(k - round(k)) > 0.05:
            raise InputError(f"{f}: slice position does not fall on the series grid (k = {k:.3f})")
    uids = [str(d.SOPInstanceUID) for d in headers]
    for key in ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID", "SOPClassUID"):
        if not str(getattr(first, key, "") or ""):
            raise InputError(f"{folder}: CT series lacks {key}; cannot reference it from RT objects")
    attrs = {k: getattr(first, k) for k in PATIENT_STUDY_KEYWORDS if k in first}
    return geometry, first, uids, attrs


def axis_aligned(array, g: ImageGeometry, tol=1e-6):
    """``(array, grid)`` with the voxels reordered so that i runs along +x (L), j along +y (P), k along +z (S).

    For a grid whose axes lie along the patient axes (in any order and sense), the same voxels
    are returned on a grid whose LPS direction is the identity, so a writer gives Image
    Orientation (Patient) 1\\0\\0\\0\\1\\0 with slices along +z, the orientation viewers and tools
    expect for an axial head-first-supine series (a grid from an RAS image file runs along -x, -y).
    Voxel centres and values are unchanged. Oblique grids are returned as they are.
    """
    _, dir_lps = g.to_lps()
    axis_of = np.argmax(np.abs(dir_lps), axis=0)  # LPS axis of grid axes i, j, k
    if sorted(axis_of.tolist()) != [0, 1, 2] or np.any(np.abs(np.abs(dir_lps[axis_of, [0, 1, 2]]) - 1.0) > tol):
        return array, g
    sign = np.sign(dir_lps[axis_of, [0, 1, 2]])
    grid_axis = [int(np.flatnonzero(axis_of == a)[0]) for a in range(3)]  # grid axis along LPS x, y, z
    if grid_axis == [0, 1, 2] and np.all(sign > 0):
        return array, g
    first = [0.0 if sign[c] > 0 else g.size[c] - 1.0 for c in range(3)]  # old index of the new first voxel
    origin_lps = ras_to_lps(g.ijk_to_ras(first))
    size = [g.size[c] for c in grid_axis]
    spacing = [g.spacing[c] for c in grid_axis]
    new_g = ImageGeometry.from_lps(size, spacing, origin_lps, np.eye(3))
    if array is None:
        return None, new_g
    a = np.asarray(array)
    # array axes are [k, j, i] = grid axes 2, 1, 0; the new array is [z, y, x]
    a = a.transpose([2 - grid_axis[2], 2 - grid_axis[1], 2 - grid_axis[0]])
    flips = tuple(ax for ax, c in zip((0, 1, 2), (grid_axis[2], grid_axis[1], grid_axis[0])) if sign[c] < 0)
    if flips:
        a = np.flip(a, axis=flips)
    return np.ascontiguousarray(a), new_g


def set_image_plane(ds, g: ImageGeometry, ipp, row, col, bits, signed):
    """Image Plane and Image Pixel attributes of a grayscale slice or frame set on grid ``g`` (LPS)."""
    ds.ImagePositionPatient = ds_list(ipp)
    ds.ImageOrientationPatient = ds_list(np.concatenate([row, col]))
    ds.PixelSpacing = ds_list([g.spacing[1], g.spacing[0]])
    ds.SliceThickness = ds_string(g.spacing[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = g.size[1]
    ds.Columns = g.size[0]
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0


def _ct_storage(array):
    """int16 stored values, rescale slope and intercept (DS strings) for a CT array."""
    a = np.asarray(array)
    if not np.all(np.isfinite(a)):
        raise InputError("CT image has NaN or infinite voxels")
    lo, hi = float(a.min()), float(a.max())
    integral = np.issubdtype(a.dtype, np.integer) or bool(np.all(a == np.round(a)))
    if integral and lo >= -32768 and hi <= 32767:
        return a.astype(np.int16), "1", "0"
    intercept = ds_string(0.5 * (lo + hi))
    slope = ds_string(max((hi - lo) / 65000.0, 1e-6))
    stored = np.rint((a - float(intercept)) / float(slope))
    return np.clip(stored, -32768, 32767).astype(np.int16), slope, intercept


#: Image Laterality (0020,0062) enumerated values: right, left, unpaired body part, both sides of a paired one.
LATERALITIES = ("R", "L", "U", "B")


def write_ct_series(folder: Path, array, g: ImageGeometry, study: StudyContext, now, progress, laterality="U"):
    """Write ``array`` [k, j, i] on ``g`` as a CT Image Storage series, one file per slice, into ``folder``.

    ``laterality``: Image Laterality of the slices (:data:`LATERALITIES`; U for the unpaired body
    parts of seed implants: prostate, pelvis, abdomen, chest).
    """
    if laterality not in LATERALITIES:
        raise InputError(f"laterality {laterality!r}: use one of {', '.join(LATERALITIES)}")
    origin_lps, dir_lps = g.to_lps()
    row, col = dir_lps[:, 0], dir_lps[:, 1]
    normal = np.cross(row, col)
    stored, slope, intercept = _ct_storage(array)
    paths = []
    folder.mkdir()
    nk = g.size[2]
    for k in range(nk):
        ds = base_dataset(CT_STORAGE, "CT", study.ct_series_uid, 1, "CT for seed implant planning", study, now)
        ds.SOPInstanceUID = study.ct_sop_uids[k]
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.ContentDate = now.strftime("%Y%m%d")
        ds.ContentTime = now.strftime("%H%M%S")
        ds.PatientPosition = "HFS"  # an image file carries no patient position
        # Image Laterality (General Image, Type 3) instead of the series' Laterality (0020,0060), which is
        # Type 2C: required for a paired body part only when Image Laterality is not sent
        ds.ImageLaterality = laterality
        ds.KVP = ""
        ds.AcquisitionNumber = ""
        ds.InstanceNumber = k + 1
        ds.PatientOrientation = ""
        ipp = ras_to_lps(g.ijk_to_ras([0.0, 0.0, float(k)]))
        set_image_plane(ds, g, ipp, row, col, bits=16, signed=True)
        ds.SliceLocation = ds_string(float(ipp @ normal))
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
        paths.append(save_dataset(ds, folder / f"CT_{k + 1:04d}.dcm"))
        _progress.report(progress, (k + 1) / nk, f"DICOM: CT slice {k + 1} of {nk}")
    return paths
