"""End-to-end: `seedplan plan` and `seedplan nomogram` through the command line with real files."""

import csv
import json
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

from seedplan_cli import seedplan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SeedImplantPlanner"))

from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.core.imageio import read_image, write_image  # noqa: E402
from SeedImplantPlannerLib.imaging.segio import Segmentation, write_segmentation  # noqa: E402

GEOM = ImageGeometry((44, 44, 44), (1.5, 1.5, 1.5), (-32.25, -32.25, -32.25))




def write_case(folder):
    c = GEOM.voxel_centers_ras()
    masks = {
        "GTV": np.linalg.norm(c, axis=-1) <= 11.0,
        "Bowel": (c[..., 0] >= 16.0) & (np.abs(c[..., 1]) <= 15) & (np.abs(c[..., 2]) <= 15),
        "Bone": (c[..., 1] >= 15.0) & (c[..., 1] <= 19.0) & (np.abs(c[..., 0] - 9.5) <= 1.5) & (np.abs(c[..., 2]) <= 2),
        "Body": np.linalg.norm(c, axis=-1) <= 31.0,
    }
    ct = np.where(masks["Body"], 40, -1000).astype(np.int16)
    ct[masks["Bone"]] = 700
    write_image(folder / "ct.nrrd", ct, GEOM)
    write_segmentation(folder / "seg.seg.nrrd", Segmentation.from_masks(GEOM, masks))
    return folder / "ct.nrrd", folder / "seg.seg.nrrd"


class PlanCommandTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls.tmp.name)
        cls.ct, cls.seg = write_case(cls.dir)
        cls.base = ["plan", "--image", cls.ct, "--segmentation", cls.seg, "--target", "GTV", "--body", "Body",
                    "--strength", "0.5", "--prescription", "120", "--direction", "P", "--template-spacing", "5",
                    "--seed-spacing", "5", "--min-distance", "4", "--target-margin", "2", "--engine", "direct", "--time-limit", "30"]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def assertOneLineError(self, result, text):
        self.assertEqual(result.returncode, 2, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("seedplan: error: "), lines[0])
        self.assertIn(text, lines[0])

    def test_plan_folder_and_dose_from_the_plan_file(self):
        out = self.dir / "plan1"
        r = seedplan(*self.base, "--oar", "Bowel:D2cc=150,Dmax=400", "--forbidden", "Bone", "--stranded", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        self.assertIn("goal target V100 >= % 95", r.stdout)
        for f in ("plan.json", "needles.csv", "loading.csv", "seeds.csv", "obstacles.csv", "dose.nrrd", "metrics.csv"):
            self.assertTrue((out / f).is_file(), f)
        doc = json.loads((out / "plan.json").read_text())
        self.assertEqual(doc["format"], "SeedImplantPlanner.plan")
        self.assertEqual(doc["source"]["strength_U"], 0.5)
        self.assertTrue(doc["optimizer"]["goals_met"])
        self.assertTrue(doc["loading_rules"]["stranded"])
        with open(out / "loading.csv") as fh:
            rows = list(csv.DictReader(fh))
        self.assertEqual(sum(int(x["n_seeds"]) for x in rows), doc["summary"]["n_seeds"])
        self.assertTrue(all(x["sequence_from_tip"].count("S") == int(x["n_seeds"]) for x in rows))
        with open(out / "obstacles.csv") as fh:
            hits = list(csv.DictReader(fh))
        self.assertTrue(hits and all(h["structure"] == "Bone" for h in hits))
        used = {x["needle"] for x in rows}
        self.assertFalse(used & {h["needle"] for h in hits})
        # the plan file feeds the core dose command
        dose_out = self.dir / "dose_from_plan.nrrd"
        r2 = seedplan("dose", "--seeds", out / "plan.json", "--reference", self.ct, "--engine", "direct",
                      "--out", dose_out)
        self.assertEqual(r2.returncode, 0, r2.stderr)
        a, _ = read_image(dose_out)
        self.assertGreater(float(a.max()), 120.0)

    def test_replanning_with_implanted_seeds_and_needles(self):
        first = self.dir / "pre"
        r = seedplan(*self.base, "--out", first)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = (first / "seeds.csv").read_text().splitlines()
        half = self.dir / "implanted.csv"
        half.write_text("\n".join([lines[0]] + lines[1::2]) + "\n")
        out = self.dir / "replan"
        r = seedplan(*self.base, "--fixed-seeds", half, "--implanted-needles", first / "needles.csv",
                     "--no-new-needles", "--out", out)
        self.assertIn(r.returncode, (0, 3), r.stderr)
        doc = json.loads((out / "plan.json").read_text())
        n_fixed = len(lines[1::2])
        self.assertEqual(doc["summary"]["n_fixed_seeds"], n_fixed)
        self.assertTrue(all(n["fixed"] for n in doc["needles"]))
        self.assertTrue(all(s["fixed"] for s in doc["seeds"][:n_fixed]))
        self.assertFalse(any(s["fixed"] for s in doc["seeds"][n_fixed:]))
        self.assertLess(doc["summary"]["n_seeds"] - n_fixed, len(lines) - 1)

    def test_same_random_seed_same_plan(self):
        outs = []
        for k in range(2):
            out = self.dir / f"det{k}"
            r = seedplan(*self.base, "--random-seed", "7", "--out", out)
            self.assertEqual(r.returncode, 0, r.stderr)
            outs.append((out / "seeds.csv").read_text())
        self.assertEqual(outs[0], outs[1])

    def test_goals_that_cannot_be_met(self):
        out = self.dir / "unmet"
        r = seedplan(*self.base, "--oar", "Bowel:Dmax=1", "--out", out)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("seedplan: warning: goals not met", r.stderr)
        self.assertTrue((out / "plan.json").is_file())

    def test_bad_input_exits_with_one_line(self):
        out = self.dir / "bad"
        self.assertOneLineError(seedplan(*[a if a != "GTV" else "Tumour" for a in self.base], "--out", out),
                                "no segment named 'Tumour'")
        args = list(self.base)
        args[args.index("--strength") + 1] = "0"
        self.assertOneLineError(seedplan(*args, "--out", out), "seed strength must be > 0")
        args = list(self.base)
        args[args.index("--seed-spacing") + 1] = "-5"
        self.assertOneLineError(seedplan(*args, "--out", out), "--seed-spacing must be > 0")
        self.assertOneLineError(seedplan(*self.base, "--oar", "Bowel:D5cc=3", "--out", out), "must be Dmax=Gy")
        self.assertOneLineError(seedplan(*self.base, "--v100", "950", "--out", out), "--v100 is a percentage")
        self.assertOneLineError(seedplan(*self.base, "--needle-mode", "freehand", "--out", out), "needs --needles")
        # a plate between skin and target: no needle can go through
        c = GEOM.voxel_centers_ras()
        masks = {"GTV": np.linalg.norm(c, axis=-1) <= 11.0, "Body": np.linalg.norm(c, axis=-1) <= 31.0,
                 "Bone": (c[..., 1] >= 14.0) & (c[..., 1] <= 18.0)}
        write_segmentation(self.dir / "wall.seg.nrrd", Segmentation.from_masks(GEOM, masks))
        args = list(self.base)
        args[args.index("--segmentation") + 1] = self.dir / "wall.seg.nrrd"
        self.assertOneLineError(seedplan(*args, "--forbidden", "Bone", "--out", out), "no feasible needle path")
        empty = {"GTV": np.zeros(GEOM.shape, bool), "Body": masks["Body"]}
        write_segmentation(self.dir / "empty.seg.nrrd", Segmentation.from_masks(GEOM, empty))
        args[args.index("--segmentation") + 1] = self.dir / "empty.seg.nrrd"
        self.assertOneLineError(seedplan(*args, "--out", out), "is empty")
        self.assertFalse(out.exists())

    def test_freehand_needles_from_a_file(self):
        needles = self.dir / "needles.csv"
        rows = ["name,entry_x_mm,entry_y_mm,entry_z_mm,tip_x_mm,tip_y_mm,tip_z_mm"]
        for x in (-6, 0, 6):
            for z in (-6, 0, 6):
                rows.append(f"F{x}{z},{x},30,{z},{x},-11,{z}")
        needles.write_text("\n".join(rows) + "\n")
        out = self.dir / "free"
        args = [a for a in self.base]
        r = seedplan(*args, "--needle-mode", "freehand", "--needles", needles, "--v100", "90", "--out", out)
        self.assertIn(r.returncode, (0, 3), r.stderr)
        with open(out / "needles.csv") as fh:
            rows = list(csv.DictReader(fh))
        self.assertTrue(rows and all(x["name"].startswith("F") for x in rows))
        self.assertTrue(all(x["angle_from_vertical_deg"] == "0.0" for x in rows))

    def test_needles_only(self):
        out = self.dir / "needles_only"
        r = seedplan("needles", "--segmentation", self.seg, "--target", "GTV", "--body", "Body", "--forbidden", "Bone",
                     "--direction", "P", "--template-spacing", "5", "--usable-length", "35", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("meet a forbidden structure", r.stdout)
        with open(out / "needles.csv") as fh:
            rows = list(csv.DictReader(fh))
        with open(out / "obstacles.csv") as fh:
            hits = list(csv.DictReader(fh))
        self.assertTrue(rows and hits)
        names = {x["name"] for x in rows}
        self.assertTrue(all(h["needle"] in names and h["structure"] == "Bone" for h in hits))
        # depth from the entry: the bar lies 12-16 mm below the template plane on the skin (y = 31)
        self.assertTrue(all(5.0 <= float(h["depth_mm"]) <= 16.0 for h in hits), hits)
        self.assertTrue(any(x["too_long"] == "yes" for x in rows))

    def test_nomogram(self):
        r = seedplan("nomogram", "--segmentation", self.seg, "--target", "GTV", "--strength", "0.4", "--unit", "mCi",
                     "--prescription", "145")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("average dimension", r.stdout)
        self.assertIn("Wu", r.stdout)


if __name__ == "__main__":
    unittest.main()


class SampleCasePlanTest(unittest.TestCase):
    """The bundled sample case through `seedplan plan`, with an organ far outside the planning grid."""

    def test_sample_case_with_distant_organ(self):
        case = ROOT / "Resources" / "SampleCase"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "plan"
            r = seedplan("plan", "--image", case / "SampleCT.nrrd", "--segmentation", case / "SampleSegmentation.seg.nrrd",
                         "--target", "GTV", "--oar", "Bowel:D2cc=100", "--oar", "SpinalCanal",
                         "--forbidden", "Bone", "Bowel", "Vessels", "Kidneys", "SpinalCanal", "--body", "Body",
                         "--strength", "0.6", "--unit", "mCi", "--prescription", "120", "--direction", "R",
                         "--template-spacing", "5", "--out", out)
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            metrics = json.loads((out / "metrics.json").read_text())
            goals = {g["goal"]: g for g in metrics["goal_check"]}
            self.assertTrue(goals["target V100 >= %"]["passed"])
            self.assertTrue(goals["Bowel D2cc <= Gy"]["passed"])
            # independent check: no loaded needle path comes within 5 mm of a forbidden voxel
            from scipy import ndimage
            from SeedImplantPlannerLib.imaging.segio import read_segmentation
            seg = read_segmentation(case / "SampleSegmentation.seg.nrrd")
            g = seg.geometry
            forbidden = np.zeros(g.shape, bool)
            for name in ("Bone", "Bowel", "Vessels", "Kidneys", "SpinalCanal"):
                forbidden |= seg.mask(name)
            dist = ndimage.distance_transform_edt(~forbidden, sampling=g.spacing[::-1])
            needles = list(csv.DictReader((out / "needles.csv").open()))
            self.assertGreater(len(needles), 5)
            for n in needles:
                entry = np.array([float(n[f"entry_{a}_mm"]) for a in "xyz"])
                tip = np.array([float(n[f"tip_{a}_mm"]) for a in "xyz"])
                pts = entry + np.linspace(0, 1, 200)[:, None] * (tip - entry)
                ijk = np.round(g.ras_to_ijk(pts)).astype(int)
                inside = np.all((ijk >= 0) & (ijk < np.array(g.size)), axis=1)
                d = dist[ijk[inside, 2], ijk[inside, 1], ijk[inside, 0]]
                self.assertGreaterEqual(float(d.min()), 5.0 - 1.5, f"needle {n['name']} passes {d.min():.1f} mm "
                                        "from a forbidden structure")


class CTGuidedCommandTest(unittest.TestCase):
    """`seedplan plan` on the shipped CT-guided labelmap: several targets, needle limit, bad input (issue 13 §6)."""

    @classmethod
    def setUpClass(cls):
        from SeedImplantPlannerLib.samplecase.ct_guided import FORBIDDEN, ct_guided_case_paths
        cls.ct, cls.lab = ct_guided_case_paths()
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls.tmp.name)
        cls.base = ["plan", "--image", cls.ct, "--segmentation", cls.lab, "--body", "Body", "--unit", "mCi",
                    "--forbidden", *FORBIDDEN, "--oar", "Bowel:D2cc=100", "--seed-spacing", "5",
                    "--template-spacing", "10", "--time-limit", "4"]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_needle_limit_below_any_plan_writes_the_best_plan_with_exit_3(self):
        out = self.dir / "limit"
        r = seedplan(*self.base, "--target", "GTV_RP", "--strength", "0.5", "--prescription", "120",
                     "--direction", "A", "--max-needles", "3", "--out", out)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("needle limit (3 new needles)", r.stderr)
        plan = json.loads((out / "plan.json").read_text())
        self.assertLessEqual(plan["summary"]["n_needles_used"], 3)
        self.assertEqual(plan["optimizer"]["max_needles"], 3)

    def test_two_targets_with_their_own_prescription_and_strength(self):
        out = self.dir / "two"
        r = seedplan(*self.base, "--target", "GTV_RP:rx=120,strength=0.5",
                     "--target", "GTV_Groin:rx=140,strength=0.7,direction=P", "--direction", "A", "--out", out)
        self.assertIn(r.returncode, (0, 3), r.stderr)
        plan = json.loads((out / "plan.json").read_text())
        self.assertEqual([(t["name"], t["prescription_Gy"]) for t in plan["targets"]],
                         [("GTV_RP", 120.0), ("GTV_Groin", 140.0)])
        # each target's template direction: the groin mass from the front, the retroperitoneal one from behind
        self.assertEqual(plan["structures"]["target_directions"],
                         {"GTV_RP": [0.0, 1.0, 0.0], "GTV_Groin": [0.0, -1.0, 0.0]})
        # the report of this plan: every target against its own prescription
        rep = self.dir / "two.html"
        r = seedplan("report", "--dose", out / "dose.nrrd", "--structures", self.lab, "--names", "GTV_RP,GTV_Groin,Bowel",
                     "--rx", "120", "--plan", out / "plan.json", "--out", rep)
        self.assertEqual(r.returncode, 0, r.stderr)
        html = rep.read_text()
        self.assertIn("GTV_RP 120 Gy; GTV_Groin 140 Gy", html)
        self.assertIn("Dose wash around GTV_Groin: isodose lines in % of its prescription 140 Gy", html)
        # without --rx the report takes the prescriptions, target and body from the plan and says so
        rep2 = self.dir / "two_from_plan.html"
        r = seedplan("report", "--dose", out / "dose.nrrd", "--structures", self.lab, "--names", "GTV_RP,GTV_Groin,Bowel,Body",
                     "--plan", out / "plan.json", "--out", rep2)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"prescription 120 Gy taken from plan {out / 'plan.json'}", r.stderr)
        self.assertIn("target 'GTV_RP' taken from plan", r.stderr)
        html2 = rep2.read_text()
        self.assertIn("GTV_RP 120 Gy; GTV_Groin 140 Gy", html2)
        self.assertIn("Dose wash around GTV_Groin: isodose lines in % of its prescription 140 Gy", html2)
        # a plan file without a usable prescription is refused by name, nothing written
        broken = self.dir / "no_rx.json"
        doc = json.loads((out / "plan.json").read_text())
        doc["prescription_Gy"] = None
        broken.write_text(json.dumps(doc))
        rep3 = self.dir / "no_rx.html"
        r = seedplan("report", "--dose", out / "dose.nrrd", "--structures", self.lab, "--names", "GTV_RP",
                     "--plan", broken, "--out", rep3)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("plan has no valid prescription_Gy", r.stderr)
        self.assertFalse(rep3.exists())
        goals = [row["goal"] for row in json.loads((out / "metrics.json").read_text())["goal_check"]]
        self.assertIn("GTV_RP V100 >= %", goals)
        self.assertIn("GTV_Groin V100 >= %", goals)
        summary = (out / "summary.txt").read_text()
        self.assertIn("GTV_Groin", summary)

    def test_goal_file_gives_every_target_its_own_goals(self):
        """A goal file: "Target:" goals for every target without a line of its own, GTV_Groin its own line;
        planner goals, the plan's goal rows, exit status, summary, report and metrics JSON all per target."""
        from SeedImplantPlannerLib.evaluation.structures import mask_on_grid, structures_from_segmentation
        from SeedImplantPlannerLib.imaging.segio import read_segmentation
        from SeedImplantPlannerLib.physics.dose import dose_at_points_Gy
        from SeedImplantPlannerLib.physics.seeds import SeedSet
        gfile = self.dir / "goals.txt"
        gfile.write_text("Target: V100 >= 90%; D90 >= 100%; V150 <= 70%\n"
                         "GTV_Groin: V100 >= 93%; D90 >= 105%; V200 <= 40%\nBowel: D2cc <= 100 Gy\n")
        out = self.dir / "two_goals"
        r = seedplan(*self.base, "--target", "GTV_RP:rx=120,strength=0.5", "--target",
                     "GTV_Groin:rx=140,strength=0.7,direction=P", "--direction", "A", "--goals", gfile, "--out", out)
        self.assertIn(r.returncode, (0, 3), r.stderr)
        plan = json.loads((out / "plan.json").read_text())
        # the planner aimed at each target's own goals from the file
        g = {t["name"]: t["goals"] for t in plan["targets"]}
        self.assertEqual((g["GTV_RP"]["v100_min"], g["GTV_RP"]["v150_max"], g["GTV_RP"]["v200_max"]), (0.90, 0.70, 0.20))
        self.assertEqual((g["GTV_Groin"]["v100_min"], g["GTV_Groin"]["d90_min_frac"], g["GTV_Groin"]["v200_max"],
                          g["GTV_Groin"]["v150_max"]), (0.93, 1.05, 0.40, 0.60))
        rows = plan["metrics"]["goals"]
        got = {(x["structure"], x["goal"]): x for x in rows}
        self.assertEqual(sorted(got), [("Bowel", "D2cc <= 100 Gy"), ("GTV_Groin", "D90 >= 105%"),
                                       ("GTV_Groin", "V100 >= 93%"), ("GTV_Groin", "V200 <= 40%"),
                                       ("GTV_RP", "D90 >= 100%"), ("GTV_RP", "V100 >= 90%"), ("GTV_RP", "V150 <= 70%")])
        # each target's rows: its own Rx, the plan's goal check on the same dose, and the TG-43 dose of the
        # plan's seeds computed here at the dose grid's voxel centres inside the target (where the evaluation
        # samples it), read at the target's own Rx
        check = {x["goal"]: x["value"] for x in plan["metrics"]["goal_check"]}
        seg = read_segmentation(self.lab)
        _, dose_geometry = read_image(out / "dose.nrrd")
        structs = {s.name: s for s in structures_from_segmentation(seg, ["GTV_RP", "GTV_Groin"])}
        seeds = SeedSet(np.array([x["position_ras_mm"] for x in plan["seeds"]]),
                        np.array([x["axis"] for x in plan["seeds"]]), np.array([x["strength_U"] for x in plan["seeds"]]),
                        [x["model"] for x in plan["seeds"]])
        for name, rx in (("GTV_RP", 120.0), ("GTV_Groin", 140.0)):
            v100 = got[(name, "V100 >= 90%" if name == "GTV_RP" else "V100 >= 93%")]
            self.assertEqual(v100["prescription_Gy"], rx)
            self.assertAlmostEqual(v100["value"], check[f"{name} V100 >= %"], places=3)
            d = dose_at_points_Gy(dose_geometry.voxel_centers_ras()[mask_on_grid(structs[name], dose_geometry)], seeds)[0]
            self.assertAlmostEqual(v100["value"], 100.0 * np.mean(d >= rx), delta=0.5, msg=name)
            d90_row = got[(name, "D90 >= 100%" if name == "GTV_RP" else "D90 >= 105%")]
            self.assertAlmostEqual(d90_row["value"], 100.0 * np.percentile(d, 10.0) / rx, delta=1.0, msg=name)
            self.assertEqual(d90_row["passed"], d90_row["value"] >= d90_row["limit"])
        # exit status 3 exactly when a hard goal of the file (or of the plan) fails, each named in the warning
        hard_failed = [x for x in rows if x["passed"] is False and not (x.get("prescription_Gy") and x["op"] == "<=")]
        plan_failed = [x for x in plan["metrics"]["goal_check"] if not x["passed"] and "soft" not in x["goal"]]
        self.assertEqual(r.returncode == 3, bool(hard_failed or plan_failed or not plan["optimizer"]["goals_met"]),
                         r.stderr)
        named = {(x["goal"].split()[0], x["goal"].split()[1]) for x in plan_failed}  # e.g. ("GTV_Groin", "V100")
        for x in hard_failed:  # each failed goal named once: the plan's row, else the file's
            self.assertTrue((x["structure"], x["metric"]) in named or f"{x['structure']} {x['goal']}" in r.stderr,
                            r.stderr)
        self.assertIn("GTV_Groin V100 >= 93% (Rx 140 Gy)", (out / "summary.txt").read_text())
        with open(out / "goals.csv", newline="") as fh:
            self.assertEqual({row["structure"] for row in csv.DictReader(fh)}, {"GTV_RP", "GTV_Groin", "Bowel"})
        # the report and the metrics JSON of this plan with the same goal file: the same rows, each target's own Rx
        rep, js = self.dir / "two_goals.html", self.dir / "two_goals.json"
        r = seedplan("report", "--dose", out / "dose.nrrd", "--structures", self.lab, "--names",
                     "GTV_RP,GTV_Groin,Bowel", "--plan", out / "plan.json", "--goals", gfile, "--rx", "120",
                     "--out", rep, "--pdf", self.dir / "two_goals.pdf")
        self.assertEqual(r.returncode, 0, r.stderr)
        html = rep.read_text()
        self.assertIn("Goals (each target against its own prescription)", html)
        self.assertIn("V100 &gt;= 93% (Rx 140 Gy)", html)
        self.assertIn("V100 &gt;= 90% (Rx 120 Gy)", html)
        self.assertTrue((self.dir / "two_goals.pdf").read_bytes().startswith(b"%PDF"))
        r = seedplan("metrics", "--dose", out / "dose.nrrd", "--structures", self.lab, "--names",
                     "GTV_RP,GTV_Groin,Bowel", "--plan", out / "plan.json", "--goals", gfile, "--rx", "120",
                     "--json", js)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(js.read_text())
        self.assertEqual(doc["target_prescriptions"], {"GTV_RP": 120.0, "GTV_Groin": 140.0})
        for x in doc["goals"]:
            if x["structure"] in ("GTV_RP", "GTV_Groin"):
                self.assertAlmostEqual(x["value"], got[(x["structure"], x["goal"])]["value"], delta=0.5)

    def test_bad_target_input(self):
        for extra, text in (
                (["--target", "GTV_RP:rx=120", "--target", "GTV_Groin", "--strength", "0.5"],
                 "no prescription dose for target(s) GTV_Groin"),
                (["--target", "GTV_RP:rx=120", "--target", "GTV_RP:rx=140", "--strength", "0.5"],
                 "contradictory prescription"),
                (["--target", "GTV_RP:rx=120,dose=3", "--strength", "0.5"], "is not one of rx=Gy"),
                (["--target", "GTV_RP", "--prescription", "120"], "no seed strength for target(s) GTV_RP"),
                (["--target", "GTV_RP", "--prescription", "120", "--strength", "0.5", "--max-needles", "0"],
                 "--max-needles must be at least 1")):
            r = seedplan(*self.base, *extra, "--out", self.dir / "bad")
            self.assertEqual(r.returncode, 2, r.stderr)
            lines = r.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, r.stderr)
            self.assertTrue(lines[0].startswith("seedplan: error: "), lines[0])
            self.assertIn(text, lines[0])
        self.assertFalse((self.dir / "bad" / "plan.json").exists())
