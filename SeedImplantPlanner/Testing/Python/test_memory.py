"""Memory estimates: available memory, the refusal before allocation, the dose-grid estimate."""

import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from SeedImplantPlannerLib.core import memory  # noqa: E402
from SeedImplantPlannerLib.core.errors import ResourceError  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.physics import dose  # noqa: E402


class EnvLimit:
    """Set SEEDPLAN_MEMORY_LIMIT for the duration of a ``with`` block."""

    def __init__(self, value):
        self.value = value

    def __enter__(self):
        self.old = os.environ.get("SEEDPLAN_MEMORY_LIMIT")
        os.environ["SEEDPLAN_MEMORY_LIMIT"] = self.value

    def __exit__(self, *exc):
        if self.old is None:
            del os.environ["SEEDPLAN_MEMORY_LIMIT"]
        else:
            os.environ["SEEDPLAN_MEMORY_LIMIT"] = self.old


class MemoryTest(unittest.TestCase):
    def test_available_memory_on_linux(self):
        if not Path("/proc/meminfo").exists():
            self.skipTest("no /proc/meminfo")
        with open("/proc/meminfo") as fh:
            total = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemTotal:"))
        avail = memory.available_memory_bytes()
        self.assertIsNotNone(avail)
        self.assertGreater(avail, 0)
        self.assertLessEqual(avail, total)

    def test_env_limit_caps_and_parses_units(self):
        for text, expected in (("8G", 8 * 1024 ** 3), ("512M", 512 * 1024 ** 2), ("1.5GiB", int(1.5 * 1024 ** 3)),
                               ("123456", 123456)):
            with self.subTest(text=text), EnvLimit(text):
                self.assertEqual(memory._env_limit(), expected)
                self.assertLessEqual(memory.available_memory_bytes(), expected)

    def test_refused_with_the_estimate(self):
        with EnvLimit("100M"):
            memory.require_memory(10 * 1024 ** 2, "a small array")
            with self.assertRaisesRegex(ResourceError, r"a big array would need about 1\.0 GiB of memory, more than "
                                                       r"the 100\.0 MiB available"):
                memory.require_memory(1024 ** 3, "a big array")

    def test_format_bytes(self):
        self.assertEqual(memory.format_bytes(512), "512 B")
        self.assertEqual(memory.format_bytes(1536), "1.5 KiB")
        self.assertEqual(memory.format_bytes(3 * 1024 ** 4), "3.0 TiB")

    def test_read_int_of_cgroup_files(self):
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "memory.max"
            f.write_text("max\n")
            self.assertIsNone(memory._read_int(f))
            f.write_text("2147483648\n")
            self.assertEqual(memory._read_int(f), 2147483648)
            self.assertIsNone(memory._read_int(Path(tmp) / "missing"))

    def test_dose_grid_estimate_constants(self):
        # measured peaks (see physics/dose.BYTES_PER_VOXEL); a change must be measured again
        self.assertEqual(dose.BYTES_PER_VOXEL, {"fast": 56, "direct": 260})
        g = ImageGeometry((100, 100, 100), (1, 1, 1), (0, 0, 0))
        self.assertEqual(dose.estimate_grid_bytes(g, 1, "fast"), 56_000_000)
        self.assertEqual(dose.estimate_grid_bytes(g, 3, "direct"), 276_000_000)

    def test_command_line_respects_the_limit(self):
        env = dict(os.environ, SEEDPLAN_MEMORY_LIMIT="1M",
                   PYTHONPATH=str(HERE.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with tempfile.TemporaryDirectory() as tmp:
            seeds = Path(tmp) / "s.csv"
            seeds.write_text("x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model\n0,0,0,0,0,1,0.5,I125_OncoSeed_6711\n")
            out = Path(tmp) / "d.nrrd"
            r = subprocess.run([sys.executable, "-m", "SeedImplantPlannerLib.cli", "--quiet", "dose", "--seeds",
                                str(seeds), "--box", "-10", "-10", "-10", "10", "10", "10", "--spacing", "0.5",
                                "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertRegex(r.stderr.strip(), r"^seedplan: error: dose grid of 41 x 41 x 41 voxels .* would need "
                                               r"about 3\.7 MiB of memory, more than the 1\.0 MiB available")
            self.assertFalse(out.exists())


if __name__ == "__main__":
    unittest.main()
