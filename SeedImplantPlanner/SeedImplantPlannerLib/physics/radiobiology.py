"""Radiobiology of permanent implants: BED and EQD2 for an exponentially decaying source (Dale 1985).

Model (linear-quadratic with mono-exponential repair; Dale RG, "The application of the
linear-quadratic dose-effect equation to fractionated and protracted radiotherapy",
Br J Radiol 58:515-528, 1985). Dose rate R(t) = R0 exp(-lambda t), lambda = ln2 / T1/2 (source),
mu = ln2 / T_rep (repair). Total dose to full decay D = R0 / lambda. BED up to time T:

    BED(T) = R0/lambda (1 - e^{-lambda T})
           + 2 R0^2 / ((mu - lambda) (a/b)) [ (1 - e^{-2 lambda T}) / (2 lambda)
                                              - (1 - e^{-(lambda + mu) T}) / (lambda + mu) ]

(the quadratic term is (2/(a/b)) * int_0^T R(t) int_0^t R(s) e^{-mu (t - s)} ds dt). For T -> inf:

    BED = D [1 + D lambda / ((mu + lambda) (a/b))]

Repopulation (optional; needs alpha and T_pot): cells repopulate at ln2 / T_pot per day after a
kick-off time T_k; the implant stops being effective when the cell-kill rate falls to the
repopulation rate, at T_eff = (1/lambda) ln(alpha R0 T_pot / ln2) (the usual approximation
neglecting the quadratic term, as in Dale's and Ling's analyses of permanent implants), and

    BED = BED(T_eff) - ln2 max(0, T_eff - T_k) / (alpha T_pot)        (clamped at 0)

EQD2 = BED / (1 + 2 / (a/b)). Times in hours inside; T_pot and T_k are given in days.

Defaults and their sources (:data:`TISSUES`); every value can be overridden by the user:
- prostate tumour: a/b = 3.1 Gy, alpha = 0.15 /Gy, T_rep = 0.5 h -- "How low is the alpha/beta
  ratio for prostate cancer?", Int J Radiat Oncol Biol Phys 57:1116-21, 2003 (re-analysis of
  I-125/Pd-103 implant and external-beam results with repopulation and oedema: a/b 3.1-3.9 Gy,
  alpha 0.10-0.15 /Gy, repair half-time about 0.5 h). Repopulation is off unless T_pot is given.
- generic tumour: a/b = 10 Gy, T_rep = 1.5 h (mu = 0.46 /h), the textbook values used with the
  LDR BED formula (e.g. the LDR example BED = D[1 + 2R/(mu a/b)] with a/b 10 Gy, mu 0.46 /h).
- late-responding normal tissue: a/b = 3 Gy, T_rep = 1.5 h (textbook late-effect values; the
  DVHmetrics documentation lists 3 Gy for late-responding tissues).
A worked value computed with the formula (not a published one, see docs/evaluation.md): I-125,
D = 145 Gy, a/b = 2 Gy, T_rep = 1.5 h -> BED = 156.0 Gy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..core.errors import InputError

LN2 = math.log(2.0)
HOURS_PER_DAY = 24.0
#: I-125 half-life in days (TG-43U1; the shipped seed models carry the same value).
I125_HALF_LIFE_DAYS = 59.4


@dataclass(frozen=True)
class LQParams:
    """Linear-quadratic parameters: a/b (Gy), repair half-time (h), optional alpha (/Gy), T_pot and T_k (days)."""

    alpha_beta_Gy: float
    repair_half_time_h: float
    alpha_per_Gy: float | None = None
    t_pot_days: float | None = None
    t_kickoff_days: float = 0.0
    label: str = ""
    source: str = ""

    def __post_init__(self):
        def positive(name, v):
            if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise InputError(f"radiobiology: {name} must be a finite number > 0, got {v!r}")
        positive("alpha/beta", self.alpha_beta_Gy)
        positive("repair half-time (h)", self.repair_half_time_h)
        if self.alpha_per_Gy is not None:
            positive("alpha", self.alpha_per_Gy)
        if self.t_pot_days is not None:
            positive("T_pot (days)", self.t_pot_days)
            if self.alpha_per_Gy is None:
                raise InputError("radiobiology: repopulation (T_pot) needs alpha (/Gy) as well")
        if not math.isfinite(self.t_kickoff_days) or self.t_kickoff_days < 0:
            raise InputError(f"radiobiology: kick-off time must be >= 0 days, got {self.t_kickoff_days!r}")

    @property
    def mu_per_h(self) -> float:
        """Repair rate constant mu = ln2 / T_rep (1/h)."""
        return LN2 / self.repair_half_time_h

    @property
    def repopulation(self) -> bool:
        """True when repopulation is modelled (T_pot given)."""
        return self.t_pot_days is not None

    def with_(self, **changes) -> "LQParams":
        """Copy with some fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self):
        """Plain-data form."""
        return {"alpha_beta_Gy": self.alpha_beta_Gy, "repair_half_time_h": self.repair_half_time_h,
                "alpha_per_Gy": self.alpha_per_Gy, "t_pot_days": self.t_pot_days,
                "t_kickoff_days": self.t_kickoff_days, "label": self.label, "source": self.source}


