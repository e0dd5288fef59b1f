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

from .needle_lines import perp_frame, unit
from .needle_sampling import level_crossing, peak_profile

#: A needle may deviate from its straight axis by this much (mm) and still count as one line.
BEND_TOLERANCE_MM = 2.0
#: Radius (mm) of the ring around the needle whose leaving the body marks the skin entry.
ENTRY_RING_MM = 4.0
#: The tip is where the steel's peak profile along the axis falls to this fraction of the way from
#: the needle's plateau to the soft tissue (the half point of a symmetrically blurred step).
TIP_LEVEL = 0.5
#: Radius (mm) around the needle's axis within which a brighter object beside the tip (a seed just
#: deposited 1-2 mm beside it, a neighbour's steel) is recognised as not this needle's steel when the
#: tip is measured: a seed's centre 2 mm off the axis, plus its 0.4 mm radius.
NEIGHBOUR_MM = 2.5
#: Fainter steel carries a needle on (towards its skin entry, or out of the CT) where its peak stands
#: above the soft tissue by at least this fraction of its steel's excess (the metal threshold's own
#: fraction).
CARRY_FRACTION = 0.25
#: Nominal scanner blur (Gaussian sigma, mm; about 1 mm FWHM in-plane, DOMAIN notes).
PSF_SIGMA_MM = 0.45
#: ISO 9626 regular-wall outer diameters (mm) by gauge (as planning.needles; repeated here because
#: the imaging layer does not import planning).
GAUGE_DIAMETER_MM = {14: 2.11, 15: 1.83, 16: 1.65, 17: 1.47, 18: 1.27, 19: 1.07, 20: 0.91, 21: 0.82, 22: 0.72}
DEFAULT_GAUGE = 18
#: Partial volume of a needle in a thick slice: the steel fills at most ``PV_DIAMETER_MM / T`` of a
#: slice of thickness ``T`` when it lies in the slice plane. 1.65 mm is 16 G, the thickest needle of
#: seed implants (17-18 G usual): the largest fill, so the smallest correction.
PV_DIAMETER_MM = GAUGE_DIAMETER_MM[16]


def slice_fill_fraction(direction, geometry, diameter_mm=PV_DIAMETER_MM) -> float:
    """Largest fraction of a slice's thickness that the steel of a needle along ``direction`` fills.

    A slice of thickness ``T`` averages the object over ``T`` along the slice normal (the slice
    sensitivity profile, idealised as a box). A cylinder of diameter ``D`` at angle ``theta`` to
    the slice plane occupies ``D / cos(theta)`` of the normal within one in-plane pixel column, so a
    voxel holds at most ``min(1, D / (T cos(theta)))`` of steel: the needle's peak above the tissue
    is scaled down by that fraction (and split between two slices when it lies across their
    boundary). The metal per mm of needle is conserved by the averaging: dividing a thin line's
    excess by this fraction gives the excess it would show in a slice it filled. 1 for slices no
    thicker than the needle and for needles crossing the slices steeply.
    """
    normal = np.asarray(geometry.direction_matrix, float)[:, 2]
    thick = float(geometry.spacing[2])
    cos_t = math.sqrt(max(0.0, 1.0 - min(1.0, abs(float(np.asarray(direction, float) @ normal))) ** 2))
    return 1.0 if diameter_mm >= thick * cos_t else float(diameter_mm / (thick * cos_t))


def mask_at(mask, geometry, ras):
    """Nearest-voxel values of ``mask`` at RAS points; points within the CT's extent (half a voxel
    beyond the outer voxel centres) take the outer voxel's value, points beyond it are False."""
    from ..core.geometry import mask_at_indices
    f = geometry.ras_to_ijk(np.asarray(ras, float))
    size = np.asarray(geometry.size)
    within = np.all((f >= -0.5) & (f <= size - 0.5), axis=-1)
    ijk = np.where(within[..., None], np.clip(np.rint(f), 0, size - 1), np.rint(f)).astype(np.int64)
    return mask_at_indices(mask, ijk)


