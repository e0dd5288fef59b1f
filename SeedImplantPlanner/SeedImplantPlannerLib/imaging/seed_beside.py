"""Seeds lying beside an in-plane needle, read from the bulge of the needle's bright footprint.

A helper of :func:`imaging.seedfinder.find_seeds` (needles in place). A needle running within
``IN_PLANE_MAX_DEG`` of the slice plane and a seed deposited beside it in that plane (its centre
1-2 mm from the needle's axis) share the same slices, and the CT's 12-bit ceiling (3071 HU)
clips both: the seed's inner half lies under the needle's saturated bloom, and subtracting a
model of the needle leaves only a fraction of the seed's metal, pushed outward (measured on the
held-out in-plane layouts of ``bench_seedfinder.py --inplane``: 2-6 of 32 such seeds found,
positions 1-1.5 mm outward). The geometry of the bright footprint survives clipping: in a frame of
the needle (``u`` along it, ``v`` across it in the slice plane, ``w`` across the slices) the
contour at ``FOOTPRINT_LEVEL`` of the way from soft tissue to the needle's steel plateau runs at
a constant distance from the axis along the steel, and a seed beside it pushes the contour on its
side outward by about its diameter over about one capsule length.

Rule (:func:`find_beside_seeds`), per needle in the slice plane whose steel reaches the CT's
brightest metal (``STEEL_PLATEAU_FRACTION``; a "needle" traced along a streak does not):

- the footprint's edge on each side, ``e(u)``, from the axis outward (the contiguous run above the
  level in the maximum over a slab of ``w`` one slice thick), and the needle's own edge ``b(u)``,
  the median of ``e`` 4-12 mm away along the needle on both sides (its cross-section along the
  rest of its length: slice phase and starvation change it slowly);
- a bulge ``e - b`` of at least ``MIN_BULGE_FRACTION`` of the seed's diameter (a seed beside the
  needle widens its footprint by about its diameter), whose half-height length is at most
  ``MAX_LENGTH_CAPSULES`` capsule lengths (streak bands along the needle are longer), whose
  brightest voxel beyond the needle's own edge reaches ``CORE_PLATEAU_FRACTION`` of the steel's
  plateau (the seed's dense core is as bright as the steel; a streak touching the footprint is
  not, measured 0.75-0.95 against seeds' 0.92-1.06), and which is larger than the bulge on the
  other side there (an object crossing the needle, or the mirror of the footprint widening around
  a seed, bulges both sides);
- position: along the needle, the bulge-weighted centre of the bulge; across it, from the seed's
  visible OUTER edge: the centre lies one seed radius plus the edge's blur excess inside it, the
  excess read on the needle itself in the same CT (its footprint's half-width minus its radius:
  the same blur and the same clipped plateau); across the slices, the excess-weighted centre of
  the bright voxels beyond the needle's edge. Axis: the needle's direction (seeds deposited along
  the track). The centroid of what the subtraction leaves is biased outward; this is not.

Positions RAS mm; the crop (``[k, j, i]``) starts at ``offset_kji``.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.geometry import ImageGeometry
from .seed_needles import needle_radius, steel_distance

#: Needles within this angle (deg) of the slice plane are searched for seeds beside them.
IN_PLANE_MAX_DEG = 20.0
#: The footprint's contour: this fraction of the way from soft tissue to the needle's steel plateau.
FOOTPRINT_LEVEL = 0.7
#: Only needles whose steel plateau reaches this fraction of the way from soft tissue to the
#: brightest metal voxel of the CT (real steel clips or nearly; a line traced along a streak does not).
STEEL_PLATEAU_FRACTION = 0.8
#: A bulge counts when it pushes the contour outward by at least this fraction of the seed's diameter.
MIN_BULGE_FRACTION = 0.75
#: ... over half to 1.3 capsule lengths (half-height length of the bulge along the needle).
MIN_LENGTH_CAPSULES, MAX_LENGTH_CAPSULES = 0.5, 1.3
#: ... and when its brightest voxel beyond the needle's own edge reaches this fraction of the plateau.
CORE_PLATEAU_FRACTION = 0.9
#: The needle's own edge is read this far (mm) along it on each side of a point, leaving out the middle.
FLANK_GAP_MM, FLANK_MM = 4.0, 12.0
#: Sampling of the needle frame (mm): along, across in the slice plane; lateral half-width searched.
STEP_U_MM, STEP_V_MM, HALF_WIDTH_MM = 0.25, 0.1, 5.0


def in_plane(nd, geometry: ImageGeometry, max_deg=IN_PLANE_MAX_DEG) -> bool:
    """True when the needle runs within ``max_deg`` of the slice plane."""
    kdir = geometry.direction_matrix[:, 2]
    return abs(float(np.asarray(nd.direction, float) @ kdir)) <= math.sin(math.radians(max_deg))


def needle_frame(nd, geometry: ImageGeometry):
    """Unit vectors ``(u, v, w)``: along the needle, across it in the slice plane, across the slices."""
    d = np.asarray(nd.direction, float)
    kdir = geometry.direction_matrix[:, 2]
    w = kdir - (kdir @ d) * d
    w /= np.linalg.norm(w)
    v = np.cross(w, d)
    return d, v / np.linalg.norm(v), w


def _edges(img, v, level):
    """Outer edges (mm from the axis, +v side and -v side) of the contiguous run above ``level`` that
    holds the brightest sample within 0.7 mm of the axis, per row of ``img`` [u, v]; NaN where that
    sample is below the level or the run reaches the sampled width."""
    nu, nv = img.shape
    near = np.flatnonzero(np.abs(v) <= 0.7)
    start = near[np.argmax(img[:, near], axis=1)]
    above = img >= level
    ep = np.full(nu, np.nan)
    em = np.full(nu, np.nan)
    for i in range(nu):
        c = start[i]
        if not above[i, c]:
            continue
        row = img[i]
        hi = c + int(np.argmin(above[i, c:])) if not above[i, c:].all() else nv
        lo = c - int(np.argmin(above[i, c::-1])) if not above[i, c::-1].all() else -1
        if hi < nv:
            f = (row[hi - 1] - level) / (row[hi - 1] - row[hi])
            ep[i] = v[hi - 1] + f * (v[hi] - v[hi - 1])
        if lo >= 0:
            f = (row[lo + 1] - level) / (row[lo + 1] - row[lo])
            em[i] = -(v[lo + 1] + f * (v[lo] - v[lo + 1]))
    return ep, em


def _own_edge(e, u):
    """The needle's own edge at each ``u``: median of ``e`` over ``FLANK_GAP_MM``-``FLANK_MM`` on both
    sides (NaN unless both flanks are read: near the tip or where the needle leaves the CT)."""
    n = len(e)
    step = float(u[1] - u[0]) if n > 1 else STEP_U_MM
    gap, flank = int(math.ceil(FLANK_GAP_MM / step - 1e-9)), int(math.floor(FLANK_MM / step + 1e-9))
    offs = np.arange(gap, flank + 1)
    idx = np.arange(n)[:, None]
    padded = np.r_[e, np.nan]                                  # index n: off the needle
    before = padded[np.where(idx - offs >= 0, idx - offs, n)]
    after = padded[np.where(idx + offs < n, idx + offs, n)]
    need = 0.25 * (flank - gap)                               # a quarter of each flank read
    ok = (np.isfinite(before).sum(axis=1) >= need) & (np.isfinite(after).sum(axis=1) >= need)
    out = np.full(n, np.nan)
    if ok.any():
        out[ok] = np.nanmedian(np.hstack([before, after])[ok], axis=1)
    return out


def _faint(nd, background, metal_max):
    """True for a found needle whose steel plateau (``peak_hu``) stays below half the way from soft tissue to
    the brightest metal: a line traced along a streak, not steel (needles from a table, NaN, are steel)."""
    peak = float(getattr(nd, "peak_hu", float("nan")))
    return math.isfinite(peak) and peak < background + 0.5 * (metal_max - background)


def _same_steel(other, nd, point):
    """True when ``other`` is the same steel as ``nd`` traced twice: parallel (within 5 deg), its axis within
    the two radii plus 1 mm of blur of ``nd``'s axis at ``point`` and at ``nd``'s tip (two needles entering
    side by side and diverging are two needles)."""
    near = needle_radius(other) + needle_radius(nd) + 1.0
    pts = np.vstack([point, np.asarray(nd.tip, float)])
    return (abs(float(np.asarray(other.direction, float) @ np.asarray(nd.direction, float))) >= math.cos(math.radians(5.0))
            and bool(np.all(steel_distance(other, pts) <= near)))


def find_beside_seeds(ct_crop, geometry: ImageGeometry, offset_kji, needles, background, metal_max,
                      seed_length_mm, seed_diameter_mm):
    """Seeds beside the in-plane needles (module doc) in the CT crop as read (before any needle was
    taken out): a list of dicts ``position`` (RAS mm), ``axis``, ``needle`` (index), ``bulge_mm``,
    ``length_mm``, ``core_fraction``, ``offset_mm`` (centre's distance from the needle's axis)."""
    from scipy import ndimage
    ct = np.asarray(ct_crop, dtype=np.float32)
    off = np.asarray(offset_kji, float)
    sp = np.asarray(geometry.spacing, float)
    out = []
    for q, nd in enumerate(needles):
        if not in_plane(nd, geometry) or not float(nd.depth_mm) > 2.0 * FLANK_MM:
            continue
        d, ev, ew = needle_frame(nd, geometry)
        u = np.arange(-float(nd.depth_mm) + 2.0, -2.0, STEP_U_MM)
        v = np.arange(-HALF_WIDTH_MM, HALF_WIDTH_MM + 1e-6, STEP_V_MM)
        half_w = 0.6 * float(sp[2])     # a slab one slice thick (a little more) across the slices
        w = np.linspace(-half_w, half_w, 7)
        # crop indices of the frame's samples (the map RAS -> index is affine)
        tip = np.asarray(nd.tip, float)
        base = geometry.ras_to_ijk(np.vstack([tip, tip + d, tip + ev, tip + ew]))[:, ::-1]
        k0, jd, jv, jw = base[0] - off, base[1] - base[0], base[2] - base[0], base[3] - base[0]
        kji = (k0[:, None, None, None] + jd[:, None, None, None] * u[None, :, None, None]
               + jv[:, None, None, None] * v[None, None, :, None] + jw[:, None, None, None] * w[None, None, None, :])
        shape = np.asarray(ct.shape, float)[:, None, None, None]
        inside = np.all((kji >= -0.5) & (kji <= shape - 0.5), axis=0)
        img = ndimage.map_coordinates(ct, kji.reshape(3, -1), order=1, mode="nearest").reshape(inside.shape)
        img = np.where(inside, img, background)
        mip = img.max(axis=2)
        plateau = float(np.median(mip[:, np.abs(v) <= 0.7].max(axis=1)))
        if plateau < background + STEEL_PLATEAU_FRACTION * (metal_max - background):
            continue
        ep, em = _edges(mip, v, background + FOOTPRINT_LEVEL * (plateau - background))
        bp, bm = _own_edge(ep, u), _own_edge(em, u)
        half_width = float(np.nanmedian((bp + bm) / 2.0)) if np.isfinite(bp + bm).any() else np.nan
        if not math.isfinite(half_width):
            continue
        radius = float(getattr(nd, "radius_mm", 0.635))
        excess = half_width - radius                      # the edge's blur beyond the steel
        core_level = background + CORE_PLATEAU_FRACTION * (plateau - background)
        for side, e, b, e_o, b_o in ((1.0, ep, bp, em, bm), (-1.0, em, bm, ep, bp)):
            bulge = e - b
            other = e_o - b_o
            used = np.zeros(len(u), bool)
            for i in np.argsort(-np.nan_to_num(bulge, nan=-np.inf)):
                if not np.isfinite(bulge[i]) or bulge[i] < MIN_BULGE_FRACTION * seed_diameter_mm:
                    break
                if used[i]:
                    continue
                lo = hi = i
                while lo > 0 and np.isfinite(bulge[lo - 1]) and bulge[lo - 1] > 0.5 * bulge[i]:
                    lo -= 1
                while hi < len(u) - 1 and np.isfinite(bulge[hi + 1]) and bulge[hi + 1] > 0.5 * bulge[i]:
                    hi += 1
                used[max(0, lo - int(FLANK_GAP_MM / STEP_U_MM)):hi + int(FLANK_GAP_MM / STEP_U_MM) + 1] = True
                seg = slice(lo, hi + 1)
                length = (hi - lo + 1) * STEP_U_MM
                beyond = side * v > b[i] + 0.3
                core = float(mip[i, beyond].max()) if beyond.any() else -np.inf
                opp = other[seg][np.isfinite(other[seg])]
                if (not MIN_LENGTH_CAPSULES * seed_length_mm <= length <= MAX_LENGTH_CAPSULES * seed_length_mm
                        or core < core_level or (len(opp) and float(opp.max()) >= bulge[i])):
                    continue
                wts = np.clip(bulge[seg], 0.0, None)
                uc = float(np.sum(u[seg] * wts) / wts.sum())
                on_axis = np.asarray(nd.tip, float) + uc * d
                if any(float(steel_distance(o, on_axis[None])[0]) - needle_radius(o) < HALF_WIDTH_MM
                       for k, o in enumerate(needles)
                       if k != q and not _faint(o, background, metal_max) and not _same_steel(o, nd, on_axis)):
                    continue          # another needle's steel in the band searched: its edge, not a seed's
                outer = float(np.nanpercentile(e[seg], 75))
                # (a solid seed's centre lies at least both radii off the needle's axis)
                vc = side * max(outer - excess - seed_diameter_mm / 2.0, radius + seed_diameter_mm / 2.0)
                band = (side * v > b[i]) & (side * v <= e[i] + 0.3)
                sub = np.clip(img[seg][:, band, :] - background, 0.0, None)
                wc = float((sub.sum(axis=(0, 1)) * w).sum() / sub.sum()) if sub.sum() > 0 else 0.0
                pos = np.asarray(nd.tip, float) + uc * d + vc * ev + wc * ew
                out.append({"position": pos, "axis": d.copy(), "needle": q, "bulge_mm": float(bulge[i]),
                            "length_mm": length, "core_fraction": (core - background) / (plateau - background),
                            "offset_mm": float(math.hypot(vc, wc))})
    return out
