"""One planning session of the web planner: a plan in an MRML scene, opened, edited, planned and saved.

The session holds a :class:`mrml.plan_scene.PlanScene` in a Slicer-like scene (the one trame-slicer's
views show, or any :class:`mrml.scene.SlicerSceneContext`), so the web page and the Slicer module
share one scene layout: parameter node, CT, segmentation, needles and seeds markups, dose volume,
isodose models, DVH and metrics tables. It has no web code: the trame page (:mod:`web.app`) calls
it, and tests drive it directly.

Safety rules kept here:

- every path comes through :class:`web.paths.ServedFolder` (confined to the served folder);
- opening reads and checks all inputs before the current scene is touched, so a bad upload, a
  plan file of another version or a segmentation that misses the CT leaves the open plan as it was;
- saving never overwrites: a plan folder or bundle that exists is refused;
- long work (inverse planning) runs in a worker thread on numpy data only (:class:`PlanJob`), the
  scene is changed on the caller's thread when the job is applied.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import CancelledError, InputError, SeedPlanError
from ..core.geometry import ImageGeometry
from ..mrml import segmentations, tables, volumes
from ..mrml.parameters import MODULE_NAME, parse_levels
from ..mrml.plan_scene import PlanScene
from ..mrml.scene_io import build_plan_scene
from .paths import ServedFolder, safe_file_name

#: Image and segmentation file endings the Open panel accepts for CT + segmentation.
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
SEGMENTATION_SUFFIXES = (".seg.nrrd", ".nrrd", ".nii", ".nii.gz", ".dcm")


def _suffix(path) -> str:
    name = Path(path).name.lower()
    for s in (".seg.nrrd", ".nii.gz"):
        if name.endswith(s):
            return s
    return Path(name).suffix


def check_overlap(seg, ct_geometry: ImageGeometry, what="segmentation"):
    """InputError when no segment voxel of ``seg`` (a segio.Segmentation) lies inside the CT's extent."""
    occupied = np.any(seg.layers != 0, axis=0)
    if not occupied.any():
        raise InputError(f"{what}: it has no segment voxels (every segment is empty)")
    idx = np.argwhere(occupied)[:, ::-1].astype(float)  # (i, j, k)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ras = seg.geometry.ijk_to_ras(corners)
    ct_lo, ct_hi = ct_geometry.bounds_ras()
    half = 0.5 * np.asarray(ct_geometry.spacing)
    s_lo, s_hi = ras.min(axis=0), ras.max(axis=0)
    if np.any(s_hi < ct_lo - half) or np.any(s_lo > ct_hi + half):
        raise InputError(
            f"{what} does not overlap the CT: its segments span RAS {np.round(s_lo, 1).tolist()} to "
            f"{np.round(s_hi, 1).tolist()} mm, the CT {np.round(ct_lo, 1).tolist()} to {np.round(ct_hi, 1).tolist()} mm "
            "(wrong file, or LPS/RAS mixed up?)")


@dataclass
class CaseInputs:
    """Everything read from disk for one case, checked, before the scene is touched."""

    ct: tuple | None  # (array, ImageGeometry)
    segmentation: object | None  # segio.Segmentation
    plan: object | None = None  # planning.planfile.Plan
    target: str | None = None
    organs: list = field(default_factory=list)
    forbidden: list = field(default_factory=list)
    source_label: str = ""
    ct_path: Path | None = None
    seg_path: Path | None = None
    dose_geometry: ImageGeometry | None = None  # the grid of the plan folder's dose.nrrd


class PlanJob:
    """An inverse plan running in a worker thread: progress, cancel, result or error.

    The thread only sees numpy data (masks, geometry) and the library's planner and dose engine; it
    never touches the MRML scene.
    """

    def __init__(self, fn, label="inverse plan", kind="plan"):
        self.label = label
        self.kind = kind
        self.fraction = 0.0
        self.text = "starting"
        self.result = None
        self.error = None
        self.cancelled = False
        self._cancel = threading.Event()
        self._fn = fn
        self.started = time.monotonic()
        self.finished = None
        self._thread = threading.Thread(target=self._run, name="seedplan-web-plan", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _progress(self, fraction, text=""):
        self.fraction = float(fraction)
        self.text = str(text)
        return not self._cancel.is_set()

    def _run(self):
        try:
            self.result = self._fn(self._progress)
        except CancelledError as exc:
            self.cancelled = True
            self.error = str(exc)
        except SeedPlanError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported in the page, the server keeps running
            self.error = f"{exc.__class__.__name__}: {exc}"
        finally:
            self.finished = time.monotonic()

    def cancel(self):
        """Ask the job to stop at its next progress report."""
        self._cancel.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout=None):
        self._thread.join(timeout)
        return not self._thread.is_alive()


