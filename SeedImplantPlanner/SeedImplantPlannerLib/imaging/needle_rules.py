"""Rules that tell a needle from the other straight lines the line search finds.

- :func:`drop_duplicates`: a second line on a needle already found (pieces of a bent needle,
  leftovers of the line search), a fainter streak collinear with a needle beyond its tip, and a
  fainter streak beside an in-plane needle, parallel to it (rays along the needle are starved).
- :func:`drop_faint`: lines too faint for steel (metal streaks, bone edges), judged against the
  brightest needles of the same CT and against cortical bone's highest CT number.
"""

from __future__ import annotations

import math

import numpy as np

from .needle_measure import BEND_TOLERANCE_MM

#: A line is steel only if its steel level (median peak along it) reaches this fraction of the way
#: from the soft tissue to the brightest needles of the CT (the metal threshold's own fraction).
FAINT_FRACTION = 0.25
#: ... and a line that does not enter through the skin (its proximal end on the CT edge; bone edges
#: along the scan axis look like that) must reach this fraction of the CT's brightest metal, and
#: somewhere along it more than cortical bone ever shows (ICRU-44 cortical bone, 1.92 g/cm3: about
#: 1550 HU at 70 keV; 2000 HU leaves room for noise and beam hardening).
EDGE_FAINT_FRACTION = 0.5
BONE_MAX_HU = 2000.0
#: A fainter line within STREAK_ANGLE_DEG and STREAK_OFFSET_MM of a needle, alongside it, is the
#: streak that rays along the needle leave beside it, when its steel level is below STREAK_PEAK_RATIO of
#: the needle's (parallel needles closer than 6 mm are not planned; a real one would be as bright).
STREAK_ANGLE_DEG = 5.0
STREAK_OFFSET_MM = 6.0
STREAK_PEAK_RATIO = 0.7


def drop_duplicates(found, rejected, background, max_angle_deg=10.0, max_offset_mm=BEND_TOLERANCE_MM + 0.5):
    """Drop lines that are not needles of their own: a second line on a needle already found (the
    pieces of a bent needle, leftovers of the line search), and a streak along a needle's axis
    beyond its tip (fainter, collinear, not overlapping the steel), and a fainter streak beside a
    needle, parallel to it. The longer, brighter, more confident needle is kept."""
    order = sorted(range(len(found)), key=lambda k: -found[k].visible_mm * found[k].confidence
                   * max(found[k].peak_hu - background, 1.0))
    kept = []
    for k in order:
        n = found[k]
        reason = None
        probe = n.tip[None] - np.linspace(0.0, min(n.visible_mm, n.depth_mm), 9)[:, None] * n.direction
        for m in kept:
            cosang = abs(float(n.direction @ m.direction))
            if cosang < math.cos(math.radians(max_angle_deg)):
                continue
            if np.median(m.distance_to(probe)) <= max_offset_mm:
                reason = "second line on a needle already found"
                break
            # the infinite axis of m: a fainter collinear line entirely beyond m's tip is m's streak
            r = probe - m.tip
            along = r @ m.direction
            off = np.linalg.norm(r - along[:, None] * m.direction, axis=1)
            if (cosang > math.cos(math.radians(4.0)) and np.median(off) <= max_offset_mm and along.min() > -2.0
                    and not n.peak_hu > 0.8 * m.peak_hu):
                reason = "metal streak along a needle's axis beyond its tip"
                break
            # rays along an in-plane needle are starved: bright and dark streaks run beside it, parallel
            if (cosang > math.cos(math.radians(STREAK_ANGLE_DEG)) and np.median(off) <= STREAK_OFFSET_MM
                    and np.mean((along <= 1.0) & (along >= -m.depth_mm - 40.0)) > 0.5
                    and not n.peak_hu > STREAK_PEAK_RATIO * m.peak_hu):
                reason = "metal streak beside a needle, parallel to it (fainter)"
                break
        if reason:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": reason})
        else:
            kept.append(n)
    return kept


def drop_faint(found, rejected, background, metal_peak):
    """Drop lines too faint for steel: bright metal streaks and bone edges are straight and long too,
    but far fainter than steel seen along its own axis. A line brighter than cortical bone anywhere
    (``BONE_MAX_HU``) is steel and never dropped here (a needle lying between two slices reads
    low along most of its length, but not at its tip). The reference is the brightest needles of
    this CT (``FAINT_FRACTION`` of the way from the soft tissue to them); a line that does not enter
    through the skin (its proximal end on the CT edge: a bone edge along the scan axis looks like
    that) must reach ``EDGE_FAINT_FRACTION`` of the CT's brightest metal."""
    ref = float(np.percentile([n.peak_hu for n in found], 90)) if len(found) >= 2 else float(metal_peak)
    level = background + FAINT_FRACTION * (ref - background)
    edge_level = background + EDGE_FAINT_FRACTION * (max(ref, float(metal_peak)) - background)
    kept = []
    for n in found:
        both_edges = n.entry_on == "ct_edge"
        need = edge_level if both_edges else level
        if n.max_hu < BONE_MAX_HU and n.peak_hu < edge_level:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"no steel: brightest point {n.max_hu:.0f} HU (within cortical bone's range) "
                                       f"and steel level {n.peak_hu:.0f} HU (bone edge or streak)"})
        elif both_edges and n.max_hu < BONE_MAX_HU:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"no steel: brightest point {n.max_hu:.0f} HU, within cortical bone's range, "
                                       "and no skin entry (bone edge)"})
        elif n.peak_hu < need and n.max_hu < BONE_MAX_HU:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"too faint for steel (peak {n.peak_hu:.0f} HU, steel here reaches "
                                       f"{(max(ref, metal_peak) if both_edges else ref):.0f} HU): metal streak or bone edge"})
        else:
            kept.append(n)
    return kept

