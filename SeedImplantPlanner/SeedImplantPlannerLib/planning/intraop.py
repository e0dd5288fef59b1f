"""Intra-operative re-planning on a CT with the needles in place (``seedplan intraop``).

The chain, on the intra-operative CT and the plan it came from:

1. **Frames**: the plan's needles and seeds must overlap the CT (else the plan belongs to another
   frame: GeometryError naming both extents).
2. **Needles in place**: as found on the CT (:func:`find_needles_in_place`: the needle finder in
   the target + 30 mm and its matching to the plan), or as given (a corrected table); names and
   numbers are the plan's;
   each is compared with its planned needle (entry, tip, angle, depth deviations). Planned
   needles not in the CT are listed as missing.
3. **Seeds already implanted** (:func:`find_implanted_seeds`): :func:`imaging.seedfinder.find_seeds`
   in the target + margin on the CT (it takes out the steel of the needles passing through that
   region); a found seed still inside a needle in place (:func:`drop_needle_objects`: in its lumen,
   i.e. centred within the needle's outer radius + ``LUMEN_TOLERANCE_MM`` of its path, coaxial
   within ``LUMEN_MAX_ANGLE_DEG``, not beyond its tip) is not implanted and is listed among the
   rejected objects; a seed deposited beside a needle (off its path by at least the needle's and
   the seed's radii) or ahead of its tip is implanted. Each found seed is matched to the nearest planned seed (displacement) and gets the plan's strength.
4. **Dose of those seeds** on the plan's dose grid (TG-43, each seed along its own axis).
5. **Re-plan the rest** (:mod:`planning.intraop_replan`) along the needles as they are (:func:`pipeline.plan_from_masks` with the
   found seeds fixed and the needles in place implanted, no new needles unless allowed), same
   source, prescription, goals and structures as the plan.
6. **Cheap options** when the goals are not met: seed spacing 5 mm instead of the plan's, no
   margin between seeds and the target edge, then new needles (adopted only when allowed,
   otherwise only reported). The first option that meets the goals is adopted (when allowed) and
   every option tried is listed with its V100 / D90 and whether it meets the goals.

Needle names and numbers of the re-plan are those of the plan (new needles are numbered after
the plan's last one and named ``new-<name>``). Units: mm, RAS, Gy, U.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..core import progress as _progress
from ..core.errors import GeometryError, InputError
from ..core.geometry import ImageGeometry
from ..physics.seeds import SeedSet
from .needles import Needle
from .planfile import Plan

#: A seed still inside a needle lies in its lumen: coaxial with the needle and centred on its path
#: (an 18 G needle's lumen is 0.84 mm wide, a seed 0.8 mm: centred within 0.02 mm). A seed
#: deposited beside the needle is off its path by at least the needle's outer radius plus the
#: seed's radius (0.64 + 0.4 mm for 18 G). A found seed is in the needle when its centre lies
#: within the needle's outer radius plus this tolerance (mm; the found seed's and needle's
#: position error, as the seed finder's on-the-axis rule) of the needle's path, ...
LUMEN_TOLERANCE_MM = 0.3
#: ... its axis within this angle (deg) of the needle's (a seed lying across the needle is outside
#: it; a round image's axis, taken from its track, is the needle's anyway) ...
LUMEN_MAX_ANGLE_DEG = 30.0
#: ... and its centre behind the needle's tip (a seed inside reaches at most to the tip, its centre
#: half a seed behind it; this much (mm) beyond is allowed for the found tip's error). A seed ahead of
#: the tip was pushed out (deposited).
LUMEN_TIP_TOLERANCE_MM = 1.0
#: A found seed is the implant of the nearest planned seed within this distance (mm).
SEED_MATCH_MM = 8.0
#: Seed-finding region: the target grown by this margin (mm).
SEED_ROI_MARGIN_MM = 15.0
#: Needle-finding region: needles whose steel passes within this margin of the target (mm).
NEEDLE_ROI_MARGIN_MM = 30.0
NEEDLE_DEVIATION_COLUMNS = ("number", "name", "status", "entry_mm", "tip_mm", "angle_deg", "depth_mm",
                            "planned_entry_x_mm", "planned_entry_y_mm", "planned_entry_z_mm", "planned_tip_x_mm",
                            "planned_tip_y_mm", "planned_tip_z_mm", "entry_x_mm", "entry_y_mm", "entry_z_mm",
                            "tip_x_mm", "tip_y_mm", "tip_z_mm", "gauge")
SEED_FOUND_COLUMNS = ("index", "x_mm", "y_mm", "z_mm", "axis_x", "axis_y", "axis_z", "sk_U", "model", "confidence",
                      "planned_seed", "planned_needle", "displacement_mm")
OPTION_COLUMNS = ("option", "seed_spacing_mm", "target_margin_mm", "new_needles", "adopted", "goals_met",
                  "n_new_seeds", "n_needles_used", "v100_pct", "d90_Gy", "unmet")


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def needle_deviation(planned: Needle, actual: Needle) -> dict:
    """Deviations of a needle from its plan: entry and tip distance (mm), angle (deg), depth (mm, + deeper)."""
    ang = math.degrees(math.acos(float(np.clip(planned.direction @ actual.direction, -1.0, 1.0))))
    return {"entry_mm": float(np.linalg.norm(actual.entry - planned.entry)),
            "tip_mm": float(np.linalg.norm(actual.tip - planned.tip)), "angle_deg": ang,
            "depth_mm": float(actual.depth_mm - planned.depth_mm)}


def check_frames(ct_geometry: ImageGeometry, plan: Plan, margin_mm=20.0):
    """Raise GeometryError when none of the plan's needle tips or seeds lies within ``margin_mm`` of the CT."""
    pts = [plan.seeds.positions] + [n.tip[None, :] for n in plan.needles]
    pts = np.vstack([p for p in pts if len(p)]) if any(len(p) for p in pts) else np.zeros((0, 3))
    if not len(pts):
        raise InputError("the plan has neither needles nor seeds")
    lo, hi = ct_geometry.bounds_ras()
    inside = np.all((pts >= lo - margin_mm) & (pts <= hi + margin_mm), axis=1)
    if not inside.any():
        raise GeometryError(
            f"the plan does not overlap the CT: its needles and seeds span RAS {np.round(pts.min(0), 1).tolist()} to "
            f"{np.round(pts.max(0), 1).tolist()} mm, the CT {np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm "
            "(a plan made in another frame or for another patient?)")


