"""DICOM RT export of a seed implant plan: CT series, RT Structure Set, RT Plan (brachy), RT Dose.

Entry point: :func:`export_plan_dicom`. Read-back: :func:`read_rtplan_seeds` (seeds with their
positions, axes, strengths and models, so another system -- or this one -- can recompute the
dose), :func:`read_rtdose` and :func:`read_rtstruct` (in :mod:`dicomrt_read`, re-exported here).

Coordinates: the library works in RAS mm; every DICOM coordinate is LPS mm (x and y negated).

Design choices (documented in docs/dicom.md):
- One study, one Frame of Reference. A CT given as NRRD/NIfTI/MHA (or an array) is written as a
  new CT series (``CT/`` sub-folder, one file per slice); a CT given as a DICOM series folder is
  not rewritten: its Study Instance UID, Frame of Reference UID, patient module and SOP Instance
  UIDs are reused and referenced.
- RT Plan: one Application Setup (SlicerRT reads only the first); **one channel per seed**
  (channels 1..N in seed order), Source Movement Type FIXED, two control points at the seed
  centre (Control Point 3D Position, LPS) with cumulative time weights 0 and 1, and Control Point
  Orientation = the seed's long axis in LPS. One Source item per (model, strength) pair carries
  isotope, half-life, Reference Air Kerma Rate (= S_K in U) at the Source Strength Reference
  Date/Time, active length and model. Channel Total Time is the nuclide's mean life in seconds
  (permanent implant: rate x mean life = total dose to full decay). The needle a seed came from
  is kept as Source Applicator ID.
- RT Dose: PHYSICAL dose in GY, summation PLAN, 32-bit unsigned pixels with the Dose Grid Scaling
  chosen from the maximum dose (quantisation error <= max / 2^33), multi-frame with Grid Frame
  Offset Vector along the slice normal (row x column); oblique grids are written as they are.
- RT Structure Set: closed planar contours on every CT slice (see :mod:`dicomrt_contours`).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import LPS_TO_RAS, ImageGeometry
from ..physics.seeds import SeedSet
from ..physics.sources import SeedModel, get_model

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
#: SOP Class UID conventionally put in RT Referenced Study Sequence items (Detached Study Management).
STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"
MANUFACTURER = "SeedImplantPlanner"
UINT32_MAX = 4294967295

#: RT ROI Interpreted Type by segment name (lower case, first match of a name prefix wins).
INTERPRETED_TYPES = (("ptv", "PTV"), ("ctv", "CTV"), ("gtv", "GTV"), ("body", "EXTERNAL"),
                     ("external", "EXTERNAL"), ("skin", "EXTERNAL"), ("outer contour", "EXTERNAL"))


@dataclass
class PatientInfo:
    """Patient and study identification written into every file (defaults: anonymous, synthetic)."""

    name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = "O"
    study_description: str = "SeedImplantPlanner seed implant plan"
    study_id: str = "SIP1"
    accession_number: str = ""
    referring_physician: str = ""

    def filled(self) -> "PatientInfo":
        """Copy with a synthetic patient id and name where they are empty."""
        pid = self.patient_id or "SIP-" + uuid.uuid4().hex[:10].upper()
        return PatientInfo(self.name or f"Anonymous^{pid}", pid, self.birth_date, self.sex,
                           self.study_description, self.study_id, self.accession_number, self.referring_physician)


# -- small helpers -----------------------------------------------------------------------------

def _ds(value) -> str:
    """Decimal String (at most 16 characters) closest to ``value``."""
    from pydicom.valuerep import format_number_as_ds
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"cannot write a non-finite number ({value!r}) to DICOM")
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return format_number_as_ds(v)


def _ds_list(values):
    return [_ds(v) for v in np.asarray(values, dtype=float).ravel()]


def ras_to_lps(points):
    """RAS mm (..., 3) to LPS mm (DICOM patient coordinates)."""
    return np.asarray(points, dtype=float) @ LPS_TO_RAS.T


def lps_to_ras(points):
    """LPS mm (..., 3) to RAS mm."""
    return np.asarray(points, dtype=float) @ LPS_TO_RAS.T


def _new_uid():
    from pydicom.uid import generate_uid
    return generate_uid()


def _seq_item(**attrs):
    from pydicom.dataset import Dataset
    item = Dataset()
    for k, v in attrs.items():
        setattr(item, k, v)
    return item


def _save(ds, path, implicit=False):
    """Write ``ds`` as a DICOM Part 10 file (Explicit VR Little Endian unless ``implicit``)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    try:
        ds.save_as(str(path), enforce_file_format=True)
    except TypeError:  # pydicom 2.x
        ds.is_little_endian = True
        ds.is_implicit_VR = implicit
        ds.save_as(str(path), write_like_original=False)
    return Path(path)


