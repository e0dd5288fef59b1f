"""Seed loading by a mixed-integer program solved by HiGHS (``scipy.optimize.milp``).

See :mod:`optimizer` for the model, its sources (E.K. Lee et al.; Gorissen et al.) and how it
compares with annealing in ``benchmarks/bench_plan.py``.
"""

from __future__ import annotations

import math

import numpy as np

from .problem import PlanningProblem


def solve_mip(prob: PlanningProblem, time_limit_s=6.0, needle_weight=1.0, n_points=1200, rng_seed=0,
              sparsify_frac=0.005, buffer=0.01, hot_weight=0.0):
    """Selection (C,) from the HiGHS MIP (see module doc); returns (x, status text)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, csr_matrix, hstack, vstack, identity
    rng = np.random.default_rng(rng_seed)
    C, K = prob.n_candidates, prob.n_needles
    D_all, f_all = prob.D_opt, prob.fixed_opt
    blocks = prob.blocks()
    n_total = max(1, len(D_all))
    idx_parts, levels = [], []  # levels: (dose level, fraction, rows of the subsample of its target)
    start = 0
    for b in blocks:
        rows = np.arange(len(D_all))[b.opt]
        n_b = max(1, int(round(n_points * len(rows) / n_total)))
        if len(rows) > n_b:
            rows = np.sort(rng.choice(rows, n_b, replace=False))
        idx_parts.append(rows)
        for lvl, frac in b.goals.coverage_levels():
            levels.append((lvl, frac, np.arange(start, start + len(rows))))
        start += len(rows)
    idx = np.concatenate(idx_parts)
    D, f = D_all[idx], f_all[idx]
    N = len(D)
    thr = sparsify_frac * min(b.goals.prescription_Gy for b in blocks)
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
        cost[:C] += hot_weight * np.asarray((D >= 1.5 * blocks[0].goals.prescription_Gy).sum(axis=0)).ravel() / max(N, 1)
    integrality = np.zeros(nv)
    integrality[:C + K + N * n_lvl] = 1
    lb = np.zeros(nv)
    ub = np.ones(nv)
    ub[C + K + N * n_lvl:] = np.inf
    parts, lo, hi = [], [], []
    for li, (lvl, frac, rows) in enumerate(levels):
        # D x - lvl z >= -f on the target's rows; z of the other rows stay 0 (upper bound below)
        zblock = coo_matrix((np.full(N, -lvl), (np.arange(N), C + K + li * N + np.arange(N))), shape=(N, nv))
        xblock = hstack([Ds, csr_matrix((N, nv - C))])
        parts.append(xblock + zblock)
        lo.append(-f)
        hi.append(np.full(N, np.inf))
        outside = np.setdiff1d(np.arange(N), rows)
        ub[C + K + li * N + outside] = 0.0
        # sum z + shortfall >= ceil((frac + buffer) N_target)
        row = np.zeros(nv)
        row[C + K + li * N:C + K + (li + 1) * N] = 1.0
        row[C + K + N * n_lvl + li] = 1.0
        parts.append(csr_matrix(row))
        lo.append([min(len(rows), math.ceil((frac + buffer) * len(rows) - 1e-9))])
        hi.append([np.inf])
    # x_j <= y_n
    r = np.arange(C)
    link = coo_matrix((np.concatenate([np.ones(C), -np.ones(C)]),
                       (np.concatenate([r, r]), np.concatenate([r, C + prob.needle_index]))), shape=(C, nv))
    parts.append(link)
    lo.append(np.full(C, -np.inf))
    hi.append(np.zeros(C))
    if len(prob.conflicts):
        P = len(prob.conflicts)
        rr = np.arange(P)
        conf = coo_matrix((np.ones(2 * P), (np.concatenate([rr, rr]), prob.conflicts.T.ravel())), shape=(P, nv))
        parts.append(conf)
        lo.append(np.full(P, -np.inf))
        hi.append(np.ones(P))
    if M:
        rows = np.vstack([o.D[i] for o, i in oar_rows])
        rhs = np.array([o.limit_Gy - o.fixed[i] for o, i in oar_rows])
        oblock = hstack([csr_matrix(np.where(rows >= thr, rows, 0.0)), csr_matrix((M, nv - C - M)),
                         -identity(M, format="csr")])
        parts.append(oblock)
        lo.append(np.full(M, -np.inf))
        hi.append(rhs)
    if prob.needle_conflicts is not None and len(prob.needle_conflicts):
        Q = len(prob.needle_conflicts)
        rq = np.arange(Q)
        parts.append(coo_matrix((np.ones(2 * Q), (np.concatenate([rq, rq]), C + prob.needle_conflicts.T.ravel())),
                                shape=(Q, nv)))
        lo.append(np.full(Q, -np.inf))
        hi.append(np.ones(Q))
    if prob.max_needles is not None:
        row = np.zeros(nv)
        row[C:C + K] = (prob.needle_cost > 0).astype(float)
        parts.append(csr_matrix(row))
        lo.append([-np.inf])
        hi.append([float(prob.max_needles)])
    A = vstack(parts, format="csr")
    res = milp(cost, constraints=LinearConstraint(A, np.concatenate(lo), np.concatenate(hi)),
               integrality=integrality, bounds=Bounds(lb, ub),
               options={"time_limit": float(max(time_limit_s, 0.1)), "disp": False, "mip_rel_gap": 0.02})
    if res.x is None:
        return None, f"HiGHS found no solution within {time_limit_s:g} s ({res.message})"
    x = (res.x[:C] > 0.5).astype(float)
    bound = getattr(res, "mip_dual_bound", None)
    bound_text = "" if bound is None or not np.isfinite(bound) else f", dual bound {bound:.1f}"
    return x, f"HiGHS: {res.message.strip()} (objective {res.fun:.1f}{bound_text})"
