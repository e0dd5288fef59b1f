"""The seed finder's result: :class:`FoundSeeds` (poses, confidence, clusters, rejected objects).

Positions are RAS mm; axes unit vectors. Used by :func:`imaging.seedfinder.find_seeds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..physics.seeds import SeedSet, seeds_to_rows

#: Default seed capsule (mm), model 6711's, when the caller gives none (physics.sources has each model's).
SEED_LENGTH_MM = 4.5
SEED_DIAMETER_MM = 0.8

SEED_CSV_EXTRA = ("confidence", "cluster_id", "seeds_in_cluster")


@dataclass
class FoundSeeds:
    """Seeds found in a CT: poses, per-seed confidence and cluster, and what was rejected."""

    positions: np.ndarray            # (N, 3) RAS mm
    axes: np.ndarray                 # (N, 3) unit vectors (sign arbitrary, z >= 0 by convention)
    confidence: np.ndarray           # (N,) 0..1
    cluster_id: np.ndarray           # (N,) connected-component id (1-based); shared by split seeds
    seeds_in_cluster: np.ndarray     # (N,) number of seeds the cluster was split into
    threshold_hu: float
    background_hu: float
    unit_content: float              # metal content of one seed, HU * mm^3
    expected_count: int | None = None
    warnings: list = field(default_factory=list)
    rejected: list = field(default_factory=list)   # dicts: position_mm, reason, seeds_equivalent
    n_components: int = 0
    cluster_metal_seeds: np.ndarray | None = None  # (N,) metal content of the seed's cluster in seeds
    capsule_mm: tuple = (SEED_LENGTH_MM, SEED_DIAMETER_MM)  # seed capsule used (length, diameter), mm
    needles_in_place: int = 0                       # needles taken out before the search

    def __len__(self):
        return int(self.positions.shape[0])

    @property
    def missing_count(self) -> int:
        """Expected minus found (0 without an expected count or when none are missing)."""
        if self.expected_count is None:
            return 0
        return max(0, int(self.expected_count) - len(self))

    @property
    def extra_count(self) -> int:
        """Found minus expected (0 without an expected count or when none are extra)."""
        if self.expected_count is None:
            return 0
        return max(0, len(self) - int(self.expected_count))

    def to_seedset(self, strength_U, model) -> SeedSet:
        """A :class:`SeedSet` with the given strength(s) (U) and model id(s)."""
        return SeedSet(self.positions, self.axes, strength_U, model if not isinstance(model, str)
                       else [model] * len(self))

    def rows(self, strength_U, model) -> list:
        """CSV rows: the seeds CSV columns plus confidence, cluster_id, seeds_in_cluster."""
        rows = seeds_to_rows(self.to_seedset(strength_U, model))
        for r, c, k, m in zip(rows, self.confidence, self.cluster_id, self.seeds_in_cluster):
            r["confidence"] = f"{c:.3f}"
            r["cluster_id"] = str(int(k))
            r["seeds_in_cluster"] = str(int(m))
        return rows

    def summary(self) -> dict:
        """Plain-JSON summary."""
        return {"found": len(self), "expected": self.expected_count, "missing": self.missing_count,
                "extra": self.extra_count, "threshold_HU": round(self.threshold_hu, 1),
                "background_HU": round(self.background_hu, 1), "components": self.n_components,
                "clusters_split": int(len(set(self.cluster_id[self.seeds_in_cluster > 1].tolist()))),
                "seeds_in_split_clusters": int(np.count_nonzero(self.seeds_in_cluster > 1)),
                "low_confidence": int(np.count_nonzero(self.confidence < 0.5)),
                "seed_capsule_mm": {"length": self.capsule_mm[0], "diameter": self.capsule_mm[1]},
                "needles_in_place": self.needles_in_place,
                "rejected": self.rejected, "warnings": list(self.warnings)}

