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
#: How many seeds one more needle is worth to the optimiser by default (see docs/planning.md).
DEFAULT_NEEDLE_WEIGHT = 1.0


def _check_goals(prob: PlanningProblem, x, buffer):
    """(met, unmet messages, summary) of selection ``x`` on the check sample (hard goals only)."""
    d = prob.fixed_chk + prob.D_chk @ x
    blocks = prob.blocks()
    many = len(blocks) > 1
    s = {}
    unmet = []
    for b in blocks:
        g = b.goals
        db = d[b.chk]
        summ = target_summary(db, g.prescription_Gy)
        s.update({(f"{b.name}_{k}" if many else k): v for k, v in summ.items()})
        who = f"target {b.name}" if many else "target"
        for lvl, frac in g.coverage_levels():
            cov = float(np.mean(db >= lvl - 1e-6))
            if cov < frac + buffer:
                unmet.append(f"{who} coverage at {lvl:.1f} Gy is {100 * cov:.1f}% (goal {100 * frac:.0f}%)")
    for o in prob.oars:
        do = o.fixed + o.D @ x
        v = dose_at_volume(do, o.voxel_cc, o.volume_cc)
        s[f"{o.name}_{o.label}_Gy"] = v
        if v > o.limit_Gy + 1e-6:
            unmet.append(f"{o.name} {o.label} is {v:.1f} Gy (limit {o.limit_Gy:g} Gy)")
    return not unmet, unmet, s


def soft_report(prob: PlanningProblem, x):
    """Soft goals (V150, V200, D90 upper bound) of selection ``x`` on the check sample.

    Rows ``{target, goal, value, limit, met, excess}`` in percent of the target volume (V150,
    V200) or of the prescription (D90 upper bound); ``excess`` is how far an unmet goal is over
    its limit, in the same unit.
    """
    d = prob.fixed_chk + prob.D_chk @ x
    rows = []
    for b in prob.blocks():
        g = b.goals
        db = d[b.chk]
        for label, lvl, frac in g.soft_limits():
            if label == "D90max":
                value = 100.0 * float(np.percentile(db, 10.0)) / g.prescription_Gy if len(db) else 0.0
                limit = 100.0 * g.d90_max_frac
                name = "D90 <= % Rx"
            else:
                value = 100.0 * float(np.mean(db >= lvl - 1e-6)) if len(db) else 0.0
                limit = 100.0 * frac
                name = f"{label} <= %"
            rows.append({"target": b.name, "goal": name, "value": round(value, 2), "limit": round(limit, 2),
                         "met": bool(value <= limit + 1e-9), "excess": round(max(0.0, value - limit), 2)})
    return rows


class _Feasibility:
    """Which free candidates may be loaded next: seed conflicts, needle clearance, the needle limit."""

    def __init__(self, prob: PlanningProblem, x):
        self.prob = prob
        self.pairs = np.asarray(prob.conflicts, dtype=np.int64).reshape(-1, 2)
        nc = prob.needle_conflicts
        self.needle_pairs = np.asarray(nc if nc is not None else [], dtype=np.int64).reshape(-1, 2)
        self.per_needle = np.bincount(prob.needle_index[np.asarray(x) > 0.5], minlength=prob.n_needles)

    def costly_used(self):
        """Needles in use that count against the needle limit (new needles)."""
        return int(np.count_nonzero((self.per_needle > 0) & (self.prob.needle_cost > 0)))

    def free(self, x):
        """Indices of candidates that could be added to ``x`` now (ascending)."""
        prob = self.prob
        at_limit = prob.max_needles is not None and self.costly_used() >= prob.max_needles
        loaded = np.asarray(x) > 0.5
        ok = ~loaded
        if len(self.pairs):  # not closer than the minimum distance to a loaded candidate
            a, b = self.pairs[:, 0], self.pairs[:, 1]
            ok[a[loaded[b]]] = False
            ok[b[loaded[a]]] = False
        used = self.per_needle > 0
        closed = np.zeros(prob.n_needles, dtype=bool)  # an unused needle that may not be started now:
        if at_limit:
            closed |= prob.needle_cost > 0  # the needle limit is reached
        if len(self.needle_pairs):  # it passes too close to a needle in use
            a, b = self.needle_pairs[:, 0], self.needle_pairs[:, 1]
            closed[a[used[b]]] = True
            closed[b[used[a]]] = True
        closed &= ~used
        ok &= ~closed[prob.needle_index]
        return np.flatnonzero(ok)

    def add(self, j):
        self.per_needle[self.prob.needle_index[j]] += 1

    def remove(self, j):
        self.per_needle[self.prob.needle_index[j]] -= 1


