"""Inverse planning of permanent seed implants: which candidate positions (and needles) to load.

The planning problem is posed on a sampled dose-influence matrix: ``D[i, j]`` is the total dose
(Gy, full decay) that candidate seed ``j`` (position, axis = needle tangent, strength S_K) gives to
sample point ``i``, from the TG-43U1 kernel (:class:`tg43.TG43Kernel`, interpolated from a
:class:`KernelTable`). Points are a seeded random
sample of target voxels (each standing for an equal share of the target volume) and of the
organ-at-risk voxels near the target. Goals (all user-set):

- coverage: V100 >= ``v100_min`` and D90 >= ``d90_min_frac`` x prescription (hard goals);
- V150 and V200 of the target as low as possible (soft, with limits reported);
- organs at risk: Dmax, D2cc, D0.1cc limits (hard goals, enforced through sampled points);
- as few seeds and needles as the goals allow.

Methods (compared in ``benchmarks/bench_plan.py``):

``mip``
    A mixed-integer program solved by HiGHS (``scipy.optimize.milp``) in the spirit of the
    integer-programming seed-placement models of E.K. Lee et al. ("Treatment planning for
    brachytherapy: an integer programming model, two computational approaches and experiments
    with permanent prostate implant planning"; Annals of Operations Research, DOI
    10.1023/A:1022986523863) and the dose-volume MIP of Gorissen et al. (arXiv:1408.2746):
    binary ``x_j`` (seed loaded), ``y_n`` (needle used), ``z_i`` (point i receives the coverage
    level), constraints ``D_i x + f_i >= level * z_i`` and ``sum z >= fraction * N``,
    ``x_j <= y_n``, conflict pairs ``x_a + x_b <= 1``, OAR points ``D_k x + f_k <= limit + s_k``;
    objective ``sum x + w_needle * sum y + penalties(slack, coverage shortfall)``. Coverage
    shortfall and OAR slack are penalised, not forbidden, so the model always has a solution and
    goals that cannot be met are reported instead of making the solver search forever. Entries
    below ``sparsify_frac`` x prescription are dropped (conservative for coverage); a time limit
    returns the best incumbent.
``anneal`` (default: the benchmark shows it reaches the goals with fewer seeds within the time budget)
    Simulated annealing over the same matrix (flip / shift-along-needle / swap moves, incremental
    dose updates, geometric cooling, seeded ``numpy.random.Generator``), with a penalty objective
    of the same goals (cf. the dose-volume simulated annealing of Deist & Gorissen, Phys Med Biol,
    DOI 10.1088/0031-9155/61/3/1155, arXiv:1703.09461).
``greedy``
    Start from uniform loading and prune, no global search (a reference, not a recommendation).

Every method ends with the same deterministic *polish* on a second, independent and larger point
sample: add the seed that covers the most under-dosed points while coverage is below goal plus
``coverage_buffer`` (sampling error), then remove seeds one at a time while every goal still
holds. Results are deterministic for a given ``rng_seed``. Cancellation through ``progress`` is
honoured between stages and inside annealing; the MIP stage is bounded by its time limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError

METHODS = ("mip", "anneal", "greedy")


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
    """Planning goals: prescription (Gy), coverage goals, soft hot-spot limits, OAR limits."""

    prescription_Gy: float
    v100_min: float = 0.95
    d90_min_frac: float = 1.0
    v150_max: float = 0.60
    v200_max: float = 0.20
    oars: list = field(default_factory=list)

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

    def to_dict(self):
        """Plain-JSON form."""
        return {"prescription_Gy": self.prescription_Gy, "v100_min": self.v100_min, "d90_min_frac": self.d90_min_frac,
                "v150_max": self.v150_max, "v200_max": self.v200_max, "oars": [o.to_dict() for o in self.oars]}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`."""
        return cls(float(d["prescription_Gy"]), float(d.get("v100_min", 0.95)), float(d.get("d90_min_frac", 1.0)),
                   float(d.get("v150_max", 0.6)), float(d.get("v200_max", 0.2)),
                   [OARConstraint(o["name"], o.get("dmax_Gy"), o.get("d2cc_Gy"), o.get("d0_1cc_Gy"))
                    for o in d.get("oars", [])])


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

    ``gy_per_U_h`` converts cGy/h to the planned quantity: dose_factor_h / 100 (total dose).
    With a :class:`KernelTable` the kernel is interpolated from its table (faster).
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 3)
    pos = np.asarray(positions, dtype=float).reshape(-1, 3)
    ax = np.asarray(axes, dtype=float).reshape(-1, 3)
    out = np.empty((len(pts), len(pos)), dtype=np.float32)
    scale = float(gy_per_U_h) * float(strength_U)
    for a in range(0, len(pos), chunk):
        b = min(a + chunk, len(pos))
        d = (pts[:, None, :] - pos[None, a:b, :]) * 0.1  # cm
        r = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
        z = np.einsum("ijk,jk->ij", d, ax[a:b])
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.where(r > 0, z / np.where(r > 0, r, 1.0), 1.0)
        rate = table.rate_per_U(r, c) if table is not None else kernel.dose_rate_per_U(r, c)[0]
        out[:, a:b] = rate * scale
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
class PlanningProblem:
    """Everything the optimiser needs, in matrices (see module doc)."""

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


