"""Plan report: one self-contained HTML page (pictures inlined as PNG) and an optional multi-page PDF.

Contents: plan summary (source model, strength at implant date, prescription, seed and needle
counts, total strength and apparent activity), the needle loading table when the plan has
needles, goals with pass/fail, metrics per structure, conformity indices, BED/EQD2 when computed,
the cumulative DVH, axial/coronal/sagittal dose pictures with isodose lines and structure
outlines, the dose/BED against time curve, and the plan comparison when given.

The plan is plain data so the planning module can hand it over without an import cycle::

    plan = {"source_model": "I125_OncoSeed_6711", "strength_U": 0.635, "implant_date": "2026-11-27",
            "reference_date": "2026-11-20", "n_needles": 12,
            "needles": [{"needle": 1, "entry_ras_mm": "...", "tip_ras_mm": "...", "seeds": 4,
                         "loading": "S-S-X-S-S"}, ...],
            "notes": "free text"}

Several targets (``"targets": [{"name", "prescription_Gy", "strength_U", "strength_mCi", "n_seeds",
"goals"}, ...]``, and the plan's own ``"goal_check"`` rows) add a targets table with each
target's prescription, seed strength and metrics against its own Rx, the plan's goal check, a DVH
with every Rx marked and one dose picture per target in % of that target's Rx
(:mod:`reporting.targets`).

Every key is optional; missing values are derived from ``seeds`` (a :class:`seeds.SeedSet`) when
given, else shown as "-". ``needles`` rows are shown with their own keys as columns (first row's
order), so the table follows whatever the planning module reports. A plan file dict of the
planning module (``plan.Plan.to_dict()``, with ``format``/``source``/``summary``) or a ``planfile.Plan``
object is accepted too: its summary is mapped onto the keys above and its needle loading table
comes from ``Plan.loading_rows()`` (:func:`normalize_plan`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math

import numpy as np

from .. import __version__
from ..core.errors import InputError, SeedPlanError
from .targets import goal_check_rows, metric_rows_own_rx, own_prescriptions, plan_targets, target_table


def _esc(v) -> str:
    return html.escape("-" if v is None else str(v))


def _fmt(v, digits=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.{digits}g}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return "(" + ", ".join(_fmt(x, digits) for x in v) + ")"
    return str(v)


def normalize_plan(plan):
    """Plain report dict from ``plan``: a report dict (returned as is), a plan-file dict or a ``planfile.Plan``."""
    if plan is None:
        return None
    obj = None
    if hasattr(plan, "to_dict") and hasattr(plan, "loading_rows"):
        obj, plan = plan, plan.to_dict()
    if not isinstance(plan, dict):
        raise InputError(f"plan must be a dict or a Plan object, got {type(plan).__name__}")
    if "format" not in plan or "source" not in plan:
        return plan
    src = plan.get("source") or {}
    summ = plan.get("summary") or {}
    out = {"source_model": src.get("model"), "strength_U": src.get("strength_U"),
           "reference_date": src.get("reference_date"), "implant_date": src.get("implant_date") or "-",
           "n_seeds": summ.get("n_seeds"), "n_needles": summ.get("n_needles_used"),
           "total_strength_U": summ.get("total_strength_U"), "total_activity_mCi": summ.get("total_activity_mCi")}
    if obj is None:
        try:
            from ..planning.planfile import Plan
            obj = Plan.from_dict(plan)
        except (ImportError, InputError):
            obj = None
    u_per_mci = src.get("U_per_mCi")
    targets = []
    for t in plan.get("targets") or []:
        row = {k: t.get(k) for k in ("name", "prescription_Gy", "strength_U", "n_seeds", "goals")}
        if u_per_mci and t.get("strength_U") is not None:
            row["strength_mCi"] = float(t["strength_U"]) / float(u_per_mci)
        targets.append(row)
    if targets:
        out["targets"] = targets
    checks = (plan.get("metrics") or {}).get("goal_check") if isinstance(plan.get("metrics"), dict) else None
    if checks:
        out["goal_check"] = checks
    if obj is not None:
        out["needles"] = obj.loading_rows()
    else:
        out["needles"] = [{k: v for k, v in n.items() if not isinstance(v, (list, dict))} for n in plan.get("needles", [])]
    return {k: v for k, v in out.items() if v is not None}


def plan_summary(evaluation, plan=None, seeds=None) -> list:
    """Rows (label, value) of the plan summary from ``plan`` (dict) and/or ``seeds``."""
    plan = dict(normalize_plan(plan) or {})
    rows = []
    models = plan.get("source_model")
    u_per_mci = None
    if seeds is not None and len(seeds):
        models = models or ", ".join(dict.fromkeys(seeds.models))
        try:
            from ..physics.sources import get_model
            factors = {get_model(m).u_per_mci for m in dict.fromkeys(seeds.models)}
            u_per_mci = factors.pop() if len(factors) == 1 else None
        except SeedPlanError:  # unknown user model: mCi just not shown
            u_per_mci = None
    rows.append(("Source model", models or "-"))
    strength = plan.get("strength_U")
    if strength is None and seeds is not None and len(seeds):
        s = np.asarray(seeds.strengths_U)
        strength = float(s[0]) if np.allclose(s, s[0]) else f"{s.min():.4g} - {s.max():.4g}"
    if isinstance(strength, (int, float)):
        txt = f"{strength:.4g} U"
        if u_per_mci:
            txt += f" ({strength / u_per_mci:.4g} mCi apparent)"
        strength = txt
    targets = plan_targets(plan)
    if len(targets) > 1:
        strength = "; ".join(
            f"{t['name']} {float(t['strength_U']):.4g} U" + (f" ({float(t['strength_mCi']):.4g} mCi apparent)"
                                                         if t.get("strength_mCi") is not None else "")
            for t in targets if t.get("strength_U") is not None) or strength
    rows.append(("Strength per seed at implant date", strength or "-"))
    if plan.get("reference_date"):
        rows.append(("Strength reference date", plan["reference_date"]))
    rows.append(("Implant date", plan.get("implant_date", "-")))
    if len(targets) > 1:
        rows.append(("Prescription dose", "; ".join(f"{t['name']} {t['prescription_Gy']:g} Gy" for t in targets)
                     + " (each target's metrics against its own prescription)"))
    else:
        rows.append(("Prescription dose", f"{evaluation.prescription_Gy:g} Gy"))
    n_seeds = plan.get("n_seeds", len(seeds) if seeds is not None else None)
    rows.append(("Number of seeds", n_seeds if n_seeds is not None else "-"))
    needles = plan.get("needles") or []
    n_needles = plan.get("n_needles", len(needles) if needles else None)
    rows.append(("Number of needles", n_needles if n_needles is not None else "- (no needles yet)"))
    total_u = plan.get("total_strength_U")
    if total_u is None and seeds is not None and len(seeds):
        total_u = float(np.sum(seeds.strengths_U))
    if total_u is not None:
        rows.append(("Total air-kerma strength", f"{total_u:.4g} U"))
        mci = plan.get("total_activity_mCi", total_u / u_per_mci if u_per_mci else None)
        rows.append(("Total apparent activity", f"{mci:.4g} mCi" if mci is not None else "-"))
    if len(targets) > 1:
        rows.append(("Targets", ", ".join(t["name"] for t in targets)))
    elif evaluation.target:
        rows.append(("Target", evaluation.target))
    if evaluation.goal_set_name:
        rows.append(("Goals", evaluation.goal_set_name))
    g = evaluation.geometry
    rows.append(("Dose grid", f"{g.size[0]} x {g.size[1]} x {g.size[2]} voxels at "
                              f"{' x '.join(f'{s:g}' for s in g.spacing)} mm"))
    if plan.get("notes"):
        rows.append(("Notes", plan["notes"]))
    return rows


def needle_table(plan):
    """(columns, rows) of the needle loading table, or None when the plan has no needles."""
    needles = (normalize_plan(plan) or {}).get("needles") or []
    if not needles:
        return None
    if not all(isinstance(r, dict) for r in needles):
        raise InputError("plan 'needles' must be a list of objects (one per needle)")
    cols = []
    for r in needles:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols, [[_fmt(r.get(c)) for c in cols] for r in needles]


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(header, rows, classes=None) -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for n, r in enumerate(rows):
        cls = f' class="{classes[n]}"' if classes and classes[n] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin-bottom:2px} h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:26px}
table{border-collapse:collapse;margin:6px 0 10px 0;font-size:13px} th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0} tr.pass td{background:#e6f4ea} tr.fail td{background:#fde7e9;font-weight:bold}
tr.na td{color:#777} .meta{color:#666;font-size:12px} img{max-width:100%} .warn{color:#a15c00}
.verdict{font-size:15px;font-weight:bold} .ok{color:#137333} .bad{color:#c5221f}
"""


