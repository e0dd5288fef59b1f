"""Seed loading along needles: candidate positions, spacing rules and the loading table.

Positions along a needle are counted from its tip: the first possible seed centre lies
``tip_offset_mm`` back from the tip and the others every ``spacing_mm`` (10 mm by default, 5 mm
as an option) towards the entry, on the needle's path (arc length for a curved catheter). A
position is a *candidate* when it lies inside the target (or within ``target_margin_mm`` of it)
and not closer than ``min_distance_mm`` to a fixed (already implanted) seed. Two candidates on
different needles closer than ``min_distance_mm`` *conflict*: at most one of them is loaded.
Each seed's axis is the needle's local direction (tangent), which the TG-43 2D dose uses.

The loading table gives, per needle and from the tip, what the person loading it needs:
loose seeds (Mick-type applicator) as seed centre distances from the tip; stranded seeds as the
sequence ``tip gap | seed | spacer | seed ...`` with spacer lengths in mm, where a spacer fills
the gap between two consecutive seeds (centre distance minus one seed length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry

#: Length of one I-125 seed capsule (mm) used for spacer lengths (4.5 mm: model 6711 and most I-125 seeds).
DEFAULT_SEED_LENGTH_MM = 4.5


@dataclass
class LoadingRules:
    """How seeds may sit along needles (mm)."""

    spacing_mm: float = 10.0
    tip_offset_mm: float = 5.0
    target_margin_mm: float = 0.0
    min_distance_mm: float = 5.0
    stranded: bool = False
    seed_length_mm: float = DEFAULT_SEED_LENGTH_MM

    def __post_init__(self):
        for name in ("spacing_mm", "seed_length_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InputError(f"seed {name.replace('_mm', '').replace('_', ' ')} must be > 0 mm, got {v!r}")
        for name in ("tip_offset_mm", "target_margin_mm", "min_distance_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InputError(f"{name.replace('_mm', '').replace('_', ' ')} must be >= 0 mm, got {v!r}")
        if self.spacing_mm < self.seed_length_mm:  # seeds in one needle cannot overlap
            raise InputError(f"{'stranded' if self.stranded else 'loose'} seeds need a spacing >= the seed length "
                             f"{self.seed_length_mm:g} mm, got {self.spacing_mm:g} mm")

    def to_dict(self):
        """Plain-JSON form."""
        return dict(spacing_mm=self.spacing_mm, tip_offset_mm=self.tip_offset_mm,
                    target_margin_mm=self.target_margin_mm, min_distance_mm=self.min_distance_mm,
                    stranded=self.stranded, seed_length_mm=self.seed_length_mm)


class TargetRegion:
    """Membership test "inside the target or within ``margin_mm`` of it" at RAS points."""

    def __init__(self, mask, geometry: ImageGeometry, margin_mm=0.0):
        from scipy.ndimage import distance_transform_edt
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            raise InputError("the target is empty")
        self.margin_mm = float(margin_mm)
        k, j, i = np.nonzero(mask)
        pad = np.ceil((self.margin_mm + 1.0) / np.asarray(geometry.spacing)).astype(int) + 1
        lo = np.maximum(np.array([i.min(), j.min(), k.min()]) - pad, 0)
        hi = np.minimum(np.array([i.max(), j.max(), k.max()]) + pad, np.asarray(geometry.size) - 1)
        self.lo = lo
        self.size = hi - lo + 1
        self.geometry = geometry
        crop = mask[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
        if self.margin_mm > 0:
            sampling = (geometry.spacing[2], geometry.spacing[1], geometry.spacing[0])
            self.inside = distance_transform_edt(~crop, sampling=sampling) <= self.margin_mm + 1e-6
        else:
            self.inside = crop

    def __call__(self, points):
        pts = np.asarray(points, dtype=float).reshape(-1, 3)
        ijk = np.rint(self.geometry.ras_to_ijk(pts)).astype(np.int64) - self.lo
        ok = np.all((ijk >= 0) & (ijk < self.size), axis=1)
        out = np.zeros(len(pts), dtype=bool)
        idx = ijk[ok]
        out[ok] = self.inside[idx[:, 2], idx[:, 1], idx[:, 0]]
        return out


@dataclass
class Candidates:
    """Candidate seed positions: RAS ``positions`` (C, 3), ``axes`` (C, 3), needle index, distance from tip."""

    positions: np.ndarray
    axes: np.ndarray
    needle_index: np.ndarray
    s_from_tip_mm: np.ndarray

    def __len__(self):
        return len(self.positions)

    def conflicts(self, min_distance_mm):
        """Pairs (P, 2) of candidates on different needles closer than ``min_distance_mm``."""
        if min_distance_mm <= 0 or len(self) < 2:
            return np.zeros((0, 2), dtype=int)
        from scipy.spatial import cKDTree
        pairs = cKDTree(self.positions).query_pairs(min_distance_mm - 1e-9, output_type="ndarray")
        if not len(pairs):
            return np.zeros((0, 2), dtype=int)
        return pairs[self.needle_index[pairs[:, 0]] != self.needle_index[pairs[:, 1]]]


def candidate_positions(needles, inside, rules: LoadingRules, fixed_positions=None) -> Candidates:
    """Candidate positions on every needle that are inside the target region (``inside(points)``)."""
    pos, ax, nid, sft = [], [], [], []
    fixed = None
    if fixed_positions is not None and len(fixed_positions):
        from scipy.spatial import cKDTree
        fixed = cKDTree(np.asarray(fixed_positions, float).reshape(-1, 3))
    for k, n in enumerate(needles):
        depth = n.depth_mm
        if rules.tip_offset_mm > depth:
            continue
        s = np.arange(rules.tip_offset_mm, depth + 1e-9, rules.spacing_mm)
        p = n.point_from_tip(s)
        keep = inside(p)
        if fixed is not None and rules.min_distance_mm > 0 and keep.any():
            keep &= fixed.query(p)[0] >= rules.min_distance_mm
        if not keep.any():
            continue
        pos.append(p[keep])
        ax.append(n.tangent_from_tip(s[keep]))
        nid.append(np.full(int(keep.sum()), k))
        sft.append(s[keep])
    if not pos:
        return Candidates(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, int), np.zeros(0))
    return Candidates(np.vstack(pos), np.vstack(ax), np.concatenate(nid), np.concatenate(sft))


def uniform_loading(cands: Candidates, rules: LoadingRules) -> np.ndarray:
    """Plain uniform loading: every candidate, skipping those that conflict with one already loaded."""
    chosen = np.zeros(len(cands), dtype=bool)
    pairs = cands.conflicts(rules.min_distance_mm)
    nbrs = [[] for _ in range(len(cands))]
    for a, b in pairs:
        nbrs[a].append(b)
        nbrs[b].append(a)
    for i in range(len(cands)):
        if not any(chosen[j] for j in nbrs[i]):
            chosen[i] = True
    return chosen


LOADING_COLUMNS = ("needle", "number", "n_seeds", "positions_from_tip_mm", "sequence_from_tip", "tip_gap_mm",
                   "spacers_mm", "depth_mm", "fixed")


def loading_row(needle, s_from_tip, rules: LoadingRules) -> dict:
    """Loading-table row of one needle from the distances (mm) of its seed centres from the tip."""
    s = np.sort(np.asarray(s_from_tip, dtype=float))
    half = 0.5 * rules.seed_length_mm
    row = {"needle": needle.name, "number": needle.number, "n_seeds": int(len(s)),
           "positions_from_tip_mm": ";".join(f"{v:.1f}" for v in s), "depth_mm": f"{needle.depth_mm:.1f}",
           "fixed": "yes" if needle.fixed else "no"}
    if not len(s):
        row.update(sequence_from_tip="empty", tip_gap_mm="", spacers_mm="")
        return row
    gaps = np.diff(s) - rules.seed_length_mm
    tip_gap = max(0.0, s[0] - half)
    tokens = [f"gap {tip_gap:.1f}"] if tip_gap > 0.05 else []
    tokens.append("S")
    for g in gaps:
        if g > 0.05:
            tokens.append(f"sp {g:.1f}")
        tokens.append("S")
    row["sequence_from_tip"] = " | ".join(tokens)
    row["tip_gap_mm"] = f"{tip_gap:.1f}"
    row["spacers_mm"] = ";".join(f"{max(g, 0.0):.1f}" for g in gaps)
    return row


def loading_table(needles, seed_needle_index, seed_s_from_tip, rules: LoadingRules, include_empty=False) -> list:
    """Loading-table rows for every needle that carries seeds (all needles with ``include_empty``)."""
    idx = np.asarray(seed_needle_index, dtype=int)
    sft = np.asarray(seed_s_from_tip, dtype=float)
    rows = []
    for k, n in enumerate(needles):
        mine = sft[idx == k]
        if len(mine) or include_empty:
            rows.append(loading_row(n, mine, rules))
    return rows