def assign_plan_numbers(needles, plan: Plan):
    """Give needles in place their plan numbers by name; returns (in-place needles, unplanned needles).

    Needles whose name is not in the plan keep their name and get numbers after the plan's last.
    Two needles claiming one planned needle are refused.
    """
    by_name = {n.name: n for n in plan.needles}
    top = max([n.number for n in plan.needles] or [0])
    placed, unplanned, seen = [], [], set()
    for n in needles:
        n = copy.deepcopy(n)
        p = by_name.get(n.name)
        if p is None:
            top += 1
            n.number = top
            unplanned.append(n)
            continue
        if p.name in seen:
            raise InputError(f"two needles in place are named {p.name!r}: each planned needle can be in place once")
        seen.add(p.name)
        n.number = p.number
        n.gauge = n.gauge or p.gauge
        placed.append(n)
    return placed, unplanned


def find_needles_in_place(ct_hu, ct_geometry: ImageGeometry, plan: Plan, seg=None, margin_mm=NEEDLE_ROI_MARGIN_MM,
                          progress=None):
    """Needles on the CT matched to the plan (:mod:`imaging.needlefinder`, :mod:`planning.needle_match`).

    The search region is the plan's target + ``margin_mm`` when ``seg`` is given (a needle is
    kept when its steel passes through it, and followed to its tip and skin entry). Returns
    ``(needles in place as plan Needles with the plan's names and numbers, NeedleMatching,
    FoundNeedles)``. A CT with metal but no needle gives an empty list (reasons in FoundNeedles).
    """
    from ..evaluation.structures import Structure, expand_margin, mask_on_grid
    from ..imaging.needlefinder import find_needles
    from .needle_match import match_needles
    region = None
    if seg is not None and plan.structures.get("target"):
        t = seg.find(plan.structures["target"])
        region = mask_on_grid(Structure(t.name, expand_margin(seg.mask(t.segment_id), seg.geometry, margin_mm,
                                                              name=t.name), seg.geometry), ct_geometry)
        if not region.any():
            lo, hi = ct_geometry.bounds_ras()
            raise GeometryError(f"the target '{t.name}' (+{margin_mm:g} mm) does not overlap the CT (CT spans RAS "
                                f"{np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm)")
    used = plan.used_needles() or plan.needles      # needles that carry seeds (template positions left empty are no needles)
    found = find_needles(ct_hu, ct_geometry, region_mask=region, progress=progress,
                         expected_directions=[n.direction for n in used] or None)
    matching = match_needles(found, used)
    return matching.needles(), matching, found


