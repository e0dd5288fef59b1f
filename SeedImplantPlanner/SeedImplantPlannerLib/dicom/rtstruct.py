"""RT Structure Set writer: one ROI per segment, closed planar contours on every CT slice (see :mod:`contours`)."""

from __future__ import annotations

import numpy as np

from ..core import progress as _progress
from ..core.geometry import ImageGeometry
from .common import (RTSTRUCT_STORAGE, STUDY_REFERENCE_CLASS, StudyContext, base_dataset, new_uid, ras_to_lps,
                     save_dataset, seq_item)

#: RT ROI Interpreted Type by segment name (lower case, first match of a name prefix wins).
INTERPRETED_TYPES = (("ptv", "PTV"), ("ctv", "CTV"), ("gtv", "GTV"), ("body", "EXTERNAL"),
                     ("external", "EXTERNAL"), ("skin", "EXTERNAL"), ("outer contour", "EXTERNAL"))


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


def write_rtstruct(path, segmentation, study: StudyContext, now, progress):
    """Write the RT Structure Set of ``segmentation`` on the study's CT; returns (dataset, {name: ROI number})."""
    from pydicom.sequence import Sequence
    from .contours import mask_to_contours
    g = study.ct_geometry
    ds = base_dataset(RTSTRUCT_STORAGE, "RTSTRUCT", new_uid(), 3, "Structures", study, now)
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "SeedPlan"
    ds.StructureSetName = "SeedImplantPlanner structures"
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    contour_images = Sequence([seq_item(ReferencedSOPClassUID=study.ct_sop_class, ReferencedSOPInstanceUID=u)
                               for u in study.ct_sop_uids])
    series_item = seq_item(SeriesInstanceUID=study.ct_series_uid, ContourImageSequence=contour_images)
    study_item = seq_item(ReferencedSOPClassUID=STUDY_REFERENCE_CLASS, ReferencedSOPInstanceUID=study.study_uid,
                          RTReferencedSeriesSequence=Sequence([series_item]))
    ds.ReferencedFrameOfReferenceSequence = Sequence([seq_item(FrameOfReferenceUID=study.for_uid,
                                                               RTReferencedStudySequence=Sequence([study_item]))])
    rois, contours_seq, observations = [], [], []
    roi_numbers = {}
    segs = list(segmentation.segments)
    for n, seg in enumerate(segs, start=1):
        sub = _progress.scaled(progress, (n - 1) / len(segs), n / len(segs))
        mask = _mask_on_ct(segmentation.layers[seg.layer] == seg.label_value, segmentation.geometry, g)
        contours = mask_to_contours(mask, g)
        rois.append(seq_item(ROINumber=n, ReferencedFrameOfReferenceUID=study.for_uid, ROIName=seg.name[:64],
                             ROIGenerationAlgorithm=""))
        items = []
        for c, (k, pts) in enumerate(contours, start=1):
            items.append(seq_item(
                ContourNumber=c,
                ContourImageSequence=Sequence([seq_item(ReferencedSOPClassUID=study.ct_sop_class,
                                                        ReferencedSOPInstanceUID=study.ct_sop_uids[k])]),
                ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(pts),
                ContourData=[f"{v:.4f}" for v in ras_to_lps(pts).ravel()]))
        color = [int(round(255 * min(max(float(c), 0.0), 1.0))) for c in seg.color[:3]]
        roi_contour = seq_item(ROIDisplayColor=color, ReferencedROINumber=n)
        if items:
            roi_contour.ContourSequence = Sequence(items)
        contours_seq.append(roi_contour)
        observations.append(seq_item(ObservationNumber=n, ReferencedROINumber=n, ROIObservationLabel=seg.name[:16],
                                     RTROIInterpretedType=interpreted_type(seg.name), ROIInterpreter=""))
        roi_numbers[seg.name] = n
        _progress.report(sub, 1.0, f"DICOM: contours of {seg.name}")
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours_seq)
    ds.RTROIObservationsSequence = Sequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"
    save_dataset(ds, path, implicit=True)  # Implicit VR: long Contour Data needs 32-bit value lengths
    return ds, roi_numbers
