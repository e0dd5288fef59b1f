"""Memory estimates: refuse a computation before allocating arrays the machine cannot hold.

A dose grid of 0.1 mm over a whole CT would need hundreds of GiB; numpy would then fail deep
inside with an ArrayMemoryError, or the kernel would kill the process or swap for minutes.
:func:`require_memory` compares an estimate with the memory available now and raises
:class:`ResourceError` naming the estimate instead.

Available memory: ``MemAvailable`` of ``/proc/meminfo``, lowered to the free room under a cgroup
memory limit when one is set (cgroup v2 ``memory.max`` - ``memory.current``, or v1
``memory.limit_in_bytes`` - ``memory.usage_in_bytes``). ``SEEDPLAN_MEMORY_LIMIT`` (bytes, or with a
K/M/G suffix) caps it further, e.g. on a shared server. Where none of these is known (not Linux)
the check is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ResourceError

#: Part of the available memory one computation may plan to use (the rest for the process and
#: temporaries the estimates do not count).
USABLE_FRACTION = 0.8

_SUFFIX = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def format_bytes(n) -> str:
    """``n`` bytes as a short human-readable size (``1.5 GiB``)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} TiB"


def _read_int(path):
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _meminfo_available():
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room():
    """Free room under the cgroup memory limit in bytes, or None without a limit."""
    rooms = []
    candidates = [("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")]
    try:  # cgroup v2: this process's own group
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip().lstrip("/")
                if rel:
                    base = Path("/sys/fs/cgroup") / rel
                    candidates.insert(0, (str(base / "memory.max"), str(base / "memory.current")))
    except OSError:
        pass
    for limit_file, usage_file in candidates:
        limit = _read_int(limit_file)
        if limit is None or limit >= 1 << 60:  # "max" or the v1 "no limit" value
            continue
        usage = _read_int(usage_file) or 0
        rooms.append(max(limit - usage, 0))
    return min(rooms) if rooms else None


def _env_limit():
    text = os.environ.get("SEEDPLAN_MEMORY_LIMIT", "").strip().upper().removesuffix("B").removesuffix("I")
    if not text:
        return None
    suffix = text[-1] if text[-1] in _SUFFIX and not text[-1].isdigit() else ""
    try:
        return int(float(text[:len(text) - len(suffix)]) * _SUFFIX[suffix])
    except ValueError:
        return None


def available_memory_bytes():
    """Bytes this process can still allocate (see the module doc), or None when unknown."""
    values = [v for v in (_meminfo_available(), _cgroup_room(), _env_limit()) if v is not None]
    return min(values) if values else None


def require_memory(n_bytes, what, hint="use a coarser spacing or a smaller region"):
    """Raise ResourceError if ``what`` (needing about ``n_bytes``) does not fit in the available memory."""
    available = available_memory_bytes()
    if available is None:
        return
    if n_bytes > USABLE_FRACTION * available:
        raise ResourceError(f"{what} would need about {format_bytes(n_bytes)} of memory, more than the "
                            f"{format_bytes(available)} available: {hint}")
