"""`seedplan intraop --transform` / `--register`: the intra-operative CT of a patient who moved after the
planning CT, brought into the plan's frame before the chain (imaging/registration.py hook).

The CT is simulated (imaging/ctsim.py) with the small test case's anatomy, needles and implanted seeds
all moved by a known rigid motion; the needle table is written in the moved CT's frame (as
find-needles would write it). With the registration the deviations are those of the implant alone;
without it they include the motion.
"""

import csv
import json
import math
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

from seedplan_cli import seedplan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SeedImplantPlanner"))
sys.path.insert(0, str(ROOT / "SeedImplantPlanner" / "Testing" / "Python"))

from SeedImplantPlannerLib.core.fileio import write_csv  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.core.imageio import write_image  # noqa: E402
from SeedImplantPlannerLib.imaging import ctsim  # noqa: E402
from SeedImplantPlannerLib.imaging.registration import RegistrationResult, write_transform  # noqa: E402
from SeedImplantPlannerLib.imaging.segio import write_segmentation  # noqa: E402
from SeedImplantPlannerLib.planning import ctcases, intraop  # noqa: E402
from SeedImplantPlannerLib.planning.needles import NEEDLE_TABLE_COLUMNS, needle_table  # noqa: E402
from SeedImplantPlannerLib.planning.planfile import write_plan  # noqa: E402
from test_intraop import small_case  # noqa: E402

try:
    import slicer  # noqa: F401
    HAVE_SLICER = True
except ImportError:
    HAVE_SLICER = False

A = math.radians(3.0)
R = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(A), -math.sin(A)], [0.0, math.sin(A), math.cos(A)]])   # tilts the needles
T = np.array([2.5, -2.0, 1.5])


