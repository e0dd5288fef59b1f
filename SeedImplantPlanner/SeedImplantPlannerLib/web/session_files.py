"""The web planner's case files: reading and checking inputs before the scene changes; saving without overwriting.

Part of :class:`web.session.PlannerSession` (a mixin: the methods use the session's ``served``
folder, ``plan_scene``, ``plan`` and ``case_paths``). Every path comes through
:class:`web.paths.ServedFolder`; reading raises :class:`core.errors.InputError` naming the file;
saving refuses a plan folder or bundle that exists and writes a folder through a staging folder.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputError, SeedPlanError
from ..core.geometry import ImageGeometry
from ..mrml import segmentations, volumes

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


class SessionFiles:
    """Reading a case (plan folder, CT + segmentation) and saving a plan folder or a bundle."""

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
        planned = [(str(t["name"]), float(t["prescription_Gy"])) for t in plan.targets]
        shown = [(t["name"], float(t["prescription_Gy"])) for t in ps.targets()]
        if (len(planned) > 1 or len(shown) > 1) and [(n.lower(), rx) for n, rx in planned] != \
                [(n.lower(), rx) for n, rx in shown]:
            def say(rows):
                return ", ".join(f"{n} {rx:g} Gy" for n, rx in rows) or "one target"
            raise InputError(f"the targets were changed after the plan was made (planned: {say(planned)}; now: "
                             f"{say(shown)}): run the inverse plan again, or save the scene as .mrb")
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
        ct_node = ps.ct_node()
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


def zipfile_ok(path) -> bool:
    """True when ``path`` is a readable zip archive (what a .mrb is)."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False