# -- study context -----------------------------------------------------------------------------

@dataclass
class _Study:
    study_uid: str
    for_uid: str
    date: str
    time: str
    patient_attrs: dict
    ct_geometry: ImageGeometry
    ct_series_uid: str
    ct_sop_class: str
    ct_sop_uids: list  # SOP Instance UID of CT slice k
    ct_written: bool
    ct_folder: Path | None = None


PATIENT_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                          "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription")


def _study_from_dicom_folder(folder: Path) -> tuple:
    """Geometry and identifiers of the image series (CT, MR...) in a DICOM folder.

    The first series that is not an RT object (RT Dose, Structure Set, Plan) is used, so a folder
    holding a CT next to earlier RT exports still resolves to the CT.
    """
    import SimpleITK as sitk
    import pydicom
    from ..core.imageio import geometry_of
    reader = sitk.ImageSeriesReader()
    files = None
    for sid in reader.GetGDCMSeriesIDs(str(folder)):
        names = reader.GetGDCMSeriesFileNames(str(folder), sid)
        try:
            head = pydicom.dcmread(names[0], stop_before_pixels=True)
        except Exception as exc:  # pydicom raises several types for unreadable files
            raise InputError(f"{names[0]}: unreadable DICOM file ({exc})") from exc
        if str(getattr(head, "Modality", "")).upper() not in ("RTDOSE", "RTSTRUCT", "RTPLAN", "RTIMAGE"):
            files = names
            break
    if not files:
        raise InputError(f"{folder}: folder holds no DICOM image series (CT, MR...)")
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()
        raise InputError(f"{folder}: unreadable image series ({first_line[-1] if first_line else 'SimpleITK error'})") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{folder}: expected a 3D scalar image series")
    geometry = geometry_of(image)
    uids = [None] * geometry.size[2]
    first = None
    for f in files:
        try:
            d = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises several types for unreadable files
            raise InputError(f"{f}: unreadable DICOM file ({exc})") from exc
        first = first or d
        ipp = getattr(d, "ImagePositionPatient", None)
        if ipp is None:
            raise InputError(f"{f}: CT slice has no Image Position (Patient)")
        k = geometry.ras_to_ijk(lps_to_ras(np.asarray([float(v) for v in ipp])))[2]
        kk = int(round(k))
        if abs(k - kk) > 0.05 or not 0 <= kk < len(uids):
            raise InputError(f"{f}: slice position does not fall on the series grid (k = {k:.3f})")
        uids[kk] = str(d.SOPInstanceUID)
    missing = [k for k, u in enumerate(uids) if u is None]
    if missing:
        raise InputError(f"{folder}: DICOM series has no file for slice(s) {missing[:5]}")
    for key in ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID", "SOPClassUID"):
        if not str(getattr(first, key, "") or ""):
            raise InputError(f"{folder}: CT series lacks {key}; cannot reference it from RT objects")
    attrs = {k: getattr(first, k) for k in PATIENT_STUDY_KEYWORDS if k in first}
    return geometry, first, uids, attrs


def _overlap(a_lo, a_hi, b_lo, b_hi, margin=0.0):
    return bool(np.all(a_hi + margin >= b_lo) and np.all(b_hi + margin >= a_lo))


