"""MRML scene context, node adapters, the plan scene, offscreen rendering; imports core to reporting, plus slicer-core and vtk."""
