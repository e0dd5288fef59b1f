"""Analytic shapes of the synthetic cases: voxel masks of ellipsoids and tubes along polylines (RAS mm grids)."""

from __future__ import annotations

import numpy as np


def ellipsoid(x, y, z, c, radii):
    """Voxels inside the axis-aligned ellipsoid of centre ``c`` and semi-axes ``radii`` (mm)."""
    return ((x - c[0]) / radii[0]) ** 2 + ((y - c[1]) / radii[1]) ** 2 + ((z - c[2]) / radii[2]) ** 2 <= 1.0


def tube(x, y, z, points, radius):
    """Voxels within ``radius`` of a polyline through ``points`` (N, 3); each segment only looks inside its bounding box."""
    out = np.zeros(x.shape, dtype=bool)
    pts = np.asarray(points, float)
    for a, b in zip(pts[:-1], pts[1:]):
        lo = np.minimum(a, b) - radius - 1.0
        hi = np.maximum(a, b) + radius + 1.0
        box = (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])
        if not box.any():
            continue
        xb, yb, zb = x[box], y[box], z[box]
        ab = b - a
        t = np.clip(((xb - a[0]) * ab[0] + (yb - a[1]) * ab[1] + (zb - a[2]) * ab[2]) / float(ab @ ab), 0.0, 1.0)
        d2 = (xb - a[0] - t * ab[0]) ** 2 + (yb - a[1] - t * ab[1]) ** 2 + (zb - a[2] - t * ab[2]) ** 2
        out[box] |= d2 <= radius * radius
    return out