def _grid_box(g: ImageGeometry):
    corners = np.array([[i, j, k] for i in (-0.5, g.size[0] - 0.5) for j in (-0.5, g.size[1] - 0.5)
                        for k in (-0.5, g.size[2] - 0.5)])
    ras = g.ijk_to_ras(corners)
    return ras.min(axis=0), ras.max(axis=0)


# -- common modules ----------------------------------------------------------------------------

def _set_image_plane(ds, g: ImageGeometry, ipp, row, col, bits, signed):
    """Image Plane and Image Pixel attributes of a grayscale slice or frame set on grid ``g`` (LPS)."""
    ds.ImagePositionPatient = _ds_list(ipp)
    ds.ImageOrientationPatient = _ds_list(np.concatenate([row, col]))
    ds.PixelSpacing = _ds_list([g.spacing[1], g.spacing[0]])
    ds.SliceThickness = _ds(g.spacing[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = g.size[1]
    ds.Columns = g.size[0]
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0


def _base(sop_class, modality, series_uid, series_number, series_description, study: _Study, now, for_uid=True):
    from pydicom.dataset import Dataset
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _new_uid()
    pa = study.patient_attrs
    ds.StudyDate = pa.get("StudyDate", study.date)
    ds.StudyTime = pa.get("StudyTime", study.time)
    ds.AccessionNumber = pa.get("AccessionNumber", "")
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.ReferringPhysicianName = pa.get("ReferringPhysicianName", "")
    if pa.get("StudyDescription"):
        ds.StudyDescription = pa["StudyDescription"]
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = MANUFACTURER
    ds.PatientName = pa.get("PatientName", "")
    ds.PatientID = pa.get("PatientID", "")
    ds.PatientBirthDate = pa.get("PatientBirthDate", "")
    ds.PatientSex = pa.get("PatientSex", "")
    ds.SoftwareVersions = _software_version()
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = pa.get("StudyID", "")
    ds.SeriesNumber = series_number
    if modality.startswith("RT"):
        ds.OperatorsName = ""
    if for_uid:
        ds.FrameOfReferenceUID = study.for_uid
        ds.PositionReferenceIndicator = ""
    return ds


def _software_version():
    try:
        from importlib.metadata import version
        return f"SeedImplantPlanner {version('seedimplantplanner')}"
    except Exception:  # not installed as a package (Slicer, source tree)
        return "SeedImplantPlanner"


# -- CT ----------------------------------------------------------------------------------------

def _ct_storage(array):
    """int16 stored values, rescale slope and intercept (DS strings) for a CT array."""
    a = np.asarray(array)
    if not np.all(np.isfinite(a)):
        raise InputError("CT image has NaN or infinite voxels")
    lo, hi = float(a.min()), float(a.max())
    integral = np.issubdtype(a.dtype, np.integer) or bool(np.all(a == np.round(a)))
    if integral and lo >= -32768 and hi <= 32767:
        return a.astype(np.int16), "1", "0"
    intercept = _ds(0.5 * (lo + hi))
    slope = _ds(max((hi - lo) / 65000.0, 1e-6))
    stored = np.rint((a - float(intercept)) / float(slope))
    return np.clip(stored, -32768, 32767).astype(np.int16), slope, intercept


def _write_ct(folder: Path, array, g: ImageGeometry, study: _Study, now, progress):
    origin_lps, dir_lps = g.to_lps()
    row, col = dir_lps[:, 0], dir_lps[:, 1]
    normal = np.cross(row, col)
    stored, slope, intercept = _ct_storage(array)
    paths = []
    folder.mkdir()
    nk = g.size[2]
    for k in range(nk):
        ds = _base(CT_STORAGE, "CT", study.ct_series_uid, 1, "CT for seed implant planning", study, now)
        ds.SOPInstanceUID = study.ct_sop_uids[k]
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.ContentDate = now.strftime("%Y%m%d")
        ds.ContentTime = now.strftime("%H%M%S")
        ds.PatientPosition = "HFS"
        ds.Laterality = ""
        ds.KVP = ""
        ds.AcquisitionNumber = ""
        ds.InstanceNumber = k + 1
        ds.PatientOrientation = ""
        ipp = ras_to_lps(g.ijk_to_ras([0.0, 0.0, float(k)]))
        _set_image_plane(ds, g, ipp, row, col, bits=16, signed=True)
        ds.SliceLocation = _ds(float(ipp @ normal))
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
        paths.append(_save(ds, folder / f"CT_{k + 1:04d}.dcm"))
        _progress.report(progress, (k + 1) / nk, f"DICOM: CT slice {k + 1} of {nk}")
    return paths


# -- RT Structure Set ----------------------------------------------------------------------------

def interpreted_type(name: str) -> str:
    """RT ROI Interpreted Type guessed from a structure name (PTV, CTV, GTV, EXTERNAL, else ORGAN)."""
    low = name.strip().lower()
    for prefix, kind in INTERPRETED_TYPES:
        if low.startswith(prefix):
            return kind
    return "ORGAN"


def _mask_on_ct(mask, src: ImageGeometry, ct: ImageGeometry):
    """Nearest-neighbour resampling of a mask [k, j, i] from ``src`` onto the CT grid."""
    if src.matches(ct):
        return np.asarray(mask, dtype=bool)
    out = np.zeros(ct.shape, dtype=bool)
    size = np.asarray(src.size)
    ii, jj = np.meshgrid(np.arange(ct.size[0], dtype=float), np.arange(ct.size[1], dtype=float))
    for k in range(ct.size[2]):
        ijk = np.stack([ii, jj, np.full_like(ii, k)], axis=-1)
        s = np.rint(src.ras_to_ijk(ct.ijk_to_ras(ijk))).astype(np.int64)
        inside = np.all((s >= 0) & (s < size), axis=-1)
        sel = s[inside]
        plane = np.zeros(ii.shape, dtype=bool)
        plane[inside] = mask[sel[:, 2], sel[:, 1], sel[:, 0]]
        out[k] = plane
    return out


def _write_rtstruct(path, segmentation, study: _Study, now, progress):
    from pydicom.sequence import Sequence
    from .contours import mask_to_contours
    g = study.ct_geometry
    ds = _base(RTSTRUCT_STORAGE, "RTSTRUCT", _new_uid(), 3, "Structures", study, now)
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "SeedPlan"
    ds.StructureSetName = "SeedImplantPlanner structures"
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    contour_images = Sequence([_seq_item(ReferencedSOPClassUID=study.ct_sop_class, ReferencedSOPInstanceUID=u)
                               for u in study.ct_sop_uids])
    series_item = _seq_item(SeriesInstanceUID=study.ct_series_uid, ContourImageSequence=contour_images)
    study_item = _seq_item(ReferencedSOPClassUID=STUDY_REFERENCE_CLASS, ReferencedSOPInstanceUID=study.study_uid,
                           RTReferencedSeriesSequence=Sequence([series_item]))
    ds.ReferencedFrameOfReferenceSequence = Sequence([_seq_item(FrameOfReferenceUID=study.for_uid,
                                                                RTReferencedStudySequence=Sequence([study_item]))])
    rois, contours_seq, observations = [], [], []
    roi_numbers = {}
    segs = list(segmentation.segments)
    for n, seg in enumerate(segs, start=1):
        sub = _progress.scaled(progress, (n - 1) / len(segs), n / len(segs))
        mask = _mask_on_ct(segmentation.layers[seg.layer] == seg.label_value, segmentation.geometry, g)
        contours = mask_to_contours(mask, g)
        rois.append(_seq_item(ROINumber=n, ReferencedFrameOfReferenceUID=study.for_uid, ROIName=seg.name[:64],
                              ROIGenerationAlgorithm=""))
        items = []
        for c, (k, pts) in enumerate(contours, start=1):
            items.append(_seq_item(
                ContourNumber=c,
                ContourImageSequence=Sequence([_seq_item(ReferencedSOPClassUID=study.ct_sop_class,
                                                         ReferencedSOPInstanceUID=study.ct_sop_uids[k])]),
                ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(pts),
                ContourData=[f"{v:.4f}" for v in ras_to_lps(pts).ravel()]))
        color = [int(round(255 * min(max(float(c), 0.0), 1.0))) for c in seg.color[:3]]
        roi_contour = _seq_item(ROIDisplayColor=color, ReferencedROINumber=n)
        if items:
            roi_contour.ContourSequence = Sequence(items)
        contours_seq.append(roi_contour)
        observations.append(_seq_item(ObservationNumber=n, ReferencedROINumber=n, ROIObservationLabel=seg.name[:16],
                                      RTROIInterpretedType=interpreted_type(seg.name), ROIInterpreter=""))
        roi_numbers[seg.name] = n
        _progress.report(sub, 1.0, f"DICOM: contours of {seg.name}")
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours_seq)
    ds.RTROIObservationsSequence = Sequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"
    _save(ds, path, implicit=True)  # Implicit VR: long Contour Data needs 32-bit value lengths
    return ds, roi_numbers


# -- RT Plan -----------------------------------------------------------------------------------

def _needle_paths(needles):
    """Polylines (M, 3) RAS and names of needles (Needle objects or their to_dict() form)."""
    out = []
    for n, nd in enumerate(needles or [], start=1):
        if isinstance(nd, dict):
            name = str(nd.get("name") or f"N{nd.get('number', n)}")
            pts = nd.get("control_points_ras_mm") or [nd.get("entry_ras_mm"), nd.get("tip_ras_mm")]
        else:
            name = str(getattr(nd, "name", "") or f"N{n}")
            if hasattr(nd, "sample_path"):
                pts = nd.sample_path(1.0)[0]
            else:
                pts = [nd.entry, nd.tip]
        try:
            pts = np.asarray(pts, dtype=float).reshape(-1, 3)
        except (TypeError, ValueError) as exc:
            raise InputError(f"needle {name}: entry/tip are not three RAS coordinates ({exc})") from exc
        if len(pts) < 2 or not np.all(np.isfinite(pts)):
            raise InputError(f"needle {name}: needs finite entry and tip coordinates")
        out.append((name, pts))
    return out


def plan_needle_names(plan):
    """Needle name of each seed of a :class:`planfile.Plan` ('' for loose seeds), for ``seed_needle_names``."""
    names = {int(n.number): str(n.name) for n in plan.needles}
    return [names.get(int(v), "") if int(v) > 0 else "" for v in plan.seed_needle]


def _distance_to_polyline(p, pts):
    a, b = pts[:-1], pts[1:]
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12), 0, 1)
    return float(np.min(np.linalg.norm(a + t[:, None] * ab - p, axis=1)))


