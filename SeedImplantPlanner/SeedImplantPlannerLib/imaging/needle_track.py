"""A needle's centre line traced on the CT itself, from a rough line to the whole curved needle.

The line search (:mod:`imaging.needle_lines`) finds straight pieces of the metal mask; its axis is
pulled by streaks, by a neighbouring needle 2-3 mm away and by the staircase of thick slices, and
its extent stops where the mask breaks. :func:`trace_centreline` refines such a line on the CT
values (RAS mm):

1. The centre line is modelled as ``x(t) = c + t d + a(t) u + b(t) v`` (``u, v`` perpendicular to
   ``d``; ``a, b`` polynomials of degree <= 2 in ``t``): a needle bent within a few mm of a line
   follows a circular arc, which a parabola matches to far below a voxel over a needle's length.
2. Every 1 mm along the model, the CT is sampled on a small disk perpendicular to ``d``; the
   brightest sample is the steel's peak there and the centroid of the samples above half-way from
   the soft tissue to that peak is the measured centre (the top half of the blurred steel, so a
   streak or a neighbour's flank below it adds nothing). The disk is wider along the slice normal
   (thick slices spread the steel over two slices).
3. The steel's extent is the run of positions whose peak reaches the steel level, containing the
   starting piece, with gaps up to ``max_gap_mm`` (a dark streak across the needle, a slice
   transition of a shallow needle), but an end piece beyond such a gap that fills most of a ring
   around it is a plate across the axis (bone cortex beyond the tip), not this needle
   (:func:`_drop_wide_ends`); beyond its ends the model continues straight along its end
   tangents, so the trace follows the needle to its tip and out of the body.
4. The polynomials are refitted to the measured centres over the extent (weights: steel excess;
   centres off the model by more than 3 x their median offset are dropped: crossings, seeds), and
   2-3 is repeated with a narrower disk.

The result (:class:`Trace`) gives centre-line points every 1 mm, the peak CT value at each, and the
model (so the tip segment's own direction and the bend can be read off it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .needle_lines import perp_frame, unit


#: Steel counts as this needle's only when its peak lies within this distance (mm) of the model
#: (a neighbouring needle converging on this one, 1-2 mm away, is not its continuation).
ON_MODEL_MM = 0.7
#: Slices at least this thick (mm) split a needle's steel between two slices by partial volume (the
#: blurred steel of a 1.0-1.3 mm needle is about 1.5 mm wide along the slice normal): the centre is
#: the centroid of the top 80 % of the steel, not the top half, whose brighter slice would pull the
#: centre to its own centre, up to half a slice off (2 mm oblique slices: 1-2 mm drift over a needle).
THICK_SLICE_MM = 1.5
#: Radius (mm) of the ring around the steel's centre that a needle's blurred steel does not reach at
#: half its peak (a 1.65 mm needle with the scanner's 0.45 mm blur: under 1.3 mm), while a plate of
#: bone across the needle's axis fills it (:func:`_drop_wide_ends`).
WIDE_RING_MM = 2.5
#: ... over at least this fraction of the ring at most positions of the piece (a plate at up to about
#: 45 deg to the axis; the streaks and neighbours among converging tips fill half of it)
WIDE_RING_FILL = 0.75


@dataclass
class Trace:
    """A traced needle centre line (RAS mm), ordered along ``d`` (not yet oriented entry -> tip)."""

    c: np.ndarray            # model origin
    d: np.ndarray            # model axis (unit)
    u: np.ndarray            # perpendicular frame
    v: np.ndarray
    coef_u: np.ndarray       # polynomial of the offset along u (numpy.polyval order)
    coef_v: np.ndarray
    t0: float                # extent of the steel along d
    t1: float
    ts: np.ndarray           # sample positions (1 mm) inside the extent
    points: np.ndarray       # centre-line points at ts
    peaks: np.ndarray        # brightest CT value near the centre line at ts
    found: np.ndarray        # True where the steel reached the steel level
    offset: np.ndarray | None = None   # distance (mm) of the measured centre from the model at ts

    def offsets(self, t):
        """Offsets (along u, v) of the centre line at positions ``t`` (model inside the extent, end
        tangents beyond)."""
        t = np.atleast_1d(np.asarray(t, float))
        tc = np.clip(t, self.t0, self.t1)
        extra = t - tc
        au = np.polyval(self.coef_u, tc) + extra * np.polyval(np.polyder(self.coef_u), tc)
        av = np.polyval(self.coef_v, tc) + extra * np.polyval(np.polyder(self.coef_v), tc)
        return au, av

    def at(self, t):
        """Centre-line points at positions ``t`` (see :meth:`offsets`)."""
        t = np.atleast_1d(np.asarray(t, float))
        au, av = self.offsets(t)
        return self.c + t[:, None] * self.d + au[:, None] * self.u + av[:, None] * self.v

    def distance_to(self, points):
        """Distance (mm) of ``points`` (n, 3) from this centre line (within its extent)."""
        p = np.asarray(points, float).reshape(-1, 3)
        t = np.clip((p - self.c) @ self.d, self.t0, self.t1)
        return np.linalg.norm(p - self.at(t), axis=1)

    def tangent(self, t):
        """Unit tangent of the centre line at ``t`` (towards increasing t)."""
        tc = float(np.clip(t, self.t0, self.t1))
        du = float(np.polyval(np.polyder(self.coef_u), tc))
        dv = float(np.polyval(np.polyder(self.coef_v), tc))
        return unit(self.d + du * self.u + dv * self.v)

    def bend_mm(self):
        """Largest distance of the centre line from the straight chord between its ends."""
        p = self.at(np.linspace(self.t0, self.t1, 41))
        ch = unit(p[-1] - p[0])
        r = p - p[0]
        return float(np.max(np.linalg.norm(r - (r @ ch)[:, None] * ch, axis=1)))


def _disk(u, v, radius_u, radius_v, step=0.25):
    """Offsets (n, 3) of an elliptic disk in the plane (u, v) and their (a, b) coordinates."""
    a = np.arange(-radius_u, radius_u + 1e-9, step)
    b = np.arange(-radius_v, radius_v + 1e-9, step)
    A, B = np.meshgrid(a, b, indexing="ij")
    keep = (A / radius_u) ** 2 + (B / radius_v) ** 2 <= 1.0
    A, B = A[keep], B[keep]
    return A[:, None] * u + B[:, None] * v, A, B


def _cross_sections(sample, centres, u, v, radius_u, radius_v, background, core_u=0.9, core_v=0.9, level=0.5,
                    step=0.25):
    """Peak and centre offsets (along u, v) of the CT around each centre (m, 3): the brightest
    sample of the disk, and the centroid of the samples above half-way from the soft tissue to it
    within the ellipse ``core_u`` x ``core_v`` (mm) around it (the top half of the blurred steel
    around its peak; wider along the slice normal of thick slices)."""
    offs, A, B = _disk(u, v, radius_u, radius_v, step)
    vals = sample(centres[:, None, :] + offs[None])
    ok = np.isfinite(vals)
    vals = np.where(ok, vals, -np.inf)
    peak = vals.max(axis=1)
    # the peak's position: the middle of the samples within 3 % of it (steel clipped at the scanner's
    # HU ceiling is a plateau 1-3 mm wide; its first sample would sit on one edge)
    top = ok & (vals >= (peak - 0.03 * np.maximum(peak - background, 1.0))[:, None])
    arg = np.argmax(vals, axis=1)
    pa, pb = A[arg], B[arg]
    for _ in range(3):   # mean shift over the plateau (radius 0.6 mm: a neighbour's plateau stays out)
        sel = top & ((A[None] - pa[:, None]) ** 2 + (B[None] - pb[:, None]) ** 2 <= 0.36)
        nt = np.maximum(sel.sum(axis=1), 1)
        pa, pb = (sel * A[None]).sum(axis=1) / nt, (sel * B[None]).sum(axis=1) / nt
    near = ((A[None] - pa[:, None]) / core_u) ** 2 + ((B[None] - pb[:, None]) / core_v) ** 2 <= 1.0
    half = background + level * (peak - background)
    w = np.where(ok & near, np.clip(vals - half[:, None], 0.0, None), 0.0)
    ws = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        da = (w * A[None]).sum(axis=1) / ws
        db = (w * B[None]).sum(axis=1) / ws
    inside = ok.mean(axis=1) > 0.5
    peak = np.where(inside, peak, np.nan)
    return peak, np.where(ws > 0, da, pa), np.where(ws > 0, db, pb)


def _robust_fit(tt, au, av, wt, deg, rng, tol_mm=0.5, hypotheses=120, scale_u=1.0, scale_v=1.0):
    """Polynomials (degree ``deg``) of the offsets along the needle, robust to centres on another
    needle: the straight line through two centres with the most weight within ``tol_mm`` (RANSAC),
    then weighted least squares on its inliers (twice, the second time with degree ``deg``)."""
    n = len(tt)
    best, best_score = None, -1.0
    if n >= 4:
        a = rng.integers(0, n, hypotheses)
        b = rng.integers(0, n, hypotheses)
        good = np.abs(tt[b] - tt[a]) >= 0.25 * (tt.max() - tt.min())
        for i, j in zip(a[good], b[good]):
            su = (au[j] - au[i]) / (tt[j] - tt[i])
            sv = (av[j] - av[i]) / (tt[j] - tt[i])
            res = np.hypot((au[i] + su * (tt - tt[i]) - au) / scale_u, (av[i] + sv * (tt - tt[i]) - av) / scale_v)
            score = float(wt[res <= 2.0 * tol_mm].sum())
            if score > best_score:
                best_score, best = score, res <= 2.0 * tol_mm
    keep = best if best is not None and np.count_nonzero(best) >= 3 else np.ones(n, dtype=bool)
    cu = np.polyfit(tt[keep], au[keep], 1, w=np.sqrt(wt[keep]))
    cv = np.polyfit(tt[keep], av[keep], 1, w=np.sqrt(wt[keep]))
    for d_ in sorted({1, deg}):
        res = np.hypot((np.polyval(cu, tt) - au) / scale_u, (np.polyval(cv, tt) - av) / scale_v)
        keep = res <= max(tol_mm, 2.5 * float(np.median(res[keep])))
        if np.count_nonzero(keep) < d_ + 2:
            break
        cu = np.polyfit(tt[keep], au[keep], d_, w=np.sqrt(wt[keep]))
        cv = np.polyfit(tt[keep], av[keep], d_, w=np.sqrt(wt[keep]))
    return cu, cv


def _drop_wide_ends(sample, cen, u, v, da, db, peak, steel, q, mid, background):
    """The run ``q`` (first, last sample index) without an end piece beyond a dark gap whose steel is
    wider than a needle: a plate (bone cortex) across the axis a few mm beyond the tip. A needle's
    blurred steel is below half its peak ``WIDE_RING_MM`` from its centre; a plate crossing the axis
    fills ``WIDE_RING_FILL`` of that ring or more (a seed or a neighbour's steel beside the axis only a
    part of it)."""
    idx = np.arange(q[0], q[1] + 1)
    on = steel[idx]
    cuts = np.flatnonzero(np.diff(on.astype(np.int8)) != 0) + 1   # boundaries of the steel / gap pieces
    pieces = [p for p in np.split(idx, cuts) if steel[p[0]]]
    if len(pieces) < 2:
        return q
    ang = np.arange(16) * (np.pi / 8.0)
    ring = WIDE_RING_MM * (np.cos(ang)[:, None] * u + np.sin(ang)[:, None] * v)

    def wide(piece):
        c = cen[piece] + da[piece, None] * u + db[piece, None] * v
        vals = sample(c[:, None, :] + ring[None])
        half = background + 0.5 * (peak[piece] - background)
        frac = np.mean(np.nan_to_num(vals, nan=-np.inf) >= half[:, None], axis=1)
        return float(np.mean(frac >= WIDE_RING_FILL)) > 0.5

    lo, hi = q
    if pieces[-1][0] > mid and wide(pieces[-1]):
        hi = int(pieces[-2][-1])
    if pieces[0][-1] < mid and wide(pieces[0]):
        lo = int(pieces[1][0])
    return (lo, hi)


def _slice_normal_share(u, v, geometry):
    """How much of the slice normal lies along u and v (thick slices widen the disk along it)."""
    k = geometry.direction_matrix[:, 2]
    return abs(float(k @ u)), abs(float(k @ v))


def trace_centreline(sample, geometry, c, d, t0, t1, background, steel_level, *, max_gap_mm=6.0,
                     reach_mm=400.0, iterations=3, min_length_mm=0.0, thin_level=None) -> Trace | None:
    """Trace the needle whose rough line is ``c + t d`` for ``t`` in [t0, t1] (RAS mm); see the module doc.

    ``steel_level``: CT number (HU) the steel's peak reaches along the needle; ``reach_mm``: how
    far beyond the starting piece the trace may extend; a trace shorter than ``min_length_mm`` after
    the first (coarse) pass is returned as it is (it is no needle; the caller says why). Returns None
    when the line holds no steel. ``thin_level`` (HU; a thin line in the plane of thick slices):
    where the CT also exceeds this level one and a half slices away on both sides along the slice
    normal, the structure is thicker than a needle (bone, a shell cut by many slices) and is not
    this needle's steel.
    """
    d = unit(d)
    u, v = perp_frame(d)
    c = np.asarray(c, float) + 0.5 * (t0 + t1) * d
    t0, t1 = t0 - 0.5 * (t0 + t1), t1 - 0.5 * (t0 + t1)
    sp = np.asarray(geometry.spacing, float)
    thick = float(sp[2])
    su, sv = _slice_normal_share(u, v, geometry)
    # thick slices: the steel's peak sits at a slice centre, up to half a slice from the needle
    widen_u = su * max(0.0, 0.5 * thick - 0.5)
    widen_v = sv * max(0.0, 0.5 * thick - 0.5)
    coef_u = np.zeros(1)
    coef_v = np.zeros(1)
    rng = np.random.default_rng(7)
    core = (t0, t1)
    trace = None
    for it in range(iterations):
        r = 1.6 if it == 0 else 1.2
        ru = max(r, r + su * (0.5 * thick - 0.2))
        rv = max(r, r + sv * (0.5 * thick - 0.2))
        # first pass: coarse (2 mm) over the whole reach; then 1 mm around the steel found
        reach = reach_mm if it == 0 else 2.0 * max_gap_mm + 10.0
        step = 2.0 if it == 0 else 1.0
        ts = np.arange(np.floor(t0 - reach), np.ceil(t1 + reach) + step, step)
        model = Trace(c, d, u, v, coef_u, coef_v, t0, t1, ts, None, None, None)
        cen = model.at(ts)
        inside = geometry.contains_ras(cen, margin_voxels=0.0)
        ts, cen = ts[inside], cen[inside]
        mu, mv = model.offsets(ts)
        if len(ts) < 3:
            return None
        peak, da, db = _cross_sections(sample, cen, u, v, ru, rv, background, core_u=0.9 + 2.0 * widen_u, core_v=0.9 + 2.0 * widen_v,
                                       level=0.5 if thick < THICK_SLICE_MM else 0.2, step=0.4 if it == 0 else 0.25)
        steel = np.nan_to_num(peak, nan=-np.inf) >= steel_level
        if thin_level is not None:
            off = 1.5 * thick * np.asarray(geometry.direction_matrix, float)[:, 2]
            steel &= ~((np.nan_to_num(sample(cen + off), nan=-np.inf) >= thin_level)
                       & (np.nan_to_num(sample(cen - off), nan=-np.inf) >= thin_level))
        # steel on the model, not a neighbour's passing within the disk (a crossing at a small angle:
        # the run goes on through it, but its ends must be this needle's own steel)
        tol = 2.0 if it == 0 else 1.5 if it < iterations - 1 else ON_MODEL_MM
        on = steel & ((da / (tol + widen_u)) ** 2 + (db / (tol + widen_v)) ** 2 <= 1.0)
        bins = np.flatnonzero(steel)
        if not len(bins):
            return None
        # the run of steel through the starting piece (gaps up to max_gap_mm)
        mid = int(np.argmin(np.abs(ts - 0.5 * (core[0] + core[1]))))
        gap_bins = max_gap_mm / step
        gaps = np.flatnonzero(np.diff(bins) > gap_bins + 1)
        starts = np.concatenate([[0], gaps + 1])
        stops = np.concatenate([gaps, [len(bins) - 1]])
        q = None
        for a, b in zip(starts, stops):
            if bins[a] - gap_bins <= mid <= bins[b] + gap_bins:
                q = (bins[a], bins[b])
                break
        if q is None:
            return None
        q = _drop_wide_ends(sample, cen, u, v, da, db, peak, steel, q, mid, background)
        own = np.flatnonzero(on[q[0]:q[1] + 1])
        if len(own) < 3:
            return None
        q = (q[0] + own[0], q[0] + own[-1])
        sel = np.zeros(len(ts), dtype=bool)
        sel[q[0]:q[1] + 1] = True
        fit = sel & on
        if np.count_nonzero(fit) < 3:
            return None
        tt = ts[fit]
        au = mu[fit] + da[fit]
        av = mv[fit] + db[fit]
        wt = np.clip(peak[fit] - background, 1.0, None)
        length = float(tt[-1] - tt[0])
        deg = 2 if (length >= 40.0 and it >= 1) else 1   # a straight line first: it locks onto one needle
        cu, cv = _robust_fit(tt, au, av, wt, deg, rng, scale_u=1.0 + 2.0 * widen_u, scale_v=1.0 + 2.0 * widen_v)
        coef_u, coef_v = cu, cv
        t0, t1 = float(ts[q[0]]), float(ts[q[1]])
        trace = Trace(c, d, u, v, coef_u, coef_v, t0, t1, ts[sel], None, peak[sel], on[sel])
        trace.points = trace.at(trace.ts)
        fu, fv = trace.offsets(ts[sel])
        trace.offset = np.hypot(mu[sel] + da[sel] - fu, mv[sel] + db[sel] - fv)
        core = (t0, t1)
        if t1 - t0 < min_length_mm:
            break
    return trace
