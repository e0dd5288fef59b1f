"""Needles on a CT: find every steel needle in an intra-operative CT (tip, skin entry, axis, depth).

The intra-operative CT of a CT-guided implant shows 1.0-1.5 mm steel needles (17-22 G) as thin
lines far brighter than soft tissue, usually clipped at the scanner's HU ceiling, with dark and
bright streaks along and between them; loaded seeds, calcifications and bone lie among them.
Method (RAS millimetres throughout, arrays ``[k, j, i]``):

1. **Background and body**: the soft-tissue level is the median HU of the body (voxels above
   ``BODY_HU``); the body (for the skin entry) is the largest connected region above ``BODY_HU``
   with holes filled slice by slice.
2. **Metal mask**: voxels above ``background + max(NEEDLE_FLOOR_HU, NEEDLE_FRACTION x (peak -
   background))``, the peak being a robust maximum of the metal (the 99.9th percentile of the
   voxels above the floor). Metal streaks stay below this level; they add no voxel to the mask
   or only short specks, which the line test rejects.
3. **Lines** (RANSAC): connected components (26-neighbourhood) longer than half the minimum
   needle length are searched for straight lines: lines through two voxels at least
   ``min_length_mm / 2`` apart (and, when ``expected_directions`` are given, through one voxel
   along each expected direction) are scored by the *length they cover* (inlier voxels within
   ``inlier radius`` of the line, counted in 1 mm bins along it), so a long thin needle beats a
   fat blob. The best line's inliers are removed and the search repeats, which separates
   crossing needles and needles touching seeds or bone. Collinear pieces (a needle broken by a
   dark streak or by thick oblique slices) are merged.
4. **Axis**: weighted centroids of the inlier voxels in 2 mm bins along the line (the
   centreline); the axis is a robust straight-line fit of the centreline (bins off the line by
   more than ``BEND_TOLERANCE_MM`` are down-weighted: crossings, seeds). The largest distance
   of the centreline from the axis is reported (a needle bent within 2 mm of a line is found;
   a larger bend is reported in the warnings).
5. **Tip**: the metal content of the cross-section (HU excess over the background integrated
   over a disk perpendicular to the local axis) is sampled every 0.25 mm along the last 25 mm
   of the needle; the tip is where it first falls to half of the needle's plateau, walking out
   of the needle. The content is what blur and partial volume of thick slices conserve, so its
   half-maximum lies at the end of the metal whatever the slice thickness (a symmetric blur
   keeps a step's half point), and a seed touching the tip (a third of a needle's content per
   mm) does not lengthen the needle.
6. **Entry**: walking from the tip back along the axis, the point where a ring of radius
   ``ENTRY_RING_MM`` around the needle leaves the body (the skin, from the CT's air boundary);
   when the line leaves the CT first, the entry is the CT edge (``entry_on = "ct_edge"``, the
   depth is then a lower bound). Elongated metal that reaches neither the skin nor the CT edge
   is rejected (a chain of seeds, a clip or a marker wire is not a needle).
7. **Diameter and gauge**: the plateau content per mm divided by the excess HU of steel
   (``STEEL_EXCESS_HU``) gives the metal cross-section; the nearest ISO 9626 gauge is reported.
   A needle whose core is clipped at the HU ceiling has a content below its true one: its
   diameter is not measurable (``diameter_mm`` None, gauge the default 18 G, ``gauge_measured``
   False).
8. **Confidence** in [0, 1]: covered fraction of the needle's length, times a bend and a
   skin/edge term.

The matching to planned needles (names, deviations) is in ``planning.needle_match``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry

#: Body (patient) level: air is about -1000 HU, fat about -100 HU.
BODY_HU = -500.0
#: Needle metal threshold: at least this far above the soft-tissue background (HU) ...
NEEDLE_FLOOR_HU = 700.0
#: ... and at least this fraction of the way from background to the metal peak.
NEEDLE_FRACTION = 0.25
#: Shortest needle searched for (mm of visible steel).
MIN_LENGTH_MM = 20.0
#: A needle may deviate from its straight axis by this much (mm) and still count as one line.
BEND_TOLERANCE_MM = 2.0
#: Radius (mm) of the ring around the needle whose leaving the body marks the skin entry.
ENTRY_RING_MM = 4.0
#: The tip is where the steel's peak profile along the axis falls to this fraction of the way from
#: the needle's plateau to the soft tissue (the half point of a symmetrically blurred step).
TIP_LEVEL = 0.5
#: A line is steel only if its steel level (median peak along it) reaches this fraction of the way
#: from the soft tissue to the brightest needles of the CT (the metal threshold's own fraction).
FAINT_FRACTION = 0.25
#: ... and a line that does not enter through the skin (its proximal end on the CT edge; bone edges
#: along the scan axis look like that) must reach this fraction of the CT's brightest metal, and
#: somewhere along it more than cortical bone ever shows (ICRU-44 cortical bone, 1.92 g/cm3: about
#: 1550 HU at 70 keV; 2000 HU leaves room for noise and beam hardening).
EDGE_FAINT_FRACTION = 0.5
BONE_MAX_HU = 2000.0
#: A fainter line within STREAK_ANGLE_DEG and STREAK_OFFSET_MM of a needle, alongside it, is the
#: streak that rays along the needle leave beside it, when its steel level is below STREAK_PEAK_RATIO of
#: the needle's (parallel needles closer than 6 mm are not planned; a real one would be as bright).
STREAK_ANGLE_DEG = 5.0
STREAK_OFFSET_MM = 6.0
STREAK_PEAK_RATIO = 0.7
#: Nominal scanner blur (Gaussian sigma, mm; about 1 mm FWHM in-plane, DOMAIN notes).
PSF_SIGMA_MM = 0.45
#: Excess CT number of stainless steel over soft tissue (HU) at the ~70 keV effective energy of a
#: 120 kVp beam: mu/rho(Fe, 70 keV) ~ 0.83 cm^2/g x 8.0 g/cm^3 against mu(water) 0.193 / cm
#: (NIST XCOM), about 33 000 HU. Only used for the diameter estimate.
STEEL_EXCESS_HU = 33000.0
#: ISO 9626 regular-wall outer diameters (mm) by gauge (as planning.needles; repeated here because
#: the imaging layer does not import planning).
GAUGE_DIAMETER_MM = {14: 2.11, 15: 1.83, 16: 1.65, 17: 1.47, 18: 1.27, 19: 1.07, 20: 0.91, 21: 0.82, 22: 0.72}
DEFAULT_GAUGE = 18

NEEDLE_CSV_COLUMNS = ("number", "name", "kind", "gauge", "entry_x_mm", "entry_y_mm", "entry_z_mm",
                      "tip_x_mm", "tip_y_mm", "tip_z_mm", "dir_x", "dir_y", "dir_z", "depth_mm",
                      "entry_on", "diameter_mm", "gauge_measured", "confidence", "bend_mm", "visible_mm")


@dataclass
class FoundNeedle:
    """One needle found on a CT (RAS mm)."""

    tip: np.ndarray                 # (3,) tip of the steel
    entry: np.ndarray               # (3,) skin entry (or the CT edge, see ``entry_on``)
    direction: np.ndarray           # (3,) unit vector entry -> tip
    depth_mm: float                 # inserted depth: entry -> tip
    entry_on: str                   # "skin" or "ct_edge" (needle leaves the CT inside the body)
    tip_on: str                     # "steel_end" or "ct_edge" (the needle runs out of the CT first)
    diameter_mm: float | None       # measured steel diameter (None when the core is clipped)
    gauge: int                      # nearest gauge to the diameter (default 18 when not measured)
    gauge_measured: bool
    confidence: float               # 0..1
    bend_mm: float                  # largest distance of the centreline from the straight axis
    visible_mm: float               # length of steel seen on the CT (tip to the last metal voxel)
    points: np.ndarray              # (M, 3) centreline samples from the entry side to the tip
    radius_mm: float = 0.65         # half the diameter used to clear the needle from the seed search
    peak_hu: float = float("nan")   # median peak CT number along the steel (the needle's plateau)
    max_hu: float = float("nan")    # brightest CT value along the steel

    def row(self, number, name="") -> dict:
        """One row of the needle CSV (:data:`NEEDLE_CSV_COLUMNS`, read by ``--implanted-needles``)."""
        e, t, d = self.entry, self.tip, self.direction
        return {"number": int(number), "name": name or f"N{int(number)}", "kind": "implanted", "gauge": int(self.gauge),
                "entry_x_mm": f"{e[0]:.2f}", "entry_y_mm": f"{e[1]:.2f}", "entry_z_mm": f"{e[2]:.2f}",
                "tip_x_mm": f"{t[0]:.2f}", "tip_y_mm": f"{t[1]:.2f}", "tip_z_mm": f"{t[2]:.2f}",
                "dir_x": f"{d[0]:.4f}", "dir_y": f"{d[1]:.4f}", "dir_z": f"{d[2]:.4f}",
                "depth_mm": f"{self.depth_mm:.1f}", "entry_on": self.entry_on, "tip_on": self.tip_on,
                "diameter_mm": "" if self.diameter_mm is None else f"{self.diameter_mm:.2f}",
                "gauge_measured": "yes" if self.gauge_measured else "no", "confidence": f"{self.confidence:.3f}",
                "bend_mm": f"{self.bend_mm:.2f}", "visible_mm": f"{self.visible_mm:.1f}"}

    @classmethod
    def from_line(cls, entry, tip, radius_mm=0.65):
        """A needle known from elsewhere (a corrected table): straight from ``entry`` to ``tip`` (RAS mm)."""
        entry, tip = np.asarray(entry, float), np.asarray(tip, float)
        depth = float(np.linalg.norm(tip - entry))
        if not depth > 0:
            raise InputError(f"needle entry and tip coincide ({entry.tolist()})")
        return cls(tip=tip, entry=entry, direction=(tip - entry) / depth, depth_mm=depth, entry_on="skin",
                   tip_on="steel_end", diameter_mm=None, gauge=DEFAULT_GAUGE, gauge_measured=False, confidence=1.0,
                   bend_mm=0.0, visible_mm=depth, points=np.vstack([entry, tip]), radius_mm=float(radius_mm))

    def distance_to(self, points) -> np.ndarray:
        """Distance (mm) of ``points`` (..., 3) from the needle's straight segment entry..tip."""
        p = np.asarray(points, float) - self.entry
        t = np.clip(p @ self.direction, 0.0, self.depth_mm)
        return np.linalg.norm(p - t[..., None] * self.direction, axis=-1)


