"""Physically modelled CT simulator: intra-operative and post-implant CTs with needles, seeds and streaks.

Test CTs for the needle and seed finders that do not share their assumptions: the image is not
drawn as "bright blob + blur", it is *measured and reconstructed*, so partial volume, blur, beam
hardening, photon starvation, metal streaks and noise come out of the physics:

1. **Object** (per reconstructed thin slice, in the CT grid's own frame, so oblique grids are a
   gantry-tilted acquisition): the anatomy's HU (resampled onto the slice plane) split into two
   basis materials, water (HU <= 0: water at density ``1 + HU/1000``) and ICRU-44 cortical bone
   (HU > 0: volume fraction ``HU / HU_bone`` of bone, the rest water); metal objects are analytic
   solids, never voxels: steel needles (solid cylinders, stylet in place, 1.0-1.3 mm OD; a bent
   needle is a polyline of mitred cylinders along a circular arc), titanium seed capsules
   (4.5 x 0.8 mm, 0.05 mm wall, hemispherical ends) around a silver marker rod (3.0 x 0.5 mm, the
   model-6711 design), calcifications (spheres of a bone/water mix giving their HU).
2. **Forward projection**: parallel-beam geometry (fan-beam data rebinned to parallel, as scanners
   do before filtering), ``n_views`` over 180 deg, detector bins of the pixel size. The anatomy is
   projected with a pixel-driven linear-interpolation projector (a sparse matrix per block of
   views, applied to a slab of slices at once); the metal and calcification path lengths are exact
   ray/solid intersections (chords of cylinders, spheres, capsules), computed for every ray in
   ``sub_plane_mm`` sub-planes across the detector row (through-slice partial volume).
3. **Polychromatic measurement**: a 120 kVp tungsten spectrum (SpekPy 2.5, 12 deg anode, 7 mm Al,
   binned to 10 keV; Poludniowski et al., Phys Med Biol 66:055007, 2021) weighted by energy (an
   energy-integrating detector); ``T = sum_E w_E exp(-sum_m mu_m(E) L_m)``, averaged over the
   sub-planes of the row (the exponential edge-gradient effect). Mass attenuation coefficients
   (total, with coherent) from the Elam/Ravel/Sieber database (Radiat Phys Chem 63:121, 2002) as
   tabulated by XrayDB 4.5, at the bin mean energies (tables below; pinned by tests).
4. **Counts and log**: expected counts ``I0 T`` per ray (``I0`` scales with row width); Poisson
   noise plus Gaussian electronic noise; counts clipped at ``MIN_COUNTS`` before the log, so rays
   through long metal paths saturate (photon starvation); ``p = ln(I0 / N)``.
5. **Water beam-hardening correction** (as scanners do): ``p`` is mapped to the water thickness
   giving the same polychromatic attenuation, times ``mu_water(E_ref)``, ``E_ref = 70 keV``; water
   then reconstructs to 0 HU at every size, bone and metal keep their residual beam hardening.
6. **Filtered back-projection**: Shepp-Logan filter (Kak & Slaney, *Principles of Computerized
   Tomographic Imaging*, 1988, eq. 3.61-3.65 with the Shepp-Logan window), linear-interpolation
   back-projection; ``HU = 1000 (mu / mu_water(E_ref) - 1)``.
7. **Slices**: a detector row is ``thin_slice_mm`` wide at most; thicker slices are the mean
   ("box" slice sensitivity profile) or the triangle-weighted mean ("triangle", about what a
   helical 180-degree interpolation gives) of thin reconstructed slices. The result is rounded and
   clipped to the 12-bit scanner range -1024..3071 HU.

The scanner's blur is the projector's and the filter's (detector bin = pixel), nothing is added.
Simplifications (documented in docs/verification.md): parallel beam (no cone angle), one
rotation per slice (no helical interpolation beyond the slice profile), no scatter, no detector
cross-talk or focal-spot blur, energy-integrating weights without Swank noise, fat and air have
water's energy dependence, steel is iron (8.0 g/cm3), the anatomy is sampled at the slice's
pixel grid (metal and calcifications are exact). Needles are solid steel (the stylet fills the
cannula) and end flat at the tip. Arrays are ``[k, j, i]``, coordinates RAS mm.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry

HU_MIN, HU_MAX = -1024, 3071
CTSIM_VERSION = 1

# --- spectrum and attenuation tables -------------------------------------------------------------
#: Mean energy (keV) of the ten 10 keV bins of the 120 kVp spectrum (20-30, ..., 110-120 keV).
SPECTRUM_KEV = np.array([27.4, 35.6, 45.1, 56.1, 65.2, 74.8, 84.8, 94.7, 104.5, 113.4])
#: Photon fraction per bin (SpekPy, 120 kVp, 12 deg W anode, 7 mm Al total filtration).
SPECTRUM_PHOTONS = np.array([0.0242, 0.1201, 0.1738, 0.2489, 0.1656, 0.0969, 0.0749, 0.0530, 0.0318, 0.0108])
#: Reference energy of the HU scale after the water correction (keV).
E_REF_KEV = 70.0
#: Mass attenuation coefficients mu/rho (cm^2/g) at SPECTRUM_KEV, then at E_REF_KEV (last column);
#: Elam et al. 2002 via XrayDB 4.5 (bone: ICRU-44 cortical bone by mass fractions H 3.4, C 15.5,
#: N 4.2, O 43.5, Na 0.1, Mg 0.2, P 10.3, S 0.3, Ca 22.5 %).
MU_RHO = {
    "water": [0.4326, 0.3016, 0.2432, 0.2127, 0.1985, 0.1881, 0.1800, 0.1737, 0.1684, 0.1642, 0.1929],
    "bone": [1.6873, 0.8700, 0.5166, 0.3488, 0.2807, 0.2386, 0.2112, 0.1930, 0.1801, 0.1711, 0.2570],
    "steel": [10.5717, 5.0378, 2.5976, 1.4371, 0.9740, 0.6959, 0.5225, 0.4139, 0.3420, 0.2957, 0.8164],
    "titanium": [6.4401, 3.0617, 1.5952, 0.9039, 0.6293, 0.4649, 0.3621, 0.2973, 0.2542, 0.2263, 0.5361],
    "silver": [46.2415, 23.4452, 12.4679, 6.9187, 4.6030, 3.1753, 2.2685, 1.6940, 1.3113, 1.0646, 3.7978],
}
#: Densities (g/cm^3): water, ICRU-44 cortical bone, stainless steel (as iron), titanium, silver.
DENSITY = {"water": 1.0, "bone": 1.92, "steel": 8.0, "titanium": 4.506, "silver": 10.49}
#: Material order of the path-length arrays.
MATERIALS = ("water", "bone", "steel", "titanium", "silver")


def linear_attenuation_per_mm(material):
    """mu (1/mm) of ``material`` at the spectrum bins (10,) and at E_REF_KEV (scalar)."""
    mu = np.asarray(MU_RHO[material], float) * DENSITY[material] / 10.0
    return mu[:-1], float(mu[-1])


MU_E = np.stack([linear_attenuation_per_mm(m)[0] for m in MATERIALS])        # (n_mat, n_E) 1/mm
MU_REF = np.array([linear_attenuation_per_mm(m)[1] for m in MATERIALS])     # (n_mat,) 1/mm at E_ref
MU_WATER_REF = float(MU_REF[0])
#: HU of cortical bone and of the metals at E_ref (what a monochromatic scanner would show).
HU_REF = {m: 1000.0 * (MU_REF[i] / MU_WATER_REF - 1.0) for i, m in enumerate(MATERIALS)}
#: Detected-energy weights of the bins (energy-integrating detector).
ENERGY_WEIGHTS = SPECTRUM_PHOTONS * SPECTRUM_KEV / float(np.sum(SPECTRUM_PHOTONS * SPECTRUM_KEV))
#: Smallest count kept before the log (photon starvation floor).
MIN_COUNTS = 1.0

# --- object dimensions ----------------------------------------------------------------------------
#: I-125 model-6711-class seed: titanium capsule (mm) and silver marker rod (mm).
SEED_LENGTH_MM = 4.5
SEED_DIAMETER_MM = 0.8
SEED_WALL_MM = 0.05
MARKER_LENGTH_MM = 3.0
MARKER_DIAMETER_MM = 0.5
#: Needle outer diameters by gauge (mm), DOMAIN.md.
NEEDLE_GAUGE_OD_MM = {17: 1.47, 18: 1.27, 20: 0.91, 22: 0.72}


@dataclass
class Scanner:
    """Acquisition and reconstruction settings of the simulated scanner (mm unless named)."""

    n_views: int | None = None           # views over 180 deg; None: 3/4 of the detector bins, at least 360
    photons_per_ray_mm: float = 1.0e5    # unattenuated photons per ray per view per mm of row width
    electronic_noise_counts: float = 4.0  # Gaussian electronic noise (counts, standard deviation)
    thin_slice_mm: float = 1.0           # widest detector row; thicker slices average thin ones
    sub_plane_mm: float = 0.2            # through-row sampling of the metal's partial volume
    sub_rays: int = 4                    # rays across each detector bin's aperture where metal is hit
    kernel: str = "hann"                 # reconstruction kernel: "hann" (standard), "shepp-logan", "ram-lak"
    fast_metal_free: bool = False        # slices > 1 row from any metal: system PSF + FBP-shaped noise
    slice_profile: str = "box"           # "box" or "triangle" weights of thin slices in a thick one
    detector_oversampling: int = 1       # samples per pixel width, each a pixel-wide aperture (as a flying focal spot)
    view_block: int = 12                 # views per sparse projector block
    slab_slices: int | None = None       # thin slices reconstructed together; None: as many as fit
    slab_memory_mb: float = 1024.0       # work-array budget that sets the automatic slab size

    def views_for(self, n_det):
        """Number of views for a detector of ``n_det`` bins."""
        if self.n_views is not None:
            if int(self.n_views) < 8:
                raise InputError(f"scanner n_views must be at least 8, got {self.n_views}")
            return int(self.n_views)
        return max(360, int(math.ceil(0.75 * n_det)))


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


# --- anatomy --------------------------------------------------------------------------------------

def default_anatomy(geometry: ImageGeometry):
    """A plain body for cases without anatomy: an elliptic soft-tissue (40 HU) body with a fat rim in air."""
    ni, nj = geometry.size[0], geometry.size[1]
    u = (np.arange(ni) - (ni - 1) / 2.0) / (0.45 * ni)
    v = (np.arange(nj) - (nj - 1) / 2.0) / (0.40 * nj)
    r2 = u[None, :] ** 2 + v[:, None] ** 2
    sl = np.full((nj, ni), -1000.0, np.float32)
    sl[r2 <= 1.0] = -100.0
    sl[r2 <= 0.8] = 40.0
    return np.broadcast_to(sl, geometry.shape).copy()


def _plane_stack_geometry(geometry, w_list):
    """Geometry of planes at grid-frame w positions (regular spacing required)."""
    w = np.asarray(w_list, float)
    dz = float(w[1] - w[0]) if len(w) > 1 else geometry.spacing[2]
    origin = np.asarray(geometry.origin) + w[0] * geometry.direction_matrix[:, 2]
    return ImageGeometry((geometry.size[0], geometry.size[1], len(w)), (geometry.spacing[0], geometry.spacing[1], dz),
                         tuple(origin), geometry.direction)


def _anatomy_sampler(anatomy, geometry):
    """Return f(w_list) -> HU (n, nj, ni) float32 of the anatomy on the slice planes at grid-frame w."""
    if anatomy is None:
        base = default_anatomy(ImageGeometry((geometry.size[0], geometry.size[1], 1), geometry.spacing, geometry.origin,
                                             geometry.direction))[0]
        return lambda w: np.broadcast_to(base, (len(w),) + base.shape).astype(np.float32)
    if callable(anatomy):
        def from_callable(w):
            w = np.asarray(w, float)
            if len(w) > 2 and np.ptp(np.diff(w)) > 1e-6:
                return np.concatenate([from_callable(w[i:i + 1]) for i in range(len(w))])
            arr = np.asarray(anatomy(_plane_stack_geometry(geometry, w)), np.float32)
            if arr.shape != (len(w), geometry.size[1], geometry.size[0]):
                raise InputError(f"anatomy callable returned shape {arr.shape}, expected {(len(w),) + geometry.shape[1:]}")
            return arr
        return from_callable
    if isinstance(anatomy, tuple) and len(anatomy) == 2:
        arr, src = np.asarray(anatomy[0]), anatomy[1]
        if not isinstance(src, ImageGeometry) or arr.shape != src.shape:
            raise InputError(f"anatomy (array, geometry): array shape {arr.shape} does not match its geometry")
        from scipy import ndimage

        def resample(w):
            g = _plane_stack_geometry(geometry, w) if len(w) < 2 or np.ptp(np.diff(w)) < 1e-6 else None
            if g is None:
                return np.concatenate([resample(np.asarray(w)[i:i + 1]) for i in range(len(w))])
            ijk = src.ras_to_ijk(g.voxel_centers_ras(dtype=np.float32))
            coords = np.stack([ijk[..., 2], ijk[..., 1], ijk[..., 0]])
            return ndimage.map_coordinates(arr.astype(np.float32), coords, order=1, mode="constant", cval=-1000.0)
        return resample
    arr = np.asarray(anatomy)
    if arr.shape != geometry.shape:
        raise InputError(f"anatomy_hu shape {arr.shape} does not match the CT geometry {geometry.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError("anatomy_hu holds NaN or infinite values")
    arr = arr.astype(np.float32)
    dz = geometry.spacing[2]

    def interp(w):
        kf = np.clip(np.asarray(w, float) / dz, 0, arr.shape[0] - 1)
        k0 = np.floor(kf).astype(int)
        k1 = np.minimum(k0 + 1, arr.shape[0] - 1)
        f = (kf - k0).astype(np.float32)[:, None, None]
        return arr[k0] * (1 - f) + arr[k1] * f
    return interp


def hu_to_basis(hu):
    """Split HU into water and cortical-bone volume fractions ``(a, b)`` (same shape, float32)."""
    hu = np.asarray(hu, np.float32)
    b = np.clip(hu / np.float32(HU_REF["bone"]), 0.0, 1.0)
    a = np.where(hu > 0, 1.0 - b, np.clip(1.0 + hu / 1000.0, 0.0, None)).astype(np.float32)
    return a, b.astype(np.float32)


# --- projector ------------------------------------------------------------------------------------

class ParallelProjector:
    """Pixel-driven parallel-beam projector of one slice plane, applied to stacks of slices.

    Pixel (i, j) sits at ``((i - ci) dx, (j - cj) dy)`` mm from the rotation centre (the slice
    centre); view ``v`` is at ``theta = pi v / n_views``; bin ``b`` at ``t = (b - cb) ds``. The
    matrix of a block of views holds the linear-interpolation weights of every pixel on the
    detector; ``forward`` multiplies by pixel area / ds (line integrals in mm x value),
    ``back`` is the plain adjoint (interpolating back-projection).
    """

    def __init__(self, ni, nj, dx, dy, n_views=None, scanner: Scanner | None = None):
        self.ni, self.nj, self.dx, self.dy = int(ni), int(nj), float(dx), float(dy)
        scanner = scanner or Scanner()
        self.oversampling = max(1, int(scanner.detector_oversampling))
        self.aperture_mm = min(self.dx, self.dy)
        self.ds = self.aperture_mm / self.oversampling
        half_diag = 0.5 * math.hypot(ni * dx, nj * dy)
        self.n_det = 2 * int(math.ceil(half_diag / self.ds)) + 5
        self.n_views = int(n_views) if n_views else scanner.views_for(self.n_det // self.oversampling)
        self.theta = np.arange(self.n_views) * np.pi / self.n_views
        self.block = max(1, int(scanner.view_block))
        x = ((np.arange(ni) - (ni - 1) / 2.0) * dx).astype(np.float32)
        y = ((np.arange(nj) - (nj - 1) / 2.0) * dy).astype(np.float32)
        self.X = np.broadcast_to(x[None, :], (nj, ni)).ravel()
        self.Y = np.broadcast_to(y[:, None], (nj, ni)).ravel()
        self.t_bins = (np.arange(self.n_det) - (self.n_det - 1) / 2.0) * self.ds

    def blocks(self):
        """Yield ``(view indices, sparse matrix (n_views_blk * n_det, n_pix))`` for each block of views.

        Entry (ray, pixel) = fraction of the pixel's footprint on the detector that falls into the
        bin (separable-footprint model: the projection of a square pixel is a trapezoid; Long, Fessler
        and Balter, IEEE Trans Med Imaging 29:1839, 2010), so every pixel's weights sum to 1 per view.
        """
        import scipy.sparse as sps
        n_pix = self.X.size
        c0 = (self.n_det - 1) / 2.0
        K = int(math.ceil((self.dx + self.dy) / self.ds)) + 1          # bins a footprint can touch
        n_tab = 512                                                     # sub-bin positions tabulated
        frac = (np.arange(n_tab) + 0.5) / n_tab * self.ds               # tau0 - lower edge of its bin
        x_rel = (np.arange(K + 1) * self.ds)[None, :] - frac[:, None]   # bin edges relative to tau0

        def relu2(z):
            z = np.maximum(z, 0.0)
            return z * z
        for start in range(0, self.n_views, self.block):
            views = np.arange(start, min(start + self.block, self.n_views))
            nv = len(views)
            th = self.theta[views]
            c, s = np.cos(th), np.sin(th)
            a = np.abs(c) * self.dx
            b = np.abs(s) * self.dy
            r = np.maximum(np.minimum(a, b), 1e-3 * self.ds)              # ramp width
            half_out = (a + b) / 2.0
            h = 1.0 / (2.0 * half_out - r)                                 # unit area
            w_out = 2.0 * half_out
            # footprint CDF at the edges, per view and tabulated sub-bin offset: (nv, n_tab, K+1)
            z = x_rel[None, :, :]
            F = (relu2(z) - relu2(z - r[:, None, None]) - relu2(z - (w_out - r)[:, None, None])
                 + relu2(z - w_out[:, None, None])) * (h / (2.0 * r))[:, None, None]
            table = np.diff(np.clip(F, 0.0, 1.0), axis=-1).astype(np.float32)     # (nv, n_tab, K)
            t = self.X[:, None] * c.astype(np.float32)[None, :] + self.Y[:, None] * s.astype(np.float32)[None, :]
            pos = (t - half_out.astype(np.float32)[None, :]) / np.float32(self.ds) + np.float32(c0 + 0.5)
            m0 = np.floor(pos)
            fi = np.minimum(((pos - m0) * n_tab).astype(np.int32), n_tab - 1)
            m0 = m0.astype(np.int32)
            w = table[np.arange(nv)[None, :], fi]                          # (n_pix, nv, K)
            rows = m0[..., None] + np.arange(K, dtype=np.int32)
            np.clip(rows, 0, self.n_det - 1, out=rows)
            rows += (np.arange(nv, dtype=np.int32) * self.n_det)[None, :, None]
            indptr = np.arange(0, n_pix * nv * K + 1, nv * K, dtype=np.int64)
            yield views, sps.csc_matrix((w.reshape(-1), rows.reshape(-1), indptr), shape=(nv * self.n_det, n_pix))

    def aperture(self, T, axis=-2):
        """Detector aperture of one pixel width: mean of the transmission over it (along ``axis``)."""
        m = self.oversampling
        if m == 1:
            return T
        # trapezoid of width m samples: weights 1/2, 1, ..., 1, 1/2 over m + 1 samples
        w = np.ones(m + 1, np.float32)
        w[0] = w[-1] = 0.5
        w /= w.sum()
        from scipy import ndimage
        return ndimage.convolve1d(T, w, axis=axis, mode="nearest")

    def forward_scale(self):
        """Factor turning matrix x pixel values into line integrals (mm)."""
        return self.dx * self.dy / self.ds

    def ramp_filter(self, p, axis=-1, kernel="hann"):
        """Filtered projections along ``axis`` (detector bins): ramp filter of the chosen kernel.

        ``ram-lak``: band-limited ramp from its spatial kernel (Kak & Slaney eq. 3.61, so the DC
        gain is right); ``shepp-logan``: the Shepp-Logan spatial kernel; ``hann`` (default, a
        "standard" soft-tissue kernel): the Ram-Lak response times a Hann window reaching zero at
        the detector's Nyquist frequency.
        """
        n = p.shape[axis]
        size = 1 << int(math.ceil(math.log2(2 * n)))
        k = np.arange(size)
        k = np.where(k > size // 2, k - size, k).astype(float)
        if kernel == "shepp-logan":
            h = -2.0 / (np.pi ** 2 * self.ds ** 2 * (4.0 * k ** 2 - 1.0))
        elif kernel in ("ram-lak", "hann"):
            h = np.zeros(size)
            h[k == 0] = 1.0 / (4.0 * self.ds ** 2)
            odd = (np.abs(k) % 2) == 1
            h[odd] = -1.0 / (np.pi ** 2 * k[odd] ** 2 * self.ds ** 2)
        else:
            raise InputError(f"reconstruction kernel must be 'hann', 'shepp-logan' or 'ram-lak', got {kernel!r}")
        H = np.fft.rfft(h).real * self.ds
        if kernel == "hann":
            f = np.arange(H.size) / (size / 2.0)                     # 0 .. 1 (Nyquist)
            H = H * 0.5 * (1.0 + np.cos(np.pi * f))
        P = np.fft.rfft(p, n=size, axis=axis)
        shape = [1] * p.ndim
        shape[axis] = H.size
        q = np.fft.irfft(P * H.reshape(shape), n=size, axis=axis)
        return np.take(q, np.arange(n), axis=axis).astype(np.float32)

    def ray_geometry(self, views, bins):
        """Ray start points (u, v offsets from the centre) and unit directions for (view, bin) pairs."""
        th = self.theta[views]
        t = self.t_bins[bins]
        c, s = np.cos(th), np.sin(th)
        return t * c, t * s, -s, c


def water_correction_table(max_mm=1200.0, step_mm=0.5):
    """(polychromatic log attenuation p, water thickness mm) of the water beam-hardening correction."""
    L = np.arange(0.0, max_mm + step_mm, step_mm)
    T = np.exp(-np.outer(L, MU_E[0])) @ ENERGY_WEIGHTS
    return -np.log(T), L


# --- the simulator --------------------------------------------------------------------------------

def _thin_planes(geometry, thickness, scanner):
    """Thin slice centres (grid-frame w) and, per output slice, (thin indices, weights); row width."""
    nk, dz = geometry.size[2], geometry.spacing[2]
    n_thin = max(1, int(math.ceil(thickness / scanner.thin_slice_mm - 1e-9)))
    row = thickness / n_thin
    offsets = (np.arange(n_thin) - (n_thin - 1) / 2.0) * row
    if scanner.slice_profile == "triangle" and n_thin > 1:
        # triangle of FWHM = thickness: base 2 x thickness
        n_tri = 2 * n_thin - 1
        offsets = (np.arange(n_tri) - (n_tri - 1) / 2.0) * row
        weights = 1.0 - np.abs(offsets) / thickness
    elif scanner.slice_profile in ("box", "triangle"):
        weights = np.ones(len(offsets))
    else:
        raise InputError(f"slice_profile must be 'box' or 'triangle', got {scanner.slice_profile!r}")
    weights = weights / weights.sum()
    all_w = (np.arange(nk) * dz)[:, None] + offsets[None, :]
    keys = np.round(all_w.ravel() * 1e4).astype(np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    w_thin = uniq / 1e4
    per_slice = [(inverse.reshape(nk, -1)[k], weights) for k in range(nk)]
    return w_thin, per_slice, row


def _metal_rays(proj, solids, w_center, row, sub_mm, cu, cv, sub_rays=4):
    """Metal path lengths of every ray hitting a solid in one thin slice.

    Each detector bin is sampled by ``sub_rays`` parallel rays across its aperture (one pixel
    wide) times the sub-planes across the row; the transmission is later averaged over these
    samples (the exponential edge-gradient effect in-plane and through the slice).
    Returns ``(ray ids (n,), lengths (n, n_samples, n_mat))`` with ray id = view * n_det + bin.
    """
    n_plane = max(1, int(math.ceil(row / sub_mm - 1e-9)))
    n_ray = max(1, int(sub_rays))
    w_plane = w_center + (np.arange(n_plane) - (n_plane - 1) / 2.0) * (row / n_plane)
    t_off = (np.arange(n_ray) - (n_ray - 1) / 2.0) * (proj.ds / n_ray)
    w_sub = np.repeat(w_plane, n_ray)
    t_sub = np.tile(t_off, n_plane)
    n_sub = n_plane * n_ray
    lo_w, hi_w = w_center - row / 2.0, w_center + row / 2.0
    ids_all, len_all = [], []
    c, s = np.cos(proj.theta), np.sin(proj.theta)
    c0 = (proj.n_det - 1) / 2.0
    for solid in solids:
        if solid.w_range[1] < lo_w or solid.w_range[0] > hi_w:
            continue
        for group in solid.groups:          # disjoint convex groups: chords add, rays chosen per group
            seg_pts, rad = [], 0.0
            for p in group:
                if p[0] == "sph":
                    if p[1][2] + p[2] < lo_w or p[1][2] - p[2] > hi_w:
                        continue
                    seg_pts.append(p[1][None, :])
                    rad = max(rad, p[2])
                    continue
                a, b = p[5]
                r = p[3]
                dw = b[2] - a[2]
                if abs(dw) > 1e-9:
                    s_lo = (lo_w - r - a[2]) / dw
                    s_hi = (hi_w + r - a[2]) / dw
                    s_lo, s_hi = max(min(s_lo, s_hi), 0.0), min(max(s_lo, s_hi), 1.0)
                    if s_hi < s_lo:
                        continue
                elif a[2] + r < lo_w or a[2] - r > hi_w:
                    continue
                else:
                    s_lo, s_hi = 0.0, 1.0
                seg_pts.append(a[None, :] + np.array([[s_lo], [s_hi]]) * (b - a)[None, :])
                rad = max(rad, r)
            if not seg_pts:
                continue
            sp = np.vstack(seg_pts)
            t = (sp[:, 0:1] - cu) * c[None, :] + (sp[:, 1:2] - cv) * s[None, :]
            b_lo = np.clip(np.floor((t.min(axis=0) - rad - proj.ds) / proj.ds + c0).astype(int), 0, proj.n_det - 1)
            b_hi = np.clip(np.ceil((t.max(axis=0) + rad + proj.ds) / proj.ds + c0).astype(int), 0, proj.n_det - 1)
            counts = b_hi - b_lo + 1
            views = np.repeat(np.arange(proj.n_views), counts)
            first = np.repeat(np.cumsum(counts) - counts, counts)
            bins = np.repeat(b_lo, counts) + (np.arange(views.size) - first)
            tu, tv, du, dv = proj.ray_geometry(views, bins)
            p0 = np.empty((views.size, n_sub, 3))
            p0[..., 0] = (cu + tu)[:, None] + t_sub[None, :] * dv[:, None]     # (dv, -du): the ray's normal
            p0[..., 1] = (cv + tv)[:, None] - t_sub[None, :] * du[:, None]
            p0[..., 2] = w_sub[None, :]
            d = np.zeros((views.size, 1, 3))
            d[:, 0, 0] = du
            d[:, 0, 1] = dv
            L = chord_length([group], p0, d)                 # (n_rays, n_sub)
            hit = np.any(L > 0, axis=1)
            if not hit.any():
                continue
            ids_all.append(views[hit] * proj.n_det + bins[hit])
            len_all.append(L[hit][:, :, None] * solid.weights[None, None, :])
    if not ids_all:
        return np.zeros(0, np.int64), np.zeros((0, n_sub, len(MATERIALS)))
    ids = np.concatenate(ids_all)
    lens = np.concatenate(len_all)
    uniq, inv = np.unique(ids, return_inverse=True)
    out = np.zeros((uniq.size, n_sub, len(MATERIALS)))
    np.add.at(out, inv, lens)
    return uniq, out


def system_psf(proj: ParallelProjector, scanner: Scanner, n=33):
    """The reconstruction's own point-spread function (n x n, sums to 1): a pixel impulse through projector and FBP."""
    small = ParallelProjector(n, n, proj.dx, proj.dy, n_views=proj.n_views, scanner=scanner)
    img = np.zeros(n * n, np.float32)
    img[(n // 2) * n + n // 2] = 1.0
    out = np.zeros(n * n, np.float32)
    for views, A in small.blocks():
        p = (A @ img) * np.float32(small.forward_scale())
        q = small.ramp_filter(p.reshape(len(views), small.n_det), axis=1, kernel=scanner.kernel).ravel()
        out += A.T @ q
    psf = (out * np.pi / small.n_views).reshape(n, n)
    return psf / psf.sum()


def _fast_slices(hu_planes, proj, scanner, I0, photons_noisy, rngs, p_table, L_table, psf):
    """Metal-free thin slices without projection: anatomy * system PSF + stationary FBP-shaped noise.

    The noise has the FBP noise power spectrum of the kernel (|H(f)|^2 / |f|, parallel beam) and the
    standard deviation the physics gives at the slice centre: var(mu) = (pi/N)^2 sum_views
    var(q(0)), var(q(0)) = var(p_corr) sum_b q_delta_b^2, var(p) = 1/counts on the central ray of
    each view (counts from the polychromatic transmission), p_corr by the water correction's slope.
    """
    from scipy import ndimage
    from scipy.signal import fftconvolve
    nk, nj, ni = hu_planes.shape
    delta = np.zeros((1, proj.n_det), np.float32)
    delta[0, proj.n_det // 2] = 1.0
    q_delta = proj.ramp_filter(delta, axis=1, kernel=scanner.kernel)[0]
    g2 = float(np.sum(q_delta.astype(float) ** 2))
    # radial noise filter |H(f)| / sqrt(|f|) on the image's 2D frequency grid
    fy = np.fft.fftfreq(nj, d=proj.dy)[:, None]
    fx = np.fft.fftfreq(ni, d=proj.dx)[None, :]
    fr = np.hypot(fx, fy)
    size = 1 << int(math.ceil(math.log2(2 * proj.n_det)))
    imp = np.zeros((1, size // 2), np.float32)
    imp[0, 0] = 1.0
    fh = np.fft.rfftfreq(size, d=proj.ds)
    H = np.abs(np.fft.rfft(proj.ramp_filter(np.pad(imp, ((0, 0), (0, 0))), axis=1, kernel=scanner.kernel)[0], n=size))
    Hr = np.interp(fr, fh[:len(H)], H[:len(fh)], right=0.0)
    amp = np.where(fr > 0, Hr / np.sqrt(np.maximum(fr, 1e-12)), 0.0)
    th = proj.theta
    t = np.arange(-(max(ni, nj)), max(ni, nj) + 1) * min(proj.dx, proj.dy) * 0.75
    out = np.empty_like(hu_planes, dtype=np.float32)
    for k in range(nk):
        hu = hu_planes[k]
        out[k] = fftconvolve(hu, psf, mode="same")
        if not photons_noisy:
            continue
        a, b = hu_to_basis(hu)
        # central ray of each view: samples along the line through the slice centre
        ci, cj = (ni - 1) / 2.0, (nj - 1) / 2.0
        ii = ci + np.outer(-np.sin(th), t) / proj.dx
        jj = cj + np.outer(np.cos(th), t) / proj.dy
        step = t[1] - t[0]
        Lw = ndimage.map_coordinates(a, [jj.ravel(), ii.ravel()], order=1, cval=0.0).reshape(ii.shape).sum(1) * step
        Lb = ndimage.map_coordinates(b, [jj.ravel(), ii.ravel()], order=1, cval=0.0).reshape(ii.shape).sum(1) * step
        T = np.exp(-(np.outer(Lw, MU_E[0]) + np.outer(Lb, MU_E[1]))) @ ENERGY_WEIGHTS
        counts = np.maximum(I0 * T, MIN_COUNTS)
        var_p = (counts + scanner.electronic_noise_counts ** 2) / counts ** 2
        p = -np.log(np.maximum(T, 1e-30))
        dLdp = np.interp(p, p_table[1:], np.diff(L_table) / np.diff(p_table))
        var_mu = (np.pi / proj.n_views) ** 2 * g2 * float(np.sum(var_p * (MU_WATER_REF * dLdp) ** 2))
        sd_hu = 1000.0 * math.sqrt(var_mu) / MU_WATER_REF
        white = rngs[k].normal(size=(nj, ni))
        noise = np.fft.ifft2(np.fft.fft2(white) * amp).real
        out[k] += (noise / max(float(noise.std()), 1e-12) * sd_hu).astype(np.float32)
    return out


def simulate_ct(anatomy_hu, geometry: ImageGeometry, needles=(), seeds=(), calcifications=(),
                slice_thickness_mm=None, noise=True, rng_seed=0, progress=None, scanner: Scanner | None = None,
                external_mm=30.0, return_float=False):
    """Simulate a CT with metal: returns ``(hu int16 [k, j, i], geometry, truth dict)``.

    - ``anatomy_hu``: HU on ``geometry`` (array [k, j, i]), ``(array, its ImageGeometry)`` to be
      resampled (oblique acquisitions), a callable ``f(ImageGeometry) -> HU array`` evaluated on
      the thin-slice planes, or None (:func:`default_anatomy`).
    - ``geometry``: the CT grid; its k axis is the scanner's axis (an oblique grid is a tilted
      gantry); slices are ``slice_thickness_mm`` thick (default: the slice spacing).
    - ``needles``: dicts with ``entry_ras`` (skin), ``tip_ras``, ``diameter_mm`` (default 1.27),
      optional ``bend_mm`` (sagitta of the bend), ``bend_direction``, ``external_mm`` (shaft outside
      the skin, default ``external_mm``); other keys (name, number) are copied into the truth.
    - ``seeds``: dicts with ``center_ras``, ``axis``, ``model_id``; optional ``length_mm``,
      ``diameter_mm``, ``marker`` ("silver" or "none").
    - ``calcifications``: dicts with ``center_ras``, ``radius_mm``, ``hu`` (its HU at E_ref).
    - ``noise``: True (Poisson + electronic noise at the scanner's photon level), a number
      (photons per ray per view per mm of row width), or False (expected counts: beam hardening
      and starvation without noise).

    The truth (JSON-ready dict) holds the objects as rendered (needle centre lines, depths,
    what lies inside the CT), the scanner settings and the attenuation at E_ref.
    """
    scanner = scanner or Scanner()
    if not isinstance(geometry, ImageGeometry):
        raise InputError("simulate_ct: geometry must be an ImageGeometry")
    thickness = float(slice_thickness_mm) if slice_thickness_mm is not None else geometry.spacing[2]
    if not (0.1 <= thickness <= 10.0):
        raise InputError(f"slice thickness {thickness} mm is outside 0.1-10 mm")
    if noise is True:
        photons = scanner.photons_per_ray_mm
    elif noise is False or noise is None:
        photons = scanner.photons_per_ray_mm
    else:
        photons = float(noise)
        if not (photons > 10):
            raise InputError(f"noise: photons per ray per mm must be > 10, got {noise}")
    noisy = noise is not False and noise is not None
    solids, t_needles, t_seeds, t_calcs = _build_solids(geometry, needles, seeds, calcifications, external_mm)
    sampler = _anatomy_sampler(anatomy_hu, geometry)
    ni, nj, nk = geometry.size
    dx, dy = geometry.spacing[0], geometry.spacing[1]
    proj = ParallelProjector(ni, nj, dx, dy, scanner=scanner)
    cu, cv = (ni - 1) / 2.0 * dx, (nj - 1) / 2.0 * dy
    w_thin, per_slice, row = _thin_planes(geometry, thickness, scanner)
    I0 = photons * row
    p_table, L_table = water_correction_table()
    slope = (L_table[-1] - L_table[-2]) / (p_table[-1] - p_table[-2])
    slope0 = (L_table[1] - L_table[0]) / (p_table[1] - p_table[0])
    scale = proj.forward_scale()
    thin_mu = np.zeros((len(w_thin), nj, ni), np.float32)
    # the projector matrices are built once per slab: the larger the slab, the fewer rebuilds
    per_slice_bytes = proj.X.size * 4 * 4 + proj.n_views * proj.n_det * 4
    n_slab = int(scanner.slab_slices) if scanner.slab_slices else int(scanner.slab_memory_mb * 2 ** 20 // per_slice_bytes)
    n_slab = max(1, min(n_slab, len(w_thin)))
    full = np.ones(len(w_thin), dtype=bool)
    if scanner.fast_metal_free:
        # slices farther than one row from every metal object or calcification take the fast path
        full = np.array([any(sd.w_range[0] - row <= w + row / 2 and sd.w_range[1] + row >= w - row / 2 for sd in solids)
                         for w in w_thin], dtype=bool)
    idx_full = np.flatnonzero(full)
    n_done = 0
    for s0 in range(0, len(idx_full), n_slab):
        sel = idx_full[s0:s0 + n_slab]
        ws = w_thin[sel]
        S = len(ws)
        X = np.empty((proj.X.size, 2 * S), np.float32)                         # (n_pix, 2S): water, bone
        for c0 in range(0, S, 16):                                               # anatomy in chunks (memory)
            a, b = hu_to_basis(sampler(ws[c0:c0 + 16]))
            n = a.shape[0]
            X[:, c0:c0 + n] = a.reshape(n, -1).T
            X[:, S + c0:S + c0 + n] = b.reshape(n, -1).T
        metal = [_metal_rays(proj, solids, w, row, scanner.sub_plane_mm, cu, cv, scanner.sub_rays) for w in ws]
        # one noise stream per thin slice, keyed by its plane's position (so a thick CT averages the
        # very thin slices a thin CT of the same seed shows)
        w_abs = ws + float(np.asarray(geometry.origin) @ geometry.direction_matrix[:, 2])
        rngs = [np.random.default_rng([int(rng_seed) & 0x7FFFFFFF, int(round(w * 1e4)) % (1 << 31), 7]) for w in w_abs]
        out = np.zeros((proj.X.size, S), np.float32)
        for views, A in proj.blocks():
            nvb = len(views)
            P = (A @ X) * np.float32(scale)                      # (nvb * n_det, 2S) mm
            Lw, Lb = P[:, :S], P[:, S:]
            expo = Lw[..., None] * MU_E[0][None, None, :].astype(np.float32) + Lb[..., None] * MU_E[1][None, None, :].astype(np.float32)
            T = np.exp(-expo) @ ENERGY_WEIGHTS.astype(np.float32)          # (rays, S)
            r_lo, r_hi = views[0] * proj.n_det, (views[-1] + 1) * proj.n_det
            for s in range(S):
                ids, lens = metal[s]
                if ids.size == 0:
                    continue
                i0, i1 = np.searchsorted(ids, [r_lo, r_hi])
                if i1 <= i0:
                    continue
                rid = ids[i0:i1] - r_lo
                lm = lens[i0:i1]                                   # (n, n_sub, n_mat)
                base = Lw[rid, s][:, None, None] * MU_E[0][None, None, :] + Lb[rid, s][:, None, None] * MU_E[1][None, None, :]
                extra = np.einsum("nsm,me->nse", lm, MU_E)
                T[rid, s] = (np.exp(-(base + extra)) @ ENERGY_WEIGHTS).mean(axis=1)
            T = proj.aperture(T.reshape(nvb, proj.n_det, S), axis=1).reshape(nvb * proj.n_det, S)
            counts = I0 * T
            if noisy:
                for s in range(S):
                    c = rngs[s].poisson(counts[:, s]).astype(np.float32)
                    if scanner.electronic_noise_counts > 0:
                        c += rngs[s].normal(0.0, scanner.electronic_noise_counts, size=c.shape).astype(np.float32)
                    counts[:, s] = c
            counts = np.maximum(counts, MIN_COUNTS)
            p = np.log(np.float32(I0) / counts)
            Lweq = np.where(p <= p_table[-1], np.interp(p, p_table, L_table), L_table[-1] + (p - p_table[-1]) * slope)
            Lweq = np.where(p < 0, p * slope0, Lweq)          # noise above I0: keep it (no bias in air)
            pc = (Lweq * MU_WATER_REF).astype(np.float32).reshape(nvb, proj.n_det, S)
            q = proj.ramp_filter(pc, axis=1, kernel=scanner.kernel).reshape(nvb * proj.n_det, S)
            out += A.T @ q
            n_done += nvb * S
            _progress.report(progress, n_done / (proj.n_views * len(w_thin)), "CT simulation")
        thin_mu[sel] = (out * np.float32(np.pi / proj.n_views)).T.reshape(S, nj, ni)
    thin_hu = 1000.0 * (thin_mu / MU_WATER_REF - 1.0)
    fast = np.flatnonzero(~full)
    if len(fast):
        psf = system_psf(proj, scanner)
        for c0 in range(0, len(fast), 16):
            sel = fast[c0:c0 + 16]
            w_abs = w_thin[sel] + float(np.asarray(geometry.origin) @ geometry.direction_matrix[:, 2])
            rngs = [np.random.default_rng([int(rng_seed) & 0x7FFFFFFF, int(round(w * 1e4)) % (1 << 31), 7]) for w in w_abs]
            thin_hu[sel] = _fast_slices(sampler(w_thin[sel]), proj, scanner, I0, noisy, rngs, p_table, L_table, psf)
            _progress.report(progress, (n_done + (c0 + len(sel)) * proj.n_views) / (proj.n_views * len(w_thin)),
                             "CT simulation (slices without metal)")
    vol = np.zeros(geometry.shape, np.float32)
    for k, (idx, wts) in enumerate(per_slice):
        vol[k] = np.tensordot(wts.astype(np.float32), thin_hu[idx], axes=1)
    truth = {
        "generator": "SeedImplantPlannerLib.imaging.ctsim", "version": CTSIM_VERSION,
        "geometry": {"size": list(geometry.size), "spacing": list(geometry.spacing), "origin": list(geometry.origin),
                     "direction": [list(r) for r in geometry.direction]},
        "slice_thickness_mm": thickness, "thin_slice_mm": row, "n_views": proj.n_views, "n_detector_bins": proj.n_det,
        "photons_per_ray": I0 if noisy else None, "rng_seed": int(rng_seed),
        "thin_slices_full_fidelity": int(full.sum()), "thin_slices_fast": int((~full).sum()),
        "scanner": asdict(scanner), "e_ref_keV": E_REF_KEV, "hu_at_e_ref": {k: round(v, 1) for k, v in HU_REF.items()},
        "needles": t_needles, "seeds": t_seeds, "calcifications": t_calcs,
    }
    if return_float:
        return vol, geometry, truth
    return np.clip(np.round(vol), HU_MIN, HU_MAX).astype(np.int16), geometry, truth


def write_case(folder, hu, geometry, truth, ct_name="ct.nrrd", truth_name="truth.json"):
    """Write ``ct.nrrd`` (int16 HU) and ``truth.json`` into ``folder`` atomically; returns both paths."""
    from ..core.fileio import write_json
    from ..core.imageio import write_image
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ct_path = write_image(folder / ct_name, hu, geometry, {"SeedPlan_CTSim": f"ctsim v{CTSIM_VERSION}"})
    truth_path = folder / truth_name
    write_json(truth_path, truth)
    return ct_path, truth_path


def read_truth(path):
    """Read a truth.json written by :func:`write_case`."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# --- ready cases ---------------------------------------------------------------------------------

def phantom_anatomy(geometry: ImageGeometry):
    """Analytic abdomen-like phantom on ``geometry`` (HU, float32 [k, j, i]), continuous in RAS.

    An elliptic body (semi-axes 62 x 48 mm in x/y, along z) of soft tissue (40 HU) with a 6 mm
    fat rim (-100 HU), a fat-density tumour (-30 HU, 22 mm radius) left of centre, and a bone rod
    (cortex 1100 HU, 2.5 mm thick; marrow 250 HU; radius 9 mm) posterior-right, in air (-1000 HU).
    """
    c = geometry.voxel_centers_ras(dtype=np.float32)
    x, y, z = c[..., 0], c[..., 1], c[..., 2]
    out = np.full(x.shape, -1000.0, np.float32)
    e = (x / 62.0) ** 2 + (y / 48.0) ** 2
    out[e <= 1.0] = -100.0
    out[(x / 56.0) ** 2 + (y / 42.0) ** 2 <= 1.0] = 40.0
    out[((x + 12.0) ** 2 + (y - 4.0) ** 2 + (0.6 * z) ** 2) <= 22.0 ** 2] = -30.0
    rb = np.hypot(x - 30.0, y + 26.0)
    out[rb <= 9.0] = 1100.0
    out[rb <= 6.5] = 250.0
    return out


def _phantom_geometry(slice_mm=1.0, pixel_mm=0.8, n=160, z_mm=40.0, tilt_deg=0.0):
    nk = int(round(z_mm / slice_mm))
    size = (n, n, nk)
    d = np.eye(3)
    if tilt_deg:
        a = np.deg2rad(tilt_deg)
        d = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    half = 0.5 * np.array([(n - 1) * pixel_mm, (n - 1) * pixel_mm, (nk - 1) * slice_mm])
    origin = -(d @ half)
    return ImageGeometry(size, (pixel_mm, pixel_mm, slice_mm), tuple(origin), tuple(map(tuple, d)))


def _tilted(direction, tilt_deg, rng):
    d = _unit(direction)
    perp = _unit(np.cross(d, rng.normal(size=3)))
    a = np.deg2rad(tilt_deg)
    return _unit(np.cos(a) * d + np.sin(a) * perp)


def _skin_point(tip, direction, body_semi=(62.0, 48.0)):
    """Where the line tip - s*direction leaves the phantom's elliptic body (s > 0)."""
    tip = np.asarray(tip, float)
    d = -_unit(direction)
    A = (d[0] / body_semi[0]) ** 2 + (d[1] / body_semi[1]) ** 2
    B = 2 * (tip[0] * d[0] / body_semi[0] ** 2 + tip[1] * d[1] / body_semi[1] ** 2)
    C = (tip[0] / body_semi[0]) ** 2 + (tip[1] / body_semi[1]) ** 2 - 1.0
    s = (-B + math.sqrt(max(B * B - 4 * A * C, 0.0))) / (2 * A)
    return tip + s * d


def _needle(name, tip, direction, rng, dia=1.27, bend=0.0, tilt=None):
    d = _unit(direction) if tilt is None else _tilted(direction, tilt, rng)
    entry = _skin_point(tip, d)
    out = {"name": name, "entry_ras": np.round(entry, 3).tolist(), "tip_ras": np.round(np.asarray(tip, float), 3).tolist(),
           "diameter_mm": dia, "bend_mm": bend}
    if bend:
        out["bend_direction"] = _unit(np.cross(d, [0.0, 0.0, 1.0])).tolist()
    return out


def _seed(center, axis, **kw):
    rec = {"center_ras": np.round(np.asarray(center, float), 3).tolist(), "axis": _unit(axis).round(5).tolist(),
           "model_id": "I125_OncoSeed_6711"}
    rec.update(kw)
    return rec


def _case_needles(rng):
    """Six needles from the left flank and one from the front: tilted, one bent, a crossing pair."""
    L = np.array([1.0, 0.0, 0.0])
    needles = [
        _needle("N1", (-5.0, 10.0, -6.0), L, rng, tilt=2.0),
        _needle("N2", (-2.0, -2.0, 0.0), L, rng, 1.27, bend=1.5, tilt=3.0),
        _needle("N3", (0.0, -14.0, 6.0), L, rng, 1.07, tilt=1.0),
        # crossing pair: N4 runs obliquely over N5 with 2.5 mm between their axes at the crossing
        _needle("N4", (8.0, 18.0, -1.3), _unit([1.0, -0.6, 0.0]), rng, 0.91),
        _needle("N5", (10.0, 6.0, 1.3), _unit([1.0, 0.5, 0.0]), rng, 1.27),
        # from the front (anterior), nearly perpendicular to the others
        _needle("N6", (-20.0, -20.0, 12.0), _unit([0.05, -1.0, 0.1]), rng, 1.27, tilt=2.0),
    ]
    return needles


def _case_postimplant_seeds(rng, n_lines=4):
    """Seeds along needle lines with end-to-end chains, side-by-side and crossed pairs, migrated seeds."""
    seeds = []
    kinds = []
    for n in range(n_lines):
        y0, z0 = -15.0 + 10.0 * n, -8.0 + 5.0 * (n % 2)
        ax = _tilted([1.0, 0.0, 0.0], 3.0, rng)
        start = np.array([-35.0, y0, z0])
        if n == 0:   # end-to-end chain of 4 (0.5 mm gaps)
            for s in range(4):
                seeds.append(_seed(start + ax * s * (SEED_LENGTH_MM + 0.5), ax))
                kinds.append("chain")
        else:        # 10 mm spacing
            for s in range(4):
                seeds.append(_seed(start + ax * s * 10.0 + rng.normal(0, 0.3, 3), _tilted(ax, 4.0, rng)))
                kinds.append("line")
    # side-by-side pairs (0.3-0.6 mm surface gap) and a crossed pair
    for c in ((15.0, -18.0, 4.0), (18.0, 14.0, -6.0)):
        ax = _tilted([0.0, 0.0, 1.0], 10.0, rng)
        perp = _unit(np.cross(ax, [1.0, 0.0, 0.0]))
        gap = rng.uniform(0.3, 0.6)
        seeds.append(_seed(np.asarray(c), ax))
        seeds.append(_seed(np.asarray(c) + perp * (SEED_DIAMETER_MM + gap) + ax * rng.uniform(-1, 1), _tilted(ax, 3.0, rng)))
        kinds += ["side_by_side", "side_by_side"]
    c = np.array([25.0, 0.0, 10.0])
    a1 = _unit([1.0, 0.3, 0.2])
    a2 = _unit(np.cross(a1, [0.0, 0.0, 1.0]))
    seeds.append(_seed(c, a1))
    seeds.append(_seed(c + _unit(np.cross(a1, a2)) * (SEED_DIAMETER_MM + 0.3), a2))
    kinds += ["crossed", "crossed"]
    # migrated seeds: off every line, random axes
    for c in ((-25.0, 30.0, 14.0), (35.0, -10.0, -15.0)):
        seeds.append(_seed(np.asarray(c), rng.normal(size=3)))
        kinds.append("migrated")
    for s, k in zip(seeds, kinds):
        s["arrangement"] = k
    return seeds


def _calcs(rng):
    return [{"center_ras": [-18.0, 24.0, -10.0], "radius_mm": 1.5, "hu": 600.0},
            {"center_ras": [4.0, -28.0, 3.0], "radius_mm": 1.0, "hu": 900.0},
            {"center_ras": [22.0, 22.0, 12.0], "radius_mm": 2.0, "hu": 350.0}]


def _intraop_case(slice_mm=1.0, tilt_deg=0.0, rng_seed=11):
    rng = np.random.default_rng(rng_seed)
    needles = _case_needles(rng)
    # loaded seeds of an earlier needle (withdrawn), one seed touching needle N1
    seeds = []
    ax = _tilted([1.0, 0.0, 0.0], 2.0, rng)
    for s in range(3):
        seeds.append(_seed(np.array([-30.0, -25.0, -10.0]) + ax * s * 10.0, ax, arrangement="implanted"))
    n1 = needles[0]
    e, t = np.asarray(n1["entry_ras"]), np.asarray(n1["tip_ras"])
    d = _unit(t - e)
    p = e + d * (0.6 * np.linalg.norm(t - e))
    perp = _unit(np.cross(d, [0.0, 0.0, 1.0]))
    seeds.append(_seed(p + perp * (1.27 / 2 + SEED_DIAMETER_MM / 2 + 0.2), d, arrangement="touching_needle N1"))
    # a needle partly outside the CT: its tip beyond the last slice
    geom = _phantom_geometry(slice_mm, tilt_deg=tilt_deg)
    lo, hi = geom.bounds_ras()
    tip = np.array([-15.0, 30.0, hi[2] + 6.0])
    dirv = _unit([0.9, 0.0, 0.45])
    needles.append(_needle("N7_partly_outside", tip, dirv, rng, 1.27))
    return dict(anatomy=phantom_anatomy, geometry=geom, needles=needles, seeds=seeds, calcifications=_calcs(rng),
                slice_thickness_mm=slice_mm)


def _postimplant_case(slice_mm=1.0, tilt_deg=0.0, rng_seed=23):
    rng = np.random.default_rng(rng_seed)
    return dict(anatomy=phantom_anatomy, geometry=_phantom_geometry(slice_mm, tilt_deg=tilt_deg), needles=[],
                seeds=_case_postimplant_seeds(rng), calcifications=_calcs(rng), slice_thickness_mm=slice_mm)


#: Ready cases: name -> (description, builder of simulate_ct's inputs).
CASES = {
    "intraop_1mm": ("phantom, 7 steel needles (tilted, one bent 1.5 mm, a crossing pair 2.5 mm apart, one from the "
                    "front, one partly outside the CT), 3 implanted seeds, a seed touching a needle, 3 calcifications, "
                    "bone; 1 mm slices", lambda: _intraop_case(1.0)),
    "intraop_3mm": ("the intraop_1mm objects on 3 mm slices", lambda: _intraop_case(3.0)),
    "intraop_oblique": ("the intraop_1mm objects, gantry tilted 20 deg, 1 mm slices", lambda: _intraop_case(1.0, 20.0)),
    "postimplant_1mm": ("phantom, 24 seeds: a 4-seed end-to-end chain, 3 needle lines, 2 side-by-side pairs, a crossed "
                        "pair, 2 migrated seeds; 3 calcifications, bone; 1 mm slices", lambda: _postimplant_case(1.0)),
    "postimplant_3mm": ("the postimplant_1mm seeds on 3 mm slices", lambda: _postimplant_case(3.0)),
    "postimplant_oblique": ("the postimplant_1mm seeds, gantry tilted 20 deg", lambda: _postimplant_case(1.0, 20.0)),
}


def case_inputs(name):
    """The keyword arguments of :func:`simulate_ct` for a ready case (see :data:`CASES`)."""
    if name not in CASES:
        raise InputError(f"unknown CT case {name!r}; known: {', '.join(CASES)}")
    return CASES[name][1]()


def make_case(name, folder, rng_seed=0, noise=True, progress=None, scanner: Scanner | None = None):
    """Simulate the ready case ``name`` and write ``ct.nrrd`` + ``truth.json`` into ``folder``.

    Returns ``(ct path, truth path)``. The truth carries the case name and description.
    """
    inputs = case_inputs(name)
    anatomy = inputs.pop("anatomy")
    geometry = inputs.pop("geometry")
    hu, geometry, truth = simulate_ct(anatomy, geometry, noise=noise, rng_seed=rng_seed, progress=progress,
                                      scanner=scanner, **inputs)
    truth["case"] = {"name": name, "description": CASES[name][0]}
    return write_case(folder, hu, geometry, truth)
