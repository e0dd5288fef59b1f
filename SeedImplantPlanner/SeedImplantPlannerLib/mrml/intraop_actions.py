"""The Intra-op panel's logic, without Qt: needles in place and implanted seeds as markups, re-plan.

Used by the module's Intra-op panel (SeedImplantPlanner.py) on the application's scene and by the
tests on a slicer-core scene. Steps, each callable again after the user drags markups:

1. :meth:`IntraopSession.find_needles` (needle finder + matching to the plan) or
   :meth:`IntraopSession.load_needles` (a needle table, names as in the plan): the needles in
   place become unlocked lines ``Found <name>``;
2. :meth:`IntraopSession.find_seeds`: the seeds already implanted on the intra-op CT become the
   fiducial node ``Implanted seeds (found)`` (objects on a needle in place rejected);
3. :meth:`IntraopSession.replan`: :func:`planning.intraop.run_intraop` with the needles and seeds
   as the markups now show them; the plan scene then shows the re-plan (needles, seeds, dose) and
   the deviation and options tables and the plan-vs-now DVH are added (replacing earlier ones).

When the patient moved since the planning CT, :meth:`IntraopSession.register` (rigid registration to
the planning CT, :func:`imaging.registration.register_ct`) or :meth:`IntraopSession.load_transform`
(a ``.tfm`` / ``.json`` from ``seedplan register`` or Slicer) puts the intra-operative CT under a
linear transform node (:mod:`mrml.intraop_registration`), so it lies on the planning CT in the
views. Every step reads the CT in world coordinates (its grid re-labelled by the transform, no
resampling): the needles and seeds found, the deviations and the re-plan are in the plan's frame,
as ``seedplan intraop --register`` computes them. A needle table loaded while a registration is
set is taken in the intra-operative CT's own frame (as ``find-needles`` writes it) and mapped; when
the registration changes, the found needles and seeds (with the user's corrections) move with the
CT. A failed or refused registration changes nothing in the scene.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..core.errors import InputError
from . import intraop_registration as _reg
from .intraop_scene import IMPLANTED_SEED_COLOR, add_intraop_nodes
from .intraop_state import NEEDLE_NAME_ATTRIBUTE, needles_of_nodes, read_intraop_state, show_found_needles  # noqa: F401
from .markups import fiducial_node_to_seeds, seeds_to_fiducial_node
from .nodes import ROLE_ATTRIBUTE
from .volumes import geometry_from_volume, volume_array

INTRAOP_ROLES = ("NeedleDeviations", "ReplanOptions", "DVHCompare", "DVHCompareChart")


class IntraopSession:
    """Intra-operative review on a :class:`plan_scene.PlanScene` that holds the plan being implanted."""

    def __init__(self, plan_scene):
        self.ps = plan_scene
        self.scene = plan_scene.scene
        self.result = None
        self._original = None

    # -- inputs --------------------------------------------------------------------------------
    def plan(self):
        """The plan being implanted (the original one, also after a re-plan)."""
        if self._original is None:
            if self.ps.plan is None:
                state = self.ps.restore_plan()      # an opened scene: the plan it records (plan_record)
                if state.plan is None:
                    raise InputError("plan the implant first: the intra-operative review compares with a plan ("
                                     + state.problem + ")")
            self._original = self.ps.original_plan or self.ps.plan
        return self._original

    def _collect(self, role, cls):
        col = self.scene.GetNodesByClass(cls)
        out = []
        for i in range(col.GetNumberOfItems()):
            n = col.GetItemAsObject(i)
            if n.GetAttribute(ROLE_ATTRIBUTE) == role:
                out.append(n)
        return out

    def needle_nodes(self):
        """The ``Found <name>`` line nodes."""
        return self._collect("FoundNeedle", "vtkMRMLMarkupsLineNode")

    def seeds_node(self):
        """The ``Implanted seeds (found)`` fiducial node, or None."""
        nodes = self._collect("ImplantedSeeds", "vtkMRMLMarkupsFiducialNode")
        return nodes[0] if nodes else None

    def set_needles(self, needles):
        """Show ``needles`` (Needle objects, plan names) as unlocked lines; replaces earlier ones."""
        return show_found_needles(self.scene, needles, locked=False)

    def load_needles(self, path, ct_node=None):
        """Read a needle table (CSV/JSON, names as in the plan) and show it as lines; returns the nodes.

        With ``ct_node`` under a registration the table is taken in that CT's own frame (as
        ``seedplan find-needles`` writes it) and mapped into the plan's frame, as ``seedplan intraop
        --needles ... --transform`` does."""
        from ..planning.needles import read_needles
        needles = read_needles(path)
        names = {n.name for n in self.plan().needles}
        unknown = [n.name for n in needles if n.name not in names]
        if len(unknown) == len(needles):
            raise InputError(f"{path}: none of its needle names ({', '.join(unknown[:5])}) is a needle of the plan")
        if ct_node is not None:
            reg = _reg.registration_of(ct_node)
            if reg is not None:       # the table is in the intra-op CT's frame (find-needles output): into the plan's
                needles = [n.moved(reg) for n in needles]
        return self.set_needles(needles)

    def find_needles(self, ct_node, progress=None):
        """Find the needles on the intra-op CT, match them to the plan, show them as lines; returns (nodes, matching)."""
        from ..planning.intraop import check_frames, find_needles_in_place
        ct, geometry = self.ct(ct_node)
        plan = self.plan()
        check_frames(geometry, plan)
        needles, matching, _ = find_needles_in_place(ct, geometry, plan, self.segmentation(), progress=progress)
        return self.set_needles(needles), matching

    def needles(self):
        """Needles in place as the lines now show them (after the user's corrections)."""
        return [replace(n, number=k) for k, n in enumerate(needles_of_nodes(self.needle_nodes()), start=1)]

    @staticmethod
    def ct(ct_node):
        """(array, geometry) of the intra-operative CT node, the geometry in world coordinates: under a
        registration transform its grid re-labelled in the plan's frame (no resampling)."""
        if ct_node is None:
            raise InputError("choose the intra-operative CT")
        return volume_array(ct_node), _reg.world_geometry(ct_node)

    def restore(self):
        """The review an opened scene holds (intra-op CT, registration and its record, needles and seeds found,
        deviation table): :func:`mrml.intraop_state.read_intraop_state`; nothing in the scene changes."""
        return read_intraop_state(self.scene, self.ps.params.get_node("ctVolume"))

    def restore_plan(self):
        """Rebuild the plan (and, after a re-plan, the plan being implanted) the opened scene records
        (:meth:`plan_scene.PlanScene.restore_plan`), so the steps continue; returns the
        :class:`plan_record.PlanRecordState` (its ``problem`` says why no plan was rebuilt)."""
        state = self.ps.restore_plan()
        if state.plan is not None:
            self._original = None
            self.result = None
        return state

    # -- registration to the planning CT -------------------------------------------------------------
    def planning_ct_node(self, planning_ct_node=None):
        """The planning CT: ``planning_ct_node`` or the plan's CT in the scene."""
        node = planning_ct_node or self.ps.ct_node()
        if node is None:
            raise InputError("no planning CT: choose the planning CT (the plan's CT is not in the scene)")
        return node

    def registration_node(self, ct_node):
        """The registration transform node ``ct_node`` lies under (None when it lies in its scanner frame)."""
        parent = ct_node.GetParentTransformNode() if ct_node is not None else None
        if parent is not None and parent.GetAttribute(_reg.ROLE_ATTRIBUTE) == _reg.REGISTRATION_ROLE:
            return parent
        return None

    def registration(self, ct_node):
        """The registration the CT's world coordinates come from (:func:`mrml.intraop_registration.registration_of`)."""
        return _reg.registration_of(ct_node) if ct_node is not None else None

    def register(self, ct_node, planning_ct_node=None, progress=None, **options):
        """Register the intra-operative CT (as acquired) rigidly to the planning CT and put it under the result.

        ``options`` go to :func:`imaging.registration.register_ct` (``translation_only``, ``metric``, ...).
        Raises RegistrationError (no overlap, no body, refused by the quality check), InputError or
        CancelledError before anything in the scene changes. Returns the RegistrationResult.
        """
        from ..imaging.registration import register_ct
        if ct_node is None:
            raise InputError("choose the intra-operative CT")
        planning = self.planning_ct_node(planning_ct_node)
        if planning is ct_node:
            raise InputError(f"'{ct_node.GetName()}' is chosen as both the intra-operative and the planning CT")
        fixed = (volume_array(planning), _reg.world_geometry(planning))
        moving = (volume_array(ct_node), geometry_from_volume(ct_node))       # as acquired: its scanner frame
        result = register_ct(fixed, moving, progress=progress,
                             names=(f"planning CT '{planning.GetName()}'",
                                    f"intra-operative CT '{ct_node.GetName()}'"), **options)
        self._set_registration(ct_node, result)
        return result

    def load_transform(self, ct_node, path):
        """Use a registration from a file (``seedplan register`` .tfm/.json, or a rigid transform saved in Slicer:
        planning CT -> intra-op CT, LPS); returns the RegistrationResult (its shift given at the target's centre)."""
        from ..imaging.registration import read_transform
        if ct_node is None:
            raise InputError("choose the intra-operative CT")
        result = read_transform(path)
        if not np.any(result.centre_ras):
            result = replace(result, centre_ras=tuple(self._target_centre()))
        self._set_registration(ct_node, result)
        return result

    def clear_registration(self, ct_node):
        """Put the CT back in its scanner coordinates (the transform node stays in the scene); the found markups
        move with it."""
        if ct_node is None:
            raise InputError("choose the intra-operative CT")
        if ct_node.GetParentTransformNode() is None:
            return
        _reg.map_markups(self.needle_nodes() + [self.seeds_node()], _reg.clear_registration(ct_node))

    def _set_registration(self, ct_node, result):
        node, change = _reg.set_registration(self.scene, ct_node, result, self.registration_node(ct_node))
        # found on this CT (and corrected by the user on it): they move with it
        _reg.map_markups(self.needle_nodes() + [self.seeds_node()], change)
        return node

    def _target_centre(self):
        """Centre (RAS) of the plan's target, where a transform read from a file states the patient's shift."""
        try:
            return self.segmentation().centre_ras(self.plan().structures["target"])
        except (InputError, KeyError, ValueError, AttributeError):
            return np.zeros(3)

    def segmentation(self):
        """The plan's structures as a :class:`segio.Segmentation` on the planning grid."""
        from ..imaging.segio import Segmentation
        from .segmentations import segment_id_by_name
        plan = self.plan()
        seg_node = self.ps.params.get_node("segmentation")
        if seg_node is None:
            raise InputError("no segmentation chosen")
        st = plan.structures
        names = [st.get("target")] + list(st.get("oars") or []) + list(st.get("forbidden") or []) + [st.get("body")]
        ids = [segment_id_by_name(seg_node, n) for n in dict.fromkeys(n for n in names if n)]
        geometry = self.ps.reference_geometry()
        return Segmentation.from_masks(geometry, self.ps.masks_on(geometry, ids))

    # -- steps ---------------------------------------------------------------------------------
    def find_seeds(self, ct_node, expected=None, progress=None):
        """Find the seeds already implanted on the CT; shows them as a fiducial node and returns it."""
        from ..evaluation.structures import Structure, expand_margin, mask_on_grid
        from ..planning.intraop import SEED_ROI_MARGIN_MM, find_implanted_seeds
        ct, geometry = self.ct(ct_node)
        plan = self.plan()
        seg = self.segmentation()
        t = seg.find(plan.structures["target"])
        roi = mask_on_grid(Structure(t.name, expand_margin(seg.mask(t.segment_id), seg.geometry, SEED_ROI_MARGIN_MM,
                                                           name=t.name), seg.geometry), geometry)
        found, keep, _, warnings = find_implanted_seeds(ct, geometry, roi, self.needles(), expected or None, progress)
        if found is None:
            raise InputError(warnings[0])
        seeds = found.to_seedset(plan.strength_U, plan.model_id)
        from ..physics.seeds import SeedSet
        seeds = SeedSet(seeds.positions[keep], seeds.axes[keep], seeds.strengths_U[keep],
                        [seeds.models[i] for i in keep])
        old = self.seeds_node()
        if old is not None:
            self.scene.RemoveNode(old)
        node = seeds_to_fiducial_node(self.scene, seeds, name="Implanted seeds (found)", color=IMPLANTED_SEED_COLOR)
        node.SetAttribute(ROLE_ATTRIBUTE, "ImplantedSeeds")
        return node

    def replan(self, ct_node, allow_new_needles=False, time_limit_s=4.0, progress=None):
        """Re-plan the rest with the needles and implanted seeds as the markups show them; returns the result."""
        from ..planning.intraop import run_intraop
        ct, geometry = self.ct(ct_node)
        plan = self.plan()
        needles = self.needles()
        if not needles:
            raise InputError("no needles in place: load the needle table (or the needle finder's output) first")
        node = self.seeds_node()
        implanted = fiducial_node_to_seeds(node)[0] if node is not None else None
        result = run_intraop(ct, geometry, plan, self.segmentation(), needles, implanted_seeds=implanted,
                             allow_new_needles=allow_new_needles, time_limit_s=time_limit_s, progress=progress,
                             registration=self.registration(ct_node))
        self.result = result
        for role in INTRAOP_ROLES:
            for cls in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode"):
                for n in self._collect(role, cls):
                    self.scene.RemoveNode(n)
        add_intraop_nodes(self.scene, result, markups=False)
        new = result.plan
        self.ps.plan = new
        self.ps.original_plan = plan
        self.ps.set_needles(new.used_needles())
        self.ps.set_seeds(new.seeds, new.seed_needle)
        self.ps.record_plan()
        self.ps.use_dose(result.dose_Gy, result.dose_geometry)
        return result
