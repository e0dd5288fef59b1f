"""Synthetic post-implant CT: seeds rendered into a CT as metal capsules, with ground truth.

Used by the seed-finder tests, its benchmark and the demo; no patient data. Deterministic for
a given ``random_seed``.

Image model of one seed (an I-125 seed is a welded titanium capsule, about 4.5 mm long and
0.8 mm in diameter, with a dense marker inside):

1. *Object*: a capsule (the set of points within ``diameter / 2`` of a segment whose length is
   ``length - diameter``, so the rounded ends are included in ``length``) sampled on a sub-grid of
   every CT voxel (sub-voxel pitch <= ``subvoxel_mm``), occupancy 0/1.
2. *System blur*: a Gaussian point-spread function of ``psf_sigma_mm`` applied on the sub-grid.
3. *Partial volume*: the sub-grid is averaged back to the CT voxel (a box: slice thickness and
   pixel size), so a 0.8 mm capsule in a 2 x 2 x 2.5 mm voxel gives far less than its intrinsic HU.
4. *Intensity*: ``HU = background + metal_contrast_HU * blurred occupancy``; the default contrast
   makes 1 mm CTs saturate at the 12-bit ceiling (3071 HU), as clinical seed CTs do, and leaves
   thick-slice CTs at a few thousand HU.
5. *Metal artefact* (mild): in the axial plane(s) through each seed, a few straight streaks
   through the seed centre, alternately bright and dark, fading as 1/r (the pattern that
   photon starvation and beam hardening leave around small metal objects; Xu et al., Med Phys
   38:47, 2011 describe it for 60-100+ seeds).
6. Gaussian noise of ``noise_HU``, rounding and clipping to [-1024, 3071].

:func:`simulate_implant` makes the *true* seeds from a plan (needle-wise displacement, a few
migrated seeds, optional lost ones); :func:`plan_in_mask` makes a plausible plan (parallel
needles at ``spacing_mm``, seeds every ``spacing_mm``) inside a target mask, optionally with
touching pairs. Arrays are ``[k, j, i]``; coordinates RAS mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from ..physics.seeds import SeedSet

#: Physical capsule of an I-125 seed (mm).
CAPSULE_LENGTH_MM = 4.5
CAPSULE_DIAMETER_MM = 0.8
#: Intrinsic contrast of the capsule (titanium wall + dense marker) over soft tissue, HU.
METAL_CONTRAST_HU = 30000.0
HU_MIN, HU_MAX = -1024, 3071


@dataclass
class PostImplantTruth:
    """Ground truth of a synthetic post-implant CT."""

    seeds: SeedSet                       # true seeds (positions, axes, strengths, models)
    planned_index: np.ndarray            # for each true seed, the index of the planned seed it came from
    migrated: np.ndarray                 # indices (into ``seeds``) of migrated seeds
    lost: np.ndarray                     # planned indices of seeds not in the CT (lost / expelled)
    touching_pairs: list = field(default_factory=list)  # (a, b) indices of true seeds closer than a capsule
    params: dict = field(default_factory=dict)

    def isolated(self, min_gap_mm=CAPSULE_LENGTH_MM + 2.0):
        """Boolean mask of true seeds with no other seed centre within ``min_gap_mm``."""
        p = self.seeds.positions
        if len(p) < 2:
            return np.ones(len(p), dtype=bool)
        d = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
        np.fill_diagonal(d, np.inf)
        return d.min(axis=1) >= min_gap_mm


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _capsule_occupancy(points, center, axis, half_core, radius):
    """1.0 where ``points`` (..., 3) lie inside the capsule, else 0.0."""
    d = points - center
    t = np.clip(d @ axis, -half_core, half_core)
    r2 = np.sum((d - t[..., None] * axis) ** 2, axis=-1)
    return (r2 <= radius * radius).astype(np.float32)


def render_seed_contrast(geometry: ImageGeometry, center, axis, length_mm=CAPSULE_LENGTH_MM,
                         diameter_mm=CAPSULE_DIAMETER_MM, psf_sigma_mm=0.4, subvoxel_mm=0.2):
    """Blurred, voxel-averaged occupancy (0..1) of one capsule: ``(box slices, values [k, j, i])``.

    Only a box of voxels around the seed is returned; ``None`` if the seed misses the grid.
    """
    from scipy import ndimage
    sp = np.asarray(geometry.spacing, float)
    center = np.asarray(center, float)
    axis = _unit(axis)
    reach = length_mm / 2.0 + 3.0 * psf_sigma_mm + 0.5
    c_ijk = geometry.ras_to_ijk(center)
    half = np.ceil(reach / sp + 1.0).astype(int)
    lo = np.floor(c_ijk).astype(int) - half
    hi = np.floor(c_ijk).astype(int) + half + 1
    size = np.asarray(geometry.size)
    lo_c = np.maximum(lo, 0)
    hi_c = np.minimum(hi, size)
    if np.any(hi_c <= lo_c):
        return None
    n = np.maximum(1, np.ceil(sp / subvoxel_mm - 1e-9).astype(int))  # sub-voxels per voxel along i, j, k
    counts = hi_c - lo_c
    # sub-voxel centres in continuous index units along each axis
    axes_idx = [lo_c[a] - 0.5 + (np.arange(counts[a] * n[a]) + 0.5) / n[a] for a in range(3)]
    K, J, I = np.meshgrid(axes_idx[2], axes_idx[1], axes_idx[0], indexing="ij")
    ijk = np.stack([I, J, K], axis=-1)
    pts = geometry.ijk_to_ras(ijk)
    radius = diameter_mm / 2.0
    occ = _capsule_occupancy(pts, center, axis, max(length_mm / 2.0 - radius, 0.0), radius)
    if psf_sigma_mm > 0:
        sub_sp = sp / n
        occ = ndimage.gaussian_filter(occ, sigma=[psf_sigma_mm / sub_sp[2], psf_sigma_mm / sub_sp[1],
                                                  psf_sigma_mm / sub_sp[0]], mode="constant")
    vox = occ.reshape(counts[2], n[2], counts[1], n[1], counts[0], n[0]).mean(axis=(1, 3, 5))
    box = (slice(lo_c[2], hi_c[2]), slice(lo_c[1], hi_c[1]), slice(lo_c[0], hi_c[0]))
    return box, vox


def _streaks(geometry: ImageGeometry, center, rng, amplitude_HU, n_streaks, reach_mm, length_mm):
    """Streak artefact of one seed: ``(box, values)`` in the axial slices through the seed, or None."""
    sp = np.asarray(geometry.spacing, float)
    c_ijk = geometry.ras_to_ijk(center)
    half = np.ceil(np.array([reach_mm / sp[0], reach_mm / sp[1], (length_mm / 2.0) / sp[2] + 1.0])).astype(int)
    lo = np.maximum(np.round(c_ijk).astype(int) - half, 0)
    hi = np.minimum(np.round(c_ijk).astype(int) + half + 1, np.asarray(geometry.size))
    if np.any(hi <= lo):
        return None
    ii = np.arange(lo[0], hi[0])
    jj = np.arange(lo[1], hi[1])
    kk = np.arange(lo[2], hi[2])
    K, J, I = np.meshgrid(kk, jj, ii, indexing="ij")
    pts = geometry.ijk_to_ras(np.stack([I, J, K], axis=-1).astype(float))
    d = pts - np.asarray(center)
    # weight by how much of the slice overlaps the seed's z extent (axial reconstruction plane)
    dz = np.abs(d[..., 2])
    w_slice = np.clip((length_mm / 2.0 + sp[2] / 2.0 - dz) / sp[2], 0.0, 1.0)
    r = np.hypot(d[..., 0], d[..., 1])
    out = np.zeros(r.shape, dtype=np.float32)
    angles = rng.uniform(0.0, np.pi, size=n_streaks)
    width = 0.6 * max(sp[0], sp[1])
    for s, ang in enumerate(angles):
        u = np.array([np.cos(ang), np.sin(ang)])
        along = d[..., 0] * u[0] + d[..., 1] * u[1]
        perp = -d[..., 0] * u[1] + d[..., 1] * u[0]
        sign = 1.0 if s % 2 == 0 else -1.0
        prof = np.exp(-0.5 * (perp / width) ** 2) * np.minimum(1.0, 3.0 / np.maximum(np.abs(along), 1e-6))
        out += (sign * amplitude_HU * prof).astype(np.float32)
    out *= (w_slice * (r <= reach_mm) * (r >= 1.5)).astype(np.float32)
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    return box, out


def make_postimplant_ct(ct_hu, geometry: ImageGeometry, seeds: SeedSet, random_seed=0,
                        length_mm=CAPSULE_LENGTH_MM, diameter_mm=CAPSULE_DIAMETER_MM,
                        metal_contrast_HU=METAL_CONTRAST_HU, psf_sigma_mm=0.4, subvoxel_mm=0.2,
                        streak_HU=80.0, n_streaks=2, streak_reach_mm=35.0, noise_HU=12.0):
    """Render ``seeds`` into a copy of ``ct_hu`` (int16 [k, j, i]); returns the post-implant CT (int16).

    See the module doc for the image model. Seeds outside the grid are skipped silently (their
    part inside, if any, is drawn).
    """
    ct = np.asarray(ct_hu)
    if ct.shape != geometry.shape:
        raise InputError(f"CT array shape {ct.shape} does not match its geometry {geometry.shape}")
    rng = np.random.default_rng(random_seed)
    out = ct.astype(np.float32)
    metal = np.zeros(ct.shape, dtype=np.float32)
    for p, a in zip(seeds.positions, seeds.axes):
        r = render_seed_contrast(geometry, p, a, length_mm, diameter_mm, psf_sigma_mm, subvoxel_mm)
        if r is not None:
            box, vals = r
            metal[box] += vals
    out += metal_contrast_HU * metal
    if streak_HU > 0 and n_streaks > 0:
        for p in seeds.positions:
            r = _streaks(geometry, p, rng, streak_HU, n_streaks, streak_reach_mm, length_mm)
            if r is not None:
                box, vals = r
                out[box] += vals
    if noise_HU > 0:
        out += rng.normal(0.0, noise_HU, size=out.shape).astype(np.float32)
    return np.clip(np.round(out), HU_MIN, HU_MAX).astype(np.int16)


def _random_unit_vectors(rng, n):
    v = rng.normal(size=(n, 3))
    return _unit(v)


def _tilt(axis, rng, sigma_deg):
    """``axis`` tilted by a random angle ~ N(0, sigma) about a random perpendicular direction."""
    axis = _unit(axis)
    perp = np.cross(axis, _random_unit_vectors(rng, 1)[0])
    perp = _unit(perp)
    ang = np.deg2rad(rng.normal(0.0, sigma_deg))
    return _unit(np.cos(ang) * axis + np.sin(ang) * perp)


def plan_in_mask(mask, geometry: ImageGeometry, spacing_mm=10.0, needle_direction=(0.0, 0.0, 1.0),
                 strength_U=0.6, model="I125_OncoSeed_6711", margin_mm=2.0, max_seeds=None, random_seed=0):
    """A plausible planned seed set: parallel needles ``spacing_mm`` apart, seeds every ``spacing_mm``.

    Seeds are kept where their centre lies inside ``mask`` eroded by ``margin_mm``; needle rows are
    staggered by half a spacing (as on a template). With ``max_seeds`` a deterministic subset is kept.
    """
    from scipy import ndimage
    mask = np.asarray(mask, bool)
    if mask.shape != geometry.shape or not mask.any():
        raise InputError("plan_in_mask: the target mask is empty or does not match the grid")
    dist = ndimage.distance_transform_edt(mask, sampling=geometry.spacing[::-1])
    inner = dist > margin_mm
    ras = geometry.voxel_centers_ras()[inner]
    lo, hi = ras.min(axis=0), ras.max(axis=0)
    d = _unit(needle_direction)
    u = _unit(np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0]))
    v = np.cross(d, u)
    center = 0.5 * (lo + hi)
    ext = float(np.linalg.norm(hi - lo)) / 2.0 + spacing_mm
    n = int(np.ceil(ext / spacing_mm))
    pts = []
    for a in range(-n, n + 1):
        for b in range(-n, n + 1):
            for c in range(-n, n + 1):
                off = 0.5 * spacing_mm if (b % 2) else 0.0
                pts.append(center + (a * spacing_mm + off) * u + b * spacing_mm * v + c * spacing_mm * d)
    pts = np.asarray(pts)
    ijk = np.rint(geometry.ras_to_ijk(pts)).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.asarray(geometry.size)), axis=1)
    pts, ijk = pts[ok], ijk[ok]
    keep = inner[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    pts = pts[keep]
    if max_seeds is not None and len(pts) > max_seeds:
        rng = np.random.default_rng(random_seed)
        pts = pts[np.sort(rng.choice(len(pts), max_seeds, replace=False))]
    n = len(pts)
    return SeedSet(pts, np.tile(d, (n, 1)), np.full(n, float(strength_U)), [model] * n)


def simulate_implant(planned: SeedSet, random_seed=0, needle_shift_mm=1.5, seed_jitter_mm=0.7,
                     axis_sigma_deg=6.0, n_migrated=2, migration_mm=(15.0, 30.0), n_lost=0,
                     n_touching=0, touching_gap_mm=(0.3, 1.5), needle_groups=None) -> PostImplantTruth:
    """True seed positions after implantation, from ``planned`` (deterministic for ``random_seed``).

    - every needle (group of seeds sharing an axis line; ``needle_groups`` or found from the plan)
      is shifted by a random vector of ~``needle_shift_mm``; each seed further by ~``seed_jitter_mm``;
    - each seed's axis is tilted by ~``axis_sigma_deg``;
    - ``n_migrated`` seeds move ``migration_mm`` away in a random direction;
    - ``n_lost`` seeds are not in the patient any more;
    - ``n_touching`` seeds are moved next to another seed (side by side, end to end or crossed,
      surface gap ``touching_gap_mm``) to exercise cluster splitting.
    """
    rng = np.random.default_rng(random_seed)
    n = len(planned)
    pos = planned.positions.copy()
    axes = planned.axes.copy()
    if needle_groups is None:
        needle_groups = _needle_groups(planned)
    for g in needle_groups:
        pos[g] += rng.normal(0.0, needle_shift_mm / np.sqrt(3.0), size=3)
    pos += rng.normal(0.0, seed_jitter_mm / np.sqrt(3.0), size=pos.shape)
    for i in range(n):
        axes[i] = _tilt(axes[i], rng, axis_sigma_deg)
    order = rng.permutation(n)
    lost = np.sort(order[:n_lost])
    migrated_planned = order[n_lost:n_lost + n_migrated]
    touch = order[n_lost + n_migrated:n_lost + n_migrated + n_touching]
    for i in migrated_planned:
        pos[i] += _random_unit_vectors(rng, 1)[0] * rng.uniform(*migration_mm)
    others = np.setdiff1d(np.arange(n), np.concatenate([lost, migrated_planned, touch]))
    used = set()
    pairs_planned = []
    kinds = ("side", "end", "cross")
    for t, i in enumerate(touch):
        # partner: the nearest unused seed that is neither lost, migrated nor itself moved
        cand = [j for j in others if j not in used]
        if not cand:
            break
        dd = np.linalg.norm(pos[cand] - pos[i], axis=1)
        j = cand[int(np.argmin(dd))]
        used.add(j)
        a = axes[j]
        perp = _unit(np.cross(a, _random_unit_vectors(rng, 1)[0]))
        gap = rng.uniform(*touching_gap_mm)
        kind = kinds[t % 3]
        if kind == "side":
            axes[i] = _tilt(a, rng, 3.0)
            pos[i] = pos[j] + perp * (CAPSULE_DIAMETER_MM + gap) + a * rng.uniform(-1.0, 1.0)
        elif kind == "end":
            axes[i] = _tilt(a, rng, 3.0)
            pos[i] = pos[j] + a * (CAPSULE_LENGTH_MM + gap)
        else:
            axes[i] = _tilt(perp, rng, 10.0)
            pos[i] = pos[j] + _unit(np.cross(a, perp)) * (CAPSULE_DIAMETER_MM + gap)
        pairs_planned.append((int(i), int(j)))
    keep = np.setdiff1d(np.arange(n), lost)
    new_index = {int(p): k for k, p in enumerate(keep)}
    seeds = SeedSet(pos[keep], axes[keep], planned.strengths_U[keep], [planned.models[i] for i in keep])
    migrated = np.array(sorted(new_index[int(i)] for i in migrated_planned), dtype=int)
    pairs = [(new_index[a], new_index[b]) for a, b in pairs_planned]
    return PostImplantTruth(seeds, keep.astype(int), migrated, lost.astype(int), pairs,
                            {"random_seed": random_seed, "needle_shift_mm": needle_shift_mm,
                             "seed_jitter_mm": seed_jitter_mm, "axis_sigma_deg": axis_sigma_deg,
                             "n_migrated": n_migrated, "n_lost": n_lost, "n_touching": len(pairs)})


def _needle_groups(seeds: SeedSet, tol_mm=1.0):
    """Groups of seed indices lying on one line along their common axis (one needle each)."""
    n = len(seeds)
    groups, assigned = [], np.zeros(n, dtype=bool)
    for i in range(n):
        if assigned[i]:
            continue
        a = seeds.axes[i]
        d = seeds.positions - seeds.positions[i]
        off = d - (d @ a)[:, None] * a
        same = (np.linalg.norm(off, axis=1) < tol_mm) & (np.abs(seeds.axes @ a) > 0.999) & ~assigned
        idx = np.flatnonzero(same)
        assigned[idx] = True
        groups.append(idx)
    return groups


def make_water_phantom(geometry: ImageGeometry, random_seed=0, with_bone=True):
    """A small test phantom: air around an elliptic water cylinder (0 HU) along z, a 'bone' rod.

    Returns ``(ct int16 [k, j, i], {"Body": mask, "Bone": mask})``. The bone rod (cortex 1200 HU,
    marrow 300 HU, 18 mm wide) lets tests check that dense bone is not taken for seeds.
    """
    rng = np.random.default_rng(random_seed)
    c = geometry.voxel_centers_ras(dtype=np.float32)
    lo, hi = geometry.bounds_ras()
    mid = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    x = (c[..., 0] - mid[0]) / max(half[0] * 0.92, 1.0)
    y = (c[..., 1] - mid[1]) / max(half[1] * 0.92, 1.0)
    body = x * x + y * y <= 1.0
    ct = np.full(geometry.shape, -1000.0, dtype=np.float32)
    ct[body] = 20.0
    bone = np.zeros(geometry.shape, dtype=bool)
    if with_bone:
        bx, by = mid[0] + 0.6 * half[0], mid[1] - 0.45 * half[1]
        r = np.hypot(c[..., 0] - bx, c[..., 1] - by)
        bone = (r <= 9.0) & body
        ct[bone] = 300.0
        ct[bone & (r >= 6.5)] = 1200.0
    ct += rng.normal(0.0, 10.0, size=ct.shape).astype(np.float32)
    return np.clip(np.round(ct), HU_MIN, HU_MAX).astype(np.int16), {"Body": body, "Bone": bone}


def score_detection(found_positions, found_axes, truth: PostImplantTruth, max_distance_mm=2.0):
    """Accuracy of a seed finder against the ground truth (one-to-one Hungarian matching).

    Returns a dict: true/found counts, detected, false positives, detection rate, false-positive
    rate (of found seeds), position error percentiles (mm), orientation errors (deg, angle between
    lines) of isolated true seeds.
    """
    from scipy.optimize import linear_sum_assignment
    fp = np.asarray(found_positions, float).reshape(-1, 3)
    tp = truth.seeds.positions
    out = {"true": int(len(tp)), "found": int(len(fp))}
    if len(fp) and len(tp):
        d = np.linalg.norm(tp[:, None, :] - fp[None, :, :], axis=-1)
        r, c = linear_sum_assignment(np.where(d <= max_distance_mm, d, 1e6))
        ok = d[r, c] <= max_distance_mm
        r, c = r[ok], c[ok]
    else:
        r = c = np.zeros(0, dtype=int)
    err = np.linalg.norm(tp[r] - fp[c], axis=1) if len(r) else np.zeros(0)
    out["detected"] = int(len(r))
    out["false_positives"] = int(len(fp) - len(r))
    out["detection_rate"] = len(r) / max(len(tp), 1)
    out["false_positive_rate"] = (len(fp) - len(r)) / max(len(fp), 1)
    out["position_error_median_mm"] = float(np.median(err)) if len(err) else float("nan")
    out["position_error_p95_mm"] = float(np.percentile(err, 95)) if len(err) else float("nan")
    out["position_error_max_mm"] = float(err.max()) if len(err) else float("nan")
    if found_axes is not None and len(r):
        fa = np.asarray(found_axes, float).reshape(-1, 3)
        iso = truth.isolated()[r]
        cosang = np.abs(np.sum(truth.seeds.axes[r] * fa[c], axis=1))
        ang = np.degrees(np.arccos(np.clip(cosang, 0.0, 1.0)))
        out["orientation_error_median_deg_isolated"] = float(np.median(ang[iso])) if iso.any() else float("nan")
        out["orientation_error_p95_deg_isolated"] = float(np.percentile(ang[iso], 95)) if iso.any() else float("nan")
        out["n_isolated"] = int(iso.sum())
    return out


def make_postimplant_case(ct_hu, geometry: ImageGeometry, planned: SeedSet, random_seed=0, render=None, **implant):
    """One call for demos and tests: ``(post-implant CT int16 [k, j, i], PostImplantTruth)``.

    The true seeds come from :func:`simulate_implant` (``planned`` + ``implant`` keyword
    arguments, e.g. ``n_migrated=2, n_touching=10``); the CT from :func:`make_postimplant_ct`
    (``render``: dict of its keyword arguments). Same ``random_seed``, same result.
    """
    truth = simulate_implant(planned, random_seed, **implant)
    post = make_postimplant_ct(ct_hu, geometry, truth.seeds, random_seed, **(render or {}))
    return post, truth
