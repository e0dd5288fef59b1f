"""Grid levels of the multilevel dose engine (:mod:`fastdose`): a level's nodes, a seed's correction zone on it, block extraction.

All in the grid's own frame and array-axis order (k, j, i), lengths in mm; no physics here.
"""

from __future__ import annotations

import math

import numpy as np

#: Lagrange weights for interpolation at the midpoint of the central interval, by stencil size.
MID_WEIGHTS = {
    4: np.array([-1.0, 9.0, 9.0, -1.0]) / 16.0,
    6: np.array([3.0, -25.0, 150.0, 150.0, -25.0, 3.0]) / 256.0,
    8: np.array([-5.0, 49.0, -245.0, 1225.0, 1225.0, -245.0, 49.0, -5.0]) / 2048.0,
}



class Level:
    """One grid level in the grid's own frame, array-axis order (k, j, i)."""

    def __init__(self, origin, spacing, shape):
        self.origin = np.asarray(origin, dtype=float)
        self.spacing = np.asarray(spacing, dtype=float)
        self.shape = tuple(int(n) for n in shape)
        self.factor = None  # per-axis factor (1 or 2) to the next coarser level

    @property
    def n_nodes(self):
        return int(np.prod(self.shape))

    def zone(self, q, a, semi_axes):
        """Nodes of this level inside a seed's correction spheroid (clipped to the level).

        ``q`` seed position (mm), ``a`` unit axis, both in array-axis order; ``semi_axes`` (across,
        along the axis) in mm. Returns None if no node is inside, else a :class:`Zone`: the runs
        of zone nodes along array axis 2, found per (axis 0, axis 1) row of the zone's bounding box
        from the spheroid's quadratic (rows as 2D broadcasts: no per-node work here).
        """
        A, B = semi_axes
        h, o, shape = self.spacing, self.origin, self.shape
        q0, q1, q2 = (float(x) for x in q)
        a0, a1, a2 = (float(x) for x in a)
        lo, hi = [], []
        for ax, (qa, aa) in enumerate(((q0, a0), (q1, a1), (q2, a2))):
            ext = math.sqrt(A * A * (1.0 - aa * aa) + B * B * aa * aa)
            lo.append(max(math.ceil((qa - ext - o[ax]) / h[ax] - 1e-9), 0))
            hi.append(min(math.floor((qa + ext - o[ax]) / h[ax] + 1e-9), shape[ax] - 1))
            if hi[ax] < lo[ax]:
                return None
        # box for the interpolation: even start and size along the axes that coarsen
        box_lo, box_size = [], []
        for ax in range(3):
            even = self.factor is not None and self.factor[ax] == 2
            b0 = lo[ax] - lo[ax] % 2 if even else lo[ax]
            n = hi[ax] - b0 + 1
            box_lo.append(b0)
            box_size.append(n + n % 2 if even else n)
        # spheroid: x^T M x <= 1 with M = I / A^2 + a a^T (1 / B^2 - 1 / A^2); per row a quadratic in x2
        x0 = (o[0] - q0) + np.arange(lo[0], hi[0] + 1) * h[0]
        x1 = (o[1] - q1) + np.arange(lo[1], hi[1] + 1) * h[1]
        ia, ib = 1.0 / (A * A), 1.0 / (B * B) - 1.0 / (A * A)
        m22 = ia + ib * a2 * a2
        proj = (a0 * x0)[:, None] + (a1 * x1)[None, :]
        bq = (ib * a2) * proj
        cq = (ia * x0 * x0)[:, None] + (ia * x1 * x1)[None, :]
        cq += ib * proj * proj
        cq -= 1.0
        disc = bq * bq
        disc -= m22 * cq
        np.maximum(disc, 0.0, out=cq)
        root = np.sqrt(cq)
        # node index range along axis 2: c2 + (-bq -+ root) / (m22 h2), inward by 1e-9
        c2 = (q2 - o[2]) / h[2]
        scale = 1.0 / (m22 * h[2])
        bq *= scale
        root *= scale
        t_lo = np.subtract(c2 - 1e-9, bq)
        t_lo -= root
        np.ceil(t_lo, out=t_lo)
        t_hi = np.add(root, c2 + 1e-9)
        t_hi -= bq
        np.floor(t_hi, out=t_hi)
        np.maximum(t_lo, lo[2], out=t_lo)
        np.minimum(t_hi, hi[2], out=t_hi)
        counts = t_hi - t_lo + 1
        counts[disc < 0.0] = 0
        runs = np.flatnonzero(counts > 0)
        if runs.size == 0:
            return None
        n1 = x1.size
        i0, i1 = runs // n1, runs % n1
        counts = counts.reshape(-1)[runs].astype(np.int64)
        t_lo = t_lo.reshape(-1)[runs].astype(np.int64)
        # per run: [d0^2 + d1^2, a0 d0 + a1 d1, d1 a2, d0 a2, (d0 a1 - d1 a0)^2] (cm), d2 of its first
        # node (mm), flat index of its first node in the level and in the box
        x0c, x1c = (x0 * 0.1)[i0], (x1 * 0.1)[i1]
        rows = np.empty((5, runs.size), dtype=np.float32)
        rows[0] = x0c * x0c + x1c * x1c
        rows[1] = a0 * x0c + a1 * x1c
        rows[2] = x1c * a2
        rows[3] = x0c * a2
        rows[4] = (x0c * a1 - x1c * a0) ** 2
        first_mm = (o[2] - q2) + t_lo * h[2]
        gbase = ((i0 + lo[0]) * shape[1] + (i1 + lo[1])) * shape[2] + t_lo
        bbase = ((i0 + (lo[0] - box_lo[0])) * box_size[1] + (i1 + (lo[1] - box_lo[1]))) * box_size[2] + (t_lo - box_lo[2])
        return Zone(np.array(box_lo), np.array(box_size), counts, rows, first_mm, gbase, bbase, h[2])


