"""Seeds inside a needle in place (not implanted) and seeds deposited ahead of or beside it (implanted):
planning/intraop.drop_needle_objects on a simulated CT (imaging/ctsim.py) and on the simulator's truth."""

import types
import unittest

import numpy as np

from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.imaging import ctsim
from SeedImplantPlannerLib.planning import intraop

M6711 = "I125_OncoSeed_6711"


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


class LumenTest(unittest.TestCase):
    """Two 18 G needles from inferior, tilted 4-6 deg (not a benchmark layout), 1 mm slices of
    0.8 mm pixels: a seed still loaded in needle L0 (in its lumen, 3 mm behind its tip), a seed
    just pushed out of needle L1 (2.9 mm ahead of its tip: its near end 0.65 mm past the tip,
    within 3.1 mm of the tip, where the former 2.5 mm distance rule took it for the needle), and
    two seeds away from the needles. Forward projection, beam hardening, starvation, noise, FBP."""

    @classmethod
    def setUpClass(cls):
        g = ImageGeometry((64, 64, 36), (0.8, 0.8, 1.0), (-25.2, -25.2, -17.5))
        needles = []
        for q, (x, y, tilt) in enumerate([(-10.0, -8.0, (0.06, 0.10)), (2.0, 6.0, (-0.05, 0.08))]):
            d = _unit([tilt[0], tilt[1], 1.0])
            tip = np.array([x, y, 6.0 - 2 * q])
            needles.append({"name": f"L{q}", "entry_ras": (tip - 60 * d).round(3).tolist(),
                            "tip_ras": tip.round(3).tolist(), "diameter_mm": 1.27})
        d0, d1 = (_unit(np.subtract(n["tip_ras"], n["entry_ras"])) for n in needles)
        t0, t1 = (np.array(n["tip_ras"]) for n in needles)
        seeds = [{"center_ras": (t0 - 3.0 * d0).round(3).tolist(), "axis": d0.round(5).tolist(), "model_id": M6711},
                 {"center_ras": (t1 + 2.9 * d1).round(3).tolist(), "axis": d1.round(5).tolist(), "model_id": M6711},
                 {"center_ras": [-2.0, -12.0, -6.0], "axis": _unit([0.1, 0.2, 1.0]).round(5).tolist(), "model_id": M6711},
                 {"center_ras": [8.0, 12.0, -9.0], "axis": _unit([0.0, -0.1, 1.0]).round(5).tolist(), "model_id": M6711}]
        cls.ct, cls.g, cls.truth = ctsim.simulate_ct(None, g, needles=needles, seeds=seeds, rng_seed=7)
        cls.needles = intraop.needles_from_dicts(cls.truth["needles"])
        cls.seeds = np.array([s["center_ras"] for s in cls.truth["seeds"]])
        cls.axes = np.array([s["axis"] for s in cls.truth["seeds"]])

    def test_seed_in_the_lumen_not_implanted_seed_ahead_of_the_tip_implanted(self):
        found, keep, rejected, _ = intraop.find_implanted_seeds(self.ct, self.g, np.ones(self.ct.shape, bool),
                                                                self.needles)
        kept = found.positions[keep]
        d = np.linalg.norm(kept[:, None] - self.seeds[None], axis=-1)
        self.assertEqual(len(kept), 3)
        self.assertEqual(sorted(d.argmin(axis=1).tolist()), [1, 2, 3])   # all but the seed in L0's lumen
        self.assertLess(float(d.min(axis=1).max()), 1.0)
        # the loaded seed is rejected with L0's steel left on its axis (one object with it), as a seed
        # still inside the needle
        n0 = self.needles[0]
        on_l0 = [r for r in rejected if r.get("position_mm") is not None and "inside" in r["reason"]
                 and intraop.point_segment_distance(np.asarray(r["position_mm"])[None], n0.tip, n0.entry)[0] < 1.0
                 and np.linalg.norm(np.asarray(r["position_mm"]) - self.seeds[0]) < 10.0]
        self.assertTrue(on_l0, rejected)

    def test_rule_on_the_true_poses(self):
        # the simulator's own seed poses: in L0's lumen -> dropped; ahead of L1's tip and away -> kept
        keep, rejected = intraop.drop_needle_objects(types.SimpleNamespace(positions=self.seeds, axes=self.axes),
                                                     self.needles)
        self.assertEqual(keep.tolist(), [1, 2, 3])
        self.assertEqual(len(rejected), 1)
        self.assertIn("inside needle L0", rejected[0]["reason"])
        # a seed deposited beside L1, touching it (off its axis by the needle's + the seed's radius +
        # 0.1 mm), parallel to it, 8 mm behind its tip: implanted; the same seed lying across the
        # needle's path at its axis is not in the lumen either (a lumen holds only coaxial seeds);
        # coaxial and 0.2 mm off the axis it is in the lumen
        n = self.needles[1]
        side = _unit(np.cross(n.direction, [1.0, 0.0, 0.0]))
        beside = n.tip - 8.0 * n.direction + (n.outer_radius_mm + 0.4 + 0.1) * side
        in_lumen = n.tip - 8.0 * n.direction + 0.2 * side
        pos = np.array([beside, in_lumen, in_lumen])
        axes = np.array([n.direction, n.direction, side])
        keep, rejected = intraop.drop_needle_objects(types.SimpleNamespace(positions=pos, axes=axes), self.needles)
        self.assertEqual(keep.tolist(), [0, 2])
        self.assertEqual(len(rejected), 1)

    def test_rule_follows_a_curved_needle(self):
        # a needle given with its bent path (control points, 1.5 mm off its chord at the middle): a seed
        # in its lumen at the bend lies 1.5 mm from the chord and is still inside; a seed 1.5 mm off the
        # chord on the other side lies 3 mm from the path: deposited beside it
        from SeedImplantPlannerLib.planning.needles import Needle
        entry, tip = np.array([0.0, 0.0, -30.0]), np.array([0.0, 0.0, 10.0])
        mid = np.array([1.5, 0.0, -10.0])
        n = Needle(1, entry, tip, name="C1", gauge=18, kind="implanted", control_points=np.array([entry, mid, tip]))
        apex = n.point_from_tip(n.depth_mm / 2.0)
        axis = n.tangent_from_tip(n.depth_mm / 2.0)
        pos = np.array([apex, apex - 2.0 * (apex - [0.0, 0.0, apex[2]])])
        keep, rejected = intraop.drop_needle_objects(types.SimpleNamespace(positions=pos, axes=np.array([axis, axis])),
                                                     [n])
        self.assertGreater(float(np.hypot(apex[0], apex[1])), 1.3)         # the bend is off the chord
        self.assertEqual(keep.tolist(), [1])
        self.assertIn("inside needle C1", rejected[0]["reason"])


if __name__ == "__main__":
    unittest.main()