def move(p):
    return (np.asarray(p, float) @ R.T + T).tolist()


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class IntraopWithRegistration(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.dir = Path(cls.tmp.name)
        plan, seg, (arr, ag) = small_case()
        needles, seeds, _ = ctcases.implant_scenario(plan, n_loaded=3, rng_seed=4)
        # the patient moved: the anatomy's grid, the needles and the seeds, by x -> R x + T
        moved_anat = ImageGeometry(ag.size, ag.spacing, tuple(move(ag.origin)), tuple(map(tuple, R @ ag.direction_matrix)))
        for n in needles:
            n["entry_ras"], n["tip_ras"] = move(n["entry_ras"]), move(n["tip_ras"])
            n["bend_direction"] = (R @ np.asarray(n["bend_direction"])).tolist()
        for s in seeds:
            s["center_ras"], s["axis"] = move(s["center_ras"]), (R @ np.asarray(s["axis"])).tolist()
        g = ImageGeometry((56, 56, 20), (1.0, 1.0, 2.0), (-27.5, -27.5, -19.0))
        ct, g, truth = ctsim.simulate_ct((arr, moved_anat), g, needles=needles, seeds=seeds, slice_thickness_mm=2.0,
                                         rng_seed=2)
        write_image(d / "ct.nrrd", ct, g)
        write_segmentation(d / "seg.seg.nrrd", seg)
        write_plan(d / "plan.json", plan)
        write_csv(d / "needles.csv", needle_table(intraop.needles_from_dicts(truth["needles"])), NEEDLE_TABLE_COLUMNS)
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = R.T, -R.T @ T                   # planning-from-new
        write_transform(d / "t.json", RegistrationResult(m))
        write_transform(d / "t.tfm", RegistrationResult(m))
        cls.needles, cls.seeds = needles, seeds
        common = ["intraop", "--ct", d / "ct.nrrd", "--plan", d / "plan.json", "--segmentation", d / "seg.seg.nrrd",
                  "--needles", d / "needles.csv", "--implanted", len(seeds), "--time-limit", 1.0, "--no-scene",
                  "--no-options"]
        cls.with_reg = seedplan(*common, "--transform", d / "t.tfm", "--out", d / "reg")
        cls.without = seedplan(*common, "--out", d / "noreg")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_deviations_are_the_implant_alone(self):
        self.assertIn(self.with_reg.returncode, (0, 3), self.with_reg.stderr)
        self.assertIn(self.without.returncode, (0, 3), self.without.stderr)
        self.assertIn("registration: patient moved", self.with_reg.stdout)
        truth = {n["name"]: n["deviation"] for n in self.needles}
        reg = {r["name"]: r for r in rows(self.dir / "reg" / "needle_deviations.csv") if r["status"] == "in place"}
        noreg = {r["name"]: r for r in rows(self.dir / "noreg" / "needle_deviations.csv") if r["status"] == "in place"}
        self.assertEqual(set(reg), set(truth))
        for name, dev in truth.items():
            self.assertAlmostEqual(float(reg[name]["tip_mm"]), dev["tip_mm"], delta=0.05, msg=name)
            self.assertAlmostEqual(float(reg[name]["angle_deg"]), dev["angle_deg"], delta=0.05, msg=name)
        # without the registration the motion (3 deg, 3.5 mm) is read as needle deviation
        err_reg = np.median([abs(float(reg[n]["angle_deg"]) - truth[n]["angle_deg"]) for n in reg])
        err_noreg = np.median([abs(float(noreg[n]["angle_deg"]) - truth[n]["angle_deg"]) for n in noreg])
        self.assertGreater(err_noreg, 1.0)
        self.assertLess(err_reg, 0.05)

    def test_seeds_in_the_plan_frame_and_registration_recorded(self):
        found = rows(self.dir / "reg" / "seeds_implanted.csv")
        # the same seeds are found with and without the registration (the finder runs on the same voxels)
        self.assertGreater(len(found), 0)
        self.assertEqual(len(found), len(rows(self.dir / "noreg" / "seeds_implanted.csv")))
        truth = np.array([(np.asarray(s["center_ras"]) - T) @ R for s in self.seeds])   # back in the plan frame
        pos = np.array([[float(r["x_mm"]), float(r["y_mm"]), float(r["z_mm"])] for r in found])
        d = np.linalg.norm(pos[:, None, :] - truth[None], axis=-1).min(axis=1)
        self.assertLess(float(d.max()), 1.0, d)
        summary = json.loads((self.dir / "reg" / "intraop_summary.json").read_text())
        self.assertAlmostEqual(summary["registration"]["rotation_angle_deg"], 3.0, places=6)
        self.assertIn("registration.tfm", summary["files"])
        self.assertTrue((self.dir / "reg" / "registration.json").exists())
        self.assertIn("CT registered to the planning CT", (self.dir / "reg" / "report.html").read_text())
        self.assertIsNone(json.loads((self.dir / "noreg" / "intraop_summary.json").read_text())["registration"])

    def test_register_and_transform_together_is_refused(self):
        d = self.dir
        r = seedplan("intraop", "--ct", d / "ct.nrrd", "--plan", d / "plan.json", "--segmentation", d / "seg.seg.nrrd",
                     "--needles", d / "needles.csv", "--register", d / "ct.nrrd", "--transform", d / "t.json",
                     "--out", d / "both")
        self.assertEqual(r.returncode, 2)
        self.assertIn("give --register or --transform, not both", r.stderr)
        self.assertFalse((d / "both").exists())


@unittest.skipUnless(HAVE_SLICER, "slicer-core is not installed (pip install slicer-core)")
class IntraopSceneWithRegistration(unittest.TestCase):
    """The scene.mrb of `seedplan intraop --register` / `--transform`, read back with slicer-core: the intra-op CT in
    its scanner coordinates under the IntraopRegistration transform node (as the module and the web page make it),
    the plan's CT the planning CT, the needles and seeds found in the plan's frame."""

    @classmethod
    def setUpClass(cls):
        from intraop_moved_case import make_moved_case
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.dir = Path(cls.tmp.name)
        cls.case = make_moved_case(d / "case")
        write_transform(d / "truth.tfm", RegistrationResult(cls.case["truth_matrix"]))
        common = ["intraop", "--ct", cls.case["intraop"], "--plan", cls.case["plan"] / "plan.json",
                  "--needles", cls.case["needles_csv"], "--implanted", len(cls.case["seeds"]), "--time-limit", 1.0,
                  "--no-options"]
        cls.registered = seedplan(*common, "--register", "--out", d / "reg")
        cls.transformed = seedplan(*common, "--transform", d / "truth.tfm", "--out", d / "tfm")
        # a plan whose planning CT is not at hand (moved away): the scene holds the registered CT alone
        doc = json.loads((cls.case["plan"] / "plan.json").read_text())
        doc["structures"]["image"] = str(d / "gone" / "ct.nrrd")
        (d / "plan_no_ct.json").write_text(json.dumps(doc))
        cls.no_planning = seedplan(*common[:4], d / "plan_no_ct.json", *common[5:], "--transform", d / "truth.tfm",
                                   "--out", d / "noct")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def load(self, name):
        from SeedImplantPlannerLib.mrml.scene import create_scene
        ctx = create_scene()
        self.addCleanup(ctx.close)
        ctx.load_mrb(self.dir / name / "scene.mrb")
        return ctx

    @staticmethod
    def nodes(scene, cls):
        return [scene.GetNthNodeByClass(i, cls) for i in range(scene.GetNumberOfNodesByClass(cls))]

    def check_scene(self, name, run):
        import vtk
        from SeedImplantPlannerLib.core.imageio import read_image
        from SeedImplantPlannerLib.imaging.registration import read_transform
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        from SeedImplantPlannerLib.mrml.nodes import ROLE_ATTRIBUTE
        from SeedImplantPlannerLib.mrml.plan_scene import PlanScene
        from SeedImplantPlannerLib.mrml.volumes import geometry_from_volume
        from intraop_moved_case import move
        self.assertIn(run.returncode, (0, 3), run.stderr)
        folder = self.dir / name
        written = read_transform(folder / "registration.json")      # what the chain used
        ctx = self.load(name)
        scene = ctx.scene
        transforms = reg.registration_nodes(scene)
        self.assertEqual(len(transforms), 1)
        cts = [n for n in self.nodes(scene, "vtkMRMLScalarVolumeNode") if n.GetAttribute(ROLE_ATTRIBUTE) == "IntraopCT"]
        self.assertEqual(len(cts), 1)
        ct = cts[0]
        self.assertEqual(ct.GetName(), "Intra-op CT intraop_moved.nrrd")
        self.assertEqual(ct.GetTransformNodeID(), transforms[0].GetID())
        # the CT as acquired (its scanner grid and voxels), the transform node's matrix the registration's
        arr, g = read_image(self.case["intraop"])
        local = geometry_from_volume(ct)
        np.testing.assert_allclose(local.origin, g.origin, atol=1e-6)
        np.testing.assert_allclose(local.direction_matrix, g.direction_matrix, atol=1e-9)
        np.testing.assert_allclose(local.spacing, g.spacing, atol=1e-9)
        from SeedImplantPlannerLib.mrml.volumes import volume_array
        np.testing.assert_array_equal(volume_array(ct), arr)
        np.testing.assert_allclose(reg.world_matrix(ct), written.matrix_ras, atol=1e-6)
        # a known point: the target's centre p (planning frame) is seen at q on the intra-op CT; Slicer puts q at p
        p = np.array([-15.0, 8.0, 5.0])
        q = move(p)
        to_world = vtk.vtkGeneralTransform()
        transforms[0].GetTransformToWorld(to_world)
        np.testing.assert_allclose(to_world.TransformPoint(*q), written.map_points(q), atol=1e-6)
        self.assertLess(np.linalg.norm(np.array(to_world.TransformPoint(*q)) - p), 1.0)
        # the module's logic on the loaded scene: the same registration (record, quality, warnings, shown lines)
        ps = PlanScene(ctx, scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode"))
        planning = ps.params.get_node("ctVolume")
        self.assertIsNotNone(planning)
        self.assertIsNone(planning.GetParentTransformNode())
        np.testing.assert_allclose(geometry_from_volume(planning).origin, read_image(self.case["ct"])[1].origin,
                                   atol=1e-6)
        session = IntraopSession(ps)
        back = session.registration(ct)
        np.testing.assert_allclose(back.matrix_ras, written.matrix_ras, atol=1e-6)
        self.assertEqual(back.quality, written.quality)
        self.assertEqual(back.warnings, written.warnings)
        self.assertEqual(reg.panel_report(back)["lines"][1:], written.report()["lines"][1:])
        self.assertIs(session.registration_node(ct), transforms[0])
        # the grid the finders see in the module is the one the chain used
        wg = session.ct(ct)[1]
        mg = written.moved_geometry(g)
        np.testing.assert_allclose(wg.origin, mg.origin, atol=1e-6)
        np.testing.assert_allclose(wg.direction_matrix, mg.direction_matrix, atol=1e-9)
        # the needles and seeds found: in the plan's frame, under no transform
        truth = RegistrationResult(self.case["truth_matrix"])
        tips = {n["name"]: truth.map_points(n["tip_ras"]) for n in self.case["needles"]}
        found = session.needle_nodes()
        self.assertEqual(len(found), len(tips))
        for node in found:
            self.assertIsNone(node.GetParentTransformNode())
            name = node.GetName().replace("Found ", "", 1)
            self.assertLess(np.linalg.norm(np.array(node.GetNthControlPointPositionWorld(1)) - tips[name]), 1.0, name)
        seeds = session.seeds_node()
        self.assertIsNone(seeds.GetParentTransformNode())
        pos = np.array([seeds.GetNthControlPointPositionWorld(i) for i in range(seeds.GetNumberOfControlPoints())])
        d = np.linalg.norm(pos[:, None, :] - self.case["seeds_plan_frame"][None], axis=-1).min(axis=1)
        self.assertLess(float(np.median(d)), 1.5, d)
        # what the module's panel and the web page take up on opening it (mrml/intraop_state.py)
        state = session.restore()
        self.assertIs(state.ct_node, ct)
        self.assertEqual(state.source_file, str(Path(self.case["intraop"]).resolve()))
        self.assertEqual(state.record, "stored")
        np.testing.assert_allclose(state.registration.matrix_ras, written.matrix_ras, atol=1e-9)
        self.assertEqual(len(state.needles), len(tips))
        self.assertIs(state.seeds_node, seeds)
        table = rows(folder / "needle_deviations.csv")
        self.assertEqual([r["name"] for r in state.deviation_rows], [r["name"] for r in table])
        for got, want in zip(state.deviation_rows, table):
            if want["tip_mm"]:
                self.assertAlmostEqual(float(got["tip_mm"]), float(want["tip_mm"]), places=3)
        self.assertIn("registered to the planning CT", state.summary())
        return written

    def test_registered_scene(self):
        written = self.check_scene("reg", self.registered)
        self.assertTrue(written.report()["checked"])
        self.assertTrue(written.report()["verdict"].startswith("accepted"))

    def test_transform_without_the_planning_ct(self):
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        from SeedImplantPlannerLib.mrml.nodes import ROLE_ATTRIBUTE
        from SeedImplantPlannerLib.mrml.plan_scene import PlanScene
        r = self.no_planning
        self.assertIn(r.returncode, (0, 3), r.stderr)
        self.assertIn("the plan's planning CT", r.stderr)
        self.assertIn("is not found: scene.mrb holds the registered CT without it", r.stderr)
        ctx = self.load("noct")
        ps = PlanScene(ctx, ctx.scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode"))
        self.assertIsNone(ps.params.get_node("ctVolume"))
        ct = [n for n in self.nodes(ctx.scene, "vtkMRMLScalarVolumeNode") if n.GetAttribute(ROLE_ATTRIBUTE) == "IntraopCT"]
        self.assertEqual(len(ct), 1)
        np.testing.assert_allclose(reg.world_matrix(ct[0]), self.case["truth_matrix"], atol=1e-9)
        # the module does not take it as the plan's CT (its default is the first volume that can be)
        self.assertIn("is the intra-operative CT registered", reg.plan_ct_problem(ct[0]))
        self.assertGreater(len(ps.seeds()[0]), 0)

    def test_transform_file_scene(self):
        written = self.check_scene("tfm", self.transformed)
        np.testing.assert_allclose(written.matrix_ras, self.case["truth_matrix"], atol=1e-9)
        self.assertFalse(written.report()["checked"])


if __name__ == "__main__":
    unittest.main()
