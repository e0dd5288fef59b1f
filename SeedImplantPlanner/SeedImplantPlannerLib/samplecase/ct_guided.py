"""Deterministic CT-guided test case: a large retroperitoneal mass and a groin mass in one CT.

The case stands for the implants this product exists for (CT-guided I-125 seeds in large
soft-tissue tumours) and is built so that the planner's own assumptions are not baked in: the
shapes are analytic (ellipsoids, sinusoidal lobulation, tubes along splines), never derived from
needles, templates or dose. Coordinates are RAS millimetres (+x patient's right, +y anterior,
+z superior); the patient's left is -x.

- ``GTV_RP``: a lobulated left retroperitoneal mass of about 6 x 8 x 9 cm (about 225 cc at the
  benchmark grid), wrapped anteriorly and laterally by small-bowel / colon loops (``Bowel``,
  4-6 mm fat plane), with the left ``Kidney`` posterosuperior, the ``Psoas`` and lumbar spine
  (``Bone`` with the ``SpinalCanal``) medial-posterior, aorta and IVC (``Vessels``) medial, and
  the left iliac wing (in ``Bone``) below.
- ``GTV_Groin``: a right groin mass of about 5 x 5 x 2.5 cm (about 30 cc), anterior and lateral to
  the right femoral artery and vein (``FemoralVessels``), with the femoral ``Nerve`` lateral to
  the vessels.
- ``Body``: the remaining soft tissue inside the skin. As in a labelmap (one label per voxel), it
  *excludes* the organs and the masses: the skin is the outside of the union of all labels, or
  the CT's air boundary.

Outputs of :func:`write_ct_guided_case`: ``CTGuidedCT.nrrd`` (int16 HU, no noise: it compresses
well and the air boundary is exact) and ``CTGuidedLabels.nrrd`` (uint8 labelmap) with the
sidecar ``CTGuidedLabels.nrrd.labels.json`` naming the labels (read by
:func:`imaging.segio.read_segmentation`). The shipped files (``Resources/CTGuidedCase``) are on
:data:`SHIPPED_GEOMETRY` (3 x 3 x 4 mm); the benchmark builds the same anatomy on
:data:`BENCHMARK_GEOMETRY` (240 x 200 x 130 voxels of 1.5 x 1.5 x 2 mm).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.geometry import ImageGeometry
from .shapes import ellipsoid, tube

GENERATOR_VERSION = 1
CT_NAME = "CTGuidedCT.nrrd"
LABELS_NAME = "CTGuidedLabels.nrrd"

#: Benchmark grid: 240 x 200 x 130 voxels of 1.5 x 1.5 x 2 mm (360 x 300 x 260 mm), centred on the origin.
BENCHMARK_GEOMETRY = ImageGeometry((240, 200, 130), (1.5, 1.5, 2.0), (-179.25, -149.25, -129.0))
#: Shipped grid: 120 x 100 x 65 voxels of 3 x 3 x 4 mm over the same box.
SHIPPED_GEOMETRY = ImageGeometry((120, 100, 65), (3.0, 3.0, 4.0), (-178.5, -148.5, -128.0))

#: Label values of the labelmap (one label per voxel; earlier names win where shapes overlap).
LABELS = {"Body": 1, "GTV_RP": 2, "GTV_Groin": 3, "Bowel": 4, "Kidney": 5, "Vessels": 6, "Psoas": 7,
          "Bone": 8, "SpinalCanal": 9, "FemoralVessels": 10, "Nerve": 11}
#: Structures no needle may cross in this case.
FORBIDDEN = ("Bowel", "Kidney", "Vessels", "Bone", "SpinalCanal", "FemoralVessels", "Nerve")
#: CT numbers (HU) by label, non-contrast CT.
HU = {"Body": 40, "GTV_RP": 35, "GTV_Groin": 38, "Bowel": 25, "Kidney": 32, "Vessels": 45, "Psoas": 50,
      "Bone": 450, "SpinalCanal": 15, "FemoralVessels": 45, "Nerve": 30}


def _lobulated(x, y, z, centre, radii, amp, phase):
    """An ellipsoid whose radius is modulated by low-order spherical harmonics-like terms (lobules)."""
    dx, dy, dz = (x - centre[0]) / radii[0], (y - centre[1]) / radii[1], (z - centre[2]) / radii[2]
    r = np.sqrt(dx * dx + dy * dy + dz * dz)
    th = np.arctan2(dy, dx)
    ph = np.arctan2(dz, np.hypot(dx, dy))
    shape = 1.0 + amp * (np.sin(3 * th + phase) * np.cos(2 * ph) + 0.6 * np.cos(2 * th - phase) * np.sin(ph + 0.4))
    return r <= shape


def make_ct_guided_case(geometry: ImageGeometry = BENCHMARK_GEOMETRY):
    """Return ``(ct_hu int16 [k, j, i], labelmap uint8 [k, j, i], {name: bool mask}, geometry)``."""
    from scipy import ndimage
    c = geometry.voxel_centers_ras(dtype=np.float32)
    x, y, z = c[..., 0], c[..., 1], c[..., 2]
    sampling = (geometry.spacing[2], geometry.spacing[1], geometry.spacing[0])

    # skin: an abdomen/pelvis ellipse, narrower caudally (pelvis and upper thighs)
    taper = 1.0 - 0.10 * np.clip(-z / 130.0, 0.0, 1.0)
    skin = ((x / (160.0 * taper)) ** 2 + ((y - 5.0) / (120.0 * taper)) ** 2) <= 1.0

    # lumbar spine (vertebral bodies with disc gaps, posterior elements), spinal canal
    vert = ((x / 22.0) ** 2 + ((y + 62.0) / 17.0) ** 2) <= 1.0
    disc = np.abs(((z + 129.0) % 36.0) - 18.0) < 2.0
    canal = ((x / 8.0) ** 2 + ((y + 90.0) / 7.0) ** 2 <= 1.0) & (z > -60.0)
    posterior = (((x / 20.0) ** 2 + ((y + 92.0) / 13.0) ** 2) <= 1.0) & ~canal
    spine = ((vert & ~disc) | posterior) & (z > -60.0)
    # sacrum-like plate and the left and right iliac wings (curved plates, below z = 5 mm)
    wing = np.zeros(x.shape, dtype=bool)
    for side in (-1.0, 1.0):
        ring = np.abs(np.hypot(x - side * 60.0, (y + 35.0) / 1.1) - 62.0) < 5.0
        wing |= ring & (z < 5.0) & (z > -75.0) & (side * x > 55.0) & (y < 25.0) & (y > -95.0)
    sacrum = (((x / 45.0) ** 2 + ((y + 70.0) / 16.0) ** 2) <= 1.0) & (z <= -60.0) & (z > -100.0)
    bone = spine | wing | sacrum

    # psoas muscles (growing caudally), aorta and IVC, iliac vessels below the bifurcation
    grow = 1.0 + np.clip(60.0 - z, 0, 120) / 200.0
    psoas = np.zeros(x.shape, dtype=bool)
    for side in (-1.0, 1.0):
        psoas |= (((x - side * 40.0) / (14.0 * grow)) ** 2 + ((y + 58.0) / (13.0 * grow)) ** 2 <= 1.0) & (z > -70.0)
    aorta = ((x + 14.0) ** 2 + (y + 30.0) ** 2 <= 11.0 ** 2) & (z > -20.0)
    ivc = ((((x - 20.0) / 13.0) ** 2 + ((y + 28.0) / 10.0) ** 2) <= 1.0) & (z > -20.0)
    vessels = aorta | ivc
    for side in (-1.0, 1.0):
        vessels |= tube(x, y, z, [(side * 4.0 - 6.0, -30.0, -20.0), (side * 45.0, -30.0, -60.0),
                                   (side * 75.0, 15.0, -80.0)], 7.0)

    # left kidney: posterosuperior to the mass
    kidney = ellipsoid(x, y, z, (-82.0, -62.0, 112.0), (25.0, 20.0, 34.0))

    # the retroperitoneal mass: lobulated, left side, about 6 (AP) x 8 (LR) x 9 (SI) cm
    rp_c = (-78.0, -10.0, 45.0)
    gtv_rp = _lobulated(x, y, z, rp_c, (39.0, 29.5, 44.0), 0.10, 0.7)
    gtv_rp |= ellipsoid(x, y, z, (-60.0, 3.0, 20.0), (16.0, 14.0, 15.0))  # medial-anterior lobule
    gtv_rp |= ellipsoid(x, y, z, (-98.0, -20.0, 68.0), (13.0, 13.0, 15.0))  # lateral-posterior lobule

    # the groin mass: right side, anterior and lateral to the femoral vessels, about 5 x 5 x 2.5 cm
    gr_c = (62.0, 58.0, -100.0)
    gtv_gr = _lobulated(x, y, z, gr_c, (24.0, 14.0, 22.0), 0.08, 1.9)
    fem_v = tube(x, y, z, [(40.0, 45.0, -131.0), (42.0, 44.0, -100.0), (52.0, 30.0, -75.0), (70.0, 15.0, -60.0)], 7.0)
    fem_v |= tube(x, y, z, [(52.0, 40.0, -131.0), (54.0, 38.0, -100.0), (62.0, 26.0, -78.0), (75.0, 15.0, -62.0)], 5.0)
    nerve = tube(x, y, z, [(92.0, 42.0, -131.0), (92.0, 40.0, -100.0), (88.0, 25.0, -70.0)], 3.0)

    # bowel loops wrapping the mass anteriorly and laterally with a 4-6 mm fat plane, and more
    # loops filling the anterior abdomen
    dist_rp = ndimage.distance_transform_edt(~gtv_rp, sampling=sampling)
    loops = [
        [(-140, 40, 100), (-110, 38, 80), (-85, 36, 60), (-60, 38, 40), (-40, 35, 20), (-30, 30, -5)],  # over the mass
        [(-125, 20, 10), (-105, 30, 0), (-80, 35, -5), (-55, 30, 0)],  # below-anterior
        [(-135, 5, 95), (-132, -5, 60), (-130, 0, 25)],  # descending colon, lateral to the mass
        [(-128, 38, 110), (-122, 32, 70), (-124, 30, 30), (-112, 28, 0)],  # anterolateral
        [(-20, 60, 110), (10, 65, 70), (-15, 60, 30), (15, 62, 0), (-5, 55, -30)],
        [(40, 40, 110), (70, 30, 70), (60, 45, 30), (35, 40, 0)],
        [(-60, 75, 110), (-45, 80, 70), (-70, 72, 95)],
    ]
    bowel = np.zeros(x.shape, dtype=bool)
    for pts in loops:
        bowel |= tube(x, y, z, pts, 13.0)
    bowel &= dist_rp >= 5.0
    gas = np.zeros(x.shape, dtype=bool)
    for pts in loops:
        gas |= tube(x, y, z, pts, 5.0)
    gas &= bowel

    # labelmap: one label per voxel, earlier entries of this priority list win
    order = [("Bone", bone), ("SpinalCanal", canal), ("Vessels", vessels), ("FemoralVessels", fem_v), ("Nerve", nerve),
             ("GTV_RP", gtv_rp), ("GTV_Groin", gtv_gr), ("Kidney", kidney), ("Psoas", psoas), ("Bowel", bowel)]
    labels = np.zeros(x.shape, dtype=np.uint8)
    for name, m in order:
        labels[(labels == 0) & m & skin] = LABELS[name]
    labels[(labels == 0) & skin] = LABELS["Body"]
    masks = {name: labels == v for name, v in LABELS.items()}

    ct = np.full(x.shape, -1000, dtype=np.int16)
    ct[skin] = -95  # fat
    wall = skin & ~(((x / (145.0 * taper)) ** 2 + ((y - 5.0) / (105.0 * taper)) ** 2) <= 1.0)
    ct[wall] = HU["Body"]  # abdominal wall and back muscles
    for name, v in HU.items():
        if name != "Body":
            ct[masks[name]] = v
    ct[gas] = -900
    return ct, labels, masks, geometry


def write_ct_guided_case(folder, geometry: ImageGeometry = SHIPPED_GEOMETRY):
    """Write the CT, the labelmap and its label names into ``folder``; returns (CT path, labelmap path)."""
    from ..core.fileio import write_text
    from ..core.imageio import write_image
    folder = Path(folder)
    ct, labels, _, geometry = make_ct_guided_case(geometry)
    meta = {"SeedPlan_TestCase": f"CT-guided synthetic v{GENERATOR_VERSION}"}
    ct_path = write_image(folder / CT_NAME, ct, geometry, meta)
    lab_path = write_image(folder / LABELS_NAME, labels, geometry, meta)
    write_text(folder / (LABELS_NAME + ".labels.json"),
               json.dumps({str(v): k for k, v in LABELS.items()}, indent=1) + "\n")
    return ct_path, lab_path


def ct_guided_case_paths(cache_dir=None):
    """(CT path, labelmap path) of the shipped case (``Resources/CTGuidedCase``), else generated into ``cache_dir``."""
    here = Path(__file__).resolve()
    for parent in here.parents[:4]:
        folder = parent / "Resources" / "CTGuidedCase"
        if (folder / CT_NAME).exists() and (folder / LABELS_NAME).exists():
            return folder / CT_NAME, folder / LABELS_NAME
    if cache_dir is None:
        raise FileNotFoundError("CT-guided case not shipped here; pass a cache folder to generate it")
    folder = Path(cache_dir)
    if not ((folder / CT_NAME).exists() and (folder / LABELS_NAME).exists()):
        write_ct_guided_case(folder)
    return folder / CT_NAME, folder / LABELS_NAME


if __name__ == "__main__":
    import sys
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "Resources/CTGuidedCase")
    for p in write_ct_guided_case(out):
        print(f"wrote {p}")
