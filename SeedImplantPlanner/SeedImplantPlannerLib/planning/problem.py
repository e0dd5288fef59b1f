"""The inverse-planning problem in matrices: goals, organ limits, dose-influence matrices, sample summaries.

The planning problem is posed on a sampled dose-influence matrix: ``D[i, j]`` is the total dose
(Gy, full decay) that candidate seed ``j`` (position, axis = needle tangent, strength S_K) gives to
sample point ``i``, from the TG-43U1 kernel (:class:`tg43.TG43Kernel`, interpolated from a
:class:`KernelTable`). Points are a seeded random sample of target voxels (each standing for an
equal share of the target volume) and of the organ-at-risk voxels near the target.
:func:`build_problem` assembles a :class:`PlanningProblem`; the methods that solve it live in
:mod:`optimizer` (driver and polish), :mod:`anneal` and :mod:`mip`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.memory import require_memory
from ..core.errors import InputError


@dataclass
class OARConstraint:
    """Dose limits (Gy) for one organ at risk; ``None`` = no limit of that kind."""

    name: str
    dmax_Gy: float | None = None
    d2cc_Gy: float | None = None
    d0_1cc_Gy: float | None = None

    def limits(self):
        """[(volume_cc, limit_Gy, label)] of the set limits (Dmax as volume 0)."""
        out = []
        for vol, val, lab in ((0.0, self.dmax_Gy, "Dmax"), (2.0, self.d2cc_Gy, "D2cc"), (0.1, self.d0_1cc_Gy, "D0.1cc")):
            if val is not None:
                if not (math.isfinite(val) and val > 0):
                    raise InputError(f"organ {self.name}: {lab} limit must be > 0 Gy, got {val}")
                out.append((vol, float(val), lab))
        return out

    def to_dict(self):
        """Plain-JSON form."""
        return {"name": self.name, "dmax_Gy": self.dmax_Gy, "d2cc_Gy": self.d2cc_Gy, "d0_1cc_Gy": self.d0_1cc_Gy}


@dataclass
class Goals:
    """Planning goals: prescription (Gy), coverage goals, soft hot-spot limits, OAR limits.

    Hard goals: V100 >= ``v100_min``, D90 >= ``d90_min_frac`` x Rx, organ limits. Soft goals
    (met whenever the hard goals allow, otherwise reported as traded): V150 <= ``v150_max``,
    V200 <= ``v200_max`` and, when set, D90 <= ``d90_max_frac`` x Rx.
    """

    prescription_Gy: float
    v100_min: float = 0.95
    d90_min_frac: float = 1.0
    v150_max: float = 0.60
    v200_max: float = 0.20
    oars: list = field(default_factory=list)
    d90_max_frac: float | None = None

    def __post_init__(self):
        if not (isinstance(self.prescription_Gy, (int, float)) and math.isfinite(self.prescription_Gy)
                and self.prescription_Gy > 0):
            raise InputError(f"prescription dose must be > 0 Gy, got {self.prescription_Gy!r}")
        for name in ("v100_min", "v150_max", "v200_max"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise InputError(f"goal {name} must be a fraction between 0 and 1, got {v}")
        if not (0.0 < self.d90_min_frac <= 3.0):
            raise InputError(f"goal D90 must be a fraction of the prescription in (0, 3], got {self.d90_min_frac}")
        if self.d90_max_frac is not None:
            if not (math.isfinite(self.d90_max_frac) and 0.0 < self.d90_max_frac <= 3.0):
                raise InputError(f"goal D90 upper bound must be a fraction of the prescription in (0, 3], "
                                 f"got {self.d90_max_frac}")
            if self.d90_max_frac <= self.d90_min_frac:
                raise InputError(f"contradictory goals: D90 upper bound {100 * self.d90_max_frac:g}% of Rx is not above "
                                 f"the D90 goal {100 * self.d90_min_frac:g}%")
        for o in self.oars:
            o.limits()

    def coverage_levels(self):
        """[(dose level Gy, minimum fraction of the target)] implied by V100 and D90 goals."""
        rx = self.prescription_Gy
        levels = {}
        for lvl, frac in ((rx, self.v100_min), (self.d90_min_frac * rx, 0.90)):
            key = round(lvl, 6)
            levels[key] = max(levels.get(key, 0.0), frac)
        # a higher level with a higher-or-equal fraction makes a lower level redundant
        out = sorted(levels.items())
        keep = [(lvl, f) for lvl, f in out if not any(l2 > lvl and f2 >= f for l2, f2 in out)]
        return [(float(lvl), float(f)) for lvl, f in keep if f > 0]

    def soft_limits(self):
        """[(label, dose level Gy, maximum fraction of the target above it)] of the soft hot-spot goals.

        D90 <= u x Rx is the same as "at most 10 % of the target above u x Rx".
        """
        rx = self.prescription_Gy
        out = [("V150", 1.5 * rx, self.v150_max), ("V200", 2.0 * rx, self.v200_max)]
        if self.d90_max_frac is not None:
            out.append(("D90max", self.d90_max_frac * rx, 0.10))
        return out

    def to_dict(self):
        """Plain-JSON form."""
        return {"prescription_Gy": self.prescription_Gy, "v100_min": self.v100_min, "d90_min_frac": self.d90_min_frac,
                "v150_max": self.v150_max, "v200_max": self.v200_max, "d90_max_frac": self.d90_max_frac,
                "oars": [o.to_dict() for o in self.oars]}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`."""
        return cls(float(d["prescription_Gy"]), float(d.get("v100_min", 0.95)), float(d.get("d90_min_frac", 1.0)),
                   float(d.get("v150_max", 0.6)), float(d.get("v200_max", 0.2)),
                   [OARConstraint(o["name"], o.get("dmax_Gy"), o.get("d2cc_Gy"), o.get("d0_1cc_Gy"))
                    for o in d.get("oars", [])],
                   None if d.get("d90_max_frac") is None else float(d["d90_max_frac"]))


