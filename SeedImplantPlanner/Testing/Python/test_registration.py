"""Rigid registration of a new CT to the planning CT (imaging/registration.py) on simulated CTs.

Both CTs are *measured* by the CT simulator (imaging/ctsim.py: projection, beam hardening, FBP,
noise), never made by shifting one array: the new CT is the same patient moved by a known rigid
transform (the anatomy function is evaluated at the moved positions), with needles and seeds only in
it, another noise realisation and, in one pair, 3 mm slices. The anatomy is this file's own small
pelvis-like phantom (not the registration's model of anything): an elliptic body whose width changes
along z, a vertebral column with discs, an oblique iliac plate and an oblique femur-like rod, at
1 mm pixels so that metal reaches its real HU.
"""

import os
import tempfile
import unittest

import numpy as np

from SeedImplantPlannerLib.core.errors import CancelledError, InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.core.imageio import read_image, write_image
from SeedImplantPlannerLib.imaging import ctsim
from SeedImplantPlannerLib.imaging.ctsim_physics import Scanner
from SeedImplantPlannerLib.imaging.registration import (RegistrationError, RegistrationResult, read_transform,
                                                        register_ct, resample_to_planning, rotation_angle_deg,
                                                        write_transform)


def _rot(ax, ay, az):
    """Rotation Rz @ Ry @ Rx (degrees), written out here (not the module's angle code)."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def pelvis_hu(p):
    """HU of the phantom at RAS points ``p`` (..., 3)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    out = np.full(x.shape, -1000.0, np.float32)
    a = 66.0 + 6.0 * np.sin(z / 35.0)
    e = (x / a) ** 2 + (y / 50.0) ** 2
    out[e <= 1.0] = -90.0
    out[(x / (a - 6.0)) ** 2 + (y / 44.0) ** 2 <= 1.0] = 35.0
    out[((x + 15.0) / 18.0) ** 2 + ((y - 8.0) / 14.0) ** 2 + ((z - 5.0) / 22.0) ** 2 <= 1.0] = 55.0   # an organ
    # vertebral bodies (cortex + cancellous bone) with 5 mm discs every 28 mm
    rv = np.hypot(x / 13.0, (y + 28.0) / 11.0)
    disc = np.mod(z + 100.0, 28.0) < 5.0
    vert = (rv <= 1.0) & ~disc
    out[vert] = 1050.0
    out[vert & (rv <= 0.8)] = 260.0
    out[(rv <= 1.0) & disc] = 70.0
    # oblique iliac plate: 5 mm thick, within 30 mm of its centre
    n = np.array([0.85, 0.25, 0.46])
    n = n / np.linalg.norm(n)
    q = p - np.array([38.0, -5.0, 0.0])
    d = q @ n
    inplane = np.linalg.norm(q - d[..., None] * n, axis=-1)
    plate = (np.abs(d) <= 2.5) & (inplane <= 30.0)
    out[plate] = 900.0
    # oblique rod (femur-like), cortex around marrow
    a0, u = np.array([-38.0, 5.0, 0.0]), np.array([0.25, 0.35, 1.0]) / np.linalg.norm([0.25, 0.35, 1.0])
    r = p - a0
    rr = np.linalg.norm(r - (r @ u)[..., None] * u, axis=-1)
    out[rr <= 8.0] = 1150.0
    out[rr <= 5.5] = 220.0
    return out


def anatomy(motion=None):
    """ctsim anatomy callable; ``motion`` (R, t) moves the patient: a body point p is seen at R p + t."""
    def f(geometry):
        pts = geometry.voxel_centers_ras(dtype=np.float64)
        if motion is not None:
            R, t = motion
            pts = (pts - t) @ R          # R^T (x - t), row vectors
        return pelvis_hu(pts)
    return f


def moved(motion, p):
    R, t = motion
    return np.asarray(p, float) @ R.T + t


def grid(slice_mm, z_mm=64.0, pixel=1.0, n=(150, 120)):
    nk = int(round(z_mm / slice_mm))
    half = 0.5 * np.array([(n[0] - 1) * pixel, (n[1] - 1) * pixel, (nk - 1) * slice_mm])
    return ImageGeometry((n[0], n[1], nk), (pixel, pixel, slice_mm), tuple(-half))


