"""The web planner's intra-operative page: registration, implanted needles, the needle finder, the chain.

:class:`SessionIntraop` is a mixin of :class:`web.session.PlannerSession`: it registers the
intra-operative CT to the plan's CT (worker thread, :class:`web.session_planning.PlanJob`, or a
transform file), reads a needles CSV or finds the needles on the CT, runs
:func:`planning.intraop.run_intraop`, shows the results in the scene and gives the deviation rows
of the page's table.

Registration (as ``seedplan intraop --register`` / ``--transform``): the planning CT is the plan's
CT in the session's scene; the result belongs to the CT it was made for (its path). While it is
set, that CT is shown under a linear transform node (the module's layout,
:mod:`mrml.intraop_registration`: aligned on the planning CT in the views, saved in a ``.mrb``), the
needle finder and the chain run on its grid re-labelled in the plan's frame (no resampling), a
needles CSV is taken in that CT's own frame (as ``find-needles`` writes it) and mapped, and the
chain's result records the registration. Using another CT while a registration is set is refused.
A registration that fails or is refused changes nothing. When the registration changes (a new one,
or back to scanner coordinates) what was found on the CT moves with it, as in the module
(:meth:`SessionIntraop._follow_ct`).

Opening a ``.mrb`` brings back the review it holds (:meth:`SessionIntraop.restore_intraop`, on
:func:`mrml.intraop_state.read_intraop_state`, the reader the module uses too): the intra-operative
CT under its registration (result box, options), the needles in place and the deviation table. The
CT is named by its file when that lies in the served folder; otherwise the page works on the CT the
scene holds (named ``scene: <node name>`` in the CT field).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..mrml import volumes
from .session_planning import PlanJob


class SessionIntraop:
    """Implanted needles against the plan, on the intra-operative page."""

    # -- registration to the planning CT ------------------------------------------------------------
    def start_register(self, ct_text, **options):
        """Register the intra-operative CT (in the served folder) rigidly to the plan's CT (worker thread).

        ``options`` go to :func:`imaging.registration.register_ct`. Apply the job with :meth:`apply_job`;
        a refused registration (no overlap, no body, quality check) is its error, nothing changes.
        """
        from ..imaging.registration import register_ct
        from ..mrml.intraop_registration import world_geometry
        ps = self.require_plan()
        if self.job is not None and self.job.running:
            raise InputError("a computation is running: wait for it or cancel it")
        planning = ps.params.get_node("ctVolume")
        if planning is None:
            raise InputError("the plan has no planning CT in the scene: open the plan folder (or CT + segmentation) "
                             "the plan was made on")
        path, ct, geometry = self._intraop_input(ct_text)
        fixed = (volumes.volume_array(planning), world_geometry(planning))   # numpy copies: the thread sees no MRML
        names = (f"planning CT ({self.source_label or planning.GetName()})", f"{path.name} (intra-operative CT)")

        def work(progress):
            return path, ct, geometry, register_ct(fixed, (ct, geometry), progress=progress, names=names, **options)

        self.job = PlanJob(work, label="registration", kind="register").start()
        return self.job

    @staticmethod
    def register_options(bone_metric=False, translation_only=False):
        """The page's registration options as :func:`imaging.registration.register_ct` keywords (``seedplan register
        --metric bone`` / ``--translation-only``)."""
        return {"metric": "bone" if bone_metric else "mattes", "translation_only": bool(translation_only)}

    def load_registration(self, transform_text, ct_text):
        """Use a transform file (in the served folder: ``seedplan register`` .tfm/.json, or saved in Slicer) for the
        intra-operative CT ``ct_text``; returns the page's message."""
        from ..imaging.registration import read_transform
        self.require_plan()
        if self.job is not None and self.job.running:
            raise InputError("a computation is running: wait for it or cancel it")
        tpath = self.served.resolve(transform_text, what="transform file")
        result = read_transform(tpath)
        path, ct, geometry = self._intraop_input(ct_text)
        if not np.any(result.centre_ras):
            from dataclasses import replace
            result = replace(result, centre_ras=tuple(self._target_centre()))
        return self._apply_registration(path, ct, geometry, result, source=tpath.name)

    def clear_registration(self):
        """Back to the scanner coordinates: the intra-operative CT is taken as it was acquired."""
        from ..mrml.intraop_registration import clear_registration
        if self.registration is None:
            return "no registration set"
        note = self._follow_ct(np.linalg.inv(self.registration.matrix_ras), self.registration_ct)
        name = self.registration_ct.name
        if self.intraop_ct_node is not None and self.ctx.scene.IsNodePresent(self.intraop_ct_node):
            clear_registration(self.intraop_ct_node)
        self.registration = None
        self.registration_ct = None
        return f"{name}: back to its scanner coordinates (no registration)" + note

    # -- an opened scene's review -------------------------------------------------------------------------
    SCENE_CT_PREFIX = "scene: "

    def restore_intraop(self):
        """Take up the intra-operative review the opened scene holds (:func:`mrml.intraop_state.read_intraop_state`):
        its intra-operative CT (shown, under its registration), the registration as the page's result (its record;
        a missing, unreadable or edited record is said, the transform kept), the needles in place (as found, in
        the plan's frame) and the deviation table; returns the note for the page ("" when the scene holds none).

        The CT is named by its file (``SeedImplantPlanner.SourceFile``) when that lies in the served folder, else
        by ``scene: <node name>``: the page then registers, finds needles and runs the chain on the voxels the
        scene holds."""
        from ..mrml.intraop_state import read_intraop_state
        ps = self.require_plan()
        state = read_intraop_state(self.ctx.scene, ps.params.get_node("ctVolume"))
        self.restored = state
        if state.empty:
            return "; ".join(state.notes)
        key = None
        if state.ct_node is not None:
            self.intraop_ct_node = state.ct_node
            key = self._restored_ct_key(state)
            if state.registration is not None:
                self.registration = state.registration
                self.registration_ct = key
                self.registration_node = state.registration_node
        if state.needles or state.seeds_node is not None:
            self.found_ct = key         # what was found on it moves with it when its registration changes
        if state.needles:
            self.implanted_needles = list(state.needles)
            for node in state.needle_nodes:       # as the page draws them: locked, seen in the slice views
                node.SetLocked(True)
                node.GetDisplayNode().SetSliceProjection(True)
                node.GetDisplayNode().SetSliceProjectionOpacity(0.8)
        self.scene_deviation_rows = list(state.deviation_rows)
        return state.summary()

    def _restored_ct_key(self, state):
        """The page's name (a Path) for the restored intra-operative CT: its file when it is in the served folder,
        else a name for the voxels the scene holds (kept in ``scene_ct``)."""
        source = state.source_file
        if source:
            try:
                path = self.served.resolve(source, what="intra-operative CT")
            except InputError:
                path = None
            if path is not None and path.is_file():
                return path
        label = self.SCENE_CT_PREFIX + state.ct_node.GetName()
        key = Path("/") / "<scene>" / label      # never a file: compared by name with the CT field
        self.scene_ct = {"key": key, "label": label, "array": np.array(volumes.volume_array(state.ct_node)),
                         "geometry": volumes.geometry_from_volume(state.ct_node), "source": source}
        return key

    def intraop_ct_text(self):
        """What the page's CT field shows for the intra-operative CT in the scene ("" without one)."""
        sc = self.scene_ct
        for key in (self.registration_ct, self.found_ct, sc["key"] if sc is not None else None):
            if key is None:
                continue
            if sc is not None and Path(key) == sc["key"]:
                return sc["label"]
            return self.served.relative(key) if self.served.root in Path(key).resolve().parents else str(key)
        return ""

    def _intraop_input(self, ct_text):
        """(key Path, array, scanner geometry) of the intra-operative CT named on the page: a file in the served
        folder, or ``scene: <name>`` for the CT an opened scene holds."""
        sc = self.scene_ct
        if sc is not None and str(ct_text or "").strip() == sc["label"]:
            return sc["key"], sc["array"], sc["geometry"]
        path = self.served.resolve(ct_text, what="intra-operative CT")
        ct, geometry = self._read_ct(path)
        return path, ct, geometry

    def registration_report(self):
        """The registration shown on the page (RegistrationResult.report() + the CT's name), or None."""
        if self.registration is None:
            return None
        from ..mrml.intraop_registration import panel_report
        out = panel_report(self.registration)
        out["ct"] = self.served.relative(self.registration_ct) if self.served.root in self.registration_ct.parents \
            else self.registration_ct.name
        return out

    def _registration_for(self, path):
        """The registration of the CT at ``path`` (None without one); another CT while one is set is refused."""
        if self.registration is None:
            return None
        if Path(path).resolve() != self.registration_ct.resolve():
            raise InputError(f"the registration set is of {self.registration_ct.name}, not {Path(path).name}: register "
                             f"{Path(path).name} (or go back to scanner coordinates) first")
        return self.registration

    def _apply_registration(self, path, ct, geometry, result, source=None):
        """Set ``result`` as the registration of the CT at ``path``: the CT shown under the transform node."""
        old = self.registration.matrix_ras if self.registration is not None else np.eye(4)
        if self.registration is not None and Path(path).resolve() != self.registration_ct.resolve():
            old = np.eye(4)
        note = self._follow_ct(result.matrix_ras @ np.linalg.inv(old), path)
        self.registration = result
        self.registration_ct = Path(path)
        self._show_intraop_ct(path, ct, geometry)
        rep = self.registration_report()
        text = f"{Path(path).name} registered to the planning CT" + (f" with {source}" if source else "") + ": " + \
            "; ".join(rep["lines"])
        return text + note

    def _follow_ct(self, change, path):
        """What was found on the intra-operative CT at ``path`` moves with it when its registration changes
        (``change``: 4 x 4, old world RAS -> new), as the module's markups do; returns the page's note ("" when
        nothing moved). What was found on another CT stays where it is.

        - needles read from a CSV: moved;
        - needles found by the needle finder: moved and matched to the plan's needles again (the deviations
          are those in the new frame; the finder is not run again);
        - the chain's result: its needles in place move and are kept for the next run (the seeds already
          implanted are found again on the CT, in the new frame); its re-plan and deviations belong to the
          earlier frame, so the plan being implanted is shown again."""
        from ..imaging.registration import RegistrationResult
        from ..mrml.intraop_registration import map_markups
        change = np.asarray(change, float)
        seeds = self._implanted_seed_nodes()
        if np.allclose(change, np.eye(4), atol=1e-12) or not (self.implanted_needles or self.needle_matching
                                                              or self.intraop_result is not None or seeds):
            return ""
        move = RegistrationResult(change)
        if self.found_ct is not None and Path(self.found_ct).resolve() != Path(path).resolve():
            return ""
        map_markups(seeds, change)     # the implanted seeds found on this CT (an opened scene's, the chain's)
        if not (self.implanted_needles or self.needle_matching or self.intraop_result is not None):
            return f"; the {sum(n.GetNumberOfControlPoints() for n in seeds)} implanted seeds found moved with the CT"
        if self.intraop_result is None and self.restored_original is not None and self.implanted_needles:
            # an opened scene's re-plan (its plan being implanted recorded beside it): as the chain's own below
            original, self.restored_original = self.restored_original, None
            self.needle_matching = None
            self.implanted_needles = [n.moved(move) for n in self.implanted_needles]
            self._show_original(original)
            self._show_implanted(self.implanted_needles)
            return (f"; the re-plan was made in the earlier frame: the plan being implanted is shown again and its "
                    f"{len(self.implanted_needles)} needles in place moved with the CT: run the chain again")
        if self.intraop_result is not None:
            result = self.intraop_result
            self.intraop_result = None
            self.needle_matching = None
            self.implanted_needles = [n.moved(move) for n in result.needles_in_place]
            self._show_original(result.original)
            self._show_implanted(self.implanted_needles)
            return (f"; the re-plan was made in the earlier frame: the plan being implanted is shown again and its "
                    f"{len(self.implanted_needles)} needles in place moved with the CT: run the chain again")
        if self.needle_matching is not None:
            from dataclasses import replace
            from ..planning.needle_match import match_needles
            found = [replace(m.found, tip=move.map_points(m.found.tip), entry=move.map_points(m.found.entry),
                             direction=move.map_directions(m.found.direction),
                             tip_direction=move.map_directions(m.found.tip_direction),
                             points=move.map_points(m.found.points))
                     for m in self.needle_matching.rows_ if m.found is not None]
            self.needle_matching = match_needles(found, self.require_plan().needles(skip_incomplete=True))
            self.implanted_needles = self.needle_matching.needles()
            self._show_implanted(self.implanted_needles)
            return f"; the {len(found)} needles found before moved with the CT: {self.needle_matching.summary_line()}"
        self.implanted_needles = [n.moved(move) for n in self.implanted_needles]
        self._show_implanted(self.implanted_needles)
        return f"; the {len(self.implanted_needles)} needles read before moved with the CT"

    def _show_original(self, plan):
        """Show ``plan`` (the plan being implanted, after a re-plan made in another frame) with its dose."""
        ps = self.require_plan()
        ps.stop_live_updates()
        ps.original_plan = None
        ps.show_plan(plan, locked=False)
        self.plan = plan
        ps.compute_dose(self._default_dose_geometry())
        self._start_live()

    def _target_centre(self):
        """Centre (RAS) of the plan's target, where a transform read from a file states the patient's shift."""
        seg = self.case_segmentation
        target = (self.plan.structures.get("target") if self.plan is not None else None) or self.roles()[0]
        try:
            return seg.centre_ras(target)
        except (AttributeError, KeyError, ValueError, InputError):
            return np.zeros(3)

    def _show_intraop_ct(self, path, ct, geometry):
        """The intra-operative CT in the scene (replacing an earlier one); under the registration's transform node when
        the registration is of this CT."""
        from ..mrml.intraop_registration import set_registration
        if self.intraop_ct_node is not None and self.ctx.scene.IsNodePresent(self.intraop_ct_node):
            self.ctx.scene.RemoveNode(self.intraop_ct_node)
        from ..mrml.intraop_scene import INTRAOP_CT_ROLE, SOURCE_FILE_ATTRIBUTE
        from ..mrml.nodes import ROLE_ATTRIBUTE
        sc = self.scene_ct if self.scene_ct is not None and Path(path) == self.scene_ct["key"] else None
        name = sc["label"][len(self.SCENE_CT_PREFIX):] if sc is not None else f"Intra-op CT {Path(path).name}"
        self.intraop_ct_node = volumes.add_scalar_volume(self.ctx.scene, ct, geometry, name)
        volumes.set_ct_display(self.intraop_ct_node)
        self.intraop_ct_node.SetAttribute(ROLE_ATTRIBUTE, INTRAOP_CT_ROLE)    # the layout a re-opened scene is read by
        source = (sc["source"] if sc is not None else str(Path(path).resolve()))
        if source:
            self.intraop_ct_node.SetAttribute(SOURCE_FILE_ATTRIBUTE, source)
        reg = self._registration_for(path) if self.registration is not None and \
            Path(path).resolve() == self.registration_ct.resolve() else None
        if reg is not None:
            node = self.registration_node if self.registration_node is not None and \
                self.ctx.scene.IsNodePresent(self.registration_node) else None
            self.registration_node, _ = set_registration(self.ctx.scene, self.intraop_ct_node, reg, node)
        return self.intraop_ct_node

    # -- needles ---------------------------------------------------------------------------------------
    def load_implanted_needles(self, text_or_path):
        """Read the needles found on the intra-operative CT (needles CSV, as ``seedplan plan --implanted-needles``).

        With a registration set the file is taken in the registered CT's own frame (as ``seedplan
        find-needles`` writes it) and mapped into the plan's frame, as ``seedplan intraop --needles
        --transform`` does."""
        from ..planning.needles import read_needles
        path = self.served.resolve(text_or_path, what="implanted needles") if not isinstance(text_or_path, Path) \
            else text_or_path
        needles = read_needles(path)
        if not needles:
            raise InputError(f"{path.name}: no needles in the file")
        if self.registration is not None:
            needles = [n.moved(self.registration) for n in needles]
        self.implanted_needles = needles
        self.needle_matching = None
        self.intraop_result = None
        self.found_ct = None
        self._show_implanted(needles)
        return needles

    def _show_implanted(self, needles):
        """Implanted needles as locked orange line nodes beside the planned ones, in the scene layout the module and
        ``seedplan intraop`` use (role FoundNeedle, ``Found <name>``: :func:`mrml.intraop_state.show_found_needles`);
        the deviation tables of an earlier chain go (they belong to other needles)."""
        from ..mrml.intraop_state import show_found_needles
        show_found_needles(self.ctx.scene, needles, locked=True, slice_projection=True)
        if self.intraop_result is None:
            self._drop_intraop_tables()

    def _implanted_seed_nodes(self):
        """The implanted seeds found (fiducial nodes, role ImplantedSeeds) in the scene."""
        from ..mrml.intraop_state import IMPLANTED_SEEDS_ROLE
        from ..mrml.nodes import ROLE_ATTRIBUTE
        scene = self.ctx.scene
        cls = "vtkMRMLMarkupsFiducialNode"
        return [n for n in (scene.GetNthNodeByClass(i, cls) for i in range(scene.GetNumberOfNodesByClass(cls)))
                if n is not None and n.GetAttribute(ROLE_ATTRIBUTE) == IMPLANTED_SEEDS_ROLE]

    def _drop_intraop_tables(self):
        """Remove the deviation, options and plan-vs-now DVH nodes of a chain (and an opened scene's rows)."""
        from ..mrml.intraop_actions import INTRAOP_ROLES
        from ..mrml.nodes import ROLE_ATTRIBUTE
        scene = self.ctx.scene
        for cls in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode"):
            for node in [scene.GetNthNodeByClass(i, cls) for i in range(scene.GetNumberOfNodesByClass(cls))]:
                if node is not None and node.GetAttribute(ROLE_ATTRIBUTE) in INTRAOP_ROLES:
                    scene.RemoveNode(node)
        self.scene_deviation_rows = []

    def start_find_needles(self, ct_text):
        """Find the needles on an intra-operative CT (worker thread) and match them to the plan's needles.

        Uses :func:`imaging.needlefinder.find_needles` with the planned directions as hints and
        :func:`planning.needle_match.match_needles`; apply the result with :meth:`apply_job`.
        """
        from ..imaging.needlefinder import find_needles
        from ..planning.needle_match import match_needles
        ps = self.require_plan()
        if self.job is not None and self.job.running:
            raise InputError("a computation is running: wait for it or cancel it")
        path, ct, geometry = self._intraop_input(ct_text)
        reg = self._registration_for(path)
        plan_geometry = reg.moved_geometry(geometry) if reg is not None else geometry   # found needles: plan frame
        planned = ps.needles(skip_incomplete=True)
        directions = [n.direction for n in planned] or None

        def work(progress):
            found = find_needles(ct, plan_geometry, expected_directions=directions, progress=progress)
            if not found:
                reasons = sorted({r["reason"].split(" (")[0] for r in found.rejected})
                raise InputError(f"{path.name}: no needle found ({'; '.join(reasons) or 'no candidate'})")
            return path, ct, geometry, match_needles(found, planned)

        self.job = PlanJob(work, label="needle finder", kind="needles").start()
        return self.job

    def start_intraop(self, ct_text, time_limit_s=4.0, allow_new_needles=False):
        """The intra-operative chain of :mod:`planning.intraop` (worker thread) on a CT in the served folder.

        Needles: those read from a needles CSV on this page if any, else found on the CT
        (:func:`planning.intraop.find_needles_in_place`); then :func:`planning.intraop.run_intraop`
        (seeds already implanted found on the CT, re-plan of the remaining seeds on the needles in
        place, options tried, advice). Needs a plan opened from a plan folder, planned here, or rebuilt from an
        opened .mrb (its plan record); after a re-plan it compares with the plan being implanted.
        """
        from ..core import progress as _p
        from ..physics.dose import DoseGrid
        from ..planning.intraop import check_frames, find_needles_in_place, run_intraop
        ps = self.require_plan()
        if self.plan is None or self.case_segmentation is None:
            raise InputError("the intra-operative chain needs the plan and its segmentation: open a plan folder, a .mrb "
                             "that records its plan, or plan here from a CT + segmentation")
        if self.job is not None and self.job.running:
            raise InputError("a computation is running: wait for it or cancel it")
        path, ct, geometry = self._intraop_input(ct_text)
        reg = self._registration_for(path)
        plan_geometry = reg.moved_geometry(geometry) if reg is not None else geometry   # the chain: plan frame
        # compared with the plan being implanted: the original when the scene shows a re-plan (a chain run before, or an
        # opened scene's), as the module's Intra-op panel does; else the plan with the seeds as they are now
        plan = ps.original_plan if ps.original_plan is not None else self.current_plan()
        check_frames(plan_geometry, plan)
        seg = self.case_segmentation
        given = list(self.implanted_needles) if self.implanted_needles and self.needle_matching is None else None
        engine = ps.params.get("doseEngine")
        model_dirs = self.model_dirs

        def work(progress):
            needles = given
            if needles is None:
                needles, _, found = find_needles_in_place(ct, plan_geometry, plan, seg,
                                                          progress=_p.scaled(progress, 0.0, 0.3))
                if not needles:
                    raise InputError(f"{path.name}: no needle of the plan found on the CT ({len(found)} found, "
                                     f"{len(found.rejected)} object(s) rejected): read a needles CSV instead")
            result = run_intraop(ct, plan_geometry, plan, seg, needles, allow_new_needles=allow_new_needles,
                                 time_limit_s=float(time_limit_s), progress=_p.scaled(progress, 0.3, 0.9),
                                 registration=reg)
            grid = DoseGrid(result.dose_geometry, result.plan.seeds, method=engine, model_dirs=model_dirs,
                            progress=_p.scaled(progress, 0.9, 1.0))
            return path, ct, geometry, result, grid

        self.job = PlanJob(work, label="intra-operative chain", kind="intraop").start()
        return self.job

    def _apply_intraop(self, path, ct, geometry, result, grid):
        """Show the intra-operative CT, the needles in place, the re-plan (its dose live) and the deviations."""
        ps = self.require_plan()
        ps.stop_live_updates()
        name = Path(path).name
        self._show_intraop_ct(path, ct, geometry)
        new = result.plan
        ps.show_plan(new, locked=False)
        ps.dose_grid = grid
        ps.refresh_outputs()
        self.plan = new
        ps.original_plan = result.original     # recorded beside the re-plan when the scene is saved (plan_record)
        self.restored_original = None
        # the scene layout of the module and seedplan intraop (saved with a .mrb): the implanted seeds found, the
        # deviation and options tables, the DVH plan vs now (an earlier chain's go); the needles in place below
        from ..mrml.intraop_scene import add_intraop_nodes
        self._drop_intraop_tables()
        for node in self._implanted_seed_nodes():
            self.ctx.scene.RemoveNode(node)
        add_intraop_nodes(self.ctx.scene, result, markups=True)
        self.intraop_result = result
        self.found_ct = Path(path)
        self.needle_matching = None
        self.implanted_needles = list(result.needles_in_place)
        self._start_live()
        registered = " (registered to the planning CT)" if result.registration is not None else ""
        return (f"{name}{registered}: {result.deviation_line()}; {len(result.found_seeds)} seeds already implanted; "
                f"{result.advice}")

    def _apply_found_needles(self, path, ct, geometry, matching):
        """Show the intra-operative CT and the found needles; keep the matching for the table and re-plans."""
        name = Path(path).name
        self._show_intraop_ct(path, ct, geometry)
        self.needle_matching = matching
        self.found_ct = Path(path)
        self.intraop_result = None
        self.implanted_needles = matching.needles()
        self._show_implanted(self.implanted_needles)
        return f"{name}: {matching.summary_line()}"

    def needle_deviations(self):
        """Deviation rows: the chain's deviation table (or the one an opened scene holds), else the needle finder's
        matching when an intra-operative CT was read, else from the implanted needles file
        (:meth:`file_needle_deviations`)."""
        chain_rows = self.intraop_result.needle_rows if self.intraop_result is not None else self.scene_deviation_rows
        if (self.intraop_result is not None or chain_rows) and self.needle_matching is None:
            rows = []
            for r in chain_rows:
                def val(k):
                    v = r.get(k)
                    return None if v is None or v == "" or not math.isfinite(float(v)) else round(float(v), 1)
                number = r.get("number")
                rows.append({"implanted": r.get("name"), "needle": int(float(number)) if r.get("status") == "in place"
                             and number not in (None, "") else None, "entry_mm": val("entry_mm"), "tip_mm": val("tip_mm"),
                             "angle_deg": val("angle_deg"), "note": str(r.get("status", ""))})
            return rows
        if self.needle_matching is not None:
            rows = []
            for r in self.needle_matching.rows():
                def num(k):
                    return round(float(r[k]), 1) if r.get(k) not in ("", None) else None
                rows.append({"implanted": r["name"], "needle": r["number"] if r["status"] == "matched" else None,
                             "entry_mm": num("entry_mm"), "tip_mm": num("tip_mm"), "angle_deg": num("angle_deg"),
                             "note": r["status"] + (f", depth {num('depth_mm'):+.1f} mm" if num("depth_mm") is not None
                                                    else "")})
            return rows
        return self.file_needle_deviations()

    def file_needle_deviations(self):
        """Implanted vs planned needles: each implanted needle paired with the planned one nearest to it.

        Pairs minimise the summed entry + tip distances (Hungarian assignment), so the order and
        numbering of the implanted needles file do not matter. Per pair: entry and tip distance (mm)
        and the angle between the needles (deg). An implanted needle more than 30 mm (mean of entry
        and tip distance) from every planned needle is reported unpaired.
        """
        from scipy.optimize import linear_sum_assignment
        ps = self.plan_scene
        planned = ps.needles(skip_incomplete=True) if ps is not None else []
        implanted = list(self.implanted_needles or [])
        if not implanted:
            return []
        rows = []
        pairs = {}
        if planned:
            cost = np.array([[0.5 * (np.linalg.norm(np.asarray(a.entry) - np.asarray(b.entry))
                                     + np.linalg.norm(np.asarray(a.tip) - np.asarray(b.tip))) for b in planned]
                             for a in implanted])
            for r, c in zip(*linear_sum_assignment(cost)):
                if cost[r, c] <= 30.0:
                    pairs[r] = c
        for k, n in enumerate(implanted):
            if k not in pairs:
                rows.append({"implanted": k + 1, "needle": None, "entry_mm": None, "tip_mm": None, "angle_deg": None,
                             "note": "no planned needle within 30 mm"})
                continue
            p = planned[pairs[k]]
            c = float(np.clip(np.dot(n.direction, p.direction), -1.0, 1.0))
            rows.append({"implanted": k + 1, "needle": int(p.number),
                         "entry_mm": round(float(np.linalg.norm(np.asarray(n.entry) - np.asarray(p.entry))), 1),
                         "tip_mm": round(float(np.linalg.norm(np.asarray(n.tip) - np.asarray(p.tip))), 1),
                         "angle_deg": round(math.degrees(math.acos(c)), 1), "note": ""})
        return rows
