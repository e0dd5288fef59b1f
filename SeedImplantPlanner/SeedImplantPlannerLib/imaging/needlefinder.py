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
   voxels above the floor). Connected objects never brighter than cortical bone nor half-way to
   the CT's metal (bone, streaks) are set aside with that reason. On slices 2 mm or thicker,
   thin lines in the slice plane are judged with their partial volume (:func:`_thin_line_steel`:
   a needle there fills only part of the slice and reads within bone's range, a third of it in
   each of two slices on their boundary; bone is a shell cut by many slices); an object of a few
   slices holding several such lines (needles converging in one plane, joined by their streak
   band) is judged line by line.
3. **Starting lines** (RANSAC, :mod:`imaging.needle_lines`): each object is searched for straight
   lines, scored by the brightest voxel of every 1 mm along them; the best line's voxels are
   removed and the search repeats (crossing needles, needles touching seeds or bone). Planned
   directions (``expected_directions``), when given, are tried as extra hypotheses (one per group
   of near-parallel planned needles); they are a prior, never required.
4. **Trace** (:mod:`imaging.needle_track`): each starting line (longest first) is followed on the
   CT itself: every 1 mm, the centre of the steel's cross-section (its peak plateau and the top
   half around it; wider along the normal of thick slices, whose partial volume splits the steel
   between two slices); a robust parabola through those centres is the curved centre line (a
   bent needle's circular arc); the steel's extent runs on through dark gaps up to
   ``1.5 x`` the largest voxel size and through small-angle crossings, but its ends are this
   needle's own steel (its peak on the centre line), so a neighbour converging on the tip is
   not its continuation, and an end piece beyond a dark gap that is wider than a needle (a plate
   of bone across the axis, a few mm beyond the tip) is not its steel.
5. **Tip**: the half point of the peak profile along the *tip segment's own axis* (the tangent
   of the centre line at its distal end) between the local steel plateau (3-14 mm before the
   end; the steel 1-3 mm before it where that is brighter than all of the plateau: an in-plane
   shaft starved of photons but for its tip) and the soft tissue (a symmetrically blurred step
   keeps its half point). The needle's
   ``tip_direction`` is that tangent; ``direction`` is the chord entry -> tip (what is compared
   with the planned needle), ``bend_mm`` the centre line's largest distance from the chord.
