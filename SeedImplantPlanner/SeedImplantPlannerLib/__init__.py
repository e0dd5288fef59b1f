"""SeedImplantPlannerLib: computation library of the SeedImplantPlanner 3D Slicer extension.

Qt-free and free of Slicer globals. Subpackages by concern, each importing only from those below it
(core < physics < dicom < imaging < samplecase < evaluation < planning < reporting < mrml < cli < web);
the numpy layers (core to planning) never import slicer or vtk. ``Testing/Python/test_layers.py`` checks
this; ``docs/DEVELOPING.md`` has the map.
"""

__version__ = "0.1.0"