def assign_seeds_to_needles(seeds: SeedSet, needles, tol_mm=2.0):
    """Name of the needle each seed lies on (nearest path within ``tol_mm``), '' for none."""
    paths = _needle_paths(needles)
    names = []
    for p in seeds.positions:
        best, best_d = "", tol_mm
        for name, pts in paths:
            d = _distance_to_polyline(p, pts)
            if d <= best_d:
                best, best_d = name, d
        names.append(best)
    return names


def _write_rtplan(path, seeds: SeedSet, models: dict, prescription_Gy, strength_ref: _dt.datetime, study: _Study,
                  now, rtstruct_ds, target_roi, needle_names, plan_label):
    from pydicom.sequence import Sequence
    ds = _base(RTPLAN_STORAGE, "RTPLAN", _new_uid(), 4, "Seed implant plan", study, now)
    ds.InstanceNumber = 1
    ds.RTPlanLabel = plan_label[:16]
    ds.RTPlanName = plan_label[:64]
    ds.RTPlanDescription = "Permanent seed implant (TG-43U1); one channel per seed"
    ds.RTPlanDate = now.strftime("%Y%m%d")
    ds.RTPlanTime = now.strftime("%H%M%S")
    if rtstruct_ds is not None:
        ds.RTPlanGeometry = "PATIENT"
        ds.ReferencedStructureSetSequence = Sequence([_seq_item(ReferencedSOPClassUID=RTSTRUCT_STORAGE,
                                                                ReferencedSOPInstanceUID=rtstruct_ds.SOPInstanceUID)])
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    # RT Prescription
    ds.PrescriptionDescription = f"{prescription_Gy:g} Gy total dose to full decay (minimum peripheral dose)"
    dref = _seq_item(DoseReferenceNumber=1, DoseReferenceUID=_new_uid(), DoseReferenceType="TARGET",
                     DoseReferenceDescription=f"Prescription {prescription_Gy:g} Gy"[:64],
                     TargetPrescriptionDose=_ds(prescription_Gy))
    if target_roi is not None:
        dref.DoseReferenceStructureType = "VOLUME"
        dref.ReferencedROINumber = target_roi
    else:
        dref.DoseReferenceStructureType = "SITE"
    ds.DoseReferenceSequence = Sequence([dref])
    # RT Fraction Scheme
    ds.FractionGroupSequence = Sequence([_seq_item(
        FractionGroupNumber=1, NumberOfFractionsPlanned=1, NumberOfBeams=0, NumberOfBrachyApplicationSetups=1,
        ReferencedBrachyApplicationSetupSequence=Sequence([_seq_item(ReferencedBrachyApplicationSetupNumber=1)]),
        ReferencedDoseReferenceSequence=Sequence([_seq_item(ReferencedDoseReferenceNumber=1)]))])
    # RT Brachy Application Setups
    ds.BrachyTreatmentTechnique = "PERMANENT"
    ds.BrachyTreatmentType = "LDR"
    ds.TreatmentMachineSequence = Sequence([_seq_item(TreatmentMachineName="MANUAL SEEDS",
                                                      Manufacturer=MANUFACTURER)])
    source_of = {}
    sources = []
    for i in range(len(seeds)):
        key = (seeds.models[i], float(seeds.strengths_U[i]))
        if key in source_of:
            continue
        m: SeedModel = models[key[0]]
        number = len(sources) + 1
        source_of[key] = number
        item = _seq_item(SourceNumber=number, SourceType="LINE", SourceManufacturer=m.manufacturer_model[:64] or m.model_id[:64],
                         SourceDescription=m.model_id[:64],
                         ActiveSourceLength=_ds(m.active_length_cm * 10.0),
                         SourceIsotopeName=m.nuclide, SourceIsotopeHalfLife=_ds(m.half_life_days),
                         SourceStrengthUnits="AIR_KERMA_RATE", ReferenceAirKermaRate=_ds(key[1]),
                         SourceStrength=_ds(key[1]),
                         SourceStrengthReferenceDate=strength_ref.strftime("%Y%m%d"),
                         SourceStrengthReferenceTime=strength_ref.strftime("%H%M%S"))
        if len(m.model_id) <= 16:
            item.SourceModelID = m.model_id
        sources.append(item)
    ds.SourceSequence = Sequence(sources)
    pos_lps = ras_to_lps(seeds.positions)
    axis_lps = ras_to_lps(seeds.axes)
    channels = []
    total_air_kerma = 0.0
    for i in range(len(seeds)):
        m = models[seeds.models[i]]
        tau_s = m.mean_life_h * 3600.0
        total_air_kerma += float(seeds.strengths_U[i]) * m.mean_life_h  # uGy at 1 m
        cps = Sequence([_seq_item(ControlPointIndex=c, ControlPointRelativePosition="0",
                                  ControlPoint3DPosition=_ds_list(pos_lps[i]), CumulativeTimeWeight=str(c),
                                  ControlPointOrientation=[float(v) for v in axis_lps[i]]) for c in (0, 1)])
        ch = _seq_item(ChannelNumber=i + 1, ChannelLength="", ChannelTotalTime=_ds(tau_s), SourceMovementType="FIXED",
                       TransferTubeNumber="", ReferencedSourceNumber=source_of[(seeds.models[i], float(seeds.strengths_U[i]))],
                       NumberOfControlPoints=2, FinalCumulativeTimeWeight="1", BrachyControlPointSequence=cps)
        if needle_names and needle_names[i]:
            ch.SourceApplicatorID = needle_names[i][:16]
        channels.append(ch)
    setup = _seq_item(ApplicationSetupType="OTHER", ApplicationSetupNumber=1,
                      ApplicationSetupName="Permanent seed implant", TotalReferenceAirKerma=_ds(total_air_kerma),
                      ChannelSequence=Sequence(channels))
    ds.ApplicationSetupSequence = Sequence([setup])
    ds.ApprovalStatus = "UNAPPROVED"
    _save(ds, path)
    return ds