def _goal_rows(evaluation):
    rows, classes = [], []
    for g in evaluation.goal_results:
        v = g["value"]
        vs = "-" if v is None or not math.isfinite(v) else f"{v:.2f} {g['unit']}".strip()
        goal = g["goal"] + (f" (Rx {g['prescription_Gy']:g} Gy)" if evaluation.target_prescriptions
                            and "prescription_Gy" in g else "")
        rows.append([g["structure"], goal, vs, g["status"].upper() if g["passed"] is not None else g["status"],
                     g.get("source", "")])
        classes.append("pass" if g["passed"] else ("fail" if g["passed"] is False else "na"))
    return rows, classes


def _metric_table_rows(evaluation, plan=None):
    return metric_rows_own_rx(evaluation, plan)


def _structure_rows(evaluation, plan=None):
    rows = []
    own = own_prescriptions(evaluation, plan) if plan else {}
    for s in evaluation.samples:
        role = "target" if s.name in own else evaluation.roles[s.name]
        rows.append([s.name, role, f"{s.volume_cc:.2f}",
                     "voxel centres" if s.factor == 1 else f"{s.factor}^3 sub-voxels",
                     f"{100 * s.fraction_outside:.1f}%"])
    return rows


def _bed_rows(evaluation):
    rows = []
    for name, r in evaluation.radiobiology.items():
        p = r["parameters"]
        for k, v in r.items():
            if k.startswith("BED_"):
                eq = r.get("EQD2_" + k[4:])
                rows.append([name, k[4:].replace("_Gy", ""), f"{v:.1f}", f"{eq:.1f}" if eq is not None else "-",
                             f"a/b {p['alpha_beta_Gy']:g} Gy, T_rep {p['repair_half_time_h']:g} h"
                             + (f", T_pot {p['t_pot_days']:g} d, alpha {p['alpha_per_Gy']:g}/Gy" if p["t_pot_days"] else "")])
    return rows


