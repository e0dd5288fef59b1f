"""Lower bounds on the hot-spot soft goals: is a traded V150 / V200 / D90 upper bound infeasible?

When the plan trades a soft goal (the best loading found keeps, say, V200 = 40 % against a limit of
20 %), the question a physicist asks is whether any loading of the same needles could do better,
or whether the optimiser stopped short. :func:`soft_goal_bound` answers it from below with a
mixed-integer program on the same candidate positions, solved by HiGHS (``scipy.optimize.milp``):

- binary x_j: a seed at candidate j; the spacing conflicts, needle clearance, needle limit and
  organ limits are dropped (a relaxation: every real plan on these candidates is feasible here);
- on a random sample of the target's check points, binary z_i marks a point covered
  (f_i + D_i x >= L_cov z_i, sum z >= v_min N for each coverage goal: V100 and D90) and binary h_i
  a point allowed above the soft level L (f_i + D_i x <= L + M_i h_i, with M_i the dose at i when
  every candidate is loaded, minus L), tightened by h_i >= x_j wherever one seed at j alone puts
  point i above L (valid because seeds are whole);
- minimise sum h: the smallest fraction of the sample above L that any loading meeting the coverage
  goals must have. HiGHS' dual bound when its time limit stops it is a valid lower bound; with
  big-M rows it is often weak (LP relaxation, E.K. Lee et al., Annals of Operations Research 2003,
  DOI 10.1023/A:1022986523863; Gorissen, den Hertog, Hoffmann, arXiv:1408.2746).

A bound above the limit proves the soft goal infeasible with these needles (on the sampled points;
the sample's own error is about sqrt(p (1 - p) / N)); a bound below the limit proves nothing.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .problem import PlanningProblem

#: Sample points per bound (the relaxation's size; each point has two or three binaries).
BOUND_POINTS = 400
#: At most this many non-zeros in the dense coverage rows (levels x points x candidates): HiGHS does
#: not stop at its time limit while it presolves or solves the root of a larger model (400 points x 423
#: candidates x 2 levels: 3.3 s for a 1 s limit; 170 points: 1.3 s), so large candidate sets get fewer points.
BOUND_NONZEROS = 150_000


def soft_goal_bound(prob: PlanningProblem, block, level_Gy, time_limit_s=2.0, n_points=BOUND_POINTS, rng_seed=0):
    """Lower bound (percent of ``block``'s sample) above ``level_Gy`` for any loading meeting its coverage goals.

    ``block``: a :class:`problem.TargetBlock` of ``prob`` (its check points are sampled). Returns
    ``{"bound_percent", "status" ("optimal" | "time limit" | "infeasible"), "n_points", "seconds",
    "relaxed_value_percent" (the best loading HiGHS found for this relaxation, or None)}``.
    ``infeasible`` means no loading of these candidates meets the coverage goals on the sample.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix, hstack
    t0 = time.monotonic()
    rng = np.random.default_rng(rng_seed)
    rows = np.arange(len(prob.D_chk))[block.chk]
    n_points = int(min(n_points, max(100, BOUND_NONZEROS // max(1, len(block.goals.coverage_levels()) *
                                                               prob.n_candidates))))
    if len(rows) > n_points:
        rows = np.sort(rng.choice(rows, n_points, replace=False))
    D = np.asarray(prob.D_chk[rows], float)
    f = np.asarray(prob.fixed_chk[rows], float)
    N, C = D.shape
    levels = block.goals.coverage_levels()
    K = len(levels)
    # variables: x (C, continuous), z (K x N, binary), h (N, binary)
    n_var = C + K * N + N
    cons = []
    for k, (lvl, frac) in enumerate(levels):
        # f_i + D_i x >= lvl z_ki  ->  D_i x - lvl z_ki >= -f_i  (dense rows: dropping entries would not be a relaxation)
        zk = csr_matrix((np.full(N, -lvl), (np.arange(N), C + k * N + np.arange(N))), shape=(N, n_var))
        A = hstack([csr_matrix(D), csr_matrix((N, n_var - C))]).tocsr() + zk
        cons.append(LinearConstraint(A, -f, np.inf))
        need = math.ceil(frac * N - 1e-9)
        row = csr_matrix((np.ones(N), (np.zeros(N, int), C + k * N + np.arange(N))), shape=(1, n_var))
        cons.append(LinearConstraint(row, need, np.inf))
    full = f + D.sum(axis=1)
    M = full - level_Gy
    can_be_hot = M > 0
    # f_i + D_i x - M_i h_i <= level  (only for points that can exceed it at all)
    hot_rows = np.flatnonzero(can_be_hot)
    if len(hot_rows):
        Dh = D[hot_rows].copy()
        Dh[Dh < 1e-9] = 0.0  # dropping entries here only lowers the dose: still a relaxation
        A = hstack([csr_matrix(Dh), csr_matrix((len(hot_rows), K * N)),
                    csr_matrix((-M[hot_rows], (np.arange(len(hot_rows)), hot_rows)), shape=(len(hot_rows), N))])
        cons.append(LinearConstraint(A.tocsr(), -np.inf, level_Gy - f[hot_rows]))
    lo = np.zeros(n_var)
    hi = np.ones(n_var)
    hi[C + K * N:][~can_be_hot] = 0.0
    # one whole seed alone above the level at point i: h_i >= x_j
    ii, jj = np.nonzero(f[:, None] + D > level_Gy)
    if len(ii):
        k = np.arange(len(ii))
        cons.append(LinearConstraint(csr_matrix((np.r_[np.ones(len(ii)), -np.ones(len(ii))],
                                                 (np.r_[k, k], np.r_[jj, C + K * N + ii])), shape=(len(ii), n_var)),
                                     -np.inf, 0.0))
    integrality = np.ones(n_var)
    cost = np.r_[np.zeros(C + K * N), np.ones(N)]
    left = time_limit_s - (time.monotonic() - t0)  # building the rows counts against the time limit
    res = milp(cost, constraints=cons, integrality=integrality, bounds=Bounds(lo, hi),
               options={"time_limit": float(max(0.1, left)), "disp": False, "mip_rel_gap": 1e-4})
    out = {"n_points": int(N), "seconds": round(time.monotonic() - t0, 2), "relaxed_value_percent": None}
    if res.status == 2:  # infeasible
        out.update(bound_percent=None, status="infeasible")
        return out
    dual = getattr(res, "mip_dual_bound", None)
    if res.status == 0:
        bound = float(res.fun)
        out["status"] = "optimal"
    else:
        bound = float(dual) if dual is not None and math.isfinite(dual) else 0.0
        out["status"] = "time limit"
    if res.x is not None:
        out["relaxed_value_percent"] = round(100.0 * float(np.sum(res.x[C + K * N:] > 0.5)) / N, 1)
    # the count of hot points is an integer: round the bound up (minus a tolerance for the solver's)
    out["bound_percent"] = math.floor(1000.0 * max(0.0, math.ceil(bound - 1e-6)) / N) / 10.0  # floored: still a bound
    return out


