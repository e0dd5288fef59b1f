"""CT simulator, ready cases: the analytic abdomen phantom and the intra-op / post-implant object sets.

Part of :mod:`imaging.ctsim`: :data:`CASES` maps a case name to its description and to a builder of
``simulate_ct``'s keyword arguments (:func:`case_inputs`); ``ctsim.make_case`` simulates and writes
one. The objects are placed by hand and by seeded random tilts, independently of the needle and
seed finders (RAS mm).
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from .ctsim_metal import _unit
from .ctsim_physics import SEED_DIAMETER_MM, SEED_LENGTH_MM

def phantom_anatomy(geometry: ImageGeometry):
    """Analytic abdomen-like phantom on ``geometry`` (HU, float32 [k, j, i]), continuous in RAS.

    An elliptic body (semi-axes 62 x 48 mm in x/y, along z) of soft tissue (40 HU) with a 6 mm
    fat rim (-100 HU), a fat-density tumour (-30 HU, 22 mm radius) left of centre, and a bone rod
    (cortex 1100 HU, 2.5 mm thick; marrow 250 HU; radius 9 mm) posterior-right, in air (-1000 HU).
    """
    c = geometry.voxel_centers_ras(dtype=np.float32)
    x, y, z = c[..., 0], c[..., 1], c[..., 2]
    out = np.full(x.shape, -1000.0, np.float32)
    e = (x / 62.0) ** 2 + (y / 48.0) ** 2
    out[e <= 1.0] = -100.0
    out[(x / 56.0) ** 2 + (y / 42.0) ** 2 <= 1.0] = 40.0
    out[((x + 12.0) ** 2 + (y - 4.0) ** 2 + (0.6 * z) ** 2) <= 22.0 ** 2] = -30.0
    rb = np.hypot(x - 30.0, y + 26.0)
    out[rb <= 9.0] = 1100.0
    out[rb <= 6.5] = 250.0
    return out


def _phantom_geometry(slice_mm=1.0, pixel_mm=0.8, n=160, z_mm=40.0, tilt_deg=0.0):
    nk = int(round(z_mm / slice_mm))
    size = (n, n, nk)
    d = np.eye(3)
    if tilt_deg:
        a = np.deg2rad(tilt_deg)
        d = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    half = 0.5 * np.array([(n - 1) * pixel_mm, (n - 1) * pixel_mm, (nk - 1) * slice_mm])
    origin = -(d @ half)
    return ImageGeometry(size, (pixel_mm, pixel_mm, slice_mm), tuple(origin), tuple(map(tuple, d)))


def _tilted(direction, tilt_deg, rng):
    d = _unit(direction)
    perp = _unit(np.cross(d, rng.normal(size=3)))
    a = np.deg2rad(tilt_deg)
    return _unit(np.cos(a) * d + np.sin(a) * perp)


def _skin_point(tip, direction, body_semi=(62.0, 48.0)):
    """Where the line tip - s*direction leaves the phantom's elliptic body (s > 0)."""
    tip = np.asarray(tip, float)
    d = -_unit(direction)
    A = (d[0] / body_semi[0]) ** 2 + (d[1] / body_semi[1]) ** 2
    B = 2 * (tip[0] * d[0] / body_semi[0] ** 2 + tip[1] * d[1] / body_semi[1] ** 2)
    C = (tip[0] / body_semi[0]) ** 2 + (tip[1] / body_semi[1]) ** 2 - 1.0
    s = (-B + math.sqrt(max(B * B - 4 * A * C, 0.0))) / (2 * A)
    return tip + s * d


def _needle(name, tip, direction, rng, dia=1.27, bend=0.0, tilt=None):
    d = _unit(direction) if tilt is None else _tilted(direction, tilt, rng)
    entry = _skin_point(tip, d)
    out = {"name": name, "entry_ras": np.round(entry, 3).tolist(), "tip_ras": np.round(np.asarray(tip, float), 3).tolist(),
           "diameter_mm": dia, "bend_mm": bend}
    if bend:
        out["bend_direction"] = _unit(np.cross(d, [0.0, 0.0, 1.0])).tolist()
    return out


