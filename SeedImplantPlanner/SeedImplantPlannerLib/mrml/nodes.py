"""What every MRML adapter shares: lazy slicer/vtk imports, 4x4 matrices, the product's node
attributes (role, prescription) and the subject hierarchy (patient, study, folders).

Qt-free; the scene and nodes come in as arguments; only classes shipped by ``slicer-core`` are
used, so the same code runs inside 3D Slicer and in tests on real nodes. The adapters by node kind:
:mod:`.volumes` (CT and dose volumes), :mod:`.segmentations`, :mod:`.markups` (needles and seeds),
:mod:`.isodose` (isodose models), :mod:`.tables` (DVH and metrics tables, DVH chart).
"""

from __future__ import annotations

import numpy as np

PRESCRIPTION_ATTRIBUTE = "SeedImplantPlanner.PrescriptionGy"
ROLE_ATTRIBUTE = "SeedImplantPlanner.Role"


def _slicer():
    import slicer  # noqa: PLC0415
    return slicer


def _vtk():
    import vtk  # noqa: PLC0415
    return vtk


# ------------------------------------------------------------------------------------------------
# matrices
# ------------------------------------------------------------------------------------------------
def vtk_matrix(m) -> "vtk.vtkMatrix4x4":
    """A vtkMatrix4x4 from a (4, 4) array."""
    out = _vtk().vtkMatrix4x4()
    m = np.asarray(m, float)
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, m[r, c])
    return out


def numpy_matrix(vm) -> np.ndarray:
    """A (4, 4) array from a vtkMatrix4x4."""
    return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)])


# ------------------------------------------------------------------------------------------------
# subject hierarchy
# ------------------------------------------------------------------------------------------------
def subject_hierarchy(scene):
    """The scene's subject hierarchy node."""
    return _slicer().vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def ensure_study(scene, patient_name="Patient", study_name="Seed implant plan", item=None):
    """Subject hierarchy study item (created with a patient parent unless ``item`` is given)."""
    sh = subject_hierarchy(scene)
    if item:
        return item
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), patient_name)
    return sh.CreateStudyItem(patient, study_name)


def place_in_study(scene, node, study_item):
    """Put ``node`` under ``study_item`` in the subject hierarchy (creating its item if needed)."""
    sh = subject_hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(study_item, node)
    else:
        sh.SetItemParent(item, study_item)
    return item


def ensure_folder(scene, parent_item, name, item=None):
    """Subject hierarchy folder item under ``parent_item`` (``item`` reused when given)."""
    sh = subject_hierarchy(scene)
    if item and sh.GetItemName(item):
        return item
    return sh.CreateFolderItem(parent_item, name)


def study_of(scene, node):
    """The study item above ``node`` in the subject hierarchy (0 if none)."""
    sh = subject_hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    while item and item != sh.GetSceneItemID():
        if sh.GetItemLevel(item) == "Study":
            return item
        item = sh.GetItemParent(item)
    return 0


def children(sh, item):
    """IDs of the direct children of subject hierarchy ``item``."""
    ids = _vtk().vtkIdList()
    sh.GetItemChildren(item, ids)
    return [ids.GetId(i) for i in range(ids.GetNumberOfIds())]