6. **Entry**: walking from the tip back along the traced centre line, the point where a ring of
   radius ``ENTRY_RING_MM`` around it leaves the body (the skin, from the CT's air boundary);
   when the line leaves the CT first, the entry is the CT edge (``entry_on = "ct_edge"``, the
   depth is then a lower bound). The tip is the end beyond which no fainter steel carries on to
   the skin when it does beyond the other (before the nearer-skin rule). Elongated metal that
   reaches neither the skin nor the CT edge (and no fainter steel carries on to the skin) is
   rejected (a chain of seeds, a clip or a marker wire is not a needle).
7. **Diameter and gauge**: not measured. Beam hardening and photon starvation put steel's CT
   number far below its nominal value and 1 mm CTs clip it at the HU ceiling, so the content of
   the cross-section does not give the diameter; the gauge is the plan's when the needle is
   matched (``gauge_measured`` False, default 18 G).
8. **Confidence** in [0, 1]: the fraction of the traced length whose steel peak lies on the
   centre line (``coherent``), times a bend and a skin/edge term.
9. **Rules** (:mod:`imaging.needle_rules`): explaining away: each traced centre line is supported
   by the metal voxels near it (weighted by their excess and a Gaussian of their distance); taken
   best supported first, a line is kept while at least half of its support lies outside 1.5 mm of
   the lines kept before it (a second trace of a needle, a line hinged from one needle onto a
   converging one, a line along the streak band between two needles find their steel explained;
   a needle crossing or touching another keeps most of its own; one exchange pass lets a dropped
   line replace the kept line it explains in turn when the kept lines then explain more of the
   metal). A trace whose steel lies on it
   over less than half its length follows streaks; fainter streaks beyond a tip or beside an
   in-plane needle (unless their own tip segment is as bright as steel, away from that needle:
   a needle starved of photons along the rest of its length), and lines too faint for steel,
   are dropped.

Modules: the line search is :mod:`imaging.needle_lines`, CT sampling along a needle
:mod:`imaging.needle_sampling`, the trace :mod:`imaging.needle_track`, the measurement of one
traced needle :mod:`imaging.needle_measure`, the rules :mod:`imaging.needle_rules`. The matching to
planned needles (names, deviations) is in ``planning.needle_match``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from .needle_lines import own_voxels, ransac_lines
from .needle_measure import (BEND_TOLERANCE_MM, DEFAULT_GAUGE, GAUGE_DIAMETER_MM, PV_DIAMETER_MM, mask_at, measure_trace,
                             slice_fill_fraction)
from .needle_rules import BONE_MAX_HU, EDGE_FAINT_FRACTION, drop_duplicates, drop_faint, drop_traced_twice
from .needle_sampling import Sampler
from .needle_track import trace_centreline

#: Body (patient) level: air is about -1000 HU, fat about -100 HU.
BODY_HU = -500.0
#: Needle metal threshold: at least this far above the soft-tissue background (HU) ...
NEEDLE_FLOOR_HU = 700.0
#: ... and at least this fraction of the way from background to the metal peak.
NEEDLE_FRACTION = 0.25
#: Thin lines in the slice plane (:func:`_thin_line_steel`) are judged with their partial volume on
#: slices at least this thick (mm; thinner slices hold a needle's full steel) ...
THIN_SLICE_MM = 2.0
#: ... when their axis lies within this angle of the slice plane (deg) ...
THIN_MAX_TILT_DEG = 15.0
#: ... and their voxels within this width across the axis in the plane (mm: a 1.65 mm needle blurred
#: by the scanner's PSF and the pixel, with a bend of up to 1 mm over the object).
THIN_WIDTH_MM = 12.0
#: An object holding several thin lines is searched line by line when it lies in at most this many
#: slices (needles in one plane 0-5 deg off it; the table, bone and streak fans span many).
THIN_MAX_SLICES = 3
#: Shortest needle searched for (mm of visible steel).
MIN_LENGTH_MM = 20.0
#: Two traced centre lines closer than this (mm) over most of their length are one needle: two
#: steel needles cannot lie closer than their diameter (1.0-1.3 mm) centre to centre.
TRACE_SAME_MM = 1.1
NEEDLE_CSV_COLUMNS = ("number", "name", "kind", "gauge", "entry_x_mm", "entry_y_mm", "entry_z_mm",
                      "tip_x_mm", "tip_y_mm", "tip_z_mm", "dir_x", "dir_y", "dir_z", "depth_mm",
                      "entry_on", "diameter_mm", "gauge_measured", "confidence", "bend_mm", "visible_mm",
                      "tip_dir_x", "tip_dir_y", "tip_dir_z")


@dataclass
class FoundNeedle:
    """One needle found on a CT (RAS mm)."""

    tip: np.ndarray                 # (3,) tip of the steel
    entry: np.ndarray               # (3,) skin entry (or the CT edge, see ``entry_on``)
    direction: np.ndarray           # (3,) unit vector entry -> tip (the chord; compared with the plan)
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
    tip_hu: float = float("nan")    # steel level of the tip segment (median peak 3-14 mm before the tip)
    tip_direction: np.ndarray | None = None  # (3,) the tip segment's own axis (None: ``direction``)
    coherent: float = 1.0           # fraction of the traced length whose steel peak lies on the centre line
    fill: float = 1.0               # slice fill fraction its levels are judged with (< 1: thin line in thick slices)

    def __post_init__(self):
        if self.tip_direction is None:
            self.tip_direction = np.asarray(self.direction, float)

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
                "bend_mm": f"{self.bend_mm:.2f}", "visible_mm": f"{self.visible_mm:.1f}",
                **{f"tip_dir_{a}": f"{v:.4f}" for a, v in zip("xyz", self.tip_direction)}}

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


