"""Needles in place for the seed finder: their steel taken out of the CT, what is left beside them.

Helpers of :func:`imaging.seedfinder.find_seeds` on intra-operative CTs (needles given, or found
by :func:`imaging.needlefinder.find_needles`). Positions RAS mm, arrays ``[k, j, i]``.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.geometry import ImageGeometry
from .seed_pose import weighted_pose

#: Objects longer than two capsules, parallel to a needle in place (20 deg) and within this distance
#: (mm) of its axis, are the streaks rays along the needle leave beside it (tracks are ~10 mm apart).
STREAK_BESIDE_NEEDLE_MM = 6.0
#: Objects whose centre lies within this distance (mm) of a needle's surface are "beside a needle":
#: they never size a seed, and count as a seed only with NEAR_NEEDLE_MIN_FRACTION of a seed's metal
#: (a seed touching a needle keeps most of its metal; steel and streak left over keep little).
NEAR_NEEDLE_MM = 2.0
NEAR_NEEDLE_MIN_FRACTION = 0.7
#: Steel may run this far (mm) beyond a needle's found tip (a tip found short): a seed there is less sure.
NEEDLE_EXTENSION_MM = 20.0


def needle_radius(nd):
    """Outer radius (mm) of a found needle (0.65 mm, an 18 G needle, when it carries none)."""
    return float(getattr(nd, "radius_mm", 0.65))


def steel_distance(nd, points):
    """Distance (mm) of points (n, 3) from a needle's steel: the nearer of its straight line (entry
    to tip) and, for a found needle, the centre line it was measured along (``points``: a bent
    needle leaves its straight line by up to about 2 mm)."""
    p = np.asarray(points, float).reshape(-1, 3)
    best = np.asarray(nd.distance_to(p), float)
    line = np.asarray(getattr(nd, "points", np.zeros((0, 3))), float).reshape(-1, 3)
    for a, b in zip(line[:-1], line[1:]):
        ab = b - a
        t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(p - (a + t[:, None] * ab), axis=1))
    return best


def surface_distance(point, needles):
    """Distance (mm) from a point to the nearest needle's surface (``inf`` without needles)."""
    p = np.asarray(point, float)[None]
    return min((float(steel_distance(nd, p)[0]) - needle_radius(nd) for nd in needles), default=np.inf)


def needle_line_distance(points, needles, extension_mm=NEEDLE_EXTENSION_MM):
    """Distance (mm) of points (n, 3) to the nearest needle's surface, along its steel from the
    entry to ``extension_mm`` beyond its found tip (a tip found short leaves steel there); ``inf``
    without needles."""
    p = np.asarray(points, float).reshape(-1, 3)
    best = np.full(len(p), np.inf)
    for nd in needles:
        d = np.asarray(nd.direction, float)
        a = np.asarray(nd.tip, float) - float(nd.depth_mm) * d
        length = float(nd.depth_mm) + extension_mm
        t = np.clip((p - a) @ d, 0.0, length)
        best = np.minimum(best, np.linalg.norm(p - (a + t[:, None] * d), axis=1) - needle_radius(nd))
    return best


def reject_needle_residue(comps, needles, geometry: ImageGeometry, offset_kji, box_cov, seed_length_mm):
    """Mark components that are a needle's steel or its streaks with a ``reject`` reason.

    On a needle's axis (its steel, or a seed still inside the needle: not implanted); elongated
    along a needle within 2.5 mm (residue of its steel or streak); longer than two capsules,
    parallel to a needle and within ``STREAK_BESIDE_NEEDLE_MM`` (streak beside it).
    """
    for c in comps:
        if "reject" in c:
            continue
        pts = geometry.ijk_to_ras((c["kji"] + offset_kji)[:, ::-1].astype(float))
        cen, ax, ev = weighted_pose(pts, c["w"] + 1e-6, box_cov)
        length = math.sqrt(12.0 * max(ev[0], 0.0))
        for nd in needles:
            dist = float(steel_distance(nd, cen[None])[0])
            along = abs(float(ax @ nd.direction)) >= math.cos(math.radians(20.0))
            if dist <= needle_radius(nd) + 0.3:
                c["reject"] = ("on the axis of a needle in place: its steel, or a seed still inside the "
                               "needle (not implanted)")
                break
            if dist <= 2.5 and along and length > 1.5 * seed_length_mm:
                c["reject"] = "residue of a needle's steel or streak along it (not a seed)"
                break
            if dist <= STREAK_BESIDE_NEEDLE_MM and along and length > 2.0 * seed_length_mm:
                c["reject"] = ("streak beside a needle in place, parallel to it (rays along the needle "
                               "starve); not seeds")
                break


