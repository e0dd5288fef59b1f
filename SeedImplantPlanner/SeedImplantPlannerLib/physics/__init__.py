"""Seed models and strengths, TG-43 kernel, grid dose engines, seed sets, radiobiology; imports only core, never slicer or vtk."""
