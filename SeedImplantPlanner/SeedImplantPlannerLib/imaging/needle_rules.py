"""Rules that tell a needle from the other straight lines the line search finds.

- :func:`drop_traced_twice`: explaining away: the traced centre lines, best supported by the metal
  first, each keeping the steel it explains; a line whose steel the better lines already explain
  is a second trace of a needle or runs from one needle onto another; lines whose steel lies on
  them over less than half their length follow streaks.
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
STREAK_CLEAR_MM = 2.0
#: Two needles with tips closer than SAME_TIP_MM and axes within SAME_TIP_ANGLE_DEG are one needle
#: traced twice: the steel of two 1.0-1.3 mm needles cannot have centres closer than their diameter,
#: and needles whose tips touch converge at a larger angle.
SAME_TIP_MM = 1.0
SAME_TIP_ANGLE_DEG = 4.0
#: Explaining away (:func:`drop_traced_twice`): a centre line's support is the metal within SUPPORT_MM
#: of it, each voxel weighted by its excess and a Gaussian (SUPPORT_SIGMA_MM) of its distance; a kept
#: line explains the metal within EXPLAIN_MM of it; a line is kept while at least OWN_STEEL_MIN of
#: its support is unexplained. The Gaussian holds a 1.0-1.3 mm needle's blurred core on 0.5-1 mm
#: pixels; within 1.5 mm of a kept trace lies most of the core a second trace of the same needle
#: (0.3-1 mm off it) collects, while needles 2.5 mm apart (centre to centre) keep most of their own.
SUPPORT_MM = 1.2
SUPPORT_SIGMA_MM = 0.6
EXPLAIN_MM = 1.5
OWN_STEEL_MIN = 0.5
#: Lines closer than 2 x TRACE_NEAR_MM run "beside" each other (the streak rules below).
TRACE_NEAR_MM = 1.1
#: A traced line whose steel peak lies on its centre line over less than this fraction of its length
#: is streaks.
COHERENT_MIN = 0.5


def _dense(points, step=0.5):
    """Points every ``step`` mm along a polyline (n, 3)."""
    p = np.asarray(points, float).reshape(-1, 3)
    if len(p) < 2:
        return p
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    q = np.arange(0.0, s[-1] + 1e-9, step)
    return np.stack([np.interp(q, s, p[:, k]) for k in range(3)], axis=1)


def _slice_scaled(points, geometry):
    """Points with their slice-normal component divided by ``max(1, slice thickness / 2)``: on thick
    slices the steel's voxels sit at slice centres, up to half a slice from the needle's axis."""
    p = np.asarray(points, float).reshape(-1, 3)
    f = 1.0 / max(1.0, 0.5 * float(geometry.spacing[2]))
    if f == 1.0:
        return p
    k = geometry.direction_matrix[:, 2]
    return p + (f - 1.0) * (p @ k)[:, None] * k


def _explain_away(found, rejected, metal_pts, metal_w, geometry):
    """The first step of :func:`drop_traced_twice`: the lines kept (see there)."""
    from scipy.spatial import cKDTree
    vox = _slice_scaled(metal_pts, geometry)
    w = np.asarray(metal_w, float)
    lines = [_slice_scaled(_dense(n.points, 0.25), geometry) for n in found]
    near = cKDTree(np.vstack(lines)).query(vox, distance_upper_bound=EXPLAIN_MM + 0.5)[0] < np.inf
    vox, w = vox[near], w[near]
    dist = np.stack([cKDTree(p).query(vox, distance_upper_bound=EXPLAIN_MM + 0.5)[0] for p in lines])
    # each voxel's share: its excess, times a Gaussian of its distance from the line
    share = w[None] * np.exp(-0.5 * (np.minimum(dist, 10.0) / SUPPORT_SIGMA_MM) ** 2) * (dist <= SUPPORT_MM)
    support = share.sum(axis=1)
    kept, dropped = [], []
    for k in np.argsort(-support, kind="stable"):   # the best supported line first
        n = found[int(k)]
        if any(np.linalg.norm(found[m].tip - n.tip) <= SAME_TIP_MM and abs(float(found[m].direction @ n.direction))
               >= math.cos(math.radians(SAME_TIP_ANGLE_DEG)) for m in kept):
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"second line on a needle already found (tip within {SAME_TIP_MM:g} mm, axis "
                                       f"within {SAME_TIP_ANGLE_DEG:g} deg)"})
            continue
        free = _free(share, dist, k, kept) / max(support[k], 1e-9)
        if support[k] > 0.0 and free >= OWN_STEEL_MIN:
            kept.append(int(k))
        else:
            dropped.append(int(k))
    # one exchange pass: a dropped line whose steel a kept line mostly explained takes that line's place
    # when, with it, the kept line's own steel is explained in turn and the kept lines then explain
    # more of the metal (a line hinged from one needle onto a fainter converging one outranks the
    # fainter needle by support, yet explains less of the two needles' steel than the fainter one
    # does beside the first); the greedy order alone cannot see that
    for r in list(dropped):
        if not kept:
            break
        over = [float(share[r][dist[m] <= EXPLAIN_MM].sum()) for m in kept]
        m = kept[int(np.argmax(over))]
        others = [q for q in kept if q != m]
        if (_explained(share, kept, m, r) > _explained(share, kept)
                and _free(share, dist, r, others) >= OWN_STEEL_MIN * support[r]
                and _free(share, dist, m, others + [r]) < OWN_STEEL_MIN * support[m]):
            kept[kept.index(m)] = r
            dropped.remove(r)
            dropped.append(m)
            # a kept line that the incoming line, with the others, now explains goes too
            for q in [q for q in kept if q != r]:
                rest = [x for x in kept if x != q]
                if (_free(share, dist, q, rest) < OWN_STEEL_MIN * support[q]
                        <= _free(share, dist, q, [x for x in rest if x != r])):
                    kept.remove(q)
                    dropped.append(q)
    for k in dropped:
        n = found[k]
        free = _free(share, dist, k, [q for q in kept if q != k]) / max(support[k], 1e-9)
        rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                         "reason": f"second line on needles already found ({100 * (1 - free):.0f} % of its steel "
                                   "lies on them)"})
    return [found[k] for k in kept]


def _explained(share, kept, out=None, into=None):
    """The metal the lines ``kept`` explain (with line ``out`` replaced by line ``into``): each
    voxel's largest share (its excess times the Gaussian of its distance) over those lines."""
    lines = [into if q == out else q for q in kept] if out is not None else list(kept)
    return float(share[lines].max(axis=0).sum())


