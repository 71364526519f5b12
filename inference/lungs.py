"""Lung masks for the nodule model: the HU rule, and the closed mask that keeps pleural nodules.

``lung_mask`` (HU rule): HU < -400, 3-D components of at least 10 mL; in a whole-body field of
view, components that lie along the in-plane border (air outside the patient) are dropped.
``crop=True`` keeps border-touching components (a crop lying inside the chest).

``closed_lung_mask``: the HU-rule lungs (gas-only components, median < -950 HU, dropped) on a coarse grid (every ``step``-th voxel), closed
with a ball of ``close_mm`` (a rolling-ball close, as in Armato et al., Radiology 1999: it puts
back juxta-pleural nodules and vessels that the HU rule leaves outside the parenchyma) and
enclosed holes filled (3-D), then brought back to the full grid (nearest).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["lung_mask", "closed_lung_mask"]


def lung_mask(hu: np.ndarray, spacing_xyz, crop: bool = False, min_ml: float = 10.0,
              max_median_hu: float | None = None) -> np.ndarray:
    """Boolean ``(z, y, x)`` lung mask of an HU array with voxel spacing ``(sx, sy, sz)`` mm.

    ``max_median_hu``: drop components whose median HU is below it (pure gas: trachea, stomach
    and bowel gas are about -990 HU, aerated lung about -850 HU).
    """
    img = sitk.GetImageFromArray((hu < -400).astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    voxel_ml = float(np.prod(spacing_xyz)) / 1000
    lab = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(img), minimumObjectSize=max(1, int(min_ml / voxel_ml))))
    out = np.zeros(hu.shape, bool)
    for v in range(1, int(lab.max()) + 1):
        comp = lab == v
        if not crop:
            border = comp[:, 0, :].sum() + comp[:, -1, :].sum() + comp[:, :, 0].sum() + comp[:, :, -1].sum()
            if border > 0.02 * comp.sum():
                continue
        if max_median_hu is not None and float(np.median(hu[comp])) < max_median_hu:
            continue
        out |= comp
    return out


def closed_lung_mask(hu: np.ndarray, spacing_xyz, crop: bool = False, close_mm: float = 10.0, step: int = 2) -> np.ndarray:
    """Lungs with pleura-attached lesions kept: boolean ``(z, y, x)`` on ``hu``'s grid.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(z, y, x)`` HU.
    spacing_xyz : sequence of 3 floats
        Voxel spacing (mm).
    crop : bool
        The array is a crop inside the chest (keep air touching its border).
    close_mm : float
        Radius of the closing ball (mm).
    step : int
        Subsampling step for speed (the mask is computed on every ``step``-th voxel).
    """
    sp = np.asarray(spacing_xyz, float)
    small = hu[::step, ::step, ::step]
    sp_s = sp * step
    raw = lung_mask(small, sp_s, crop=crop, min_ml=2.0 if crop else 10.0, max_median_hu=-950.0)
    if not raw.any():
        return np.zeros(hu.shape, bool)
    img = sitk.GetImageFromArray(raw.astype(np.uint8))
    rad = [max(1, int(round(close_mm / s))) for s in sp_s]
    pad = max(rad)
    img = sitk.ConstantPad(img, [pad] * 3, [pad] * 3, 0)
    img = sitk.BinaryMorphologicalClosing(img, rad, sitk.sitkBall)
    img = sitk.Crop(img, [pad] * 3, [pad] * 3)
    closed = sitk.GetArrayFromImage(img) > 0
    from scipy.ndimage import binary_fill_holes

    closed = binary_fill_holes(closed)  # 3-D: fills lesions enclosed by lung, not the liver dome
    out = closed.repeat(step, 0).repeat(step, 1).repeat(step, 2)
    return np.ascontiguousarray(out[: hu.shape[0], : hu.shape[1], : hu.shape[2]])
