"""Needle finder and needle matching on CTs made by the CT simulator (forward projection, beam
hardening, photon starvation, FBP: streaks the finder did not draw itself)."""

import tempfile
import unittest

import numpy as np

from SeedImplantPlannerLib.core.errors import CancelledError, InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.core.imageio import read_image
from SeedImplantPlannerLib.imaging import ctsim
from SeedImplantPlannerLib.imaging.needle_lines import perp_frame
from SeedImplantPlannerLib.imaging.needle_sampling import Sampler
from SeedImplantPlannerLib.imaging.needle_track import trace_centreline
from SeedImplantPlannerLib.imaging.needlefinder import find_needles
from SeedImplantPlannerLib.planning.needle_match import match_needles
from SeedImplantPlannerLib.planning.needles import Needle


def _assert_matches_truth(tc, found, truth, ct_edge=False):
    """Every true needle has a found one with tip < 2 mm, axis < 2 deg, and entry on the skin < 3 mm when
    the needle enters inside the CT (with ``ct_edge``: else its entry is marked on the CT's edge and its
    depth is a lower bound)."""
    for n in truth["needles"]:
        tip, entry, d = _truth_line(n)
        best = _nearest(found, tip, d)
        tc.assertLess(np.linalg.norm(best.tip - tip), 2.0, n["name"])
        tc.assertLess(_angle_deg(best.direction, d), 2.0, n["name"])
        if n["entry_inside_ct"]:
            tc.assertLess(np.linalg.norm(best.entry - entry), 3.0, n["name"])
            tc.assertEqual(best.entry_on, "skin", n["name"])
        elif ct_edge:   # the needle leaves the CT before the skin: entry on the CT edge, depth a lower bound
            tc.assertEqual(best.entry_on, "ct_edge", n["name"])
            tc.assertLess(best.depth_mm, n["inserted_depth_mm"], n["name"])


def _truth_line(n):
    tip, entry = np.asarray(n["tip_ras"], float), np.asarray(n["entry_ras"], float)
    return tip, entry, (tip - entry) / np.linalg.norm(tip - entry)


def _angle_deg(a, b):
    return float(np.degrees(np.arccos(min(1.0, abs(float(np.dot(a, b)))))))


def _nearest(found, tip, d):
    return min(found, key=lambda n: np.linalg.norm(n.tip - tip) + 2.0 * _angle_deg(n.direction, d))


class _Cases:
    cases = {}

    @classmethod
    def case(cls, name):
        if name not in cls.cases:
            tmp = tempfile.mkdtemp(prefix="needlecase_")
            ct_path, truth_path = ctsim.make_case(name, tmp)
            ct, g = read_image(ct_path)
            cls.cases[name] = (ct, g, ctsim.read_truth(truth_path))
        return cls.cases[name]


