"""Plan evaluation in one call: structures on the dose grid -> DVH -> metrics -> goals -> BED.

:func:`evaluate_plan` takes numpy arrays and plain objects and returns an :class:`Evaluation`
whose :meth:`Evaluation.to_dict` is plain JSON-ready data (what the Slicer panels and the report
show). Structures are :class:`structures.Structure` objects on any grid, or ``{name: bool mask}``
already on the dose grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core import progress as _progress
from .dvh import check_dose, check_prescription, compute_dvhs, structure_dose_samples
from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from .goals import GoalSet
from .metrics import (INDEX_METRICS, conformity_indices, default_metric_names, format_value, parse_metric,
                      structure_metrics)
from ..physics.radiobiology import I125_HALF_LIFE_DAYS, TISSUES, structure_radiobiology
from .structures import (BODY_NAMES, TARGET_NAMES, Structure, guess_role_structure, mask_on_grid)


@dataclass
class Evaluation:
    """Result of :func:`evaluate_plan`: per-structure samples, DVHs, metrics, goal results, BED."""

    prescription_Gy: float
    geometry: ImageGeometry
    target: str | None
    body: str | None
    samples: list
    dvhs: list
    metrics: dict                  # {structure: {metric: value dict}}
    indices: dict                  # CI/EI/HI and their volumes ({} without a target)
    goal_results: list             # list of dicts
    radiobiology: dict             # {structure: dict}
    roles: dict                    # {structure: role}
    colors: dict                   # {structure: (r, g, b)}
    warnings: list = field(default_factory=list)
    goal_set_name: str = ""
    #: {target name: its prescription Gy} of every target when the plan has several (else {}): each
    #: target's dose metrics, indices and goals are against its own prescription
    target_prescriptions: dict = field(default_factory=dict)

    def prescription_of(self, name) -> float:
        """The prescription (Gy) the metrics of structure ``name`` refer to: its own for a target, else the plan's."""
        return float(self.target_prescriptions.get(name, self.prescription_Gy))

    @property
    def n_goals_failed(self) -> int:
        """Number of goals evaluated and failed."""
        return sum(1 for g in self.goal_results if g["passed"] is False)

    def dvh_arrays(self) -> dict:
        """``{structure: {"dose_Gy", "cumulative_percent", "cumulative_cc", "differential_cc"}}`` (numpy arrays)."""
        return {d.name: {"dose_Gy": d.edges_Gy, "cumulative_percent": d.cumulative_percent,
                         "cumulative_cc": d.cumulative_cc, "differential_cc": d.differential_cc} for d in self.dvhs}

    def metric_rows(self):
        """Flat rows (structure, metric, value, unit, display) for tables and CSV."""
        rows = []
        for s in self.samples:
            rx = self.prescription_of(s.name)
            for name, value in self.metrics[s.name].items():
                spec = parse_metric(name)
                if spec.is_volume:
                    rows.append({"structure": s.name, "metric": name, "value": value["percent"], "unit": "%",
                                 "display": format_value(spec, value, rx)})
                    rows.append({"structure": s.name, "metric": name + "cc" if not name.endswith("Gy") else name + "_cc",
                                 "value": value["cc"], "unit": "cc", "display": f"{value['cc']:.3f} cc"})
                elif spec.is_index:
                    rows.append({"structure": s.name, "metric": name, "value": value["value"], "unit": "",
                                 "display": format_value(spec, value)})
                else:
                    rows.append({"structure": s.name, "metric": name, "value": value["Gy"], "unit": "Gy",
                                 "display": format_value(spec, value, rx)})
        return rows

    def to_dict(self):
        """Plain-data form (JSON-ready): everything except the dose samples and DVH arrays."""
        def clean(v):
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, (np.floating, float)):
                f = float(v)
                return f if math.isfinite(f) else None
            if isinstance(v, np.integer):
                return int(v)
            if isinstance(v, np.bool_):
                return bool(v)
            return v
        structures = []
        for s in self.samples:
            structures.append({"name": s.name, "role": self.roles[s.name], "volume_cc": s.volume_cc,
                               "supersampling": s.factor, "fraction_outside_grid": s.fraction_outside,
                               "metrics": self.metrics[s.name], "warnings": list(s.warnings)})
        return clean({"prescription_Gy": self.prescription_Gy, "target": self.target, "body": self.body,
                      "dose_grid": self.geometry.to_dict(), "structures": structures, "indices": self.indices,
                      "goals": self.goal_results, "goal_set": self.goal_set_name,
                      "target_prescriptions": self.target_prescriptions,
                      "radiobiology": self.radiobiology, "warnings": self.warnings})