def feasible_start(prob: PlanningProblem, x):
    """``x`` restricted so that it respects the needle limit and the needle clearance.

    Needles are kept in order of their number of loaded candidates (most first, then index), each
    only if it does not pass too close to a needle already kept and the limit allows it.
    """
    x = np.asarray(x, dtype=float).copy()
    per = np.bincount(prob.needle_index[x > 0.5], minlength=prob.n_needles)
    nconf = prob.needle_conflict_lists()
    keep = np.zeros(prob.n_needles, dtype=bool)
    costly = 0
    for n in sorted(np.flatnonzero(per > 0), key=lambda n: (prob.needle_cost[n] > 0, -per[n], n)):
        if any(keep[m] for m in nconf[n]):
            continue
        if prob.needle_cost[n] > 0:
            if prob.max_needles is not None and costly >= prob.max_needles:
                continue
            costly += 1
        keep[n] = True
    x[~keep[prob.needle_index]] = 0.0
    return x


def _oar_ok(prob, x):
    # the organ matrices are float32: ``o.D @ x`` would convert one to float64 at every call; the
    # float64 copy is made once (the same numbers, the same product)
    cache = prob.__dict__.setdefault("_oar_D64", {})
    for k, o in enumerate(prob.oars):
        if k not in cache:
            cache[k] = np.asarray(o.D, dtype=np.float64)
        if dose_at_volume(o.fixed + cache[k] @ x, o.voxel_cc, o.volume_cc) > o.limit_Gy + 1e-6:
            return False
    return True


