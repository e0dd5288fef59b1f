"""A Slicer-like MRML scene on slicer-core, and scene files (.mrb) without the Slicer application.

Inside 3D Slicer the application builds the scene and its module logics; use
:func:`SlicerSceneContext.from_running_slicer` there. Outside Slicer (tests, the ``seedplan``
command line) :class:`SlicerSceneContext` builds the same pieces on the Qt-free ``slicer-core``
wheels: an application logic, the Colors logic with the default colour tables, and the Volumes,
Segmentations, Markups, Models, Tables, Plots, SubjectHierarchy and Data logics. The context
keeps a Python reference to every logic for as long as the scene lives (a collected application
logic makes markups crash the process).

Only ``slicer`` classes that slicer-core ships are used; no ``slicer.app``, ``slicer.mrmlScene``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..core.errors import InputError

#: Module logics registered on the application logic, in creation order.
MODULE_LOGICS = ("Volumes", "Segmentations", "Markups", "Models", "Tables", "Plots", "SubjectHierarchy", "Data")


def _slicer():
    import slicer  # noqa: PLC0415  (slicer-core or the Slicer application)
    return slicer


class SlicerSceneContext:
    """An MRML scene with an application logic and the module logics this product uses."""

    def __init__(self, scene=None, app_logic=None, logics=None, owned=True):
        self.scene = scene
        self.app_logic = app_logic
        self.logics = dict(logics or {})
        self.owned = owned
        self._io_logics = None
        self._cache_dir = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def create(cls):
        """Build a fresh scene with the application logic and module logics (slicer-core)."""
        slicer = _slicer()
        scene = slicer.vtkMRMLScene()
        app_logic = slicer.vtkSlicerApplicationLogic()
        app_logic.SetMRMLScene(scene)
        color_logic = slicer.vtkMRMLColorLogic()  # vtkSlicerColorLogic wants the application home folder
        color_logic.SetMRMLApplicationLogic(app_logic)
        color_logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic("Colors", color_logic)
        logics = {"Colors": color_logic}
        factories = {
            "Volumes": slicer.vtkSlicerVolumesLogic,
            "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic,
            "Markups": slicer.vtkSlicerMarkupsLogic,
            "Models": slicer.vtkSlicerModelsLogic,
            "Tables": slicer.vtkSlicerTablesLogic,
            "Plots": slicer.vtkSlicerPlotsLogic,
            "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic,
            "Data": slicer.vtkSlicerDataModuleLogic,
        }
        for name in MODULE_LOGICS:
            logic = factories[name]()
            logic.SetMRMLApplicationLogic(app_logic)
            logic.SetMRMLScene(scene)
            app_logic.SetModuleLogic(name, logic)
            logics[name] = logic
        return cls(scene, app_logic, logics, owned=True)

    @classmethod
    def from_running_slicer(cls):
        """Wrap the scene and logics of a running 3D Slicer application (not owned)."""
        slicer = _slicer()
        app_logic = slicer.app.applicationLogic()
        logics = {name: app_logic.GetModuleLogic(name) for name in ("Colors",) + MODULE_LOGICS}
        return cls(slicer.mrmlScene, app_logic, logics, owned=False)

    def logic(self, name):
        """Module logic by name ('Markups', 'Segmentations', ...)."""
        return self.logics[name]

    @property
    def subject_hierarchy(self):
        """The scene's subject hierarchy node (created on first use)."""
        slicer = _slicer()
        return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)

    # -- scene files -----------------------------------------------------------------------------
    def _ensure_io(self):
        """Remote-IO and data-IO logics that ``ReadFromMRB`` needs (with a private cache folder)."""
        if self._io_logics is not None:
            return
        slicer = _slicer()
        self._cache_dir = tempfile.mkdtemp(prefix="seedplan-mrml-cache-")
        cache = slicer.vtkCacheManager()
        cache.SetRemoteCacheDirectory(self._cache_dir)
        self.scene.SetCacheManager(cache)
        remote = slicer.vtkMRMLRemoteIOLogic()
        remote.SetMRMLScene(self.scene)
        data_io = slicer.vtkDataIOManagerLogic()
        data_io.SetMRMLApplicationLogic(self.app_logic)
        data_io.SetAndObserveDataIOManager(remote.GetDataIOManager())
        self.scene.SetDataIOManager(remote.GetDataIOManager())
        self._io_logics = (cache, remote, data_io)

    def save_mrb(self, path):
        """Write the whole scene (nodes and their data files) to a Medical Reality Bundle."""
        path = Path(path).absolute()  # vtkMRMLScene::WriteToMRB refuses relative folders
        if path.suffix.lower() != ".mrb":
            raise InputError(f"{path}: a scene bundle must end in .mrb")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written under its final name in a private folder next to it, then moved into place: the
        # bundle's inner scene file is named after the bundle, and readers never see half a file.
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=path.parent))
        try:
            tmp = tmp_dir / path.name
            if not self.scene.WriteToMRB(str(tmp)) or not tmp.is_file():
                raise InputError(f"{path}: writing the scene bundle failed (see the VTK messages above)")
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        return path

    def load_mrb(self, path, clear=True):
        """Load a Medical Reality Bundle into this scene (replacing its content by default)."""
        path = Path(path).absolute()
        if not path.is_file():
            raise InputError(f"{path}: scene bundle not found")
        self._ensure_io()
        if not self.scene.ReadFromMRB(str(path), clear):
            raise InputError(f"{path}: reading the scene bundle failed: {self.scene.GetErrorMessage()}")
        return self.scene

    # -- teardown -------------------------------------------------------------------------------
    def close(self):
        """Clear the scene and drop the logics (owned scenes only); safe to call twice."""
        if self.scene is not None and self.owned:
            self.scene.Clear(1)
            for logic in reversed(list(self.logics.values())):
                logic.SetMRMLScene(None)
            self.app_logic.SetMRMLScene(None)
        if self._cache_dir:
            shutil.rmtree(self._cache_dir, ignore_errors=True)
        self.scene = None
        self.app_logic = None
        self.logics = {}
        self._io_logics = None
        self._cache_dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def create_scene() -> SlicerSceneContext:
    """A fresh Slicer-like scene with its logics (see :class:`SlicerSceneContext`)."""
    return SlicerSceneContext.create()