def needles_from_dicts(items, gauge=18):
    """Needles from dicts with entry/tip (``entry_ras``/``tip_ras`` or ``entry_ras_mm``/``tip_ras_mm``) and a name."""
    out = []
    for k, d in enumerate(items, start=1):
        entry = d.get("entry_ras", d.get("entry_ras_mm"))
        tip = d.get("tip_ras", d.get("tip_ras_mm"))
        if entry is None or tip is None:
            raise InputError(f"needle {k}: entry and tip are required")
        out.append(Needle(int(d.get("number", k)), np.asarray(entry, float), np.asarray(tip, float),
                          name=str(d.get("name") or ""), gauge=int(d.get("gauge", gauge)), kind="implanted",
                          fixed=True))
    return out


def point_segment_distance(points, a, b):
    """Distance (mm) of points (n, 3) to the segment a-b."""
    p = np.asarray(points, float).reshape(-1, 3)
    ab = np.asarray(b, float) - np.asarray(a, float)
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - (np.asarray(a) + t[:, None] * ab), axis=1)


def drop_needle_objects(found, needles):
    """Indices of found seeds to keep and rejection rows of those still inside a needle in place.

    A seed inside a needle lies in its lumen: its centre within the needle's outer radius +
    ``LUMEN_TOLERANCE_MM`` of the needle's path (the curve through its control points for a curved
    needle, sampled every 1 mm, the straight entry-tip line otherwise; run on 60 mm outside the skin), its axis within
    ``LUMEN_MAX_ANGLE_DEG`` of the needle's, and its centre no further than
    ``LUMEN_TIP_TOLERANCE_MM`` beyond the tip. Anything else was deposited: beside the needle
    (off its path by the needle's plus the seed's radius, 1.0 mm for an 18 G needle) or ahead of
    its tip. The needle's own steel never reaches this point: the seed finder takes it out and
    rejects what is left on a needle's axis or along it.
    """
    pos = np.asarray(found.positions, float).reshape(-1, 3)
    axes = np.asarray(getattr(found, "axes", np.zeros((len(pos), 3))), float).reshape(-1, 3)
    keep = np.ones(len(pos), dtype=bool)
    rejected = []
    cos_max = math.cos(math.radians(LUMEN_MAX_ANGLE_DEG))
    for n in needles:
        r = n.outer_radius_mm
        d = n.direction
        path = n.sample_path(1.0)[0] if n.curved else np.vstack([n.entry, n.tip])
        path = np.vstack([n.entry - 60.0 * d, path])          # the shaft outside the skin too
        dist = np.full(len(pos), np.inf)
        along = np.tile(d, (len(pos), 1))                      # the path's direction nearest each seed
        for a, b in zip(path[:-1], path[1:]):
            ds = point_segment_distance(pos, a, b)
            nearer = ds < dist
            dist[nearer] = ds[nearer]
            along[nearer] = (b - a) / max(float(np.linalg.norm(b - a)), 1e-12)
        beyond = (pos - n.tip) @ n.tangent_from_tip(0.0)
        norm = np.linalg.norm(axes, axis=1)
        coaxial = (np.abs(np.sum(axes * along, axis=1)) >= cos_max * norm) | (norm < 1e-9)
        inside = keep & (dist <= r + LUMEN_TOLERANCE_MM) & coaxial & (beyond <= LUMEN_TIP_TOLERANCE_MM)
        for i in np.flatnonzero(inside):
            rejected.append({"position_mm": np.round(pos[i], 2).tolist(), "reason": f"inside needle {n.name} in place "
                             f"(in its lumen: {dist[i]:.1f} mm from its axis, coaxial): not implanted"})
        keep &= ~inside
    return np.flatnonzero(keep), rejected


def match_found_seeds(found_pos, plan: Plan, max_mm=SEED_MATCH_MM):
    """One-to-one matching of found seeds to planned seeds: (planned index or -1, displacement mm) per found seed."""
    from scipy.optimize import linear_sum_assignment
    fp = np.asarray(found_pos, float).reshape(-1, 3)
    pp = plan.seeds.positions
    idx = np.full(len(fp), -1, dtype=int)
    disp = np.full(len(fp), np.nan)
    if len(fp) and len(pp):
        d = np.linalg.norm(fp[:, None, :] - pp[None, :, :], axis=-1)
        r, c = linear_sum_assignment(np.where(d <= max_mm, d, 1e6))
        ok = d[r, c] <= max_mm
        idx[r[ok]] = c[ok]
        disp[r[ok]] = d[r[ok], c[ok]]
    return idx, disp


