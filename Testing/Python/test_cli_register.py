"""`seedplan register` end to end: the sample case's planning CT against a simulated CT of the same
anatomy after a known patient motion (imaging/ctsim.py), files written and read back."""

import json
import math
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

from seedplan_cli import seedplan

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SeedImplantPlanner"))

from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.core.imageio import read_image, write_image  # noqa: E402
from SeedImplantPlannerLib.imaging import ctsim  # noqa: E402
from SeedImplantPlannerLib.imaging.ctsim_physics import Scanner  # noqa: E402
from SeedImplantPlannerLib.planning.ctcases import sample_anatomy  # noqa: E402

SAMPLE_CT = ROOT / "Resources" / "SampleCase" / "SampleCT.nrrd"


def rot_z(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


class RegisterCommand(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.d = Path(cls.tmp.name)
        # the patient turned 2.5 deg about the table axis and moved (5, -4, 6) mm: a body point p is at R p + t
        cls.R, cls.t = rot_z(2.5), np.array([5.0, -4.0, 6.0])

        def moved(geometry):
            o = cls.R.T @ (np.asarray(geometry.origin) - cls.t)
            d = cls.R.T @ geometry.direction_matrix
            return sample_anatomy(ImageGeometry(geometry.size, geometry.spacing, tuple(o), tuple(map(tuple, d))))
        g = ImageGeometry((160, 128, 32), (2.0, 2.0, 3.0), (-159.0, -127.0, -46.5))
        hu, g, _ = ctsim.simulate_ct(moved, g, scanner=Scanner(fast_metal_free=True), rng_seed=7)
        write_image(cls.d / "new.nrrd", hu, g)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_register_writes_tfm_json_and_resampled(self):
        out = self.d / "out"
        r = seedplan("register", "--fixed", SAMPLE_CT, "--moving", self.d / "new.nrrd", "--out", out / "t.tfm",
                     "--json", out / "t.json", "--resampled", out / "r.nrrd")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stdout)
        self.assertRegex(lines[0], r"^registration: patient moved R [+-]\d+\.\d A [+-]\d+\.\d S [+-]\d+\.\d mm .* turned "
                                   r"\d\.\d\d deg .* bone Dice 0\.\d\d \(before 0\.\d\d\)")
        doc = json.loads((out / "t.json").read_text())
        M = np.asarray(doc["matrix_ras"])
        for p in ([0.0, -50.0, 0.0], [60.0, 10.0, 20.0], [-90.0, 30.0, -30.0]):
            p = np.asarray(p)
            back = M[:3, :3] @ (self.R @ p + self.t) + M[:3, 3]
            self.assertLess(np.linalg.norm(back - p), 1.0, doc)
        self.assertAlmostEqual(doc["rotation_angle_deg"], 2.5, delta=0.3)
        self.assertGreater(doc["quality"]["bone_dice"], 0.8)
        import SimpleITK as sitk
        tx = sitk.ReadTransform(str(out / "t.tfm"))
        self.assertIn("AffineTransform", tx.GetName())
        hu, g = read_image(out / "r.nrrd")
        ref, rg = read_image(SAMPLE_CT)
        self.assertEqual(hu.shape, ref.shape)
        self.assertTrue(g.matches(rg))
        bone = (ref > 300) & (hu > -900)
        self.assertGreater(((hu > 300) & bone).sum() / bone.sum(), 0.6)

    def test_translation_only_json_out(self):
        r = seedplan("register", "--fixed", SAMPLE_CT, "--moving", self.d / "new.nrrd", "--out", self.d / "tr.json",
                     "--translation-only", "--metric", "bone")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads((self.d / "tr.json").read_text())
        self.assertTrue(doc["translation_only"])
        self.assertEqual(doc["rotation_angle_deg"], 0.0)


if __name__ == "__main__":
    unittest.main()
