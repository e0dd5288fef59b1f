"""The web page's layout: the header, the planning panels and the intra-operative page (trame, Vuetify 3).

:class:`PlannerPage` is a mixin of :class:`web.app.WebPlanner`: it builds the page once, binding
each control to the planner's state variables and ``on_*`` actions. No logic here.
"""

from __future__ import annotations


# the fields the plan's and the source's buttons act on
PLAN_FIELDS = ("other_targets", "needle_mode", "direction", "template_spacing_mm", "time_limit_s")
SOURCE_FIELDS = ("seed_model", "strength_value", "strength_unit", "reference_date", "implant_date", "prescription_Gy")


class PlannerPage:
    """The page's widgets."""

    def _act(self, handler, *fields):
        """A button's click: ``handler`` run on the values of ``fields`` the page shows when it is clicked.

        The browser sends edited fields to the server only when it is not waiting for an earlier
        answer, so under load a click can reach the server before the path just typed; the click
        therefore carries the fields it acts on, and they are set before ``handler`` runs.
        """
        def act(values=None):
            if isinstance(values, dict):
                self.state.update({k: values[k] for k in fields if k in values})
            return handler()

        return (act, "[{" + ", ".join(f"{k}: {k}" for k in fields) + "}]")

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
                v.VBtn("Open", click=self._act(self.on_open_path, "open_path"),
                       id="open-btn", classes="mt-2", block=True, disabled=("plan_running",))
                v.VDivider(classes="my-3")
                v.VTextField(v_model=("ct_path",), label="CT image", density="compact", id="ct-path", hide_details=True)
                v.VTextField(v_model=("seg_path",), label="segmentation", density="compact", id="seg-path",
                             hide_details=True, classes="mt-1")
                v.VBtn("Open CT + segmentation", click=self._act(self.on_open_case, "ct_path", "seg_path"),
                       id="open-case-btn", classes="mt-2", block=True,
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
                v.VBtn("Apply", click=self._act(self.on_roles, "target", "organs", "forbidden"),
                       block=True, disabled=("!has_plan",), id="roles-btn")

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
                v.VBtn("Apply", click=self._act(self.on_source, *SOURCE_FIELDS),
                       block=True, disabled=("!has_plan",), id="source-btn")

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
                v.VBtn("Move seed", click=self._act(self.on_move_seed, "seed_index", "seed_dx", "seed_dy", "seed_dz"),
                       block=True, disabled=("!has_dose || plan_running",),
                       id="move-seed-btn", classes="mt-2")
                v.VLabel("last update after an edit: {{ last_update_s === null ? '-' : last_update_s + ' s' }}",
                         classes="text-caption", id="update-time")

    def _panel_dose(self, v):
        with v.VExpansionPanel(title="Dose"):
            with v.VExpansionPanelText():
                v.VTextField(v_model=("isodose_levels",), label="isodose lines (% of prescription)", density="compact",
                             id="isodose-levels")
                v.VBtn("Show isodose lines", click=self._act(self.on_isodose, "isodose_levels"),
                       block=True, disabled=("!has_dose",),
                       id="isodose-btn")
                v.VSlider(v_model=("dose_opacity",), min=0, max=1, step=0.05, label="dose wash", density="compact",
                          hide_details=True, classes="mt-2")
                with v.VRow(dense=True, classes="mt-1"):
                    with v.VCol(cols=6):
                        v.VTextField(v_model=("dose_spacing_mm",), label="box grid spacing (mm)", type="number",
                                     density="compact", hide_details=True, placeholder="CT grid",
                                     hint="empty: the CT's own grid (up to 4 M voxels)")
                    with v.VCol(cols=6):
                        v.VBtn("Compute dose", click=self._act(self.on_compute_dose, "dose_spacing_mm"),
                               block=True, disabled=("!has_plan",),
                               id="dose-btn")

    def _panel_evaluation(self, v, plotly):
        with v.VExpansionPanel(title="Evaluation"):
            with v.VExpansionPanelText():
                with v.VRow(dense=True):
                    with v.VCol(cols=8):
                        v.VSelect(v_model=("goal_preset",), items=("goal_presets",), label="goals", density="compact",
                                  hide_details=True)
                    with v.VCol(cols=4):
                        v.VBtn("Apply", click=self._act(self.on_goals, "goal_preset"),
                               block=True, disabled=("!has_plan",), id="goals-apply")
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
                with v.VRow(dense=True, classes="mt-1"):
                    with v.VCol(cols=9):
                        v.VTextField(v_model=("other_targets",),
                                     label="other targets (NAME:rx=Gy,...; ...)",
                                     placeholder="e.g. GTV_Groin:rx=140,strength=0.7,direction=P",
                                     density="compact", hide_details=True, id="other-targets")
                    with v.VCol(cols=3):
                        v.VBtn("Set", click=self._act(self.on_other_targets, "other_targets"),
                               block=True, id="other-targets-btn",
                               disabled=("!has_plan || plan_running",))
                v.VLabel("{{ target_rx.length > 1 ? 'targets: ' + target_rx.map(t => t.name + ' Rx ' + t.prescription_Gy "
                         "+ ' Gy' + (t.direction ? ' (direction ' + t.direction + ')' : '')).join(', ') : '' }}",
                         classes="text-caption", id="target-list")
                v.VBtn("Run inverse plan", click=self._act(self.on_plan, *PLAN_FIELDS),
                       block=True, disabled=("!has_plan || plan_running",),
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
                v.VBtn("Save plan folder", click=self._act(self.on_save_folder, "save_folder_name"),
                       block=True, disabled=("!has_plan",),
                       id="save-folder-btn", classes="mt-1")
                v.VTextField(v_model=("save_mrb_name",), label="new scene bundle (.mrb)", density="compact",
                             id="save-mrb-name", hide_details=True, classes="mt-3")
                v.VBtn("Save .mrb", click=self._act(self.on_save_mrb, "save_mrb_name"),
                       block=True, disabled=("!has_plan",), id="save-mrb-btn",
                       classes="mt-1")

    def _page_intraop(self, v):
        from trame.widgets import html
        html.Div("Intra-operative check: register the intra-operative CT to the planning CT when the patient moved, "
                 "then the needles on it against the plan (found by the needle finder and matched to the planned "
                 "needles, or read from a needles CSV as find-needles writes it). They are drawn in orange; re-plan "
                 "the remaining seeds on them.", classes="text-body-2 mb-2")
        v.VTextField(v_model=("intraop_ct_path",), label="intra-operative CT (in the served folder)",
                     density="compact", id="intraop-ct-path", hide_details=True)
        with v.VRow(dense=True, classes="mt-1"):
            with v.VCol(cols=7):
                v.VBtn("Register to the planning CT",
                       click=self._act(self.on_register, "intraop_ct_path", "register_bone_metric",
                                       "register_translation_only"), block=True,
                       disabled=("!has_plan || plan_running",), id="register-btn", variant="tonal")
            with v.VCol(cols=5):
                v.VBtn("No registration", click=self.on_clear_registration, block=True,
                       disabled=("!has_registration || plan_running",), id="clear-registration-btn",
                       variant="outlined")
        with v.VRow(dense=True):     # the registration's options, as seedplan register --metric bone / --translation-only
            with v.VCol(cols=7):
                v.VCheckbox(v_model=("register_bone_metric",), label="bone window metric", density="compact",
                            hide_details=True, id="register-bone-metric")
            with v.VCol(cols=5):
                v.VCheckbox(v_model=("register_translation_only",), label="translation only", density="compact",
                            hide_details=True, id="register-translation-only")
        with v.VRow(dense=True):
            with v.VCol(cols=7):
                v.VTextField(v_model=("transform_path",), label="or a transform file (.tfm / .json)",
                             density="compact", id="transform-path", hide_details=True)
            with v.VCol(cols=5):
                v.VBtn("Use transform", click=self._act(self.on_load_transform, "transform_path", "intraop_ct_path"),
                       block=True,
                       disabled=("!has_plan || plan_running",), id="transform-btn", variant="outlined")
        with v.VAlert(v_if=("registration",), density="compact", variant="tonal", classes="mt-1 text-body-2",
                      id="registration-result",
                      type=("registration && registration.warnings.length ? 'warning' : (registration && "
                            "registration.checked ? 'success' : 'info')",)):
            html.Div("{{ registration.ct }}: registered to the planning CT", classes="font-weight-bold")
            html.Div("{{ line }}", v_for="(line, i) in registration.lines", key="i", classes="reg-line")
        html.Div("not registered: the intra-operative CT is taken in its scanner coordinates (register it when the "
                 "patient moved since the planning CT)", v_if=("!registration",), classes="text-caption mt-1",
                 id="registration-none")
        v.VBtn("Find the needles on the CT", click=self._act(self.on_find_needles, "intraop_ct_path"), block=True,
               disabled=("!has_plan || plan_running",), id="find-needles-btn", classes="mt-1")
        v.VBtn("Run the intra-operative chain (needles, implanted seeds, re-plan)",
               click=self._act(self.on_intraop_chain, "intraop_ct_path", "time_limit_s"),
               block=True, disabled=("!has_plan || plan_running",), id="intraop-chain-btn", classes="mt-1",
               color="primary")
        v.VSwitch(v_model=("show_intraop_ct",), label="show the intra-operative CT", v_show="has_intraop_ct",
                  density="compact", hide_details=True, id="show-intraop")
        v.VProgressLinear(v_model=("plan_fraction",), height=14, v_show="plan_running", classes="mt-2", color="green",
                          id="intraop-progress")
        v.VLabel("{{ plan_text }}", v_show="plan_running", classes="text-caption", id="intraop-progress-text")
        v.VBtn("Cancel", click=self.on_cancel, block=True, v_show="plan_running", color="error", classes="mt-1",
               id="intraop-cancel-btn")
        html.Div("or read needles already found (CSV):", classes="text-caption mt-3")
        v.VTextField(v_model=("implanted_path",), label="implanted needles CSV (in the served folder)",
                     density="compact", id="implanted-path", hide_details=True)
        v.VBtn("Read implanted needles", click=self._act(self.on_load_implanted, "implanted_path"),
               block=True, disabled=("!has_plan",),
               id="implanted-btn", classes="mt-1")
        v.VDataTable(items=("deviation_rows",), density="compact", id="deviation-table", classes="mt-2",
                     headers=([{"title": "implanted", "key": "implanted"}, {"title": "planned #", "key": "needle"},
                               {"title": "entry (mm)", "key": "entry_mm"},
                               {"title": "tip (mm)", "key": "tip_mm"}, {"title": "angle (deg)", "key": "angle_deg"},
                               {"title": "", "key": "note"}],))
        v.VBtn("Re-plan with the implanted needles", click=self._act(self.on_replan_implanted, *PLAN_FIELDS),
               block=True, classes="mt-2",
               disabled=("!has_plan || plan_running || !deviation_rows.length",), id="replan-btn")