TISSUES = {
    "prostate_tumour": LQParams(3.1, 0.5, 0.15, None, 0.0, "prostate tumour",
                                "Int J Radiat Oncol Biol Phys 57:1116, 2003 (a/b 3.1-3.9 Gy, alpha 0.10-0.15, T_rep ~0.5 h)"),
    "tumour": LQParams(10.0, 1.5, None, None, 0.0, "tumour (generic)", "textbook LDR values: a/b 10 Gy, mu 0.46 /h"),
    "late_normal": LQParams(3.0, 1.5, None, None, 0.0, "late-responding normal tissue",
                            "textbook late-effect values: a/b 3 Gy, T_rep 1.5 h"),
}


def decay_constant_per_h(half_life_days) -> float:
    """Source decay constant lambda = ln2 / T1/2 in 1/h."""
    if not isinstance(half_life_days, (int, float)) or not math.isfinite(half_life_days) or half_life_days <= 0:
        raise InputError(f"half-life must be > 0 days, got {half_life_days!r}")
    return LN2 / (float(half_life_days) * HOURS_PER_DAY)


def _dose(total_dose_Gy):
    d = np.asarray(total_dose_Gy, dtype=float)
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise InputError("radiobiology: total dose must be finite and >= 0 Gy")
    return d


def dose_to_time_Gy(total_dose_Gy, half_life_days, t_hours):
    """Dose accumulated from implant to ``t_hours``: D (1 - exp(-lambda t)) (Gy)."""
    lam = decay_constant_per_h(half_life_days)
    t = np.asarray(t_hours, dtype=float)
    return _dose(total_dose_Gy) * (1.0 - np.exp(-lam * t))


def bed_to_time_Gy(total_dose_Gy, half_life_days, params: LQParams, t_hours):
    """Dale's BED accumulated to ``t_hours`` without repopulation (Gy); t = inf gives full decay."""
    lam = decay_constant_per_h(half_life_days)
    mu = params.mu_per_h
    d = _dose(total_dose_Gy)
    r0 = d * lam
    t = np.asarray(t_hours, dtype=float)
    if np.any(t < 0):
        raise InputError("radiobiology: time must be >= 0 h")
    with np.errstate(over="ignore", invalid="ignore"):
        e1 = -np.expm1(-lam * t)          # 1 - e^{-lam t}
        e2 = -np.expm1(-2 * lam * t)      # 1 - e^{-2 lam t}
        e3 = -np.expm1(-(lam + mu) * t)   # 1 - e^{-(lam+mu) t}
    quad = 2.0 * r0 ** 2 / ((mu - lam) * params.alpha_beta_Gy) * (e2 / (2 * lam) - e3 / (lam + mu))
    return r0 / lam * e1 + quad