# -- dose influence -------------------------------------------------------------------------------
class KernelTable:
    """Fast dose rate per U of one kernel for influence matrices.

    A view of the dose engine's own table (:class:`kernel_table.KernelTable`: g and F tabulated on
    nodes that contain every tabulated radius and angle, G_L analytic, the kernel's cap rule), so
    the optimiser's matrix agrees with :class:`tg43.TG43Kernel` to about 1e-5 and with the doses
    the engine reports.
    """

    def __init__(self, kernel):
        from ..physics.kernel_table import shared_table
        self.kernel = kernel
        self._table = shared_table(kernel)

    def rate_per_U(self, r_cm, cos_theta):
        """Dose rate (cGy/h per U) at (r, cos theta), any (broadcastable) shapes."""
        r, c = np.broadcast_arrays(np.asarray(r_cm, dtype=float), np.clip(np.asarray(cos_theta, dtype=float), -1, 1))
        shape = r.shape
        r = r.ravel()
        c = c.ravel()
        r2 = (r * r).astype(np.float32)
        z = (r * c).astype(np.float32)
        rho2 = (r * r * (1.0 - c * c)).astype(np.float32)
        return self._table.evaluate(r2, z, rho2, 1.0).astype(float).reshape(shape)


def influence_matrix(points, positions, axes, kernel, gy_per_U_h, strength_U, chunk=64, table=None):
    """Dose (Gy) at ``points`` (N, 3) from one seed of ``strength_U`` at each candidate: (N, C) float32.

    ``strength_U`` is one value or one per candidate (targets planned with different strengths).
    ``gy_per_U_h`` converts cGy/h to the planned quantity: dose_factor_h / 100 (total dose).
    With a :class:`KernelTable` the kernel is interpolated from its table (faster).
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    pos = np.asarray(positions, dtype=float).reshape(-1, 3)
    ax = np.asarray(axes, dtype=float).reshape(-1, 3)
    require_memory(2 * 4 * len(pts) * len(pos), f"influence matrix of {len(pts)} points x {len(pos)} candidate "
                   "seed positions", "use a larger template or seed spacing, or fewer needles")
    out = np.empty((len(pts), len(pos)), dtype=np.float32)
    scale = float(gy_per_U_h) * np.broadcast_to(np.asarray(strength_U, dtype=float), (len(pos),))
    for a in range(0, len(pos), chunk):
        b = min(a + chunk, len(pos))
        d = (pts[:, None, :] - pos[None, a:b, :]) * 0.1  # cm
        r = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
        z = np.einsum("ijk,jk->ij", d, ax[a:b])
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.where(r > 0, z / np.where(r > 0, r, 1.0), 1.0)
        rate = table.rate_per_U(r, c) if table is not None else kernel.dose_rate_per_U(r, c)[0]
        out[:, a:b] = rate * scale[a:b]
    return out


@dataclass
class OARPoints:
    """Sample points of one organ limit: constrained points and the evaluation set."""

    name: str
    label: str
    volume_cc: float
    limit_Gy: float
    D: np.ndarray  # (M, C) influence at evaluation points
    fixed: np.ndarray  # (M,) dose from fixed seeds
    voxel_cc: float  # volume each evaluation point stands for
    constrained: np.ndarray  # indices into the evaluation points used as hard-ish constraints


@dataclass
class TargetBlock:
    """One target of the problem: its goals and its rows of the target point matrices (contiguous)."""

    name: str
    goals: Goals
    opt: slice  # rows of D_opt / fixed_opt
    chk: slice  # rows of D_chk / fixed_chk


@dataclass
class PlanningProblem:
    """Everything the optimiser needs, in matrices (see module doc).

    Several targets share the matrices: each :class:`TargetBlock` names its rows and goals (one
    block over all rows with ``goals`` when ``targets`` is None). ``max_needles`` limits the
    needles that cost something (new needles); ``needle_conflicts`` are needle pairs that may not
    both carry seeds (they pass closer than the needle clearance inside the patient).
    """

    n_candidates: int
    needle_index: np.ndarray  # (C,)
    n_needles: int
    needle_cost: np.ndarray  # (n_needles,) 0 for needles already in the patient
    conflicts: np.ndarray  # (P, 2)
    D_opt: np.ndarray  # (N1, C) target points used by the search
    fixed_opt: np.ndarray
    D_chk: np.ndarray  # (N2, C) independent target points used by polish and reporting
    fixed_chk: np.ndarray
    goals: Goals
    oars: list = field(default_factory=list)  # OARPoints
    lattice_prev: np.ndarray | None = None  # (C,) index of the neighbour towards the tip on the same needle, -1
    lattice_next: np.ndarray | None = None
    targets: list | None = None  # TargetBlock
    max_needles: int | None = None
    needle_conflicts: np.ndarray | None = None  # (Q, 2) needle indices

    def blocks(self):
        """The target blocks (one over every row when the problem has a single target)."""
        if self.targets:
            return self.targets
        return [TargetBlock("target", self.goals, slice(0, len(self.D_opt)), slice(0, len(self.D_chk)))]

    def needle_conflict_lists(self):
        """For each needle, the needles it may not be used together with."""
        out = [[] for _ in range(self.n_needles)]
        if self.needle_conflicts is not None:
            for a, b in self.needle_conflicts:
                out[int(a)].append(int(b))
                out[int(b)].append(int(a))
        return out


@dataclass
class OptimResult:
    """Chosen candidates and a sampled summary."""

    selected: np.ndarray
    method: str
    status: str
    message: str
    goals_met: bool
    seconds: float
    sampled: dict = field(default_factory=dict)
    unmet: list = field(default_factory=list)


# -- sampled evaluation ---------------------------------------------------------------------------
def dose_at_volume(dose, voxel_cc, volume_cc):
    """D(volume_cc) of a structure sampled by ``dose`` (Dmax for 0), as defined in :mod:`metrics`."""
    from ..evaluation.dvh import DoseSamples
    dose = np.asarray(dose, dtype=float)
    if not len(dose):
        return 0.0
    if volume_cc <= 0:
        return float(dose.max())
    v = float(DoseSamples("oar", dose, float(voxel_cc)).doses_at_volumes_cc([volume_cc])[0])
    return v if math.isfinite(v) else 0.0


def target_summary(dose, rx, voxel_cc=1.0):
    """D90 (Gy), V100, V150, V200 (fractions) of a target sampled by ``dose`` (definitions of :mod:`metrics`)."""
    from ..evaluation.dvh import DoseSamples
    from ..evaluation.metrics import structure_metrics
    m = structure_metrics(DoseSamples("target", np.asarray(dose, dtype=float), float(voxel_cc), role="target"),
                          ["D90", "V100", "V150", "V200"], rx)
    return {"D90_Gy": m["D90"]["Gy"], "V100": m["V100"]["percent"] / 100.0,
            "V150": m["V150"]["percent"] / 100.0, "V200": m["V200"]["percent"] / 100.0}


def conflict_lists(prob):
    """For each candidate, the candidates it conflicts with (closer than the minimum distance)."""
    nbrs = [[] for _ in range(prob.n_candidates)]
    for a, b in prob.conflicts:
        nbrs[a].append(int(b))
        nbrs[b].append(int(a))
    return nbrs


def build_problem(cands, n_needles, needle_cost, target_opt_points, target_chk_points, kernel, gy_per_U_h,
                  strength_U, goals: Goals, oar_samples=(), fixed_seeds=None, min_distance_mm=0.0,
                  fixed_kernels=None, targets=None, max_needles=None, needle_conflicts=None):
    """Assemble a :class:`PlanningProblem` from candidates and sample points.

    ``strength_U``: one strength or one per candidate. ``targets``: for several targets, a list of
    ``(name, Goals, n_opt, n_chk)`` in the order their points are stacked in the point arrays.

    ``oar_samples``: iterable of ``(OARConstraint, points (M, 3), voxel_cc, rank)`` where ``rank``
    orders the points from nearest to the target outwards (used to pick the constrained points).
    ``fixed_seeds``: a SeedSet already implanted, with ``fixed_kernels`` {model: (kernel, gy_per_U_h)}.
    """
    C = len(cands)

    def fixed_dose(points):
        out = np.zeros(len(points))
        if fixed_seeds is None or not len(fixed_seeds):
            return out
        for i in range(len(fixed_seeds)):
            k, f = fixed_kernels[fixed_seeds.models[i]]
            rate, _ = k.dose_rate_at_points(points, fixed_seeds.positions[i], fixed_seeds.axes[i],
                                            fixed_seeds.strengths_U[i])
            out += rate * f
        return out

    table = KernelTable(kernel)
    D_opt = influence_matrix(target_opt_points, cands.positions, cands.axes, kernel, gy_per_U_h, strength_U, table=table)
    D_chk = influence_matrix(target_chk_points, cands.positions, cands.axes, kernel, gy_per_U_h, strength_U, table=table)
    oars = []
    for oc, pts, voxel_cc, rank in oar_samples:
        pts = np.asarray(pts, float).reshape(-1, 3)
        if not len(pts):
            continue
        Do = influence_matrix(pts, cands.positions, cands.axes, kernel, gy_per_U_h, strength_U, table=table)
        fo = fixed_dose(pts)
        order = np.argsort(rank, kind="stable")
        for vol, lim, lab in oc.limits():
            skip = int(math.floor(vol / voxel_cc))
            cons = order[skip:skip + 300]
            oars.append(OARPoints(oc.name, lab, vol, lim, Do, fo, voxel_cc, cons))
    # neighbours along each needle's lattice (for annealing shift moves)
    prev = np.full(C, -1)
    nxt = np.full(C, -1)
    for n in np.unique(cands.needle_index):
        idx = np.flatnonzero(cands.needle_index == n)
        idx = idx[np.argsort(cands.s_from_tip_mm[idx])]
        prev[idx[1:]] = idx[:-1]
        nxt[idx[:-1]] = idx[1:]
    blocks = None
    if targets:
        blocks, a_opt, a_chk = [], 0, 0
        for name, tg, n_opt, n_chk in targets:
            blocks.append(TargetBlock(name, tg, slice(a_opt, a_opt + n_opt), slice(a_chk, a_chk + n_chk)))
            a_opt += n_opt
            a_chk += n_chk
        if a_opt != len(D_opt) or a_chk != len(D_chk):
            raise InputError("target blocks do not add up to the sample points")
    nc = None if needle_conflicts is None or not len(needle_conflicts) else np.asarray(needle_conflicts, int).reshape(-1, 2)
    return PlanningProblem(C, np.asarray(cands.needle_index, int), int(n_needles), np.asarray(needle_cost, float),
                           cands.conflicts(min_distance_mm), D_opt, fixed_dose(target_opt_points), D_chk,
                           fixed_dose(target_chk_points), goals, oars, prev, nxt, blocks,
                           None if max_needles is None else int(max_needles), nc)
