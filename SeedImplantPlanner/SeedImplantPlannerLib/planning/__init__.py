"""Needles, obstacles, loading, nomogram, optimizer, the plan file and pipeline; imports core to evaluation, never slicer or vtk."""
