"""Metal components for the seed finder: body and bone masks, metal content, one seed's content,
seeds per component.

Helpers of :func:`imaging.seedfinder.find_seeds` (its module doc describes the method). A
component is a dict: ``id``, ``kji`` (voxels of the component grown by one, crop indices), ``w``
(their HU above the local background), ``content`` (HU * mm^3), ``peak`` (HU), ``n_vox``, ``bg``
(local background HU), ``bone``; the rules add ``reject`` (a reason), ``near_needle``, ``ratio``
(content in seeds) and ``n`` (seeds in it).
"""

from __future__ import annotations

import math

import numpy as np

from .seed_needles import NEAR_NEEDLE_MIN_FRACTION, NEAR_NEEDLE_MM, surface_distance
from .seed_pose import weighted_pose

#: Components with less than this fraction of one seed's metal content are rejected.
MIN_UNIT_FRACTION = 0.4
#: A component below MIN_UNIT_FRACTION of a seed away from needles, end to end with a seed in the slice
#: plane, is measured again over its column (:func:`measure_columns`) and kept when that reaches
#: MIN_UNIT_FRACTION. The column / grown content ratio that puts it on the unit's scale is learnt from
#: at least this many single seeds of the CT (else 1).
COLUMN_MIN_SINGLES = 3
#: End to end with a seed in the slice plane: the line joining their centres within this angle (deg)
#: of the plane, and their centres within a capsule + CHAIN_GAP_MM (mm), or the faint object's centre
#: within half a capsule + CHAIN_GAP_MM of the seed's nearest voxel.
CHAIN_MAX_TILT_DEG = 30.0
CHAIN_GAP_MM = 1.5
#: Seeds end to end hold at most one seed's metal per capsule length; a thin rod longer than two
#: capsules holding more than this many per capsule length (30 % above, for the content's spread)
#: is steel.
ROD_MAX_SEEDS_PER_LENGTH = 1.3
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
#: Blur variance (mm^2) removed from a component's length variance when comparing it with the
#: capsule (a nominal 0.45 mm sigma scanner blur, as in the needle finder).
PSF_VAR_MM2 = 0.2


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


def component_stats(ct, lab, sl, index, bg_default):
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


def measure_components(ctc, lab, ncomp, background, bone, voxel_mm3, progress=None):
    """Metal content, peak and local background of every labelled component (list of dicts)."""
    from scipy import ndimage
    from ..core import progress as _progress
    objs = ndimage.find_objects(lab)
    comps = []
    shape = np.asarray(lab.shape)
    for idx, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        pad = 3
        big = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, int(n))) for s, n in zip(sl, shape))
        own, grown, vals, bg = component_stats(ctc, lab, big, idx, background)
        excess = np.clip(vals - bg, 0.0, None)
        content = float(excess[grown].sum() * voxel_mm3)
        kji = np.argwhere(grown) + np.array([s.start for s in big])
        comps.append({"id": idx, "kji": kji, "w": excess[grown].astype(float), "content": content,
                      "peak": float(vals[own].max()), "n_vox": int(own.sum()), "bg": bg,
                      "bone": bool(np.any(bone[big][own]))})
        if idx % 50 == 0:
            _progress.report(progress, 0.2 + 0.3 * idx / ncomp, f"seed finder: component {idx} of {ncomp}")
    return comps


