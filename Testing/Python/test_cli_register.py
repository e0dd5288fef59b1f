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

    def test_verify_maps_found_seeds_through_the_transform(self):
        # seeds found on the moved CT (positions in its frame) against the plan; with the transform the
        # displacements are the seeds' own (0.5 mm here), without it they carry the patient motion
        rng = np.random.default_rng(3)
        planned = rng.uniform(-20, 20, (12, 3))
        own = rng.normal(0.0, 0.3, (12, 3))
        found = (planned + own) @ self.R.T + self.t
        head = "x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model\n"
        fmt = lambda p: "".join(f"{x:.4f},{y:.4f},{z:.4f},0,0,1,0.5,I125_OncoSeed_6711\n" for x, y, z in p)  # noqa: E731
        (self.d / "planned.csv").write_text(head + fmt(planned))
        (self.d / "found.csv").write_text(head + fmt(found))
        from SeedImplantPlannerLib.imaging.registration import RegistrationResult, write_transform
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = self.R.T, -self.R.T @ self.t
        write_transform(self.d / "truth.tfm", RegistrationResult(m))
        for name, extra in (("v_reg", ["--transform", self.d / "truth.tfm"]), ("v_noreg", [])):
            r = seedplan("verify", "--planned", self.d / "planned.csv", "--found", self.d / "found.csv", "--no-dose",
                         *extra, "--out-dir", self.d / name)
            self.assertEqual(r.returncode, 0, r.stderr)
        import csv
        with open(self.d / "v_reg" / "matches.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("distance_mm")]
        disp = np.array([float(r["distance_mm"]) for r in rows])
        self.assertEqual(len(disp), 12)
        np.testing.assert_allclose(np.sort(disp), np.sort(np.linalg.norm(own, axis=1)), atol=1e-3)
        summary = json.loads((self.d / "v_reg" / "summary.json").read_text())
        self.assertAlmostEqual(summary["ct_registration"]["rotation_angle_deg"], 2.5, places=6)
        with open(self.d / "v_noreg" / "matches.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("distance_mm")]
        self.assertGreater(np.median([float(r["distance_mm"]) for r in rows]), 3.0)


if __name__ == "__main__":
    unittest.main()
