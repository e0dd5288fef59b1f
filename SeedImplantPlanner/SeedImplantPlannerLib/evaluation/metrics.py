"""Plan quality metrics: every metric is defined here once (and in docs/evaluation.md).

Notation: D(v) is computed from :class:`dvh.DoseSamples`: "minimum dose received by the hottest
v of the structure" (samples taken in decreasing dose until their volume reaches v; no
interpolation). Rx is the prescription dose.

=============  ====================================================================  ==========
metric         definition                                                            unit
=============  ====================================================================  ==========
D<x>           D(x% of the structure volume), e.g. D90, D98, D100 (= Dmin)           Gy
D<x>cc         D(x cm^3), e.g. D0.1cc, D1cc, D2cc (NaN when x exceeds the volume)     Gy
Dmin/Dmax      smallest / largest sample dose                                         Gy
Dmean          volume-weighted mean dose                                              Gy
V<x>           volume receiving >= x% of Rx, e.g. V100, V150, V200                    % and cc
V<x>Gy         volume receiving >= x Gy                                               % and cc
CI             (V_T,ref / V_T) * (V_T,ref / V_ref)   (van't Riet 1997 conformation    -
               number; 1 = perfect; Nakamura 2001 uses the inverse)
EI             (V_ref - V_T,ref) / V_T   (external index, Lefkopoulos)                -
HI             (V_T,ref - V_T,1.5ref) / V_T,ref   (homogeneity index)                 -
=============  ====================================================================  ==========

V_T = target volume, V_ref = volume (inside the body when one is given) receiving >= Rx,
V_T,ref / V_T,1.5ref = target volume receiving >= Rx / >= 1.5 Rx. CI, EI and HI are evaluated at
voxel resolution on the dose grid (voxel-centre masks), so the three volumes are consistent.
CI equals Paddick's conformity index (TV n PIV)^2 / (TV x PIV) (same quantity, other notation;
see e.g. medizinphysik.wiki/glossar/konformitaetsindex, which contrasts it with Knoos' PIV / TV).
CI and EI as reported for CT-guided I-125 seed implants (e.g. 3D-printed-template glioma implants:
J Contemp Brachytherapy 2019, PMC6701383: "D90, V100, V200, conformity index (CI), and external
index (EI)"); formulas as given in ../shared/DOMAIN.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .dvh import DoseSamples, check_prescription
from ..core.errors import InputError

#: Metrics reported for a target, in display order.
TARGET_METRICS = ("D100", "D98", "D90", "D50", "Dmean", "Dmin", "Dmax", "V100", "V150", "V200")
#: Metrics reported for an organ at risk.
OAR_METRICS = ("Dmax", "D0.1cc", "D1cc", "D2cc", "V100", "Dmean")
#: Extra metrics for the urethra (prostate implants).
URETHRA_METRICS = ("D5", "D10", "D30")
#: Plan-level conformity indices (need the target and the reference isodose volume).
INDEX_METRICS = ("CI", "EI", "HI")

_NUM = r"(\d+(?:\.\d*)?|\.\d+)"
_PATTERNS = [
    (re.compile(rf"^D{_NUM}cc$", re.I), "D_cc"),
    (re.compile(rf"^D{_NUM}%?$", re.I), "D_pct"),
    (re.compile(rf"^V{_NUM}Gy$", re.I), "V_Gy"),
    (re.compile(rf"^V{_NUM}%?$", re.I), "V_rx"),
]
_NAMED = {"dmean": "Dmean", "dmin": "Dmin", "dmax": "Dmax", "mean": "Dmean", "min": "Dmin", "max": "Dmax",
          "ci": "CI", "ei": "EI", "hi": "HI"}


@dataclass(frozen=True)
class MetricSpec:
    """A parsed metric name: ``kind`` is D_cc, D_pct, V_Gy, V_rx, Dmean, Dmin, Dmax, CI, EI or HI."""

    name: str
    kind: str
    x: float = float("nan")

    @property
    def is_volume(self):
        """True for V metrics (value in % and cc)."""
        return self.kind in ("V_Gy", "V_rx")

    @property
    def is_dose(self):
        """True for dose metrics (value in Gy)."""
        return self.kind in ("D_cc", "D_pct", "Dmean", "Dmin", "Dmax")

    @property
    def is_index(self):
        """True for the plan indices CI, EI, HI."""
        return self.kind in INDEX_METRICS


def parse_metric(text) -> MetricSpec:
    """Parse a metric name (D90, D2cc, D0.1cc, V100, V150, V20Gy, Dmean, Dmax, CI, EI, HI)."""
    t = str(text).strip().replace(" ", "")
    if t.lower() in _NAMED:
        k = _NAMED[t.lower()]
        return MetricSpec(k, k)
    for pat, kind in _PATTERNS:
        m = pat.match(t)
        if m:
            x = float(m.group(1))
            if kind == "D_pct" and not 0 <= x <= 100:
                raise InputError(f"metric '{text}': D<x> needs 0 <= x <= 100 (% of the structure volume)")
            if x < 0 or not math.isfinite(x):
                raise InputError(f"metric '{text}': the number must be finite and >= 0")
            canon = {"D_cc": f"D{x:g}cc", "D_pct": f"D{x:g}", "V_Gy": f"V{x:g}Gy", "V_rx": f"V{x:g}"}[kind]
            return MetricSpec(canon, kind, x)
    raise InputError(f"unknown metric '{text}' (use D<x> (% volume), D<x>cc, V<x> (% of prescription), V<x>Gy, "
                     "Dmean, Dmin, Dmax, CI, EI or HI)")


def structure_metric(samples: DoseSamples, spec: MetricSpec, prescription_Gy) -> dict:
    """Value of one structure metric: ``{"Gy": ...}`` for doses, ``{"percent": ..., "cc": ...}`` for volumes."""
    rx = check_prescription(prescription_Gy)
    if spec.kind == "Dmean":
        return {"Gy": samples.mean()}
    if spec.kind == "Dmin":
        return {"Gy": samples.min()}
    if spec.kind == "Dmax":
        return {"Gy": samples.max()}
    if spec.kind == "D_pct":
        return {"Gy": float(samples.doses_at_volumes_cc([spec.x / 100.0 * samples.volume_cc])[0])}
    if spec.kind == "D_cc":
        return {"Gy": float(samples.doses_at_volumes_cc([spec.x])[0])}
    if spec.is_volume:
        level = spec.x / 100.0 * rx if spec.kind == "V_rx" else spec.x
        cc = float(samples.volumes_at_doses_cc([level])[0])
        return {"cc": cc, "percent": 100.0 * cc / samples.volume_cc}
    raise InputError(f"metric '{spec.name}' is a plan index, not a structure metric")


def structure_metrics(samples: DoseSamples, names, prescription_Gy) -> dict:
    """``{metric name: value dict}`` for ``names``; dose metrics are batched into one partition."""
    rx = check_prescription(prescription_Gy)
    specs = [parse_metric(n) for n in names]
    out = {}
    # batch every D(v) query into one call (one partial sort of the samples)
    vols, keys = [], []
    for s in specs:
        if s.kind == "D_pct":
            vols.append(s.x / 100.0 * samples.volume_cc)
            keys.append(s.name)
        elif s.kind == "D_cc":
            vols.append(s.x)
            keys.append(s.name)
    if vols:
        for k, v in zip(keys, samples.doses_at_volumes_cc(vols)):
            out[k] = {"Gy": float(v)}
    for s in specs:
        if s.name in out:
            continue
        if s.is_index:
            continue
        out[s.name] = structure_metric(samples, s, rx)
    return out


def reference_volume_cc(dose_Gy, voxel_volume_cc, level_Gy, body_mask=None) -> float:
    """Volume (cm^3) of the dose grid (inside ``body_mask`` if given) receiving >= ``level_Gy``."""
    d = np.asarray(dose_Gy)
    sel = d >= level_Gy
    if body_mask is not None:
        sel &= np.asarray(body_mask, dtype=bool)
    return float(np.count_nonzero(sel) * voxel_volume_cc)


def conformity_indices(dose_Gy, voxel_volume_cc, target_mask, prescription_Gy, body_mask=None) -> dict:
    """CI, EI, HI and the volumes they use (cm^3), at voxel resolution (see module doc)."""
    rx = check_prescription(prescription_Gy)
    d = np.asarray(dose_Gy)
    t = np.asarray(target_mask, dtype=bool)
    vt = np.count_nonzero(t) * voxel_volume_cc
    if vt <= 0:
        raise InputError("conformity indices need a non-empty target on the dose grid")
    dt = d[t]
    vt_ref = np.count_nonzero(dt >= rx) * voxel_volume_cc
    vt_15 = np.count_nonzero(dt >= 1.5 * rx) * voxel_volume_cc
    v_ref = reference_volume_cc(d, voxel_volume_cc, rx, body_mask)
    ci = (vt_ref / vt) * (vt_ref / v_ref) if v_ref > 0 else 0.0
    ei = (v_ref - vt_ref) / vt
    hi = (vt_ref - vt_15) / vt_ref if vt_ref > 0 else float("nan")
    return {"CI": float(ci), "EI": float(ei), "HI": float(hi), "V_T_cc": float(vt), "V_ref_cc": float(v_ref),
            "V_T_ref_cc": float(vt_ref), "V_T_1.5ref_cc": float(vt_15)}


def default_metric_names(role, name=""):
    """The metrics reported by default for a structure of ``role`` ('target', 'oar', 'body')."""
    if role == "target":
        return list(TARGET_METRICS)
    names = list(OAR_METRICS)
    if "urethra" in str(name).lower():
        names += list(URETHRA_METRICS)
    return names


def format_value(spec_or_name, value: dict, prescription_Gy=None) -> str:
    """Human-readable value: '152.3 Gy (105.0%)' for doses, '97.1% (45.20 cc)' for volumes."""
    spec = spec_or_name if isinstance(spec_or_name, MetricSpec) else parse_metric(spec_or_name)
    if spec.is_index:
        v = value.get("value", float("nan"))
        return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"
    if spec.is_volume:
        return f"{value['percent']:.1f}% ({value['cc']:.2f} cc)"
    g = value["Gy"]
    if g is None or not math.isfinite(g):
        return "- (volume too small)"
    if prescription_Gy:
        return f"{g:.1f} Gy ({100.0 * g / prescription_Gy:.1f}%)"
    return f"{g:.1f} Gy"
