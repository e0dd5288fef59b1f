"""Binary masks <-> closed planar contours, slice by slice on an image grid (for RT Structure Sets).

Contours are the 0.5 iso-line of the binary mask on each slice ``k`` of the grid (contourpy, the
generator matplotlib uses), traced on the voxel-centre lattice: the line passes half-way between an
inside and an outside voxel centre, so rasterising it back (voxel centre inside the polygon) gives
the mask again, apart from saddle configurations (two voxels touching only at a corner).
Collinear points of the staircase are dropped (exact). Nested contours on one slice are holes:
they are combined with the even-odd rule, when writing and when rasterising back.

Coordinates: contour points come out in RAS mm (``geometry.ijk_to_ras``); the DICOM writer
converts them to LPS. Arrays are [k, j, i].
"""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry


def _drop_collinear(pts, tol=1e-9):
    """Remove points of a closed polygon (no repeated end point) that lie on the line of their neighbours."""
    if len(pts) <= 3:
        return pts
    prev = np.roll(pts, 1, axis=0)
    nxt = np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
    keep = np.abs(cross) > tol
    if keep.sum() < 3:
        return pts
    return pts[keep]


def slice_contours_ij(mask2d):
    """Closed contours of a 2D boolean mask [j, i] as a list of (n, 2) arrays of (i, j) indices.

    The first point is not repeated at the end (DICOM CLOSED_PLANAR convention).
    """
    import contourpy

    m = np.asarray(mask2d, dtype=bool)
    if not m.any():
        return []
    # crop to the bounding box plus one empty voxel all round: contours close at the border
    jj, ii = np.nonzero(m)
    j0, j1, i0, i1 = jj.min(), jj.max(), ii.min(), ii.max()
    sub = np.zeros((j1 - j0 + 3, i1 - i0 + 3), dtype=np.float64)
    sub[1:-1, 1:-1] = m[j0:j1 + 1, i0:i1 + 1]
    x = np.arange(sub.shape[1], dtype=float) + (i0 - 1)
    y = np.arange(sub.shape[0], dtype=float) + (j0 - 1)
    gen = contourpy.contour_generator(x, y, sub, line_type=contourpy.LineType.Separate)
    out = []
    for line in gen.lines(0.5):
        line = np.asarray(line, dtype=float)
        if len(line) > 1 and np.allclose(line[0], line[-1]):
            line = line[:-1]
        line = _drop_collinear(line)
        if len(line) >= 3:
            out.append(line)
    return out


def mask_to_contours(mask, geometry: ImageGeometry, progress_slices=None):
    """Contours of a 3D mask [k, j, i] on ``geometry``: list of (k, (n, 3) RAS mm points)."""
    mask = np.asarray(mask, dtype=bool)
    out = []
    ks = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    for k in ks:
        for ij in slice_contours_ij(mask[k]):
            ijk = np.column_stack([ij, np.full(len(ij), float(k))])
            out.append((int(k), geometry.ijk_to_ras(ijk)))
        if progress_slices is not None:
            progress_slices(int(k))
    return out


def polygons_to_mask2d(polygons_ij, shape_ji):
    """Rasterise closed polygons given in (i, j) index coordinates on a [j, i] grid (even-odd rule)."""
    from matplotlib.path import Path as MplPath

    out = np.zeros(shape_ji, dtype=bool)
    for poly in polygons_ij:
        poly = np.asarray(poly, dtype=float)
        if len(poly) < 3:
            continue
        lo = np.maximum(np.floor(poly.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(poly.max(axis=0)).astype(int), np.array([shape_ji[1] - 1, shape_ji[0] - 1]))
        if np.any(hi < lo):
            continue
        ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
        pts = np.column_stack([ii.ravel(), jj.ravel()]).astype(float)
        inside = MplPath(np.vstack([poly, poly[:1]]), closed=True).contains_points(pts)
        out[jj.ravel()[inside], ii.ravel()[inside]] ^= True
    return out


def contours_to_mask(contours_ras, geometry: ImageGeometry, plane_tol_mm=None):
    """Rasterise planar contours (list of (n, 3) RAS mm arrays) onto ``geometry`` (even-odd per slice).

    Each contour must lie on a slice of the grid (every point within ``plane_tol_mm`` of it, default
    a quarter of the slice spacing): a contour between slices, beyond the first or last slice, or
    not planar is an InputError naming the contour (1-based) and where it lies. Returns a bool [k, j, i].
    """
    tol = 0.25 * geometry.spacing[2] if plane_tol_mm is None else plane_tol_mm
    by_slice = {}
    for n, pts in enumerate(contours_ras, start=1):
        ijk = geometry.ras_to_ijk(np.asarray(pts, dtype=float).reshape(-1, 3))
        k = int(np.rint(ijk[:, 2].mean()))
        off_mm = np.abs(ijk[:, 2] - k) * geometry.spacing[2]
        if np.ptp(ijk[:, 2]) * geometry.spacing[2] > 2 * tol:
            raise InputError(f"contour {n} is not planar on the image grid (spans {np.ptp(ijk[:, 2]) * geometry.spacing[2]:.2f} "
                             "mm along the slice normal): contour planes do not match the image slices")
        if not 0 <= k < geometry.size[2]:
            raise InputError(f"contour {n} lies {ijk[:, 2].mean() * geometry.spacing[2]:.2f} mm along the slice normal "
                             f"from the first slice, outside the image's {geometry.size[2]} slices: a plane not in the image")
        if np.max(off_mm) > tol:
            raise InputError(f"contour {n} lies {np.max(off_mm):.2f} mm from slice {k} (slice spacing "
                             f"{geometry.spacing[2]:g} mm): a plane not in the image")
        by_slice.setdefault(k, []).append(ijk[:, :2])
    out = np.zeros(geometry.shape, dtype=bool)
    for k, polys in by_slice.items():
        out[k] = polygons_to_mask2d(polys, geometry.shape[1:])
    return out