def _as_structures(structures, geometry):
    if isinstance(structures, dict):
        out = []
        for n, (name, m) in enumerate(structures.items()):
            from ..imaging.segio import DEFAULT_COLORS
            out.append(Structure(str(name), np.asarray(m, dtype=bool), geometry, DEFAULT_COLORS[n % len(DEFAULT_COLORS)]))
        return out
    return list(structures)


def assign_roles(structures, target=None, body=None, goal_set: GoalSet | None = None):
    """(roles {name: role}, target name or None, body name or None) from explicit names, goals, or names."""
    names = [s.name for s in structures]
    low = {n.lower(): n for n in names}

    def pick(name, what):
        if name is None:
            return None
        if str(name).lower() not in low:
            raise InputError(f"{what} '{name}' is not among the structures ({', '.join(names) or 'none'})")
        return low[str(name).lower()]

    t = pick(target, "target")
    b = pick(body, "body")
    roles = {}
    for s in structures:
        entry = goal_set.entry_for(s.name, names) if goal_set else None
        roles[s.name] = entry.role if entry else "oar"

    def first_with_role(role, usual_names):
        """The first structure the goals give ``role``, else one with a usual name for it."""
        cands = [n for n in names if roles[n] == role]
        if cands:
            return cands[0]
        g = guess_role_structure(structures, usual_names)
        return g.name if g else None

    if t is None:
        t = first_with_role("target", TARGET_NAMES)
    if b is None:
        b = first_with_role("body", BODY_NAMES)
    for n in names:
        if roles[n] == "target" and n != t:
            roles[n] = "oar"
    if t is not None:
        roles[t] = "target"
    if b is not None:
        roles[b] = "body"
    return roles, t, b


