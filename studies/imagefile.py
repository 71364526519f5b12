"""NIfTI, NRRD and MetaImage volumes through SimpleITK (ITK's readers convert to LPS)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .volume import StudyInfo, Volume

__all__ = ["IMAGE_SUFFIXES", "is_image_file", "load_image_file", "save_label_file"]

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` names a NIfTI/NRRD/MetaImage file by its suffix."""
    name = str(path).lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def load_image_file(path: str | os.PathLike, modality: str | None = None) -> Volume:
    """Read a 3-D scalar image file into a Volume (array ``(z, y, x)``, LPS geometry).

    ITK converts NIfTI's RAS+ qform/sform to LPS, so ``origin``/``direction`` here are LPS.
    These formats do not record the modality: pass ``modality`` or it is guessed from the
    value range (CT if the minimum is at or below -900, as air in HU) and the guess is
    stated in ``Volume.warnings``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file cannot be read or is not a 3-D scalar image (the message names the file).
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise ValueError(f"{p}: cannot read image ({first})") from None
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{p}: expected a 3-D scalar image, got {img.GetDimension()}-D with "
                         f"{img.GetNumberOfComponentsPerPixel()} component(s)")
    warnings: list[str] = []
    info = StudyInfo(source=str(p), series_description=p.name, modality=modality or "")
    vol = Volume.from_sitk(img, info=info, warnings=warnings)
    if not modality:
        lo = float(vol.array.min())
        info.modality = "CT" if lo <= -900 else "MR"
        vol.warnings.append(f"modality not recorded in {p.suffix} files; assumed {info.modality} from the value range "
                        f"(min {lo:g})")
    d = vol.direction
    if not np.allclose(d @ d.T, np.eye(3), atol=1e-4):
        vol.warnings.append("direction matrix is not orthonormal")
    return vol


def save_label_file(labels: np.ndarray, reference: Volume, path: str | os.PathLike) -> None:
    """Write a label map ``(z, y, x)`` on ``reference``'s exact grid (NIfTI/NRRD/MHA by suffix).

    Raises
    ------
    ValueError
        If ``labels`` does not have the reference volume's shape.
    """
    import SimpleITK as sitk

    if labels.shape != reference.array.shape:
        raise ValueError(f"label map shape {labels.shape} != volume shape {reference.array.shape}")
    img = sitk.GetImageFromArray(labels)
    img.SetSpacing(reference.spacing)
    img.SetOrigin(reference.origin)
    img.SetDirection(tuple(reference.direction.ravel()))
    # label maps compress well even at zlib level 1, which is several times faster than the default
    sitk.WriteImage(img, str(path), True, 1)
