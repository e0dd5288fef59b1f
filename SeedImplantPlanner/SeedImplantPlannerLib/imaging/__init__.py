"""Segmentation I/O, seed finder and test phantoms; imports core, physics and dicom, never slicer or vtk."""