def evaluate_plan(dose_Gy, geometry: ImageGeometry, structures, prescription_Gy, *, target=None, body=None,
                  goals: GoalSet | None = None, metrics=None, supersample="auto", radiobiology=None,
                  half_life_days=I125_HALF_LIFE_DAYS, dvh_max_dose_Gy=None, dose_at_points=None,
                  interpolation="log-cubic", on_outside="error", target_prescriptions=None,
                  progress=None) -> Evaluation:
    """Evaluate a dose grid: DVH, metrics, conformity indices, goals and (optionally) BED per structure.

    ``structures``: list of :class:`Structure` (any grid) or ``{name: mask on the dose grid}``.
    ``goals``: a :class:`goals.GoalSet`, a preset name or a goals file.
    ``metrics``: extra metric names added to every structure's defaults. ``radiobiology``: None (off),
    True (defaults: prostate/tumour parameters for the target by preset name, late-normal for the
    rest) or ``{"target": LQParams, "oar": LQParams}``. Missing goal structures marked ``required``
    raise InputError; other missing goal structures are listed as not evaluated.
    ``dose_at_points``: optional callable (M, 3) RAS mm -> Gy giving the exact dose at sub-voxel
    points (e.g. :func:`seed_point_dose`); otherwise sub-voxel doses are interpolated (``interpolation``).
    ``on_outside``: "error" (default) raises GeometryError for a structure entirely outside the dose
    grid; "skip" leaves such a non-target structure out with a warning (e.g. a cropped planning grid).
    The target must always lie inside the grid.
    ``target_prescriptions``: ``{name: Rx Gy}`` of the other targets of a plan with several targets
    (``target``'s own prescription is ``prescription_Gy``). Every target's dose metrics, conformity
    indices and goals are then against its own prescription. Goals: a structure takes the goal
    entry of its own name or alias; a target without one takes the goal set's target goals (its
    first entry with role "target"), so goals written
    for "the target" give every target its own pass/fail rows.
    """
    rx = check_prescription(prescription_Gy)
    dose = check_dose(dose_Gy, geometry)
    if goals is not None and not isinstance(goals, GoalSet):
        from .goals import load_goals
        goals = load_goals(goals)  # preset name or goals file
    structs = _as_structures(structures, geometry)
    if not structs:
        raise InputError("no structures to evaluate")
    seen = set()
    for s in structs:
        if s.name.lower() in seen:
            raise InputError(f"two structures are named '{s.name}'")
        seen.add(s.name.lower())
    roles, target, body = assign_roles(structs, target, body, goals)
    own_rx = _other_targets(target_prescriptions, structs, target, rx)
    for name in own_rx:
        roles[name] = "target"
    all_targets = ([target] if target is not None else []) + [n for n in own_rx if n != target]
    if goals is not None:
        generic = goals.generic_target_entry([s.name for s in structs])
        for entry in goals.structures:
            if entry is generic and all_targets:
                continue  # goals for "the target": every target takes them
            if entry.required and id(entry) not in goals.assign([s.name for s in structs]):
                raise InputError(f"goals '{goals.name}': required structure '{entry.name}' (aliases: "
                                 f"{', '.join(entry.aliases) or 'none'}) is missing; structures: "
                                 f"{', '.join(s.name for s in structs)}")
    if on_outside not in ("error", "skip"):
        raise InputError(f"on_outside must be 'error' or 'skip', got {on_outside!r}")
    samples, warnings = [], []
    if on_outside == "skip":
        from .structures import fraction_outside
        kept = []
        for s in structs:
            if roles[s.name] != "target" and s.n_voxels and fraction_outside(s, geometry) >= 1.0 - 1e-12:
                warnings.append(f"'{s.name}' lies entirely outside the dose grid: not evaluated")
                continue
            kept.append(s)
        structs = kept
        if body is not None and body not in [s.name for s in structs]:
            body = None
    n = len(structs)
    for i, s in enumerate(structs):
        sub = _progress.scaled(progress, 0.8 * i / n, 0.8 * (i + 1) / n)
        _progress.report(sub, 0.0, f"evaluation: {s.name}")
        max_out = 0.0 if roles[s.name] == "target" else None
        samp = structure_dose_samples(dose, geometry, s, supersample, roles[s.name], max_outside=max_out,
                                      progress=sub, dose_at_points=dose_at_points, interpolation=interpolation)
        samples.append(samp)
        warnings.extend(samp.warnings)
    _progress.report(progress, 0.8, "evaluation: metrics")
    metric_values, indices = {}, {}
    for samp in samples:
        mrole = "target" if samp.name.lower() in TARGET_NAMES else roles[samp.name]
        names = default_metric_names(mrole, samp.name)
        entry = goals.entry_for(samp.name, [x.name for x in samples]) if goals else None
        extra = list(metrics or []) + (entry.metrics if entry else []) + ([g.metric.name for g in entry.goals] if entry else [])
        for m in extra:
            if m not in names:
                names.append(m)
        names = [m for m in names if not parse_metric(m).is_index]
        metric_values[samp.name] = structure_metrics(samp, names, own_rx.get(samp.name, rx))
    if target is not None:
        bmask = None
        if body is not None:
            bmask = mask_on_grid(next(s for s in structs if s.name == body), geometry)
        for name in all_targets:
            tstruct = next(s for s in structs if s.name == name)
            ix = conformity_indices(dose, geometry.voxel_volume_cc, mask_on_grid(tstruct, geometry),
                                    own_rx.get(name, rx), bmask)
            if name == target:
                indices = ix
            for k in INDEX_METRICS:
                metric_values[name][k] = {"value": ix[k]}
    rx_of = {name: own_rx.get(name, rx) for name in all_targets}
    goal_results = _check_goals(goals, samples, metric_values, rx, rx_of) if goals else []
    rb = {}
    if radiobiology:
        params = radiobiology if isinstance(radiobiology, dict) else {}
        tp = params.get("target", TISSUES["prostate_tumour"] if goals is not None and "prostate" in goals.name.lower()
                        else TISSUES["tumour"])
        op = params.get("oar", TISSUES["late_normal"])
        for samp in samples:
            p = tp if roles[samp.name] == "target" else op
            keys = ["D90", "D100", "Dmean"] if roles[samp.name] == "target" else ["D2cc", "D0.1cc", "Dmax"]
            dm = {}
            for k in keys:
                v = metric_values[samp.name].get(k)
                if v is None:
                    v = structure_metrics(samp, [k], rx)[k]
                dm[k] = v["Gy"]
            rb[samp.name] = structure_radiobiology(samp, half_life_days, p, dm)
    _progress.report(progress, 0.9, "evaluation: DVH")
    dvhs = compute_dvhs(samples, rx, max_dose_Gy=dvh_max_dose_Gy)
    _progress.report(progress, 1.0, "evaluation: done")
    colors = {s.name: tuple(s.color) for s in structs}
    return Evaluation(rx, geometry, target, body, samples, dvhs, metric_values, indices, goal_results, rb, roles,
                      colors, warnings, goals.name if goals else "", rx_of if len(rx_of) > 1 else {})


def _other_targets(target_prescriptions, structs, target, rx) -> dict:
    """{structure name: Rx Gy} of the other targets (checked: known structures, positive Rx, no second Rx)."""
    out = {}
    if not target_prescriptions:
        return out
    low = {s.name.lower(): s.name for s in structs}
    if target is None:
        raise InputError("several targets need the first target named (target=...)")
    for name, value in dict(target_prescriptions).items():
        n = low.get(str(name).lower())
        if n is None:
            raise InputError(f"target '{name}' is not among the structures ({', '.join(s.name for s in structs)})")
        try:
            v = check_prescription(value)
        except InputError as exc:
            raise InputError(f"target '{name}': {exc}") from None
        if n == target:
            if abs(v - rx) > 1e-9:
                raise InputError(f"target '{n}' has two prescriptions ({rx:g} and {v:g} Gy)")
            continue
        out[n] = float(v)
    return out