class Zone:
    """One seed's correction zone on one level: its interpolation box (start, size, even along
    the axes that coarsen) and its runs of nodes along array axis 2: ``counts`` (nodes per run),
    ``rows`` (5, R) (the run's values of :meth:`KernelTable.eval_runs`), ``first_mm`` (d2 of the
    run's first node, mm, float64), ``gbase`` / ``bbase`` (flat index of the run's first node in
    the level / in the box). The per-node arrays are made by :meth:`nodes` when the zone is
    used, so they are still in the CPU cache when the kernel is evaluated."""

    __slots__ = ("start", "size", "counts", "rows", "first_mm", "gbase", "bbase", "h2_mm")

    def __init__(self, start, size, counts, rows, first_mm, gbase, bbase, h2_mm):
        self.start, self.size, self.counts, self.rows = start, size, counts, rows
        self.first_mm, self.gbase, self.bbase, self.h2_mm = first_mm, gbase, bbase, h2_mm

    def nodes(self, work, tag=0):
        """Per node: flat index in the level and in the box, d2 (cm, float32), its run's ``rows`` (5, N)."""
        counts = self.counts
        n = int(counts.sum())
        run_start = np.cumsum(counts)
        run_start -= counts
        within = np.arange(n, dtype=np.int64)
        within -= np.repeat(run_start, counts)
        gidx = np.repeat(self.gbase, counts)
        gidx += within
        bidx = np.repeat(self.bbase, counts)
        bidx += within
        # d2 in float64 first: a node that coincides with the seed gets exactly r = 0 (theta = 0)
        d64 = work.get("d64", n, np.float64)
        np.multiply(within, self.h2_mm, out=d64)
        d64 += np.repeat(self.first_mm, counts)
        d64 *= 0.1
        d2 = work.get(("d2", tag), n)
        np.copyto(d2, d64, casting="same_kind")
        per = np.repeat(self.rows, counts, axis=1)
        return gidx, bidx, d2, per


def extract_block(dense, start, cstart, csize):
    """The block [cstart, cstart + csize) of ``dense`` (whose first node has index ``start``), zero-padded."""
    lo = [int(c) - int(s0) for c, s0 in zip(cstart, start)]
    hi = [l0 + int(n) for l0, n in zip(lo, csize)]
    if all(l0 >= 0 for l0 in lo) and all(h0 <= d for h0, d in zip(hi, dense.shape)):
        return dense[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    out = np.zeros(tuple(int(n) for n in csize), dtype=dense.dtype)
    src_lo = [max(l0, 0) for l0 in lo]
    src_hi = [min(h0, d) for h0, d in zip(hi, dense.shape)]
    if any(h0 <= l0 for l0, h0 in zip(src_lo, src_hi)):
        return out
    dst = tuple(slice(a0 - l0, a0 - l0 + (b0 - a0)) for a0, b0, l0 in zip(src_lo, src_hi, lo))
    out[dst] = dense[tuple(slice(a0, b0) for a0, b0 in zip(src_lo, src_hi))]
    return out
