"""The MRML test fixture: a fresh Slicer-like scene (slicer-core) for each test, and its own tests.

Other MRML test files derive from :class:`MRMLSceneTestCase`. Inside the Slicer application the
same tests run on a scene built the same way (the application's own scene is left alone).
"""

import os
import tempfile
import unittest

import numpy as np

try:
    import slicer  # noqa: F401
    from SeedImplantPlannerLib.mrml.scene import create_scene
    HAVE_SLICER = hasattr(slicer, "vtkMRMLScene")
except ImportError:  # pragma: no cover - slicer-core is a test dependency
    HAVE_SLICER = False

from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.physics.seeds import SeedSet  # noqa: E402

MODEL = "I125_OncoSeed_6711"


def oblique_direction(angle_rad=0.35):
    """A rotation about S then about R: an oblique grid direction matrix."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, c, s], [0, -s, c]])
    return rz @ rx


def sphere_mask(geometry, center, radius_mm):
    """Voxels of ``geometry`` whose centre lies within ``radius_mm`` of ``center``."""
    c = geometry.voxel_centers_ras()
    return np.linalg.norm(c - np.asarray(center, float), axis=-1) <= radius_mm


def small_seed_set(n_side=2, spacing_mm=8.0, strength_U=0.6, axis=(0.0, 0.0, 1.0)):
    """n_side^3 seeds on a cube centred at the origin."""
    off = (np.arange(n_side) - (n_side - 1) / 2.0) * spacing_mm
    pos = np.array([[x, y, z] for x in off for y in off for z in off], float)
    return SeedSet(pos, np.tile(axis, (len(pos), 1)), strength_U, MODEL)


@unittest.skipUnless(HAVE_SLICER, "slicer-core is not installed (pip install slicer-core)")
class MRMLSceneTestCase(unittest.TestCase):
    """Base class: ``self.ctx`` / ``self.scene`` are a fresh scene with its logics for each test."""

    def setUp(self):
        self.ctx = create_scene()
        self.scene = self.ctx.scene
        self._tmp = tempfile.TemporaryDirectory(prefix="seedplan-mrml-test-")
        self.tmp = self._tmp.name

    def tearDown(self):
        self.ctx.close()
        self._tmp.cleanup()

    def fresh_scene(self):
        """A second, independent scene (closed at tear-down)."""
        ctx = create_scene()
        self.addCleanup(ctx.close)
        return ctx


class SceneFixtureTest(MRMLSceneTestCase):
    """The fixture gives a scene that behaves like Slicer's."""

    def test_module_logics_are_registered_on_the_application_logic(self):
        for name in ("Colors", "Volumes", "Segmentations", "Markups", "Models", "Tables", "Plots",
                     "SubjectHierarchy", "Data"):
            self.assertIsNotNone(self.ctx.app_logic.GetModuleLogic(name), name)
            self.assertIs(self.ctx.logic(name), self.ctx.logics[name])

    def test_default_colour_tables_exist(self):
        self.assertIsNotNone(self.scene.GetNodeByID("vtkMRMLColorTableNodeGrey"))
        self.assertGreater(self.scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"), 10)

    def test_segments_get_ids_and_markups_get_storage(self):
        seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        sid = seg.GetSegmentation().AddEmptySegment("", "PTV", [1.0, 0.0, 0.0])
        self.assertTrue(sid)
        markups = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        markups.AddControlPoint(1.0, 2.0, 3.0)
        self.assertIsNotNone(markups.AddDefaultStorageNode())
        self.assertTrue(markups.GetStorageNode().IsA("vtkMRMLMarkupsJsonStorageNode"))

    def test_each_test_gets_an_independent_scene(self):
        other = self.fresh_scene()
        self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "only here")
        self.assertEqual(other.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), 0)
        self.assertEqual(self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"), 1)

    def test_empty_scene_round_trips_through_mrb(self):
        node = self.scene.AddNewNodeByClass("vtkMRMLTableNode", "T")
        node.AddColumn().SetName("a")
        path = self.ctx.save_mrb(os.path.join(self.tmp, "scene.mrb"))
        self.assertTrue(path.is_file())
        other = self.fresh_scene()
        other.load_mrb(path)
        self.assertEqual(other.scene.GetNumberOfNodesByClass("vtkMRMLTableNode"), 1)

    def test_bad_bundle_names_are_refused(self):
        from SeedImplantPlannerLib.core.errors import InputError
        with self.assertRaises(InputError):
            self.ctx.save_mrb(os.path.join(self.tmp, "scene.mrml"))
        with self.assertRaises(InputError):
            self.ctx.load_mrb(os.path.join(self.tmp, "missing.mrb"))


class GeometryHelpersTest(unittest.TestCase):
    """Helpers of this fixture."""

    def test_oblique_direction_is_a_rotation(self):
        d = oblique_direction()
        np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-12)
        self.assertGreater(np.abs(d - np.eye(3)).max(), 0.1)
        ImageGeometry((4, 4, 4), (1, 1, 1), (0, 0, 0), d)


if __name__ == "__main__":
    unittest.main()
