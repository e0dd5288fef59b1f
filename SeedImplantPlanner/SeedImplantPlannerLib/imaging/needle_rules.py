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
#: Two needles with tips closer than SAME_TIP_MM and axes within SAME_TIP_ANGLE_DEG are one needle
#: traced twice (converging needles whose tips touch differ by the angle they converge at).
SAME_TIP_MM = 1.0
SAME_TIP_ANGLE_DEG = 4.0
#: A traced line whose steel peak lies on its centre line over less than this fraction of its length,
#: and which runs beside other needles, is streaks and pieces of other needles.
COHERENT_MIN = 0.7


def _dense(points, step=0.5):
    """Points every ``step`` mm along a polyline (n, 3)."""
    p = np.asarray(points, float).reshape(-1, 3)
    if len(p) < 2:
        return p
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    q = np.arange(0.0, s[-1] + 1e-9, step)
    return np.stack([np.interp(q, s, p[:, k]) for k in range(3)], axis=1)


def drop_traced_twice(found, rejected, same_mm):
    """Drop centre lines that better needles already explain: taken in order of quality (the
    fraction of the trace on its own steel times its length), a needle is kept unless most of its
    centre line lies within ``same_mm`` of needles already kept: the same needle found twice, or a
    line that runs along one needle and then along another converging on it (two steel needles
    cannot lie closer than their diameter). Needles that only touch at the tip or cross at a small
    angle keep most of their length to themselves."""
    from scipy.spatial import cKDTree
    order = sorted(range(len(found)), key=lambda k: -found[k].coherent * found[k].visible_mm)
    kept, trees = [], []
    for k in order:
        n = found[k]
        pts = _dense(n.points)
        twin = next((m for m in kept if np.linalg.norm(m.tip - n.tip) <= SAME_TIP_MM
                     and float(m.direction @ n.direction) >= math.cos(math.radians(SAME_TIP_ANGLE_DEG))), None)
        if twin is not None:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"second line on a needle already found (tip within {SAME_TIP_MM:g} mm, axis "
                                       f"within {SAME_TIP_ANGLE_DEG:g} deg)"})
            continue
        if trees:
            dist = np.min([t.query(pts)[0] for t in trees], axis=0)
            cover = float(np.mean(dist <= same_mm))
            if cover >= 0.4:
                rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                                 "reason": f"second line on needles already found ({100 * cover:.0f} % of it within "
                                           f"{same_mm:g} mm of them)"})
                continue
        kept.append(n)
        trees.append(cKDTree(pts))
    # a line whose steel lies on its own centre line over less than half of its length, or over less
    # than COHERENT_MIN of it while running along other needles, follows streaks and other needles
    out = []
    for k, n in enumerate(kept):
        others = [t for q, t in enumerate(trees) if q != k]
        near = 0.0
        if others:
            dist = np.min([t.query(trees[k].data)[0] for t in others], axis=0)
            near = float(np.mean(dist <= 2.0 * same_mm))
        if n.coherent < 0.5 or (n.coherent < COHERENT_MIN and near >= 0.2):
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"steel on the line over {100 * n.coherent:.0f} % of it only ({100 * near:.0f} % "
                                       "of it beside other needles): streaks and other needles, not a needle"})
        elif n.bend_mm > BEND_TOLERANCE_MM + 0.5 and near >= 0.2:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"curved {n.bend_mm:.1f} mm off its chord while {100 * near:.0f} % of it runs "
                                       "beside other needles: a line from one needle onto another"})
        else:
            out.append(n)
    return out


def drop_duplicates(found, rejected, background, max_angle_deg=10.0, max_offset_mm=BEND_TOLERANCE_MM + 0.5):
    """Drop streaks that look like needles: a streak along a needle's axis beyond its tip (fainter,
    collinear, not overlapping the steel), and a fainter streak beside a needle, parallel to it.
    The longer, brighter, more confident needle is kept."""
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