class PlannerSession:
    """The web planner's state: the served folder, the scene context and the plan in it."""

    def __init__(self, ctx, served: ServedFolder, schedule=None, model_dirs=(), default_goal_preset="ct_soft_tissue_I125"):
        self.ctx = ctx
        self.default_goal_preset = default_goal_preset
        self.served = served
        self.schedule = schedule
        self.model_dirs = tuple(model_dirs)
        self.plan_scene: PlanScene | None = None
        self.plan = None  # planning.planfile.Plan when one was opened or planned
        self.source_label = ""
        self.job: PlanJob | None = None
        self.messages = []
        self._upload_dir = Path(tempfile.mkdtemp(prefix="seedplan-web-uploads-"))
        self.implanted_needles = None
        self.needle_matching = None  # planning.needle_match.NeedleMatching of the intra-operative CT
        self.intraop_ct_node = None
        self.intraop_result = None  # planning.intraop.IntraopResult of the last intra-operative chain
        self.case_segmentation = None  # imaging.segio.Segmentation of the open case (None from a .mrb)
        self.case_paths = (None, None)  # CT and segmentation files of the open case (None when from a .mrb)

    # -- reading inputs (no scene change) ----------------------------------------------------------
    def _read_ct(self, path):
        from ..core.imageio import read_image
        if _suffix(path) not in IMAGE_SUFFIXES and not Path(path).is_dir():
            raise InputError(f"{Path(path).name}: not a CT image this planner reads ({', '.join(IMAGE_SUFFIXES)} "
                             "or a DICOM series folder)")
        try:
            array, geometry = read_image(path)
        except SeedPlanError:
            raise
        except Exception as exc:  # noqa: BLE001 - unreadable file: name it
            raise InputError(f"{Path(path).name}: cannot read the CT image ({exc.__class__.__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from exc
        if array.ndim != 3:
            raise InputError(f"{Path(path).name}: the CT must be a 3D image (got {array.ndim} dimensions)")
        return array, geometry

    def _read_segmentation(self, path, ct_geometry=None):
        from ..imaging.segio import read_segmentation
        try:
            seg = read_segmentation(path, reference_geometry=ct_geometry)
        except SeedPlanError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{Path(path).name}: cannot read the segmentation ({exc.__class__.__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from exc
        if not seg.segments:
            raise InputError(f"{Path(path).name}: the segmentation has no segments")
        if ct_geometry is not None:
            check_overlap(seg, ct_geometry, what=f"segmentation {Path(path).name}")
        return seg

    def _plan_file_input(self, folder: Path, key, plan_structures, what):
        """Resolve a path stored in plan.json: as written, else next to the plan folder; confined."""
        text = plan_structures.get(key)
        if not text:
            return None
        raw = Path(text)
        candidates = [raw] if raw.is_absolute() else [folder / raw, folder.parent / raw, self.served.root / raw,
                                                      folder / raw.name, folder.parent / raw.name]
        if raw.is_absolute():
            candidates += [folder / raw.name, folder.parent / raw.name, folder.parent / "case" / raw.name]
        for c in candidates:
            if c.exists():
                return self.served.resolve(str(c), what=f"{what} named in {folder.name}/plan.json")
        raise InputError(f"{folder.name}/plan.json names the {what} '{text}', which is not found (looked next to "
                         "the plan folder and in the served folder)")

    def read_plan_folder(self, folder) -> CaseInputs:
        """Read and check a plan folder written by ``seedplan plan`` / ``demo`` (plan.json + its CT and segmentation)."""
        from ..planning.planfile import read_plan
        folder = Path(folder)
        if folder.is_file() and folder.name == "plan.json":
            folder = folder.parent
        pj = folder / "plan.json"
        if not pj.is_file():
            raise InputError(f"{self.served.relative(folder)}: not a plan folder (no plan.json)")
        plan = read_plan(pj)
        st = plan.structures or {}
        seg_path = self._plan_file_input(folder, "segmentation", st, "segmentation")
        if seg_path is None:
            raise InputError(f"{folder.name}/plan.json names no segmentation: open the CT and segmentation instead")
        ct_path = self._plan_file_input(folder, "image", st, "CT image")
        ct = self._read_ct(ct_path) if ct_path is not None else None
        seg = self._read_segmentation(seg_path, ct[1] if ct else None)
        target = st.get("target")
        organs = [o for o in st.get("oars", []) if o != target]
        forbidden = list(st.get("forbidden", []))
        names = {s.name.lower() for s in seg.segments}
        missing = [n for n in [target] + organs + forbidden if n and n.lower() not in names]
        if missing:
            raise InputError(f"{folder.name}/plan.json names structures the segmentation does not have: "
                             f"{', '.join(missing)} (segments: {', '.join(seg.names())})")
        dose_geometry = None
        if (folder / "dose.nrrd").is_file():
            from ..core.imageio import geometry_of, read_sitk
            dose_geometry = geometry_of(read_sitk(folder / "dose.nrrd"))
        return CaseInputs(ct, seg, plan, target, organs, forbidden, source_label=self.served.relative(folder),
                          ct_path=ct_path, seg_path=seg_path, dose_geometry=dose_geometry)

    def read_case(self, ct_path, seg_path) -> CaseInputs:
        """Read and check a CT + segmentation pair."""
        ct = self._read_ct(ct_path)
        seg = self._read_segmentation(seg_path, ct[1])
        return CaseInputs(ct, seg, None, source_label=f"{Path(ct_path).name} + {Path(seg_path).name}",
                          ct_path=Path(ct_path), seg_path=Path(seg_path))

    # -- opening (the scene changes only after every input was read) -------------------------------
    def _clear_scene(self):
        if self.job is not None and self.job.running:
            raise InputError("an inverse plan is running: cancel it before opening another case")
        if self.plan_scene is not None:
            self.plan_scene.stop_live_updates()
            self.plan_scene = None
        scene = self.ctx.scene
        node = scene.GetSingletonNode("SeedImplantPlanner", "vtkMRMLScriptedModuleNode")
        if node is not None:
            scene.RemoveNode(node)
        scene.Clear(0)
        self.plan = None
        self.implanted_needles = None
        self.needle_matching = None
        self.intraop_ct_node = None
        self.intraop_result = None
        self.case_segmentation = None
        self.case_paths = (None, None)

    def _start_live(self):
        self.plan_scene.model_dirs = self.model_dirs
        self.plan_scene.start_live_updates(self.schedule)

    def open_inputs(self, case: CaseInputs, dose_spacing_mm=2.0):
        """Replace the scene's content with ``case`` (already read and checked); computes the dose if there are seeds."""
        from ..evaluation.goals import load_goals
        self._clear_scene()
        self.case_paths = (case.ct_path, case.seg_path)
        self.case_segmentation = case.segmentation
        plan = case.plan
        if plan is None:
            ps = PlanScene(self.ctx)
            ps.model_dirs = self.model_dirs
            ps.set_ct(*case.ct)
            ps.set_segmentation(case.segmentation)
            if self.default_goal_preset:
                ps.set_goals(load_goals(self.default_goal_preset))
                ps.params.set("goalPreset", self.default_goal_preset)
            self.plan_scene = ps
            self.source_label = case.source_label
            self._start_live()
            return ps
        goals = load_goals(self.default_goal_preset) if self.default_goal_preset else None
        src = plan.source
        params = {"seedModel": plan.model_id, "strengthValue": float(src.get("strength_value", plan.strength_U)),
                  "strengthUnit": str(src.get("strength_unit", "U")), "referenceDate": src.get("reference_date") or "",
                  "implantDate": src.get("implant_date") or "", "doseGridSpacingMm": float(dose_spacing_mm),
                  "goalPreset": self.default_goal_preset or ""}
        used = plan.used_needles() or plan.needles
        self.plan_scene = build_plan_scene(
            self.ctx, seeds=plan.seeds, prescription_Gy=plan.prescription_Gy, ct=case.ct, segmentation=case.segmentation,
            target=case.target, organs=case.organs, forbidden=case.forbidden, needles=used,
            seed_needle_numbers=plan.seed_needle, goals=goals, parameters=params, needles_locked=False,
            dose_geometry=case.dose_geometry or self._default_dose_geometry(case.ct[1] if case.ct else None))
        self.plan = plan
        self.source_label = case.source_label
        self._start_live()
        return self.plan_scene

    def open_path(self, text):
        """Open what ``text`` names in the served folder: a plan folder (or its plan.json) or a .mrb bundle."""
        path = self.served.resolve(text, what="open")
        if path.is_dir() or path.name == "plan.json":
            return self.open_inputs(self.read_plan_folder(path))
        if path.suffix.lower() == ".mrb":
            return self.open_mrb(path)
        raise InputError(f"'{text}': choose a plan folder (with plan.json) or a .mrb scene bundle; a CT and a "
                         "segmentation are opened together under 'CT + segmentation'")

    def open_case(self, ct_text, seg_text):
        """Open a CT and a segmentation given as paths in the served folder."""
        ct = self.served.resolve(ct_text, what="CT image")
        seg = self.served.resolve(seg_text, what="segmentation")
        return self.open_inputs(self.read_case(ct, seg))

    def check_mrb(self, path):
        """Load ``path`` into a scratch scene to check it is a readable bundle holding a plan; returns its summary."""
        from ..mrml.scene import SlicerSceneContext
        scratch = SlicerSceneContext.create()
        try:
            try:
                scratch.load_mrb(path)
            except SeedPlanError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"{Path(path).name}: not a readable scene bundle ({exc})") from exc
            node = scratch.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
            if node is None:
                raise InputError(f"{Path(path).name}: the scene holds no SeedImplantPlanner plan "
                                 "(no parameter node of the module)")
            ps = PlanScene(scratch, node)
            if ps.params.get_node("ctVolume") is None and ps.params.get_node("seedsNode") is None:
                raise InputError(f"{Path(path).name}: the plan in this scene has neither a CT nor seeds")
            return {"seeds": len(ps.seeds()[0]), "needles": len(ps.params.get_node_list("needleNodes"))}
        finally:
            scratch.close()

    def open_mrb(self, path):
        """Open a scene bundle saved by this planner, the command line or the Slicer module."""
        from ..evaluation.goals import load_goals
        path = Path(path)
        if not zipfile_ok(path):
            raise InputError(f"{path.name}: not a scene bundle (a .mrb is a zip archive)")
        self.check_mrb(path)
        self._clear_scene()
        self.ctx.load_mrb(path, clear=False)
        node = self.ctx.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        ps = PlanScene(self.ctx, node)
        ps.model_dirs = self.model_dirs
        preset = ps.params.get("goalPreset") or self.default_goal_preset  # bundles from the command line name none
        if preset:
            ps.set_goals(load_goals(preset))
            ps.params.set("goalPreset", preset)
        self.plan_scene = ps
        self.source_label = self.served.relative(path) if self.served.root in path.resolve().parents else path.name
        seeds, _ = ps.seeds()
        if len(seeds):
            dose_node = ps.params.get_node("doseVolume")
            geometry = volumes.geometry_from_volume(dose_node) if dose_node is not None else None
            ps.compute_dose(geometry)
        self._start_live()
        return ps

    # -- uploads -----------------------------------------------------------------------------------
    def store_upload(self, name, content: bytes) -> Path:
        """Write an uploaded file into this session's private upload folder (never into the served folder)."""
        if not isinstance(content, (bytes, bytearray)) or not content:
            raise InputError(f"upload '{name}': the file is empty")
        target = self._upload_dir / f"{time.monotonic_ns()}" / safe_file_name(name)
        target.parent.mkdir(parents=True)
        target.write_bytes(bytes(content))
        return target

    def open_uploads(self, files):
        """Open uploaded files: one .mrb, or a CT and a segmentation (``files``: [(name, bytes)])."""
        paths = [self.store_upload(n, c) for n, c in files]
        try:
            return self._open_uploaded(paths)
        except SeedPlanError as exc:
            text = str(exc)
            for p in paths:  # name the uploaded file, not this session's private copy of it
                text = text.replace(str(p), p.name).replace(str(p.parent), "upload")
            raise type(exc)(text) from exc

    def _open_uploaded(self, paths):
        if len(paths) == 1 and paths[0].suffix.lower() == ".mrb":
            return self.open_mrb(paths[0])
        if len(paths) == 2:
            segs = [p for p in paths if p.name.lower().endswith(".seg.nrrd") or p.suffix.lower() == ".dcm"]
            if len(segs) != 1:
                raise InputError("upload a CT and a segmentation (the segmentation as .seg.nrrd or an RT Structure "
                                 "Set .dcm), or one .mrb")
            ct = [p for p in paths if p is not segs[0]][0]
            return self.open_inputs(self.read_case(ct, segs[0]))
        raise InputError(f"upload one .mrb, or a CT and a segmentation together (got {len(paths)} files)")

    # -- panels: inputs, source, prescription, dose ---------------------------------------------------
    def require_plan(self) -> PlanScene:
        if self.plan_scene is None:
            raise InputError("open a plan, a scene bundle or a CT + segmentation first")
        return self.plan_scene

    def segment_names(self):
        ps = self.plan_scene
        seg = ps.params.get_node("segmentation") if ps else None
        if seg is None:
            return []
        s = seg.GetSegmentation()
        return [s.GetSegment(i).GetName() for i in segmentations.segment_ids(seg)]

    def roles(self):
        """(target name, organ names, forbidden names) of the plan."""
        ps = self.plan_scene
        if ps is None or ps.params.get_node("segmentation") is None:
            return "", [], []
        seg = ps.params.get_node("segmentation").GetSegmentation()

        def name(sid):
            s = seg.GetSegment(sid)
            return s.GetName() if s is not None else sid
        t = ps.params.get("targetSegmentId")
        return (name(t) if t else "", [name(i) for i in ps.params.get_string_list("organSegmentIds")],
                [name(i) for i in ps.params.get_string_list("forbiddenSegmentIds")])

    def set_roles(self, target, organs=(), forbidden=()):
        ps = self.require_plan()
        if not target:
            raise InputError("choose the target segment")
        organs = [o for o in organs if o != target]
        ps.set_roles(target, organs, [f for f in forbidden if f != target])
        self._refresh_if_dose()

    def set_prescription(self, prescription_Gy):
        ps = self.require_plan()
        try:
            rx = float(prescription_Gy)
        except (TypeError, ValueError):
            raise InputError(f"prescription: not a number: {prescription_Gy!r}") from None
        ps.set_prescription(rx)
        self._refresh_if_dose()

    def set_source(self, model, value, unit, reference_date="", implant_date=""):
        """Seed model and strength (U or mCi) with optional dates; checked by converting to U."""
        from ..physics.sources import get_model
        from ..physics.strength import strength_at
        ps = self.require_plan()
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"seed strength: not a number: {value!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise InputError(f"seed strength must be positive, got {value!r}")
        m = get_model(model, self.model_dirs)
        strength_at(m, v, unit, reference_date or None, implant_date or None)  # raises on a bad unit or date
        for k, val in (("seedModel", model), ("strengthValue", v), ("strengthUnit", unit),
                       ("referenceDate", reference_date or ""), ("implantDate", implant_date or "")):
            ps.params.set(k, val)

    def set_goal_preset(self, preset):
        from ..evaluation.goals import load_goals
        ps = self.require_plan()
        ps.set_goals(load_goals(preset) if preset else None)
        ps.params.set("goalPreset", preset or "")
        self._refresh_if_dose()

    def set_isodose_levels(self, text):
        """Isodose levels in % of the prescription ("50, 100, 150"); redraws the isodose lines."""
        ps = self.require_plan()
        levels = parse_levels(text)
        if not levels:
            raise InputError("isodose levels: give at least one level in % of the prescription")
        ps.params.set("isodoseLevelsPercent", ", ".join(f"{v:g}" for v in levels))
        if self.has_dose():
            ps.refresh_outputs(evaluation=False)
        return levels

    def has_dose(self) -> bool:
        ps = self.plan_scene
        return ps is not None and (ps.dose_grid is not None or ps.params.get_node("doseVolume") is not None)

    def _refresh_if_dose(self):
        ps = self.plan_scene
        if ps is not None and ps.dose_grid is not None:
            ps.refresh_outputs()

    #: CTs up to this many voxels get the dose on their own grid (every organ's DVH whole, fast live
    #: evaluation); larger ones get a box around the target (doseMarginMm) at doseGridSpacingMm.
    WHOLE_CT_DOSE_MAX_VOXELS = 4_000_000

    def _default_dose_geometry(self, ct_geometry=None):
        """The dose grid: the CT's own grid when it is small enough, else the plan scene's target box."""
        if ct_geometry is None and self.plan_scene is not None:
            ct = self.plan_scene.params.get_node("ctVolume")
            ct_geometry = volumes.geometry_from_volume(ct) if ct is not None else None
        if ct_geometry is not None and int(np.prod(ct_geometry.size)) <= self.WHOLE_CT_DOSE_MAX_VOXELS:
            return ct_geometry
        return None  # PlanScene.dose_geometry(): target box + margin

    def compute_dose(self, spacing_mm=None):
        """Compute the dose: on the CT grid (small CTs) or, with ``spacing_mm`` or a large CT, a target box."""
        ps = self.require_plan()
        geometry = None
        if spacing_mm:
            ps.params.set("doseGridSpacingMm", float(spacing_mm))
        else:
            geometry = self._default_dose_geometry()
        ps.compute_dose(geometry)
        self._start_live()

    def load_seeds_uniformly(self, spacing_mm=None):
        ps = self.require_plan()
        ps.load_seeds_uniformly(spacing_mm)
        self._start_live()

    # -- seeds and needles ---------------------------------------------------------------------------
    def seed_rows(self):
        """Rows for the seeds table: index, needle, position (RAS mm), strength (U), model."""
        ps = self.plan_scene
        if ps is None:
            return []
        seeds, numbers = ps.seeds()
        return [{"index": i + 1, "needle": int(numbers[i]) if len(numbers) else 0,
                 "r": round(float(p[0]), 1), "a": round(float(p[1]), 1), "s": round(float(p[2]), 1),
                 "sk_U": round(float(seeds.strengths_U[i]), 4), "model": seeds.models[i]}
                for i, p in enumerate(seeds.positions)]

    def move_seed(self, index, position=None, delta=None):
        """Move seed ``index`` (0-based) to ``position`` or by ``delta`` (RAS mm), as a drag in a view does."""
        ps = self.require_plan()
        node = ps.params.get_node("seedsNode")
        if node is None or not 0 <= int(index) < node.GetNumberOfControlPoints():
            n = 0 if node is None else node.GetNumberOfControlPoints()
            raise InputError(f"no seed number {int(index) + 1} (the plan has {n} seeds)")
        p = np.array(node.GetNthControlPointPosition(int(index)), float)
        new = np.asarray(position if position is not None else p + np.asarray(delta, float), float).reshape(3)
        if not np.all(np.isfinite(new)):
            raise InputError(f"seed position is not finite: {new.tolist()}")
        node.SetNthControlPointPosition(int(index), *new)
        return new

    #: A free-hand needle shorter than this (entry to tip, mm) is refused: two clicks on one spot.
    MIN_NEEDLE_MM = 5.0

    def add_needle(self, entry, tip):
        """A free-hand needle from ``entry`` to ``tip`` (RAS mm) as a new needle node; returns its number."""
        from ..mrml.markups import NEEDLE_NUMBER_ATTRIBUTE
        ps = self.require_plan()
        entry, tip = np.asarray(entry, float).reshape(3), np.asarray(tip, float).reshape(3)
        if not (np.all(np.isfinite(entry)) and np.all(np.isfinite(tip))):
            raise InputError("needle end points are not finite")
        length = float(np.linalg.norm(tip - entry))
        if length < self.MIN_NEEDLE_MM:
            raise InputError(f"needle entry and tip are {length:.1f} mm apart: click the entry, then a tip at least "
                             f"{self.MIN_NEEDLE_MM:g} mm away")
        ps.stop_live_updates()
        node = ps.add_needle_node()
        node.AddControlPoint(entry.tolist(), "entry")
        node.AddControlPoint(tip.tolist(), "tip")
        self._start_live()
        return int(node.GetAttribute(NEEDLE_NUMBER_ATTRIBUTE))

    def needle_rows(self):
        """Needle table rows (number, entry, tip, depth, angle) from the needle nodes."""
        from ..planning.needles import needle_table
        ps = self.plan_scene
        if ps is None:
            return []
        try:
            return needle_table(ps.needles(skip_incomplete=True))
        except SeedPlanError:
            return []

    def loading_rows(self):
        """Needle loading table (seeds and spacers from the tip) of the current seeds."""
        plan = self.current_plan()
        return plan.loading_rows() if plan is not None else []

    # -- outputs ---------------------------------------------------------------------------------------
    def dvh(self):
        """{'dose_Gy': [...], 'curves': {name: [...]}, 'colors': {name: (r,g,b)}} from the DVH table node."""
        ps = self.plan_scene
        node = ps.params.get_node("dvhTable") if ps else None
        if node is None:
            return {"dose_Gy": [], "curves": {}, "colors": {}}
        cols = tables.table_columns(node)
        dose = [float(v) for v in cols.pop("Dose (Gy)", [])]
        curves = {k[:-len(" V (%)")]: [float(v) for v in vals] for k, vals in cols.items() if k.endswith(" V (%)")}
        colors = {}
        chart = ps.params.get_node("dvhChart")
        if chart is not None:
            for i in range(chart.GetNumberOfPlotSeriesNodes()):
                s = chart.GetNthPlotSeriesNode(i)
                colors[s.GetYColumnName()[:-len(" V (%)")]] = tuple(s.GetColor())
        return {"dose_Gy": dose, "curves": curves, "colors": colors}

    def metric_rows(self):
        """Rows of the metrics table node (Structure, Metric, Value, Unit, Goal, Pass)."""
        ps = self.plan_scene
        node = ps.params.get_node("metricsTable") if ps else None
        if node is None:
            return []
        cols = tables.table_columns(node)
        n = len(cols.get("Metric", []))
        return [{c: str(cols[c][i]) for c in tables.METRIC_COLUMNS} for i in range(n)]

    def summary(self):
        """Short facts for the page header: source, seeds, activity, prescription, goals failed."""
        ps = self.plan_scene
        if ps is None:
            return {}
        s = ps.seed_summary() if ps.params.get_node("seedsNode") is not None else {"count": 0, "total_U": 0.0}
        return {"source": self.source_label, "seeds": s["count"], "total_U": round(s["total_U"], 3),
                "total_mCi": None if s.get("total_mCi") is None else round(s["total_mCi"], 3),
                "prescription_Gy": ps.params.get("prescriptionDoseGy"),
                "failed_goals": ps.last_update.get("failed_goals"), "needles": len(ps.params.get_node_list("needleNodes"))}

    def report_html(self) -> bytes:
        """The plan report (HTML, pictures inlined) of the current dose and evaluation."""
        ps = self.require_plan()
        if not self.has_dose():
            raise InputError("compute the dose before writing a report")
        with tempfile.TemporaryDirectory(prefix="seedplan-web-report-") as tmp:
            path = Path(tmp) / "report.html"
            ps.write_report(path)
            return path.read_bytes()

    # -- the plan object behind the scene ---------------------------------------------------------------
    def current_plan(self):
        """The plan (planning.planfile.Plan) with the seeds as they are in the scene now (None without a plan)."""
        if self.plan is None or self.plan_scene is None:
            return None
        seeds, numbers = self.plan_scene.seeds()
        plan = copy.copy(self.plan)
        plan.dose_grid = None
        plan.evaluation = None
        numbers = np.asarray(numbers, int) if len(numbers) else np.zeros(len(seeds), int)
        known = {n.number for n in plan.needles}
        numbers = np.array([n if n in known else 0 for n in numbers], int)
        s_tip = np.full(len(seeds), np.nan)
        for i in range(len(seeds)):
            if numbers[i] > 0:
                needle = plan.needle_by_number(numbers[i])
                pts, depth = needle.sample_path(0.25)
                k = int(np.argmin(np.linalg.norm(pts - seeds.positions[i], axis=1)))
                s_tip[i] = needle.depth_mm - depth[k]
        fixed = np.zeros(len(seeds), bool)
        if len(self.plan.seed_fixed) == len(seeds):
            fixed = self.plan.seed_fixed.copy()
        plan.seeds, plan.seed_needle, plan.seed_s_from_tip_mm, plan.seed_fixed = seeds, numbers, s_tip, fixed
        plan.__post_init__()
        rx = self.plan_scene.params.get("prescriptionDoseGy")
        plan.prescription_Gy = float(rx)
        return plan

    # -- inverse planning off the event loop --------------------------------------------------------------
    def start_plan(self, needle_mode="template", direction="P", template_spacing_mm=10.0, time_limit_s=8.0,
                   method="anneal", implanted=False):
        """Start the inverse plan in a worker thread; returns the :class:`PlanJob` (apply it with :meth:`apply_job`)."""
        from ..planning.pipeline import plan_from_masks, parse_direction
        if needle_mode not in ("template", "fan", "freehand"):
            raise InputError(f"needle mode {needle_mode!r}: choose template, fan or freehand")
        from ..physics.dose import DoseGrid
        from ..mrml.planning_actions import optimizer_goals
        ps = self.require_plan()
        if self.job is not None and self.job.running:
            raise InputError("an inverse plan is already running")
        target = ps.params.get("targetSegmentId")
        if not target:
            raise InputError("choose the target segment (Inputs panel) before planning")
        organs = ps.params.get_string_list("organSegmentIds")
        forbidden = ps.params.get_string_list("forbiddenSegmentIds")
        geometry = ps.reference_geometry()
        body_id = self._body_segment_id()
        extra = [body_id] if body_id and body_id not in [target] + organs + forbidden else []
        masks = ps.masks_on(geometry, [target] + organs + forbidden + extra)  # numpy copies: the thread never sees MRML
        seg = ps.params.get_node("segmentation").GetSegmentation()
        names = [seg.GetSegment(i).GetName() for i in [target] + organs + forbidden]
        body_name = seg.GetSegment(body_id).GetName() if body_id else None
        target_name, organ_names, forbidden_names = names[0], names[1:1 + len(organs)], names[1 + len(organs):]
        rx = float(ps.params.get("prescriptionDoseGy"))
        goals, oars = None, organ_names
        if ps.goals is not None:
            goals, oars = optimizer_goals(ps.goals, rx, target_name, organ_names)
        needles = None
        if needle_mode == "freehand":
            needles = ps.needles(skip_incomplete=True)
            if not needles:
                raise InputError("free-hand planning needs needles: place needle lines first")
        implanted_needles = self.implanted_needles if implanted else None
        if implanted and not implanted_needles:
            raise InputError("load the implanted needles (Intra-op panel) before re-planning with them")
        fixed = None
        if implanted and self.plan is not None and self.plan.seed_fixed.any():
            fixed = self.plan.seeds.subset(self.plan.seed_fixed)
        kwargs = dict(oars=oars, forbidden=forbidden_names, body=body_name, model_id=ps.params.get("seedModel"),
                      strength=ps.params.get("strengthValue"), strength_unit=ps.params.get("strengthUnit"),
                      reference_date=ps.params.get("referenceDate") or None,
                      implant_date=ps.params.get("implantDate") or None, prescription_Gy=rx, goals=goals,
                      needle_mode=needle_mode, direction=parse_direction(direction),
                      # the page's direction is the way the needles travel, for a fan too: it enters from the other side
                      approach=-parse_direction(direction) if needle_mode == "fan" else None,
                      template_spacing_mm=float(template_spacing_mm), needles=needles, method=method,
                      time_limit_s=float(time_limit_s), fixed_seeds=fixed, implanted_needles=implanted_needles,
                      allow_new_needles=True)
        dose_geometry = self._default_dose_geometry() or ps.dose_geometry()
        engine = ps.params.get("doseEngine")
        model_dirs = self.model_dirs

        def work(progress):
            from ..core import progress as _p
            plan = plan_from_masks(geometry, masks, target_name, progress=_p.scaled(progress, 0.0, 0.85), **kwargs)
            plan.structures.setdefault("target", target_name)
            grid = DoseGrid(dose_geometry, plan.seeds, method=engine, model_dirs=model_dirs,
                            progress=_p.scaled(progress, 0.85, 1.0))
            _p.report(progress, 1.0, "done")
            return plan, grid

        self.job = PlanJob(work).start()
        return self.job

    #: Segment names taken as the body outline (needle entries on the skin) when the plan names none.
    BODY_NAMES = ("body", "external", "skin", "body outline")

    def _body_segment_id(self):
        """The body outline segment: the one the opened plan names, else one called Body/External/Skin."""
        seg_node = self.plan_scene.params.get_node("segmentation")
        if seg_node is None:
            return None
        wanted = [str(self.plan.structures.get("body")).lower()] if self.plan is not None and \
            self.plan.structures.get("body") else []
        wanted += list(self.BODY_NAMES)
        seg = seg_node.GetSegmentation()
        by_name = {seg.GetSegment(i).GetName().lower(): i for i in segmentations.segment_ids(seg_node)}
        for name in wanted:
            if name in by_name:
                return by_name[name]
        return None

    def apply_job(self):
        """Put a finished job's plan into the scene (on the caller's thread); returns a message for the page."""
        job = self.job
        if job is None or job.running:
            return None
        self.job = None
        if job.cancelled:
            return f"{job.label} cancelled: the plan is unchanged"
        if job.error:
            raise InputError(f"{job.label} failed: {job.error}")
        if job.kind == "needles":
            return self._apply_found_needles(*job.result)
        if job.kind == "intraop":
            return self._apply_intraop(*job.result)
        plan, grid = job.result
        ps = self.require_plan()
        ps.stop_live_updates()
        used = {int(n) for n in plan.seed_needle if n > 0}
        ps.plan = plan
        ps.set_needles([n for n in plan.needles if n.number in used] or plan.needles, locked=False)
        ps.set_seeds(plan.seeds, plan.seed_needle)
        ps.dose_grid = grid
        ps.refresh_outputs()
        self.plan = plan
        self._start_live()
        unmet = plan.optimizer.get("unmet") or []
        return (f"plan ready: {len(plan.seeds)} seeds on {len(used)} needles in {job.finished - job.started:.1f} s"
                + (f"; goals not met: {', '.join(map(str, unmet))}" if unmet else ""))

    # -- intra-operative: implanted needles vs plan ---------------------------------------------------------
    def load_implanted_needles(self, text_or_path):
        """Read the needles found on the intra-operative CT (needles CSV, as ``seedplan plan --implanted-needles``)."""
        from ..planning.needles import read_needles
        path = self.served.resolve(text_or_path, what="implanted needles") if not isinstance(text_or_path, Path) \
            else text_or_path
        needles = read_needles(path)
        if not needles:
            raise InputError(f"{path.name}: no needles in the file")
        self.implanted_needles = needles
        self.needle_matching = None
        self.intraop_result = None
        self._show_implanted(needles)
        return needles

    IMPLANTED_ROLE = "ImplantedNeedle"

    def _show_implanted(self, needles):
        """Implanted needles as locked orange line nodes (role ImplantedNeedle), beside the planned ones."""
        from ..mrml.markups import needle_line_node
        from ..mrml.nodes import ROLE_ATTRIBUTE
        scene = self.ctx.scene
        old = [scene.GetNthNodeByClass(i, "vtkMRMLMarkupsLineNode")
               for i in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsLineNode"))]
        for node in old:
            if node is not None and node.GetAttribute(ROLE_ATTRIBUTE) == self.IMPLANTED_ROLE:
                scene.RemoveNode(node)
        for k, n in enumerate(needles, start=1):
            node = needle_line_node(scene, n.entry, n.tip, k, locked=True, color=(1.0, 0.55, 0.0))
            node.SetName(f"Implanted needle {k}")
            node.SetAttribute(ROLE_ATTRIBUTE, self.IMPLANTED_ROLE)
            node.GetDisplayNode().SetSliceProjection(True)
            node.GetDisplayNode().SetSliceProjectionOpacity(0.8)

    def start_find_needles(self, ct_text):
        """Find the needles on an intra-operative CT (worker thread) and match them to the plan's needles.

        Uses :func:`imaging.needlefinder.find_needles` with the planned directions as hints and
        :func:`planning.needle_match.match_needles`; apply the result with :meth:`apply_job`.
        """
        from ..imaging.needlefinder import find_needles
        from ..planning.needle_match import match_needles
        ps = self.require_plan()
        if self.job is not None and self.job.running:
            raise InputError("a computation is running: wait for it or cancel it")
        path = self.served.resolve(ct_text, what="intra-operative CT")
        ct, geometry = self._read_ct(path)
        planned = ps.needles(skip_incomplete=True)
        directions = [n.direction for n in planned] or None

        def work(progress):
            found = find_needles(ct, geometry, expected_directions=directions, progress=progress)
            if not found:
                reasons = sorted({r["reason"].split(" (")[0] for r in found.rejected})
                raise InputError(f"{path.name}: no needle found ({'; '.join(reasons) or 'no candidate'})")
            return path.name, ct, geometry, match_needles(found, planned)

        self.job = PlanJob(work, label="needle finder", kind="needles").start()
        return self.job

    def start_intraop(self, ct_text, time_limit_s=4.0, allow_new_needles=False):
        """The intra-operative chain of :mod:`planning.intraop` (worker thread) on a CT in the served folder.

        Needles: those read from a needles CSV on this page if any, else found on the CT
        (:func:`planning.intraop.find_needles_in_place`); then :func:`planning.intraop.run_intraop`
        (seeds already implanted found on the CT, re-plan of the remaining seeds on the needles in
        place, options tried, advice). Needs a plan opened from a plan folder or planned here.
        """
        from ..core import progress as _p
        from ..physics.dose import DoseGrid
        from ..planning.intraop import check_frames, find_needles_in_place, run_intraop
        ps = self.require_plan()
        if self.plan is None or self.case_segmentation is None:
            raise InputError("the intra-operative chain needs the plan file and its segmentation: open a plan folder "
                             "(or plan here from a CT + segmentation)")
        if self.job is not None and self.job.running:
            raise InputError("a computation is running: wait for it or cancel it")
        path = self.served.resolve(ct_text, what="intra-operative CT")
        ct, geometry = self._read_ct(path)
        plan = self.current_plan()
        check_frames(geometry, plan)
        seg = self.case_segmentation
        given = list(self.implanted_needles) if self.implanted_needles and self.needle_matching is None else None
        engine = ps.params.get("doseEngine")
        model_dirs = self.model_dirs

        def work(progress):
            needles = given
            if needles is None:
                needles, _, found = find_needles_in_place(ct, geometry, plan, seg, progress=_p.scaled(progress, 0.0, 0.3))
                if not needles:
                    raise InputError(f"{path.name}: no needle of the plan found on the CT ({len(found)} found, "
                                     f"{len(found.rejected)} object(s) rejected): read a needles CSV instead")
            result = run_intraop(ct, geometry, plan, seg, needles, allow_new_needles=allow_new_needles,
                                 time_limit_s=float(time_limit_s), progress=_p.scaled(progress, 0.3, 0.9))
            grid = DoseGrid(result.dose_geometry, result.plan.seeds, method=engine, model_dirs=model_dirs,
                            progress=_p.scaled(progress, 0.9, 1.0))
            return path.name, ct, geometry, result, grid

        self.job = PlanJob(work, label="intra-operative chain", kind="intraop").start()
        return self.job

    def _apply_intraop(self, name, ct, geometry, result, grid):
        """Show the intra-operative CT, the needles in place, the re-plan (its dose live) and the deviations."""
        ps = self.require_plan()
        ps.stop_live_updates()
        if self.intraop_ct_node is not None and self.ctx.scene.IsNodePresent(self.intraop_ct_node):
            self.ctx.scene.RemoveNode(self.intraop_ct_node)
        self.intraop_ct_node = volumes.add_scalar_volume(self.ctx.scene, ct, geometry, f"Intra-op CT {name}")
        volumes.set_ct_display(self.intraop_ct_node)
        new = result.plan
        used = {int(n) for n in new.seed_needle if n > 0}
        ps.plan = new
        ps.set_needles([n for n in new.needles if n.number in used] or new.needles, locked=False)
        ps.set_seeds(new.seeds, new.seed_needle)
        ps.dose_grid = grid
        ps.refresh_outputs()
        self.plan = new
        self.intraop_result = result
        self.needle_matching = None
        self.implanted_needles = list(result.needles_in_place)
        self._show_implanted(self.implanted_needles)
        self._start_live()
        return f"{name}: {result.deviation_line()}; {len(result.found_seeds)} seeds already implanted; {result.advice}"

    def _apply_found_needles(self, name, ct, geometry, matching):
        """Show the intra-operative CT and the found needles; keep the matching for the table and re-plans."""
        if self.intraop_ct_node is not None and self.ctx.scene.IsNodePresent(self.intraop_ct_node):
            self.ctx.scene.RemoveNode(self.intraop_ct_node)
        self.intraop_ct_node = volumes.add_scalar_volume(self.ctx.scene, ct, geometry, f"Intra-op CT {name}")
        volumes.set_ct_display(self.intraop_ct_node)
        self.needle_matching = matching
        self.intraop_result = None
        self.implanted_needles = matching.needles()
        self._show_implanted(self.implanted_needles)
        return f"{name}: {matching.summary_line()}"

    def needle_deviations(self):
        """Deviation rows: from the needle finder's matching when an intra-operative CT was read, else
        from the implanted needles file (:meth:`file_needle_deviations`)."""
        if self.intraop_result is not None and self.needle_matching is None:
            rows = []
            for r in self.intraop_result.needle_rows:
                def val(k):
                    v = r.get(k)
                    return None if v is None or v == "" else round(float(v), 1)
                rows.append({"implanted": r.get("name"), "needle": r.get("number") if r.get("status") == "in place"
                             else None, "entry_mm": val("entry_mm"), "tip_mm": val("tip_mm"),
                             "angle_deg": val("angle_deg"), "note": str(r.get("status", ""))})
            return rows
        if self.needle_matching is not None:
            rows = []
            for r in self.needle_matching.rows():
                def num(k):
                    return round(float(r[k]), 1) if r.get(k) not in ("", None) else None
                rows.append({"implanted": r["name"], "needle": r["number"] if r["status"] == "matched" else None,
                             "entry_mm": num("entry_mm"), "tip_mm": num("tip_mm"), "angle_deg": num("angle_deg"),
                             "note": r["status"] + (f", depth {num('depth_mm'):+.1f} mm" if num("depth_mm") is not None
                                                    else "")})
            return rows
        return self.file_needle_deviations()

    def file_needle_deviations(self):
        """Implanted vs planned needles: each implanted needle paired with the planned one nearest to it.

        Pairs minimise the summed entry + tip distances (Hungarian assignment), so the order and
        numbering of the implanted needles file do not matter. Per pair: entry and tip distance (mm)
        and the angle between the needles (deg). An implanted needle more than 30 mm (mean of entry
        and tip distance) from every planned needle is reported unpaired.
        """
        from scipy.optimize import linear_sum_assignment
        ps = self.plan_scene
        planned = ps.needles(skip_incomplete=True) if ps is not None else []
        implanted = list(self.implanted_needles or [])
        if not implanted:
            return []
        rows = []
        pairs = {}
        if planned:
            cost = np.array([[0.5 * (np.linalg.norm(np.asarray(a.entry) - np.asarray(b.entry))
                                     + np.linalg.norm(np.asarray(a.tip) - np.asarray(b.tip))) for b in planned]
                             for a in implanted])
            for r, c in zip(*linear_sum_assignment(cost)):
                if cost[r, c] <= 30.0:
                    pairs[r] = c
        for k, n in enumerate(implanted):
            if k not in pairs:
                rows.append({"implanted": k + 1, "needle": None, "entry_mm": None, "tip_mm": None, "angle_deg": None,
                             "note": "no planned needle within 30 mm"})
                continue
            p = planned[pairs[k]]
            c = float(np.clip(np.dot(n.direction, p.direction), -1.0, 1.0))
            rows.append({"implanted": k + 1, "needle": int(p.number),
                         "entry_mm": round(float(np.linalg.norm(np.asarray(n.entry) - np.asarray(p.entry))), 1),
                         "tip_mm": round(float(np.linalg.norm(np.asarray(n.tip) - np.asarray(p.tip))), 1),
                         "angle_deg": round(math.degrees(math.acos(c)), 1), "note": ""})
        return rows

    # -- saving (never overwrites) ----------------------------------------------------------------------------
    def _new_output(self, name, what, suffix=None):
        path = self.served.resolve(name, must_exist=False, for_writing=True, what=what)
        if suffix and not path.name.lower().endswith(suffix):
            raise InputError(f"{what} '{name}': the name must end in {suffix}")
        if path.exists():
            raise InputError(f"{what} '{self.served.relative(path)}' exists already: choose a new name "
                             "(nothing was overwritten)")
        return path

    def save_mrb(self, name):
        """Save the whole scene to a new .mrb in the served folder; returns its path."""
        ps = self.require_plan()
        path = self._new_output(name, "scene bundle", ".mrb")
        return ps.save(path)

    def save_plan_folder(self, name):
        """Write a new plan folder (plan.json, tables, dose.nrrd, metrics) in the served folder; returns its path."""
        from ..planning.planfile import write_plan_folder
        ps = self.require_plan()
        plan = self.current_plan()
        if plan is None:
            raise InputError("no plan to save as a plan folder (open a plan folder or run the inverse plan); "
                             "save the scene as .mrb instead")
        path = self._new_output(name, "plan folder")
        dose, geometry = ps.dose_array() if self.has_dose() else (None, None)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        try:
            plan.structures = dict(plan.structures)
            plan.structures.update(self._case_files_for(staging))
            write_plan_folder(staging, plan, dose, geometry)
            staging.replace(path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return path

    def _case_files_for(self, folder: Path) -> dict:
        """plan.json's image and segmentation entries: the open case's files when they lie in the served
        folder, else copies written from the scene into ``folder`` (uploads and bundles are not kept)."""
        from ..core.imageio import write_image
        from ..imaging.segio import Segmentation, write_segmentation
        ps = self.plan_scene
        out = {}
        ct_path, seg_path = self.case_paths
        inside = [p is not None and self.served.root in Path(p).resolve().parents for p in (ct_path, seg_path)]
        ct_node = ps.params.get_node("ctVolume")
        if inside[0]:
            out["image"] = str(Path(ct_path).resolve())
        elif ct_node is not None:
            write_image(folder / "ct.nrrd", volumes.volume_array(ct_node), volumes.geometry_from_volume(ct_node))
            out["image"] = "ct.nrrd"
        seg_node = ps.params.get_node("segmentation")
        if inside[1]:
            out["segmentation"] = str(Path(seg_path).resolve())
        elif seg_node is not None:
            ids = segmentations.segment_ids(seg_node)
            structs = [segmentations.segment_structure(seg_node, i) for i in ids]
            geometry = volumes.geometry_from_volume(ct_node) if ct_node is not None else structs[0].geometry
            from ..evaluation.structures import mask_on_grid
            masks = {st.name: mask_on_grid(st, geometry) for st in structs}
            colors = {st.name: tuple(st.color) for st in structs}
            write_segmentation(folder / "segmentation.seg.nrrd", Segmentation.from_masks(geometry, masks, colors))
            out["segmentation"] = "segmentation.seg.nrrd"
        return out

    def close(self):
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.job.wait(10)
        if self.plan_scene is not None:
            self.plan_scene.stop_live_updates()
        shutil.rmtree(self._upload_dir, ignore_errors=True)


def zipfile_ok(path) -> bool:
    """True when ``path`` is a readable zip archive (what a .mrb is)."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def json_safe(value):
    """``value`` with numpy scalars and non-finite floats made JSON-safe (for the page's state)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)),
                      parse_constant=lambda c: None)
