"""The :class:`Volume`: a voxel array with its geometry in LPS patient coordinates.

Conventions (stated once, used everywhere in radreview):

* ``array`` is indexed ``(z, y, x)`` = ``(k, j, i)``: ``k`` is the slice index, ``j`` the row,
  ``i`` the column of a DICOM image.
* Geometry follows ITK/SimpleITK: the LPS position (mm) of voxel index ``(i, j, k)`` is
  ``origin + direction @ (spacing * [i, j, k])`` where ``direction`` is a 3x3 matrix whose
  *columns* are the unit vectors of the i, j and k axes in LPS (DICOM PS3.3 C.7.6.2.1.1:
  column 0 is the *Image Orientation (Patient)* row direction, column 1 the column direction).
* ``spacing`` is ``(sx, sy, sz)`` in mm, ``origin`` is ``(x, y, z)`` in LPS mm, the centre of
  the first voxel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Volume", "StudyInfo"]


@dataclass
class StudyInfo:
    """DICOM attributes the viewer shows next to a volume (all optional strings)."""

    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""
    study_description: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    series_description: str = ""
    series_number: str = ""
    modality: str = ""
    sop_class_uid: str = ""
    window_center: float | None = None
    window_width: float | None = None
    source: str = ""
    invert_grayscale: bool = False  # MONOCHROME1 (PS3.3 C.7.6.3.1.2)
    frame_of_reference_uid: str = ""  # (0020,0052) Frame of Reference UID; "" for NIfTI/NRRD/MHA

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Volume:
    """A 3-D scalar image with LPS geometry.

    Parameters
    ----------
    array : numpy.ndarray
        Voxel values, shape ``(nz, ny, nx)``, axis order ``(z, y, x)``. CT values are HU
        (Rescale Slope/Intercept already applied).
    spacing : tuple of 3 floats
        ``(sx, sy, sz)`` in mm, all > 0.
    origin : tuple of 3 floats
        LPS position in mm of the centre of voxel ``(0, 0, 0)``.
    direction : numpy.ndarray
        3x3, columns are the LPS unit vectors of the i, j, k axes.
    info : StudyInfo
        Patient/study/series attributes for display.
    warnings : list of str
        Everything the loader changed or doubted (resampling, tilt, non-uniform spacing...).

    Raises
    ------
    ValueError
        If the array is not 3-D, spacing is not positive or direction is not 3x3.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    info: StudyInfo = field(default_factory=StudyInfo)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3-D (z, y, x), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive numbers (mm), got {self.spacing}")
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)

    # ------------------------------------------------------------------ geometry
    @property
    def size(self) -> tuple[int, int, int]:
        """``(nx, ny, nz)``: the SimpleITK order of :attr:`array`'s shape reversed."""
        nz, ny, nx = self.array.shape
        return (nx, ny, nz)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def index_to_lps(self, ijk) -> np.ndarray:
        """LPS (mm) of continuous index ``(i, j, k)`` (shape ``(3,)`` or ``(n, 3)``)."""
        ijk = np.asarray(ijk, dtype=float)
        m = self.direction * np.asarray(self.spacing)[None, :]
        return np.asarray(self.origin) + ijk @ m.T

    def lps_to_index(self, lps) -> np.ndarray:
        """Continuous index ``(i, j, k)`` of an LPS point (mm); inverse of :meth:`index_to_lps`."""
        lps = np.asarray(lps, dtype=float)
        m = self.direction * np.asarray(self.spacing)[None, :]
        return (lps - np.asarray(self.origin)) @ np.linalg.inv(m).T

    def value_at_lps(self, lps) -> float | None:
        """Nearest-voxel value at an LPS point, or ``None`` outside the volume."""
        i, j, k = np.rint(self.lps_to_index(lps)).astype(int)
        nx, ny, nz = self.size
        if 0 <= i < nx and 0 <= j < ny and 0 <= k < nz:
            return float(self.array[k, j, i])
        return None

    def center_lps(self) -> np.ndarray:
        nx, ny, nz = self.size
        return self.index_to_lps([(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2])

    def same_grid(self, other: "Volume", tol: float = 1e-3) -> bool:
        """True when ``other`` has the same size, spacing, origin and direction (within tol mm)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    # ----------------------------------------------------------- conversions
    def to_sitk(self):
        """A ``SimpleITK.Image`` sharing nothing with this volume but the same geometry."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img, info: StudyInfo | None = None, warnings=None) -> "Volume":
        """Build a Volume from a 3-D ``SimpleITK.Image`` (geometry copied, LPS as ITK uses).

        Raises
        ------
        ValueError
            If the image is not 3-D scalar.
        """
        import SimpleITK as sitk

        if img.GetDimension() != 3:
            raise ValueError(f"expected a 3-D image, got {img.GetDimension()}-D")
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("expected a scalar image, got a multi-component (e.g. RGB) image")
        arr = sitk.GetArrayFromImage(img)
        return cls(
            array=arr,
            spacing=img.GetSpacing(),
            origin=img.GetOrigin(),
            direction=np.array(img.GetDirection()).reshape(3, 3),
            info=info or StudyInfo(),
            warnings=list(warnings or []),
        )

    def geometry_dict(self) -> dict[str, Any]:
        """Size/spacing/origin/direction as SimpleITK reports them (lists, row-major direction)."""
        return {
            "size": list(self.size),
            "spacing": [float(s) for s in self.spacing],
            "origin": [float(o) for o in self.origin],
            "direction": [float(d) for d in self.direction.ravel()],
        }