def measure_trace(tr, sample, body_sample, geometry, background, threshold, min_length_mm, max_gap_mm):
    """The fields of a FoundNeedle (dict) for one traced centre line (:func:`imaging.needle_track.trace_centreline`),
    or the reason (str) why it is no needle."""
    # -- orient: the tip is the end deeper in the body --------------------------------------------------
    ring = _ring(tr.d, ENTRY_RING_MM)
    lo_end, hi_end = tr.at(tr.t0)[0], tr.at(tr.t1)[0]
    forward = _proximal_first(body_sample, lo_end, hi_end, tr.tangent(tr.t1), ring, geometry,
                              carries=lambda t_end, sgn_out: _steel_carries_out(tr, sample, body_sample, geometry,
                                                                                background, t_end, sgn_out))
    sgn = 1.0 if forward else -1.0
    t_tip_end = tr.t1 if forward else tr.t0
    visible = float(tr.t1 - tr.t0) + 1.0
    if visible < min_length_mm:
        return f"too short for a needle ({visible:.0f} mm of metal, minimum {min_length_mm:.0f} mm)"
    # -- tip: half point of the peak profile along the tip segment's own axis ---------------------------
    td = sgn * tr.tangent(t_tip_end)
    end = tr.at(t_tip_end)[0]
    # the steel's peak lies within half a voxel of the axis across the needle: half an in-plane pixel,
    # or half a slice where the needle runs along the slices (the slice normal's share across it). A
    # needle crossing the slices steeply keeps a narrow disk, so that a seed or a neighbour's steel
    # beside its tip (seeds just deposited lie 1-2 mm beside and ahead of the tip) is not read as
    # this needle's steel running on.
    normal = np.asarray(geometry.direction_matrix, float)[:, 2]
    across = math.sqrt(max(0.0, 1.0 - min(1.0, abs(float(td @ normal))) ** 2))
    peak_mm = max(0.6, 0.5 * max(float(max(geometry.spacing[:2])), float(geometry.spacing[2]) * across))
    prof_t = np.arange(-30.0, 12.0, 0.25)
    prof, _ = peak_profile(sample, end, td, prof_t, peak_mm)
    if float(geometry.spacing[2]) * across <= float(max(geometry.spacing[:2])):
        # the needle crosses the slices steeply: its steel peaks on its axis within half a pixel, so a
        # brighter object beside it is not its own (along thick slices its peak may sit half a slice
        # off the axis, in the next slice, and the wider disk is its own steel)
        prof = _own_steel(sample, end, td, prof_t, peak_mm, prof, background)
    ok = np.isfinite(prof)
    inner = ok & (prof_t >= -14.0) & (prof_t <= -3.0)
    if np.count_nonzero(inner) < 8:
        inner = ok & (prof_t <= -1.0)
    if np.count_nonzero(inner) < 4:
        return "needle tip could not be measured (too little of the needle inside the CT)"
    plateau = float(np.median(prof[inner]))
    if plateau <= background + 0.5 * (threshold - background):
        return "no steel along the line (streak artefact)"
    # the step at the tip is from the steel just before it when that is brighter than all of the
    # plateau: an in-plane needle among others is starved of photons along its length but least at its
    # tip, where its steel reads brighter than 3-14 mm before it (the half point of the 3-14 mm plateau
    # then lies on the streak band beyond the tip); a flat plateau keeps its own step
    end_steel = ok & (prof_t >= -3.0) & (prof_t <= -1.0)
    top = float(np.median(prof[end_steel])) if np.count_nonzero(end_steel) >= 4 else plateau
    if not top > float(np.max(prof[inner])):
        top = plateau   # not brighter than every point of the plateau: no shaft rising to its tip
    th = level_crossing(prof_t, np.where(ok, prof, background), top, background, -6.0, TIP_LEVEL)
    tip_on = "steel_end"
    if th is None or th > max_gap_mm + 2.0:
        beyond = ~ok & (prof_t > -6.0)
        if beyond.any():   # the needle runs out of the CT before it ends
            th = float(prof_t[np.flatnonzero(beyond)[0]]) - 0.25
            tip_on = "ct_edge"
        else:              # metal continues (another object in line): the end of the steel run
            th = 0.0
    tip = end + th * td
    if tip_on == "steel_end" and not geometry.contains_ras(tip + 2.0 * td, margin_voxels=0.0):
        tip_on = "ct_edge"
    for _ in range(40):  # a tip at the CT edge: the last point of the axis inside the CT's extent (voxel edges)
        if geometry.contains_ras(tip, margin_voxels=0.5):
            break
        tip = tip - 0.25 * td
    # -- entry: walking back along the centre line, where a ring around it leaves the body (or the CT) ---
    t_tip = t_tip_end + sgn * float((tip - end) @ td)
    step = 0.5
    s_vals = np.arange(0.0, 400.0, step)
    line_pts = tr.at(t_tip - sgn * s_vals)
    in_ct = geometry.contains_ras(line_pts, margin_voxels=0.5)
    if not in_ct[0]:
        return "needle tip outside the CT"
    n_in = int(np.argmin(in_ct)) if not in_ct.all() else len(s_vals)
    ring_pts = line_pts[:n_in, None, :] + ring[None]
    # ring points beyond the CT are left out (the CT's edge cuts through the patient, not the skin)
    ring_in_ct = geometry.contains_ras(ring_pts.reshape(-1, 3), margin_voxels=0.5).reshape(n_in, len(ring))
    ring_body = body_sample(ring_pts.reshape(-1, 3)).reshape(n_in, len(ring)) & ring_in_ct
    n_ct = ring_in_ct.sum(axis=1)
    inside = np.where(n_ct >= 3, ring_body.sum(axis=1) >= 0.5 * np.maximum(n_ct, 1), True)
    entry_on = "skin"
    if inside.all():
        entry_k = n_in - 1
        entry_on = "ct_edge"
    else:
        first_in = np.flatnonzero(inside)
        if not len(first_in):
            return "metal line outside the body (table, external wire or marker)"
        out_after = np.flatnonzero(~inside[first_in[0]:])
        entry_k = first_in[0] + out_after[0] if len(out_after) else n_in - 1
        if not len(out_after):
            entry_on = "ct_edge"
    entry = line_pts[max(entry_k - 1, 0)] if entry_on == "skin" else line_pts[entry_k]
    if entry_on == "skin" and entry_k > 0:
        entry = 0.5 * (line_pts[entry_k - 1] + line_pts[entry_k])
    depth_path = float(s_vals[entry_k]) - (0.5 * step if entry_on == "skin" else 0.0)
    # (a needle running out of the CT may show only its first mm inside the body: its depth is a bound)
    if depth_path < 0.5 * min_length_mm and entry_on == "skin" and tip_on != "ct_edge":
        return f"metal line mostly outside the body ({depth_path:.0f} mm inside): not an inserted needle"
    # the steel must reach the skin (or the CT edge): else a chain of seeds, a clip or a wire
    proximal_s = float(tr.t1 - tr.t0) - abs(t_tip - t_tip_end)
    reach_tol = max(10.0, 2.0 * max_gap_mm)
    if proximal_s < depth_path - reach_tol:
        # fainter steel may carry on to the skin (a long in-plane needle starved of photons, dark
        # streaks across it): accept when the peak along the centre line stays well above soft tissue
        gap_s = np.arange(proximal_s, depth_path, 1.0)
        gap_peak = np.array([np.nan]) if not len(gap_s) else sample_peak_along(tr, sample, t_tip - sgn * gap_s,
                                                                               max(1.2, 0.6 * float(max(geometry.spacing))))
        faint = background + CARRY_FRACTION * (plateau - background)
        carried = float(np.mean(np.nan_to_num(gap_peak, nan=background) > faint))
    else:
        carried = 1.0
    if carried < 0.8:
        return (f"elongated metal ({proximal_s:.0f} mm) that stops {depth_path - proximal_s:.0f} mm inside the body: "
                "not a needle (seed chain, clip or wire?)")
    # steel level along the needle (median peak of the traced centre line inside the body)
    s_tr = sgn * (t_tip - tr.ts)
    body_part = (s_tr >= 2.0) & (s_tr <= depth_path)
    pk = tr.peaks[body_part] if np.count_nonzero(body_part) >= 5 else tr.peaks
    pk = pk[np.isfinite(pk)]
    line_peak = float(np.median(pk)) if len(pk) else plateau
    line_max = float(np.max(pk)) if len(pk) else plateau
    # the brightest steel includes the run's own end (its peak on the centre line: not a neighbour's),
    # where a needle lying across two thick slices, or starved along its length, reads highest
    own = tr.peaks[(s_tr <= depth_path) & tr.found & np.isfinite(tr.peaks)]
    if len(own):
        line_max = max(line_max, float(np.max(own)))
    found_frac = float(np.mean(tr.found[body_part])) if np.count_nonzero(body_part) else 1.0
    coherent = found_frac
    # -- shape: chord entry -> tip, the tip segment's own axis, the bend ---------------------------------
    depth = float(np.linalg.norm(tip - entry))
    chord = unit(tip - entry)
    path = tr.at(t_tip - sgn * np.linspace(0.0, depth_path, max(3, int(depth_path / 2.0) + 1)))
    r = path - entry
    bend = float(np.max(np.linalg.norm(r - (r @ chord)[:, None] * chord, axis=1)))
    diameter, gauge, measured = None, DEFAULT_GAUGE, False
    conf = (found_frac * math.exp(-max(0.0, bend - BEND_TOLERANCE_MM) / 2.0) * (1.0 if entry_on == "skin" else 0.85)
            * (1.0 if tip_on == "steel_end" else 0.85))
    rad = 0.5 * GAUGE_DIAMETER_MM[gauge]
    return dict(tip=tip, entry=entry, direction=chord, depth_mm=depth, entry_on=entry_on, tip_on=tip_on,
                diameter_mm=diameter, gauge=int(gauge), gauge_measured=measured, confidence=float(conf),
                bend_mm=bend, visible_mm=max(visible, depth), points=path[::-1], radius_mm=rad,
                peak_hu=min(plateau, line_peak), max_hu=line_max, tip_hu=plateau, tip_direction=td, coherent=coherent)