class TestNeedlesOnSimulatedCTs(unittest.TestCase):
    """Targets of issue 9 on the simulator's intra-operative cases: tip within 2 mm, axis within 2 deg."""

    def check_case(self, name, min_good):
        """At least ``min_good`` needles inside the CT meet the targets; every needle found is a real one."""
        ct, g, truth = _Cases.case(name)
        found = find_needles(ct, g)
        good = 0
        for n in truth["needles"]:
            tip, entry, d = _truth_line(n)
            best = _nearest(found, tip, d)
            if not n["tip_inside_ct"]:
                continue
            ok = (_angle_deg(best.direction, d) < 2.0 and np.linalg.norm(best.tip - tip) < 2.0
                  and np.linalg.norm(best.entry - entry) < 3.0 and best.entry_on == "skin"
                  and best.tip_on == "steel_end" and abs(best.depth_mm - n["inserted_depth_mm"]) < 3.0)
            good += ok
        self.assertGreaterEqual(good, min_good, f"{name}: {good} needles within 2 mm / 2 deg")
        # no false needles: each found needle lies on a true one (streaks, bone, seeds are not needles)
        for f in found:
            on_true = any(_angle_deg(f.direction, _truth_line(n)[2]) < 5.0 and
                          np.linalg.norm(np.cross(f.tip - _truth_line(n)[0], _truth_line(n)[2])) < 3.0
                          for n in truth["needles"])
            self.assertTrue(on_true, f"{name}: found needle at {np.round(f.tip, 1).tolist()} is no needle")
            self.assertTrue(0.0 < f.confidence <= 1.0)
            self.assertAlmostEqual(float(np.linalg.norm(f.direction)), 1.0, places=6)
        return found

    def test_one_mm_slices(self):
        # 6 needles inside the CT (one bent 1.5 mm, a crossing pair, a seed touching N1) and N7 partly outside
        found = self.check_case("intraop_1mm", min_good=6)
        self.assertTrue(any("faint" in r["reason"] or "bone" in r["reason"] for r in found.rejected))
        partly = [f for f in found if f.tip_on == "ct_edge"]
        self.assertEqual(len(partly), 1)   # N7 runs out of the CT: tip on the CT edge

    def test_oblique_gantry(self):
        found = self.check_case("intraop_oblique", min_good=6)
        # N7 runs out of the tilted slab after a few cm in the body: found, its axis within 2 deg,
        # its tip on the CT edge (the ring around it is cut by the CT's edge, not by the skin)
        _, _, truth = _Cases.case("intraop_oblique")
        n7 = [n for n in truth["needles"] if not n["tip_inside_ct"]][0]
        tip, entry, d = _truth_line(n7)
        best = _nearest([f for f in found if f.tip_on == "ct_edge"] or found, tip, d)
        self.assertLess(_angle_deg(best.direction, d), 2.0)
        self.assertEqual(best.tip_on, "ct_edge")
        self.assertLess(np.linalg.norm(best.entry - entry), 3.0)

    def test_three_mm_slices(self):
        # the 0.91 mm needle N4 lying across two 3 mm slices reaches under 1000 HU along most of its
        # length, less than the bone cortex: at the detection limit, not claimed (docs/verification.md)
        self.check_case("intraop_3mm", min_good=5)

    def test_region_keeps_only_needles_through_it(self):
        ct, g, truth = _Cases.case("intraop_1mm")
        n1 = [n for n in truth["needles"] if n["name"] == "N1"][0]
        tip, _, d = _truth_line(n1)
        c = g.voxel_centers_ras(np.float32)
        region = np.linalg.norm(c - (tip - 10.0 * d), axis=-1) <= 4.0
        found = find_needles(ct, g, region_mask=region)
        self.assertEqual(len(found), 1)
        self.assertLess(np.linalg.norm(found[0].tip - tip), 2.0)
        self.assertTrue(any(r["reason"] == "needle outside the search region" for r in found.rejected))

    def test_progress_and_cancel(self):
        ct, g, _ = _Cases.case("intraop_1mm")
        seen = []
        find_needles(ct, g, progress=lambda f, t: seen.append(f))
        self.assertEqual(seen[-1], 1.0)
        self.assertEqual(seen, sorted(seen))
        with self.assertRaises(CancelledError):
            find_needles(ct, g, progress=lambda f, t: f < 0.5)


def _skin_point(tip, d, semi=(62.0, 48.0)):
    """Where the line ``tip - s d`` leaves the phantom's elliptic body (its skin), s > 0."""
    a = (d[0] / semi[0]) ** 2 + (d[1] / semi[1]) ** 2
    b = -2.0 * (tip[0] * d[0] / semi[0] ** 2 + tip[1] * d[1] / semi[1] ** 2)
    c = (tip[0] / semi[0]) ** 2 + (tip[1] / semi[1]) ** 2 - 1.0
    s = (-b + np.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)
    return tip - s * d


def _held_out_needle(name, tip, towards_tip, diameter=1.27, bend=0.0):
    tip = np.asarray(tip, float)
    d = np.asarray(towards_tip, float) / np.linalg.norm(towards_tip)
    rec = {"name": name, "entry_ras": _skin_point(tip, d).tolist(), "tip_ras": tip.tolist(), "diameter_mm": diameter,
           "bend_mm": bend}
    if bend:
        rec["bend_direction"] = np.cross(d, [0.0, 0.0, 1.0]).tolist()
    return rec


def _grid(pixel_mm, slice_mm, n, z_mm):
    nk = int(round(z_mm / slice_mm))
    half = 0.5 * np.array([(n - 1) * pixel_mm, (n - 1) * pixel_mm, (nk - 1) * slice_mm])
    return ImageGeometry((n, n, nk), (pixel_mm, pixel_mm, slice_mm), tuple(-half))