def _thin_line_steel(kji, geometry, peak, background, dim_level) -> bool:
    """True if the voxels ``kji`` (one connected object) are a thin line in the slice plane of a
    thick-slice CT whose peak (``peak``, HU), corrected for partial volume, exceeds cortical bone's.

    A 1.0-1.3 mm needle in the plane of a 3 mm slice fills under half the slice, and lying across
    two slices under a quarter of each: its tip reads 1000-1500 HU, its starved shaft a few hundred,
    within bone's range. Cortical bone is a shell: cut by thick slices it spans many slices (a
    vertebra, the iliac wing, the femoral shaft) or is wide in the plane (a plate lying in it). A
    line is thin when its voxels lie within ``T`` (two slice centres) of its axis along the slice
    normal and within ``THIN_WIDTH_MM`` across it in the plane, its axis within
    ``THIN_MAX_TILT_DEG`` of the plane. Its excess divided by the slice fill fraction
    (:func:`imaging.needle_measure.slice_fill_fraction`, the metal per mm being conserved by the
    slice averaging) is compared with ``dim_level``.
    """
    sp = np.asarray(geometry.spacing, float)
    if float(sp[2]) < THIN_SLICE_MM or len(kji) < 4:
        return False
    pts = geometry.ijk_to_ras(kji[:, ::-1].astype(float)).reshape(-1, 3)
    return _thin_line_points(pts, _principal_axis(kji, geometry), geometry, peak, background, dim_level)


def _thin_line_points(pts, axis, geometry, peak, background, dim_level) -> bool:
    """:func:`_thin_line_steel` for points ``pts`` (RAS mm) along ``axis``: within ``T`` of the axis
    along the slice normal, ``THIN_WIDTH_MM`` across it in the plane, the axis within
    ``THIN_MAX_TILT_DEG`` of the plane, the excess over ``background`` divided by the slice fill
    fraction at least ``dim_level``."""
    sp = np.asarray(geometry.spacing, float)
    if float(sp[2]) < THIN_SLICE_MM or len(pts) < 4:
        return False
    r = pts - pts.mean(axis=0)
    normal = np.asarray(geometry.direction_matrix, float)[:, 2]
    if math.degrees(math.asin(min(1.0, abs(float(axis @ normal))))) > THIN_MAX_TILT_DEG:
        return False
    across = np.cross(normal, axis)
    across /= np.linalg.norm(across)
    res = r - np.outer(r @ axis, axis)
    # along the normal: within two slice centres of its axis (or of the axis laid into the slice plane:
    # a line across two slices, whose fitted axis tilts from one slice's voxels to the other's)
    flat = axis - (axis @ normal) * normal
    flat /= np.linalg.norm(flat)
    spread = min(float(np.ptp(res @ normal)), float(np.ptp((r - np.outer(r @ flat, flat)) @ normal)))
    if spread > float(sp[2]) + 0.1 or float(np.ptp(res @ across)) > THIN_WIDTH_MM:
        return False
    return background + (peak - background) / slice_fill_fraction(axis, geometry) >= dim_level


def _line_fill(points, direction, geometry, diameter_mm=PV_DIAMETER_MM):
    """Slice fill fraction of a needle along ``points`` (its traced centre line): the largest share of a
    slice's thickness its steel occupies where it lies, median along it. A needle lying in the slice
    plane at ``delta`` from a slice's centre covers ``[delta - D'/2, delta + D'/2]`` along the normal
    (``D' = D / cos theta``); the brighter of the two slices it touches holds the larger part. On a
    slice boundary each holds half: ``D' / (2 T)``, not the ``D' / T`` of
    :func:`imaging.needle_measure.slice_fill_fraction`. 1 where the slices are no thicker than the
    needle's extent."""
    full = slice_fill_fraction(direction, geometry, diameter_mm)
    normal = np.asarray(geometry.direction_matrix, float)[:, 2]
    if full >= 1.0 or math.degrees(math.asin(min(1.0, abs(float(np.asarray(direction) @ normal))))) > THIN_MAX_TILT_DEG:
        return full
    thick = float(geometry.spacing[2])
    ext = full * thick                                             # D' = D / cos theta (mm)
    kf = geometry.ras_to_ijk(np.asarray(points, float).reshape(-1, 3))[:, 2]
    delta = np.abs(kf - np.rint(kf)) * thick                       # distance from the nearest slice centre
    lo, hi = delta - 0.5 * ext, delta + 0.5 * ext
    inside = np.clip(np.minimum(hi, 0.5 * thick) - np.maximum(lo, -0.5 * thick), 0.0, None)
    nextone = np.clip(np.minimum(hi, 1.5 * thick) - np.maximum(lo, 0.5 * thick), 0.0, None)
    return float(np.median(np.maximum(inside, nextone) / thick))