def unit_content(comps, needles, geometry, offset_kji, box_cov, seed_length_mm, seed_diameter_mm):
    """Metal content of one seed (HU * mm^3), from the components shaped like one capsule.

    Seed-like components (no ``reject``) away from needles whose metal-weighted length along
    their principal axis is 0.45-1.3 capsule lengths (a dense marker inside the capsule, model
    6711's 3 mm silver rod, carries most of the weight) and whose width is at most the capsule
    radius + 0.9 mm; capsule-shaped fragments below 35 % of the 90th percentile are dropped. The
    seed size is the model's, never learnt from needles or chains. Without any such component
    (a cluster-only CT) the 20th percentile of the non-trivial components away from needles (most
    components of an implant are single seeds; those beside a needle count only when no other is
    left). Refined twice by the median of the components within 25-30 % of it.
    Sets ``near_needle`` on every seed-like component.
    """
    seedlike = [c for c in comps if "reject" not in c]
    contents = np.array([c["content"] for c in seedlike]) if seedlike else np.array([1.0])
    singles = []
    for c in seedlike:
        pts = geometry.ijk_to_ras((c["kji"] + offset_kji)[:, ::-1].astype(float))
        cen, _, ev = weighted_pose(pts, c["w"] + 1e-6, box_cov)
        c["near_needle"] = bool(len(needles)) and surface_distance(cen, needles) <= NEAR_NEEDLE_MM
        if c["near_needle"]:   # what is left beside a needle never sizes a seed
            continue
        length = math.sqrt(12.0 * max(ev[0] - PSF_VAR_MM2, 0.0))
        width = math.sqrt(max(ev[1], 0.0))
        if 0.45 * seed_length_mm <= length <= 1.3 * seed_length_mm and width <= 0.5 * seed_diameter_mm + 0.9:
            singles.append(c["content"])
    singles = np.asarray(singles)
    if len(singles):
        # a capsule-shaped fragment of streak or needle residue has far less metal than a seed
        singles = singles[singles >= 0.35 * float(np.percentile(singles, 90))]
    if len(singles) >= 1:
        unit = float(np.median(singles))
    else:
        # (what is left beside a needle never sizes a seed here either: streak specks and steel
        # residue along in-plane needles are many and small, and set the unit a tenth of a seed)
        away = np.array([c["content"] for c in seedlike if not c["near_needle"]])
        pool = away if len(away) else contents
        valid = pool[pool > 0.3 * float(np.median(pool))]
        unit = float(np.percentile(valid, 20))
    for lo, hi in ((0.7, 1.3), (0.75, 1.25)):
        near = contents[(contents > lo * unit) & (contents < hi * unit)]
        if len(near):
            unit = float(np.median(near))
    return unit


def count_seeds(comps, unit, geometry, offset_kji, max_per_cluster=MAX_PER_CLUSTER, box_cov=None,
                seed_length_mm=4.5, seed_diameter_mm=0.8):
    """Seeds per component ``n = round(content / unit)``; returns ``(kept components, rejected rows)``.

    Rejected (with a reason): components marked ``reject``; below ``MIN_UNIT_FRACTION`` of a seed
    (``NEAR_NEEDLE_MIN_FRACTION`` beside a needle); a rod of metal denser than seeds can be
    (:func:`_rod_of_metal`); more than ``max_per_cluster`` seeds.
    """
    kept, rejected = [], []
    for c in comps:
        ratio = c["content"] / unit
        centroid_ijk = (c["kji"][:, ::-1].astype(float) + np.asarray(offset_kji)[::-1]).mean(axis=0)
        where = np.round(geometry.ijk_to_ras(centroid_ijk), 1).tolist()
        if "reject" in c:
            rejected.append({"position_mm": where, "reason": c["reject"], "seeds_equivalent": round(ratio, 2)})
            continue
        if ratio < (NEAR_NEEDLE_MIN_FRACTION if c.get("near_needle") else MIN_UNIT_FRACTION):
            col = c.get("column_seeds")
            if col is None or col < MIN_UNIT_FRACTION:
                over = "" if col is None else f"; {col:.2f} seed over the slices its image spans"
                rejected.append({"position_mm": where, "reason": f"too little metal for a seed (noise or artefact{over})",
                                 "seeds_equivalent": round(ratio, 2)})
                continue
            # its metal is split between slices: measured over its column, as the thin slices hold it
            c["kji"], c["w"], c["content"] = c["column_kji"], c["column_w"], col * unit
            ratio = col
        rod = _rod_of_metal(c, ratio, geometry, offset_kji, box_cov, seed_length_mm, seed_diameter_mm)
        if rod:
            rejected.append({"position_mm": where, "reason": rod, "seeds_equivalent": round(ratio, 2)})
            continue
        n = max(1, int(round(ratio)))
        if n > max_per_cluster:
            rejected.append({"position_mm": where, "reason": f"too large for a seed cluster ({ratio:.1f} seeds of "
                             f"metal, > {max_per_cluster}): bone, needle, clip or contrast?", "seeds_equivalent": round(ratio, 2)})
            continue
        c["ratio"], c["n"] = ratio, n
        kept.append(c)
    return kept, rejected


