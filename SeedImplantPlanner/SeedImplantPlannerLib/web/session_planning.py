"""The web planner's inverse planning: a worker thread on numpy data, applied to the scene afterwards.

:class:`PlanJob` runs a function in a daemon thread with progress and cancel; :class:`SessionPlanning`
(a mixin of :class:`web.session.PlannerSession`) builds the plan with the seeds as they are in the
scene, starts the inverse plan on numpy copies of the masks (the thread never touches MRML) and puts
a finished job's result into the scene on the caller's thread.
"""

from __future__ import annotations

import threading
import time

from ..core.errors import CancelledError, InputError, SeedPlanError
from ..mrml import segmentations

class PlanJob:
    """An inverse plan running in a worker thread: progress, cancel, result or error.

    The thread only sees numpy data (masks, geometry) and the library's planner and dose engine; it
    never touches the MRML scene.
    """

    def __init__(self, fn, label="inverse plan", kind="plan"):
        self.label = label
        self.kind = kind
        self.fraction = 0.0
        self.text = "starting"
        self.result = None
        self.error = None
        self.cancelled = False
        self._cancel = threading.Event()
        self._fn = fn
        self.started = time.monotonic()
        self.finished = None
        self._thread = threading.Thread(target=self._run, name="seedplan-web-plan", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _progress(self, fraction, text=""):
        self.fraction = float(fraction)
        self.text = str(text)
        return not self._cancel.is_set()

    def _run(self):
        try:
            self.result = self._fn(self._progress)
        except CancelledError as exc:
            self.cancelled = True
            self.error = str(exc)
        except SeedPlanError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported in the page, the server keeps running
            self.error = f"{exc.__class__.__name__}: {exc}"
        finally:
            self.finished = time.monotonic()

    def cancel(self):
        """Ask the job to stop at its next progress report."""
        self._cancel.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout=None):
        self._thread.join(timeout)
        return not self._thread.is_alive()


