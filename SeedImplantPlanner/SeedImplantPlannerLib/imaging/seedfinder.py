"""Automatic seed localisation in a post-implant (or intra-operative) CT.

Method (threshold + connected components + a-priori seed content, after Nguyen, Fouard and
Troccaz, "Segmentation, separation and pose estimation of prostate brachytherapy seeds in CT
images", IEEE Trans Biomed Eng 62(8):2012-2024, 2015; their clustering is replaced here by the
count-from-metal-content rule and a line-segment k-means described below):

1. **Region of interest**: the given mask (target + margin), else the body (largest component
   above -500 HU). Everything outside is ignored (table, external markers).
2. **Threshold** (automatic unless given): components above a metal floor
   (``background + METAL_FLOOR_HU``) are found; the median peak ``P`` of the small ones (seed
   sized, so bone and other large dense structures do not vote) sets the threshold
   ``background + THRESHOLD_FRACTION * (P - background)``, never below the floor. A CT with no
   voxel above the floor raises :class:`InputError` ("no metal").
3. **Connected components** (26-connectivity) of the thresholded ROI.
4. **Metal content** of every component: the sum of ``HU - local background`` over the component
   grown by one voxel (local background = median of a shell around it). Partial volume and blur
   move intensity between voxels but keep this sum (up to saturation at the 12-bit ceiling), so it
   counts seeds at 1 mm and at 2 x 2 x 2.5 mm alike. The content of one seed (``unit``) is learnt
   from the image: the median content of the components near the 20th percentile of all
   (most components of an implant are single seeds, and singles are the smallest).
5. **Seeds per component** ``n = round(content / unit)``; components below ``MIN_UNIT_FRACTION``
   of a seed are rejected as noise or streaks; components of more than ``max_per_cluster`` seeds
   (bone, a surgical clip cluster, contrast) are rejected and reported. With ``expected_count``
   the ambiguous components (content halfway between two counts) are resolved greedily towards
   the expected number; any remaining difference is reported as missing or extra seeds.
6. **Splitting** touching seeds: the voxels of a component with ``n > 1`` are clustered into
   ``n`` line segments of the seed's length (a k-means whose distance is the distance to each
   cluster's segment along its principal axis, so side-by-side, end-to-end and crossing seeds
   separate), weighted by metal content, from several deterministic starts (best cost kept).
7. **Pose**: position = metal-content-weighted centroid of the seed's voxels (sub-voxel); axis =
   principal axis of the weighted voxel covariance after subtracting the voxel box variance
   (``spacing^2 / 12`` per grid axis, so thick slices do not bias axes towards z).
8. **Confidence** in [0, 1]: how close the seed's metal content is to one seed's, lowered for
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

#: Physical I-125 seed capsule (mm); only the length matters for splitting.
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
                "rejected": self.rejected, "warnings": list(self.warnings)}


# -- helpers -------------------------------------------------------------------------------------

def body_mask(ct_hu, level_hu=BODY_HU):
    """Largest connected component above ``level_hu`` (the patient), holes filled slice by slice."""
    from scipy import ndimage
    m = np.asarray(ct_hu) > level_hu
    lab, n = ndimage.label(m)
    if n == 0:
        return m
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def bone_mask(ct_hu, background_hu, voxel_cc, level_hu=BONE_HU, min_cc=BONE_MIN_CC):
    """Bone: thick connected regions above ``background + level_hu`` of more than ``min_cc`` (eroded).

    A one-voxel erosion first removes thin structures (streak artefacts, seed halos) so that a
    streak-connected seed cluster is not taken for bone; the surviving large regions are grown
    back by two voxels and intersected with the dense voxels. Returns ``(mask, bone level HU)``,
    the level being the 95th percentile of the bone's voxels (``-inf`` without bone).
    """
    from scipy import ndimage
    dense = np.asarray(ct_hu) > background_hu + level_hu
    core = ndimage.binary_erosion(dense, structure=ndimage.generate_binary_structure(3, 1), border_value=1)
    lab, n = ndimage.label(core)
    if n == 0:
        return np.zeros(dense.shape, dtype=bool), -np.inf
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    big = np.flatnonzero(sizes * voxel_cc > min_cc)
    if len(big) == 0:
        return np.zeros(dense.shape, dtype=bool), -np.inf
    bone = np.isin(lab, big)
    bone = ndimage.binary_dilation(bone, iterations=2) & dense
    return bone, float(np.percentile(np.asarray(ct_hu)[bone], 95))


def _canonical_axis(a):
    a = np.asarray(a, float)
    a = a / np.linalg.norm(a)
    k = int(np.argmax(np.abs(a)))
    return -a if a[k] < 0 else a


def _weighted_pose(pts, w, box_cov):
    """Weighted centroid and principal axis (voxel box variance removed)."""
    sw = float(w.sum())
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
               progress=None, seed_length_mm=SEED_LENGTH_MM, max_per_cluster=MAX_PER_CLUSTER) -> FoundSeeds:
    """Find the seeds in a CT (``ct_hu`` [k, j, i] in HU on ``geometry``); see the module doc.

    ``roi_mask``: boolean [k, j, i] where seeds are searched (target + margin); default the body.
    ``threshold_hu``: metal threshold; default automatic. ``expected_count``: number of seeds
    implanted (resolves ambiguous clusters, and reports missing / extra seeds).
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
    seed_vol_mm3 = math.pi * (SEED_DIAMETER_MM / 2) ** 2 * seed_length_mm

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
        peak = float(np.median(ref))
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
    seedlike = [c for c in comps if "reject" not in c]
    contents = np.array([c["content"] for c in seedlike]) if seedlike else np.array([1.0])
    # one seed's content: most components of an implant are single seeds, and singles are the
    # smallest real components, so start from the 20th percentile of the non-trivial ones
    valid = contents[contents > 0.3 * float(np.median(contents))]
    unit = float(np.percentile(valid, 20))
    for lo, hi in ((0.7, 1.3), (0.75, 1.25)):
        near = valid[(valid > lo * unit) & (valid < hi * unit)]
        if len(near):
            unit = float(np.median(near))

    # -- seeds per component -----------------------------------------------------------------------
    warnings, rejected = [], []
    kept = []
    for c in comps:
        ratio = c["content"] / unit
        centroid_ijk = (c["kji"][:, ::-1].astype(float) + off[::-1]).mean(axis=0)
        where = np.round(geometry.ijk_to_ras(centroid_ijk), 1).tolist()
        if "reject" in c:
            rejected.append({"position_mm": where, "reason": c["reject"], "seeds_equivalent": round(ratio, 2)})
            continue
        if ratio < MIN_UNIT_FRACTION:
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
    half = max(seed_length_mm / 2.0 - SEED_DIAMETER_MM / 2.0, 0.1)
    for c in kept:
        c["pts"] = geometry.ijk_to_ras((c["kji"] + off)[:, ::-1].astype(float))
    # width of one seed's image (mm^2), learnt from the single seeds of this CT
    widths = []
    for c in kept:
        if c["n"] == 1 and abs(c["ratio"] - 1.0) < 0.25:
            p, a, _ = _weighted_pose(c["pts"], c["w"], box_cov)
            widths.append(float(np.sum(c["w"] * _seg_dist2(c["pts"], p, a, half)) / c["w"].sum()) / 2.0)
    s2 = float(np.median(widths)) if len(widths) >= 3 else 0.25 + float(np.mean(sp ** 2)) / 12.0
    pos, axes, conf, cid, nin, cms = [], [], [], [], [], []
    for q, c in enumerate(kept):
        pts, w, n = c["pts"], c["w"], c["n"]
        centers, axs, resp = split_cluster(pts, w, n, half, box_cov, s2)
        for s in range(len(centers)):
            ws = w * resp[:, s]
            if ws.sum() <= 0:
                continue
            r = float(ws.sum() * voxel_mm3 / unit)
            cf = math.exp(-0.5 * ((r - 1.0) / 0.3) ** 2) * (1.0 if n == 1 else 0.85)
            pos.append(centers[s])
            axes.append(axs[s])
            conf.append(cf)
            cid.append(c["id"])
            nin.append(n)
            cms.append(c["ratio"])
        if q % 20 == 0:
            _progress.report(progress, 0.5 + 0.5 * q / len(kept), f"seed finder: pose {q + 1} of {len(kept)}")
    found = FoundSeeds(np.array(pos).reshape(-1, 3), np.array(axes).reshape(-1, 3), np.array(conf),
                       np.array(cid, dtype=int), np.array(nin, dtype=int), threshold, background, unit,
                       expected_count, warnings, rejected, len(comps), np.array(cms))
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


def naive_find_seeds(ct_hu, geometry: ImageGeometry, threshold_hu=1500.0):
    """Reference method for benchmarks: fixed threshold, one seed per component, plain centroid."""
    from scipy import ndimage
    ct = np.asarray(ct_hu)
    lab, n = ndimage.label(ct > threshold_hu, structure=np.ones((3, 3, 3)))
    if n == 0:
        return np.zeros((0, 3))
    cen = np.array(ndimage.center_of_mass(np.ones_like(ct, dtype=np.float32), lab, np.arange(1, n + 1)))
    return geometry.ijk_to_ras(cen[:, ::-1])
