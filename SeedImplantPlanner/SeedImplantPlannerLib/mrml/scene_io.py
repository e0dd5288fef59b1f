"""A whole plan scene in one call: build it in a scene, or save it as a Slicer scene bundle (.mrb)."""

from __future__ import annotations

from pathlib import Path

from ..core import progress as _progress
from ..physics.seeds import SeedSet
from .isodose import DEFAULT_ISODOSE_LEVELS_PCT
from .plan_scene import PlanScene


def build_plan_scene(ctx, *, seeds: SeedSet, prescription_Gy, ct=None, segmentation=None, target=None, organs=(),
                     forbidden=(), needles=(), seed_needle_numbers=None, dose=None, dose_geometry=None,
                     dose_method="fast", isodose_levels_pct=DEFAULT_ISODOSE_LEVELS_PCT, goals=None,
                     parameters=None, needles_locked=True, plan=None, progress=None) -> PlanScene:
    """Build the whole plan in ``ctx``'s scene and compute or show its dose; returns the PlanScene.

    ``ct`` is (array, ImageGeometry); ``segmentation`` a :class:`segio.Segmentation`; ``target``,
    ``organs`` and ``forbidden`` segment names; ``needles`` :class:`needles.Needle` objects or
    (entry, tip) pairs; ``seed_needle_numbers`` the needle number of each seed (0 = none);
    ``dose`` an (array Gy, ImageGeometry) computed elsewhere, else the dose is computed on
    ``dose_geometry`` (default: target box + margin) with ``dose_method``; ``goals`` a
    :class:`goals.GoalSet`; ``parameters`` extra parameter-node values (see :data:`DEFAULTS`); ``plan`` the
    :class:`planfile.Plan` these seeds come from, recorded in the scene when it is saved (:mod:`.plan_record`).
    """
    plan_object = plan
    plan = PlanScene(ctx)
    for k, v in (parameters or {}).items():
        plan.params.set(k, v)
    plan.params.set("isodoseLevelsPercent", ", ".join(f"{float(v):g}" for v in isodose_levels_pct))
    plan.params.set("doseEngine", dose_method)
    plan.set_prescription(prescription_Gy)
    if ct is not None:
        plan.set_ct(*ct)
    if segmentation is not None:
        plan.set_segmentation(segmentation)
        if target is not None:
            plan.set_roles(target, organs, forbidden)
    if needles is not None and len(needles):
        plan.set_needles(needles, locked=needles_locked)
    plan.set_seeds(seeds, seed_needle_numbers)
    plan.set_goals(goals)
    plan.plan = plan_object
    if dose is not None:
        plan.use_dose(*dose)
    else:
        plan.compute_dose(dose_geometry, dose_method, progress=progress)
    return plan


def save_plan_scene(path, *, seeds: SeedSet, prescription_Gy, ct=None, segmentation=None, target=None, organs=(),
                    forbidden=(), needles=(), seed_needle_numbers=None, dose=None, dose_geometry=None,
                    dose_method="fast", isodose_levels_pct=DEFAULT_ISODOSE_LEVELS_PCT, goals=None,
                    parameters=None, pictures_dir=None, picture_prefix="plan", plan=None, progress=None) -> dict:
    """Save a whole plan as a Slicer scene bundle (.mrb), optionally with its PNG pictures.

    Arguments as :func:`build_plan_scene`. Returns ``{"mrb": Path, "pictures": {view: Path},
    "timing": {...}}`` (pictures empty without ``pictures_dir``).
    """
    from .scene import create_scene
    ctx = create_scene()
    try:
        plan = build_plan_scene(ctx, seeds=seeds, prescription_Gy=prescription_Gy, ct=ct, segmentation=segmentation,
                                target=target, organs=organs, forbidden=forbidden, needles=needles,
                                seed_needle_numbers=seed_needle_numbers, dose=dose, dose_geometry=dose_geometry,
                                dose_method=dose_method, isodose_levels_pct=isodose_levels_pct, goals=goals,
                                parameters=parameters, plan=plan, progress=_progress.scaled(progress, 0.0, 0.8))
        pictures = {}
        if pictures_dir is not None:
            pictures = plan.write_pictures(pictures_dir, prefix=picture_prefix)
        _progress.report(progress, 0.9, "saving the scene")
        mrb = plan.save(Path(path))
        _progress.report(progress, 1.0, "scene saved")
        return {"mrb": mrb, "pictures": pictures, "timing": dict(plan.last_update)}
    finally:
        ctx.close()
