"""Needle layouts made by the planner: parallel templates and non-coplanar fan candidates.

A :func:`parallel_template` is a square grid of holes in the plane perpendicular to the insertion
direction, placed on the skin; :func:`fan_candidates` are straight needles from a skin entry region
aimed through the target, as a 3D-printed non-coplanar template holds them. :func:`skin_point`
finds where a ray leaves the body. Coordinates are RAS millimetres; the :class:`needles.Needle`
objects returned are numbered 1..N.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError
from .needles import (DEFAULT_GAUGE, DEFAULT_USABLE_LENGTH_MM, GAUGE_OUTER_DIAMETER_MM, MAX_TEMPLATE_HOLES, MaskSampler,
                      Needle, mask_points, unit_vector, vec3)

def _orthonormal_frame(normal):
    n = normal / np.linalg.norm(normal)
    helper = np.array([0.0, 0.0, 1.0]) if abs(n[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(helper, n)
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    return u, v


def _ray_extent(sampler, origin, direction, t_max, step):
    """(t_first, t_last) of ``sampler`` along origin + t * direction for t in [0, t_max], or None."""
    t = np.arange(0.0, t_max + step, step)
    inside = sampler(origin[None, :] + t[:, None] * direction[None, :])
    if not inside.any():
        return None
    idx = np.flatnonzero(inside)
    return float(t[idx[0]]), float(t[idx[-1]])


def skin_point(body_sampler, start, direction, t_max=600.0, step=0.5):
    """Where the ray from ``start`` (inside the body) along ``direction`` leaves the body (RAS mm)."""
    t = np.arange(0.0, t_max, step)
    inside = body_sampler(start[None, :] + t[:, None] * direction[None, :])
    if not inside[0]:
        return None
    out = np.flatnonzero(~inside)
    if not out.size:
        return None
    return start + t[out[0] - 1] * direction


def parallel_template(target_mask, geometry, insertion_direction, spacing_mm=10.0, template_point=None,
                      body_mask=None, tip_beyond_mm=0.0, min_target_path_mm=2.0, gauge=DEFAULT_GAUGE,
                      usable_length_mm=DEFAULT_USABLE_LENGTH_MM, standoff_mm=0.0):
    """Parallel needles on a square grid of template holes, keeping the holes whose path crosses the target.

    The template is the plane through ``template_point`` perpendicular to ``insertion_direction``
    (any direction, not only axial). Without ``template_point`` the plane is placed where the ray
    from the target centroid against the insertion direction leaves ``body_mask`` (the skin), plus
    ``standoff_mm``; without a body mask, at the target's near side plus 20 mm. The grid is aligned
    to the target centroid. Each kept needle's entry is its template hole, its tip the far end of
    the target along the hole's path plus ``tip_beyond_mm``.
    """
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise InputError(f"template spacing must be > 0 mm, got {spacing_mm}")
    outer_mm = GAUGE_OUTER_DIAMETER_MM.get(gauge)
    if outer_mm is not None and spacing_mm < outer_mm:
        raise InputError(f"template spacing {spacing_mm:g} mm is below the outer diameter of a {gauge} G needle "
                         f"({outer_mm:g} mm): template holes cannot be that close")
    d = unit_vector(insertion_direction, "insertion direction")
    target_mask = np.asarray(target_mask, dtype=bool)
    if not target_mask.any():
        raise InputError("the target is empty: no template needle can cross it")
    sampler = MaskSampler(target_mask, geometry)
    pts = mask_points(target_mask, geometry)
    centroid = pts.mean(axis=0)
    along = (pts - centroid) @ d
    if template_point is None:
        p0 = None
        if body_mask is not None:
            p0 = skin_point(MaskSampler(body_mask, geometry), centroid, -d)
        if p0 is None:
            p0 = centroid + (along.min() - 20.0) * d
        p0 = p0 - standoff_mm * d
    else:
        p0 = vec3(template_point, "template point")
    u, v = _orthonormal_frame(d)
    rel = pts - p0
    pu, pv = rel @ u, rel @ v
    c_u, c_v = (centroid - p0) @ u, (centroid - p0) @ v
    iu = np.arange(math.floor((pu.min() - c_u) / spacing_mm) - 1, math.ceil((pu.max() - c_u) / spacing_mm) + 2)
    iv = np.arange(math.floor((pv.min() - c_v) / spacing_mm) - 1, math.ceil((pv.max() - c_v) / spacing_mm) + 2)
    if len(iu) * len(iv) > MAX_TEMPLATE_HOLES:
        raise InputError(f"a {spacing_mm:g} mm template over this target has {len(iu) * len(iv)} holes (more than "
                         f"{MAX_TEMPLATE_HOLES}): use a larger template spacing")
    depth_max = float((rel @ d).max()) + 5.0
    if depth_max <= 0:
        raise InputError("the template plane lies beyond the target along the insertion direction")
    step = 0.5 * min(geometry.spacing)
    needles = []
    for a in iu:
        for b in iv:
            hole = p0 + (c_u + a * spacing_mm) * u + (c_v + b * spacing_mm) * v
            ext = _ray_extent(sampler, hole, d, depth_max, step)
            if ext is None or ext[1] - ext[0] < min_target_path_mm:
                continue
            tip = hole + (ext[1] + tip_beyond_mm) * d
            needles.append(Needle(len(needles) + 1, hole, tip, gauge=gauge, usable_length_mm=usable_length_mm,
                                  kind="template", reference_axis=d,
                                  name=f"T{int(a):+d}{int(b):+d}".replace("+", "p").replace("-", "m")))
    if not needles:
        raise InputError("no template hole has a path that crosses the target (check the insertion direction "
                         "and the template position)")
    for i, n in enumerate(needles, start=1):
        n.number = i
    return needles


def fan_candidates(target_mask, geometry, body_mask, approach_direction=None, entry_center=None,
                   entry_radius_mm=60.0, spacing_mm=10.0, obstacle_map=None, usable_length_mm=DEFAULT_USABLE_LENGTH_MM,
                   gauge=DEFAULT_GAUGE, tip_beyond_mm=0.0, max_needles=60, n_entries=64, rng_seed=0,
                   min_target_path_mm=5.0):
    """Non-coplanar needles fanning from an entry region on the skin through the target.

    Entry points are skin voxels (surface of ``body_mask``) within ``entry_radius_mm`` of
    ``entry_center`` (default: where the ray from the target centroid along ``approach_direction``
    leaves the body). Aim points are a ``spacing_mm`` grid inside the target. Each (entry, aim)
    line is extended to the far end of the target; lines that cross a forbidden structure of
    ``obstacle_map`` (with its margin), are longer than the usable length, or cross the target for
    less than ``min_target_path_mm`` are dropped. From the rest, needles are chosen greedily
    (longest path in the target first) so that their in-target segments stay at least
    ``0.8 * spacing_mm`` apart, as a 3D-printed non-coplanar template would hold them.
    Deterministic for a given ``rng_seed``.
    """
    from scipy.ndimage import binary_erosion
    from scipy.spatial import cKDTree
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise InputError(f"needle spacing must be > 0 mm, got {spacing_mm}")
    target_mask = np.asarray(target_mask, dtype=bool)
    if not target_mask.any():
        raise InputError("the target is empty: no candidate needle can reach it")
    if body_mask is None or not np.asarray(body_mask).any():
        raise InputError("automatic fan candidates need a body (skin) segment to place their entries on")
    body_mask = np.asarray(body_mask, dtype=bool)
    rng = np.random.default_rng(rng_seed)
    sampler = MaskSampler(target_mask, geometry)
    tpts = mask_points(target_mask, geometry)
    centroid = tpts.mean(axis=0)
    if entry_center is None:
        a = unit_vector(approach_direction if approach_direction is not None else (0.0, 1.0, 0.0), "approach direction")
        entry_center = skin_point(MaskSampler(body_mask, geometry), centroid, a)
        if entry_center is None:
            raise InputError("the target centroid is not inside the body segment: cannot find the skin entry region")
    entry_center = vec3(entry_center, "entry centre")
    # skin voxels (body surface) inside the box around the entry region only
    ijk = geometry.ras_to_ijk(np.vstack([entry_center - entry_radius_mm, entry_center + entry_radius_mm]))
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - 2, 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 2, np.asarray(geometry.size) - 1)
    sub = body_mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    skin = sub & ~binary_erosion(sub, border_value=1)
    k, j, i = np.nonzero(skin)
    spts = geometry.ijk_to_ras(np.stack([i + lo[0], j + lo[1], k + lo[2]], axis=1).astype(float))
    spts = spts[np.linalg.norm(spts - entry_center, axis=1) <= entry_radius_mm]
    if not len(spts):
        raise InputError(f"no skin voxel within {entry_radius_mm} mm of the entry centre {np.round(entry_center, 1).tolist()}")
    if len(spts) > n_entries:
        spts = spts[np.sort(rng.choice(len(spts), n_entries, replace=False))]
    # aim points: a grid inside the target
    lo, hi = tpts.min(axis=0), tpts.max(axis=0)
    axes = [np.arange(lo[k] + 0.5 * ((hi[k] - lo[k]) % spacing_mm), hi[k] + 1e-6, spacing_mm) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    aims = grid[sampler(grid)]
    if not len(aims):
        aims = centroid[None, :]
    step = 0.5 * min(geometry.spacing)
    cands = []
    for e in spts:
        for a in aims:
            d = a - e
            n = np.linalg.norm(d)
            if n < 1e-6:
                continue
            d = d / n
            ext = _ray_extent(sampler, e, d, n + 200.0, step)
            if ext is None or ext[1] - ext[0] < min_target_path_mm:
                continue
            depth = ext[1] + tip_beyond_mm
            if depth > usable_length_mm:
                continue
            cands.append((ext[1] - ext[0], e, e + depth * d, e + ext[0] * d))
    if not cands:
        raise InputError("no feasible needle path: no line from the entry region reaches the target within "
                         f"the usable length ({usable_length_mm:g} mm)")
    order = sorted(range(len(cands)), key=lambda i: -cands[i][0])
    chosen, seg_pts = [], []
    tree = None
    min_sep = 0.8 * spacing_mm
    rejected_by_obstacle = 0
    for i in order:
        length, e, tip, t_in = cands[i]
        m = max(2, int(math.ceil(np.linalg.norm(tip - t_in) / 2.0)) + 1)
        pts = t_in + np.linspace(0.0, 1.0, m)[:, None] * (tip - t_in)[None, :]
        if tree is not None and np.any(tree.query(pts)[0] < min_sep):
            continue
        needle = Needle(len(chosen) + 1, e, tip, gauge=gauge, usable_length_mm=usable_length_mm, kind="auto",
                        name=f"A{len(chosen) + 1}")
        if obstacle_map is not None and obstacle_map.check(needle):
            rejected_by_obstacle += 1
            continue
        chosen.append(needle)
        seg_pts.append(pts)
        tree = cKDTree(np.vstack(seg_pts))
        if len(chosen) >= max_needles:
            break
    if not chosen:
        raise InputError(f"no feasible needle path: all {rejected_by_obstacle} candidate paths from the entry region "
                         "cross a forbidden structure or its margin")
    return chosen