def subtract_needles(ctc, needles, geometry: ImageGeometry, offset_kji, background):
    """The CT crop (float32 [k, j, i] starting at ``offset_kji``) with the needles' steel taken out,
    and a mask of the crop around the needles' shafts outside the skin.

    Each needle's image is modelled from the needle itself: the median excess over ``background``
    of the voxels in 0.3 x 0.3 mm bins of the needle's cross-section (one axis along the slice
    direction, so thick-slice partial volume is modelled too), out to 3 mm plus half a voxel,
    taken along the steel away from the tip, times the blurred end of the steel at the tip (a
    normal step of the needle finder's blur along the axis). That model is subtracted, never below
    the soft tissue: a seed touching a needle keeps its own metal; streaks along the needle are not
    symmetric about it and stay (the seed count rejects them).
    """
    from .needle_measure import blur_sigma as _blur_sigma
    from scipy.special import ndtr
    out = np.array(ctc, dtype=np.float32, copy=True)
    outside = np.zeros(out.shape, dtype=bool)
    sp = np.asarray(geometry.spacing, float)
    off = np.asarray(offset_kji)
    reach = 3.0 + 0.5 * float(sp.max())
    shape = np.asarray(out.shape)
    kdir = geometry.direction_matrix[:, 2]
    step = 0.3
    nb = int(math.ceil(reach / step))
    for nd in needles:
        d = np.asarray(nd.direction, float)
        tip = np.asarray(nd.tip, float)
        e1 = kdir - (kdir @ d) * d
        if np.linalg.norm(e1) < 1e-3:
            e1 = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 = e1 / np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        ext = 40.0                                   # the shaft outside the skin too
        a = tip - (nd.depth_mm + ext) * d
        length = float(nd.depth_mm + ext + 4.0)
        h = np.ceil(reach / sp).astype(int) + 1
        idx_l, t_l, u_l, v_l = [], [], [], []
        for c0 in np.arange(0.0, length, 10.0):     # 10 mm pieces: small boxes for oblique needles
            c1 = min(c0 + 10.0, length)
            ijk = geometry.ras_to_ijk(np.array([a + c0 * d, a + c1 * d]))
            lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - h, off[::-1])
            hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + h + 1, off[::-1] + shape[::-1])
            if np.any(hi <= lo):
                continue
            kk, jj, ii = np.meshgrid(np.arange(lo[2], hi[2]), np.arange(lo[1], hi[1]), np.arange(lo[0], hi[0]),
                                     indexing="ij")
            vox = geometry.ijk_to_ras(np.stack([ii, jj, kk], axis=-1).astype(float))
            rel = vox - a
            t = rel @ d
            o = rel - t[..., None] * d
            u, v = o @ e1, o @ e2
            own = (t >= c0) & (t < c1) & (np.abs(u) < reach) & (np.abs(v) < reach)
            if not own.any():
                continue
            idx_l.append((kk[own] - off[0], jj[own] - off[1], ii[own] - off[2]))
            t_l.append(t[own] - (length - 4.0))      # 0 at the tip, negative inside the needle
            u_l.append(u[own])
            v_l.append(v[own])
        if not idx_l:
            continue
        idx = tuple(np.concatenate([b[q] for b in idx_l]) for q in range(3))
        t_all, u_all, v_all = np.concatenate(t_l), np.concatenate(u_l), np.concatenate(v_l)
        bu = np.clip(np.floor(u_all / step).astype(int) + nb, 0, 2 * nb - 1)
        bv = np.clip(np.floor(v_all / step).astype(int) + nb, 0, 2 * nb - 1)
        bins = bu * (2 * nb) + bv
        excess = out[idx] - background
        steel = (t_all < -3.0) & (t_all > -nd.depth_mm)   # inside the body, away from the tip
        prof = np.zeros((2 * nb) ** 2)
        order = np.argsort(bins[steel], kind="stable")
        sb, sv = bins[steel][order], excess[steel][order]
        starts = np.flatnonzero(np.r_[True, np.diff(sb) > 0])
        for q0, q1 in zip(starts, np.r_[starts[1:], len(sb)]):
            if q1 - q0 >= 3:
                prof[sb[q0]] = max(0.0, float(np.median(sv[q0:q1])))
        sig = _blur_sigma(d, geometry)
        model = prof[bins] * ndtr(-t_all / max(sig, 1e-3))
        vals = out[idx]
        out[idx] = np.maximum(vals - model, np.minimum(vals, background)).astype(np.float32)
        outside[idx] |= t_all < -nd.depth_mm + 1.0
    return out, outside
