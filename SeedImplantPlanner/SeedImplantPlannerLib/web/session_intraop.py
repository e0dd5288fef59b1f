"""The web planner's intra-operative page: implanted needles, the needle finder, the intra-operative chain.

:class:`SessionIntraop` is a mixin of :class:`web.session.PlannerSession`: it reads a needles CSV or
finds the needles on an intra-operative CT (worker thread, :class:`web.session_planning.PlanJob`),
runs :func:`planning.intraop.run_intraop`, shows the results in the scene and gives the deviation
rows of the page's table.
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

    def load_implanted_needles(self, text_or_path):
        """Read the needles found on the intra-operative CT (needles CSV, as ``seedplan plan --implanted-needles``)."""
        from ..planning.needles import read_needles
        path = self.served.resolve(text_or_path, what="implanted needles") if not isinstance(text_or_path, Path) \
            else text_or_path
        needles = read_needles(path)
        if not needles:
            raise InputError(f"{path.name}: no needles in the file")
        self.implanted_needles = needles
        self.needle_matching = None
        self.intraop_result = None
        self._show_implanted(needles)
        return needles

    IMPLANTED_ROLE = "ImplantedNeedle"

    def _show_implanted(self, needles):
        """Implanted needles as locked orange line nodes (role ImplantedNeedle), beside the planned ones."""
        from ..mrml.markups import needle_line_node
        from ..mrml.nodes import ROLE_ATTRIBUTE
        scene = self.ctx.scene
        old = [scene.GetNthNodeByClass(i, "vtkMRMLMarkupsLineNode")
               for i in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode"))]
        for node in old:
            if node is not None and node.GetAttribute(ROLE_ATTRIBUTE) == self.IMPLANTED_ROLE:
                scene.RemoveNode(node)
        for k, n in enumerate(needles, start=1):
            node = needle_line_node(scene, n.entry, n.tip, k, locked=True, color=(1.0, 0.55, 0.0))
            node.SetName(f"Implanted needle {k}")
            node.SetAttribute(ROLE_ATTRIBUTE, self.IMPLANTED_ROLE)
            node.GetDisplayNode().SetSliceProjection(True)
            node.GetDisplayNode().SetSliceProjectionOpacity(0.8)

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
        path = self.served.resolve(ct_text, what="intra-operative CT")
        ct, geometry = self._read_ct(path)
        planned = ps.needles(skip_incomplete=True)
        directions = [n.direction for n in planned] or None

        def work(progress):
            found = find_needles(ct, geometry, expected_directions=directions, progress=progress)
            if not found:
                reasons = sorted({r["reason"].split(" (")[0] for r in found.rejected})
                raise InputError(f"{path.name}: no needle found ({'; '.join(reasons) or 'no candidate'})")
            return path.name, ct, geometry, match_needles(found, planned)

        self.job = PlanJob(work, label="needle finder", kind="needles").start()
        return self.job

    def start_intraop(self, ct_text, time_limit_s=4.0, allow_new_needles=False):
        """The intra-operative chain of :mod:`planning.intraop` (worker thread) on a CT in the served folder.

        Needles: those read from a needles CSV on this page if any, else found on the CT
        (:func:`planning.intraop.find_needles_in_place`); then :func:`planning.intraop.run_intraop`
        (seeds already implanted found on the CT, re-plan of the remaining seeds on the needles in
        place, options tried, advice). Needs a plan opened from a plan folder or planned here.
        """
        from ..core import progress as _p
        from ..physics.dose import DoseGrid
        from ..planning.intraop import check_frames, find_needles_in_place, run_intraop
        ps = self.require_plan()
        if self.plan is None or self.case_segmentation is None:
            raise InputError("the intra-operative chain needs the plan file and its segmentation: open a plan folder "
                             "(or plan here from a CT + segmentation)")
        if self.job is not None and self.job.running:
            raise InputError("a computation is running: wait for it or cancel it")
        path = self.served.resolve(ct_text, what="intra-operative CT")
        ct, geometry = self._read_ct(path)
        plan = self.current_plan()
        check_frames(geometry, plan)
        seg = self.case_segmentation
        given = list(self.implanted_needles) if self.implanted_needles and self.needle_matching is None else None
        engine = ps.params.get("doseEngine")
        model_dirs = self.model_dirs

        def work(progress):
            needles = given
            if needles is None:
                needles, _, found = find_needles_in_place(ct, geometry, plan, seg, progress=_p.scaled(progress, 0.0, 0.3))
                if not needles:
                    raise InputError(f"{path.name}: no needle of the plan found on the CT ({len(found)} found, "
                                     f"{len(found.rejected)} object(s) rejected): read a needles CSV instead")
            result = run_intraop(ct, geometry, plan, seg, needles, allow_new_needles=allow_new_needles,
                                 time_limit_s=float(time_limit_s), progress=_p.scaled(progress, 0.3, 0.9))
            grid = DoseGrid(result.dose_geometry, result.plan.seeds, method=engine, model_dirs=model_dirs,
                            progress=_p.scaled(progress, 0.9, 1.0))
            return path.name, ct, geometry, result, grid

        self.job = PlanJob(work, label="intra-operative chain", kind="intraop").start()
        return self.job

    def _apply_intraop(self, name, ct, geometry, result, grid):
        """Show the intra-operative CT, the needles in place, the re-plan (its dose live) and the deviations."""
        ps = self.require_plan()
        ps.stop_live_updates()
        if self.intraop_ct_node is not None and self.ctx.scene.IsNodePresent(self.intraop_ct_node):
            self.ctx.scene.RemoveNode(self.intraop_ct_node)
        self.intraop_ct_node = volumes.add_scalar_volume(self.ctx.scene, ct, geometry, f"Intra-op CT {name}")
        volumes.set_ct_display(self.intraop_ct_node)
        new = result.plan
        ps.show_plan(new, locked=False)
        ps.dose_grid = grid
        ps.refresh_outputs()
        self.plan = new
        self.intraop_result = result
        self.needle_matching = None
        self.implanted_needles = list(result.needles_in_place)
        self._show_implanted(self.implanted_needles)
        self._start_live()
        return f"{name}: {result.deviation_line()}; {len(result.found_seeds)} seeds already implanted; {result.advice}"

    def _apply_found_needles(self, name, ct, geometry, matching):
        """Show the intra-operative CT and the found needles; keep the matching for the table and re-plans."""
        if self.intraop_ct_node is not None and self.ctx.scene.IsNodePresent(self.intraop_ct_node):
            self.ctx.scene.RemoveNode(self.intraop_ct_node)
        self.intraop_ct_node = volumes.add_scalar_volume(self.ctx.scene, ct, geometry, f"Intra-op CT {name}")
        volumes.set_ct_display(self.intraop_ct_node)
        self.needle_matching = matching
        self.intraop_result = None
        self.implanted_needles = matching.needles()
        self._show_implanted(self.implanted_needles)
        return f"{name}: {matching.summary_line()}"

    def needle_deviations(self):
        """Deviation rows: from the needle finder's matching when an intra-operative CT was read, else
        from the implanted needles file (:meth:`file_needle_deviations`)."""
        if self.intraop_result is not None and self.needle_matching is None:
            rows = []
            for r in self.intraop_result.needle_rows:
                def val(k):
                    v = r.get(k)
                    return None if v is None or v == "" else round(float(v), 1)
                rows.append({"implanted": r.get("name"), "needle": r.get("number") if r.get("status") == "in place"
                             else None, "entry_mm": val("entry_mm"), "tip_mm": val("tip_mm"),
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
