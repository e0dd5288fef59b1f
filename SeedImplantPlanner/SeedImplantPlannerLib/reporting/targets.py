"""Several targets in one report: each target's prescription, seed strength and metrics against its own Rx.

A plan with several targets (``planfile.Plan.targets``: name, prescription, goals, strength, seeds
of each) is evaluated with every target against its own prescription (``evaluate_plan(...,
target_prescriptions=...)``: metrics, indices, goals); for an evaluation made against one
prescription only, the report recomputes each target's dose metrics (D90, V100, V150, V200 ...)
from the same dose samples (:func:`metrics.structure_metrics`) against that target's own
prescription, so every percentage in the report refers to the target's own Rx.
"""

from __future__ import annotations

import math

from ..evaluation.metrics import format_value, parse_metric, structure_metrics

#: Metrics shown per target in the targets table (each against the target's own prescription).
TARGET_METRICS = ("D90", "V100", "V150", "V200", "D100", "Dmean")


def plan_targets(plan) -> list:
    """[{name, prescription_Gy, strength_U, strength_mCi, n_seeds, goals}] of a normalised plan dict (may be [])."""
    rows = []
    for t in (plan or {}).get("targets") or []:
        if not isinstance(t, dict) or not t.get("name") or t.get("prescription_Gy") is None:
            continue
        rows.append({"name": str(t["name"]), "prescription_Gy": float(t["prescription_Gy"]),
                     "strength_U": t.get("strength_U"), "strength_mCi": t.get("strength_mCi"),
                     "n_seeds": t.get("n_seeds"), "goals": t.get("goals") or {}})
    return rows


def own_prescriptions(evaluation, plan) -> dict:
    """{target name: its prescription Gy} for the plan's targets that the evaluation has samples of."""
    have = {s.name for s in evaluation.samples}
    return {t["name"]: t["prescription_Gy"] for t in plan_targets(plan) if t["name"] in have}


def target_metrics(evaluation, name, prescription_Gy, names=TARGET_METRICS) -> dict:
    """Dose metrics of structure ``name`` against ``prescription_Gy`` from the evaluation's own samples."""
    sample = next((s for s in evaluation.samples if s.name == name), None)
    if sample is None:
        return {}
    if abs(prescription_Gy - evaluation.prescription_of(name)) < 1e-9:
        have = evaluation.metrics.get(name, {})
        if all(m in have for m in names):
            return {m: have[m] for m in names}
    return structure_metrics(sample, list(names), prescription_Gy)


def target_table(evaluation, plan):
    """(header, rows) of the targets table: one row per target with its own Rx, or None for one target."""
    targets = plan_targets(plan)
    if len(targets) < 2:
        return None
    header = ["Target", "Prescription (Gy)", "Strength per seed", "Seeds", "Volume (cc)", "D90 (Gy, % own Rx)",
              "V100 (%)", "V150 (%)", "V200 (%)", "Goals (V100 / D90 / V150 / V200)"]
    rows = []
    for t in targets:
        rx = t["prescription_Gy"]
        m = target_metrics(evaluation, t["name"], rx)
        sample = next((s for s in evaluation.samples if s.name == t["name"]), None)
        strength = "-"
        if t["strength_U"] is not None:
            strength = f"{float(t['strength_U']):.4g} U"
            if t.get("strength_mCi") is not None:
                strength += f" ({float(t['strength_mCi']):.4g} mCi apparent)"
        g = t["goals"]

        def pct(key):
            v = g.get(key)
            return "-" if v is None else f"{100 * float(v):g}"

        goals = (f">= {pct('v100_min')} % / >= {pct('d90_min_frac')} % Rx / <= {pct('v150_max')} % / "
                 f"<= {pct('v200_max')} %")
        if not m:
            rows.append([t["name"], f"{rx:g}", strength, t["n_seeds"] if t["n_seeds"] is not None else "-",
                         "-", "not in the dose grid", "-", "-", "-", goals])
            continue
        d90 = m["D90"]["Gy"]
        rows.append([t["name"], f"{rx:g}", strength, t["n_seeds"] if t["n_seeds"] is not None else "-",
                     f"{sample.volume_cc:.2f}" if sample is not None else "-",
                     "-" if not math.isfinite(d90) else f"{d90:.1f} ({100 * d90 / rx:.1f} %)",
                     f"{m['V100']['percent']:.1f}", f"{m['V150']['percent']:.1f}", f"{m['V200']['percent']:.1f}",
                     goals])
    return header, rows


def metric_rows_own_rx(evaluation, plan) -> list:
    """Rows [structure, metric, value] of every structure's metrics, targets against their own prescription."""
    own = own_prescriptions(evaluation, plan)
    rows = []
    for s in evaluation.samples:
        rx = own.get(s.name, evaluation.prescription_Gy)
        values = evaluation.metrics[s.name]
        if abs(rx - evaluation.prescription_of(s.name)) > 1e-9:
            names = [n for n in values if not parse_metric(n).is_index]
            values = {**structure_metrics(s, names, rx), **{n: v for n, v in values.items() if parse_metric(n).is_index}}
        suffix = f" (of Rx {rx:g} Gy)" if len(own) > 1 else ""
        for name, value in values.items():
            spec = parse_metric(name)
            label = name + (suffix if (spec.is_volume or name.startswith("D")) and not spec.is_index and
                            s.name in own else "")
            rows.append([s.name, label, format_value(spec, value, rx)])
    return rows


def goal_check_rows(plan):
    """(rows, classes) of the plan's own goal check (every target against its own Rx), or None."""
    checks = (plan or {}).get("goal_check") or []
    if not checks:
        return None
    rows, classes = [], []
    for r in checks:
        v = r.get("value")
        rows.append([r.get("goal", "-"), "-" if v is None else f"{float(v):.2f}",
                     "-" if r.get("limit") is None else f"{float(r['limit']):g}",
                     "PASS" if r.get("passed") else ("TRADED" if "(soft)" in str(r.get("goal", "")) else "FAIL")])
        soft = "(soft)" in str(r.get("goal", ""))
        classes.append("pass" if r.get("passed") else ("na" if soft else "fail"))
    return rows, classes
