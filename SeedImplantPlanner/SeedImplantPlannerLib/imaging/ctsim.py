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

The code is split by concern: :mod:`.ctsim_physics` (spectrum, attenuation tables, object sizes,
:class:`Scanner`), :mod:`.ctsim_metal` (analytic solids and their chords), :mod:`.ctsim_projector`
(projector, metal rays, filters, the fast path) and :mod:`.ctsim_cases` (phantom and ready cases);
this module runs the simulation, writes cases and keeps every public name importable from here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from .ctsim_cases import (CASES, _calcs, _case_needles, _case_postimplant_seeds, _intraop_case, _needle,  # noqa: F401
                          _phantom_geometry, _postimplant_case, _seed, _skin_point, _tilted, case_inputs,
                          phantom_anatomy)
from .ctsim_metal import (_build_solids, _cylinder, _dot, _frame_groups, _groups_extent_points,  # noqa: F401
                          _make_solid, _material_weights, _piece_interval, _positive, _Solid, _sphere, _to_frame,
                          _unit, _vec, capsule_groups, chord_length, needle_groups_from_polyline, needle_polyline)
from .ctsim_physics import (DENSITY, E_REF_KEV, ENERGY_WEIGHTS, HU_REF, MARKER_DIAMETER_MM,  # noqa: F401
                            MARKER_LENGTH_MM, MATERIALS, MIN_COUNTS, MU_E, MU_REF, MU_RHO, MU_WATER_REF,
                            NEEDLE_GAUGE_OD_MM, SEED_DIAMETER_MM, SEED_LENGTH_MM, SEED_WALL_MM, SPECTRUM_KEV,
                            SPECTRUM_PHOTONS, Scanner, hu_to_basis, linear_attenuation_per_mm,
                            water_correction_table)
from .ctsim_projector import ParallelProjector, _fast_slices, _metal_rays, system_psf  # noqa: F401

HU_MIN, HU_MAX = -1024, 3071
CTSIM_VERSION = 1


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
