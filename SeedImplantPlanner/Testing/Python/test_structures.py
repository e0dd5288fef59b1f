"""Structures on the dose grid: exact resampling (oblique included), margins, bad input."""

import math
import tempfile
import unittest
from pathlib import Path

import numpy as np

from SeedImplantPlannerLib.core.errors import GeometryError, InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.imaging.segio import Segmentation, write_segmentation
from SeedImplantPlannerLib.evaluation.structures import (Structure, expand_margin, expand_structure, mask_on_grid,
                                              read_structures, require_on_grid, touch_mask_on_grid)


def rotation_z(deg):
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def sphere(geometry, center, radius):
    c = geometry.voxel_centers_ras()
    return np.linalg.norm(c - np.asarray(center), axis=-1) <= radius


class TestMaskOnGrid(unittest.TestCase):
    def setUp(self):
        self.fine = ImageGeometry((61, 61, 61), (0.5, 0.5, 0.5), (-15, -15, -15))
        self.ball = Structure("Ball", sphere(self.fine, (1.0, -2.0, 0.5), 8.0), self.fine)

    def test_same_grid_is_identity(self):
        out = mask_on_grid(self.ball, self.fine)
        np.testing.assert_array_equal(out, self.ball.mask)

    def test_oblique_grid_samples_voxel_centres_exactly(self):
        # oblique dose grid (rotated 30 deg about S, and 10 deg tilt): every voxel centre is tested against
        # the nearest fine voxel of the structure, which must equal the analytic ball test at that voxel
        d = rotation_z(30.0) @ np.array([[1, 0, 0], [0, math.cos(0.17), -math.sin(0.17)], [0, math.sin(0.17), math.cos(0.17)]])
        dst = ImageGeometry((20, 20, 20), (1.3, 1.3, 1.3), (-2.0, -14.0, -12.0), d)
        out = mask_on_grid(self.ball, dst)
        centers = dst.voxel_centers_ras()
        src_ijk = np.rint(self.fine.ras_to_ijk(centers)).astype(int)
        nearest = self.fine.ijk_to_ras(src_ijk.astype(float))
        expected = np.linalg.norm(nearest - np.array([1.0, -2.0, 0.5]), axis=-1) <= 8.0
        inside_src = np.all((src_ijk >= 0) & (src_ijk < 61), axis=-1)
        np.testing.assert_array_equal(out, expected & inside_src)
        self.assertGreater(out.sum(), 50)
        # volume of the resampled ball within a few voxels of the analytic volume
        vol = out.sum() * dst.voxel_volume_cc
        self.assertAlmostEqual(vol, 4 / 3 * math.pi * 0.8 ** 3, delta=0.12)

    def test_fraction_outside_and_touch_mask_match_brute_force(self):
        from SeedImplantPlannerLib.evaluation.structures import fraction_outside
        k, j, i = np.nonzero(self.ball.mask)
        ras = self.fine.ijk_to_ras(np.stack([i, j, k], axis=-1).astype(float))
        for dst in (ImageGeometry((12, 14, 10), (1.1, 1.3, 1.7), (-4.0, -9.0, -3.0)),  # parallel axes, partial
                    ImageGeometry((12, 14, 10), (1.1, 1.3, 1.7), (-4.0, -9.0, -3.0), rotation_z(25.0))):  # oblique
            expected = 1.0 - np.mean(dst.contains_ras(ras))
            self.assertAlmostEqual(fraction_outside(self.ball, dst), expected, places=12)
            d = np.rint(dst.ras_to_ijk(ras)).astype(int)
            ok = np.all((d >= 0) & (d < np.asarray(dst.size)), axis=-1)
            touch = mask_on_grid(self.ball, dst)
            touch[d[ok][:, 2], d[ok][:, 1], d[ok][:, 0]] = True
            np.testing.assert_array_equal(touch_mask_on_grid(self.ball, dst), touch)

    def test_touch_mask_catches_a_structure_smaller_than_a_voxel(self):
        tiny = Structure("Nerve", sphere(self.fine, (0.3, 0.3, 0.3), 0.6), self.fine)
        coarse = ImageGeometry((10, 10, 10), (3.0, 3.0, 3.0), (-13.5, -13.5, -13.5))
        self.assertEqual(mask_on_grid(tiny, coarse).sum(), 0)  # no dose voxel centre inside
        self.assertGreaterEqual(touch_mask_on_grid(tiny, coarse).sum(), 1)

    def test_outside_grid_is_a_geometry_error(self):
        far = ImageGeometry((10, 10, 10), (1.0, 1.0, 1.0), (100.0, 100.0, 100.0))
        with self.assertRaisesRegex(GeometryError, "'Ball' lies entirely outside the dose grid"):
            require_on_grid(self.ball, far)

    def test_empty_structure_is_an_input_error(self):
        empty = Structure("Urethra", np.zeros(self.fine.shape, bool), self.fine)
        with self.assertRaisesRegex(InputError, "'Urethra' is empty"):
            empty.require_not_empty()


