"""CT simulator, analytic metal: needles, seed capsules, calcifications as solids and their exact chords.

Part of :mod:`imaging.ctsim`. Solids are unions of cylinders (with flat or mitred ends) and spheres
in RAS mm; :func:`chord_length` is the exact path length of rays through them (ray/quadric and
ray/half-space intersections), so the simulator never voxelises metal. The object dicts given to
``simulate_ct`` are checked here (:class:`core.errors.InputError` naming the object and key) and
turned into solids in the CT grid's frame with their material weights and the truth records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from .ctsim_physics import (HU_REF, MARKER_DIAMETER_MM, MARKER_LENGTH_MM, MATERIALS, SEED_DIAMETER_MM,
                            SEED_LENGTH_MM, SEED_WALL_MM)

# --- analytic solids ------------------------------------------------------------------------------
# A solid is a list of convex groups; each group is a list of pieces whose union is convex (a
# capsule: cylinder + two end spheres), so the chord of a ray through a group is one interval
# (hull of its pieces' intervals). Groups of one solid do not overlap (a bent needle's mitred
# segments), so their chords add. Pieces: ("cyl", a, axis, radius, planes) with planes a list of
# (point, normal) half-spaces (x - point) . normal >= 0; ("sph", centre, radius).


def _unit(v):
    v = np.asarray(v, float)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise InputError("zero-length direction vector")
    return v / n


def _cylinder(a, b, radius, start_plane=None, end_plane=None):
    """Cylinder piece from ``a`` to ``b``; flat ends unless mitre planes (point, normal) are given."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ax = _unit(b - a)
    planes = [start_plane if start_plane is not None else (a, ax),
              end_plane if end_plane is not None else (b, -ax)]
    return ("cyl", a, ax, float(radius), planes, np.stack([a, b]))


def _sphere(c, radius):
    return ("sph", np.asarray(c, float), float(radius), None, None, np.asarray(c, float)[None, :])


def capsule_groups(center, axis, length_mm, diameter_mm):
    """A capsule (cylinder with hemispherical ends, total length ``length_mm``) as one convex group."""
    r = diameter_mm / 2.0
    half = max(length_mm / 2.0 - r, 0.0)
    ax = _unit(axis)
    c = np.asarray(center, float)
    a, b = c - half * ax, c + half * ax
    pieces = [_sphere(a, r), _sphere(b, r)]
    if half > 0:
        pieces.append(_cylinder(a, b, r))
    return [pieces]


def needle_polyline(entry, tip, bend_mm=0.0, bend_direction=None, external_mm=0.0, n_segments=12):
    """Points of a needle's centre line from ``external_mm`` outside the entry to the tip (RAS mm).

    A bent needle follows a circular arc through entry and tip whose largest distance from the
    straight entry-tip line is ``bend_mm`` (towards ``bend_direction``, made perpendicular to the
    needle); the part outside the body continues straight along the arc's tangent at the entry.
    """
    entry = np.asarray(entry, float)
    tip = np.asarray(tip, float)
    chord = tip - entry
    length = float(np.linalg.norm(chord))
    if length <= 0:
        raise InputError("needle entry and tip coincide")
    ax = chord / length
    if bend_mm and abs(bend_mm) > 1e-9:
        if bend_direction is None:
            bend_direction = np.cross(ax, [0.0, 0.0, 1.0] if abs(ax[2]) < 0.9 else [1.0, 0.0, 0.0])
        bd = np.asarray(bend_direction, float)
        bd = bd - (bd @ ax) * ax
        bd = _unit(bd)
        s = np.linspace(0.0, 1.0, n_segments + 1)
        # circular arc of sagitta bend_mm over chord length: R = (c^2/4 + h^2) / (2h)
        h = float(bend_mm)
        R = (length * length / 4.0 + h * h) / (2.0 * h)
        x = (s - 0.5) * length
        y = np.sqrt(np.maximum(R * R - x * x, 0.0)) - (R - h)
        pts = entry + np.outer(s * length, ax) + np.outer(y, bd)
        tangent0 = _unit(pts[1] - pts[0])
    else:
        pts = np.stack([entry, tip])
        tangent0 = ax
    if external_mm > 0:
        pts = np.vstack([entry - external_mm * tangent0, pts])
    return pts


def needle_groups_from_polyline(points, diameter_mm):
    """Mitred cylinders along a polyline (disjoint groups, flat ends)."""
    pts = np.asarray(points, float)
    r = diameter_mm / 2.0
    axes = _unit(np.diff(pts, axis=0))
    groups = []
    for s in range(len(pts) - 1):
        start = end = None
        if s > 0:
            n = _unit(axes[s - 1] + axes[s])
            start = (pts[s], n)
        if s < len(pts) - 2:
            n = _unit(axes[s] + axes[s + 1])
            end = (pts[s + 1], -n)
        groups.append([_cylinder(pts[s], pts[s + 1], r, start, end)])
    return groups


