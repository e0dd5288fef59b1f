"""A planned case and an intra-operative CT of the same patient after a known rigid motion (shared test data).

Used by the tests of registration in the Intra-op panel (test_mrml_intraop_register.py), the web
planner's session (test_web_session_register.py), the browser test (Testing/Python/test_web.py) and
the CLI / module / web comparison. Both CTs are measured by the CT simulator (imaging/ctsim.py):
the planning CT of test_registration.py's pelvis-like phantom (vertebrae, iliac plate, femur-like
rod: bone to register on), and the intra-operative CT of the same phantom seen after the motion
``MOTION`` (a body point p is seen at R p + t), with the plan's needles in place (landed 2-5 mm
off, 1-4 deg tilted: ctcases.implant_scenario) and the seeds of the first loaded needles, all
moved with the patient. The truth (motion, needles, seeds) is returned beside the files; nothing
here uses the registration code.
"""

from pathlib import Path

import numpy as np

from SeedImplantPlannerLib.core.fileio import write_csv
from SeedImplantPlannerLib.core.geometry import ImageGeometry
from SeedImplantPlannerLib.core.imageio import write_image
from SeedImplantPlannerLib.imaging import ctsim
from SeedImplantPlannerLib.imaging.ctsim_physics import Scanner
from SeedImplantPlannerLib.imaging.segio import Segmentation, write_segmentation

from test_registration import _rot, anatomy, grid, pelvis_hu


def rotation(ax, ay, az):
    """Rz @ Ry @ Rx (degrees), as test_registration writes it."""
    return _rot(ax, ay, az)


#: the patient's motion between the planning and the intra-operative CT: new = R p + t (RAS mm)
MOTION = (rotation(2.0, -1.5, 4.0), np.array([6.0, -4.0, 5.0]))
FAST = Scanner(fast_metal_free=True)


def move(p, motion=MOTION):
    R, t = motion
    return np.asarray(p, float) @ R.T + t


def truth_matrix(motion=MOTION):
    """planning-from-new (RAS) of the motion: p = R^T (x - t)."""
    R, t = motion
    m = np.eye(4)
    m[:3, :3] = R.T
    m[:3, 3] = -R.T @ t
    return m


def structures(geometry):
    """GTV (the phantom's organ), Body and Bone masks on ``geometry`` (the phantom's own shapes)."""
    p = geometry.voxel_centers_ras(dtype=np.float64)
    hu = pelvis_hu(p)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    gtv = ((x + 15.0) / 18.0) ** 2 + ((y - 8.0) / 14.0) ** 2 + ((z - 5.0) / 22.0) ** 2 <= 1.0
    return {"GTV": gtv, "Body": hu > -500.0, "Bone": hu >= 200.0}


def make_moved_case(folder, n_loaded=2, slice_mm=2.0, motion=MOTION, time_limit_s=2.0):
    """Write into ``folder``: ``case/ct.nrrd`` + ``case/seg.seg.nrrd`` (planning), ``plan/`` (plan folder),
    ``intraop_moved.nrrd`` (the intra-operative CT after ``motion``), ``needles_on_intraop.csv`` (the
    needles in place as found on that CT: its own frame) and ``intraop_far.nrrd`` (the same CT moved
    400 mm away: no overlap). Returns a dict of paths and truth."""
    from SeedImplantPlannerLib.planning import ctcases
    from SeedImplantPlannerLib.planning.needles import NEEDLE_TABLE_COLUMNS, needle_table
    from SeedImplantPlannerLib.planning.intraop import needles_from_dicts
    from SeedImplantPlannerLib.planning.pipeline import plan_case
    from SeedImplantPlannerLib.planning.planfile import write_plan_folder
    folder = Path(folder)
    (folder / "case").mkdir(parents=True, exist_ok=True)
    g = grid(2.0)
    ct, g, _ = ctsim.simulate_ct(anatomy(), g, scanner=FAST, rng_seed=1)
    write_image(folder / "case" / "ct.nrrd", ct, g)
    seg = Segmentation.from_masks(g, structures(g), {"GTV": (1.0, 0.0, 0.0), "Body": (0.9, 0.8, 0.7),
                                                     "Bone": (1.0, 1.0, 0.8)})
    write_segmentation(folder / "case" / "seg.seg.nrrd", seg)
    plan, dose, dg = plan_case(folder / "case" / "ct.nrrd", folder / "case" / "seg.seg.nrrd", "GTV",
                               forbidden=["Bone"], body="Body", strength=0.5, strength_unit="mCi",
                               prescription_Gy=145.0, direction="P", template_spacing_mm=8.0,
                               time_limit_s=time_limit_s, rng_seed=1)
    write_plan_folder(folder / "plan", plan, dose, dg)
    needles, seeds, _ = ctcases.implant_scenario(plan, n_loaded=n_loaded, rng_seed=4)
    R, t = motion
    for n in needles:
        n["entry_ras"], n["tip_ras"] = move(n["entry_ras"], motion).tolist(), move(n["tip_ras"], motion).tolist()
        n["bend_direction"] = (R @ np.asarray(n["bend_direction"])).tolist()
    for s in seeds:
        s["center_ras"], s["axis"] = move(s["center_ras"], motion).tolist(), (R @ np.asarray(s["axis"])).tolist()
    gi = grid(slice_mm, z_mm=60.0)
    ict, gi, truth = ctsim.simulate_ct(anatomy(motion), gi, needles=needles, seeds=seeds, scanner=FAST, rng_seed=2)
    write_image(folder / "intraop_moved.nrrd", ict, gi)
    far = ImageGeometry(gi.size, gi.spacing, tuple(np.asarray(gi.origin) + [400.0, 400.0, 0.0]), gi.direction_matrix)
    write_image(folder / "intraop_far.nrrd", ict, far)
    write_csv(folder / "needles_on_intraop.csv", needle_table(needles_from_dicts(truth["needles"])),
              NEEDLE_TABLE_COLUMNS)
    seeds_plan = np.array([move(s["center_ras"], (R.T, -R.T @ t)) for s in seeds]) if seeds else np.zeros((0, 3))
    return {"folder": folder, "ct": folder / "case" / "ct.nrrd", "seg": folder / "case" / "seg.seg.nrrd",
            "plan": folder / "plan", "intraop": folder / "intraop_moved.nrrd", "far": folder / "intraop_far.nrrd",
            "needles_csv": folder / "needles_on_intraop.csv", "plan_obj": plan, "needles": needles, "seeds": seeds,
            "seeds_plan_frame": seeds_plan, "motion": motion, "truth_matrix": truth_matrix(motion),
            "planning_ct": (ct, g), "intraop_ct": (ict, gi), "segmentation": seg}