def bound_traded(prob: PlanningProblem, traded, time_limit_s=4.0, n_points=BOUND_POINTS, rng_seed=0):
    """Add a lower bound to each traded soft-goal row (from :func:`optimizer.soft_report`), ``time_limit_s`` in all.

    Each row gets ``bound`` (dict of :func:`soft_goal_bound`, or None when the time ran out) and
    ``verdict``: "infeasible" (the bound, less two standard errors of the sample, is above the
    limit: no loading of these needles meets the goal), "open" (the bound is below the limit: the
    relaxation cannot tell; a better loading may exist) or "not computed".
    """
    blocks = {b.name: b for b in prob.blocks()}
    pending = [r for r in traded if r["goal"] != "D90 <= % Rx"]
    for r in traded:
        r["bound"] = None
        r["verdict"] = "not computed"
    share = time_limit_s / max(1, len(pending))  # each traded goal its share (HiGHS may overrun a little)
    for r in pending:
        b = blocks.get(r["target"]) or next(iter(blocks.values()))
        label = r["goal"].split()[0]  # "V150" / "V200"
        lvl = {lab: level for lab, level, _ in b.goals.soft_limits()}.get(label)
        if lvl is None:
            continue
        res = soft_goal_bound(prob, b, lvl, share, n_points, rng_seed)
        r["bound"] = res
        if res["status"] == "infeasible":
            r["verdict"] = "coverage infeasible"
            continue
        p = res["bound_percent"] / 100.0
        se = 100.0 * math.sqrt(max(p * (1.0 - p), 1e-4) / max(res["n_points"], 1))
        r["verdict"] = "infeasible" if res["bound_percent"] - 2.0 * se > r["limit"] else "open"
    return traded


def describe(row) -> str:
    """One sentence on a traded soft goal's bound, for the plan's warnings and summary."""
    b = row.get("bound")
    if not b:
        return "no lower bound computed (time)"
    if row["verdict"] == "coverage infeasible":
        return "even fractional seeds on these candidates cannot meet the coverage goals"
    how = "exact" if b["status"] == "optimal" else "HiGHS dual bound at its time limit"
    text = f"the lower bound on this candidate set is {b['bound_percent']:.1f} % ({how}, {b['n_points']} points)"
    if row["verdict"] == "infeasible":
        return text + ": the limit cannot be met with these needles"
    return text + ": not proven infeasible (a better loading may exist)"