def find_implanted_seeds(ct_hu, ct_geometry: ImageGeometry, roi, needles, expected=None, progress=None):
    """Seeds already implanted, found on the CT in ``roi`` with the needles in place known.

    The seed finder takes out the steel of the needles it finds in ``roi`` (each followed to its
    tip and skin entry); objects on a needle in place (``needles``: plan :class:`needles.Needle`
    objects, as found or as corrected) are then dropped (:func:`drop_needle_objects`). Giving the
    finder the chain's needles instead (found in the target + 30 mm with the plan's directions)
    saved the second search but reported more needle residue as seeds on the sample case (24 and
    25 objects for 21 seeds at 1 and 3 mm, against 22 with the search in the seed region): a needle
    that search misses is not taken out. Returns ``(FoundSeeds or None when the CT holds no seed
    metal, indices of the seeds kept, rejected rows, warnings)``.
    """
    from ..imaging.seedfinder import find_seeds
    try:
        found = find_seeds(ct_hu, ct_geometry, expected_count=expected, roi_mask=roi if roi.any() else None,
                           progress=progress)
    except InputError as exc:
        if "metal" not in str(exc) and "no seeds found" not in str(exc):
            raise
        return None, np.zeros(0, dtype=int), [], [f"no seeds implanted yet ({exc})"]
    keep, rej = drop_needle_objects(found, needles)
    return found, keep, list(found.rejected) + rej, list(found.warnings)


def found_seed_rows(found_pos, found_axes, conf, plan: Plan):
    """Rows of the implanted-seeds table (SEED_FOUND_COLUMNS): pose, confidence, planned seed and displacement."""
    pidx, disp = match_found_seeds(found_pos, plan)
    rows = []
    for i in range(len(found_pos)):
        p = int(pidx[i])
        rows.append({"index": i + 1, "x_mm": round(float(found_pos[i, 0]), 3), "y_mm": round(float(found_pos[i, 1]), 3),
                     "z_mm": round(float(found_pos[i, 2]), 3), "axis_x": round(float(found_axes[i, 0]), 5),
                     "axis_y": round(float(found_axes[i, 1]), 5), "axis_z": round(float(found_axes[i, 2]), 5),
                     "sk_U": round(plan.strength_U, 5), "model": plan.model_id, "confidence": round(float(conf[i]), 3),
                     "planned_seed": p + 1 if p >= 0 else "", "planned_needle":
                     (next((n.name for n in plan.needles if n.number == plan.seed_needle[p]), "") if p >= 0 else ""),
                     "displacement_mm": round(float(disp[i]), 2) if p >= 0 else ""})
    return rows


@dataclass
class IntraopResult:
    """Everything ``seedplan intraop`` reports and writes."""

    plan: Plan                               # the re-plan (fixed implanted seeds + new seeds)
    original: Plan
    dose_Gy: np.ndarray                      # total dose of the re-plan
    dose_geometry: ImageGeometry
    implanted_dose_Gy: np.ndarray            # dose of the seeds already implanted only
    planned_dose_Gy: np.ndarray              # dose of the original plan on the same grid
    evaluation: object                       # evaluation of the re-plan
    needle_rows: list                        # deviation table (one row per planned or unplanned needle)
    needles_in_place: list
    found_seeds: SeedSet                     # seeds already implanted (as found)
    seed_rows: list
    rejected: list
    options: list                            # option rows tried (first = as the plan)
    adopted: str
    advice: str
    goals_met: bool
    target_mask: np.ndarray | None = None    # the target on the dose grid
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    registration: object = None              # imaging.registration.RegistrationResult the CT was aligned with

    def target_dvh_curves(self, n_bins=201):
        """Target cumulative DVH (% volume) of the plan, the seeds implanted and the re-plan: (bins Gy, {label: %})."""
        bins = np.linspace(0.0, 2.0 * self.plan.prescription_Gy, n_bins)
        curves = {}
        name = self.plan.structures.get("target")
        if self.target_mask is None or not self.target_mask.any():
            return bins, curves
        for label, dose in (("plan", self.planned_dose_Gy), ("implanted only", self.implanted_dose_Gy),
                            ("now (re-plan)", self.dose_Gy)):
            d = np.sort(np.asarray(dose)[self.target_mask])
            curves[f"{name} {label}"] = 100.0 * (d.size - np.searchsorted(d, bins, side="left")) / d.size
        return bins, curves

    def summary(self) -> dict:
        """Plain-JSON summary."""
        dev = [r for r in self.needle_rows if r["status"] == "in place"]
        return {"needles_in_place": len(self.needles_in_place),
                "needles_missing": sum(1 for r in self.needle_rows if r["status"].startswith("not in the CT")),
                "needles_unplanned": sum(1 for r in self.needle_rows if r["status"] == "unplanned"),
                "deviation_tip_mm_median": _median([r["tip_mm"] for r in dev]),
                "deviation_angle_deg_median": _median([r["angle_deg"] for r in dev]),
                "seeds_implanted_found": len(self.found_seeds), "seeds_new": int((~self.plan.seed_fixed).sum()),
                "seeds_total": len(self.plan.seeds), "adopted_option": self.adopted, "goals_met": self.goals_met,
                "advice": self.advice, "options": self.options, "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
                "warnings": list(self.warnings), "rejected_objects": self.rejected,
                "registration": None if self.registration is None else self.registration.to_dict()}

    def deviation_line(self) -> str:
        """One line: how far the needles in place are from the plan."""
        return deviation_line(self.needle_rows)


