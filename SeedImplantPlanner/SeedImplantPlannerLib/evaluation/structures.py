"""Structures on the dose grid: binary masks resampled from any segmentation, and margin expansion.

A :class:`Structure` is a named binary mask on its *own* grid (the segmentation's, often the CT's).
Evaluation never modifies it; it is sampled onto the dose grid:

- :func:`mask_on_grid` -- voxel-centre (nearest-neighbour) sampling: a dose voxel belongs to the
  structure if its centre lies in a structure voxel. Exact for any pair of grids, oblique
  directions included (the centre is mapped RAS -> source ijk and rounded).
- :func:`touch_mask_on_grid` -- every dose voxel that holds at least one structure voxel centre or
  whose centre is inside; the candidate region for sub-voxel sampling (see :mod:`dvh`).
- :func:`expand_margin` -- PTV = GTV + margin (mm, isotropic or one value per axis), optionally
  clipped to the body. Isotropic or grid-aligned margins use an exact Euclidean distance transform;
  anisotropic margins on an oblique grid dilate with the exact ellipsoid in voxel space.

Arrays are [k, j, i]; coordinates RAS mm (see :mod:`geometry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import GeometryError, InputError
from ..core.geometry import ImageGeometry, mask_at_indices

#: Names recognised as the body outline (case-insensitive), in order of preference.
BODY_NAMES = ("body", "external", "outer contour", "skin")
#: Names recognised as the target when none is given, in order of preference.
TARGET_NAMES = ("ptv", "ctv", "gtv", "prostate", "target")


@dataclass
class Structure:
    """A named binary mask on its own grid; ``color`` is (r, g, b) in 0-1."""

    name: str
    mask: np.ndarray
    geometry: ImageGeometry
    color: tuple = (0.9, 0.1, 0.1)

    def __post_init__(self):
        self.mask = np.asarray(self.mask, dtype=bool)
        if self.mask.shape != self.geometry.shape:
            raise InputError(f"structure '{self.name}': mask shape {self.mask.shape} does not match "
                             f"its grid {self.geometry.shape}")

    @property
    def n_voxels(self) -> int:
        """Number of voxels of the mask on its own grid."""
        return int(np.count_nonzero(self.mask))

    @property
    def volume_cc(self) -> float:
        """Volume on its own grid (voxel count x voxel volume), cm^3."""
        return self.n_voxels * self.geometry.voxel_volume_cc

    def require_not_empty(self):
        """Raise InputError if the mask holds no voxel."""
        if self.n_voxels == 0:
            raise InputError(f"structure '{self.name}' is empty (no voxel in its segmentation)")
        return self

    def bbox_ijk(self):
        """(lo, hi) inclusive voxel index bounds (i, j, k) of the mask; None if empty."""
        if self.n_voxels == 0:
            return None
        lo, hi = [], []
        for axis in (2, 1, 0):  # i is the last array axis
            other = tuple(a for a in range(3) if a != axis)
            idx = np.flatnonzero(np.any(self.mask, axis=other))
            lo.append(int(idx[0]))
            hi.append(int(idx[-1]))
        return np.array(lo), np.array(hi)

    def centroid_ras(self):
        """RAS centre of mass of the mask (mm)."""
        k, j, i = np.nonzero(self.mask)
        if len(i) == 0:
            raise InputError(f"structure '{self.name}' is empty (no voxel in its segmentation)")
        return self.geometry.ijk_to_ras(np.array([i.mean(), j.mean(), k.mean()]))


def structures_from_segmentation(seg, names=None, allow_empty=False):
    """List of :class:`Structure` from a :class:`segio.Segmentation` (all segments, or ``names``).

    A requested name that is missing raises InputError listing the segments; an empty segment
    raises InputError unless ``allow_empty``.
    """
    wanted = seg.names() if names is None else list(names)
    out = []
    for name in wanted:
        s = seg.find(name)
        st = Structure(s.name, seg.mask(s.segment_id), seg.geometry, tuple(s.color))
        if not allow_empty:
            st.require_not_empty()
        out.append(st)
    return out


def read_structures(path, names=None, allow_empty=False):
    """Structures from a ``.seg.nrrd`` or a labelmap (NRRD, NIfTI, MHA; names from a sidecar)."""
    from ..imaging.segio import read_segmentation
    return structures_from_segmentation(read_segmentation(path), names, allow_empty)


def find_structure(structures, name):
    """The structure called ``name`` (case-insensitive); InputError listing the names if missing."""
    low = str(name).strip().lower()
    for s in structures:
        if s.name.lower() == low:
            return s
    raise InputError(f"no structure named '{name}' (structures: {', '.join(s.name for s in structures) or 'none'})")


def guess_role_structure(structures, candidates):
    """First structure whose lower-case name equals one of ``candidates`` (in candidate order), else None."""
    by_name = {s.name.lower(): s for s in structures}
    for c in candidates:
        if c in by_name:
            return by_name[c]
    return None


# -- sampling onto another grid ----------------------------------------------------------------

def lookup_mask(structure: Structure, ijk_src):
    """Mask value at integer source indices (..., 3) (i, j, k); False outside the source grid."""
    return mask_at_indices(structure.mask, ijk_src)


def _dst_box(structure: Structure, dst: ImageGeometry, pad=1):
    """Destination index box (lo, hi inclusive, clipped) that can hold the structure; None if disjoint."""
    lo, hi = structure.bbox_ijk()
    corners = np.array([[x, y, z] for x in (lo[0] - 0.5, hi[0] + 0.5) for y in (lo[1] - 0.5, hi[1] + 0.5)
                        for z in (lo[2] - 0.5, hi[2] + 0.5)], float)
    d = dst.ras_to_ijk(structure.geometry.ijk_to_ras(corners))
    dlo = np.floor(d.min(axis=0)).astype(int) - pad
    dhi = np.ceil(d.max(axis=0)).astype(int) + pad
    size = np.asarray(dst.size)
    if np.any(dhi < 0) or np.any(dlo > size - 1):
        return None
    return np.maximum(dlo, 0), np.minimum(dhi, size - 1)


def mask_on_grid(structure: Structure, dst: ImageGeometry, tol_mm=1e-3) -> np.ndarray:
    """Boolean mask [k, j, i] on ``dst``: dose voxels whose centre lies inside the structure."""
    if structure.geometry.matches(dst, tol_mm):
        return structure.mask.copy()
    out = np.zeros(dst.shape, dtype=bool)
    if structure.n_voxels == 0:
        return out
    box = _dst_box(structure, dst)
    if box is None:
        return out
    lo, hi = box
    lin, off = _affine(dst, structure.geometry)  # dst indices -> structure indices
    ii = np.arange(lo[0], hi[0] + 1, dtype=float)
    jj = np.arange(lo[1], hi[1] + 1, dtype=float)
    # one k-slice at a time: bounded memory for large grids
    plane = (ii[None, :, None] * lin[:, 0] + jj[:, None, None] * lin[:, 1]) + off  # (nj, ni, 3)
    for k in range(lo[2], hi[2] + 1):
        src = np.rint(plane + k * lin[:, 2]).astype(np.int64)
        out[k, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = lookup_mask(structure, src)
    return out


def _affine(src: ImageGeometry, dst: ImageGeometry):
    """(linear 3x3, offset 3) mapping continuous src indices (i, j, k) to dst indices."""
    m = np.linalg.inv(dst.ijk_to_ras_matrix) @ src.ijk_to_ras_matrix
    return m[:3, :3], m[:3, 3]


def _src_box_inside(structure: Structure, dst: ImageGeometry):
    """For grids with parallel axes: inclusive src index box (lo, hi) whose centres fall in dst's extent.

    Returns None when the axes are not parallel (oblique relative orientation), () when empty.
    """
    lin, off = _affine(structure.geometry, dst)
    if not np.allclose(np.count_nonzero(np.abs(lin) > 1e-9, axis=0), 1) or \
            not np.allclose(np.count_nonzero(np.abs(lin) > 1e-9, axis=1), 1):
        return None
    lo, hi = np.zeros(3, int), np.zeros(3, int)
    for a in range(3):  # src axis a maps onto dst axis p with d = s * i + b
        p = int(np.argmax(np.abs(lin[:, a])))
        s, b = lin[p, a], off[p]
        n = dst.size[p]
        x0, x1 = (-0.5 - b) / s, (n - 0.5 - b) / s
        lo[a] = max(0, int(math.ceil(min(x0, x1) - 1e-9)))
        hi[a] = min(structure.geometry.size[a] - 1, int(math.floor(max(x0, x1) + 1e-9)))
        if hi[a] < lo[a]:
            return ()
    return lo, hi


def _voxel_chunks(mask, box=None, chunk=2_000_000):
    """Yield (i, j, k) integer index arrays (M, 3) of the True voxels of ``mask`` (within ``box``), in chunks."""
    if box is None:
        box = (np.zeros(3, int), np.asarray(mask.shape[::-1]) - 1)
    lo, hi = box
    sub = mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    per_slice = max(1, int(np.prod(sub.shape[1:])))
    step = max(1, chunk // per_slice)
    for k0 in range(0, sub.shape[0], step):
        kk, jj, ii = np.nonzero(sub[k0:k0 + step])
        if kk.size:
            yield np.stack([ii + lo[0], jj + lo[1], kk + k0 + lo[2]], axis=-1)


def touch_mask_on_grid(structure: Structure, dst: ImageGeometry, tol_mm=1e-3) -> np.ndarray:
    """Dose voxels holding a structure voxel centre, or whose centre is inside (union)."""
    out = mask_on_grid(structure, dst, tol_mm)
    if structure.geometry.matches(dst, tol_mm) or structure.n_voxels == 0:
        return out
    box = _src_box_inside(structure, dst)
    if box == ():
        return out
    lin, off = _affine(structure.geometry, dst)
    size = np.asarray(dst.size)
    for ijk in _voxel_chunks(structure.mask, box or None):
        d = np.rint(ijk @ lin.T + off).astype(np.int64)
        inside = np.all((d >= 0) & (d < size), axis=-1)
        d = d[inside]
        out[d[:, 2], d[:, 1], d[:, 0]] = True
    return out


def fraction_outside(structure: Structure, dst: ImageGeometry) -> float:
    """Fraction of the structure's voxels whose centres lie outside ``dst``'s extent (voxel edges)."""
    n = structure.n_voxels
    if n == 0 or structure.geometry.matches(dst):
        return 0.0
    box = _src_box_inside(structure, dst)
    if box == ():
        return 1.0
    if box is not None:
        lo, hi = box
        inside = np.count_nonzero(structure.mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1])
        return float(1.0 - inside / n)
    lin, off = _affine(structure.geometry, dst)
    hi_d = np.asarray(dst.size) - 0.5
    inside = 0
    for ijk in _voxel_chunks(structure.mask):
        d = ijk @ lin.T + off
        inside += int(np.count_nonzero(np.all((d >= -0.5) & (d <= hi_d), axis=-1)))
    return float(1.0 - inside / n)


def require_on_grid(structure: Structure, dst: ImageGeometry, what="dose grid", max_outside=0.0):
    """Raise GeometryError if the structure lies outside ``dst`` (entirely, or beyond ``max_outside``)."""
    f = fraction_outside(structure.require_not_empty(), dst)
    if f >= 1.0 - 1e-12:
        lo, hi = dst.bounds_ras()
        raise GeometryError(
            f"structure '{structure.name}' lies entirely outside the {what} (grid spans RAS "
            f"{np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm; structure centre "
            f"{np.round(structure.centroid_ras(), 1).tolist()} mm)")
    if f > max_outside:
        raise GeometryError(f"structure '{structure.name}': {100 * f:.1f}% of its volume lies outside the {what}; "
                            "enlarge the dose grid")
    return f


# -- margins -----------------------------------------------------------------------------------

def _margin_vector(margin_mm):
    m = np.atleast_1d(np.asarray(margin_mm, dtype=float))
    if m.size == 1:
        m = np.repeat(m, 3)
    if m.size != 3:
        raise InputError(f"margin must be one value or three (R-L, A-P, S-I) in mm, got {m.size} values")
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise InputError(f"margin must be finite and >= 0 mm, got {m.tolist()}")
    return m


def expand_margin(mask, geometry: ImageGeometry, margin_mm, clip_to=None, name="structure") -> np.ndarray:
    """Mask grown by ``margin_mm`` (one value, or three along R-L, A-P, S-I in mm), clipped to ``clip_to``.

    A voxel joins when its centre lies within the ellipsoid of semi-axes ``margin_mm`` around some
    voxel centre of ``mask`` (exact Euclidean distance, not a chamfer approximation). On an oblique
    grid the ellipsoid is expressed in RAS, so the margin keeps its anatomical directions.
    """
    from scipy import ndimage
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != geometry.shape:
        raise InputError(f"{name}: mask shape {mask.shape} does not match grid {geometry.shape}")
    if not mask.any():
        raise InputError(f"{name} is empty: nothing to expand")
    m = _margin_vector(margin_mm)
    sp = np.asarray(geometry.spacing)
    full = mask
    # work on the bounding box grown by the margin's reach (a CT-sized grid is mostly empty)
    reach_ijk = np.ceil(np.abs(geometry.direction_matrix.T) @ m / sp).astype(int) + 1
    bb = {}
    for axis, r in zip((2, 1, 0), reach_ijk):  # reach is (i, j, k); array axes are (k, j, i)
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(np.any(full, axis=other))
        bb[axis] = slice(max(int(idx[0]) - r, 0), min(int(idx[-1]) + r + 1, full.shape[axis]))
    box = (bb[0], bb[1], bb[2])
    mask = full[box]
    if np.all(m == 0):
        out = mask.copy()
    else:
        d = geometry.direction_matrix
        # semi-axes of the ellipsoid in voxel units along i, j, k: A = D^T diag(1/m^2) D (metric)
        isotropic = np.allclose(m, m[0])
        aligned = np.allclose(np.abs(d).max(axis=0), 1.0, atol=1e-6)  # each grid axis along one RAS axis
        if isotropic or aligned:
            # per-axis margin along the grid axes (aligned: permutation of RAS axes is the identity)
            m_axes = m if not aligned else np.abs(d.T) @ m
            if np.any(m_axes == 0):
                scale = np.where(m_axes > 0, sp / np.where(m_axes > 0, m_axes, 1.0), 1e6)
            else:
                scale = sp / m_axes
            # EDT in units where the margin ellipsoid is the unit ball; sampling per array axis (k, j, i)
            dist = ndimage.distance_transform_edt(~mask, sampling=tuple(scale[::-1]))
            out = dist <= 1.0 + 1e-9
        else:
            # exact ellipsoid structuring element in voxel space (oblique grid, anisotropic margin)
            reach = np.ceil(np.abs(d.T) @ m / sp).astype(int)
            ii, jj, kk = [np.arange(-r, r + 1) for r in reach]
            K, J, I = np.meshgrid(kk, jj, ii, indexing="ij")
            off = np.stack([I, J, K], axis=-1) * sp  # mm along grid axes
            ras = off @ d.T
            with np.errstate(divide="ignore", invalid="ignore"):
                q = np.where(m > 0, (ras / np.where(m > 0, m, 1.0)) ** 2, np.where(np.abs(ras) < 1e-9, 0.0, np.inf))
            element = q.sum(axis=-1) <= 1.0 + 1e-9
            out = ndimage.binary_dilation(mask, structure=element)
    result = np.zeros(full.shape, dtype=bool)
    result[box] = out
    if clip_to is not None:
        clip = np.asarray(clip_to, dtype=bool)
        if clip.shape != full.shape:
            raise InputError(f"clip mask shape {clip.shape} does not match grid {geometry.shape}")
        result &= clip
    return result


def expand_structure(structure: Structure, margin_mm, body: Structure | None = None, name=None,
                     color=(0.95, 0.6, 0.1)) -> Structure:
    """New structure = ``structure`` + margin (mm), clipped to ``body`` (resampled to its grid if needed)."""
    structure.require_not_empty()
    clip = None
    if body is not None:
        body.require_not_empty()
        clip = mask_on_grid(body, structure.geometry)
    out = expand_margin(structure.mask, structure.geometry, margin_mm, clip, structure.name)
    m = _margin_vector(margin_mm)
    label = f"{m[0]:g}" if np.allclose(m, m[0]) else "x".join(f"{v:g}" for v in m)
    return Structure(name or f"{structure.name}+{label}mm", out, structure.geometry, tuple(color))
