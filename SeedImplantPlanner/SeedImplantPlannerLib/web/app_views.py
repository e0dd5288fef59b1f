"""The web page's views: what the slice and 3D views show, dragging seeds and needle ends, linked cursors.

:class:`PlannerViews` is a mixin of :class:`web.app.WebPlanner` (it uses its ``slicer_app``,
``session``, ``state`` and ``push``): the plan's nodes styled and shown in trame-slicer's views, a
left-drag on a seed or a needle end moving it in the slice plane, a click linking the cursors, a
free-hand needle placed with two clicks, and the plan scene's live updates run once per drag release.
"""

from __future__ import annotations

import asyncio
import time

from ..core.errors import SeedPlanError


class PlannerViews:
    """Views, dragging and live edits of the web planner."""

    # -- views ---------------------------------------------------------------------------------------
    def show_plan_in_views(self, reset=True):
        """CT behind, dose wash in front, segment outlines, isodose lines, needles and seeds; views framed."""
        from ..mrml import render
        ps = self.session.plan_scene
        if ps is None:
            return
        p = ps.params
        ct, dose = p.get_node("ctVolume"), p.get_node("doseVolume")
        render.style_for_pictures(segmentation_node=p.get_node("segmentation"), seeds_node=p.get_node("seedsNode"),
                                  needle_nodes=p.get_node_list("needleNodes"),
                                  isodose_nodes=p.get_node_list("isodoseModels"), segments_3d=ps.segments_in_use())
        dm = self.slicer_app.display_manager
        intraop = self.session.intraop_ct_node
        dm.show_volume_in_slice_background(intraop if (intraop is not None and self.state.show_intraop_ct) else ct)
        dm.show_volume_in_slice_foreground(dose)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_foreground_opacity(float(self.state.dose_opacity) if dose is not None else 0.0)
        if reset:
            try:
                center, fov = render.default_center_and_fov(dose, p.get_node("seedsNode"), ct)
            except SeedPlanError:
                center, fov = None, None
            for view in self.slicer_app.view_manager.get_slice_views():
                view.fit_view_to_content()
                if center is not None:
                    node = view.get_view_node()
                    node.JumpSliceByCentering(*center)
                    dims = node.GetDimensions()
                    aspect = dims[1] / max(dims[0], 1)
                    node.SetFieldOfView(fov * 1.4, fov * 1.4 * aspect, node.GetFieldOfView()[2])
            seg = p.get_node("segmentation")
            if seg is not None:
                seg.CreateClosedSurfaceRepresentation()
            for view in self.slicer_app.view_manager.get_threed_views():
                # translucent structures and isodose surfaces vanish with depth peeling on llvmpipe/EGL
                view.renderer().SetUseDepthPeeling(False)
                view.get_view_node().SetBoxVisible(False)
                view.get_view_node().SetAxisLabelsVisible(False)
                if center is not None:
                    self._frame_3d(view, center, fov)
        for view in self.slicer_app.view_manager.get_views():
            view.schedule_render()

    @staticmethod
    def _frame_3d(view, center, fov_mm):
        """Look at the plan from the front (anterior), a little from the left and above, framing ``fov_mm``."""
        import numpy as np
        cam = view.first_renderer().GetActiveCamera()
        c = np.asarray(center, float)
        cam.SetFocalPoint(*c)
        cam.SetPosition(*(c + np.array([0.0, 4.0 * fov_mm, 0.0])))
        cam.SetViewUp(0.0, 0.0, 1.0)
        cam.Azimuth(-30.0)
        cam.Elevation(20.0)
        cam.OrthogonalizeViewUp()
        half = fov_mm / 2.0
        view.first_renderer().ResetCamera(c[0] - half, c[0] + half, c[1] - half, c[1] + half, c[2] - half, c[2] + half)
        view.first_renderer().ResetCameraClippingRange()

    # -- dragging seeds and needle ends in the slice views -------------------------------------------
    PICK_RADIUS_PX = 10.0

    def _install_drag(self):
        """Left-drag on a seed or a needle end in a slice view moves it in the slice plane.

        The press picks the nearest seed or needle end drawn on the slice (within
        :attr:`PICK_RADIUS_PX`); a press elsewhere keeps the view's own behaviour. The live update
        runs once, on release.
        """
        import slicer  # noqa: PLC0415
        self._drag = None
        for view in self.slicer_app.view_manager.get_slice_views():
            iren = view.interactor()
            for event, fn in (("LeftButtonPressEvent", self._drag_press), ("MouseMoveEvent", self._drag_move),
                              ("LeftButtonReleaseEvent", self._drag_release)):
                iren.AddObserver(event, lambda obj, ev, v=view, f=fn: f(v, obj), 10.0)
            style = getattr(view, "_interactor_observer", None)
            if style is not None and hasattr(style, "SetActionEnabled"):
                # left-drag adjusts window/level in Slicer's slice views: here it drags seeds and needles
                style.SetActionEnabled(slicer.vtkMRMLSliceViewInteractorStyle.AdjustWindowLevelBackground, False)
                style.SetActionEnabled(slicer.vtkMRMLSliceViewInteractorStyle.AdjustWindowLevelForeground, False)

    @staticmethod
    def _xy_to_ras_matrix(view):
        import numpy as np  # noqa: PLC0415
        m = view.get_view_node().GetXYToRAS()
        return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])

    def _drag_candidates(self, view):
        """(node, control point index, RAS) of the seeds and needle ends that can be dragged."""
        ps = self.session.plan_scene
        if ps is None or ps.dose_grid is None:
            return []
        out = []
        seeds = ps.params.get_node("seedsNode")
        if seeds is not None and not seeds.GetLocked():
            out += [(seeds, i, seeds.GetNthControlPointPosition(i)) for i in range(seeds.GetNumberOfControlPoints())]
        for node in ps.params.get_node_list("needleNodes"):
            n = node.GetNumberOfControlPoints()
            if n >= 2 and not node.GetLocked():
                out += [(node, 0, node.GetNthControlPointPosition(0)), (node, n - 1, node.GetNthControlPointPosition(n - 1))]
        return out

    def on_place_needle(self):
        if self.session.plan_scene is None:
            self._say("open a plan or a CT + segmentation first", "error")
            return
        self._placing = []
        self.state.placing_needle = True
        self._say("click the needle's entry point in a slice view, then its tip", "info")

    def _place_click(self, view, iren):
        """One click of a free-hand needle: the entry, then the tip (on the clicked slice)."""
        import numpy as np  # noqa: PLC0415
        x, y = iren.GetEventPosition()
        ras = (self._xy_to_ras_matrix(view) @ np.array([x, y, 0.0, 1.0]))[:3]
        self._placing.append(ras)
        if len(self._placing) == 1:
            with self.state:
                self._say(f"entry at R {ras[0]:.1f}, A {ras[1]:.1f}, S {ras[2]:.1f} mm: now click the tip", "info")
            return
        entry, tip = self._placing
        self._placing = None
        with self.state:
            self.state.placing_needle = False
            number = self._guard(self.session.add_needle, entry, tip,
                                 success=lambda n: f"needle {n} placed ({np.linalg.norm(tip - entry):.0f} mm); "
                                                   "load seeds or plan with free-hand needles")
            if number is not None:
                self._observe_interaction()
                self.show_plan_in_views(reset=False)
                self.push()

    def _drag_press(self, view, iren):
        import numpy as np  # noqa: PLC0415
        if self.state.plan_running:
            return
        if getattr(self, "_placing", None) is not None:
            self._place_click(view, iren)
            return
        x, y = iren.GetEventPosition()
        xy_to_ras = self._xy_to_ras_matrix(view)
        ras_to_xy = np.linalg.inv(xy_to_ras)
        # a point counts as on this slice within half the slice spacing (plus 0.5 mm: a seed is 4.5 mm long)
        half_thickness = max(0.5 * float(view.get_slice_step()), 1.0) + 0.5
        normal = xy_to_ras[:3, 2] / max(np.linalg.norm(xy_to_ras[:3, 2]), 1e-9)
        best, best_d = None, self.PICK_RADIUS_PX
        origin = xy_to_ras[:3, 3]
        for node, i, ras in self._drag_candidates(view):
            if abs(float(np.dot(np.asarray(ras) - origin, normal))) > half_thickness:
                continue  # not on this slice
            px = ras_to_xy @ np.array([*ras, 1.0])
            d = float(np.hypot(px[0] - x, px[1] - y))
            if d <= best_d:
                best, best_d = (node, i), d
        if best is None:
            self._click = (view, x, y)  # a click without a drag links the cursor (on release)
            return
        node, i = best
        self._drag = (view, node, i, xy_to_ras)
        self._interacting.add(node.GetID())

    def _drag_move(self, view, iren):
        import numpy as np  # noqa: PLC0415
        click = getattr(self, "_click", None)
        if click is not None and click[0] is view:
            x, y = iren.GetEventPosition()
            if abs(x - click[1]) + abs(y - click[2]) > 4:
                self._click = None
        if self._drag is None or self._drag[0] is not view:
            return
        _, node, i, xy_to_ras = self._drag
        x, y = iren.GetEventPosition()
        old = np.array(node.GetNthControlPointPosition(i))
        ras = (xy_to_ras @ np.array([x, y, 0.0, 1.0]))[:3]
        normal = xy_to_ras[:3, 2] / max(np.linalg.norm(xy_to_ras[:3, 2]), 1e-9)
        ras = ras + normal * float(np.dot(old - ras, normal))  # stay at the point's own depth
        node.SetNthControlPointPosition(i, *ras)
        view.schedule_render()

    def _drag_release(self, view, iren):
        click, self._click = getattr(self, "_click", None), None
        if click is not None and click[0] is view:
            self.link_cursor(view, *click[1:])
            return
        if self._drag is None or self._drag[0] is not view:
            return
        node = self._drag[1]
        self._drag = None
        self._interacting.discard(node.GetID())
        self._released_at = time.perf_counter()
        if self._pending_update is not None:
            self._run_pending()

    def link_cursor(self, view, x, y):
        """Linked cursors: the crosshair at the clicked point, the other slice views moved through it."""
        import numpy as np  # noqa: PLC0415
        import slicer  # noqa: PLC0415
        ras = (self._xy_to_ras_matrix(view) @ np.array([x, y, 0.0, 1.0]))[:3]
        crosshair = self.slicer_app.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None:
            crosshair.SetCrosshairRAS(*ras)
            crosshair.SetCrosshairMode(slicer.vtkMRMLCrosshairNode.ShowSmallBasic)
        for other in self.slicer_app.view_manager.get_slice_views():
            if other is not view:
                other.get_view_node().JumpSliceByOffsetting(*ras)
        for v in self.slicer_app.view_manager.get_views():
            v.schedule_render()
        with self.state:
            self.state.cursor_ras = [round(float(c), 1) for c in ras]

    # -- live edits: one update per drag release ------------------------------------------------------
    def _observe_interaction(self):
        for node, tag in self._observed:
            node.RemoveObserver(tag)
        self._observed = []
        ps = self.session.plan_scene
        if ps is None:
            return
        nodes = [ps.params.get_node("seedsNode")] + ps.params.get_node_list("needleNodes")
        for node in [n for n in nodes if n is not None]:
            self._observed.append((node, node.AddObserver(node.PointStartInteractionEvent, self._on_start_drag)))
            self._observed.append((node, node.AddObserver(node.PointEndInteractionEvent, self._on_end_drag)))

    def _on_start_drag(self, caller, _event):
        self._interacting.add(caller.GetID())

    def _on_end_drag(self, caller, _event):
        self._interacting.discard(caller.GetID())
        self._released_at = time.perf_counter()
        if self._pending_update is not None:
            self._run_pending()

    def _schedule(self, callback):
        """PlanScene's scheduler: coalesce node events; wait for the end of a drag."""
        self._pending_update = callback
        if self._interacting:
            return  # run on release (_on_end_drag)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run_pending()
            return
        loop.call_soon(self._run_pending)

    def _run_pending(self):
        cb, self._pending_update = self._pending_update, None
        if cb is None:
            return
        t0 = getattr(self, "_released_at", None) or time.perf_counter()
        cb()
        err = (self.session.plan_scene.last_update or {}).get("error") if self.session.plan_scene else None
        if err:
            self._say(f"dose not updated: {err}", "error")
        for view in self.slicer_app.view_manager.get_views():
            view.render()
        self.last_update_s = round(time.perf_counter() - t0, 3)
        self._released_at = None
        self.push()