def column_content(ctc, lab, c, voxel_mm3, others_margin=2):
    """Metal content (HU * mm^3) of component ``c`` over its column, with the column's voxels.

    A thick slice is the mean of the thin slices it spans (the scanner's detector rows), so an
    object's metal, ``sum(HU - background) * voxel volume``, is conserved over the slices its image
    reaches, not within one of them. A seed straddling two thick slices puts about half of its metal
    in each: neither half may reach the threshold, and the component (threshold + one voxel) holds
    little more than the brighter half. The column is the component's in-plane footprint (its grown
    voxels, one more pixel around them) through every slice from one below its lowest voxel to one
    above its highest, without the voxels within ``others_margin`` voxels of another component; its
    content is the sum of ``HU - c["bg"]`` there, deficits included (dark streaks count against it).
    Returns ``(content, kji [n, 3], excess weights [n] clipped at zero)``; indices as ``c["kji"]``.
    """
    from scipy import ndimage
    kji = np.asarray(c["kji"])
    k0, k1 = max(int(kji[:, 0].min()) - 1, 0), min(int(kji[:, 0].max()) + 1, ctc.shape[0] - 1)
    pad = others_margin + 1
    j0, j1 = max(int(kji[:, 1].min()) - pad, 0), min(int(kji[:, 1].max()) + pad, ctc.shape[1] - 1)
    i0, i1 = max(int(kji[:, 2].min()) - pad, 0), min(int(kji[:, 2].max()) + pad, ctc.shape[2] - 1)
    kb0, kb1 = max(k0 - others_margin, 0), min(k1 + others_margin, ctc.shape[0] - 1)
    sub = lab[kb0:kb1 + 1, j0:j1 + 1, i0:i1 + 1]
    others = (sub > 0) & (sub != c["id"])
    if others.any():
        others = ndimage.binary_dilation(others, structure=np.ones((3, 3, 3), bool), iterations=others_margin)
    others = others[k0 - kb0:k1 - kb0 + 1]
    foot = np.zeros((j1 - j0 + 1, i1 - i0 + 1), bool)
    foot[kji[:, 1] - j0, kji[:, 2] - i0] = True
    foot = ndimage.binary_dilation(foot, structure=np.ones((3, 3), bool))
    col = foot[None] & ~others
    vals = ctc[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1][col].astype(float) - float(c["bg"])
    idx = np.argwhere(col) + np.array([k0, j0, i0])
    return float(vals.sum() * voxel_mm3), idx, np.clip(vals, 0.0, None)