def seed_point_dose(seeds, formalism="2D", model_dirs=()):
    """Callable (M, 3) RAS mm -> total dose (Gy) of ``seeds`` (TG-43), for exact sub-voxel sampling."""
    from ..physics.dose import dose_at_points_Gy

    def fn(points_ras):
        return dose_at_points_Gy(points_ras, seeds, formalism, "total", None, model_dirs)[0]
    return fn


def seeds_half_life_days(seeds, default=I125_HALF_LIFE_DAYS, model_dirs=()):
    """Half-life (days) of the seeds' nuclide; ``default`` without seeds; InputError for mixed nuclides."""
    if seeds is None or not len(seeds):
        return default
    from ..physics.sources import get_model
    values = {get_model(m, model_dirs).half_life_days for m in dict.fromkeys(seeds.models)}
    if len(values) > 1:
        raise InputError(f"seeds of several half-lives ({', '.join(f'{v:g} d' for v in sorted(values))}): "
                         "give the half-life for the radiobiology explicitly")
    return float(values.pop())


def check_point_dose_matches(dose_Gy, geometry: ImageGeometry, dose_at_points, prescription_Gy, tolerance=0.05,
                             n_points=40, what="dose grid"):
    """Raise InputError if ``dose_at_points`` disagrees with the dose grid at voxel centres (> tolerance).

    Checks up to ``n_points`` voxels between 50% and 300% of the prescription, so seeds that did not
    produce this dose grid (other plan, other quantity, LPS/RAS mix-up) are caught before use.
    """
    d = np.asarray(dose_Gy)
    sel = np.flatnonzero(((d >= 0.5 * prescription_Gy) & (d <= 3.0 * prescription_Gy)).ravel())
    if sel.size == 0:
        return
    pick = sel[np.linspace(0, sel.size - 1, min(n_points, sel.size)).astype(int)]
    k, j, i = np.unravel_index(pick, d.shape)
    pts = geometry.ijk_to_ras(np.stack([i, j, k], axis=-1).astype(float))
    exact = np.asarray(dose_at_points(pts), dtype=float)
    rel = np.abs(exact - d.ravel()[pick]) / np.maximum(d.ravel()[pick], 1e-12)
    if float(rel.max()) > tolerance:
        raise InputError(f"the seeds do not reproduce the {what}: point dose differs by up to {100 * rel.max():.1f}% "
                         f"at voxel centres (is the grid the total dose of these seeds?)")


def _check_goals(goals: GoalSet, samples, metric_values, rx, target_rx=None):
    """Goal rows; ``target_rx`` {target name: its Rx Gy}: targets without an entry of their own take the
    goal set's target goals, and every target's goals are checked against its own prescription."""
    out = []
    matched = set()
    names = [s.name for s in samples]
    target_rx = target_rx or {}
    for samp in samples:
        entry = goals.entry_for_target(samp.name, names) if samp.name in target_rx else goals.entry_for(samp.name, names)
        if entry is None:
            continue
        matched.add(id(entry))
        own = target_rx.get(samp.name, rx)
        for g in entry.goals:
            value = metric_values[samp.name].get(g.metric.name)
            if value is None:
                value = structure_metrics(samp, [g.metric.name], own)[g.metric.name]
            v, passed = g.check(value, own)
            status = "pass" if passed else ("fail" if passed is False else "undefined")
            row = {"structure": samp.name, "goal": g.text, "metric": g.metric.name, "value": v,
                   "unit": g.unit_label, "op": g.op, "limit": g.limit, "passed": passed, "status": status,
                   "source": g.source}
            if samp.name in target_rx:
                row["prescription_Gy"] = float(own)
            out.append(row)
    for entry in goals.structures:
        if id(entry) in matched:
            continue
        for g in entry.goals:
            out.append({"structure": entry.name, "goal": g.text, "metric": g.metric.name, "value": None,
                        "unit": g.unit_label, "op": g.op, "limit": g.limit, "passed": None,
                        "status": "not evaluated (structure missing)", "source": g.source})
    return out


def write_metrics_csv(path, evaluation: Evaluation):
    """Write every metric (one row per structure and metric) as CSV, atomically."""
    from ..core.fileio import write_csv
    rows = [{"structure": r["structure"], "metric": r["metric"],
             "value": "" if r["value"] is None or not math.isfinite(r["value"]) else f"{r['value']:.6g}",
             "unit": r["unit"]} for r in evaluation.metric_rows()]
    write_csv(path, rows, ["structure", "metric", "value", "unit"])
    return path


def write_goals_csv(path, evaluation: Evaluation):
    """Write the goal results as CSV, atomically."""
    from ..core.fileio import write_csv
    rows = [{**g, "value": "" if g["value"] is None else f"{g['value']:.6g}"} for g in evaluation.goal_results]
    write_csv(path, rows, ["structure", "goal", "metric", "value", "unit", "status", "source"])
    return path
