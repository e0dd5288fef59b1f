"""Image geometry (RAS/LPS, oblique), NRRD and DICOM series read back, atomic writes, seeds CSV."""

import os
import tempfile
import unittest
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SeedImplantPlannerLib.core.errors import GeometryError, InputError
from SeedImplantPlannerLib.core.fileio import write_text
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.core.imageio import read_image, write_image
from SeedImplantPlannerLib.physics.seeds import read_points_csv, read_seeds_csv


def oblique_geometry():
    a = np.radians(20.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    b = np.radians(10.0)
    tilt = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return ImageGeometry((7, 5, 4), (1.1, 0.9, 2.5), (-12.5, 30.25, 7.0), rot @ tilt)


class TestGeometry(unittest.TestCase):
    def test_ijk_ras_round_trip_and_centres(self):
        g = oblique_geometry()
        ijk = np.array([[0, 0, 0], [6, 4, 3], [2.5, 1.25, 0.5]])
        np.testing.assert_allclose(g.ras_to_ijk(g.ijk_to_ras(ijk)), ijk, atol=1e-12)
        centres = g.voxel_centers_ras()
        self.assertEqual(centres.shape, (4, 5, 7, 3))
        np.testing.assert_allclose(centres[3, 4, 6], g.ijk_to_ras([6, 4, 3]), atol=1e-12)
        m = g.ijk_to_ras_matrix
        np.testing.assert_allclose(m[:3, :3] @ [6, 4, 3] + m[:3, 3], g.ijk_to_ras([6, 4, 3]), atol=1e-12)

    def test_bad_geometry(self):
        with self.assertRaisesRegex(GeometryError, "empty grid"):
            ImageGeometry((0, 4, 4), (1, 1, 1), (0, 0, 0))
        with self.assertRaisesRegex(GeometryError, "spacing"):
            ImageGeometry((4, 4, 4), (1, 0, 1), (0, 0, 0))
        with self.assertRaisesRegex(GeometryError, "orthonormal"):
            ImageGeometry((4, 4, 4), (1, 1, 1), (0, 0, 0), [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
        with self.assertRaisesRegex(GeometryError, "empty grid"):
            ImageGeometry.from_bounds([0, 0, 0], [-1, 5, 5], 1.0)
        g = oblique_geometry()
        h = ImageGeometry(g.size, g.spacing, (0, 0, 0), g.direction)
        with self.assertRaisesRegex(GeometryError, "geometry mismatch"):
            g.require_match(h, "dose and CT")


class TestImageFiles(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_nrrd_keeps_oblique_geometry_in_ras(self):
        g = oblique_geometry()
        arr = np.arange(np.prod(g.shape), dtype=np.float32).reshape(g.shape)
        path = write_image(self.dir / "d.nrrd", arr, g)
        back, g2 = read_image(path)
        np.testing.assert_array_equal(back, arr)
        self.assertTrue(g.matches(g2, 1e-5))
        # the file itself is LPS (ITK): origin x and y are negated
        img = sitk.ReadImage(str(path))
        np.testing.assert_allclose(img.GetOrigin(), [12.5, -30.25, 7.0], atol=1e-9)
        self.assertEqual(oct(os.stat(path).st_mode & 0o777), oct(0o666 & ~_umask()))

    def test_dicom_series_folder(self):
        g = ImageGeometry((6, 5, 4), (0.8, 0.8, 2.0), (-10.0, 20.0, 5.0))
        arr = (np.arange(np.prod(g.shape)) % 500).astype(np.int16).reshape(g.shape)
        folder = self.dir / "ct"
        folder.mkdir()
        origin_lps, direction_lps = g.to_lps()
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k in range(g.shape[0]):
            sl = sitk.GetImageFromArray(arr[k:k + 1])
            pos = origin_lps + direction_lps[:, 2] * g.spacing[2] * k
            sl.SetSpacing(g.spacing)
            for tag, value in [("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                               ("0020|000e", "1.2.826.0.1.3680043.2.1125.2"),
                               ("0020|0032", "\\".join(f"{v:.4f}" for v in pos)),
                               ("0020|0037", "\\".join(f"{v:.6f}" for v in list(direction_lps[:, 0]) + list(direction_lps[:, 1]))),
                               ("0020|0013", str(k + 1)), ("0028|0030", "0.8\\0.8"), ("0018|0050", "2.0")]:
                sl.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"{k:03d}.dcm"))
            writer.Execute(sl)
        back, g2 = read_image(folder)
        np.testing.assert_array_equal(back, arr)
        self.assertTrue(g.matches(g2, 1e-3), f"{g} vs {g2}")

    def test_unreadable_and_missing(self):
        bad = self.dir / "bad.nrrd"
        bad.write_text("this is not an image")
        with self.assertRaisesRegex(InputError, "bad.nrrd: unreadable image"):
            read_image(bad)
        with self.assertRaisesRegex(InputError, "not found"):
            read_image(self.dir / "none.nrrd")
        empty = self.dir / "empty"
        empty.mkdir()
        with self.assertRaisesRegex(InputError, "no DICOM"):
            read_image(empty)

    def test_atomic_write_keeps_old_file_on_failure(self):
        target = self.dir / "report.txt"
        target.write_text("previous")

        class Boom(Exception):
            pass

        from SeedImplantPlannerLib.core.fileio import atomic_path
        with self.assertRaises(Boom):
            with atomic_path(target) as tmp:
                tmp.write_text("half")
                raise Boom()
        self.assertEqual(target.read_text(), "previous")
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["report.txt"])
        write_text(target, "new")
        self.assertEqual(target.read_text(), "new")


class TestSeedCsv(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, text):
        p = self.dir / "s.csv"
        p.write_text(text)
        return p

    def test_reads_and_normalises_axes(self):
        p = self.write("model,x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,comment\n"
                       "I125_OncoSeed_6711,1,2,3,0,0,2,0.5,first\n")
        s = read_seeds_csv(p)
        np.testing.assert_allclose(s.axes[0], [0, 0, 1])
        self.assertEqual(s.models, ["I125_OncoSeed_6711"])

    def test_bad_rows_are_named(self):
        head = "x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model\n"
        cases = {
            "x_mm,y_mm,z_mm,axis_x,axis_y,sk_U,model\n1,2,3,0,0,1,a\n": "missing column.*axis_z",
            head + "1,2,3,0,0,1,nan,m\n": "line 2: column sk_U: strength is not finite",
            head + "1,2,3,0,0,1,-0.5,m\n": "line 2: column sk_U: strength must be > 0",
            head + "1,2,3,0,0,1,0,m\n": "strength must be > 0",
            head + "1,2,3,0,0,0,0.5,m\n": "zero-length",
            head + "1,2,abc,0,0,1,0.5,m\n": "line 2: column z_mm: not a number",
            head: "no rows",
        }
        for text, pattern in cases.items():
            with self.assertRaisesRegex(InputError, pattern):
                read_seeds_csv(self.write(text))

    def test_points(self):
        p = self.dir / "p.csv"
        p.write_text("x_mm,y_mm,z_mm\n1,2,3\n4,5,6\n")
        np.testing.assert_array_equal(read_points_csv(p), [[1, 2, 3], [4, 5, 6]])


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


if __name__ == "__main__":
    unittest.main()
