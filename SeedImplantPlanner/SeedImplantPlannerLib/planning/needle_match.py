"""Needles found on an intra-operative CT matched to the planned needles; deviations per needle.

Each found needle (:class:`imaging.needlefinder.FoundNeedle`) is paired with at most one planned
needle (:class:`planning.needles.Needle`) by a one-to-one assignment (Hungarian method, scipy
``linear_sum_assignment``) minimising ``tip distance + 0.5 x entry deviation + 1 mm/deg x angle``;
pairs farther than ``max_tip_mm`` at the tip or ``max_angle_deg`` apart are never matched.

Deviations of a matched needle (planned -> found), all in mm or degrees:

- ``tip_mm``: 3D distance between the planned and the found tip;
- ``entry_mm``: in the plane through the planned entry perpendicular to the planned needle, the
  distance between the planned entry and where the found needle's line crosses that plane (the
  planned entry may be a template hole off the skin: this compares like with like);
- ``angle_deg``: angle between the planned and the found direction;
- ``depth_mm``: the tip's deviation along the planned direction, positive when the needle went in
  deeper than planned;
- ``lateral_tip_mm``: the tip's deviation perpendicular to the planned direction.

Matched needles keep the plan's number and name; needles found but not planned get numbers after
the plan's and names ``X1``, ``X2``...; planned needles with no found needle are listed as missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from .needles import Needle

DEVIATION_COLUMNS = ("number", "name", "status", "tip_mm", "entry_mm", "angle_deg", "depth_mm", "lateral_tip_mm",
                     "found_depth_mm", "planned_depth_mm", "entry_on", "confidence",
                     "found_tip_x_mm", "found_tip_y_mm", "found_tip_z_mm",
                     "planned_tip_x_mm", "planned_tip_y_mm", "planned_tip_z_mm")


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def deviations(planned: Needle, found) -> dict:
    """Deviation of ``found`` (a FoundNeedle) from ``planned`` (a Needle): see the module doc."""
    dp = _unit(planned.tip - planned.entry)
    df = _unit(found.direction)
    cosang = float(np.clip(dp @ df, -1.0, 1.0))
    angle = math.degrees(math.acos(cosang))
    dtip = found.tip - planned.tip
    along = float(dtip @ dp)
    lateral = float(np.linalg.norm(dtip - along * dp))
    denom = float(df @ dp)
    if abs(denom) > 1e-6:
        s = float((planned.entry - found.tip) @ dp) / denom
        cross = found.tip + s * df
        entry_dev = float(np.linalg.norm(cross - planned.entry))
    else:
        entry_dev = float("inf")
    return {"tip_mm": float(np.linalg.norm(dtip)), "entry_mm": entry_dev, "angle_deg": angle, "depth_mm": along,
            "lateral_tip_mm": lateral}


@dataclass
class NeedleMatch:
    """One row of the matching: a planned needle, a found one, or both with their deviations."""

    number: int
    name: str
    planned: Needle | None
    found: object | None          # FoundNeedle
    dev: dict | None = None
    with_plan: bool = True        # False when there was no plan to match against

    @property
    def status(self) -> str:
        """``matched``, ``missing`` (planned, not found), ``unplanned`` (found, not in the plan) or
        ``found`` (no plan given)."""
        if self.planned is not None and self.found is not None:
            return "matched"
        if not self.with_plan:
            return "found"
        return "missing" if self.found is None else "unplanned"

    def row(self) -> dict:
        """Row of the deviation table (:data:`DEVIATION_COLUMNS`)."""
        r = {c: "" for c in DEVIATION_COLUMNS}
        r.update(number=self.number, name=self.name, status=self.status)
        if self.dev:
            for k in ("tip_mm", "entry_mm", "depth_mm", "lateral_tip_mm"):
                r[k] = f"{self.dev[k]:.2f}"
            r["angle_deg"] = f"{self.dev['angle_deg']:.2f}"
        if self.found is not None:
            r["found_depth_mm"] = f"{self.found.depth_mm:.1f}"
            r["entry_on"] = self.found.entry_on
            r["confidence"] = f"{self.found.confidence:.3f}"
            for a, v in zip("xyz", self.found.tip):
                r[f"found_tip_{a}_mm"] = f"{v:.2f}"
        if self.planned is not None:
            r["planned_depth_mm"] = f"{self.planned.depth_mm:.1f}"
            for a, v in zip("xyz", self.planned.tip):
                r[f"planned_tip_{a}_mm"] = f"{v:.2f}"
        return r


class NeedleMatching:
    """Result of :func:`match_needles`: rows in plan order, then the unplanned needles."""

    def __init__(self, rows):
        self.rows_ = rows

    @property
    def matched(self):
        return [m for m in self.rows_ if m.status == "matched"]

    @property
    def missing(self):
        return [m for m in self.rows_ if m.status == "missing"]

    @property
    def unplanned(self):
        return [m for m in self.rows_ if m.status == "unplanned"]

    def rows(self) -> list:
        """Deviation table rows."""
        return [m.row() for m in self.rows_]

    def needles(self, usable_length_mm=None) -> list:
        """The found needles as plan :class:`Needle` objects (kind ``implanted``, fixed), numbered and
        named as the plan (unplanned ones after), ready for re-planning."""
        out = []
        for m in self.rows_:
            if m.found is None:
                continue
            gauge = m.planned.gauge if m.planned is not None and not m.found.gauge_measured else m.found.gauge
            ul = usable_length_mm or (m.planned.usable_length_mm if m.planned is not None else None)
            kw = {} if ul is None else {"usable_length_mm": ul}
            out.append(Needle(m.number, m.found.entry, m.found.tip, name=m.name, gauge=int(gauge), kind="implanted",
                              fixed=True, **kw))
        return out

    def summary(self) -> dict:
        """Plain-JSON summary: counts and the median / largest deviations of the matched needles."""
        out = {"planned": sum(1 for m in self.rows_ if m.planned is not None),
               "found": sum(1 for m in self.rows_ if m.found is not None),
               "matched": len(self.matched), "missing": [m.name for m in self.missing],
               "unplanned": [m.name for m in self.unplanned]}
        if self.matched:
            for k in ("tip_mm", "entry_mm", "angle_deg", "depth_mm"):
                v = np.array([m.dev[k] for m in self.matched])
                out[k] = {"median": round(float(np.median(np.abs(v))), 2), "max": round(float(np.max(np.abs(v))), 2)}
        return out

    def summary_line(self) -> str:
        """One line: counts and median (max) deviations."""
        s = self.summary()
        line = f"needles: {s['matched']} of {s['planned']} planned found"
        if s["unplanned"]:
            line += f", {len(s['unplanned'])} unplanned ({', '.join(s['unplanned'])})"
        if s["missing"]:
            line += f", missing: {', '.join(s['missing'])}"
        if s["matched"]:
            line += ("; deviation median (max): tip {t[median]:.1f} ({t[max]:.1f}) mm, entry {e[median]:.1f} "
                     "({e[max]:.1f}) mm, angle {a[median]:.1f} ({a[max]:.1f}) deg, depth {d[median]:.1f} ({d[max]:.1f}) mm"
                     ).format(t=s["tip_mm"], e=s["entry_mm"], a=s["angle_deg"], d=s["depth_mm"])
        return line


def match_needles(found, planned, max_tip_mm=20.0, max_angle_deg=15.0) -> NeedleMatching:
    """Match found needles to planned ones (one to one); see the module doc."""
    from scipy.optimize import linear_sum_assignment
    found = list(found)
    planned = list(planned)
    if not (max_tip_mm > 0 and max_angle_deg > 0):
        raise InputError(f"needle matching limits must be > 0 (tip {max_tip_mm} mm, angle {max_angle_deg} deg)")
    numbers = [p.number for p in planned]
    if len(set(numbers)) != len(numbers):
        raise InputError("planned needles have repeated numbers: " + ", ".join(str(n) for n in numbers))
    pairs = {}
    if found and planned:
        big = 1e9
        cost = np.full((len(planned), len(found)), big)
        devs = {}
        for a, p in enumerate(planned):
            for b, f in enumerate(found):
                d = deviations(p, f)
                if d["tip_mm"] <= max_tip_mm and d["angle_deg"] <= max_angle_deg:
                    cost[a, b] = d["tip_mm"] + 0.5 * min(d["entry_mm"], 100.0) + d["angle_deg"]
                    devs[a, b] = d
        r, c = linear_sum_assignment(cost)
        for a, b in zip(r, c):
            if cost[a, b] < big:
                pairs[a] = (b, devs[a, b])
    rows = []
    used = set()
    for a, p in enumerate(planned):
        if a in pairs:
            b, d = pairs[a]
            used.add(b)
            rows.append(NeedleMatch(p.number, p.name, p, found[b], d))
        else:
            rows.append(NeedleMatch(p.number, p.name, p, None))
    nxt = max(numbers, default=0)
    prefix = "X" if planned else "N"
    k = 0
    for b, f in enumerate(found):
        if b not in used:
            k += 1
            rows.append(NeedleMatch(nxt + k, f"{prefix}{k}", None, f, with_plan=bool(planned)))
    return NeedleMatching(rows)


def found_needles_as_plan_needles(found, usable_length_mm=None) -> list:
    """Found needles (no plan) as :class:`Needle` objects numbered 1..N, named ``N1``..``NN``."""
    return match_needles(found, []).needles(usable_length_mm)
