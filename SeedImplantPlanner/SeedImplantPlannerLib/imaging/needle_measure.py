"""One line of steel measured on the CT: centreline, tip, skin entry, bend, steel level, confidence.

:func:`measure_line` takes a line from the line search (:mod:`imaging.needle_lines`) with its own
metal voxels and returns the fields of a :class:`imaging.needlefinder.FoundNeedle`, or the reason
why the line is no needle. The tip is the half point of the steel's peak profile along the local
axis (a blurred step keeps its half point whatever the slice thickness); the entry is where a
ring of ``ENTRY_RING_MM`` around the needle leaves the body; the gauge is not measured (beam
hardening and photon starvation put steel's CT number far below its nominal value).
"""

from __future__ import annotations

import math

import numpy as np

from .needle_lines import line_dist, perp_frame, unit, weighted_line
from .needle_sampling import level_crossing, peak_profile

#: A needle may deviate from its straight axis by this much (mm) and still count as one line.
BEND_TOLERANCE_MM = 2.0
#: Radius (mm) of the ring around the needle whose leaving the body marks the skin entry.
ENTRY_RING_MM = 4.0
#: The tip is where the steel's peak profile along the axis falls to this fraction of the way from
#: the needle's plateau to the soft tissue (the half point of a symmetrically blurred step).
TIP_LEVEL = 0.5
#: Nominal scanner blur (Gaussian sigma, mm; about 1 mm FWHM in-plane, DOMAIN notes).
PSF_SIGMA_MM = 0.45
#: ISO 9626 regular-wall outer diameters (mm) by gauge (as planning.needles; repeated here because
#: the imaging layer does not import planning).
GAUGE_DIAMETER_MM = {14: 2.11, 15: 1.83, 16: 1.65, 17: 1.47, 18: 1.27, 19: 1.07, 20: 0.91, 21: 0.82, 22: 0.72}
DEFAULT_GAUGE = 18


def mask_at(mask, geometry, ras):
    from ..core.geometry import mask_at_indices
    ijk = np.rint(geometry.ras_to_ijk(np.asarray(ras, float))).astype(np.int64)
    return mask_at_indices(mask, ijk)


