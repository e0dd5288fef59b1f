"""The web planner behind ``seedplan serve`` (trame-slicer page, planning session, served-folder paths); imports every layer below it, plus trame, trame-slicer, slicer-core and vtk."""
