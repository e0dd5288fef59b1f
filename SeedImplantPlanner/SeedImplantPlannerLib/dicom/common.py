"""What every DICOM object of an export shares: SOP classes, UIDs, value formatting, the study context and the
Patient / General Study / General Series / Frame of Reference / SOP Common attributes.

Coordinates: the library works in RAS mm; every DICOM coordinate is LPS mm (x and y negated).
"""

from __future__ import annotations

import datetime as _dt
import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.geometry import LPS_TO_RAS, ImageGeometry

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
#: SOP Class UID conventionally put in RT Referenced Study Sequence items (Detached Study Management).
STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"
MANUFACTURER = "SeedImplantPlanner"


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

def ds_string(value) -> str:
    """Decimal String (at most 16 characters) closest to ``value``."""
    from pydicom.valuerep import format_number_as_ds
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"cannot write a non-finite number ({value!r}) to DICOM")
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return format_number_as_ds(v)


def ds_list(values):
    """Decimal Strings of a sequence of numbers (flattened)."""
    return [ds_string(v) for v in np.asarray(values, dtype=float).ravel()]


def ras_to_lps(points):
    """RAS mm (..., 3) to LPS mm (DICOM patient coordinates)."""
    return np.asarray(points, dtype=float) @ LPS_TO_RAS.T


def lps_to_ras(points):
    """LPS mm (..., 3) to RAS mm."""
    return np.asarray(points, dtype=float) @ LPS_TO_RAS.T


def new_uid():
    """A new UID (pydicom's root)."""
    from pydicom.uid import generate_uid
    return generate_uid()


def seq_item(**attrs):
    """A sequence item (Dataset) with the given keyword attributes."""
    from pydicom.dataset import Dataset
    item = Dataset()
    for k, v in attrs.items():
        setattr(item, k, v)
    return item


def save_dataset(ds, path, implicit=False):
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


def parse_datetime(value) -> _dt.datetime:
    """Date/time (ISO text, date or datetime) to whole seconds."""
    from ..physics.strength import parse_datetime as _parse
    return _parse(value).replace(microsecond=0)


# -- study context -----------------------------------------------------------------------------

@dataclass
class StudyContext:
    """Identifiers and CT geometry every object of one export shares."""

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


def boxes_overlap(a_lo, a_hi, b_lo, b_hi, margin=0.0):
    """True when the boxes [a_lo, a_hi] and [b_lo, b_hi] (RAS mm) overlap (within ``margin``)."""
    return bool(np.all(a_hi + margin >= b_lo) and np.all(b_hi + margin >= a_lo))


def grid_box(g: ImageGeometry):
    """RAS bounding box (lo, hi) of a grid's voxels (their outer faces)."""
    corners = np.array([[i, j, k] for i in (-0.5, g.size[0] - 0.5) for j in (-0.5, g.size[1] - 0.5)
                        for k in (-0.5, g.size[2] - 0.5)])
    ras = g.ijk_to_ras(corners)
    return ras.min(axis=0), ras.max(axis=0)


# -- common modules ----------------------------------------------------------------------------

def base_dataset(sop_class, modality, series_uid, series_number, series_description, study: StudyContext, now,
                 for_uid=True):
    """Dataset with the SOP Common, Patient, General Study, General Series (and Frame of Reference) modules."""
    from pydicom.dataset import Dataset
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = new_uid()
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
