"""The web page of ``seedplan serve``: trame-slicer views and the planner's panels on one MRML scene.

trame-slicer's :class:`SlicerApp` owns the scene and renders the axial, coronal, sagittal and 3D
views on the server (remote-controlled areas streamed to the page); the scene gets the module
logics the plan needs and is wrapped in a :class:`mrml.scene.SlicerSceneContext`, so the plan
(:class:`web.session.PlannerSession` around :class:`mrml.plan_scene.PlanScene`) has the same nodes
and parameter node as in the Slicer module. The page's panels follow the module's: open, inputs,
source and prescription, needles, seeds, dose, evaluation (DVH chart, metrics with goals, loading
table, report), inverse plan with progress and cancel, save, and an intra-operative page.

Edits: dragging a seed or a needle end in a view moves the markups control point; the plan scene's
observers update dose, isodose lines, DVH and metrics once the drag is released (one update per
release, not one per mouse move), then the page's tables and chart follow.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..core.errors import SeedPlanError
from .session import PlannerSession, json_safe
from .paths import ServedFolder

LOG = logging.getLogger(__name__)

#: Isodose levels offered by default (% of the prescription).
DEFAULT_LEVELS = "50, 90, 100, 150, 200"
VIEW_LAYOUT_ID = "SeedImplantPlanner"


def scene_context_for(slicer_app):
    """A SlicerSceneContext on trame-slicer's scene, with the module logics the plan scene needs."""
    import slicer  # noqa: PLC0415
    from ..mrml.scene import SlicerSceneContext
    logics = {"Colors": slicer_app.color_logic, "Volumes": slicer_app.volumes_logic,
              "Segmentations": slicer_app.segmentations_logic, "SubjectHierarchy": slicer_app.subject_hierarchy_logic,
              "Data": slicer_app.data_logic, "Markups": slicer_app.markups_logic._logic}
    for name, cls in (("Models", slicer.vtkSlicerModelsLogic), ("Tables", slicer.vtkSlicerTablesLogic),
                      ("Plots", slicer.vtkSlicerPlotsLogic)):
        logics[name] = slicer_app.register_module_logic(cls(), logic_name=name)
    return SlicerSceneContext(slicer_app.scene, slicer_app.app_logic, logics, owned=False)


def _rgb_css(rgb):
    r, g, b = (int(round(255 * max(0.0, min(1.0, float(c))))) for c in rgb[:3])
    return f"rgb({r},{g},{b})"


