"""Exception types of SeedImplantPlannerLib; every message names the problem and the input."""


class SeedPlanError(Exception):
    """Base class of every error this library raises on bad input."""


class SeedModelError(SeedPlanError):
    """A seed model file is malformed or a requested model is unknown."""


class InputError(SeedPlanError):
    """Bad user input: missing column, NaN or negative value, unreadable file, empty grid."""


class GeometryError(SeedPlanError):
    """Image geometries do not match, or a grid is empty or degenerate."""


class CancelledError(SeedPlanError):
    """A long computation was cancelled through its progress callback."""


class OutputError(InputError):
    """An output path cannot be written: its folder cannot be created, is not writable or is a file."""


class ResourceError(SeedPlanError):
    """A computation would need more memory than the machine (or its cgroup limit) has available."""
