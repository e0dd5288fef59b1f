"""``seedplan``: command line of SeedImplantPlanner.

Subcommands live in ``cli_*.py`` modules, each with ``register(subparsers)`` that adds its
parsers and sets ``func`` (a callable taking the parsed args and returning an exit code).
Every bad input exits with status 2 and one line ``seedplan: error: <what is wrong>``; nothing
is written then. Output paths are checked before any work (:data:`OUTPUT_OPTIONS`), outputs are
written atomically (``core.fileio``), and Ctrl-C (SIGINT, status 130) and SIGTERM (status 143) end
a run with one line, through the same exception path, removing temporary files.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time

from ..core.errors import SeedModelError, SeedPlanError

#: Modules that register subcommands, in help order.
SUBCOMMAND_MODULES = ["common", "planning", "evaluation", "verify", "registration", "intraop", "dicom", "demo", "serve"]


#: Output options checked before a command runs: ``{dest: "file" | "folder" | "any"}`` for every command,
#: and per command ``{command: {dest: kind}}`` (wins over the first). A command may also declare its
#: own with ``parser.set_defaults(output_options={"dest": "folder"})``. See docs/DEVELOPING.md.
#: ``--out`` is a file for some commands and a folder for others: "any" (writable place, not a device)
#: unless the command says which.
OUTPUT_OPTIONS = {"out": "any", "csv": "file", "png": "file", "pdf": "file", "diff": "file", "gamma_map": "file",
                  "gamma_png": "file", "goals_csv": "file", "time_curve_csv": "file", "time_curve_png": "file",
                  "out_dir": "folder"}
COMMAND_OUTPUT_OPTIONS = {"plan": {"out": "folder"}, "needles": {"out": "folder"}, "export-dicom": {"out": "folder"},
                          "demo": {"out": "folder"}, "point-dose": {"out": "file"}, "dose": {"out": "file"},
                          "margin": {"out": "file"}, "report": {"out": "file"}, "dicom-seeds": {"out": "file"},
                          "metrics": {"json": "file"}, "compare": {"json": "file"},
                          "find-seeds": {"out": "file", "report": "file"}}

#: Exit statuses.
EXIT_BAD_INPUT = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_SIGPIPE = 141


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception: unwinds like Ctrl-C, so every ``finally`` removes its temporary files."""


def _raise_terminated(signum, frame):
    raise Terminated()


def output_options(args) -> dict:
    """``{dest: kind}`` of the output options of the parsed command ``args``."""
    kinds = dict(OUTPUT_OPTIONS)
    kinds.update(COMMAND_OUTPUT_OPTIONS.get(getattr(args, "command", None), {}))
    kinds.update(getattr(args, "output_options", None) or {})
    return {dest: kind for dest, kind in kinds.items() if isinstance(getattr(args, dest, None), str)}


def check_model_option(args):
    """``--model`` (plan, nomogram, find-seeds, export-dicom) names a known seed model: checked before any
    work, and the message names the option."""
    model = getattr(args, "model", None)
    if not isinstance(model, str) or not model:
        return
    from ..physics.sources import load_models
    models = load_models(getattr(args, "model_dir", None) or ())  # a malformed model file raises, naming it
    if model not in models:
        raise SeedModelError(f"--model {model}: unknown seed model (known: {', '.join(sorted(models))}; add its "
                             "TG-43 data with --model-dir or SEEDPLAN_MODEL_PATH)")


def check_outputs(args):
    """Refuse (OutputError) output paths that cannot be written, before the command does any work."""
    from ..core.fileio import check_output_path
    for dest, kind in output_options(args).items():
        check_output_path(getattr(args, dest), kind)


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


class Parser(argparse.ArgumentParser):
    """argparse parser whose usage errors are one ``seedplan: error:`` line (status 2), as every bad input."""

    def error(self, message):
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{command}: " if command else ""
        hint = f"seedplan {command} --help" if command else "seedplan --help"
        self.exit(EXIT_BAD_INPUT, f"seedplan: error: {where}{' '.join(message.split())} (see {hint})\n")


def build_parser():
    """The argparse parser with every registered subcommand."""
    parser = Parser(
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
    previous = {}
    try:
        # SIGINT raises KeyboardInterrupt even when the parent started us with SIGINT ignored;
        # SIGTERM raises Terminated (a KeyboardInterrupt): one cleanup path for both.
        previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                    signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated)}
    except ValueError:  # not the main thread (main() called from a thread): keep the handlers
        pass
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        check_outputs(args)
        check_model_option(args)
        return int(args.func(args) or 0)
    except SeedPlanError as exc:
        return _error(str(exc), EXIT_BAD_INPUT)
    except Terminated:
        return _error("terminated (SIGTERM); no output written", EXIT_SIGTERM)
    except KeyboardInterrupt:
        return _error("interrupted (Ctrl-C); no output written", EXIT_SIGINT)
    except BrokenPipeError:
        # stdout closed early (`seedplan sources | head -1`): stop quietly, as Unix tools do on SIGPIPE
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_SIGPIPE
    except MemoryError as exc:
        detail = f" ({exc})" if str(exc) else ""
        return _error(f"out of memory{detail}: use a coarser spacing or a smaller region", EXIT_BAD_INPUT)
    except OSError as exc:
        # Last net for a file error the library did not name; the message keeps the file name.
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{where}{exc.strerror or exc}", EXIT_BAD_INPUT)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _error(message, status):
    """Print ``message`` as the one ``seedplan: error:`` line; return ``status``."""
    msg = " ".join(str(message).split())
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print(f"seedplan: error: {msg}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
