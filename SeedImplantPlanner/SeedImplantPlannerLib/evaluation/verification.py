"""Post-implant verification: match found seeds to the plan, displacements, delivered dose.

- :func:`match_seeds`: one-to-one assignment of found to planned seeds minimising the summed
  distance (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``; the assignment view
  of seed correspondence follows MARSHAL, Jain et al., Med Phys 32:3475, 2005), with a maximum
  distance: pairs farther apart are not matched, and leaving a seed unmatched costs half the
  maximum distance, so the assignment prefers leaving a migrated seed and its planned site
  unmatched to shifting a chain of matches by up to the limit each. Unmatched planned seeds are *missing* at their
  planned site; unmatched found seeds are *unexpected* (migrated there, or other metal). Missing
  and unexpected seeds are paired again without the distance limit as *migration candidates*.
- :func:`align_to_plan`: optional registration of the found seeds onto the plan (translation or
  rigid), alternating Hungarian matching and a least-squares fit (Kabsch) of the matched pairs.
  Use it when the post-implant CT is not already in the planning CT's frame.
- :func:`verify_implant`: the above, plus the dose of the planned and of the found seeds on one
  grid (:func:`dose.compute_dose_Gy`), and, with a target structure and a prescription, the
  target's D90 / V100 / V150 of both and their difference through :mod:`dvh` and :mod:`metrics`.

Strengths. Plan strengths are taken as the strengths at the implant date. The found seeds get the
strength of their matched planned seed (unmatched ones the median plan strength) unless given.
The delivered dose (``dose_found_Gy``) is the total dose to full decay from the implant date with
the seeds where they were found (the usual post-implant dosimetry assumption); it is directly
comparable with the plan. With ``implant_date`` and ``ct_date`` the dose still to come after the
CT is also returned (``dose_found_after_ct_Gy``, strengths decayed to the CT date with
:func:`strength.decay_factor`). A full plan-vs-found report (gamma, every metric) is the job of
``seedplan compare`` on the two dose files written by ``seedplan verify``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..core import progress as _progress
from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from ..physics.seeds import SeedSet

DEFAULT_MAX_DISTANCE_MM = 10.0
TARGET_METRICS = ("D90", "V100", "V150")
REGISTRATIONS = ("none", "translation", "rigid")


@dataclass
class SeedMatch:
    """Result of :func:`match_seeds` (indices into the planned and found arrays)."""

    planned_index: np.ndarray      # (M,) matched planned seeds
    found_index: np.ndarray        # (M,) their found seeds
    displacement_mm: np.ndarray    # (M, 3) found - planned (RAS mm)
    missing: np.ndarray            # planned seeds without a found seed within the limit
    unexpected: np.ndarray         # found seeds without a planned seed within the limit
    migration_candidates: list = field(default_factory=list)  # (planned, found, distance mm)
    max_distance_mm: float = DEFAULT_MAX_DISTANCE_MM

    @property
    def distance_mm(self):
        """(M,) matched distances."""
        return np.linalg.norm(self.displacement_mm, axis=1)


def _positions(seeds):
    if hasattr(seeds, "positions"):
        return np.asarray(seeds.positions, float).reshape(-1, 3)
    return np.asarray(seeds, float).reshape(-1, 3)


def match_seeds(planned, found, max_distance_mm=DEFAULT_MAX_DISTANCE_MM) -> SeedMatch:
    """Hungarian matching of ``found`` to ``planned`` (SeedSets, FoundSeeds or (N, 3) arrays)."""
    from scipy.optimize import linear_sum_assignment
    if not (isinstance(max_distance_mm, (int, float)) and math.isfinite(max_distance_mm) and max_distance_mm > 0):
        raise InputError(f"maximum matching distance must be a positive number of mm, got {max_distance_mm!r}")
    p, f = _positions(planned), _positions(found)
    if len(p) == 0:
        raise InputError("no planned seeds to match")
    if len(f) == 0:
        raise InputError("no found seeds to match")
    d = np.linalg.norm(p[:, None, :] - f[None, :, :], axis=-1)
    n_p, n_f = d.shape
    big = 1e6 + float(d.max())
    # leaving a seed unmatched costs half the limit (a planned + a found seed left over cost as much
    # as one pair at the limit), so a chain of shifted matches never hides a migrated seed
    tau = 0.5 * float(max_distance_mm)
    cost = np.full((n_p + n_f, n_f + n_p), big)
    cost[:n_p, :n_f] = np.where(d <= max_distance_mm, d, big)
    cost[:n_p, n_f:][np.diag_indices(n_p)] = tau
    cost[n_p:, :n_f][np.diag_indices(n_f)] = tau
    cost[n_p:, n_f:] = 0.0
    r, c = linear_sum_assignment(cost)
    ok = (r < n_p) & (c < n_f)
    r, c = r[ok], c[ok]
    ok = d[r, c] <= max_distance_mm
    r, c = r[ok], c[ok]
    missing = np.setdiff1d(np.arange(len(p)), r)
    unexpected = np.setdiff1d(np.arange(len(f)), c)
    cand = []
    if len(missing) and len(unexpected):
        dm = d[np.ix_(missing, unexpected)]
        rr, cc = linear_sum_assignment(dm)
        cand = [(int(missing[a]), int(unexpected[b]), float(dm[a, b])) for a, b in zip(rr, cc)]
    return SeedMatch(r.astype(int), c.astype(int), f[c] - p[r], missing.astype(int), unexpected.astype(int),
                     cand, float(max_distance_mm))


def _kabsch(a, b, rotation=True):
    """Least-squares R, t with R a + t ~ b (rows are points)."""
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    if not rotation or len(a) < 3:
        return np.eye(3), cb - ca
    h = (a - ca).T @ (b - cb)
    u, _, vt = np.linalg.svd(h)
    s = np.diag([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))])
    r = vt.T @ s @ u.T
    return r, cb - r @ ca


def align_to_plan(planned, found, mode="rigid", max_distance_mm=DEFAULT_MAX_DISTANCE_MM, iterations=10):
    """Rotation R and translation t mapping found positions onto the plan (``R x + t``).

    Alternates Hungarian matching (within ``max_distance_mm``) and a least-squares fit of the
    matched pairs; the median-free fit is made robust by dropping pairs beyond 3x the median
    distance. ``mode``: "none", "translation" or "rigid". Returns ``(R, t, SeedMatch)``.
    """
    if mode not in REGISTRATIONS:
        raise InputError(f"unknown registration {mode!r} (use one of: {', '.join(REGISTRATIONS)})")
    p, f = _positions(planned), _positions(found)
    rot, t = np.eye(3), np.zeros(3)
    m = match_seeds(p, f, max_distance_mm)
    if mode == "none":
        return rot, t, m
    for _ in range(iterations):
        moved = f @ rot.T + t
        m = match_seeds(p, moved, max_distance_mm)
        if len(m.planned_index) < (3 if mode == "rigid" else 1):
            break
        dist = m.distance_mm
        keep = dist <= max(3.0 * float(np.median(dist)), 1.0)
        r_new, t_new = _kabsch(f[m.found_index[keep]], p[m.planned_index[keep]], rotation=(mode == "rigid"))
        if np.allclose(r_new, rot, atol=1e-9) and np.allclose(t_new, t, atol=1e-6):
            break
        rot, t = r_new, t_new
    m = match_seeds(p, f @ rot.T + t, max_distance_mm)
    return rot, t, m


def displacement_stats(match: SeedMatch) -> dict:
    """Summary statistics of the matched displacements (mm)."""
    d = match.distance_mm
    if len(d) == 0:
        return {"matched": 0}
    v = match.displacement_mm
    return {"matched": int(len(d)), "mean_mm": float(d.mean()), "median_mm": float(np.median(d)),
            "p95_mm": float(np.percentile(d, 95)), "max_mm": float(d.max()),
            "mean_vector_mm": [float(x) for x in v.mean(axis=0)],
            "sd_vector_mm": [float(x) for x in v.std(axis=0)]}


def found_seedset(positions, axes, planned: SeedSet, match: SeedMatch, strength_U=None, model=None,
                  own: SeedSet | None = None) -> SeedSet:
    """Found seeds as a SeedSet at ``positions`` / ``axes`` (axes default: the planned seeds' axis).

    Strength and model: ``strength_U`` / ``model`` if given; else those of ``own`` (a found
    SeedSet read from a CSV) if given; else those of the matched planned seed (unmatched seeds:
    the median plan strength and the most common plan model).
    """
    pos = np.asarray(positions, float).reshape(-1, 3)
    n = len(pos)
    if axes is None:
        axes = np.zeros((n, 3))
        axes[:] = planned.axes[0]
        for pi, fi in zip(match.planned_index, match.found_index):
            axes[fi] = planned.axes[pi]
    if own is not None:
        sk = own.strengths_U.copy()
        models = list(own.models)
    else:
        sk = np.full(n, float(np.median(planned.strengths_U)))
        models = [Counter(planned.models).most_common(1)[0][0]] * n
        for pi, fi in zip(match.planned_index, match.found_index):
            sk[fi] = planned.strengths_U[pi]
            models[fi] = planned.models[pi]
    if strength_U is not None:
        sk[:] = float(strength_U)
    if model is not None:
        models = [str(model)] * n
    return SeedSet(pos, axes, sk, models)


def _target_metrics(dose_Gy, geometry, target, prescription_Gy, names):
    """Target metrics through the evaluation library's public functions (dvh, metrics)."""
    from .dvh import structure_dose_samples
    from .metrics import structure_metrics
    from .structures import Structure
    if not isinstance(target, Structure):
        mask = np.asarray(target, bool)
        if mask.shape != geometry.shape:
            raise InputError(f"target mask shape {mask.shape} does not match the dose grid {geometry.shape}")
        target = Structure("target", mask, geometry)
    samples = structure_dose_samples(dose_Gy, geometry, target, role="target")
    return structure_metrics(samples, names, prescription_Gy), target.name


def _metric_number(v):
    if "Gy" in v:
        return float(v["Gy"]), "Gy"
    return float(v["percent"]), "%"


def verify_implant(planned_seeds: SeedSet, found_seeds, dose_geometry: ImageGeometry, *,
                   max_distance_mm=DEFAULT_MAX_DISTANCE_MM, register="none", strength_U=None, model=None,
                   implant_date=None, ct_date=None, formalism="2D", method="fast", model_dirs=(),
                   target=None, prescription_Gy=None, metrics=TARGET_METRICS, compute_dose=True,
                   progress=None) -> dict:
    """Compare an implant with its plan; see the module doc.

    ``found_seeds``: :class:`seedfinder.FoundSeeds`, a SeedSet, or (N, 3) positions (RAS mm, in the
    plan's frame unless ``register`` is "translation" or "rigid"). ``dose_geometry``: grid of both
    dose arrays. ``target`` (a :class:`structures.Structure` or a bool mask on ``dose_geometry``)
    with ``prescription_Gy`` adds the target metrics of both and their deltas (found - planned).

    Returns a dict: ``match`` (SeedMatch), ``registration`` (R, t), ``found`` (SeedSet in the plan
    frame), ``summary`` (JSON-ready: counts, displacement statistics, missing / unexpected /
    migration candidates, dose maxima, metrics), ``rows`` (match table), ``dose_planned_Gy``,
    ``dose_found_Gy`` and, with both dates, ``dose_found_after_ct_Gy`` (arrays [k, j, i]).
    """
    from ..physics import dose as _dose
    from ..physics.strength import decay_factor, parse_datetime
    from ..physics.sources import get_model
    if not isinstance(planned_seeds, SeedSet):
        raise InputError("planned seeds must be a SeedSet (positions, axes, strengths, models)")
    planned_seeds.validate("planned seed")
    if (implant_date is None) != (ct_date is None):
        raise InputError("give both the implant date and the CT date (or neither) to decay strengths to the CT")
    _progress.report(progress, 0.0, "verify: matching")
    fpos = _positions(found_seeds)
    if len(fpos) == 0:
        raise InputError("no found seeds: nothing to verify")
    rot, t, match = align_to_plan(planned_seeds, fpos, register, max_distance_mm)
    moved = fpos @ rot.T + t
    found_axes = np.asarray(found_seeds.axes, float) @ rot.T if hasattr(found_seeds, "axes") else None
    own = found_seeds if isinstance(found_seeds, SeedSet) else None
    found = found_seedset(moved, found_axes, planned_seeds, match, strength_U, model, own)
    conf = np.asarray(getattr(found_seeds, "confidence", np.full(len(fpos), np.nan)), float)

    # -- match table ------------------------------------------------------------------------------
    rows = []
    pp, fp = planned_seeds.positions, found.positions

    def axis_angle(pi, fi):
        c = abs(float(np.dot(planned_seeds.axes[pi], found.axes[fi])))
        return math.degrees(math.acos(min(1.0, c)))

    for pi, fi in zip(match.planned_index, match.found_index):
        dv = fp[fi] - pp[pi]
        rows.append({"status": "matched", "planned_index": pi + 1, "found_index": fi + 1,
                     "planned_x_mm": pp[pi][0], "planned_y_mm": pp[pi][1], "planned_z_mm": pp[pi][2],
                     "found_x_mm": fp[fi][0], "found_y_mm": fp[fi][1], "found_z_mm": fp[fi][2],
                     "dx_mm": dv[0], "dy_mm": dv[1], "dz_mm": dv[2], "distance_mm": float(np.linalg.norm(dv)),
                     "axis_angle_deg": axis_angle(pi, fi), "confidence": conf[fi]})
    cand_by_planned = {a: (b, dist) for a, b, dist in match.migration_candidates}
    for pi in match.missing:
        r = {"status": "missing", "planned_index": pi + 1, "found_index": "",
             "planned_x_mm": pp[pi][0], "planned_y_mm": pp[pi][1], "planned_z_mm": pp[pi][2]}
        if pi in cand_by_planned:
            r["migration_candidate_found_index"] = cand_by_planned[pi][0] + 1
            r["distance_mm"] = cand_by_planned[pi][1]
        rows.append(r)
    for fi in match.unexpected:
        rows.append({"status": "unexpected", "planned_index": "", "found_index": fi + 1,
                     "found_x_mm": fp[fi][0], "found_y_mm": fp[fi][1], "found_z_mm": fp[fi][2],
                     "confidence": conf[fi]})
    for r in rows:
        for k, v in list(r.items()):
            if isinstance(v, float):
                r[k] = "" if not math.isfinite(v) else (f"{v:.3f}" if k != "confidence" else f"{v:.3f}")

    summary = {
        "planned": int(len(planned_seeds)), "found": int(len(found)), "matched": int(len(match.planned_index)),
        "missing": int(len(match.missing)), "unexpected": int(len(match.unexpected)),
        "max_match_distance_mm": float(max_distance_mm), "registration": register,
        "registration_rotation": np.round(rot, 6).tolist(), "registration_translation_mm": np.round(t, 4).tolist(),
        "displacement": displacement_stats(match),
        "missing_planned_seeds": [int(i) + 1 for i in match.missing],
        "unexpected_found_seeds": [int(i) + 1 for i in match.unexpected],
        "migration_candidates": [{"planned_seed": a + 1, "found_seed": b + 1, "distance_mm": round(d, 2)}
                                 for a, b, d in match.migration_candidates],
        "notes": [],
    }
    out = {"match": match, "registration": (rot, t), "found": found, "rows": rows, "summary": summary}
    if not compute_dose:
        _progress.report(progress, 1.0, "verify: done")
        return out

    # -- dose -------------------------------------------------------------------------------------
    sub = _progress.scaled(progress, 0.05, 0.5)
    d_plan, _ = _dose.compute_dose_Gy(dose_geometry, planned_seeds, formalism, "total", None, method, model_dirs, sub)
    sub = _progress.scaled(progress, 0.5, 0.9)
    d_found, _ = _dose.compute_dose_Gy(dose_geometry, found, formalism, "total", None, method, model_dirs, sub)
    out["dose_planned_Gy"], out["dose_found_Gy"] = d_plan, d_found
    summary["dose"] = {"grid_size": list(dose_geometry.size), "grid_spacing_mm": list(dose_geometry.spacing),
                       "planned_max_Gy": float(d_plan.max()), "found_max_Gy": float(d_found.max()),
                       "quantity": "total dose to full decay from the implant date (Gy)"}
    if implant_date is not None:
        days = (parse_datetime(ct_date) - parse_datetime(implant_date)).total_seconds() / 86400.0
        if days < 0:
            raise InputError(f"CT date {ct_date} is before the implant date {implant_date}")
        factors = np.array([decay_factor(get_model(m, model_dirs), implant_date, ct_date) for m in found.models])
        decayed = SeedSet(found.positions, found.axes, found.strengths_U * factors, found.models)
        d_after, _ = _dose.compute_dose_Gy(dose_geometry, decayed, formalism, "total", None, method, model_dirs)
        out["dose_found_after_ct_Gy"] = d_after
        summary["dose"].update({"days_implant_to_ct": days, "strength_fraction_at_ct": float(np.median(factors)),
                                "found_after_ct_max_Gy": float(d_after.max())})

    # -- target metrics ---------------------------------------------------------------------------
    if target is not None:
        if prescription_Gy is None:
            raise InputError("target metrics need the prescription dose (Gy)")
        m_plan, name = _target_metrics(d_plan, dose_geometry, target, prescription_Gy, metrics)
        m_found, _ = _target_metrics(d_found, dose_geometry, target, prescription_Gy, metrics)
        table = {}
        for k in metrics:
            a, unit = _metric_number(m_plan[k])
            b, _ = _metric_number(m_found[k])
            table[k] = {"planned": a, "found": b, "delta": b - a, "unit": unit}
        summary["target"] = {"name": name, "prescription_Gy": float(prescription_Gy), "metrics": table}
    else:
        summary["notes"].append("no target given: D90/V100 comparison left to `seedplan compare` on the two dose files")
    _progress.report(progress, 1.0, "verify: done")
    return out


MATCH_COLUMNS = ("status", "planned_index", "found_index", "planned_x_mm", "planned_y_mm", "planned_z_mm",
                 "found_x_mm", "found_y_mm", "found_z_mm", "dx_mm", "dy_mm", "dz_mm", "distance_mm",
                 "axis_angle_deg", "confidence", "migration_candidate_found_index")
