"""CT-guided test case: the generator, and plans checked for clinical properties independently of the planner.

The plans come from the shipped labelmap + CT (Resources/CTGuidedCase). Every check recomputes
what it asserts with its own method: needle clearance to forbidden structures from the labelmap
voxels (k-d tree of voxel centres, not the planner's distance maps), coverage with the direct
TG-43 grid engine (physics.dose.DirectGridEngine) on the labelmap grid, seed distances and
needle-to-needle distances from the plan's own coordinates.
"""

import json
import tempfile
import unittest
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.core.imageio import read_image
from SeedImplantPlannerLib.imaging.segio import read_segmentation
from SeedImplantPlannerLib.physics.dose import DirectGridEngine, kernels_for, dose_factor_h
from SeedImplantPlannerLib.physics.sources import get_model
from SeedImplantPlannerLib.planning.loading import LoadingRules
from SeedImplantPlannerLib.planning.pipeline import plan_case, plan_from_masks
from SeedImplantPlannerLib.planning.planfile import read_plan, write_plan_folder
from SeedImplantPlannerLib.planning.problem import OARConstraint
from SeedImplantPlannerLib.planning.targets import TargetSpec, merge_specs, parse_target, skin_region
from SeedImplantPlannerLib.samplecase.ct_guided import (FORBIDDEN, LABELS, SHIPPED_GEOMETRY, ct_guided_case_paths,
                                                        make_ct_guided_case)

MARGIN_MM = 5.0
RX = 120.0
MAX_NEEDLES = 40


def needle_points(needle, step=0.5):
    """Points every ``step`` mm from entry to tip (straight needles), independent of Needle.sample_path."""
    n = max(2, int(np.ceil(np.linalg.norm(needle.tip - needle.entry) / step)) + 1)
    return needle.entry + np.linspace(0.0, 1.0, n)[:, None] * (needle.tip - needle.entry)


def direct_dose_on_mask(seeds, geometry, mask):
    """Dose (Gy, full decay) at every voxel of ``mask`` from the direct TG-43 grid engine on a crop of ``geometry``."""
    k, j, i = np.nonzero(mask)
    lo = np.array([i.min(), j.min(), k.min()])
    hi = np.array([i.max(), j.max(), k.max()])
    crop = ImageGeometry(tuple(int(v) for v in hi - lo + 1), geometry.spacing,
                         tuple(geometry.ijk_to_ras(lo.astype(float)[None, :])[0]), geometry.direction)
    engine = DirectGridEngine(crop)
    total = np.zeros(crop.shape)
    for model_id, kernel in kernels_for(seeds).items():
        sel = [n for n, m in enumerate(seeds.models) if m == model_id]
        rate, _ = engine.seeds_rate(kernel, seeds.positions[sel], seeds.axes[sel], seeds.strengths_U[sel])
        total += rate * dose_factor_h(get_model(model_id)) / 100.0
    return total[k - lo[2], j - lo[1], i - lo[0]]


class GeneratorTest(unittest.TestCase):
    def test_shipped_files_are_the_generator_output(self):
        ct_path, lab_path = ct_guided_case_paths()
        ct, labels, masks, g = make_ct_guided_case(SHIPPED_GEOMETRY)
        ct_file, g_file = read_image(ct_path)
        seg = read_segmentation(lab_path)
        self.assertEqual(g_file.size, g.size)
        np.testing.assert_allclose(g_file.origin, g.origin, atol=1e-6)
        np.testing.assert_array_equal(ct_file, ct)
        for name, value in LABELS.items():
            np.testing.assert_array_equal(seg.mask(seg.find(name).segment_id), labels == value, err_msg=name)

    def test_anatomy(self):
        ct, labels, masks, g = make_ct_guided_case(SHIPPED_GEOMETRY)
        cc = {k: m.sum() * g.voxel_volume_cc for k, m in masks.items()}
        self.assertTrue(200.0 <= cc["GTV_RP"] <= 250.0, cc["GTV_RP"])
        self.assertTrue(25.0 <= cc["GTV_Groin"] <= 40.0, cc["GTV_Groin"])
        # bowel loops wrap the mass with a fat plane: none touches it, some lie within 15 mm
        rp = cKDTree(g.ijk_to_ras(np.argwhere(masks["GTV_RP"])[:, ::-1].astype(float)))
        dist = rp.query(g.ijk_to_ras(np.argwhere(masks["Bowel"])[:, ::-1].astype(float)))[0]
        self.assertGreater(dist.min(), 3.0)
        self.assertGreater(np.count_nonzero(dist < 15.0), 50)
        # a labelmap: the body label excludes the masses, air outside reads -1000 HU
        self.assertFalse((masks["Body"] & masks["GTV_RP"]).any())
        self.assertEqual(int(ct[0, 0, 0]), -1000)
        # the same seed-free generator gives the same arrays
        ct2, labels2, _, _ = make_ct_guided_case(SHIPPED_GEOMETRY)
        np.testing.assert_array_equal(labels, labels2)

    def test_skin_from_labels_and_from_ct(self):
        ct, labels, masks, g = make_ct_guided_case(SHIPPED_GEOMETRY)
        from_labels = skin_region(g, None, list(masks.values()))
        from_ct = skin_region(g, ct_hu=ct)
        for skin in (from_labels, from_ct):
            self.assertTrue(skin[masks["GTV_RP"]].all())
            self.assertTrue(skin[masks["GTV_Groin"]].all())
        # the two outlines agree except where bowel gas meets the skin
        self.assertLess(np.count_nonzero(from_labels ^ from_ct), 0.01 * from_labels.sum())


