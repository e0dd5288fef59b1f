"""Rigid registration of a new CT (intra-operative or post-implant) to the planning CT.

Between the planning CT and a CT taken with needles or seeds in place the patient moves: a few mm
and a few degrees on the same table, more after re-positioning. Needle deviations and the re-plan
are only meaningful in the planning CT's frame, so the new CT is registered rigidly to the planning
CT on anatomy that does not move with the implant (bone, body outline), with the metal left out:

1. **Coarse images**: both CTs are block-averaged (``BinShrink``, an anti-aliasing mean) to about
   ``grid_mm`` (2.5 mm) per axis; a 512 x 512 x 200 CT becomes about 170 x 170 x 80 voxels.
2. **Metric masks** (fixed and moving): the body (HU > ``body_hu``, the largest component, holes
   filled slice by slice) grown by ``skin_margin_mm`` so the skin edge counts, minus every voxel
   within ``metal_margin_mm`` (10 mm) of metal (HU > ``metal_hu`` on the full-resolution CT: steel
   needles and seed capsules saturate there, bone does not exceed about 1900 HU). The margin
   covers the metal's blooming and the strongest part of its streaks; far streak tails are tens of
   HU and do not drive a metric dominated by bone and the skin edge. Intensities are clipped to
   ``[-1000, clip_hu]`` so the metal left outside the mask cannot stretch the histogram.
3. **Initialisation** (``init``): ``"moments"`` (default) moves the centre of mass of the moving
   body onto the fixed one, both computed over the stretch along the scanner axis that both CTs
   cover (a short intra-operative scan of a long planning CT keeps a correct start);
   ``"geometry"`` aligns the image centres; ``"identity"`` trusts the scanner coordinates.
4. **Optimisation**: Mattes mutual information (Mattes et al., IEEE TMI 22:120, 2003; 32 bins,
   about ``max_samples`` (40 000) masked voxels per level drawn at random with a fixed seed, so runs
   repeat exactly) or
   ``metric="bone"``: the same metric on the bone window ``clip(HU - 150, 0, 1000)``, which ignores
   soft-tissue changes (bladder filling, bowel gas, oedema, the body outline) entirely. Regular-step gradient descent with
   scales from physical shifts, three levels (shrink 4, 2, 1; smoothing 2, 1, 0 voxels).
   6 degrees of freedom (Euler angles about the body centre), or translation only.
5. **Quality**: the moving CT is resampled onto the fixed coarse grid; bone masks (HU >
   ``bone_hu``, outside the metal zones, where both CTs have data) give the Dice coefficient after
   and before the registration; the body masks give a second Dice. The registration is refused
   (:class:`RegistrationError`) when the CTs do not overlap, when the result is beyond
   ``max_rotation_deg`` / ``max_shift_mm`` (diverged), or when the bone Dice is below
   ``min_bone_dice`` (the body Dice below ``min_body_dice`` when there is no bone: a warning says
   the outline alone leaves the rotation about the body's long axis weakly determined).

Convention (docs/registration.md): the result's ``matrix_ras`` is the 4 x 4 **planning-CT-from-new-CT**
transform in RAS mm, the project's frame (core/geometry.py): ``p_planning = M @ [p_new, 1]``.
ITK's registration gives the other direction in LPS (fixed point -> moving point, what resampling
needs); that is what the ``.tfm`` file holds, which is exactly what 3D Slicer expects of a linear
transform file: loaded into Slicer and applied to the new CT, it puts the new CT onto the planning
CT (a Slicer linear transform node's transform-to-parent is ``matrix_ras``; mrml/intraop_registration.py,
tested point by point with Slicer's transform storage node). :meth:`RegistrationResult.moved_geometry` re-labels the new CT's voxel grid in the planning
frame without resampling (a rigid transform of a grid is a grid): the needle and seed finders then
run on the native voxels and report positions in the planning frame directly.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import progress as _progress
from ..core.errors import CancelledError, GeometryError, InputError
from ..core.geometry import ImageGeometry

#: 4 x 4 RAS <-> LPS flip (its own inverse).
FLIP4 = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Defaults for CT (HU, mm, degrees).
GRID_MM = 2.5
METAL_HU = 2500.0
METAL_MARGIN_MM = 10.0
BODY_HU = -400.0
BONE_HU = 200.0
CLIP_HU = 1500.0
SKIN_MARGIN_MM = 6.0
MIN_BONE_DICE = 0.5
MIN_BODY_DICE = 0.85
MIN_BONE_CC = 5.0
MIN_OVERLAP = 0.2
MAX_ROTATION_DEG = 30.0
MAX_SHIFT_MM = 150.0
MAX_SAMPLES = 20000
SHRINK = (4, 2, 1)
SMOOTH = (2.0, 1.0, 0.0)
JSON_FORMAT = "seedplan-rigid-transform"
JSON_VERSION = 1


class RegistrationError(GeometryError):
    """The registration failed or its inputs cannot be registered (no overlap, no body, diverged)."""


def _sitk():
    import SimpleITK as sitk
    return sitk


# --- the result -----------------------------------------------------------------------------------

def rotation_angles_deg(R):
    """Angles (deg) about the RAS x, y, z axes of the rotation ``R`` = Rz @ Ry @ Rx (x applied first)."""
    R = np.asarray(R, float)
    ry = math.asin(max(-1.0, min(1.0, -R[2, 0])))
    if abs(math.cos(ry)) > 1e-9:
        rx = math.atan2(R[2, 1], R[2, 2])
        rz = math.atan2(R[1, 0], R[0, 0])
    else:                                   # gimbal lock: put everything in x
        rx = math.atan2(-R[1, 2], R[1, 1])
        rz = 0.0
    return np.degrees([rx, ry, rz])


def rotation_angle_deg(R):
    """Total rotation angle (deg) of ``R`` (angle of its axis-angle form)."""
    c = (np.trace(np.asarray(R, float)) - 1.0) / 2.0
    return float(np.degrees(math.acos(max(-1.0, min(1.0, c)))))


@dataclass
class RegistrationResult:
    """A rigid planning-CT-from-new-CT transform with its quality.

    ``matrix_ras``: 4 x 4, ``p_planning_ras = matrix_ras @ [p_new_ras, 1]`` (mm).
    ``quality``: ``bone_dice`` / ``bone_dice_before`` (after / at the scanner coordinates),
    ``body_dice``, ``overlap_fraction`` (of the planning body covered by the new CT), ``bone_cc``.
    """

    matrix_ras: np.ndarray
    translation_only: bool = False
    metric: str = "mattes"
    metric_value: float = float("nan")
    initial_metric_value: float = float("nan")
    quality: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    iterations: int = 0
    stop_condition: str = ""
    seconds: float = 0.0
    centre_ras: tuple = (0.0, 0.0, 0.0)

    def __post_init__(self):
        m = np.asarray(self.matrix_ras, float)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise InputError("rigid transform: expected a finite 4 x 4 matrix")
        R = m[:3, :3]
        if not np.allclose(R.T @ R, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0 or not np.allclose(m[3], [0, 0, 0, 1]):
            raise InputError("rigid transform: the 4 x 4 matrix is not a rotation plus translation")
        self.matrix_ras = m

    @property
    def rotation(self):
        """3 x 3 rotation (RAS)."""
        return self.matrix_ras[:3, :3]

    @property
    def translation_mm(self):
        """Translation part of ``matrix_ras`` (RAS mm): where the new CT's RAS origin goes."""
        return self.matrix_ras[:3, 3].copy()

    @property
    def rotation_deg(self):
        """Angles (deg) about the RAS x (R-L), y (A-P), z (S-I) axes, x applied first."""
        return rotation_angles_deg(self.rotation)

    @property
    def rotation_angle_deg(self):
        """Total rotation angle (deg)."""
        return rotation_angle_deg(self.rotation)

    @property
    def patient_shift_mm(self):
        """How far the patient moved at the planning body's centre: its place in the new CT minus its place
        in the planning CT (RAS mm; the inverse transform applied to the centre)."""
        c = np.asarray(self.centre_ras, float)
        inv = np.linalg.inv(self.matrix_ras)
        return inv[:3, :3] @ c + inv[:3, 3] - c

    @property
    def inverse_matrix_ras(self):
        """New-CT-from-planning-CT (RAS)."""
        return np.linalg.inv(self.matrix_ras)

    def map_points(self, points_ras):
        """Points (..., 3) in the new CT's RAS frame -> planning frame."""
        p = np.asarray(points_ras, float)
        return p @ self.rotation.T + self.matrix_ras[:3, 3]

    def map_directions(self, directions):
        """Directions / axes (..., 3) in the new CT's frame -> planning frame (rotation only)."""
        return np.asarray(directions, float) @ self.rotation.T

    def moved_geometry(self, geometry: ImageGeometry) -> ImageGeometry:
        """The new CT's grid as it lies in the planning frame (no resampling: origin and directions move)."""
        origin = self.map_points(np.asarray(geometry.origin))
        direction = self.rotation @ geometry.direction_matrix
        u, _, vt = np.linalg.svd(direction)                 # re-orthonormalise rounding
        return ImageGeometry(geometry.size, geometry.spacing, tuple(origin), tuple(map(tuple, u @ vt)))

    def itk_transform(self):
        """SimpleITK AffineTransform in LPS mapping planning-CT points to new-CT points (for resampling)."""
        sitk = _sitk()
        m = FLIP4 @ self.inverse_matrix_ras @ FLIP4
        tx = sitk.AffineTransform(3)
        tx.SetMatrix(tuple(float(v) for v in m[:3, :3].ravel()))
        tx.SetTranslation(tuple(float(v) for v in m[:3, 3]))
        return tx

    def summary_line(self):
        """One line: translation, rotation, quality."""
        t = self.patient_shift_mm
        r = self.rotation_deg
        q = self.quality
        parts = [f"patient moved R {t[0]:+.1f} A {t[1]:+.1f} S {t[2]:+.1f} mm ({np.linalg.norm(t):.1f} mm) at the "
                 f"body centre and turned {self.rotation_angle_deg:.2f} deg (planning-from-new rotation about "
                 f"R {r[0]:+.2f} A {r[1]:+.2f} S {r[2]:+.2f} deg)"]
        if q.get("bone_dice") is not None:
            parts.append(f"bone Dice {q['bone_dice']:.2f} (before {q.get('bone_dice_before', float('nan')):.2f})")
        if q.get("body_dice") is not None:
            parts.append(f"body Dice {q['body_dice']:.2f}")
        line = "registration: " + ", ".join(parts)
        if self.warnings:
            line += "; warning: " + "; ".join(self.warnings)
        return line

    def report(self, where="body centre"):
        """What a panel shows (the module's Intra-op panel, the web page): a dict with ``shift_mm`` (R, A, S:
        how far the patient moved at ``centre_ras``, called ``where``), ``shift_norm_mm``, ``rotation_deg`` (about
        R, A, S), ``rotation_angle_deg``, ``bone_dice_before`` / ``bone_dice`` / ``body_dice_before`` /
        ``body_dice`` (None when not measured), ``checked`` (the quality check ran and passed: a registration
        made here; False for a transform read from a file), ``verdict``, ``warnings`` and ``lines`` (text)."""
        q = self.quality

        def num(key):
            v = q.get(key)
            return None if v is None or not math.isfinite(float(v)) else round(float(v), 3)
        shift = [round(float(v), 2) for v in self.patient_shift_mm]
        rot = [round(float(v), 3) for v in self.rotation_deg]
        out = {"shift_mm": shift, "shift_norm_mm": round(float(np.linalg.norm(self.patient_shift_mm)), 2),
               "rotation_deg": rot, "rotation_angle_deg": round(self.rotation_angle_deg, 3),
               "bone_dice_before": num("bone_dice_before"), "bone_dice": num("bone_dice"),
               "body_dice_before": num("body_dice_before"), "body_dice": num("body_dice"),
               "translation_only": bool(self.translation_only), "warnings": list(self.warnings)}
        out["checked"] = out["bone_dice"] is not None or out["body_dice"] is not None
        if out["checked"]:
            out["verdict"] = ("accepted with warnings" if self.warnings else "accepted") + \
                f": bone Dice {out['bone_dice']:.2f} >= {MIN_BONE_DICE:g} (or body Dice >= {MIN_BODY_DICE:g} without bone)"
        else:
            out["verdict"] = "read from a file: no quality check here (check the fusion of the two CTs by eye)"
        s = out["shift_mm"]
        lines = [f"patient moved R {s[0]:+.1f} A {s[1]:+.1f} S {s[2]:+.1f} mm ({out['shift_norm_mm']:.1f} mm) at the {where}",
                 f"turned {out['rotation_angle_deg']:.2f} deg (about R {rot[0]:+.2f} A {rot[1]:+.2f} S {rot[2]:+.2f} deg)"]
        if out["checked"]:
            dice = f"bone Dice {_fmt_dice(out['bone_dice_before'])} -> {_fmt_dice(out['bone_dice'])}"
            if out["body_dice"] is not None:
                dice += f", body Dice {_fmt_dice(out['body_dice_before'])} -> {_fmt_dice(out['body_dice'])}"
            lines.append(dice + " (scanner coordinates -> registered)")
        lines.append(out["verdict"])
        lines += [f"warning: {w}" for w in self.warnings]
        out["lines"] = lines
        return out

    def to_dict(self):
        """JSON-ready record (the JSON transform file)."""
        return {
            "format": JSON_FORMAT, "version": JSON_VERSION,
            "convention": "matrix_ras maps a point of the new CT (RAS mm) into the planning CT's frame: "
                          "p_planning = matrix_ras @ [p_new, 1]",
            "matrix_ras": [[float(v) for v in row] for row in self.matrix_ras],
            "translation_mm": [float(v) for v in self.translation_mm],
            "patient_shift_mm": [float(v) for v in self.patient_shift_mm],
            "centre_ras_mm": [float(v) for v in self.centre_ras],
            "rotation_deg_about_ras_xyz": [float(v) for v in self.rotation_deg],
            "rotation_angle_deg": self.rotation_angle_deg,
            "translation_only": bool(self.translation_only), "metric": self.metric,
            "metric_value": _finite_or_none(self.metric_value),
            "initial_metric_value": _finite_or_none(self.initial_metric_value),
            "quality": {k: _finite_or_none(v) for k, v in self.quality.items()},
            "warnings": list(self.warnings), "iterations": int(self.iterations),
            "stop_condition": self.stop_condition, "seconds": round(float(self.seconds), 3),
        }

    @classmethod
    def from_dict(cls, d, source="transform"):
        """Inverse of :meth:`to_dict` (InputError naming ``source`` when malformed)."""
        if not isinstance(d, dict) or d.get("format") != JSON_FORMAT:
            raise InputError(f"{source}: not a seedplan rigid transform (expected \"format\": \"{JSON_FORMAT}\")")
        if d.get("version") != JSON_VERSION:
            raise InputError(f"{source}: transform file version {d.get('version')!r}, this program reads {JSON_VERSION}")
        try:
            m = np.asarray(d["matrix_ras"], float)
            quality = {str(k): (float("nan") if v is None else float(v)) for k, v in (d.get("quality") or {}).items()}
            centre = tuple(float(v) for v in d.get("centre_ras_mm", (0.0, 0.0, 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{source}: malformed transform ({exc.__class__.__name__}: {exc})") from None
        try:
            return cls(m, bool(d.get("translation_only", False)), str(d.get("metric", "")),
                       float(d.get("metric_value") or float("nan")), float(d.get("initial_metric_value") or float("nan")),
                       quality, list(d.get("warnings") or []), int(d.get("iterations") or 0),
                       str(d.get("stop_condition") or ""), float(d.get("seconds") or 0.0), centre)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None


def _fmt_dice(v):
    return "n/a" if v is None else f"{v:.2f}"


def _finite_or_none(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# --- images ---------------------------------------------------------------------------------------

def _as_image(ct, what):
    """(sitk float image, ImageGeometry, full-resolution metal mask as a sitk uint8 image) of ``ct``.

    ``ct``: a path, a SimpleITK image, or ``(array[k, j, i], ImageGeometry)``.
    """
    sitk = _sitk()
    from ..core.imageio import geometry_of, read_sitk, to_sitk
    if isinstance(ct, (str, Path)):
        image = read_sitk(ct)
        name = f"{ct} ({what})" if what in ("planning CT", "new CT") else what
    elif isinstance(ct, tuple) and len(ct) == 2:
        arr, geom = ct
        if not isinstance(geom, ImageGeometry):
            raise InputError(f"{what}: expected (array, ImageGeometry)")
        image = to_sitk(np.asarray(arr), geom)
        name = what
    elif hasattr(ct, "GetSize"):
        image = ct
        name = what
    else:
        raise InputError(f"{what}: expected a CT file, a SimpleITK image or (array, ImageGeometry)")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: expected a 3D scalar CT")
    geometry = geometry_of(image)
    if min(geometry.size) < 2 and sorted(geometry.size)[1] < 2:
        raise InputError(f"{name}: a CT of {geometry.size} voxels cannot be registered")
    return image, geometry, name


def _coarse(image, geometry, grid_mm, metal_hu, name):
    """Block-averaged float32 image at about ``grid_mm`` and the coarse metal mask (any metal in the block)."""
    sitk = _sitk()
    arr = sitk.GetArrayViewFromImage(image)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: the CT holds NaN or infinite values")
    factors = [max(1, int(round(grid_mm / s))) for s in geometry.spacing]
    factors = [min(f, n) for f, n in zip(factors, geometry.size)]
    while np.prod(factors) > 255:                       # the metal test below counts up to 255 voxels per block
        factors[int(np.argmax(factors))] -= 1
    # the block mean in the CT's own pixel type (integer HU: the mean rounded, 0.5 HU at most), then float
    small = sitk.Cast(sitk.BinShrink(image, factors), sitk.sitkFloat32)
    # metal anywhere in a block: 255 per metal voxel, so one voxel of up to 255 keeps the block mean above 0
    metal_full = sitk.GetImageFromArray(np.where(np.asarray(arr) > metal_hu, np.uint8(255), np.uint8(0)))
    metal_full.CopyInformation(image)
    metal = sitk.GetArrayFromImage(sitk.BinShrink(metal_full, factors)) > 0
    return small, metal


def _body_mask(hu, body_hu):
    """Largest component above ``body_hu`` with its enclosed air filled (bool [k, j, i])."""
    sitk = _sitk()
    m = np.asarray(hu) > body_hu
    if not m.any():
        return m
    # a cavity cut by the first or last slice (bowel gas, lung) is enclosed by closing those ends,
    # while the air around the body still reaches the in-plane border
    padded = np.pad(m, ((1, 1), (0, 0), (0, 0)), constant_values=True).astype(np.uint8)
    img = sitk.GetImageFromArray(padded)
    lab = sitk.RelabelComponent(sitk.ConnectedComponent(img, True), sortByObjectSize=True)
    largest = sitk.Equal(lab, 1)
    filled = sitk.BinaryFillhole(largest, True, 1)
    return sitk.GetArrayFromImage(filled)[1:-1] > 0


def _grown(mask, spacing, margin_mm):
    """``mask`` grown by ``margin_mm`` (Euclidean distance, computed in the mask's bounding box + margin)."""
    from scipy import ndimage
    if margin_mm < 0 or not mask.any():
        return mask.copy() if margin_mm >= 0 else np.zeros_like(mask)
    sp = np.asarray(spacing, float)[::-1]
    pad = np.ceil(margin_mm / sp).astype(int) + 1
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - pad, 0)
    hi = np.minimum(idx.max(axis=0) + pad + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out = np.zeros_like(mask)
    out[box] = ndimage.distance_transform_edt(~mask[box], sampling=tuple(sp)) <= margin_mm
    return out


def _grown_body(body, spacing, margin_mm):
    """The body grown by ``margin_mm`` (binary dilation with an ellipsoid of that radius in voxels)."""
    sitk = _sitk()
    radius = [int(round(margin_mm / s)) for s in spacing]
    if max(radius) == 0:
        return body.copy()
    img = sitk.GetImageFromArray(body.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing))
    return sitk.GetArrayFromImage(sitk.BinaryDilate(img, radius, sitk.sitkBall)) > 0


class _Prepared:
    """One CT on the coarse grid: image, geometry, body, metal zone, metric mask, metric image."""

    def __init__(self, ct, what, p):
        sitk = _sitk()
        image, geometry, name = _as_image(ct, what)
        self.name = name
        self.full_geometry = geometry
        small, metal = _coarse(image, geometry, p["grid_mm"], p["metal_hu"], name)
        from ..core.imageio import geometry_of
        self.geometry = geometry_of(small)
        hu = sitk.GetArrayFromImage(small)
        self.hu = hu
        self.body = _body_mask(hu, p["body_hu"])
        body_cc = self.body.sum() * self.geometry.voxel_volume_cc
        if body_cc < 50.0:
            raise RegistrationError(f"{name}: no body in the CT ({body_cc:.0f} cc above {p['body_hu']:.0f} HU; "
                                    "an empty or air-only image?)")
        self.metal_zone = _grown(metal, self.geometry.spacing, p["metal_margin_mm"])
        self.has_metal = bool(metal.any())
        near_body = _grown_body(self.body, self.geometry.spacing, p["skin_margin_mm"])
        self.mask = near_body & ~self.metal_zone
        self.masked_fraction = float((self.body & self.metal_zone).sum()) / max(int(self.body.sum()), 1)
        if p["metric"] == "bone":
            metric_arr = np.clip(hu - 150.0, 0.0, 1000.0).astype(np.float32)
        else:
            metric_arr = np.clip(hu, -1000.0, p["clip_hu"]).astype(np.float32)
        self.image = sitk.GetImageFromArray(metric_arr)
        self.image.CopyInformation(small)
        self.mask_image = sitk.GetImageFromArray(self.mask.astype(np.uint8))
        self.mask_image.CopyInformation(small)
        self.hu_image = small

    def body_centroid(self, z_lo, z_hi):
        """Body centre of mass (RAS) over the stretch z_lo..z_hi (RAS S) of the scanner axis."""
        g = self.geometry
        kc = np.arange(g.shape[0])
        zc = g.ijk_to_ras(np.stack([np.zeros_like(kc), np.zeros_like(kc), kc], axis=1).astype(float))
        # a slice belongs to the stretch when its centre at the body's middle does (exact for axial grids)
        mid = np.array([(g.size[0] - 1) / 2.0, (g.size[1] - 1) / 2.0, 0.0])
        zk = zc[:, 2] + (g.ijk_to_ras(mid) - g.ijk_to_ras(np.zeros(3)))[2]
        ks = np.flatnonzero((zk >= z_lo) & (zk <= z_hi))
        sub = self.body[ks]
        n = int(sub.sum())
        if n < 10:
            return None
        k_mean = float((sub.sum(axis=(1, 2)) * ks).sum()) / n
        j_mean = float((sub.sum(axis=(0, 2)) * np.arange(g.shape[1])).sum()) / n
        i_mean = float((sub.sum(axis=(0, 1)) * np.arange(g.shape[2])).sum()) / n
        return g.ijk_to_ras(np.array([i_mean, j_mean, k_mean]))


def _matrix_of(tx):
    """4 x 4 (LPS) of a SimpleITK transform, from the images of the origin and the unit vectors."""
    o = np.asarray(tx.TransformPoint((0.0, 0.0, 0.0)))
    m = np.eye(4)
    for a in range(3):
        e = [0.0, 0.0, 0.0]
        e[a] = 1.0
        m[:3, a] = np.asarray(tx.TransformPoint(tuple(e))) - o
    m[:3, 3] = o
    return m


def _parameters(**kw):
    p = dict(grid_mm=GRID_MM, metal_hu=METAL_HU, metal_margin_mm=METAL_MARGIN_MM, body_hu=BODY_HU, bone_hu=BONE_HU,
             clip_hu=CLIP_HU, skin_margin_mm=SKIN_MARGIN_MM, metric="mattes", init="moments",
             min_bone_dice=MIN_BONE_DICE, min_body_dice=MIN_BODY_DICE, min_bone_cc=MIN_BONE_CC,
             max_rotation_deg=MAX_ROTATION_DEG, max_shift_mm=MAX_SHIFT_MM, max_samples=MAX_SAMPLES)
    for k, v in kw.items():
        if v is not None:
            p[k] = v
    if p["metric"] not in ("mattes", "bone"):
        raise InputError(f"registration metric must be 'mattes' or 'bone', got {p['metric']!r}")
    if p["init"] not in ("moments", "geometry", "identity"):
        raise InputError(f"registration init must be 'moments', 'geometry' or 'identity', got {p['init']!r}")
    label = {"grid_mm": "grid (--grid, mm)", "max_samples": "sample count", "max_rotation_deg": "rotation limit (deg)",
             "max_shift_mm": "shift limit (mm)", "metal_margin_mm": "metal margin (--metal-margin, mm)",
             "skin_margin_mm": "skin margin (mm)", "metal_hu": "metal threshold (--metal-hu, HU)"}
    for k in ("grid_mm", "max_samples", "max_rotation_deg", "max_shift_mm"):
        if not (isinstance(p[k], (int, float)) and math.isfinite(p[k]) and p[k] > 0):
            raise InputError(f"registration {label[k]} must be a positive number, got {p[k]!r}")
    for k in ("metal_margin_mm", "skin_margin_mm"):
        if not (isinstance(p[k], (int, float)) and math.isfinite(p[k]) and p[k] >= 0):
            raise InputError(f"registration {label[k]} must be a number >= 0, got {p[k]!r}")
    if not (isinstance(p["metal_hu"], (int, float)) and math.isfinite(p["metal_hu"]) and p["metal_hu"] > 300):
        raise InputError(f"registration {label['metal_hu']} must be a number above bone's 300 HU, got {p['metal_hu']!r}")
    if not (0.5 <= p["grid_mm"] <= 10.0):
        raise InputError(f"registration grid (--grid) must be 0.5-10 mm, got {p['grid_mm']:g} mm")
    return p


# --- registration ---------------------------------------------------------------------------------

def register_ct(fixed, moving, *, translation_only=False, metric="mattes", init="moments", grid_mm=None,
                metal_hu=None, metal_margin_mm=None, use_metal_mask=True, check=True, progress=None,
                names=None, **options):
    """Register ``moving`` (the new CT) rigidly to ``fixed`` (the planning CT).

    ``fixed`` / ``moving``: CT paths, SimpleITK images or ``(array[k, j, i], ImageGeometry)`` in HU.
    ``translation_only``: 3 degrees of freedom instead of 6. ``use_metal_mask=False`` keeps metal in
    the metric, otherwise the same (a reference for the benchmark and the tests, not for clinical use).
    ``names``: how messages call the two CTs (default: "PATH (planning CT)" / "PATH (new CT)" for paths,
    else "planning CT" / "new CT").
    ``check=False`` returns a failed registration's result (quality and warnings) instead of raising.
    Other options (``body_hu``, ``bone_hu``, ``clip_hu``, ``skin_margin_mm``, ``min_bone_dice``,
    ``min_body_dice``, ``min_bone_cc``, ``max_rotation_deg``, ``max_shift_mm``, ``max_samples``): see the
    module docstring. Returns a :class:`RegistrationResult`; raises :class:`RegistrationError`
    (no body, no overlap, diverged, failed quality check), InputError (unreadable CT, NaN) or
    CancelledError (progress callback returned False).
    """
    sitk = _sitk()
    t0 = time.monotonic()
    unknown = set(options) - {"body_hu", "bone_hu", "clip_hu", "skin_margin_mm", "min_bone_dice", "min_body_dice",
                              "min_bone_cc", "max_rotation_deg", "max_shift_mm", "max_samples"}
    if unknown:
        raise InputError(f"register_ct: unknown option(s) {', '.join(sorted(unknown))}")
    p = _parameters(grid_mm=grid_mm, metal_hu=metal_hu, metal_margin_mm=metal_margin_mm, metric=metric, init=init,
                    **options)
    if not use_metal_mask:
        p["metal_margin_mm"] = -1.0
    _progress.report(progress, 0.0, "registration: preparing the CTs")
    names = names or ("planning CT", "new CT")
    F = _Prepared(fixed, names[0], p)
    _progress.report(progress, 0.04, "registration: preparing the CTs")
    M = _Prepared(moving, names[1], p)
    if not use_metal_mask:
        for X in (F, M):
            X.mask = _grown_body(X.body, X.geometry.spacing, p["skin_margin_mm"])
            X.mask_image = sitk.GetImageFromArray(X.mask.astype(np.uint8))
            X.mask_image.CopyInformation(X.image)
    warnings = []
    for X in (F, M):
        if X.masked_fraction > 0.5:
            warnings.append(f"{X.name}: {100 * X.masked_fraction:.0f} % of the body lies within "
                            f"{p['metal_margin_mm']:g} mm of metal and is left out of the metric")
    _progress.report(progress, 0.08, "registration: initialisation")

    # -- initial transform (LPS, fixed -> moving) --
    flo, fhi = F.geometry.bounds_ras()
    mlo, mhi = M.geometry.bounds_ras()
    z_lo, z_hi = max(flo[2], mlo[2]), min(fhi[2], mhi[2])
    overlap_box = np.all(np.minimum(fhi, mhi) > np.maximum(flo, mlo))
    if not overlap_box or z_hi - z_lo < 2 * p["grid_mm"]:
        raise RegistrationError(
            f"{M.name} and {F.name} do not overlap (planning CT spans RAS {np.round(flo, 1).tolist()} to "
            f"{np.round(fhi, 1).tolist()} mm, new CT {np.round(mlo, 1).tolist()} to {np.round(mhi, 1).tolist()} mm)")
    cf = F.body_centroid(z_lo, z_hi)
    cm = M.body_centroid(z_lo, z_hi)
    if cf is None or cm is None:
        raise RegistrationError(f"{M.name} and {F.name}: no body in the stretch both CTs cover "
                                f"(S {z_lo:.1f} to {z_hi:.1f} mm)")
    if p["init"] == "moments":
        shift_ras = cm - cf
    elif p["init"] == "geometry":
        shift_ras = 0.5 * (mlo + mhi) - 0.5 * (flo + fhi)
    else:
        shift_ras = np.zeros(3)
    centre_lps = np.diag([-1.0, -1.0, 1.0]) @ cf
    shift_lps = np.diag([-1.0, -1.0, 1.0]) @ shift_ras
    if translation_only:
        tx = sitk.TranslationTransform(3, tuple(float(v) for v in shift_lps))
    else:
        tx = sitk.Euler3DTransform()
        tx.SetCenter(tuple(float(v) for v in centre_lps))
        tx.SetTranslation(tuple(float(v) for v in shift_lps))

    # -- optimisation --
    R = sitk.ImageRegistrationMethod()
    R.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    R.SetMetricSamplingStrategy(R.RANDOM)
    # about the same number of samples on every level: ``max_samples`` (or all voxels of a small mask)
    n_mask = max(int(F.mask.sum()), 1)
    per_level = [float(min(1.0, p["max_samples"] * f ** 3 / n_mask)) for f in SHRINK]
    R.SetMetricSamplingPercentagePerLevel(per_level, 20261203)
    R.SetMetricFixedMask(F.mask_image)
    R.SetMetricMovingMask(M.mask_image)
    R.SetInterpolator(sitk.sitkLinear)
    R.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.002, numberOfIterations=150,
                                               relaxationFactor=0.7, gradientMagnitudeTolerance=1e-8)
    R.SetOptimizerScalesFromPhysicalShift()
    R.SetShrinkFactorsPerLevel(list(SHRINK))
    R.SetSmoothingSigmasPerLevel(list(SMOOTH))
    R.SetInitialTransform(tx, inPlace=False)
    state = {"level": -1, "it": 0, "cancel": False, "total": 0}
    n_levels = len(SHRINK)

    def on_level():
        state["level"] += 1
        state["it"] = 0

    def on_iteration():
        state["it"] += 1
        state["total"] += 1
        frac = 0.1 + 0.8 * (max(state["level"], 0) + min(state["it"] / 60.0, 0.95)) / n_levels
        if progress is not None and not state["cancel"]:
            if progress(float(min(frac, 0.9)), f"registration: level {state['level'] + 1}/{n_levels}") is False:
                state["cancel"] = True
                R.StopRegistration()

    R.AddCommand(sitk.sitkMultiResolutionIterationEvent, on_level)
    R.AddCommand(sitk.sitkIterationEvent, on_iteration)
    initial_metric = float("nan")
    try:
        final = R.Execute(F.image, M.image)
    except RuntimeError as exc:
        if state["cancel"]:
            raise CancelledError("cancelled by the user during: registration") from None
        last = str(exc).strip().splitlines()
        raise RegistrationError(f"registration of {M.name} to {F.name} failed: "
                                f"{last[-1] if last else 'SimpleITK error'} (too little overlap of the two bodies?)") from None
    if state["cancel"]:
        raise CancelledError("cancelled by the user during: registration")
    _progress.report(progress, 0.92, "registration: quality check")
    m_lps = _matrix_of(final)                       # fixed -> moving, LPS
    matrix_ras = np.linalg.inv(FLIP4 @ m_lps @ FLIP4)
    u, _, vt = np.linalg.svd(matrix_ras[:3, :3])
    matrix_ras[:3, :3] = u @ vt
    result = RegistrationResult(matrix_ras, bool(translation_only), p["metric"], float(R.GetMetricValue()),
                                initial_metric, {}, warnings, int(state["total"]),
                                R.GetOptimizerStopConditionDescription(), 0.0, tuple(float(v) for v in cf))
    identity = np.eye(4)
    identity_tx = sitk.AffineTransform(3)
    result.quality = _quality(F, M, final, identity_tx, p)
    result.quality["metal_masked_fraction_planning"] = F.masked_fraction
    result.quality["metal_masked_fraction_new"] = M.masked_fraction
    del identity
    result.seconds = time.monotonic() - t0
    problems = _problems(result, F, M, p)
    if problems:
        if check:
            raise RegistrationError(f"registration of {M.name} to {F.name} failed: {'; '.join(problems)}")
        result.warnings.extend(problems)
    _progress.report(progress, 1.0, "registration: done")
    return result


def _quality(F, M, tx, before_tx, p):
    """Bone / body Dice after (``tx``) and before (``before_tx``), overlap, bone volume."""
    sitk = _sitk()
    inside = sitk.Image(M.hu_image.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(M.hu_image)
    zone = sitk.GetImageFromArray(M.metal_zone.astype(np.uint8))
    zone.CopyInformation(M.hu_image)
    out = {}
    fixed_valid = ~F.metal_zone
    f_bone = (F.hu > p["bone_hu"]) & fixed_valid
    vcc = F.geometry.voxel_volume_cc
    for label, t in (("", tx), ("_before", before_tx)):
        hu = sitk.GetArrayFromImage(sitk.Resample(M.hu_image, F.hu_image, t, sitk.sitkLinear, -1000.0, sitk.sitkFloat32))
        ins = sitk.GetArrayFromImage(sitk.Resample(inside, F.hu_image, t, sitk.sitkNearestNeighbor, 0)) > 0
        mz = sitk.GetArrayFromImage(sitk.Resample(zone, F.hu_image, t, sitk.sitkNearestNeighbor, 0)) > 0
        valid = ins & fixed_valid & ~mz
        fb = f_bone & valid
        mb = (hu > p["bone_hu"]) & valid
        out["bone_dice" + label] = _dice(fb, mb)
        m_body = _body_mask(hu, p["body_hu"]) & ins
        out["body_dice" + label] = _dice(F.body & ins, m_body)
        if not label:
            out["overlap_fraction"] = float((F.body & ins).sum()) / max(int(F.body.sum()), 1)
            out["bone_cc_planning"] = float(fb.sum() * vcc)
            out["bone_cc_new"] = float(mb.sum() * vcc)
    return out


def _dice(a, b):
    s = int(a.sum()) + int(b.sum())
    return float(2.0 * np.logical_and(a, b).sum() / s) if s else float("nan")


def _problems(result, F, M, p):
    """Reasons the registration is refused (empty when it passed); adds warnings to ``result``."""
    q = result.quality
    out = []
    if result.rotation_angle_deg > p["max_rotation_deg"]:
        out.append(f"diverged: rotation {result.rotation_angle_deg:.1f} deg > {p['max_rotation_deg']:g} deg")
    shift = float(np.linalg.norm(result.patient_shift_mm))
    if shift > p["max_shift_mm"]:
        out.append(f"diverged: shift {shift:.1f} mm > {p['max_shift_mm']:g} mm")
    if q["overlap_fraction"] < MIN_OVERLAP:
        out.append(f"no overlap: the new CT covers {100 * q['overlap_fraction']:.0f} % of the planning CT's body "
                   "after registration")
    bone = min(q["bone_cc_planning"], q["bone_cc_new"])
    if bone < p["min_bone_cc"]:
        result.warnings.append(f"no bone in the common region ({bone:.1f} cc above {p['bone_hu']:g} HU): aligned on "
                               "the body outline only, the rotation about the body's long axis is weakly determined")
        if not (q["body_dice"] >= p["min_body_dice"]):
            out.append(f"body outlines overlap poorly after registration (Dice {q['body_dice']:.2f} < "
                       f"{p['min_body_dice']:g}); different patients or body parts?")
    elif not (q["bone_dice"] >= p["min_bone_dice"]):
        out.append(f"bone overlaps poorly after registration (Dice {q['bone_dice']:.2f} < {p['min_bone_dice']:g}, "
                   f"{q['bone_dice_before']:.2f} before); different body parts or a motion beyond the capture range?")
    return out


# --- files ----------------------------------------------------------------------------------------

ITK_SUFFIXES = (".tfm", ".txt", ".h5", ".hdf5", ".mat")


def transform_format(path):
    """"itk" or "json" from the file name; InputError otherwise."""
    name = str(path).lower()
    if name.endswith(".json"):
        return "json"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    raise InputError(f"{path}: transform file must end in .tfm, .txt, .h5, .mat (ITK, read by 3D Slicer) or .json")


def write_transform(path, result: RegistrationResult):
    """Write ``result`` atomically: ITK linear transform file (LPS, planning -> new CT, as Slicer reads it)
    or the JSON record (RAS planning-from-new matrix, translation, rotation, quality)."""
    from ..core.fileio import atomic_path, write_json
    kind = transform_format(path)
    if kind == "json":
        write_json(path, result.to_dict())
        return Path(path)
    sitk = _sitk()
    with atomic_path(path) as tmp:
        try:
            sitk.WriteTransform(result.itk_transform(), str(tmp))
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot write the transform: {str(exc).strip().splitlines()[-1]}") from None
    return Path(path)


def read_transform(path) -> RegistrationResult:
    """Read a transform written by :func:`write_transform` (or any rigid ITK linear transform file, e.g.
    saved by 3D Slicer: LPS, planning -> new CT) as a :class:`RegistrationResult` (quality only from JSON)."""
    from ..core.fileio import require_complete
    path = Path(path)
    kind = transform_format(path)
    if not path.is_file():
        raise InputError(f"{path}: transform file not found")
    require_complete(path, "transform")
    if kind == "json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{path}: unreadable transform ({exc.__class__.__name__})") from None
        return RegistrationResult.from_dict(doc, str(path))
    sitk = _sitk()
    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise InputError(f"{path}: unreadable ITK transform ({lines[-1] if lines else 'SimpleITK error'})") from None
    if tx.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D transform")
    try:
        m_lps = _matrix_of(tx)
        m = np.linalg.inv(FLIP4 @ m_lps @ FLIP4)
        return RegistrationResult(m)
    except (InputError, np.linalg.LinAlgError):
        raise InputError(f"{path}: not a rigid transform (rotation + translation)") from None


def resample_to_planning(moving, result: RegistrationResult, reference_geometry: ImageGeometry, default_hu=-1000.0,
                         interpolation="linear"):
    """The new CT resampled onto ``reference_geometry`` (the planning CT's grid) through ``result``.

    ``moving``: a path, SimpleITK image or (array, ImageGeometry). Returns an int16 array [k, j, i]
    (float input stays float32). Linear interpolation blurs thin metal; the chain therefore
    uses :meth:`RegistrationResult.moved_geometry` instead (no resampling).
    """
    sitk = _sitk()
    from ..core.imageio import to_sitk
    image, _, _ = _as_image(moving, "new CT")
    ref = to_sitk(np.zeros(reference_geometry.shape, np.uint8), reference_geometry)
    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}[interpolation]
    out = sitk.Resample(image, ref, result.itk_transform(), interp, float(default_hu), image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def align_to_planning(ct_hu, geometry: ImageGeometry, planning_ct=None, transform=None, *, ct_name="new CT",
                      progress=None, **options):
    """The intra-operative chain's registration step: ``(geometry in the planning frame, RegistrationResult)``.

    Either registers the new CT (``ct_hu`` on ``geometry``) to ``planning_ct`` (path or
    ``(array, ImageGeometry)``) or reads ``transform`` (a file of :func:`write_transform` or a rigid
    linear transform saved by 3D Slicer). The returned geometry is the new CT's grid re-labelled in
    the planning frame (:meth:`RegistrationResult.moved_geometry`, no resampling): whatever is found
    on it (needles, seeds) is in the planning frame.
    """
    if (planning_ct is None) == (transform is None):
        raise InputError("registration: give the planning CT or a transform file (one of them)")
    if transform is not None:
        result = read_transform(transform)
        _progress.report(progress, 1.0, "registration read")
    else:
        fixed_name = f"{planning_ct} (planning CT)" if isinstance(planning_ct, (str, Path)) else "planning CT"
        result = register_ct(planning_ct, (ct_hu, geometry), progress=progress, names=(fixed_name, ct_name), **options)
    return result.moved_geometry(geometry), result