def _dot(a, b):
    """Dot product over the last axis (length 3), broadcasting, without a reduction call."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _piece_interval(piece, p0, d):
    """Entry/exit ray parameters (s0, s1) of rays ``p0 + s d`` (p0, d: (..., 3)); s0 > s1 if missed."""
    kind = piece[0]
    if kind == "sph":
        c, r = piece[1], piece[2]
        m = p0 - c
        b = _dot(m, d)
        cc = _dot(m, m) - r * r
        disc = b * b - cc
        hit = disc > 0
        sq = np.sqrt(np.where(hit, disc, 0.0))
        return np.where(hit, -b - sq, np.inf), np.where(hit, -b + sq, -np.inf)
    _, a, ax, r, planes, _ = piece
    m = p0 - a
    dm = _dot(d, ax)
    mm = _dot(m, ax)
    dp = d - dm[..., None] * ax
    mp = m - mm[..., None] * ax
    qa = _dot(dp, dp)
    qb = _dot(mp, dp)
    qc = _dot(mp, mp) - r * r
    parallel = qa < 1e-12
    qa_safe = np.where(parallel, 1.0, qa)
    disc = qb * qb - qa * qc
    hit = disc > 0
    sq = np.sqrt(np.where(hit, disc, 0.0))
    inside_par = qc <= 0
    s0 = np.where(parallel, np.where(inside_par, -np.inf, np.inf), np.where(hit, (-qb - sq) / qa_safe, np.inf))
    s1 = np.where(parallel, np.where(inside_par, np.inf, -np.inf), np.where(hit, (-qb + sq) / qa_safe, -np.inf))
    for point, normal in planes:
        dn = _dot(d, normal)
        rhs = _dot(point - p0, normal)    # need s * dn >= rhs
        flat = np.abs(dn) < 1e-12
        lim = rhs / np.where(flat, 1.0, dn)
        s0 = np.where(dn > 1e-12, np.maximum(s0, lim), s0)
        s1 = np.where(dn < -1e-12, np.minimum(s1, lim), s1)
        out = flat & (rhs > 0)
        if np.any(out):
            s0 = np.where(out, np.inf, s0)
            s1 = np.where(out, -np.inf, s1)
    return s0, s1


def chord_length(groups, p0, d):
    """Path length (mm) of rays ``p0 + s d`` (unit d) through a solid given as convex groups."""
    total = np.zeros(np.broadcast_shapes(p0.shape, d.shape)[:-1])
    for pieces in groups:
        lo = np.full(total.shape, np.inf)
        hi = np.full(total.shape, -np.inf)
        for piece in pieces:
            s0, s1 = _piece_interval(piece, p0, d)
            hit = s1 > s0
            lo = np.where(hit, np.minimum(lo, s0), lo)
            hi = np.where(hit, np.maximum(hi, s1), hi)
        total += np.maximum(hi - lo, 0.0)
    return total


def _groups_extent_points(groups):
    """Points (n, 3) whose hull with the pieces' radii covers the solid, and the largest radius."""
    pts = np.vstack([p[5] for g in groups for p in g])
    rad = max(p[2] if p[0] == "sph" else p[3] for g in groups for p in g)
    return pts, rad


@dataclass
class _Solid:
    """A metal or mineral object in the grid frame: groups of pieces, material weights per mm of chord."""

    groups: list
    weights: np.ndarray          # (n_mat,) path length of each basis material per mm of chord
    w_range: tuple               # (w_min, w_max) along the slice normal, grid frame


def _to_frame(geometry: ImageGeometry, ras):
    """RAS mm -> grid frame mm (u, v, w along i, j, k, from the origin voxel centre)."""
    return (np.asarray(ras, float) - np.asarray(geometry.origin)) @ geometry.direction_matrix


def _frame_groups(geometry, groups):
    out = []
    for g in groups:
        pieces = []
        for p in g:
            if p[0] == "sph":
                c = _to_frame(geometry, p[1])
                pieces.append(("sph", c, p[2], None, None, c[None, :]))
            else:
                a = _to_frame(geometry, p[1])
                ax = p[2] @ geometry.direction_matrix
                planes = [(_to_frame(geometry, q), n @ geometry.direction_matrix) for q, n in p[4]]
                pieces.append(("cyl", a, ax, p[3], planes, _to_frame(geometry, p[5])))
        out.append(pieces)
    return out


def _make_solid(geometry, groups, weights):
    fg = _frame_groups(geometry, groups)
    pts, rad = _groups_extent_points(fg)
    return _Solid(fg, np.asarray(weights, float), (float(pts[:, 2].min() - rad), float(pts[:, 2].max() + rad)))


def _material_weights(**kw):
    w = np.zeros(len(MATERIALS))
    for k, v in kw.items():
        w[MATERIALS.index(k)] = v
    return w


# --- input checking ------------------------------------------------------------------------------

