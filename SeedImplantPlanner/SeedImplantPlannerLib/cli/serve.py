"""``seedplan serve``: the web planner and reviewer (trame-slicer) on 127.0.0.1.

The page itself lives in the ``web`` package, the layer above this one, which needs the optional
``web`` extra (trame-slicer): this module only parses and checks the options and then loads
``SeedImplantPlannerLib.web.app`` by name, so every other subcommand works without trame.
"""

from __future__ import annotations

import importlib
import ipaddress
import sys
from pathlib import Path

from ..core.errors import InputError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host) -> bool:
    """True when ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host, allow_remote) -> str:
    """The address to bind: loopback by default; anything else only with ``--allow-remote`` (and a warning)."""
    if is_loopback(host):
        return host
    if not allow_remote:
        raise InputError(f"--host {host}: the planner binds to 127.0.0.1 only; to serve other machines add "
                         "--allow-remote (the page has no login: anyone who reaches the port can read and change plans)")
    print(f"seedplan: warning: serving on {host}: anyone who can reach this address and port can open, change and "
          "save plans in the served folder; there is no login or encryption", file=sys.stderr)
    return host


def cmd_serve(args):
    """Start the web planner on the given folder."""
    root = Path(args.folder)
    if not root.is_dir():
        raise InputError(f"{root}: the folder to serve does not exist")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: not a port number")
    host = check_bind(args.host, args.allow_remote)
    try:
        app_module = importlib.import_module("SeedImplantPlannerLib.web.app")
    except ImportError as exc:
        raise InputError(f"the web planner needs trame-slicer ({exc}); install it with "
                         "pip install 'seedimplantplanner[web]' (./run.sh setup does)") from exc
    planner = app_module.WebPlanner(root, model_dirs=args.model_dir)
    print(f"seedplan: serving {root.resolve()} at http://{host}:{args.port}/", file=sys.stderr, flush=True)
    planner.start(host=host, port=args.port)
    return 0


def register(sub):
    p = sub.add_parser("serve", help="web planner and reviewer in the browser (trame-slicer)",
                       description="Serve the web planner: open plan folders, .mrb scenes or CT + segmentation "
                                   "from FOLDER (paths in the page cannot leave it), review and edit the plan, "
                                   "run the inverse plan, save. Binds 127.0.0.1 unless --allow-remote.")
    p.add_argument("folder", nargs="?", default=".", help="folder to serve (default: the current folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow --host to be an address other machines can reach (prints a warning)")
    p.add_argument("--model-dir", action="append", default=[], help="folder with extra seed model JSON files")
    p.set_defaults(func=cmd_serve)
