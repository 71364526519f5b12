"""Comparison metrics between two label maps on the same grid (AI vs reference/manual).

Dice (Dice 1945), HD95 and ASSD from symmetric surface distances computed with SimpleITK's
signed Maurer distance maps (in mm, using the image spacing), as in the Medical Segmentation
Decathlon / MONAI definitions: HD95 = 95th percentile of the union of both directed surface
distance sets.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["dice", "surface_distances", "hd95", "assd"]


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two boolean masks of equal shape; ``None`` when both are empty."""
    a, b = a.astype(bool), b.astype(bool)
    s = int(a.sum()) + int(b.sum())
    if s == 0:
        return None
    return 2.0 * int((a & b).sum()) / s


def surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray | None:
    """Distances (mm) from each surface voxel of ``a`` to ``b``'s surface and back, concatenated.

    ``a``, ``b``: boolean ``(z, y, x)``; ``spacing`` ``(sx, sy, sz)`` mm. ``None`` if either is empty.
    """
    a, b = a.astype(np.uint8), b.astype(np.uint8)
    if not a.any() or not b.any():
        return None
    out = []
    for src, dst in ((a, b), (b, a)):
        si = sitk.GetImageFromArray(src)
        di = sitk.GetImageFromArray(dst)
        si.SetSpacing(tuple(float(s) for s in spacing))
        di.SetSpacing(tuple(float(s) for s in spacing))
        dist = sitk.GetArrayViewFromImage(sitk.Abs(sitk.SignedMaurerDistanceMap(di, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)))
        contour = sitk.GetArrayViewFromImage(sitk.LabelContour(si)) > 0
        out.append(dist[contour])
    return np.concatenate(out)


def hd95(a, b, spacing) -> float | None:
    """95th-percentile symmetric Hausdorff distance (mm); ``None`` if a mask is empty."""
    d = surface_distances(a, b, spacing)
    return None if d is None else float(np.percentile(d, 95))


def assd(a, b, spacing) -> float | None:
    """Average symmetric surface distance (mm); ``None`` if a mask is empty."""
    d = surface_distances(a, b, spacing)
    return None if d is None else float(d.mean())