def measure_columns(comps, ctc, lab, unit, voxel_mm3, geometry, offset_kji, seed_length_mm=4.5,
                    min_fraction=MIN_UNIT_FRACTION):
    """Column content (:func:`column_content`) in seeds of the faint components that lie end to end
    with a seed in the slice plane; returns the scale (below).

    Measured on the components too faint for a seed by their grown content (below ``min_fraction``,
    away from needles, not rejected) next to a seed (``min_fraction`` or more of a seed's metal;
    ``NEAR_NEEDLE_MIN_FRACTION`` beside a needle, as :func:`count_seeds` counts seeds) in the slice
    plane: the line joining their metal-weighted centres within ``CHAIN_MAX_TILT_DEG`` of the plane,
    and end to end: centres within a capsule + ``CHAIN_GAP_MM``, or the faint centre within
    half a capsule + ``CHAIN_GAP_MM`` of the seed's nearest voxel. That is where a seed loses its
    image to both effects at once: rays along metal lying in the slice plane pass through all of it
    and starve (the dark band they leave along the line eats a share of each object's metal: 0.65-0.7
    of a seed left for the inner seeds of the benchmark's post-implant chain at 3 mm), and a seed
    straddling two slices leaves each of them only half of its metal, on that band (0.25 seed by its
    grown content, 0.47 over its column). Elsewhere a faint component has no such cause, and a
    calcification of 300-900 HU can hold half a seed's HU * mm^3 over its column (measured on
    held-out CTs: one of 2.4 mm radius, 850 HU, 0.84 seed). The content is put on the unit's scale
    by the median column / grown content of this CT's single seeds (components of 0.75-1.25 seeds
    away from needles; 1 with fewer than ``COLUMN_MIN_SINGLES``; 0.95-1.04 on the benchmark's
    post-implant CTs). Sets ``column_seeds``, ``column_kji``, ``column_w`` on those components.
    """
    faint = [c for c in comps if "reject" not in c and not c.get("near_needle") and 0 < c["content"] / unit < min_fraction]
    if not faint:
        return 1.0
    normal = geometry.direction_matrix[:, 2]
    sin_tilt = math.sin(math.radians(CHAIN_MAX_TILT_DEG))
    seeds = []
    for c in comps:
        # a seed by the counting rule (count_seeds): beside a needle NEAR_NEEDLE_MIN_FRACTION
        if "reject" not in c and c["content"] / unit >= (NEAR_NEEDLE_MIN_FRACTION if c.get("near_needle") else min_fraction):
            pts = geometry.ijk_to_ras((c["kji"] + offset_kji)[:, ::-1].astype(float))
            seeds.append((pts, (c["w"][:, None] * pts).sum(axis=0) / max(float(c["w"].sum()), 1e-9)))
    chained = []
    for c in faint:
        pts = geometry.ijk_to_ras((c["kji"] + offset_kji)[:, ::-1].astype(float))
        p = (c["w"][:, None] * pts).sum(axis=0) / max(float(c["w"].sum()), 1e-9)
        for spts, cen in seeds:
            d = p - cen
            dist = float(np.linalg.norm(d))
            if dist > 0 and abs(float(d @ normal)) <= sin_tilt * dist and (
                    dist <= seed_length_mm + CHAIN_GAP_MM
                    or float(np.min(np.linalg.norm(spts - p, axis=1))) <= 0.5 * seed_length_mm + CHAIN_GAP_MM):
                chained.append(c)
                break
    if not chained:
        return 1.0
    ratios = [column_content(ctc, lab, c, voxel_mm3)[0] / c["content"] for c in comps
              if "reject" not in c and not c.get("near_needle") and 0.75 <= c["content"] / unit <= 1.25]
    scale = float(np.median(ratios)) if len(ratios) >= COLUMN_MIN_SINGLES else 1.0
    scale = scale if scale > 0 else 1.0
    for c in chained:
        content, kji, w = column_content(ctc, lab, c, voxel_mm3)
        c["column_seeds"], c["column_kji"], c["column_w"] = content / scale / unit, kji, w
    return scale


def _rod_of_metal(c, ratio, geometry, offset_kji, box_cov, seed_length_mm, seed_diameter_mm):
    """A reason when the component is a thin rod holding more metal per mm than seeds can: else ``None``.

    Seeds are solid capsules: in a thin object (one capsule across: width at most the capsule radius
    + 0.9 mm, as for one seed in :func:`unit_content`) longer than two capsules they lie end to end,
    one seed's metal per capsule length at most. A rod holding more than ``ROD_MAX_SEEDS_PER_LENGTH``
    seeds per capsule length is steel: a needle the needle search missed, or a wire.
    """
    if box_cov is None:
        return None
    pts = geometry.ijk_to_ras((c["kji"] + offset_kji)[:, ::-1].astype(float))
    _, _, ev = weighted_pose(pts, c["w"] + 1e-6, box_cov)
    length = math.sqrt(12.0 * max(ev[0] - PSF_VAR_MM2, 0.0))
    width = math.sqrt(max(ev[1], 0.0))
    if length <= 2.0 * seed_length_mm or width > 0.5 * seed_diameter_mm + 0.9:
        return None
    per_capsule = ratio * seed_length_mm / length
    if per_capsule <= ROD_MAX_SEEDS_PER_LENGTH:
        return None
    return (f"rod of metal: {ratio:.1f} seeds of metal over {length:.0f} mm, {per_capsule:.1f} per capsule length "
            "(seeds end to end hold at most one): a needle or a wire, not seeds")


def resolve_expected(kept, expected_count, max_per_cluster=MAX_PER_CLUSTER):
    """Move ambiguous components (content within ``AMBIGUITY`` of a half seed) towards ``expected_count``."""
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