# -- RT Dose -----------------------------------------------------------------------------------

def dose_grid_scaling(max_dose_Gy: float) -> str:
    """Dose Grid Scaling (DS string) so that ``max_dose_Gy`` fits 32-bit unsigned pixels."""
    if not max_dose_Gy > 0:
        return "1"
    s = max_dose_Gy / UINT32_MAX
    text = f"{s * (1 + 1e-7):.8e}"  # rounded up: max / scaling stays <= 2^32 - 1
    return _ds(float(text))


def dose_frame_layout(g: ImageGeometry):
    """(k order, image position LPS, row, column, frame offsets) of an RT Dose for grid ``g``.

    Frames follow the slice normal row x column; a grid whose k axis points the other way
    (left-handed) is written with its slices in reverse order.
    """
    origin_lps, dir_lps = g.to_lps()
    row, col, kdir = dir_lps[:, 0], dir_lps[:, 1], dir_lps[:, 2]
    normal = np.cross(row, col)
    order = np.arange(g.size[2])
    first = 0
    if float(kdir @ normal) < 0:
        order = order[::-1]
        first = g.size[2] - 1
    ipp = ras_to_lps(g.ijk_to_ras([0.0, 0.0, float(first)]))
    offsets = np.arange(g.size[2]) * g.spacing[2]
    return order, ipp, row, col, offsets


