"""Fast float32 lookup of one TG-43 kernel (:class:`KernelTable`) and the work arrays it evaluates into.

Same physics as :class:`tg43.TG43Kernel` (same tables, interpolation, extrapolation and cap rule):
g F (2D) or g phi_an (1D) tabulated on a uniform grid whose nodes include every tabulated radius and
angle, so bilinear lookup reproduces TG-43's piecewise-linear interpolation; the line-source
geometry factor is computed analytically. Used by the multilevel grid engine (:mod:`fastdose`) and
by the optimizer's influence matrix (one tabulation of the kernel in the product).
"""

from __future__ import annotations

import math

import numpy as np

from .tg43 import TG43Kernel, interp_anisotropy, interp_clamped, interp_radial

#: Radius (cm) covered by the lookup table; farther points use the exact kernel directly.
TABLE_R_MAX_CM = 60.0
#: Radial range (cm) and off-axis angle (deg) over which a kernel's table roughness is measured
#: (:attr:`KernelTable.roughness`; the engine scales its correction ratio by it).
ROUGHNESS_RANGE_CM = (1.0, 5.0)
OFF_AXIS_DEG = 20.0

_F32 = np.float32
#: Points per pass of the kernel evaluation (bounds the work arrays; smaller chunks were not faster).
EVAL_CHUNK = 65536
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
    (:class:`Scratch`), so the per-seed loops of the engine allocate almost nothing.
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
        work = work if work is not None else Scratch()
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
        work = work if work is not None else Scratch()
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
        work = work if work is not None else Scratch()
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


class Scratch:
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


_TABLE_CACHE = {}


def shared_table(kernel: TG43Kernel) -> KernelTable:
    """One KernelTable per kernel object, shared between engines (kept while the kernel lives)."""
    hit = _TABLE_CACHE.get(id(kernel))
    if hit is None or hit.kernel is not kernel:
        if len(_TABLE_CACHE) > 32:
            _TABLE_CACHE.clear()
        hit = _TABLE_CACHE[id(kernel)] = KernelTable(kernel)
    return hit
