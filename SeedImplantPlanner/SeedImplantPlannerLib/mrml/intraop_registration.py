"""The intra-operative CT's registration in the scene: a linear transform node the CT sits under.

A registration of the intra-operative (or post-implant) CT to the planning CT
(:mod:`imaging.registration`) is kept as a ``vtkMRMLLinearTransformNode`` (role
``IntraopRegistration``) whose *transform to parent* is the result's ``matrix_ras``: the
planning-from-new-CT transform in RAS. Slicer maps a node under a transform from its own
coordinates to the parent's (world) with the transform-to-parent, so the intra-operative CT put
under this node lies on the planning CT in the views, and its world coordinates are the plan's
frame. A ``.tfm`` written by ``seedplan register`` is the same transform as Slicer writes for
this node (ITK files hold the transform *from* parent, LPS; tested with Slicer's own storage
node), and the node is saved with the scene like any transform.

The registration's record (quality, warnings, the matrix it was made with) is kept as JSON in the
node attribute ``SeedImplantPlanner.Registration``; when the user edits the transform afterwards
(Transforms module), :func:`registration_of` returns the edited matrix with a warning that its
quality was not checked.

:func:`world_geometry` gives a volume's grid in world coordinates (its parent transforms applied,
no resampling: a rigid transform of a grid is a grid), which is what the finders and the re-plan
use, so whatever the views show aligned is what is searched.
"""

from __future__ import annotations

import json

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from .nodes import ROLE_ATTRIBUTE, numpy_matrix, vtk_matrix
from .volumes import geometry_from_volume

REGISTRATION_ROLE = "IntraopRegistration"
REGISTRATION_ATTRIBUTE = "SeedImplantPlanner.Registration"
REGISTRATION_NODE_NAME = "Intra-op CT registration (planning from intra-op)"


def _vtk():
    import vtk
    return vtk


def world_matrix(node) -> np.ndarray:
    """4 x 4 node-to-world matrix (RAS) of ``node``'s parent transforms (identity without one).

    Raises InputError when a parent transform is not linear (a warp cannot re-label a grid)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(f"'{node.GetName()}' lies under the non-linear transform '{parent.GetName()}': harden or "
                         "remove it (the intra-operative chain needs a rigid registration)")
    vm = _vtk().vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(vm)
    return numpy_matrix(vm)


def world_geometry(node) -> ImageGeometry:
    """The volume's grid as it lies in world coordinates (parent transforms applied; rigid only)."""
    geometry = geometry_from_volume(node)
    m = world_matrix(node)
    if np.allclose(m, np.eye(4), atol=1e-12):
        return geometry
    from ..imaging.registration import RegistrationResult
    try:
        moved = RegistrationResult(m)
    except InputError:
        raise InputError(f"'{node.GetName()}' lies under a transform that is not rigid (scaling or shear): "
                         "the intra-operative chain needs a rotation + translation") from None
    return moved.moved_geometry(geometry)


def plan_ct_problem(node):
    """Why ``node`` cannot be the plan's CT (Inputs), or None when it can.

    The plan (segments sampled on the CT's grid, needles, seeds, dose) is made in the CT's own
    coordinates. A CT under a transform is seen elsewhere in the views: the intra-operative CT under
    its registration (role ``IntraopRegistration``) lies on the planning CT only through it, so a plan
    made on it would be in the intra-operative scanner's frame and move away from the patient with
    the registration; any other non-identity (or non-linear) transform would do the same."""
    if node is None:
        return None
    parent = node.GetParentTransformNode()
    if parent is None:
        return None
    if parent.GetAttribute(ROLE_ATTRIBUTE) == REGISTRATION_ROLE:
        return (f"'{node.GetName()}' is the intra-operative CT registered to the planning CT (it lies under "
                f"'{parent.GetName()}'): it cannot be the plan's CT, the plan would be made in its scanner "
                "coordinates and move with the registration. Choose the planning CT as the plan's CT")
    if not parent.IsTransformToWorldLinear() or not np.allclose(world_matrix(node), np.eye(4), atol=1e-9):
        return (f"'{node.GetName()}' lies under the transform '{parent.GetName()}': the plan is made in the CT's own "
                "coordinates and would not lie where the views show the CT. Harden the transform (Transforms "
                "module) or choose another CT as the plan's CT")
    return None


def registration_nodes(scene):
    """The registration transform nodes (role ``IntraopRegistration``) of the scene."""
    out = []
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLLinearTransformNode")):
        n = scene.GetNthNodeByClass(i, "vtkMRMLLinearTransformNode")
        if n.GetAttribute(ROLE_ATTRIBUTE) == REGISTRATION_ROLE:
            out.append(n)
    return out


def set_registration(scene, ct_node, result, node=None):
    """Put ``ct_node`` under a registration transform node holding ``result`` (created when ``node`` is None,
    else updated); returns (transform node, change), ``change`` = the 4 x 4 that maps the CT's old world
    positions to the new ones (identity when nothing moved)."""
    before = world_matrix(ct_node)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", REGISTRATION_NODE_NAME)
        node.SetAttribute(ROLE_ATTRIBUTE, REGISTRATION_ROLE)
    node.SetMatrixTransformToParent(vtk_matrix(result.matrix_ras))
    node.SetAttribute(REGISTRATION_ATTRIBUTE, json.dumps(result.to_dict()))
    ct_node.SetAndObserveTransformNodeID(node.GetID())
    return node, world_matrix(ct_node) @ np.linalg.inv(before)


