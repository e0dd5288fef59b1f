"""Seed sets: positions (RAS mm), unit axes, air-kerma strengths (U) and model ids; CSV I/O.

Seeds CSV columns (header required, any order, extra columns ignored):
    x_mm, y_mm, z_mm, axis_x, axis_y, axis_z, sk_U, model
Coordinates are RAS millimetres (3D Slicer's convention). Points CSV: x_mm, y_mm, z_mm.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.fileio import require_complete

SEED_COLUMNS = ("x_mm", "y_mm", "z_mm", "axis_x", "axis_y", "axis_z", "sk_U", "model")
POINT_COLUMNS = ("x_mm", "y_mm", "z_mm")


def xyz_rows(values, what) -> np.ndarray:
    """``values`` as an (N, 3) float array; InputError naming ``what`` otherwise."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers (x, y, z in mm)") from None
    if arr.size % 3 or (arr.ndim > 1 and arr.shape[-1] != 3):
        raise InputError(f"{what} must be rows of 3 values (x, y, z), got shape {arr.shape}")
    return arr.reshape(-1, 3)


@dataclass
class SeedSet:
    """N seeds: ``positions`` (N, 3) RAS mm, unit ``axes`` (N, 3), ``strengths_U`` (N,), ``models`` (N,)."""

    positions: np.ndarray
    axes: np.ndarray
    strengths_U: np.ndarray
    models: list = field(default_factory=list)

    def __post_init__(self):
        self.positions = xyz_rows(self.positions, "seed positions")
        n = self.positions.shape[0]
        self.axes = xyz_rows(self.axes, "seed axes")
        try:
            self.strengths_U = np.broadcast_to(np.asarray(self.strengths_U, dtype=float), (n,)).copy()
        except (TypeError, ValueError):
            raise InputError(f"{n} seed positions but strengths of shape {np.shape(self.strengths_U)}") from None
        if isinstance(self.models, str):
            self.models = [self.models] * n
        self.models = list(self.models)
        self.validate()
        norms = np.linalg.norm(self.axes, axis=1)
        self.axes = self.axes / norms[:, None] if n else self.axes

    def validate(self, where="seed"):
        """Raise InputError naming the first bad seed (NaN position, zero axis, bad strength)."""
        n = self.positions.shape[0]
        if self.axes.shape != (n, 3):
            raise InputError(f"{n} seed positions but {self.axes.shape[0]} axes")
        if len(self.models) != n:
            raise InputError(f"{n} seed positions but {len(self.models)} model ids")
        for i in range(n):
            label = f"{where} {i + 1}"
            if not np.all(np.isfinite(self.positions[i])):
                raise InputError(f"{label}: position is not finite: {self.positions[i].tolist()}")
            if not np.all(np.isfinite(self.axes[i])) or np.linalg.norm(self.axes[i]) < 1e-9:
                raise InputError(f"{label}: axis has zero length or is not finite: {self.axes[i].tolist()}")
            s = self.strengths_U[i]
            if not math.isfinite(s):
                raise InputError(f"{label}: strength is not finite (NaN or Inf)")
            if s <= 0:
                raise InputError(f"{label}: strength must be > 0 U, got {s:g}")
            if not isinstance(self.models[i], str) or not self.models[i]:
                raise InputError(f"{label}: model id is empty")

    def __len__(self):
        return self.positions.shape[0]

    def copy(self) -> "SeedSet":
        """Deep copy."""
        return SeedSet(self.positions.copy(), self.axes.copy(), self.strengths_U.copy(), list(self.models))

    def subset(self, index) -> "SeedSet":
        """Seeds selected by an index array or boolean mask."""
        idx = np.arange(len(self))[index]
        return SeedSet(self.positions[idx], self.axes[idx], self.strengths_U[idx], [self.models[i] for i in idx])

    def model_groups(self) -> dict:
        """``{model_id: index array}`` of the seeds of each model."""
        groups = {}
        for i, m in enumerate(self.models):
            groups.setdefault(m, []).append(i)
        return {m: np.asarray(v, dtype=int) for m, v in groups.items()}

    @staticmethod
    def concatenate(sets) -> "SeedSet":
        """One SeedSet from several."""
        sets = list(sets)
        if not sets:
            return SeedSet(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), [])
        return SeedSet(np.vstack([s.positions for s in sets]), np.vstack([s.axes for s in sets]),
                       np.concatenate([s.strengths_U for s in sets]), sum((s.models for s in sets), []))