def _check_goals(prob: PlanningProblem, x, buffer):
    """(met, unmet messages, summary) of selection ``x`` on the check sample."""
    g = prob.goals
    d = prob.fixed_chk + prob.D_chk @ x
    s = target_summary(d, g.prescription_Gy)
    unmet = []
    for lvl, frac in g.coverage_levels():
        cov = float(np.mean(d >= lvl - 1e-6))
        if cov < frac + buffer:
            unmet.append(f"target coverage at {lvl:.1f} Gy is {100 * cov:.1f}% (goal {100 * frac:.0f}%)")
    for o in prob.oars:
        do = o.fixed + o.D @ x
        v = dose_at_volume(do, o.voxel_cc, o.volume_cc)
        s[f"{o.name}_{o.label}_Gy"] = v
        if v > o.limit_Gy + 1e-6:
            unmet.append(f"{o.name} {o.label} is {v:.1f} Gy (limit {o.limit_Gy:g} Gy)")
    return not unmet, unmet, s


# -- polish (shared by all methods) ---------------------------------------------------------------
def _conflict_lists(prob):
    nbrs = [[] for _ in range(prob.n_candidates)]
    for a, b in prob.conflicts:
        nbrs[a].append(int(b))
        nbrs[b].append(int(a))
    return nbrs


def _oar_ok(prob, x):
    for o in prob.oars:
        if dose_at_volume(o.fixed + o.D @ x, o.voxel_cc, o.volume_cc) > o.limit_Gy + 1e-6:
            return False
    return True