def polish(prob: PlanningProblem, x, buffer=0.01, deadline=None, progress=None, needle_weight=DEFAULT_NEEDLE_WEIGHT):
    """Repair coverage on the check sample, remove seeds while every goal holds, empty needles, trade hot spots.

    Needle stage: each new needle in use (fewest seeds first) is emptied and coverage repaired with
    the needles still in use; the change is kept when every hard goal holds, the soft-goal excess
    and the hot volumes (V150, V200, ...) do not grow and seeds + ``needle_weight`` x needles drops. The last stage swaps seeds (remove the one that pushes the most points over a soft limit, add
    the free candidate that keeps the hard goals with the least soft excess) while that lowers the
    soft-goal excess. Returns (x, cut): ``cut`` is True when the deadline stopped the polish early.
    """
    x = np.asarray(x, dtype=float).copy()
    blocks = prob.blocks()
    feas = _Feasibility(prob, x)
    D = prob.D_chk
    d = prob.fixed_chk + D @ x
    rows = [np.arange(len(d))[b.chk] for b in blocks]
    # each block's rows as a slice where they are contiguous: counting on views, not copies (same counts)
    views = [slice(int(r[0]), int(r[-1]) + 1) if len(r) and np.all(np.diff(r) == 1) else r for r in rows]
    need = [[(lvl, int(math.ceil((frac + buffer) * len(r) - 1e-9))) for lvl, frac in b.goals.coverage_levels()]
            for b, r in zip(blocks, rows)]
    soft = [[(lvl, int(math.floor(frac * len(r) + 1e-9))) for _, lvl, frac in b.goals.soft_limits()]
            for b, r in zip(blocks, rows)]
    sizes = [max(len(r), 1) for r in rows]

    def short(dd):
        return sum(max(0, k - int(np.count_nonzero(dd[v] >= lvl - 1e-6))) for v, nb in zip(views, need) for lvl, k in nb)

    def soft_excess(dd):
        return sum(max(0, int(np.count_nonzero(dd[v] >= lvl - 1e-6)) - k) / n
                   for v, sb, n in zip(views, soft, sizes) for lvl, k in sb)

    def hot_volume(dd):
        return sum(np.count_nonzero(dd[v] >= lvl - 1e-6) / n for v, sb, n in zip(views, soft, sizes) for lvl, _ in sb)

    def short_rows(T):
        """:func:`short` of every row of ``T`` (candidates x points) at once."""
        out = np.zeros(T.shape[0], dtype=np.int64)
        for v, nb in zip(views, need):
            for lvl, k in nb:
                out += np.maximum(0, k - np.count_nonzero(T[:, v] >= lvl - 1e-6, axis=1))
        return out

    def soft_excess_rows(T):
        """:func:`soft_excess` of every row of ``T``, summed in the same order (the same floats)."""
        out = np.zeros(T.shape[0])
        for v, sb, n in zip(views, soft, sizes):
            for lvl, k in sb:
                out = out + np.maximum(0, np.count_nonzero(T[:, v] >= lvl - 1e-6, axis=1) - k) / n
        return out

    def expired():
        return deadline is not None and time.monotonic() > deadline

    # repair: greedy coverage gain, respecting conflicts, needle rules and OAR limits
    cut = False
    guard = 0
    while short(d) > 0 and guard < prob.n_candidates:
        guard += 1
        free = feas.free(x)
        if not len(free):
            break
        gain = np.zeros(len(free))
        for r, nb in zip(rows, need):
            for lvl, k in nb:
                under = r[d[r] < lvl - 1e-6]
                if not len(under) or np.count_nonzero(d[r] >= lvl - 1e-6) >= k:
                    continue
                sub = D[np.ix_(under, free)]
                gain += np.count_nonzero((d[under, None] + sub) >= lvl - 1e-6, axis=0)
                gain += 1e-3 * np.minimum(sub, lvl).sum(axis=0) / lvl
        added = False
        for j in free[np.argsort(-gain, kind="stable")]:
            x[j] = 1.0
            if prob.oars and not _oar_ok(prob, x):
                x[j] = 0.0
                continue
            d += D[:, j]
            feas.add(j)
            added = True
            break
        if not added:
            break
        if expired():
            cut = True
            break
    _progress.report(progress, 0.5, "plan: polishing")
    # prune: remove the least useful seed while the goals hold
    if short(d) == 0:
        improved = True
        while improved and not cut:
            improved = False
            on = np.flatnonzero(x > 0.5)
            # remove first the seeds whose absence leaves the most margin (largest remaining coverage)
            loss = np.zeros(len(on))
            hot = np.zeros(len(on))
            for b, r in zip(blocks, rows):
                lvl0 = b.goals.coverage_levels()[0][0] if b.goals.coverage_levels() else b.goals.prescription_Gy
                h = 1.5 * b.goals.prescription_Gy
                dr = d[r][:, None]
                Dr = D[np.ix_(r, on)]
                loss += np.count_nonzero((dr >= lvl0 - 1e-6) & (dr - Dr < lvl0 - 1e-6), axis=0)
                hot += np.count_nonzero((dr >= h) & (dr - Dr < h), axis=0)
            for j in on[np.lexsort((-hot, loss))]:
                dn = d - D[:, j]
                if short(dn) == 0:
                    x[j] = 0.0
                    d = dn
                    feas.remove(j)
                    improved = True
                if expired():
                    improved = False
                    cut = True
                    break
    # empty needles: fewer, longer-loaded needles when the goals allow it
    if short(d) == 0 and not cut and needle_weight > 0:
        _progress.report(progress, 0.65, "plan: fewer needles")
        for n in sorted(np.flatnonzero((feas.per_needle > 0) & (prob.needle_cost > 0)),
                        key=lambda n: (feas.per_needle[n], n)):
            if expired():
                cut = True
                break
            mine = np.flatnonzero((x > 0.5) & (prob.needle_index == n))
            if not len(mine):
                continue
            x2 = x.copy()
            x2[mine] = 0.0
            d2 = d - D[:, mine].sum(axis=1)
            f2 = _Feasibility(prob, x2)
            ok = True
            while short(d2) > 0:
                free = f2.free(x2)
                free = free[f2.per_needle[prob.needle_index[free]] > 0]  # the needles still in use
                if not len(free):
                    ok = False
                    break
                gain = np.zeros(len(free))
                for r, nb in zip(rows, need):
                    for lvl, k in nb:
                        under = r[d2[r] < lvl - 1e-6]
                        if len(under) and np.count_nonzero(d2[r] >= lvl - 1e-6) < k:
                            gain += np.count_nonzero((d2[under, None] + D[np.ix_(under, free)]) >= lvl - 1e-6, axis=0)
                if gain.max() <= 0:
                    ok = False
                    break
                j = int(free[int(np.argmax(gain))])
                x2[j] = 1.0
                f2.add(j)
                d2 += D[:, j]
                if x2.sum() > x.sum() + needle_weight:
                    ok = False
                    break
            if not ok or (prob.oars and not _oar_ok(prob, x2)) or soft_excess(d2) > soft_excess(d) + 1e-12 \
                    or hot_volume(d2) > hot_volume(d) + 1e-12:
                continue
            if x2.sum() + needle_weight * f2.costly_used() < x.sum() + needle_weight * feas.costly_used() - 1e-9:
                x, d, feas = x2, d2, f2
    # trade hot spots: swaps that lower the soft-goal excess while every hard goal holds
    if short(d) == 0 and soft_excess(d) > 0 and not cut:
        _progress.report(progress, 0.8, "plan: hot spots")
        tabu = set()
        DT = np.ascontiguousarray(D.T)  # candidates x points: a candidate's column is one contiguous row
        col_sums = D.sum(axis=0)  # column by column, the same sums as D[:, free].sum(axis=0)
        while soft_excess(d) > 0 and not expired():
            on = [j for j in np.flatnonzero(x > 0.5) if j not in tabu]
            if not on:
                break
            push = np.zeros(len(on))
            for r, sb in zip(rows, soft):
                for lvl, k in sb:
                    hot = r[d[r] >= lvl - 1e-6]
                    if len(hot) > k:  # points over the level that drop below it without seed j
                        push += np.count_nonzero(d[hot][None, :] - DT[on][:, hot] < lvl - 1e-6, axis=1)
            j = on[int(np.argmax(push))]
            if push.max() <= 0:
                break
            tabu.add(j)
            cur = soft_excess(d)
            x[j] = 0.0
            feas.remove(j)
            dn = d - D[:, j]
            free = np.asarray([k for k in feas.free(x) if k != j], dtype=int)
            best = None
            if short(dn) == 0:
                best = (soft_excess(dn), -1)
            if len(free):
                cols = free[np.argsort(-col_sums[free], kind="stable")[:200]]
                trial = dn[None, :] + DT[cols]  # one row per candidate: the dose with it added
                ok_rows = short_rows(trial) == 0
                se_rows = soft_excess_rows(trial)
                for i_k in range(len(cols)):  # in order, as one by one: the first of equal excess wins
                    if ok_rows[i_k]:
                        se = float(se_rows[i_k])
                        if best is None or se < best[0] - 1e-12:
                            best = (se, int(cols[i_k]))
            if best is not None and best[0] < cur - 1e-12:
                if best[1] >= 0:
                    x[best[1]] = 1.0
                    if prob.oars and not _oar_ok(prob, x):
                        x[best[1]] = 0.0
                        x[j] = 1.0
                        feas.add(j)
                        continue
                    feas.add(best[1])
                    d = dn + D[:, best[1]]
                else:
                    d = dn
            else:
                x[j] = 1.0
                feas.add(j)
        if expired() and soft_excess(d) > 0:
            cut = True
    return x, cut


