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
from .tg43 import TG43Kernel, interp_anisotropy, interp_clamped, interp_radial

#: Lagrange weights for interpolation at the midpoint of the central interval, by stencil size.
_MID_WEIGHTS = {
    4: np.array([-1.0, 9.0, 9.0, -1.0]) / 16.0,
    6: np.array([3.0, -25.0, 150.0, 150.0, -25.0, 3.0]) / 256.0,
    8: np.array([-5.0, 49.0, -245.0, 1225.0, 1225.0, -245.0, 49.0, -5.0]) / 2048.0,
}

#: Radius (cm) covered by the lookup table; farther points use the exact kernel directly.
TABLE_R_MAX_CM = 60.0

DEFAULT_ORDER = 6
DEFAULT_RATIO = 6.0
DEFAULT_STRETCH = 3.0
#: Level-0 correction radius is at least this (mm): seeds' exact zone does not shrink on fine grids.
MIN_EXACT_RADIUS_MM = 12.0
#: Radial-table roughness (largest relative slope jump x r over ROUGHNESS_RANGE_CM) at which the
#: default ratio applies (model 6711's g_L: 0.52). Rougher kernels get a ratio scaled up in
#: proportion, at most by MAX_RATIO_SCALE, so that their first-order kink error stays comparable.
ROUGHNESS_REF = 0.55
ROUGHNESS_RANGE_CM = (1.0, 5.0)
OFF_AXIS_DEG = 20.0
MAX_RATIO_SCALE = 2.0

#: Implants of fewer seeds than this get a larger correction ratio (their errors average less,
#: and the larger exact zones cost little when there are few seeds): ratio = DEFAULT_RATIO *
#: (SMALL_IMPLANT_SEEDS / n)^(1/3), at most MAX_SMALL_IMPLANT_SCALE times the default.
SMALL_IMPLANT_SEEDS = 100
MAX_SMALL_IMPLANT_SCALE = 3.0

_F32 = np.float32
#: np.add.at has a fast path from numpy 1.25 on; before, it was about 30x slower than a fancy-index
#: addition, which is equivalent for indices without repeats (one zone's nodes).
_FAST_ADD_AT = np.lib.NumpyVersion(np.__version__) >= "1.25.0"
#: Work arrays larger than this are released after each computation (bytes).
_KEEP_WORK_BYTES = 32 * 2 ** 20
#: Points per pass of the kernel evaluation (bounds the work arrays; smaller chunks were not faster).
EVAL_CHUNK = 65536


def auto_ratio(n_seeds: int) -> float:
    """Default correction ratio for an implant of about ``n_seeds`` seeds (see SMALL_IMPLANT_SEEDS)."""
    scale = (SMALL_IMPLANT_SEEDS / max(int(n_seeds), 1)) ** (1.0 / 3.0)
    return DEFAULT_RATIO * min(max(scale, 1.0), MAX_SMALL_IMPLANT_SCALE)
_TINY = _F32(1e-30)


def _common_step(values, candidates):
    """Largest candidate step of which every value is an integer multiple (None if none)."""
    v = np.asarray(values, dtype=float)
    for step in candidates:
        q = v / step
        if np.all(np.abs(q - np.round(q)) < 1e-6):
            return step
    return None


def _roughness(r, f, r_lo=ROUGHNESS_RANGE_CM[0], r_hi=ROUGHNESS_RANGE_CM[1]):
    """max |slope jump| * r / f over the interior table nodes r_lo <= r <= r_hi (0 if none)."""
    r = np.asarray(r, dtype=float)
    f = np.asarray(f, dtype=float)
    if r.size < 3:
        return 0.0
    slope = np.diff(f) / np.diff(r)
    ri, fi = r[1:-1], f[1:-1]
    jump = np.abs(np.diff(slope)) * ri / np.where(fi > 0, fi, np.inf)
    sel = (ri >= r_lo) & (ri <= r_hi)
    return float(jump[sel].max()) if np.any(sel) else 0.0


