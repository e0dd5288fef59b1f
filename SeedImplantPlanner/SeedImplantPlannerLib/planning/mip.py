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
