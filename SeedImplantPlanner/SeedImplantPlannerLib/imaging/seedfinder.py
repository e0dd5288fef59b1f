"""Automatic seed localisation in a post-implant (or intra-operative) CT.

Method (threshold + connected components + a-priori seed content, after Nguyen, Fouard and
Troccaz, "Segmentation, separation and pose estimation of prostate brachytherapy seeds in CT
images", IEEE Trans Biomed Eng 62(8):2012-2024, 2015; their clustering is replaced here by the
count-from-metal-content rule and a line-segment k-means described below):

1. **Region of interest**: the given mask (target + margin), else the body (largest component
   above -500 HU). Everything outside is ignored (table, external markers).
2. **Needles in place first** (intra-operative CTs): the needles given, else those
   :func:`imaging.needlefinder.find_needles` finds. Each needle's image is modelled from the
   needle itself (median excess per 0.3 mm bin of its cross-section, along the steel, times the
   blurred end at the tip) and subtracted, never below soft tissue; the shafts outside the skin
   leave the ROI. Every needle is listed in ``rejected`` ("needle in place"), so a needle is never
   reported as seeds and never sizes one.
3. **Threshold** (automatic unless given): components above a metal floor
   (``background + METAL_FLOOR_HU``) are found; a robust peak ``P`` of the small ones (seed
   sized, so bone does not vote; the median, or the 90th percentile when needles were taken out,
   their streaks leaving many small faint objects) sets the threshold
   ``background + THRESHOLD_FRACTION * (P - background)``, never below the floor. A CT with no
   voxel above the floor raises :class:`InputError` ("no metal").
4. **Connected components** (26-connectivity) of the thresholded ROI. Rejected with a reason:
   bone (touching bone and not clearly denser), too faint for a seed (with needles in place: peak
   below ``FAINT_SEED_FRACTION`` of the way to the brightest seeds: streaks), on a needle's axis (its
   steel, or a seed still inside a needle: not implanted), elongated along a needle within 2.5 mm
   (residue of its steel or streak).
5. **Metal content** of every component: the sum of ``HU - local background`` over the component
   grown by one voxel (local background = median of a shell around it). Partial volume and blur
   move intensity between voxels but keep this sum (up to saturation at the 12-bit ceiling), so it
   counts seeds at 1 mm and at 2 x 2 x 2.5 mm alike. The content of one seed (``unit``) comes from
   the components shaped like **one capsule of the seed model** (``seed_length_mm`` x
   ``seed_diameter_mm``, physics.sources ``capsule_length_mm``): metal-weighted length along the
   principal axis 0.45-1.3 capsule lengths (a dense marker carries most of the weight), width at
   most the capsule radius + 0.9 mm, away from needles, without fragments below 35 % of the
   largest; without any, the 20th percentile of all components (most are single seeds).
6. **Seeds per component** ``n = round(content / unit)``; components below ``MIN_UNIT_FRACTION``
   of a seed (``NEAR_NEEDLE_MIN_FRACTION`` beside a needle) are rejected as noise or streaks;
   components of more than ``max_per_cluster`` seeds
   (bone, a surgical clip cluster, contrast) are rejected and reported. With ``expected_count``
   the ambiguous components (content halfway between two counts) are resolved greedily towards
   the expected number; any remaining difference is reported as missing or extra seeds.
7. **Splitting** touching seeds: the voxels of a component with ``n > 1`` are clustered into
   ``n`` line segments of the seed's length (a k-means whose distance is the distance to each
   cluster's segment along its principal axis, so side-by-side, end-to-end and crossing seeds
   separate), weighted by metal content, from several deterministic starts (best cost kept).
8. **Pose**: position = metal-content-weighted centroid of the seed's voxels (sub-voxel); axis =
   principal axis of the weighted voxel covariance after subtracting the voxel box variance
   (``spacing^2 / 12`` per grid axis, so thick slices do not bias axes towards z).
9. **Confidence** in [0, 1]: how close the seed's metal content is to one seed's, lowered for
   seeds split from a cluster.

Metal artefacts: streaks are far below the threshold and are symmetric about the seed, so they
neither create components (rejected by content if they do) nor bias the centroid; saturated
(clipped) seed cores are symmetric too. Positions are RAS mm; arrays ``[k, j, i]``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from ..physics.seeds import SeedSet, seeds_to_rows

#: Default seed capsule (mm), model 6711's, when the caller gives none (physics.sources has each model's).
SEED_LENGTH_MM = 4.5
SEED_DIAMETER_MM = 0.8
#: Metal floor above the soft-tissue background (HU): below it nothing is metal.
METAL_FLOOR_HU = 500.0
#: Automatic threshold: this fraction of the way from background to the median seed peak.
THRESHOLD_FRACTION = 0.3
#: Components with less than this fraction of one seed's metal content are rejected.
MIN_UNIT_FRACTION = 0.4
#: Largest number of seeds accepted in one connected component.
MAX_PER_CLUSTER = 8
#: A component counts as ambiguous (may be resolved by ``expected_count``) when its content is
#: within this distance of a half-integer number of seeds.
AMBIGUITY = 0.15
#: Bone: connected regions above background + BONE_HU that survive a one-voxel erosion and hold
#: more than BONE_MIN_CC after the erosion; a metal component inside counts as a seed only if it peaks
#: BONE_MARGIN_HU above the bone's own 95th percentile.
BONE_HU = 200.0
BONE_MIN_CC = 0.5
BONE_MARGIN_HU = 600.0
BODY_HU = -500.0
#: Objects longer than two capsules, parallel to a needle in place (20 deg) and within this distance
#: (mm) of its axis, are the streaks rays along the needle leave beside it (tracks are ~10 mm apart).
STREAK_BESIDE_NEEDLE_MM = 6.0
#: A seed image elongated less than this (largest over second variance) takes its track's axis.
TRACK_MIN_ELONGATION = 2.0
#: Objects whose centre lies within this distance (mm) of a needle's surface are "beside a needle":
#: they never size a seed, and count as a seed only with NEAR_NEEDLE_MIN_FRACTION of a seed's metal
#: (a seed touching a needle keeps most of its metal; steel and streak left over keep little).
NEAR_NEEDLE_MM = 2.0
NEAR_NEEDLE_MIN_FRACTION = 0.7
#: A seed's peak reaches at least this fraction of the way from soft tissue to the brightest seeds.
FAINT_SEED_FRACTION = 0.4
#: Blur variance (mm^2) removed from a component's length variance when comparing it with the
#: capsule (a nominal 0.45 mm sigma scanner blur, as in the needle finder).
PSF_VAR_MM2 = 0.2

SEED_CSV_EXTRA = ("confidence", "cluster_id", "seeds_in_cluster")


@dataclass
class FoundSeeds:
    """Seeds found in a CT: poses, per-seed confidence and cluster, and what was rejected."""

    positions: np.ndarray            # (N, 3) RAS mm
    axes: np.ndarray                 # (N, 3) unit vectors (sign arbitrary, z >= 0 by convention)
    confidence: np.ndarray           # (N,) 0..1
    cluster_id: np.ndarray           # (N,) connected-component id (1-based); shared by split seeds
    seeds_in_cluster: np.ndarray     # (N,) number of seeds the cluster was split into
    threshold_hu: float
    background_hu: float
    unit_content: float              # metal content of one seed, HU * mm^3
    expected_count: int | None = None
    warnings: list = field(default_factory=list)
    rejected: list = field(default_factory=list)   # dicts: position_mm, reason, seeds_equivalent
    n_components: int = 0
    cluster_metal_seeds: np.ndarray | None = None  # (N,) metal content of the seed's cluster in seeds
    capsule_mm: tuple = (SEED_LENGTH_MM, SEED_DIAMETER_MM)  # seed capsule used (length, diameter), mm
    needles_in_place: int = 0                       # needles taken out before the search

    def __len__(self):
        return int(self.positions.shape[0])

    @property
    def missing_count(self) -> int:
        """Expected minus found (0 without an expected count or when none are missing)."""
        if self.expected_count is None:
            return 0
        return max(0, int(self.expected_count) - len(self))

    @property
    def extra_count(self) -> int:
        """Found minus expected (0 without an expected count or when none are extra)."""
        if self.expected_count is None:
            return 0
        return max(0, len(self) - int(self.expected_count))

    def to_seedset(self, strength_U, model) -> SeedSet:
        """A :class:`SeedSet` with the given strength(s) (U) and model id(s)."""
        return SeedSet(self.positions, self.axes, strength_U, model if not isinstance(model, str)
                       else [model] * len(self))

    def rows(self, strength_U, model) -> list:
        """CSV rows: the seeds CSV columns plus confidence, cluster_id, seeds_in_cluster."""
        rows = seeds_to_rows(self.to_seedset(strength_U, model))
        for r, c, k, m in zip(rows, self.confidence, self.cluster_id, self.seeds_in_cluster):
            r["confidence"] = f"{c:.3f}"
            r["cluster_id"] = str(int(k))
            r["seeds_in_cluster"] = str(int(m))
        return rows

    def summary(self) -> dict:
        """Plain-JSON summary."""
        return {"found": len(self), "expected": self.expected_count, "missing": self.missing_count,
                "extra": self.extra_count, "threshold_HU": round(self.threshold_hu, 1),
                "background_HU": round(self.background_hu, 1), "components": self.n_components,
                "clusters_split": int(len(set(self.cluster_id[self.seeds_in_cluster > 1].tolist()))),
                "seeds_in_split_clusters": int(np.count_nonzero(self.seeds_in_cluster > 1)),
                "low_confidence": int(np.count_nonzero(self.confidence < 0.5)),
                "seed_capsule_mm": {"length": self.capsule_mm[0], "diameter": self.capsule_mm[1]},
                "needles_in_place": self.needles_in_place,
                "rejected": self.rejected, "warnings": list(self.warnings)}


# -- helpers -------------------------------------------------------------------------------------

def body_mask(ct_hu, level_hu=BODY_HU):
    """Largest connected component above ``level_hu`` (the patient), holes filled slice by slice
    (:func:`imaging.needlefinder.body_mask`, coarse-to-fine on large CTs)."""
    from .needlefinder import body_mask as _body
    return _body(ct_hu, level_hu)


def bone_mask(ct_hu, background_hu, voxel_cc, level_hu=BONE_HU, min_cc=BONE_MIN_CC, coarse_above_voxels=8_000_000):
    """Bone: thick connected regions above ``background + level_hu`` of more than ``min_cc`` (eroded).

    A one-voxel erosion first removes thin structures (streak artefacts, seed halos) so that a
    streak-connected seed cluster is not taken for bone; the surviving large regions are grown
    back by two voxels and intersected with the dense voxels. Returns ``(mask, bone level HU)``,
    the level being the 95th percentile of the bone's voxels (``-inf`` without bone). CTs of more
    than ``coarse_above_voxels`` find the regions on every second voxel (about 8 times faster).
    """
    from scipy import ndimage
    dense = np.asarray(ct_hu) > background_hu + level_hu
    step = 2 if dense.size > coarse_above_voxels else 1   # large CTs: regions found on every second voxel
    d = dense[::step, ::step, ::step]
    core = ndimage.binary_erosion(d, structure=ndimage.generate_binary_structure(3, 1), border_value=1)
    lab, n = ndimage.label(core)
    if n == 0:
        return np.zeros(dense.shape, dtype=bool), -np.inf
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    big = np.flatnonzero(sizes * voxel_cc * step ** 3 > min_cc)
    if len(big) == 0:
        return np.zeros(dense.shape, dtype=bool), -np.inf
    bone = np.isin(lab, big)
    bone = ndimage.binary_dilation(bone, iterations=max(1, 2 // step))
    if step > 1:
        bone = np.repeat(np.repeat(np.repeat(bone, step, axis=0), step, axis=1), step, axis=2)[
            :dense.shape[0], :dense.shape[1], :dense.shape[2]]
    bone &= dense
    if not bone.any():
        return bone, -np.inf
    return bone, float(np.percentile(np.asarray(ct_hu)[bone], 95))


def _canonical_axis(a):
    a = np.asarray(a, float)
    a = a / np.linalg.norm(a)
    k = int(np.argmax(np.abs(a)))
    return -a if a[k] < 0 else a


def _weighted_pose(pts, w, box_cov):
    """Weighted centroid and principal axis (voxel box variance removed).

    Weights that are not finite count as 0; a segment that lost all its weight (an EM component with no
    responsibility left, e.g. on needle remnants) falls back to equal weights, so the result is finite.
    """
    w = np.where(np.isfinite(w), w, 0.0)
    sw = float(w.sum())
    if not sw > 0.0:
        w = np.ones(len(pts))
        sw = float(len(pts))
    c = (w[:, None] * pts).sum(axis=0) / sw
    d = pts - c
    cov = (w[:, None, None] * (d[:, :, None] * d[:, None, :])).sum(axis=0) / sw - box_cov
    evals, evecs = np.linalg.eigh(cov)
    return c, _canonical_axis(evecs[:, -1]), evals[::-1]


def _seg_dist2(pts, c, a, h):
    d = pts - c
    t = np.clip(d @ a, -h, h)
    return np.sum((d - t[:, None] * a) ** 2, axis=1)


def _em_segments(pts, w, centers, axes, half_length_mm, s2, box_cov, iterations=40):
    """EM of ``n`` blurred line segments (fixed half length and width ``s2``) on weighted points.

    Each seed is modelled as ``pi_q * exp(-d_q(x)^2 / (2 s2))`` with ``d_q`` the distance to its
    segment; voxels where two seeds overlap are shared by responsibility, so neither seed's
    centroid is pulled towards the other (hard k-means biases touching pairs by ~1 mm).
    Returns ``(centers, axes, responsibilities, log-likelihood)``.
    """
    n = len(centers)
    centers = np.array(centers, float)
    axes = np.array(axes, float)
    pi = np.full(n, 1.0 / n)
    wsum = float(w.sum())
    ll_old = -np.inf
    for _ in range(iterations):
        d2 = np.stack([_seg_dist2(pts, centers[q], axes[q], half_length_mm) for q in range(n)], axis=1)
        logp = np.log(np.maximum(pi, 1e-12))[None, :] - d2 / (2.0 * s2)
        mx = logp.max(axis=1, keepdims=True)
        p = np.exp(logp - mx)
        tot = p.sum(axis=1, keepdims=True)
        resp = p / tot
        ll = float(np.sum(w * (mx[:, 0] + np.log(tot[:, 0]))))
        for q in range(n):
            wq = w * resp[:, q]
            if wq.sum() <= 1e-9 * wsum:
                continue
            centers[q], axes[q], _ = _weighted_pose(pts, wq, box_cov)
            pi[q] = wq.sum() / wsum
        if abs(ll - ll_old) < 1e-7 * abs(ll) + 1e-9:
            break
        ll_old = ll
    return centers, axes, resp, ll


def split_cluster(pts, w, n, half_length_mm, box_cov, s2=None, iterations=25):
    """Split weighted points into ``n`` seeds; returns ``(centers, axes, responsibilities)``.

    Several deterministic starts (farthest point; weighted quantiles along the first and second
    principal axes) are each refined by a hard segment k-means (distance to each cluster's
    segment of the seed's length) and, when the seed width ``s2`` (mm^2) is known, by
    :func:`_em_segments`; the start with the best fit wins (log-likelihood, else k-means cost).
    """
    npts = len(pts)
    if n <= 1 or npts <= n:
        c, a, _ = _weighted_pose(pts, w, box_cov)
        return c[None], a[None], np.ones((npts, 1))
    starts = []
    centers = [pts[int(np.argmax(w))]]
    for _ in range(1, n):
        d2 = np.min([np.sum((pts - c) ** 2, axis=1) for c in centers], axis=0)
        centers.append(pts[int(np.argmax(d2 * w))])
    starts.append(np.array(centers))
    c0, _, _ = _weighted_pose(pts, w, np.zeros((3, 3)))
    d = pts - c0
    cov = (w[:, None, None] * (d[:, :, None] * d[:, None, :])).sum(axis=0)
    evecs = np.linalg.eigh(cov)[1]
    for e in (evecs[:, -1], evecs[:, -2]):
        proj = d @ e
        order = np.argsort(proj)
        cw = np.cumsum(w[order]) / w.sum()
        starts.append(np.array([pts[order[min(np.searchsorted(cw, (q + 0.5) / n), npts - 1)]] for q in range(n)]))

    best = None
    if s2 is not None:
        # parallel hypotheses straight into EM: all seeds along the cluster's principal axis,
        # spread along each principal direction by the spread of the weighted points
        a1 = _canonical_axis(evecs[:, -1])
        for e in (evecs[:, -1], evecs[:, -2], evecs[:, -3]):
            proj = d @ e
            spread = math.sqrt(max(float(np.sum(w * proj ** 2) / w.sum()), 1e-6))
            offs = (np.arange(n) - (n - 1) / 2.0) * 2.0 * spread / max(n - 1, 1)
            cs, ax, resp, ll = _em_segments(pts, w, c0 + offs[:, None] * e, np.tile(a1, (n, 1)),
                                            half_length_mm, s2, box_cov)
            if best is None or ll > best[0]:
                best = (ll, cs, ax, resp)
    for centers in starts:
        labels = np.argmin(((pts[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
        segs = []
        for it in range(iterations):
            segs = []
            for q in range(n):
                sel = labels == q
                if w[sel].sum() <= 0 or np.count_nonzero(sel) < 2:
                    segs.append((centers[q], np.array([0.0, 0.0, 1.0])))
                    continue
                c, a, _ = _weighted_pose(pts[sel], w[sel], box_cov)
                segs.append((c, a))
            if it < 3:  # plain k-means first: a stable start for the segment fit
                dist = np.stack([np.sum((pts - c) ** 2, axis=1) for c, _ in segs], axis=1)
            else:
                dist = np.stack([_seg_dist2(pts, c, a, half_length_mm) for c, a in segs], axis=1)
            new = np.argmin(dist, axis=1)
            centers = np.array([c for c, _ in segs])
            if np.array_equal(new, labels) and it >= 3:
                break
            labels = new
        cs = np.array([c for c, _ in segs])
        ax = np.array([a for _, a in segs])
        if s2 is not None:
            cs, ax, resp, ll = _em_segments(pts, w, cs, ax, half_length_mm, s2, box_cov)
            score = ll
        else:
            dist = np.stack([_seg_dist2(pts, c, a, half_length_mm) for c, a in zip(cs, ax)], axis=1)
            resp = np.eye(n)[np.argmin(dist, axis=1)]
            score = -float(np.sum(w * dist.min(axis=1)))
        if best is None or score > best[0]:
            best = (score, cs, ax, resp)
    return best[1], np.array([_canonical_axis(a) for a in best[2]]), best[3]


# -- the finder ----------------------------------------------------------------------------------

def _component_stats(ct, lab, sl, index, bg_default, spacing_box):
    """Voxels (grown by one) of component ``index`` in box ``sl``, excess HU, local background."""
    from scipy import ndimage
    sub = lab[sl]
    own = sub == index
    grown = ndimage.binary_dilation(own, iterations=1) & ((sub == 0) | own)
    shell = ndimage.binary_dilation(own, iterations=3) & ~ndimage.binary_dilation(own, iterations=1) & (sub == 0)
    vals = ct[sl].astype(np.float32)
    bg = float(np.median(vals[shell])) if np.count_nonzero(shell) >= 8 else bg_default
    bg = min(max(bg, bg_default - 300.0), bg_default + 300.0)
    return own, grown, vals, bg


def find_seeds(ct_hu, geometry: ImageGeometry, expected_count=None, roi_mask=None, threshold_hu=None,
               progress=None, seed_length_mm=SEED_LENGTH_MM, max_per_cluster=MAX_PER_CLUSTER, needles=None,
               seed_diameter_mm=SEED_DIAMETER_MM) -> FoundSeeds:
    """Find the seeds in a CT (``ct_hu`` [k, j, i] in HU on ``geometry``); see the module doc.

    ``roi_mask``: boolean [k, j, i] where seeds are searched (target + margin); default the body.
    ``threshold_hu``: metal threshold; default automatic. ``expected_count``: number of seeds
    implanted (resolves ambiguous clusters, and reports missing / extra seeds).
    ``seed_length_mm`` / ``seed_diameter_mm``: the seed model's capsule (physics.sources
    ``capsule_length_mm``); the seed size is never learnt from the objects in the CT.
    ``needles``: needles in place (:func:`imaging.needlefinder.find_needles` results); default
    ``None`` searches for them first. Their steel (a tube of the needle's radius plus the blur
    around each needle, tip included) is taken out of the metal before the seeds are counted, so a
    needle is never reported as seeds and never sets the size of one seed; each needle is listed
    in ``rejected``. Pass ``needles=[]`` for a post-implant CT known to hold no needle.
    Raises InputError when the CT and ROI do not match, the ROI is empty, or the CT holds no metal.
    """
    from scipy import ndimage
    ct = np.asarray(ct_hu)
    if ct.ndim != 3 or ct.shape != geometry.shape:
        raise InputError(f"CT array shape {ct.shape} does not match its geometry (shape {geometry.shape})")
    if not np.issubdtype(ct.dtype, np.number):
        raise InputError(f"CT array must be numeric (HU), got dtype {ct.dtype}")
    if expected_count is not None:
        if int(expected_count) != expected_count or expected_count < 1:
            raise InputError(f"expected seed count must be a positive integer, got {expected_count!r}")
        expected_count = int(expected_count)
    _progress.report(progress, 0.0, "seed finder: region of interest")
    if roi_mask is None:
        roi = body_mask(ct)
        roi_name = "body"
    else:
        roi = np.asarray(roi_mask, dtype=bool)
        roi_name = "ROI"
        if roi.shape != ct.shape:
            raise InputError(f"ROI mask shape {roi.shape} does not match the CT shape {ct.shape} "
                             "(resample the ROI onto the CT grid)")
    if not roi.any():
        raise InputError(f"the {roi_name} is empty: no voxel to search for seeds")
    # crop to the ROI box for speed
    kk, jj, ii = (np.flatnonzero(roi.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    off = np.array([kk[0], jj[0], ii[0]])
    box = tuple(slice(a, b + 1) for a, b in zip(off, (kk[-1], jj[-1], ii[-1])))
    ctc = ct[box].astype(np.float32)
    roic = roi[box]
    finite = np.isfinite(ctc)
    if not finite.all():
        raise InputError(f"CT holds {int((~finite).sum())} non-finite voxel(s) inside the {roi_name}")
    # -- needles in place: found first, their steel taken out of the image ----------------------------
    needle_rejects = []
    if needles is None:
        from .needlefinder import find_needles
        _progress.report(progress, 0.01, "seed finder: needles in place")
        try:
            needles = find_needles(ct, geometry, body=roi if roi_mask is None else None)
        except InputError:
            needles = []
    if len(needles):
        _progress.report(progress, 0.04, f"seed finder: {len(needles)} needle(s) in place taken out")
        bg0 = float(np.clip(np.median(ctc[roic]), -200.0, 200.0))
        ctc, outside = subtract_needles(ctc, needles, geometry, off, bg0)
        roic = roic & ~outside
        for nd in needles:
            needle_rejects.append({"position_mm": np.round(nd.tip, 1).tolist(), "seeds_equivalent": None,
                                   "reason": f"needle in place (tip {np.round(nd.tip, 1).tolist()}, "
                                             f"{nd.depth_mm:.0f} mm inserted): not a seed"})
    inside = ctc[roic]
    median = float(np.median(inside))
    if median > 400.0:  # (no lower bound: a body ROI in a chest CT is mostly lung)
        raise InputError(f"CT values inside the {roi_name} do not look like HU (median {median:.0f}; soft tissue is "
                         "about -100 to 60 HU, lung lower): apply the rescale slope/intercept, or check the ROI")
    background = float(np.clip(median, -200.0, 200.0))
    floor = background + METAL_FLOOR_HU
    _progress.report(progress, 0.05, "seed finder: bone")
    bone, bone_level = bone_mask(ctc, background, geometry.voxel_volume_cc)
    vmax = float(inside.max())
    not_bone = roic & ~bone
    vmax_soft = float(ctc[not_bone].max()) if not_bone.any() else -np.inf
    if vmax < floor or (vmax_soft < floor and vmax < bone_level + BONE_MARGIN_HU):
        what = f"brightest voxel {vmax:.0f} HU" if vmax < floor else \
            f"only bone is dense (up to {vmax:.0f} HU; brightest voxel outside bone {vmax_soft:.0f} HU)"
        raise InputError(f"no metal in the CT inside the {roi_name}: {what}, metal floor {floor:.0f} HU "
                         "(not a post-implant CT, or the ROI misses the implant)")
    voxel_mm3 = float(np.prod(geometry.spacing))
    sp = np.asarray(geometry.spacing)
    dmat = geometry.direction_matrix
    box_cov = dmat @ np.diag(sp ** 2 / 12.0) @ dmat.T
    if not (seed_length_mm > 0 and 0 < seed_diameter_mm < seed_length_mm):
        raise InputError(f"seed capsule must have 0 < diameter < length, got {seed_diameter_mm} x {seed_length_mm} mm")
    seed_vol_mm3 = math.pi * (seed_diameter_mm / 2) ** 2 * seed_length_mm

    # -- threshold ---------------------------------------------------------------------------------
    _progress.report(progress, 0.1, "seed finder: threshold")
    if threshold_hu is None:
        lab0, n0 = ndimage.label((ctc > floor) & roic, structure=np.ones((3, 3, 3)))
        if n0 == 0:
            raise InputError(f"no metal in the CT inside the {roi_name} (nothing above {floor:.0f} HU)")
        sel = lab0 > 0
        ids = lab0[sel] - 1
        sizes = np.bincount(ids, minlength=n0)
        peaks = np.full(n0, -np.inf)
        np.maximum.at(peaks, ids, ctc[sel])
        in_bone = np.bincount(ids, weights=bone[sel], minlength=n0) > 0.5 * sizes
        small = (sizes * voxel_mm3 <= max(60.0 * seed_vol_mm3, 8 * voxel_mm3)) & ~in_bone
        ref = peaks[small] if small.any() else peaks
        # the seeds are the brightest small objects (their dense marker saturates or nearly);
        # metal streaks left by needles make many small faint ones: a high percentile, not the median
        peak = float(np.percentile(ref, 90 if len(needles) else 50))
        threshold = max(floor, background + THRESHOLD_FRACTION * (peak - background))
    else:
        threshold = float(threshold_hu)
        if not math.isfinite(threshold):
            raise InputError(f"threshold must be a finite HU value, got {threshold_hu!r}")
        if threshold <= background:
            raise InputError(f"threshold {threshold:.0f} HU is not above the soft-tissue background "
                             f"({background:.0f} HU)")
    metal = (ctc > threshold) & roic
    lab, ncomp = ndimage.label(metal, structure=np.ones((3, 3, 3)))
    if ncomp == 0:
        raise InputError(f"no seeds found: no voxel above the threshold {threshold:.0f} HU inside the {roi_name}")

    # -- metal content per component ---------------------------------------------------------------
    _progress.report(progress, 0.2, f"seed finder: {ncomp} components")
    objs = ndimage.find_objects(lab)
    comps = []
    shape = np.asarray(lab.shape)
    for idx, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        pad = 3
        big = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, int(n))) for s, n in zip(sl, shape))
        own, grown, vals, bg = _component_stats(ctc, lab, big, idx, background, sp)
        excess = np.clip(vals - bg, 0.0, None)
        content = float(excess[grown].sum() * voxel_mm3)
        kji = np.argwhere(grown) + np.array([s.start for s in big])
        comps.append({"id": idx, "kji": kji, "w": excess[grown].astype(float), "content": content,
                      "peak": float(vals[own].max()), "n_vox": int(own.sum()), "bg": bg,
                      "bone": bool(np.any(bone[big][own]))})
        if idx % 50 == 0:
            _progress.report(progress, 0.2 + 0.3 * idx / ncomp, f"seed finder: component {idx} of {ncomp}")
    # metal components touching bone are seeds only if clearly denser than that bone
    for c in comps:
        if c["bone"] and c["peak"] < bone_level + BONE_MARGIN_HU:
            c["reject"] = (f"bone (peak {c['peak']:.0f} HU, bone up to {bone_level:.0f} HU)")
    # a seed's dense core is as bright as the other seeds' (within partial volume): far fainter
    # objects are metal streaks (beside needles, between seeds), not seeds
    small_peaks = [c["peak"] for c in comps if "reject" not in c]
    ref_peak = float(np.percentile(small_peaks, 90)) if small_peaks else threshold
    # (only with needles in place: their streaks make such objects; in a post-implant CT a seed
    # lying across a thick slice can read this low, measured on 2 x 2 x 2.5 mm phantoms)
    if small_peaks and len(needles):
        ref_peak = float(np.percentile(small_peaks, 90))
        faint = background + FAINT_SEED_FRACTION * (ref_peak - background)
        for c in comps:
            if "reject" not in c and c["peak"] < faint:
                c["reject"] = f"too faint for a seed (peak {c['peak']:.0f} HU, seeds here reach {ref_peak:.0f} HU): streak"
    # needle residue: what is left along a needle after its steel was taken out
    for c in comps:
        if "reject" not in c and len(needles):
            pts = geometry.ijk_to_ras((c["kji"] + off)[:, ::-1].astype(float))
            cen, ax, ev = _weighted_pose(pts, c["w"] + 1e-6, box_cov)
            length = math.sqrt(12.0 * max(ev[0], 0.0))
            for nd in needles:
                dist = float(nd.distance_to(cen[None])[0])
                along = abs(float(ax @ nd.direction)) >= math.cos(math.radians(20.0))
                if dist <= float(getattr(nd, "radius_mm", 0.65)) + 0.3:
                    c["reject"] = ("on the axis of a needle in place: its steel, or a seed still inside the "
                                   "needle (not implanted)")
                    break
                if dist <= 2.5 and along and length > 1.5 * seed_length_mm:
                    c["reject"] = "residue of a needle's steel or streak along it (not a seed)"
                    break
                if dist <= STREAK_BESIDE_NEEDLE_MM and along and length > 2.0 * seed_length_mm:
                    c["reject"] = ("streak beside a needle in place, parallel to it (rays along the needle "
                                   "starve); not seeds")
                    break
    seedlike = [c for c in comps if "reject" not in c]
    contents = np.array([c["content"] for c in seedlike]) if seedlike else np.array([1.0])
    # one seed's content: from the components shaped like one capsule of the seed model (length
    # along their principal axis up to the capsule's, not wider than a capsule plus blur); the seed
    # size is the model's, never learnt from needles or chains
    singles = []
    for c in seedlike:
        pts = geometry.ijk_to_ras((c["kji"] + off)[:, ::-1].astype(float))
        cen, _, ev = _weighted_pose(pts, c["w"] + 1e-6, box_cov)
        c["near_needle"] = bool(len(needles)) and min(
            float(nd.distance_to(cen[None])[0]) - float(getattr(nd, "radius_mm", 0.65)) for nd in needles) <= NEAR_NEEDLE_MM
        if c["near_needle"]:   # what is left beside a needle never sizes a seed
            continue
        length = math.sqrt(12.0 * max(ev[0] - PSF_VAR_MM2, 0.0))
        width = math.sqrt(max(ev[1], 0.0))
        # metal-weighted length: a dense marker inside the capsule (model 6711: a 3 mm silver rod)
        # carries most of the weight, so one seed measures 0.45-1.3 capsule lengths
        if 0.45 * seed_length_mm <= length <= 1.3 * seed_length_mm and width <= 0.5 * seed_diameter_mm + 0.9:
            singles.append(c["content"])
    singles = np.asarray(singles)
    if len(singles):
        # a capsule-shaped fragment of streak or needle residue has far less metal than a seed
        singles = singles[singles >= 0.35 * float(np.percentile(singles, 90))]
    if len(singles) >= 1:
        unit = float(np.median(singles))
    else:
        # too few single seeds to size one (a cluster-only CT): most components of an implant are
        # single seeds and singles are the smallest real ones: the 20th percentile of the non-trivial
        valid = contents[contents > 0.3 * float(np.median(contents))]
        unit = float(np.percentile(valid, 20))
    for lo, hi in ((0.7, 1.3), (0.75, 1.25)):
        near = contents[(contents > lo * unit) & (contents < hi * unit)]
        if len(near):
            unit = float(np.median(near))

    # -- seeds per component -----------------------------------------------------------------------
    warnings, rejected = [], list(needle_rejects)
    kept = []
    for c in comps:
        ratio = c["content"] / unit
        centroid_ijk = (c["kji"][:, ::-1].astype(float) + off[::-1]).mean(axis=0)
        where = np.round(geometry.ijk_to_ras(centroid_ijk), 1).tolist()
        if "reject" in c:
            rejected.append({"position_mm": where, "reason": c["reject"], "seeds_equivalent": round(ratio, 2)})
            continue
        if ratio < (NEAR_NEEDLE_MIN_FRACTION if c.get("near_needle") else MIN_UNIT_FRACTION):
            rejected.append({"position_mm": where, "reason": "too little metal for a seed (noise or artefact)",
                             "seeds_equivalent": round(ratio, 2)})
            continue
        n = max(1, int(round(ratio)))
        if n > max_per_cluster:
            rejected.append({"position_mm": where, "reason": f"too large for a seed cluster ({ratio:.1f} seeds of "
                             f"metal, > {max_per_cluster}): bone, needle, clip or contrast?", "seeds_equivalent": round(ratio, 2)})
            continue
        c["ratio"], c["n"] = ratio, n
        kept.append(c)
    if rejected:
        warnings.append(f"{len(rejected)} dense object(s) rejected (see 'rejected')")
    if not kept:
        reasons = Counter(r["reason"].split(" (")[0] for r in rejected)
        raise InputError(f"no seeds found (no metal seed-like object in the {roi_name}): {len(comps)} dense "
                         f"object(s) above {threshold:.0f} HU, rejected as: "
                         + ", ".join(f"{k} x{v}" for k, v in reasons.items()))

    if expected_count is not None:
        total = sum(c["n"] for c in kept)
        while total < expected_count:
            cand = [c for c in kept if c["ratio"] - c["n"] > 0.5 - AMBIGUITY and c["n"] < max_per_cluster]
            if not cand:
                break
            best = max(cand, key=lambda c: c["ratio"] - c["n"])
            best["n"] += 1
            total += 1
        while total > expected_count:
            cand = [c for c in kept if c["n"] - c["ratio"] > 0.5 - AMBIGUITY and c["n"] > 1]
            if not cand:
                break
            best = max(cand, key=lambda c: c["n"] - c["ratio"])
            best["n"] -= 1
            total -= 1

    # -- split and pose ----------------------------------------------------------------------------
    half = max(seed_length_mm / 2.0 - seed_diameter_mm / 2.0, 0.1)
    for c in kept:
        c["pts"] = geometry.ijk_to_ras((c["kji"] + off)[:, ::-1].astype(float))
    # width of one seed's image (mm^2), learnt from the single seeds of this CT
    widths = []
    for c in kept:
        if c["n"] == 1 and abs(c["ratio"] - 1.0) < 0.25:
            p, a, _ = _weighted_pose(c["pts"], c["w"], box_cov)
            widths.append(float(np.sum(c["w"] * _seg_dist2(c["pts"], p, a, half)) / c["w"].sum()) / 2.0)
    s2 = float(np.median(widths)) if len(widths) >= 3 else 0.25 + float(np.mean(sp ** 2)) / 12.0
    pos, axes, conf, cid, nin, cms, elong = [], [], [], [], [], [], []
    for q, c in enumerate(kept):
        pts, w, n = c["pts"], c["w"], c["n"]
        centers, axs, resp = split_cluster(pts, w, n, half, box_cov, s2)
        for s in range(len(centers)):
            ws = w * resp[:, s]
            if ws.sum() <= 0:
                continue
            r = float(ws.sum() * voxel_mm3 / unit)
            cf = math.exp(-0.5 * ((r - 1.0) / 0.3) ** 2) * (1.0 if n == 1 else 0.85)
            if n == 1:
                ev = _weighted_pose(pts, ws, box_cov)[2]
                elong.append(float(ev[0] / max(ev[1], 1e-9)))
            else:
                elong.append(np.inf)   # split seeds: the segment fit fixes their axes
            pos.append(centers[s])
            axes.append(axs[s])
            conf.append(cf)
            cid.append(c["id"])
            nin.append(n)
            cms.append(c["ratio"])
        if q % 20 == 0:
            _progress.report(progress, 0.5 + 0.5 * q / len(kept), f"seed finder: pose {q + 1} of {len(kept)}")
    axes = track_axes(np.array(pos).reshape(-1, 3), np.array(axes).reshape(-1, 3), np.array(elong), seed_length_mm)
    found = FoundSeeds(np.array(pos).reshape(-1, 3), np.array(axes).reshape(-1, 3), np.array(conf),
                       np.array(cid, dtype=int), np.array(nin, dtype=int), threshold, background, unit,
                       expected_count, warnings, rejected, len(comps), np.array(cms),
                       (float(seed_length_mm), float(seed_diameter_mm)), len(needles))
    if len(comps) < 3:
        warnings.append(f"only {len(comps)} component(s): the metal content of one seed could not be learnt "
                        "reliably; check the count of seeds in clusters")
    if expected_count is not None and len(found) != expected_count:
        if len(found) < expected_count:
            warnings.append(f"expected {expected_count} seeds, found {len(found)}: {expected_count - len(found)} "
                            "missing (migrated out of the ROI, expelled, or merged in an unresolved cluster)")
        else:
            warnings.append(f"expected {expected_count} seeds, found {len(found)}: {len(found) - expected_count} "
                            "extra (other metal, or a cluster split too far)")
    _progress.report(progress, 1.0, f"seed finder: {len(found)} seeds")
    return found


def track_axes(positions, axes, elongation, seed_length_mm, min_elongation=TRACK_MIN_ELONGATION):
    """Axes of seeds whose own image is too round to show it, from the needle track they lie on.

    Seeds are deposited along a needle track, one after another: three or more seeds on one
    straight line (each 1.2-4 capsule lengths from the next, within 1.5 mm of the line) lie along
    it. A seed's own principal axis is kept when its metal-weighted image is elongated (largest
    over second variance >= ``min_elongation``); rays along a row of seeds starve and the dark
    streak between them eats their ends, leaving round blobs, whose axis the track gives. In a
    lattice (rows across neighbouring needles are straight too) the line nearest the seed's own
    axis is taken.
    """
    axes = np.array(axes, float, copy=True)
    n = len(positions)
    if n < 3:
        return axes
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    lo, hi = 1.2 * seed_length_mm, 4.0 * seed_length_mm
    for i in range(n):
        if elongation[i] >= min_elongation:
            continue
        lines = []                      # (direction, members) of the distinct lines through seed i
        for j in np.flatnonzero((d[i] >= lo) & (d[i] <= hi)):
            u = (positions[j] - positions[i]) / d[i, j]
            rel = positions - positions[i]
            t = rel @ u
            off = np.linalg.norm(rel - t[:, None] * u, axis=1)
            on = np.flatnonzero(off <= 1.5)
            if len(on) < 3:
                continue
            ts = np.sort(t[on])
            gaps = np.diff(ts)
            if np.any(gaps > hi) or np.any(gaps < 0.8 * seed_length_mm):
                continue
            c = positions[on].mean(axis=0)
            a = np.linalg.eigh(np.cov((positions[on] - c).T))[1][:, -1]
            if not any(abs(float(a @ b)) > math.cos(math.radians(10.0)) for b, _ in lines):
                lines.append((a, on))
        if not lines:
            continue
        # one line: the track. Several (a lattice of needles and rows across them): the one nearest
        # the seed's own, weakly elongated, axis
        a = max(lines, key=lambda ln: abs(float(ln[0] @ axes[i])))[0] if len(lines) > 1 else lines[0][0]
        k = int(np.argmax(np.abs(a)))
        axes[i] = -a if a[k] < 0 else a
    return axes


def subtract_needles(ctc, needles, geometry: ImageGeometry, offset_kji, background):
    """The CT crop (float32 [k, j, i] starting at ``offset_kji``) with the needles' steel taken out,
    and a mask of the crop around the needles' shafts outside the skin.

    Each needle's image is modelled from the needle itself: the median excess over ``background``
    of the voxels in 0.3 x 0.3 mm bins of the needle's cross-section (one axis along the slice
    direction, so thick-slice partial volume is modelled too), out to 3 mm plus half a voxel,
    taken along the steel away from the tip, times the blurred end of the steel at the tip (a
    normal step of the needle finder's blur along the axis). That model is subtracted, never below
    the soft tissue: a seed touching a needle keeps its own metal; streaks along the needle are not
    symmetric about it and stay (the seed count rejects them).
    """
    from .needle_measure import blur_sigma as _blur_sigma
    from scipy.special import ndtr
    out = np.array(ctc, dtype=np.float32, copy=True)
    outside = np.zeros(out.shape, dtype=bool)
    sp = np.asarray(geometry.spacing, float)
    off = np.asarray(offset_kji)
    reach = 3.0 + 0.5 * float(sp.max())
    shape = np.asarray(out.shape)
    kdir = geometry.direction_matrix[:, 2]
    step = 0.3
    nb = int(math.ceil(reach / step))
    for nd in needles:
        d = np.asarray(nd.direction, float)
        tip = np.asarray(nd.tip, float)
        e1 = kdir - (kdir @ d) * d
        if np.linalg.norm(e1) < 1e-3:
            e1 = np.cross(d, [1.0, 0.0, 0.0] if abs(d[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 = e1 / np.linalg.norm(e1)
        e2 = np.cross(d, e1)
        ext = 40.0                                   # the shaft outside the skin too
        a = tip - (nd.depth_mm + ext) * d
        length = float(nd.depth_mm + ext + 4.0)
        h = np.ceil(reach / sp).astype(int) + 1
        idx_l, t_l, u_l, v_l = [], [], [], []
        for c0 in np.arange(0.0, length, 10.0):     # 10 mm pieces: small boxes for oblique needles
            c1 = min(c0 + 10.0, length)
            ijk = geometry.ras_to_ijk(np.array([a + c0 * d, a + c1 * d]))
            lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int) - h, off[::-1])
            hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + h + 1, off[::-1] + shape[::-1])
            if np.any(hi <= lo):
                continue
            kk, jj, ii = np.meshgrid(np.arange(lo[2], hi[2]), np.arange(lo[1], hi[1]), np.arange(lo[0], hi[0]),
                                     indexing="ij")
            vox = geometry.ijk_to_ras(np.stack([ii, jj, kk], axis=-1).astype(float))
            rel = vox - a
            t = rel @ d
            o = rel - t[..., None] * d
            u, v = o @ e1, o @ e2
            own = (t >= c0) & (t < c1) & (np.abs(u) < reach) & (np.abs(v) < reach)
            if not own.any():
                continue
            idx_l.append((kk[own] - off[0], jj[own] - off[1], ii[own] - off[2]))
            t_l.append(t[own] - (length - 4.0))      # 0 at the tip, negative inside the needle
            u_l.append(u[own])
            v_l.append(v[own])
        if not idx_l:
            continue
        idx = tuple(np.concatenate([b[q] for b in idx_l]) for q in range(3))
        t_all, u_all, v_all = np.concatenate(t_l), np.concatenate(u_l), np.concatenate(v_l)
        bu = np.clip(np.floor(u_all / step).astype(int) + nb, 0, 2 * nb - 1)
        bv = np.clip(np.floor(v_all / step).astype(int) + nb, 0, 2 * nb - 1)
        bins = bu * (2 * nb) + bv
        excess = out[idx] - background
        steel = (t_all < -3.0) & (t_all > -nd.depth_mm)   # inside the body, away from the tip
        prof = np.zeros((2 * nb) ** 2)
        order = np.argsort(bins[steel], kind="stable")
        sb, sv = bins[steel][order], excess[steel][order]
        starts = np.flatnonzero(np.r_[True, np.diff(sb) > 0])
        for q0, q1 in zip(starts, np.r_[starts[1:], len(sb)]):
            if q1 - q0 >= 3:
                prof[sb[q0]] = max(0.0, float(np.median(sv[q0:q1])))
        sig = _blur_sigma(d, geometry)
        model = prof[bins] * ndtr(-t_all / max(sig, 1e-3))
        vals = out[idx]
        out[idx] = np.maximum(vals - model, np.minimum(vals, background)).astype(np.float32)
        outside[idx] |= t_all < -nd.depth_mm + 1.0
    return out, outside


def naive_find_seeds(ct_hu, geometry: ImageGeometry, threshold_hu=1500.0):
    """Reference method for benchmarks: fixed threshold, one seed per component, plain centroid."""
    from scipy import ndimage
    ct = np.asarray(ct_hu)
    lab, n = ndimage.label(ct > threshold_hu, structure=np.ones((3, 3, 3)))
    if n == 0:
        return np.zeros((0, 3))
    cen = np.array(ndimage.center_of_mass(np.ones_like(ct, dtype=np.float32), lab, np.arange(1, n + 1)))
    return geometry.ijk_to_ras(cen[:, ::-1])