def polish(prob: PlanningProblem, x, buffer=0.01, deadline=None, progress=None):
    """Repair coverage on the check sample, then remove seeds while every goal still holds.

    Returns (x, cut): ``cut`` is True when the deadline stopped the polish early.
    """
    x = np.asarray(x, dtype=float).copy()
    g = prob.goals
    levels = g.coverage_levels()
    nbrs = _conflict_lists(prob)
    D = prob.D_chk
    d = prob.fixed_chk + D @ x
    n_chk = len(d)
    need = {lvl: int(math.ceil((frac + buffer) * n_chk - 1e-9)) for lvl, frac in levels}

    def short(dd):
        return sum(max(0, need[lvl] - int(np.count_nonzero(dd >= lvl - 1e-6))) for lvl, _ in levels)

    # repair: greedy coverage gain, respecting conflicts and OAR limits
    cut = False
    guard = 0
    while short(d) > 0 and guard < prob.n_candidates:
        guard += 1
        free = np.flatnonzero(x < 0.5)
        free = np.array([j for j in free if not any(x[k] > 0.5 for k in nbrs[j])], dtype=int)
        if not len(free):
            break
        gain = np.zeros(len(free))
        for lvl, _ in levels:
            under = d < lvl - 1e-6
            if not under.any():
                continue
            gain += np.count_nonzero((d[under, None] + D[np.ix_(under, free)]) >= lvl - 1e-6, axis=0)
            gain += 1e-3 * np.minimum(D[np.ix_(under, free)], lvl).sum(axis=0) / lvl
        added = False
        for j in free[np.argsort(-gain, kind="stable")]:
            x[j] = 1.0
            if prob.oars and not _oar_ok(prob, x):
                x[j] = 0.0
                continue
            d += D[:, j]
            added = True
            break
        if not added:
            break
        if deadline is not None and time.monotonic() > deadline:
            cut = True
            break
    _progress.report(progress, 0.5, "plan: polishing")
    # prune: remove the least useful seed while the goals hold
    if short(d) == 0:
        improved = True
        while improved:
            improved = False
            on = np.flatnonzero(x > 0.5)
            # remove first the seeds whose absence leaves the most margin (largest remaining coverage)
            lvl0 = levels[0][0] if levels else g.prescription_Gy
            loss = np.array([np.count_nonzero((d >= lvl0 - 1e-6) & (d - D[:, j] < lvl0 - 1e-6)) for j in on])
            hot = np.array([np.count_nonzero(d >= 1.5 * g.prescription_Gy) - np.count_nonzero(
                d - D[:, j] >= 1.5 * g.prescription_Gy) for j in on])
            for j in on[np.lexsort((-hot, loss))]:
                dn = d - D[:, j]
                if short(dn) == 0:
                    x[j] = 0.0
                    d = dn
                    improved = True
                if deadline is not None and time.monotonic() > deadline:
                    improved = False
                    cut = True
                    break
    return x, cut