class FoundNeedles(list):
    """The needles found (a list of :class:`FoundNeedle`, tip-sorted) and how they were found."""

    def __init__(self, needles=(), threshold_hu=float("nan"), background_hu=float("nan"), rejected=(), warnings=()):
        super().__init__(needles)
        self.threshold_hu = float(threshold_hu)
        self.background_hu = float(background_hu)
        self.rejected = list(rejected)   # dicts: position_mm, length_mm, reason
        self.warnings = list(warnings)

    def rows(self, names=None) -> list:
        """CSV rows numbered 1..N (or named by ``names``)."""
        names = names or [""] * len(self)
        return [n.row(i, nm) for i, (n, nm) in enumerate(zip(self, names), start=1)]

    def summary(self) -> dict:
        """Plain-JSON summary."""
        return {"found": len(self), "threshold_HU": round(self.threshold_hu, 1),
                "background_HU": round(self.background_hu, 1),
                "entry_at_ct_edge": sum(1 for n in self if n.entry_on == "ct_edge"),
                "rejected": self.rejected, "warnings": list(self.warnings)}


# -- helpers shared with the seed finder -----------------------------------------------------------

def body_mask(ct_hu, level_hu=BODY_HU, coarse_above_voxels=8_000_000):
    """Largest connected component above ``level_hu`` (the patient), holes filled slice by slice.

    Large CTs (more than ``coarse_above_voxels``) pick the component and fill the holes on a grid
    of every second voxel in each direction, then keep the full-resolution voxels above the level
    within one coarse voxel of it: the same body, about 8 times faster; its outline (the skin) is
    the full-resolution threshold's.
    """
    from scipy import ndimage
    ct = np.asarray(ct_hu)
    m = ct > level_hu
    if m.size > coarse_above_voxels:
        cb = _largest_filled(m[::2, ::2, ::2])
        if cb is None:
            return m

        def up(a):
            return np.repeat(np.repeat(np.repeat(a, 2, axis=0), 2, axis=1), 2, axis=2)[:m.shape[0], :m.shape[1], :m.shape[2]]
        # the skin from the full-resolution threshold, the inside (holes filled) from the coarse body
        return (up(ndimage.binary_dilation(cb)) & m) | up(ndimage.binary_erosion(cb))
    body = _largest_filled(m)
    return m if body is None else body