def _seed(center, axis, **kw):
    rec = {"center_ras": np.round(np.asarray(center, float), 3).tolist(), "axis": _unit(axis).round(5).tolist(),
           "model_id": "I125_OncoSeed_6711"}
    rec.update(kw)
    return rec


def _case_needles(rng):
    """Six needles from the left flank and one from the front: tilted, one bent, a crossing pair."""
    L = np.array([1.0, 0.0, 0.0])
    needles = [
        _needle("N1", (-5.0, 10.0, -6.0), L, rng, tilt=2.0),
        _needle("N2", (-2.0, -2.0, 0.0), L, rng, 1.27, bend=1.5, tilt=3.0),
        _needle("N3", (0.0, -14.0, 6.0), L, rng, 1.07, tilt=1.0),
        # crossing pair: N4 runs obliquely over N5 with 2.5 mm between their axes at the crossing
        _needle("N4", (8.0, 18.0, -1.3), _unit([1.0, -0.6, 0.0]), rng, 0.91),
        _needle("N5", (10.0, 6.0, 1.3), _unit([1.0, 0.5, 0.0]), rng, 1.27),
        # from the front (anterior), nearly perpendicular to the others
        _needle("N6", (-20.0, -20.0, 12.0), _unit([0.05, -1.0, 0.1]), rng, 1.27, tilt=2.0),
    ]
    return needles


def _case_postimplant_seeds(rng, n_lines=4):
    """Seeds along needle lines with end-to-end chains, side-by-side and crossed pairs, migrated seeds."""
    seeds = []
    kinds = []
    for n in range(n_lines):
        y0, z0 = -15.0 + 10.0 * n, -8.0 + 5.0 * (n % 2)
        ax = _tilted([1.0, 0.0, 0.0], 3.0, rng)
        start = np.array([-35.0, y0, z0])
        if n == 0:   # end-to-end chain of 4 (0.5 mm gaps)
            for s in range(4):
                seeds.append(_seed(start + ax * s * (SEED_LENGTH_MM + 0.5), ax))
                kinds.append("chain")
        else:        # 10 mm spacing
            for s in range(4):
                seeds.append(_seed(start + ax * s * 10.0 + rng.normal(0, 0.3, 3), _tilted(ax, 4.0, rng)))
                kinds.append("line")
    # side-by-side pairs (0.3-0.6 mm surface gap) and a crossed pair
    for c in ((15.0, -18.0, 4.0), (18.0, 14.0, -6.0)):
        ax = _tilted([0.0, 0.0, 1.0], 10.0, rng)
        perp = _unit(np.cross(ax, [1.0, 0.0, 0.0]))
        gap = rng.uniform(0.3, 0.6)
        seeds.append(_seed(np.asarray(c), ax))
        seeds.append(_seed(np.asarray(c) + perp * (SEED_DIAMETER_MM + gap) + ax * rng.uniform(-1, 1), _tilted(ax, 3.0, rng)))
        kinds += ["side_by_side", "side_by_side"]
    c = np.array([25.0, 0.0, 10.0])
    a1 = _unit([1.0, 0.3, 0.2])
    a2 = _unit(np.cross(a1, [0.0, 0.0, 1.0]))
    seeds.append(_seed(c, a1))
    seeds.append(_seed(c + _unit(np.cross(a1, a2)) * (SEED_DIAMETER_MM + 0.3), a2))
    kinds += ["crossed", "crossed"]
    # migrated seeds: off every line, random axes
    for c in ((-25.0, 30.0, 14.0), (35.0, -10.0, -15.0)):
        seeds.append(_seed(np.asarray(c), rng.normal(size=3)))
        kinds.append("migrated")
    for s, k in zip(seeds, kinds):
        s["arrangement"] = k
    return seeds


