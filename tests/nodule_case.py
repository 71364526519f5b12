"""A held-out chest CT (patient D, ct-chest-tumor B40f, the tumour-free slab) with one real
held-out LIDC-IDRI nodule pasted into its lung, for tests."""

from __future__ import annotations

import numpy as np


def inserted_nodule_volume(diameter_mm: float = 18.0, seed: int = 5):
    """``(volume, nodule_mask, centre_lps)``: the test slab of patient D (native 0.65 x 0.65 x
    8 mm grid) with the test-split solid nodule whose LIDC diameter is closest to
    ``diameter_mm`` pasted at a lung point at least 15 mm inside the lung (drawn with ``seed``)."""
    import SimpleITK as sitk

    from radreview.inference.lungs import closed_lung_mask
    from radreview.studies import Volume
    from radreview.studies.paste import paste_nodule
    from training.nodule_data import background, nodules

    vol, _ = background("D40")
    cands = [n for n in nodules("test") if n.qualifies and n.nodule_type == "solid"]
    nod = min(cands, key=lambda n: abs(n.diameter_mm - diameter_mm))
    lungs = closed_lung_mask(vol.array, vol.spacing)
    img = sitk.GetImageFromArray(lungs.astype(np.uint8))
    img.SetSpacing(vol.spacing)
    deep = sitk.GetArrayFromImage(sitk.BinaryErode(img, [int(15 / vol.spacing[0]), int(15 / vol.spacing[1]), 1])) > 0
    deep &= vol.array < -750
    deep[:1] = deep[-1:] = False
    pts = np.argwhere(deep)
    c = pts[np.random.default_rng(seed).integers(len(pts))]
    lps = tuple(float(v) for v in vol.index_to_lps([float(c[2]), float(c[1]), float(c[0])]))
    arr, mask = paste_nodule(vol, nod.image, nod.mask, lps)
    out = Volume(np.rint(arr).astype(np.int16), vol.spacing, vol.origin, vol.direction, vol.info)
    return out, mask, lps
