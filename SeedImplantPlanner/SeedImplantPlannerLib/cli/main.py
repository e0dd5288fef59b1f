"""``seedplan``: command line of SeedImplantPlanner.

Subcommands live in ``cli_*.py`` modules, each with ``register(subparsers)`` that adds its
parsers and sets ``func`` (a callable taking the parsed args and returning an exit code).
Every bad input exits non-zero with one line ``seedplan: error: <what is wrong>``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from ..core.errors import SeedPlanError

#: Modules that register subcommands, in help order.
SUBCOMMAND_MODULES = ["common", "planning", "evaluation", "verify", "dicom", "demo"]


class ProgressBar:
    """Text progress bar on stderr; a progress callback ``bar(fraction, text)``."""

    def __init__(self, label="", stream=None, enabled=True, width=30):
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_pct = -1
        self._t0 = time.monotonic()

    def __call__(self, fraction, text=""):
        if not self.enabled:
            return True
        pct = int(round(100 * fraction))
        if pct == self._last_pct:
            return True
        if not self.tty and pct not in (0, 100) and pct - self._last_pct < 10:
            return True
        self._last_pct = pct
        fill = int(self.width * fraction)
        bar = "#" * fill + "-" * (self.width - fill)
        line = f"{self.label} [{bar}] {pct:3d}% {time.monotonic() - self._t0:5.1f}s {text}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if pct >= 100:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return True


def build_parser():
    """The argparse parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="seedplan",
        description="TG-43U1 planning and verification of permanent seed implants (SeedImplantPlanner).")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    return parser


def main(argv=None):
    """Entry point of the ``seedplan`` console command."""
    for stream in (sys.stdout, sys.stderr):
        # A C/POSIX locale (CI, cron, ssh without LANG) must not turn a "≥" in a message into a crash.
        if hasattr(stream, "reconfigure") and (stream.encoding or "").lower().replace("-", "") != "utf8":
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SeedPlanError as exc:
        msg = " ".join(str(exc).split())
        print(f"seedplan: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seedplan: error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