class SessionPlanning:
    """The plan behind the scene, the inverse plan job and applying finished jobs."""

    # -- the plan object behind the scene ---------------------------------------------------------------
    def current_plan(self):
        """The plan (planning.planfile.Plan) with the seeds as they are in the scene now (None without a plan):
        :func:`mrml.plan_record.plan_as_shown`, the form a saved scene records."""
        from ..mrml.plan_record import plan_as_shown
        if self.plan is None or self.plan_scene is None:
            return None
        seeds, numbers = self.plan_scene.seeds()
        return plan_as_shown(self.plan, seeds, numbers, self.plan_scene.params.get("prescriptionDoseGy"))

    # -- inverse planning off the event loop --------------------------------------------------------------
    def start_plan(self, needle_mode="template", direction="P", template_spacing_mm=10.0, time_limit_s=8.0,
                   method="anneal", implanted=False):
        """Start the inverse plan in a worker thread; returns the :class:`PlanJob` (apply it with :meth:`apply_job`)."""
        from ..planning.pipeline import plan_from_masks, parse_direction
        if needle_mode not in ("template", "fan", "freehand"):
            raise InputError(f"needle mode {needle_mode!r}: choose template, fan or freehand")
        from ..physics.dose import DoseGrid
        from ..mrml.planning_actions import optimizer_goals
        ps = self.require_plan()
        if self.job is not None and self.job.running:
            raise InputError("an inverse plan is already running")
        target = ps.params.get("targetSegmentId")
        if not target:
            raise InputError("choose the target segment (Inputs panel) before planning")
        organs = ps.params.get_string_list("organSegmentIds")
        forbidden = ps.params.get_string_list("forbiddenSegmentIds")
        others = ps.params.get_string_list("extraTargetSegmentIds")  # the other targets of the implant
        geometry = ps.reference_geometry()
        body_id = self._body_segment_id()
        extra = [body_id] if body_id and body_id not in [target] + others + organs + forbidden else []
        # numpy copies: the thread never sees MRML
        masks = ps.masks_on(geometry, [target] + others + organs + forbidden + extra)
        seg = ps.params.get_node("segmentation").GetSegmentation()
        names = [seg.GetSegment(i).GetName() for i in [target] + organs + forbidden]
        body_name = seg.GetSegment(body_id).GetName() if body_id else None
        target_name, organ_names, forbidden_names = names[0], names[1:1 + len(organs)], names[1 + len(organs):]
        # several targets: each with its own prescription, strength, direction and goals, as the module plans them
        specs = ps.target_specs(organ_names) if others else None
        rx = float(ps.params.get("prescriptionDoseGy"))
        goals, oars = None, organ_names
        if ps.goals is not None:
            goals, oars = optimizer_goals(ps.goals, rx, target_name, organ_names)
        needles = None
        if needle_mode == "freehand":
            needles = ps.needles(skip_incomplete=True)
            if not needles:
                raise InputError("free-hand planning needs needles: place needle lines first")
        implanted_needles = self.implanted_needles if implanted else None
        if implanted and not implanted_needles:
            raise InputError("load the implanted needles (Intra-op panel) before re-planning with them")
        fixed = None
        if implanted and self.plan is not None and self.plan.seed_fixed.any():
            fixed = self.plan.seeds.subset(self.plan.seed_fixed)
        kwargs = dict(targets=specs, oars=oars, forbidden=forbidden_names, body=body_name, model_id=ps.params.get("seedModel"),
                      strength=ps.params.get("strengthValue"), strength_unit=ps.params.get("strengthUnit"),
                      reference_date=ps.params.get("referenceDate") or None,
                      implant_date=ps.params.get("implantDate") or None, prescription_Gy=rx, goals=goals,
                      needle_mode=needle_mode, direction=parse_direction(direction),
                      # the page's direction is the way the needles travel, for a fan too: it enters from the other side
                      approach=-parse_direction(direction) if needle_mode == "fan" else None,
                      template_spacing_mm=float(template_spacing_mm), needles=needles, method=method,
                      time_limit_s=float(time_limit_s), fixed_seeds=fixed, implanted_needles=implanted_needles,
                      allow_new_needles=True)
        dose_geometry = self._default_dose_geometry() or ps.dose_geometry()
        engine = ps.params.get("doseEngine")
        model_dirs = self.model_dirs

        def work(progress):
            from ..core import progress as _p
            plan = plan_from_masks(geometry, masks, None if specs else target_name,
                                   progress=_p.scaled(progress, 0.0, 0.85), **kwargs)
            plan.structures.setdefault("target", target_name)
            grid = DoseGrid(dose_geometry, plan.seeds, method=engine, model_dirs=model_dirs,
                            progress=_p.scaled(progress, 0.85, 1.0))
            _p.report(progress, 1.0, "done")
            return plan, grid

        self.job = PlanJob(work).start()
        return self.job

    #: Segment names taken as the body outline (needle entries on the skin) when the plan names none.
    BODY_NAMES = ("body", "external", "skin", "body outline")

    def _body_segment_id(self):
        """The body outline segment: the one the opened plan names, else one called Body/External/Skin."""
        seg_node = self.plan_scene.params.get_node("segmentation")
        if seg_node is None:
            return None
        wanted = [str(self.plan.structures.get("body")).lower()] if self.plan is not None and \
            self.plan.structures.get("body") else []
        wanted += list(self.BODY_NAMES)
        seg = seg_node.GetSegmentation()
        by_name = {seg.GetSegment(i).GetName().lower(): i for i in segmentations.segment_ids(seg_node)}
        for name in wanted:
            if name in by_name:
                return by_name[name]
        return None

    def apply_job(self):
        """Put a finished job's plan into the scene (on the caller's thread); returns a message for the page."""
        job = self.job
        if job is None or job.running:
            return None
        self.job = None
        if job.cancelled:
            return f"{job.label} cancelled: the plan is unchanged"
        if job.error:
            raise InputError(f"{job.label} failed: {job.error}")
        if job.kind == "needles":
            return self._apply_found_needles(*job.result)
        if job.kind == "intraop":
            return self._apply_intraop(*job.result)
        if job.kind == "register":
            return self._apply_registration(*job.result)
        plan, grid = job.result
        ps = self.require_plan()
        ps.stop_live_updates()
        used = ps.show_plan(plan, locked=False)
        ps.dose_grid = grid
        ps.refresh_outputs()
        self.plan = plan
        self._start_live()
        unmet = plan.optimizer.get("unmet") or []
        return (f"plan ready: {len(plan.seeds)} seeds on {len(used)} needles in {job.finished - job.started:.1f} s"
                + (f"; goals not met: {', '.join(map(str, unmet))}" if unmet else ""))