def _largest_filled(m):
    """Largest component of ``m`` with holes filled slice by slice; None if ``m`` is empty."""
    from scipy import ndimage
    lab, n = ndimage.label(m)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def check_ct(ct_hu, geometry: ImageGeometry, what="CT"):
    """Validate a CT array against its geometry; returns it as an ndarray (no copy)."""
    ct = np.asarray(ct_hu)
    if ct.ndim != 3 or ct.shape != geometry.shape:
        raise InputError(f"{what} array shape {ct.shape} does not match its geometry (shape {geometry.shape})")
    if not np.issubdtype(ct.dtype, np.number):
        raise InputError(f"{what} array must be numeric (HU), got dtype {ct.dtype}")
    if np.issubdtype(ct.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(ct)))
        if bad:
            raise InputError(f"{what} holds {bad} non-finite voxel(s) (NaN or Inf)")
    return ct


def soft_tissue_level(ct, body) -> float:
    """Median HU of the body (soft tissue), clipped to [-200, 200]; InputError if not HU-like."""
    vals = ct[body][:: max(1, int(np.count_nonzero(body) // 2_000_000))]
    if not np.all(np.isfinite(vals)):
        raise InputError("CT holds non-finite voxel values inside the body")
    med = float(np.median(vals))
    if med > 400.0:
        raise InputError(f"CT values inside the body do not look like HU (median {med:.0f}; soft tissue is about "
                         "-100 to 60 HU): apply the rescale slope/intercept")
    return float(np.clip(med, -200.0, 200.0))


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _perp_frame(d):
    helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = _unit(np.cross(d, helper))
    return u, np.cross(d, u)


def _line_dist(pts, c, d):
    r = pts - c
    t = r @ d
    return np.sqrt(np.maximum(np.einsum("pk,pk->p", r, r) - t * t, 0.0)), t


def _coverage(t, bin_mm=1.0):
    """Covered length (mm) and the sorted occupied bins of projections ``t``."""
    b = np.unique(np.floor(t / bin_mm).astype(np.int64))
    return len(b) * bin_mm, b


def _longest_run(bins, max_gap_bins):
    """(start, stop) bin indices of the longest run of ``bins`` with gaps <= ``max_gap_bins``."""
    if len(bins) == 0:
        return 0, -1
    gaps = np.flatnonzero(np.diff(bins) > max_gap_bins + 1)
    starts = np.concatenate([[0], gaps + 1])
    stops = np.concatenate([gaps, [len(bins) - 1]])
    lengths = bins[stops] - bins[starts]
    q = int(np.argmax(lengths))
    return int(bins[starts[q]]), int(bins[stops[q]])


def _weighted_line(pts, w):
    c = (w[:, None] * pts).sum(0) / w.sum()
    r = pts - c
    cov = (w[:, None, None] * (r[:, :, None] * r[:, None, :])).sum(0) / w.sum()
    evals, evecs = np.linalg.eigh(cov)
    return c, evecs[:, -1], evals[::-1]


# -- line extraction ------------------------------------------------------------------------------

def _ransac_lines(pts, w, rng, *, inlier_mm, min_length_mm, max_gap_mm, expected_dirs, max_lines=40,
                  iterations=250, max_failures=3):
    """Straight lines in weighted points: (lines [(centre, direction, inlier indices)], rejections).

    Hypotheses are scored on a random subset of at most 3000 points (covered length along the
    line), the best one on all points. A line with more metal in the shell 2.5-4.5 mm around it
    than on it is a dense structure (bone), not a needle: it is removed and counted as rejected.
    """
    lines, rejections = [], []
    alive = np.ones(len(pts), dtype=bool)
    failures = 0
    for _ in range(max_lines):
        idx = np.flatnonzero(alive)
        if len(idx) < 3:
            break
        sub = pts[idx]
        if float(np.linalg.norm(np.ptp(sub, axis=0))) < min_length_mm:
            break
        wsub = w[idx]
        if len(sub) <= 3000:
            probe, pw = sub, wsub
        else:
            pick = rng.choice(len(sub), 3000, replace=False)
            probe, pw = sub[pick], wsub[pick]
        pw = pw / max(float(pw.max()), 1e-9)
        scale = len(sub) / len(probe)
        cands = []
        a = rng.integers(0, len(sub), iterations)
        b = rng.integers(0, len(sub), iterations)
        v = sub[b] - sub[a]
        nv = np.linalg.norm(v, axis=1)
        ok = nv >= 0.5 * min_length_mm
        cands += [(sub[i], vv / n) for i, vv, n in zip(a[ok], v[ok], nv[ok])]
        for d in expected_dirs:
            cands += [(sub[i], d) for i in rng.integers(0, len(sub), 15)]
        if not cands:
            break
        C = np.array([c for c, _ in cands])
        D = np.array([d for _, d in cands])
        best = None
        r2 = inlier_mm * inlier_mm
        for q0 in range(0, len(cands), 64):  # blocks of hypotheses x probe points
            Cb, Db = C[q0:q0 + 64], D[q0:q0 + 64]
            R = probe[None, :, :] - Cb[:, None, :]
            T = np.einsum("hpk,hk->hp", R, Db)
            dist2 = np.einsum("hpk,hpk->hp", R, R) - T * T
            inl = dist2 <= r2
            for h in range(len(Cb)):
                th = T[h, inl[h]]
                if len(th) < 3:
                    continue
                cov, bins = _coverage(th)
                if best is not None and cov <= best[0]:
                    continue
                s0, s1 = _longest_run(bins, max_gap_mm)
                # score: the brightest voxel of every 1 mm bin along the run, so a line along steel
                # beats a line along a streak band between two needles
                b = np.floor(th).astype(np.int64)
                sel = (b >= s0) & (b <= s1)
                if not sel.any():
                    continue
                arr = np.zeros(s1 - s0 + 1)
                np.maximum.at(arr, b[sel] - s0, pw[inl[h]][sel])
                score = float(arr.sum())
                if best is None or score > best[0]:
                    best = (score, Cb[h], Db[h], float(s1 - s0 + 1))
        if best is None or best[3] < min_length_mm / max(1.0, min(scale, 2.0)) * 0.9:
            break
        c, d = best[1], best[2]
        for _ in range(3):  # refine: weighted PCA of the inliers
            dist, t = _line_dist(sub, c, d)
            inl = dist <= inlier_mm
            if np.count_nonzero(inl) < 3:
                break
            c, d, _ = _weighted_line(sub[inl], w[idx][inl])
        dist, t = _line_dist(sub, c, d)
        inl = dist <= inlier_mm
        cov, bins = _coverage(t[inl])
        s0, s1 = _longest_run(bins, max_gap_mm)
        in_run = (t >= s0 - 1) & (t <= s1 + 2)
        keep = inl & in_run
        shell = np.count_nonzero((dist > 2.5) & (dist <= 4.5) & in_run)
        alive[idx[(dist <= inlier_mm + 0.6) & (t >= s0 - 2) & (t <= s1 + 3)]] = False
        if (s1 - s0 + 1) < min_length_mm:
            failures += 1
        elif shell > 1.5 * np.count_nonzero(keep):
            rejections.append((c, _unit(d), float(s1 - s0 + 1), "dense structure around the line (bone?)"))
            failures += 1
        else:
            lines.append((c, _unit(d), idx[keep]))
            continue
        if failures >= max_failures:
            break
    return lines, rejections


def _own_voxels(lines, pts, w, inlier_mm, max_gap_mm, min_length_mm):
    """Give each voxel to its nearest line (needles crossing at a small angle share voxels near the
    crossing) and keep each line's longest run of own voxels: [(centre, dir, pts, w)]."""
    if not lines:
        return []
    dists = np.stack([_line_dist(pts, c, d)[0] for c, d, _ in lines], axis=1)
    owner = np.argmin(dists, axis=1)
    out = []
    for q, (c, d, inl) in enumerate(lines):
        sel = (owner == q) & (dists[:, q] <= inlier_mm)
        if np.count_nonzero(sel) < 3:
            continue
        p, ww = pts[sel], w[sel]
        t = (p - c) @ d
        # 1 mm bins whose own metal sits off the axis towards another line are that line's sliver
        # (a needle grazing this one's extension), not this needle
        b = np.floor(t).astype(np.int64)
        ub, inv = np.unique(b, return_inverse=True)
        off = p - c - t[:, None] * d
        ws = np.bincount(inv, weights=ww)
        mo = np.stack([np.bincount(inv, weights=ww * off[:, k]) for k in range(3)], axis=1) / ws[:, None]
        bc = c + (ub + 0.5)[:, None] * d
        near_other = np.zeros(len(ub), dtype=bool)
        for k, (c2, d2, _) in enumerate(lines):
            if k != q:
                near_other |= _line_dist(bc, c2, d2)[0] <= 2.0 * inlier_mm
        good = ~(near_other & (np.linalg.norm(mo, axis=1) > 0.45 * inlier_mm))
        bins = ub[good]
        s0, s1 = _longest_run(bins, max_gap_mm)
        if s1 - s0 + 1 < min_length_mm:
            continue
        keep = (t >= s0 - 1) & (t <= s1 + 2)
        out.append((c, d, pts[sel][keep], w[sel][keep]))
    return out


def _merge_collinear(segs, max_angle_deg=4.0, max_offset_mm=2.0, max_gap_mm=25.0):
    """Merge segments (centre, dir, pts, w) that lie on one line (a needle broken in pieces)."""
    segs = list(segs)
    changed = True
    while changed:
        changed = False
        for a in range(len(segs)):
            for b in range(a + 1, len(segs)):
                ca, da, pa, wa = segs[a]
                cb, db, pb, wb = segs[b]
                if abs(float(da @ db)) < math.cos(math.radians(max_angle_deg)):
                    continue
                dab, _ = _line_dist(pb, ca, da)
                dba, _ = _line_dist(pa, cb, db)
                if np.median(dab) > max_offset_mm or np.median(dba) > max_offset_mm:
                    continue
                ta = (pa - ca) @ da
                tb = (pb - ca) @ da
                gap = max(tb.min() - ta.max(), ta.min() - tb.max())
                if gap > max_gap_mm:
                    continue
                pts = np.vstack([pa, pb])
                w = np.concatenate([wa, wb])
                c, d, _ = _weighted_line(pts, w)
                segs[a] = (c, _unit(d), pts, w)
                del segs[b]
                changed = True
                break
            if changed:
                break
    return segs


# -- per-needle measurements ------------------------------------------------------------------------

class _Sampler:
    """Trilinear CT samples at RAS points (outside the grid: NaN)."""

    def __init__(self, ct, geometry):
        self.ct = ct
        self.g = geometry

    def __call__(self, ras):
        from scipy import ndimage
        ras = np.asarray(ras, float)
        ijk = self.g.ras_to_ijk(ras.reshape(-1, 3))
        inside = np.all((ijk >= -0.5) & (ijk <= np.asarray(self.g.size) - 0.5), axis=1)
        out = np.full(len(ijk), np.nan, dtype=np.float64)
        if inside.any():
            coords = ijk[inside][:, ::-1].T
            out[inside] = ndimage.map_coordinates(self.ct, coords, order=1, mode="nearest")
        return out.reshape(ras.shape[:-1])


def _content_profile(sample, c, d, ts, radius_mm, background):
    """Cross-section metal content (HU x mm^2, excess over ``background``, dark streaks counted as
    zero) at positions ``c + t d``, integrated over a disk of ``radius_mm`` perpendicular to ``d``."""
    u, v = _perp_frame(d)
    step = 0.3
    rr = np.arange(step / 2, radius_mm, step)
    nang = 16
    ang = np.arange(nang) * 2 * math.pi / nang
    offs = (rr[:, None, None] * (np.cos(ang)[None, :, None] * u + np.sin(ang)[None, :, None] * v)).reshape(-1, 3)
    area = (2 * math.pi * rr[:, None] * step / nang * np.ones((1, nang))).reshape(-1)
    pts = (c + ts[:, None] * d)[:, None, :] + offs[None]
    vals = np.clip(sample(pts) - background, 0.0, None)  # dark streaks do not remove steel
    ok = np.isfinite(vals)
    vals = np.where(ok, vals, 0.0)
    frac = (ok * area[None]).sum(1) / area.sum()
    return (vals * area[None]).sum(1), frac


def _peak_profile(sample, c, d, ts, radius_mm):
    """Largest CT value within ``radius_mm`` of the axis at positions ``c + t d`` (NaN outside the CT)."""
    u, v = _perp_frame(d)
    offs = [np.zeros(3)]
    for r in (0.5 * radius_mm, radius_mm):
        offs += [r * (math.cos(a) * u + math.sin(a) * v) for a in np.arange(8) * math.pi / 4]
    offs = np.array(offs)
    pts = (c + ts[:, None] * d)[:, None, :] + offs[None]
    vals = sample(pts)
    centre_ok = np.isfinite(vals[:, 0])
    out = np.where(centre_ok, np.nanmax(np.where(np.isfinite(vals), vals, -np.inf), axis=1), np.nan)
    return out, centre_ok


def _level_crossing(ts, prof, plateau, base, start_t, level):
    """First ``t`` after ``start_t`` (walking out of the needle) where ``prof`` falls to ``level``
    (a fraction of the way from ``base`` to ``plateau``) and stays there for two samples; None if
    it never does."""
    half = base + level * (plateau - base)
    below = prof < half
    persist = below[:-1] & below[1:]
    first = np.flatnonzero(persist & (ts[:-1] > start_t))
    if not len(first):
        return None
    q = int(first[0])
    if q == 0:
        return float(ts[0])
    t0, t1, p0, p1 = ts[q - 1], ts[q], prof[q - 1], prof[q]
    return float(t0 + (p0 - half) / (p0 - p1) * (t1 - t0)) if p0 != p1 else float(t1)


# -- the finder -------------------------------------------------------------------------------------

def find_needles(ct_hu, geometry: ImageGeometry, *, region_mask=None, expected_directions=None, progress=None,
                 threshold_hu=None, min_length_mm=MIN_LENGTH_MM, body=None) -> FoundNeedles:
    """Find the needles in a CT (``ct_hu`` [k, j, i] in HU on ``geometry``); see the module doc.

    ``region_mask``: boolean [k, j, i]; only needles whose steel passes through it are kept (the
    needle is still followed to its tip and skin entry outside it). ``expected_directions``:
    (M, 3) planned needle directions (sign free), tried as extra line hypotheses (helps to split
    needles that touch along a long stretch). ``threshold_hu``: metal threshold (default automatic).
    ``body``: the body mask if already known. Returns :class:`FoundNeedles` sorted by tip
    (R, A, S). Raises InputError for a malformed CT, a region outside the CT, or a CT without metal;
    a CT with metal but no needle returns an empty list with the reasons in ``rejected``.
    """
    from scipy import ndimage
    ct = check_ct(ct_hu, geometry)
    if min_length_mm <= 0:
        raise InputError(f"minimum needle length must be > 0 mm, got {min_length_mm}")
    exp_dirs = []
    if expected_directions is not None:
        ed = np.asarray(expected_directions, float).reshape(-1, 3)
        norms = np.linalg.norm(ed, axis=1)
        if not np.all(np.isfinite(ed)) or np.any(norms < 1e-9):
            raise InputError("expected needle directions must be finite non-zero vectors")
        exp_dirs = list(ed / norms[:, None])
    region = None
    if region_mask is not None:
        region = np.asarray(region_mask, dtype=bool)
        if region.shape != ct.shape:
            raise InputError(f"region mask shape {region.shape} does not match the CT shape {ct.shape} "
                             "(resample the region onto the CT grid)")
        if not region.any():
            raise InputError("the needle search region is empty (it lies outside the CT, or the segment is empty)")
    _progress.report(progress, 0.0, "needle finder: body")
    if body is None:
        body = body_mask(ct)
    if not body.any():
        raise InputError("no body in the CT (no voxel above -500 HU): not a patient CT")
    background = soft_tissue_level(ct, body)
    floor = background + NEEDLE_FLOOR_HU
    sp = np.asarray(geometry.spacing, float)

    # -- threshold --------------------------------------------------------------------------------
    _progress.report(progress, 0.15, "needle finder: metal")
    if threshold_hu is None:
        hot = ct[ct > floor]
        if hot.size == 0:
            raise InputError(f"no metal in the CT: brightest voxel {float(ct.max()):.0f} HU, metal floor "
                             f"{floor:.0f} HU (not an intra-operative CT with needles?)")
        peak = float(np.percentile(hot, 99.9))
        threshold = max(floor, background + NEEDLE_FRACTION * (peak - background))
        metal_peak = float(hot.max())
    else:
        threshold = float(threshold_hu)
        metal_peak = float(ct.max())
        if not math.isfinite(threshold) or threshold <= background:
            raise InputError(f"needle threshold must be a finite HU value above the soft-tissue background "
                             f"({background:.0f} HU), got {threshold_hu!r}")
    metal = ct > threshold
    lab, ncomp = ndimage.label(metal, structure=np.ones((3, 3, 3)))
    if ncomp == 0:
        raise InputError(f"no metal in the CT above the needle threshold {threshold:.0f} HU")
    objs = ndimage.find_objects(lab)
    inlier_mm = max(1.5, 0.5 * float(sp.max()) + 0.8)
    max_gap_mm = max(4.0, 1.5 * float(sp.max()))
    rng = np.random.default_rng(12345)
    segs = []
    rejected = []
    warnings = []
    ct_max = float(ct.max())
    m_ijk = geometry.ijk_to_ras_matrix
    for idx, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        ext_vox = np.array([s.stop - s.start for s in sl[::-1]], float)
        if float(np.linalg.norm(ext_vox * sp)) < 0.5 * min_length_mm:
            continue
        kji = np.argwhere(lab[sl] == idx) + np.array([s.start for s in sl])
        pts = kji[:, ::-1].astype(float) @ m_ijk[:3, :3].T + m_ijk[:3, 3]
        w = np.clip(ct[kji[:, 0], kji[:, 1], kji[:, 2]].astype(float) - background, 1.0, None)
        if len(pts) > 60000:  # a huge component (bone + metal): thin it for the search
            sel = rng.choice(len(pts), 60000, replace=False)
            pts, w = pts[sel], w[sel]
        lines, rej = _ransac_lines(pts, w, rng, inlier_mm=inlier_mm, min_length_mm=0.5 * min_length_mm,
                                   max_gap_mm=max_gap_mm, expected_dirs=exp_dirs)
        for c, d, length, reason in rej:
            rejected.append({"position_mm": np.round(c, 1).tolist(), "length_mm": round(length, 1), "reason": reason})
        segs.extend(_own_voxels(lines, pts, w, inlier_mm, max_gap_mm, 0.5 * min_length_mm))
        if idx % 50 == 0:
            _progress.report(progress, 0.2 + 0.4 * idx / ncomp, f"needle finder: object {idx} of {ncomp}")
    segs = _merge_collinear(segs, max_offset_mm=inlier_mm)

    # -- measure each line --------------------------------------------------------------------------
    _progress.report(progress, 0.65, f"needle finder: {len(segs)} line(s)")
    sample = _Sampler(ct, geometry)
    body_sample = lambda p: _mask_at(body, geometry, p)  # noqa: E731
    disk_mm = max(2.0, 0.5 * float(sp.max()) + 1.2)
    found = []
    for q, (c, d, pts, w) in enumerate(segs):
        res = _measure(c, d, pts, w, sample, body_sample, geometry, background, threshold, ct_max, disk_mm,
                       inlier_mm, min_length_mm, max_gap_mm)
        where = np.round(c, 1).tolist()
        if isinstance(res, str):
            rejected.append({"position_mm": where, "length_mm": round(float(np.ptp((pts - c) @ d)), 1), "reason": res})
            continue
        if region is not None:
            s = np.linspace(0.0, 1.0, max(2, int(res.visible_mm / 1.0)))
            path = res.tip[None] - (s * res.visible_mm)[:, None] * res.direction
            if not _mask_at(region, geometry, path).any():
                rejected.append({"position_mm": where, "length_mm": round(res.visible_mm, 1),
                                 "reason": "needle outside the search region"})
                continue
        if exp_dirs:
            ang = min(math.degrees(math.acos(min(1.0, abs(float(res.direction @ e))))) for e in exp_dirs)
            if ang > 15.0:
                res.confidence *= 0.7
                warnings.append(f"needle with tip {np.round(res.tip, 1).tolist()} is {ang:.0f} deg off every "
                                "planned direction")
        if res.bend_mm > BEND_TOLERANCE_MM:
            warnings.append(f"needle with tip {np.round(res.tip, 1).tolist()} bends {res.bend_mm:.1f} mm off its "
                            "straight axis: its straight entry-tip model is approximate")
        found.append(res)
        _progress.report(progress, 0.65 + 0.35 * (q + 1) / max(len(segs), 1), "needle finder: measuring")
    found = _drop_duplicates(found, rejected, background)
    found = _drop_faint(found, rejected, background, metal_peak)
    found.sort(key=lambda n: tuple(np.round(n.tip, 1)))
    if any(n.entry_on == "ct_edge" for n in found):
        warnings.append(f"{sum(n.entry_on == 'ct_edge' for n in found)} needle(s) leave the CT inside the body: "
                        "entry at the CT edge, depth a lower bound")
    if not found:
        warnings.append("no needle found (metal present, but no straight steel line reaching the skin)")
    _progress.report(progress, 1.0, f"needle finder: {len(found)} needle(s)")
    return FoundNeedles(found, threshold, background, rejected, warnings)


def _drop_duplicates(found, rejected, background, max_angle_deg=10.0, max_offset_mm=BEND_TOLERANCE_MM + 0.5):
    """Drop lines that are not needles of their own: a second line on a needle already found (the
    pieces of a bent needle, leftovers of the line search), and a streak along a needle's axis
    beyond its tip (fainter, collinear, not overlapping the steel), and a fainter streak beside a
    needle, parallel to it. The longer, brighter, more confident needle is kept."""
    order = sorted(range(len(found)), key=lambda k: -found[k].visible_mm * found[k].confidence
                   * max(found[k].peak_hu - background, 1.0))
    kept = []
    for k in order:
        n = found[k]
        reason = None
        probe = n.tip[None] - np.linspace(0.0, min(n.visible_mm, n.depth_mm), 9)[:, None] * n.direction
        for m in kept:
            cosang = abs(float(n.direction @ m.direction))
            if cosang < math.cos(math.radians(max_angle_deg)):
                continue
            if np.median(m.distance_to(probe)) <= max_offset_mm:
                reason = "second line on a needle already found"
                break
            # the infinite axis of m: a fainter collinear line entirely beyond m's tip is m's streak
            r = probe - m.tip
            along = r @ m.direction
            off = np.linalg.norm(r - along[:, None] * m.direction, axis=1)
            if (cosang > math.cos(math.radians(4.0)) and np.median(off) <= max_offset_mm and along.min() > -2.0
                    and not n.peak_hu > 0.8 * m.peak_hu):
                reason = "metal streak along a needle's axis beyond its tip"
                break
            # rays along an in-plane needle are starved: bright and dark streaks run beside it, parallel
            if (cosang > math.cos(math.radians(STREAK_ANGLE_DEG)) and np.median(off) <= STREAK_OFFSET_MM
                    and np.mean((along <= 1.0) & (along >= -m.depth_mm - 40.0)) > 0.5
                    and not n.peak_hu > STREAK_PEAK_RATIO * m.peak_hu):
                reason = "metal streak beside a needle, parallel to it (fainter)"
                break
        if reason:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": reason})
        else:
            kept.append(n)
    return kept


def _drop_faint(found, rejected, background, metal_peak):
    """Drop lines too faint for steel: bright metal streaks and bone edges are straight and long too,
    but far fainter than steel seen along its own axis. A line brighter than cortical bone anywhere
    (``BONE_MAX_HU``) is steel and never dropped here (a needle lying between two slices reads
    low along most of its length, but not at its tip). The reference is the brightest needles of
    this CT (``FAINT_FRACTION`` of the way from the soft tissue to them); a line that does not enter
    through the skin (its proximal end on the CT edge: a bone edge along the scan axis looks like
    that) must reach ``EDGE_FAINT_FRACTION`` of the CT's brightest metal."""
    ref = float(np.percentile([n.peak_hu for n in found], 90)) if len(found) >= 2 else float(metal_peak)
    level = background + FAINT_FRACTION * (ref - background)
    edge_level = background + EDGE_FAINT_FRACTION * (max(ref, float(metal_peak)) - background)
    kept = []
    for n in found:
        both_edges = n.entry_on == "ct_edge"
        need = edge_level if both_edges else level
        if n.max_hu < BONE_MAX_HU and n.peak_hu < edge_level:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"no steel: brightest point {n.max_hu:.0f} HU (within cortical bone's range) "
                                       f"and steel level {n.peak_hu:.0f} HU (bone edge or streak)"})
        elif both_edges and n.max_hu < BONE_MAX_HU:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"no steel: brightest point {n.max_hu:.0f} HU, within cortical bone's range, "
                                       "and no skin entry (bone edge)"})
        elif n.peak_hu < need and n.max_hu < BONE_MAX_HU:
            rejected.append({"position_mm": np.round(n.tip, 1).tolist(), "length_mm": round(n.visible_mm, 1),
                             "reason": f"too faint for steel (peak {n.peak_hu:.0f} HU, steel here reaches "
                                       f"{(max(ref, metal_peak) if both_edges else ref):.0f} HU): metal streak or bone edge"})
        else:
            kept.append(n)
    return kept


