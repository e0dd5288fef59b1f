"""Fast grid engine: TG-43 dose of many seeds on a voxel grid by multilevel summation.

Same physics as :class:`tg43.TG43Kernel` (same tables, interpolation, extrapolation and cap
rule); only the way the sum over seeds is organised differs. Method, error analysis and measured
numbers: docs/dose-engine.md.

Method (multilevel summation with nested interpolation, as in MSM):
- Work in the grid's own frame (seed positions and axes rotated by the direction matrix), so
  oblique grids cost nothing extra; anisotropic spacing is handled per axis.
- Level 0 is the voxel grid. Level k+1 doubles the spacing of level k along every axis whose
  spacing is within 1.5x of the finest (semi-coarsening keeps coarse cells close to cubes) and
  carries ghost nodes beyond the border, so interpolation stencils never leave the level.
- Prolongation (level k+1 -> k) is tensor-product Lagrange interpolation with ``order`` points
  per axis, evaluated at the midpoints as symmetric strided array operations.
- Top level: every seed evaluated exactly at every node.
- Every lower level k: for each seed, at the level-k nodes inside a spheroid around the seed with
  semi-axes R_k across and ``stretch`` * R_k along the seed axis, R_k = ``ratio`` * H_(k+1)
  (H_(k+1): the largest coarsened spacing of level k+1; at least MIN_EXACT_RADIUS_MM on level 0),
  the exact kernel minus the interpolation of the seed's own exact level-(k+1) samples is added.
  A voxel inside a seed's level-0 spheroid therefore gets that seed's exact value; a voxel
  outside gets an interpolated value made from samples at least (ratio - order/2) * H from the
  seed. Level k's spheroid also holds the stencil nodes of level k-1's, so every exact value is
  computed once and reused as a coarse sample.
- The exact kernel is evaluated in float32 through :class:`KernelTable` (g(r) F(r, theta) on a
  uniform grid whose nodes include every tabulated radius and angle, so bilinear lookup
  reproduces TG-43's piecewise-linear interpolation; line-source geometry computed analytically).
- Capped voxels are found in float64 with the kernel's own rule, so their count is the direct
  engine's.
- Per seed the work is numpy passes over the seed's top-level nodes and its zones' nodes: the
  kernel in place over reused work arrays, the zones found row by row, the corrections added at
  the zone nodes' flat indices (np.add.at); docs/dose-engine.md has the cost breakdown.

Error: high order where the kernel is smooth; first order in H/r where an interpolation stencil
straddles a kink of the piecewise-linear TG-43 tables (a tabulated radius of g or F, a tabulated
angle of F, and the seed axis, where F(theta) has a nonzero slope). The stretched spheroid covers
the strongest kinks, near the axis; kernels with rough radial tables (Pd-103) get a larger ratio.
docs/dose-engine.md gives the bound, how ``ratio``, ``stretch`` and ``order`` control it, and
measured values.
"""

from __future__ import annotations

import math

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from .kernel_table import KernelTable, Scratch, shared_table
from .multilevel import MID_WEIGHTS, Level, extract_block
from .tg43 import TG43Kernel

DEFAULT_ORDER = 6
DEFAULT_RATIO = 6.0
DEFAULT_STRETCH = 3.0
#: Level-0 correction radius is at least this (mm): seeds' exact zone does not shrink on fine grids.
MIN_EXACT_RADIUS_MM = 12.0
#: Radial-table roughness (largest relative slope jump x r over kernel_table.ROUGHNESS_RANGE_CM) at which the
#: default ratio applies (model 6711's g_L: 0.52). Rougher kernels get a ratio scaled up in
#: proportion, at most by MAX_RATIO_SCALE, so that their first-order kink error stays comparable.
ROUGHNESS_REF = 0.55
MAX_RATIO_SCALE = 2.0

#: Implants of fewer seeds than this get a larger correction ratio (their errors average less,
#: and the larger exact zones cost little when there are few seeds): ratio = DEFAULT_RATIO *
#: (SMALL_IMPLANT_SEEDS / n)^(1/3), at most MAX_SMALL_IMPLANT_SCALE times the default.
SMALL_IMPLANT_SEEDS = 100
MAX_SMALL_IMPLANT_SCALE = 3.0

