"""Training/evaluation targets for the shipped CT segmentation model (``ct-organs-2p5d``).

Classes (index: name): 0 background (outside the body), 1 body (other tissue inside the
body), 2 lungs, 3 liver, 4 spleen, 5 kidneys, 6 bone.

Where TotalSegmentator labels exist they define lungs (lobes 10-14), liver (5), spleen (1) and
kidneys (2, 3), per its "total" class map. Body and bone are HU rules, and so are lungs on
volumes without TotalSegmentator labels:

* **body**: the largest 3-D component of HU > -500, holes filled slice by slice;
* **bone**: HU >= 200 inside the body, components of 10 voxels or more (dense contrast and
  calcification above 200 HU are included: a stated limitation);
* **lungs (rule)**: HU < -400 inside the body, 3-D components of at least 10 mL.

Volumes whose soft-tissue organs are unknown (chest crop) mark soft tissue with
:data:`IGNORE` so the loss does not teach "not liver" there; the chest crop is a contrast CT
angiogram, where HU >= 200 is mostly contrast-filled vessels, so it is ignored there too. The head CT has no thoracic or
abdominal organs by anatomy, so it is fully labelled.

Volumes (all real, ``../shared/data``; see its README for sources and licences):

=========  =====================================================  ============================
name       file                                                   use
=========  =====================================================  ============================
abdB       ct-abdomen-nifti/ct.nii.gz slices 82-111 + TS labels   training (patient B)
head       ct-head/head_ct.nii.gz                                 training (negatives, bone)
chest      ct-chest-crops/chest_crop_1.nii.gz (CTA, inside body)  training (lungs only)
abdA       ct-abdomen-dicom/series + totalsegmentator_labels      **held out** (patient A)
=========  =====================================================  ============================
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radreview.studies import Volume, load_image_file, open_volume

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RADREVIEW_SHARED_DATA", ROOT.parent / "shared" / "data"))
CLASSES = ["background", "body", "lungs", "liver", "spleen", "kidneys", "bone"]
IGNORE = 255
TS_MAP = {5: 3, 1: 4, 2: 5, 3: 5}  # TotalSegmentator liver, spleen, kidney_right, kidney_left
TS_LUNG = (10, 11, 12, 13, 14)


def body_mask(hu: np.ndarray) -> np.ndarray:
    img = sitk.GetImageFromArray((hu > -500).astype(np.uint8))
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(img), sortByObjectSize=True)
    body = sitk.GetArrayFromImage(cc) == 1
    out = np.zeros_like(body)
    for k in range(body.shape[0]):
        out[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(body[k].astype(np.uint8)))) > 0
    return out


def _components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    if not mask.any():
        return mask
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))),
                               minimumObjectSize=int(min_voxels))
    return sitk.GetArrayFromImage(cc) > 0


def make_target(vol: Volume, ts: np.ndarray | None, organs_known: bool, lungs_by_rule: bool,
                inside_body: bool = False, contrast_angiography: bool = False) -> np.ndarray:
    """Class map ``(z, y, x)`` uint8 for ``vol`` (HU); ``ts`` TotalSegmentator labels on the same grid.

    ``inside_body``: the volume is a crop lying wholly inside the patient (every voxel is body).
    """
    hu = vol.array
    voxel_ml = float(np.prod(vol.spacing)) / 1000
    body = np.ones(hu.shape, bool) if inside_body else body_mask(hu)
    t = np.zeros(hu.shape, np.uint8)
    t[body] = 1
    if not organs_known:
        t[body & (hu > -400)] = IGNORE
    t[_components(body & (hu >= 200), 10)] = 6
    if contrast_angiography:  # contrast-filled vessels reach bone HU: do not teach either way
        t[hu >= 200] = IGNORE
    if ts is not None:
        t[np.isin(ts, TS_LUNG)] = 2
        for src, dst in TS_MAP.items():
            t[ts == src] = dst
    elif lungs_by_rule:
        t[_components(body & (hu < -400), 10.0 / voxel_ml)] = 2
    return t


def volumes() -> dict[str, tuple[Volume, np.ndarray]]:
    """``{name: (volume, target)}`` on each volume's own grid."""
    out = {}
    full = load_image_file(DATA / "ct-abdomen-nifti/ct.nii.gz", modality="CT")
    ts_b = sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / "ct-abdomen-nifti/totalsegmentator_labels_30slices.nii.gz")))
    sub = Volume(full.array[82:112].copy(), full.spacing, tuple(full.index_to_lps([0, 0, 82])), full.direction, full.info)
    out["abdB"] = (sub, make_target(sub, ts_b, organs_known=True, lungs_by_rule=False))
    head = load_image_file(DATA / "ct-head/head_ct.nii.gz", modality="CT")
    out["head"] = (head, make_target(head, None, organs_known=True, lungs_by_rule=False))
    chest = load_image_file(DATA / "ct-chest-crops/chest_crop_1.nii.gz", modality="CT")
    out["chest"] = (chest, make_target(chest, None, organs_known=False, lungs_by_rule=True, inside_body=True,
                                            contrast_angiography=True))
    out["abdA"] = heldout()
    return out


def heldout() -> tuple[Volume, np.ndarray]:
    """Patient A (the DICOM series) and its reference target: never used for training."""
    vol = open_volume(DATA / "ct-abdomen-dicom/series")
    ts_img = sitk.ReadImage(str(DATA / "ct-abdomen-dicom/totalsegmentator_labels.nii.gz"))
    ts = sitk.GetArrayFromImage(sitk.Resample(ts_img, vol.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    return vol, make_target(vol, ts, organs_known=True, lungs_by_rule=False)


def to_grid(vol: Volume, target: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Image (linear) and target (nearest) on the model grid, as the runtime resamples."""
    from radreview.inference.segment import to_model_grid

    img = to_model_grid(vol, spacing)
    t = vol.to_sitk()
    t = sitk.GetImageFromArray(target)
    t.CopyInformation(vol.to_sitk())
    lab = sitk.Resample(t, img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(lab)
