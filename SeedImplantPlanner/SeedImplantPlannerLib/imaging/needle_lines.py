"""Straight lines of metal in a CT's metal mask: the needle finder's line search.

The metal voxels (RAS mm, weighted by their excess over the soft tissue) of each connected
component are searched for straight lines by RANSAC (:func:`ransac_lines`): hypotheses through two
voxels at least half the minimum needle length apart (and through one voxel along each expected
direction, when the plan gives them) are scored by the brightest voxel of every 1 mm bin along the
longest covered run, so a line along steel beats a line along a streak band between two needles.
The best line's voxels are removed and the search repeats (crossing needles, needles touching
seeds or bone). :func:`own_voxels` gives every voxel to its nearest line. The lines are only
starting points: :mod:`imaging.needle_track` follows each on the CT to the whole needle, so pieces
of one needle broken by a dark streak or by thick slices become one trace.
"""

from __future__ import annotations


import numpy as np

#: A line with more metal voxels in the shell 2.5-4.5 mm around it than this many times those on it
#: lies in a dense structure (bone). The shell is about 6 times the line's own cross-section: solid
#: bone fills it; a needle between two or three neighbouring needles 3-4 mm away fills 2-3 times.
DENSE_SHELL_RATIO = 3.5

def unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def perp_frame(d):
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = unit(np.cross(d, helper))
    return u, np.cross(d, u)


def line_dist(pts, c, d):
    r = pts - c
    t = r @ d
    return np.sqrt(np.maximum(np.einsum("pk,pk->p", r, r) - t * t, 0.0)), t


def coverage(t, bin_mm=1.0):
    """Covered length (mm) and the sorted occupied bins of projections ``t``."""
    b = np.unique(np.floor(t / bin_mm).astype(np.int64))
    return len(b) * bin_mm, b


def longest_run(bins, max_gap_bins):
    """(start, stop) bin indices of the longest run of ``bins`` with gaps <= ``max_gap_bins``."""
    if len(bins) == 0:
        return 0, -1
    gaps = np.flatnonzero(np.diff(bins) > max_gap_bins + 1)
    starts = np.concatenate([[0], gaps + 1])
    stops = np.concatenate([gaps, [len(bins) - 1]])
    lengths = bins[stops] - bins[starts]
    q = int(np.argmax(lengths))
    return int(bins[starts[q]]), int(bins[stops[q]])


def weighted_line(pts, w):
    c = (w[:, None] * pts).sum(0) / w.sum()
    r = pts - c
    cov = (w[:, None, None] * (r[:, :, None] * r[:, None, :])).sum(0) / w.sum()
    evals, evecs = np.linalg.eigh(cov)
    return c, evecs[:, -1], evals[::-1]


# -- line extraction ------------------------------------------------------------------------------

