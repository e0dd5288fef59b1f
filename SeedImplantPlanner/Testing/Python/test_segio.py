"""Segmentation files: .seg.nrrd (layers, oblique), labelmaps with names, DICOM RT Structure Sets."""

import json
import tempfile
import unittest
from pathlib import Path

import numpy as np

from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.core.imageio import write_image
from SeedImplantPlannerLib.imaging.segio import Segmentation, read_segmentation, write_segmentation


def ball(g, centre, radius):
    c = g.voxel_centers_ras()
    return np.linalg.norm(c - np.asarray(centre, float), axis=-1) <= radius


class TestSegmentationFiles(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)
        a = np.radians(12.0)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        self.g = ImageGeometry((40, 36, 24), (1.0, 1.0, 2.0), (-20.0, -18.0, -23.0), rot)
        self.masks = {"GTV": ball(self.g, (0, 0, 0), 8), "PTV": ball(self.g, (0, 0, 0), 12),
                      "Bowel": ball(self.g, (12, 10, 0), 5)}

    def tearDown(self):
        self.tmp.cleanup()

    def test_seg_nrrd_round_trip_with_overlaps_on_layers(self):
        seg = Segmentation.from_masks(self.g, self.masks)
        self.assertEqual(seg.layers.shape[0], 2)  # PTV overlaps GTV and Bowel
        back = read_segmentation(write_segmentation(self.dir / "s.seg.nrrd", seg))
        self.assertTrue(back.geometry.matches(self.g))
        for name, m in self.masks.items():
            np.testing.assert_array_equal(back.mask(name), m)
        self.assertEqual(back.find("gtv").name, "GTV")
        with self.assertRaisesRegex(InputError, "no segment named 'Rectum'.*GTV, PTV, Bowel"):
            back.find("Rectum")

    def test_centre_of_a_segment_on_a_rotated_grid(self):
        seg = Segmentation.from_masks(self.g, {**self.masks, "Off": ball(self.g, (-3, 2, 1), 6),
                                               "Empty": np.zeros(self.g.shape, bool)})
        np.testing.assert_allclose(seg.centre_ras("Off"), (-3.0, 2.0, 1.0), atol=0.1)      # the ball's centre
        np.testing.assert_allclose(seg.centre_ras("GTV"), (0.0, 0.0, 0.0), atol=0.3)
        with self.assertRaisesRegex(InputError, "segment 'Empty' is empty"):
            seg.centre_ras("Empty")

    def test_labelmap_with_names(self):
        lab = np.zeros(self.g.shape, np.uint8)
        lab[self.masks["PTV"]] = 2
        lab[self.masks["GTV"]] = 1
        path = write_image(self.dir / "lab.nrrd", lab, self.g)
        self.assertEqual(read_segmentation(path).names(), ["label_1", "label_2"])
        Path(str(path) + ".labels.json").write_text(json.dumps({"1": "GTV", "2": "Ring"}))
        seg = read_segmentation(path)
        np.testing.assert_array_equal(seg.mask("GTV"), self.masks["GTV"])
        np.testing.assert_array_equal(seg.mask("Ring"), self.masks["PTV"] & ~self.masks["GTV"])

    def test_dicom_rt_structure_set(self):
        from SeedImplantPlannerLib.dicom.export import export_plan_dicom
        from SeedImplantPlannerLib.physics.seeds import SeedSet
        ct = np.full(self.g.shape, 20, np.int16)
        seg = Segmentation.from_masks(self.g, self.masks)
        seeds = SeedSet([[0, 0, 0]], [[0, 0, 1]], [0.6], ["I125_OncoSeed_6711"])
        out = export_plan_dicom(self.dir / "dcm", ct, seeds, 120.0, ct_geometry=self.g, segmentation=seg)
        back = read_segmentation(out["rtstruct"])  # finds the referenced CT series next to it
        self.assertTrue(back.geometry.matches(self.g, 1e-3))
        for name, m in self.masks.items():
            got = back.mask(name)
            dice = 2 * np.sum(got & m) / (got.sum() + m.sum())
            self.assertGreater(dice, 0.95, name)
        # without the CT next to it, the reference grid must be given
        lone = self.dir / "lone"
        lone.mkdir()
        moved = lone / "RTSTRUCT.dcm"
        moved.write_bytes(Path(out["rtstruct"]).read_bytes())
        with self.assertRaisesRegex(InputError, "CT series it references .* is not in its folder"):
            read_segmentation(moved)
        again = read_segmentation(moved, reference_geometry=self.g)
        self.assertEqual(sorted(again.names()), sorted(self.masks))


if __name__ == "__main__":
    unittest.main()
