"""Ctrl-C (SIGINT) and SIGTERM stop a long `seedplan dose` cleanly: status 130 / 143, one line, no output.

The run is interrupted while the dose is being computed (after its first progress line), as a user
or a batch system would. The library side (temporary files removed when an exception or an
interruption arrives while a file is being written) is tried directly on ``core.fileio``.
"""

import os
import signal
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SeedImplantPlanner"))

from SeedImplantPlannerLib.core.fileio import atomic_folder, atomic_path, write_text  # noqa: E402

M6711 = "I125_OncoSeed_6711"
SENTINEL = b"previous result\n"


def long_dose_command(folder: Path, out: Path):
    """argv of a `seedplan dose` that runs for tens of seconds (direct engine, 600 seeds, 51^3 voxels)."""
    lines = ["x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model"]
    for n in range(600):
        lines.append(f"{(n % 10) - 4.5:.1f},{(n // 10 % 10) - 4.5:.1f},{(n // 100) - 2.5:.1f},0,0,1,0.5,{M6711}")
    seeds = folder / "many_seeds.csv"
    seeds.write_text("\n".join(lines) + "\n")
    return [sys.executable, "-m", "SeedImplantPlannerLib.cli", "dose", "--seeds", str(seeds), "--box", "-25", "-25",
            "-25", "25", "25", "25", "--spacing", "1", "--engine", "direct", "--out", str(out)]


class SignalTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def interrupt(self, signum, existing):
        """Start the long dose, wait for its first progress line, send ``signum``; (status, stderr lines, folder)."""
        out_dir = self.dir / f"out_{signum}_{existing}"
        out_dir.mkdir()
        out = out_dir / "dose.nrrd"
        if existing:
            out.write_bytes(SENTINEL)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "SeedImplantPlanner") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(long_dose_command(self.dir, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
        try:
            first = proc.stderr.readline()  # the first progress line: the computation is running
            self.assertTrue(first.startswith("dose ["), f"no progress line before the signal: {first!r}")
            proc.send_signal(signum)
            stdout, rest = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = [line for line in rest.splitlines() if line.strip() and not line.startswith("dose [")]
        return proc.returncode, lines, rest, out_dir

    def check(self, signum, status, words, existing):
        code, lines, stderr, out_dir = self.interrupt(signum, existing)
        self.assertEqual(code, status, stderr)
        self.assertNotIn("Traceback", stderr)
        self.assertEqual(len(lines), 1, stderr)
        self.assertTrue(lines[0].startswith("seedplan: error: "), lines[0])
        self.assertIn(words, lines[0])
        left = sorted(p.name for p in out_dir.iterdir())
        if existing:
            self.assertEqual(left, ["dose.nrrd"], "temporary files left")
            self.assertEqual((out_dir / "dose.nrrd").read_bytes(), SENTINEL, "the previous output was changed")
        else:
            self.assertEqual(left, [], "output or temporary files left")
        print(f"\nsignal {signal.Signals(signum).name}: status {code}, '{lines[0]}'")

    def test_sigint(self):
        self.check(signal.SIGINT, 130, "interrupted", existing=False)

    def test_sigterm(self):
        self.check(signal.SIGTERM, 143, "terminated", existing=True)


class BrokenPipeTest(unittest.TestCase):
    """`seedplan point-dose ... | head -1`: the reader goes away; the run stops quietly (status 141, no message)."""

    def test_stdout_closed_early(self):
        with tempfile.TemporaryDirectory() as tmp:
            seeds = Path(tmp) / "s.csv"
            seeds.write_text(f"x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model\n0,0,0,0,0,1,0.5,{M6711}\n")
            points = Path(tmp) / "p.csv"
            points.write_text("x_mm,y_mm,z_mm\n" + "".join(f"{10 + n % 50},0,0\n" for n in range(20000)))
            env = dict(os.environ,
                       PYTHONPATH=str(ROOT / "SeedImplantPlanner") + os.pathsep + os.environ.get("PYTHONPATH", ""))
            proc = subprocess.Popen([sys.executable, "-m", "SeedImplantPlannerLib.cli", "point-dose", "--seeds",
                                     str(seeds), "--points", str(points)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env)
            self.assertTrue(proc.stdout.readline().startswith(b"x_mm,"))
            proc.stdout.close()  # like `| head -1`
            err = proc.stderr.read().decode()
            proc.wait(timeout=60)
            self.assertEqual(proc.returncode, 141, err)
            self.assertEqual(err, "")


class DemoInterruptedTest(unittest.TestCase):
    """`seedplan demo` writes many files into its folder: interrupted, a folder it created is removed."""

    def test_sigterm_during_the_demo(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "demo-output"
            env = dict(os.environ,
                       PYTHONPATH=str(ROOT / "SeedImplantPlanner") + os.pathsep + os.environ.get("PYTHONPATH", ""))
            proc = subprocess.Popen([sys.executable, "-m", "SeedImplantPlannerLib.cli", "demo", "--out", str(out),
                                     "--no-scene", "--no-dicom", "--no-verification"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            try:
                first = proc.stderr.readline()
                self.assertTrue(first.startswith("plan ["), f"no planning progress before the signal: {first!r}")
                self.assertTrue(out.is_dir())  # the demo has started writing (the sample case)
                proc.send_signal(signal.SIGTERM)
                _, rest = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            lines = [line for line in rest.splitlines() if line.strip() and " [" not in line[:20]]
            self.assertEqual(proc.returncode, 143, rest)
            self.assertEqual(lines, ["seedplan: error: terminated (SIGTERM); no output written"], rest)
            self.assertEqual(sorted(p.name for p in Path(tmp).iterdir()), [], "the demo left files")


class InterruptedWriteTest(unittest.TestCase):
    """An interruption while a file or folder is being written leaves the old output and no temporary file."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_file_interrupted_mid_write(self):
        out = self.dir / "result.csv"
        out.write_bytes(SENTINEL)
        with self.assertRaises(KeyboardInterrupt):
            with atomic_path(out) as tmp:
                tmp.write_text("half a result\n")
                raise KeyboardInterrupt  # Ctrl-C, or SIGTERM turned into an exception by the CLI
        self.assertEqual(out.read_bytes(), SENTINEL)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["result.csv"])

    def test_folder_interrupted_mid_write(self):
        for existing in (False, True):
            with self.subTest(existing=existing):
                folder = self.dir / f"plan_{existing}"
                if existing:
                    folder.mkdir()
                    (folder / "plan.json").write_bytes(SENTINEL)
                with self.assertRaises(KeyboardInterrupt):
                    with atomic_folder(folder) as tmp:
                        write_text(tmp / "plan.json", "{}\n")
                        write_text(tmp / "seeds.csv", "x_mm\n")
                        raise KeyboardInterrupt
                if existing:
                    self.assertEqual(sorted(p.name for p in folder.iterdir()), ["plan.json"])
                    self.assertEqual((folder / "plan.json").read_bytes(), SENTINEL)
                else:
                    self.assertFalse(folder.exists())
                self.assertEqual(sorted(p.name for p in self.dir.iterdir() if p.name.startswith(".")), [],
                                 "temporary folder left")


if __name__ == "__main__":
    unittest.main()
