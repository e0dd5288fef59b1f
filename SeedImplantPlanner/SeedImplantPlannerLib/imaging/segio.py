"""Segmentations: named binary segments on one grid; Slicer ``.seg.nrrd`` and labelmap file I/O.

A :class:`Segmentation` stores segments as label values in one or more layers (overlapping
segments go to separate layers), exactly as 3D Slicer's ``.seg.nrrd`` files do. Readers:
- ``.seg.nrrd`` written by Slicer or by this module (``SegmentN_*`` metadata, 3D single layer or
  multi-layer stored as vector components / a 4D list axis);
- a plain labelmap (NRRD, NIfTI, MHA): segments named from a sidecar JSON
  ``<file>.labels.json`` (``{"1": "GTV", ...}``) when present, else ``label_<value>``;
- a DICOM RT Structure Set (``.dcm``): its contours are rasterised onto the CT series it
  references, looked up in the structure set's folder and the folder above it (or onto
  ``reference_geometry`` when given).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.fileio import atomic_path
from ..core.geometry import ImageGeometry
from ..core.imageio import geometry_of, read_sitk, require_image_memory

DEFAULT_COLORS = [
    (0.90, 0.10, 0.10), (0.10, 0.60, 0.90), (0.95, 0.85, 0.55), (0.55, 0.80, 0.40), (0.80, 0.25, 0.80),
    (0.95, 0.60, 0.10), (0.40, 0.40, 0.95), (0.30, 0.85, 0.85), (0.70, 0.50, 0.30), (0.60, 0.60, 0.60),
]


@dataclass
class Segment:
    """One segment: id, name, colour (r, g, b in 0-1), label value and layer."""

    segment_id: str
    name: str
    color: tuple
    label_value: int
    layer: int = 0


@dataclass
class Segmentation:
    """Named segments on ``geometry``; ``layers`` is (n_layers, nk, nj, ni) of label values."""

    geometry: ImageGeometry
    layers: np.ndarray
    segments: list = field(default_factory=list)
    #: File it was read from ("" if built in memory): named in error messages.
    source: str = field(default="", compare=False)

    def names(self):
        """Segment names in order."""
        return [s.name for s in self.segments]

    def find(self, name_or_id) -> Segment:
        """Segment by name (case-insensitive) or id; raises InputError listing the names."""
        for s in self.segments:
            if s.segment_id == name_or_id:
                return s
        low = str(name_or_id).strip().lower()
        hits = [s for s in self.segments if s.name.lower() == low]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InputError(f"{self._where}segment name '{name_or_id}' is ambiguous ({len(hits)} segments share it)")
        raise InputError(f"{self._where}no segment named '{name_or_id}' (segments: {', '.join(self.names()) or 'none'})")

    @property
    def _where(self):
        return f"{self.source}: " if self.source else ""

    def mask(self, name_or_id) -> np.ndarray:
        """Boolean mask [k, j, i] of one segment on this segmentation's own grid."""
        s = self.find(name_or_id)
        return self.layers[s.layer] == s.label_value

    def centre_ras(self, name_or_id) -> np.ndarray:
        """Centre (RAS mm) of one segment's voxels; InputError when the segment is empty."""
        m = self.mask(name_or_id)
        if not m.any():
            raise InputError(f"{self._where}segment '{self.find(name_or_id).name}' is empty")
        return self.geometry.ijk_to_ras(np.argwhere(m).mean(axis=0)[::-1])

    @classmethod
    def from_masks(cls, geometry: ImageGeometry, masks: dict, colors: dict | None = None):
        """Build from ``{name: bool mask}``; overlapping masks are placed on separate layers."""
        layers = []
        segments = []
        for n, (name, m) in enumerate(masks.items()):
            m = np.asarray(m, dtype=bool)
            if m.shape != geometry.shape:
                raise InputError(f"mask '{name}' has shape {m.shape}, grid is {geometry.shape}")
            placed = None
            for li, layer in enumerate(layers):
                if not np.any(layer[m]):
                    placed = li
                    break
            if placed is None:
                layers.append(np.zeros(geometry.shape, dtype=np.uint8))
                placed = len(layers) - 1
            label = 1 + sum(1 for s in segments if s.layer == placed)
            if label > 255:
                raise InputError("too many segments on one layer (255 max)")
            layers[placed][m] = label
            color = (colors or {}).get(name, DEFAULT_COLORS[n % len(DEFAULT_COLORS)])
            segments.append(Segment(f"Segment_{n + 1}", name, tuple(float(c) for c in color), label, placed))
        if not layers:
            layers.append(np.zeros(geometry.shape, dtype=np.uint8))
        return cls(geometry, np.stack(layers), segments)