def effective_treatment_time_h(total_dose_Gy, half_life_days, params: LQParams):
    """T_eff = (1/lambda) ln(alpha R0 T_pot / ln2) in hours (0 where the argument is <= 1); inf without repopulation."""
    d = _dose(total_dose_Gy)
    if not params.repopulation:
        return np.full(d.shape, np.inf) if d.ndim else float("inf")
    lam = decay_constant_per_h(half_life_days)
    r0 = d * lam
    arg = params.alpha_per_Gy * r0 * (params.t_pot_days * HOURS_PER_DAY) / LN2
    with np.errstate(divide="ignore"):
        t = np.where(arg > 1.0, np.log(np.maximum(arg, 1.0)) / lam, 0.0)
    return t


def bed_Gy(total_dose_Gy, half_life_days, params: LQParams):
    """BED (Gy) of a permanent implant delivering ``total_dose_Gy`` to full decay (see module doc)."""
    d = _dose(total_dose_Gy)
    if not params.repopulation:
        lam = decay_constant_per_h(half_life_days)
        return d * (1.0 + d * lam / ((params.mu_per_h + lam) * params.alpha_beta_Gy))
    t_eff = effective_treatment_time_h(d, half_life_days, params)
    bed = bed_to_time_Gy(d, half_life_days, params, t_eff)
    t_k = params.t_kickoff_days * HOURS_PER_DAY
    loss = LN2 * np.maximum(0.0, t_eff - t_k) / (params.alpha_per_Gy * params.t_pot_days * HOURS_PER_DAY)
    return np.maximum(bed - loss, 0.0)


def eqd2_Gy(bed, alpha_beta_Gy):
    """EQD2 = BED / (1 + 2 / (a/b)) (Gy)."""
    if not math.isfinite(alpha_beta_Gy) or alpha_beta_Gy <= 0:
        raise InputError(f"alpha/beta must be > 0 Gy, got {alpha_beta_Gy!r}")
    return np.asarray(bed, dtype=float) / (1.0 + 2.0 / alpha_beta_Gy)


def time_curve(total_dose_Gy, half_life_days, params: LQParams | None = None, t_days=None):
    """Dose (and BED without repopulation) accumulated against time: dict of arrays (days, Gy)."""
    if t_days is None:
        t_days = np.linspace(0.0, 10.0 * half_life_days, 201)
    t_days = np.asarray(t_days, dtype=float)
    t_h = t_days * HOURS_PER_DAY
    out = {"t_days": t_days, "dose_Gy": dose_to_time_Gy(total_dose_Gy, half_life_days, t_h)}
    if params is not None:
        out["bed_Gy"] = bed_to_time_Gy(total_dose_Gy, half_life_days, params, t_h)
        if params.repopulation:
            t_k = params.t_kickoff_days * HOURS_PER_DAY
            out["bed_repop_Gy"] = out["bed_Gy"] - LN2 * np.maximum(0.0, t_h - t_k) / (
                params.alpha_per_Gy * params.t_pot_days * HOURS_PER_DAY)
    return out


def structure_radiobiology(samples, half_life_days, params: LQParams, dose_metrics):
    """BED and EQD2 of a structure: at each dose metric in ``dose_metrics`` (name -> Gy), and the mean BED.

    BED increases monotonically with dose, so the BED at D90 is the D90 of the BED distribution.
    """
    out = {"parameters": params.to_dict(), "half_life_days": float(half_life_days)}
    for name, g in dose_metrics.items():
        if g is None or not math.isfinite(g):
            continue
        b = float(bed_Gy(g, half_life_days, params))
        out[f"BED_{name}_Gy"] = b
        out[f"EQD2_{name}_Gy"] = float(eqd2_Gy(b, params.alpha_beta_Gy))
    bed = bed_Gy(samples.dose_Gy.astype(float), half_life_days, params)
    mean_bed = float(np.mean(bed)) if samples.uniform else float(np.dot(bed, samples.weight_cc) / samples.weight_cc.sum())
    out["BED_mean_Gy"] = mean_bed
    out["EQD2_mean_Gy"] = float(eqd2_Gy(mean_bed, params.alpha_beta_Gy))
    if params.repopulation:
        out["T_eff_days_at_Dmean"] = float(effective_treatment_time_h(samples.mean(), half_life_days, params)) / HOURS_PER_DAY
    return out
