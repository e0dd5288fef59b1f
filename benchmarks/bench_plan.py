"""Benchmark of automatic (inverse) seed planning against plain uniform loading, same process.

Cases (issue targets): synthetic lobulated targets of 30 cc and 100 cc, an organ at risk (bowel,
also forbidden to needles) 5 mm from the target surface, bone (a wall 5 mm lateral to the target
and a rib-like bar in the needle corridor between skin and target), all inside a body on a 1.5 mm grid; I-125 model 6711 seeds of 0.5 U;
prescription 120 Gy (full decay); needles from a parallel template entering anteriorly
(insertion direction P), safety margin 5 mm.

Plans compared:
- ``anneal``   inverse planner (default method): 5 mm template, 5 mm seed lattice, min 4 mm between
               seeds of different needles;
- ``mip``      the same problem solved by the HiGHS mixed-integer program, same time limit;
- ``uniform``  plain uniform loading: 10 mm template, a seed every 10 mm inside the target;
- ``uniT/S+m`` the cheapest uniform loading that meets the same coverage goals (V100 >= 95 %,
               D90 >= Rx): template T in {10, 5} mm, seed spacing S in {10, 5} mm, seeds allowed
               in a margin m in {0, 2.5, 5} mm around the target (the baseline of the
               "fewer seeds at equal coverage" target).

Every plan is verified with the real TG-43 dose engine (``dose.dose_at_points_Gy``, the kernel
of the ``direct`` grid engine) at *every* target voxel centre and every organ voxel within 30 mm
of the target, with the metric definitions of ``metrics``. Printed per plan: planning time,
needles, seeds, total strength (U and mCi), D90, V100, V150, V200, organ D2cc, needles through a
forbidden structure; then PASS/FAIL per issue target for the default planner.

    .venv/bin/python benchmarks/bench_plan.py            # both cases
    .venv/bin/python benchmarks/bench_plan.py --case 30  # one case
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SeedImplantPlanner"))

from SeedImplantPlannerLib.physics.dose import dose_at_points_Gy  # noqa: E402
from SeedImplantPlannerLib.evaluation.dvh import DoseSamples  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.planning.loading import LoadingRules  # noqa: E402
from SeedImplantPlannerLib.evaluation.metrics import structure_metrics  # noqa: E402
from SeedImplantPlannerLib.planning.needles import mask_points  # noqa: E402
from SeedImplantPlannerLib.planning.nomogram import estimate  # noqa: E402
from SeedImplantPlannerLib.planning.obstacles import ObstacleMap  # noqa: E402
from SeedImplantPlannerLib.planning.pipeline import plan_from_masks, uniform_plan  # noqa: E402
from SeedImplantPlannerLib.planning.problem import OARConstraint  # noqa: E402

MODEL = "I125_OncoSeed_6711"
STRENGTH_U = 0.5
RX = 120.0
TIME_LIMIT_S = 8.0
SPACING = 1.5
BOWEL_D2CC_GY = 100.0


def phantom(volume_cc):
    """Masks {GTV, Bowel, Bone, Body} and the grid for a lobulated target of ``volume_cc``."""
    r0 = (3.0 * volume_cc * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    half = r0 * 1.45 + 30.0
    n = int(np.ceil(2 * half / SPACING))
    g = ImageGeometry((n, n, n), (SPACING,) * 3, (-half,) * 3)
    c = g.voxel_centers_ras(np.float32)
    x, y, z = c[..., 0], c[..., 1], c[..., 2]
    r = np.sqrt(x * x + y * y + (1.15 * z) ** 2)
    th = np.arctan2(y, x)
    ph = np.arctan2(z, np.hypot(x, y))
    shape = 1.0 + 0.12 * np.sin(3 * th) * np.cos(2 * ph) + 0.08 * np.cos(2 * th + 0.5)

    def target(scale):
        return r <= scale * shape

    lo, hi = 0.5 * r0, 1.5 * r0
    for _ in range(40):  # radius giving the requested volume
        mid = 0.5 * (lo + hi)
        if target(mid).sum() * g.voxel_volume_cc < volume_cc:
            lo = mid
        else:
            hi = mid
    gtv = target(hi)
    from scipy.ndimage import distance_transform_edt
    dist = distance_transform_edt(~gtv, sampling=(SPACING,) * 3)
    xmax = float(x[gtv].max())
    # bowel: a 12 mm-radius tube along z whose wall is 5 mm from the target surface at its nearest
    cx = xmax + 5.0 + 12.0
    bowel = (np.hypot(x - cx, y) <= 12.0) & (dist >= 5.0)
    # bone: a 10 mm wall 5 mm lateral to the target (as the pelvic side wall), and a rib-like 4 x 6 mm
    # bar across the anterior needle corridor over part of the target (blocks a few template holes)
    xmin, ymax = float(x[gtv].min()), float(y[gtv].max())
    wall = (x <= xmin - 5.0) & (x >= xmin - 15.0) & (np.abs(y) <= r0) & (dist >= 5.0)
    rib = (y >= ymax + 8.0) & (y <= ymax + 14.0) & (np.abs(x - 0.5 * r0) <= 2.0) & (np.abs(z) <= 3.0)
    bone = wall | rib
    body = (x / (half - 3)) ** 2 + (y / (half - 3)) ** 2 <= 1.0
    return g, {"GTV": gtv, "Bowel": bowel, "Bone": bone, "Body": body}


def verify(seeds, g, masks, needles_used, omap):
    """Metrics of ``seeds`` from the real dose engine at every target voxel and nearby organ voxel."""
    tpts = mask_points(masks["GTV"], g)
    d, _, _ = dose_at_points_Gy(tpts, seeds)
    m = structure_metrics(DoseSamples("GTV", d, g.voxel_volume_cc, role="target"), ["D90", "V100", "V150", "V200"], RX)
    from scipy.spatial import cKDTree
    bpts = mask_points(masks["Bowel"], g)
    near = cKDTree(tpts[::7]).query(bpts)[0] <= 30.0
    db, _, _ = dose_at_points_Gy(bpts[near], seeds)
    # D2cc over the whole organ: the far part (> 30 mm) only adds low-dose volume
    far = np.zeros(int((~near).sum()))
    ob = structure_metrics(DoseSamples("Bowel", np.concatenate([db, far]), g.voxel_volume_cc), ["D2cc"], RX)
    through = sum(1 for n in needles_used if omap.check(n, margin_mm=0.0))
    return {"D90": m["D90"]["Gy"], "V100": m["V100"]["percent"], "V150": m["V150"]["percent"],
            "V200": m["V200"]["percent"], "D2cc": ob["D2cc"]["Gy"], "through": through}


def row(name, t, needles, seeds, v):
    total = STRENGTH_U * seeds
    return (f"{name:<12} {t:7.2f} {needles:7d} {seeds:6d} {total:7.1f} {total / 1.270:7.1f} "
            f"{v['D90']:7.1f} {100 * v['D90'] / RX:6.1f} {v['V100']:6.1f} {v['V150']:6.1f} {v['V200']:6.1f} "
            f"{v['D2cc']:7.1f} {v['through']:7d}")


def run_case(volume_cc):
    g, masks = phantom(volume_cc)
    vol = masks["GTV"].sum() * g.voxel_volume_cc
    print(f"\n== target {vol:.1f} cc (requested {volume_cc:g}), grid {g.size} at {SPACING} mm, "
          f"{MODEL} {STRENGTH_U} U, Rx {RX:g} Gy, bowel D2cc limit {BOWEL_D2CC_GY:g} Gy")
    nomo = estimate(masks["GTV"], g, RX, STRENGTH_U, MODEL)
    print("   " + nomo.describe())
    common = dict(prescription_Gy=RX, strength=STRENGTH_U, model_id=MODEL, direction="P", body="Body",
                  forbidden=["Bone", "Bowel"], obstacle_margin_mm=5.0, rng_seed=0, time_limit_s=TIME_LIMIT_S)
    oars = [OARConstraint("Bowel", d2cc_Gy=BOWEL_D2CC_GY)]
    omap = ObstacleMap(g, {"Bone": masks["Bone"], "Bowel": masks["Bowel"]}, 5.0)
    header = (f"{'plan':<12} {'time_s':>7} {'needles':>7} {'seeds':>6} {'tot_U':>7} {'tot_mCi':>7} {'D90_Gy':>7} "
              f"{'D90_%':>6} {'V100%':>6} {'V150%':>6} {'V200%':>6} {'D2cc_Gy':>7} {'through':>7}")
    print(header)
    results = {}
    for method in ("anneal", "mip"):
        t0 = time.monotonic()
        plan = plan_from_masks(g, masks, "GTV", oars=oars, template_spacing_mm=5.0,
                               rules=LoadingRules(spacing_mm=5.0, min_distance_mm=4.0), method=method, **common)
        t = time.monotonic() - t0
        v = verify(plan.seeds, g, masks, plan.used_needles(), omap)
        results[method] = (t, len(plan.used_needles()), len(plan.seeds), v, plan)
        print(row(method, t, len(plan.used_needles()), len(plan.seeds), v))
    # uniform loadings: plain (10 mm template, a seed every 10 mm inside the target), then the cheapest
    # member of a small family (template 10/5 mm x seed spacing 10/5 mm x margin 0/2.5/5 mm) reaching
    # V100 >= 95 % and D90 >= Rx (screened on every 3rd target voxel, then verified on all)
    bases = {10.0: plan_from_masks(g, masks, "GTV", template_spacing_mm=10.0, rules=LoadingRules(spacing_mm=10.0),
                                   method="greedy", **common),
             5.0: results["anneal"][4]}
    t0 = time.monotonic()
    uni, used = uniform_plan(bases[10.0], g, masks["GTV"], 10.0, 0.0)
    t_uni = time.monotonic() - t0
    v = verify(uni, g, masks, used, omap)
    results["uniform"] = (t_uni, len(used), len(uni), v, None)
    print(row("uniform", t_uni, len(used), len(uni), v))
    screen = mask_points(masks["GTV"], g)[::3]
    family = []
    for tpl in (10.0, 5.0):
        for sp in (10.0, 5.0):
            for m in (0.0, 2.5, 5.0):
                u, used_u = uniform_plan(bases[tpl], g, masks["GTV"], sp, m)
                family.append((len(u), tpl, sp, m, u, used_u))
    matched = None
    for n_seeds, tpl, sp, m, u, used_u in sorted(family, key=lambda f: f[0]):
        d, _, _ = dose_at_points_Gy(screen, u)
        if np.mean(d >= RX) >= 0.95:
            vm = verify(u, g, masks, used_u, omap)
            if vm["V100"] >= 95.0 and vm["D90"] >= RX:
                matched = (f"uni{tpl:g}/{sp:g}+{m:g}", u, vm, used_u)
                print(row(matched[0], 0.0, len(used_u), len(u), vm))
                break
    if matched is None:
        print("uniform      no member of the uniform family reaches V100 >= 95 % and D90 >= Rx")
    # PASS / FAIL for the default planner
    t, nn, ns, v, plan = results["anneal"]
    tb, _, nb, vb, _ = results["uniform"]
    checks = [(f"plan time <= 10 s ({t:.2f} s)", t <= 10.0 or volume_cc < 100),
              (f"V100 >= 95 % ({v['V100']:.1f} %)", v["V100"] >= 95.0),
              (f"D90 >= 100 % of Rx ({100 * v['D90'] / RX:.1f} %)", v["D90"] >= RX),
              (f"no needle through a forbidden structure ({v['through']})", v["through"] == 0),
              (f"bowel D2cc <= {BOWEL_D2CC_GY:g} Gy ({v['D2cc']:.1f} Gy)", v["D2cc"] <= BOWEL_D2CC_GY)]
    if matched:
        checks.append((f"fewer seeds than the cheapest uniform loading meeting the same coverage goals "
                       f"({ns} vs {len(matched[1])} {matched[0]}; V100 {v['V100']:.1f} vs {matched[2]['V100']:.1f} %)",
                       ns < len(matched[1])))
    else:
        checks.append(("a uniform loading meeting the coverage goals exists to compare with", False))
    checks.append((f"better coverage than plain uniform loading (V100 {v['V100']:.1f} vs {vb['V100']:.1f} %; "
                   f"seeds {ns} vs {nb})", v["V100"] >= vb["V100"]))
    if volume_cc >= 100:
        checks[0] = (f"100 cc plan time <= 10 s ({t:.2f} s)", t <= 10.0)
    else:
        checks[0] = (f"plan time ({t:.2f} s; the 10 s target is for 100 cc)", True)
    print(f"   anneal vs mip: {ns} vs {results['mip'][2]} seeds; mip status: {results['mip'][4].optimizer['status']}")
    print(f"   anneal: {plan.optimizer['status']}; search {plan.optimizer['seconds_search']:.2f} s, "
          f"influence matrix {plan.optimizer['seconds_matrix']:.2f} s, {plan.optimizer['n_candidates']} candidates")
    for text, ok in checks:
        print(f"   {'PASS' if ok else 'FAIL'}  {text}")
    return all(ok for _, ok in checks)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", type=float, nargs="*", default=[30.0, 100.0], help="target volumes (cc)")
    args = ap.parse_args(argv)
    ok = True
    for v in args.case:
        ok &= run_case(v)
    print("\nALL PASS" if ok else "\nSOME FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
