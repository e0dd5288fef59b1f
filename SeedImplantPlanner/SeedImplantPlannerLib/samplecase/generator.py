"""Deterministic synthetic sample case: a CT of the abdomen/pelvis with a retroperitoneal tumour.

The case mimics the clinical picture the product serves (a recurrent left retroperitoneal
liposarcoma next to bowel and vessels, treated with CT-guided I-125 seeds): body outline,
subcutaneous and visceral fat, muscle (psoas, paraspinal), lumbar spine and iliac wings, kidneys,
aorta and inferior vena cava, bowel loops with gas, and a lobulated fat-density tumour of about
90 cc. It is synthetic (no patient data) and made only from analytic shapes and a seeded random
generator, so the same version always writes the same files.

Coordinates are RAS millimetres (+x towards the patient's right, +y anterior, +z superior).
Outputs: ``SampleCT.nrrd`` (int16 HU) and ``SampleSegmentation.seg.nrrd`` (segments Body, GTV,
Bone, Bowel, Vessels, Kidneys, Psoas, SpinalCanal) on the same grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.geometry import ImageGeometry
from ..imaging.segio import Segmentation, write_segmentation
from .shapes import ellipsoid, tube

GENERATOR_VERSION = 1
RANDOM_SEED = 20261127
CT_NAME = "SampleCT.nrrd"
SEG_NAME = "SampleSegmentation.seg.nrrd"

#: Grid of the sample case: 160 x 128 x 56 voxels of 2 x 2 x 2.5 mm, centred on the origin.
SAMPLE_GEOMETRY = ImageGeometry((160, 128, 56), (2.0, 2.0, 2.5), (-159.0, -127.0, -68.75))

SEGMENT_COLORS = {
    "Body": (0.96, 0.84, 0.72), "GTV": (0.90, 0.10, 0.10), "Bone": (0.95, 0.95, 0.80),
    "Bowel": (0.75, 0.55, 0.25), "Vessels": (0.80, 0.10, 0.60), "Kidneys": (0.55, 0.30, 0.80),
    "Psoas": (0.35, 0.70, 0.35), "SpinalCanal": (0.95, 0.85, 0.10),
}


def make_sample_case(geometry: ImageGeometry = SAMPLE_GEOMETRY, noise_HU=10.0):
    """Return ``(ct_hu int16 [k, j, i], {segment name: bool mask}, geometry)``.

    ``noise_HU`` is the tissue texture added to the CT (0 for the noise-free anatomy a CT
    simulator measures itself).
    """
    rng = np.random.default_rng(RANDOM_SEED)
    c = geometry.voxel_centers_ras(dtype=np.float32)
    x, y, z = c[..., 0], c[..., 1], c[..., 2]

    body = ((x / 150.0) ** 2 + ((y - 5.0) / 105.0) ** 2) <= 1.0
    body &= y > -95.0
    inner = ((x / 133.0) ** 2 + ((y - 5.0) / 90.0) ** 2) <= 1.0
    inner &= y > -80.0

    # Lumbar spine: vertebral bodies (with thin disc gaps), posterior elements, spinal canal.
    vert = ((x / 22.0) ** 2 + ((y + 50.0) / 17.0) ** 2) <= 1.0
    disc = np.abs(((z + 68.75) % 35.0) - 17.5) < 2.0
    canal = ((x / 8.0) ** 2 + ((y + 78.0) / 7.0) ** 2) <= 1.0
    posterior = (((x / 20.0) ** 2 + ((y + 80.0) / 13.0) ** 2) <= 1.0) & ~canal
    spinous = (np.abs(x) < 4.0) & (y < -88.0) & (y > -93.0)
    spine = (vert & ~disc) | posterior | spinous
    # Iliac wings: curved plates low in the volume, lateral and posterior.
    wing = np.zeros(x.shape, dtype=bool)
    for side in (-1.0, 1.0):
        cx = side * 70.0
        ring = np.abs(np.sqrt(((x - cx) / 1.0) ** 2 + ((y + 25.0) / 1.1) ** 2) - 52.0) < 4.0
        wing |= ring & (z < -38.0) & (side * x > 60.0) & (y < 20.0) & (y > -75.0)
    bone = (spine | wing) & body

    psoas = np.zeros(x.shape, dtype=bool)
    for side in (-1.0, 1.0):
        grow = 1.0 + np.clip(-z, 0, 70) / 140.0  # larger caudally
        psoas |= (((x - side * 38.0) / (15.0 * grow)) ** 2 + ((y + 48.0) / (14.0 * grow)) ** 2) <= 1.0
    psoas &= ~bone

    aorta = ((x + 14.0) ** 2 + (y + 18.0) ** 2) <= 11.0 ** 2
    ivc = (((x - 20.0) / 13.0) ** 2 + ((y + 17.0) / 10.0) ** 2) <= 1.0
    vessels = (aorta | ivc) & (z > -45.0)
    # Iliac arteries below the bifurcation.
    for side in (-1.0, 1.0):
        vessels |= tube(x, y, z, [(side * 2.0 - 6.0, -18.0, -45.0), (side * 45.0, -10.0, -70.0)], 7.5)

    kidneys = np.zeros(x.shape, dtype=bool)
    for side in (-1.0, 1.0):
        kidneys |= ellipsoid(x, y, z, (side * 78.0, -48.0, 50.0), (24.0, 17.0, 40.0))

    # Tumour: lobulated union of ellipsoids in the left retroperitoneum (patient left = -x).
    gtv = ellipsoid(x, y, z, (-72.0, -2.0, 0.0), (24.0, 19.0, 27.0))
    gtv |= ellipsoid(x, y, z, (-56.0, 6.0, -14.0), (15.0, 13.0, 15.0))
    gtv |= ellipsoid(x, y, z, (-88.0, -10.0, 12.0), (12.0, 13.0, 14.0))
    gtv |= ellipsoid(x, y, z, (-66.0, -6.0, 22.0), (13.0, 12.0, 12.0))

    # Bowel: tubular loops in the anterior abdomen, one running over the tumour.
    bowel = np.zeros(x.shape, dtype=bool)
    loops = [
        [(-95, 45, 60), (-60, 38, 30), (-40, 35, 0), (-55, 34, -30), (-80, 40, -60)],
        [(-10, 55, 60), (20, 60, 25), (5, 50, -5), (30, 45, -40), (60, 55, -65)],
        [(60, 30, 60), (90, 20, 35), (85, 35, 0), (55, 30, -20), (40, 60, -50)],
        [(-30, 70, 40), (0, 80, 10), (-25, 75, -25), (0, 70, -60)],
    ]
    for pts in loops:
        bowel |= tube(x, y, z, pts, 12.0)
    bowel_gas = np.zeros(x.shape, dtype=bool)
    for pts in loops:
        bowel_gas |= tube(x, y, z, pts, 5.0)

    # Resolve overlaps: bone > vessels > GTV > kidneys > psoas > bowel.
    vessels &= body & ~bone
    gtv &= inner & ~bone & ~vessels
    kidneys &= inner & ~bone & ~vessels & ~gtv
    psoas &= ~vessels & ~gtv & ~kidneys
    bowel &= inner & ~bone & ~vessels & ~gtv & ~kidneys & ~psoas
    # Keep a fat plane of at least 3 mm between tumour and bowel (as a surgeon would find it).
    from scipy import ndimage
    near_gtv = ndimage.binary_dilation(gtv, iterations=1)
    bowel &= ~near_gtv
    bowel_gas &= bowel
    canal &= body

    ct = np.full(x.shape, -1000.0, dtype=np.float32)
    ct[body] = -100.0  # subcutaneous fat
    muscle_wall = body & ~inner
    ct[muscle_wall & (((x / 140.0) ** 2 + ((y - 5.0) / 97.0) ** 2) <= 1.0)] = 45.0
    ct[muscle_wall & (y < -60.0)] = 50.0  # paraspinal muscles
    ct[inner] = -85.0  # retroperitoneal / mesenteric fat
    ct[psoas] = 48.0
    ct[kidneys] = 32.0
    ct[vessels] = 45.0
    ct[bowel] = 30.0
    ct[bowel_gas] = -850.0
    septa = (np.sin(x * 0.35) * np.sin(y * 0.3 + 1.0) * np.sin(z * 0.25 + 2.0)) > 0.55
    ct[gtv] = -55.0
    ct[gtv & septa] = 15.0
    ct[spine | wing] = 260.0
    cortex = (bone & ~ndimage.binary_erosion(bone, iterations=1))
    ct[cortex] = 750.0
    ct[canal] = 20.0
    noise = (rng.normal(0.0, 1.0, size=ct.shape) * noise_HU).astype(np.float32)
    ct = ct + np.where(ct > -990.0, noise, noise * 0.2)
    ct_hu = np.clip(np.round(ct / 2.0) * 2.0, -1024, 3071).astype(np.int16)

    masks = {"Body": body, "GTV": gtv, "Bone": bone, "Bowel": bowel, "Vessels": vessels,
             "Kidneys": kidneys, "Psoas": psoas, "SpinalCanal": canal}
    return ct_hu, masks, geometry


def write_sample_case(folder, geometry: ImageGeometry = SAMPLE_GEOMETRY):
    """Write ``SampleCT.nrrd`` and ``SampleSegmentation.seg.nrrd`` into ``folder``; returns their paths."""
    from ..core.imageio import write_image
    folder = Path(folder)
    ct, masks, geometry = make_sample_case(geometry)
    ct_path = write_image(folder / CT_NAME, ct, geometry,
                          {"SeedPlan_SampleCase": f"synthetic v{GENERATOR_VERSION} seed {RANDOM_SEED}"})
    seg = Segmentation.from_masks(geometry, masks, SEGMENT_COLORS)
    seg_path = write_segmentation(folder / SEG_NAME, seg)
    return ct_path, seg_path


def bundled_sample_case_dir() -> Path | None:
    """The repository's ``Resources/SampleCase`` folder if this library runs from a source tree."""
    here = Path(__file__).resolve()
    for parent in here.parents[:4]:
        candidate = parent / "Resources" / "SampleCase"
        if (candidate / CT_NAME).exists() and (candidate / SEG_NAME).exists():
            return candidate
    return None


def sample_case_paths(cache_dir=None):
    """(CT path, segmentation path) of the sample case: the bundled files, else generated into ``cache_dir``."""
    bundled = bundled_sample_case_dir()
    if bundled is not None:
        return bundled / CT_NAME, bundled / SEG_NAME
    if cache_dir is None:
        raise FileNotFoundError("sample case not bundled here; pass a cache folder to generate it")
    folder = Path(cache_dir)
    if not ((folder / CT_NAME).exists() and (folder / SEG_NAME).exists()):
        write_sample_case(folder)
    return folder / CT_NAME, folder / SEG_NAME


def main(argv=None):
    """Regenerate the bundled sample case: ``python -m SeedImplantPlannerLib.samplecase OUTDIR``."""
    import sys
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path("Resources/SampleCase")
    ct_path, seg_path = write_sample_case(out)
    print(f"wrote {ct_path} and {seg_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