def _center(evaluation, structures, dose_Gy, geometry):
    if evaluation.target:
        for s in structures:
            if s.name == evaluation.target:
                return s.centroid_ras()
    k, j, i = np.unravel_index(int(np.argmax(dose_Gy)), dose_Gy.shape)
    return geometry.ijk_to_ras(np.array([i, j, k], float))


def report_figures(evaluation, dose_Gy, structures=(), ct=None, center_ras=None, comparison=None, plan=None):
    """Matplotlib figures of the report: {'dvh', 'slices', 'time' (if BED), 'gamma' (if compared)}.

    With several targets in ``plan`` (normalised dict), the DVH marks each target's prescription
    and there is one dose picture per target ('slices' for the first, 'slices:<name>' for the
    others), centred on it, its isodoses in % of its own prescription.
    """
    from . import charts
    from ..physics.radiobiology import time_curve
    colors = charts.distinct_colors([s.name for s in evaluation.samples], evaluation.colors)
    structures = [s for s in structures if evaluation.roles.get(s.name) != "body"] if structures else []
    figs = {}
    sets = [("plan", evaluation.dvhs)]
    if comparison is not None:
        sets = [(comparison.label_a, comparison.eval_a.dvhs), (comparison.label_b, comparison.eval_b.dvhs)]
    own = own_prescriptions(evaluation, plan) if plan else {}
    multi = len(own) > 1
    figs["dvh"] = charts.dvh_figure(sets, colors, evaluation.prescription_Gy,
                                    prescriptions=list(own.items()) if multi else None)
    if multi:
        for k, (name, rx) in enumerate(own.items()):
            tstruct = [s for s in structures if s.name == name]
            center = tstruct[0].centroid_ras() if tstruct else _center(evaluation, structures, dose_Gy,
                                                                         evaluation.geometry)
            # around this target only (the other targets' high dose would widen the box to both)
            focus = charts.focus_box(dose_Gy, evaluation.geometry, rx, tstruct, level_percent=math.inf,
                                     margin_mm=30.0) if tstruct else None
            figs["slices" if k == 0 else f"slices:{name}"] = charts.slice_figure(
                dose_Gy, evaluation.geometry, rx, structures, center, ct, colors=colors, focus_box_ras=focus,
                reference=name, title=f"{name}: isodoses in % of its prescription {rx:g} Gy")
    else:
        center = center_ras if center_ras is not None else _center(evaluation, structures, dose_Gy, evaluation.geometry)
        targets = [s for s in structures if s.name == evaluation.target]
        focus = charts.focus_box(dose_Gy, evaluation.geometry, evaluation.prescription_Gy, targets)
        figs["slices"] = charts.slice_figure(dose_Gy, evaluation.geometry, evaluation.prescription_Gy, structures, center,
                                             ct, colors=colors, focus_box_ras=focus)
    if evaluation.radiobiology:
        curves = {}
        from ..physics.radiobiology import LQParams
        for name, r in evaluation.radiobiology.items():
            if evaluation.roles.get(name) != "target":
                continue
            d90 = evaluation.metrics[name].get("D90", {}).get("Gy")
            if d90 is None or not math.isfinite(d90):
                continue
            p = {k: v for k, v in r["parameters"].items()}
            params = LQParams(**p)
            curves[f"{name} D90 ({d90:.0f} Gy)"] = time_curve(d90, r["half_life_days"], params)
        if curves:
            figs["time"] = charts.time_curve_figure(curves)
    if comparison is not None and comparison.gamma is not None and comparison.gamma.n_evaluated:
        figs["gamma"] = charts.gamma_figure(comparison.gamma)
    return figs


