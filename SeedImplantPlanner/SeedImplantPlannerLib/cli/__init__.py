"""The seedplan command line, one module per command group; top layer, imports any subpackage below it."""
