"""Needle paths against forbidden structures (bone, vessels, bowel, nerves, any named segment).

Each forbidden structure becomes a Euclidean distance map (mm from every voxel centre to the
nearest voxel of the structure, 0 inside; ``scipy.ndimage.distance_transform_edt`` with the voxel
spacing) computed once on a crop of the grid around the region of interest. A path is sampled
every ``step_mm`` (default half the smallest voxel spacing) and the distance is looked up at the
nearest voxel; the needle *meets* a structure where that distance minus the needle's outer radius
is below the safety margin. The lookup error is at most half a voxel diagonal, which the margin
should cover. Every hit names the needle, the structure, the depth from the entry (mm) where the
path first comes within the margin, and the smallest clearance on the path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry


@dataclass
class Hit:
    """One needle meeting one forbidden structure."""

    needle: str
    needle_number: int
    structure: str
    depth_mm: float  # from the entry, where the path first comes within the margin
    min_clearance_mm: float  # smallest distance from the needle surface to the structure (<= 0: through it)
    margin_mm: float

    def describe(self) -> str:
        """One line for reports."""
        what = "passes through" if self.min_clearance_mm <= 0 else f"comes within {self.min_clearance_mm:.1f} mm of"
        return (f"needle {self.needle} {what} {self.structure} at depth {self.depth_mm:.1f} mm from the entry "
                f"(safety margin {self.margin_mm:g} mm)")

    def to_row(self) -> dict:
        """CSV row."""
        return {"needle": self.needle, "number": self.needle_number, "structure": self.structure,
                "depth_mm": f"{self.depth_mm:.1f}", "min_clearance_mm": f"{self.min_clearance_mm:.2f}",
                "margin_mm": f"{self.margin_mm:g}"}


HIT_COLUMNS = ("needle", "number", "structure", "depth_mm", "min_clearance_mm", "margin_mm")


class ObstacleMap:
    """Distance maps of named forbidden structures on (a crop of) an image grid."""

    def __init__(self, geometry: ImageGeometry, masks: dict, margin_mm=5.0, roi_min=None, roi_max=None, step_mm=None):
        if not (math.isfinite(margin_mm) and margin_mm >= 0):
            raise InputError(f"safety margin must be >= 0 mm, got {margin_mm}")
        from scipy.ndimage import distance_transform_edt
        self.margin_mm = float(margin_mm)
        self.names = list(masks)
        self.step_mm = float(step_mm or 0.5 * min(geometry.spacing))
        lo, hi = np.zeros(3, int), np.asarray(geometry.size) - 1
        if roi_min is not None and roi_max is not None:
            corners = np.array([[x, y, z] for x in (roi_min[0], roi_max[0]) for y in (roi_min[1], roi_max[1])
                                for z in (roi_min[2], roi_max[2])], float)
            ijk = geometry.ras_to_ijk(corners)
            pad = (self.margin_mm + 5.0) / np.asarray(geometry.spacing)
            lo = np.clip(np.floor(ijk.min(axis=0) - pad).astype(int), 0, np.asarray(geometry.size) - 1)
            hi = np.clip(np.ceil(ijk.max(axis=0) + pad).astype(int), 0, np.asarray(geometry.size) - 1)
        self.offset = lo
        size = hi - lo + 1
        origin = geometry.ijk_to_ras(lo.astype(float))
        self.geometry = ImageGeometry(tuple(size), geometry.spacing, tuple(origin), geometry.direction)
        sl = (slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1))
        sampling = (geometry.spacing[2], geometry.spacing[1], geometry.spacing[0])
        self.distance = {}
        for name, mask in masks.items():
            m = np.asarray(mask, dtype=bool)
            if m.shape != geometry.shape:
                raise InputError(f"forbidden structure '{name}': mask shape {m.shape} does not match the grid {geometry.shape}")
            crop = m[sl]
            if not crop.any():
                self.distance[name] = None  # nowhere near: infinite clearance
                continue
            self.distance[name] = distance_transform_edt(~crop, sampling=sampling).astype(np.float32)

    def distance_at(self, name, points):
        """Distance (mm) from ``points`` (P, 3) to structure ``name``; inf outside the crop or far away."""
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        dist = self.distance[name]
        out = np.full(len(pts), np.inf)
        if dist is None:
            return out
        ijk = np.rint(self.geometry.ras_to_ijk(pts)).astype(np.int64)
        ok = np.all((ijk >= 0) & (ijk < np.asarray(self.geometry.size)), axis=1)
        idx = ijk[ok]
        out[ok] = dist[idx[:, 2], idx[:, 1], idx[:, 0]]
        return out

    def check(self, needle, margin_mm=None) -> list:
        """Hits of ``needle`` (a :class:`needles.Needle`) against every structure, in path order."""
        margin = self.margin_mm if margin_mm is None else float(margin_mm)
        pts, depth = needle.sample_path(self.step_mm)
        hits = []
        for name in self.names:
            clearance = self.distance_at(name, pts) - needle.outer_radius_mm
            bad = clearance < margin
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                hits.append(Hit(needle.name, needle.number, name, float(depth[first]), float(clearance.min()), margin))
        hits.sort(key=lambda h: h.depth_mm)
        return hits

    def check_all(self, needles, margin_mm=None) -> list:
        """Hits of every needle, needle by needle."""
        out = []
        for n in needles:
            out.extend(self.check(n, margin_mm))
        return out


def obstacle_map_for(geometry, masks, margin_mm, needles=(), extra_points=None):
    """ObstacleMap cropped to the box around ``needles`` (and ``extra_points``) plus the margin."""
    pts = [np.vstack([n.sample_path(5.0)[0], n.tip[None, :]]) for n in needles]
    if extra_points is not None and len(extra_points):
        pts.append(np.asarray(extra_points, float).reshape(-1, 3))
    if not pts:
        return ObstacleMap(geometry, masks, margin_mm)
    allp = np.vstack(pts)
    return ObstacleMap(geometry, masks, margin_mm, allp.min(axis=0), allp.max(axis=0))


def length_flags(needles) -> list:
    """Messages for needles whose path is longer than their usable length."""
    return [f"needle {n.name} is {n.depth_mm:.1f} mm deep, longer than its usable length {n.usable_length_mm:g} mm"
            for n in needles if n.too_long]
