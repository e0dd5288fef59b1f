"""Simulated intra-operative CTs of the sample case: the demo plan's needles as they really land.

The scenario of issue 9: the demo plan (sample case, model-6711 seeds of 0.6 mCi, 120 Gy, 5 mm
template from the left flank) is implanted; every needle lands with its entry 2-5 mm off the
plan (perpendicular to the needle) and its direction tilted 1-4 deg, its depth off by
N(0, 1.5 mm); one needle in four is bent (sagitta 0.5-2 mm, a deflected bevelled needle). The
first ``n_loaded`` needles (plan order) have been loaded and withdrawn: their seeds sit along the
needle as it really was, at the planned distances from its tip (jitter 0.5 mm along, never closer
than a capsule length + 0.3 mm; 0.3 mm across; axes within about 5 deg of the needle). The other needles are still in place. The CT is
:func:`..imaging.ctsim.simulate_ct` of the sample anatomy (noise-free analytic phantom evaluated on
the CT's own slices) with these objects.

Written beside the CT: ``truth.json`` (ctsim's truth plus, per needle, the plan's name and
number, planned entry/tip and the true deviations; per seed, the needle and planned seed index it
came from), the plan (``plan.json``) and the sample segmentation's path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.geometry import ImageGeometry
from ..imaging import ctsim
from .needles import GAUGE_OUTER_DIAMETER_MM
from .planfile import Plan, read_plan, write_plan

#: The demo's planning settings (cli/demo.py), repeated here because planning sits below the CLI;
#: the time limit is raised from the demo's 8 s to 120 s so that the annealing always runs all its
#: iterations and the polish is never cut: the same plan (hence the same case) on every machine.
DEMO_PLAN_SETTINGS = dict(
    target="GTV", forbidden=("Bone", "Bowel", "Vessels", "Kidneys", "SpinalCanal"), body="Body",
    model_id="I125_OncoSeed_6711", strength=0.6, strength_unit="mCi", reference_date="2026-11-20",
    implant_date="2026-11-27", prescription_Gy=120.0, needle_mode="template", direction="R",
    template_spacing_mm=5.0, time_limit_s=120.0, rng_seed=0)


def demo_plan(progress=None):
    """The demo plan of the sample case (same settings as ``seedplan demo``)."""
    from ..samplecase.generator import sample_case_paths
    from .problem import OARConstraint
    from .pipeline import plan_case
    import tempfile
    s = dict(DEMO_PLAN_SETTINGS)
    target = s.pop("target")
    forbidden = s.pop("forbidden")
    body = s.pop("body")
    with tempfile.TemporaryDirectory() as tmp:
        ct_path, seg_path = sample_case_paths(cache_dir=tmp)
        plan, _, _ = plan_case(ct_path, seg_path, target, oars=[OARConstraint("Bowel", d2cc_Gy=100.0), "Vessels"],
                               forbidden=forbidden, body=body, progress=progress, **s)
    return plan


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _perp(d, rng):
    p = np.cross(d, rng.normal(size=3))
    return _unit(p)


def implant_scenario(plan: Plan, n_loaded=9, rng_seed=9, entry_offset_mm=(2.0, 5.0), tilt_deg=(1.0, 4.0),
                     depth_sigma_mm=1.5, bent_every=4, bend_mm=(0.5, 2.0)):
    """Needles as they land and seeds already implanted: ``(needles, seeds, info)`` for simulate_ct.

    ``needles``: the needles still in place (ctsim dicts with the plan's ``name``/``number`` and
    the planned ``planned_entry_ras``/``planned_tip_ras`` and deviations). ``seeds``: ctsim seed
    dicts of the seeds of the first ``n_loaded`` used needles. ``info``: the scenario's numbers.
    """
    rng = np.random.default_rng(rng_seed)
    used = plan.used_needles() if callable(getattr(plan, "used_needles", None)) else plan.needles
    used = sorted(used, key=lambda n: n.number)
    if not used:
        raise InputError("the plan has no needle carrying seeds")
    n_loaded = int(min(max(n_loaded, 0), len(used)))
    needles, seeds = [], []
    for order, nd in enumerate(used):
        d_plan = nd.direction
        depth = nd.depth_mm
        entry = nd.entry + _perp(d_plan, rng) * rng.uniform(*entry_offset_mm)
        tilt = np.deg2rad(rng.uniform(*tilt_deg))
        d = _unit(np.cos(tilt) * d_plan + np.sin(tilt) * _perp(d_plan, rng))
        depth_true = depth + rng.normal(0.0, depth_sigma_mm)
        tip = entry + d * depth_true
        bend = float(rng.uniform(*bend_mm)) if bent_every and order % bent_every == bent_every - 1 else 0.0
        bend_dir = _perp(d, rng)
        dia = GAUGE_OUTER_DIAMETER_MM.get(nd.gauge, 1.27)
        rec = {"name": nd.name, "number": int(nd.number), "entry_ras": entry.tolist(), "tip_ras": tip.tolist(),
               "diameter_mm": float(dia), "gauge": int(nd.gauge), "bend_mm": bend, "bend_direction": bend_dir.tolist(),
               "planned_entry_ras": nd.entry.tolist(), "planned_tip_ras": nd.tip.tolist(),
               "deviation": {"entry_mm": float(np.linalg.norm(entry - nd.entry)),
                             "tip_mm": float(np.linalg.norm(tip - nd.tip)),
                             "angle_deg": float(np.degrees(np.arccos(np.clip(d @ d_plan, -1, 1)))),
                             "depth_mm": float(depth_true - depth)}}
        if order < n_loaded:
            # seeds at the planned distances from the (true) tip, along the true, possibly bent, path
            pts = ctsim.needle_polyline(entry, tip, bend, bend_dir, 0.0, n_segments=24)
            seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
            s_from_entry = np.concatenate([[0.0], np.cumsum(seg)])
            total = s_from_entry[-1]
            idx = np.flatnonzero(plan.seed_needle == nd.number)
            s_tips = np.sort(plan.seed_s_from_tip_mm[idx] + rng.normal(0.0, 0.5, size=len(idx)))
            order_idx = idx[np.argsort(plan.seed_s_from_tip_mm[idx])]
            for m in range(1, len(s_tips)):       # capsules never overlap: >= length + 0.3 mm apart
                s_tips[m] = max(s_tips[m], s_tips[m - 1] + ctsim.SEED_LENGTH_MM + 0.3)
            for i, s_tip in zip(order_idx, s_tips):
                s = np.clip(total - s_tip, 0.0, total)
                p = np.array([np.interp(s, s_from_entry, pts[:, a]) for a in range(3)])
                k = min(int(np.searchsorted(s_from_entry, s, side="right")) - 1, len(pts) - 2)
                tang = _unit(pts[k + 1] - pts[k])
                p = p + _perp(tang, rng) * abs(rng.normal(0.0, 0.3))
                ax = _unit(tang + np.tan(np.deg2rad(rng.normal(0.0, 3.0))) * _perp(tang, rng))
                seeds.append({"center_ras": p.tolist(), "axis": ax.tolist(), "model_id": plan.model_id,
                              "needle": nd.name, "needle_number": int(nd.number), "planned_seed_index": int(i),
                              "planned_center_ras": plan.seeds.positions[i].tolist()})
            continue
        needles.append(rec)
    info = {"n_planned_needles_used": len(used), "n_loaded_withdrawn": n_loaded, "n_in_place": len(needles),
            "n_seeds_implanted": len(seeds), "n_seeds_planned": int(len(plan.seeds)),
            "loaded_needles": [nd.name for nd in used[:n_loaded]], "rng_seed": int(rng_seed),
            "entry_offset_mm": list(entry_offset_mm), "tilt_deg": list(tilt_deg), "depth_sigma_mm": depth_sigma_mm,
            "bent_every": bent_every, "bend_mm": list(bend_mm)}
    return needles, seeds, info


def intraop_geometry(plan: Plan, pixel_mm=0.8, slice_mm=1.0, margin_mm=15.0, tilt_deg=0.0):
    """A CT grid around the sample body in-plane and the implant (needles' ends and seeds) +- margin in z."""
    from ..samplecase.generator import SAMPLE_GEOMETRY
    lo, hi = SAMPLE_GEOMETRY.bounds_ras()
    pts = [plan.seeds.positions] + [np.vstack([n.entry, n.tip]) for n in plan.needles]
    pts = np.vstack(pts)
    z0, z1 = pts[:, 2].min() - margin_mm, pts[:, 2].max() + margin_mm
    ni = int(np.ceil((hi[0] - lo[0]) / pixel_mm)) + 1
    nj = int(np.ceil((hi[1] - lo[1]) / pixel_mm)) + 1
    nk = int(np.ceil((z1 - z0) / slice_mm)) + 1
    d = np.eye(3)
    if tilt_deg:
        a = np.deg2rad(tilt_deg)
        d = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    centre = np.array([0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]), 0.5 * (z0 + z1)])
    half = 0.5 * np.array([(ni - 1) * pixel_mm, (nj - 1) * pixel_mm, (nk - 1) * slice_mm])
    return ImageGeometry((ni, nj, nk), (pixel_mm, pixel_mm, slice_mm), tuple(centre - d @ half), tuple(map(tuple, d)))


