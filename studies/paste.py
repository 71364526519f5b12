"""Paste a real nodule (a CT volume of interest with its mask) into another CT's lungs.

Used to build whole-scan cases with known truth from the LIDC-IDRI nodule crops of
``../shared/data/ct-lung-nodules-lidc`` (training, evaluation and the shadow-mode demo):

>>> from radreview.studies.paste import load_lidc_nodule, paste_nodule
>>> nod = load_lidc_nodule(DATA / "ct-lung-nodules-lidc", "LIDC-IDRI-0001", 1)
>>> arr, truth = paste_nodule(volume, nod.image, nod.mask, center_lps=(-80.0, -20.0, 110.0))
>>> pasted = Volume(arr, volume.spacing, volume.origin, volume.direction, volume.info)

Method (SimpleITK): the crop and its mask are moved by a translation so that the mask's
centroid lands on ``center_lps``; where the scan's voxels are coarser than the crop's along an
axis (e.g. 8 mm slices vs 1.25 mm), the crop is first smoothed with a Gaussian whose FWHM is
the extra thickness (``sqrt(t_scan^2 - t_crop^2)``), so the nodule gets the scan's partial
volume instead of being point-sampled; both are then resampled (linear) onto the scan grid.
The blending weight is the mask dilated by ``margin_mm`` (a rim of the nodule's own lung keeps
its edge) with a feathered edge (Gaussian, sigma ``feather_mm``), so the value is
``w * crop + (1 - w) * scan``: a convex mix of two real CT values, HU stays realistic.
The truth mask is the resampled nodule mask (partial-volume fraction >= 0.5) on the scan grid.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .volume import Volume

__all__ = ["LidcNodule", "load_lidc_nodule", "lidc_table", "nodule_type_of", "paste_nodule", "mask_centroid_lps"]

#: LIDC ``Texture_value`` (1-5, the radiologists' rating) to the nodule type reported.
#: 1 Non-Solid/GGO and 2 Non-Solid/Mixed: ground glass; 3 Part Solid/Mixed and 4 Solid/Mixed:
#: part-solid; 5 Solid: solid (LIDC-IDRI rating scale, Armato et al., Med. Phys. 2011).
TEXTURE_TYPES = {1: "ground glass", 2: "ground glass", 3: "part-solid", 4: "part-solid", 5: "solid"}


def nodule_type_of(texture_value: int) -> str:
    """``"solid"``, ``"part-solid"`` or ``"ground glass"`` from an LIDC texture rating 1-5.

    Raises
    ------
    ValueError
        If the rating is not 1-5.
    """
    try:
        return TEXTURE_TYPES[int(texture_value)]
    except (KeyError, ValueError):
        raise ValueError(f"LIDC texture rating must be 1-5, got {texture_value!r}") from None


@dataclass
class LidcNodule:
    """One LIDC-IDRI nodule volume of interest.

    ``image``: the crop (HU, int16, its own LPS geometry); ``mask``: the consensus mask (uint8,
    same grid); ``row``: its ``nodules.csv`` row (strings as read); ``patient``/``nodule_id``
    name it; ``diameter_mm`` the table's diameter; ``nodule_type`` from the texture rating;
    ``calcified`` True unless Calcification is "Absent"; ``center_lps`` the table's centre (mm).
    """

    patient: str
    nodule_id: int
    image: sitk.Image
    mask: sitk.Image
    row: dict
    diameter_mm: float
    nodule_type: str
    calcified: bool
    center_lps: tuple[float, float, float]

    @property
    def qualifies(self) -> bool:
        """The model's question: a solid or part-solid, non-calcified nodule >= 6 mm."""
        return self.diameter_mm >= 6.0 and self.nodule_type != "ground glass" and not self.calcified


