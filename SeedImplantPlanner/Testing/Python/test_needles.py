"""Needle paths: derived quantities, curved catheters, parallel templates, fan candidates, obstacles."""

import json
import math
import tempfile
import unittest
from pathlib import Path

import numpy as np

from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.planning.needle_layouts import fan_candidates, parallel_template
from SeedImplantPlannerLib.planning.needles import Needle, curved_catheter, needle_table, read_needles
from SeedImplantPlannerLib.planning.obstacles import ObstacleMap, length_flags, obstacle_map_for

GEOM = ImageGeometry((50, 50, 50), (2.0, 2.0, 2.0), (-49.0, -49.0, -49.0))


def ball(center, radius, geometry=GEOM):
    c = geometry.voxel_centers_ras()
    return np.linalg.norm(c - np.asarray(center, float), axis=-1) <= radius


class NeedleGeometryTest(unittest.TestCase):
    def test_direction_depth_and_angles(self):
        n = Needle(1, (0, 0, 0), (30, 40, 0))
        np.testing.assert_allclose(n.direction, [0.6, 0.8, 0.0])
        self.assertAlmostEqual(n.depth_mm, 50.0)
        # axial-plane angle from the A-P axis: atan(30/40)
        self.assertAlmostEqual(n.angle_from_vertical_deg, math.degrees(math.atan2(30, 40)))
        self.assertAlmostEqual(n.tilt_deg, 0.0)
        tilted = Needle(2, (0, 0, 0), (0, 10, 10))
        self.assertAlmostEqual(tilted.tilt_deg, 45.0)
        np.testing.assert_allclose(n.point_from_tip(10.0), [24.0, 32.0, 0.0])
        row = needle_table([n])[0]
        self.assertEqual(row["depth_mm"], "50.0")
        self.assertEqual(row["name"], "N1")

    def test_too_long_is_flagged(self):
        n = Needle(1, (0, 0, 0), (0, 0, 150), usable_length_mm=100)
        self.assertTrue(n.too_long)
        self.assertIn("longer than its usable length", length_flags([n])[0])

    def test_bad_needles_are_refused(self):
        with self.assertRaisesRegex(InputError, "coincide"):
            Needle(1, (0, 0, 0), (0, 0, 0))
        with self.assertRaisesRegex(InputError, "gauge"):
            Needle(1, (0, 0, 0), (0, 0, 1), gauge=99)
        with self.assertRaisesRegex(InputError, "finite"):
            Needle(1, (0, float("nan"), 0), (0, 0, 1))

    def test_curved_catheter_arc_length_and_tangent(self):
        # quarter circle of radius 40 mm in the x-y plane, entry (40, 0) -> tip (0, 40)
        t = np.linspace(0, math.pi / 2, 9)
        cp = np.stack([40 * np.cos(t), 40 * np.sin(t), np.zeros_like(t)], axis=1)
        c = curved_catheter(1, cp)
        self.assertTrue(c.curved)
        self.assertAlmostEqual(c.depth_mm, 40 * math.pi / 2, delta=0.2)
        # 1/4 of the arc back from the tip lies on the circle at 67.5 degrees
        p = c.point_from_tip(c.depth_mm / 4)
        self.assertAlmostEqual(np.linalg.norm(p), 40.0, delta=0.1)
        self.assertAlmostEqual(math.degrees(math.atan2(p[1], p[0])), 67.5, delta=0.5)
        # the tangent is perpendicular to the radius and points towards the tip
        tan = c.tangent_from_tip(c.depth_mm / 4)
        self.assertAlmostEqual(float(tan @ p) / 40.0, 0.0, delta=0.02)
        self.assertGreater(np.cross(p, tan)[2], 0)


    def test_moved_by_a_rigid_transform(self):
        """Entry, tip, curve and reference axis seen through a registration (planning-from-new)."""
        from SeedImplantPlannerLib.imaging.registration import RegistrationResult
        a = math.radians(30.0)
        m = np.eye(4)
        m[:3, :3] = [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
        m[:3, 3] = (5.0, -2.0, 7.0)
        reg = RegistrationResult(m)
        t = np.linspace(0, math.pi / 2, 9)
        cp = np.stack([40 * np.cos(t), 40 * np.sin(t), np.zeros_like(t)], axis=1)
        c = curved_catheter(3, cp, name="C3")
        c.reference_axis = np.array([0.0, 0.0, 1.0])
        moved = c.moved(reg)
        self.assertEqual((moved.name, moved.number), ("C3", 3))
        np.testing.assert_allclose(moved.control_points, cp @ m[:3, :3].T + m[:3, 3])
        np.testing.assert_allclose(moved.tip, m[:3, :3] @ c.tip + m[:3, 3])
        np.testing.assert_allclose(moved.reference_axis, (0.0, 0.0, 1.0), atol=1e-12)
        self.assertAlmostEqual(moved.depth_mm, c.depth_mm, places=9)                 # rigid: lengths kept
        straight = Needle(1, np.array([0.0, 0.0, 50.0]), np.array([0.0, 0.0, 0.0]))
        self.assertIsNone(straight.moved(reg).control_points)
        np.testing.assert_allclose(straight.moved(reg).direction, m[:3, :3] @ straight.direction, atol=1e-12)


class TemplateTest(unittest.TestCase):
    def test_oblique_template_keeps_only_crossing_holes(self):
        target = ball((0, 0, 0), 15)
        d = np.array([1.0, 0.0, 1.0]) / math.sqrt(2)
        needles = parallel_template(target, GEOM, d, spacing_mm=5.0)
        self.assertGreater(len(needles), 20)
        for n in needles:
            np.testing.assert_allclose(n.direction, d, atol=1e-9)
            self.assertAlmostEqual(n.angle_to_reference_deg, 0.0, places=6)
            # the path crosses the target: its closest approach to the centre is within the radius
            rel = -n.entry
            closest = np.linalg.norm(rel - (rel @ d) * d)
            self.assertLess(closest, 15.0 + 2.0)
        # holes lie on a 5 mm grid in the template plane
        e = np.array([n.entry for n in needles])
        gaps = np.linalg.norm(e[:, None] - e[None], axis=-1)
        np.fill_diagonal(gaps, np.inf)
        self.assertAlmostEqual(float(gaps.min()), 5.0, places=6)
        # all entries in one plane perpendicular to d
        self.assertLess(float(np.ptp(e @ d)), 1e-6)

    def test_template_on_the_skin_and_bad_spacing(self):
        target = ball((0, 0, 0), 10)
        body = ball((0, 0, 0), 40)
        needles = parallel_template(target, GEOM, (0, -1, 0), 10.0, body_mask=body)
        # the template plane sits where the body ends anteriorly (y about +40)
        self.assertAlmostEqual(float(needles[0].entry[1]), 40.0, delta=2.5)
        with self.assertRaisesRegex(InputError, "spacing must be > 0"):
            parallel_template(target, GEOM, (0, -1, 0), 0.0)
        with self.assertRaisesRegex(InputError, "empty"):
            parallel_template(np.zeros(GEOM.shape, bool), GEOM, (0, -1, 0), 10.0)


class ObstacleTest(unittest.TestCase):
    def test_hit_reports_structure_and_depth(self):
        bone = np.zeros(GEOM.shape, bool)
        c = GEOM.voxel_centers_ras()
        bone[(np.abs(c[..., 2] - 10) <= 3) & (np.abs(c[..., 0]) <= 10) & (np.abs(c[..., 1]) <= 10)] = True
        omap = ObstacleMap(GEOM, {"Bone": bone}, margin_mm=2.0)
        through = Needle(1, (0, 0, 40), (0, 0, -20))
        hits = omap.check(through)
        self.assertEqual(len(hits), 1)
        h = hits[0]
        self.assertEqual((h.needle, h.structure), ("N1", "Bone"))
        # slab top at z = 13 (+1 voxel half), margin 2 + needle radius 0.635: first contact near depth 24
        self.assertAlmostEqual(h.depth_mm, 40 - 13 - 2 - 0.635, delta=2.5)
        self.assertLessEqual(h.min_clearance_mm, 0.0)
        self.assertIn("passes through Bone", h.describe())
        clear = Needle(2, (20, 0, 40), (20, 0, -20))
        self.assertEqual(omap.check(clear), [])
        near = Needle(3, (11, 0, 40), (11, 0, -20))  # 2 mm from the slab edge voxel centres (x = 9)
        hit = omap.check(near)[0]
        self.assertGreater(hit.min_clearance_mm, 0.0)
        self.assertIn("comes within", hit.describe())

    def test_distances_equal_a_distance_transform(self):
        """Distances (from the k-d tree of boundary voxels) equal scipy's Euclidean distance transform of the
        crop at every voxel centre, anisotropic voxels, structures cut by the crop and scattered voxels."""
        from scipy.ndimage import distance_transform_edt
        rng = np.random.default_rng(3)
        g = ImageGeometry((41, 33, 27), (0.8, 1.1, 2.0), (-10.0, -5.0, 3.0))
        m = np.zeros(g.shape, bool)
        m[4:11, 2:19, 9:30] = True  # a slab
        m[20:, 25:, 35:] = True  # touching the array edges
        m[rng.random(g.shape) < 0.003] = True
        k, j, i = np.meshgrid(*[np.arange(n) for n in g.shape], indexing="ij")
        ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)
        for roi in (None, (g.ijk_to_ras(np.array([8.0, 6.0, 3.0])), g.ijk_to_ras(np.array([30.0, 20.0, 12.0])))):
            omap = ObstacleMap(g, {"x": m}, 1.0, *(roi or (None, None)))
            lo = omap.offset
            sub = m[lo[2]:lo[2] + omap.geometry.size[2], lo[1]:lo[1] + omap.geometry.size[1],
                    lo[0]:lo[0] + omap.geometry.size[0]]
            ref = distance_transform_edt(~sub, sampling=(2.0, 1.1, 0.8))
            pts = omap.geometry.ijk_to_ras(ijk[np.all(ijk < np.asarray(omap.geometry.size), axis=1)])
            got = omap.distance_at("x", pts + rng.uniform(-0.3, 0.3, pts.shape) * np.array([0.8, 1.1, 2.0]))
            q = np.rint(omap.geometry.ras_to_ijk(pts)).astype(int)
            np.testing.assert_allclose(got, ref[q[:, 2], q[:, 1], q[:, 0]], atol=1e-9)
        self.assertTrue(np.all(np.isinf(ObstacleMap(g, {"x": np.zeros(g.shape, bool)}, 1.0).distance_at("x", pts[:5]))))

    def test_fan_candidates_avoid_forbidden_structures(self):
        target = ball((0, 0, 0), 12)
        body = ball((0, 0, 0), 46)
        vessel = np.zeros(GEOM.shape, bool)
        c = GEOM.voxel_centers_ras()
        vessel[(np.hypot(c[..., 0] - 8, c[..., 2]) <= 4) & (c[..., 1] > 15)] = True  # tube between skin and target
        tpts = c[target]
        omap = obstacle_map_for(GEOM, {"Vessel": vessel}, 3.0, (), np.vstack([tpts, c[body][::20]]))
        needles = fan_candidates(target, GEOM, body, approach_direction=(0, 1, 0), entry_radius_mm=30.0,
                                 spacing_mm=8.0, obstacle_map=omap, rng_seed=1)
        self.assertGreater(len(needles), 3)
        for n in needles:
            self.assertEqual(omap.check(n), [], n.name)
            self.assertEqual(n.kind, "auto")
        # non-coplanar: the directions are not all parallel
        dirs = np.array([n.direction for n in needles])
        self.assertLess(float(np.min(dirs @ dirs[0])), 0.999)
        again = fan_candidates(target, GEOM, body, approach_direction=(0, 1, 0), entry_radius_mm=30.0,
                               spacing_mm=8.0, obstacle_map=omap, rng_seed=1)
        np.testing.assert_allclose([n.tip for n in again], [n.tip for n in needles])

    def test_fan_without_feasible_path_says_so(self):
        target = ball((0, 0, 0), 8)
        body = ball((0, 0, 0), 46)
        shell = ball((0, 0, 0), 20) & ~ball((0, 0, 0), 14)  # a closed shell around the target
        c = GEOM.voxel_centers_ras()
        omap = obstacle_map_for(GEOM, {"Bone": shell}, 2.0, (), c[body][::10])
        with self.assertRaisesRegex(InputError, "no feasible needle path"):
            fan_candidates(target, GEOM, body, approach_direction=(0, 1, 0), obstacle_map=omap)


class NeedleFileTest(unittest.TestCase):
    def test_csv_and_json(self):
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "n.csv"
            p.write_text("name,entry_x_mm,entry_y_mm,entry_z_mm,tip_x_mm,tip_y_mm,tip_z_mm\n"
                         "left,0,50,0,0,0,0\n,10,50,0,10,0,5\n")
            ns = read_needles(p)
            self.assertEqual([n.name for n in ns], ["left", "N2"])
            self.assertAlmostEqual(ns[1].depth_mm, math.hypot(50, 5))
            j = Path(tmp) / "n.json"
            j.write_text(json.dumps([{"control_points_ras_mm": [[0, 50, 0], [5, 25, 0], [0, 0, 0]]}]))
            c = read_needles(j)[0]
            self.assertTrue(c.curved)
            bad = Path(tmp) / "bad.csv"
            bad.write_text("entry_x_mm,entry_y_mm\n1,2\n")
            with self.assertRaisesRegex(InputError, "missing column"):
                read_needles(bad)


if __name__ == "__main__":
    unittest.main()
