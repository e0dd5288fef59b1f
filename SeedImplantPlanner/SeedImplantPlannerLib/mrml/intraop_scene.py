"""The intra-operative scene: the re-plan with what the CT shows and how it compares with the plan.

On top of the plan scene of the re-plan (:func:`scene_io.build_plan_scene`: intra-op CT,
segmentation, re-planned needles and seeds, dose, isodoses, DVH, metrics) it holds:

- the needles in place as found, as unlocked markups lines named ``Found <name>`` (role
  ``FoundNeedle``, plan number in the needle-number attribute) the user can drag to correct;
- the seeds already implanted as found, as a markups fiducial node ``Implanted seeds (found)``
  (role ``ImplantedSeeds``);
- the deviation table (``Needle deviations``, role ``NeedleDeviations``, the re-plan's advice in the
  attribute ``SeedImplantPlanner.Advice``, whether it meets the goals in ``SeedImplantPlanner.GoalsMet``) and
  the options table
  (``Re-plan options``, role ``ReplanOptions``);
- the plan-vs-now DVH overlay: table ``DVH plan vs now`` and chart (role ``DVHCompare``) with the
  target's cumulative DVH for the original plan, the seeds already implanted and the re-plan.

When the CT was registered to the planning CT (``seedplan intraop --register`` / ``--transform``:
the result carries the registration) the scene has the layout of the module's Intra-op panel and
the web page (:mod:`.intraop_registration`): the plan's CT is the planning CT (when given), and the
intra-operative CT (role ``IntraopCT``) is kept in its own scanner coordinates under the
``IntraopRegistration`` linear transform node with the registration's record, so it lies on the
planning CT in the views and the registration can be inspected or edited (Transforms module). The
plan, the found needles and seeds, the dose and the tables are in the plan's frame, not under it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import progress as _progress
from .markups import seeds_to_fiducial_node
from .nodes import ROLE_ATTRIBUTE
from .tables import _set_table_columns, update_dvh_nodes

INTRAOP_CT_ROLE = "IntraopCT"
#: attribute of the intra-operative CT node: the file it was read from (absolute path), so a re-opened scene names it
SOURCE_FILE_ATTRIBUTE = "SeedImplantPlanner.SourceFile"
#: attribute of the deviation table: the re-plan's advice (goals met, or the option that would meet them)
ADVICE_ATTRIBUTE = "SeedImplantPlanner.Advice"
#: attribute of the deviation table: "1" when the re-plan meets the goals, "0" when not
GOALS_MET_ATTRIBUTE = "SeedImplantPlanner.GoalsMet"
FOUND_NEEDLE_COLOR = (1.0, 0.55, 0.0)
IMPLANTED_SEED_COLOR = (1.0, 0.9, 0.1)


def _table(scene, name, role, rows, columns):
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    cols = []
    for c in columns:
        vals = [r.get(c, "") for r in rows]
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in vals) and vals:
            cols.append((c, [float(v) for v in vals]))
        else:
            cols.append((c, ["" if v is None else str(v) for v in vals]))
    return _set_table_columns(node, cols)


def add_intraop_nodes(scene, result, markups=True):
    """Add the found needles and seeds (``markups``), the deviation and options tables and the DVH overlay.

    Returns the nodes added.
    """
    from ..planning.intraop import NEEDLE_DEVIATION_COLUMNS, OPTION_COLUMNS
    from .intraop_state import show_found_needles
    out = {"found_needles": show_found_needles(scene, result.needles_in_place) if markups else []}
    if markups and len(result.found_seeds):
        node = seeds_to_fiducial_node(scene, result.found_seeds, name="Implanted seeds (found)",
                                      color=IMPLANTED_SEED_COLOR)
        node.SetAttribute(ROLE_ATTRIBUTE, "ImplantedSeeds")
        out["implanted_seeds"] = node
    out["deviations"] = _table(scene, "Needle deviations", "NeedleDeviations", result.needle_rows,
                               NEEDLE_DEVIATION_COLUMNS)
    out["deviations"].SetAttribute(ADVICE_ATTRIBUTE, str(result.advice or ""))   # the re-plan's advice, read back
    out["deviations"].SetAttribute(GOALS_MET_ATTRIBUTE, "1" if result.goals_met else "0")
    out["options"] = _table(scene, "Re-plan options", "ReplanOptions", result.options, OPTION_COLUMNS)
    bins, curves = result.target_dvh_curves()
    if curves:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", "DVH plan vs now")
        table.SetAttribute(ROLE_ATTRIBUTE, "DVHCompare")
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "DVH plan vs now")
        chart.SetTitle("Target DVH: plan, implanted seeds, re-plan")
        chart.SetXAxisTitle("Dose (Gy)")
        chart.SetYAxisTitle("Volume (%)")
        chart.SetAttribute(ROLE_ATTRIBUTE, "DVHCompareChart")
        colors = dict(zip(curves, [(0.5, 0.5, 0.5), (1.0, 0.75, 0.0), (0.85, 0.1, 0.1)]))
        out["dvh_table"], out["dvh_chart"] = update_dvh_nodes(scene, bins, curves, table, chart, colors,
                                                              result.plan.prescription_Gy)
    return out


def save_intraop_scene(path, result, ct, segmentation, goals=None, pictures_dir=None, progress=None, *,
                       planning_ct=None, scanner_geometry=None, ct_name="Intra-op CT", source_file=None) -> dict:
    """Save the intra-operative scene (module doc) as a .mrb; returns {"mrb", "pictures", "nodes"}.

    ``ct``: (array, geometry) of the intra-operative CT as the chain used it (in the plan's frame).
    With ``result.registration`` set, the CT node gets ``scanner_geometry`` (its grid as acquired;
    default: ``ct``'s grid mapped back by the registration) under the registration transform node,
    and ``planning_ct`` (array, geometry), when given, becomes the plan's CT. ``source_file``: the CT's file,
    recorded on its node (:data:`SOURCE_FILE_ATTRIBUTE`) so a re-opened scene names it.
    """
    from .scene import create_scene
    from .scene_io import build_plan_scene
    plan = result.plan
    st = plan.structures
    registration = getattr(result, "registration", None)
    ctx = create_scene()
    try:
        ps = build_plan_scene(
            ctx, seeds=plan.seeds, prescription_Gy=plan.prescription_Gy,
            ct=ct if registration is None else planning_ct, segmentation=segmentation,
            target=st.get("target"), organs=[o for o in (st.get("oars") or [])],
            forbidden=list(st.get("forbidden") or []), needles=plan.used_needles(), seed_needle_numbers=plan.seed_needle,
            dose=(result.dose_Gy, result.dose_geometry), goals=goals, progress=_progress.scaled(progress, 0.0, 0.7))
        ps.plan, ps.original_plan = plan, result.original     # recorded in the scene on save (plan_record)
        nodes = add_intraop_nodes(ctx.scene, result)
        if registration is not None:
            nodes.update(add_registered_ct(ps, ct[0], scanner_geometry if scanner_geometry is not None
                                           else _scanner_geometry(ct[1], registration), registration, ct_name,
                                           source_file))
        pictures = ps.write_pictures(pictures_dir, prefix="intraop") if pictures_dir is not None else {}
        _progress.report(progress, 0.9, "saving the scene")
        mrb = ps.save(Path(path))
        _progress.report(progress, 1.0, "scene saved")
        return {"mrb": mrb, "pictures": pictures, "nodes": {k: (v.GetName() if hasattr(v, "GetName") else len(v))
                                                             for k, v in nodes.items()}}
    finally:
        ctx.close()


def _scanner_geometry(geometry, registration):
    """The grid ``registration.moved_geometry`` made ``geometry`` from: the CT as acquired."""
    from ..imaging.registration import RegistrationResult
    return RegistrationResult(registration.inverse_matrix_ras).moved_geometry(geometry)


def add_registered_ct(plan_scene, array, scanner_geometry, registration, name="Intra-op CT", source_file=None):
    """The intra-operative CT on its scanner grid under a new registration transform node holding ``registration``
    (role ``IntraopCT``, its file in :data:`SOURCE_FILE_ATTRIBUTE` when given, in the plan's study); returns
    {"intraop_ct": node, "registration": transform node}."""
    from .intraop_registration import set_registration
    from .nodes import place_in_study
    from .volumes import add_scalar_volume, set_ct_display
    scene = plan_scene.scene
    node = add_scalar_volume(scene, array, scanner_geometry, name)
    set_ct_display(node)
    node.SetAttribute(ROLE_ATTRIBUTE, INTRAOP_CT_ROLE)
    if source_file:
        node.SetAttribute(SOURCE_FILE_ATTRIBUTE, str(source_file))
    place_in_study(scene, node, plan_scene.study_item())
    transform, _ = set_registration(scene, node, registration)
    place_in_study(scene, transform, plan_scene.study_item())
    return {"intraop_ct": node, "registration": transform}