def _write_rtdose(path, dose_Gy, g: ImageGeometry, study: _Study, now, plan_ds, comment):
    from pydicom.sequence import Sequence
    from pydicom.tag import Tag
    ds = _base(RTDOSE_STORAGE, "RTDOSE", _new_uid(), 5, "Dose (TG-43U1, total to full decay)", study, now)
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    order, ipp, row, col, offsets = dose_frame_layout(g)
    _set_image_plane(ds, g, ipp, row, col, bits=32, signed=False)
    ds.NumberOfFrames = g.size[2]
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseComment = comment[:64]
    ds.DoseSummationType = "PLAN"
    ds.ReferencedRTPlanSequence = Sequence([_seq_item(ReferencedSOPClassUID=RTPLAN_STORAGE,
                                                      ReferencedSOPInstanceUID=plan_ds.SOPInstanceUID)])
    ds.GridFrameOffsetVector = _ds_list(offsets)
    scaling = dose_grid_scaling(float(dose_Gy.max()))
    ds.DoseGridScaling = scaling
    ds.TissueHeterogeneityCorrection = "WATER"
    pixels = np.clip(np.rint(np.asarray(dose_Gy, dtype=float)[order] / float(scaling)), 0, UINT32_MAX)
    ds.PixelData = np.ascontiguousarray(pixels.astype("<u4")).tobytes()
    _save(ds, path)
    return ds


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
    lo, hi = _grid_box(ct_geometry)
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
        if not _overlap(*_grid_box(dose_geometry), lo, hi):
            raise InputError("the dose grid does not overlap the CT: different frame of reference?")
    if segmentation is not None:
        if not segmentation.segments:
            raise InputError("segmentation has no segments")
        if not _overlap(*_grid_box(segmentation.geometry), lo, hi):
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
                      progress=None) -> dict:
    """Write a plan as DICOM RT into the new folder ``out_dir``; returns the written paths.

    ``ct``: path of a CT image (NRRD, NIfTI, MHA: written as a new CT series) or of a DICOM CT
    series folder (reused, not rewritten), or an array [k, j, i] with ``ct_geometry``.
    ``seeds``: SeedSet (RAS mm, strengths in U at ``strength_reference``, default now).
    ``segmentation``: segio.Segmentation or None (no RT Structure Set then). ``needles``: Needle
    objects or their ``to_dict()`` form, used to name each seed's needle (``seed_needle_names``
    gives them directly). ``dose_Gy`` on ``dose_geometry``: total dose to full decay (RT Dose),
    or None. ``patient``: PatientInfo (defaults: anonymous synthetic ids; a DICOM CT's own patient
    and study data always win). ``model_dirs``: extra seed model folders. ``overwrite`` replaces a
    non-empty ``out_dir``; ``progress(fraction, text)`` returning False cancels (nothing is written). Returns ``{"folder", "ct": [paths], "rtstruct", "rtplan",
    "rtdose"}`` (absent objects are None).
    """
    out_dir = Path(out_dir)
    now = _dt.datetime.now().replace(microsecond=0)
    strength_ref = now if strength_reference is None else _parse_dt(strength_reference)
    _progress.report(progress, 0.0, "DICOM: checking inputs")
    ct_path = None
    if isinstance(ct, (str, os.PathLike)):
        ct_path = Path(ct)
        if not ct_path.exists():
            raise InputError(f"{ct_path}: CT not found")
    if ct_path is not None and ct_path.is_dir():
        ct_geometry, first, uids, attrs = _study_from_dicom_folder(ct_path)
        ct_array = None
        study = _Study(str(first.StudyInstanceUID), str(first.FrameOfReferenceUID), now.strftime("%Y%m%d"),
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
        info = (patient or PatientInfo()).filled()
        attrs = {"PatientName": info.name, "PatientID": info.patient_id, "PatientBirthDate": info.birth_date,
                 "PatientSex": info.sex, "StudyID": info.study_id, "AccessionNumber": info.accession_number,
                 "ReferringPhysicianName": info.referring_physician, "StudyDescription": info.study_description}
        study = _Study(_new_uid(), _new_uid(), now.strftime("%Y%m%d"), now.strftime("%H%M%S"), attrs, ct_geometry,
                       _new_uid(), CT_STORAGE, [_new_uid() for _ in range(ct_geometry.size[2])], True)
    rx, models = _check_inputs(seeds, prescription_Gy, dose_Gy, dose_geometry, ct_geometry, segmentation, model,
                               model_dirs)
    if seed_needle_names is not None:
        needle_names = [str(n or "") for n in seed_needle_names]
        if len(needle_names) != len(seeds):
            raise InputError(f"{len(needle_names)} needle names for {len(seeds)} seeds")
    elif needles:
        needle_names = assign_seeds_to_needles(seeds, needles)
    else:
        needle_names = None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
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
            ct_paths = _write_ct(tmp / "CT", ct_array, ct_geometry, study, now, _progress.scaled(progress, 0.0, 0.4))
        rtstruct_ds, roi_numbers = None, {}
        if segmentation is not None:
            rtstruct_ds, roi_numbers = _write_rtstruct(tmp / "RTSTRUCT.dcm", segmentation, study, now,
                                                       _progress.scaled(progress, 0.4, 0.8))
        target = _target_roi(roi_numbers, target_name)
        _progress.report(progress, 0.85, "DICOM: RT Plan")
        plan_ds = _write_rtplan(tmp / "RTPLAN.dcm", seeds, models, rx, strength_ref, study, now, rtstruct_ds, target,
                                needle_names, plan_label)
        if dose_Gy is not None:
            _progress.report(progress, 0.9, "DICOM: RT Dose")
            comment = dose_comment or f"TG-43U1 total dose to full decay, {len(seeds)} seeds"
            _write_rtdose(tmp / "RTDOSE.dcm", np.maximum(np.asarray(dose_Gy, dtype=float), 0.0), dose_geometry,
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


def _parse_dt(value) -> _dt.datetime:
    from ..physics.strength import parse_datetime
    return parse_datetime(value).replace(microsecond=0)


from .rtimport import read_rtdose, read_rtplan_seeds, read_rtstruct  # noqa: E402  (re-export)

__all__ = ["PatientInfo", "export_plan_dicom", "plan_needle_names", "read_rtplan_seeds", "read_rtdose", "read_rtstruct",
           "assign_seeds_to_needles", "interpreted_type", "dose_grid_scaling"]
