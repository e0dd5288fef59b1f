"""Needle-to-needle clearance inside the patient.

Two needles *clash* when their surfaces come closer than ``clearance_mm`` anywhere on the part of
their paths inside the patient (axis-to-axis distance minus both outer radii, ISO 9626 gauges),
e.g. two fan needles from different skin regions crossing in the target. Clashing needles are
never both loaded (the optimiser treats them as a conflicting pair). Straight needles use the
exact segment-to-segment distance (closest points of two segments, clamped to their ends);
curved catheters are compared as their sampled polylines (1 mm steps). Parallel template needles
at 5 mm spacing with 18 G needles keep 3.7 mm and never clash at the default 3 mm.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError

#: Default minimum surface-to-surface distance between two needles inside the patient (mm).
DEFAULT_CLEARANCE_MM = 3.0


def segment_distance(p0, p1, q0, q1):
    """Smallest distance (mm) between segments p0-p1 and q0-q1 (closest points clamped to the segments)."""
    p0, p1, q0, q1 = (np.asarray(v, dtype=float) for v in (p0, p1, q0, q1))
    u, v, w = p1 - p0, q1 - q0, p0 - q0
    a, b, c, d, e = u @ u, u @ v, v @ v, u @ w, v @ w
    den = a * c - b * b
    if den > 1e-12 * a * c:
        s = min(1.0, max(0.0, (b * e - c * d) / den))
    else:  # parallel: any s, take the start
        s = 0.0
    t = (b * s + e) / c if c > 0 else 0.0
    if t < 0.0 or t > 1.0:
        t = min(1.0, max(0.0, t))
        s = min(1.0, max(0.0, (b * t - d) / a)) if a > 0 else 0.0
    return float(np.linalg.norm(p0 + s * u - (q0 + t * v)))


def _polyline(needle, step_mm=1.0):
    return needle.sample_path(step_mm)[0]


def needle_distance(a, b):
    """Smallest axis-to-axis distance (mm) between two needles' paths (entry to tip)."""
    if not a.curved and not b.curved:
        return segment_distance(a.entry, a.tip, b.entry, b.tip)
    pa, pb = _polyline(a), _polyline(b)
    best = math.inf
    for i in range(len(pa) - 1):
        for j in range(len(pb) - 1):
            best = min(best, segment_distance(pa[i], pa[i + 1], pb[j], pb[j + 1]))
    return best


def clashing_pairs(needles, clearance_mm=DEFAULT_CLEARANCE_MM):
    """Index pairs (Q, 2) of needles whose surfaces come closer than ``clearance_mm``.

    Pairs whose bounding boxes are farther apart than the clearance plus both radii are skipped
    without computing the distance.
    """
    if not (math.isfinite(clearance_mm) and clearance_mm >= 0):
        raise InputError(f"needle clearance must be >= 0 mm, got {clearance_mm}")
    n = len(needles)
    if n < 2:
        return np.zeros((0, 2), dtype=int)
    lo = np.array([np.minimum(x.entry, x.tip) if not x.curved else _polyline(x).min(axis=0) for x in needles])
    hi = np.array([np.maximum(x.entry, x.tip) if not x.curved else _polyline(x).max(axis=0) for x in needles])
    rad = np.array([x.outer_radius_mm for x in needles])
    out = []
    for i in range(n):
        reach = clearance_mm + rad[i] + rad
        gap = np.maximum(0.0, np.maximum(lo[i] - hi, lo - hi[i]))  # per-axis box gap to every needle
        near = np.flatnonzero(np.all(gap <= reach[:, None], axis=1))
        for j in near[near > i]:
            if needle_distance(needles[i], needles[j]) - rad[i] - rad[j] < clearance_mm:
                out.append((i, int(j)))
    return np.asarray(out, dtype=int).reshape(-1, 2)
