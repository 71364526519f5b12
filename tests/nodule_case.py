"""A held-out chest CT (patient D, ct-chest-tumor B40f) with one synthetic nodule inserted in lung
far from the real tumour, on the model grid, for tests."""

from __future__ import annotations

import numpy as np

from radreview.studies import Volume
from radreview.studies.volume import StudyInfo


def inserted_nodule_volume(diameter_mm: float = 18.0, seed: int = 5):
    """``(volume, nodule_mask, centre_lps)``: a 128 x 128 mm x 25-slice crop of patient D's lung."""
    import SimpleITK as sitk

    from training.nodules import insert_nodule
    from training.package_nodule import heldout_background
    from training.train_nodule import SPACING

    hu, lungs, grid, _, boxes = heldout_background()
    rng = np.random.default_rng(seed)
    deep = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(lungs.astype(np.uint8)), [12, 12, 3])) > 0
    pts = np.argwhere(deep)
    for _ in range(500):
        c = pts[rng.integers(len(pts))]
        lps = np.array(grid.TransformIndexToPhysicalPoint([int(c[2]), int(c[1]), int(c[0])]))
        if all(np.linalg.norm(lps[:2] - b.mean(axis=0)[:2]) > 90 or abs(lps[2] - b[0, 2]) > 60 for b in boxes):
            break
    z, y, x = (int(v) for v in c)
    zs, ys, xs = slice(max(z - 12, 0), z + 13), slice(max(y - 64, 0), y + 64), slice(max(x - 64, 0), x + 64)
    block = hu[zs, ys, xs].astype(np.float32)
    center = (z - zs.start, y - ys.start, x - xs.start)
    mask = insert_nodule(block, center, (SPACING[2], SPACING[1], SPACING[0]),
                         {"diameter_mm": diameter_mm, "style": "lobulated", "hu": 40.0}, rng)
    origin = grid.TransformIndexToPhysicalPoint((xs.start, ys.start, zs.start))
    vol = Volume(np.rint(block).astype(np.int16), spacing=SPACING, origin=origin, info=StudyInfo(modality="CT", source="test"))
    return vol, mask, tuple(lps)
