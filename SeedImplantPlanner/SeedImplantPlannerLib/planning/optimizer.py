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

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from .anneal import solve_anneal
from .mip import solve_mip
from .problem import PlanningProblem, OptimResult, conflict_lists, dose_at_volume, target_summary

METHODS = ("mip", "anneal", "greedy")


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
    nbrs = conflict_lists(prob)
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
        nbrs = conflict_lists(prob)
        free = [j for j in np.flatnonzero(x < 0.5) if not any(x[k] > 0.5 for k in nbrs[j])]
        if not free:
            msg += (f"; every one of the {C} candidate positions that the spacing rules allow is loaded: add needles "
                    "(smaller template spacing, another direction) or allow seeds in a margin around the target")
        elif prob.oars:
            msg += "; organ limits take precedence over coverage: relax them to raise the coverage"
    return OptimResult(x > 0.5, method, status, msg, ok, time.monotonic() - t0, s, unmet)


def _uniform_from_conflicts(prob):
    nbrs = conflict_lists(prob)
    x = np.zeros(prob.n_candidates)
    for i in range(prob.n_candidates):
        if not any(x[j] > 0.5 for j in nbrs[i]):
            x[i] = 1.0
    return x
