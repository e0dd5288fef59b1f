"""Image input/output with SimpleITK: NRRD, NIfTI, MetaImage and DICOM series folders.

Images come back as ``(array[k, j, i], ImageGeometry in RAS)``. Writes are atomic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .fileio import atomic_path, require_complete
from .memory import require_memory
from .geometry import ImageGeometry

READABLE = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def _sitk():
    import SimpleITK as sitk  # imported lazily: point-dose checks do not need it
    return sitk


def geometry_of(image) -> ImageGeometry:
    """RAS geometry of a SimpleITK image."""
    if image.GetDimension() != 3:
        raise InputError(f"expected a 3D image, got {image.GetDimension()}D")
    return ImageGeometry.from_lps(image.GetSize(), image.GetSpacing(), image.GetOrigin(),
                                  np.asarray(image.GetDirection()).reshape(3, 3))


def read_sitk(path):
    """Read ``path`` (image file, DICOM series folder or ``FOLDER::SERIES_UID``) as a SimpleITK image.

    DICOM folders go through :func:`dicomseries.read_dicom_series`: one series chosen by UID,
    slices sorted along the normal, missing slices and gantry tilt refused.
    """
    from .dicomseries import read_dicom_series, split_series_path
    sitk = _sitk()
    folder, uid = split_series_path(path)
    if uid is not None or folder.is_dir():
        if not folder.is_dir():
            raise InputError(f"{folder}: DICOM series folder not found")
        return _checked(read_dicom_series(folder, uid)[0], path)
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: image not found")
    require_complete(path, "image")
    try:
        require_image_memory(path)
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"{path}: unreadable image ({first[-1] if first else 'SimpleITK error'})") from exc
    return _checked(image, path)


def require_image_memory(path, what="image"):
    """Refuse (ResourceError) an image file whose header declares more voxels than memory can hold.

    Only the header is read. The estimate counts the image and one array copy of it (the readers
    convert to numpy). A RuntimeError of SimpleITK (unreadable header) propagates to the caller.
    """
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = reader.GetSize()
    n_voxels = int(np.prod([int(s) for s in size], dtype=np.float64))
    try:
        component = sitk.Image([1] * len(size), reader.GetPixelID()).GetSizeOfPixelComponent()
    except RuntimeError:
        component = 8
    n_bytes = 2 * n_voxels * max(int(reader.GetNumberOfComponents()), 1) * component
    require_memory(n_bytes, f"{path}: {what} of {' x '.join(str(int(s)) for s in size)} voxels",
                   "the header declares a grid larger than this machine can hold (a damaged or foreign file?)")


def _checked(image, path):
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components")
    if image.GetDimension() != 3:
        raise InputError(f"{path}: expected a 3D image, got {image.GetDimension()}D")
    return image


def read_image(path):
    """Read an image: returns ``(array[k, j, i], ImageGeometry)``."""
    image = read_sitk(path)
    return _sitk().GetArrayFromImage(image), geometry_of(image)


def to_sitk(array, geometry: ImageGeometry):
    """SimpleITK image of ``array[k, j, i]`` on ``geometry``."""
    sitk = _sitk()
    array = np.asarray(array)
    if array.shape != geometry.shape:
        raise InputError(f"array shape {array.shape} does not match grid shape {geometry.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    origin, direction = geometry.to_lps()
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetSpacing(tuple(float(v) for v in geometry.spacing))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def write_image(path, array, geometry: ImageGeometry, metadata=None, compress=True):
    """Write ``array[k, j, i]`` on ``geometry`` to ``path`` atomically (format by extension)."""
    sitk = _sitk()
    image = to_sitk(array, geometry)
    for key, value in (metadata or {}).items():
        image.SetMetaData(str(key), str(value))
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot write image: {str(exc).strip().splitlines()[-1]}") from exc
    return Path(path)
