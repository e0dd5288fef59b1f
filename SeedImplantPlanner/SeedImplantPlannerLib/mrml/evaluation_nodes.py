"""The plan's evaluation on the dose grid and the nodes that show it: dose volume, isodose models,
DVH table and chart, metrics table, and the per-structure DVH tables in SlicerRT's layout.
"""

from __future__ import annotations

import math

import numpy as np

from ..core import progress as _progress
from ..core.geometry import ImageGeometry
from .isodose import update_isodose_models
from .nodes import place_in_study
from .segmentations import segment_structure
from .slicerrt_dvh import update_slicerrt_dvh_tables
from .tables import update_dvh_nodes, update_metrics_table
from .volumes import update_dose_volume


class Evaluation:
    """Evaluates a dose for the plan's structures (:func:`evaluation.evaluate_plan`) and shapes the result
    for the DVH and metrics table nodes.

    Two things keep repeated evaluations (live edits) cheap without changing any number:

    - the dose is cropped to a box holding every structure (as far as it lies on the grid) and every
      voxel at or above the prescription, plus two voxels, so samples, DVHs and indices (V_ref
      included) are those of the whole grid. The box is grown by a few voxels and kept while the
      needed box stays inside it, so successive evaluations share one crop grid;
    - on that crop grid, a structure that the evaluation samples at voxel centres (not small or thin,
      entirely on the grid) is replaced once by its voxel-centre mask on the crop grid: the same
      voxels, so the same samples, without resampling it at every call.
    """

    MAX_DVH_ROWS = 600
    PAD_VOXELS = 2
    STABLE_MARGIN_VOXELS = 6

    def __init__(self, structures, roles, prescription_Gy, goals=None, supersample="auto", segment_ids=None,
                 target_prescriptions=None):
        self.structures = list(structures)
        self.roles = list(roles)
        self.segment_ids = list(segment_ids) if segment_ids is not None else None
        self.prescription_Gy = float(prescription_Gy)
        #: {target name: its prescription Gy} of every target after the first (plans with several targets):
        #: each is evaluated against its own prescription (metrics, goals, conformity indices)
        self.target_prescriptions = {k: float(v) for k, v in (target_prescriptions or {}).items()}
        self.goals = goals
        self.supersample = supersample
        self.result = None
        self._box_key = None
        self._box = None
        self._crop_key = None
        self._crop_box = None
        self._subst_key = None
        self._subst = {}

    def _structure_boxes(self, structures, geometry):
        key = (geometry, tuple(id(s) for s in structures))
        if self._box_key != key:
            lo = np.full(3, np.inf)
            hi = np.full(3, -np.inf)
            for s in structures:
                idx = np.argwhere(s.mask)
                if not len(idx):
                    continue
                a, b = idx.min(axis=0)[::-1] - 1, idx.max(axis=0)[::-1] + 1  # (i, j, k), one voxel out
                corners = np.array([[x, y, z] for x in (a[0], b[0]) for y in (a[1], b[1]) for z in (a[2], b[2])], float)
                ijk = geometry.ras_to_ijk(s.geometry.ijk_to_ras(corners))
                lo = np.minimum(lo, ijk.min(axis=0))
                hi = np.maximum(hi, ijk.max(axis=0))
            self._box_key, self._box = key, (lo, hi)
        return self._box[0].copy(), self._box[1].copy()

    def crop(self, dose_Gy, geometry: ImageGeometry, structures):
        """(dose, geometry) cropped to the structures' box and the prescription-dose box (see class doc)."""
        lo, hi = self._structure_boxes(structures, geometry)
        hot = np.asarray(dose_Gy) >= min([self.prescription_Gy] + list(self.target_prescriptions.values()))
        for axis, name in ((2, 0), (1, 1), (0, 2)):  # array axes k, j, i -> index i, j, k
            other = tuple(a for a in range(3) if a != axis)
            nz = np.flatnonzero(np.any(hot, axis=other))
            if nz.size:
                lo[name] = min(lo[name], nz[0])
                hi[name] = max(hi[name], nz[-1])
        size = np.asarray(geometry.size)
        need_a = np.clip(np.floor(lo).astype(int) - self.PAD_VOXELS, 0, size - 1)
        need_b = np.clip(np.ceil(hi).astype(int) + self.PAD_VOXELS, 0, size - 1)
        if np.any(need_b < need_a):
            return dose_Gy, geometry
        key = (geometry, tuple(id(s) for s in structures))
        if self._crop_key == key and np.all(self._crop_box[0] <= need_a) and np.all(self._crop_box[1] >= need_b):
            a, b = self._crop_box
        else:
            a = np.clip(need_a - self.STABLE_MARGIN_VOXELS, 0, size - 1)
            b = np.clip(need_b + self.STABLE_MARGIN_VOXELS, 0, size - 1)
            self._crop_key, self._crop_box = key, (a, b)
        if np.all(a == 0) and np.all(b == size - 1):
            return dose_Gy, geometry
        sub = dose_Gy[a[2]:b[2] + 1, a[1]:b[1] + 1, a[0]:b[0] + 1]
        g = ImageGeometry(tuple(b - a + 1), geometry.spacing, tuple(geometry.ijk_to_ras(a.astype(float))),
                          geometry.direction)
        return sub, g

    def _on_grid(self, structures, geometry):
        """Structures with the voxel-centre-sampled ones replaced by their masks on ``geometry`` (cached)."""
        from ..evaluation.dvh import is_small_or_thin
        from ..evaluation.structures import Structure, fraction_outside, mask_on_grid
        if self.supersample not in ("auto", "off", 1):
            return structures
        key = (geometry, tuple(id(s) for s in structures))
        if self._subst_key != key:
            self._subst_key, self._subst = key, {}
            for s in structures:
                if fraction_outside(s, geometry) > 0.0:
                    continue
                center = mask_on_grid(s, geometry)
                if not center.any():
                    continue
                sub = Structure(s.name, center, geometry, s.color)
                if self.supersample == "auto" and (is_small_or_thin(center, s.volume_cc)
                                                   or is_small_or_thin(center, sub.volume_cc)):
                    continue  # sub-voxel sampling reads the structure's own grid: keep it
                self._subst[id(s)] = sub
        return [self._subst.get(id(s), s) for s in structures]

    def evaluate(self, dose_Gy, geometry: ImageGeometry):
        """(dose bins Gy, {name: cumulative %}, metric rows, n failed goals) for ``dose_Gy``."""
        from ..evaluation.evaluate import evaluate_plan
        from ..evaluation.structures import fraction_outside
        rows, inside = [], []
        target = None
        for s, role in zip(self.structures, self.roles):
            if role == "target":
                target = target or s.name
            elif fraction_outside(s, geometry) >= 1.0 - 1e-12:
                rows.append({"structure": s.name, "metric": "-", "value": None, "unit": "",
                             "goal": "outside the dose grid", "passed": None})
                continue
            inside.append(s)
        if not inside:
            return np.zeros(1), {}, rows, 0
        dose_Gy, geometry = self.crop(dose_Gy, geometry, inside)
        names = [s.name for s in inside]
        # every target against its own prescription (metrics, indices, goals) in one evaluation
        others = {n: rx for n, rx in self.target_prescriptions.items() if n in names and n != target}
        ev = evaluate_plan(dose_Gy, geometry, self._on_grid(inside, geometry), self.prescription_Gy, target=target,
                           goals=self.goals, supersample=self.supersample,
                           target_prescriptions=others if target else None)
        self.result = ev
        step = max(1, int(math.ceil(len(ev.dvhs[0].edges_Gy) / self.MAX_DVH_ROWS)))
        bins = ev.dvhs[0].edges_Gy[::step]
        curves = {d.name: d.cumulative_percent[::step] for d in ev.dvhs}
        # several targets: each target's goals and metrics labelled with the prescription they refer to
        # (one target: rows as they are)
        rx_of = dict(ev.target_prescriptions) if len(ev.target_prescriptions) > 1 else {}
        info = [{"structure": name, "metric": "Prescription", "value": rx, "unit": "Gy",
                 "goal": "target of this plan (its metrics against this dose)", "passed": None}
                for name, rx in rx_of.items()]
        goal_rows = [{"structure": g["structure"], "metric": g["metric"], "value": g["value"], "unit": g["unit"],
                      "goal": g["goal"] + (f" (Rx {g['prescription_Gy']:g} Gy)" if rx_of and "prescription_Gy" in g
                                           else ""),
                      "passed": g["passed"]} for g in ev.goal_results]
        metric_rows = [{"structure": r["structure"],
                        "metric": r["metric"] + (f" (Rx {rx_of[r['structure']]:g} Gy)" if r["structure"] in rx_of
                                                 else ""),
                        "value": r["value"], "unit": r["unit"], "goal": "", "passed": None} for r in ev.metric_rows()]
        return bins, curves, info + goal_rows + metric_rows + rows, ev.n_goals_failed


