"""CT simulator (imaging/ctsim.py): physics checks on small grids, truth files, ready cases."""

import json
import os
import tempfile
import unittest

import numpy as np

from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.core.imageio import read_image
from SeedImplantPlannerLib.imaging import ctsim


def _grid(n=96, nk=3, pixel=1.0, slice_mm=1.0, direction=None):
    half = 0.5 * np.array([(n - 1) * pixel, (n - 1) * pixel, (nk - 1) * slice_mm])
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    return ImageGeometry((n, n, nk), (pixel, pixel, slice_mm), tuple(-(d @ half)), tuple(map(tuple, d)))


def _water_cylinder(g, radius=38.0, hu=0.0):
    c = g.voxel_centers_ras()
    return np.where(np.hypot(c[..., 0], c[..., 1]) < radius, hu, -1000.0).astype(np.float32)


class TablesTest(unittest.TestCase):

    def test_constants_do_not_drift(self):
        self.assertAlmostEqual(float(np.sum(ctsim.SPECTRUM_PHOTONS)), 1.0, places=3)
        self.assertAlmostEqual(float(np.sum(ctsim.ENERGY_WEIGHTS)), 1.0, places=9)
        self.assertEqual(ctsim.E_REF_KEV, 70.0)
        # mu/rho at 70 keV (Elam/XrayDB): water 0.1929, cortical bone 0.2570, iron 0.8164 cm^2/g
        self.assertAlmostEqual(ctsim.MU_WATER_REF, 0.1929 / 10.0, places=6)
        self.assertAlmostEqual(ctsim.HU_REF["bone"], 1558.0, delta=1.0)
        self.assertAlmostEqual(ctsim.HU_REF["steel"], 32858.0, delta=5.0)
        self.assertAlmostEqual(ctsim.HU_REF["titanium"], 11523.0, delta=5.0)
        digest = round(float(sum(np.sum(np.asarray(v) * (i + 1)) for i, v in enumerate(ctsim.MU_RHO.values()))), 3)
        self.assertAlmostEqual(digest, 677.502, places=2)
        # every material attenuates less at higher energy, except across an absorption edge (none here)
        for m in ctsim.MATERIALS:
            self.assertTrue(np.all(np.diff(ctsim.MU_RHO[m][:-1]) < 0), m)


class ChordTest(unittest.TestCase):

    def test_capsule_chords(self):
        groups = ctsim.capsule_groups((0, 0, 0), (1, 0, 0), 4.5, 0.8)
        p0 = np.array([[-10.0, 0.0, 0.0], [0.0, -10.0, 0.0], [0.0, -10.0, 0.3], [2.0, -10.0, 0.0], [0.0, -10.0, 0.5]])
        d = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 1.0, 0]])
        L = ctsim.chord_length(groups, p0, d)
        self.assertAlmostEqual(L[0], 4.5, places=9)                          # along the axis: full length
        self.assertAlmostEqual(L[1], 0.8, places=9)                          # across the middle: diameter
        self.assertAlmostEqual(L[2], 2 * np.sqrt(0.4 ** 2 - 0.3 ** 2), places=9)
        self.assertAlmostEqual(L[3], 2 * np.sqrt(0.4 ** 2 - 0.15 ** 2), places=9)  # through the end sphere
        self.assertEqual(L[4], 0.0)

    def test_bent_needle_polyline_and_mitred_chords(self):
        pts = ctsim.needle_polyline((0, 0, 0), (100, 0, 0), bend_mm=2.0, bend_direction=(0, 1, 0), external_mm=20)
        self.assertAlmostEqual(pts[0][0], -20.0, delta=0.5)
        self.assertAlmostEqual(float(np.max(pts[:, 1])), 2.0, places=6)
        np.testing.assert_allclose(pts[1], [0, 0, 0], atol=1e-9)
        np.testing.assert_allclose(pts[-1], [100, 0, 0], atol=1e-9)
        groups = ctsim.needle_groups_from_polyline(pts, 1.2)
        # rays across the needle at several places: each meets it once, about its diameter
        xs = np.linspace(-15, 95, 23)
        centre_y = np.interp(xs, pts[:, 0], pts[:, 1])
        p0 = np.stack([xs, centre_y - 10, np.zeros_like(xs)], axis=1)
        L = ctsim.chord_length(groups, p0, np.array([0.0, 1.0, 0.0]))
        np.testing.assert_allclose(L, 1.2, rtol=0.02)