def measure_line(c, d, pts, w, sample, body_sample, geometry, background, threshold, ct_max, disk_mm, inlier_mm,
                 min_length_mm, max_gap_mm):
    """The fields of a FoundNeedle (dict) for one line, or the reason (str) why it is no needle."""
    # -- centreline and robust axis ------------------------------------------------------------------
    t = (pts - c) @ d
    bins = np.floor(t / 2.0).astype(np.int64)
    ub, inv = np.unique(bins, return_inverse=True)
    wsum = np.bincount(inv, weights=w)
    cen = np.stack([np.bincount(inv, weights=w * pts[:, k]) for k in range(3)], axis=1) / wsum[:, None]
    bw = np.sqrt(wsum)
    cc, dd = c, d
    for _ in range(4):
        dist, _ = line_dist(cen, cc, dd)
        rw = bw * np.where(dist <= BEND_TOLERANCE_MM, 1.0, (BEND_TOLERANCE_MM / np.maximum(dist, 1e-6)) ** 2)
        if len(cen) >= 3:
            cc, dd, _ = weighted_line(cen, rw)
    dd = unit(dd)
    ts = (cen - cc) @ dd
    order = np.argsort(ts)
    cen, ts, wsum = cen[order], ts[order], wsum[order]
    dist, _ = line_dist(cen, cc, dd)
    # -- orient: the tip is the end deeper in the body --------------------------------------------------
    ring = _ring(dd, ENTRY_RING_MM)
    lo_end, hi_end = cc + ts[0] * dd, cc + ts[-1] * dd
    if _proximal_first(body_sample, lo_end, hi_end, dd, ring, geometry):
        pass
    else:
        dd = -dd
        ts = -ts[::-1]
        cen = cen[::-1]
        wsum = wsum[::-1]
        dist = dist[::-1]
    visible = float(ts[-1] - ts[0]) + 2.0
    if visible < min_length_mm:
        return f"too short for a needle ({visible:.0f} mm of metal, minimum {min_length_mm:.0f} mm)"
    core = dist <= BEND_TOLERANCE_MM
    bend = float(dist[core].max()) if core.any() else float(dist.max())
    # -- tip: half-maximum of the cross-section content along the local axis ---------------------------
    near = ts >= ts[-1] - 25.0
    if np.count_nonzero(near) >= 3:
        tc, td, _ = weighted_line(cen[near], np.sqrt(wsum[near]))
        td = unit(td)
        if td @ dd < 0:
            td = -td
    else:
        tc, td = cc + ts[-1] * dd, dd
    t_end = float((cen[-1] - tc) @ td) + 1.0
    peak_mm = max(0.6, 0.5 * float(max(geometry.spacing)))
    prof_t = np.arange(-40.0, 12.0, 0.25)
    prof, frac = peak_profile(sample, tc + t_end * td, td, prof_t, peak_mm)
    ok = np.isfinite(prof)
    inner = ok & (prof_t >= -22.0) & (prof_t <= -4.0)
    if np.count_nonzero(inner) < 8:
        inner = ok & (prof_t <= -1.0)
    if np.count_nonzero(inner) < 4:
        return "needle tip could not be measured (too little of the needle inside the CT)"
    plateau = float(np.median(prof[inner]))
    if plateau <= background + 0.5 * (threshold - background):
        return "no steel along the line (streak artefact)"
    # walk out of the needle from 10 mm inside its last metal voxels: the first fall to half-way
    # between the steel plateau and the soft tissue is the end of the steel (a blurred step's half)
    th = level_crossing(prof_t, np.where(ok, prof, background), plateau, background, -10.0, TIP_LEVEL)
    tip_on = "steel_end"
    if th is None or th > 6.0:
        beyond = ~ok & (prof_t > -10.0)
        if beyond.any():   # the needle runs out of the CT before it ends
            th = float(prof_t[np.flatnonzero(beyond)[0]]) - 0.25
            tip_on = "ct_edge"
        else:              # metal continues (another object in line): the end of the own voxels
            th = -1.0 + max(0.0, blur_sigma(td, geometry) - 0.3)
    tip = tc + (t_end + th) * td
    if tip_on == "steel_end" and not geometry.contains_ras(tip + 2.0 * td, margin_voxels=0.0):
        tip_on = "ct_edge"
    for _ in range(40):  # a tip at the CT edge: the last point of the axis inside the CT
        if geometry.contains_ras(tip, margin_voxels=0.0):
            break
        tip = tip - 0.25 * td
    # -- entry: where a ring around the needle leaves the body (or the CT) ---------------------------
    back = -dd
    step = 0.5
    s_vals = np.arange(0.0, 400.0, step)
    line_pts = tip[None] + s_vals[:, None] * back
    in_ct = geometry.contains_ras(line_pts, margin_voxels=0.0)
    if not in_ct[0]:
        return "needle tip outside the CT"
    n_in = int(np.argmin(in_ct)) if not in_ct.all() else len(s_vals)
    ring_pts = line_pts[:n_in, None, :] + ring[None]
    inside = body_sample(ring_pts.reshape(-1, 3)).reshape(n_in, len(ring)).mean(axis=1) >= 0.5
    entry_on = "skin"
    if inside.all():
        entry_s = s_vals[n_in - 1]
        entry_on = "ct_edge"
    else:
        first_in = np.flatnonzero(inside)
        if not len(first_in):
            return "metal line outside the body (table, external wire or marker)"
        out_after = np.flatnonzero(~inside[first_in[0]:])
        entry_s = s_vals[first_in[0] + out_after[0]] - 0.5 * step if len(out_after) else s_vals[n_in - 1]
        if not len(out_after):
            entry_on = "ct_edge"
    entry = tip + entry_s * back
    depth = float(entry_s)
    if depth < 0.5 * min_length_mm and entry_on == "skin":
        return f"metal line mostly outside the body ({depth:.0f} mm inside): not an inserted needle"
    # the steel must reach the skin (or the CT edge): else a chain of seeds, a clip or a wire
    proximal_s = float((tip - (cc + ts[0] * dd)) @ dd)
    reach_tol = max(10.0, 2.0 * max_gap_mm)
    if proximal_s < depth - reach_tol:
        # fainter steel may carry on to the skin (cupping of a long in-plane needle, a dark streak
        # across it): accept when the peak profile stays well above soft tissue up to the skin
        gap_s = np.arange(proximal_s, depth, 1.0)
        gap_peak, _ = peak_profile(sample, tip, -dd, gap_s, max(1.2, 0.6 * float(max(geometry.spacing))))
        faint = background + 0.25 * (plateau - background)
        carried = np.mean(np.nan_to_num(gap_peak, nan=background) > faint) if len(gap_s) else 0.0
    else:
        carried = 1.0
    if carried < 0.8:
        return (f"elongated metal ({proximal_s:.0f} mm) that stops {depth - proximal_s:.0f} mm inside the body: "
                "not a needle (seed chain, clip or wire?)")
    visible = max(proximal_s, depth)
    # steel level of the whole visible line (median peak): a streak band between needles is bright only
    # where it crosses them
    s_full = np.arange(2.0, max(3.0, min(visible, depth + 40.0)), 1.0)
    full_peak, _ = peak_profile(sample, tip, -dd, s_full, max(1.2, 0.6 * float(max(geometry.spacing))))
    line_peak = float(np.nanmedian(full_peak)) if np.isfinite(full_peak).any() else plateau
    line_max = float(np.nanmax(full_peak)) if np.isfinite(full_peak).any() else plateau
    # -- diameter: not measurable from the CT numbers (beam hardening and photon starvation lower the
    # steel's CT number far below its nominal value, and 1 mm CTs clip it): the gauge is the plan's
    diameter, gauge, measured = None, DEFAULT_GAUGE, False
    # -- confidence -------------------------------------------------------------------------------------
    covered = len(np.unique(np.floor(ts))) * 2.0
    coverage = min(1.0, covered / max(ts[-1] - ts[0] + 2.0, 1.0))
    conf = (coverage * math.exp(-max(0.0, bend - BEND_TOLERANCE_MM) / 2.0) * (1.0 if entry_on == "skin" else 0.85)
            * (1.0 if tip_on == "steel_end" else 0.85))
    s_cen = (tip - cen) @ dd
    pts_out = np.vstack([entry[None], cen[(s_cen > 0.5) & (s_cen < depth)][::1], tip[None]])
    rad = 0.5 * (diameter if diameter is not None else GAUGE_DIAMETER_MM[gauge])
    return dict(tip=tip, entry=entry, direction=unit(tip - entry), depth_mm=depth, entry_on=entry_on, tip_on=tip_on,
                diameter_mm=diameter, gauge=int(gauge), gauge_measured=measured, confidence=float(conf),
                bend_mm=bend, visible_mm=visible, points=pts_out, radius_mm=rad, peak_hu=min(plateau, line_peak),
                max_hu=line_max)