#: np.add.at has a fast path from numpy 1.25 on; before, it was about 30x slower than a fancy-index
#: addition, which is equivalent for indices without repeats (one zone's nodes).
_FAST_ADD_AT = np.lib.NumpyVersion(np.__version__) >= "1.25.0"
#: Work arrays larger than this are released after each computation (bytes).
_KEEP_WORK_BYTES = 32 * 2 ** 20


def auto_ratio(n_seeds: int) -> float:
    """Default correction ratio for an implant of about ``n_seeds`` seeds (see SMALL_IMPLANT_SEEDS)."""
    scale = (SMALL_IMPLANT_SEEDS / max(int(n_seeds), 1)) ** (1.0 / 3.0)
    return DEFAULT_RATIO * min(max(scale, 1.0), MAX_SMALL_IMPLANT_SCALE)


class FastGridEngine:
    """Multilevel grid engine with the interface of :class:`dose.DirectGridEngine` (method "fast").

    ``order``: points per axis of the Lagrange interpolation (4, 6 or 8). ``ratio``: correction
    radius of level k in units of the next coarser spacing, R_k = ratio * H_(k+1). ``stretch``:
    the correction region is a spheroid with semi-axes R_k across and stretch * R_k along the seed
    axis (the kinks of F(theta) are strongest near the axis). The error falls about as
    1 / ratio; the cost grows as stretch * ratio^3 (docs/dose-engine.md). ``top_level``: index
    of the coarsest level (default: chosen by a cost estimate for ``typical_seeds`` seeds).

    Besides ``seed_rate`` and ``seeds_rate`` it offers :meth:`apply_seeds`, an in-place update used
    by :class:`dose.DoseGrid` for seed edits.
    """

    name = "fast"

    def __init__(self, geometry: ImageGeometry, order: int = DEFAULT_ORDER, ratio: float | None = None,
                 stretch: float = DEFAULT_STRETCH, typical_seeds: int = 100, top_level: int | None = None):
        if not (isinstance(typical_seeds, (int, np.integer)) and typical_seeds >= 1):
            raise InputError(f"typical_seeds must be a positive integer, got {typical_seeds!r}")
        if ratio is None:
            ratio = auto_ratio(typical_seeds)
        if order not in MID_WEIGHTS:
            raise InputError(f"interpolation order must be 4, 6 or 8, got {order!r}")
        if not (math.isfinite(ratio) and ratio >= order / 2 + 1):
            raise InputError(f"correction ratio {ratio!r} too small for order {order} (need >= {order / 2 + 1:g})")
        if not (math.isfinite(stretch) and stretch >= 1.0):
            raise InputError(f"stretch must be >= 1, got {stretch!r}")
        self.geometry = geometry
        self.order = int(order)
        self.ratio = float(ratio)
        self.stretch = float(stretch)
        self.weights = MID_WEIGHTS[self.order]
        self._rot = geometry.direction_matrix  # columns: i, j, k unit vectors in RAS
        self._origin = np.asarray(geometry.origin, dtype=float)
        self._tables = {}
        self._buffers = {}
        self._spheroid_cache = {}
        self._work = Scratch()
        self.levels = self._build_levels(typical_seeds, top_level)

    # -- level hierarchy -----------------------------------------------------------------------
    def _build_levels(self, typical_seeds, top_level=None):
        sp = np.array(self.geometry.spacing[::-1], dtype=float)  # array-axis order (k, j, i)
        g = self.order // 2 - 1
        levels = [Level(np.zeros(3), sp, self.geometry.shape)]
        while len(levels) < 12:
            lv = levels[-1]
            shape = np.asarray(lv.shape)
            h = lv.spacing
            factor = np.where((h < 1.5 * h.min() * (1 + 1e-9)) & (shape > self.order), 2, 1)
            if not np.any(factor == 2):
                break
            new_h = h * factor
            new_shape = np.where(factor == 2, -(-(shape - 1) // 2) + 1 + 2 * g, shape)
            new_origin = np.where(factor == 2, lv.origin - g * new_h, lv.origin)
            lv.factor = factor
            levels.append(Level(new_origin, new_h, new_shape))
        axes = self._spheroids(levels, self.ratio)
        # top level: minimise the estimated per-seed cost (corrections below + all top nodes)
        best, best_cost, acc = 0, float(levels[0].n_nodes) * typical_seeds, 0.0
        for k in range(1, len(levels)):
            lv = levels[k - 1]
            A, B = axes[k - 1]
            pts = min(4.0 / 3.0 * math.pi * A * A * B / float(np.prod(lv.spacing)), lv.n_nodes)
            box = min(8.0 * A * A * B / float(np.prod(lv.spacing)) * 1.3, lv.n_nodes)
            acc += (1.5 * pts + 0.4 * box + 2000.0) * typical_seeds + 3.0 * lv.n_nodes
            cost = acc + 1.2 * float(levels[k].n_nodes) * typical_seeds
            if cost < best_cost:
                best, best_cost = k, cost
        if top_level is not None:
            best = min(max(int(top_level), 0), len(levels) - 1)
        levels = levels[:best + 1]
        levels[-1].factor = None
        return levels

    def _spheroids(self, levels, ratio):
        """Correction spheroid semi-axes (across, along the seed axis; mm) of each level but the top.

        Level k corrects every node closer than R_k = ratio * H_(k+1) (at least
        MIN_EXACT_RADIUS_MM on level 0); its spheroid also holds the interpolation stencil nodes of
        level k-1's spheroid, whose exact values it provides.
        """
        out = []
        for k, lv in enumerate(levels):
            if lv.factor is None:
                break
            coarse_h = lv.spacing * lv.factor
            radius = ratio * float(coarse_h[lv.factor == 2].max())
            if k == 0:
                # the near field, where the tables' kinks are densest, stays exact on fine grids
                radius = max(radius, MIN_EXACT_RADIUS_MM)
            across, along = radius, self.stretch * radius
            if k > 0:
                fine = levels[k - 1]
                reach = 0.5 * self.order * float(np.linalg.norm(lv.spacing * (fine.factor == 2))) + 1e-6
                across = max(across, out[-1][0] + reach)
                along = max(along, out[-1][1] + reach)
            out.append((across, along))
        return out

    def kernel_ratio(self, kernel: TG43Kernel) -> float:
        """Correction ratio used for ``kernel``: the engine's, scaled up for rough radial tables."""
        rough = self._table(kernel).roughness
        return self.ratio * min(max(rough / ROUGHNESS_REF, 1.0), MAX_RATIO_SCALE)

    def _kernel_spheroids(self, kernel):
        ratio = self.kernel_ratio(kernel)
        hit = self._spheroid_cache.get(ratio)
        if hit is None:
            hit = self._spheroid_cache[ratio] = self._spheroids(self.levels, ratio)
        return hit

    def describe(self) -> str:
        """Level shapes and spacings, for reports."""
        parts = [f"L{k} {lv.shape[::-1]} @ {np.round(lv.spacing[::-1], 3).tolist()} mm" for k, lv in enumerate(self.levels)]
        return (f"multilevel, order {self.order}, ratio {self.ratio:g}, stretch {self.stretch:g}: "
                + "; ".join(parts))

    # -- helpers -------------------------------------------------------------------------------
    def _table(self, kernel: TG43Kernel) -> KernelTable:
        hit = self._tables.get(id(kernel))
        if hit is None or hit.kernel is not kernel:
            hit = shared_table(kernel)
            self._tables[id(kernel)] = hit
        return hit

    def _buffer(self, key, shape, dtype=np.float32):
        k = (key, tuple(int(x) for x in shape), np.dtype(dtype).str)
        b = self._buffers.get(k)
        if b is None:
            if len(self._buffers) > 256:
                self._buffers.clear()
            b = self._buffers[k] = np.empty(k[1], dtype=dtype)
        return b

    def _to_local(self, positions, axes):
        """Seed positions (mm) and unit axes in the grid frame, array-axis order (k, j, i)."""
        p = (np.asarray(positions, dtype=float).reshape(-1, 3) - self._origin) @ self._rot
        a = np.asarray(axes, dtype=float).reshape(-1, 3) @ self._rot
        n = np.linalg.norm(a, axis=1, keepdims=True)
        if np.any(~np.isfinite(n)) or np.any(n < 1e-12) or np.any(~np.isfinite(p)):
            raise InputError("seed positions must be finite and seed axes non-zero")
        return p[:, ::-1].copy(), (a / n)[:, ::-1].copy()

    def _prolong_axis(self, v, axis, n_out, out=None, add=False, tag=""):
        """Midpoint Lagrange interpolation of ``v`` along ``axis`` (ghosts included) to ``n_out`` nodes."""
        w = self.weights
        p = len(w)
        g = p // 2 - 1
        n_even = (n_out + 1) // 2
        n_odd = n_out // 2
        work = self._work
        pre = (slice(None),) * axis

        def sl(start, stop, step=1):
            return pre + (slice(start, stop, step),)

        shape = list(v.shape)
        shape[axis] = n_out
        if out is None:
            out = work.get(("prolong", tag, axis), int(np.prod(shape)), v.dtype).reshape(shape)
        shape[axis] = n_odd
        if n_odd:
            n_half = int(np.prod(shape))
            # odd nodes: symmetric weights, sum of the mirrored pairs of the stencil
            t1 = work.get(("t1", tag), n_half, v.dtype).reshape(shape)
            t2 = work.get(("t2", tag), n_half, v.dtype).reshape(shape)
            np.add(v[sl(0, n_odd)], v[sl(p - 1, p - 1 + n_odd)], out=t1)
            t1 *= v.dtype.type(w[0])
            for j in range(1, p // 2):
                np.add(v[sl(j, j + n_odd)], v[sl(p - 1 - j, p - 1 - j + n_odd)], out=t2)
                t2 *= v.dtype.type(w[j])
                t1 += t2
        if add:
            out[sl(0, None, 2)] += v[sl(g, g + n_even)]
            if n_odd:
                out[sl(1, None, 2)] += t1
        else:
            out[sl(0, None, 2)] = v[sl(g, g + n_even)]
            if n_odd:
                out[sl(1, None, 2)] = t1
        return out

    def _prolong(self, coarse, factor, out_shape, out=None, add=False, tag="grid"):
        """Interpolate ``coarse`` along the axes with ``factor`` 2 to ``out_shape`` (into ``out``)."""
        axes = [ax for ax in (2, 1, 0) if factor[ax] == 2]
        v = coarse
        for n, ax in enumerate(axes):
            last = n == len(axes) - 1
            v = self._prolong_axis(v, ax, int(out_shape[ax]), out=out if last else None, add=add and last, tag=tag)
        return v

    # -- core ----------------------------------------------------------------------------------
    def _accumulate(self, kernel, positions, axes, strengths, rate, capped=None, counts=None, progress=None):
        """Add the dose rate of the seeds into ``rate`` (float64, grid shape), in place.

        ``capped``: boolean array or None; capped voxels are OR-ed in. ``counts``: int32 array or
        None; each seed adds sign(strength) at its capped voxels (DoseGrid's capped counter).
        """
        if not rate.flags.c_contiguous:  # the corrections are added through flat indices
            work_rate = np.ascontiguousarray(rate)
            self._accumulate(kernel, positions, axes, strengths, work_rate, capped, counts, progress)
            rate[...] = work_rate
            return rate
        table = self._table(kernel)
        spheroids = self._kernel_spheroids(kernel)
        q, a = self._to_local(positions, axes)
        s = np.asarray(strengths, dtype=float).reshape(-1)
        n = len(q)
        levels = self.levels
        top = len(levels) - 1
        work = self._work
        accs = [rate.reshape(-1)] + [self._buffer(("acc", k), (lv.n_nodes,)) for k, lv in enumerate(levels) if k > 0]
        for acc in accs[1:]:
            acc.fill(0.0)
        lt = levels[top]
        top_coords = [lt.origin[ax] + np.arange(lt.shape[ax]) * lt.spacing[ax] for ax in range(3)]
        step = max(1, n // 50)
        corners = np.array([[top_coords[0][x], top_coords[1][y], top_coords[2][z]]
                            for x in (0, -1) for y in (0, -1) for z in (0, -1)])
        r_far = max(float(np.max(np.linalg.norm(corners[None, :, :] - q[:, None, :], axis=2))), 0.0) * 0.1
        self._check_far = r_far >= table.r_table_max
        n_top = lt.n_nodes
        for i in range(n):
            # the seed's zones (finest level last; none below a level without zone nodes)
            zones = []
            for k in range(top - 1, -1, -1):
                zone = levels[k].zone(q[i], a[i], spheroids[k])
                if zone is None:
                    break
                zones.append((k, zone, zone.nodes(work, k)))
            # the exact kernel at the top level's nodes and at every zone node, in one evaluation
            n_all = n_top + sum(nodes[0].size for _, _, nodes in zones)
            r2, z, rho2 = (work.get(name, n_all) for name in ("r2", "z", "rho2"))
            d = [(top_coords[ax] - q[i, ax]) * 0.1 for ax in range(3)]
            table.grid_geometry(d[0], d[1], d[2], a[i], r2[:n_top], z[:n_top], rho2[:n_top])
            offsets = [n_top]
            for k, zone, (gidx, bidx, d2, per) in zones:
                o0, o1 = offsets[-1], offsets[-1] + gidx.size
                table.runs_geometry(d2, per, a[i], r2[o0:o1], z[o0:o1], rho2[o0:o1], work)
                offsets.append(o1)
            exact = table.evaluate(r2, z, rho2, s[i], self._check_far, work, out=work.get("exact", n_all))
            dense = exact[:n_top]
            accs[top] += dense
            prev, prev_start = dense.reshape(lt.shape), np.zeros(3, dtype=np.int64)
            for j, (k, zone, (gidx, bidx, _, _)) in enumerate(zones):
                prev = self._correct(k, zone, exact[offsets[j]:offsets[j + 1]], gidx, bidx, prev, prev_start, accs[k])
                prev_start = zone.start
            if progress is not None and ((i + 1) % step == 0 or i + 1 == n):
                _progress.report(progress, 0.97 * (i + 1) / n, f"dose: seed {i + 1} of {n}")
        if capped is not None or counts is not None:
            self._capped(kernel, q, s, capped, counts)
        if top > 0:
            v = accs[top].reshape(lt.shape)
            for k in range(top - 1, -1, -1):
                target = rate if k == 0 else accs[k].reshape(levels[k].shape)
                v = self._prolong(v, levels[k].factor, levels[k].shape, out=target, add=True)
        # keep the per-seed work arrays, not grid-sized ones (few seeds: the top level is the grid)
        work.trim(_KEEP_WORK_BYTES)
        return rate

    def _correct(self, k, zone, exact, gidx, bidx, prev, prev_start, target):
        """Level-k correction of one seed: at its zone's nodes (flat indices ``gidx`` in the level,
        ``bidx`` in the zone's box), the exact kernel ``exact`` minus the interpolation of its
        exact level-(k+1) samples ``prev`` (first node at ``prev_start``) is added into ``target``
        (flat). Returns the seed's exact level-k values on the zone's box (zero elsewhere; the
        samples for level k-1, whose stencils stay inside this zone), or None on level 0."""
        lv = self.levels[k]
        work = self._work
        n = gidx.size
        # interpolation of the seed's own level-(k+1) samples onto the zone's box
        start, size = zone.start, zone.size
        cstart = [int(b) // 2 if f == 2 else int(b) for b, f in zip(start, lv.factor)]
        csize = [int(n) // 2 + self.order - 1 if f == 2 else int(n) for n, f in zip(size, lv.factor)]
        block = extract_block(prev, prev_start, cstart, csize)
        interp = self._prolong(block, lv.factor, size, tag="box").reshape(-1)
        interp_at = work.get("interp_at", n)
        np.take(interp, bidx, out=interp_at, mode="clip")
        corr = work.get(("corr", target.dtype.char), n, target.dtype)
        np.subtract(exact, interp_at, out=corr)
        if _FAST_ADD_AT:
            np.add.at(target, gidx, corr)
        else:
            target[gidx] += corr
        if k == 0:
            return None
        n_box = int(size[0] * size[1] * size[2])
        box = work.get(("box", k), n_box)
        box.fill(0.0)
        box[bidx] = exact
        return box.reshape(tuple(int(x) for x in size))

    def _capped(self, kernel, q, s, capped, counts):
        """Voxels closer than the cap radius to each seed (float64, as TG43Kernel decides).

        ``q`` (n, 3) seed positions in the grid frame, ``s`` (n,) strengths. All seeds at once:
        every seed's small box around its cap sphere, as offsets from the box's first voxel.
        """
        lv = self.levels[0]
        rc_mm = kernel.r_cap_cm * 10.0
        shape = np.asarray(lv.shape)
        lo = np.maximum(np.floor((q - rc_mm - lv.origin) / lv.spacing).astype(np.int64), 0)
        hi = np.minimum(np.ceil((q + rc_mm - lv.origin) / lv.spacing).astype(np.int64), shape - 1)
        keep = np.all(hi >= lo, axis=1)
        if not np.any(keep):
            return
        q, s, lo, hi = q[keep], s[keep], lo[keep], hi[keep]
        m = int((hi - lo).max()) + 1
        off = np.arange(m)
        idx = lo[:, :, None] + off  # (n, 3, m) voxel index per axis
        inside = idx <= hi[:, :, None]
        d = (lv.origin[None, :, None] + idx * lv.spacing[None, :, None] - q[:, :, None]) * 0.1
        r = np.sqrt(d[:, 0, :, None, None] ** 2 + d[:, 1, None, :, None] ** 2 + d[:, 2, None, None, :] ** 2)
        hit = (r < kernel.r_cap_cm) & inside[:, 0, :, None, None] & inside[:, 1, None, :, None] & \
            inside[:, 2, None, None, :]
        seed, i0, i1, i2 = np.nonzero(hit)
        if seed.size == 0:
            return
        vox = (idx[seed, 0, i0], idx[seed, 1, i1], idx[seed, 2, i2])
        if capped is not None:
            capped[vox] = True
        if counts is not None:
            np.add.at(counts, vox, np.where(s[seed] > 0, 1, -1).astype(counts.dtype))

    # -- engine interface ----------------------------------------------------------------------
    def seed_rate(self, kernel: TG43Kernel, position, axis, strength_U):
        """Dose-rate array (cGy/h, grid shape) of one seed, and its capped-voxel mask."""
        rate = np.zeros(self.geometry.shape)
        capped = np.zeros(self.geometry.shape, dtype=bool)
        self._accumulate(kernel, [position], [axis], [strength_U], rate, capped=capped)
        return rate, capped

    def seeds_rate(self, kernel: TG43Kernel, positions, axes, strengths, progress=None):
        """Summed dose rate of several seeds of one model, and the union of capped voxels."""
        rate = np.zeros(self.geometry.shape)
        capped = np.zeros(self.geometry.shape, dtype=bool)
        if len(np.asarray(positions).reshape(-1, 3)):
            self._accumulate(kernel, positions, axes, strengths, rate, capped=capped, progress=progress)
        _progress.report(progress, 1.0, "dose: done")
        return rate, capped

    def apply_seeds(self, rate, capped_count, kernel: TG43Kernel, positions, axes, signed_strengths):
        """In place: ``rate += sum_s rate_s`` and ``capped_count += sign_s`` at each seed's capped voxels.

        A negative strength removes a seed (its capped voxels count -1): a move is one call with
        the old seed at -S and the new one at +S. Used by :class:`dose.DoseGrid` for edits.
        """
        if rate.shape != self.geometry.shape or rate.dtype != np.float64:
            raise InputError(f"rate array must be float64 of shape {self.geometry.shape}")
        self._accumulate(kernel, positions, axes, signed_strengths, rate, counts=capped_count)
