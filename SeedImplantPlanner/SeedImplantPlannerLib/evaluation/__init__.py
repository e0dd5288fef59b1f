"""Structures on the dose grid, DVH, metrics, goals, plan evaluation, comparison, verification; imports core to samplecase, never slicer or vtk."""
