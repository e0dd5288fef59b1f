"""The bundled sample case is exactly what its deterministic generator makes, and is plausible."""

import tempfile
import unittest
from pathlib import Path

import numpy as np

from SeedImplantPlannerLib.core.imageio import read_image
from SeedImplantPlannerLib.samplecase.generator import CT_NAME, SEG_NAME, bundled_sample_case_dir, make_sample_case, write_sample_case
from SeedImplantPlannerLib.imaging.segio import read_segmentation


class TestSampleCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ct, cls.masks, cls.geometry = make_sample_case()

    def test_bundled_files_equal_regenerated(self):
        bundled = bundled_sample_case_dir()
        self.assertIsNotNone(bundled, "Resources/SampleCase must be in the source tree")
        ct, g = read_image(bundled / CT_NAME)
        np.testing.assert_array_equal(ct, self.ct)
        self.assertTrue(g.matches(self.geometry))
        seg = read_segmentation(bundled / SEG_NAME)
        self.assertEqual(seg.names(), list(self.masks))
        for name, mask in self.masks.items():
            np.testing.assert_array_equal(seg.mask(name), mask, err_msg=name)

    def test_write_read_round_trip(self):
        with tempfile.TemporaryDirectory() as tmp:
            ct_path, seg_path = write_sample_case(Path(tmp))
            ct, g = read_image(ct_path)
            np.testing.assert_array_equal(ct, self.ct)
            self.assertEqual(read_segmentation(seg_path).names()[:2], ["Body", "GTV"])

    def test_anatomy_is_plausible(self):
        cc = self.geometry.voxel_volume_cc
        vol = {n: m.sum() * cc for n, m in self.masks.items()}
        self.assertTrue(40 < vol["GTV"] < 150, vol)
        for name in ("Bone", "Bowel", "Vessels", "Kidneys", "Psoas", "SpinalCanal"):
            self.assertGreater(vol[name], 5, name)
            self.assertFalse(np.any(self.masks[name] & self.masks["GTV"]), f"{name} overlaps the GTV")
        hu = lambda n: float(np.median(self.ct[self.masks[n]]))
        self.assertGreater(hu("Bone"), 200)
        self.assertLess(hu("GTV"), 0)  # fat-density liposarcoma
        self.assertLess(float(np.median(self.ct[~self.masks["Body"]])), -900)
        # the tumour lies near bowel and vessels: within 25 mm of each
        from scipy import ndimage
        for organ in ("Bowel", "Vessels"):
            dist = ndimage.distance_transform_edt(~self.masks[organ], sampling=self.geometry.spacing[::-1])
            self.assertLess(float(dist[self.masks["GTV"]].min()), 25.0, organ)


if __name__ == "__main__":
    unittest.main()
