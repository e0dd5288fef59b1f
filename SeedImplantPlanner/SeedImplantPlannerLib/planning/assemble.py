"""From needles and masks to a :class:`problem.PlanningProblem`: candidates, sample points, organ samples.

Used by the pipeline for the plan itself and for the quick trial plans of the direction search.
Each target contributes the candidate positions of the usable needles inside it (or within the
loading margin), with that target's seed strength, and its own random sample points (seeded
``numpy.random.Generator``; target points are jittered uniformly inside voxels, so each stands
for an equal share of the target volume). Organ points are the organ voxels within 30 mm of any
target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from .loading import Candidates, TargetRegion, candidate_positions
from .problem import build_problem

#: Organ voxels farther than this from every target are not sampled (they get far less dose).
ORGAN_SAMPLE_RANGE_MM = 30.0
#: Fewest sample points a target gets when several share the point budget.
MIN_POINTS_PER_TARGET = 1000


@dataclass
class TargetInfo:
    """One target ready for planning: name, mask, goals, seed strength (U) at implant."""

    name: str
    mask: np.ndarray
    goals: object
    strength_U: float
    region: TargetRegion | None = None


def jittered_points(mask, geometry, n, rng):
    """``n`` random points inside ``mask`` voxels (uniform within each chosen voxel), RAS mm."""
    k, j, i = np.nonzero(mask)
    idx = rng.choice(len(i), size=n, replace=len(i) < n)
    ijk = np.stack([i[idx], j[idx], k[idx]], axis=1).astype(float) + rng.uniform(-0.5, 0.5, size=(n, 3))
    return geometry.ijk_to_ras(ijk)


def mask_points_near(mask, geometry, points, margin_mm):
    """Voxel centres of ``mask`` inside the index box around ``points`` grown by ``margin_mm``."""
    ijk = geometry.ras_to_ijk(points)
    pad = np.ceil(margin_mm / np.asarray(geometry.spacing)).astype(int) + 1
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + pad, np.asarray(geometry.size) - 1)
    sub = mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    k, j, i = np.nonzero(sub)
    return geometry.ijk_to_ras(np.stack([i + lo[0], j + lo[1], k + lo[2]], axis=1).astype(float))


def point_shares(targets, n_total):
    """Sample points per target: ``n_total`` for one target, else shared by volume with a floor."""
    if len(targets) == 1:
        return [int(n_total)]
    vols = np.array([float(np.count_nonzero(t.mask)) for t in targets])
    share = vols / vols.sum()
    return [int(max(min(n_total, MIN_POINTS_PER_TARGET), round(n_total * s))) for s in share]


def target_candidates(usable, targets, rules, fixed_positions=None):
    """Candidates of every target on ``usable`` needles, merged: (Candidates, strength per candidate, target index).

    A position inside two targets' regions (possible only with a loading margin) belongs to the
    first of them. Every target's ``region`` must be set.
    """
    parts, strengths, owner = [], [], []
    taken = set()
    for t_idx, t in enumerate(targets):
        c = candidate_positions(usable, t.region, rules, fixed_positions)
        keep = np.array([(int(n), round(float(s), 3)) not in taken for n, s in zip(c.needle_index, c.s_from_tip_mm)],
                        dtype=bool)
        if len(c) and not keep.all():
            c = Candidates(c.positions[keep], c.axes[keep], c.needle_index[keep], c.s_from_tip_mm[keep])
        taken.update((int(n), round(float(s), 3)) for n, s in zip(c.needle_index, c.s_from_tip_mm))
        parts.append(c)
        strengths.append(np.full(len(c), t.strength_U))
        owner.append(np.full(len(c), t_idx))
    cands = Candidates(np.vstack([p.positions for p in parts]).reshape(-1, 3),
                       np.vstack([p.axes for p in parts]).reshape(-1, 3),
                       np.concatenate([p.needle_index for p in parts]).astype(int),
                       np.concatenate([p.s_from_tip_mm for p in parts]))
    return cands, np.concatenate(strengths), np.concatenate(owner).astype(int)


def organ_samples(oars, oar_masks, geometry, target_points, rng, warnings):
    """``(OARConstraint, points, voxel_cc, distance to the nearest target)`` per organ, as build_problem wants."""
    from scipy.spatial import cKDTree
    out = []
    if not oars:
        return out
    ttree = cKDTree(target_points[:: max(1, len(target_points) // 4000)])
    for o in oars:
        m = oar_masks[o.name]
        if not m.any():
            warnings.append(f"organ at risk '{o.name}' is empty")
            continue
        opts = mask_points_near(m, geometry, target_points, ORGAN_SAMPLE_RANGE_MM)
        if not len(opts):
            continue
        dist = ttree.query(opts)[0]
        near = dist <= ORGAN_SAMPLE_RANGE_MM
        if not near.any():
            continue
        opts, dist = opts[near], dist[near]
        n_keep = min(len(opts), 3000)
        pick = np.sort(rng.choice(len(opts), n_keep, replace=False)) if len(opts) > n_keep else np.arange(len(opts))
        voxel_cc = geometry.voxel_volume_cc * len(opts) / n_keep
        out.append((o, opts[pick], voxel_cc, dist[pick]))
    return out


def assemble(geometry, usable, targets, plan_goals, oars, oar_masks, kernel, gy_per_U_h, rules, rng, *,
             n_target_points=3000, n_check_points=6000, fixed_seeds=None, fixed_kernels=None, max_needles=None,
             needle_conflicts=None, warnings=None):
    """The planning problem of ``usable`` needles for ``targets``: (problem, candidates, strengths, owner).

    Raises InputError when no usable needle has a candidate position in any target.
    """
    warnings = [] if warnings is None else warnings
    for t in targets:
        if t.region is None:
            t.region = TargetRegion(t.mask, geometry, rules.target_margin_mm)
    cands, strengths, owner = target_candidates(usable, targets, rules,
                                                None if fixed_seeds is None else fixed_seeds.positions)
    if len(cands) == 0:
        raise InputError("no candidate seed position: no usable needle passes through "
                         + ", ".join(f"'{t.name}'" for t in targets)
                         + f" with the first seed {rules.tip_offset_mm:g} mm from its tip")
    shares_opt = point_shares(targets, n_target_points)
    shares_chk = point_shares(targets, n_check_points)
    opt_pts = np.vstack([jittered_points(t.mask, geometry, n, rng) for t, n in zip(targets, shares_opt)])
    chk_pts = np.vstack([jittered_points(t.mask, geometry, n, rng) for t, n in zip(targets, shares_chk)])
    from .needles import mask_points
    all_t = np.vstack([mask_points(t.mask, geometry) for t in targets])
    oar_s = organ_samples(oars, oar_masks, geometry, all_t, rng, warnings)
    needle_cost = np.array([0.0 if n.fixed else 1.0 for n in usable])
    blocks = None
    if len(targets) > 1:
        blocks = [(t.name, t.goals, a, b) for t, a, b in zip(targets, shares_opt, shares_chk)]
    prob = build_problem(cands, len(usable), needle_cost, opt_pts, chk_pts, kernel, gy_per_U_h, strengths, plan_goals,
                         oar_s, fixed_seeds, rules.min_distance_mm, fixed_kernels, targets=blocks,
                         max_needles=max_needles, needle_conflicts=needle_conflicts)
    return prob, cands, strengths, owner


def blocking_report(needles_through, hits, too_long, target_name):
    """Why no needle reaches ``target_name``: counts of needles stopped by each structure and by length."""
    by = {}
    nums = {n.number for n in needles_through}
    for h in hits:
        if h.needle_number in nums:
            by.setdefault(h.structure, set()).add(h.needle_number)
    parts = [f"{len(v)} meet {k}" for k, v in sorted(by.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    n_long = sum(1 for n in too_long if n.number in nums)
    if n_long:
        parts.append(f"{n_long} are longer than their usable length")
    if not needles_through:
        return f"no feasible needle path reaches the target '{target_name}'"
    return (f"no feasible needle path reaches the target '{target_name}': of {len(needles_through)} path(s) through it, "
            + ", ".join(parts) if parts else f"no usable needle position in the target '{target_name}'")