def lidc_table(folder: str | Path) -> list[dict]:
    """Rows of ``folder/nodules.csv`` (dicts of strings).

    Raises
    ------
    FileNotFoundError
        If ``nodules.csv`` is missing, naming the path.
    """
    path = Path(folder) / "nodules.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LIDC nodule table not found")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def load_lidc_nodule(folder: str | Path, patient: str, nodule_id: int, row: dict | None = None) -> LidcNodule:
    """Read ``image/<patient>_R_<nodule_id>.nii.gz`` and its mask from the LIDC folder.

    Raises
    ------
    FileNotFoundError
        Crop, mask or table row missing (the path or id is named).
    ValueError
        Mask on another grid than the crop, or an empty mask.
    """
    folder = Path(folder)
    name = f"{patient}_R_{int(nodule_id)}.nii.gz"
    img_p, msk_p = folder / "image" / name, folder / "nodule_mask" / name
    for p in (img_p, msk_p):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: LIDC nodule file not found")
    if row is None:
        row = next((r for r in lidc_table(folder) if r["patient_id"] == patient and int(r["nodule_id"]) == int(nodule_id)), None)
        if row is None:
            raise FileNotFoundError(f"{folder / 'nodules.csv'}: no row for {patient} nodule {nodule_id}")
    image, mask = sitk.ReadImage(str(img_p)), sitk.ReadImage(str(msk_p), sitk.sitkUInt8)
    if image.GetSize() != mask.GetSize() or not np.allclose(image.GetOrigin(), mask.GetOrigin(), atol=1e-3):
        raise ValueError(f"{msk_p}: mask grid differs from {img_p}")
    if not sitk.GetArrayViewFromImage(mask).any():
        raise ValueError(f"{msk_p}: empty nodule mask")
    return LidcNodule(patient, int(nodule_id), image, mask, row, float(row["diameter_mm"]),
                      nodule_type_of(int(row["Texture_value"])), row["Calcification"] != "Absent",
                      (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])))


