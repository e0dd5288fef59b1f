"""Dose from a set of seeds: at points and on image grids, with incremental seed edits.

Quantities (TG-43U1, permanent implant, each seed with its own model and axis):
- initial dose rate Ddot0 in cGy/h (sum over seeds at the implant date);
- total dose to full decay in Gy:   D = sum_models Ddot0_m * tau_m / 100, tau = T1/2 / ln 2;
- dose accumulated up to t hours:    D(t) = sum_models Ddot0_m * tau_m * (1 - exp(-t/tau_m)) / 100.

:class:`DoseGrid` keeps one dose-rate array per seed model, so seeds of several nuclides mix
correctly, and supports adding, moving and removing a seed without recomputing the others.
The per-seed grid computation is delegated to a *grid engine*: ``"direct"`` evaluates the
TG-43 kernel at every voxel (the reference), ``"fast"`` uses the multilevel engine of
:mod:`fastdose` (same physics, see its module doc for accuracy).
"""

from __future__ import annotations

import math

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from ..core.memory import require_memory
from .seeds import SeedSet, xyz_rows
from .sources import SeedModel, get_model
from .tg43 import TG43Kernel

QUANTITIES = ("total", "rate", "to_time")


def dose_factor_h(model: SeedModel, quantity="total", t_hours=None) -> float:
    """Hours that convert an initial dose rate (cGy/h) to dose (cGy) for ``quantity``."""
    tau = model.mean_life_h
    if quantity == "total":
        return tau
    if quantity == "rate":
        return 1.0
    if quantity == "to_time":
        if t_hours is None or not math.isfinite(t_hours) or t_hours < 0:
            raise InputError(f"time t must be a finite number of hours >= 0, got {t_hours!r}")
        return tau * (1.0 - math.exp(-float(t_hours) / tau))
    raise InputError(f"unknown dose quantity {quantity!r} (use one of {', '.join(QUANTITIES)})")


def kernels_for(seeds: SeedSet, formalism="2D", model_dirs=()) -> dict:
    """``{model_id: TG43Kernel}`` for the models used by ``seeds``; unknown ids raise."""
    return {m: TG43Kernel(get_model(m, model_dirs), formalism) for m in dict.fromkeys(seeds.models)}


def dose_rate_at_points(points_mm, seeds: SeedSet, formalism="2D", model_dirs=(), per_model=False):
    """Initial dose rate (cGy/h) of all ``seeds`` at ``points_mm`` (M, 3), plus capped-point count.

    With ``per_model`` the first value is ``{model_id: rate array}`` instead of the sum.
    """
    pts = xyz_rows(points_mm, "points")
    kernels = kernels_for(seeds, formalism, model_dirs)
    rates = {m: np.zeros(len(pts)) for m in kernels}
    capped = np.zeros(len(pts), dtype=bool)
    for i in range(len(seeds)):
        k = kernels[seeds.models[i]]
        r, c = k.dose_rate_at_points(pts, seeds.positions[i], seeds.axes[i], seeds.strengths_U[i])
        rates[seeds.models[i]] += r
        capped |= c
    if per_model:
        return rates, int(capped.sum())
    return sum(rates.values()) if rates else np.zeros(len(pts)), int(capped.sum())


def dose_at_points_Gy(points_mm, seeds: SeedSet, formalism="2D", quantity="total", t_hours=None, model_dirs=()):
    """Dose (Gy) at points for ``quantity``; returns (dose, initial rate cGy/h, capped count)."""
    rates, n_capped = dose_rate_at_points(points_mm, seeds, formalism, model_dirs, per_model=True)
    pts = xyz_rows(points_mm, "points")
    dose = np.zeros(len(pts))
    total_rate = np.zeros(len(pts))
    for m, r in rates.items():
        dose += r * dose_factor_h(get_model(m, model_dirs), quantity, t_hours) / 100.0
        total_rate += r
    return dose, total_rate, n_capped


class DirectGridEngine:
    """Reference grid engine: the TG-43 kernel evaluated at every voxel centre (float64)."""

    name = "direct"

    def __init__(self, geometry: ImageGeometry):
        self.geometry = geometry
        self._centers = geometry.voxel_centers_ras().reshape(-1, 3)

    def seed_rate(self, kernel: TG43Kernel, position, axis, strength_U):
        """Dose-rate array (cGy/h, grid shape) of one seed, and its capped-voxel mask."""
        rate, capped = kernel.dose_rate_at_points(self._centers, position, axis, strength_U)
        return rate.reshape(self.geometry.shape), capped.reshape(self.geometry.shape)

    def seeds_rate(self, kernel: TG43Kernel, positions, axes, strengths, progress=None):
        """Summed dose rate of several seeds of one model, and the union of capped voxels."""
        out = np.zeros(self.geometry.shape)
        capped = np.zeros(self.geometry.shape, dtype=bool)
        n = len(positions)
        for i in range(n):
            r, c = self.seed_rate(kernel, positions[i], axes[i], strengths[i])
            out += r
            capped |= c
            _progress.report(progress, (i + 1) / max(n, 1), f"dose: seed {i + 1} of {n}")
        return out, capped


