"""The seed finder on thick slices (imaging/seedfinder.py, seed_components.py) on a simulated CT
(imaging/ctsim.py): the seeds of end-to-end chains lying near the slice plane are found when one of them
straddles two 3 mm slices; calcifications (300-900 HU) are not reported."""

import unittest

import numpy as np

from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.imaging import ctsim
from SeedImplantPlannerLib.imaging.seedfinder import find_seeds

M6711 = "I125_OncoSeed_6711"


class StraddlingChainSeedTest(unittest.TestCase):
    """Held-out layout (not a benchmark case): 0.8 mm pixels, 3 mm slices (each the mean of three 1 mm
    rows); two chains of seeds end to end (0.2-0.8 mm gaps, 3 and 4 seeds) lying 3-5 deg out of the slice
    plane, each with one seed centred within 0.25 mm of a slice boundary; six seeds with random axes, a
    side-by-side pair, three calcifications (1.7-2.3 mm radius, 500-790 HU).

    Rays along a chain in the slice plane pass through every seed of it and starve: the dark band they
    leave along the chain eats a share of each seed's metal, and a seed straddling two slices leaves only
    half of its metal in each, on that band: neither half reaches the threshold, and its brighter half's
    component held a third of a seed (rejected as too little metal before its metal was summed over the
    slices its image spans). Not asserted: the side-by-side pair is found as one seed (open)."""

    CHAINS = [([12.026, -5.576, 4.561], [7.087, -6.769, 4.795], [2.148, -7.961, 5.029]),
              ([3.561, 5.918, -7.492], [-0.784, 3.766, -7.045], [-5.129, 1.614, -6.599], [-9.474, -0.538, -6.153])]
    AXES = [[-0.97103, -0.23447, 0.04608], [-0.89234, -0.44196, 0.09163]]
    OTHERS = [([12.038, 2.557, -4.789], [0.13795, -0.74401, 0.65377]),
              ([-22.073, 10.526, -6.241], [-0.83892, -0.01563, 0.54403]),
              ([3.199, -9.849, -8.493], [-0.42705, 0.23922, 0.87201]),
              ([-6.512, -13.923, 7.747], [0.74807, -0.33922, -0.57037]),
              ([20.818, 10.201, -0.896], [-0.77236, 0.148, 0.6177]),
              ([8.28, 16.341, -5.148], [-0.09133, -0.17968, 0.97948]),
              ([22.082, -4.924, 0.179], [-0.21116, 0.90432, -0.37097]),
              ([23.418, -4.659, 0.065], [-0.21116, 0.90432, -0.37097])]
    CALCS = [([13.261, -8.629, -3.031], 2.262, 789.0), ([-15.033, -12.53, 3.223], 1.877, 501.9),
             ([-2.799, 18.257, 7.024], 1.727, 687.7)]

    @classmethod
    def setUpClass(cls):
        g = ImageGeometry((112, 96, 9), (0.8, 0.8, 3.0), (-44.4, -38.0, -12.0))
        seeds = [{"center_ras": p, "axis": ax, "model_id": M6711} for ch, ax in zip(cls.CHAINS, cls.AXES) for p in ch]
        seeds += [{"center_ras": p, "axis": ax, "model_id": M6711} for p, ax in cls.OTHERS]
        calcs = [{"center_ras": p, "radius_mm": r, "hu": hu} for p, r, hu in cls.CALCS]
        cls.ct, cls.g, cls.truth = ctsim.simulate_ct(None, g, seeds=seeds, calcifications=calcs, rng_seed=40)
        cls.seeds = np.array([s["center_ras"] for s in cls.truth["seeds"]])
        cls.found = find_seeds(cls.ct, cls.g, needles=[])

    def test_layout(self):
        # one seed of each chain on a slice boundary (within 0.25 mm), the chains within 6 deg of the plane
        for ch, ax in zip(self.CHAINS, self.AXES):
            frac = np.abs(self.g.ras_to_ijk(np.array(ch))[:, 2] % 1.0 - 0.5) * 3.0
            self.assertLess(float(frac.min()), 0.25)
            self.assertLess(abs(ax[2]), np.sin(np.radians(6.0)))

    def test_chain_seeds_found(self):
        pos = self.found.positions
        for ch in self.CHAINS:
            for p in ch:
                self.assertLess(float(np.linalg.norm(pos - np.array(p), axis=1).min()), 1.5, p)

    def test_nothing_reported_but_seeds(self):
        # every reported object is a seed (within 2 mm of one), none of the calcifications
        d = np.linalg.norm(self.found.positions[:, None] - self.seeds[None], axis=2).min(axis=1)
        self.assertTrue(np.all(d < 2.0), d)
        for p, _, _ in self.CALCS:
            self.assertGreater(float(np.linalg.norm(self.found.positions - np.array(p), axis=1).min()), 3.0)

    def test_straddling_seed_between_the_slices(self):
        # measured over both slices, the straddling seed's centre lies near the boundary, not in one slice
        p = np.array(self.CHAINS[0][0])
        d = np.linalg.norm(self.found.positions - p, axis=1)
        i = int(np.argmin(d))
        self.assertLess(float(d[i]), 1.5)
        self.assertLess(abs(float(self.found.positions[i][2]) - p[2]), 1.0)


if __name__ == "__main__":
    unittest.main()