def render_html(evaluation, figures_png: dict, plan=None, seeds=None, title="Seed implant plan report",
                comparison=None) -> str:
    """The report page as one HTML string (pictures inlined)."""
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{_CSS}</style>"
             f"</head><body><h1>{_esc(title)}</h1>",
             f"<div class='meta'>SeedImplantPlanner {__version__} &middot; generated {now} &middot; TG-43U1 dose; "
             "metric definitions in docs/evaluation.md</div>"]
    n_fail = evaluation.n_goals_failed
    n_eval = sum(1 for g in evaluation.goal_results if g["passed"] is not None)
    if evaluation.goal_results:
        cls = "ok" if n_fail == 0 else "bad"
        parts.append(f"<p class='verdict {cls}'>{n_eval - n_fail} of {n_eval} evaluated goals met"
                     + (f", {n_fail} failed" if n_fail else "") + "</p>")
    parts.append("<h2>Plan summary</h2>" + _table(["Item", "Value"], plan_summary(evaluation, plan, seeds)))
    nt = needle_table(plan)
    parts.append("<h2>Needle loading</h2>")
    if nt is None:
        parts.append("<p class='meta'>No needles in this plan yet.</p>")
    else:
        parts.append(_table(nt[0], nt[1]))
    plan_n = normalize_plan(plan)
    tt = target_table(evaluation, plan_n)
    if tt is not None:
        parts.append("<h2>Targets (each against its own prescription)</h2>" + _table(*tt))
    gc = goal_check_rows(plan_n)
    if gc is not None:
        parts.append("<h2>Plan goals (each target against its own prescription)</h2>"
                     + _table(["Goal", "Value", "Limit", "Result"], gc[0], gc[1]))
    if evaluation.goal_results:
        rows, classes = _goal_rows(evaluation)
        parts.append(("<h2>Goals (each target against its own prescription)</h2>" if evaluation.target_prescriptions
                      else "<h2>Goals</h2>") + _table(["Structure", "Goal", "Value", "Result", "Source"], rows, classes))
    parts.append("<h2>Structures</h2>" + _table(["Structure", "Role", "Volume in dose grid (cc)", "Sampling", "Outside grid"],
                                                _structure_rows(evaluation, plan_n)))
    parts.append("<h2>Metrics</h2>" + _table(["Structure", "Metric", "Value"], _metric_table_rows(evaluation, plan_n)))
    if evaluation.indices:
        ix = evaluation.indices
        parts.append("<p class='meta'>" + _esc(
            f"CI = {ix['CI']:.3f}, EI = {ix['EI']:.3f}, HI = {ix['HI']:.3f} (V_T {ix['V_T_cc']:.2f} cc, V_ref "
            f"{ix['V_ref_cc']:.2f} cc, V_T,ref {ix['V_T_ref_cc']:.2f} cc, V_T,1.5ref {ix['V_T_1.5ref_cc']:.2f} cc)")
            + "</p>")
    if evaluation.radiobiology:
        parts.append("<h2>Radiobiology (Dale 1985, permanent implant)</h2>" +
                     _table(["Structure", "At", "BED (Gy)", "EQD2 (Gy)", "Parameters"], _bed_rows(evaluation)))
    if comparison is not None:
        parts.append(f"<h2>Comparison: {_esc(comparison.label_b)} vs {_esc(comparison.label_a)}</h2>")
        if comparison.gamma is not None:
            gs = comparison.gamma.summary()
            parts.append(f"<p>Gamma {gs['criteria']}, threshold {gs['threshold_percent']:g}% of "
                         f"{gs['normalization_Gy']:g} Gy: <b>{gs['pass_rate_percent']:.1f}% pass</b> "
                         f"({gs['n_evaluated']} voxels)</p>")
        rows = [[r["structure"], r["metric"], _fmt(r["A"]), _fmt(r["B"]), _fmt(r["delta"]), r["unit"]]
                for r in comparison.delta_rows]
        parts.append(_table(["Structure", "Metric", comparison.label_a, comparison.label_b, "Delta (B-A)", "Unit"], rows))
    captions = {"dvh": "Cumulative DVH", "slices": "Dose wash with isodose lines and structure outlines",
                "time": "Dose and BED accumulated against time", "gamma": "Gamma index histogram"}
    own = own_prescriptions(evaluation, plan_n) if plan_n else {}
    if len(own) > 1:
        captions["dvh"] = "Cumulative DVH (each target's prescription marked)"
        first, rx0 = next(iter(own.items()))
        captions["slices"] = f"Dose wash around {first}: isodose lines in % of its prescription {rx0:g} Gy"
    for key in _figure_order(figures_png):
        if key.startswith("slices:"):
            name = key.split(":", 1)[1]
            cap = f"Dose wash around {name}: isodose lines in % of its prescription {own.get(name, 0):g} Gy"
        else:
            cap = captions[key]
        parts.append(f"<h2>{_esc(cap)}</h2>" + _img(figures_png[key], cap))
    if evaluation.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li class='warn'>{_esc(w)}</li>" for w in evaluation.warnings)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _figure_order(figs):
    """Figure keys in report order: DVH, the dose pictures (first target's, then the others'), time, gamma."""
    keys = [k for k in ("dvh", "slices") if k in figs]
    keys += [k for k in figs if k.startswith("slices:")]
    return keys + [k for k in ("time", "gamma") if k in figs]