def mask_centroid_lps(mask: sitk.Image) -> np.ndarray:
    """LPS centroid (mm) ``(3,)`` of the non-zero voxels of a mask image."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].mean(axis=0)
    return np.asarray(mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in idx]))


def _as_image(background) -> sitk.Image:
    if isinstance(background, Volume):
        return background.to_sitk()
    if isinstance(background, sitk.Image):
        return background
    raise TypeError(f"background must be a radreview Volume or a SimpleITK image, got {type(background).__name__}")


def paste_nodule(background, nodule_crop: sitk.Image, nodule_mask: sitk.Image, center_lps,
                 margin_mm: float = 2.0, feather_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Paste a nodule crop into a CT at ``center_lps``; see the module doc for the method.

    Parameters
    ----------
    background : Volume or SimpleITK.Image
        The scan (HU). It is not modified.
    nodule_crop, nodule_mask : SimpleITK.Image
        The nodule's volume of interest (HU) and its binary mask on the same grid (any LPS
        geometry, e.g. from :func:`load_lidc_nodule`).
    center_lps : sequence of 3 floats
        Where the mask's centroid goes, LPS mm.
    margin_mm : float
        Rim of the crop's own tissue kept around the mask (mm).
    feather_mm : float
        Sigma (mm) of the Gaussian that softens the blending edge.

    Returns
    -------
    (array, truth) : numpy.ndarray, numpy.ndarray
        ``array`` float32 ``(z, y, x)`` HU on the background's grid with the nodule pasted;
        ``truth`` bool ``(z, y, x)``: the nodule's voxels on that grid.

    Raises
    ------
    ValueError
        Empty mask, mask/crop grid mismatch, or a centre that puts the nodule outside the scan.
    """
    bg = _as_image(background)
    if nodule_crop.GetSize() != nodule_mask.GetSize():
        raise ValueError(f"nodule crop {nodule_crop.GetSize()} and mask {nodule_mask.GetSize()} differ in size")
    for what, a, b, tol in (("origin", nodule_crop.GetOrigin(), nodule_mask.GetOrigin(), 1e-3),
                            ("spacing", nodule_crop.GetSpacing(), nodule_mask.GetSpacing(), 1e-4),
                            ("direction", nodule_crop.GetDirection(), nodule_mask.GetDirection(), 1e-4)):
        if not np.allclose(a, b, atol=tol):  # the mask would be read on the wrong voxels
            raise ValueError(f"nodule crop and mask differ in {what}: {tuple(round(float(v), 4) for v in a)} vs "
                             f"{tuple(round(float(v), 4) for v in b)}")
    m_arr = sitk.GetArrayFromImage(nodule_mask) > 0
    if not m_arr.any():
        raise ValueError("nodule mask is empty")
    # pad (edge values for the crop, 0 for the masks) so thin crops can be dilated and smoothed
    pad = [4, 4, 4]
    crop = sitk.ZeroFluxNeumannPad(sitk.Cast(nodule_crop, sitk.sitkFloat32), pad, pad)
    w = sitk.GetImageFromArray(m_arr.astype(np.uint8))
    w.CopyInformation(nodule_crop)
    w = sitk.ConstantPad(w, pad, pad, 0)
    m_pad = w
    nodule_crop = crop
    # blending weight on the crop grid: dilate by margin, feather
    if margin_mm > 0:
        rad = [max(1, int(round(margin_mm / s))) for s in nodule_crop.GetSpacing()]
        w = sitk.BinaryDilate(w, rad, sitk.sitkBall)
    w = sitk.Cast(w, sitk.sitkFloat32)
    if feather_mm > 0:
        w = sitk.SmoothingRecursiveGaussian(w, [feather_mm] * 3)
    m_img = sitk.Cast(m_pad, sitk.sitkFloat32)
    # partial volume of a coarser scan grid: extra blur along each axis (FWHM = extra thickness)
    sp_crop = np.asarray(nodule_crop.GetSpacing())
    d_bg = np.asarray(bg.GetDirection()).reshape(3, 3) * np.asarray(bg.GetSpacing())[None, :]
    d_cr = np.asarray(nodule_crop.GetDirection()).reshape(3, 3)
    # scan voxel extent measured along the crop's axes
    sp_bg = np.abs(d_cr.T @ d_bg).max(axis=1)
    extra = np.sqrt(np.maximum(sp_bg**2 - sp_crop**2, 0.0)) / 2.3548
    if extra.max() > 0.05:
        sig = [float(max(e, 1e-3)) for e in extra]
        crop = sitk.SmoothingRecursiveGaussian(crop, sig)
        m_img = sitk.SmoothingRecursiveGaussian(m_img, sig)
    # translation: scan point p samples the crop at p + (centroid - center)
    shift = mask_centroid_lps(m_pad) - np.asarray(center_lps, float)
    tx = sitk.TranslationTransform(3, [float(v) for v in shift])
    # resample only the scan region the crop covers
    size = np.asarray(nodule_crop.GetSize())
    corners = np.array([[i, j, k] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)], float)
    pts = np.array([nodule_crop.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners]) - shift
    inv = np.linalg.inv(d_bg)
    idx = (pts - np.asarray(bg.GetOrigin())) @ inv.T
    lo = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, np.asarray(bg.GetSize()) - 1)
    if np.any(hi < lo):
        raise ValueError(f"centre {tuple(round(float(v), 1) for v in center_lps)} puts the nodule outside the scan")
    ref = sitk.RegionOfInterest(bg, [int(v) for v in hi - lo + 1], [int(v) for v in lo])
    ref = sitk.Cast(ref, sitk.sitkFloat32)
    c_r = sitk.GetArrayFromImage(sitk.Resample(crop, ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    w_r = sitk.GetArrayFromImage(sitk.Resample(w, ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    m_r = sitk.GetArrayFromImage(sitk.Resample(m_img, ref, tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    w_r = np.clip(w_r, 0.0, 1.0)
    w_r[w_r < 0.01] = 0.0  # the Gaussian's far tail: leave the scan's voxels exactly as they were
    out = sitk.GetArrayFromImage(bg).astype(np.float32)
    truth = np.zeros(out.shape, bool)
    sl = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo[::-1], hi[::-1]))
    out[sl] = w_r * c_r + (1.0 - w_r) * out[sl]
    truth[sl] = m_r >= 0.5
    if not truth.any():  # a nodule thinner than the scan's slices: keep its peak voxel as truth
        k = np.unravel_index(int(np.argmax(m_r)), m_r.shape)
        if m_r[k] <= 0:
            raise ValueError(f"centre {tuple(round(float(v), 1) for v in center_lps)} puts the nodule outside the scan")
        truth[tuple(s.start + i for s, i in zip(sl, k))] = True
    return out, truth
