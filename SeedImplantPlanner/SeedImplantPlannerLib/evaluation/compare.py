"""Plan comparison: two dose grids of one patient (pre vs intra vs post, plan A vs plan B).

- metric deltas per structure (B - A), from two :func:`evaluation.evaluate_plan` runs on the same
  structures;
- the dose-difference volume B - A (Gy);
- the 3D gamma index (Low et al., "A technique for the quantitative evaluation of dose
  distributions", Med Phys 25:656-661, 1998) with A as the reference and B as the evaluated
  distribution: gamma(r) = min_s sqrt(|s|^2 / dta^2 + (B(r + s) - A(r))^2 / dD^2). Global dose
  criterion dD = ``dose_percent`` of the normalisation dose (the prescription by default); only
  reference voxels with A >= ``threshold_percent`` of it are evaluated (low-dose threshold).
  B is trilinearly interpolated at offsets s on a lattice of ``dta / resolution`` within
  ``max_gamma * dta``; the search for a voxel stops as soon as |s| / dta exceeds its best gamma
  (exact for the lattice). Voxels with no agreement within the search radius get ``max_gamma``.
  Defaults 3% / 2 mm, threshold 10%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core import progress as _progress
from .dvh import check_dose, check_prescription
from ..core.errors import GeometryError, InputError
from ..core.geometry import ImageGeometry


@dataclass
class GammaResult:
    """Gamma map (NaN where not evaluated), pass rate (%) and the criteria used."""

    gamma: np.ndarray
    pass_rate_percent: float
    n_evaluated: int
    dose_percent: float
    dta_mm: float
    threshold_percent: float
    normalization_Gy: float
    max_gamma: float

    def summary(self) -> dict:
        """Plain-data summary."""
        g = self.gamma[np.isfinite(self.gamma)]
        return {"criteria": f"{self.dose_percent:g}%/{self.dta_mm:g} mm global", "pass_rate_percent": self.pass_rate_percent,
                "n_evaluated": self.n_evaluated, "threshold_percent": self.threshold_percent,
                "normalization_Gy": self.normalization_Gy, "mean_gamma": float(g.mean()) if g.size else None,
                "gamma_p95": float(np.percentile(g, 95)) if g.size else None}


def resample_dose(dose_Gy, src: ImageGeometry, dst: ImageGeometry, outside=0.0):
    """Dose on ``dst`` by trilinear interpolation of ``dose_Gy`` on ``src`` (``outside`` beyond its extent)."""
    from scipy import ndimage
    if src.matches(dst):
        return np.asarray(dose_Gy, dtype=np.float64)
    ijk = src.ras_to_ijk(dst.voxel_centers_ras())
    out = ndimage.map_coordinates(np.asarray(dose_Gy, dtype=np.float64), [ijk[..., 2], ijk[..., 1], ijk[..., 0]],
                                  order=1, mode="constant", cval=outside)
    return out


def require_same_grid(ga: ImageGeometry, gb: ImageGeometry, tol_mm=0.01):
    """Raise GeometryError naming the difference if the two dose grids differ beyond ``tol_mm``."""
    ga.require_match(gb, "dose grids A and B (pass resample=True / --resample to interpolate B onto A)", tol_mm)


def gamma_index(reference_Gy, evaluated_Gy, geometry: ImageGeometry, dose_percent=3.0, dta_mm=2.0,
                normalization_Gy=None, threshold_percent=10.0, max_gamma=2.0, resolution=4, progress=None):
    """Global 3D gamma of ``evaluated`` against ``reference`` on one grid (see module doc)."""
    from scipy import ndimage
    ref = check_dose(reference_Gy, geometry, "reference dose")
    ev = check_dose(evaluated_Gy, geometry, "evaluated dose").astype(np.float64)
    for name, v in (("dose criterion (%)", dose_percent), ("distance to agreement (mm)", dta_mm),
                    ("max gamma", max_gamma)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise InputError(f"gamma: {name} must be > 0, got {v!r}")
    if not math.isfinite(threshold_percent) or threshold_percent < 0:
        raise InputError(f"gamma: low-dose threshold must be >= 0%, got {threshold_percent!r}")
    norm = check_prescription(normalization_Gy if normalization_Gy is not None else float(ref.max()))
    dd = dose_percent / 100.0 * norm
    sel = ref >= threshold_percent / 100.0 * norm
    kk, jj, ii = np.nonzero(sel)
    n = kk.size
    gamma = np.full(ref.shape, np.nan)
    if n == 0:
        return GammaResult(gamma, float("nan"), 0, dose_percent, dta_mm, threshold_percent, norm, max_gamma)
    r_val = ref[sel].astype(np.float64)
    best2 = np.full(n, max_gamma ** 2)
    # offsets on a lattice of dta/resolution, in mm along the grid axes, sorted by length
    step = dta_mm / float(resolution)
    reach = int(math.ceil(max_gamma * dta_mm / step))
    g = np.arange(-reach, reach + 1) * step
    off = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.linalg.norm(off, axis=1)
    keep = dist <= max_gamma * dta_mm + 1e-9
    off, dist = off[keep], dist[keep]
    order = np.argsort(dist, kind="stable")
    off, dist = off[order], dist[order]
    sp = np.asarray(geometry.spacing)
    pos = np.stack([ii, jj, kk], axis=-1).astype(np.float64)
    active = np.arange(n)
    for m in range(len(off)):
        d2 = (dist[m] / dta_mm) ** 2
        if active.size == 0:
            break
        active = active[best2[active] > d2]
        if active.size == 0:
            break
        p = pos[active] + off[m] / sp
        if np.any(off[m] != 0):
            e = ndimage.map_coordinates(ev, [p[:, 2], p[:, 1], p[:, 0]], order=1, mode="nearest")
        else:
            e = ev[kk[active], jj[active], ii[active]]
        g2 = d2 + ((e - r_val[active]) / dd) ** 2
        np.minimum(best2[active], g2, out=g2)
        best2[active] = g2
        if m % 50 == 0:
            _progress.report(progress, m / len(off), "gamma index")
    gam = np.sqrt(best2)
    gamma[sel] = gam
    rate = 100.0 * float(np.count_nonzero(gam <= 1.0)) / n
    _progress.report(progress, 1.0, "gamma index: done")
    return GammaResult(gamma, rate, int(n), float(dose_percent), float(dta_mm), float(threshold_percent), norm,
                       float(max_gamma))


@dataclass
class Comparison:
    """Result of :func:`compare_plans`."""

    label_a: str
    label_b: str
    eval_a: object
    eval_b: object
    difference_Gy: np.ndarray
    gamma: GammaResult | None
    delta_rows: list

    def to_dict(self):
        """Plain-data summary (no arrays)."""
        diff = self.difference_Gy
        return {"labels": [self.label_a, self.label_b], "metric_deltas": self.delta_rows,
                "difference_Gy": {"min": float(diff.min()), "max": float(diff.max()),
                                  "mean_abs": float(np.abs(diff).mean())},
                "gamma": self.gamma.summary() if self.gamma else None}


def metric_deltas(eval_a, eval_b):
    """Rows (structure, metric, unit, A, B, delta = B - A) for metrics present in both evaluations."""
    rows_b = {(r["structure"], r["metric"]): r for r in eval_b.metric_rows()}
    out = []
    for r in eval_a.metric_rows():
        rb = rows_b.get((r["structure"], r["metric"]))
        if rb is None:
            continue
        a, b = r["value"], rb["value"]
        ok = a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
        out.append({"structure": r["structure"], "metric": r["metric"], "unit": r["unit"], "A": a, "B": b,
                    "delta": (b - a) if ok else None})
    return out


def compare_plans(dose_a, geometry_a: ImageGeometry, dose_b, geometry_b: ImageGeometry, structures, prescription_Gy,
                  *, labels=("A", "B"), resample=False, tol_mm=0.01, gamma=True, dose_percent=3.0, dta_mm=2.0,
                  threshold_percent=10.0, max_gamma=2.0, evaluate_kwargs=None, progress=None) -> Comparison:
    """Compare dose B with dose A (the reference): metric deltas, difference volume, gamma index.

    Grids must match within ``tol_mm`` unless ``resample`` (then B is interpolated onto A's grid).
    """
    from .evaluate import evaluate_plan
    rx = check_prescription(prescription_Gy)
    a = check_dose(dose_a, geometry_a, f"dose {labels[0]}")
    b = check_dose(dose_b, geometry_b, f"dose {labels[1]}")
    if not geometry_a.matches(geometry_b, tol_mm):
        if not resample:
            require_same_grid(geometry_a, geometry_b, tol_mm)
        lo_a, hi_a = geometry_a.bounds_ras()
        lo_b, hi_b = geometry_b.bounds_ras()
        if np.any(hi_b < lo_a) or np.any(lo_b > hi_a):
            raise GeometryError("dose grids A and B do not overlap: nothing to compare")
        b = resample_dose(b, geometry_b, geometry_a)
    kw = dict(evaluate_kwargs or {})
    ea = evaluate_plan(a, geometry_a, structures, rx, progress=_progress.scaled(progress, 0.0, 0.3), **kw)
    eb = evaluate_plan(b, geometry_a, structures, rx, progress=_progress.scaled(progress, 0.3, 0.6), **kw)
    g = None
    if gamma:
        g = gamma_index(a, b, geometry_a, dose_percent, dta_mm, rx, threshold_percent, max_gamma,
                        progress=_progress.scaled(progress, 0.6, 1.0))
    return Comparison(labels[0], labels[1], ea, eb, (b - a).astype(np.float32), g, metric_deltas(ea, eb))


def write_deltas_csv(path, comparison: Comparison):
    """Write the metric-delta table as CSV, atomically."""
    from ..core.fileio import write_csv

    def f(v):
        return "" if v is None or not math.isfinite(v) else f"{v:.6g}"
    rows = [{"structure": r["structure"], "metric": r["metric"], "unit": r["unit"], comparison.label_a: f(r["A"]),
             comparison.label_b: f(r["B"]), "delta": f(r["delta"])} for r in comparison.delta_rows]
    write_csv(path, rows, ["structure", "metric", "unit", comparison.label_a, comparison.label_b, "delta"])
    return path