class TestLayoutsNotInTheBenchmark(unittest.TestCase):
    """Needle layouts and CT settings the finder was not developed on, simulated here (attenuation,
    projection, beam hardening, starvation, FBP): every needle within 2 mm / 2 deg, nothing false."""

    def check(self, geometry, needles, slice_mm, scanner=None, rng_seed=5):
        from SeedImplantPlannerLib.imaging.ctsim_cases import phantom_anatomy
        ct, g, truth = ctsim.simulate_ct(phantom_anatomy, geometry, needles=needles, slice_thickness_mm=slice_mm,
                                         rng_seed=rng_seed, scanner=scanner)
        found = find_needles(ct, g)
        self.assertEqual(len(found), len(truth["needles"]), [np.round(f.tip, 1).tolist() for f in found])
        _assert_matches_truth(self, found, truth, ct_edge=True)
        return found

    def test_three_needles_in_one_axial_plane_converging(self):
        # from the left flank in one axial plane: 6 mm apart at the skin, 2.6-3 mm apart at the tips,
        # 0.7 mm pixels, 1 mm slices; the streaks between in-plane needles darken their shafts
        needles = [_held_out_needle(nm, (xt, yt, 0.2), (xt + 62.0, yt - ye, 0.2))
                   for nm, ye, yt, xt in (("A", -6.0, -2.8, 6.0), ("B", 0.0, 0.0, 10.0), ("C", 6.0, 2.9, 3.0))]
        self.check(_grid(0.7, 1.0, 180, 16.0), needles, 1.0)

    def test_three_in_plane_needles_converging_on_two_mm_slices(self):
        # from the right flank in one axial plane 0.9 mm above a slice boundary: 7 mm apart at the skin,
        # tips 3-3.5 mm apart at different depths, 0.75 mm pixels, 2 mm slices. Rays along the plane
        # starve the shafts, which brighten towards the tips: the tip is the step from the steel just
        # before it (the half point of the shaft's level 3-14 mm back lies on the streak band beyond)
        needles = [_held_out_needle(nm, (xt, yt, 0.9), (xt - 62.0, yt - ye, 0.0))
                   for nm, ye, yt, xt in (("A", -7.0, -3.2, -4.0), ("B", 0.0, 0.2, -9.0), ("C", 7.0, 3.5, -1.0))]
        self.check(_grid(0.75, 2.0, 170, 16.0), needles, 2.0, rng_seed=11)

    def test_three_in_plane_needles_on_a_slice_boundary_cut_by_the_field_of_view(self):
        # the 1 mm layout above on 2 mm slices, the needles on the boundary between two slices (each
        # holds a third of the steel), the field of view ending at the skin: B's steel stops short of
        # the skin, fainter steel carries it on to the CT edge, while beyond its tip lies the dark
        # streak of the rays along it (it is oriented by that, not by the nearer skin beyond its tip);
        # never brighter than bone on these slices, judged by the steel it would show filling one
        needles = [_held_out_needle(nm, (xt, yt, 0.2), (xt + 62.0, yt - ye, 0.2))
                   for nm, ye, yt, xt in (("A", -6.0, -2.8, 6.0), ("B", 0.0, 0.0, 10.0), ("C", 6.0, 2.9, 3.0))]
        self.check(_grid(0.7, 2.0, 180, 16.0), needles, 2.0)

    def test_two_in_plane_needles_on_a_two_mm_slice_boundary(self):
        # from the left flank, 9 mm apart at the skin, tips 4 mm apart, in the plane z = 2 mm: the
        # boundary of two 2 mm slices, each holding a third of the steel (never brighter than bone).
        # Found as thin lines in the slice plane: the excess of both slices summed (the metal per mm
        # is conserved by the slice averaging), each line of the object (two needles and the streak
        # band between them) judged on its own, its fill fraction from where it lies in the slices
        needles = [_held_out_needle(nm, (xt, yt, 2.0), (xt + 62.0, yt - ye, 0.0))
                   for nm, ye, yt, xt in (("D", -4.5, -2.0, 12.0), ("E", 4.5, 2.0, 6.0))]
        self.check(_grid(0.8, 2.0, 160, 16.0), needles, 2.0, rng_seed=17)

    def test_steep_needles_on_thick_noisy_slices(self):
        # five needles 25-50 deg out of the axial plane (one bent 1.2 mm, one 19 G), 1 mm pixels,
        # 2.5 mm slices, 40 % of the default photons
        from SeedImplantPlannerLib.imaging.ctsim_physics import Scanner
        spec = [("P1", (-8, 4, -6), (0.8, -0.3, 0.5), 1.27, 0.0), ("P2", (2, -4, 4), (0.6, -0.2, 0.75), 1.27, 1.2),
                ("P3", (10, 8, -2), (0.7, 0.2, 0.6), 1.07, 0.0), ("P4", (-2, 12, 6), (0.5, -0.6, -0.55), 1.27, 0.0),
                ("P5", (6, -10, -8), (0.75, 0.1, 0.45), 1.27, 0.0)]
        needles = [_held_out_needle(nm, t, d, dia, b) for nm, t, d, dia, b in spec]
        self.check(_grid(1.0, 2.5, 128, 50.0), needles, 2.5, Scanner(photons_per_ray_mm=4.0e4))

    def test_converging_tips_beside_a_diverging_neighbour_on_tilted_thick_slices(self):
        # A and B converge from 10 mm apart at the skin to tips 2 mm apart; C enters 1.5 mm beside A
        # and diverges from it; 2 mm slices, gantry tilted 12 deg. A line hinged from C's entry onto
        # B's tip lies on its steel over more of its length than A (whose neighbours pull its
        # cross-sections), but explains less of the metal than A does: A is kept, the hybrid is not.
        from SeedImplantPlannerLib.imaging.ctsim_cases import _phantom_geometry
        needles = [_held_out_needle("A", (8.0, 2.0, 0.5), (63.0, 4.0, 2.0)),
                   _held_out_needle("B", (7.0, 3.7, 1.56), (62.0, -4.3, -1.94)),
                   _held_out_needle("C", (5.0, -9.0, -4.0), (60.0, -4.7, -1.5))]
        self.check(_phantom_geometry(2.0, tilt_deg=12.0), needles, 2.0)


