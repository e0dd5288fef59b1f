"""CT simulator, physics tables: spectrum, attenuation, densities, object sizes, scanner settings.

Part of :mod:`imaging.ctsim` (the simulator's method and sources are in its docstring): the 120 kVp
spectrum binned to 10 keV (SpekPy 2.5; Poludniowski et al., Phys Med Biol 66:055007, 2021), mass
attenuation coefficients of the basis materials (Elam/Ravel/Sieber, Radiat Phys Chem 63:121, 2002,
via XrayDB 4.5), densities (g/cm^3), linear attenuation in 1/mm, the HU of each material at
``E_REF_KEV``, the seed and needle dimensions (mm), the :class:`Scanner` settings, the water
beam-hardening correction table and the HU -> water/bone basis split. Pinned by test_ctsim.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError

# --- spectrum and attenuation tables -------------------------------------------------------------
#: Mean energy (keV) of the ten 10 keV bins of the 120 kVp spectrum (20-30, ..., 110-120 keV).
SPECTRUM_KEV = np.array([27.4, 35.6, 45.1, 56.1, 65.2, 74.8, 84.8, 94.7, 104.5, 113.4])
#: Photon fraction per bin (SpekPy, 120 kVp, 12 deg W anode, 7 mm Al total filtration).
SPECTRUM_PHOTONS = np.array([0.0242, 0.1201, 0.1738, 0.2489, 0.1656, 0.0969, 0.0749, 0.0530, 0.0318, 0.0108])
#: Reference energy of the HU scale after the water correction (keV).
E_REF_KEV = 70.0
#: Mass attenuation coefficients mu/rho (cm^2/g) at SPECTRUM_KEV, then at E_REF_KEV (last column);
#: Elam et al. 2002 via XrayDB 4.5 (bone: ICRU-44 cortical bone by mass fractions H 3.4, C 15.5,
#: N 4.2, O 43.5, Na 0.1, Mg 0.2, P 10.3, S 0.3, Ca 22.5 %).
MU_RHO = {
    "water": [0.4326, 0.3016, 0.2432, 0.2127, 0.1985, 0.1881, 0.1800, 0.1737, 0.1684, 0.1642, 0.1929],
    "bone": [1.6873, 0.8700, 0.5166, 0.3488, 0.2807, 0.2386, 0.2112, 0.1930, 0.1801, 0.1711, 0.2570],
    "steel": [10.5717, 5.0378, 2.5976, 1.4371, 0.9740, 0.6959, 0.5225, 0.4139, 0.3420, 0.2957, 0.8164],
    "titanium": [6.4401, 3.0617, 1.5952, 0.9039, 0.6293, 0.4649, 0.3621, 0.2973, 0.2542, 0.2263, 0.5361],
    "silver": [46.2415, 23.4452, 12.4679, 6.9187, 4.6030, 3.1753, 2.2685, 1.6940, 1.3113, 1.0646, 3.7978],
}
#: Densities (g/cm^3): water, ICRU-44 cortical bone, stainless steel (as iron), titanium, silver.
DENSITY = {"water": 1.0, "bone": 1.92, "steel": 8.0, "titanium": 4.506, "silver": 10.49}
#: Material order of the path-length arrays.
MATERIALS = ("water", "bone", "steel", "titanium", "silver")


def linear_attenuation_per_mm(material):
    """mu (1/mm) of ``material`` at the spectrum bins (10,) and at E_REF_KEV (scalar)."""
    mu = np.asarray(MU_RHO[material], float) * DENSITY[material] / 10.0
    return mu[:-1], float(mu[-1])


MU_E = np.stack([linear_attenuation_per_mm(m)[0] for m in MATERIALS])        # (n_mat, n_E) 1/mm
MU_REF = np.array([linear_attenuation_per_mm(m)[1] for m in MATERIALS])     # (n_mat,) 1/mm at E_ref
MU_WATER_REF = float(MU_REF[0])
#: HU of cortical bone and of the metals at E_ref (what a monochromatic scanner would show).
HU_REF = {m: 1000.0 * (MU_REF[i] / MU_WATER_REF - 1.0) for i, m in enumerate(MATERIALS)}
#: Detected-energy weights of the bins (energy-integrating detector).
ENERGY_WEIGHTS = SPECTRUM_PHOTONS * SPECTRUM_KEV / float(np.sum(SPECTRUM_PHOTONS * SPECTRUM_KEV))
#: Smallest count kept before the log (photon starvation floor).
MIN_COUNTS = 1.0

# --- object dimensions ----------------------------------------------------------------------------
#: I-125 model-6711-class seed: titanium capsule (mm) and silver marker rod (mm).
SEED_LENGTH_MM = 4.5
SEED_DIAMETER_MM = 0.8
SEED_WALL_MM = 0.05
MARKER_LENGTH_MM = 3.0
MARKER_DIAMETER_MM = 0.5
#: Needle outer diameters by gauge (mm), DOMAIN.md.
NEEDLE_GAUGE_OD_MM = {17: 1.47, 18: 1.27, 20: 0.91, 22: 0.72}


@dataclass
class Scanner:
    """Acquisition and reconstruction settings of the simulated scanner (mm unless named)."""

    n_views: int | None = None           # views over 180 deg; None: 3/4 of the detector bins, at least 360
    photons_per_ray_mm: float = 1.0e5    # unattenuated photons per ray per view per mm of row width
    electronic_noise_counts: float = 4.0  # Gaussian electronic noise (counts, standard deviation)
    thin_slice_mm: float = 1.0           # widest detector row; thicker slices average thin ones
    sub_plane_mm: float = 0.2            # through-row sampling of the metal's partial volume
    sub_rays: int = 4                    # rays across each detector bin's aperture where metal is hit
    kernel: str = "hann"                 # reconstruction kernel: "hann" (standard), "shepp-logan", "ram-lak"
    fast_metal_free: bool = False        # slices > 1 row from any metal: system PSF + FBP-shaped noise
    slice_profile: str = "box"           # "box" or "triangle" weights of thin slices in a thick one
    detector_oversampling: int = 1       # samples per pixel width, each a pixel-wide aperture (as a flying focal spot)
    view_block: int = 12                 # views per sparse projector block
    slab_slices: int | None = None       # thin slices reconstructed together; None: as many as fit
    slab_memory_mb: float = 1024.0       # work-array budget that sets the automatic slab size

    def views_for(self, n_det):
        """Number of views for a detector of ``n_det`` bins."""
        if self.n_views is not None:
            if int(self.n_views) < 8:
                raise InputError(f"scanner n_views must be at least 8, got {self.n_views}")
            return int(self.n_views)
        return max(360, int(math.ceil(0.75 * n_det)))


def hu_to_basis(hu):
    """Split HU into water and cortical-bone volume fractions ``(a, b)`` (same shape, float32)."""
    hu = np.asarray(hu, np.float32)
    b = np.clip(hu / np.float32(HU_REF["bone"]), 0.0, 1.0)
    a = np.where(hu > 0, 1.0 - b, np.clip(1.0 + hu / 1000.0, 0.0, None)).astype(np.float32)
    return a, b.astype(np.float32)


def water_correction_table(max_mm=1200.0, step_mm=0.5):
    """(polychromatic log attenuation p, water thickness mm) of the water beam-hardening correction."""
    L = np.arange(0.0, max_mm + step_mm, step_mm)
    T = np.exp(-np.outer(L, MU_E[0])) @ ENERGY_WEIGHTS
    return -np.log(T), L