def make_engine(geometry: ImageGeometry, method="fast", n_seeds=None):
    """Grid engine by name: 'fast' (multilevel, default) or 'direct' (reference).

    ``n_seeds`` (the expected number of seeds) lets the fast engine size its levels and exact
    zones: a few seeds are computed exactly or with larger exact zones.
    """
    if method == "direct":
        return DirectGridEngine(geometry)
    if method == "fast":
        from .fastdose import FastGridEngine
        return FastGridEngine(geometry, typical_seeds=int(n_seeds) if n_seeds else 100)
    raise InputError(f"unknown dose engine {method!r} (use fast or direct)")


#: Peak bytes per grid voxel of a dose computation, measured (ru_maxrss) on 200^3 grids with 5-200
#: seeds of one model, float32 output copy included: fast engine ~47, direct engine ~250 (its kernel
#: temporaries at every voxel). Each further seed model adds one float64 rate array.
BYTES_PER_VOXEL = {"fast": 56, "direct": 260}
BYTES_PER_VOXEL_PER_EXTRA_MODEL = 8


def estimate_grid_bytes(geometry: ImageGeometry, n_models=1, method="fast") -> int:
    """Estimated peak memory (bytes) of a dose computation on ``geometry`` (see :data:`BYTES_PER_VOXEL`)."""
    per_voxel = BYTES_PER_VOXEL.get(method, max(BYTES_PER_VOXEL.values()))
    per_voxel += BYTES_PER_VOXEL_PER_EXTRA_MODEL * max(int(n_models) - 1, 0)
    return int(geometry.n_voxels) * per_voxel


def require_grid_memory(geometry: ImageGeometry, n_models=1, method="fast"):
    """Raise ResourceError (with the estimate) if a dose grid on ``geometry`` would not fit in memory."""
    require_memory(estimate_grid_bytes(geometry, n_models, method),
                   f"dose grid of {geometry.size[0]} x {geometry.size[1]} x {geometry.size[2]} voxels "
                   f"({geometry.n_voxels:.3g} voxels at {', '.join(f'{v:g}' for v in geometry.spacing)} mm)",
                   "use a coarser spacing, a smaller box or --crop-margin")


