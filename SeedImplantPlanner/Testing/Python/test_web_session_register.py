"""The web planner's intra-operative registration (web/session_intraop.py) on a real slicer-core scene, no browser.

The served folder holds a plan made on a simulated planning CT and an intra-operative CT of the same
patient after a known rigid motion with the plan's needles in place and some seeds implanted
(intraop_moved_case.py). Checked: the registration job (progress, cancel), its result in the
scene (the CT under a linear transform node) and on the page, the needles CSV and the chain in the
plan's frame (deviations of the implant, not of the motion), refusals that change nothing, and the
same numbers from the command line (``seedplan register``), the module's logic and the page.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.imaging.registration import RegistrationResult, rotation_angle_deg, write_transform
from test_web_session import HAVE_SLICER, _SessionOnServedFolder

if HAVE_SLICER:
    from SeedImplantPlannerLib.mrml.scene import create_scene  # noqa: F401

LIB = Path(__file__).resolve().parents[2]


def run_job(session, job, timeout_s=300):
    assert job.wait(timeout_s), "job did not finish"
    return session.apply_job()


@unittest.skipUnless(HAVE_SLICER, "slicer-core is not installed (pip install slicer-core)")
class WebRegistrationTest(_SessionOnServedFolder, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        from intraop_moved_case import make_moved_case
        cls.tmp = Path(tempfile.mkdtemp(prefix="seedplan-web-register-"))
        cls.root = cls.tmp / "served"
        cls.case = make_moved_case(cls.root / "moved")
        write_transform(cls.root / "moved" / "truth.tfm", RegistrationResult(cls.case["truth_matrix"]))

    def cli_register(self, tag, *options):
        """``seedplan register`` of the moved case's CTs (extra ``options``) in a subprocess: (result, its stdout)."""
        out = self.tmp / f"{tag}-{os.getpid()}"
        out.mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(LIB) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run([sys.executable, "-m", "SeedImplantPlannerLib.cli", "--quiet", "register", "--fixed",
                            str(self.case["ct"]), "--moving", str(self.case["intraop"]), "--out", str(out / "t.tfm"),
                            "--json", str(out / "r.json"), *options], capture_output=True, text=True, env=env,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return RegistrationResult.from_dict(json.loads((out / "r.json").read_text())), r.stdout

    def register(self):
        self.session.open_path("moved/plan")
        seen = []
        job = self.session.start_register("moved/intraop_moved.nrrd")
        while job.running:
            seen.append(job.fraction)
            job.wait(0.05)
        message = run_job(self.session, job)
        return message, seen

    def test_register_shows_the_result_and_the_ct_aligned(self):
        from SeedImplantPlannerLib.mrml import intraop_registration as reg
        message, seen = self.register()
        self.assertIn("intraop_moved.nrrd registered to the planning CT", message)
        self.assertIn("bone Dice", message)
        res = self.session.registration
        truth = RegistrationResult(self.case["truth_matrix"])
        pts = np.array([[-15.0, 8.0, 5.0], [0.0, -28.0, 0.0], [38.0, -5.0, 0.0], [0.0, 40.0, 20.0]])
        self.assertLess(np.linalg.norm(res.map_points(pts) - truth.map_points(pts), axis=1).max(), 1.0)
        self.assertLess(rotation_angle_deg(res.rotation.T @ truth.rotation), 0.5)
        rep = self.session.registration_report()
        self.assertEqual(rep["ct"], "moved/intraop_moved.nrrd")
        self.assertTrue(rep["checked"])
        self.assertTrue(rep["verdict"].startswith("accepted"))
        self.assertGreater(rep["bone_dice"], rep["bone_dice_before"])
        self.assertAlmostEqual(rep["shift_norm_mm"], float(np.linalg.norm(res.patient_shift_mm)), places=1)
        # the CT in the scene, under a linear transform node holding the result (Slicer's transform to parent)
        node = self.session.intraop_ct_node
        self.assertTrue(node.GetParentTransformNode().IsA("vtkMRMLLinearTransformNode"))
        np.testing.assert_allclose(reg.world_matrix(node), res.matrix_ras, atol=1e-12)
        self.assertIsNone(self.session.plan_scene.params.get_node("ctVolume").GetParentTransformNode())
        # saved with the scene
        path = self.session.save_mrb("registered.mrb")
        scratch = create_scene()
        try:
            scratch.load_mrb(path)
            nodes = reg.registration_nodes(scratch.scene)
            self.assertEqual(len(nodes), 1)
            ct = [scratch.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                  for i in range(scratch.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))
                  if scratch.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetTransformNodeID() == nodes[0].GetID()]
            self.assertEqual(len(ct), 1)
            np.testing.assert_allclose(reg.registration_of(ct[0]).matrix_ras, res.matrix_ras, atol=1e-6)
        finally:
            scratch.close()

    def test_needles_csv_and_chain_in_the_plan_frame(self):
        self.register()
        # the CSV holds the needles as found on the intra-op CT (its frame): mapped into the plan's frame
        self.session.load_implanted_needles("moved/needles_on_intraop.csv")
        job = self.session.start_intraop("moved/intraop_moved.nrrd", time_limit_s=1.0)
        message = run_job(self.session, job)
        self.assertIn("(registered to the planning CT)", message)
        result = self.session.intraop_result
        self.assertIs(result.registration, self.session.registration)
        truth = {n["name"]: n["deviation"] for n in self.case["needles"]}
        rows = {r["implanted"]: r for r in self.session.needle_deviations() if r["note"] == "in place"}
        self.assertEqual(set(rows), set(truth))
        for name, dev in truth.items():
            self.assertAlmostEqual(rows[name]["tip_mm"], dev["tip_mm"], delta=1.0)
            self.assertAlmostEqual(rows[name]["angle_deg"], dev["angle_deg"], delta=0.5)
        # the seeds already implanted are found in the plan's frame
        found = result.found_seeds.positions
        self.assertGreaterEqual(len(found), len(self.case["seeds"]) - 1)
        d = np.linalg.norm(found[:, None, :] - self.case["seeds_plan_frame"][None], axis=-1).min(axis=1)
        self.assertLess(float(np.median(d)), 1.5, d)
        # back to the scanner coordinates: the CT leaves the transform, the chain's needles move with it
        self.assertIn("scanner coordinates", self.session.clear_registration())
        self.assertIsNone(self.session.registration)
        self.assertIsNone(self.session.intraop_ct_node.GetParentTransformNode())

    def test_registration_options_as_the_command_line(self):
        """Bone window metric and translation only on the page and in the module: seedplan register's numbers."""
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        from SeedImplantPlannerLib.mrml.intraop_registration import panel_report
        from SeedImplantPlannerLib.mrml.volumes import add_scalar_volume
        from SeedImplantPlannerLib.core.imageio import read_image
        cli, _ = self.cli_register("cli-options", "--metric", "bone", "--translation-only")
        self.session.open_path("moved/plan")
        options = self.session.register_options(bone_metric=True, translation_only=True)
        self.assertEqual(options, {"metric": "bone", "translation_only": True})
        message = run_job(self.session, self.session.start_register("moved/intraop_moved.nrrd", **options))
        self.assertIn("registered with: bone window metric, translation only (no rotation)", message)
        web = self.session.registration
        ps = self.session.plan_scene
        ct_node = add_scalar_volume(self.ctx.scene, *read_image(self.case["intraop"]), "Intra-op CT (module)")
        module = IntraopSession(ps).register(ct_node, metric="bone", translation_only=True)
        for name, res in (("web page", web), ("module", module)):
            np.testing.assert_allclose(res.matrix_ras, cli.matrix_ras, atol=1e-6, err_msg=name)
            self.assertEqual((res.metric, res.translation_only), ("bone", True), name)
            np.testing.assert_allclose(res.rotation, np.eye(3), atol=1e-12, err_msg=name)   # 3 degrees of freedom
            self.assertEqual(panel_report(res)["lines"][2], "registered with: bone window metric, translation only "
                                                            "(no rotation)", name)
        self.assertEqual(self.session.registration_report()["lines"], panel_report(module)["lines"])
        # the default registration says nothing of options; here the rotation it finds is left out
        default = IntraopSession(ps).register(ct_node)
        self.assertFalse(any(line.startswith("registered with") for line in panel_report(default)["lines"]))
        self.assertGreater(default.rotation_angle_deg, 4.0)
        self.assertLess(web.quality["bone_dice"], default.quality["bone_dice"])

    def test_registered_ct_refused_as_the_plans_ct(self):
        """Opening the registered intra-op CT as the plan's CT, or a bundle whose plan's CT is it, is refused by name."""
        self.session.open_path("moved/plan")
        self.session.load_registration("moved/truth.tfm", "moved/intraop_moved.nrrd")
        ps = self.session.plan_scene
        with self.assertRaisesRegex(InputError, "intraop_moved.nrrd is the intra-operative CT registered to the planning "
                                                "CT: it cannot be the plan's CT.*Open the planning CT"):
            self.session.open_case("moved/intraop_moved.nrrd", "moved/case/seg.seg.nrrd")
        self.assertIs(self.session.plan_scene, ps)
        self.assertIsNotNone(self.session.registration)
        # a bundle saved with the registered CT as the plan's CT (as a script could leave it) is not opened
        planning = ps.params.get_node("ctVolume")
        ps.params.set_node("ctVolume", self.session.intraop_ct_node)
        with self.assertRaisesRegex(InputError, "'Intra-op CT intraop_moved.nrrd' is the intra-operative CT registered"):
            self.session.save_plan_folder("refused-plan")
        self.assertFalse((self.root / "refused-plan").exists())
        path = self.session.save_mrb("ct-under-registration.mrb")
        ps.params.set_node("ctVolume", planning)
        with self.assertRaisesRegex(InputError, r"ct-under-registration\.mrb: the plan's CT in this scene: 'Intra-op CT "
                                                r"intraop_moved\.nrrd' is the intra-operative CT registered"):
            self.session.open_mrb(path)
        self.assertIs(self.session.plan_scene, ps)
        # deliberately, in its own coordinates: "No registration" first, then it opens as a new case
        self.session.clear_registration()
        self.session.open_case("moved/intraop_moved.nrrd", "moved/case/seg.seg.nrrd")
        self.assertIsNone(self.session.plan_scene.ct_node().GetParentTransformNode())

    def test_found_needles_and_the_chain_move_with_the_ct(self):
        """As the module's markups: what was found on the CT follows a new registration (or none), nothing is lost."""
        truth = RegistrationResult(self.case["truth_matrix"])
        dev = {n["name"]: n["deviation"] for n in self.case["needles"]}
        self.session.open_path("moved/plan")
        # the needle finder in scanner coordinates: the patient's motion reads as needle deviation
        run_job(self.session, self.session.start_find_needles("moved/intraop_moved.nrrd"))
        before = [m.found for m in self.session.needle_matching.rows_ if m.found is not None]
        # a transform file for another CT: these needles were not found on it, they stay
        self.session.load_registration("moved/truth.tfm", "moved/intraop_far.nrrd")
        self.assertEqual([m.found.tip.tolist() for m in self.session.needle_matching.rows_ if m.found is not None],
                         [f.tip.tolist() for f in before])
        self.session.clear_registration()
        message = self.session.load_registration("moved/truth.tfm", "moved/intraop_moved.nrrd")
        self.assertIn(f"the {len(before)} needles found before moved with the CT: needles:", message)
        after = [m.found for m in self.session.needle_matching.rows_ if m.found is not None]
        self.assertEqual(len(after), len(before))
        moved = truth.map_points(np.array([f.tip for f in before]))
        for f in after:   # each found needle is one found before, moved rigidly (tip, entry, axis, centreline)
            k = int(np.argmin(np.linalg.norm(moved - f.tip, axis=1)))
            b = before[k]
            np.testing.assert_allclose(f.tip, truth.map_points(b.tip), atol=1e-9)
            np.testing.assert_allclose(f.entry, truth.map_points(b.entry), atol=1e-9)
            np.testing.assert_allclose(f.direction, truth.map_directions(b.direction), atol=1e-12)
            np.testing.assert_allclose(f.points, truth.map_points(b.points), atol=1e-9)
            self.assertAlmostEqual(f.depth_mm, b.depth_mm)
        # matched again in the plan's frame: the deviations are the implant's own (the motion is gone)
        rows = {r["implanted"]: r for r in self.session.needle_deviations() if r["note"].startswith("matched")}
        self.assertGreaterEqual(len(set(rows) & set(dev)), len(dev) - 2, rows)
        err = [abs(rows[n]["tip_mm"] - dev[n]["tip_mm"]) for n in set(rows) & set(dev)]
        self.assertLess(float(np.median(err)), 1.5, err)
        names = {n.name for n in self.session.implanted_needles}
        self.assertEqual(names, {r["implanted"] for r in self.session.needle_deviations()
                                 if not r["note"].startswith("missing")})
        # the chain on a needles CSV, then the registration taken away: the re-plan of the earlier frame is
        # replaced by the plan being implanted, the needles in place move with the CT and are kept
        self.session.load_implanted_needles("moved/needles_on_intraop.csv")
        run_job(self.session, self.session.start_intraop("moved/intraop_moved.nrrd", time_limit_s=1.0))
        first = self.session.intraop_result
        message = self.session.clear_registration()
        self.assertIn("the plan being implanted is shown again", message)
        self.assertIsNone(self.session.intraop_result)
        self.assertIs(self.session.plan, first.original)
        self.assertEqual(len(self.session.plan_scene.seeds()[0]), len(first.original.seeds))
        self.assertTrue(self.session.has_dose())
        inverse = RegistrationResult(truth.inverse_matrix_ras)
        np.testing.assert_allclose([n.tip for n in self.session.implanted_needles],
                                   inverse.map_points(np.array([n.tip for n in first.needles_in_place])), atol=1e-9)
        # registered again: the needles come back into the plan's frame; the chain on them gives the same deviations
        self.session.load_registration("moved/truth.tfm", "moved/intraop_moved.nrrd")
        np.testing.assert_allclose([n.tip for n in self.session.implanted_needles],
                                   [n.tip for n in first.needles_in_place], atol=1e-9)
        run_job(self.session, self.session.start_intraop("moved/intraop_moved.nrrd", time_limit_s=1.0))
        again = {r["name"]: r for r in self.session.intraop_result.needle_rows if r["status"] == "in place"}
        for r in first.needle_rows:
            if r["status"] == "in place":
                self.assertAlmostEqual(again[r["name"]]["tip_mm"], r["tip_mm"], places=6)
                self.assertAlmostEqual(again[r["name"]]["angle_deg"], r["angle_deg"], places=6)

    def test_needle_finder_after_registration(self):
        self.register()
        job = self.session.start_find_needles("moved/intraop_moved.nrrd")
        message = run_job(self.session, job)
        self.assertIn("planned found", message)
        truth = RegistrationResult(self.case["truth_matrix"])
        tips = {n["name"]: truth.map_points(n["tip_ras"]) for n in self.case["needles"]}
        errs = [np.linalg.norm(n.tip - tips[n.name]) for n in self.session.implanted_needles if n.name in tips]
        self.assertGreaterEqual(len(errs), len(tips) - 2)
        self.assertLess(float(np.median(errs)), 2.0, errs)

    def test_cancel_refusals_and_files(self):
        self.session.open_path("moved/plan")
        job = self.session.start_register("moved/intraop_moved.nrrd")
        job.cancel()
        self.assertIn("cancelled", run_job(self.session, job))
        self.assertIsNone(self.session.registration)
        self.assertIsNone(self.session.intraop_ct_node)
        # a registration is set; then bad input of every kind leaves it (and the scene) as it was
        self.session.apply_job()
        message, _ = self.register()
        good = self.session.registration
        node = self.session.intraop_ct_node
        n_nodes = self.ctx.scene.GetNumberOfNodes()
        job = self.session.start_register("moved/intraop_far.nrrd")
        with self.assertRaisesRegex(InputError, "do not overlap"):
            run_job(self.session, job)
        with self.assertRaisesRegex(InputError, "overlaps poorly"):
            run_job(self.session, self.session.start_register("moved/intraop_moved.nrrd", min_bone_dice=0.995))
        with self.assertRaisesRegex(InputError, "the registration set is of intraop_moved.nrrd"):
            self.session.start_find_needles("moved/intraop_far.nrrd")
        with self.assertRaisesRegex(InputError, "the registration set is of intraop_moved.nrrd"):
            self.session.start_intraop("moved/intraop_far.nrrd")
        with self.assertRaisesRegex(InputError, "no such file"):
            self.session.load_registration("moved/missing.tfm", "moved/intraop_moved.nrrd")
        with self.assertRaisesRegex(InputError, "outside|leaves"):
            self.session.load_registration("../t.tfm", "moved/intraop_moved.nrrd")
        self.assertIs(self.session.registration, good)
        self.assertIs(self.session.intraop_ct_node, node)
        self.assertEqual(self.ctx.scene.GetNumberOfNodes(), n_nodes)
        # a transform file: used as it is, no quality check (said so on the page)
        message = self.session.load_registration("moved/truth.tfm", "moved/intraop_moved.nrrd")
        self.assertIn("with truth.tfm", message)
        self.assertIn("no quality check", message)
        np.testing.assert_allclose(self.session.registration.matrix_ras, self.case["truth_matrix"], atol=1e-9)
        self.assertEqual(self.session.registration_report()["lines"][0][-len("target centre"):], "target centre")
        # no planning CT in the scene: a clear message
        self.session.plan_scene.params.set_node("ctVolume", None)
        with self.assertRaisesRegex(InputError, "no planning CT"):
            self.session.start_register("moved/intraop_moved.nrrd")

    def test_command_line_module_and_page_give_the_same_numbers(self):
        from SeedImplantPlannerLib.core.imageio import read_image
        from SeedImplantPlannerLib.mrml import scene_io
        from SeedImplantPlannerLib.mrml.intraop_actions import IntraopSession
        from SeedImplantPlannerLib.mrml.volumes import add_scalar_volume
        from SeedImplantPlannerLib.imaging.segio import read_segmentation
        cli, stdout = self.cli_register("cli")
        # the module's logic on a scene of the same files
        ctx = create_scene()
        try:
            plan = self.case["plan_obj"]
            ps = scene_io.build_plan_scene(ctx, seeds=plan.seeds, prescription_Gy=plan.prescription_Gy,
                                           ct=read_image(self.case["ct"]), segmentation=read_segmentation(self.case["seg"]),
                                           target="GTV", needles=plan.used_needles(), seed_needle_numbers=plan.seed_needle,
                                           dose_geometry=self.case["planning_ct"][1])
            ps.plan = plan
            ct_node = add_scalar_volume(ctx.scene, *read_image(self.case["intraop"]), "Intra-op CT")
            module = IntraopSession(ps).register(ct_node)
        finally:
            ctx.close()
        self.register()
        web = self.session.registration
        for name, other in (("module", module), ("web page", web)):
            np.testing.assert_allclose(other.matrix_ras, cli.matrix_ras, atol=1e-6, err_msg=name)
            self.assertEqual(other.report()["lines"], cli.report()["lines"], name)
            for k in ("bone_dice", "bone_dice_before", "body_dice", "body_dice_before"):
                self.assertAlmostEqual(other.quality[k], cli.quality[k], places=6, msg=f"{name} {k}")
        self.assertIn(cli.summary_line().split(" (", 1)[0], stdout)


if __name__ == "__main__":
    unittest.main()