def slicerrt_structures(evaluation: Evaluation, curves):
    """The structures of ``curves`` (name -> cumulative %, from :meth:`Evaluation.evaluate`) for
    :func:`slicerrt_dvh.update_slicerrt_dvh_tables`: segment ID, volume and dose statistics."""
    if not curves or evaluation.result is None or evaluation.segment_ids is None:
        return []
    ids = {s.name: sid for s, sid in zip(evaluation.structures, evaluation.segment_ids)}
    samples = {s.name: s for s in evaluation.result.samples}
    dvhs = {d.name: d for d in evaluation.result.dvhs}
    out = []
    for name, percent in curves.items():
        if name not in ids or name not in samples:
            continue
        s = samples[name]
        out.append({"segment_id": ids[name], "name": name, "volume_percent": percent,
                    "volume_cc": dvhs[name].volume_cc, "mean_Gy": s.mean(), "min_Gy": s.min(), "max_Gy": s.max(),
                    "oversampling": s.factor})
    return out


class PlanOutputs:
    """The output nodes of a :class:`plan_scene.PlanScene` (mixed into it): dose volume, isodose models,
    DVH and metrics tables, refreshed from the current dose.

    Uses the plan's ``params``, ``scene``, ``goals``, ``_evaluation``, ``last_update``, ``on_updated``,
    ``dose_array()``, ``study_item()`` and ``_folder()``.
    """

    def _evaluator(self):
        if self._evaluation is None:
            seg = self.params.get_node("segmentation")
            structures, roles, ids = [], [], []
            extra = {}
            if seg is not None:
                target = self.params.get("targetSegmentId")
                if target:
                    structures.append(segment_structure(seg, target))
                    roles.append("target")
                    ids.append(target)
                    for t in self.targets()[1:]:
                        structures.append(segment_structure(seg, t["segment_id"]))
                        roles.append("target")
                        ids.append(t["segment_id"])
                        extra[t["name"]] = t["prescription_Gy"]
                for sid in self.params.get_string_list("organSegmentIds"):
                    structures.append(segment_structure(seg, sid))
                    roles.append("oar")
                    ids.append(sid)
            self._evaluation = Evaluation(structures, roles, self.params.get("prescriptionDoseGy"), self.goals,
                                          segment_ids=ids, target_prescriptions=extra)
        return self._evaluation

    def _target_rows(self, targets, rows):
        """Metric rows with each target's seed strength (and its seeds, from the plan) after its prescription row."""
        unit = self.params.get("strengthUnit")
        plan_rows = {t["name"]: t for t in (getattr(getattr(self, "plan", None), "targets", None) or [])}
        out = []
        for r in rows:
            out.append(r)
            t = next((t for t in targets if t["name"] == r["structure"]), None)
            if t is None or r["metric"] != "Prescription":
                continue
            out.append({"structure": t["name"], "metric": "Seed strength", "value": t["strength"], "unit": unit,
                        "goal": "per seed, as entered", "passed": None})
            p = plan_rows.get(t["name"])
            if p is not None:
                out.append({"structure": t["name"], "metric": "Seed strength at implant", "value": p["strength_U"],
                            "unit": "U", "goal": "", "passed": None})
                out.append({"structure": t["name"], "metric": "Seeds", "value": p["n_seeds"], "unit": "",
                            "goal": "planned for this target", "passed": None})
        return out

    def _plan_goal_rows(self, result):
        """Metrics-table rows of the planner's own goals of the plan in the scene (``self.plan``: every target's
        V100/D90/V150/V200 goals as planned, ``--target NAME:v150=...`` included, organ limits), checked on the
        current dose, each target against its own prescription; [] without a plan or an evaluation."""
        plan = getattr(self, "plan", None)
        if plan is None or result is None:
            return []
        from ..planning.plan_dose import goal_check
        out = []
        for r in goal_check(plan, result):
            limit = f"{r['limit']:.4g} {r['unit']}".replace(" %", "%")
            own = f" (Rx {r['prescription_Gy']:g} Gy)" if "prescription_Gy" in r else ""
            out.append({"structure": r["structure"], "metric": r["metric"], "value": r["value"], "unit": r["unit"],
                        "goal": f"plan goal {r['metric']} {r['op']} {limit}{own}" + (" (soft)" if r["soft"] else ""),
                        "passed": r["passed"] if r["value"] is not None else None, "soft": r["soft"]})
        return out

    def refresh_outputs(self, progress=None, isodoses=True, evaluation=True):
        """Update dose volume, isodose models, DVH and metrics tables from the current dose."""
        import time
        t0 = time.perf_counter()
        dose, geometry = self.dose_array()
        rx = self.params.get("prescriptionDoseGy")
        targets = self.targets() if self.params.get_string_list("extraTargetSegmentIds") else []
        multi = len(targets) > 1
        timing = {}
        dose_node = update_dose_volume(self.scene, dose, geometry, rx, self.params.get_node("doseVolume"),
                                       study_item=self.study_item(), color_node=self.params.get_node("doseColorTable"))
        if self.params.get_node("doseVolume") is None:
            self.params.set_node("doseVolume", dose_node)
            self.params.set_node("doseColorTable", self.scene.GetNodeByID(dose_node.GetDisplayNode().GetColorNodeID()))
            place_in_study(self.scene, dose_node, self.study_item())
        timing["dose_volume_s"] = time.perf_counter() - t0
        _progress.report(progress, 0.2, "dose volume")
        if isodoses:
            t = time.perf_counter()
            old = self.params.get_node_list("isodoseModels")
            folder = self._folder("Isodose surfaces") if not old else 0
            models = update_isodose_models(
                self.scene, dose, geometry, rx, self.params.isodose_levels(), old, folder_item=folder,
                reference=targets[0]["name"] if multi else None,
                target_prescriptions={t["name"]: t["prescription_Gy"] for t in targets[1:]} if multi else None)
            self.params.set_node_list("isodoseModels", models)
            timing["isodoses_s"] = time.perf_counter() - t
        _progress.report(progress, 0.6, "isodose surfaces")
        ev = self._evaluator()
        if evaluation and ev.structures:
            t = time.perf_counter()
            bins, curves, rows, failed = ev.evaluate(dose, geometry)
            colors = {s.name: s.color for s in ev.structures}
            if multi:
                rows = self._target_rows(targets, rows)
            plan_rows = self._plan_goal_rows(ev.result)
            rows = rows + plan_rows
            failed += sum(1 for r in plan_rows if r["passed"] is False and not r["soft"])
            table, chart = update_dvh_nodes(self.scene, bins, curves, self.params.get_node("dvhTable"),
                                            self.params.get_node("dvhChart"), colors, rx,
                                            {t["name"]: t["prescription_Gy"] for t in targets} if multi else None)
            metrics = update_metrics_table(self.scene, rows, self.params.get_node("metricsTable"))
            for role, n in (("dvhTable", table), ("dvhChart", chart), ("metricsTable", metrics)):
                if self.params.get_node(role) is None:
                    self.params.set_node(role, n)
                    place_in_study(self.scene, n, self.study_item())
            seg = self.params.get_node("segmentation")
            if seg is not None:
                rt_tables, rt_metrics = update_slicerrt_dvh_tables(
                    self.scene, self.params.get_node("doseVolume"), seg, slicerrt_structures(ev, curves), bins,
                    self.params.get_node_list("slicerRtDvhTables"), self.params.get_node("slicerRtDvhMetricsTable"),
                    parent_item=self.study_item())
                self.params.set_node_list("slicerRtDvhTables", rt_tables)
                if self.params.get_node("slicerRtDvhMetricsTable") is None:
                    self.params.set_node("slicerRtDvhMetricsTable", rt_metrics)
            timing["evaluation_s"] = time.perf_counter() - t
            self.last_update["failed_goals"] = failed
        _progress.report(progress, 1.0, "evaluation")
        timing["total_s"] = time.perf_counter() - t0
        self.last_update.update(timing)
        if self.on_updated is not None:
            self.on_updated(self)
        return timing