def _pelvis_anatomy(geometry):
    """The simulator's abdomen phantom with bone where CT-guided needles pass near it: an iliac wing
    (a curved plate along the scan axis: 7 mm thick, 1700 HU cortex around 250 HU marrow) on the
    right, a vertebral body (2 mm cortex of 1500 HU around 200 HU) with a spinous process stub
    (1300 HU) posterior; the phantom's bone rod is replaced by soft tissue."""
    from SeedImplantPlannerLib.imaging.ctsim_cases import phantom_anatomy
    out = phantom_anatomy(geometry)
    c = geometry.voxel_centers_ras(dtype=np.float32)
    x, y = c[..., 0], c[..., 1]
    out[(x - 30.0) ** 2 + (y + 26.0) ** 2 <= 81.0] = 40.0
    r = np.hypot(x + 5.0, y - 2.0)
    ang = np.degrees(np.arctan2(y - 2.0, x + 5.0))
    wing = (np.abs(r - 40.0) <= 3.5) & (ang > -55.0) & (ang < 35.0)
    out[wing] = 1700.0
    out[wing & (np.abs(r - 40.0) <= 1.5)] = 250.0
    rv = np.hypot(x, y + 33.0)
    out[rv <= 10.0] = 1500.0
    out[rv <= 8.0] = 200.0
    out[(np.abs(x) <= 2.5) & (y < -40.0) & (y > -45.0)] = 1300.0
    return out