def blur_sigma(d, geometry):
    """Blur (sigma, mm) of a needle end along direction ``d``: scanner PSF and the voxel box."""
    g = geometry.direction_matrix.T @ d
    return math.sqrt(PSF_SIGMA_MM ** 2 + float(np.sum((np.asarray(geometry.spacing) * g) ** 2)) / 12.0)


def _proximal_first(body_sample, a, b, d, ring, geometry):
    """True if end ``a`` (towards ``-d``) is the needle's proximal end (hub side), ``b`` the tip."""
    fa, fb = _inside_fraction(body_sample, a, ring, geometry), _inside_fraction(body_sample, b, ring, geometry)
    if (fa < 0.5) != (fb < 0.5):
        return fa < 0.5
    edge_mm = 2.0 * max(geometry.spacing)
    ea = not geometry.contains_ras(a - edge_mm * d, margin_voxels=0.0)
    eb = not geometry.contains_ras(b + edge_mm * d, margin_voxels=0.0)
    if ea != eb:
        return bool(ea)
    return _out_dist(body_sample, a, -d, ring, geometry) <= _out_dist(body_sample, b, d, ring, geometry)


def _ring(d, radius):
    u, v = perp_frame(d)
    ang = np.arange(8) * math.pi / 4
    return radius * (np.cos(ang)[:, None] * u + np.sin(ang)[:, None] * v)


def _inside_fraction(body_sample, p, ring, geometry=None):
    """Fraction of the ring around ``p`` inside the body, over the ring points inside the CT (a ring
    cut by the CT edge counts as inside: the CT edge cuts through the patient)."""
    pts = p[None] + ring
    if geometry is not None:
        in_ct = geometry.contains_ras(pts, margin_voxels=0.0)
        if np.count_nonzero(in_ct) < 3:
            return 1.0
        pts = pts[in_ct]
    return float(body_sample(pts).mean())


def _out_dist(body_sample, p, d, ring, geometry, step=1.0, s_max=400.0):
    """Distance from ``p`` along ``d`` until the ring leaves the body or the CT."""
    s = np.arange(0.0, s_max, step)
    pts = p[None] + s[:, None] * d
    in_ct = geometry.contains_ras(pts, margin_voxels=0.0)
    n = int(np.argmin(in_ct)) if not in_ct.all() else len(s)
    if n == 0:
        return 0.0
    ins = body_sample((pts[:n, None, :] + ring[None]).reshape(-1, 3)).reshape(n, len(ring)).mean(axis=1) >= 0.5
    out = np.flatnonzero(~ins)
    return float(s[out[0]]) if len(out) else float(s[n - 1]) + 1000.0