def _read_rows(path, required, what):
    path = require_complete(Path(path), f"{what} CSV")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(f"{path}: {what} CSV is missing column(s): {', '.join(missing)} "
                                 f"(header must have {', '.join(required)})")
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} CSV: {exc.strerror or exc}") from exc
    except csv.Error as exc:
        raise InputError(f"{path}: malformed {what} CSV: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: {what} CSV is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                         "is it a binary file?") from exc
    rows = [r for r in rows if any(r.values())]
    if not rows:
        raise InputError(f"{path}: {what} CSV has no rows")
    return path, rows


def _number(path, line, col, text):
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}: line {line}: column {col}: not a number: {text!r}") from None


def read_seeds_csv(path, default_model=None) -> SeedSet:
    """Read a seeds CSV (see module doc); errors name the file, line and column."""
    required = SEED_COLUMNS if default_model is None else SEED_COLUMNS[:-1]
    path, rows = _read_rows(path, required, "seeds")
    pos, ax, sk, models = [], [], [], []
    for n, row in enumerate(rows, start=2):
        vals = {c: _number(path, n, c, row.get(c, "")) for c in SEED_COLUMNS[:-1]}
        if not math.isfinite(vals["sk_U"]):
            raise InputError(f"{path}: line {n}: column sk_U: strength is not finite ({row['sk_U']})")
        if vals["sk_U"] <= 0:
            raise InputError(f"{path}: line {n}: column sk_U: strength must be > 0 U, got {row['sk_U']}")
        a = np.array([vals["axis_x"], vals["axis_y"], vals["axis_z"]])
        if not np.all(np.isfinite(a)) or np.linalg.norm(a) < 1e-9:
            raise InputError(f"{path}: line {n}: columns axis_x/axis_y/axis_z: zero-length or non-finite axis")
        p = np.array([vals["x_mm"], vals["y_mm"], vals["z_mm"]])
        if not np.all(np.isfinite(p)):
            raise InputError(f"{path}: line {n}: columns x_mm/y_mm/z_mm: position is not finite")
        model = row.get("model") or default_model
        if not model:
            raise InputError(f"{path}: line {n}: column model: empty model id")
        pos.append(p)
        ax.append(a)
        sk.append(vals["sk_U"])
        models.append(model)
    return SeedSet(np.array(pos), np.array(ax), np.array(sk), models)


def read_points_csv(path) -> np.ndarray:
    """Read a points CSV (x_mm, y_mm, z_mm) into an (M, 3) array."""
    path, rows = _read_rows(path, POINT_COLUMNS, "points")
    out = np.empty((len(rows), 3))
    for n, row in enumerate(rows):
        for j, c in enumerate(POINT_COLUMNS):
            out[n, j] = _number(path, n + 2, c, row.get(c, ""))
        if not np.all(np.isfinite(out[n])):
            raise InputError(f"{path}: line {n + 2}: point is not finite")
    return out


def seeds_to_rows(seeds: SeedSet) -> list:
    """Seeds as CSV rows (dicts with the SEED_COLUMNS keys)."""
    rows = []
    for i in range(len(seeds)):
        p, a = seeds.positions[i], seeds.axes[i]
        rows.append({"x_mm": f"{p[0]:.4f}", "y_mm": f"{p[1]:.4f}", "z_mm": f"{p[2]:.4f}",
                     "axis_x": f"{a[0]:.6f}", "axis_y": f"{a[1]:.6f}", "axis_z": f"{a[2]:.6f}",
                     "sk_U": f"{seeds.strengths_U[i]:.6g}", "model": seeds.models[i]})
    return rows
