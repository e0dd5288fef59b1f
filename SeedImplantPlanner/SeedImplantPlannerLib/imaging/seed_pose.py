"""Seed poses: weighted centroid and axis, splitting touching seeds, axes from needle tracks.

Helpers of :func:`imaging.seedfinder.find_seeds`. Points are RAS mm (``(n, 3)``), weights metal
content (HU above the local background); ``box_cov`` is the voxel box variance (``spacing^2 / 12``
per grid axis, rotated to RAS) removed from covariances so thick slices do not bias axes.
"""

from __future__ import annotations

import math

import numpy as np

#: A seed image elongated less than this (largest over second variance) takes its track's axis.
TRACK_MIN_ELONGATION = 2.0
#: Split seeds whose axis segments come closer than this fraction of the capsule diameter lie
#: inside each other: one seed too many.
OVERLAP_FRACTION = 0.5
#: Dark streaks around a seed give its in-plane direction when their orientation tensor is at
#: least this anisotropic ((l1 - l2) / (l1 + l2) of the darkness-weighted direction tensor).
STREAK_MIN_ANISOTROPY = 0.3
#: Ring around a seed's centre (mm beyond half its length) where its dark streaks are read.
STREAK_RING_MM = (1.0, 6.0)


def canonical_axis(a):
    """Unit vector of ``a`` with its largest component positive (a seed's axis has no sign)."""
    a = np.asarray(a, float)
    a = a / np.linalg.norm(a)
    k = int(np.argmax(np.abs(a)))
    return -a if a[k] < 0 else a


def weighted_pose(pts, w, box_cov):
    """Weighted centroid and principal axis (voxel box variance removed).

    Weights that are not finite count as 0; a segment that lost all its weight (an EM component with no
    responsibility left, e.g. on needle remnants) falls back to equal weights, so the result is finite.
    """
    w = np.where(np.isfinite(w), w, 0.0)
    sw = float(w.sum())
    if not sw > 0.0:
        w = np.ones(len(pts))
        sw = float(len(pts))
    c = (w[:, None] * pts).sum(axis=0) / sw
    d = pts - c
    cov = (w[:, None, None] * (d[:, :, None] * d[:, None, :])).sum(axis=0) / sw - box_cov
    evals, evecs = np.linalg.eigh(cov)
    return c, canonical_axis(evecs[:, -1]), evals[::-1]


def seg_dist2(pts, c, a, h):
    """Squared distance (mm^2) of points to the segment of centre ``c``, unit axis ``a``, half length ``h``."""
    d = pts - c
    t = np.clip(d @ a, -h, h)
    return np.sum((d - t[:, None] * a) ** 2, axis=1)


def em_segments(pts, w, centers, axes, half_length_mm, s2, box_cov, iterations=40):
    """EM of ``n`` blurred line segments (fixed half length and width ``s2``) on weighted points.

    Each seed is modelled as ``pi_q * exp(-d_q(x)^2 / 2)`` with ``d_q`` the distance to its
    segment measured in units of the seed image's spread, ``s2 I`` with the voxel box variance
    of the grid's axes in place of its isotropic share (a thick slice spreads a seed along the
    slice normal only: in a metric that knows it, two seeds side by side in the slice plane are
    not traded for two seeds stacked along the normal); voxels where two seeds overlap are shared
    by responsibility, so neither seed's centroid is pulled towards the other (hard k-means biases
    touching pairs by ~1 mm). Returns ``(centers, axes, responsibilities, log-likelihood)``.
    """
    n = len(centers)
    centers = np.array(centers, float)
    axes = np.array(axes, float)
    pi = np.full(n, 1.0 / n)
    wsum = float(w.sum())
    ll_old = -np.inf
    box = np.asarray(box_cov, float)
    cov = max(s2 - float(np.trace(box)) / 3.0, 0.05) * np.eye(3) + box
    ev, evec = np.linalg.eigh(cov)
    whiten = evec @ np.diag(1.0 / np.sqrt(ev)) @ evec.T          # cov^(-1/2)
    wpts = pts @ whiten.T
    for _ in range(iterations):
        d2 = np.empty((len(pts), n))
        for q in range(n):
            wa = whiten @ axes[q]
            scale = float(np.linalg.norm(wa))
            d2[:, q] = seg_dist2(wpts, whiten @ centers[q], wa / scale, half_length_mm * scale)
        logp = np.log(np.maximum(pi, 1e-12))[None, :] - d2 / 2.0
        mx = logp.max(axis=1, keepdims=True)
        p = np.exp(logp - mx)
        tot = p.sum(axis=1, keepdims=True)
        resp = p / tot
        ll = float(np.sum(w * (mx[:, 0] + np.log(tot[:, 0]))))
        for q in range(n):
            wq = w * resp[:, q]
            if wq.sum() <= 1e-9 * wsum:
                continue
            centers[q], axes[q], _ = weighted_pose(pts, wq, box_cov)
            pi[q] = wq.sum() / wsum
        if abs(ll - ll_old) < 1e-7 * abs(ll) + 1e-9:
            break
        ll_old = ll
    return centers, axes, resp, ll


