"""The bundled sample case generator; imports core, physics, dicom and imaging, never slicer or vtk."""