def _meta(image, key, default=None):
    return image.GetMetaData(key) if image.HasMetaDataKey(key) else default


def _is_rtstruct(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        return False
    import pydicom
    ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    return str(getattr(ds, "Modality", "")) == "RTSTRUCT"


def _referenced_ct_geometry(path: Path) -> ImageGeometry:
    """Geometry of the CT series an RT Structure Set references (searched in its folder, the folders
    beside it and the folder above), read and checked by :mod:`core.dicomseries`."""
    import pydicom
    from ..core.dicomseries import image_series, read_dicom_series
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for damaged files
        raise InputError(f"{path}: corrupt DICOM file ({type(exc).__name__}: {exc})") from exc
    uids = [str(s.SeriesInstanceUID) for f in getattr(ds, "ReferencedFrameOfReferenceSequence", [])
            for st in getattr(f, "RTReferencedStudySequence", []) for s in getattr(st, "RTReferencedSeriesSequence", [])]
    if not uids:
        raise InputError(f"{path}: the RT Structure Set names no referenced image series; give the CT as reference")
    unreadable = []
    for folder in dict.fromkeys([path.parent, *path.parent.iterdir(), path.parent.parent,
                                 *(p for p in path.parent.parent.iterdir() if p.is_dir())]):
        if not Path(folder).is_dir():
            continue
        try:
            found = image_series(folder)
        except InputError as exc:
            unreadable.append(str(exc))
            continue
        if uids[0] in found:
            image = read_dicom_series(folder, uids[0])[0]
            return geometry_of(image)
    raise InputError(f"{path}: the CT series it references ({uids[0]}) is not in its folder, the folders beside it "
                     "or the folder above; give the CT image as reference"
                     + (f" (unreadable there: {unreadable[0]})" if unreadable else ""))


def _read_rtstruct(path: Path, reference_geometry=None) -> Segmentation:
    from ..dicom.rtimport import read_rtstruct
    geometry = reference_geometry if reference_geometry is not None else _referenced_ct_geometry(path)
    rois = read_rtstruct(path, geometry)
    masks = {name: roi["mask"] for name, roi in rois.items()}
    colors = {name: tuple(c / 255.0 for c in roi["color"]) for name, roi in rois.items()}
    if not masks:
        raise InputError(f"{path}: the RT Structure Set holds no ROI contours")
    return Segmentation.from_masks(geometry, masks, colors)


def read_segmentation(path, reference_geometry=None) -> Segmentation:
    """Read a ``.seg.nrrd``, a labelmap image or a DICOM RT Structure Set (see module doc)."""
    import SimpleITK as sitk
    path = Path(path)
    if _is_rtstruct(path):
        seg = _read_rtstruct(path, reference_geometry)
        seg.source = str(path)
        return seg
    image = read_sitk(path) if not str(path).lower().endswith(".seg.nrrd") else None
    if image is None:
        if not path.exists():
            raise InputError(f"{path}: segmentation not found")
        try:
            require_image_memory(path, "segmentation")
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"{path}: unreadable segmentation ({str(exc).strip().splitlines()[-1]})") from exc
    keys = set(image.GetMetaDataKeys())
    if image.GetDimension() == 4:  # 4D list axis stored as the 4th ITK dimension
        arr4 = sitk.GetArrayFromImage(image)  # (n_layers, k, j, i) per ITK ordering
        size3 = image.GetSize()[:3]
        direction = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3]
        geometry = ImageGeometry.from_lps(size3, image.GetSpacing()[:3], image.GetOrigin()[:3], direction)
        layers = arr4.astype(np.uint8)
    else:
        geometry = geometry_of(image)
        arr = sitk.GetArrayFromImage(image)
        if image.GetNumberOfComponentsPerPixel() > 1:
            layers = np.moveaxis(arr, -1, 0)
        else:
            layers = arr[None]
        if not np.issubdtype(layers.dtype, np.integer):
            if np.any(layers != np.round(layers)):
                raise InputError(f"{path}: labelmap has non-integer values")
        if layers.min() < 0 or layers.max() > 65535:
            raise InputError(f"{path}: labelmap values must lie in 0..65535")
        layers = layers.astype(np.uint16 if layers.max() > 255 else np.uint8)
    segments = []
    n = 0
    while f"Segment{n}_ID" in keys:
        pre = f"Segment{n}_"
        try:
            color = tuple(float(v) for v in _meta(image, pre + "Color", "0.5 0.5 0.5").split()[:3])
            label = int(float(_meta(image, pre + "LabelValue", "1")))
            layer = int(float(_meta(image, pre + "Layer", "0")))
        except ValueError as exc:
            raise InputError(f"{path}: header field of segment {n} ({pre}Color/LabelValue/Layer) is not a number: "
                             f"{exc}") from exc
        segments.append(Segment(_meta(image, pre + "ID"), _meta(image, pre + "Name", f"Segment_{n}"), color,
                                label, layer))
        n += 1
    if not segments:
        names = {}
        sidecar = Path(str(path) + ".labels.json")
        if sidecar.exists():
            try:
                names = {int(k): str(v) for k, v in json.loads(sidecar.read_text()).items()}
            except (ValueError, AttributeError) as exc:
                raise InputError(f"{sidecar}: label names must be a JSON object {{\"1\": \"GTV\"}}: {exc}") from exc
        values = [int(v) for v in np.unique(layers[0]) if v != 0]
        for n, v in enumerate(values):
            segments.append(Segment(f"Segment_{v}", names.get(v, f"label_{v}"),
                                    DEFAULT_COLORS[n % len(DEFAULT_COLORS)], v, 0))
    for s in segments:
        if s.layer >= layers.shape[0]:
            raise InputError(f"{path}: segment '{s.name}' refers to layer {s.layer}, file has {layers.shape[0]}")
    return Segmentation(geometry, layers, segments, source=str(path))