class TestInPlaneNeedlesOnThickSlices(unittest.TestCase):
    """CT-guided needles lying in the axial (gantry) plane on 3 mm slices: partial volume puts a
    1.27 mm needle between two slices at 350-550 HU along its shaft and 1000-1500 HU at its tip,
    within cortical bone's range. Simulated here with bone beside them; bone must stay bone."""

    def test_in_plane_needles_beside_bone_found_and_bone_is_not_a_needle(self):
        # W: its tip 3 mm short of the iliac wing's inner cortex; V: tip 3.5 mm above the vertebral
        # body; M: in the plane, clear of bone; O: 28 deg out of the plane (seen as it is). W and M
        # lie at z = 0.2 mm, across the boundary of the slices at -1.5 and +1.5 mm.
        needles = [_held_out_needle("W", (26.5, -9.0, 0.2), (1.0, -0.06, 0.0)),
                   _held_out_needle("V", (-2.0, -19.5, -0.4), (1.0, 0.25, 0.0)),
                   _held_out_needle("M", (6.0, 12.0, 0.2), (1.0, 0.04, 0.0)),
                   _held_out_needle("O", (-6.0, 4.0, -1.0), (0.85, 0.1, 0.45))]
        g = _grid(0.9, 3.0, 140, 30.0)
        ct, g, truth = ctsim.simulate_ct(_pelvis_anatomy, g, needles=needles, slice_thickness_mm=3.0, rng_seed=7)
        self.assertLess(float(ct.max()), 3072.0)
        found = find_needles(ct, g)
        self.assertEqual(len(found), 4, [np.round(f.tip, 1).tolist() for f in found])   # no false needle
        _assert_matches_truth(self, found, truth)
        for f in found:   # nothing found on the bone: every needle's centre line stays off the cortex
            pts = np.asarray(f.points, float)
            r_wing = np.hypot(pts[:, 0] + 5.0, pts[:, 1] - 2.0)
            in_arc = np.abs(np.degrees(np.arctan2(pts[:, 1] - 2.0, pts[:, 0] + 5.0)) + 10.0) < 45.0
            self.assertGreater(float(np.min(np.abs(r_wing[in_arc] - 40.0), initial=99.0)), 3.5 + 1.0,
                               np.round(f.tip, 1).tolist())
            self.assertGreater(float(np.min(np.hypot(pts[:, 0], pts[:, 1] + 33.0))), 10.0 + 1.0,
                               np.round(f.tip, 1).tolist())

    def test_bone_alone_on_thick_slices_gives_no_needle(self):
        ct, g, _ = ctsim.simulate_ct(_pelvis_anatomy, _grid(0.9, 3.0, 140, 30.0), slice_thickness_mm=3.0, rng_seed=7)
        found = find_needles(ct, g)
        self.assertEqual(len(found), 0, [np.round(f.tip, 1).tolist() for f in found])
        self.assertTrue(any("bone" in r["reason"] for r in found.rejected), found.rejected)

    def test_two_needles_between_two_slices(self):
        # two needles in the plane 20 mm apart, both at z = 0.2 mm: split between the 3 mm slices
        # at -1.5 and +1.5 mm (the worst partial volume), 18 G
        needles = [_held_out_needle("A", (5.0, 8.0, 0.2), (1.0, 0.05, 0.0)),
                   _held_out_needle("B", (22.0, -13.0, 0.2), (1.0, -0.05, 0.0))]
        from SeedImplantPlannerLib.imaging.ctsim_cases import phantom_anatomy
        ct, g, truth = ctsim.simulate_ct(phantom_anatomy, _grid(0.9, 3.0, 140, 18.0), needles=needles,
                                         slice_thickness_mm=3.0, rng_seed=5)
        self.assertLess(float(ct.max()), 2000.0)   # every needle voxel within cortical bone's range
        found = find_needles(ct, g)
        self.assertEqual(len(found), 2, [np.round(f.tip, 1).tolist() for f in found])   # the bone rod is not one
        for n in truth["needles"]:
            tip, entry, d = _truth_line(n)
            best = _nearest(found, tip, d)
            self.assertLess(np.linalg.norm(best.tip - tip), 2.0, n["name"])
            self.assertLess(_angle_deg(best.direction, d), 2.0, n["name"])
            self.assertLess(np.linalg.norm(best.entry - entry), 3.0, n["name"])
            self.assertEqual(best.entry_on, "skin", n["name"])
            self.assertLess(best.fill, 1.0, n["name"])   # judged as a thin line with its partial volume


class TestTipsShortOfBone(unittest.TestCase):
    """Needle tips a few mm short of a bone plate: the steel's run bridges dark gaps of up to 1.5
    slices, and the cortex beyond the gap is brighter than the steel level, so the tip ran on into
    the bone. Beyond a gap, a plate across the axis fills the ring around it where a needle's steel
    has faded (imaging.needle_track._drop_wide_ends)."""

    def test_tips_short_of_the_iliac_wing_end_at_their_steel(self):
        # three needles from the left flank towards the iliac wing, tips 2.5-3.5 mm short of its inner
        # cortex (1700 HU), one 8 deg out of the axial plane; 0.8 mm pixels, 2 mm slices
        needles = [_held_out_needle("W1", (28.5, 2.0, 0.2), (1.0, 0.05, 0.0)),
                   _held_out_needle("W2", (26.9, -9.6, 0.6), (0.93, -0.34, 0.14)),
                   _held_out_needle("W3", (26.0, 13.3, -0.8), (1.0, 0.15, -0.02))]
        g = _grid(0.8, 2.0, 158, 30.0)
        ct, g, truth = ctsim.simulate_ct(_pelvis_anatomy, g, needles=needles, slice_thickness_mm=2.0, rng_seed=7)
        found = find_needles(ct, g)
        self.assertEqual(len(found), 3, [np.round(f.tip, 1).tolist() for f in found])
        _assert_matches_truth(self, found, truth)
        for f in found:   # every tip in the soft tissue, short of the wing's inner cortex (radius 36.5 mm)
            self.assertLess(float(np.hypot(f.tip[0] + 5.0, f.tip[1] - 2.0)), 36.5 - 1.0, np.round(f.tip, 1).tolist())


