"""Quick estimate of the seed count and total strength from the target's dimensions (a nomogram).

Published power law (the one shipped, a starting point and sanity check, never a plan):

    A_total (U) = 1.69 * d_a(cm)^2.00      for 145 Gy (full decay), I-125 model 6711, NIST-1999 S_K

(equivalently 2.15 d_a^2 mCi), from A. Wu, C.C. Lee, M. Johnson, D. Brown, R. Benoit, R. Miler,
J. Cohen, P. Geis, A.S.J. Chen, S. Kalnicki, "A new power law for determination of total 125I
seed activity for ultrasound-guided prostate implants: clinical evaluations" (sphero-cylindrical
dose model, peripheral loading; record:
https://einstein.pure.elsevier.com/en/publications/a-new-power-law-for-determination-of-total-sup125supi-seed-activi).
``d_a`` is the *average dimension*: the mean of the target's three orthogonal extents, taken here
along the principal axes of the target voxels.

Scaling used here (labelled approximations, not part of the publication):
- prescription: dose is linear in total strength, so A scales with Rx / 145 Gy;
- other I-125 models: A scales with Lambda(6711) / Lambda(model) (same total dose per U at 1 cm;
  radial dose functions of I-125 seeds are close). Pd-103 and other nuclides: no nomogram shipped.
The power law was derived for prostate-like volumes (about 14 to 74 cc); outside that range the
estimate is flagged as an extrapolation.

The older "average dimension" rules (Memorial/Anderson nomograms, "5 mCi per cm of average
dimension") are not shipped: their constants could not be confirmed in a primary source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from ..physics.sources import SeedModel, get_model

WU_COEFF_U = 1.69
WU_EXPONENT = 2.00
WU_DOSE_GY = 145.0
WU_MODEL = "I125_OncoSeed_6711"
WU_VOLUME_RANGE_CC = (13.7, 73.6)
CITATION = ("Wu A, Lee CC, Johnson M, Brown D, Benoit R, Miler R, Cohen J, Geis P, Chen ASJ, Kalnicki S. "
            "A new power law for determination of total 125I seed activity for ultrasound-guided prostate "
            "implants: clinical evaluations. A(U) = 1.69 d^2.00 for 145 Gy, model 6711.")


@dataclass
class NomogramEstimate:
    """Result of :func:`estimate`."""

    volume_cc: float
    dimensions_cm: tuple
    average_dimension_cm: float
    total_strength_U: float
    total_activity_mCi: float | None
    n_seeds: int
    strength_per_seed_U: float
    source: str
    notes: list

    def to_dict(self):
        """Plain-JSON form."""
        return {"volume_cc": self.volume_cc, "dimensions_cm": list(self.dimensions_cm),
                "average_dimension_cm": self.average_dimension_cm, "total_strength_U": self.total_strength_U,
                "total_activity_mCi": self.total_activity_mCi, "n_seeds": self.n_seeds,
                "strength_per_seed_U": self.strength_per_seed_U, "source": self.source, "notes": list(self.notes)}

    def describe(self) -> str:
        """One line for reports."""
        mci = f" ({self.total_activity_mCi:.1f} mCi)" if self.total_activity_mCi is not None else ""
        return (f"nomogram: target {self.volume_cc:.1f} cc, average dimension {self.average_dimension_cm:.2f} cm -> "
                f"total {self.total_strength_U:.1f} U{mci}, about {self.n_seeds} seeds of {self.strength_per_seed_U:g} U")


def principal_dimensions_cm(mask, geometry):
    """Extents (cm) of a mask along its three principal axes, largest first, and its volume (cc)."""
    from .needles import mask_points
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InputError("the target is empty: no dimensions to measure")
    pts = mask_points(mask, geometry)
    volume = float(len(pts) * geometry.voxel_volume_cc)
    if len(pts) < 4:
        return (0.1 * min(geometry.spacing),) * 3, volume
    centred = pts - pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov(centred.T))
    proj = centred @ vecs
    ext = proj.max(axis=0) - proj.min(axis=0) + float(np.mean(geometry.spacing))  # centre extent + one voxel
    return tuple(sorted((float(e) / 10.0 for e in ext), reverse=True)), volume


def estimate(mask, geometry, prescription_Gy, strength_per_seed_U, model: SeedModel | str = WU_MODEL) -> NomogramEstimate:
    """Seeds and total strength for ``prescription_Gy`` from the target's average dimension (see module doc)."""
    if isinstance(model, str):
        model = get_model(model)
    if not (math.isfinite(prescription_Gy) and prescription_Gy > 0):
        raise InputError(f"prescription dose must be > 0 Gy, got {prescription_Gy}")
    if not (math.isfinite(strength_per_seed_U) and strength_per_seed_U > 0):
        raise InputError(f"seed strength must be > 0 U, got {strength_per_seed_U}")
    if model.nuclide != "I-125":
        raise InputError(f"no seed-count nomogram is shipped for {model.nuclide} seeds ({model.model_id}); "
                         "the shipped power law (Wu et al.) is for I-125")
    dims, volume = principal_dimensions_cm(mask, geometry)
    d_a = float(np.mean(dims))
    ref = get_model(WU_MODEL)
    total = WU_COEFF_U * d_a ** WU_EXPONENT * (prescription_Gy / WU_DOSE_GY) * (ref.dose_rate_constant / model.dose_rate_constant)
    notes = []
    if model.model_id != WU_MODEL:
        notes.append(f"scaled from model 6711 by the dose-rate constant ratio {ref.dose_rate_constant:g}/"
                     f"{model.dose_rate_constant:g}")
    if abs(prescription_Gy - WU_DOSE_GY) > 1e-9:
        notes.append(f"scaled linearly from 145 Gy to {prescription_Gy:g} Gy")
    if not WU_VOLUME_RANGE_CC[0] <= volume <= WU_VOLUME_RANGE_CC[1]:
        notes.append(f"target volume {volume:.1f} cc lies outside the {WU_VOLUME_RANGE_CC[0]:g}-"
                     f"{WU_VOLUME_RANGE_CC[1]:g} cc range the power law was derived for (extrapolation)")
    mci = total / model.u_per_mci if model.u_per_mci else None
    return NomogramEstimate(volume, dims, d_a, float(total), None if mci is None else float(mci),
                            int(math.ceil(total / strength_per_seed_U - 1e-9)), float(strength_per_seed_U),
                            CITATION, notes)