def split_cluster(pts, w, n, half_length_mm, box_cov, s2=None, iterations=25):
    """Split weighted points into ``n`` seeds; returns ``(centers, axes, responsibilities)``.

    Several deterministic starts (farthest point; weighted quantiles along the first and second
    principal axes) are each refined by a hard segment k-means (distance to each cluster's
    segment of the seed's length) and, when the seed width ``s2`` (mm^2) is known, by
    :func:`em_segments`; the start with the best fit wins (log-likelihood, else k-means cost).
    """
    npts = len(pts)
    if n <= 1 or npts <= n:
        c, a, _ = weighted_pose(pts, w, box_cov)
        return c[None], a[None], np.ones((npts, 1))
    starts = []
    centers = [pts[int(np.argmax(w))]]
    for _ in range(1, n):
        d2 = np.min([np.sum((pts - c) ** 2, axis=1) for c in centers], axis=0)
        centers.append(pts[int(np.argmax(d2 * w))])
    starts.append(np.array(centers))
    c0, _, _ = weighted_pose(pts, w, np.zeros((3, 3)))
    d = pts - c0
    cov = (w[:, None, None] * (d[:, :, None] * d[:, None, :])).sum(axis=0)
    evecs = np.linalg.eigh(cov)[1]
    for e in (evecs[:, -1], evecs[:, -2]):
        proj = d @ e
        order = np.argsort(proj)
        cw = np.cumsum(w[order]) / w.sum()
        starts.append(np.array([pts[order[min(np.searchsorted(cw, (q + 0.5) / n), npts - 1)]] for q in range(n)]))

    best = None
    if s2 is not None:
        # parallel hypotheses straight into EM: all seeds along the cluster's principal axis,
        # spread along each principal direction by the spread of the weighted points
        a1 = canonical_axis(evecs[:, -1])
        for e in (evecs[:, -1], evecs[:, -2], evecs[:, -3]):
            proj = d @ e
            spread = math.sqrt(max(float(np.sum(w * proj ** 2) / w.sum()), 1e-6))
            offs = (np.arange(n) - (n - 1) / 2.0) * 2.0 * spread / max(n - 1, 1)
            cs, ax, resp, ll = em_segments(pts, w, c0 + offs[:, None] * e, np.tile(a1, (n, 1)),
                                            half_length_mm, s2, box_cov)
            if best is None or ll > best[0]:
                best = (ll, cs, ax, resp)
    for centers in starts:
        labels = np.argmin(((pts[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
        segs = []
        for it in range(iterations):
            segs = []
            for q in range(n):
                sel = labels == q
                if w[sel].sum() <= 0 or np.count_nonzero(sel) < 2:
                    segs.append((centers[q], np.array([0.0, 0.0, 1.0])))
                    continue
                c, a, _ = weighted_pose(pts[sel], w[sel], box_cov)
                segs.append((c, a))
            if it < 3:  # plain k-means first: a stable start for the segment fit
                dist = np.stack([np.sum((pts - c) ** 2, axis=1) for c, _ in segs], axis=1)
            else:
                dist = np.stack([seg_dist2(pts, c, a, half_length_mm) for c, a in segs], axis=1)
            new = np.argmin(dist, axis=1)
            centers = np.array([c for c, _ in segs])
            if np.array_equal(new, labels) and it >= 3:
                break
            labels = new
        cs = np.array([c for c, _ in segs])
        ax = np.array([a for _, a in segs])
        if s2 is not None:
            cs, ax, resp, ll = em_segments(pts, w, cs, ax, half_length_mm, s2, box_cov)
            score = ll
        else:
            dist = np.stack([seg_dist2(pts, c, a, half_length_mm) for c, a in zip(cs, ax)], axis=1)
            resp = np.eye(n)[np.argmin(dist, axis=1)]
            score = -float(np.sum(w * dist.min(axis=1)))
        if best is None or score > best[0]:
            best = (score, cs, ax, resp)
    return best[1], np.array([canonical_axis(a) for a in best[2]]), best[3]



def track_axes(positions, axes, elongation, seed_length_mm, min_elongation=TRACK_MIN_ELONGATION):
    """Axes of seeds whose own image is too round to show it, from the needle track they lie on.

    Seeds are deposited along a needle track, one after another: three or more seeds on one
    straight line (each 1.2-4 capsule lengths from the next, within 1.5 mm of the line) lie along
    it. A seed's own principal axis is kept when its metal-weighted image is elongated (largest
    over second variance >= ``min_elongation``); rays along a row of seeds starve and the dark
    streak between them eats their ends, leaving round blobs, whose axis the track gives. In a
    lattice (rows across neighbouring needles are straight too) the line nearest the seed's own
    axis is taken.
    """
    axes = np.array(axes, float, copy=True)
    n = len(positions)
    if n < 3:
        return axes
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    lo, hi = 1.2 * seed_length_mm, 4.0 * seed_length_mm
    for i in range(n):
        if elongation[i] >= min_elongation:
            continue
        lines = []                      # (direction, members) of the distinct lines through seed i
        for j in np.flatnonzero((d[i] >= lo) & (d[i] <= hi)):
            u = (positions[j] - positions[i]) / d[i, j]
            rel = positions - positions[i]
            t = rel @ u
            off = np.linalg.norm(rel - t[:, None] * u, axis=1)
            on = np.flatnonzero(off <= 1.5)
            if len(on) < 3:
                continue
            ts = np.sort(t[on])
            gaps = np.diff(ts)
            if np.any(gaps > hi) or np.any(gaps < 0.8 * seed_length_mm):
                continue
            c = positions[on].mean(axis=0)
            a = np.linalg.eigh(np.cov((positions[on] - c).T))[1][:, -1]
            if not any(abs(float(a @ b)) > math.cos(math.radians(10.0)) for b, _ in lines):
                lines.append((a, on))
        if not lines:
            continue
        # one line: the track. Several (a lattice of needles and rows across them): the one nearest
        # the seed's own, weakly elongated, axis
        a = max(lines, key=lambda ln: abs(float(ln[0] @ axes[i])))[0] if len(lines) > 1 else lines[0][0]
        k = int(np.argmax(np.abs(a)))
        axes[i] = -a if a[k] < 0 else a
    return axes


def streak_direction(ct, geometry, offset_kji, centre_ras, seed_length_mm, ring_mm=STREAK_RING_MM):
    """In-plane direction of the dark streaks around a seed: ``(unit RAS vector, anisotropy)``.

    Rays along a seed's length cross the most metal: beam hardening and photon starvation make
    them read low, and filtered back-projection spreads that deficit along the ray, as dark bands
    leaving both ends of the seed along its axis (projected onto the slice plane). In the slice
    through the seed's centre, the darkness ``max(0, ring median - HU)`` of the voxels in a ring
    of ``seed_length / 2 + ring_mm`` around the centre weights the outer product of the unit
    vectors from the centre; the principal direction of that tensor is the seed's in-plane axis
    and ``(l1 - l2) / (l1 + l2)`` how clear it is (0: no preferred direction, 1: a single line).
    Used where the seed's own image is too round to show its axis (a blooming silver marker in
    one slice). ``ct`` is the crop ``[k, j, i]`` starting at ``offset_kji``; ``(None, 0.0)`` when the
    ring holds no dark voxel.
    """
    sp = np.asarray(geometry.spacing, float)
    ijk = geometry.ras_to_ijk(np.asarray(centre_ras, float)[None])[0] - np.asarray(offset_kji, float)[::-1]
    k = int(round(ijk[2]))
    if not 0 <= k < ct.shape[0]:
        return None, 0.0
    r_in, r_out = 0.5 * seed_length_mm + ring_mm[0], 0.5 * seed_length_mm + ring_mm[1]
    hi, hj = int(math.ceil(r_out / sp[0])), int(math.ceil(r_out / sp[1]))
    i0, j0 = int(round(ijk[0])), int(round(ijk[1]))
    ii = np.arange(max(i0 - hi, 0), min(i0 + hi + 1, ct.shape[2]))
    jj = np.arange(max(j0 - hj, 0), min(j0 + hj + 1, ct.shape[1]))
    if len(ii) < 2 or len(jj) < 2:
        return None, 0.0
    di = (ii[None, :] - ijk[0]) * sp[0]
    dj = (jj[:, None] - ijk[1]) * sp[1]
    r = np.hypot(di, dj)
    ring = (r >= r_in) & (r <= r_out)
    if np.count_nonzero(ring) < 8:
        return None, 0.0
    v = ct[k][np.ix_(jj, ii)][ring].astype(float)
    w = np.clip(np.median(v) - v, 0.0, None)
    if not w.sum() > 0:
        return None, 0.0
    u = np.stack([np.broadcast_to(di, r.shape)[ring], np.broadcast_to(dj, r.shape)[ring]], axis=1) / r[ring][:, None]
    tensor = (w[:, None, None] * u[:, :, None] * u[:, None, :]).sum(axis=0)
    ev, evec = np.linalg.eigh(tensor)
    e = evec[:, -1]
    d = geometry.direction_matrix @ np.array([e[0], e[1], 0.0])
    return d / np.linalg.norm(d), float((ev[1] - ev[0]) / max(ev.sum(), 1e-12))


def axis_in_streak_plane(cov, streak_dir, slice_normal):
    """The seed's axis within the plane of its streak direction and the slice normal.

    ``cov``: the seed's metal-weighted covariance (voxel box removed). Its principal direction
    restricted to ``span(streak_dir, slice_normal)`` keeps the tilt out of the slice that the
    image shows and takes the in-plane direction from the streaks.
    """
    e = np.asarray(streak_dir, float)
    n = np.asarray(slice_normal, float)
    n = n - (n @ e) * e
    n = n / np.linalg.norm(n)
    basis = np.stack([e, n], axis=1)
    c2 = basis.T @ cov @ basis
    v = np.linalg.eigh(c2)[1][:, -1]
    return canonical_axis(basis @ v)


def capsules_overlap(centers, axes, half_length_mm, diameter_mm, fraction=OVERLAP_FRACTION):
    """True when two of the seeds (centre, unit axis, segment half length) lie inside each other:
    their axis segments come closer than ``fraction`` of the capsule diameter (two solid capsules
    side by side are at least one diameter apart)."""
    n = len(centers)
    ts = np.linspace(-half_length_mm, half_length_mm, 9)
    for i in range(n):
        line = centers[i] + ts[:, None] * axes[i]
        for j in range(i + 1, n):
            if float(np.min(seg_dist2(line, centers[j], axes[j], half_length_mm))) < (fraction * diameter_mm) ** 2:
                return True
    return False
