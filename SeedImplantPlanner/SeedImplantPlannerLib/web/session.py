"""One planning session of the web planner: a plan in an MRML scene, opened, edited, planned and saved.

The session holds a :class:`mrml.plan_scene.PlanScene` in a Slicer-like scene (the one trame-slicer's
views show, or any :class:`mrml.scene.SlicerSceneContext`), so the web page and the Slicer module
share one scene layout: parameter node, CT, segmentation, needles and seeds markups, dose volume,
isodose models, DVH and metrics tables. It has no web code: the trame page (:mod:`web.app`) calls
it, and tests drive it directly.

Safety rules kept here:

- every path comes through :class:`web.paths.ServedFolder` (confined to the served folder);
- opening reads and checks all inputs before the current scene is touched, so a bad upload, a
  plan file of another version or a segmentation that misses the CT leaves the open plan as it was;
- saving never overwrites: a plan folder or bundle that exists is refused;
- long work (inverse planning) runs in a worker thread on numpy data only (:class:`PlanJob`), the
  scene is changed on the caller's thread when the job is applied.

The session is one class assembled from mixins by concern: :mod:`.session_files` (reading and
checking case files, saving), :mod:`.session_planning` (the plan behind the scene, the inverse plan
job) and :mod:`.session_intraop` (the intra-operative page); opening, the panels and the outputs
are here.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

from ..core.errors import InputError, SeedPlanError
from ..mrml import segmentations, tables, volumes
from ..mrml.parameters import MODULE_NAME, parse_levels
from ..mrml.plan_scene import PlanScene
from ..mrml.scene_io import build_plan_scene
from .paths import ServedFolder, safe_file_name
from .session_files import (IMAGE_SUFFIXES, SEGMENTATION_SUFFIXES, CaseInputs, SessionFiles,  # noqa: F401
                            check_overlap, zipfile_ok)
from .session_intraop import SessionIntraop
from .session_planning import PlanJob, SessionPlanning


class PlannerSession(SessionFiles, SessionPlanning, SessionIntraop):
    """The web planner's state: the served folder, the scene context and the plan in it."""

    def __init__(self, ctx, served: ServedFolder, schedule=None, model_dirs=(), default_goal_preset="ct_soft_tissue_I125"):
        self.ctx = ctx
        self.default_goal_preset = default_goal_preset
        self.served = served
        self.schedule = schedule
        self.model_dirs = tuple(model_dirs)
        self.plan_scene: PlanScene | None = None
        self.plan = None  # planning.planfile.Plan when one was opened or planned
        self.source_label = ""
        self.job: PlanJob | None = None
        self.messages = []
        self._upload_dir = None  # private folder of uploads, made by the first upload
        self._upload_cleanup = None  # weakref.finalize removing it: at close(), garbage collection or exit
        self.implanted_needles = None
        self.needle_matching = None  # planning.needle_match.NeedleMatching of the intra-operative CT
        self.intraop_ct_node = None
        self.intraop_result = None  # planning.intraop.IntraopResult of the last intra-operative chain
        self.registration = None  # imaging.registration.RegistrationResult of the intra-operative CT registration_ct
        self.registration_ct = None  # Path of the CT the registration is of
        self.registration_node = None  # its vtkMRMLLinearTransformNode in the scene
        self.found_ct = None  # Path of the CT the needle finder's matching / the chain's result were found on
        self.scene_ct = None  # {"key", "label", "array", "geometry"}: an opened scene's intra-op CT whose file is not at hand
        self.scene_deviation_rows = []  # the deviation table of an opened scene (until the needles change)
        self.restored = None  # mrml.intraop_state.IntraopState of the last opened scene
        self.plan_record = None  # mrml.plan_record.PlanRecordState of the last opened scene (its plan rebuilt or why not)
        self.restored_original = None  # the plan being implanted an opened scene recorded beside its re-plan
        self.open_note = ""  # what opening restored (intra-operative review), for the page's message
        self.case_segmentation = None  # imaging.segio.Segmentation of the open case (None from a .mrb)
        self.case_paths = (None, None)  # CT and segmentation files of the open case (None when from a .mrb)

    # -- opening (the scene changes only after every input was read) -------------------------------
    def _clear_scene(self):
        if self.job is not None and self.job.running:
            raise InputError("an inverse plan is running: cancel it before opening another case")
        if self.plan_scene is not None:
            self.plan_scene.stop_live_updates()
            self.plan_scene = None
        scene = self.ctx.scene
        node = scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode")
        if node is not None:
            scene.RemoveNode(node)
        scene.Clear(0)
        self.plan = None
        self.implanted_needles = None
        self.needle_matching = None
        self.intraop_ct_node = None
        self.intraop_result = None
        self.registration = None
        self.registration_ct = None
        self.registration_node = None
        self.found_ct = None
        self.scene_ct = None
        self.scene_deviation_rows = []
        self.restored = None
        self.plan_record = None
        self.restored_original = None
        self.open_note = ""
        self.case_segmentation = None
        self.case_paths = (None, None)

    def _start_live(self):
        self.plan_scene.model_dirs = self.model_dirs
        self.plan_scene.start_live_updates(self.schedule)

    def open_inputs(self, case: CaseInputs, dose_spacing_mm=2.0):
        """Replace the scene's content with ``case`` (already read and checked); computes the dose if there are seeds."""
        from ..evaluation.goals import load_goals
        self._clear_scene()
        self.case_paths = (case.ct_path, case.seg_path)
        self.case_segmentation = case.segmentation
        plan = case.plan
        if plan is None:
            ps = PlanScene(self.ctx)
            ps.model_dirs = self.model_dirs
            ps.set_ct(*case.ct)
            ps.set_segmentation(case.segmentation)
            if self.default_goal_preset:
                ps.set_goals(load_goals(self.default_goal_preset))
                ps.params.set("goalPreset", self.default_goal_preset)
            self.plan_scene = ps
            self.source_label = case.source_label
            self._start_live()
            return ps
        goals = load_goals(self.default_goal_preset) if self.default_goal_preset else None
        src = plan.source
        params = {"seedModel": plan.model_id, "strengthValue": float(src.get("strength_value", plan.strength_U)),
                  "strengthUnit": str(src.get("strength_unit", "U")), "referenceDate": src.get("reference_date") or "",
                  "implantDate": src.get("implant_date") or "", "doseGridSpacingMm": float(dose_spacing_mm),
                  "goalPreset": self.default_goal_preset or ""}
        used = plan.used_needles() or plan.needles
        self.plan_scene = build_plan_scene(
            self.ctx, seeds=plan.seeds, prescription_Gy=plan.prescription_Gy, ct=case.ct, segmentation=case.segmentation,
            target=case.target, organs=case.organs, forbidden=case.forbidden, needles=used,
            seed_needle_numbers=plan.seed_needle, goals=goals, parameters=params, needles_locked=False,
            dose_geometry=case.dose_geometry or self._default_dose_geometry(case.ct[1] if case.ct else None))
        self.plan = plan
        self.plan_scene.plan = plan  # its own goals (every target's, as planned) in the metrics table
        if not self._show_plan_targets(plan) and self.plan_scene.dose_grid is not None:
            self.plan_scene.refresh_outputs(isodoses=False)
        self.source_label = case.source_label
        self._start_live()
        return self.plan_scene

    def open_path(self, text):
        """Open what ``text`` names in the served folder: a plan folder (or its plan.json) or a .mrb bundle."""
        path = self.served.resolve(text, what="open")
        if path.is_dir() or path.name == "plan.json":
            return self.open_inputs(self.read_plan_folder(path))
        if path.suffix.lower() == ".mrb":
            return self.open_mrb(path)
        raise InputError(f"'{text}': choose a plan folder (with plan.json) or a .mrb scene bundle; a CT and a "
                         "segmentation are opened together under 'CT + segmentation'")

    def open_case(self, ct_text, seg_text):
        """Open a CT and a segmentation given as paths in the served folder.

        The intra-operative CT registered on the intra-op page is refused as the plan's CT: the plan
        would be made in its scanner coordinates, not the planning CT's frame (go back to "No
        registration" first to plan on it deliberately)."""
        ct = self.served.resolve(ct_text, what="CT image")
        if self.registration is not None and ct.resolve() == Path(self.registration_ct).resolve():
            raise InputError(f"{ct.name} is the intra-operative CT registered to the planning CT: it cannot be the plan's "
                             "CT, the plan would be made in its scanner coordinates and not lie on the patient as "
                             "registered. Open the planning CT (or choose \"No registration\" first to plan on this CT "
                             "in its own coordinates)")
        seg = self.served.resolve(seg_text, what="segmentation")
        return self.open_inputs(self.read_case(ct, seg))

    def check_mrb(self, path):
        """Load ``path`` into a scratch scene to check it is a readable bundle holding a plan; returns its summary."""
        from ..mrml.scene import SlicerSceneContext
        scratch = SlicerSceneContext.create()
        try:
            try:
                scratch.load_mrb(path)
            except SeedPlanError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"{Path(path).name}: not a readable scene bundle ({exc})") from exc
            node = scratch.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
            if node is None:
                raise InputError(f"{Path(path).name}: the scene holds no SeedImplantPlanner plan "
                                 "(no parameter node of the module)")
            ps = PlanScene(scratch, node)
            if ps.params.get_node("ctVolume") is None and ps.params.get_node("seedsNode") is None:
                raise InputError(f"{Path(path).name}: the plan in this scene has neither a CT nor seeds")
            from ..mrml.intraop_registration import plan_ct_problem
            problem = plan_ct_problem(ps.params.get_node("ctVolume"))
            if problem:
                raise InputError(f"{Path(path).name}: the plan's CT in this scene: {problem} (in the module's Inputs), "
                                 "then save the scene again")
            return {"seeds": len(ps.seeds()[0]), "needles": len(ps.params.get_node_list("needleNodes"))}
        finally:
            scratch.close()

    def open_mrb(self, path):
        """Open a scene bundle saved by this planner, the command line or the Slicer module.

        An intra-operative review the scene holds comes back as it was left (:meth:`restore_intraop`):
        the intra-operative CT and its registration (result, options), the needles in place and the
        deviation table."""
        from ..evaluation.goals import load_goals
        path = Path(path)
        if not zipfile_ok(path):
            raise InputError(f"{path.name}: not a scene bundle (a .mrb is a zip archive)")
        self.check_mrb(path)
        self._clear_scene()
        self.ctx.load_mrb(path, clear=False)
        node = self.ctx.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        ps = PlanScene(self.ctx, node)
        ps.model_dirs = self.model_dirs
        preset = ps.params.get("goalPreset") or self.default_goal_preset  # bundles from the command line name none
        if preset:
            ps.set_goals(load_goals(preset))
            ps.params.set("goalPreset", preset)
        self.plan_scene = ps
        self.source_label = self.served.relative(path) if self.served.root in path.resolve().parents else path.name
        seeds, _ = ps.seeds()
        if len(seeds):
            dose_node = ps.params.get_node("doseVolume")
            geometry = volumes.geometry_from_volume(dose_node) if dose_node is not None else None
            ps.compute_dose(geometry)
        plan_note = self.restore_plan_record()
        self.open_note = "; ".join(t for t in (plan_note, self.restore_intraop()) if t)
        self._start_live()
        return ps

    def restore_plan_record(self):
        """Rebuild the plan the opened scene records (:meth:`PlanScene.restore_plan`: the plan as shown, and the plan
        being implanted after a re-plan) with its structures from the scene's segmentation, so re-planning and the
        intra-operative chain continue; returns the page's note (the problem when no plan was rebuilt)."""
        from ..mrml.plan_record import scene_segmentation
        ps = self.plan_scene
        state = ps.restore_plan()
        self.plan_record = state
        if state.plan is None:
            return state.problem
        try:
            segmentation = scene_segmentation(ps)
        except InputError as exc:
            ps.plan = ps.original_plan = None
            state.problem = f"{exc}: the plan is not rebuilt"
            state.plan = state.original = None
            return state.problem
        self.plan = state.plan
        self.case_segmentation = segmentation
        self.restored_original = state.original
        return state.summary()

    # -- uploads -----------------------------------------------------------------------------------
    def store_upload(self, name, content: bytes) -> Path:
        """Write an uploaded file into this session's private upload folder (never into the served folder)."""
        if not isinstance(content, (bytes, bytearray)) or not content:
            raise InputError(f"upload '{name}': the file is empty")
        if self._upload_dir is None:
            self._upload_dir = Path(tempfile.mkdtemp(prefix="seedplan-web-uploads-"))
            self._upload_cleanup = weakref.finalize(self, shutil.rmtree, str(self._upload_dir), ignore_errors=True)
        target = self._upload_dir / f"{time.monotonic_ns()}" / safe_file_name(name)
        target.parent.mkdir(parents=True)
        target.write_bytes(bytes(content))
        return target

    def open_uploads(self, files):
        """Open uploaded files: one .mrb, or a CT and a segmentation (``files``: [(name, bytes)])."""
        paths = [self.store_upload(n, c) for n, c in files]
        try:
            return self._open_uploaded(paths)
        except SeedPlanError as exc:
            text = str(exc)
            for p in paths:  # name the uploaded file, not this session's private copy of it
                text = text.replace(str(p), p.name).replace(str(p.parent), "upload")
            raise type(exc)(text) from exc

    def _open_uploaded(self, paths):
        if len(paths) == 1 and paths[0].suffix.lower() == ".mrb":
            return self.open_mrb(paths[0])
        if len(paths) == 2:
            segs = [p for p in paths if p.name.lower().endswith(".seg.nrrd") or p.suffix.lower() == ".dcm"]
            if len(segs) != 1:
                raise InputError("upload a CT and a segmentation (the segmentation as .seg.nrrd or an RT Structure "
                                 "Set .dcm), or one .mrb")
            ct = [p for p in paths if p is not segs[0]][0]
            return self.open_inputs(self.read_case(ct, segs[0]))
        raise InputError(f"upload one .mrb, or a CT and a segmentation together (got {len(paths)} files)")

    # -- panels: inputs, source, prescription, dose ---------------------------------------------------
    def require_plan(self) -> PlanScene:
        if self.plan_scene is None:
            raise InputError("open a plan, a scene bundle or a CT + segmentation first")
        return self.plan_scene

    def segment_names(self):
        ps = self.plan_scene
        seg = ps.params.get_node("segmentation") if ps else None
        if seg is None:
            return []
        s = seg.GetSegmentation()
        return [s.GetSegment(i).GetName() for i in segmentations.segment_ids(seg)]

    def roles(self):
        """(target name, organ names, forbidden names) of the plan."""
        ps = self.plan_scene
        if ps is None or ps.params.get_node("segmentation") is None:
            return "", [], []
        seg = ps.params.get_node("segmentation").GetSegmentation()

        def name(sid):
            s = seg.GetSegment(sid)
            return s.GetName() if s is not None else sid
        t = ps.params.get("targetSegmentId")
        return (name(t) if t else "", [name(i) for i in ps.params.get_string_list("organSegmentIds")],
                [name(i) for i in ps.params.get_string_list("forbiddenSegmentIds")])

    def set_roles(self, target, organs=(), forbidden=()):
        ps = self.require_plan()
        if not target:
            raise InputError("choose the target segment")
        organs = [o for o in organs if o != target]
        ps.set_roles(target, organs, [f for f in forbidden if f != target])
        self._refresh_if_dose()

    def _show_plan_targets(self, plan):
        """A plan with several targets (``plan.targets``): every target in the scene with its own Rx and strength
        (True, outputs refreshed), else False.

        The plan file gives each target's strength at implant in U; the scene keeps strengths in
        the plan's unit (``strengthUnit``), so they are scaled by the first target's entered value
        per U (the unit conversion and decay are linear in the strength).
        """
        rows = [t for t in (plan.targets or []) if isinstance(t, dict) and t.get("name") and t.get("prescription_Gy")]
        if len(rows) < 2:
            return False
        ps = self.plan_scene
        per_U = None
        if rows[0].get("strength_U"):
            per_U = float(ps.params.get("strengthValue")) / float(rows[0]["strength_U"])
        from ..planning.targets import spec_from_plan_row
        # each target with its own prescription, strength, template direction and goals as the plan file holds them
        ps.set_targets([spec_from_plan_row(t, None if k == 0 or per_U is None or t.get("strength_U") is None
                                           else round(float(t["strength_U"]) * per_U, 6))
                        for k, t in enumerate(rows)])
        if ps.dose_grid is not None:
            ps.refresh_outputs()
        return True

    def targets(self):
        """The plan's targets [{name, prescription_Gy, strength, direction, goals}] (first = the plan's target; [] without one)."""
        ps = self.plan_scene
        if ps is None:
            return []
        return [{"name": t["name"], "prescription_Gy": t["prescription_Gy"], "strength": t["strength"],
                 "direction": t["direction"], "goals": t["goals"]} for t in ps.targets()]

    def other_targets_text(self):
        """The targets after the first as the module's "Other targets" field shows them (``NAME:rx=Gy,strength=S,...; ...``)."""
        from ..mrml.plan_scene import format_target_list
        ps = self.plan_scene
        return format_target_list(ps.targets()[1:]) if ps is not None else ""

    def set_other_targets(self, text):
        """Further targets of the implant from ``NAME:Rx[:strength]; ...`` (the module's field), each against its own Rx.

        The plan's target (Inputs panel) stays first with the plan's prescription and strength; an
        empty text leaves one target. Metrics, DVH and isodoses follow when there is a dose.
        Unknown segments and a target given twice are refused by name (:meth:`PlanScene.set_targets`).
        """
        from ..mrml.plan_scene import parse_target_list
        ps = self.require_plan()
        extras = parse_target_list(text, ps.params.get("strengthUnit"))
        first = ps.targets()[:1]
        if not first:
            if extras:
                raise InputError("choose the target (Inputs panel) before giving other targets")
            return []
        ps.set_targets([(first[0]["segment_id"], first[0]["prescription_Gy"], None)] + extras)
        self._refresh_if_dose()
        return self.targets()

    def set_prescription(self, prescription_Gy):
        ps = self.require_plan()
        try:
            rx = float(prescription_Gy)
        except (TypeError, ValueError):
            raise InputError(f"prescription: not a number: {prescription_Gy!r}") from None
        ps.set_prescription(rx)
        self._refresh_if_dose()

    def set_source(self, model, value, unit, reference_date="", implant_date=""):
        """Seed model and strength (U or mCi) with optional dates; checked by converting to U."""
        from ..physics.sources import get_model
        from ..physics.strength import strength_at
        ps = self.require_plan()
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"seed strength: not a number: {value!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise InputError(f"seed strength must be positive, got {value!r}")
        m = get_model(model, self.model_dirs)
        strength_at(m, v, unit, reference_date or None, implant_date or None)  # raises on a bad unit or date
        for k, val in (("seedModel", model), ("strengthValue", v), ("strengthUnit", unit),
                       ("referenceDate", reference_date or ""), ("implantDate", implant_date or "")):
            ps.params.set(k, val)

    def set_goal_preset(self, preset):
        from ..evaluation.goals import load_goals
        ps = self.require_plan()
        ps.set_goals(load_goals(preset) if preset else None)
        ps.params.set("goalPreset", preset or "")
        self._refresh_if_dose()

    def set_isodose_levels(self, text):
        """Isodose levels in % of the prescription ("50, 100, 150"); redraws the isodose lines."""
        ps = self.require_plan()
        levels = parse_levels(text)
        if not levels:
            raise InputError("isodose levels: give at least one level in % of the prescription")
        ps.params.set("isodoseLevelsPercent", ", ".join(f"{v:g}" for v in levels))
        if self.has_dose():
            ps.refresh_outputs(evaluation=False)
        return levels

    def has_dose(self) -> bool:
        ps = self.plan_scene
        return ps is not None and (ps.dose_grid is not None or ps.params.get_node("doseVolume") is not None)

    def _refresh_if_dose(self):
        ps = self.plan_scene
        if ps is not None and ps.dose_grid is not None:
            ps.refresh_outputs()

    #: CTs up to this many voxels get the dose on their own grid (every organ's DVH whole, fast live
    #: evaluation); larger ones get a box around the target (doseMarginMm) at doseGridSpacingMm.
    WHOLE_CT_DOSE_MAX_VOXELS = 4_000_000

    def _default_dose_geometry(self, ct_geometry=None):
        """The dose grid: the CT's own grid when it is small enough, else the plan scene's target box."""
        if ct_geometry is None and self.plan_scene is not None:
            ct = self.plan_scene.ct_node()
            ct_geometry = volumes.geometry_from_volume(ct) if ct is not None else None
        if ct_geometry is not None and int(np.prod(ct_geometry.size)) <= self.WHOLE_CT_DOSE_MAX_VOXELS:
            return ct_geometry
        return None  # PlanScene.dose_geometry(): target box + margin

    def compute_dose(self, spacing_mm=None):
        """Compute the dose: on the CT grid (small CTs) or, with ``spacing_mm`` or a large CT, a target box."""
        ps = self.require_plan()
        geometry = None
        if spacing_mm:
            ps.params.set("doseGridSpacingMm", float(spacing_mm))
        else:
            geometry = self._default_dose_geometry()
        ps.compute_dose(geometry)
        self._start_live()

    def load_seeds_uniformly(self, spacing_mm=None):
        ps = self.require_plan()
        ps.load_seeds_uniformly(spacing_mm)
        self._start_live()

    # -- seeds and needles ---------------------------------------------------------------------------
    def seed_rows(self):
        """Rows for the seeds table: index, needle, position (RAS mm), strength (U), model."""
        ps = self.plan_scene
        if ps is None:
            return []
        seeds, numbers = ps.seeds()
        return [{"index": i + 1, "needle": int(numbers[i]) if len(numbers) else 0,
                 "r": round(float(p[0]), 1), "a": round(float(p[1]), 1), "s": round(float(p[2]), 1),
                 "sk_U": round(float(seeds.strengths_U[i]), 4), "model": seeds.models[i]}
                for i, p in enumerate(seeds.positions)]

    def move_seed(self, index, position=None, delta=None):
        """Move seed ``index`` (0-based) to ``position`` or by ``delta`` (RAS mm), as a drag in a view does."""
        ps = self.require_plan()
        node = ps.params.get_node("seedsNode")
        if node is None or not 0 <= int(index) < node.GetNumberOfControlPoints():
            n = 0 if node is None else node.GetNumberOfControlPoints()
            raise InputError(f"no seed number {int(index) + 1} (the plan has {n} seeds)")
        p = np.array(node.GetNthControlPointPosition(int(index)), float)
        new = np.asarray(position if position is not None else p + np.asarray(delta, float), float).reshape(3)
        if not np.all(np.isfinite(new)):
            raise InputError(f"seed position is not finite: {new.tolist()}")
        node.SetNthControlPointPosition(int(index), *new)
        return new

    #: A free-hand needle shorter than this (entry to tip, mm) is refused: two clicks on one spot.
    MIN_NEEDLE_MM = 5.0

    def add_needle(self, entry, tip):
        """A free-hand needle from ``entry`` to ``tip`` (RAS mm) as a new needle node; returns its number."""
        from ..mrml.markups import NEEDLE_NUMBER_ATTRIBUTE
        ps = self.require_plan()
        entry, tip = np.asarray(entry, float).reshape(3), np.asarray(tip, float).reshape(3)
        if not (np.all(np.isfinite(entry)) and np.all(np.isfinite(tip))):
            raise InputError("needle end points are not finite")
        length = float(np.linalg.norm(tip - entry))
        if length < self.MIN_NEEDLE_MM:
            raise InputError(f"needle entry and tip are {length:.1f} mm apart: click the entry, then a tip at least "
                             f"{self.MIN_NEEDLE_MM:g} mm away")
        ps.stop_live_updates()
        node = ps.add_needle_node()
        node.AddControlPoint(entry.tolist(), "entry")
        node.AddControlPoint(tip.tolist(), "tip")
        self._start_live()
        return int(node.GetAttribute(NEEDLE_NUMBER_ATTRIBUTE))

    def needle_rows(self):
        """Needle table rows (number, entry, tip, depth, angle) from the needle nodes."""
        from ..planning.needles import needle_table
        ps = self.plan_scene
        if ps is None:
            return []
        try:
            return needle_table(ps.needles(skip_incomplete=True))
        except SeedPlanError:
            return []

    def loading_rows(self):
        """Needle loading table (seeds and spacers from the tip) of the current seeds."""
        plan = self.current_plan()
        return plan.loading_rows() if plan is not None else []

    # -- outputs ---------------------------------------------------------------------------------------
    def dvh(self):
        """{'dose_Gy': [...], 'curves': {name: [...]}, 'colors': {name: (r,g,b)}} from the DVH table node."""
        ps = self.plan_scene
        node = ps.params.get_node("dvhTable") if ps else None
        if node is None:
            return {"dose_Gy": [], "curves": {}, "colors": {}}
        cols = tables.table_columns(node)
        dose = [float(v) for v in cols.pop("Dose (Gy)", [])]
        curves = {k[:-len(" V (%)")]: [float(v) for v in vals] for k, vals in cols.items() if k.endswith(" V (%)")}
        colors = {}
        chart = ps.params.get_node("dvhChart")
        if chart is not None:
            for i in range(chart.GetNumberOfPlotSeriesNodes()):
                s = chart.GetNthPlotSeriesNode(i)
                colors[s.GetYColumnName()[:-len(" V (%)")]] = tuple(s.GetColor())
        return {"dose_Gy": dose, "curves": curves, "colors": colors}

    def metric_rows(self):
        """Rows of the metrics table node (Structure, Metric, Value, Unit, Goal, Pass)."""
        ps = self.plan_scene
        node = ps.params.get_node("metricsTable") if ps else None
        if node is None:
            return []
        cols = tables.table_columns(node)
        n = len(cols.get("Metric", []))
        return [{c: str(cols[c][i]) for c in tables.METRIC_COLUMNS} for i in range(n)]

    def summary(self):
        """Short facts for the page header: source, seeds, activity, prescription, goals failed."""
        ps = self.plan_scene
        if ps is None:
            return {}
        s = ps.seed_summary() if ps.params.get_node("seedsNode") is not None else {"count": 0, "total_U": 0.0}
        return {"source": self.source_label, "seeds": s["count"], "total_U": round(s["total_U"], 3),
                "total_mCi": None if s.get("total_mCi") is None else round(s["total_mCi"], 3),
                "prescription_Gy": ps.params.get("prescriptionDoseGy"),
                "failed_goals": ps.last_update.get("failed_goals"), "needles": len(ps.params.get_node_list("needleNodes"))}

    def report_html(self) -> bytes:
        """The plan report (HTML, pictures inlined) of the current dose and evaluation."""
        ps = self.require_plan()
        if not self.has_dose():
            raise InputError("compute the dose before writing a report")
        with tempfile.TemporaryDirectory(prefix="seedplan-web-report-") as tmp:
            path = Path(tmp) / "report.html"
            ps.write_report(path)
            return path.read_bytes()

    def close(self):
        """Stop a running job and the live updates; remove the uploads folder (also removed at interpreter exit)."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.job.wait(10)
        if self.plan_scene is not None:
            self.plan_scene.stop_live_updates()
        if self._upload_cleanup is not None:
            self._upload_cleanup()


def json_safe(value):
    """``value`` with numpy scalars and non-finite floats made JSON-safe (for the page's state)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)),
                      parse_constant=lambda c: None)