def _pdf_text_page(pdf, title, header, rows, plt):
    wide = len(header) > 4
    per_page = 24 if wide else 34
    for start in range(0, max(len(rows), 1), per_page):
        fig = plt.figure(figsize=(11.69, 8.27) if wide else (8.27, 11.69))
        fig.text(0.05, 0.96, title + (" (cont.)" if start else ""), fontsize=14, weight="bold")
        chunk = rows[start:start + per_page] or [["-"] * len(header)]
        ax = fig.add_axes((0.05, 0.05, 0.9, 0.88))
        ax.axis("off")
        t = ax.table(cellText=[[str(c)[:70] for c in r] for r in chunk], colLabels=header, loc="upper left",
                     cellLoc="left")
        t.auto_set_font_size(False)
        t.set_fontsize(7.5)
        t.auto_set_column_width(list(range(len(header))))
        t.scale(1, 1.25)
        pdf.savefig(fig)
        plt.close(fig)


def write_report(path, evaluation, dose_Gy, *, structures=(), plan=None, seeds=None, ct=None,
                 title="Seed implant plan report", pdf_path=None, center_ras=None, comparison=None) -> dict:
    """Write the HTML report (and a PDF when ``pdf_path``), atomically; returns {'html': path, 'pdf': path|None}.

    ``evaluation``: from :func:`evaluation.evaluate_plan` on ``dose_Gy`` (array on evaluation.geometry);
    ``structures``: the :class:`structures.Structure` list (outlines); ``plan``: plain dict (module doc);
    ``seeds``: :class:`seeds.SeedSet`; ``ct``: (array, geometry) drawn under the dose wash;
    ``comparison``: :class:`compare.Comparison` to append.
    """
    from . import charts
    from ..core.fileio import atomic_path, write_text
    plan = normalize_plan(plan)
    dose = np.asarray(dose_Gy)
    if dose.shape != evaluation.geometry.shape:
        raise InputError(f"report: dose shape {dose.shape} does not match the evaluated grid {evaluation.geometry.shape}")
    # structures skipped by the evaluation (entirely outside the dose grid) have no colour or outline
    structures = [s for s in structures if s.name in evaluation.metrics]
    figs = report_figures(evaluation, dose, structures, ct, center_ras, comparison, plan)
    pngs = {}
    if pdf_path is not None:
        plt = charts._plt()
        from matplotlib.backends.backend_pdf import PdfPages
        with atomic_path(pdf_path) as tmp:
            with PdfPages(tmp) as pdf:
                _pdf_text_page(pdf, title + ": summary", ["Item", "Value"],
                               [list(map(str, r)) for r in plan_summary(evaluation, plan, seeds)], plt)
                nt = needle_table(plan)
                if nt is not None:
                    _pdf_text_page(pdf, "Needle loading", nt[0], nt[1], plt)
                if evaluation.goal_results:
                    rows, _ = _goal_rows(evaluation)
                    _pdf_text_page(pdf, "Goals (each target against its own prescription)" if
                                   evaluation.target_prescriptions else "Goals", ["Structure", "Goal", "Value", "Result"],
                                   [r[:4] for r in rows], plt)
                tt = target_table(evaluation, plan)
                if tt is not None:
                    _pdf_text_page(pdf, "Targets (each against its own prescription)", tt[0], tt[1], plt)
                gc = goal_check_rows(plan)
                if gc is not None:
                    _pdf_text_page(pdf, "Plan goals", ["Goal", "Value", "Limit", "Result"], gc[0], plt)
                _pdf_text_page(pdf, "Metrics", ["Structure", "Metric", "Value"], _metric_table_rows(evaluation, plan),
                               plt)
                if evaluation.radiobiology:
                    _pdf_text_page(pdf, "Radiobiology", ["Structure", "At", "BED (Gy)", "EQD2 (Gy)", "Parameters"],
                                   _bed_rows(evaluation), plt)
                for key in _figure_order(figs):
                    pdf.savefig(figs[key])
    for key, fig in figs.items():
        pngs[key] = charts.figure_png_bytes(fig)
    write_text(path, render_html(evaluation, pngs, plan, seeds, title, comparison))
    return {"html": str(path), "pdf": str(pdf_path) if pdf_path is not None else None}


