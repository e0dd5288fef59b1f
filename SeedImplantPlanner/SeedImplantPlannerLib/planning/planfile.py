"""Seed implant plans: the versioned plan file, manual seed edits, the plan folder and its summary.

Plan file (JSON, ``"format": "SeedImplantPlanner.plan"``, ``"version": 1``)::

    source        model id, nuclide, strength S_K (U) at implant, strength as entered (value, unit),
                  reference and implant dates
    prescription_Gy, formalism, goals (coverage, hot-spot and organ limits), loading rules
    needles       number, name, kind, gauge, usable length, entry/tip (RAS mm), curve control points
    seeds         position (RAS mm), axis, S_K (U), model, needle number (0 = loose), distance from
                  the needle tip (mm), fixed (already implanted)
    structures    target, organs at risk, forbidden structures, body; image and segmentation paths
    optimizer     method, status, message, seconds, random seed, goals met, unmet goals
    nomogram, obstacles (needle x structure hits), warnings, metrics

Readers refuse files of another format or a newer version with an InputError naming the file.
:func:`write_plan_folder` writes the plan folder; the pipeline that makes a plan is
:mod:`pipeline`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from .loading import LOADING_COLUMNS, LoadingRules, loading_table
from .needles import NEEDLE_TABLE_COLUMNS, Needle, needle_table
from .problem import Goals
from ..physics.seeds import SeedSet, seeds_to_rows, SEED_COLUMNS

PLAN_FORMAT = "SeedImplantPlanner.plan"
PLAN_VERSION = 1


@dataclass
class Plan:
    """A seed implant plan (see module doc); ``seed_needle`` holds needle numbers, 0 for loose seeds."""

    source: dict
    prescription_Gy: float
    goals: Goals
    rules: LoadingRules
    needles: list
    seeds: SeedSet
    seed_needle: np.ndarray
    seed_s_from_tip_mm: np.ndarray
    seed_fixed: np.ndarray
    formalism: str = "2D"
    structures: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    nomogram: dict | None = None
    obstacles: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    targets: list = field(default_factory=list)  # several targets: name, prescription, goals, strength, seeds
    # not serialised: dose grid kept up to date under edits, evaluation, blocked needles
    dose_grid: object = field(default=None, repr=False, compare=False)
    evaluation: object = field(default=None, repr=False, compare=False)

    # -- seeds -----------------------------------------------------------------------------------
    def __post_init__(self):
        n = len(self.seeds)
        self.seed_needle = np.asarray(self.seed_needle, dtype=int).reshape(n)
        self.seed_s_from_tip_mm = np.asarray(self.seed_s_from_tip_mm, dtype=float).reshape(n)
        self.seed_fixed = np.asarray(self.seed_fixed, dtype=bool).reshape(n)

    @property
    def strength_U(self) -> float:
        """Air-kerma strength per seed at the implant date (U)."""
        return float(self.source["strength_U"])

    @property
    def model_id(self) -> str:
        """Seed model id."""
        return str(self.source["model"])

    @property
    def total_strength_U(self) -> float:
        """Sum of the seeds' air-kerma strengths (U)."""
        return float(self.seeds.strengths_U.sum())

    def needle_by_number(self, number) -> Needle:
        """The needle with ``number``; InputError if there is none."""
        for n in self.needles:
            if n.number == int(number):
                return n
        raise InputError(f"no needle number {number} in the plan (needles: "
                         f"{', '.join(str(n.number) for n in self.needles) or 'none'})")

    def used_needles(self):
        """Needles that carry at least one seed, in number order."""
        used = set(int(v) for v in self.seed_needle if v > 0)
        return [n for n in self.needles if n.number in used]

    def loading_rows(self, include_empty=False):
        """Loading table rows (see :func:`loading.loading_table`)."""
        index = {n.number: k for k, n in enumerate(self.needles)}
        on = self.seed_needle > 0
        return loading_table(self.needles, [index[v] for v in self.seed_needle[on]], self.seed_s_from_tip_mm[on],
                             self.rules, include_empty)

    # -- manual edits (incremental dose when a dose grid is attached) -------------------------
    def attach_dose_grid(self, grid):
        """Keep ``grid`` (a :class:`dose.DoseGrid` holding this plan's seeds) up to date under edits."""
        if len(grid.seeds) != len(self.seeds):
            raise InputError(f"dose grid holds {len(grid.seeds)} seeds, the plan {len(self.seeds)}")
        self.dose_grid = grid

    def _on_needle(self, needle_number, position):
        n = self.needle_by_number(needle_number)
        pts, depth = n.sample_path(0.25)
        k = int(np.argmin(np.linalg.norm(pts - position, axis=1)))
        s = n.depth_mm - depth[k]
        return n, float(s)

    def add_seed(self, position, needle_number=0, axis=None) -> int:
        """Add a seed at ``position`` (on needle ``needle_number``: snapped to its path); returns its index."""
        p = np.asarray(position, dtype=float).reshape(3)
        if not np.all(np.isfinite(p)):
            raise InputError(f"seed position is not finite: {p.tolist()}")
        s = float("nan")
        if needle_number:
            n, s = self._on_needle(needle_number, p)
            p = n.point_from_tip(s)
            axis = n.tangent_from_tip(s) if axis is None else axis
        if axis is None:
            raise InputError("a loose seed (no needle) needs its axis")
        new = SeedSet([p], [axis], [self.strength_U], [self.model_id])
        if self.dose_grid is not None:
            self.dose_grid.add_seed(new.positions[0], new.axes[0], self.strength_U, self.model_id)
        self.seeds = SeedSet.concatenate([self.seeds, new])
        self.seed_needle = np.append(self.seed_needle, int(needle_number))
        self.seed_s_from_tip_mm = np.append(self.seed_s_from_tip_mm, s)
        self.seed_fixed = np.append(self.seed_fixed, False)
        return len(self.seeds) - 1

    def _check_index(self, index):
        if not 0 <= int(index) < len(self.seeds):
            raise InputError(f"no seed with index {index} (plan has {len(self.seeds)} seeds)")
        return int(index)

    def move_seed(self, index, position):
        """Move seed ``index`` to ``position`` (snapped to its needle's path if it sits on one)."""
        i = self._check_index(index)
        p = np.asarray(position, dtype=float).reshape(3)
        if not np.all(np.isfinite(p)):
            raise InputError(f"seed position is not finite: {p.tolist()}")
        axis = self.seeds.axes[i]
        if self.seed_needle[i] > 0:
            n, s = self._on_needle(self.seed_needle[i], p)
            p = n.point_from_tip(s)
            axis = n.tangent_from_tip(s)
            self.seed_s_from_tip_mm[i] = s
        if self.dose_grid is not None:
            self.dose_grid.move_seed(i, p, axis)
        self.seeds.positions[i] = p
        self.seeds.axes[i] = axis

    def delete_seed(self, index):
        """Remove seed ``index``."""
        i = self._check_index(index)
        if self.dose_grid is not None:
            self.dose_grid.remove_seed(i)
        keep = np.ones(len(self.seeds), dtype=bool)
        keep[i] = False
        self.seeds = self.seeds.subset(keep)
        self.seed_needle = self.seed_needle[keep]
        self.seed_s_from_tip_mm = self.seed_s_from_tip_mm[keep]
        self.seed_fixed = self.seed_fixed[keep]

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-JSON form (the plan file)."""
        seeds = []
        for i in range(len(self.seeds)):
            s = self.seed_s_from_tip_mm[i]
            seeds.append({"position_ras_mm": [round(float(v), 4) for v in self.seeds.positions[i]],
                          "axis": [round(float(v), 6) for v in self.seeds.axes[i]],
                          "strength_U": float(self.seeds.strengths_U[i]), "model": self.seeds.models[i],
                          "needle": int(self.seed_needle[i]),
                          "from_tip_mm": None if not math.isfinite(s) else round(float(s), 3),
                          "fixed": bool(self.seed_fixed[i])})
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "source": self.source,
                "prescription_Gy": self.prescription_Gy, "formalism": self.formalism, "goals": self.goals.to_dict(),
                "loading_rules": self.rules.to_dict(), "needles": [n.to_dict() for n in self.needles],
                "seeds": seeds, "summary": self.summary(), "structures": self.structures, "optimizer": self.optimizer,
                "nomogram": self.nomogram, "obstacles": self.obstacles, "warnings": self.warnings,
                "metrics": self.metrics, **({"targets": self.targets} if self.targets else {})}

    def summary(self) -> dict:
        """Counts and totals for reports."""
        out = {"n_seeds": len(self.seeds), "n_needles_used": len(self.used_needles()),
               "n_needles_defined": len(self.needles), "total_strength_U": round(self.total_strength_U, 4),
               "n_fixed_seeds": int(self.seed_fixed.sum())}
        u_per_mci = self.source.get("U_per_mCi")
        if u_per_mci:
            out["total_activity_mCi"] = round(self.total_strength_U / float(u_per_mci), 4)
        return out

    @classmethod
    def from_dict(cls, d, where="plan"):
        """Inverse of :meth:`to_dict`; a wrong format or newer version raises InputError."""
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise InputError(f"{where}: not a SeedImplantPlanner plan file (format field must be '{PLAN_FORMAT}')")
        version = d.get("version")
        if not isinstance(version, int) or version < 1 or version > PLAN_VERSION:
            raise InputError(f"{where}: plan file version {version!r} is not supported (this program reads "
                             f"versions 1 to {PLAN_VERSION})")
        source = d.get("source")
        if not isinstance(source, dict):
            raise InputError(f"{where}: malformed plan file (key 'source' missing or not an object)")
        if not isinstance(source.get("model"), str) or not source["model"]:
            raise InputError(f"{where}: malformed plan file (source.model missing: the seed model id)")
        sk = source.get("strength_U")
        if isinstance(sk, bool) or not isinstance(sk, (int, float)) or not math.isfinite(sk) or sk <= 0:
            raise InputError(f"{where}: malformed plan file (source.strength_U must be a number > 0, got {sk!r})")
        try:
            needles = [Needle.from_dict(n, f"{where}: needle {k + 1}") for k, n in enumerate(d.get("needles", []))]
            rows = d["seeds"]
            n = len(rows)
            seeds = SeedSet(np.array([r["position_ras_mm"] for r in rows], float).reshape(n, 3),
                            np.array([r["axis"] for r in rows], float).reshape(n, 3),
                            np.array([r["strength_U"] for r in rows], float), [r["model"] for r in rows])
            s = [np.nan if r.get("from_tip_mm") is None else float(r["from_tip_mm"]) for r in rows]
            plan = cls(dict(d["source"]), float(d["prescription_Gy"]), Goals.from_dict(d["goals"]),
                       LoadingRules(**d.get("loading_rules", {})), needles, seeds,
                       [int(r.get("needle", 0)) for r in rows], s, [bool(r.get("fixed", False)) for r in rows],
                       d.get("formalism", "2D"), d.get("structures", {}), d.get("optimizer", {}), d.get("nomogram"),
                       d.get("obstacles", []), d.get("warnings", []), d.get("metrics", {}), list(d.get("targets", [])))
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed plan file ({exc.__class__.__name__}: {exc})") from exc
        return plan


def read_plan(path) -> Plan:
    """Read a plan file; errors name the file."""
    from ..core.fileio import require_complete
    path = require_complete(Path(path), "plan file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read plan file: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise InputError(f"{path}: plan file is not valid JSON: {exc}") from exc
    return Plan.from_dict(doc, str(path))


def read_plan_seeds(path) -> SeedSet:
    """The seeds of a plan file (for ``seedplan dose --seeds plan.json``)."""
    plan = read_plan(path)
    if not len(plan.seeds):
        raise InputError(f"{path}: the plan has no seeds")
    return plan.seeds


def write_plan(path, plan: Plan):
    """Write the plan file atomically."""
    from ..core.fileio import write_json
    write_json(path, plan.to_dict())
    return Path(path)


def write_plan_folder(folder, plan: Plan, dose_Gy=None, dose_geometry=None):
    """Write the plan folder: plan.json, needles.csv, loading.csv, seeds.csv, obstacles.csv, dose.nrrd, metrics.

    The files are written into a temporary folder and moved into place together
    (:func:`core.fileio.atomic_folder`): an interrupted run leaves no partial plan folder.
    """
    from ..core.fileio import atomic_folder
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        written = _write_plan_files(tmp, plan, dose_Gy, dose_geometry)
    return [folder / p.name for p in written]


def _write_plan_files(folder, plan: Plan, dose_Gy=None, dose_geometry=None):
    from ..core.fileio import write_csv, write_json, write_text
    from .obstacles import HIT_COLUMNS
    write_plan(folder / "plan.json", plan)
    write_csv(folder / "needles.csv", needle_table(plan.used_needles() or plan.needles), NEEDLE_TABLE_COLUMNS)
    write_csv(folder / "needles_all.csv", needle_table(plan.needles), NEEDLE_TABLE_COLUMNS)
    write_csv(folder / "loading.csv", plan.loading_rows(), LOADING_COLUMNS)
    rows = seeds_to_rows(plan.seeds)
    for r, nn, f in zip(rows, plan.seed_needle, plan.seed_fixed):
        r["needle"] = int(nn)
        r["fixed"] = "yes" if f else "no"
    write_csv(folder / "seeds.csv", rows, list(SEED_COLUMNS) + ["needle", "fixed"])
    write_csv(folder / "obstacles.csv", plan.obstacles, HIT_COLUMNS)
    written = ["plan.json", "needles.csv", "needles_all.csv", "loading.csv", "seeds.csv", "obstacles.csv"]
    if dose_Gy is not None:
        from ..core.imageio import write_image
        write_image(folder / "dose.nrrd", np.asarray(dose_Gy, dtype=np.float32), dose_geometry,
                    {"SeedPlan_Quantity": "total", "SeedPlan_Unit": "Gy", "SeedPlan_Formalism": plan.formalism})
        written.append("dose.nrrd")
    if plan.evaluation is not None:
        from ..evaluation.evaluate import write_metrics_csv
        write_metrics_csv(folder / "metrics.csv", plan.evaluation)
        written.append("metrics.csv")
    if plan.metrics:
        write_json(folder / "metrics.json", plan.metrics)
        written.append("metrics.json")
    if plan.evaluation is not None and plan.evaluation.goal_results:
        from ..evaluation.evaluate import write_goals_csv
        write_goals_csv(folder / "goals.csv", plan.evaluation)
        written.append("goals.csv")
    write_text(folder / "summary.txt", plan_report(plan) + "\n")
    written.append("summary.txt")
    return [folder / w for w in written]


def plan_report(plan: Plan) -> str:
    """Human-readable summary: seeds, needles, activity, goals, warnings."""
    s = plan.summary()
    lines = [f"seeds: {s['n_seeds']} ({s['n_fixed_seeds']} fixed) of {plan.model_id} at {plan.strength_U:.4g} U; "
             f"total {s['total_strength_U']:.2f} U"
             + (f" ({s['total_activity_mCi']:.2f} mCi)" if "total_activity_mCi" in s else ""),
             f"needles: {s['n_needles_used']} used of {s['n_needles_defined']} defined"
             + (f" (limit {plan.optimizer['max_needles']} new)" if plan.optimizer.get('max_needles') else ""),
             f"prescription: {plan.prescription_Gy:g} Gy; optimiser: {plan.optimizer.get('method')} - "
             f"{plan.optimizer.get('message')} ({plan.optimizer.get('seconds_total', 0):.1f} s)"]
    for t in plan.targets:
        nomo = t.get("nomogram") or {}
        lines.append(f"target {t['name']}: prescription {t['prescription_Gy']:g} Gy, {t['n_seeds']} seeds of "
                     f"{t['strength_U']:.4g} U" + (f" (nomogram about {nomo['n_seeds']})" if nomo.get("n_seeds") else ""))
    if plan.nomogram and "n_seeds" in plan.nomogram and not plan.targets:
        lines.append(f"nomogram (Wu et al. power law): about {plan.nomogram['n_seeds']} seeds, "
                     f"{plan.nomogram['total_strength_U']:.1f} U for average dimension "
                     f"{plan.nomogram['average_dimension_cm']:.2f} cm")
    for r in plan.metrics.get("goal_check", []):
        v = "n/a" if r["value"] is None else f"{r['value']:.2f}"
        lines.append(f"goal {r['goal']} {r['limit']:g}: {v} {'PASS' if r['passed'] else 'FAIL'}")
    for r in plan.metrics.get("goals", []):  # the goal file's, every target against its own prescription
        v = "n/a" if r.get("value") is None else f"{r['value']:.2f} {r.get('unit', '')}".rstrip()
        own = f" (Rx {r['prescription_Gy']:g} Gy)" if "prescription_Gy" in r else ""
        lines.append(f"goals {plan.metrics.get('goal_set', '')}: {r['structure']} {r['goal']}{own}: {v} "
                     f"{str(r.get('status', '')).upper()}")
    for w in plan.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
