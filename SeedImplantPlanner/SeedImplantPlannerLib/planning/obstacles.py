"""Needle paths against forbidden structures (bone, vessels, bowel, nerves, any named segment).

The distance of a point to a forbidden structure is the Euclidean distance (mm, with the voxel
spacing) from its nearest voxel centre to the nearest voxel centre of the structure, 0 inside:
the value a Euclidean distance transform (``scipy.ndimage.distance_transform_edt``) of a crop of
the grid around the region of interest gives at that voxel. It is computed only where a needle
path asks for it: from a k-d tree of the structure's boundary voxels (voxels of the structure with
a face neighbour outside it; the nearest structure voxel of an outside voxel is always one of
them, since one step from it towards the outside voxel along any axis where they differ comes
closer), so large crops (two masses far apart, many structures) cost no full distance transform.
A path is sampled every ``step_mm`` (default half the smallest voxel spacing) and the distance is
looked up at the nearest voxel; the needle *meets* a structure where that distance minus the
needle's outer radius is below the safety margin. The lookup error is at most half a voxel
diagonal, which the margin should cover. Every hit names the needle, the structure, the depth
from the entry (mm) where the path first comes within the margin, and the smallest clearance on
the path.
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
    """Distances to named forbidden structures on (a crop of) an image grid (see the module doc)."""

    def __init__(self, geometry: ImageGeometry, masks: dict, margin_mm=5.0, roi_min=None, roi_max=None, step_mm=None):
        if not (math.isfinite(margin_mm) and margin_mm >= 0):
            raise InputError(f"safety margin must be >= 0 mm, got {margin_mm}")
        from scipy.spatial import cKDTree
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
        #: voxel size along the array axes (k, j, i), mm
        self._sampling = np.array([geometry.spacing[2], geometry.spacing[1], geometry.spacing[0]], float)
        self._mask, self._tree = {}, {}
        for name, mask in masks.items():
            m = np.asarray(mask, dtype=bool)
            if m.shape != geometry.shape:
                raise InputError(f"forbidden structure '{name}': mask shape {m.shape} does not match the grid {geometry.shape}")
            crop = m[sl]
            boundary = _boundary_voxels(crop)
            if boundary is None:
                self._mask[name] = self._tree[name] = None  # nowhere near: infinite clearance
                continue
            self._mask[name] = crop
            self._tree[name] = cKDTree(boundary * self._sampling)

    def distance_at(self, name, points):
        """Distance (mm) from ``points`` (P, 3) to structure ``name``; inf outside the crop or far away."""
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        tree = self._tree[name]
        out = np.full(len(pts), np.inf)
        if tree is None:
            return out
        ijk = np.rint(self.geometry.ras_to_ijk(pts)).astype(np.int64)
        ok = np.flatnonzero(np.all((ijk >= 0) & (ijk < np.asarray(self.geometry.size)), axis=1))
        kji = ijk[ok][:, ::-1]
        inside = self._mask[name][kji[:, 0], kji[:, 1], kji[:, 2]]
        out[ok[inside]] = 0.0
        rest = ~inside
        if rest.any():
            out[ok[rest]] = tree.query(kji[rest] * self._sampling)[0]
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


def _boundary_voxels(mask):
    """(N, 3) array indices (k, j, i) of the voxels of ``mask`` with a face neighbour outside it (or
    outside the array), or None for an empty mask."""
    nz = [np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if not all(len(z) for z in nz):
        return None
    lo = np.array([z[0] for z in nz])
    hi = np.array([z[-1] for z in nz]) + 1
    sub = np.pad(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], 1)
    inner = sub[1:-1, 1:-1, 1:-1].copy()
    for ax in range(3):
        for shift in (slice(0, -2), slice(2, None)):
            view = [slice(1, -1)] * 3
            view[ax] = shift
            inner &= sub[tuple(view)]
    return np.argwhere(sub[1:-1, 1:-1, 1:-1] & ~inner) + lo


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
