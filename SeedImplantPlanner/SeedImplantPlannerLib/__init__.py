"""SeedImplantPlannerLib: computation library of the SeedImplantPlanner 3D Slicer extension.

Qt-free and free of Slicer globals. The numpy-only layer (sources, strength, tg43, dose, geometry,
planning, evaluation) imports no ``slicer``; MRML adapters take the scene and nodes as arguments.
"""

__version__ = "0.1.0"
