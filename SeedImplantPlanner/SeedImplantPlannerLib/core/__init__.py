"""Errors, progress and cancel, atomic file output, image geometry (RAS, [k, j, i]) and image file I/O; imports no other subpackage."""
