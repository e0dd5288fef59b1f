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

:class:`WebPlanner` holds the state and the actions; the views, dragging and live edits are in
:mod:`.app_views`, the page's widgets in :mod:`.app_page` (mixins).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..core.errors import SeedPlanError
from .app_page import PlannerPage
from .app_views import PlannerViews
from .paths import ServedFolder
from .session import PlannerSession, json_safe

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


class WebPlanner(PlannerViews, PlannerPage):
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
            "other_targets": "", "target_rx": [],
            "needle_mode": "template", "direction": "R", "template_spacing_mm": 10.0, "time_limit_s": 8.0,
            "plan_running": False, "plan_fraction": 0.0, "plan_text": "", "placing_needle": False, "cursor_ras": None,
            "intraop_ct_path": "", "show_intraop_ct": True, "has_intraop_ct": False,
            "transform_path": "", "registration": None, "has_registration": False,
            "register_bone_metric": False, "register_translation_only": False,
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
            s.other_targets = ses.other_targets_text()
            s.target_rx = json_safe(ses.targets())
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
            s.registration = json_safe(ses.registration_report())
            s.has_registration = ses.registration is not None
            s.dvh_figure = self._dvh_figure()
            s.open_items = self.served.listing()
            s.last_update_s = self.last_update_s
            s.update_count = (s.update_count or 0) + 1

    def _dvh_figure(self):
        """The DVH chart: a curve per structure and a dotted line at every target's prescription (named when several)."""
        dvh = self.session.dvh()
        data = [{"type": "scatter", "mode": "lines", "name": name, "x": dvh["dose_Gy"], "y": vals,
                 "line": {"color": _rgb_css(dvh["colors"].get(name, (0.8, 0.8, 0.8))), "width": 2}}
                for name, vals in dvh["curves"].items()]
        targets = self.session.targets()
        marks = [(t["prescription_Gy"], t["name"], dvh["colors"].get(t["name"])) for t in targets] if len(targets) > 1 \
            else [(self.state.prescription_Gy or 0, None, None)]
        shapes, notes = [], []
        for k, (rx, name, color) in enumerate(marks if data else []):
            if not rx:
                continue
            css = _rgb_css(color) if color else "#888"
            shapes.append({"type": "line", "x0": rx, "x1": rx, "y0": 0, "y1": 100, "line": {"dash": "dot", "color": css}})
            if name:  # low in the chart, one above the other, right of the highest Rx line: clear of the curves
                notes.append({"x": max(m[0] for m in marks), "y": 6 + 11 * k, "xanchor": "left", "yanchor": "bottom",
                              "xshift": 4,
                              "text": f"Rx {name} {rx:g} Gy", "showarrow": False, "font": {"size": 10, "color": css}})
        layout = {"margin": {"l": 45, "r": 10, "t": 30, "b": 40}, "height": 260,
                  "xaxis": {"title": {"text": "Dose (Gy)"}, "rangemode": "tozero"},
                  "yaxis": {"title": {"text": "Volume (%)"}, "range": [0, 101]},
                  "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom"}, "shapes": shapes, "annotations": notes,
                  "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)", "font": {"color": "#ddd"}}
        return {"data": data, "layout": layout}

    # -- actions ----------------------------------------------------------------------------------------
    def _after_open(self):
        self._observe_interaction()
        self.show_plan_in_views()
        self.push()

    def _opened_message(self, _=None):
        note = self.session.open_note
        return f"opened {self.session.source_label}" + (f"; {note}" if note else "")

    def _take_up_intraop(self):
        """After opening a scene: the intra-op page's fields as the scene's review left them (CT, options), and a
        warning when the registration's record is missing or unreadable (the transform is kept)."""
        restored = self.session.restored
        if restored is None:
            return
        s = self.state
        text = self.session.intraop_ct_text()
        if text:
            s.intraop_ct_path = text
        options = restored.options()
        s.register_bone_metric, s.register_translation_only = options["bone_metric"], options["translation_only"]
        s.show_intraop_ct = True
        if restored.problem or restored.notes or restored.goals_met is False:   # as the chain's own message
            s.message_type = "warning"

    def on_open_path(self):
        if self._guard(self.session.open_path, self.state.open_path, success=self._opened_message) is not None:
            self._take_up_intraop()
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
                       success=lambda _: f"opened upload {', '.join(n for n, _ in items)}" + (
                           f"; {self.session.open_note}" if self.session.open_note else "")) is not None:
            self._take_up_intraop()
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

    def on_other_targets(self):
        """Apply the "other targets" field: every target against its own prescription in the outputs."""
        if self._guard(self.session.set_other_targets, self.state.other_targets,
                       success=lambda t: ("targets: " if len(t) > 1 else "one target: ") + ", ".join(
                           f"{x['name']} (Rx {x['prescription_Gy']:g} Gy)" for x in t)) is not None:
            self.show_plan_in_views(reset=False)
            self.push()
            return True
        return False

    def on_plan(self, implanted=False):
        s = self.state
        if (s.other_targets or "") != self.session.other_targets_text() and not self.on_other_targets():
            return  # the other targets as typed are planned, or nothing (their error is shown)
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
                unmet = kind == "intraop" and self.session.intraop_result is not None and \
                    not self.session.intraop_result.goals_met
                self._say(msg, "warning" if "cancelled" in msg or "not met" in msg or "missing" in msg
                          or "warning" in msg or unmet else "success")
                if kind in ("needles", "intraop", "register"):
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

    def on_register(self):
        """Register the intra-operative CT named on the page to the plan's CT (worker thread, progress, Cancel)."""
        s = self.state
        job = self._guard(self.session.start_register, s.intraop_ct_path, **self.session.register_options(
            s.register_bone_metric, s.register_translation_only))
        if job is None:
            return
        s.plan_running, s.plan_fraction, s.plan_text = True, 0.0, "registration"
        self._say("registering the intra-operative CT to the planning CT (Cancel stops it; nothing changes until it "
                  "is accepted)", "info")
        self._job_task = asyncio.ensure_future(self._watch_job())

    def _after_registration_change(self):
        self.state.show_intraop_ct = True
        self._observe_interaction()
        self.show_plan_in_views(reset=False)
        self.push()

    def on_load_transform(self):
        if self._guard(self.session.load_registration, self.state.transform_path, self.state.intraop_ct_path,
                       success=lambda msg: msg) is not None:
            self._after_registration_change()

    def on_clear_registration(self):
        if self._guard(self.session.clear_registration, success=lambda msg: msg) is not None:
            self._after_registration_change()

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
