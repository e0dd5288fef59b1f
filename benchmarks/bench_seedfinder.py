"""Benchmark of the seed finder on synthetic post-implant CTs, against a naive reference, same process.

Cases: the sample case's tumour region (100 x 90 x 100 mm crop of samplecase.make_sample_case,
iliac bone inside the crop) at 1 x 1 x 1 mm and at 2 x 2 x 2.5 mm; plans of parallel needles at
8 or 9 mm (83-130 seeds) inside the GTV; implants simulated with needle shifts (~1.5 mm), seed
jitter (~0.7 mm), axis tilts (~6 deg), 2 migrated seeds and 12 touching pairs (side by side,
end to end, crossed); CTs rendered by postimplant_phantom.make_postimplant_ct (capsule 4.5 x
0.8 mm, PSF 0.4 mm, partial volume, streaks, noise 12 HU) and read back from NRRD.

Scoring (postimplant_phantom.score_detection): one-to-one Hungarian match of found to true seeds
within 2 mm. Pooled over the cases of one resolution: detection rate, false-positive rate (of
found seeds), position error median / 95th percentile, orientation error median of isolated
seeds. Targets (docs/verification.md): detection >= 98%, false positives <= 1% at both
resolutions; at 1 mm position median < 0.5 mm and 95th percentile < 1.0 mm; orientation median
< 10 deg for isolated seeds.

Reference in the same run: naive threshold (the finder's own threshold) + one centroid per
connected component, no split, no bone rejection. Prints both times and their ratio.

    .venv/bin/python benchmarks/bench_seedfinder.py           # 4 cases per resolution
    .venv/bin/python benchmarks/bench_seedfinder.py --small   # 1 case per resolution
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SeedImplantPlanner"))

from SeedImplantPlannerLib.imaging import phantoms as pp  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.core.imageio import read_image, write_image  # noqa: E402
from SeedImplantPlannerLib.samplecase.generator import make_sample_case  # noqa: E402
from SeedImplantPlannerLib.imaging.seedfinder import find_seeds, naive_find_seeds  # noqa: E402

GTV_CENTRE = np.array([-72.0, -2.0, 0.0])
RESOLUTIONS = {"1 mm": (1.0, 1.0, 1.0), "2x2x2.5 mm": (2.0, 2.0, 2.5)}


def case_grid(spacing):
    size = np.ceil(np.array([100.0, 90.0, 100.0]) / np.asarray(spacing)).astype(int)
    return ImageGeometry(tuple(size), spacing, tuple(GTV_CENTRE - [50.0, 45.0, 50.0]))


def pooled(scores, truths, founds, key_axes=True):
    """Pool the per-case scores: counts and error lists re-derived from the per-case matches."""
    from scipy.optimize import linear_sum_assignment
    det = fp = n_true = n_found = 0
    errs, angs = [], []
    for truth, (pos, axes) in zip(truths, founds):
        tp = truth.seeds.positions
        d = np.linalg.norm(tp[:, None] - pos[None], axis=-1)
        r, c = linear_sum_assignment(np.where(d <= 2.0, d, 1e6))
        ok = d[r, c] <= 2.0
        r, c = r[ok], c[ok]
        det += len(r)
        fp += len(pos) - len(r)
        n_true += len(tp)
        n_found += len(pos)
        errs.extend(d[r, c].tolist())
        if key_axes and axes is not None:
            iso = truth.isolated()[r]
            cos = np.abs(np.sum(truth.seeds.axes[r] * axes[c], axis=1))
            angs.extend(np.degrees(np.arccos(np.clip(cos[iso], 0, 1))).tolist())
    errs = np.asarray(errs)
    out = {"true": n_true, "found": n_found, "detection": det / n_true, "fp_rate": fp / max(n_found, 1),
           "pos_median": float(np.median(errs)), "pos_p95": float(np.percentile(errs, 95)),
           "pos_max": float(errs.max())}
    if angs:
        out["ang_median"] = float(np.median(angs))
        out["ang_p95"] = float(np.percentile(angs, 95))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="one case per resolution")
    args = ap.parse_args(argv)
    seeds_per_res = [(101, 9.0)] if args.small else [(101, 9.0), (102, 8.0), (103, 9.0), (104, 8.0)]
    all_pass = True
    tmp = tempfile.TemporaryDirectory()
    print(f"{'resolution':<11} {'case':>4} {'seeds':>5} {'pairs':>5} {'found':>5} {'det%':>6} {'FP%':>5} "
          f"{'med mm':>6} {'p95 mm':>6} {'ang deg':>7} {'finder s':>8} {'naive s':>7} {'naive det%':>10} "
          f"{'naive FP%':>9} {'naive med':>9}")
    for label, spacing in RESOLUTIONS.items():
        g = case_grid(spacing)
        ct, masks, _ = make_sample_case(g)
        truths, found_all, naive_all = [], [], []
        t_find = t_naive = 0.0
        for rs, plan_spacing in seeds_per_res:
            plan = pp.plan_in_mask(masks["GTV"], g, spacing_mm=plan_spacing, margin_mm=1.0)
            truth = pp.simulate_implant(plan, rs, n_touching=12, n_migrated=2)
            path = Path(tmp.name) / f"post_{label[0]}_{rs}.nrrd"
            write_image(path, pp.make_postimplant_ct(ct, g, truth.seeds, rs), g)
            post, g2 = read_image(path)
            t0 = time.perf_counter()
            f = find_seeds(post, g2)
            t1 = time.perf_counter()
            naive = naive_find_seeds(post, g2, f.threshold_hu)
            t2 = time.perf_counter()
            t_find += t1 - t0
            t_naive += t2 - t1
            s = pp.score_detection(f.positions, f.axes, truth)
            sn = pp.score_detection(naive, None, truth)
            truths.append(truth)
            found_all.append((f.positions, f.axes))
            naive_all.append((naive, None))
            print(f"{label:<11} {rs:>4} {s['true']:>5} {len(truth.touching_pairs):>5} {s['found']:>5} "
                  f"{100 * s['detection_rate']:>6.1f} {100 * s['false_positive_rate']:>5.1f} "
                  f"{s['position_error_median_mm']:>6.2f} {s['position_error_p95_mm']:>6.2f} "
                  f"{s['orientation_error_median_deg_isolated']:>7.1f} {t1 - t0:>8.2f} {t2 - t1:>7.3f} "
                  f"{100 * sn['detection_rate']:>10.1f} {100 * sn['false_positive_rate']:>9.1f} "
                  f"{sn['position_error_median_mm']:>9.2f}")
        p = pooled(None, truths, found_all)
        pn = pooled(None, truths, naive_all, key_axes=False)
        print(f"  pooled {label}: {p['true']} true seeds, finder: detection {100 * p['detection']:.1f}%, "
              f"false positives {100 * p['fp_rate']:.2f}%, position error median {p['pos_median']:.2f} mm, "
              f"95th percentile {p['pos_p95']:.2f} mm, max {p['pos_max']:.2f} mm, orientation (isolated) median "
              f"{p['ang_median']:.1f} deg, 95th percentile {p['ang_p95']:.1f} deg")
        print(f"  pooled {label}: naive reference: detection {100 * pn['detection']:.1f}%, false positives "
              f"{100 * pn['fp_rate']:.2f}%, position error median {pn['pos_median']:.2f} mm, 95th percentile "
              f"{pn['pos_p95']:.2f} mm")
        print(f"  time {label}: finder {t_find:.2f} s, naive {t_naive:.3f} s, ratio finder/naive "
              f"{t_find / max(t_naive, 1e-9):.1f} ({t_find / len(seeds_per_res):.2f} s per CT of "
              f"{g.n_voxels / 1e6:.2f} M voxels)")
        targets = [("detection >= 98%", p["detection"] >= 0.98), ("false positives <= 1%", p["fp_rate"] <= 0.01),
                   ("orientation median < 10 deg (isolated)", p["ang_median"] < 10.0)]
        if label == "1 mm":
            targets += [("position median < 0.5 mm", p["pos_median"] < 0.5),
                        ("position 95th percentile < 1.0 mm", p["pos_p95"] < 1.0)]
        for name, ok in targets:
            all_pass &= ok
            print(f"  {'PASS' if ok else 'FAIL'} {label}: {name}")
    tmp.cleanup()
    print("ALL PASS" if all_pass else "SOME TARGETS FAILED")
    return 0 if all_pass else 1


if __name__ == "__main__":
    raise SystemExit(main())