# -- methods --------------------------------------------------------------------------------------
def solve_mip(prob: PlanningProblem, time_limit_s=6.0, needle_weight=1.0, n_points=1200, rng_seed=0,
              sparsify_frac=0.005, buffer=0.01, hot_weight=0.0):
    """Selection (C,) from the HiGHS MIP (see module doc); returns (x, status text)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, csr_matrix, hstack, vstack, identity
    g = prob.goals
    rng = np.random.default_rng(rng_seed)
    C, K = prob.n_candidates, prob.n_needles
    D_all, f_all = prob.D_opt, prob.fixed_opt
    idx = np.arange(len(D_all))
    if len(idx) > n_points:
        idx = np.sort(rng.choice(len(idx), n_points, replace=False))
    D, f = D_all[idx], f_all[idx]
    N = len(D)
    levels = g.coverage_levels()
    thr = sparsify_frac * g.prescription_Gy
    Ds = csr_matrix(np.where(D >= thr, D, 0.0))
    # variables: x (C) | y (K) | z (N per level) | shortfall (per level) | oar slack (M)
    n_lvl = len(levels)
    oar_rows = []
    for o in prob.oars:
        for i in o.constrained:
            oar_rows.append((o, int(i)))
    M = len(oar_rows)
    nv = C + K + N * n_lvl + n_lvl + M
    cost = np.zeros(nv)
    cost[:C] = 1.0
    cost[C:C + K] = needle_weight * prob.needle_cost
    short_w = 5.0 * C / max(N, 1) + 1.0  # a missed coverage point costs more than any seed count
    cost[C + K + N * n_lvl:C + K + N * n_lvl + n_lvl] = short_w
    cost[nv - M:] = [10.0 / o.limit_Gy for o, _ in oar_rows] if M else []
    if hot_weight > 0:
        cost[:C] += hot_weight * np.asarray((D >= 1.5 * g.prescription_Gy).sum(axis=0)).ravel() / max(N, 1)
    integrality = np.zeros(nv)
    integrality[:C + K + N * n_lvl] = 1
    lb = np.zeros(nv)
    ub = np.ones(nv)
    ub[C + K + N * n_lvl:] = np.inf
    blocks, lo, hi = [], [], []
    for li, (lvl, frac) in enumerate(levels):
        # D x - lvl z >= -f
        zblock = coo_matrix((np.full(N, -lvl), (np.arange(N), C + K + li * N + np.arange(N))), shape=(N, nv))
        xblock = hstack([Ds, csr_matrix((N, nv - C))])
        blocks.append(xblock + zblock)
        lo.append(-f)
        hi.append(np.full(N, np.inf))
        # sum z + shortfall >= ceil((frac + buffer) N)
        row = np.zeros(nv)
        row[C + K + li * N:C + K + (li + 1) * N] = 1.0
        row[C + K + N * n_lvl + li] = 1.0
        blocks.append(csr_matrix(row))
        lo.append([min(N, math.ceil((frac + buffer) * N - 1e-9))])
        hi.append([np.inf])
    # x_j <= y_n
    r = np.arange(C)
    link = coo_matrix((np.concatenate([np.ones(C), -np.ones(C)]),
                       (np.concatenate([r, r]), np.concatenate([r, C + prob.needle_index]))), shape=(C, nv))
    blocks.append(link)
    lo.append(np.full(C, -np.inf))
    hi.append(np.zeros(C))
    if len(prob.conflicts):
        P = len(prob.conflicts)
        rr = np.arange(P)
        conf = coo_matrix((np.ones(2 * P), (np.concatenate([rr, rr]), prob.conflicts.T.ravel())), shape=(P, nv))
        blocks.append(conf)
        lo.append(np.full(P, -np.inf))
        hi.append(np.ones(P))
    if M:
        rows = np.vstack([o.D[i] for o, i in oar_rows])
        rhs = np.array([o.limit_Gy - o.fixed[i] for o, i in oar_rows])
        oblock = hstack([csr_matrix(np.where(rows >= thr, rows, 0.0)), csr_matrix((M, nv - C - M)),
                         -identity(M, format="csr")])
        blocks.append(oblock)
        lo.append(np.full(M, -np.inf))
        hi.append(rhs)
    A = vstack(blocks, format="csr")
    res = milp(cost, constraints=LinearConstraint(A, np.concatenate(lo), np.concatenate(hi)),
               integrality=integrality, bounds=Bounds(lb, ub),
               options={"time_limit": float(max(time_limit_s, 0.1)), "disp": False, "mip_rel_gap": 0.02})
    if res.x is None:
        return None, f"HiGHS found no solution within {time_limit_s:g} s ({res.message})"
    x = (res.x[:C] > 0.5).astype(float)
    bound = getattr(res, "mip_dual_bound", None)
    bound_text = "" if bound is None or not np.isfinite(bound) else f", dual bound {bound:.1f}"
    return x, f"HiGHS: {res.message.strip()} (objective {res.fun:.1f}{bound_text})"


def solve_anneal(prob: PlanningProblem, x0, time_limit_s=6.0, needle_weight=1.0, rng_seed=0, n_iter=40000,
                 progress=None, seed_ref=None, buffer=0.01):
    """Selection (C,) from simulated annealing started at ``x0``; returns (x, status text)."""
    g = prob.goals
    rng = np.random.default_rng(rng_seed)
    C = prob.n_candidates
    Dt = np.ascontiguousarray(prob.D_opt.T)  # (C, N)
    rx = g.prescription_Gy
    levels = g.coverage_levels()
    n_pts = Dt.shape[1]
    nbrs = _conflict_lists(prob)
    oar_D = [np.ascontiguousarray(o.D[o.constrained].T) for o in prob.oars]
    oar_f = [o.fixed[o.constrained] for o in prob.oars]
    oar_lim = [o.limit_Gy for o in prob.oars]
    seed_ref = float(seed_ref or max(1.0, x0.sum()))
    w_seed = 1.0 / seed_ref
    w_needle = needle_weight / seed_ref

    inv_levels = [(1.0 / lvl, frac) for lvl, frac in levels]
    hot1, hot2 = 1.5 * rx, 2.0 * rx
    inv_n = 1.0 / n_pts

    def cost(d, od, nseeds, nneedles):
        c = 0.0
        for inv, frac in inv_levels:
            u = d * inv
            cov = np.count_nonzero(u >= 1.0) * inv_n
            c += 200.0 * max(0.0, frac + buffer - cov)
            np.subtract(1.0, u, out=u)
            np.maximum(u, 0.0, out=u)
            c += 2.0 * float(u.sum()) * inv_n
        v150 = np.count_nonzero(d >= hot1) * inv_n
        v200 = np.count_nonzero(d >= hot2) * inv_n
        c += 0.1 * (v150 + v200) + 2.0 * (max(0.0, v150 - g.v150_max) + max(0.0, v200 - g.v200_max))
        for dd, lim in zip(od, oar_lim):
            excess = dd - lim
            c += 20.0 * float(excess[excess > 0].sum()) / lim
        return c + w_seed * nseeds + w_needle * nneedles

    x = np.asarray(x0, dtype=bool).copy()
    nidx = prob.needle_index
    ncost = prob.needle_cost
    per_needle = np.bincount(nidx[x], minlength=prob.n_needles)
    d = prob.fixed_opt + Dt[x].sum(axis=0)
    od = [f + Dk[x].sum(axis=0) for f, Dk in zip(oar_f, oar_D)]
    n_seeds = int(x.sum())
    needle_total = float(np.sum((per_needle > 0) * ncost))
    cur = cost(d, od, n_seeds, needle_total)
    best, best_x = cur, x.copy()
    t0 = time.monotonic()
    T0, T1 = 0.02, 0.0002
    it = 0
    on = np.flatnonzero(x)
    stopped = False
    for it in range(n_iter):
        frac = it / n_iter
        if it % 250 == 0:
            if time.monotonic() - t0 > time_limit_s:
                stopped = True
                break
            _progress.report(progress, frac, "plan: annealing")
        T = T0 * (T1 / T0) ** frac
        move = rng.random()
        add, rem = -1, -1
        if move < 0.35 or not len(on):
            add = int(rng.integers(C))
            if x[add]:
                rem, add = add, -1
        elif move < 0.75 and prob.lattice_prev is not None:
            rem = int(on[rng.integers(len(on))])
            nb = prob.lattice_prev[rem] if rng.random() < 0.5 else prob.lattice_next[rem]
            if nb < 0 or x[nb]:
                continue
            add = int(nb)
        else:
            rem = int(on[rng.integers(len(on))])
            add = int(rng.integers(C))
            if x[add]:
                continue
        if add >= 0 and any(x[k] and k != rem for k in nbrs[add]):
            continue
        dn, odn = d, od
        dneedle = 0.0
        if rem >= 0:
            dn = dn - Dt[rem]
            odn = [v - Dk[rem] for v, Dk in zip(odn, oar_D)]
            if per_needle[nidx[rem]] == 1 and not (add >= 0 and nidx[add] == nidx[rem]):
                dneedle -= ncost[nidx[rem]]
        if add >= 0:
            dn = dn + Dt[add]
            odn = [v + Dk[add] for v, Dk in zip(odn, oar_D)]
            if per_needle[nidx[add]] == 0:
                dneedle += ncost[nidx[add]]
        ns = n_seeds + (add >= 0) - (rem >= 0)
        new = cost(dn, odn, ns, needle_total + dneedle)
        if new <= cur or rng.random() < math.exp(-(new - cur) / T):
            if rem >= 0:
                x[rem] = False
                per_needle[nidx[rem]] -= 1
            if add >= 0:
                x[add] = True
                per_needle[nidx[add]] += 1
            d, od, cur, n_seeds = dn, odn, new, ns
            needle_total += dneedle
            on = np.flatnonzero(x)
            if cur < best:
                best, best_x = cur, x.copy()
    note = f", stopped by the time limit after {it} of {n_iter} iterations" if stopped else ""
    return best_x.astype(float), (f"annealing: {it + 1 if not stopped else it} iterations in "
                                  f"{time.monotonic() - t0:.1f} s, cost {best:.4f}{note}")


def optimize(prob: PlanningProblem, method="anneal", time_limit_s=8.0, rng_seed=0, needle_weight=1.0,
             coverage_buffer=0.01, x_start=None, mip_points=600, anneal_iterations=40000, progress=None) -> OptimResult:
    """Choose the loaded candidates with ``method`` ('mip', 'anneal' or 'greedy'), then polish."""
    if method not in METHODS:
        raise InputError(f"unknown optimisation method {method!r} (use one of {', '.join(METHODS)})")
    if not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise InputError(f"time limit must be > 0 s, got {time_limit_s}")
    t0 = time.monotonic()
    deadline = t0 + time_limit_s
    C = prob.n_candidates
    if C == 0:
        ok, unmet, s = _check_goals(prob, np.zeros(0), 0.0)
        return OptimResult(np.zeros(0, bool), method, "no candidates", "no candidate seed position inside the target",
                           ok, 0.0, s, unmet or ["no candidate seed position inside the target"])
    start = np.ones(C) if x_start is None else np.asarray(x_start, float)
    if x_start is None and len(prob.conflicts):
        start = _uniform_from_conflicts(prob)
    _progress.report(progress, 0.05, f"plan: {method} search")
    status = ""
    if method == "mip":
        x, status = solve_mip(prob, time_limit_s=max(0.5, 0.7 * (deadline - time.monotonic())),
                              needle_weight=needle_weight, rng_seed=rng_seed, buffer=coverage_buffer, n_points=mip_points)
        if x is None:
            x = start
            status += "; started polish from uniform loading"
    elif method == "anneal":
        x, status = solve_anneal(prob, start, time_limit_s=max(0.5, 0.7 * (deadline - time.monotonic())),
                                 needle_weight=needle_weight, rng_seed=rng_seed, n_iter=anneal_iterations,
                                 buffer=coverage_buffer,
                                 progress=_progress.scaled(progress, 0.05, 0.8))
    else:
        x, status = start, "greedy prune of uniform loading"
    _progress.report(progress, 0.8, "plan: polishing")
    x, cut = polish(prob, x, buffer=coverage_buffer, deadline=deadline + 0.25 * time_limit_s,
                    progress=_progress.scaled(progress, 0.8, 0.98))
    if cut:
        status += "; polish stopped by the time limit"
    ok, unmet, s = _check_goals(prob, x, 0.0)
    s["n_seeds"] = int(x.sum())
    s["n_needles"] = int(len(np.unique(prob.needle_index[x > 0.5])))
    msg = "all goals met on the sampled points" if ok else "goals not met: " + "; ".join(unmet) + \
        " (the best plan found is returned)"
    if not ok and any(u.startswith("target coverage") for u in unmet):
        nbrs = _conflict_lists(prob)
        free = [j for j in np.flatnonzero(x < 0.5) if not any(x[k] > 0.5 for k in nbrs[j])]
        if not free:
            msg += (f"; every one of the {C} candidate positions that the spacing rules allow is loaded: add needles "
                    "(smaller template spacing, another direction) or allow seeds in a margin around the target")
        elif prob.oars:
            msg += "; organ limits take precedence over coverage: relax them to raise the coverage"
    return OptimResult(x > 0.5, method, status, msg, ok, time.monotonic() - t0, s, unmet)


def _uniform_from_conflicts(prob):
    nbrs = _conflict_lists(prob)
    x = np.zeros(prob.n_candidates)
    for i in range(prob.n_candidates):
        if not any(x[j] > 0.5 for j in nbrs[i]):
            x[i] = 1.0
    return x


def build_problem(cands, n_needles, needle_cost, target_opt_points, target_chk_points, kernel, gy_per_U_h,
                  strength_U, goals: Goals, oar_samples=(), fixed_seeds=None, min_distance_mm=0.0,
                  fixed_kernels=None):
    """Assemble a :class:`PlanningProblem` from candidates and sample points.

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
    return PlanningProblem(C, np.asarray(cands.needle_index, int), int(n_needles), np.asarray(needle_cost, float),
                           cands.conflicts(min_distance_mm), D_opt, fixed_dose(target_opt_points), D_chk,
                           fixed_dose(target_chk_points), goals, oars, prev, nxt)