def sample_anatomy(geometry: ImageGeometry):
    """The sample case's noise-free anatomy (HU, float32) evaluated on ``geometry``."""
    from ..samplecase.generator import make_sample_case
    ct, _, _ = make_sample_case(geometry, noise_HU=0.0)
    return ct.astype(np.float32)


#: Ready sample-case CTs: name -> (description, keyword arguments of make_sample_intraop_case).
SAMPLE_CASES = {
    "sample_intraop_1mm": ("sample case, demo plan: 9 needles loaded and withdrawn (their seeds in place), the others "
                           "in place 2-5 mm / 1-4 deg off, one in four bent; 0.8 mm pixels, 1 mm slices",
                           dict(slice_mm=1.0)),
    "sample_intraop_3mm": ("sample_intraop_1mm on 3 mm slices", dict(slice_mm=3.0)),
    "sample_intraop_oblique": ("sample_intraop_1mm with a 15 deg gantry tilt, 2 mm slices",
                               dict(slice_mm=2.0, tilt_deg=15.0)),
    "sample_postimplant_1mm": ("sample case, demo plan: every needle loaded and withdrawn (all seeds in place); "
                               "1 mm slices", dict(slice_mm=1.0, n_loaded=10 ** 6)),
}


def make_sample_intraop_case(folder, plan: Plan | str | None = None, *, slice_mm=1.0, pixel_mm=0.8, tilt_deg=0.0,
                             n_loaded=9, scenario_seed=9, rng_seed=0, noise=True, scanner=None, progress=None,
                             name="sample_intraop"):
    """Simulate an intra-operative CT of the sample case and write ct.nrrd, truth.json, plan.json.

    ``plan``: a Plan, a plan.json path, or None (the demo plan is made, about 10 s).
    Returns ``(ct path, truth path)``.
    """
    from ..core import progress as _progress
    if plan is None:
        plan = demo_plan(progress=_progress.scaled(progress, 0.0, 0.2))
    elif not isinstance(plan, Plan):
        plan = read_plan(plan)
    needles, seeds, info = implant_scenario(plan, n_loaded=n_loaded, rng_seed=scenario_seed)
    geometry = intraop_geometry(plan, pixel_mm=pixel_mm, slice_mm=slice_mm, tilt_deg=tilt_deg)
    hu, geometry, truth = ctsim.simulate_ct(sample_anatomy, geometry, needles=needles, seeds=seeds,
                                            slice_thickness_mm=slice_mm, noise=noise, rng_seed=rng_seed,
                                            scanner=scanner, progress=_progress.scaled(progress, 0.2, 1.0))
    truth["case"] = {"name": name, "scenario": info}
    folder = Path(folder)
    ct_path, truth_path = ctsim.write_case(folder, hu, geometry, truth)
    write_plan(folder / "plan.json", plan)
    return ct_path, truth_path


def make_sample_case_ct(name, folder, plan=None, rng_seed=0, noise=True, scanner=None, progress=None):
    """Write the ready sample-case CT ``name`` (:data:`SAMPLE_CASES`) into ``folder``."""
    if name not in SAMPLE_CASES:
        raise InputError(f"unknown sample CT case {name!r}; known: {', '.join(SAMPLE_CASES)}")
    return make_sample_intraop_case(folder, plan, rng_seed=rng_seed, noise=noise, scanner=scanner, progress=progress,
                                    name=name, **SAMPLE_CASES[name][1])


def make_case(name, folder, plan=None, rng_seed=0, noise=True, scanner=None, progress=None):
    """Any ready CT case: the phantom cases of ``imaging.ctsim.CASES`` or the sample cases above."""
    if name in ctsim.CASES:
        return ctsim.make_case(name, folder, rng_seed=rng_seed, noise=noise, progress=progress, scanner=scanner)
    if name in SAMPLE_CASES:
        return make_sample_case_ct(name, folder, plan, rng_seed, noise, scanner, progress)
    raise InputError(f"unknown CT case {name!r}; known: {', '.join(list(ctsim.CASES) + list(SAMPLE_CASES))}")