def _own_steel(sample, c, d, ts, radius_mm, prof, background, wide_mm=NEIGHBOUR_MM):
    """The needle's own steel in the peak profile ``prof`` (max within ``radius_mm`` of the axis
    ``c + t d``): where a brighter object lies beside the axis, within ``wide_mm`` but beyond
    ``radius_mm`` (a seed just deposited beside the tip, a neighbour's steel), the cross-section's
    peak has jumped sideways onto it, and the disk's maximum is the tail of that object's blur, not
    this needle's steel: there the value on the axis itself is taken. A needle's own blurred steel
    peaks on its axis (within ``radius_mm``), also beyond its tip, so its profile is unchanged."""
    u, v = perp_frame(d)
    offs = [r * (math.cos(a) * u + math.sin(a) * v)
            for r in np.arange(radius_mm + 0.5, wide_mm + 1e-6, 0.5) for a in np.arange(16) * math.pi / 8]
    if not offs:
        return prof
    cen = c + ts[:, None] * d
    outer = sample(cen[:, None, :] + np.array(offs)[None])
    outer = np.max(np.where(np.isfinite(outer), outer, -np.inf), axis=1)
    axis = sample(cen)
    beside = np.isfinite(prof) & np.isfinite(axis) & (outer > prof + 0.03 * np.maximum(prof - background, 1.0))
    return np.where(beside, axis, prof)


