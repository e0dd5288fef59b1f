# Stub of Slicer's UseSlicer.cmake (see SlicerConfig.cmake next to it): testing on, nothing else.
set(BUILD_TESTING ON)