def _free(share, dist, k, others):
    """Support of line ``k`` (sum of its shares) on voxels farther than EXPLAIN_MM from every line in ``others``."""
    if not others:
        return float(share[k].sum())
    nearest = np.min(dist[others], axis=0)
    return float(share[k][nearest > EXPLAIN_MM].sum())


def drop_traced_twice(found, rejected, metal_pts, metal_w, geometry):
    """Keep the centre lines that explain steel no better line explains (explaining away).

    Each traced centre line is supported by the metal voxels within ``SUPPORT_MM`` of it (weighted
    by their excess over the soft tissue: the steel's core counts most, so the line through the
    middle of a needle beats a line 1 mm beside it or hinged across it). Taken in order of that
    support, a line is kept when at least ``OWN_STEEL_MIN`` of its support is not yet explained by
    the lines kept before it, each of which explains the voxels within ``EXPLAIN_MM`` of itself; a
    line whose tip lies within ``SAME_TIP_MM`` of a kept one's with axes within
    ``SAME_TIP_ANGLE_DEG`` is that needle again. Then one exchange pass: a dropped line takes the
    place of the kept line that explained most of it when, with it kept instead, that line's own
    steel is explained in turn, the dropped line keeps its share, and the kept lines then explain
    more of the metal (:func:`_explained`: each voxel's largest share over the kept lines): a line
    hinged from one needle onto a fainter converging needle can outrank the fainter needle by
    support, yet explains less of the steel once the first needle is kept. A kept line that the
    incoming line, with the others, now explains (not before) is dropped with it.
    Two steel needles cannot lie closer than their diameter: a second trace of one needle, a trace
    hinged between two converging needles, or a line along a streak band between them finds its
    voxels explained; a needle crossing or touching another keeps most of its voxels to itself.
    Distances on thick slices are measured with the slice normal scaled (:func:`_slice_scaled`)."""
    from scipy.spatial import cKDTree
    kept = list(found)
    if len(found) >= 2:
        kept = _explain_away(found, rejected, metal_pts, metal_w, geometry)
    trees = [cKDTree(_dense(n.points)) for n in kept]
    same_mm = TRACE_NEAR_MM
    # a line whose steel lies on its own centre line over less than half of its length follows streaks
    # (lines running along other needles have been explained away above)
    out = []
    for k, n in enumerate(kept):
        others = [t for q, t in enumerate(trees) if q != k]
        near = 0.0
        if others:
            dist = np.min([t.query(trees[k].data)[0] for t in others], axis=0)
            near = float(np.mean(dist <= 2.0 * same_mm))
        if n.coherent < COHERENT_MIN:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"steel on the line over {100 * n.coherent:.0f} % of it only: streaks, not a "
                                       "needle"})
        elif n.bend_mm > BEND_TOLERANCE_MM + 0.5 and near >= 0.2:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"curved {n.bend_mm:.1f} mm off its chord while {100 * near:.0f} % of it runs "
                                       "beside other needles: a line from one needle onto another"})
        else:
            out.append(n)
    return out


