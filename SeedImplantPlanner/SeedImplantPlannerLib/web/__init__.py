"""The web planner (``seedplan serve``): a trame-slicer page on the same library and MRML scene layout as the module."""
