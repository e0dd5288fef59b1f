"""RT Dose writer: PHYSICAL dose in GY, summation PLAN, 32-bit unsigned pixels with the Dose Grid Scaling
chosen from the maximum dose (quantisation error <= max / 2^33), multi-frame with Grid Frame Offset Vector
along the slice normal (row x column); oblique grids are written as they are."""

from __future__ import annotations

import numpy as np

from ..core.geometry import ImageGeometry
from .common import (RTDOSE_STORAGE, RTPLAN_STORAGE, StudyContext, base_dataset, ds_list, ds_string, new_uid,
                     ras_to_lps, save_dataset, seq_item)
from .image_series import set_image_plane

UINT32_MAX = 4294967295


def dose_grid_scaling(max_dose_Gy: float) -> str:
    """Dose Grid Scaling (DS string) so that ``max_dose_Gy`` fits 32-bit unsigned pixels."""
    if not max_dose_Gy > 0:
        return "1"
    s = max_dose_Gy / UINT32_MAX
    text = f"{s * (1 + 1e-7):.8e}"  # rounded up: max / scaling stays <= 2^32 - 1
    return ds_string(float(text))


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


def write_rtdose(path, dose_Gy, g: ImageGeometry, study: StudyContext, now, plan_ds, comment):
    """Write ``dose_Gy`` [k, j, i] on ``g`` as an RT Dose referencing the RT Plan ``plan_ds``; returns the dataset."""
    from pydicom.sequence import Sequence
    from pydicom.tag import Tag
    ds = base_dataset(RTDOSE_STORAGE, "RTDOSE", new_uid(), 5, "Dose (TG-43U1, total to full decay)", study, now)
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    order, ipp, row, col, offsets = dose_frame_layout(g)
    set_image_plane(ds, g, ipp, row, col, bits=32, signed=False)
    ds.NumberOfFrames = g.size[2]
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseComment = comment[:64]
    ds.DoseSummationType = "PLAN"
    ds.ReferencedRTPlanSequence = Sequence([seq_item(ReferencedSOPClassUID=RTPLAN_STORAGE,
                                                     ReferencedSOPInstanceUID=plan_ds.SOPInstanceUID)])
    ds.GridFrameOffsetVector = ds_list(offsets)
    scaling = dose_grid_scaling(float(dose_Gy.max()))
    ds.DoseGridScaling = scaling
    ds.TissueHeterogeneityCorrection = "WATER"
    pixels = np.clip(np.rint(np.asarray(dose_Gy, dtype=float)[order] / float(scaling)), 0, UINT32_MAX)
    ds.PixelData = np.ascontiguousarray(pixels.astype("<u4")).tobytes()
    save_dataset(ds, path)
    return ds
