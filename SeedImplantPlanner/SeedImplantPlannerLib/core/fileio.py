"""Atomic file output: write to a temporary file in the target folder, then rename over it.

A failure part-way (bad input found late, a full disk, Ctrl-C or SIGTERM) never leaves a
half-written file, and the user's previous file stays intact. Temporary names are unique
(``tempfile.mkstemp``), so two runs writing the same output at once each rename a complete file
of their own and the last rename wins: the file is always one complete run's output.

Folders of several files (a plan folder) are written the same way by :func:`atomic_folder`: into
a hidden temporary folder next to the target, renamed into place when complete. Where the target
folder already exists, the files are moved in under an ``.seedplan-incomplete`` marker that is
removed last; readers call :func:`require_complete` and refuse a folder that still carries it.

Every problem with an output path (its folder cannot be created, is not writable, is a file, or
the path is a folder) raises :class:`OutputError` naming the path.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError, OutputError

try:  # POSIX: serialise two runs moving files into one existing folder
    import fcntl
except ImportError:  # Windows
    fcntl = None

#: File left in a folder while :func:`atomic_folder` moves files into it; readers refuse such a folder.
INCOMPLETE_MARKER = ".seedplan-incomplete"


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def check_output_path(path, kind="file"):
    """Raise OutputError unless ``path`` can be written as a ``kind`` ('file', 'folder' or 'any') output.

    Missing parent folders are fine when they can be created (they are, at write time); the
    nearest existing ancestor must be a folder where a file can be created (tried with a hidden
    probe file, removed at once). Nothing else is created here.
    """
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        if kind == "file":
            raise OutputError(f"{str(path) or '(empty path)'}: output path names no file")
    if path.exists():
        _refuse_special(path)
        if kind == "file" and path.is_dir():
            raise OutputError(f"{path}: output path is a folder, not a file")
        if kind == "folder" and not path.is_dir():
            raise OutputError(f"{path}: output folder exists and is a file")
    target = path.parent  # temporary files and folders are made next to the output
    ancestor = target
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{path}: cannot create the output folder: {ancestor} is a file")
    # A real probe (root passes os.access checks on read-only places such as /proc)
    try:
        fd, probe = tempfile.mkstemp(prefix=".seedplan-probe.", dir=ancestor)
    except OSError as exc:
        if ancestor == target:
            raise OutputError(f"{path}: output folder {ancestor} is not writable ({_reason(exc)})") from exc
        raise OutputError(f"{path}: cannot create the output folder {target}: {ancestor} is not writable "
                          f"({_reason(exc)})") from exc
    os.close(fd)
    os.unlink(probe)
    return path


def _refuse_special(path: Path):
    """A device, pipe or socket is never replaced by an output file (``--out /dev/null`` as root would)."""
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise OutputError(f"{path}: output path is a device, pipe or socket, not a regular file (outputs are "
                          "written to a temporary file and renamed over the path)")


def ensure_folder(folder, path):
    """Create ``folder`` (and its parents) for the output ``path``; OutputError naming ``path`` if impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path}: cannot create the output folder {folder}: a file of that name exists") from None
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the output folder {folder}: {_reason(exc)}") from exc
    if not folder.is_dir():
        raise OutputError(f"{path}: output folder {folder} is a file")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path`` (same suffixes); rename it to ``path`` on success.

    The temporary file is removed whatever happens (errors, KeyboardInterrupt, SIGTERM turned into
    an exception). OSErrors of the output (missing/read-only folder, full disk) become OutputError.
    """
    path = Path(path)
    _refuse_special(path)
    if path.is_dir():
        raise OutputError(f"{path}: output path is a folder, not a file")
    ensure_folder(path.parent, path)
    suffix = "".join(path.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + path.name.split(".")[0] + ".", suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in the output folder {path.parent}: {_reason(exc)}") from exc
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write output: {_reason(exc)}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def require_complete(path, what="file"):
    """Raise InputError if ``path`` (a file or folder) lies in a folder another run has not finished writing."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / INCOMPLETE_MARKER).exists():
        raise InputError(f"{path}: {what} is in an incomplete folder {folder} (written by an interrupted run, or "
                         "being written now): run the command that writes it again")
    return path


@contextlib.contextmanager
def atomic_folder(folder):
    """Yield a temporary folder; on success its files become ``folder``'s (see the module doc).

    A new ``folder`` appears by one rename. An existing one keeps files this run does not write;
    files of the same names are replaced, under the :data:`INCOMPLETE_MARKER` while moving. On any
    error or interruption the temporary folder is removed and ``folder`` is left as it was.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: output folder exists and is a file")
    ensure_folder(folder.parent, folder)
    try:
        tmp = Path(tempfile.mkdtemp(prefix="." + folder.name + ".", suffix=".tmp", dir=folder.parent))
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write in {folder.parent}: {_reason(exc)}") from exc
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        try:
            try:
                os.rename(tmp, folder)  # a missing (or empty) folder: one atomic rename
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EACCES, errno.EPERM) or not folder.is_dir():
                    raise
            _move_into(tmp, folder)
        except OSError as exc:
            raise OutputError(f"{folder}: cannot write output folder: {_reason(exc)}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into(tmp: Path, folder: Path):
    """Move the files of ``tmp`` into the existing ``folder`` under the incomplete marker.

    An exclusive lock on the folder (POSIX ``flock``; none on Windows) keeps two runs from
    interleaving their files: the folder ends with one run's complete set.
    """
    fd = None
    if fcntl is not None:
        fd = os.open(folder, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        marker = folder / INCOMPLETE_MARKER
        marker.write_text("written by an unfinished seedplan run\n", encoding="utf-8")
        for item in sorted(tmp.iterdir()):
            dest = folder / item.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            os.replace(item, dest)
        marker.unlink()
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def write_text(path, text: str):
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path, obj):
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def write_csv(path, rows, columns):
    """Write a list of dict rows with the given column order to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