def sample_peak_along(tr, sample, ts, radius_mm):
    """Largest CT value within ``radius_mm`` of the traced centre line at positions ``ts`` (NaN outside)."""
    pts = tr.at(ts)
    offs = [np.zeros(3)]
    for r in (0.5 * radius_mm, radius_mm):
        offs += [r * (math.cos(a) * tr.u + math.sin(a) * tr.v) for a in np.arange(8) * math.pi / 4]
    vals = sample(pts[:, None, :] + np.array(offs)[None])
    centre_ok = np.isfinite(vals[:, 0])
    return np.where(centre_ok, np.nanmax(np.where(np.isfinite(vals), vals, -np.inf), axis=1), np.nan)


def blur_sigma(d, geometry):
    """Blur (sigma, mm) of a needle end along direction ``d``: scanner PSF and the voxel box."""
    g = geometry.direction_matrix.T @ d
    return math.sqrt(PSF_SIGMA_MM ** 2 + float(np.sum((np.asarray(geometry.spacing) * g) ** 2)) / 12.0)


def _proximal_first(body_sample, a, b, d, ring, geometry, carries=None):
    """True if end ``a`` (towards ``-d``) is the needle's proximal end (hub side), ``b`` the tip.

    In order: the end outside the body; the end at the CT edge; the end beyond which the needle's
    steel carries on, fainter, to the skin or the CT edge while beyond the other end it does not
    (``carries(t_end, sign)``: a needle is one piece of steel from its hub to its tip, and the
    steel's run stops short of the skin where the slices cut it thinly or rays along it are
    starved; beyond a tip lies tissue, or the dark streak of the rays along the needle); the end
    nearer the skin."""
    fa, fb = _inside_fraction(body_sample, a, ring, geometry), _inside_fraction(body_sample, b, ring, geometry)
    if (fa < 0.5) != (fb < 0.5):
        return fa < 0.5
    edge_mm = 2.0 * max(geometry.spacing)
    ea = not geometry.contains_ras(a - edge_mm * d, margin_voxels=0.0)
    eb = not geometry.contains_ras(b + edge_mm * d, margin_voxels=0.0)
    if ea != eb:
        return bool(ea)
    if carries is not None:
        ca, cb = carries("t0", -1.0), carries("t1", 1.0)
        if ca != cb:
            return bool(ca)
    return _out_dist(body_sample, a, -d, ring, geometry) <= _out_dist(body_sample, b, d, ring, geometry)


