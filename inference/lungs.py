"""Lung parenchyma by HU rule, used to keep nodule candidates inside the lungs.

HU < -400, 3-D components of at least 10 mL; in a whole-body field of view, components that
lie along the in-plane border (air outside the patient) are dropped. ``crop=True`` keeps
border-touching components (a crop lying inside the chest).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["lung_mask"]


def lung_mask(hu: np.ndarray, spacing_xyz, crop: bool = False) -> np.ndarray:
    """Boolean ``(z, y, x)`` lung mask of an HU array with voxel spacing ``(sx, sy, sz)`` mm."""
    img = sitk.GetImageFromArray((hu < -400).astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    voxel_ml = float(np.prod(spacing_xyz)) / 1000
    lab = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(img), minimumObjectSize=max(1, int(10 / voxel_ml))))
    out = np.zeros(hu.shape, bool)
    for v in range(1, int(lab.max()) + 1):
        comp = lab == v
        if not crop:
            border = comp[:, 0, :].sum() + comp[:, -1, :].sum() + comp[:, :, 0].sum() + comp[:, :, -1].sum()
            if border > 0.02 * comp.sum():
                continue
        out |= comp
    return out