def ransac_lines(pts, w, rng, *, inlier_mm, min_length_mm, max_gap_mm, expected_dirs, max_lines=40,
                  iterations=250, max_failures=3):
    """Straight lines in weighted points: (lines [(centre, direction, inlier indices)], rejections).

    Hypotheses are scored on a random subset of at most 3000 points (covered length along the
    line), the best one on all points. A line with more metal in the shell 2.5-4.5 mm around it
    than on it is a dense structure (bone), not a needle: it is removed and counted as rejected.
    """
    lines, rejections = [], []
    alive = np.ones(len(pts), dtype=bool)
    failures = 0
    for _ in range(max_lines):
        idx = np.flatnonzero(alive)
        if len(idx) < 3:
            break
        sub = pts[idx]
        if float(np.linalg.norm(np.ptp(sub, axis=0))) < min_length_mm:
            break
        wsub = w[idx]
        if len(sub) <= 3000:
            probe, pw = sub, wsub
        else:
            pick = rng.choice(len(sub), 3000, replace=False)
            probe, pw = sub[pick], wsub[pick]
        pw = pw / max(float(pw.max()), 1e-9)
        scale = len(sub) / len(probe)
        cands = []
        a = rng.integers(0, len(sub), iterations)
        b = rng.integers(0, len(sub), iterations)
        v = sub[b] - sub[a]
        nv = np.linalg.norm(v, axis=1)
        ok = nv >= 0.5 * min_length_mm
        cands += [(sub[i], vv / n) for i, vv, n in zip(a[ok], v[ok], nv[ok])]
        for d in expected_dirs:
            cands += [(sub[i], d) for i in rng.integers(0, len(sub), 15)]
        if not cands:
            break
        C = np.array([c for c, _ in cands])
        D = np.array([d for _, d in cands])
        best = None
        r2 = inlier_mm * inlier_mm
        for q0 in range(0, len(cands), 64):  # blocks of hypotheses x probe points
            Cb, Db = C[q0:q0 + 64], D[q0:q0 + 64]
            R = probe[None, :, :] - Cb[:, None, :]
            T = np.einsum("hpk,hk->hp", R, Db)
            dist2 = np.einsum("hpk,hpk->hp", R, R) - T * T
            inl = dist2 <= r2
            for h in range(len(Cb)):
                th = T[h, inl[h]]
                if len(th) < 3:
                    continue
                cov, bins = coverage(th)
                if best is not None and cov <= best[0]:
                    continue
                s0, s1 = longest_run(bins, max_gap_mm)
                # score: the brightest voxel of every 1 mm bin along the run, so a line along steel
                # beats a line along a streak band between two needles
                b = np.floor(th).astype(np.int64)
                sel = (b >= s0) & (b <= s1)
                if not sel.any():
                    continue
                arr = np.zeros(s1 - s0 + 1)
                np.maximum.at(arr, b[sel] - s0, pw[inl[h]][sel])
                score = float(arr.sum())
                if best is None or score > best[0]:
                    best = (score, Cb[h], Db[h], float(s1 - s0 + 1))
        if best is None or best[3] < min_length_mm / max(1.0, min(scale, 2.0)) * 0.9:
            break
        c, d = best[1], best[2]
        for _ in range(3):  # refine: weighted PCA of the inliers
            dist, t = line_dist(sub, c, d)
            inl = dist <= inlier_mm
            if np.count_nonzero(inl) < 3:
                break
            c, d, _ = weighted_line(sub[inl], w[idx][inl])
        dist, t = line_dist(sub, c, d)
        inl = dist <= inlier_mm
        cov, bins = coverage(t[inl])
        s0, s1 = longest_run(bins, max_gap_mm)
        in_run = (t >= s0 - 1) & (t <= s1 + 2)
        keep = inl & in_run
        shell = np.count_nonzero((dist > 2.5) & (dist <= 4.5) & in_run)
        alive[idx[(dist <= inlier_mm + 0.6) & (t >= s0 - 2) & (t <= s1 + 3)]] = False
        if (s1 - s0 + 1) < min_length_mm:
            failures += 1
        elif shell > DENSE_SHELL_RATIO * np.count_nonzero(keep):
            rejections.append((c, unit(d), float(s1 - s0 + 1), "dense structure around the line (bone?)"))
            failures += 1
        else:
            lines.append((c, unit(d), idx[keep]))
            continue
        if failures >= max_failures:
            break
    return lines, rejections


def own_voxels(lines, pts, w, inlier_mm, max_gap_mm, min_length_mm):
    """Give each voxel to its nearest line (needles crossing at a small angle share voxels near the
    crossing) and keep each line's longest run of own voxels: [(centre, dir, pts, w)]."""
    if not lines:
        return []
    dists = np.stack([line_dist(pts, c, d)[0] for c, d, _ in lines], axis=1)
    owner = np.argmin(dists, axis=1)
    out = []
    for q, (c, d, inl) in enumerate(lines):
        sel = (owner == q) & (dists[:, q] <= inlier_mm)
        if np.count_nonzero(sel) < 3:
            continue
        p, ww = pts[sel], w[sel]
        t = (p - c) @ d
        # 1 mm bins whose own metal sits off the axis towards another line are that line's sliver
        # (a needle grazing this one's extension), not this needle
        b = np.floor(t).astype(np.int64)
        ub, inv = np.unique(b, return_inverse=True)
        off = p - c - t[:, None] * d
        ws = np.bincount(inv, weights=ww)
        mo = np.stack([np.bincount(inv, weights=ww * off[:, k]) for k in range(3)], axis=1) / ws[:, None]
        bc = c + (ub + 0.5)[:, None] * d
        near_other = np.zeros(len(ub), dtype=bool)
        for k, (c2, d2, _) in enumerate(lines):
            if k != q:
                near_other |= line_dist(bc, c2, d2)[0] <= 2.0 * inlier_mm
        good = ~(near_other & (np.linalg.norm(mo, axis=1) > 0.45 * inlier_mm))
        bins = ub[good]
        s0, s1 = longest_run(bins, max_gap_mm)
        if s1 - s0 + 1 < min_length_mm:
            continue
        keep = (t >= s0 - 1) & (t <= s1 + 2)
        out.append((c, d, pts[sel][keep], w[sel][keep]))
    return out