def needles_in(motion):
    """Three steel needles from the left flank towards the organ, in the new CT (moved frame)."""
    out = []
    for k, (y, z) in enumerate(((5.0, -4.0), (12.0, 3.0), (2.0, 9.0))):
        tip, entry = np.array([-10.0, y, z]), np.array([-72.0, y + 2.0, z - 1.0])
        out.append({"name": f"N{k}", "entry_ras": moved(motion, entry).tolist(), "tip_ras": moved(motion, tip).tolist()})
    return out


def seeds_at(centres, axis=(1.0, 0.0, 0.0)):
    return [{"center_ras": list(map(float, c)), "axis": list(axis), "model_id": "I125_OncoSeed_6711"} for c in centres]


def cluster(centre, n=3, step=6.0):
    g = (np.arange(n) - (n - 1) / 2.0) * step
    return [np.asarray(centre) + [a, b, c] for a in g for b in g for c in g]


FAST = Scanner(fast_metal_free=True)
MOTION = (_rot(1.5, -1.0, 3.0), np.array([4.0, -3.0, 5.0]))


def truth_matrix(motion):
    """planning-from-new of a motion (new = R p + t): p = R^T (x - t)."""
    R, t = motion
    m = np.eye(4)
    m[:3, :3] = R.T
    m[:3, 3] = -R.T @ t
    return m


def errors(result, motion, points):
    """Largest point error (mm) of ``result`` over ``points`` (planning frame) and its rotation error (deg)."""
    pts = np.asarray(points, float)
    mapped = result.map_points(moved(motion, pts))
    return float(np.linalg.norm(mapped - pts, axis=1).max()), rotation_angle_deg(result.rotation @ motion[0])


#: check points across the phantom: organ centre, spine, plate, rod, body edges (mm)
POINTS = [[-15, 8, 5], [0, -28, 0], [38, -5, 0], [-38, 5, 0], [55, 0, -25], [-55, 10, 25], [0, 40, 20]]


