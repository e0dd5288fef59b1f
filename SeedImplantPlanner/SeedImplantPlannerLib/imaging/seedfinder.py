"""Automatic seed localisation in a post-implant (or intra-operative) CT.

Method (threshold + connected components + a-priori seed content, after Nguyen, Fouard and
Troccaz, "Segmentation, separation and pose estimation of prostate brachytherapy seeds in CT
images", IEEE Trans Biomed Eng 62(8):2012-2024, 2015; their clustering is replaced here by the
count-from-metal-content rule and a line-segment k-means described below):

1. **Region of interest**: the given mask (target + margin), else the body (largest component
   above -500 HU). Everything outside is ignored (table, external markers). A given mask selects
   the objects with a voxel in it, each measured whole up to ``ROI_OBJECT_MARGIN_MM`` beyond it
   (cut by the mask, a needle's streak read as a short seed-sized object, a cluster as fewer seeds).
2. **Needles in place first** (intra-operative CTs): the needles given, else those
   :func:`imaging.needlefinder.find_needles` finds (in the ROI when one is given). Each needle's image is modelled from the
   needle itself (median excess per 0.3 mm bin of its cross-section, along the steel, times the
   blurred end at the tip) and subtracted, never below soft tissue; the shafts outside the skin
   leave the ROI. Every needle is listed in ``rejected`` ("needle in place"), so a needle is never
   reported as seeds and never sizes one.
3. **Threshold** (automatic unless given): components above a metal floor
   (``background + METAL_FLOOR_HU``) are found; a robust peak ``P`` of them (bone does not vote)
   sets the threshold ``background + THRESHOLD_FRACTION * (P - background)``, never below the
   floor. ``P`` is the median peak of the objects at least half as bright as the brightest (noise
   specks and streak knots are many and faint: counted in, they pulled the threshold to the
   floor, where the streaks between seeds lying in one slice joined them all), or, when needles
   were taken out, the 90th percentile of the seed-sized objects' peaks. A CT with no
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
   of a seed (``NEAR_NEEDLE_MIN_FRACTION`` beside a needle) are rejected as noise or streaks,
   unless one lies end to end with a seed in the slice plane and holds ``MIN_UNIT_FRACTION`` of a
   seed over its column (its in-plane footprint through the slices its image spans:
   :func:`seed_components.column_content`): a thick slice is the mean of thin ones, so a seed
   straddling two slices keeps its metal only summed over both, and rays along a chain starve, so
   its halves lie on the chain's dark band and neither reaches the threshold; such a seed is posed
   from its column;
   components of more than ``max_per_cluster`` seeds
   (bone, a surgical clip cluster, contrast) are rejected and reported. With ``expected_count``
   the ambiguous components (content halfway between two counts) are resolved greedily towards
   the expected number; any remaining difference is reported as missing or extra seeds.
   6b. **Streak knots between in-plane needles** (slices up to ``KNOT_MAX_SLICE_MM``): rays in the slice
   plane along two needles lying in it starve and leave a band of bright knots between them, of any
   length and direction. A component lying between two such needles (nearer each needle's steel than
   the needles are to each other: :func:`seed_needles._between_in_plane_needles`) whose peak stays
   below both needles' steel plateau and below ``KNOT_SEED_FRACTION`` of this CT's single seeds' peak
   is rejected: a seed there keeps its own dense core, as bright as the other seeds (held-out
   layouts: knots 800-2750 HU, seeds 3071 HU; on 2-3 mm slices seeds lying in the slice plane read
   far fainter, so thick slices are left alone). An object there that does hold seed-bright voxels
   and that its metal counts as several seeds (a seed merged with the band) holds as many seeds as
   its bright voxels hold single seeds' cores (at least one per connected core); its voxels within
   half a capsule of a core are split into them, the band's metal is no seed. An object there rejected
   whole (too large for a cluster, or a streak beside a needle) that holds seed-bright cores no longer
   than 1.5 capsules (as bright as the single seeds, or without one as the needles' steel) keeps one
   seed per such core.
7. **Splitting** touching seeds: the voxels of a component with ``n > 1`` are clustered into
   ``n`` line segments of the seed's length (a k-means, then an EM of blurred segments whose
   distance knows the voxel box, so a thick slice does not trade side-by-side seeds for stacked
   ones; side-by-side, end-to-end and crossing seeds separate), weighted by metal content, from
   several deterministic starts (best fit kept). Solid capsules cannot lie inside each other: a
   count rounded up that puts two segments closer than half a diameter loses one seed (a pair
   standing across the slices reads more metal than seeds lying in the slice plane, whose metal
   the streaks along them eat). Nor does a count rounded up stand when every seed of the split
   lies across the in-plane direction of the dark streaks around the cluster: rays along a seed
   starve and leave dark bands along its axis, so seeds split across them are the two halves of
   one blooming seed whose bright cross-streaks added metal.
8. **Pose**: position = metal-content-weighted centroid of the seed's voxels (sub-voxel); axis =
   principal axis of the weighted voxel covariance after subtracting the voxel box variance
   (``spacing^2 / 12`` per grid axis, so thick slices do not bias axes towards z). A seed whose
   image is round (a blooming silver marker in one slice, its ends eaten by the dark streaks of
   the rays along it) takes the in-plane direction of those dark streaks
   (:func:`seed_pose.streak_direction`) with the tilt its covariance shows in that plane; one
   without clear streaks the line of its needle track (:func:`seed_pose.track_axes`).
9. **Needle residue** (needles in place): a seed split from an object along a needle whose centre
   lies inside the needle's steel (within its outer radius + ``ON_AXIS_TOLERANCE_MM``) is rejected
   as on its axis, like a whole object there (a seed deposited beside a needle lies off its axis by
   the needle's and the seed's radius). A seed whose centre lies in the tube around a needle
   (:class:`seed_needles.NeedleMetal`, 3 mm plus half a voxel) is kept only when the metal per
   mm along the needle over the seed's length exceeds the needle's own level beside it by half a
   seed (the needle's steel holds the same metal per mm along its length, whatever partial volume
   and blur do to single voxels; a remnant of its subtraction adds none, a seed against it about
   one); otherwise it is rejected as the needle's residue, with the excess in the reason.
10. **Seeds beside in-plane needles** (:mod:`seed_beside`): a needle running within 20 deg of the slice
   plane and a seed deposited beside it in that plane share their slices, and the CT's ceiling clips
   both: the seed's inner half hides under the needle's saturated bloom, and the subtraction leaves a
   fraction of its metal, pushed outward. The needle's bright footprint keeps the seed's shape: a
   bulge of its contour (70 % of the steel's plateau) by at least 3/4 of the seed's diameter over
   0.5-1.3 capsule lengths, against the needle's own edge along the rest of its length, as bright as
   the steel beyond the needle's edge, on one side only, with no other needle's steel within the
   5 mm band. The seed is placed from its visible outer edge (one seed radius plus the edge's blur
   excess, read on the needle in the same CT, inside it), along the needle; a seed found there by
   its metal takes that pose, one not found is added.
11. **Confidence** in [0, 1]: how close the seed's metal content is to one seed's, lowered for
   seeds split from a cluster, and down to a quarter for a seed against a needle's steel (or on
   its line up to ``NEEDLE_EXTENSION_MM`` beyond its found tip): it may be the needle's residue.

Metal artefacts: streaks are far below the threshold and are symmetric about the seed, so they
neither create components (rejected by content if they do) nor bias the centroid; saturated
(clipped) seed cores are symmetric too. Positions are RAS mm; arrays ``[k, j, i]``.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from .seed_beside import find_beside_seeds, needle_frame
from .seed_components import (BONE_MARGIN_HU, MAX_PER_CLUSTER, bone_mask, body_mask, count_seeds, measure_components,
                              measure_columns, resolve_expected, unit_content)
from .seed_needles import (EXCESS_MIN_FRACTION, NEAR_NEEDLE_MM, ON_AXIS_TOLERANCE_MM, NeedleMetal, needle_line_distance,
                           needle_radius, reject_needle_residue, subtract_needles, _between_in_plane_needles)
from .seed_pose import (STREAK_MIN_ANISOTROPY, axis_in_streak_plane, capsules_overlap, seg_dist2, split_cluster, streak_direction,
                        track_axes, weighted_pose)
from .seed_result import SEED_DIAMETER_MM, SEED_LENGTH_MM, FoundSeeds

#: Metal floor above the soft-tissue background (HU): below it nothing is metal.
METAL_FLOOR_HU = 500.0
#: Automatic threshold: this fraction of the way from background to the median seed peak.
THRESHOLD_FRACTION = 0.3
#: Seeds whose metal-weighted image is elongated at least this much (largest over second variance)
#: keep their own principal axis; rounder ones take the in-plane direction of their dark streaks.
STREAK_TRUST_ELONGATION = 4.0
#: A seed's peak reaches at least this fraction of the way from soft tissue to the brightest seeds.
FAINT_SEED_FRACTION = 0.4
#: Streak knots between two in-plane needles (step 6b): only on slices this thin (mm), where a seed's dense
#: core is resolved like the steel's (on 2-3 mm slices seeds lying in the slice plane read far fainter)...
KNOT_MAX_SLICE_MM = 1.5
#: ... and only objects whose peak stays below both needles' steel plateau and below this fraction of the
#: way from soft tissue to the peak of this CT's single seeds (90th percentile).
KNOT_SEED_FRACTION = 0.9
#: A given ROI selects the objects with a voxel in it; each is measured whole up to this far (mm)
#: beyond the ROI (its length, shape and metal decide what it is, not where the ROI cuts it).
ROI_OBJECT_MARGIN_MM = 10.0


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
    # crop to the ROI box for speed; a given ROI selects objects, it does not cut them: the box
    # reaches ROI_OBJECT_MARGIN_MM beyond it, so an object crossing its edge is measured whole
    kk, jj, ii = (np.flatnonzero(roi.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
    lo = np.array([kk[0], jj[0], ii[0]])
    hi = np.array([kk[-1], jj[-1], ii[-1]])
    if roi_mask is not None:
        pad = np.ceil(ROI_OBJECT_MARGIN_MM / np.asarray(geometry.spacing, float)[::-1]).astype(int)
        lo, hi = np.maximum(lo - pad, 0), np.minimum(hi + pad, np.asarray(ct.shape) - 1)
    off = lo
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    ctc = ct[box].astype(np.float32)
    roic = roi[box]
    reach = np.ones(roic.shape, dtype=bool) if roi_mask is not None else roic
    finite = np.isfinite(ctc)
    if not finite.all():
        raise InputError(f"CT holds {int((~finite).sum())} non-finite voxel(s) inside the {roi_name}")
    # -- needles in place: found first, their steel taken out of the image ----------------------------
    needle_rejects = []
    needle_metal = None
    if needles is None:
        from .needlefinder import find_needles
        _progress.report(progress, 0.01, "seed finder: needles in place")
        try:
            # with a ROI (target + margin) the needles passing through it, followed to their ends
            needles = find_needles(ct, geometry, body=roi if roi_mask is None else None,
                                   region_mask=None if roi_mask is None else roi)
        except InputError:
            needles = []
    ct_read = ctc
    if len(needles):
        _progress.report(progress, 0.04, f"seed finder: {len(needles)} needle(s) in place taken out")
        bg0 = float(np.clip(np.median(ctc[roic]), -200.0, 200.0))
        removed = []
        ctc, outside = subtract_needles(ctc, needles, geometry, off, bg0, removed)
        needle_metal = NeedleMetal(ctc, removed, needles, geometry, off, bg0)
        roic = roic & ~outside
        reach = reach & ~outside
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
        if len(needles):
            # metal streaks left by needles make many small faint objects, and the needles' residue
            # middling ones: a high percentile of the small objects' peaks
            small = (sizes * voxel_mm3 <= max(60.0 * seed_vol_mm3, 8 * voxel_mm3)) & ~in_bone
            peak = float(np.percentile(peaks[small] if small.any() else peaks, 90))
        else:
            # the seeds are the bright objects (their dense marker saturates or nearly): the median
            # peak of the objects at least half as bright as the brightest. Noise specks and streak
            # knots just above the floor are many and faint; counted in, they pulled the threshold
            # down to the floor, where the streaks between seeds lying in one slice (a template's
            # row) join them all into one object.
            ref = peaks[~in_bone] if (~in_bone).any() else peaks
            top = float(ref.max())
            peak = float(np.median(ref[ref >= background + 0.5 * (top - background)]))
        threshold = max(floor, background + THRESHOLD_FRACTION * (peak - background))
    else:
        threshold = float(threshold_hu)
        if not math.isfinite(threshold):
            raise InputError(f"threshold must be a finite HU value, got {threshold_hu!r}")
        if threshold <= background:
            raise InputError(f"threshold {threshold:.0f} HU is not above the soft-tissue background "
                             f"({background:.0f} HU)")
    metal = (ctc > threshold) & reach
    lab, ncomp = ndimage.label(metal, structure=np.ones((3, 3, 3)))
    if reach is not roic and ncomp:
        # only the objects with a voxel in the ROI, each whole
        hit = np.zeros(ncomp + 1, dtype=bool)
        hit[np.unique(lab[roic & metal])] = True
        hit[0] = False
        lab, ncomp = ndimage.label(hit[lab], structure=np.ones((3, 3, 3)))
    if ncomp == 0:
        raise InputError(f"no seeds found: no voxel above the threshold {threshold:.0f} HU inside the {roi_name}")

    # -- metal content per component ---------------------------------------------------------------
    _progress.report(progress, 0.2, f"seed finder: {ncomp} components")
    comps = measure_components(ctc, lab, ncomp, background, bone, voxel_mm3, progress)
    # metal components touching bone are seeds only if clearly denser than that bone
    for c in comps:
        if c["bone"] and c["peak"] < bone_level + BONE_MARGIN_HU:
            c["reject"] = (f"bone (peak {c['peak']:.0f} HU, bone up to {bone_level:.0f} HU)")
    # a seed's dense core is as bright as the other seeds' (within partial volume): far fainter
    # objects are metal streaks (beside needles, between seeds), not seeds
    # (only with needles in place: their streaks make such objects; in a post-implant CT a seed
    # lying across a thick slice can read this low, measured on 2 x 2 x 2.5 mm phantoms)
    small_peaks = [c["peak"] for c in comps if "reject" not in c]
    if small_peaks and len(needles):
        ref_peak = float(np.percentile(small_peaks, 90))
        faint = background + FAINT_SEED_FRACTION * (ref_peak - background)
        for c in comps:
            if "reject" not in c and c["peak"] < faint:
                c["reject"] = f"too faint for a seed (peak {c['peak']:.0f} HU, seeds here reach {ref_peak:.0f} HU): streak"
    # needle residue: what is left along a needle after its steel was taken out
    if len(needles):
        reject_needle_residue(comps, needles, geometry, off, box_cov, seed_length_mm)
    unit = unit_content(comps, needles, geometry, off, box_cov, seed_length_mm, seed_diameter_mm)
    # too faint by their grown content: measured over the slices their image spans (a seed straddling two)
    measure_columns(comps, ctc, lab, unit, voxel_mm3, geometry, off, seed_length_mm)

    # -- seeds per component -----------------------------------------------------------------------
    kept, rejected = count_seeds(comps, unit, geometry, off, max_per_cluster, box_cov, seed_length_mm,
                                 seed_diameter_mm)
    if len(needles) and float(geometry.spacing[2]) <= KNOT_MAX_SLICE_MM:
        kept, knots = _knots_between_needles(kept, needles, geometry, off, box_cov, background, ctc, seed_length_mm)
        rejected += knots
        # a seed merged with a long band into an object rejected whole (too large for a cluster, or a streak
        # beside a needle): its seed-sized bright cores
        whole = ("too large for a seed cluster", "streak beside a needle")
        rows = {tuple(r["position_mm"]) for r in rejected if r["reason"].startswith(whole)}
        large = [c for c in comps if (c.get("reject", "").startswith(whole[1])
                                      or ("reject" not in c and c["content"] / unit > max_per_cluster))
                 and tuple(_centroid_ras(c, geometry, off)) in rows]
        taken = _cores_of_large_objects(large, kept, needles, geometry, off, box_cov, background, ctc, seed_length_mm)
        if taken:
            kept += taken
            gone = {tuple(c.pop("centroid_row")) for c in taken}
            rejected = [r for r in rejected if not (r["reason"].startswith(whole) and tuple(r["position_mm"]) in gone)]
    rejected = needle_rejects + rejected
    warnings = []
    if not kept:
        reasons = Counter(r["reason"].split(" (")[0] for r in rejected)
        raise InputError(f"no seeds found (no metal seed-like object in the {roi_name}): {len(comps)} dense "
                         f"object(s) above {threshold:.0f} HU, rejected as: "
                         + ", ".join(f"{k} x{v}" for k, v in reasons.items()))
    if expected_count is not None:
        resolve_expected(kept, expected_count, max_per_cluster)

    # -- split and pose ----------------------------------------------------------------------------
    pos, axes, conf, cid, nin, cms = _poses(kept, ctc, geometry, off, box_cov, unit, voxel_mm3, seed_length_mm,
                                            seed_diameter_mm, progress)
    if len(needles):
        # a seed cannot be a needle's residue: the metal along the needle over the seed's length must
        # exceed the needle's own steel by half a seed
        wh, dd, tt = needle_metal.nearest(pos, seed_length_mm + 1.0)
        drop = []
        for i in np.flatnonzero(wh >= 0):
            nd = needles[int(wh[i])]
            if dd[i] <= needle_radius(nd) + ON_AXIS_TOLERANCE_MM:
                # a seed split from an object along a needle, centred inside the needle's steel: a piece of
                # the needle's residue (a seed beside the needle lies off its axis by both radii)
                drop.append(i)
                rejected.append({"position_mm": np.round(pos[i], 1).tolist(), "seeds_equivalent": None,
                                 "reason": f"on the axis of a needle in place ({dd[i]:.1f} mm from it, split from an "
                                           f"object of {cms[i]:.1f} seeds along it): its steel, or a seed still inside "
                                           "the needle (not implanted)"})
                continue
            ex = needle_metal.excess(int(wh[i]), tt[i] - seed_length_mm / 2 - 1.0, tt[i] + seed_length_mm / 2 + 1.0) / unit
            if (not math.isfinite(ex) and getattr(nd, "tip_on", "") == "ct_edge" and abs(tt[i]) <= seed_length_mm / 2
                    and dd[i] <= needle_radius(nd) + 1.0):
                # the CT's boundary cuts through the needle there: its image is not the model's
                drop.append(i)
                rejected.append({"position_mm": np.round(pos[i], 1).tolist(), "seeds_equivalent": None,
                                 "reason": "on a needle in place where it runs out of the CT: its steel cut by "
                                           "the CT's edge (not a seed)"})
            elif math.isfinite(ex) and ex < EXCESS_MIN_FRACTION:
                drop.append(i)
                rejected.append({"position_mm": np.round(pos[i], 1).tolist(), "seeds_equivalent": round(float(ex), 2),
                                 "reason": "residue of a needle in place: the metal along the needle there exceeds its "
                                           f"own steel by {ex:.2f} seed (a seed lying against it adds about one)"})
        if drop:
            keep = np.setdiff1d(np.arange(len(pos)), drop)
            pos, axes, conf, cid, nin, cms = (a[keep] for a in (pos, axes, conf, cid, nin, cms))
        pos, axes, conf, cid, nin, cms = _beside_in_plane_needles(ct_read, roic, geometry, off, needles, background,
                                                                  seed_length_mm, seed_diameter_mm,
                                                                  (pos, axes, conf, cid, nin, cms))
        if not len(pos):
            raise InputError(f"no seeds found in the {roi_name}: every seed-like object lies against a needle in "
                             "place and holds no more metal than the needle's own steel there (its residue)")
    if rejected:
        warnings.append(f"{len(rejected)} dense object(s) rejected (see 'rejected')")
    if len(needles):
        # beside a needle's steel (or on its line just beyond its tip) an object may be the needle's
        # residue or streak: the confidence falls to a quarter at the surface
        conf = conf * np.clip(needle_line_distance(pos, needles) / NEAR_NEEDLE_MM, 0.25, 1.0)
    found = FoundSeeds(pos, axes, conf, cid, nin, threshold, background, unit, expected_count, warnings, rejected,
                       len(comps), cms, (float(seed_length_mm), float(seed_diameter_mm)), len(needles))
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


def _knots_between_needles(kept, needles, geometry, off, box_cov, background, ctc, seed_length_mm):
    """Module doc, step 6b: knots of the streak band between two in-plane needles, of any length or
    direction, fainter than this CT's single seeds; an object there holding seed-bright cores counts
    the seeds of its cores only. Returns ``(kept, rejected rows)``."""
    from scipy import ndimage
    ones = [c for c in kept if c["n"] == 1 and abs(c["ratio"] - 1.0) < 0.25 and not c.get("near_needle")]
    if not ones:
        return kept, []
    level = background + KNOT_SEED_FRACTION * (float(np.percentile([c["peak"] for c in ones], 90)) - background)
    core_vox = float(np.median([np.count_nonzero(ctc[tuple(c["kji"].T)] >= level) for c in ones]))
    kdir = geometry.direction_matrix[:, 2]
    out, rows = [], []
    for c in kept:
        if c["peak"] >= level and c["n"] > 1 and core_vox >= 1:
            pts = geometry.ijk_to_ras((c["kji"] + off)[:, ::-1].astype(float))
            cen, _, _ = weighted_pose(pts, c["w"] + 1e-6, box_cov)
            if _between_in_plane_needles(cen, None, -np.inf, needles, kdir) is not None:
                _seed_cores_only(c, ctc, geometry, level, core_vox, seed_length_mm)
        if c["peak"] < level:
            pts = geometry.ijk_to_ras((c["kji"] + off)[:, ::-1].astype(float))
            cen, _, _ = weighted_pose(pts, c["w"] + 1e-6, box_cov)
            pair = _between_in_plane_needles(cen, None, c["peak"], needles, kdir)
            if pair is not None:
                rows.append({"position_mm": np.round(cen, 1).tolist(), "seeds_equivalent": round(float(c["ratio"]), 2),
                             "reason": f"streak knot between needles in place {pair[0]} and {pair[1]} in the slice "
                                       f"plane (peak {c['peak']:.0f} HU, below their steel's and below this CT's "
                                       f"single seeds' {level:.0f} HU): not seeds"})
                continue
        out.append(c)
    return out, rows


def _centroid_ras(c, geometry, off):
    """A component's voxel centroid (RAS mm, rounded to 0.1 mm), as its rejected row states it."""
    centroid_ijk = (c["kji"][:, ::-1].astype(float) + np.asarray(off)[::-1]).mean(axis=0)
    return np.round(geometry.ijk_to_ras(centroid_ijk), 1).tolist()


