"""Benchmark: the web planner's drag-release -> updated views, on the sample case, against a full recompute.

Case: the bundled sample case (synthetic CT of a retroperitoneal tumour, 66 cc GTV), planned with
the library as ``seedplan demo`` plans it (template from the left flank, 0.6 mCi, 120 Gy), opened
in the web planner (:class:`web.app.WebPlanner`: trame-slicer's scene and its four views, 600 x 600
pixels each, the same scene layout as the module), dose on the whole CT grid as the demo writes it. A seed on the axial slice is dragged 12 pixels
with the mouse events the browser sends (press, moves, release on the view's interactor); the time
measured runs from the release to the end of the update: incremental dose edit, dose volume,
isodose lines, DVH and metrics nodes, the page's tables and chart state, and every view rendered
and read back as the image the page receives. The reference is a full recompute of the same
outputs (every seed's dose again) followed by the same rendering, in the same process.

    .venv/bin/python benchmarks/bench_web.py

Prints the median of the repeats, the ratio, and PASS/FAIL against 0.3 s.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SeedImplantPlanner"))

TARGET_S = 0.3
REPEATS = 7
VIEW_PX = 600


def make_plan_folder(root: Path):
    """The sample case planned as the demo plans it (shorter optimiser time), written as a plan folder."""
    from SeedImplantPlannerLib.planning.problem import OARConstraint
    from SeedImplantPlannerLib.planning.pipeline import plan_case
    from SeedImplantPlannerLib.planning.planfile import write_plan_folder
    from SeedImplantPlannerLib.samplecase.generator import sample_case_paths
    ct_path, seg_path = sample_case_paths(cache_dir=root / "case")
    plan, dose, g = plan_case(ct_path, seg_path, "GTV", oars=[OARConstraint("Bowel", d2cc_Gy=100.0), "Vessels"],
                              forbidden=("Bone", "Bowel", "Vessels", "Kidneys", "SpinalCanal"), body="Body",
                              strength=0.6, strength_unit="mCi", prescription_Gy=120.0, needle_mode="template",
                              direction="R", template_spacing_mm=5.0, time_limit_s=4.0, rng_seed=0)
    # as the demo: the dose on the whole CT grid, so every organ's DVH covers the whole organ
    from SeedImplantPlannerLib.core.imageio import geometry_of, read_sitk
    from SeedImplantPlannerLib.physics.dose import DoseGrid
    ct_geometry = geometry_of(read_sitk(ct_path))
    grid = DoseGrid(ct_geometry, plan.seeds, plan.formalism, "fast")
    write_plan_folder(root / "plan", plan, grid.dose_Gy("total"), ct_geometry)
    return len(plan.seeds)


def grab(view):
    """The view's pixels as the page receives them (render, then read the frame buffer)."""
    from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter
    view.render()
    f = vtkWindowToImageFilter()
    f.SetInput(view.render_window())
    f.ReadFrontBufferOff()
    f.Update()
    return f.GetOutput().GetNumberOfPoints()


def main():
    from SeedImplantPlannerLib.web.app import WebPlanner
    with tempfile.TemporaryDirectory(prefix="seedplan-bench-web-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        n_seeds = make_plan_folder(root)
        print(f"sample case planned: {n_seeds} seeds ({time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        wp = WebPlanner(root)
        views = wp.slicer_app.view_manager.get_views()
        for v in views:
            v.render_window().SetSize(VIEW_PX, VIEW_PX)
            v.interactor().InvokeEvent("WindowResizeEvent")
        wp.session.open_path("plan")
        wp._after_open()
        for v in views:
            grab(v)
        print(f"web planner built and plan opened: {time.perf_counter() - t0:.1f} s")
        ps = wp.session.plan_scene
        dose_node = ps.params.get_node("doseVolume")
        print(f"dose grid {dose_node.GetImageData().GetDimensions()}, seeds {n_seeds}, "
              f"views {len(views)} x {VIEW_PX}^2 px")
        axial = [v for v in wp.slicer_app.view_manager.get_slice_views() if v.get_view_node().GetOrientation() == "Axial"][0]
        seeds = ps.params.get_node("seedsNode")
        middle = seeds.GetNumberOfControlPoints() // 2
        axial.get_view_node().JumpSliceByOffsetting(*seeds.GetNthControlPointPosition(middle))  # a slice through a seed
        grab(axial)
        xy_to_ras = wp._xy_to_ras_matrix(axial)
        ras_to_xy = np.linalg.inv(xy_to_ras)
        seeds = ps.params.get_node("seedsNode")
        normal = xy_to_ras[:3, 2] / np.linalg.norm(xy_to_ras[:3, 2])
        on_slice = []
        for i in range(seeds.GetNumberOfControlPoints()):
            p = np.array(seeds.GetNthControlPointPosition(i))
            if abs(np.dot(p - xy_to_ras[:3, 3], normal)) <= 1.0:
                on_slice.append((i, ras_to_xy @ np.array([*p, 1.0])))
        if not on_slice:
            print("FAIL: no seed on the axial slice to drag")
            return 1
        iren = axial.interactor()

        def event(name, x, y):
            iren.SetEventInformation(int(round(x)), int(round(y)), 0, 0, chr(0), 0, None)
            iren.InvokeEvent(name)

        times, parts = [], []
        for rep in range(REPEATS):
            i, xy = on_slice[rep % len(on_slice)]
            xy_to_ras = wp._xy_to_ras_matrix(axial)  # the slice may have moved: recompute the seed's pixel
            xy = np.linalg.inv(xy_to_ras) @ np.array([*seeds.GetNthControlPointPosition(i), 1.0])
            sign = 1 if rep % 2 == 0 else -1
            event("MouseMoveEvent", xy[0], xy[1])
            event("LeftButtonPressEvent", xy[0], xy[1])
            for s in range(1, 7):
                event("MouseMoveEvent", xy[0] + sign * 2 * s, xy[1])
            before = wp.state.update_count
            t = time.perf_counter()
            event("LeftButtonReleaseEvent", xy[0] + sign * 12, xy[1])
            for v in views:
                grab(v)
            times.append(time.perf_counter() - t)
            if wp.state.update_count <= before:
                print("FAIL: the release did not update the plan")
                return 1
            parts.append(dict(ps.last_update))
        t_edit = statistics.median(times)
        last = parts[len(parts) // 2]
        print(f"drag release -> updated views (median of {REPEATS}): {t_edit:.3f} s  [dose {last.get('dose_s', 0):.3f}, "
              f"dose volume {last.get('dose_volume_s', 0):.3f}, isodoses {last.get('isodoses_s', 0):.3f}, "
              f"evaluation {last.get('evaluation_s', 0):.3f}]")
        full = []
        for _ in range(2):
            t = time.perf_counter()
            ps.compute_dose(ps.dose_grid.geometry)
            wp.push()
            for v in views:
                grab(v)
            full.append(time.perf_counter() - t)
        t_full = statistics.median(full)
        print(f"full recompute -> updated views (median of 2): {t_full:.3f} s")
        print(f"ratio full / interactive: {t_full / t_edit:.1f}x")
        ok = t_edit <= TARGET_S
        print(f"{'PASS' if ok else 'FAIL'}: drag release -> updated views {t_edit:.3f} s (target <= {TARGET_S} s)")
        wp.session.close()
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
