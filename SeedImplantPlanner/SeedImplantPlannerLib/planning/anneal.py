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


#: Weight of the soft-goal excess (fraction of a target above a soft limit) in the annealing cost.
#: Coverage shortfall weighs 200 per unit fraction and all seeds together about 1, so a soft goal
#: gives way to the hard goals but wins over the seed count: soft goals are met whenever feasible.
SOFT_WEIGHT = 20.0
HOT_SLOPE = 0.5


def solve_anneal(prob: PlanningProblem, x0, time_limit_s=6.0, needle_weight=1.0, rng_seed=0, n_iter=40000,
                 progress=None, seed_ref=None, buffer=0.01, soft_weight=SOFT_WEIGHT):
    """Selection (C,) from simulated annealing started at ``x0``; returns (x, status text).

    ``x0`` must respect the needle limit and the needle clearance (:func:`optimizer.feasible_start`);
    moves that would break either are never taken.
    """
    rng = np.random.default_rng(rng_seed)
    C = prob.n_candidates
    Dt = np.ascontiguousarray(prob.D_opt.T)  # (C, N)
    nbrs = conflict_lists(prob)
    nconf = prob.needle_conflict_lists()
    max_needles = prob.max_needles
    oar_D = [np.ascontiguousarray(o.D[o.constrained].T) for o in prob.oars]
    oar_f = [o.fixed[o.constrained] for o in prob.oars]
    oar_lim = [o.limit_Gy for o in prob.oars]
    seed_ref = float(seed_ref or max(1.0, x0.sum()))
    w_seed = 1.0 / seed_ref
    w_needle = needle_weight / seed_ref

    # per target: its rows, coverage levels (1 / level, fraction), soft limits (level, fraction), 1 / N
    parts = []
    for b in prob.blocks():
        n_b = max(1, b.opt.stop - b.opt.start)
        parts.append((b.opt, [(1.0 / lvl, frac) for lvl, frac in b.goals.coverage_levels()],
                      [(lvl, frac) for _, lvl, frac in b.goals.soft_limits()],
                      (1.5 * b.goals.prescription_Gy, 2.0 * b.goals.prescription_Gy), 1.0 / n_b))

    def cost(d, od, nseeds, nneedles):
        c = 0.0
        for rows, inv_levels, soft, (hot1, hot2), inv_n in parts:
            db = d[rows]
            for inv, frac in inv_levels:
                u = db * inv
                cov = np.count_nonzero(u >= 1.0) * inv_n
                c += 200.0 * max(0.0, frac + buffer - cov)
                np.subtract(1.0, u, out=u)
                np.maximum(u, 0.0, out=u)
                c += 2.0 * float(u.sum()) * inv_n
            n_hot = {hot1: np.count_nonzero(db >= hot1), hot2: np.count_nonzero(db >= hot2)}
            c += 0.1 * (n_hot[hot1] + n_hot[hot2]) * inv_n
            for lvl, frac in soft:
                # V150 and V200 count the points above the same levels as the hot-spot term: counted once
                n = n_hot[lvl] if lvl in n_hot else np.count_nonzero(db >= lvl)
                over = n * inv_n - frac
                if over > 0:
                    # the excess fraction, and how far the dose runs over the soft level (a slope the
                    # search can follow where single moves do not change the count)
                    c += soft_weight * (over + HOT_SLOPE * float(np.maximum(db - lvl, 0.0).sum()) * inv_n / lvl)
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
    costly = int(np.count_nonzero((per_needle > 0) & (ncost > 0)))
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
        dcostly = 0
        if add >= 0 and per_needle[nidx[add]] == 0 and not (rem >= 0 and nidx[rem] == nidx[add]):
            na = nidx[add]
            # needle clearance: a new needle may not pass too close to a needle in use (the one
            # being emptied by this move excepted)
            if any(per_needle[m] > 0 and not (rem >= 0 and m == nidx[rem] and per_needle[m] == 1) for m in nconf[na]):
                continue
            dcostly += ncost[na] > 0
        if rem >= 0 and per_needle[nidx[rem]] == 1 and not (add >= 0 and nidx[add] == nidx[rem]):
            dcostly -= ncost[nidx[rem]] > 0
        if max_needles is not None and dcostly > 0 and costly + dcostly > max_needles:
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
            costly += dcostly
            on = np.flatnonzero(x)
            if cur < best:
                best, best_x = cur, x.copy()
    note = f", stopped by the time limit after {it} of {n_iter} iterations" if stopped else ""
    return best_x.astype(float), (f"annealing: {it + 1 if not stopped else it} iterations in "
                                  f"{time.monotonic() - t0:.1f} s, cost {best:.4f}{note}")