class WebPlanner:
    """The trame application: server, SlicerApp, views, panels and the planning session."""

    def __init__(self, root, server=None, read_only_roots=None, model_dirs=(), poll_s=0.2):
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
        import trame_slicer.module as trame_slicer_module

        self.server = server or get_server("seedplan-serve", client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        if read_only_roots is None:
            # plans made by `seedplan demo` name the bundled sample case: readable, never written
            from ..samplecase.generator import bundled_sample_case_dir
            bundled = bundled_sample_case_dir()
            read_only_roots = [bundled] if bundled is not None else []
        self.served = ServedFolder(root, read_only_roots)
        self.slicer_app = SlicerApp()
        self.ctx = scene_context_for(self.slicer_app)
        self.session = PlannerSession(self.ctx, self.served, schedule=self._schedule, model_dirs=model_dirs)
        self.poll_s = float(poll_s)
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        axial, coronal = ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view()
        sagittal, threed = ViewLayoutDefinition.sagittal_view(), ViewLayoutDefinition.threed_view()
        self.layout_manager.register_layout(VIEW_LAYOUT_ID, Layout(LayoutDirection.Horizontal, [
            Layout(LayoutDirection.Vertical, [axial, coronal]), Layout(LayoutDirection.Vertical, [threed, sagittal])]))
        self.layout_manager.set_layout(VIEW_LAYOUT_ID)
        self._pending_update = None
        self._placing = None
        self._click = None
        self._interacting = set()
        self._observed = []
        self._job_task = None
        self.last_update_s = None
        self._init_state()
        self._build_ui()
        self._install_drag()

    # -- state --------------------------------------------------------------------------------------
    def _init_state(self):
        from ..evaluation.goals import list_presets
        from ..physics.sources import load_models
        s = self.state
        s.trame__title = "SeedImplantPlanner"
        s.update({
            "message": "", "message_type": "info", "busy": False,
            "open_path": "", "open_items": self.served.listing(), "ct_path": "", "seg_path": "",
            "served_root": str(self.served.root),
            "summary": {}, "has_plan": False, "has_dose": False,
            "segments": [], "target": None, "organs": [], "forbidden": [],
            "models": sorted(load_models(self.session.model_dirs)), "seed_model": "I125_OncoSeed_6711",
            "strength_value": 0.5, "strength_unit": "mCi", "reference_date": "", "implant_date": "",
            "prescription_Gy": 145.0, "goal_presets": [""] + sorted(list_presets()), "goal_preset": "",
            "isodose_levels": DEFAULT_LEVELS, "dose_opacity": 0.45, "dose_spacing_mm": "",
            "seed_rows": [], "needle_rows": [], "loading_rows": [], "metric_rows": [], "failed_goals": None,
            "seed_index": 1, "seed_dx": 0.0, "seed_dy": 0.0, "seed_dz": 0.0,
            "needle_mode": "template", "direction": "R", "template_spacing_mm": 10.0, "time_limit_s": 8.0,
            "plan_running": False, "plan_fraction": 0.0, "plan_text": "", "placing_needle": False, "cursor_ras": None,
            "intraop_ct_path": "", "show_intraop_ct": True, "has_intraop_ct": False,
            "save_mrb_name": "plan-web.mrb", "save_folder_name": "plan-web",
            "implanted_path": "", "deviation_rows": [], "page": "plan",
            "upload_files": None, "last_update_s": None, "update_count": 0,
            "dvh_figure": {"data": [], "layout": {}},
        })

    def _say(self, text, kind="info"):
        self.state.message = str(text)
        self.state.message_type = kind

    def _guard(self, fn, *args, success=None, **kwargs):
        """Run a panel action; bad input becomes a message in the page, the server keeps running."""
        try:
            out = fn(*args, **kwargs)
        except SeedPlanError as exc:
            self._say(" ".join(str(exc).split()), "error")
            return None
        except Exception as exc:  # noqa: BLE001 - a bug must not take the server down; show it and log it
            LOG.exception("web planner action failed")
            self._say(f"internal error ({exc.__class__.__name__}: {exc}); the plan is unchanged", "error")
            return None
        if success:
            self._say(success(out) if callable(success) else success, "success")
        return out

    def push(self):
        """Copy the session's tables, chart and summary into the page's state."""
        ses, s = self.session, self.state
        ps = ses.plan_scene
        with s:
            s.has_plan = ps is not None
            s.has_dose = ses.has_dose()
            s.summary = json_safe(ses.summary())
            s.segments = ses.segment_names()
            target, organs, forbidden = ses.roles()
            s.target, s.organs, s.forbidden = target or None, organs, forbidden
            if ps is not None:
                p = ps.params
                s.prescription_Gy = p.get("prescriptionDoseGy")
                s.seed_model, s.strength_value, s.strength_unit = p.get("seedModel"), p.get("strengthValue"), \
                    p.get("strengthUnit")
                s.reference_date, s.implant_date = p.get("referenceDate"), p.get("implantDate")
                s.isodose_levels = p.get("isodoseLevelsPercent")
                s.goal_preset = p.get("goalPreset")
                s.failed_goals = ps.last_update.get("failed_goals")
            s.seed_rows = json_safe(ses.seed_rows())
            s.needle_rows = json_safe(ses.needle_rows())
            s.loading_rows = json_safe(ses.loading_rows())
            s.metric_rows = [dict(r, value_unit=f"{r['Value']} {r['Unit']}".strip()) for r in json_safe(ses.metric_rows())]
            s.deviation_rows = json_safe(ses.needle_deviations())
            s.has_intraop_ct = ses.intraop_ct_node is not None
            s.dvh_figure = self._dvh_figure()
            s.open_items = self.served.listing()
            s.last_update_s = self.last_update_s
            s.update_count = (s.update_count or 0) + 1

    def _dvh_figure(self):
        dvh = self.session.dvh()
        rx = self.state.prescription_Gy or 0
        data = [{"type": "scatter", "mode": "lines", "name": name, "x": dvh["dose_Gy"], "y": vals,
                 "line": {"color": _rgb_css(dvh["colors"].get(name, (0.8, 0.8, 0.8))), "width": 2}}
                for name, vals in dvh["curves"].items()]
        shapes = [{"type": "line", "x0": rx, "x1": rx, "y0": 0, "y1": 100, "line": {"dash": "dot", "color": "#888"}}] \
            if rx and data else []
        layout = {"margin": {"l": 45, "r": 10, "t": 30, "b": 40}, "height": 260,
                  "xaxis": {"title": {"text": "Dose (Gy)"}, "rangemode": "tozero"},
                  "yaxis": {"title": {"text": "Volume (%)"}, "range": [0, 101]},
                  "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom"}, "shapes": shapes,
                  "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)", "font": {"color": "#ddd"}}
        return {"data": data, "layout": layout}

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

    # -- actions ----------------------------------------------------------------------------------------
    def _after_open(self):
        self._observe_interaction()
        self.show_plan_in_views()
        self.push()

    def on_open_path(self):
        if self._guard(self.session.open_path, self.state.open_path,
                       success=lambda _: f"opened {self.session.source_label}") is not None:
            self._after_open()

    def on_open_case(self):
        if self._guard(self.session.open_case, self.state.ct_path, self.state.seg_path,
                       success=lambda _: f"opened {self.session.source_label}: choose the target and organs") \
                is not None:
            self._after_open()

    def on_upload(self, upload_files=None, **_):
        files = upload_files if upload_files is not None else self.state.upload_files
        if not files:
            return
        from trame.app.file_upload import ClientFile
        items = []
        for f in files if isinstance(files, list) else [files]:
            cf = ClientFile(f)
            items.append((cf.name, cf.content))
        if self._guard(self.session.open_uploads, items,
                       success=lambda _: f"opened upload {', '.join(n for n, _ in items)}") is not None:
            self._after_open()
        self.state.upload_files = None

    def on_roles(self):
        s = self.state
        if self._guard(self.session.set_roles, s.target, s.organs or [], s.forbidden or [],
                       success="target and organs set") is not None:
            self.push()

    def on_source(self):
        s = self.state
        ok = self._guard(self.session.set_source, s.seed_model, s.strength_value, s.strength_unit,
                         s.reference_date, s.implant_date, success="source set")
        if ok is not None or self.state.message_type != "error":
            if self._guard(self.session.set_prescription, s.prescription_Gy,
                           success=f"source and prescription set ({s.prescription_Gy} Gy)") is not None:
                self.show_plan_in_views(reset=False)
                self.push()

    def on_goals(self):
        if self._guard(self.session.set_goal_preset, self.state.goal_preset,
                       success=f"goals: {self.state.goal_preset or 'none'}") is not None:
            self.push()

    def on_isodose(self):
        levels = self._guard(self.session.set_isodose_levels, self.state.isodose_levels,
                             success=lambda lv: "isodose lines at " + ", ".join(f"{v:g}" for v in lv) + " % of Rx")
        if levels is not None:
            self._observe_interaction()
            self.show_plan_in_views(reset=False)
            self.push()

    def on_dose_opacity(self, dose_opacity=None, **_):
        for view in self.slicer_app.view_manager.get_slice_views():
            view.set_foreground_opacity(float(dose_opacity if dose_opacity is not None else self.state.dose_opacity))

    def on_compute_dose(self):
        if self._guard(self.session.compute_dose, self.state.dose_spacing_mm, success="dose computed") is not None:
            self._after_open()

    def on_uniform(self):
        if self._guard(self.session.load_seeds_uniformly, None, success="seeds loaded uniformly") is not None:
            self._after_open()

    def on_move_seed(self):
        s = self.state
        t0 = time.perf_counter()
        self._released_at = t0
        out = self._guard(self.session.move_seed, int(s.seed_index) - 1, delta=(float(s.seed_dx), float(s.seed_dy),
                                                                             float(s.seed_dz)))
        if out is not None:
            self._say(f"seed {int(s.seed_index)} moved to R {out[0]:.1f}, A {out[1]:.1f}, S {out[2]:.1f} mm", "success")
            if self._pending_update is not None:
                self._run_pending()
            else:
                self.push()

    def on_plan(self, implanted=False):
        s = self.state
        job = self._guard(self.session.start_plan, needle_mode=s.needle_mode, direction=s.direction,
                          template_spacing_mm=s.template_spacing_mm, time_limit_s=s.time_limit_s,
                          implanted=implanted)
        if job is None:
            return
        s.plan_running, s.plan_fraction, s.plan_text = True, 0.0, "starting"
        self._say("inverse plan running (Cancel stops it; the current plan stays until it finishes)", "info")
        self._job_task = asyncio.ensure_future(self._watch_job())

    def on_replan_implanted(self):
        self.on_plan(implanted=True)

    def on_cancel(self):
        job = self.session.job
        if job is not None:
            job.cancel()
            self.state.plan_text = "cancelling"

    async def _watch_job(self):
        job = self.session.job
        while job is not None and job.running:
            with self.state:
                self.state.plan_fraction = round(100 * job.fraction, 1)
                self.state.plan_text = job.text
            await asyncio.sleep(self.poll_s)
        with self.state:
            self.state.plan_running = False
            self.state.plan_fraction = 100.0 if job is not None and not job.cancelled and not job.error else 0.0
            kind = job.kind if job is not None else "plan"
            msg = self._guard(self.session.apply_job)
            if msg:
                self._say(msg, "warning" if "cancelled" in msg or "not met" in msg or "missing" in msg else "success")
                if kind == "needles" or kind == "intraop":
                    self._observe_interaction()
                    self.show_plan_in_views(reset=False)
                    self.push()
                else:
                    self._after_open()

    def on_save_mrb(self):
        path = self._guard(self.session.save_mrb, self.state.save_mrb_name,
                           success=lambda p: f"scene saved: {self.served.relative(p)}")
        if path is not None:
            self.push()

    def on_save_folder(self):
        path = self._guard(self.session.save_plan_folder, self.state.save_folder_name,
                           success=lambda p: f"plan folder saved: {self.served.relative(p)}")
        if path is not None:
            self.push()

    def on_report(self):
        data = self._guard(self.session.report_html)
        if data is None:
            return None
        return self.server.protocol.addAttachment(data)

    def on_find_needles(self):
        job = self._guard(self.session.start_find_needles, self.state.intraop_ct_path)
        if job is None:
            return
        s = self.state
        s.plan_running, s.plan_fraction, s.plan_text = True, 0.0, "finding needles"
        self._say("finding the needles on the intra-operative CT", "info")
        self._job_task = asyncio.ensure_future(self._watch_job())

    def on_intraop_chain(self):
        s = self.state
        job = self._guard(self.session.start_intraop, s.intraop_ct_path, time_limit_s=s.time_limit_s)
        if job is None:
            return
        s.plan_running, s.plan_fraction, s.plan_text = True, 0.0, "intra-operative chain"
        self._say("intra-operative chain running: needles, implanted seeds, re-plan", "info")
        self._job_task = asyncio.ensure_future(self._watch_job())

    def on_show_intraop(self, show_intraop_ct=None, **_):
        if self.session.plan_scene is not None:
            self.show_plan_in_views(reset=False)

    def on_load_implanted(self):
        needles = self._guard(self.session.load_implanted_needles, self.state.implanted_path,
                              success=lambda n: f"{len(n)} implanted needles read")
        if needles is not None:
            for view in self.slicer_app.view_manager.get_views():
                view.schedule_render()
            self.push()

    # -- page --------------------------------------------------------------------------------------------
    def _build_ui(self):
        from trame.ui.vuetify3 import VAppLayout
        from trame.widgets import html, plotly
        from trame.widgets import vuetify3 as v

        ctrl = self.ctrl
        self.state.change("dose_opacity")(self.on_dose_opacity)
        self.state.change("upload_files")(self.on_upload)
        self.state.change("show_intraop_ct")(self.on_show_intraop)
        with VAppLayout(self.server, theme="dark") as self.ui:
            with v.VAppBar(density="compact"):
                v.VAppBarTitle("SeedImplantPlanner: web planner")
                html.Div("{{ summary.source || 'no plan open' }}", id="plan-source", classes="text-caption mr-4")
                html.Div(
                    "{{ summary.seeds !== undefined ? summary.seeds + ' seeds, ' + summary.total_U + ' U, Rx ' "
                    "+ summary.prescription_Gy + ' Gy' : '' }}", id="plan-facts", classes="text-caption mr-4")
                html.Div("{{ cursor_ras ? 'cursor R ' + cursor_ras[0] + ', A ' + cursor_ras[1] + ', S ' + "
                         "cursor_ras[2] + ' mm' : '' }}", id="cursor", classes="text-caption mr-4")
                with v.VBtnToggle(v_model=("page",), density="compact", mandatory=True):
                    v.VBtn("Plan", value="plan", id="page-plan")
                    v.VBtn("Intra-op", value="intraop", id="page-intraop")
            with v.VNavigationDrawer(width=470, permanent=True):
                v.VAlert(v_if=("message",), text=("message",), type=("message_type",), density="compact",
                         closable=True, id="message", classes="ma-2 text-body-2", click_close="message = ''")
                with v.VExpansionPanels(v_show="page === 'plan'", multiple=True, variant="accordion",
                                        model_value=("open_panels", [0, 4, 5, 6, 7, 8])):
                    self._panel_open(v)
                    self._panel_inputs(v)
                    self._panel_source(v)
                    self._panel_needles(v)
                    self._panel_seeds(v)
                    self._panel_dose(v)
                    self._panel_evaluation(v, plotly)
                    self._panel_plan(v)
                    self._panel_save(v)
                with html.Div(v_show="page === 'intraop'", classes="pa-2"):
                    self._page_intraop(v)
            with v.VMain():
                with html.Div(style="position: relative; width: 100%; height: calc(100vh - 48px);", id="views"):
                    self.layout_manager.initialize_layout_grid(self.ui)
        ctrl.on_server_ready.add(lambda **_: self.push())

    def _panel_open(self, v):
        with v.VExpansionPanel(title="Open"):
            with v.VExpansionPanelText():
                v.VCombobox(v_model=("open_path",), items=("open_items",), label="plan folder or .mrb (in the served folder)",
                            density="compact", id="open-path", hide_details=True)
                v.VBtn("Open", click=self.on_open_path, id="open-btn", classes="mt-2", block=True, disabled=("plan_running",))
                v.VDivider(classes="my-3")
                v.VTextField(v_model=("ct_path",), label="CT image", density="compact", id="ct-path", hide_details=True)
                v.VTextField(v_model=("seg_path",), label="segmentation", density="compact", id="seg-path",
                             hide_details=True, classes="mt-1")
                v.VBtn("Open CT + segmentation", click=self.on_open_case, id="open-case-btn", classes="mt-2", block=True,
                       disabled=("plan_running",))
                v.VDivider(classes="my-3")
                v.VFileInput(v_model=("upload_files",), label="upload a .mrb, or a CT and a segmentation", multiple=True,
                             density="compact", id="upload", hide_details=True, disabled=("plan_running",))
                v.VLabel("served folder: {{ served_root }}", classes="text-caption mt-2")

    def _panel_inputs(self, v):
        with v.VExpansionPanel(title="Inputs"):
            with v.VExpansionPanelText():
                v.VSelect(v_model=("target",), items=("segments",), label="target", density="compact", id="target")
                v.VSelect(v_model=("organs",), items=("segments",), label="organs at risk", multiple=True, chips=True,
                          density="compact", id="organs")
                v.VSelect(v_model=("forbidden",), items=("segments",), label="forbidden for needles", multiple=True,
                          chips=True, density="compact", id="forbidden")
                v.VBtn("Apply", click=self.on_roles, block=True, disabled=("!has_plan",), id="roles-btn")

    def _panel_source(self, v):
        with v.VExpansionPanel(title="Source and prescription"):
            with v.VExpansionPanelText():
                v.VSelect(v_model=("seed_model",), items=("models",), label="seed model", density="compact")
                with v.VRow(dense=True):
                    with v.VCol(cols=7):
                        v.VTextField(v_model=("strength_value",), label="strength per seed", type="number",
                                     density="compact")
                    with v.VCol(cols=5):
                        v.VSelect(v_model=("strength_unit",), items=(["U", "mCi"],), label="unit", density="compact")
                with v.VRow(dense=True):
                    with v.VCol(cols=6):
                        v.VTextField(v_model=("reference_date",), label="calibration date", placeholder="YYYY-MM-DD",
                                     density="compact")
                    with v.VCol(cols=6):
                        v.VTextField(v_model=("implant_date",), label="implant date", placeholder="YYYY-MM-DD",
                                     density="compact")
                v.VTextField(v_model=("prescription_Gy",), label="prescription (Gy)", type="number", density="compact",
                             id="prescription")
                v.VBtn("Apply", click=self.on_source, block=True, disabled=("!has_plan",), id="source-btn")

    def _panel_needles(self, v):
        with v.VExpansionPanel(title=("`Needles (${needle_rows.length})`",)):
            with v.VExpansionPanelText():
                v.VDataTable(items=("needle_rows",), density="compact", items_per_page=8, id="needle-table",
                             headers=([{"title": "#", "key": "number"}, {"title": "depth mm", "key": "depth_mm"},
                                       {"title": "tip R", "key": "tip_x_mm"}, {"title": "tip A", "key": "tip_y_mm"},
                                       {"title": "tip S", "key": "tip_z_mm"},
                                       {"title": "tilt deg", "key": "tilt_deg"}],))
                v.VLabel("drag a needle end in a view: its seeds move with it", classes="text-caption")
                v.VBtn("Place a free-hand needle (click entry, then tip)", click=self.on_place_needle, block=True,
                       disabled=("!has_plan || plan_running || placing_needle",), id="place-needle-btn",
                       classes="mt-2", variant="outlined")

    def _panel_seeds(self, v):
        with v.VExpansionPanel(title=("`Seeds (${seed_rows.length})`",)):
            with v.VExpansionPanelText():
                v.VDataTable(items=("seed_rows",), density="compact", items_per_page=6, id="seed-table",
                             headers=([{"title": "#", "key": "index"}, {"title": "needle", "key": "needle"},
                                       {"title": "R", "key": "r"}, {"title": "A", "key": "a"},
                                       {"title": "S", "key": "s"}, {"title": "S_K (U)", "key": "sk_U"}],))
                v.VLabel("drag a seed in a view, or move one by a step (mm):", classes="text-caption")
                with v.VRow(dense=True):
                    with v.VCol(cols=3):
                        v.VTextField(v_model=("seed_index",), label="seed #", type="number", density="compact",
                                     id="seed-index", hide_details=True)
                    for axis, key in (("dR", "seed_dx"), ("dA", "seed_dy"), ("dS", "seed_dz")):
                        with v.VCol(cols=3):
                            v.VTextField(v_model=(key,), label=axis, type="number", density="compact",
                                         id=f"seed-{key[-2:]}", hide_details=True)
                v.VBtn("Move seed", click=self.on_move_seed, block=True, disabled=("!has_dose || plan_running",),
                       id="move-seed-btn", classes="mt-2")
                v.VLabel("last update after an edit: {{ last_update_s === null ? '-' : last_update_s + ' s' }}",
                         classes="text-caption", id="update-time")

    def _panel_dose(self, v):
        with v.VExpansionPanel(title="Dose"):
            with v.VExpansionPanelText():
                v.VTextField(v_model=("isodose_levels",), label="isodose lines (% of prescription)", density="compact",
                             id="isodose-levels")
                v.VBtn("Show isodose lines", click=self.on_isodose, block=True, disabled=("!has_dose",),
                       id="isodose-btn")
                v.VSlider(v_model=("dose_opacity",), min=0, max=1, step=0.05, label="dose wash", density="compact",
                          hide_details=True, classes="mt-2")
                with v.VRow(dense=True, classes="mt-1"):
                    with v.VCol(cols=6):
                        v.VTextField(v_model=("dose_spacing_mm",), label="box grid spacing (mm)", type="number",
                                     density="compact", hide_details=True, placeholder="CT grid",
                                     hint="empty: the CT's own grid (up to 4 M voxels)")
                    with v.VCol(cols=6):
                        v.VBtn("Compute dose", click=self.on_compute_dose, block=True, disabled=("!has_plan",),
                               id="dose-btn")

    def _panel_evaluation(self, v, plotly):
        with v.VExpansionPanel(title="Evaluation"):
            with v.VExpansionPanelText():
                with v.VRow(dense=True):
                    with v.VCol(cols=8):
                        v.VSelect(v_model=("goal_preset",), items=("goal_presets",), label="goals", density="compact",
                                  hide_details=True)
                    with v.VCol(cols=4):
                        v.VBtn("Apply", click=self.on_goals, block=True, disabled=("!has_plan",))
                plotly.Figure(state_variable_name="dvh_figure", display_mode_bar=False, display_logo=False,
                              responsive=True, style="height: 260px;", id="dvh-chart")
                v.VLabel("{{ failed_goals === null || failed_goals === undefined ? '' : (failed_goals ? failed_goals + "
                         "' goal(s) FAIL' : 'all goals pass') }}", id="goal-status",
                         classes=("failed_goals ? 'text-error' : 'text-success'",))
                v.VDataTable(items=("metric_rows",), density="compact", items_per_page=12, id="metrics-table",
                             headers=([{"title": "Structure", "key": "Structure"}, {"title": "Metric", "key": "Metric"},
                                       {"title": "Value", "key": "value_unit"}, {"title": "Goal", "key": "Goal"},
                                       {"title": "Pass", "key": "Pass"}],))
                v.VLabel("needle loading (from the tip)", classes="text-caption mt-2")
                v.VDataTable(items=("loading_rows",), density="compact", items_per_page=8, id="loading-table")
                v.VBtn("Download report (HTML)", block=True, disabled=("!has_dose",), id="report-btn", classes="mt-2",
                       click="utils.download('plan-report.html', trigger('%s'), 'text/html')"
                             % self.ctrl.trigger_name(self.on_report))

    def _panel_plan(self, v):
        with v.VExpansionPanel(title="Inverse plan"):
            with v.VExpansionPanelText():
                with v.VRow(dense=True):
                    with v.VCol(cols=6):
                        v.VSelect(v_model=("needle_mode",), items=(["template", "fan", "freehand"],),
                                  label="needles", density="compact", hide_details=True)
                    with v.VCol(cols=6):
                        v.VTextField(v_model=("direction",), label="direction (R L A P S I)", density="compact",
                                     hide_details=True)
                with v.VRow(dense=True, classes="mt-1"):
                    with v.VCol(cols=6):
                        v.VTextField(v_model=("template_spacing_mm",), label="template spacing (mm)", type="number",
                                     density="compact", hide_details=True)
                    with v.VCol(cols=6):
                        v.VTextField(v_model=("time_limit_s",), label="time limit (s)", type="number", density="compact",
                                     hide_details=True, id="time-limit")
                v.VBtn("Run inverse plan", click=self.on_plan, block=True, disabled=("!has_plan || plan_running",),
                       id="plan-btn", classes="mt-2")
                v.VProgressLinear(v_model=("plan_fraction",), height=14, v_show="plan_running", id="plan-progress",
                                  classes="mt-2", color="green")
                v.VLabel("{{ plan_text }}", v_show="plan_running", classes="text-caption")
                v.VBtn("Cancel", click=self.on_cancel, block=True, v_show="plan_running", color="error",
                       id="cancel-btn", classes="mt-1")
                v.VBtn("Load seeds uniformly (no optimisation)", click=self.on_uniform, block=True, variant="outlined",
                       disabled=("!has_plan || plan_running",), classes="mt-2")

    def _panel_save(self, v):
        with v.VExpansionPanel(title="Save"):
            with v.VExpansionPanelText():
                v.VTextField(v_model=("save_folder_name",), label="new plan folder (in the served folder)",
                             density="compact", id="save-folder-name", hide_details=True)
                v.VBtn("Save plan folder", click=self.on_save_folder, block=True, disabled=("!has_plan",),
                       id="save-folder-btn", classes="mt-1")
                v.VTextField(v_model=("save_mrb_name",), label="new scene bundle (.mrb)", density="compact",
                             id="save-mrb-name", hide_details=True, classes="mt-3")
                v.VBtn("Save .mrb", click=self.on_save_mrb, block=True, disabled=("!has_plan",), id="save-mrb-btn",
                       classes="mt-1")

    def _page_intraop(self, v):
        from trame.widgets import html
        html.Div("Intra-operative check: the needles on the intra-operative CT against the plan (found by the "
                 "needle finder and matched to the planned needles, or read from a needles CSV as for seedplan plan "
                 "--implanted-needles). They are drawn in orange; re-plan the remaining seeds on them.",
                 classes="text-body-2 mb-2")
        v.VTextField(v_model=("intraop_ct_path",), label="intra-operative CT (in the served folder)",
                     density="compact", id="intraop-ct-path", hide_details=True)
        v.VBtn("Find the needles on the CT", click=self.on_find_needles, block=True,
               disabled=("!has_plan || plan_running",), id="find-needles-btn", classes="mt-1")
        v.VBtn("Run the intra-operative chain (needles, implanted seeds, re-plan)", click=self.on_intraop_chain,
               block=True, disabled=("!has_plan || plan_running",), id="intraop-chain-btn", classes="mt-1",
               color="primary")
        v.VSwitch(v_model=("show_intraop_ct",), label="show the intra-operative CT", v_show="has_intraop_ct",
                  density="compact", hide_details=True, id="show-intraop")
        html.Div("or read needles already found (CSV):", classes="text-caption mt-3")
        v.VTextField(v_model=("implanted_path",), label="implanted needles CSV (in the served folder)",
                     density="compact", id="implanted-path", hide_details=True)
        v.VBtn("Read implanted needles", click=self.on_load_implanted, block=True, disabled=("!has_plan",),
               id="implanted-btn", classes="mt-1")
        v.VDataTable(items=("deviation_rows",), density="compact", id="deviation-table", classes="mt-2",
                     headers=([{"title": "implanted", "key": "implanted"}, {"title": "planned #", "key": "needle"},
                               {"title": "entry (mm)", "key": "entry_mm"},
                               {"title": "tip (mm)", "key": "tip_mm"}, {"title": "angle (deg)", "key": "angle_deg"},
                               {"title": "", "key": "note"}],))
        v.VBtn("Re-plan with the implanted needles", click=self.on_replan_implanted, block=True, classes="mt-2",
               disabled=("!has_plan || plan_running || !deviation_rows.length",), id="replan-btn")
        v.VProgressLinear(v_model=("plan_fraction",), height=14, v_show="plan_running", classes="mt-2", color="green")
        v.VBtn("Cancel", click=self.on_cancel, block=True, v_show="plan_running", color="error", classes="mt-1")

    # -- running ----------------------------------------------------------------------------------------
    def start(self, host="127.0.0.1", port=8080, **kwargs):
        """Serve the page (blocking) on ``host``:``port``."""
        import sys
        argv, sys.argv = sys.argv, sys.argv[:1]  # trame reads its own options from argv: give it none
        try:
            return self.server.start(host=host, port=int(port), open_browser=False, timeout=0,
                                     show_connection_info=True, **kwargs)
        finally:
            sys.argv = argv
            self.session.close()
