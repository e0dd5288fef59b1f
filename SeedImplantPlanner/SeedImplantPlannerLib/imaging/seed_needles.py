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
#: An object (or a seed split from one) whose centre lies within a needle's outer radius plus this
#: tolerance (mm) of its axis is inside the steel: the needle's own metal, or a seed still inside the
#: needle. A seed deposited beside a needle has its centre at least the needle's plus the seed's
#: radius from the axis (1.04 mm for an 18 G needle and a 0.8 mm seed).
ON_AXIS_TOLERANCE_MM = 0.3
#: Steel may run this far (mm) beyond a needle's found tip (a tip found short): a seed there is less sure.
NEEDLE_EXTENSION_MM = 20.0
#: Tube around a needle (mm from its line, plus half the largest voxel size) in which the metal per
#: mm of needle is summed: the steel's blurred image, a thick slice's partial volume of it, and a
#: seed lying against the needle.
EXCESS_TUBE_MM = 3.0
#: Length (mm) of needle on each side of a candidate over which the needle's own metal per mm is read.
EXCESS_FLANK_MM = 10.0
#: A candidate beside a needle is a seed only when the metal along the needle there exceeds the
#: needle's own by at least this fraction of one seed's content.
EXCESS_MIN_FRACTION = 0.5


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
    parallel to a needle and within ``STREAK_BESIDE_NEEDLE_MM`` (streak beside it); longer than two
    capsules, parallel to two needles running in the slice plane and lying between them (streak
    between them: :func:`_between_in_plane_needles`).
    """
    kdir = geometry.direction_matrix[:, 2]
    for c in comps:
        if "reject" in c:
            continue
        pts = geometry.ijk_to_ras((c["kji"] + offset_kji)[:, ::-1].astype(float))
        cen, ax, ev = weighted_pose(pts, c["w"] + 1e-6, box_cov)
        length = math.sqrt(12.0 * max(ev[0], 0.0))
        for nd in needles:
            dist = float(steel_distance(nd, cen[None])[0])
            along = abs(float(ax @ nd.direction)) >= math.cos(math.radians(20.0))
            if dist <= needle_radius(nd) + ON_AXIS_TOLERANCE_MM:
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
        if "reject" not in c and length > 2.0 * seed_length_mm:
            pair = _between_in_plane_needles(cen, ax, c["peak"], needles, kdir)
            if pair is not None:
                c["reject"] = (f"streak between needles in place {pair[0]} and {pair[1]}, parallel to both in the "
                               f"slice plane, peak {c['peak']:.0f} HU below their steel's (rays through both starve); "
                               "not seeds")


def _between_in_plane_needles(cen, ax, peak_hu, needles, kdir, max_angle_deg=20.0):
    """Names (or numbers) of two needles in place that an object (centre ``cen``, axis ``ax``, brightest
    voxel ``peak_hu``) lies between and runs along, both needles within ``max_angle_deg`` of the slice
    plane, the object's peak below both needles' steel plateau (``peak_hu``, median peak along the
    steel); else ``None``. ``ax=None``: the object's direction is not asked (a knot of the band).

    Two needles lying in the slice plane are crossed lengthwise by the in-plane rays along them:
    those rays starve, and the filtered back-projection leaves bright bands along the line joining
    the two steels, knots midway between parallel needles (measured on the held-out in-plane
    layouts of bench_seedfinder part 3: knots 4-7 mm from both needles 11-14 mm apart, 8-37 mm long,
    parallel to them). A needle crossing the slices steeply is met by in-plane rays in one point
    only and makes no such band. "Between": the object is nearer to each needle's steel than the
    two needles are to each other there. The band is streak, no metal of its own: its brightest voxel
    stays below the steel's plateau (knots 900-2250 HU against needles' 2840-2990 HU there), where a
    seed caught in the band keeps its own dense core (saturated 3071 HU in those CTs) and the object
    is kept. Needles given without a measured plateau (``peak_hu`` NaN) never reject.
    """
    cos_max = math.cos(math.radians(max_angle_deg))
    cand = []
    for q, nd in enumerate(needles):
        d = np.asarray(nd.direction, float)
        if (ax is not None and abs(float(ax @ d)) < cos_max) or abs(float(d @ kdir)) > math.sin(math.radians(max_angle_deg)):
            continue
        cand.append((q, nd, float(steel_distance(nd, cen[None])[0])))
    for a in range(len(cand)):
        for b in range(a + 1, len(cand)):
            (qa, na, da), (qb, nb, db) = cand[a], cand[b]
            # the point of needle a's line nearest the object, and its distance to needle b's steel
            da_dir = np.asarray(na.direction, float)
            foot = np.asarray(na.tip, float) + float((cen - np.asarray(na.tip, float)) @ da_dir) * da_dir
            gap = float(steel_distance(nb, foot[None])[0])
            if max(da, db) < gap and peak_hu < min(float(getattr(na, "peak_hu", np.nan)),
                                                   float(getattr(nb, "peak_hu", np.nan))):
                return (getattr(na, "name", None) or qa + 1, getattr(nb, "name", None) or qb + 1)
    return None


def subtract_needles(ctc, needles, geometry: ImageGeometry, offset_kji, background, removed=None):
    """The CT crop (float32 [k, j, i] starting at ``offset_kji``) with the needles' steel taken out,
    and a mask of the crop around the needles' shafts outside the skin.

    Each needle's image is modelled from the needle itself: the median excess over ``background``
    of the voxels in 0.3 x 0.3 mm bins of the needle's cross-section (one axis along the slice
    direction, so thick-slice partial volume is modelled too), out to 3 mm plus half a voxel,
    taken along the steel away from the tip, times the blurred end of the steel at the tip (a
    normal step of the needle finder's blur along the axis). That model is subtracted, never below
    the soft tissue: a seed touching a needle keeps its own metal; streaks along the needle are not
    symmetric about it and stay (the seed count rejects them). ``removed``: a list that receives,
    per needle, ``(crop indices, HU taken out there)`` (:func:`needle_metal_excess` puts one
    needle back to weigh the metal beside it).
    """
    from .needle_measure import blur_sigma as _blur_sigma
    from scipy.special import ndtr
    out = np.array(ctc, dtype=np.float32, copy=True)
    outside = np.zeros(out.shape, dtype=bool)
    sp = np.asarray(geometry.spacing, float)
    reach = 3.0 + 0.5 * float(sp.max())
    shape = np.asarray(out.shape)
    kdir = geometry.direction_matrix[:, 2]
    step = 0.3
    nb = int(math.ceil(reach / step))
    for nd in needles:
        d = np.asarray(nd.direction, float)
        e1 = kdir - (kdir @ d) * d
        if np.linalg.norm(e1) < 1e-3:
            e1 = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 = e1 / np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        ext = 40.0                                   # the shaft outside the skin too
        idx, t_all, o = _tube_voxels(nd, geometry, offset_kji, shape, reach, -(nd.depth_mm + ext), 4.0,
                                     square=(e1, e2))
        if len(t_all) == 0:
            continue
        u_all, v_all = o @ e1, o @ e2
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
        new = np.maximum(vals - model, np.minimum(vals, background)).astype(np.float32)
        out[idx] = new
        outside[idx] |= t_all < -nd.depth_mm + 1.0
        if removed is not None:
            removed.append((idx, (vals - new).astype(np.float32)))
    return out, outside


def _tube_voxels(nd, geometry: ImageGeometry, offset_kji, shape, reach_mm, t_from, t_to, square=None):
    """Crop voxels near a needle's line: ``(kji index tuple, t, offsets (n, 3))``.

    ``t`` is the position along the needle's straight line, 0 at its found tip and negative inside
    the needle; only voxels with ``t_from <= t < t_to`` whose centre lies within ``reach_mm`` of
    the line are returned (a round tube; with ``square=(e1, e2)``, two unit vectors across the
    needle, a square one: within ``reach_mm`` along each). The crop starts at ``offset_kji``,
    ``shape`` is its shape; the line is walked in 10 mm pieces (small boxes for oblique needles).
    """
    d = np.asarray(nd.direction, float)
    tip = np.asarray(nd.tip, float)
    sp = np.asarray(geometry.spacing, float)
    off = np.asarray(offset_kji)
    shape = np.asarray(shape)
    h = np.ceil(reach_mm / sp).astype(int) + 1
    idx_l, t_l, o_l = [], [], []
    for c0 in np.arange(t_from, t_to, 10.0):
        c1 = min(c0 + 10.0, t_to)
        ijk = geometry.ras_to_ijk(np.array([tip + c0 * d, tip + c1 * d]))
        lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - h, off[::-1])
        hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + h + 1, off[::-1] + shape[::-1])
        if np.any(hi <= lo):
            continue
        kk, jj, ii = np.meshgrid(np.arange(lo[2], hi[2]), np.arange(lo[1], hi[1]), np.arange(lo[0], hi[0]),
                                 indexing="ij")
        vox = geometry.ijk_to_ras(np.stack([ii, jj, kk], axis=-1).astype(float))
        rel = vox - tip
        t = rel @ d
        o = rel - t[..., None] * d
        if square is None:
            inside = np.linalg.norm(o, axis=-1) <= reach_mm
        else:
            inside = (np.abs(o @ square[0]) < reach_mm) & (np.abs(o @ square[1]) < reach_mm)
        own = (t >= c0) & (t < c1) & inside
        if not own.any():
            continue
        idx_l.append((kk[own] - off[0], jj[own] - off[1], ii[own] - off[2]))
        t_l.append(t[own])
        o_l.append(o[own])
    if not idx_l:
        return (np.zeros(0, int),) * 3, np.zeros(0), np.zeros((0, 3))
    idx = tuple(np.concatenate([b[q] for b in idx_l]) for q in range(3))
    return idx, np.concatenate(t_l), np.concatenate(o_l)




class NeedleMetal:
    """Metal along each needle in place beyond its own steel (the seed finder's residue test).

    A needle's steel holds the same metal per millimetre along its length; partial volume and blur
    move that metal between voxels but keep its sum. So the metal per mm of needle in a tube around
    it (``(HU - background)+`` summed over the tube's cross-section, 1 mm bins along the needle,
    normalised to the typical number of voxels per bin) varies only slowly along the needle (the
    dark streaks of rays along it and the other needles change it over centimetres); a seed lying
    against the needle adds its own metal over its length, a residue of an imperfect subtraction
    (the model is the needle's median cross-section: a thick slice's partial volume, a starved
    stretch or the blurred tip leave bright remnants) adds nothing. The needle's own level is the
    median metal per mm over ``EXCESS_FLANK_MM`` of needle on each side of the candidate's window,
    the higher side (another needle's steel entering the tube is a step, not a bump), blurred to 0
    past the found tip. The image is the crop with every needle taken out (``ct_sub``) and the needle
    under test put back (``removed`` from :func:`subtract_needles`): a neighbour's steel or its tip
    inside the tube is not this needle's seed. Positions RAS mm, the crop starts at ``offset_kji``.
    """

    def __init__(self, ct_sub, removed, needles, geometry: ImageGeometry, offset_kji, background,
                 tube_mm=EXCESS_TUBE_MM, flank_mm=EXCESS_FLANK_MM):
        self.ct, self.removed, self.needles = ct_sub, removed, list(needles)
        self.geometry, self.off, self.bg = geometry, np.asarray(offset_kji), float(background)
        self.reach = tube_mm + 0.5 * float(np.max(geometry.spacing))
        self.flank = float(flank_mm)
        self._prof = {}

    def nearest(self, points, extension_mm):
        """Nearest needle whose tube holds each point: ``(index or -1, distance to its steel mm, t mm)``;
        ``t`` along the needle, 0 at its found tip; points from its entry to ``extension_mm`` past the tip."""
        pts = np.asarray(points, float).reshape(-1, 3)
        which = np.full(len(pts), -1, dtype=int)
        best = np.full(len(pts), np.inf)
        tt = np.zeros(len(pts))
        for q, nd in enumerate(self.needles):
            tp = (pts - np.asarray(nd.tip, float)) @ np.asarray(nd.direction, float)
            dist = steel_distance(nd, pts)
            ok = (dist <= self.reach - 1.0) & (tp >= -float(nd.depth_mm)) & (tp <= extension_mm) & (dist < best)
            which[ok], best[ok], tt[ok] = q, dist[ok], tp[ok]
        return which, best, tt

    def _profile(self, q):
        if q in self._prof:
            return self._prof[q]
        nd = self.needles[q]
        ct = self.ct
        idx, t, _ = _tube_voxels(nd, self.geometry, self.off, ct.shape, self.reach, -float(nd.depth_mm), 15.0)
        if not len(t):
            self._prof[q] = None
            return None
        add = np.zeros(len(t))
        if self.removed is not None and q < len(self.removed) and len(self.removed[q][1]):
            ridx, rval = self.removed[q]                  # this needle put back
            flat_r = np.ravel_multi_index(ridx, ct.shape)
            order = np.argsort(flat_r)
            flat_r, rval = flat_r[order], rval[order]
            flat_t = np.ravel_multi_index(idx, ct.shape)
            pos = np.clip(np.searchsorted(flat_r, flat_t), 0, len(flat_r) - 1)
            hit = flat_r[pos] == flat_t
            add[hit] = rval[pos[hit]]
        lo = -int(math.ceil(float(nd.depth_mm)))
        b = np.floor(t).astype(int) - lo
        nb = int(b.max()) + 1
        val = np.clip(ct[idx].astype(float) + add - self.bg, 0.0, None) * float(np.prod(self.geometry.spacing))
        count = np.bincount(b, minlength=nb)
        typical = float(np.median(count[count > 0]))
        # the voxel columns fall unevenly into 1 mm bins (0.8 mm voxels put one or two in each)
        per_mm = np.bincount(b, weights=val, minlength=nb) / np.maximum(count, 1) * typical
        full = count >= 0.5 * typical                     # bins cut by the crop are left out
        tc = np.arange(nb) + lo + 0.5
        # and the bins whose tube leaves the crop (a needle running out of the CT)
        d = np.asarray(nd.direction, float)
        e1 = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        ang = np.arange(8) * math.pi / 4
        ring = self.reach * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2)
        cen = np.asarray(nd.tip, float) + tc[:, None] * d
        ijk = self.geometry.ras_to_ijk((cen[:, None, :] + ring[None]).reshape(-1, 3)).reshape(len(tc), 8, 3)
        lo_b = self.off[::-1] - 0.5
        hi_b = self.off[::-1] + np.asarray(ct.shape)[::-1] - 0.5
        full &= np.all((ijk >= lo_b) & (ijk <= hi_b), axis=(1, 2))
        from .needle_measure import blur_sigma as _blur_sigma
        self._prof[q] = (tc, per_mm, full, _blur_sigma(np.asarray(nd.direction, float), self.geometry), lo)
        return self._prof[q]

    def excess(self, q, t0, t1):
        """Metal (HU * mm^3) along needle ``q`` between ``t0`` and ``t1`` (mm, 0 at its found tip)
        beyond its own steel; ``nan`` when the needle's level cannot be read there (no steel beside
        the window, or most of the window off the CT)."""
        from scipy.special import ndtr
        prof = self._profile(q)
        if prof is None:
            return float("nan")
        tc, per_mm, full, sig, lo = prof
        levels = []
        for f0, f1 in ((t0 - self.flank, t0), (t1, t1 + self.flank)):
            fl = full & (tc >= f0) & (tc < f1) & (tc < -2.0) & (tc > lo + 2.0)
            if np.count_nonzero(fl) >= 3:
                levels.append(float(np.median(per_mm[fl])))
        if not levels:
            return float("nan")
        win = full & (tc >= t0) & (tc <= t1)
        if np.count_nonzero(win) < 0.5 * (t1 - t0):
            return float("nan")                  # most of the window is off the CT
        own = max(levels) * ndtr(-tc[win] / max(sig, 1e-3))
        return float(np.sum(per_mm[win] - own))
