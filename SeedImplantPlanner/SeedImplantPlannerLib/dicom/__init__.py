"""DICOM RT export and import (CT series, RT Plan, RT Dose, RT Struct) and contours; imports core and physics, never slicer or vtk."""
