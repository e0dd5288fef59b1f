"""Benchmark: DVH + every metric for 6 structures on a 1.7 M voxel dose grid.

Compares :func:`evaluation.evaluate_plan` (voxel-centre sampling, the mode a plain reference can
reproduce) with a plain numpy reference written from the metric definitions in the same run:
per structure ``dose[mask]``, a full sort, D(v) read from the sorted array, V(x) by counting,
the cumulative DVH by ``searchsorted`` on the sorted doses. Numbers must be identical (exact
equality, not a tolerance). Target: <= 0.3 s. Prints times, ratio and PASS/FAIL.
Also prints, for information, the time of the default "auto" mode (small or thin structures
supersampled), which the plain reference cannot reproduce.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SeedImplantPlanner"))

from SeedImplantPlannerLib.evaluation.evaluate import evaluate_plan  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.evaluation.metrics import OAR_METRICS, TARGET_METRICS  # noqa: E402
from SeedImplantPlannerLib.evaluation.structures import TARGET_NAMES  # noqa: E402

TARGET_S = 0.3
RX = 145.0


def make_case():
    """1.7 M voxel grid, point-source-like dose from 60 seeds, 6 structures of very different sizes."""
    g = ImageGeometry((128, 128, 104), (1.5, 1.5, 1.5), (-95.25, -95.25, -77.25))
    c = g.voxel_centers_ras().astype(np.float32)
    rng = np.random.default_rng(7)
    seeds = rng.uniform(-15, 15, (60, 3)).astype(np.float32)
    dose = np.zeros(g.shape, np.float32)
    for s in seeds:
        r2 = np.sum((c - s) ** 2, axis=-1)
        dose += 400.0 / np.maximum(r2, 0.25) * np.exp(-np.sqrt(r2) / 60.0)
    dose = dose.astype(np.float64)
    r = np.linalg.norm(c, axis=-1)
    x, y, z = c[..., 0], c[..., 1], c[..., 2]
    masks = {
        "Body": (x / 90) ** 2 + (y / 80) ** 2 <= 1.0,
        "PTV": r <= 22.0,
        "GTV": r <= 17.0,
        "Bowel": (np.abs(np.hypot(x - 30, y + 10) - 12) <= 2.0) & (np.abs(z) <= 40),
        "Vessels": np.hypot(x + 28, y - 5) <= 4.0,
        "Bone": (np.hypot(x, y + 55) <= 15.0) & (np.abs(z) <= 50),
    }
    return g, dose, masks


def reference(dose, g, masks, target, body):
    """Plain numpy evaluation written directly from the definitions (voxel centres)."""
    w = g.voxel_volume_cc
    out, dvhs = {}, {}
    top = max(float(dose[m].max()) for m in masks.values())
    bw = 0.001 * RX
    n_bins = int(math.floor(top / bw)) + 2
    edges = np.arange(n_bins, dtype=np.float64) * bw
    for name, m in masks.items():
        d = dose[m]
        asc = np.sort(d)
        desc = asc[::-1]
        n = d.size
        vol = n * w

        def d_at(v):
            if v > vol * (1 + 1e-9):
                return float("nan")
            k = min(max(int(math.ceil(min(v, vol) / w - 1e-9)), 1), n)
            return float(desc[k - 1])
        names = TARGET_METRICS if name == target or name.lower() in TARGET_NAMES else OAR_METRICS
        res = {}
        for mt in names:
            if mt == "Dmean":
                res[mt] = float(np.mean(d, dtype=np.float64))
            elif mt == "Dmin":
                res[mt] = float(asc[0])
            elif mt == "Dmax":
                res[mt] = float(asc[-1])
            elif mt.endswith("cc"):
                res[mt] = d_at(float(mt[1:-2]))
            elif mt.startswith("D"):
                res[mt] = d_at(float(mt[1:]) / 100.0 * vol)
            else:
                cc = np.count_nonzero(d >= float(mt[1:]) / 100.0 * RX) * w
                res[mt] = (cc, 100.0 * cc / vol)
        out[name] = res
        dvhs[name] = (n - np.searchsorted(asc, edges, side="left")) * w
    t = masks[target]
    vt = np.count_nonzero(t) * w
    vt_ref = np.count_nonzero(dose[t] >= RX) * w
    vt_15 = np.count_nonzero(dose[t] >= 1.5 * RX) * w
    v_ref = np.count_nonzero((dose >= RX) & masks[body]) * w
    out[target]["CI"] = (vt_ref / vt) * (vt_ref / v_ref)
    out[target]["EI"] = (v_ref - vt_ref) / vt
    out[target]["HI"] = (vt_ref - vt_15) / vt_ref
    return out, dvhs


def fast(dose, g, masks, target, body, supersample="off"):
    return evaluate_plan(dose, g, masks, RX, target=target, body=body, supersample=supersample)


def same(a, b):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def best_of(fn, n=3):
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    g, dose, masks = make_case()
    print(f"grid {g.size} = {g.n_voxels / 1e6:.2f} M voxels, {len(masks)} structures: "
          + ", ".join(f"{k} {np.count_nonzero(m) * g.voxel_volume_cc:.1f} cc" for k, m in masks.items()))
    t_ref, (ref, ref_dvh) = best_of(lambda: reference(dose, g, masks, "PTV", "Body"))
    t_fast, ev = best_of(lambda: fast(dose, g, masks, "PTV", "Body"))
    mismatches = []
    for name, res in ref.items():
        for mt, v in res.items():
            got = ev.metrics[name][mt]
            if isinstance(v, tuple):
                ok = same(got["cc"], v[0]) and same(got["percent"], v[1])
            elif mt in ("CI", "EI", "HI"):
                ok = same(got["value"], v)
            else:
                ok = same(got["Gy"], v)
            if not ok:
                mismatches.append(f"{name} {mt}: {got} vs {v}")
    for h in ev.dvhs:
        r = ref_dvh[h.name]
        if r.shape != h.cumulative_cc.shape or not np.array_equal(r, h.cumulative_cc):
            mismatches.append(f"{h.name} cumulative DVH differs (max {np.max(np.abs(r - h.cumulative_cc)):.3g} cc)")
    n_metrics = sum(len(r) for r in ref.values())
    print(f"reference (plain numpy)   : {t_ref:.3f} s")
    print(f"evaluate_plan (voxel mode): {t_fast:.3f} s   ratio reference/fast = {t_ref / t_fast:.2f}x")
    print(f"identical numbers: {'yes' if not mismatches else 'NO'} ({n_metrics} metrics, {len(ev.dvhs)} DVHs of "
          f"{len(ev.dvhs[0].edges_Gy)} bins of {ev.dvhs[0].bin_Gy:g} Gy)")
    for m in mismatches[:10]:
        print("  mismatch:", m)
    t_auto, ev_auto = best_of(lambda: fast(dose, g, masks, "PTV", "Body", "auto"))
    sup = [f"{s.name} x{s.factor}" for s in ev_auto.samples if s.factor > 1]
    print(f"(information) default auto mode with sub-voxel sampling of {', '.join(sup) or 'none'}: {t_auto:.3f} s")
    ok = t_fast <= TARGET_S and not mismatches
    print(f"{'PASS' if ok else 'FAIL'}: target <= {TARGET_S} s and identical numbers")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