class CTGuidedPlanTest(unittest.TestCase):
    """One automatic plan of the retroperitoneal mass and one two-target plan, checked independently."""

    @classmethod
    def setUpClass(cls):
        cls.ct_path, cls.lab_path = ct_guided_case_paths()
        cls.seg = read_segmentation(cls.lab_path)
        cls.g = cls.seg.geometry
        cls.rules = LoadingRules(spacing_mm=5.0, min_distance_mm=5.0)
        cls.plan, cls.dose, cls.dose_g = plan_case(
            cls.ct_path, cls.lab_path, "GTV_RP", oars=[OARConstraint("Bowel", d2cc_Gy=100.0)], forbidden=list(FORBIDDEN),
            body="Body", strength=0.5, strength_unit="mCi", prescription_Gy=RX, needle_mode="auto",
            template_spacing_mm=10.0, rules=cls.rules, obstacle_margin_mm=MARGIN_MM, max_needles=MAX_NEEDLES,
            time_limit_s=8.0, search_time_s=12.0)
        cls.two, _, _ = plan_case(
            cls.ct_path, cls.lab_path, targets=[TargetSpec("GTV_RP", RX, strength=0.5, strength_unit="mCi"),
                                                TargetSpec("GTV_Groin", 140.0, strength=0.7, strength_unit="mCi")],
            oars=[OARConstraint("Bowel", d2cc_Gy=100.0)], forbidden=list(FORBIDDEN), body="Body", strength=0.5,
            strength_unit="mCi", needle_mode="auto", template_spacing_mm=10.0, rules=cls.rules,
            obstacle_margin_mm=MARGIN_MM, time_limit_s=8.0, search_time_s=12.0)

    def mask(self, name):
        return self.seg.mask(self.seg.find(name).segment_id)

    def check_needles_clear(self, plan):
        forb = np.zeros(self.g.shape, dtype=bool)
        for name in FORBIDDEN:
            forb |= self.mask(name)
        tree = cKDTree(self.g.ijk_to_ras(np.argwhere(forb)[:, ::-1].astype(float)))
        # the planner looks distances up at the nearest voxel: allow half a voxel diagonal
        tol = 0.5 * float(np.linalg.norm(self.g.spacing))
        for n in plan.used_needles():
            pts = needle_points(n)
            clearance = tree.query(pts)[0] - n.outer_radius_mm
            self.assertGreaterEqual(clearance.min(), MARGIN_MM - tol, f"needle {n.name}")
            ijk = np.rint(self.g.ras_to_ijk(pts)).astype(int)
            ok = np.all((ijk >= 0) & (ijk < np.array(self.g.size)), axis=1)
            self.assertFalse(forb[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]].any(), f"needle {n.name} crosses a forbidden voxel")

    def check_seed_spacing(self, plan):
        pos = plan.seeds.positions
        nn = plan.seed_needle
        d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=2)
        np.fill_diagonal(d, np.inf)
        other = nn[:, None] != nn[None, :]
        self.assertGreaterEqual(d[other].min(), self.rules.min_distance_mm - 1e-6)
        self.assertGreaterEqual(d[~other].min(), self.rules.spacing_mm - 1e-6)

    def check_needle_clearance(self, plan, clearance_mm=3.0):
        used = plan.used_needles()
        pts = [needle_points(n, 0.25) for n in used]
        for a in range(len(used)):
            ta = cKDTree(pts[a])
            for b in range(a + 1, len(used)):
                gap = ta.query(pts[b])[0].min() - used[a].outer_radius_mm - used[b].outer_radius_mm
                self.assertGreaterEqual(gap, clearance_mm - 0.2, f"needles {used[a].name} and {used[b].name}")

    def test_auto_plan_meets_goals_by_the_direct_engine(self):
        d = direct_dose_on_mask(self.plan.seeds, self.g, self.mask("GTV_RP"))
        v100 = 100.0 * np.mean(d >= RX)
        self.assertGreaterEqual(v100, 94.0)
        self.assertGreaterEqual(np.percentile(d, 10.0), 0.97 * RX)  # D90
        reported = self.plan.evaluation.metrics["GTV_RP"]["V100"]["percent"]
        self.assertLess(abs(reported - v100), 2.0)

    def test_auto_plan_is_clinically_sound(self):
        self.check_needles_clear(self.plan)
        self.check_seed_spacing(self.plan)
        self.check_needle_clearance(self.plan)
        self.assertLessEqual(len(self.plan.used_needles()), MAX_NEEDLES)
        search = self.plan.optimizer["direction_search"]
        self.assertEqual(sum(r["chosen"] for r in search), 1)
        self.assertGreaterEqual(len({r["set"] for r in search}), 8)

    def test_two_targets_in_one_implant(self):
        plan = self.two
        self.check_needles_clear(plan)
        self.check_seed_spacing(plan)
        self.check_needle_clearance(plan)
        strengths = sorted(set(np.round(plan.seeds.strengths_U, 4)))
        self.assertEqual(len(strengths), 2)  # 0.5 and 0.7 mCi
        self.assertEqual([t["name"] for t in plan.targets], ["GTV_RP", "GTV_Groin"])
        rows = {r["goal"]: r for r in plan.metrics["goal_check"]}
        self.assertIn("GTV_Groin D90 >= Gy", rows)
        self.assertAlmostEqual(rows["GTV_Groin D90 >= Gy"]["limit"], 140.0)
        # per-target coverage against its own prescription, recomputed with the direct engine from all seeds
        for name, rx in (("GTV_RP", RX), ("GTV_Groin", 140.0)):
            d = direct_dose_on_mask(plan.seeds, self.g, self.mask(name))
            self.assertGreaterEqual(100.0 * np.mean(d >= rx), 93.0, name)
        # the plan file keeps both targets
        with tempfile.TemporaryDirectory() as tmp:
            write_plan_folder(tmp, plan)
            back = read_plan(Path(tmp) / "plan.json")
            self.assertEqual([t["name"] for t in back.targets], ["GTV_RP", "GTV_Groin"])
            doc = json.loads((Path(tmp) / "plan.json").read_text())
            self.assertEqual([round(t["strength_U"], 3) for t in doc["targets"]], [0.635, 0.889])
            self.assertEqual([t["prescription_Gy"] for t in doc["targets"]], [RX, 140.0])


class BadInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ct, labels, cls.masks, cls.g = make_ct_guided_case(SHIPPED_GEOMETRY)
        cls.skin = skin_region(cls.g, None, list(cls.masks.values()))

    def plan(self, **kw):
        args = dict(oars=[OARConstraint("Bowel", d2cc_Gy=100.0)], forbidden=list(FORBIDDEN), skin_mask=self.skin,
                    strength=0.5, strength_unit="mCi", prescription_Gy=RX, needle_mode="template", direction="A",
                    template_spacing_mm=10.0, rules=LoadingRules(spacing_mm=5.0), time_limit_s=3.0)
        args.update(kw)
        return plan_from_masks(self.g, self.masks, **args)

    def test_overlapping_targets(self):
        masks = dict(self.masks)
        masks["GTV_RP_boost"] = self.masks["GTV_RP"].copy()
        with self.assertRaisesRegex(InputError, "'GTV_RP' and 'GTV_RP_boost' overlap"):
            plan_from_masks(self.g, masks, targets=["GTV_RP", "GTV_RP_boost"], prescription_Gy=RX)

    def test_target_without_a_needle_path_names_the_structures(self):
        with self.assertRaisesRegex(InputError, "no feasible needle path reaches the target 'GTV_RP'.*meet Body"):
            self.plan(targets=["GTV_RP"], forbidden=list(FORBIDDEN) + ["Body"])

    def test_one_unreachable_target_of_two_gives_a_plan_with_the_reason(self):
        # the groin mass is reached from the front only through the body label forbidden here: the
        # retroperitoneal mass is still planned and the groin mass reported with what is in the way
        masks = dict(self.masks)
        masks["Shield"] = self.masks["Body"] & (self.g.voxel_centers_ras()[..., 2] < -60.0)
        plan = plan_from_masks(self.g, masks, targets=["GTV_RP", "GTV_Groin"], forbidden=list(FORBIDDEN) + ["Shield"],
                               skin_mask=self.skin, strength=0.5, strength_unit="mCi", prescription_Gy=RX,
                               needle_mode="template", direction="A", template_spacing_mm=10.0,
                               rules=LoadingRules(spacing_mm=5.0), time_limit_s=3.0)
        self.assertFalse(plan.optimizer["goals_met"])
        self.assertTrue(any("GTV_Groin" in u and "Shield" in u for u in plan.optimizer["unreachable"]))
        self.assertGreater(len(plan.seeds), 50)

    def test_needle_limit_below_any_plan(self):
        plan = self.plan(targets=["GTV_RP"], max_needles=3)
        self.assertFalse(plan.optimizer["goals_met"])
        self.assertIn("needle limit (3 new needles)", plan.optimizer["message"])
        self.assertLessEqual(len(plan.used_needles()), 3)
        self.assertGreater(len(plan.seeds), 0)

    def test_missing_or_contradictory_prescriptions(self):
        with self.assertRaisesRegex(InputError, "no prescription dose given for target"):
            plan_from_masks(self.g, self.masks, targets=[TargetSpec("GTV_RP", RX), TargetSpec("GTV_Groin")])
        with self.assertRaisesRegex(InputError, "contradictory prescription"):
            plan_from_masks(self.g, self.masks, targets=[TargetSpec("GTV_RP", RX), TargetSpec("gtv_rp", 140.0)])
        with self.assertRaisesRegex(InputError, "contradictory goals: D90 upper bound"):
            plan_from_masks(self.g, self.masks, targets=[TargetSpec("GTV_RP", RX, d90=1.1, d90_max=1.05)])

    def test_each_target_has_its_own_template_direction(self):
        # template mode: the retroperitoneal mass from behind (needles travel A), the groin mass from the front (P)
        plan = self.plan(targets=[TargetSpec("GTV_RP", RX, strength=0.5, strength_unit="mCi", direction="A"),
                                  TargetSpec("GTV_Groin", RX, strength=0.7, strength_unit="mCi", direction="P")],
                         direction="R")
        inside = {}
        for name in ("GTV_RP", "GTV_Groin"):
            m = self.masks[name]
            inside[name] = lambda pts, m=m: m[tuple(np.rint(self.g.ras_to_ijk(pts)).astype(int)[:, ::-1].T)].any()
        seen = {"GTV_RP": 0, "GTV_Groin": 0}
        for n in plan.used_needles():
            d = (n.tip - n.entry) / np.linalg.norm(n.tip - n.entry)
            pts = needle_points(n, 1.0)
            if inside["GTV_Groin"](pts):
                np.testing.assert_allclose(d, [0.0, -1.0, 0.0], atol=1e-9, err_msg=n.name)
                seen["GTV_Groin"] += 1
            elif inside["GTV_RP"](pts):
                np.testing.assert_allclose(d, [0.0, 1.0, 0.0], atol=1e-9, err_msg=n.name)
                seen["GTV_RP"] += 1
        self.assertGreater(seen["GTV_RP"], 3)
        self.assertGreater(seen["GTV_Groin"], 2)
        self.assertEqual(plan.structures["target_directions"], {"GTV_RP": [0.0, 1.0, 0.0], "GTV_Groin": [0.0, -1.0, 0.0]})

    def test_target_option_with_a_direction(self):
        self.assertEqual(parse_target("GTV_RP:rx=120,direction=a").direction, "A")
        self.assertEqual(parse_target("GTV_RP:dir=1;-1;0,strength=0.5").direction, "1;-1;0")
        with self.assertRaisesRegex(InputError, "direction='up'"):
            parse_target("GTV_RP:direction=up")
        with self.assertRaisesRegex(InputError, "contradictory directions"):
            merge_specs([TargetSpec("GTV_RP", direction="A"), TargetSpec("gtv_rp", direction="P")])

    def test_fan_mode_on_a_labelmap_finds_the_skin(self):
        # the body label excludes the mass: the skin comes from the union of all labels
        plan = plan_from_masks(self.g, self.masks, "GTV_Groin", forbidden=list(FORBIDDEN), body="Body",
                               strength=0.7, strength_unit="mCi", prescription_Gy=RX, needle_mode="fan", approach="A",
                               template_spacing_mm=8.0, rules=LoadingRules(spacing_mm=5.0), time_limit_s=3.0)
        self.assertGreater(len(plan.seeds), 10)
        self.assertTrue(all(n.kind == "auto" for n in plan.needles))


if __name__ == "__main__":
    unittest.main()