class RegistrationOnSimulatedCTs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        g2 = grid(2.0)
        cls.fixed = ctsim.simulate_ct(anatomy(), g2, scanner=FAST, rng_seed=1)[:2]
        g3 = grid(3.0, z_mm=60.0)
        sd = seeds_at([moved(MOTION, [-14.0, 8.0 + 5 * k, 6.0 - 4 * k]) for k in range(3)])
        cls.new_3mm = ctsim.simulate_ct(anatomy(MOTION), g3, needles=needles_in(MOTION), seeds=sd, scanner=FAST,
                                        rng_seed=2)[:2]
        cls.fixed_path = os.path.join(cls.tmp.name, "planning.nrrd")
        cls.new_path = os.path.join(cls.tmp.name, "new.nrrd")
        write_image(cls.fixed_path, *cls.fixed)
        write_image(cls.new_path, *cls.new_3mm)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_metal_is_in_the_new_ct(self):
        hu = self.new_3mm[0]
        self.assertGreater(int((hu > 2500).sum()), 20, "the needles must reach metal HU at 1 mm pixels")
        self.assertEqual(int((self.fixed[0] > 2500).sum()), 0)

    def test_recovers_motion_with_3mm_slices_and_needles(self):
        res = register_ct(self.fixed_path, self.new_path)
        err, rot = errors(res, MOTION, POINTS)
        self.assertLess(err, 1.0, res.summary_line())
        self.assertLess(rot, 0.5, res.summary_line())
        self.assertGreater(res.quality["bone_dice"], res.quality["bone_dice_before"])
        self.assertGreater(res.quality["bone_dice"], 0.8)
        self.assertGreater(res.quality["metal_masked_fraction_new"], 0.0)
        self.assertEqual(res.quality["metal_masked_fraction_planning"], 0.0)
        # the matrix is planning-from-new (RAS): compare with the truth directly too
        np.testing.assert_allclose(res.matrix_ras[:3, :3], truth_matrix(MOTION)[:3, :3], atol=0.01)

    def test_bone_metric(self):
        res = register_ct(self.fixed, self.new_3mm, metric="bone")
        err, rot = errors(res, MOTION, POINTS)
        self.assertLess(err, 1.0, res.summary_line())
        self.assertLess(rot, 0.5, res.summary_line())

    def test_mapping_found_objects_and_moved_geometry(self):
        res = register_ct(self.fixed, self.new_3mm)
        # a seed rendered in the new CT at moved(p) maps back to p
        p = np.array([-14.0, 13.0, 2.0])
        self.assertLess(np.linalg.norm(res.map_points(moved(MOTION, p)) - p), 1.0)
        axis = np.array([1.0, 0.0, 0.0])
        back = res.map_directions(MOTION[0] @ axis)
        self.assertLess(np.degrees(np.arccos(np.clip(back @ axis, -1, 1))), 0.5)
        # the new CT's grid re-labelled in the planning frame: voxel (i, j, k) -> same point as map_points
        g = self.new_3mm[1]
        mg = res.moved_geometry(g)
        ijk = np.array([[10.0, 20.0, 3.0], [100.0, 90.0, 15.0]])
        np.testing.assert_allclose(mg.ijk_to_ras(ijk), res.map_points(g.ijk_to_ras(ijk)), atol=1e-6)
        # the phantom's HU at a bone point of the planning frame, read from the re-labelled new CT
        hu, _ = self.new_3mm
        for q, lo, hi in (([0.0, -28.0 - 9.9, 0.5], 400, 3000),      # posterior vertebral cortex
                          ([0.0, -28.0, 0.5], 150, 400),              # cancellous bone
                          ([20.0, 20.0, 0.5], -60, 120)):             # soft tissue
            i, j, k = np.round(mg.ras_to_ijk(np.array(q))).astype(int)
            self.assertTrue(lo < hu[k, j, i] < hi, (q, hu[k, j, i]))

    def test_resampled_onto_the_planning_grid(self):
        res = register_ct(self.fixed, self.new_3mm)
        out = resample_to_planning(self.new_3mm, res, self.fixed[1])
        self.assertEqual(out.shape, self.fixed[0].shape)
        body = self.fixed[0] > -400
        bone_f = self.fixed[0] > 400
        bone_n = out > 400
        dice = 2 * (bone_f & bone_n).sum() / (bone_f.sum() + bone_n.sum())
        self.assertGreater(dice, 0.6)
        self.assertLess(np.median(np.abs(out[body & ~bone_f].astype(float) - self.fixed[0][body & ~bone_f])), 40)

    def test_translation_only(self):
        res = register_ct(self.fixed, self.new_3mm, translation_only=True)
        self.assertTrue(res.translation_only)
        np.testing.assert_allclose(res.rotation, np.eye(3), atol=1e-9)
        # the best translation for a 3.5 deg motion: within a few mm of the true shift at the body centre
        c = np.asarray(res.centre_ras)
        self.assertLess(np.linalg.norm(res.patient_shift_mm - (moved(MOTION, c) - c)), 3.0, res.summary_line())

    def test_transform_files_round_trip(self):
        res = register_ct(self.fixed, self.new_3mm)
        for name in ("t.tfm", "t.json", "t.h5"):
            path = os.path.join(self.tmp.name, name)
            write_transform(path, res)
            back = read_transform(path)
            np.testing.assert_allclose(back.matrix_ras, res.matrix_ras, atol=1e-6)
        # the ITK file is LPS, planning -> new (what Slicer applies to the new CT): check one point
        import SimpleITK as sitk
        tx = sitk.ReadTransform(os.path.join(self.tmp.name, "t.tfm"))
        p_plan = np.array([10.0, -20.0, 5.0])
        p_new_lps = np.asarray(tx.TransformPoint(tuple(p_plan * [-1, -1, 1])))
        np.testing.assert_allclose(res.map_points(p_new_lps * [-1, -1, 1]), p_plan, atol=1e-6)
        doc = RegistrationResult.from_dict(res.to_dict())
        self.assertEqual(doc.quality["bone_dice"], res.quality["bone_dice"])

    def test_progress_and_cancel(self):
        seen = []
        register_ct(self.fixed, self.new_3mm, progress=lambda f, t: seen.append(f))
        self.assertEqual(seen[-1], 1.0)
        self.assertTrue(all(b >= a - 1e-9 for a, b in zip(seen, seen[1:])))
        calls = []

        def cancel(f, t):
            calls.append(f)
            return False if len(calls) > 5 else None
        with self.assertRaises(CancelledError):
            register_ct(self.fixed, self.new_3mm, progress=cancel)

    def test_no_overlap_empty_and_other_body_part(self):
        hu, g = self.new_3mm
        far = ImageGeometry(g.size, g.spacing, (400.0, 400.0, 400.0))
        with self.assertRaisesRegex(RegistrationError, "do not overlap"):
            register_ct(self.fixed, (hu, far))
        with self.assertRaisesRegex(RegistrationError, "no body"):
            register_ct(self.fixed, (np.full(hu.shape, -1000, np.int16), g))
        nan = self.fixed[0].astype(np.float32)
        nan[3, 4, 5] = np.nan
        with self.assertRaisesRegex(InputError, "NaN"):
            register_ct((nan, self.fixed[1]), self.new_3mm)
        with self.assertRaisesRegex(InputError, "metric"):
            register_ct(self.fixed, self.new_3mm, metric="ncc")

    def test_different_body_part_is_refused(self):
        # a 'head' (a skull shell) where the planning CT has the pelvis: same box, other anatomy
        g = grid(3.0, z_mm=60.0)

        def head(geometry):
            p = geometry.voxel_centers_ras()
            r = np.linalg.norm(p / [70.0, 58.0, 80.0], axis=-1)
            out = np.where(r <= 1.0, 30.0, -1000.0).astype(np.float32)
            out[(r <= 1.0) & (r > 0.9)] = 1200.0
            return out
        hu, _, _ = ctsim.simulate_ct(head, g, scanner=FAST, rng_seed=5)
        with self.assertRaisesRegex(RegistrationError, "Dice"):
            register_ct(self.fixed, (hu, g))