class PhysicsTest(unittest.TestCase):

    def test_water_cylinder_is_zero_hu(self):
        g = _grid()
        hu, _, truth = ctsim.simulate_ct(_water_cylinder(g), g, noise=False, return_float=True)
        c = g.voxel_centers_ras()
        r = np.hypot(c[..., 0], c[..., 1])
        self.assertLess(abs(float(hu[r < 30].mean())), 1.0)
        self.assertLess(float(hu[r < 30].std()), 3.0)
        self.assertLess(abs(float(hu[r > 42].mean()) + 1000.0), 2.0)
        noisy, _, _ = ctsim.simulate_ct(_water_cylinder(g), g, noise=2e4, rng_seed=3, return_float=True)
        sd = float(noisy[r < 30].std())
        self.assertGreater(sd, 2.0)
        self.assertLess(abs(float(noisy[r < 30].mean())), 3 * sd / np.sqrt(50))  # mean stays 0 within noise
        # a bigger water cylinder is still 0 HU (water beam-hardening correction: no cupping)
        g2 = _grid(n=160, nk=1, pixel=2.0)
        big, _, _ = ctsim.simulate_ct(_water_cylinder(g2, radius=150.0), g2, noise=False, return_float=True)
        c2 = g2.voxel_centers_ras()
        r2 = np.hypot(c2[..., 0], c2[..., 1])
        self.assertLess(abs(float(big[r2 < 30].mean()) - float(big[(r2 > 100) & (r2 < 130)].mean())), 3.0)
        self.assertEqual(truth["n_views"], 360)

    def test_steel_saturates_and_streaks_grow_with_metal(self):
        g = _grid(nk=1)
        c = g.voxel_centers_ras()[0]
        ring = (np.hypot(c[..., 0], c[..., 1]) > 8) & (np.hypot(c[..., 0], c[..., 1]) < 28)
        amplitudes = []
        base, _, _ = ctsim.simulate_ct(_water_cylinder(g), g, noise=False, return_float=True)
        for needles in ([], [dict(entry_ras=(0, -40, 0), tip_ras=(0, 0, 0), diameter_mm=0.72)],
                        [dict(entry_ras=(0, -40, 0), tip_ras=(0, 0, 0), diameter_mm=1.47)],
                        [dict(entry_ras=(-3, -40, 0), tip_ras=(-3, 0, 0), diameter_mm=1.47),
                         dict(entry_ras=(3, -40, 0), tip_ras=(3, 0, 0), diameter_mm=1.47)]):
            # needles lying across the slice plane (along z) give point-like cross-sections
            nd = [dict(entry_ras=(n["entry_ras"][0], n["entry_ras"][2] + 5, -20), tip_ras=(n["tip_ras"][0], 5, 20),
                       diameter_mm=n["diameter_mm"]) for n in needles]
            hu, _, _ = ctsim.simulate_ct(_water_cylinder(g), g, needles=nd, noise=False, return_float=True)
            if nd and nd[0]["diameter_mm"] > 1.0:
                self.assertGreaterEqual(float(np.clip(hu, -1024, 3071).max()), 3071.0)
            diff = (hu - base)[0][ring & (np.hypot(c[..., 0], c[..., 1] - 5) > 6)]
            amplitudes.append(float(np.sqrt(np.mean(diff ** 2))))
        self.assertLess(amplitudes[0], 0.5)
        self.assertGreater(amplitudes[1], 1.0)
        self.assertLess(amplitudes[1], amplitudes[2])
        self.assertLess(amplitudes[2], amplitudes[3])

    def test_thick_slices_are_the_mean_of_thin_ones(self):
        g1 = _grid(n=64, nk=6, slice_mm=1.0)
        g3 = _grid(n=64, nk=2, slice_mm=3.0)
        np.testing.assert_allclose(g1.ijk_to_ras([0, 0, 1]), g3.ijk_to_ras([0, 0, 0]), atol=1e-9)
        seeds = [dict(center_ras=(3.0, 2.0, -0.4), axis=(0.3, 0.2, 1.0)), dict(center_ras=(-8.0, 5.0, 1.7), axis=(1, 0, 0))]
        anat = lambda geom: _water_cylinder(geom, 25.0, 40.0)  # noqa: E731
        thin, _, _ = ctsim.simulate_ct(anat, g1, seeds=seeds, noise=True, rng_seed=5, return_float=True)
        thick, _, t3 = ctsim.simulate_ct(anat, g3, seeds=seeds, slice_thickness_mm=3.0, noise=True, rng_seed=5,
                                         return_float=True)
        np.testing.assert_allclose(thick[0], thin[0:3].mean(axis=0), atol=1e-2)
        np.testing.assert_allclose(thick[1], thin[3:6].mean(axis=0), atol=1e-2)
        self.assertEqual(t3["thin_slice_mm"], 1.0)
        # partial volume: the thick slice's seed peak is far lower than the thin slices'
        self.assertLess(thick.max(), thin.max())

    def test_calcification_reconstructs_to_its_hu(self):
        g = _grid(nk=1)
        calc = [dict(center_ras=(0.0, 0.0, 0.0), radius_mm=4.0, hu=600.0)]
        hu, _, _ = ctsim.simulate_ct(_water_cylinder(g), g, calcifications=calc, noise=False, return_float=True)
        c = g.voxel_centers_ras()[0]
        core = float(hu[0][np.hypot(c[..., 0], c[..., 1]) < 2.0].mean())
        # the beam's effective energy behind 76 mm of water is below E_ref: mineral reads somewhat high
        self.assertGreater(core, 540.0)
        self.assertLess(core, 780.0)

    def test_oblique_grid_puts_the_seed_at_its_truth(self):
        a = np.deg2rad(20.0)
        d = [[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]
        g = _grid(n=64, nk=12, pixel=0.8, slice_mm=1.0, direction=d)
        seed = dict(center_ras=(2.3, -1.4, 0.6), axis=(0.0, 0.0, 1.0))
        src = _grid(n=80, nk=40, pixel=1.0, slice_mm=1.0)
        hu, _, truth = ctsim.simulate_ct((_water_cylinder(src, 30.0), src), g, seeds=[seed], noise=False,
                                         return_float=True)
        w = np.clip(hu - 300.0, 0, None)
        kk, jj, ii = np.indices(hu.shape)
        ijk = np.array([np.sum(w * ii), np.sum(w * jj), np.sum(w * kk)]) / w.sum()
        self.assertLess(float(np.linalg.norm(g.ijk_to_ras(ijk) - seed["center_ras"])), 0.35)
        self.assertTrue(truth["seeds"][0]["inside_ct"])


class FastPathTest(unittest.TestCase):

    def test_metal_free_slices_match_the_full_reconstruction(self):
        g = _grid(n=96, nk=8)
        c = g.voxel_centers_ras()
        anat = _water_cylinder(g, 38.0, 40.0)
        needle = [dict(entry_ras=(-30.0, 0.0, 2.2), tip_ras=(10.0, 0.0, 2.8), diameter_mm=1.27)]
        full, _, _ = ctsim.simulate_ct(anat, g, needles=needle, noise=True, rng_seed=3, return_float=True)
        fast, _, truth = ctsim.simulate_ct(anat, g, needles=needle, noise=True, rng_seed=3, return_float=True,
                                           scanner=ctsim.Scanner(fast_metal_free=True))
        self.assertEqual(truth["thin_slices_full_fidelity"] + truth["thin_slices_fast"], 8)
        self.assertGreaterEqual(truth["thin_slices_fast"], 4)
        # the slices around the needle (z 2.2-2.8 mm: k 5-6, +- one row) are reconstructed in full
        np.testing.assert_allclose(fast[4:8], full[4:8], atol=1e-3)
        r = np.hypot(c[0, ..., 0], c[0, ..., 1])
        inner = r < 25
        for k in range(0, 3):
            self.assertLess(abs(float(fast[k][inner].mean()) - float(full[k][inner].mean())), 10.0)
            ratio = float(fast[k][inner].std()) / float(full[k][inner].std())
            self.assertGreater(ratio, 0.6)
            self.assertLess(ratio, 1.5)
            # the body edge has the reconstruction's own blur
            row = slice(78, 94)
            np.testing.assert_allclose(fast[k][48, row], full[k][48, row], atol=60.0)


class CaseTest(unittest.TestCase):

    def test_case_files_and_truth(self):
        with tempfile.TemporaryDirectory() as tmp:
            ct_path, truth_path = ctsim.make_case("postimplant_3mm", os.path.join(tmp, "case"))
            hu, g = read_image(ct_path)
            truth = ctsim.read_truth(truth_path)
            self.assertEqual(hu.dtype, np.int16)
            self.assertEqual(list(g.size), truth["geometry"]["size"])
            self.assertEqual(truth["case"]["name"], "postimplant_3mm")
            self.assertEqual(truth["slice_thickness_mm"], 3.0)
            self.assertEqual(len(truth["seeds"]), 24)
            self.assertEqual({s["arrangement"] for s in truth["seeds"]},
                             {"chain", "line", "side_by_side", "crossed", "migrated"})
            self.assertGreaterEqual(int(hu.min()), -1024)
            self.assertLessEqual(int(hu.max()), 3071)
            # every seed inside the CT shows as metal near its true centre
            for s in truth["seeds"]:
                ijk = np.round(g.ras_to_ijk(s["center_ras"])).astype(int)
                box = hu[max(ijk[2] - 1, 0):ijk[2] + 2, ijk[1] - 2:ijk[1] + 3, ijk[0] - 2:ijk[0] + 3]
                self.assertGreater(int(box.max()), 800, s)
            json.dumps(truth)

    def test_intraop_case_truth_describes_needles(self):
        inputs = ctsim.case_inputs("intraop_1mm")
        names = [n["name"] for n in inputs["needles"]]
        self.assertEqual(len(names), 7)
        g = inputs["geometry"]
        _, _, truth = ctsim.simulate_ct(None, ImageGeometry((32, 32, 2), (4.0, 4.0, 1.0), g.origin), needles=inputs["needles"],
                                        noise=False)
        partly = [n for n in truth["needles"] if n["name"] == "N7_partly_outside"][0]
        self.assertFalse(partly["tip_inside_ct"])
        bent = [n for n in truth["needles"] if n["name"] == "N2"][0]
        self.assertEqual(bent["bend_mm"], 1.5)
        self.assertGreater(len(bent["centerline_ras"]), 3)
        for n in truth["needles"]:
            self.assertAlmostEqual(n["inserted_depth_mm"], float(np.linalg.norm(np.subtract(n["tip_ras"], n["entry_ras"]))))

    def test_bad_input(self):
        g = _grid(n=16, nk=2)
        with self.assertRaises(InputError):
            ctsim.simulate_ct(np.zeros((3, 16, 16)), g)
        with self.assertRaises(InputError):
            ctsim.simulate_ct(None, g, needles=[dict(entry_ras=(0, 0, 0), tip_ras=(0, 0, 0))])
        with self.assertRaises(InputError):
            ctsim.simulate_ct(None, g, seeds=[dict(center_ras=(0, 0), axis=(0, 0, 1))])
        with self.assertRaises(InputError):
            ctsim.simulate_ct(None, g, calcifications=[dict(center_ras=(0, 0, 0), radius_mm=-1, hu=500)])
        with self.assertRaises(InputError):
            ctsim.make_case("no_such_case", "/nonexistent")
        with self.assertRaises(InputError):
            ctsim.simulate_ct(None, g, slice_thickness_mm=50.0)


if __name__ == "__main__":
    unittest.main()