def _two_slice_peak(ct, kji, background):
    """Largest excess over ``background`` of the voxels ``kji`` summed with the brighter of their two
    neighbours along the slice normal, plus ``background`` (HU): a thin line lying across the boundary
    of two thick slices shares its steel between them (the metal per mm is conserved by the slice
    averaging), so its full-slice excess is the sum of the two."""
    k, j, i = kji[:, 0], kji[:, 1], kji[:, 2]
    own = ct[k, j, i].astype(float) - background
    nb = np.full(len(kji), -np.inf)
    for dk in (-1, 1):
        kk = k + dk
        ok = (kk >= 0) & (kk < ct.shape[0])
        nb[ok] = np.maximum(nb[ok], ct[kk[ok], j[ok], i[ok]].astype(float) - background)
    return background + float(np.max(own + np.clip(nb, 0.0, None)))


def _principal_axis(kji, geometry):
    """Unit principal axis (RAS) of the voxels ``kji``."""
    pts = geometry.ijk_to_ras(kji[:, ::-1].astype(float)).reshape(-1, 3)
    return np.linalg.svd(pts - pts.mean(axis=0), full_matrices=False)[2][0]


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
    from scipy.spatial import cKDTree
    ct = check_ct(ct_hu, geometry)
    if min_length_mm <= 0:
        raise InputError(f"minimum needle length must be > 0 mm, got {min_length_mm}")
    exp_dirs = []
    if expected_directions is not None:
        ed = np.asarray(expected_directions, float).reshape(-1, 3)
        norms = np.linalg.norm(ed, axis=1)
        if not np.all(np.isfinite(ed)) or np.any(norms < 1e-9):
            raise InputError("expected needle directions must be finite non-zero vectors")
        exp_dirs = []
        for e in ed / norms[:, None]:   # one hypothesis direction per group of near-parallel planned needles
            if all(abs(float(e @ x)) < math.cos(math.radians(1.0)) for x in exp_dirs):
                exp_dirs.append(e)
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
    # objects never brighter than cortical bone, and either not half-way to the CT's metal or in a CT
    # with nothing brighter than bone at all: bone and streaks (a dim piece of a needle is traced from
    # its bright part; steel on a CT exceeds cortical bone somewhere, at least at its tip)
    comp_max = np.full(ncomp, -np.inf)
    np.maximum.at(comp_max, lab[metal] - 1, ct[metal].astype(float))   # (ndimage.maximum sorts the whole CT)
    dim_level = (BONE_MAX_HU if metal_peak < BONE_MAX_HU else
                 min(BONE_MAX_HU, background + EDGE_FAINT_FRACTION * (metal_peak - background)))
    inlier_mm = max(1.5, 0.5 * float(sp.max()) + 0.8)
    max_gap_mm = max(4.0, 1.5 * float(sp.max()))
    # the thin lines of thick slices (searched first) draw from their own generator: searching them
    # must not change the RANSAC draws, hence the lines, of the metal mask's objects elsewhere in the CT
    # (a cluster of seeds searched as thin lines moved the lines of a template of needles 8 mm apart)
    rng_metal, rng_thin = np.random.default_rng(12345), np.random.default_rng(12345)
    segs = []
    rejected = []
    warnings = []
    m_ijk = geometry.ijk_to_ras_matrix
    def _searched(sl):   # an object long enough for the search of the metal mask
        return float(np.linalg.norm(np.array([x.stop - x.start for x in sl[::-1]], float) * sp)) >= 0.5 * min_length_mm

    def search(kji, fill, thin_lines=False, rng=rng_metal):
        pts = kji[:, ::-1].astype(float) @ m_ijk[:3, :3].T + m_ijk[:3, 3]
        w = np.clip(ct[kji[:, 0], kji[:, 1], kji[:, 2]].astype(float) - background, 1.0, None)
        if len(pts) > 60000:  # a huge component (bone + metal): thin it for the search
            sel = rng.choice(len(pts), 60000, replace=False)
            pts, w = pts[sel], w[sel]
        lines, rej = ransac_lines(pts, w, rng, inlier_mm=inlier_mm, min_length_mm=0.5 * min_length_mm,
                                   max_gap_mm=max_gap_mm, expected_dirs=exp_dirs)
        for c, d, length, reason in rej:
            rejected.append({"position_mm": np.round(c, 1).tolist(), "length_mm": round(length, 1), "reason": reason})
        for sg in own_voxels(lines, pts, w, inlier_mm, max_gap_mm, 0.5 * min_length_mm):
            if not thin_lines:
                segs.append((*sg, fill))
            elif _thin_line_points(sg[2], sg[1], geometry, _two_slice_peak(ct, np.rint(geometry.ras_to_ijk(sg[2]))[:, ::-1]
                                                                            .astype(np.int64), background),
                                   background, dim_level):
                # one thin line of an object holding several (converging in-plane needles joined by
                # their streak band): judged on its own voxels, with its own fill fraction
                segs.append((*sg, slice_fill_fraction(sg[1], geometry)))

    # thick slices: thin lines in the slice plane, on their own partial-volume threshold (see
    # _thin_line_steel); the dim objects of the metal mask inside them are searched as part of them
    thin_ids = set()
    if float(sp[2]) >= THIN_SLICE_MM:
        # the mask of an 18 G needle (the usual, thinner than the 16 G the acceptance assumes)
        fill = slice_fill_fraction(np.asarray(geometry.direction_matrix, float)[:, 0], geometry,
                                   GAUGE_DIAMETER_MM[DEFAULT_GAUGE])
        low = ct > background + fill * (threshold - background)
        # a needle in the slice plane lies in one slice or across two; bone is a shell cut by many
        # slices: voxels with the slices on both sides also above the level (the CT's end slices
        # counting as such) are bone's, not a thin line's
        pad = np.ones((1,) + low.shape[1:], bool)
        low &= ~(np.concatenate([pad, low[:-1]]) & np.concatenate([low[1:], pad]))
        lab_lo, n_lo = ndimage.label(low, structure=np.ones((3, 3, 3)))
        for jdx, sl in enumerate(ndimage.find_objects(lab_lo), start=1):
            if sl is None:
                continue
            ext_vox = np.array([s.stop - s.start for s in sl[::-1]], float)
            if float(np.linalg.norm(ext_vox * sp)) < min_length_mm:
                continue
            kji = np.argwhere(lab_lo[sl] == jdx) + np.array([s.start for s in sl])
            inner = np.unique(lab[kji[:, 0], kji[:, 1], kji[:, 2]])
            inner = inner[inner > 0]
            if len(inner) == 0 or any(comp_max[i - 1] >= dim_level and _searched(objs[i - 1]) for i in inner):
                continue   # no metal-mask object in it, or steel seen as it is (searched below)
            peak = _two_slice_peak(ct, kji, background)
            if _thin_line_steel(kji, geometry, peak, background, dim_level):
                thin_ids.update(int(i) for i in inner)
                search(kji, slice_fill_fraction(_principal_axis(kji, geometry), geometry), rng=rng_thin)
            elif (background + (peak - background) / fill >= dim_level
                  and len(np.unique(kji[:, 0])) <= THIN_MAX_SLICES):
                # not one thin line as a whole (several converging in-plane needles and the streak band
                # between them): its lines, each judged on its own voxels
                n_before = len(segs)
                search(kji, fill, thin_lines=True, rng=rng_thin)
                if len(segs) > n_before:
                    thin_ids.update(int(i) for i in inner)
    for idx, sl in enumerate(objs, start=1):
        if sl is None or idx in thin_ids:
            continue
        ext_vox = np.array([s.stop - s.start for s in sl[::-1]], float)
        if not _searched(sl):
            continue
        if comp_max[idx - 1] < dim_level:
            rejected.append({"position_mm": np.round(geometry.ijk_to_ras(np.array([0.5 * (x.start + x.stop - 1) for x in sl[::-1]], float)), 1).tolist(),
                             "length_mm": round(float(np.linalg.norm(ext_vox * sp)), 1),
                             "reason": f"no steel: brightest point {comp_max[idx - 1]:.0f} HU (within cortical bone's range; bone edge or streak)"})
            continue
        search(np.argwhere(lab[sl] == idx) + np.array([s.start for s in sl]), 1.0)
        if idx % 50 == 0:
            _progress.report(progress, 0.2 + 0.4 * idx / ncomp, f"needle finder: object {idx} of {ncomp}")

    # -- measure each line --------------------------------------------------------------------------
    _progress.report(progress, 0.65, f"needle finder: {len(segs)} line(s)")
    sample = Sampler(ct, geometry)
    body_sample = lambda p: mask_at(body, geometry, p)  # noqa: E731
    found = []
    every, solid = [], []   # points of the traced centre lines (all; the clean ones) and their KD-trees
    every_tree = solid_tree = None
    steel_level = background + 0.6 * (threshold - background)
    # longest pieces first: a shorter piece of a needle already traced is that needle again
    segs.sort(key=lambda sg: -float(np.ptp((sg[2] - sg[0]) @ sg[1])))
    for q, (c, d, pts, w, fill) in enumerate(segs):
        t = (pts - c) @ d
        where = np.round(c, 1).tolist()
        length = round(float(np.ptp(t)), 1)
        probe = c + np.linspace(t.min(), t.max(), 9)[:, None] * d
        if solid_tree is not None and np.median(solid_tree.query(probe)[0]) <= TRACE_SAME_MM:
            rejected.append({"position_mm": where, "length_mm": length,
                             "reason": "second line on a needle already found"})
            continue
        # a thin line in the plane of thick slices: its levels scaled by its slice fill fraction
        tr = trace_centreline(sample, geometry, c, d, float(t.min()), float(t.max()), background,
                              background + fill * (steel_level - background),
                              thin_level=None if fill >= 1.0 else background + fill * (threshold - background),
                              max_gap_mm=max_gap_mm, min_length_mm=min_length_mm)
        if tr is None:
            rejected.append({"position_mm": where, "length_mm": length,
                             "reason": "no steel along the line on the CT (streak artefact)"})
            continue
        pp = tr.at(np.linspace(tr.t0, tr.t1, 25))
        if every_tree is not None and np.mean(every_tree.query(pp)[0] <= 0.3) >= 0.9:   # the very same trace again
            rejected.append({"position_mm": where, "length_mm": length,
                             "reason": "second line on a needle already found"})
            continue
        dense = tr.at(np.arange(tr.t0, tr.t1 + 0.25, 0.25))
        every.append(dense)
        every_tree = cKDTree(np.vstack(every))
        if tr.found.mean() >= 0.85:   # a clean trace: pieces along it need no trace of their own
            solid.append(dense)
            solid_tree = cKDTree(np.vstack(solid))
        res = measure_trace(tr, sample, body_sample, geometry, background, background + fill * (threshold - background),
                            min_length_mm, max_gap_mm)
        if isinstance(res, str):
            rejected.append({"position_mm": where, "length_mm": length, "reason": res})
            continue
        # its levels judged with its slice fill fraction: a needle along thick slices fills only part
        # of one (the thin lines of the search above already carry theirs)
        res = FoundNeedle(**res, fill=min(fill, _line_fill(res["points"], res["direction"], geometry)))
        if region is not None:
            s = np.linspace(0.0, 1.0, max(2, int(res.visible_mm / 1.0)))
            path = res.tip[None] - (s * res.visible_mm)[:, None] * res.direction
            if not mask_at(region, geometry, path).any():
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
    mk = np.argwhere(metal) if len(found) >= 2 else np.zeros((0, 3), np.int64)
    found = drop_traced_twice(found, rejected, geometry.ijk_to_ras(mk[:, ::-1].astype(float)).reshape(-1, 3),
                              np.clip(ct[mk[:, 0], mk[:, 1], mk[:, 2]].astype(float) - background, 1.0, None),
                              geometry)
    found = drop_duplicates(found, rejected, background)
    found = drop_faint(found, rejected, background, metal_peak)
    found.sort(key=lambda n: tuple(np.round(n.tip, 1)))
    if any(n.entry_on == "ct_edge" for n in found):
        warnings.append(f"{sum(n.entry_on == 'ct_edge' for n in found)} needle(s) leave the CT inside the body: "
                        "entry at the CT edge, depth a lower bound")
    if not found:
        warnings.append("no needle found (metal present, but no straight steel line reaching the skin)")
    _progress.report(progress, 1.0, f"needle finder: {len(found)} needle(s)")
    return FoundNeedles(found, threshold, background, rejected, warnings)

