"""Where the shipped data files (seed models, goal presets) are: the wheel's ``_resources`` or the module's ``Resources``."""

from __future__ import annotations

from pathlib import Path

#: The ``SeedImplantPlannerLib`` package folder.
LIB_ROOT = Path(__file__).resolve().parents[1]


def resource_dir_candidates(kind: str) -> tuple:
    """Folders that may hold the shipped ``kind`` files (``SeedModels``, ``Presets``), in search order."""
    return (
        LIB_ROOT / "_resources" / kind,  # pip-installed wheel
        LIB_ROOT.parent / "Resources" / kind,  # source tree, or the Slicer module folder
    )


def find_resource_dir(kind: str, error_type, what: str) -> Path:
    """The first candidate folder of ``kind`` that holds JSON files; ``error_type`` naming ``what`` if none does."""
    candidates = resource_dir_candidates(kind)
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    raise error_type(f"{what} not found (looked in: " + ", ".join(str(c) for c in candidates) + ")")