def _cores_of_large_objects(large, kept, needles, geometry, off, box_cov, background, ctc, seed_length_mm):
    """Objects rejected whole (too large for a cluster, or a streak beside a needle) that lie between two
    in-plane needles (a seed merged with the streak band): their seed-sized bright cores are seeds
    (module doc, step 6b). Seed-bright:
    90 % of the way to this CT's single seeds' peak, or, without a single seed, to the needles' steel
    plateau (both clip); seed-sized: a connected core no longer than 1.5 capsules (a missed needle's steel
    is longer). Returns the components taken back, reduced to the voxels within half a capsule of a core."""
    from scipy import ndimage
    ones = [c for c in kept if c["n"] == 1 and abs(c["ratio"] - 1.0) < 0.25 and not c.get("near_needle")]
    kdir = geometry.direction_matrix[:, 2]
    sp = np.asarray(geometry.spacing, float)[::-1]
    taken = []
    for c in large:
        pts = geometry.ijk_to_ras((c["kji"] + off)[:, ::-1].astype(float))
        cen, _, _ = weighted_pose(pts, c["w"] + 1e-6, box_cov)
        pair = _between_in_plane_needles(cen, None, -np.inf, needles, kdir)
        if pair is None:
            continue
        if ones:
            ref = float(np.percentile([o["peak"] for o in ones], 90))
        else:   # the steel of the two needles (as _between_in_plane_needles names them)
            ref = min((float(getattr(nd, "peak_hu", np.nan)) for q, nd in enumerate(needles)
                       if (getattr(nd, "name", None) or q + 1) in pair), default=np.nan)
        if not math.isfinite(ref):
            continue
        level = background + KNOT_SEED_FRACTION * (ref - background)
        bright = ctc[tuple(c["kji"].T)] >= level
        if not bright.any():
            continue
        lo = c["kji"].min(axis=0)
        box = np.zeros(tuple(c["kji"].max(axis=0) - lo + 1), dtype=bool)
        box[tuple((c["kji"][bright] - lo).T)] = True
        lab, ncore = ndimage.label(box, structure=np.ones((3, 3, 3)))
        cores = np.zeros(ncore + 1, dtype=bool)
        for q, sl in enumerate(ndimage.find_objects(lab), start=1):
            ext = (np.array([s.stop - s.start for s in sl]) - 1) * sp
            cores[q] = float(np.linalg.norm(ext)) <= 1.5 * seed_length_mm
        if not cores.any():
            continue
        box = cores[lab]
        d_mm = ndimage.distance_transform_edt(~box, sampling=sp)
        keep = d_mm[tuple((c["kji"] - lo).T)] <= 0.5 * seed_length_mm
        c["centroid_row"] = _centroid_ras(c, geometry, off)
        c["kji"], c["w"] = c["kji"][keep], c["w"][keep]
        c["n"] = int(cores.sum())
        c["ratio"] = float(c["n"])
        c.pop("reject", None)
        taken.append(c)
    return taken