def _vec(d, key, what):
    try:
        v = np.asarray(d[key], float).reshape(3)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{what}: '{key}' must be three numbers (RAS mm)") from exc
    if not np.all(np.isfinite(v)):
        raise InputError(f"{what}: '{key}' is not finite: {v.tolist()}")
    return v


def _positive(d, key, what, default=None, lo=0.0, hi=np.inf):
    v = d.get(key, default)
    try:
        v = float(v)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what}: '{key}' must be a number, got {v!r}") from exc
    if not (lo < v < hi) or not math.isfinite(v):
        raise InputError(f"{what}: '{key}' = {v} is outside ({lo}, {hi})")
    return v


def _build_solids(geometry, needles, seeds, calcifications, external_mm_default):
    """Analytic solids of every object and the JSON truth of each."""
    solids, t_needles, t_seeds, t_calcs = [], [], [], []
    steel = _material_weights(steel=1.0)
    for n, nd in enumerate(needles or []):
        what = f"needle {n + 1}"
        entry = _vec(nd, "entry_ras", what)
        tip = _vec(nd, "tip_ras", what)
        dia = _positive(nd, "diameter_mm", what, 1.27, 0.1, 5.0)
        bend = float(nd.get("bend_mm", 0.0) or 0.0)
        length = float(np.linalg.norm(tip - entry))
        if length < 1.0:
            raise InputError(f"{what}: entry and tip are {length:.2f} mm apart")
        if abs(bend) > 0.25 * length:
            raise InputError(f"{what}: bend {bend} mm is too large for a {length:.0f} mm needle")
        ext = float(nd.get("external_mm", external_mm_default))
        bend_dir = nd.get("bend_direction")
        pts = needle_polyline(entry, tip, bend, bend_dir, ext)
        solids.append(_make_solid(geometry, needle_groups_from_polyline(pts, dia), steel))
        body_pts = pts[1:] if ext > 0 else pts
        inside = geometry.contains_ras(body_pts)
        rec = {k: v for k, v in nd.items() if k not in ("entry_ras", "tip_ras")}
        rec.update({"entry_ras": entry.tolist(), "tip_ras": tip.tolist(), "diameter_mm": dia, "bend_mm": bend,
                    "direction": _unit(tip - entry).tolist(), "inserted_depth_mm": length,
                    "external_mm": ext, "centerline_ras": np.round(pts, 4).tolist(),
                    "tip_inside_ct": bool(geometry.contains_ras(tip)),
                    "entry_inside_ct": bool(geometry.contains_ras(entry)),
                    "fraction_inside_ct": float(np.mean(inside))})
        if bend_dir is not None:
            rec["bend_direction"] = np.asarray(bend_dir, float).tolist()
        t_needles.append(rec)
    for s, sd in enumerate(seeds or []):
        what = f"seed {s + 1}"
        c = _vec(sd, "center_ras", what)
        ax = _unit(_vec(sd, "axis", what))
        length = _positive(sd, "length_mm", what, SEED_LENGTH_MM, 0.5, 20.0)
        dia = _positive(sd, "diameter_mm", what, SEED_DIAMETER_MM, 0.1, 3.0)
        wall = min(SEED_WALL_MM, dia / 4.0)
        solids.append(_make_solid(geometry, capsule_groups(c, ax, length, dia), _material_weights(titanium=1.0)))
        solids.append(_make_solid(geometry, capsule_groups(c, ax, length - 2 * wall, dia - 2 * wall),
                                  _material_weights(titanium=-1.0)))
        if sd.get("marker", "silver") == "silver":
            half = min(MARKER_LENGTH_MM, length - 1.0) / 2.0
            solids.append(_make_solid(
                geometry, [[_cylinder(c - half * ax, c + half * ax, min(MARKER_DIAMETER_MM, dia - 2 * wall - 0.05) / 2)]],
                _material_weights(silver=1.0)))
        rec = {k: v for k, v in sd.items() if k not in ("center_ras", "axis")}
        rec.update({"center_ras": c.tolist(), "axis": ax.tolist(), "model_id": sd.get("model_id", "I125_OncoSeed_6711"),
                    "length_mm": length, "diameter_mm": dia, "inside_ct": bool(geometry.contains_ras(c))})
        t_seeds.append(rec)
    for q, cd in enumerate(calcifications or []):
        what = f"calcification {q + 1}"
        c = _vec(cd, "center_ras", what)
        r = _positive(cd, "radius_mm", what, None, 0.05, 30.0)
        hu = _positive(cd, "hu", what, None, 0.0, 3000.0)
        b = hu / HU_REF["bone"]
        solids.append(_make_solid(geometry, [[_sphere(c, r)]], _material_weights(bone=b, water=-b)))
        rec = dict(cd)
        rec.update({"center_ras": c.tolist(), "radius_mm": r, "hu": hu, "inside_ct": bool(geometry.contains_ras(c))})
        t_calcs.append(rec)
    return solids, t_needles, t_seeds, t_calcs