def _polyline_distance(points, polyline):
    """Distance (mm) of each point to a polyline (the simulator's true centre line)."""
    best = np.full(len(points), np.inf)
    for a, b in zip(polyline[:-1], polyline[1:]):
        ab = b - a
        t = np.clip(((points - a) @ ab) / float(ab @ ab), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(points - (a + t[:, None] * ab), axis=1))
    return best


class TestTrace(unittest.TestCase):
    """The centre-line trace on the CT (imaging.needle_track) from a deliberately poor starting line."""

    def test_trace_follows_the_true_centre_line(self):
        ct, g, truth = _Cases.case("intraop_1mm")
        sample = Sampler(ct, g)
        for name in ("N1", "N2", "N5"):   # straight, bent 1.5 mm, long oblique
            n = next(x for x in truth["needles"] if x["name"] == name)
            tip, entry, d = _truth_line(n)
            u, v = perp_frame(d)
            tilt = np.radians(3.0)
            start_dir = np.cos(tilt) * d + np.sin(tilt) * u        # 3 deg off
            start = 0.5 * (tip + entry) + 1.0 * v                    # 1 mm beside the needle
            tr = trace_centreline(sample, g, start, start_dir, -15.0, 15.0, 40.0, 1500.0, max_gap_mm=4.0)
            self.assertIsNotNone(tr, name)
            depth = float(np.linalg.norm(tip - entry))
            s = (tr.points - entry) @ d
            inside = (s > 2.0) & (s < depth - 2.0)
            self.assertGreater(np.count_nonzero(inside), 0.6 * (depth - 4.0), name)   # beyond the 30 mm start
            dist = _polyline_distance(tr.points[inside], np.asarray(n["centerline_ras"], float))
            self.assertLess(float(np.median(dist)), 0.4, name)
            self.assertLess(float(np.percentile(dist, 95)), 0.7, name)
            ends = [tr.at(tr.t0)[0], tr.at(tr.t1)[0]]
            self.assertLess(min(np.linalg.norm(e - tip) for e in ends), 2.0, name)   # the steel's end is the tip
            if n["bend_mm"]:
                self.assertGreater(tr.bend_mm(), 0.5, name)   # the curve is seen, not a straight line

    def test_bent_needle_reported_with_chord_and_tip_axis(self):
        ct, g, truth = _Cases.case("intraop_1mm")
        found = find_needles(ct, g)
        n = next(x for x in truth["needles"] if x["name"] == "N2")   # bent 1.5 mm
        tip, entry, chord = _truth_line(n)
        best = _nearest(found, tip, chord)
        self.assertLess(np.linalg.norm(best.tip - tip), 2.0)
        self.assertLess(_angle_deg(best.direction, chord), 2.0)          # direction = entry -> tip chord
        self.assertGreater(best.bend_mm, 0.5)
        self.assertAlmostEqual(float(np.linalg.norm(best.tip_direction)), 1.0, places=6)
        self.assertGreater(float(best.tip_direction @ best.direction), 0.99)   # same sense, within ~8 deg


class TestNeedleFinderBadInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        g = ctsim._phantom_geometry(2.0, pixel_mm=1.0, n=100, z_mm=20.0)
        cls.g = g
        cls.plain, _, _ = ctsim.simulate_ct(ctsim.phantom_anatomy, g, rng_seed=3)
        seeds = [{"center_ras": [x, 5.0, 0.0], "axis": [1.0, 0.0, 0.0], "model_id": "I125_OncoSeed_6711"}
                 for x in (-20.0, -10.0, 0.0, 10.0)]
        cls.seeds_only, _, _ = ctsim.simulate_ct(ctsim.phantom_anatomy, g, seeds=seeds, rng_seed=4)

    def test_ct_without_metal(self):
        # only bone is dense: no needle, and the bone edges are named as the reason
        found = find_needles(self.plain, self.g)
        self.assertEqual(len(found), 0)
        self.assertTrue(any("no needle found" in w for w in found.warnings))
        soft = np.clip(self.plain, -1024, 300)
        with self.assertRaisesRegex(InputError, "no metal in the CT"):
            find_needles(soft, self.g)

    def test_ct_with_seeds_but_no_needle(self):
        found = find_needles(self.seeds_only, self.g)
        self.assertEqual(len(found), 0)
        self.assertTrue(any("no needle found" in w for w in found.warnings))

    def test_region_and_shapes(self):
        with self.assertRaisesRegex(InputError, "region is empty"):
            find_needles(self.seeds_only, self.g, region_mask=np.zeros(self.g.shape, bool))
        with self.assertRaisesRegex(InputError, "does not match"):
            find_needles(self.seeds_only, self.g, region_mask=np.ones((2, 2, 2), bool))
        with self.assertRaisesRegex(InputError, "shape"):
            find_needles(self.seeds_only[:-1], self.g)
        with self.assertRaisesRegex(InputError, "directions"):
            find_needles(self.seeds_only, self.g, expected_directions=[[0.0, 0.0, 0.0]])
        with self.assertRaisesRegex(InputError, "look like HU"):
            find_needles(self.seeds_only.astype(np.float32) + 3000.0, self.g)


class TestNeedleMatching(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ct, g, truth = _Cases.case("intraop_1mm")
        cls.truth = [n for n in truth["needles"] if n["tip_inside_ct"]]
        cls.found = find_needles(ct, g)

    def planned(self, shift=(0.0, 0.0, 0.0), numbers=None):
        out = []
        for k, n in enumerate(self.truth):
            tip, entry, _ = _truth_line(n)
            out.append(Needle((numbers or {}).get(k, 101 + k), entry + shift, tip + shift, name=f"P{n['name']}"))
        return out

    def test_names_numbers_and_deviations(self):
        shift = np.array([3.0, 0.0, 0.0])
        m = match_needles(self.found, self.planned(shift))
        self.assertEqual(len(m.matched), len(self.truth))
        for row in m.matched:
            self.assertEqual(row.name, "P" + next(n["name"] for n in self.truth
                                                 if np.linalg.norm(np.asarray(n["tip_ras"]) + shift - row.planned.tip) < 1e-6))
            self.assertAlmostEqual(row.dev["tip_mm"], 3.0, delta=2.0)
            self.assertLess(row.dev["angle_deg"], 2.0)
        needles = m.needles()
        self.assertEqual([n.number for n in needles], [101 + k for k in range(len(self.truth))] + [
            101 + len(self.truth) + k for k in range(len(m.unplanned))])
        self.assertTrue(all(n.fixed and n.kind == "implanted" for n in needles))
        self.assertIn(f"{len(self.truth)} of {len(self.truth)} planned found", m.summary_line())

    def test_missing_and_unplanned(self):
        planned = self.planned()
        far = Needle(7, [0.0, 60.0, 0.0], [0.0, 30.0, 0.0], name="far")
        m = match_needles(self.found, planned[1:] + [far])
        self.assertEqual([r.name for r in m.missing], ["far"])
        self.assertEqual(len(m.unplanned), len(self.found) - len(planned) + 1)
        self.assertTrue(all(r.name.startswith("X") for r in m.unplanned))
        rows = m.rows()
        self.assertEqual({r["status"] for r in rows}, {"matched", "missing", "unplanned"})
        self.assertIn("missing: far", m.summary_line())

    def test_depth_sign(self):
        # planned tips 4 mm short of the found ones along the needle: the needle went 4 mm deeper
        planned = []
        for k, n in enumerate(self.truth):
            tip, entry, d = _truth_line(n)
            planned.append(Needle(k + 1, entry, tip - 4.0 * d))
        m = match_needles(self.found, planned)
        for row in m.matched:
            self.assertAlmostEqual(row.dev["depth_mm"], 4.0, delta=2.0)
            self.assertLess(row.dev["entry_mm"], 3.0)


if __name__ == "__main__":
    unittest.main()
