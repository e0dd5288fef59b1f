"""Paths typed in the web page, confined to the folder the server was started on.

Every path the page names (a plan folder to open, a CT, a segmentation, a folder or bundle to
save to) is resolved with :meth:`ServedFolder.resolve`: relative to the served folder, symbolic
links followed, and refused with an :class:`InputError` when the result lies outside it (``..``,
an absolute path elsewhere, a link pointing out). Read-only extra roots (the bundled sample case)
may be allowed for reading only.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core.errors import InputError

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_file_name(name, default="upload"):
    """A plain file name from an uploaded file's name: no folders, no leading dots, no odd characters."""
    base = str(name or "").replace("\\", "/").split("/")[-1]
    base = _SAFE_NAME.sub("_", base).strip(" .")
    return base or default


class ServedFolder:
    """The folder the web server was started on; paths from the page must stay inside it."""

    def __init__(self, root, read_only_roots=()):
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"{root}: the folder to serve does not exist or is not a folder")
        self.root = root.resolve()
        self.read_only_roots = tuple(Path(r).resolve() for r in read_only_roots if Path(r).is_dir())

    def _inside(self, path: Path, roots) -> bool:
        return any(path == r or r in path.parents for r in roots)

    def resolve(self, text, *, must_exist=True, for_writing=False, what="path") -> Path:
        """The absolute path of ``text`` (relative to the served folder); InputError if it escapes."""
        if text is None or not str(text).strip():
            raise InputError(f"{what}: no path given")
        raw = Path(str(text).strip()).expanduser()
        path = (raw if raw.is_absolute() else self.root / raw).resolve()
        roots = (self.root,) if for_writing else (self.root,) + self.read_only_roots
        if not self._inside(path, roots):
            raise InputError(f"{what} '{text}': outside the folder this server was started on ({self.root})")
        if must_exist and not path.exists():
            raise InputError(f"{what} '{text}': no such file or folder under {self.root}")
        return path

    def relative(self, path) -> str:
        """``path`` as shown in the page: relative to the served folder when inside it."""
        p = Path(path).resolve()
        try:
            return p.relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(p)

    def listing(self, patterns=("*.mrb", "*/plan.json", "*.nrrd", "*.nii", "*.nii.gz", "*.mha"), limit=200):
        """Openable things under the served folder (two levels deep), relative paths, sorted."""
        found = set()
        for pattern in patterns:
            for depth in ("", "*/"):
                for p in self.root.glob(depth + pattern):
                    if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.root).parts):
                        rel = p.relative_to(self.root)
                        found.add((rel.parent if p.name == "plan.json" else rel).as_posix())
                    if len(found) >= limit:
                        return sorted(found)
        return sorted(found)