class TestMargins(unittest.TestCase):
    def test_isotropic_margin_of_a_point_is_a_ball(self):
        g = ImageGeometry((41, 41, 41), (0.5, 0.5, 0.5), (-10, -10, -10))
        m = np.zeros(g.shape, bool)
        m[20, 20, 20] = True
        out = expand_margin(m, g, 5.0)
        expected = sphere(g, (0, 0, 0), 5.0)
        np.testing.assert_array_equal(out, expected)

    def test_anisotropic_margin_is_an_ellipsoid_in_ras(self):
        g = ImageGeometry((41, 41, 41), (0.5, 0.5, 1.0), (-10, -10, -20))
        m = np.zeros(g.shape, bool)
        m[20, 20, 20] = True
        out = expand_margin(m, g, (2.0, 4.0, 8.0))
        c = g.voxel_centers_ras()
        expected = (c[..., 0] / 2.0) ** 2 + (c[..., 1] / 4.0) ** 2 + (c[..., 2] / 8.0) ** 2 <= 1.0 + 1e-9
        np.testing.assert_array_equal(out, expected)

    def test_anisotropic_margin_on_an_oblique_grid_keeps_anatomical_directions(self):
        g = ImageGeometry((41, 41, 21), (0.5, 0.5, 1.0), (0, 0, 0), rotation_z(35.0))
        m = np.zeros(g.shape, bool)
        m[10, 20, 20] = True
        center = g.ijk_to_ras(np.array([20.0, 20.0, 10.0]))
        out = expand_margin(m, g, (2.0, 5.0, 3.0))
        r = g.voxel_centers_ras() - center
        expected = (r[..., 0] / 2.0) ** 2 + (r[..., 1] / 5.0) ** 2 + (r[..., 2] / 3.0) ** 2 <= 1.0 + 1e-9
        np.testing.assert_array_equal(out, expected)

    def test_margin_clipped_to_body_and_named(self):
        g = ImageGeometry((40, 40, 40), (1.0, 1.0, 1.0), (-20, -20, -20))
        gtv = Structure("GTV", sphere(g, (0, 0, 0), 6.0), g)
        c = g.voxel_centers_ras()
        body = Structure("Body", c[..., 1] <= 8.0, g)  # skin surface 8 mm anterior of the centre
        ptv = expand_structure(gtv, 5.0, body, "PTV")
        self.assertEqual(ptv.name, "PTV")
        self.assertFalse(np.any(ptv.mask & ~body.mask))
        self.assertTrue(np.all(ptv.mask[gtv.mask]))
        self.assertTrue(ptv.mask[np.unravel_index(np.argmin(np.abs(c[..., 1] + 10.5) + np.abs(c[..., 0]) + np.abs(c[..., 2])), g.shape)])

    def test_bad_margins_are_refused(self):
        g = ImageGeometry((5, 5, 5), (1.0, 1.0, 1.0), (0, 0, 0))
        m = np.zeros(g.shape, bool)
        m[2, 2, 2] = True
        with self.assertRaisesRegex(InputError, "margin must be finite and >= 0"):
            expand_margin(m, g, -1.0)
        with self.assertRaisesRegex(InputError, "one value or three"):
            expand_margin(m, g, (1.0, 2.0))
        with self.assertRaisesRegex(InputError, "GTV is empty"):
            expand_margin(np.zeros(g.shape, bool), g, 2.0, name="GTV")


class TestReadStructures(unittest.TestCase):
    def test_nifti_labelmap_with_names_resampled_onto_an_oblique_grid(self):
        from SeedImplantPlannerLib.core.imageio import write_image
        g = ImageGeometry((30, 30, 30), (1.0, 1.0, 1.0), (-15, -15, -15))
        lab = np.zeros(g.shape, np.uint8)
        lab[sphere(g, (0, 0, 0), 6.0)] = 3
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "labels.nii.gz"
            write_image(p, lab, g)
            Path(str(p) + ".labels.json").write_text('{"3": "GTV"}')
            (gtv,) = read_structures(p)
        self.assertEqual(gtv.name, "GTV")
        np.testing.assert_array_equal(gtv.mask, lab == 3)
        dst = ImageGeometry((12, 12, 12), (1.5, 1.5, 1.5), (-3.0, -12.0, -8.0), rotation_z(45.0))
        out = mask_on_grid(gtv, dst)
        ijk = np.rint(g.ras_to_ijk(dst.voxel_centers_ras())).astype(int)
        ok = np.all((ijk >= 0) & (ijk < 30), axis=-1)
        expected = np.zeros(dst.shape, bool)
        expected[ok] = lab[ijk[ok][:, 2], ijk[ok][:, 1], ijk[ok][:, 0]] == 3
        np.testing.assert_array_equal(out, expected)
        self.assertGreater(out.sum(), 20)

    def test_reads_seg_nrrd_and_reports_missing_names(self):
        g = ImageGeometry((20, 20, 20), (1.0, 1.0, 1.0), (-10, -10, -10))
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "s.seg.nrrd"
            write_segmentation(p, Segmentation.from_masks(g, {"GTV": sphere(g, (0, 0, 0), 4), "Body": np.ones(g.shape, bool)}))
            sts = read_structures(p)
            self.assertEqual([s.name for s in sts], ["GTV", "Body"])
            with self.assertRaisesRegex(InputError, "no segment named 'Rectum' \\(segments: GTV, Body\\)"):
                read_structures(p, ["Rectum"])


if __name__ == "__main__":
    unittest.main()