def clear_registration(ct_node):
    """Take ``ct_node`` out of its transform (back to its scanner coordinates); returns the change (4 x 4)."""
    before = world_matrix(ct_node)
    ct_node.SetAndObserveTransformNodeID(None)
    return np.linalg.inv(before)


def registration_of(ct_node):
    """The :class:`imaging.registration.RegistrationResult` the CT's world coordinates come from, or None.

    The record stored with the transform node when the node's matrix is still the one it was made
    with; otherwise (edited by hand, another transform, the record missing or unreadable) the current
    matrix with a warning saying so (:func:`registration_record`)."""
    return registration_record(ct_node)[0]


def registration_record(ct_node):
    """(RegistrationResult or None, status, problem) of the transform ``ct_node`` lies under.

    ``status``: ``"none"`` (no transform: scanner coordinates), ``"stored"`` (the record saved with the
    transform node, matrix unchanged), ``"missing"`` (a registration node without its record: set by
    hand or by another program), ``"unreadable"`` (the record is not valid JSON or not a registration),
    ``"edited"`` (the matrix was changed after the record was made, or another transform).
    ``problem`` is None for "none" and "stored", else one sentence for the user; the result then has
    the current matrix, no quality, and that sentence as a warning (nothing is dropped: the transform
    stays as the views show it). Raises InputError for a non-linear or non-rigid transform."""
    from ..imaging.registration import RegistrationResult
    m = world_matrix(ct_node)
    if np.allclose(m, np.eye(4), atol=1e-12):
        return None, "none", None
    parent = ct_node.GetParentTransformNode()
    name = parent.GetName()
    text = parent.GetAttribute(REGISTRATION_ATTRIBUTE)
    status, problem = "edited", f"transform '{name}' set or edited by hand: its quality was not checked here"
    if text:
        try:
            stored = RegistrationResult.from_dict(json.loads(text), f"transform '{name}'")
        except (InputError, ValueError, TypeError, AttributeError, KeyError) as exc:
            detail = " ".join(str(exc).split())[:160]
            status, problem = "unreadable", (f"the registration record of transform '{name}' is unreadable ({detail}): "
                                             "the transform is kept as it is, its quality was not checked here")
        else:
            if np.allclose(stored.matrix_ras, m, atol=1e-6):
                return stored, "stored", None
    elif parent.GetAttribute(ROLE_ATTRIBUTE) == REGISTRATION_ROLE:
        status, problem = "missing", (f"transform '{name}' holds no registration record (quality, warnings): the "
                                      "transform is kept as it is, its quality was not checked here")
    try:
        result = RegistrationResult(m)
    except InputError:
        raise InputError(f"'{ct_node.GetName()}' lies under a transform that is not rigid (scaling or shear): "
                         "the intra-operative chain needs a rotation + translation") from None
    result.warnings.append(problem)
    return result, status, problem


def panel_report(result):
    """``result.report()`` with the place the patient's shift is stated at: the body centre for a registration
    made here, the target's centre for a transform file (:meth:`IntraopSession.load_transform` puts it there),
    the RAS origin for a transform set by hand; then a line "registered with: ..." naming the options that are
    not the default (bone window metric, translation only)."""
    checked = result.report()["checked"]
    where = "body centre" if checked else ("target centre" if np.any(result.centre_ras) else "RAS origin")
    out = result.report(where)
    options = [text for text, used in (("bone window metric", getattr(result, "metric", "") == "bone"),
                                       ("translation only (no rotation)", result.translation_only)) if used]
    if options:       # not the default registration: said under the shift and rotation
        out["lines"] = out["lines"][:2] + ["registered with: " + ", ".join(options)] + out["lines"][2:]
    return out


def map_markups(nodes, change):
    """Move every control point of ``nodes`` (markups) by the 4 x 4 ``change`` (world RAS), orientations
    turned with it; used when the registration of the CT the markups were found on changes."""
    change = np.asarray(change, float)
    if np.allclose(change, np.eye(4), atol=1e-12):
        return
    R, t = change[:3, :3], change[:3, 3]
    for node in nodes:
        if node is None:
            continue
        was = node.StartModify()
        try:
            for i in range(node.GetNumberOfControlPoints()):
                p = [0.0, 0.0, 0.0]
                node.GetNthControlPointPositionWorld(i, p)
                node.SetNthControlPointPositionWorld(i, *(R @ np.asarray(p) + t))
                if node.IsA("vtkMRMLMarkupsFiducialNode"):
                    o = np.array(node.GetNthControlPointOrientationMatrix(i), float).reshape(3, 3)
                    node.SetNthControlPointOrientationMatrix(i, (R @ o).ravel().tolist())
        finally:
            node.EndModify(was)