def deviation_line(needle_rows) -> str:
    """One line from the deviation table's rows (:func:`needle_rows`, or read back from a saved table)."""
    dev = [r for r in needle_rows if str(r["status"]) == "in place"]
    if not dev:
        return "no planned needle in place"
    tip = np.array([float(r["tip_mm"]) for r in dev])
    ang = np.array([float(r["angle_deg"]) for r in dev])
    miss = sum(1 for r in needle_rows if str(r["status"]).startswith("not in the CT"))
    return (f"{len(dev)} needles in place: tip off by {np.median(tip):.1f} mm median (max {tip.max():.1f}), "
            f"angle {np.median(ang):.1f} deg median (max {ang.max():.1f}); {miss} planned needles not in the CT")


def _median(v):
    return float(np.median(v)) if len(v) else None


def needle_rows(plan: Plan, placed, unplanned):
    """Deviation table rows: every planned needle (in place or not) and the unplanned ones."""
    rows = []
    by_number = {n.number: n for n in placed}
    used = {n.number for n in plan.used_needles()}
    for p in plan.needles:
        a = by_number.get(p.number)
        row = {"number": p.number, "name": p.name, "gauge": p.gauge,
               "planned_entry_x_mm": p.entry[0], "planned_entry_y_mm": p.entry[1], "planned_entry_z_mm": p.entry[2],
               "planned_tip_x_mm": p.tip[0], "planned_tip_y_mm": p.tip[1], "planned_tip_z_mm": p.tip[2]}
        if a is None:
            if p.number not in used:
                continue        # an unused template position: not a needle of the plan
            row["status"] = "not in the CT (loaded and withdrawn, or not inserted)"
            rows.append(row)
            continue
        row.update(needle_deviation(p, a))
        row.update({"status": "in place", "entry_x_mm": a.entry[0], "entry_y_mm": a.entry[1], "entry_z_mm": a.entry[2],
                    "tip_x_mm": a.tip[0], "tip_y_mm": a.tip[1], "tip_z_mm": a.tip[2]})
        rows.append(row)
    for a in unplanned:
        rows.append({"number": a.number, "name": a.name, "gauge": a.gauge, "status": "unplanned",
                     "entry_x_mm": a.entry[0], "entry_y_mm": a.entry[1], "entry_z_mm": a.entry[2],
                     "tip_x_mm": a.tip[0], "tip_y_mm": a.tip[1], "tip_z_mm": a.tip[2]})
    for r in rows:
        for k, v in list(r.items()):
            if isinstance(v, (float, np.floating)):
                r[k] = round(float(v), 3)
    return rows


