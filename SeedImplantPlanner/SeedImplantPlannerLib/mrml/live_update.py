"""Live updates of a plan scene: edits of seeds and needles in the views update the dose and outputs.

Moving, adding or removing a seed in a view, or moving a needle (its seeds move with it, keeping
their distance from the tip), updates the dose with :class:`dose.DoseGrid` incremental edits, then
the dose volume, isodose models, DVH table and metrics table. Events are coalesced through a
``schedule(callback)`` function: the default runs the update at once; the Slicer module passes a
zero-delay Qt timer so a drag updates once per event-loop turn.
"""

from __future__ import annotations

import logging

import numpy as np

from ..core.errors import SeedPlanError
from ..physics.seeds import SeedSet
from .markups import NEEDLE_NUMBER_ATTRIBUTE, axis_to_orientation, parse_seed_description


class LiveUpdates:
    """Observers of the seeds and needle nodes of a :class:`plan_scene.PlanScene` (mixed into it).

    Uses the plan's ``params``, ``scene``, ``dose_grid``, ``schedule``, ``last_update``,
    ``_observations``, ``_needle_state``, ``_busy``, ``_dirty_seeds``, ``seeds()`` and
    ``refresh_outputs()``.
    """

    def start_live_updates(self, schedule=None):
        """Observe the seeds and needle nodes; edits in the views update dose and outputs."""
        self.stop_live_updates()
        self.schedule = schedule
        seeds = self.params.get_node("seedsNode")
        if seeds is not None:
            for ev in (seeds.PointModifiedEvent, seeds.PointAddedEvent, seeds.PointRemovedEvent):
                self._observations.append((seeds, seeds.AddObserver(ev, self._on_seeds_event)))
        for node in self.params.get_node_list("needleNodes"):
            self._observations.append((node, node.AddObserver(node.PointModifiedEvent, self._on_needle_event)))
        self._observations.append((self.scene, self.scene.AddObserver(self.scene.StartCloseEvent,
                                                                      lambda *a: self.stop_live_updates())))
        # a save started elsewhere (Slicer's File > Save) keeps the plan's record too (plan_record)
        self._observations.append((self.scene, self.scene.AddObserver(self.scene.StartSaveEvent,
                                                                      lambda *a: self._record_on_save())))
        self._remember_needles()

    def _record_on_save(self):
        if getattr(self, "plan", None) is not None:
            self.record_plan()

    def stop_live_updates(self):
        """Remove the observers."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []

    def _remember_needles(self):
        self._needle_state = {}
        for node in self.params.get_node_list("needleNodes"):
            if node.GetNumberOfControlPoints() >= 2:
                self._needle_state[node.GetID()] = (np.array(node.GetNthControlPointPosition(0)),
                                                    np.array(node.GetNthControlPointPosition(
                                                        node.GetNumberOfControlPoints() - 1)))

    def _on_seeds_event(self, caller, event):
        if self._busy:
            self._dirty_seeds = True
            return
        self._request_update()

    def _request_update(self):
        self._dirty_seeds = True
        if self.schedule is None:
            self._update_from_event()
        else:
            self.schedule(self._update_from_event)

    def _update_from_event(self):
        """update_from_seeds for an observer: bad input (a half-edited seed) is logged, not raised into VTK."""
        try:
            return self.update_from_seeds()
        except SeedPlanError as exc:
            self.last_update = {"error": str(exc)}
            logging.getLogger(__name__).warning("plan not updated: %s", exc)
            return None

    def _on_needle_event(self, caller, event):
        if self._busy:
            return
        self.move_seeds_with_needle(caller)

    def move_seeds_with_needle(self, needle_node):
        """Move the seeds of ``needle_node`` with it (same distance from the tip, axis along it)."""
        old = self._needle_state.get(needle_node.GetID())
        n = needle_node.GetNumberOfControlPoints()
        if old is None or n < 2:
            self._remember_needles()
            return
        new_entry = np.array(needle_node.GetNthControlPointPosition(0))
        new_tip = np.array(needle_node.GetNthControlPointPosition(n - 1))
        old_entry, old_tip = old
        if np.allclose(new_entry, old_entry) and np.allclose(new_tip, old_tip):
            return
        number = int(needle_node.GetAttribute(NEEDLE_NUMBER_ATTRIBUTE) or 0)
        seeds_node = self.params.get_node("seedsNode")
        self._needle_state[needle_node.GetID()] = (new_entry, new_tip)
        if seeds_node is None or number <= 0:
            return
        rot = _rotation_between(old_tip - old_entry, new_tip - new_entry)
        self._busy = True
        try:
            import slicer  # noqa: PLC0415
            with slicer.util.NodeModify(seeds_node):
                for i in range(seeds_node.GetNumberOfControlPoints()):
                    fields = parse_seed_description(seeds_node.GetNthControlPointDescription(i))
                    if int(fields.get("needle", "0") or 0) != number:
                        continue
                    p = np.array(seeds_node.GetNthControlPointPosition(i))
                    seeds_node.SetNthControlPointPosition(i, *(new_tip + rot @ (p - old_tip)))
                    m = np.array(seeds_node.GetNthControlPointOrientationMatrix(i)).reshape(3, 3)
                    seeds_node.SetNthControlPointOrientationMatrix(i, (rot @ m).ravel().tolist())
        finally:
            self._busy = False
        self._request_update()

    def update_from_seeds(self):
        """Bring the dose up to date with the seeds node (incremental where possible), then the outputs."""
        if not self._dirty_seeds:
            return None
        self._dirty_seeds = False
        if self.dose_grid is None:
            return None
        self._busy = True
        try:
            seeds, _ = self.seeds()
            kind = self.sync_dose_grid(seeds)
        finally:
            self._busy = False
        if kind is None:
            return None
        return self.refresh_outputs()

    def sync_dose_grid(self, seeds: SeedSet):
        """Apply the difference between the dose grid's seeds and ``seeds`` (move/add/remove, else full).

        Returns what was done ("moved 1", "added 2", "removed 1", "full") or None when nothing changed.
        """
        import time
        t = time.perf_counter()
        grid = self.dose_grid
        old = grid.seeds
        n_old, n_new = len(old), len(seeds)
        same_source = (n_old == n_new and np.allclose(old.strengths_U, seeds.strengths_U)
                       and list(old.models) == list(seeds.models))
        kind = "full"
        if same_source:
            moved = np.flatnonzero(np.any(np.abs(old.positions - seeds.positions) > 1e-9, axis=1)
                                   | np.any(np.abs(old.axes - seeds.axes) > 1e-9, axis=1))
            if len(moved) == 0:
                return None
            if len(moved) <= max(8, n_new // 10):
                for i in moved:
                    grid.move_seed(int(i), seeds.positions[i], seeds.axes[i])
                kind = f"moved {len(moved)}"
        elif n_new > n_old and _prefix_equal(old, seeds, n_old):
            for i in range(n_old, n_new):
                grid.add_seed(seeds.positions[i], seeds.axes[i], seeds.strengths_U[i], seeds.models[i])
            kind = f"added {n_new - n_old}"
        elif n_new == n_old - 1:
            gone = _removed_index(old, seeds)
            if gone is not None:
                grid.remove_seed(gone)
                kind = "removed 1"
        if kind == "full":
            if n_new:
                grid.set_seeds(seeds)
            else:
                for i in range(n_old - 1, -1, -1):
                    grid.remove_seed(i)
        self.last_update = {"dose_edit": kind, "dose_s": time.perf_counter() - t}
        return kind


def _prefix_equal(a: SeedSet, b: SeedSet, n):
    return (np.allclose(a.positions[:n], b.positions[:n]) and np.allclose(a.axes[:n], b.axes[:n])
            and np.allclose(a.strengths_U[:n], b.strengths_U[:n]) and list(a.models[:n]) == list(b.models[:n]))


def _removed_index(old: SeedSet, new: SeedSet):
    """Index of the one seed of ``old`` missing from ``new`` (order kept), or None."""
    n = len(new)
    for i in range(len(old)):
        if i == n or not np.allclose(old.positions[i], new.positions[i]):
            keep = np.ones(len(old), bool)
            keep[i] = False
            rest = old.subset(keep)
            if np.allclose(rest.positions, new.positions) and np.allclose(rest.strengths_U, new.strengths_U):
                return i
            return None
    return None


def _rotation_between(a, b):
    """Rotation matrix turning unit vector ``a`` onto unit vector ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-12:
        if c > 0:
            return np.eye(3)
        axis = axis_to_orientation(a)[:, 0]
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1.0 / (1.0 + c))
