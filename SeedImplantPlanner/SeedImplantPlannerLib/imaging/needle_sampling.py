"""CT values along a needle: trilinear samples, cross-section peak profile, level crossings.

Used by the needle finder to measure a line found in the metal mask on the CT itself (tip, steel
level, streaks) rather than on the thresholded voxels.
"""

from __future__ import annotations

import math

import numpy as np

from .needle_lines import perp_frame

class Sampler:
    """Trilinear CT samples at RAS points (outside the grid: NaN)."""

    def __init__(self, ct, geometry):
        self.ct = ct
        self.g = geometry

    def __call__(self, ras):
        from scipy import ndimage
        ras = np.asarray(ras, float)
        ijk = self.g.ras_to_ijk(ras.reshape(-1, 3))
        inside = np.all((ijk >= -0.5) & (ijk <= np.asarray(self.g.size) - 0.5), axis=1)
        out = np.full(len(ijk), np.nan, dtype=np.float64)
        if inside.any():
            coords = ijk[inside][:, ::-1].T
            out[inside] = ndimage.map_coordinates(self.ct, coords, order=1, mode="nearest")
        return out.reshape(ras.shape[:-1])


def peak_profile(sample, c, d, ts, radius_mm):
    """Largest CT value within ``radius_mm`` of the axis at positions ``c + t d`` (NaN outside the CT)."""
    u, v = perp_frame(d)
    offs = [np.zeros(3)]
    for r in (0.5 * radius_mm, radius_mm):
        offs += [r * (math.cos(a) * u + math.sin(a) * v) for a in np.arange(8) * math.pi / 4]
    offs = np.array(offs)
    pts = (c + ts[:, None] * d)[:, None, :] + offs[None]
    vals = sample(pts)
    centre_ok = np.isfinite(vals[:, 0])
    out = np.where(centre_ok, np.nanmax(np.where(np.isfinite(vals), vals, -np.inf), axis=1), np.nan)
    return out, centre_ok


def level_crossing(ts, prof, plateau, base, start_t, level):
    """First ``t`` after ``start_t`` (walking out of the needle) where ``prof`` falls to ``level``
    (a fraction of the way from ``base`` to ``plateau``) and stays there for two samples; None if
    it never does."""
    half = base + level * (plateau - base)
    below = prof < half
    persist = below[:-1] & below[1:]
    first = np.flatnonzero(persist & (ts[:-1] > start_t))
    if not len(first):
        return None
    q = int(first[0])
    if q == 0:
        return float(ts[0])
    t0, t1, p0, p1 = ts[q - 1], ts[q], prof[q - 1], prof[q]
    return float(t0 + (p0 - half) / (p0 - p1) * (t1 - t0)) if p0 != p1 else float(t1)