class MetalMask(unittest.TestCase):
    """Needles that moved relative to the bone must not pull the registration (a check scan of a CT-guided
    implant registered to the first one: every needle pushed 7 mm on, the patient moved too)."""

    def test_registration_is_not_pulled_by_the_needles(self):
        motion = (_rot(0.0, 0.0, 2.0), np.array([3.0, -2.0, 2.0]))
        still = (np.eye(3), np.zeros(3))

        def needles(mo, off):
            out = []
            for y, z in ((-10, -12), (0, -6), (10, 0), (20, 6), (-5, 12), (15, -15), (5, 16), (25, -3)):
                tip, entry = np.array([-5.0, y, z]) + off, np.array([-75.0, y + 3.0, z - 2.0]) + off
                out.append({"entry_ras": moved(mo, entry).tolist(), "tip_ras": moved(mo, tip).tolist()})
            return out
        g = grid(2.0, z_mm=40.0)
        fixed = ctsim.simulate_ct(anatomy(), g, needles=needles(still, np.zeros(3)), scanner=FAST, rng_seed=3)[:2]
        new = ctsim.simulate_ct(anatomy(motion), g, needles=needles(motion, np.array([0.0, 6.0, 4.0])), scanner=FAST,
                                rng_seed=4)[:2]
        self.assertGreater(int((fixed[0] > 2500).sum()), 100)
        for metric in ("bone", "mattes"):
            masked = register_ct(fixed, new, metric=metric)
            e_masked, r_masked = errors(masked, motion, POINTS)
            self.assertLess(e_masked, 1.0, masked.summary_line())
            self.assertLess(r_masked, 0.5, masked.summary_line())
            self.assertGreater(masked.quality["metal_masked_fraction_planning"], 0.0)
        # the same registration with the metal in the metric is pulled towards the needles
        unmasked = register_ct(fixed, new, metric="bone", use_metal_mask=False, check=False)
        e_unmasked, r_unmasked = errors(unmasked, motion, POINTS)
        self.assertGreater(e_unmasked, 1.5, unmasked.summary_line())
        self.assertGreater(r_unmasked, 1.0, unmasked.summary_line())


if __name__ == "__main__":
    unittest.main()