class KernelTable:
    """Fast float32 evaluation of one :class:`TG43Kernel`.

    2D: rate/U = (Lambda / G_L(r0, theta0)) * G_L(r, theta) * g_L(r) * F(r, theta); the product
    g_L F is tabulated on a uniform (r, theta) grid (steps ``dr``, ``dtheta_deg``) whose nodes
    include every tabulated radius of g_L and F and every tabulated angle of F, so bilinear lookup
    is exact for both factors (piecewise linear) up to the product term g' F_r dr^2 / 4 (< 1e-5);
    G_L is computed analytically. 1D: the same with g(r) phi_an(r) tabulated in r and the
    geometry factor G_L(r, theta0) (line) or 1 / r^2 (point) computed analytically.
    Radii below the kernel's cap radius are evaluated at the cap radius along the same direction,
    exactly as TG43Kernel does. Each table cell stores [v, dt, dr, drt] (corner value and its
    theta, radial and mixed differences), so one lookup is one 16-byte gather and the bilinear
    value is v + wt dt + wr (dr + wt drt). Points beyond ``r_table_max`` use the exact kernel.

    Evaluation (:meth:`evaluate`) runs as in-place passes over work arrays that the caller keeps
    (:class:`_Scratch`), so the per-seed loops of the engine allocate almost nothing.
    """

    R_STEPS = (0.01, 0.005, 0.0025, 0.002, 0.001)
    THETA_STEPS = (5.0, 2.5, 2.0, 1.0, 0.5, 0.25, 0.2, 0.1, 0.05)

    def __init__(self, kernel: TG43Kernel):
        self.kernel = kernel
        m = kernel.model
        self.two_d = kernel.formalism == "2D"
        self.L = float(m.active_length_cm)
        self.r_cap = float(kernel.r_cap_cm)
        if self.two_d:
            breaks = np.concatenate([m.g_r_cm, m.F_r_cm])
        else:
            breaks = np.concatenate([m.g_r_cm, m.phi_r_cm])
        # a kink off the table nodes would cost at most 0.25 * slope jump * dr (dr = 0.001 cm)
        self.dr = _common_step(breaks, self.R_STEPS) or self.R_STEPS[-1]
        n_r = int(math.ceil(TABLE_R_MAX_CM / self.dr)) + 2
        r = np.arange(n_r) * self.dr
        self.mirror = True
        if self.two_d:
            self.mirror = bool(m.F_theta_deg[-1] <= 90.0)
            t_max = 90.0 if self.mirror else 180.0
            self.dtheta_deg = _common_step(m.F_theta_deg, self.THETA_STEPS) or self.THETA_STEPS[-1]
            n_t = int(round(t_max / self.dtheta_deg)) + 1
            theta = np.arange(n_t) * self.dtheta_deg
            g = interp_radial(r, m.g_r_cm, m.g_L)
            f = interp_anisotropy(r[:, None], theta[None, :], m.F_r_cm, m.F_theta_deg, m.F)
            table = (m.dose_rate_constant / kernel.g0) * g[:, None] * f
            self.inv_dtheta_rad = float(180.0 / math.pi / self.dtheta_deg)
        else:
            self.line_1d = kernel.geometry_1d == "line"
            if self.line_1d:
                const = m.dose_rate_constant / kernel.g0
                g = interp_radial(r, m.g_r_cm, m.g_L)
            else:
                const = m.dose_rate_constant
                g = interp_radial(r, m.g_r_cm, m.g_P)
            table = (const * g * interp_clamped(r, m.phi_r_cm, m.phi_an))[:, None]
            self.inv_dtheta_rad = 0.0
        # one spare column (theta = theta_max falls in a valid cell), then four corners per cell
        table = np.concatenate([table, table[:, -1:]], axis=1)
        self.n_r = table.shape[0]
        self.n_cells_t = table.shape[1] - 1
        # per cell [v, dt, dr, drt]: bilinear value v + wt dt + wr (dr + wt drt) (wt, wr in [0, 1])
        v00, v01, v10, v11 = table[:-1, :-1], table[:-1, 1:], table[1:, :-1], table[1:, 1:]
        corners = np.stack([v00, v01 - v00, v10 - v00, (v11 - v10) - (v01 - v00)], axis=-1)
        self.cells = np.ascontiguousarray(corners, dtype=np.float32).view(np.complex128).reshape(-1)
        self.inv_dr = float(1.0 / self.dr)
        self._float_index = self.cells.size < 2 ** 24
        self.r_table_max = (self.n_r - 2) * self.dr
        if self.two_d:
            # F rows near the axis are left out: the zone stretched along the axis covers them
            off_axis = (m.F_theta_deg >= OFF_AXIS_DEG) & (m.F_theta_deg <= 180.0 - OFF_AXIS_DEG)
            rough = [_roughness(m.g_r_cm, m.g_L)] + [_roughness(m.F_r_cm, row) for row in m.F[off_axis]]
        else:
            rough = [_roughness(m.g_r_cm, m.g_L if self.line_1d else m.g_P), _roughness(m.phi_r_cm, m.phi_an)]
        #: largest relative slope jump x r of the radial tables in [1, 5] cm (dimensionless; F rows
        #: at theta >= 20 deg)
        self.roughness = float(max(rough))

    # -- evaluation ------------------------------------------------------------------------------
    def eval_runs(self, d2, per, axis, strength, check_far=True, work=None, out=None):
        """Dose rate (cGy/h) of one seed at nodes given by runs along array axis 2.

        ``d2`` (N,) float32: node minus seed along axis 2 (cm); ``per`` (5, N) float32: the values
        of the node's run, [d0^2 + d1^2, a0 d0 + a1 d1, d1 a2, d0 a2, (d0 a1 - d1 a0)^2] (cm).
        Returns float32 (N,) (``out`` if given).
        """
        work = work if work is not None else _Scratch()
        n = int(d2.shape[0])
        r2, z, rho2 = (work.get(name, n) for name in ("r2", "z", "rho2"))
        self.runs_geometry(d2, per, axis, r2, z, rho2, work)
        return self.evaluate(r2, z, rho2, strength, check_far, work, out)

    def runs_geometry(self, d2, per, axis, r2, z, rho2, work):
        """r^2, z = d.a and rho^2 = |d x a|^2 at run nodes (see :meth:`eval_runs`) into ``r2``,
        ``z``, ``rho2`` (float32 (N,)); rho^2 from separable pieces (no cancellation near the axis).
        z and rho^2 only for 2D kernels."""
        np.multiply(d2, d2, out=r2)
        r2 += per[0]
        if not self.two_d:
            return
        a0, a1, a2 = (_F32(x) for x in axis)
        np.multiply(d2, a2, out=z)
        z += per[1]
        c = work.get("tmp", d2.shape[0])
        np.multiply(d2, a1, out=c)
        np.subtract(per[2], c, out=c)
        np.multiply(c, c, out=rho2)
        np.multiply(d2, a0, out=c)
        c -= per[3]
        c *= c
        rho2 += c
        rho2 += per[4]

    def on_grid(self, d0, d1, d2, axis, strength, check_far=True, work=None, out=None):
        """Dose rate (cGy/h) of one seed on a separable grid: ``d0`` (n0,) etc. in cm (float64).

        Returns float32 of shape (n0, n1, n2) (``out``, flat or shaped, if given).
        """
        work = work if work is not None else _Scratch()
        d0, d1, d2 = (np.asarray(d, dtype=float).reshape(-1) for d in (d0, d1, d2))
        shape = (d0.size, d1.size, d2.size)
        n = shape[0] * shape[1] * shape[2]
        r2, z, rho2 = (work.get(name, n) for name in ("r2", "z", "rho2"))
        self.grid_geometry(d0, d1, d2, axis, r2, z, rho2)
        return self.evaluate(r2, z, rho2, strength, check_far, work, out).reshape(shape)

    def grid_geometry(self, d0, d1, d2, axis, r2, z, rho2):
        """r^2, z = d.a and rho^2 = |d x a|^2 on the separable grid ``d0`` x ``d1`` x ``d2`` (cm,
        float64) into ``r2``, ``z``, ``rho2`` (float32, flat); z and rho^2 only for 2D kernels."""
        shape = (d0.size, d1.size, d2.size)
        a = np.asarray(axis, dtype=float)
        np.add(((d0 * d0)[:, None] + (d1 * d1)[None, :]).astype(_F32)[..., None], (d2 * d2).astype(_F32),
               out=r2.reshape(shape))
        if not self.two_d:
            return
        np.add(((d0 * a[0])[:, None] + (d1 * a[1])[None, :]).astype(_F32)[..., None], (d2 * a[2]).astype(_F32),
               out=z.reshape(shape))
        # rho^2 = |d x a|^2 from separable pieces (no cancellation near the axis)
        c0 = (d1[:, None] * a[2] - d2[None, :] * a[1]).astype(_F32)
        c1 = (d2[None, :] * a[0] - d0[:, None] * a[2]).astype(_F32)
        c2 = (d0[:, None] * a[1] - d1[None, :] * a[0]).astype(_F32)
        rho2_3 = rho2.reshape(shape)
        np.add((c0 * c0)[None, :, :], (c1 * c1)[:, None, :], out=rho2_3)
        rho2_3 += (c2 * c2)[:, :, None]

    def evaluate(self, r2, z, rho2, strength, check_far=True, work=None, out=None):
        """Dose rate (cGy/h) from r^2, z = d.a and rho^2 = |d x a|^2 (cm^2, cm; flat float32 (N,)).

        ``r2``, ``z`` and ``rho2`` are work arrays: they are overwritten. Returns ``out`` (float32
        (N,); a work array if not given). The cap rule is applied to the (few) capped points only,
        by moving them to ``r_cap`` along their direction; then chunks of at most ``EVAL_CHUNK``
        points go through in-place passes over reused work arrays (nothing is allocated).
        """
        work = work if work is not None else _Scratch()
        n = int(r2.shape[0])
        if not self.two_d:
            z = rho2 = None  # 1D: r only
        if out is None:
            out = work.get("out", n)
        out = out.reshape(-1)
        if n and float(r2.min()) < self.r_cap * self.r_cap:
            self._apply_cap(r2, z, rho2)
        for c0 in range(0, n, EVAL_CHUNK):
            c1 = min(n, c0 + EVAL_CHUNK)
            self._evaluate_chunk(r2[c0:c1], None if z is None else z[c0:c1], None if rho2 is None else rho2[c0:c1],
                                 strength, check_far, work, out[c0:c1])
        return out

    def _evaluate_chunk(self, r2, z, rho2, strength, check_far, work, out):
        n = int(r2.shape[0])
        # radial cell and weight
        fr = work.get("fr", n)
        np.sqrt(r2, out=fr)
        r_1d = None
        if not self.two_d:
            r_1d = work.get("r1d", n)
            np.copyto(r_1d, fr)
        fr *= _F32(self.inv_dr)
        cell = work.get("cell_f", n)
        np.floor(fr, out=cell)
        fr -= cell  # radial weight
        far = None
        if check_far and float(cell.max()) > self.n_r - 2:
            far = np.flatnonzero(cell > self.n_r - 2)
            rr = np.sqrt(r2[far].astype(float))
            cz = np.zeros_like(rr) if z is None else z[far].astype(float) / np.maximum(rr, 1e-30)
            cell[far] = self.n_r - 2
        idx = work.get("cell", n, np.intp)
        if self.two_d:
            rho = np.sqrt(rho2, out=rho2)
            zz = np.abs(z, out=z) if self.mirror else z
            ft = np.arctan2(rho, zz, out=z)
            ft *= _F32(self.inv_dtheta_rad)
            flo = work.get("floor_t", n)
            np.floor(ft, out=flo)
            ft -= flo  # angular weight
            if self._float_index:
                # cell index r_cell * n_t + theta_cell, exact in float32 (table below 2^24 cells)
                cell *= _F32(self.n_cells_t)
                cell += flo
                np.copyto(idx, cell, casting="unsafe")
            else:
                np.copyto(idx, cell, casting="unsafe")
                idx *= self.n_cells_t
                it = work.get("cell_t", n, np.intp)
                np.copyto(it, flo, casting="unsafe")
                idx += it
            # line-source geometry G_L = atan2(L rho, r^2 - L^2 / 4) / (L rho), into flo
            lrho = rho
            lrho *= _F32(self.L)
            if not float(lrho.min()) > 0.0:
                np.maximum(lrho, _TINY, out=lrho)  # on the axis: G_L -> 1 / (r^2 - L^2 / 4)
            geo = flo
            np.subtract(r2, _F32(0.25 * self.L * self.L), out=geo)
            np.arctan2(lrho, geo, out=geo)
            geo /= lrho
        else:
            np.copyto(idx, cell, casting="unsafe")
        # one gather per point: the cell's [v, dt, dr, drt]; bilinear v + wt dt + wr (dr + wt drt)
        cq = work.get("cells", n, np.complex128)
        np.take(self.cells, idx, out=cq, mode="clip")
        q = cq.view(np.float32).reshape(n, 4)
        if self.two_d:
            wt = ft
            np.multiply(q[:, 1], wt, out=out)
            out += q[:, 0]
            wt *= q[:, 3]
            wt += q[:, 2]
            wt *= fr
            out += wt
            out *= geo
        else:
            np.multiply(q[:, 2], fr, out=out)
            out += q[:, 0]
            if self.line_1d:
                # G_L(r, 90 deg) = 2 atan(L / 2r) / (L r)
                geo = cell
                np.arctan2(_F32(0.5 * self.L), r_1d, out=geo)
                geo /= r_1d
                geo *= _F32(2.0 / self.L)
                out *= geo
            else:
                out /= r2
        out *= _F32(strength)
        if far is not None:
            rate, _ = self.kernel.dose_rate_per_U(rr, cz)
            out[far] = (rate * strength).astype(np.float32)
        return out

    def _apply_cap(self, r2, z, rho2):
        """Move points closer than r_cap to r_cap along their direction (the kernel's cap rule;
        r = 0: on the axis, theta = 0), in place; float64 for the (few) points concerned."""
        rc = self.r_cap
        cap = np.flatnonzero(r2 < _F32(rc * rc))
        if cap.size == 0:
            return
        r = np.sqrt(r2[cap].astype(float))
        f = rc / np.maximum(r, 1e-30)
        r2[cap] = _F32(rc * rc)
        if z is not None:
            z[cap] = (z[cap] * f).astype(np.float32)
            rho2[cap] = (rho2[cap] * (f * f)).astype(np.float32)