def _calcs(rng):
    return [{"center_ras": [-18.0, 24.0, -10.0], "radius_mm": 1.5, "hu": 600.0},
            {"center_ras": [4.0, -28.0, 3.0], "radius_mm": 1.0, "hu": 900.0},
            {"center_ras": [22.0, 22.0, 12.0], "radius_mm": 2.0, "hu": 350.0}]


def _intraop_case(slice_mm=1.0, tilt_deg=0.0, rng_seed=11):
    rng = np.random.default_rng(rng_seed)
    needles = _case_needles(rng)
    # loaded seeds of an earlier needle (withdrawn), one seed touching needle N1
    seeds = []
    ax = _tilted([1.0, 0.0, 0.0], 2.0, rng)
    for s in range(3):
        seeds.append(_seed(np.array([-30.0, -25.0, -10.0]) + ax * s * 10.0, ax, arrangement="implanted"))
    n1 = needles[0]
    e, t = np.asarray(n1["entry_ras"]), np.asarray(n1["tip_ras"])
    d = _unit(t - e)
    p = e + d * (0.6 * np.linalg.norm(t - e))
    perp = _unit(np.cross(d, [0.0, 0.0, 1.0]))
    seeds.append(_seed(p + perp * (1.27 / 2 + SEED_DIAMETER_MM / 2 + 0.2), d, arrangement="touching_needle N1"))
    # a needle partly outside the CT: its tip beyond the last slice
    geom = _phantom_geometry(slice_mm, tilt_deg=tilt_deg)
    lo, hi = geom.bounds_ras()
    tip = np.array([-15.0, 30.0, hi[2] + 6.0])
    dirv = _unit([0.9, 0.0, 0.45])
    needles.append(_needle("N7_partly_outside", tip, dirv, rng, 1.27))
    return dict(anatomy=phantom_anatomy, geometry=geom, needles=needles, seeds=seeds, calcifications=_calcs(rng),
                slice_thickness_mm=slice_mm)


def _postimplant_case(slice_mm=1.0, tilt_deg=0.0, rng_seed=23):
    rng = np.random.default_rng(rng_seed)
    return dict(anatomy=phantom_anatomy, geometry=_phantom_geometry(slice_mm, tilt_deg=tilt_deg), needles=[],
                seeds=_case_postimplant_seeds(rng), calcifications=_calcs(rng), slice_thickness_mm=slice_mm)


#: Ready cases: name -> (description, builder of simulate_ct's inputs).
CASES = {
    "intraop_1mm": ("phantom, 7 steel needles (tilted, one bent 1.5 mm, a crossing pair 2.5 mm apart, one from the "
                    "front, one partly outside the CT), 3 implanted seeds, a seed touching a needle, 3 calcifications, "
                    "bone; 1 mm slices", lambda: _intraop_case(1.0)),
    "intraop_3mm": ("the intraop_1mm objects on 3 mm slices", lambda: _intraop_case(3.0)),
    "intraop_oblique": ("the intraop_1mm objects, gantry tilted 20 deg, 1 mm slices", lambda: _intraop_case(1.0, 20.0)),
    "postimplant_1mm": ("phantom, 24 seeds: a 4-seed end-to-end chain, 3 needle lines, 2 side-by-side pairs, a crossed "
                        "pair, 2 migrated seeds; 3 calcifications, bone; 1 mm slices", lambda: _postimplant_case(1.0)),
    "postimplant_3mm": ("the postimplant_1mm seeds on 3 mm slices", lambda: _postimplant_case(3.0)),
    "postimplant_oblique": ("the postimplant_1mm seeds, gantry tilted 20 deg", lambda: _postimplant_case(1.0, 20.0)),
}


def case_inputs(name):
    """The keyword arguments of :func:`simulate_ct` for a ready case (see :data:`CASES`)."""
    if name not in CASES:
        raise InputError(f"unknown CT case {name!r}; known: {', '.join(CASES)}")
    return CASES[name][1]()