def _seed_cores_only(c, ctc, geometry, level, core_vox, seed_length_mm):
    """An object between two in-plane needles holding seed-bright voxels (``>= level``) and counted as
    several seeds by its metal: the band's metal is no seed. Its seeds are its cores: as many as the
    bright voxels hold single seeds' cores (``core_vox`` voxels each, at least one per connected core),
    split from its voxels within half a capsule of a core (module doc, step 6b)."""
    from scipy import ndimage
    vals = ctc[tuple(c["kji"].T)]
    bright = vals >= level
    lo = c["kji"].min(axis=0)
    box = np.zeros(tuple(c["kji"].max(axis=0) - lo + 1), dtype=bool)
    box[tuple((c["kji"][bright] - lo).T)] = True
    lab, ncore = ndimage.label(box, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(lab[tuple((c["kji"][bright] - lo).T)], minlength=ncore + 1)[1:]
    n = int(sum(max(1, int(round(s / core_vox))) for s in sizes))
    if not 1 <= n < c["n"]:
        return
    sp = np.asarray(geometry.spacing, float)[::-1]
    reach = int(math.ceil(0.5 * seed_length_mm / float(sp.min())))
    near = ndimage.binary_dilation(box, structure=np.ones((3, 3, 3)), iterations=reach)
    d_mm = ndimage.distance_transform_edt(~box, sampling=sp)
    keep = near[tuple((c["kji"] - lo).T)] & (d_mm[tuple((c["kji"] - lo).T)] <= 0.5 * seed_length_mm)
    c["kji"], c["w"] = c["kji"][keep], c["w"][keep]
    c["n"], c["ratio"] = n, float(n)


def _beside_in_plane_needles(ct_read, roic, geometry, off, needles, background, seed_length_mm, seed_diameter_mm,
                             seeds):
    """Module doc, step 10: seeds beside in-plane needles from the bulge of the needle's bright footprint
    (:func:`seed_beside.find_beside_seeds`, on the CT as read). A seed found there by its metal (what the
    needle's subtraction left of it, pushed outward) takes the bulge's pose; one not found is added."""
    pos, axes, conf, cid, nin, cms = seeds
    metal_max = float(ct_read[roic].max())
    found = find_beside_seeds(ct_read, geometry, off, needles, background, metal_max, seed_length_mm, seed_diameter_mm)
    for b in found:
        p = b["position"]
        if not roic[tuple(np.clip(np.round(geometry.ras_to_ijk(p[None])[0][::-1] - off).astype(int), 0,
                                  np.asarray(roic.shape) - 1))]:
            continue
        d, ev, _ = needle_frame(needles[b["needle"]], geometry)
        rel = pos - p
        # the same seed found by its metal: within half a capsule along the needle, on the same side,
        # at most 3 mm further out (the subtraction eats the seed's inner half: what is left, its outer
        # half and halo, sits 1-2.6 mm outward on the held-out in-plane layouts)
        side = float(np.sign((p - needles[b["needle"]].tip) @ ev))
        same = (np.abs(rel @ d) <= seed_length_mm / 2.0) & (side * (rel @ ev) > -1.0) & (side * (rel @ ev) <= 3.0) \
            & (np.linalg.norm(rel, axis=1) <= seed_length_mm / 2.0 + 1.0)
        cf = 0.85 * min(1.0, b["bulge_mm"] / seed_diameter_mm)
        ax = b["axis"] if b["axis"][2] >= 0 else -b["axis"]
        if same.any():
            j = int(np.flatnonzero(same)[np.argmin(np.linalg.norm(rel[same], axis=1))])
            pos[j], axes[j] = p, ax
            conf[j] = max(conf[j], cf)
            continue
        pos = np.vstack([pos, p[None]])
        axes = np.vstack([axes, ax[None]])
        conf = np.append(conf, cf)
        cid = np.append(cid, int(cid.max(initial=0)) + 1)
        nin = np.append(nin, 1)
        cms = np.append(cms, np.nan)
    return pos, axes, conf, cid, nin, cms


def _poses(kept, ctc, geometry: ImageGeometry, off, box_cov, unit, voxel_mm3, seed_length_mm, seed_diameter_mm,
           progress=None):
    """Split each kept component into its seeds and pose them (module doc, steps 7-9).

    Returns arrays: positions (N, 3), axes (N, 3), confidence, cluster id, seeds in cluster,
    cluster metal in seeds.
    """
    sp = np.asarray(geometry.spacing, float)
    half = max(seed_length_mm / 2.0 - seed_diameter_mm / 2.0, 0.1)
    for c in kept:
        c["pts"] = geometry.ijk_to_ras((c["kji"] + off)[:, ::-1].astype(float))
    # width of one seed's image (mm^2), learnt from the single seeds of this CT
    widths = []
    for c in kept:
        if c["n"] == 1 and abs(c["ratio"] - 1.0) < 0.25:
            p, a, _ = weighted_pose(c["pts"], c["w"], box_cov)
            widths.append(float(np.sum(c["w"] * seg_dist2(c["pts"], p, a, half)) / c["w"].sum()) / 2.0)
    s2 = float(np.median(widths)) if len(widths) >= 3 else 0.25 + float(np.mean(sp ** 2)) / 12.0
    pos, axes, conf, cid, nin, cms, elong = [], [], [], [], [], [], []
    for q, c in enumerate(kept):
        pts, w, n = c["pts"], c["w"], c["n"]
        centers, axs, resp = split_cluster(pts, w, n, half, box_cov, s2)
        while n > c["ratio"] and capsules_overlap(centers, axs, half, seed_diameter_mm):
            # two solid capsules cannot share their space: a count rounded up that puts one seed
            # inside another is one seed too many (a pair across the slices reads more metal than
            # seeds in the slice plane, whose metal the streaks along them eat)
            n -= 1
            centers, axs, resp = split_cluster(pts, w, n, half, box_cov, s2)
        if 1 < n and n > c["ratio"] and _split_across_streaks(ctc, geometry, off, pts, w, axs, seed_length_mm):
            # the seeds of the split lie across the direction the dark streaks show the metal is
            # longest in: the bloom of one seed (its bright cross-streaks add metal) split in halves
            n -= 1
            centers, axs, resp = split_cluster(pts, w, n, half, box_cov, s2)
        for s in range(len(centers)):
            ws = w * resp[:, s]
            if ws.sum() <= 0:
                continue
            r = float(ws.sum() * voxel_mm3 / unit)
            cf = math.exp(-0.5 * ((r - 1.0) / 0.3) ** 2) * (1.0 if n == 1 else 0.85)
            axis = axs[s]
            if n == 1:
                cen, axis, ev = weighted_pose(pts, ws, box_cov)
                elong.append(float(ev[0] / max(ev[1], 1e-9)))
                if elong[-1] < STREAK_TRUST_ELONGATION:
                    # a round image (a blooming marker in one slice): the dark streaks give the axis
                    e, aniso = streak_direction(ctc, geometry, off, cen, seed_length_mm)
                    if e is not None and aniso >= STREAK_MIN_ANISOTROPY:
                        d = pts - cen
                        cov = (ws[:, None, None] * (d[:, :, None] * d[:, None, :])).sum(axis=0) / ws.sum() - box_cov
                        axis = axis_in_streak_plane(cov, e, geometry.direction_matrix[:, 2])
                        elong[-1] = np.inf   # the track rule is not needed
            else:
                elong.append(np.inf)   # split seeds: the segment fit fixes their axes
            pos.append(centers[s])
            axes.append(axis)
            conf.append(cf)
            cid.append(c["id"])
            nin.append(n)
            cms.append(c["ratio"])
        if q % 20 == 0:
            _progress.report(progress, 0.5 + 0.5 * q / len(kept), f"seed finder: pose {q + 1} of {len(kept)}")
    pos = np.array(pos).reshape(-1, 3)
    axes = track_axes(pos, np.array(axes).reshape(-1, 3), np.array(elong), seed_length_mm)
    return pos, axes, np.array(conf), np.array(cid, dtype=int), np.array(nin, dtype=int), np.array(cms)


def _split_across_streaks(ctc, geometry, off, pts, w, axes, seed_length_mm, min_angle_deg=45.0):
    """True when every seed of a split lies across the in-plane direction of the dark streaks around
    the cluster (:func:`seed_pose.streak_direction`): rays along a seed starve and leave dark bands
    along its axis, so seeds split across that direction are halves of one seed's image. Seeds
    mostly out of the slice plane (the streaks cannot show them) never count as across."""
    cen = (w[:, None] * pts).sum(axis=0) / w.sum()
    e, aniso = streak_direction(ctc, geometry, off, cen, seed_length_mm)
    if e is None or aniso < STREAK_MIN_ANISOTROPY:
        return False
    normal = geometry.direction_matrix[:, 2]
    for a in axes:
        inplane = a - (a @ normal) * normal
        if np.linalg.norm(inplane) < 0.7:
            return False
        if abs(float(inplane @ e)) / np.linalg.norm(inplane) > math.cos(math.radians(min_angle_deg)):
            return False
    return True


def naive_find_seeds(ct_hu, geometry: ImageGeometry, threshold_hu=1500.0):
    """Reference method for benchmarks: fixed threshold, one seed per component, plain centroid."""
    from scipy import ndimage
    ct = np.asarray(ct_hu)
    lab, n = ndimage.label(ct > threshold_hu, structure=np.ones((3, 3, 3)))
    if n == 0:
        return np.zeros((0, 3))
    cen = np.array(ndimage.center_of_mass(np.ones_like(ct, dtype=np.float32), lab, np.arange(1, n + 1)))
    return geometry.ijk_to_ras(cen[:, ::-1])
