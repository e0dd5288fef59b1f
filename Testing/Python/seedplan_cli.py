"""Shared helper of the end-to-end tests: run the `seedplan` command line in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def seedplan(*args, cwd=None, timeout=300):
    """Run ``seedplan --quiet ARGS`` with this source tree's library; returns the CompletedProcess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "SeedImplantPlanner") + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "SeedImplantPlannerLib.cli", "--quiet", *map(str, args)],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", cwd=cwd, env=env, timeout=timeout)