def evaluate_and_report(path, dose_Gy, geometry, structures, prescription_Gy, *, goals=None, target=None, body=None,
                        plan=None, seeds=None, ct=None, radiobiology=True, pdf_path=None,
                        title="Seed implant plan report", on_outside="skip", target_prescriptions=None, progress=None):
    """Evaluate ``dose_Gy`` on ``structures`` and write the report in one call; returns (Evaluation, paths).

    ``goals``: a :class:`goals.GoalSet`, a preset name or a goals file; ``seeds`` (a SeedSet that
    produced the dose) also gives exact sub-voxel doses for small structures. Organs entirely
    outside a cropped dose grid are skipped with a warning (``on_outside``). ``target_prescriptions``
    ({name: Rx Gy} of the other targets of a plan with several targets): each target's metrics and
    goals against its own prescription (:func:`evaluation.evaluate_plan`).
    """
    from ..evaluation.evaluate import evaluate_plan, seed_point_dose, seeds_half_life_days
    from ..evaluation.goals import GoalSet, load_goals
    if goals is not None and not isinstance(goals, GoalSet):
        goals = load_goals(goals)
    ev = evaluate_plan(dose_Gy, geometry, structures, prescription_Gy, target=target, body=body, goals=goals,
                       radiobiology=radiobiology, on_outside=on_outside, half_life_days=seeds_half_life_days(seeds),
                       dose_at_points=seed_point_dose(seeds) if seeds is not None and len(seeds) else None,
                       target_prescriptions=target_prescriptions, progress=progress)
    paths = write_report(path, ev, dose_Gy, structures=[] if isinstance(structures, dict) else structures,
                         plan=plan, seeds=seeds, ct=ct, title=title,
                         pdf_path=pdf_path)
    return ev, paths