def optimize(prob: PlanningProblem, method="anneal", time_limit_s=8.0, rng_seed=0, needle_weight=DEFAULT_NEEDLE_WEIGHT,
             coverage_buffer=0.01, x_start=None, mip_points=600, anneal_iterations=40000, progress=None) -> OptimResult:
    """Choose the loaded candidates with ``method`` ('mip', 'anneal' or 'greedy'), then polish."""
    if method not in METHODS:
        raise InputError(f"unknown optimisation method {method!r} (use one of {', '.join(METHODS)})")
    if not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise InputError(f"time limit must be > 0 s, got {time_limit_s}")
    if prob.max_needles is not None and prob.max_needles < 1:
        raise InputError(f"the needle limit must be at least 1, got {prob.max_needles}")
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
    start = feasible_start(prob, start)
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
                    progress=_progress.scaled(progress, 0.8, 0.98), needle_weight=needle_weight)
    if cut:
        status += "; polish stopped by the time limit"
    ok, unmet, s = _check_goals(prob, x, 0.0)
    s["n_seeds"] = int(x.sum())
    s["n_needles"] = int(len(np.unique(prob.needle_index[x > 0.5])))
    s["soft_goals"] = soft_report(prob, x)
    msg = "all goals met on the sampled points" if ok else "goals not met: " + "; ".join(unmet) + \
        " (the best plan found is returned)"
    if not ok and any(" coverage at " in u for u in unmet):
        feas = _Feasibility(prob, x)
        free = feas.free(x)
        if prob.max_needles is not None and feas.costly_used() >= prob.max_needles:
            msg += (f"; the needle limit ({prob.max_needles} new needles) is reached: no plan with this many needles "
                    "was found to meet the coverage goals; allow more needles")
        elif not len(free):
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
