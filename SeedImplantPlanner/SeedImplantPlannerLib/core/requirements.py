"""Which Python packages of a ``requirements.txt`` are missing from the running interpreter.

The Slicer module installs what Slicer does not bundle (``Resources/requirements.txt``) with
``slicer.packaging.pip_ensure`` where the running Slicer has it; older Slicer versions have only
``slicer.util.pip_install``, and this module tells them what to install. Requirements are read
the way pip and ``slicer.packaging.load_requirements`` read them (comments, blank lines and pip
options such as ``-r`` skipped) and checked with the ``packaging`` library (PEP 440 versions,
PEP 508 markers); where neither ``packaging`` nor pip's vendored copy can be imported, only the
presence of each distribution is checked.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from .errors import InputError

_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _packaging():
    """``(Requirement, InvalidRequirement)`` from ``packaging`` or pip's vendored copy, or None."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement  # noqa: PLC0415
    except ImportError:
        try:
            from pip._vendor.packaging.requirements import InvalidRequirement, Requirement  # noqa: PLC0415
        except ImportError:
            return None
    return Requirement, InvalidRequirement


def read_requirements(path) -> list[str]:
    """The requirement lines of a requirements file (comments, blank lines and ``-`` options skipped).

    InputError naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"requirements file {path}: cannot be read ({exc.strerror or exc})") from None
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            out.append(line)
    return out


def missing_requirements(requirements, where="requirements", use_packaging=True) -> list[str]:
    """The requirement strings of ``requirements`` (a file path or a list of strings) not satisfied here.

    A requirement is satisfied when its distribution is installed in a version its specifier
    allows; one whose environment marker does not apply is skipped. ``use_packaging=False``
    checks presence only (what happens without the ``packaging`` library). InputError naming
    ``where`` (or the file) and the line for a requirement that cannot be parsed.
    """
    if isinstance(requirements, (str, Path)):
        where = str(requirements)
        requirements = read_requirements(requirements)
    lib = _packaging() if use_packaging else None
    missing = []
    for text in requirements:
        if lib is not None:
            Requirement, InvalidRequirement = lib
            try:
                req = Requirement(text)
            except InvalidRequirement as exc:
                raise InputError(f"{where}: requirement {text!r} cannot be parsed ({exc})") from None
            if req.marker is not None and not req.marker.evaluate():
                continue
            name, specifier = req.name, req.specifier
        else:
            m = _NAME_RE.match(text)
            if m is None:
                raise InputError(f"{where}: requirement {text!r} has no package name")
            name, specifier = m.group(1), None
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if specifier is not None and not specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing
