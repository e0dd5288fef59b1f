"""Seed loading by simulated annealing over the binary loading (the default method).

See :mod:`optimizer` for the objective and its source (Deist & Gorissen, Phys Med Biol,
DOI 10.1088/0031-9155/61/3/1155, arXiv:1703.09461).
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..core import progress as _progress
from .problem import PlanningProblem, conflict_lists


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
    nbrs = conflict_lists(prob)
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