class DoseGrid:
    """Dose on an image grid from a seed set, kept up to date under seed edits.

    ``rate_by_model[model_id]`` holds the initial dose rate (cGy/h) of that model's seeds.
    Seeds are addressed by their index in :attr:`seeds`.
    """

    def __init__(self, geometry: ImageGeometry, seeds: SeedSet | None = None, formalism="2D",
                 method="fast", model_dirs=(), progress=None):
        self.geometry = geometry
        self.formalism = formalism
        self.model_dirs = tuple(model_dirs)
        require_grid_memory(geometry, len(set(seeds.models)) if seeds is not None and len(seeds) else 1, method)
        self.engine = make_engine(geometry, method, len(seeds) if seeds is not None and len(seeds) else None)
        self.seeds = SeedSet(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), [])
        self.rate_by_model = {}
        self._kernels = {}
        self._capped_count = np.zeros(geometry.shape, dtype=np.int32)
        if seeds is not None and len(seeds):
            self.set_seeds(seeds, progress)

    # -- kernels -------------------------------------------------------------------------------
    def kernel(self, model_id) -> TG43Kernel:
        """The TG-43 kernel of ``model_id`` in this grid's formalism (cached)."""
        if model_id not in self._kernels:
            self._kernels[model_id] = TG43Kernel(get_model(model_id, self.model_dirs), self.formalism)
        return self._kernels[model_id]

    # -- full computation ----------------------------------------------------------------------
    def set_seeds(self, seeds: SeedSet, progress=None):
        """Replace all seeds and recompute the dose."""
        seeds.validate()
        for m in dict.fromkeys(seeds.models):
            self.kernel(m)
        self.seeds = seeds.copy()
        self.rate_by_model = {}
        self._capped_count[:] = 0
        groups = seeds.model_groups()
        done = 0
        for m, idx in groups.items():
            sub = _progress.scaled(progress, done / len(seeds), (done + len(idx)) / len(seeds))
            rate, capped = self.engine.seeds_rate(self.kernel(m), seeds.positions[idx], seeds.axes[idx],
                                                  seeds.strengths_U[idx], sub)
            self.rate_by_model[m] = rate
            self._capped_count += capped
            done += len(idx)
        _progress.report(progress, 1.0, "dose: done")

    # -- incremental edits ---------------------------------------------------------------------
    def _apply(self, model_id, position, axis, strength, sign, more=()):
        """Add (sign +1) or subtract (-1) seeds of one model; ``more``: further (position, axis, strength, sign)."""
        kernel = self.kernel(model_id)
        if model_id not in self.rate_by_model:
            self.rate_by_model[model_id] = np.zeros(self.geometry.shape)
        changes = [(position, axis, strength, sign)] + list(more)
        apply_seeds = getattr(self.engine, "apply_seeds", None)
        if apply_seeds is not None:  # the engine updates both arrays in place, all changes at once
            apply_seeds(self.rate_by_model[model_id], self._capped_count, kernel, [c[0] for c in changes],
                        [c[1] for c in changes], [c[2] * c[3] for c in changes])
            return
        for position, axis, strength, sign in changes:
            rate, capped = self.engine.seed_rate(kernel, position, axis, strength)
            if sign > 0:
                self.rate_by_model[model_id] += rate
                self._capped_count += capped
            else:
                self.rate_by_model[model_id] -= rate
                self._capped_count -= capped

    def add_seed(self, position, axis, strength_U, model_id) -> int:
        """Add one seed; returns its index."""
        new = SeedSet([position], [axis], [strength_U], [model_id])
        self._apply(model_id, new.positions[0], new.axes[0], new.strengths_U[0], +1)
        self.seeds = SeedSet.concatenate([self.seeds, new])
        return len(self.seeds) - 1

    def remove_seed(self, index: int):
        """Remove seed ``index``."""
        self._check_index(index)
        s = self.seeds
        self._apply(s.models[index], s.positions[index], s.axes[index], s.strengths_U[index], -1)
        keep = np.ones(len(s), dtype=bool)
        keep[index] = False
        self.seeds = s.subset(keep)

    def move_seed(self, index: int, position, axis=None):
        """Move seed ``index`` to ``position`` (and optionally a new ``axis``)."""
        self._check_index(index)
        s = self.seeds
        new = SeedSet([position], [s.axes[index] if axis is None else axis], [s.strengths_U[index]], [s.models[index]])
        self._apply(s.models[index], s.positions[index], s.axes[index], s.strengths_U[index], -1,
                    more=[(new.positions[0], new.axes[0], new.strengths_U[0], +1)])
        s.positions[index] = new.positions[0]
        s.axes[index] = new.axes[0]

    def _check_index(self, index):
        if not 0 <= int(index) < len(self.seeds):
            raise InputError(f"no seed with index {index} (plan has {len(self.seeds)} seeds)")

    # -- results -------------------------------------------------------------------------------
    @property
    def n_capped_voxels(self) -> int:
        """Voxels where at least one seed's dose was capped (closer than its cap radius)."""
        return int(np.count_nonzero(self._capped_count > 0))

    def dose_rate_cGy_h(self):
        """Total initial dose rate (cGy/h) on the grid."""
        out = np.zeros(self.geometry.shape)
        for r in self.rate_by_model.values():
            out += r
        return out

    def dose_Gy(self, quantity="total", t_hours=None):
        """Dose in Gy on the grid: 'total' (full decay), 'rate' (cGy/h / 100) or 'to_time'."""
        out = np.zeros(self.geometry.shape)
        for m, r in self.rate_by_model.items():
            out += r * (dose_factor_h(self.kernel(m).model, quantity, t_hours) / 100.0)
        return np.maximum(out, 0.0)


def compute_dose_Gy(geometry: ImageGeometry, seeds: SeedSet, formalism="2D", quantity="total", t_hours=None,
                    method="fast", model_dirs=(), progress=None):
    """Dose in Gy on ``geometry`` (array [k, j, i]) and the number of capped voxels."""
    if len(seeds) == 0:
        raise InputError("no seeds: nothing to compute")
    grid = DoseGrid(geometry, seeds, formalism, method, model_dirs, progress)
    return grid.dose_Gy(quantity, t_hours), grid.n_capped_voxels


def require_seeds_in_grid(geometry: ImageGeometry, seeds: SeedSet, what="dose grid"):
    """Raise InputError naming the seeds that lie outside ``geometry``'s extent."""
    inside = geometry.contains_ras(seeds.positions)
    if not np.all(inside):
        bad = np.flatnonzero(~inside)
        listed = ", ".join(f"{i + 1} at {np.round(seeds.positions[i], 1).tolist()}" for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise InputError(f"{len(bad)} seed(s) lie outside the {what}: seed {listed}{more}")
