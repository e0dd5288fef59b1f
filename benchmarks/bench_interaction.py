"""Benchmark: moving one seed in a view and refreshing the plan's MRML nodes, against a full recompute.

Case: a 1.7 M voxel dose grid (120 x 120 x 118 at 1 mm), 150 seeds of 0.5 U (I125_OncoSeed_6711,
TG-43 2D) on 15 needles in a 55 mm spherical target, two organs at risk, a real slicer-core scene
(dose volume node, 5 isodose model nodes, DVH table + chart, metrics table). The interactive path is
what a drag in Slicer runs: the seed's control point moves, the plan's observer applies a
``DoseGrid.move_seed`` edit and refreshes the dose volume, isodoses, DVH and metrics. The reference
is a full recompute of the same nodes (every seed's dose again) in the same process.

    .venv/bin/python benchmarks/bench_interaction.py           # full case
    .venv/bin/python benchmarks/bench_interaction.py --small   # 60^3 grid, 40 seeds: quick look

Prints each step's median time over the repeats, the ratio, and PASS/FAIL against 0.3 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SeedImplantPlanner"))

from SeedImplantPlannerLib.mrml import scene_io  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.mrml.scene import create_scene  # noqa: E402
from SeedImplantPlannerLib.planning.needles import Needle  # noqa: E402
from SeedImplantPlannerLib.imaging.segio import Segmentation  # noqa: E402
from SeedImplantPlannerLib.physics.seeds import SeedSet  # noqa: E402

MODEL = "I125_OncoSeed_6711"
TARGET_S = 0.3
RX = 145.0


def case(small=False):
    """(dose geometry, segmentation, needles, seeds, needle numbers)."""
    n = (60, 60, 60) if small else (120, 120, 118)
    spacing = 2.0 if small else 1.0
    g = ImageGeometry(n, (spacing,) * 3, tuple(-(np.asarray(n) - 1) * spacing / 2.0))
    c = g.voxel_centers_ras(np.float32)
    r_target = 27.5
    masks = {"PTV": np.linalg.norm(c, axis=-1) <= r_target,
             "Rectum": np.linalg.norm(c - np.array([0.0, -38.0, 0.0], np.float32), axis=-1) <= 8.0,
             "Urethra": np.linalg.norm(c[..., :2] - np.array([0.0, 4.0], np.float32), axis=-1) <= 3.0}
    masks["Urethra"] &= np.abs(c[..., 2]) <= 25.0
    seg = Segmentation.from_masks(g, masks, {"PTV": (0.9, 0.1, 0.1), "Rectum": (0.6, 0.4, 0.2),
                                             "Urethra": (0.9, 0.9, 0.2)})
    n_seeds = 40 if small else 150
    per_needle = 10 if not small else 5
    n_needles = n_seeds // per_needle
    rng = np.random.default_rng(3)
    needles, pos, axes, nums = [], [], [], []
    golden = np.pi * (3.0 - np.sqrt(5.0))
    for k in range(n_needles):
        rad = 18.0 * np.sqrt((k + 0.5) / n_needles)
        x, y = rad * np.cos(k * golden), rad * np.sin(k * golden)
        tilt = np.radians(rng.uniform(-6, 6, size=2))
        d = np.array([np.sin(tilt[0]), np.sin(tilt[1]), 1.0])
        d /= np.linalg.norm(d)
        tip = np.array([x, y, 24.0])
        needle = Needle(k + 1, entry=tip - 110.0 * d, tip=tip)
        needles.append(needle)
        for s in range(per_needle):
            pos.append(tip - (3.0 + s * 50.0 / per_needle) * d)
            axes.append(d)
            nums.append(k + 1)
    seeds = SeedSet(np.array(pos), np.array(axes), 0.5, MODEL)
    return g, seg, needles, seeds, np.array(nums)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="60^3 grid, 40 seeds")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    g, seg, needles, seeds, nums = case(args.small)
    print(f"dose grid {g.size} = {g.n_voxels / 1e6:.2f} M voxels, {len(seeds)} seeds, {len(needles)} needles")
    ctx = create_scene()
    try:
        t = time.perf_counter()
        plan = scene_io.build_plan_scene(ctx, seeds=seeds, prescription_Gy=RX, segmentation=seg, target="PTV",
                                         organs=["Rectum", "Urethra"], needles=needles, seed_needle_numbers=nums,
                                         dose_geometry=g, dose_method="fast")
        print(f"build scene + first dose and outputs: {time.perf_counter() - t:.2f} s")
        plan.start_live_updates()
        node = plan.params.get_node("seedsNode")
        inc, inc_parts, full = [], [], []
        for rep in range(args.repeats):
            i = (17 * rep + 5) % len(seeds)
            p = np.array(node.GetNthControlPointPosition(i))
            t = time.perf_counter()
            node.SetNthControlPointPosition(i, *(p + (1.5, -1.0, 0.5)))
            inc.append(time.perf_counter() - t)
            inc_parts.append(dict(plan.last_update))
            assert plan.last_update["dose_edit"] == "moved 1", plan.last_update
        plan.stop_live_updates()
        for rep in range(max(2, args.repeats // 2)):
            t = time.perf_counter()
            plan.compute_dose(g, "fast")
            full.append(time.perf_counter() - t)
        # the incremental dose equals the full recompute's
        live = plan.dose_grid.dose_Gy()
        t_med, f_med = statistics.median(inc), statistics.median(full)
        keys = ("dose_s", "dose_volume_s", "isodoses_s", "evaluation_s")
        parts = {k: statistics.median(p.get(k, 0.0) for p in inc_parts) for k in keys}
        print("move one seed + refresh (median of %d): %.3f s  [%s]" % (
            len(inc), t_med, ", ".join(f"{k[:-2]} {v:.3f}" for k, v in parts.items())))
        print(f"full recompute + refresh (median of {len(full)}): {f_med:.3f} s")
        print(f"ratio full / interactive: {f_med / t_med:.1f}x")
        print(f"dose max {live.max():.0f} Gy, prescription {RX:g} Gy")
        ok = t_med <= TARGET_S
        print(f"{'PASS' if ok else 'FAIL'}: interactive update {t_med:.3f} s (target <= {TARGET_S} s)")
        return 0 if ok else 1
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