def run_intraop(ct_hu, ct_geometry: ImageGeometry, plan: Plan, seg, needles, *, expected_implanted=None,
                implanted_seeds: SeedSet | None = None, allow_new_needles=False, try_options=True, time_limit_s=4.0,
                rng_seed=0, progress=None, registration=None):
    """The intra-operative chain (module doc) on a CT array; returns an :class:`IntraopResult`.

    ``seg``: the plan's segmentation (:class:`imaging.segio.Segmentation`); ``needles``: the needles
    in place (list of :class:`needles.Needle`, names as in the plan); ``expected_implanted``: the
    number of seeds implanted so far, if known; ``implanted_seeds``: the seeds already implanted as
    the user corrected them (then the CT is not searched). ``registration``: the
    :class:`imaging.registration.RegistrationResult` ``ct_geometry`` was re-labelled with
    (``align_to_planning``), recorded in the result; ``needles`` must be in the planning frame then.
    """
    from ..evaluation.structures import Structure, expand_margin, mask_on_grid
    from ..physics.dose import DoseGrid
    from .intraop_replan import replan_options
    timings = {}
    warnings = []
    t0 = time.monotonic()
    ct = np.asarray(ct_hu)
    if ct.shape != ct_geometry.shape:
        raise InputError(f"CT array shape {ct.shape} does not match its geometry {ct_geometry.shape}")
    check_frames(ct_geometry, plan)
    target = plan.structures.get("target")
    if not target:
        raise InputError("the plan names no target structure (structures.target)")
    tseg = seg.find(target)
    tmask = seg.mask(tseg.segment_id)
    placed, unplanned = assign_plan_numbers(needles, plan)
    if unplanned:
        warnings.append(f"{len(unplanned)} needle(s) not in the plan ({', '.join(n.name for n in unplanned)}): "
                        "listed, not used for seeds")
    for n in placed:
        n.fixed = True
        n.kind = "implanted"
    rows = needle_rows(plan, placed, unplanned)
    timings["needles_s"] = time.monotonic() - t0
    _progress.report(progress, 0.05, "seeds already implanted")

    # seeds already implanted
    t1 = time.monotonic()
    roi = mask_on_grid(Structure(tseg.name, expand_margin(tmask, seg.geometry, SEED_ROI_MARGIN_MM, name=tseg.name),
                                 seg.geometry), ct_geometry)
    if not roi.any():
        lo, hi = ct_geometry.bounds_ras()
        raise GeometryError(f"the target '{tseg.name}' (+{SEED_ROI_MARGIN_MM:g} mm) does not overlap the CT (CT spans "
                            f"RAS {np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm)")
    rejected = []
    found_pos = np.zeros((0, 3))
    found_axes = np.zeros((0, 3))
    conf = np.zeros(0)
    if implanted_seeds is not None:
        found_pos, found_axes = implanted_seeds.positions.copy(), implanted_seeds.axes.copy()
        conf = np.ones(len(found_pos))
    else:
        found, keep, rejected, warn = find_implanted_seeds(ct, ct_geometry, roi, placed + unplanned,
                                                           expected_implanted, _progress.scaled(progress, 0.05, 0.2))
        warnings += warn
        if found is not None:
            found_pos, found_axes, conf = found.positions[keep], found.axes[keep], found.confidence[keep]
            if expected_implanted is not None and len(found_pos) > expected_implanted:
                warnings.append(f"{len(found_pos)} seeds found but {expected_implanted} implanted: check the extra "
                                "ones (lowest confidence first) before trusting the dose")
    fixed = SeedSet(found_pos, found_axes if len(found_pos) else np.zeros((0, 3)),
                    np.full(len(found_pos), plan.strength_U), [plan.model_id] * len(found_pos))
    seed_rows = found_seed_rows(found_pos, found_axes, conf, plan)
    timings["seeds_s"] = time.monotonic() - t1

    # re-plan, with the cheap options when the goals are not met
    t2 = time.monotonic()
    best, adopted, options, goals_met, advice = replan_options(
        plan, seg, fixed, placed, allow_new_needles=allow_new_needles, try_options=try_options,
        time_limit_s=time_limit_s, rng_seed=rng_seed, progress=_progress.scaled(progress, 0.2, 0.9))
    new, dose, g, ev = best
    timings["replan_s"] = time.monotonic() - t2


    # dose of the seeds already implanted, and of the original plan, on the same grid
    t3 = time.monotonic()
    implanted = DoseGrid(g, fixed, plan.formalism, "fast").dose_Gy("total") if len(fixed) else np.zeros(g.shape, np.float32)
    planned = DoseGrid(g, plan.seeds, plan.formalism, "fast").dose_Gy("total")
    timings["dose_s"] = time.monotonic() - t3
    timings["total_s"] = time.monotonic() - t0
    _progress.report(progress, 1.0, "intra-operative re-plan done")
    tm = mask_on_grid(Structure(tseg.name, tmask, seg.geometry), g)
    return IntraopResult(new, plan, dose, g, implanted, planned, ev, rows, placed, fixed, seed_rows, rejected, options,
                         adopted, advice, goals_met, tm, timings,
                         warnings + [f"registration: {w}" for w in getattr(registration, "warnings", [])], registration)