def _steel_carries_out(tr, sample, body_sample, geometry, background, t_end, sgn_out, step=1.0):
    """True when beyond the trace's end ``t_end`` ("t0" or "t1"), outwards (``sgn_out`` along the
    model axis), the peak on the continued centre line stands above the tissue around it by
    :data:`CARRY_FRACTION` of the trace's steel excess over at least 80 % of the way to where a ring
    of ``ENTRY_RING_MM`` leaves the body or the CT (fainter steel of the same needle)."""
    t = tr.t0 if t_end == "t0" else tr.t1
    pk = tr.peaks[np.isfinite(tr.peaks)]
    if not len(pk):
        return False
    level = float(np.median(pk)) - background
    ring = _ring(tr.d, ENTRY_RING_MM)
    ts = t + sgn_out * np.arange(step, 400.0, step)
    pts = tr.at(ts)
    in_ct = geometry.contains_ras(pts, margin_voxels=0.0)
    n = int(np.argmin(in_ct)) if not in_ct.all() else len(ts)
    if n == 0:
        return False
    ins = body_sample((pts[:n, None, :] + ring[None]).reshape(-1, 3)).reshape(n, len(ring)).mean(axis=1) >= 0.5
    out = np.flatnonzero(~ins)
    n = int(out[0]) if len(out) else n
    if n < 2:
        return False
    peak = sample_peak_along(tr, sample, ts[:n], max(1.2, 0.6 * float(max(geometry.spacing))))
    return bool(np.mean(np.nan_to_num(peak, nan=background) > background + CARRY_FRACTION * level) >= 0.8)


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