def write_segmentation(path, seg: Segmentation):
    """Write a Slicer-compatible ``.seg.nrrd`` (one layer: 3D; several: vector components)."""
    import SimpleITK as sitk
    g = seg.geometry
    if seg.layers.shape[0] == 1:
        image = sitk.GetImageFromArray(np.ascontiguousarray(seg.layers[0]))
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(seg.layers, 0, -1)), isVector=True)
    origin, direction = g.to_lps()
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in g.spacing))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    extent = f"0 {g.size[0] - 1} 0 {g.size[1] - 1} 0 {g.size[2] - 1}"
    for n, s in enumerate(seg.segments):
        pre = f"Segment{n}_"
        image.SetMetaData(pre + "ID", s.segment_id)
        image.SetMetaData(pre + "Name", s.name)
        image.SetMetaData(pre + "NameAutoGenerated", "0")
        image.SetMetaData(pre + "Color", " ".join(f"{c:.6g}" for c in s.color))
        image.SetMetaData(pre + "ColorAutoGenerated", "0")
        image.SetMetaData(pre + "LabelValue", str(int(s.label_value)))
        image.SetMetaData(pre + "Layer", str(int(s.layer)))
        image.SetMetaData(pre + "Extent", extent)
        image.SetMetaData(pre + "Tags", "")
    if not str(path).lower().endswith(".seg.nrrd"):
        raise InputError(f"{path}: a segmentation file must end in .seg.nrrd")
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return Path(path)
