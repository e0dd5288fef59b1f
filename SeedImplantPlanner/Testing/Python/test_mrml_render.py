"""Offscreen plan pictures: not blank, dose colours where the dose is, isodose lines, grey CT elsewhere."""

import os
import unittest

import numpy as np

from test_mrml_fixture import MRMLSceneTestCase
from test_mrml_plan import PlanSceneTestCase

from SeedImplantPlannerLib.mrml import render
from SeedImplantPlannerLib.core.errors import InputError


def _offscreen_available():
    try:
        import slicer  # noqa: F401
        rw = render.offscreen_render_window(8, 8)
        rw.Finalize()
        return True
    except Exception:  # noqa: BLE001 - any failure means no offscreen OpenGL here
        return False


HAVE_GL = _offscreen_available()


def colour_fraction(img, lo, hi):
    """Fraction of pixels with every channel in [lo, hi]."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    return float(np.mean(np.all((img >= lo) & (img <= hi), axis=-1)))


@unittest.skipUnless(HAVE_GL, "no offscreen OpenGL (install libegl1 or libosmesa6)")
class PlanPicturesTest(PlanSceneTestCase):

    def setUp(self):
        super().setUp()
        self.plan = self.build()
        self.size = (256, 256)
        self.pics = self.plan.write_pictures(os.path.join(self.tmp, "pics"), size=self.size)

    def test_all_views_are_written(self):
        self.assertEqual(set(self.pics), set(render.VIEWS))
        for path in self.pics.values():
            self.assertTrue(path.is_file())
            img = render.png_to_array(path)
            self.assertEqual(img.shape, (self.size[1], self.size[0], 3))
            self.assertGreater(img.std(), 10.0, path.name)  # not blank

    def test_slices_show_dose_colours_at_the_seeds_and_grey_ct_away_from_them(self):
        for view in ("axial", "sagittal", "coronal"):
            img = render.png_to_array(self.pics[view]).astype(int)
            h, w, _ = img.shape
            centre = img[h // 2 - 6:h // 2 + 6, w // 2 - 6:w // 2 + 6].reshape(-1, 3)
            # the seeds' centre gets far more than the prescription: warm colour wash (red dominates blue)
            warm = np.mean(centre[:, 0] > centre[:, 2] + 40)
            self.assertGreater(warm, 0.6, view)
            # corners are far from the seeds (below the 30 % wash threshold): grey CT or black air
            for corner in (img[:8, :8], img[:8, -8:], img[-8:, :8], img[-8:, -8:]):
                c = corner.reshape(-1, 3)
                spread = np.median(c.max(axis=1) - c.min(axis=1))
                self.assertLess(spread, 25, view)

    def test_isodose_lines_have_their_colours(self):
        for view in ("axial", "sagittal", "coronal"):
            img = render.png_to_array(self.pics[view])
            yellow = colour_fraction(img, (200, 200, 0), (255, 255, 90))  # 100 % isodose line
            blue = colour_fraction(img, (0, 150, 200), (60, 220, 255))  # 50 % isodose line
            self.assertGreater(yellow, 0.002, view)
            self.assertGreater(blue, 0.002, view)

    def test_3d_view_draws_the_plan(self):
        img = render.png_to_array(self.pics["3d"]).astype(int)
        background = img[0, 0]
        differs = np.any(np.abs(img - background) > 30, axis=-1)
        self.assertGreater(differs.mean(), 0.05)
        self.assertGreater(differs[img.shape[0] // 3:2 * img.shape[0] // 3, img.shape[1] // 3:2 * img.shape[1] // 3].mean(),
                           0.5)  # the plan is in the middle

    def test_rendering_leaves_the_scene_as_it_was(self):
        self.assertEqual(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"), 0)
        self.assertEqual(self.scene.GetNumberOfNodesByClass("vtkMRMLViewNode"), 0)
        self.assertEqual(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"), 0)


class ViewDirectionTest(MRMLSceneTestCase):

    def test_3d_camera_avoids_the_structure_in_front(self):
        from test_mrml_fixture import sphere_mask
        from SeedImplantPlannerLib.mrml import segmentations
        from SeedImplantPlannerLib.core.geometry import ImageGeometry
        g = ImageGeometry((50, 50, 50), (2.0, 2.0, 2.0), (-49.0, -49.0, -49.0))
        seg = segmentations.add_segmentation(self.scene)
        target = segmentations.add_segment_from_mask(seg, sphere_mask(g, (0, 0, 0), 10.0), g, "PTV")
        # a slab anterior of the target, and one on the right: the preferred anterior view is blocked
        slab = np.zeros(g.shape, bool)
        c = g.voxel_centers_ras()
        slab |= (c[..., 1] > 25) & (c[..., 1] < 40)
        slab |= (c[..., 0] > 25) & (c[..., 0] < 40)
        other = segmentations.add_segment_from_mask(seg, slab, g, "Bowel")
        side = render.least_occluded_side((0, 0, 0), seg, [target, other], preferred=(0, 1, 0))
        self.assertNotIn(tuple(np.round(side, 6)), [(0.0, 1.0, 0.0), (1.0, 0.0, 0.0)])
        # nothing in the way: the preferred side is kept
        self.assertEqual(render.least_occluded_side((0, 0, 0), seg, [target], preferred=(0, 1, 0)),
                         (0.0, 1.0, 0.0))


@unittest.skipUnless(HAVE_GL, "no offscreen OpenGL (install libegl1 or libosmesa6)")
class PictureArgumentsTest(MRMLSceneTestCase):

    def test_unknown_view_and_nothing_to_frame_are_refused(self):
        with self.assertRaises(InputError):
            render.write_plan_pictures(self.ctx, self.tmp, views=("oblique",))
        with self.assertRaises(InputError):
            render.write_plan_pictures(self.ctx, self.tmp)


if __name__ == "__main__":
    unittest.main()
