"""Needle paths: straight needles (entry -> tip), curved catheters, needle files and tables.

Coordinates are RAS millimetres. A needle runs from its ``entry`` (the template hole or the skin
point where it goes in) to its ``tip``; seeds are loaded measured *from the tip* back towards the
entry (as the person loading the needle counts them). Derived quantities:

- ``direction``: unit vector entry -> tip (for a curved catheter: of the chord);
- ``depth_mm``: path length entry -> tip (arc length for a curved catheter);
- ``angle_from_vertical_deg``: angle between the needle's projection on the axial plane and the
  anterior-posterior axis, 0..90 degrees (0 = straight anterior/posterior approach, 90 = lateral);
- ``tilt_deg``: signed cranio-caudal tilt out of the axial plane, asin(d_S), positive when the
  needle points superiorly (towards +S) from entry to tip;
- ``angle_to_reference_deg``: angle to a reference axis (the template normal for template needles).

Curved catheters are an interpolating cubic spline through control points (chord-length
parameterisation, scipy ``make_interp_spline``); positions along them are found by arc length
(dense polyline table) and each seed's axis is the local tangent.

Needle outer diameters by gauge are the nominal values of ISO 9626 (thin-wall / regular-wall
stainless needle tubing), used to add the needle radius to obstacle margins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import InputError

#: Nominal needle outer diameter (mm) by gauge, ISO 9626 (regular wall).
GAUGE_OUTER_DIAMETER_MM = {14: 2.11, 15: 1.83, 16: 1.65, 17: 1.47, 18: 1.27, 19: 1.07, 20: 0.91, 21: 0.82, 22: 0.72}
DEFAULT_GAUGE = 18
#: Most template holes tried (a 1.3 mm template over a 20 cm target has about 24 000).
MAX_TEMPLATE_HOLES = 40000
DEFAULT_USABLE_LENGTH_MM = 200.0
KINDS = ("template", "freehand", "auto", "curved", "implanted")


def vec3(v, what):
    a = np.asarray(v, dtype=float).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise InputError(f"{what} must be three finite RAS coordinates in mm, got {v!r}")
    return a


def unit_vector(v, what):
    v = vec3(v, what)
    n = float(np.linalg.norm(v))
    if n < 1e-9:
        raise InputError(f"{what} has zero length")
    return v / n


@dataclass
class Needle:
    """One needle or catheter: entry and tip (RAS mm), gauge, usable length, optional curve."""

    number: int
    entry: np.ndarray
    tip: np.ndarray
    name: str = ""
    gauge: int = DEFAULT_GAUGE
    usable_length_mm: float = DEFAULT_USABLE_LENGTH_MM
    kind: str = "freehand"
    control_points: np.ndarray | None = None  # curved catheters: (M, 3) from entry to tip
    reference_axis: np.ndarray | None = None  # e.g. template normal
    fixed: bool = False  # re-planning: needle already in the patient
    _table: tuple = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.number = int(self.number)
        if not self.name:
            self.name = f"N{self.number}"
        if self.kind not in KINDS:
            raise InputError(f"needle {self.name}: unknown kind {self.kind!r} (use one of {', '.join(KINDS)})")
        if self.control_points is not None:
            cp = np.asarray(self.control_points, dtype=float).reshape(-1, 3)
            if len(cp) < 2 or not np.all(np.isfinite(cp)):
                raise InputError(f"needle {self.name}: a curved path needs at least 2 finite control points")
            self.control_points = cp
            self.entry = cp[0].copy()
            self.tip = cp[-1].copy()
        self.entry = vec3(self.entry, f"needle {self.name} entry")
        self.tip = vec3(self.tip, f"needle {self.name} tip")
        if np.linalg.norm(self.tip - self.entry) < 1e-6:
            raise InputError(f"needle {self.name}: entry and tip coincide ({self.entry.tolist()})")
        if self.gauge not in GAUGE_OUTER_DIAMETER_MM:
            raise InputError(f"needle {self.name}: unknown gauge {self.gauge} "
                             f"(known: {', '.join(str(g) for g in sorted(GAUGE_OUTER_DIAMETER_MM))})")
        if not (math.isfinite(self.usable_length_mm) and self.usable_length_mm > 0):
            raise InputError(f"needle {self.name}: usable length must be > 0 mm, got {self.usable_length_mm}")
        if self.reference_axis is not None:
            self.reference_axis = unit_vector(self.reference_axis, f"needle {self.name} reference axis")

    # -- path ----------------------------------------------------------------------------------
    @property
    def curved(self) -> bool:
        """True for a catheter through more than two control points."""
        return self.control_points is not None and len(self.control_points) > 2

    def _polyline(self):
        """Dense polyline (P, 3) from entry to tip and its cumulative arc length (P,)."""
        if self._table is None:
            if self.curved:
                from scipy.interpolate import make_interp_spline
                cp = self.control_points
                seg = np.linalg.norm(np.diff(cp, axis=0), axis=1)
                if np.any(seg < 1e-6):
                    raise InputError(f"needle {self.name}: two consecutive control points coincide")
                t = np.concatenate([[0.0], np.cumsum(seg)])
                spline = make_interp_spline(t, cp, k=min(3, len(cp) - 1))
                n = max(200, int(t[-1] / 0.25))
                pts = spline(np.linspace(0.0, t[-1], n))
            else:
                pts = np.vstack([self.entry, self.tip])
            s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
            self._table = (pts, s)
        return self._table

    @property
    def depth_mm(self) -> float:
        """Path length from entry to tip (mm)."""
        return float(self._polyline()[1][-1])

    @property
    def direction(self) -> np.ndarray:
        """Unit vector from entry to tip (the chord for a curved catheter)."""
        d = self.tip - self.entry
        return d / np.linalg.norm(d)

    @property
    def too_long(self) -> bool:
        """True if the path is longer than the needle's usable length."""
        return self.depth_mm > self.usable_length_mm + 1e-6

    @property
    def outer_radius_mm(self) -> float:
        """Half the nominal outer diameter of the needle's gauge (ISO 9626)."""
        return 0.5 * GAUGE_OUTER_DIAMETER_MM[self.gauge]

    def point_from_tip(self, s_mm):
        """Points (..., 3) at path distance ``s_mm`` back from the tip (0 = tip)."""
        pts, s = self._polyline()
        u = self.depth_mm - np.asarray(s_mm, dtype=float)
        return np.stack([np.interp(u, s, pts[:, k]) for k in range(3)], axis=-1)

    def tangent_from_tip(self, s_mm):
        """Unit tangents (..., 3), pointing entry -> tip, at distance ``s_mm`` from the tip."""
        s_mm = np.asarray(s_mm, dtype=float)
        if not self.curved:
            return np.broadcast_to(self.direction, s_mm.shape + (3,)).copy()
        h = 0.5
        a = self.point_from_tip(np.clip(s_mm + h, 0.0, self.depth_mm))
        b = self.point_from_tip(np.clip(s_mm - h, 0.0, self.depth_mm))
        d = b - a
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    def sample_path(self, step_mm=0.5):
        """Points along the path every ``step_mm`` and their depth from the entry: (P, 3), (P,)."""
        if not step_mm > 0:
            raise InputError(f"path sampling step must be > 0 mm, got {step_mm}")
        depth = self.depth_mm
        d = np.linspace(0.0, depth, max(2, int(math.ceil(depth / step_mm)) + 1))
        return self.point_from_tip(depth - d), d

    # -- angles and table ---------------------------------------------------------------------
    @property
    def angle_from_vertical_deg(self) -> float:
        """Angle (0..90 deg) of the axial-plane projection from the anterior-posterior axis."""
        d = self.direction
        if math.hypot(d[0], d[1]) < 1e-9:
            return 0.0
        return math.degrees(math.atan2(abs(d[0]), abs(d[1])))

    @property
    def tilt_deg(self) -> float:
        """Signed cranio-caudal tilt out of the axial plane (deg, + = towards superior)."""
        return math.degrees(math.asin(max(-1.0, min(1.0, float(self.direction[2])))))

    @property
    def angle_to_reference_deg(self) -> float | None:
        """Angle (deg) between the needle and its reference axis (template normal), if any."""
        if self.reference_axis is None:
            return None
        return math.degrees(math.acos(max(-1.0, min(1.0, float(self.direction @ self.reference_axis)))))

    def moved(self, transform) -> "Needle":
        """This needle seen through a rigid ``transform`` (anything with ``map_points`` / ``map_directions``,
        e.g. :class:`imaging.registration.RegistrationResult`): entry, tip, curve and reference axis moved."""
        from dataclasses import replace
        return replace(self, entry=transform.map_points(self.entry), tip=transform.map_points(self.tip),
                       control_points=None if self.control_points is None else transform.map_points(self.control_points),
                       reference_axis=None if self.reference_axis is None
                       else transform.map_directions(self.reference_axis))

    def table_row(self) -> dict:
        """One row of the needle table (entry, tip, direction, angles, depth, length check)."""
        d = self.direction
        ref = self.angle_to_reference_deg
        return {
            "number": self.number, "name": self.name, "kind": self.kind, "gauge": self.gauge,
            "entry_x_mm": f"{self.entry[0]:.2f}", "entry_y_mm": f"{self.entry[1]:.2f}", "entry_z_mm": f"{self.entry[2]:.2f}",
            "tip_x_mm": f"{self.tip[0]:.2f}", "tip_y_mm": f"{self.tip[1]:.2f}", "tip_z_mm": f"{self.tip[2]:.2f}",
            "dir_x": f"{d[0]:.4f}", "dir_y": f"{d[1]:.4f}", "dir_z": f"{d[2]:.4f}",
            "angle_from_vertical_deg": f"{self.angle_from_vertical_deg:.1f}", "tilt_deg": f"{self.tilt_deg:.1f}",
            "angle_to_template_deg": "" if ref is None else f"{ref:.1f}",
            "depth_mm": f"{self.depth_mm:.1f}", "usable_length_mm": f"{self.usable_length_mm:.0f}",
            "too_long": "yes" if self.too_long else "no", "fixed": "yes" if self.fixed else "no",
        }

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-JSON form."""
        out = {"number": self.number, "name": self.name, "kind": self.kind, "gauge": self.gauge,
               "usable_length_mm": self.usable_length_mm, "entry_ras_mm": self.entry.tolist(),
               "tip_ras_mm": self.tip.tolist(), "fixed": bool(self.fixed)}
        if self.control_points is not None:
            out["control_points_ras_mm"] = self.control_points.tolist()
        if self.reference_axis is not None:
            out["reference_axis"] = self.reference_axis.tolist()
        return out

    @classmethod
    def from_dict(cls, d, where="needle"):
        """Inverse of :meth:`to_dict`; missing or malformed fields raise InputError."""
        try:
            return cls(number=int(d["number"]), entry=d["entry_ras_mm"], tip=d["tip_ras_mm"], name=str(d.get("name", "")),
                       gauge=int(d.get("gauge", DEFAULT_GAUGE)),
                       usable_length_mm=float(d.get("usable_length_mm", DEFAULT_USABLE_LENGTH_MM)),
                       kind=str(d.get("kind", "freehand")), control_points=d.get("control_points_ras_mm"),
                       reference_axis=d.get("reference_axis"), fixed=bool(d.get("fixed", False)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed needle entry ({exc.__class__.__name__}: {exc})") from exc


NEEDLE_TABLE_COLUMNS = ("number", "name", "kind", "gauge", "entry_x_mm", "entry_y_mm", "entry_z_mm",
                        "tip_x_mm", "tip_y_mm", "tip_z_mm", "dir_x", "dir_y", "dir_z", "angle_from_vertical_deg",
                        "tilt_deg", "angle_to_template_deg", "depth_mm", "usable_length_mm", "too_long", "fixed")


def needle_table(needles) -> list:
    """Rows of the needle table, one per needle (see :data:`NEEDLE_TABLE_COLUMNS`)."""
    return [n.table_row() for n in needles]


def renumber(needles, prefix="N"):
    """Number needles 1..N in order and name the unnamed ones ``<prefix><number>``."""
    for i, n in enumerate(needles, start=1):
        auto = n.name == f"N{n.number}" or not n.name
        n.number = i
        if auto:
            n.name = f"{prefix}{i}"
    return needles


# -- target sampling helpers ----------------------------------------------------------------------
class MaskSampler:
    """Nearest-voxel lookup of a boolean mask at RAS points (outside the grid = False)."""

    def __init__(self, mask, geometry):
        self.mask = np.asarray(mask, dtype=bool)
        self.geometry = geometry
        if self.mask.shape != geometry.shape:
            raise InputError(f"mask shape {self.mask.shape} does not match its grid {geometry.shape}")

    def __call__(self, points):
        from ..core.geometry import mask_at_indices
        ijk = np.rint(self.geometry.ras_to_ijk(np.asarray(points, dtype=float))).astype(np.int64)
        return mask_at_indices(self.mask, ijk)


def mask_points(mask, geometry):
    """RAS centres (M, 3) of the voxels set in ``mask``."""
    k, j, i = np.nonzero(mask)
    return geometry.ijk_to_ras(np.stack([i, j, k], axis=1).astype(float))


def freehand_needles(pairs, gauge=DEFAULT_GAUGE, usable_length_mm=DEFAULT_USABLE_LENGTH_MM, kind="freehand"):
    """Needles from (entry, tip) pairs in RAS mm, numbered 1..N."""
    pairs = list(pairs)
    if not pairs:
        raise InputError("no needle paths given")
    return [Needle(i, e, t, gauge=gauge, usable_length_mm=usable_length_mm, kind=kind)
            for i, (e, t) in enumerate(pairs, start=1)]


def curved_catheter(number, control_points, gauge=DEFAULT_GAUGE, usable_length_mm=DEFAULT_USABLE_LENGTH_MM, name=""):
    """A curved catheter through control points ordered from entry to tip."""
    return Needle(number, np.zeros(3), np.ones(3), name=name, gauge=gauge, usable_length_mm=usable_length_mm,
                  kind="curved", control_points=control_points)


NEEDLE_CSV_COLUMNS = ("entry_x_mm", "entry_y_mm", "entry_z_mm", "tip_x_mm", "tip_y_mm", "tip_z_mm")


def read_needles(path, gauge=DEFAULT_GAUGE, usable_length_mm=DEFAULT_USABLE_LENGTH_MM) -> list:
    """Needles from a CSV (entry_x_mm .. tip_z_mm, optional number, name, gauge, usable_length_mm) or JSON file.

    JSON: a list of needle objects as in the plan file (curved catheters through
    ``control_points_ras_mm``), ``{"needles": [...]}``, or a plan file (its needles are taken).
    """
    import csv
    import json
    from pathlib import Path
    from ..core.fileio import require_complete
    path = require_complete(Path(path), "needle file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read needle file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: needle file is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path}: needle file is not valid JSON: {exc}") from exc
        items = doc.get("needles") if isinstance(doc, dict) else doc
        if not isinstance(items, list) or not items:
            raise InputError(f"{path}: no needles in the file (expected a list of needle objects)")
        out = []
        for k, d in enumerate(items, start=1):
            if not isinstance(d, dict):
                raise InputError(f"{path}: needle {k} is not an object")
            d = {"number": k, "gauge": gauge, "usable_length_mm": usable_length_mm, **d}
            if "control_points_ras_mm" in d:
                if not isinstance(d["control_points_ras_mm"], list) or len(d["control_points_ras_mm"]) < 2:
                    raise InputError(f"{path}: needle {k}: control_points_ras_mm needs a list of at least 2 points")
                d.setdefault("entry_ras_mm", d["control_points_ras_mm"][0])
                d.setdefault("tip_ras_mm", d["control_points_ras_mm"][-1])
                d.setdefault("kind", "curved")
            out.append(Needle.from_dict(d, f"{path}: needle {k}"))
        return renumber(out)
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise InputError(f"{path}: needle CSV has no rows")
    missing = [c for c in NEEDLE_CSV_COLUMNS if c not in rows[0]]
    if missing:
        raise InputError(f"{path}: needle CSV is missing column(s): {', '.join(missing)}")
    out = []
    for line, r in enumerate(rows, start=2):
        try:
            e = [float(r[c]) for c in NEEDLE_CSV_COLUMNS[:3]]
            t = [float(r[c]) for c in NEEDLE_CSV_COLUMNS[3:]]
            g = int(r.get("gauge") or gauge)
            ul = float(r.get("usable_length_mm") or usable_length_mm)
            number = int(r.get("number") or line - 1)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: line {line}: not a number ({exc})") from None
        out.append(Needle(number, e, t, name=(r.get("name") or "").strip(), gauge=g, usable_length_mm=ul))
    numbers = [n.number for n in out]
    if len(set(numbers)) != len(numbers):
        raise InputError(f"{path}: needle numbers repeat in the 'number' column")
    return out
