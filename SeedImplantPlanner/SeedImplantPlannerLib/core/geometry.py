"""Image geometry in RAS: size, spacing, origin and direction of a voxel grid.

Conventions: the product works in RAS millimetres (3D Slicer). ITK/SimpleITK and DICOM use LPS:
conversion flips the sign of the first two coordinates (:data:`LPS_TO_RAS`). Arrays are indexed
``[k, j, i]`` (slice, row, column), as returned by SimpleITK's GetArrayFromImage and by
``slicer.util.arrayFromVolume``. ``origin`` is the centre of voxel (0, 0, 0); the columns of
``direction`` are the unit vectors of the i, j, k axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import GeometryError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class ImageGeometry:
    """A voxel grid: ``size`` (ni, nj, nk), ``spacing`` mm, ``origin`` RAS mm, ``direction`` 3x3."""

    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self):
        size = tuple(int(s) for s in self.size)
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(s) for s in self.origin)
        direction = tuple(tuple(float(v) for v in row) for row in np.asarray(self.direction, float).reshape(3, 3))
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)
        if len(size) != 3 or min(size) < 1:
            raise GeometryError(f"empty grid: size {size} (every dimension needs at least one voxel)")
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise GeometryError(f"grid spacing must be positive and finite, got {spacing}")
        if not all(np.isfinite(origin)):
            raise GeometryError(f"grid origin is not finite: {origin}")
        d = np.asarray(direction)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise GeometryError(f"grid direction matrix is not orthonormal: {direction}")

    @property
    def shape(self):
        """Array shape (nk, nj, ni)."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def n_voxels(self):
        """Number of voxels."""
        return int(np.prod(self.size))

    @property
    def voxel_volume_cc(self):
        """Volume of one voxel in cm^3."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def direction_matrix(self):
        """Direction as a (3, 3) array, columns = i, j, k unit vectors in RAS."""
        return np.asarray(self.direction, dtype=float)

    @property
    def ijk_to_ras_matrix(self):
        """4x4 homogeneous IJK -> RAS matrix (as Slicer's IJKToRASMatrix)."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix * np.asarray(self.spacing)[None, :]
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self, ijk):
        """Continuous (i, j, k) indices (..., 3) to RAS mm (..., 3)."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ (self.direction_matrix * np.asarray(self.spacing)[None, :]).T + np.asarray(self.origin)

    def ras_to_ijk(self, ras):
        """RAS mm (..., 3) to continuous (i, j, k) indices (..., 3)."""
        ras = np.asarray(ras, dtype=float) - np.asarray(self.origin)
        return (ras @ self.direction_matrix) / np.asarray(self.spacing)

    def axis_coordinates(self):
        """Voxel-centre coordinates along i, j, k in the grid's own frame (mm from the origin)."""
        return tuple(np.arange(n) * s for n, s in zip(self.size, self.spacing))

    def voxel_centers_ras(self, dtype=float):
        """RAS coordinates of every voxel centre, shape (nk, nj, ni, 3)."""
        xi, yj, zk = self.axis_coordinates()
        d = self.direction_matrix
        out = (zk[:, None, None, None] * d[:, 2] + yj[None, :, None, None] * d[:, 1]
               + xi[None, None, :, None] * d[:, 0]) + np.asarray(self.origin)
        return out.astype(dtype, copy=False)

    def contains_ras(self, ras, margin_voxels=0.5):
        """Boolean mask: which RAS points lie inside the grid's extent (voxel edges by default)."""
        ijk = self.ras_to_ijk(ras)
        lo = -margin_voxels
        hi = np.asarray(self.size) - 1 + margin_voxels
        return np.all((ijk >= lo) & (ijk <= hi), axis=-1)

    def bounds_ras(self):
        """(min, max) RAS corners of the axis-aligned box around the grid's voxel centres."""
        corners = np.array([[i, j, k] for i in (0, self.size[0] - 1) for j in (0, self.size[1] - 1)
                            for k in (0, self.size[2] - 1)], dtype=float)
        ras = self.ijk_to_ras(corners)
        return ras.min(axis=0), ras.max(axis=0)

    def matches(self, other: "ImageGeometry", tol_mm=1e-3) -> bool:
        """True if ``other`` has the same size and the same voxel centres within ``tol_mm``."""
        if tuple(self.size) != tuple(other.size):
            return False
        corners = np.array([[0, 0, 0], np.asarray(self.size) - 1])
        return bool(np.allclose(self.ijk_to_ras(corners), other.ijk_to_ras(corners), atol=tol_mm, rtol=0)
                    and np.allclose(self.direction_matrix, other.direction_matrix, atol=1e-5))

    def require_match(self, other: "ImageGeometry", what="images", tol_mm=1e-3):
        """Raise GeometryError naming the difference if ``other`` does not match this grid."""
        if not self.matches(other, tol_mm):
            raise GeometryError(
                f"geometry mismatch between {what}: size {self.size} vs {other.size}, origin "
                f"{np.round(self.origin, 3).tolist()} vs {np.round(other.origin, 3).tolist()}, spacing "
                f"{self.spacing} vs {other.spacing}")

    @classmethod
    def from_bounds(cls, min_ras, max_ras, spacing):
        """Axis-aligned RAS grid covering [min_ras, max_ras] (voxel centres) at ``spacing`` mm."""
        lo = np.asarray(min_ras, float)
        hi = np.asarray(max_ras, float)
        sp = _check_spacing(spacing)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise GeometryError(f"grid box corners must be finite, got {lo.tolist()} and {hi.tolist()}")
        if np.any(hi < lo):
            raise GeometryError(f"empty grid: max corner {hi.tolist()} below min corner {lo.tolist()}")
        size = np.floor((hi - lo) / sp + 1e-9).astype(int) + 1
        return cls(tuple(size), tuple(sp), tuple(lo))

    def resampled(self, spacing):
        """Same extent and orientation, new spacing (mm); the voxel-centre box is kept or slightly grown."""
        sp = _check_spacing(spacing)
        extent = (np.asarray(self.size) - 1) * np.asarray(self.spacing)
        size = np.ceil(extent / sp - 1e-9).astype(int) + 1
        return ImageGeometry(tuple(size), tuple(sp), self.origin, self.direction)

    def cropped_to_box(self, min_ras, max_ras, spacing=None, margin_mm=0.0):
        """Grid with this orientation covering the RAS box [min, max] (+ margin), at ``spacing``."""
        sp = np.asarray(self.spacing, float) if spacing is None else _check_spacing(spacing)
        if not (math.isfinite(margin_mm) and margin_mm >= 0):
            raise GeometryError(f"grid margin must be a finite number of mm >= 0, got {margin_mm}")
        if not (np.all(np.isfinite(min_ras)) and np.all(np.isfinite(max_ras))):
            raise GeometryError("grid box corners must be finite")
        corners = np.array([[x, y, z] for x in (min_ras[0], max_ras[0]) for y in (min_ras[1], max_ras[1])
                            for z in (min_ras[2], max_ras[2])], float)
        local = (corners - np.asarray(self.origin)) @ self.direction_matrix
        lo = local.min(axis=0) - margin_mm
        hi = local.max(axis=0) + margin_mm
        size = np.ceil((hi - lo) / sp - 1e-9).astype(int) + 1
        origin = np.asarray(self.origin) + self.direction_matrix @ lo
        return ImageGeometry(tuple(size), tuple(sp), tuple(origin), self.direction)

    def to_lps(self):
        """(origin, direction) in LPS for ITK / DICOM."""
        return LPS_TO_RAS @ np.asarray(self.origin), LPS_TO_RAS @ self.direction_matrix

    @classmethod
    def from_lps(cls, size, spacing, origin_lps, direction_lps):
        """Geometry from ITK-style LPS origin and direction."""
        return cls(tuple(size), tuple(spacing), tuple(LPS_TO_RAS @ np.asarray(origin_lps, float)),
                   LPS_TO_RAS @ np.asarray(direction_lps, float).reshape(3, 3))

    def to_dict(self):
        """Plain-JSON form."""
        return {"size": list(self.size), "spacing_mm": list(self.spacing), "origin_ras_mm": list(self.origin),
                "direction_ras": [list(r) for r in self.direction]}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`; a missing or malformed key raises GeometryError."""
        try:
            return cls(tuple(d["size"]), tuple(d["spacing_mm"]), tuple(d["origin_ras_mm"]), d["direction_ras"])
        except (KeyError, TypeError, ValueError) as exc:
            raise GeometryError(f"malformed grid geometry ({exc.__class__.__name__}: {exc}); expected size, "
                                "spacing_mm, origin_ras_mm and direction_ras") from exc


def _check_spacing(spacing):
    """Spacing as 3 positive finite floats (1 value applies to all axes); GeometryError otherwise."""
    try:
        sp = np.asarray(spacing, float).ravel()
    except (TypeError, ValueError):
        raise GeometryError(f"grid spacing must be numbers in mm, got {spacing!r}") from None
    if sp.size not in (1, 3):
        raise GeometryError(f"grid spacing takes 1 or 3 values in mm, got {sp.size}")
    sp = np.broadcast_to(sp, (3,)).copy()
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise GeometryError(f"grid spacing must be positive and finite, got {sp.tolist()} mm")
    return sp


def mask_at_indices(mask, ijk):
    """Values of a boolean ``mask[k, j, i]`` at integer indices ``ijk`` (..., 3) in (i, j, k) order;
    False outside the grid."""
    ijk = np.asarray(ijk)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(mask.shape[::-1])), axis=-1)
    out = np.zeros(ijk.shape[:-1], dtype=bool)
    sel = ijk[inside]
    out[inside] = mask[sel[:, 2], sel[:, 1], sel[:, 0]]
    return out