def _mask_at(mask, geometry, ras):
    from ..core.geometry import mask_at_indices
    ijk = np.rint(geometry.ras_to_ijk(np.asarray(ras, float))).astype(np.int64)
    return mask_at_indices(mask, ijk)


def _measure(c, d, pts, w, sample, body_sample, geometry, background, threshold, ct_max, disk_mm, inlier_mm,
             min_length_mm, max_gap_mm):
    """FoundNeedle for one line, or a rejection reason (str)."""
    # -- centreline and robust axis ------------------------------------------------------------------
    t = (pts - c) @ d
    bins = np.floor(t / 2.0).astype(np.int64)
    ub, inv = np.unique(bins, return_inverse=True)
    wsum = np.bincount(inv, weights=w)
    cen = np.stack([np.bincount(inv, weights=w * pts[:, k]) for k in range(3)], axis=1) / wsum[:, None]
    bw = np.sqrt(wsum)
    cc, dd = c, d
    for _ in range(4):
        dist, _ = _line_dist(cen, cc, dd)
        rw = bw * np.where(dist <= BEND_TOLERANCE_MM, 1.0, (BEND_TOLERANCE_MM / np.maximum(dist, 1e-6)) ** 2)
        if len(cen) >= 3:
            cc, dd, _ = _weighted_line(cen, rw)
    dd = _unit(dd)
    ts = (cen - cc) @ dd
    order = np.argsort(ts)
    cen, ts, wsum = cen[order], ts[order], wsum[order]
    dist, _ = _line_dist(cen, cc, dd)
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
        tc, td, _ = _weighted_line(cen[near], np.sqrt(wsum[near]))
        td = _unit(td)
        if td @ dd < 0:
            td = -td
    else:
        tc, td = cc + ts[-1] * dd, dd
    t_end = float((cen[-1] - tc) @ td) + 1.0
    peak_mm = max(0.6, 0.5 * float(max(geometry.spacing)))
    prof_t = np.arange(-40.0, 12.0, 0.25)
    prof, frac = _peak_profile(sample, tc + t_end * td, td, prof_t, peak_mm)
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
    th = _level_crossing(prof_t, np.where(ok, prof, background), plateau, background, -10.0, TIP_LEVEL)
    tip_on = "steel_end"
    if th is None or th > 6.0:
        beyond = ~ok & (prof_t > -10.0)
        if beyond.any():   # the needle runs out of the CT before it ends
            th = float(prof_t[np.flatnonzero(beyond)[0]]) - 0.25
            tip_on = "ct_edge"
        else:              # metal continues (another object in line): the end of the own voxels
            th = -1.0 + max(0.0, _blur_sigma(td, geometry) - 0.3)
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
        gap_peak, _ = _peak_profile(sample, tip, -dd, gap_s, max(1.2, 0.6 * float(max(geometry.spacing))))
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
    full_peak, _ = _peak_profile(sample, tip, -dd, s_full, max(1.2, 0.6 * float(max(geometry.spacing))))
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
    return FoundNeedle(tip=tip, entry=entry, direction=_unit(tip - entry), depth_mm=depth, entry_on=entry_on,
                       tip_on=tip_on,
                       diameter_mm=diameter, gauge=int(gauge), gauge_measured=measured, confidence=float(conf),
                       bend_mm=bend, visible_mm=visible, points=pts_out, radius_mm=rad, peak_hu=min(plateau, line_peak),
                       max_hu=line_max)


def _blur_sigma(d, geometry):
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
    u, v = _perp_frame(d)
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