class _Scratch:
    """Named work arrays reused between calls (grown when needed): the hot loops allocate nothing."""

    def __init__(self):
        self._arrays = {}

    def get(self, name, n, dtype=np.float32):
        a = self._arrays.get(name)
        if a is None or a.size < n or a.dtype != dtype:
            size = max(int(n), 1024) if a is None or a.dtype != dtype else max(int(n), int(1.25 * a.size))
            a = self._arrays[name] = np.empty(size, dtype=dtype)
        return a[:n]

    def trim(self, max_bytes):
        """Drop the arrays larger than ``max_bytes`` (kept between calls otherwise)."""
        for name in [k for k, a in self._arrays.items() if a.nbytes > max_bytes]:
            del self._arrays[name]


class _Level:
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
        along the axis) in mm. Returns None if no node is inside, else a :class:`_Zone`: the runs
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
        return _Zone(np.array(box_lo), np.array(box_size), counts, rows, first_mm, gbase, bbase, h[2])


class _Zone:
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
        if order not in _MID_WEIGHTS:
            raise InputError(f"interpolation order must be 4, 6 or 8, got {order!r}")
        if not (math.isfinite(ratio) and ratio >= order / 2 + 1):
            raise InputError(f"correction ratio {ratio!r} too small for order {order} (need >= {order / 2 + 1:g})")
        if not (math.isfinite(stretch) and stretch >= 1.0):
            raise InputError(f"stretch must be >= 1, got {stretch!r}")
        self.geometry = geometry
        self.order = int(order)
        self.ratio = float(ratio)
        self.stretch = float(stretch)
        self.weights = _MID_WEIGHTS[self.order]
        self._rot = geometry.direction_matrix  # columns: i, j, k unit vectors in RAS
        self._origin = np.asarray(geometry.origin, dtype=float)
        self._tables = {}
        self._buffers = {}
        self._spheroid_cache = {}
        self._work = _Scratch()
        self.levels = self._build_levels(typical_seeds, top_level)

    # -- level hierarchy -----------------------------------------------------------------------
    def _build_levels(self, typical_seeds, top_level=None):
        sp = np.array(self.geometry.spacing[::-1], dtype=float)  # array-axis order (k, j, i)
        g = self.order // 2 - 1
        levels = [_Level(np.zeros(3), sp, self.geometry.shape)]
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
            levels.append(_Level(new_origin, new_h, new_shape))
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
            hit = _shared_table(kernel)
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
        block = _extract(prev, prev_start, cstart, csize)
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


def _extract(dense, start, cstart, csize):
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


_TABLE_CACHE = {}


def _shared_table(kernel: TG43Kernel) -> KernelTable:
    """One KernelTable per kernel object, shared between engines (kept while the kernel lives)."""
    hit = _TABLE_CACHE.get(id(kernel))
    if hit is None or hit.kernel is not kernel:
        if len(_TABLE_CACHE) > 32:
            _TABLE_CACHE.clear()
        hit = _TABLE_CACHE[id(kernel)] = KernelTable(kernel)
    return hit