def _own_steel_tip(n, m):
    """True when ``n``'s tip segment (3-14 mm before its tip) is as bright as steel
    (``STREAK_PEAK_RATIO`` of needle ``m``'s steel level) and lies at least ``STREAK_CLEAR_MM`` from
    ``m``: a streak never reaches steel's CT number away from the steel that casts it, so such a line
    is a needle starved of photons along the rest of its length (an in-plane needle in a plane full
    of needles), not the streak beside ``m``."""
    if not n.tip_hu > STREAK_PEAK_RATIO * m.peak_hu:
        return False
    seg = n.tip[None] - np.linspace(3.0, 14.0, 12)[:, None] * n.direction
    r = seg - m.entry
    t = np.clip(r @ m.direction, 0.0, m.depth_mm)
    return bool(np.min(np.linalg.norm(r - t[:, None] * m.direction, axis=1)) >= STREAK_CLEAR_MM)


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
                    and not n.peak_hu > STREAK_PEAK_RATIO * m.peak_hu and not _own_steel_tip(n, m)):
                reason = "metal streak beside a needle, parallel to it (fainter)"
                break
        if reason:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": reason})
        else:
            kept.append(n)
    return kept


def _full_slice(n, background):
    """Copy of needle ``n`` whose levels are divided by its slice fill fraction (partial volume)."""
    from dataclasses import replace
    scale = lambda v: background + (v - background) / n.fill   # noqa: E731
    return replace(n, peak_hu=scale(n.peak_hu), max_hu=scale(n.max_hu), tip_hu=scale(n.tip_hu), fill=1.0)


def drop_faint(found, rejected, background, metal_peak):
    """Drop lines too faint for steel: bright metal streaks and bone edges are straight and long too,
    but far fainter than steel seen along its own axis. A line brighter than cortical bone anywhere
    (``BONE_MAX_HU``) is steel and never dropped here (a needle lying between two slices reads
    low along most of its length, but not at its tip). The reference is the brightest needles of
    this CT (``FAINT_FRACTION`` of the way from the soft tissue to them); a line that does not enter
    through the skin (its proximal end on the CT edge: a bone edge along the scan axis looks like
    that) must reach ``EDGE_FAINT_FRACTION`` of the CT's brightest metal."""
    ref = (float(np.percentile([_full_slice(n, background).peak_hu if n.fill < 1.0 else n.peak_hu for n in found], 90))
           if len(found) >= 2 else float(metal_peak))
    level = background + FAINT_FRACTION * (ref - background)
    edge_level = background + EDGE_FAINT_FRACTION * (max(ref, float(metal_peak)) - background)
    kept = []
    for orig in found:
        # a thin line in thick slices: judged by the steel it would show filling the slice
        n = _full_slice(orig, background) if orig.fill < 1.0 else orig
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
            kept.append(orig)
    return kept

