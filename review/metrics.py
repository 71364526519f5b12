"""Comparison metrics between two masks on the same grid (AI "test" vs reference/manual).

Definitions follow the Medical Segmentation Decathlon / MONAI (``monai.metrics``,
``get_mask_edges`` + ``get_surface_distance``):

* **surface** of a mask = its voxels with at least one face neighbour (6-connectivity) outside
  it; voxels on the edge of the grid count as surface (the grid is padded with background);
* **directed surface distances** A->B = for every surface voxel of A, the Euclidean distance
  (mm, with the voxel spacing) from its centre to the nearest surface-voxel centre of B;
* **HD95** = 95th percentile of the union of both directed sets, **HD** = its maximum,
  **ASSD** = its mean; **MSSD** (mean signed surface distance) = the mean of the same union,
  each distance signed positive where the *test* surface lies outside the reference (a test
  surface voxel outside the reference mask, or a reference surface voxel inside the test mask)
  and negative where it lies inside;
* Dice (Dice 1945) ``2|A∩B| / (|A|+|B|)``, Jaccard ``|A∩B| / |A∪B|``, sensitivity
  ``|A∩B| / |B|``, precision ``|A∩B| / |A|`` (A = test, B = reference).

Surface distances are computed on the bounding box of the two masks only (a crop one voxel
larger on every side), with a k-d tree (``scipy.spatial.cKDTree``) over the surface voxel
centres in mm, so a whole CT never gets a distance map. Voxels on both surfaces have distance 0
and are not queried.

Empty masks: :func:`mask_metrics` returns every metric ``None`` with ``empty="both"`` when both
are empty; when one is empty Dice and Jaccard are 0, distances ``None`` and ``empty`` names
the empty one (``"test"`` or ``"reference"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "dice", "surface_distances", "hd95", "assd",
    "bounding_box", "surface_mask", "directed_distances", "SurfaceDistances", "mask_surface_distances",
    "mask_metrics", "lesion_counts", "LESION_DICE",
]

#: A reference lesion counts as detected when its Dice with some test component exceeds this
#: (the threshold named in issue 7; the BraTS/LiTS lesion-wise evaluations use similar overlaps).
LESION_DICE = 0.1


# ----------------------------------------------------------------------------- helpers
def bounding_box(*masks: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Smallest box holding every ``True`` voxel of the masks (same shape), grown by ``margin``
    voxels and clipped to the grid; ``None`` when all are empty. Returns one slice per axis."""
    shape = masks[0].shape
    lo = np.full(len(shape), np.iinfo(np.int64).max)
    hi = np.full(len(shape), -1)
    for m in masks:
        for ax in range(m.ndim):
            other = tuple(a for a in range(m.ndim) if a != ax)
            idx = np.flatnonzero(m.any(axis=other))
            if idx.size:
                lo[ax] = min(lo[ax], idx[0])
                hi[ax] = max(hi[ax], idx[-1])
    if (hi < 0).any():
        return None
    return tuple(slice(max(int(a) - margin, 0), min(int(b) + 1 + margin, n)) for a, b, n in zip(lo, hi, shape))


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of a boolean mask: voxels with a face neighbour (6-connectivity) outside
    the mask or outside the grid. Same shape as ``mask``."""
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, 1, constant_values=False)
    interior = p[1:-1, 1:-1, 1:-1].copy()
    for ax in range(3):
        for sh in (-1, 1):
            sl = [slice(1, -1)] * 3
            sl[ax] = slice(1 + sh, p.shape[ax] - 1 + sh)
            interior &= p[tuple(sl)]
    return m & ~interior


def _tree(points_mm: np.ndarray):
    from scipy.spatial import cKDTree

    return cKDTree(points_mm)


def directed_distances(src_surface: np.ndarray, dst_surface: np.ndarray, spacing_zyx) -> np.ndarray:
    """Distance (mm) from each ``True`` voxel of ``src_surface`` to the nearest ``True`` voxel of
    ``dst_surface`` (both boolean ``(z, y, x)``, same grid, ``spacing_zyx`` mm). 1-D float64 in
    the C order of ``src_surface``'s voxels; voxels on both surfaces get exactly 0."""
    sp = np.asarray(spacing_zyx, dtype=float)
    src_idx = np.argwhere(src_surface)
    out = np.zeros(len(src_idx))
    if not len(src_idx):
        return out
    shared = dst_surface[tuple(src_idx.T)]
    todo = ~shared
    if todo.any():
        tree = _tree(np.argwhere(dst_surface) * sp)
        d, _ = tree.query(src_idx[todo] * sp, k=1)
        out[todo] = d
    return out


@dataclass
class SurfaceDistances:
    """Both directed surface-distance sets of a pair of masks (mm).

    ``test_to_ref``: one distance per test surface voxel; ``ref_to_test``: one per reference
    surface voxel; ``*_sign``: +1 where that surface voxel puts the test surface outside the
    reference (test voxel outside the reference mask / reference voxel inside the test mask),
    -1 inside, 0 where the distance is 0.
    """

    test_to_ref: np.ndarray
    ref_to_test: np.ndarray
    test_sign: np.ndarray
    ref_sign: np.ndarray

    @property
    def all(self) -> np.ndarray:
        return np.concatenate([self.test_to_ref, self.ref_to_test])

    @property
    def signed(self) -> np.ndarray:
        return np.concatenate([self.test_to_ref * self.test_sign, self.ref_to_test * self.ref_sign])


def mask_surface_distances(test: np.ndarray, reference: np.ndarray, spacing_zyx,
                           cropped: bool = False) -> SurfaceDistances | None:
    """Surface distances of two boolean masks ``(z, y, x)`` (``spacing_zyx`` in mm) computed on
    their joint bounding box; ``None`` when either mask is empty.

    Raises
    ------
    ValueError
        If the masks differ in shape or are not 3-D.
    """
    t = np.asarray(test, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    if t.shape != r.shape or t.ndim != 3:
        raise ValueError(f"masks must be 3-D with equal shapes, got {t.shape} and {r.shape}")
    if not t.any() or not r.any():
        return None
    if not cropped:
        box = bounding_box(t, r, margin=1)
        t, r = t[box], r[box]
    st, sr = surface_mask(t), surface_mask(r)  # pads the grid edge with background itself
    d_tr = directed_distances(st, sr, spacing_zyx)
    d_rt = directed_distances(sr, st, spacing_zyx)
    sign_t = np.where(r[st], -1.0, 1.0)  # test surface voxel inside the reference -> test surface inside
    sign_r = np.where(t[sr], 1.0, -1.0)  # reference surface voxel inside the test -> test surface outside
    return SurfaceDistances(d_tr, d_rt, np.where(d_tr > 0, sign_t, 0.0), np.where(d_rt > 0, sign_r, 0.0))


def mask_metrics(test: np.ndarray, reference: np.ndarray, spacing_zyx, cropped: bool = False) -> dict:
    """Overlap, surface and volume metrics of two boolean masks ``(z, y, x)`` on one grid.

    Parameters
    ----------
    test, reference : numpy.ndarray
        Boolean (or 0/1) masks, same shape ``(z, y, x)``.
    spacing_zyx : sequence of 3 floats
        Voxel spacing in mm, ``(sz, sy, sx)``.
    cropped : bool
        The masks are already cut to their joint bounding box (skips finding it again).

    Returns
    -------
    dict
        ``dice``, ``jaccard``, ``sensitivity``, ``precision`` (0..1), ``hd95_mm``, ``hd_mm``,
        ``assd_mm``, ``mssd_mm`` (mm), ``volume_test_ml``, ``volume_reference_ml``,
        ``volume_diff_ml`` (test - reference, mL), ``volume_diff_pct`` (% of the reference),
        ``empty`` (``None``, ``"both"``, ``"test"`` or ``"reference"``). Undefined values are
        ``None`` (see the module docstring for the empty cases).
    """
    t = np.asarray(test, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    if t.shape != r.shape:
        raise ValueError(f"masks must have equal shapes, got {t.shape} and {r.shape}")
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    nt, nr = int(t.sum()), int(r.sum())
    out: dict = {k: None for k in ("dice", "jaccard", "hd95_mm", "hd_mm", "assd_mm", "mssd_mm",
                                   "sensitivity", "precision", "volume_diff_pct")}
    out.update(volume_test_ml=nt * voxel_ml, volume_reference_ml=nr * voxel_ml,
               volume_diff_ml=(nt - nr) * voxel_ml, empty=None)
    if nt == 0 and nr == 0:
        out["empty"] = "both"
        return out
    if nr:
        out["volume_diff_pct"] = 100.0 * (nt - nr) / nr
    box = (slice(None),) * 3 if cropped else bounding_box(t, r)
    inter = int((t[box] & r[box]).sum())
    out["dice"] = 2.0 * inter / (nt + nr)
    out["jaccard"] = inter / (nt + nr - inter)
    out["sensitivity"] = inter / nr if nr else None
    out["precision"] = inter / nt if nt else None
    if nt == 0 or nr == 0:
        out["empty"] = "test" if nt == 0 else "reference"
        return out
    sd = mask_surface_distances(t, r, spacing_zyx, cropped=cropped)
    assert sd is not None  # both masks are non-empty here (checked above)
    d = sd.all
    out["hd95_mm"] = float(np.percentile(d, 95))
    out["hd_mm"] = float(d.max())
    out["assd_mm"] = float(d.mean())
    out["mssd_mm"] = float(sd.signed.mean())
    return out


def lesion_counts(test: np.ndarray, reference: np.ndarray, min_dice: float = LESION_DICE, cropped: bool = False) -> dict:
    """Lesion-level counts of two boolean masks ``(z, y, x)``: connected components
    (26-connectivity, SimpleITK ``ConnectedComponent`` with full connectivity) of each mask.

    Returns ``{"reference", "detected", "missed", "test_only"}``: the number of reference
    components, those with Dice > ``min_dice`` with some test component (detected), the others
    (missed), and test components with Dice <= ``min_dice`` with every reference component.
    """
    import SimpleITK as sitk

    t = np.asarray(test, dtype=bool)
    r = np.asarray(reference, dtype=bool)
    if not cropped:
        box = bounding_box(t, r)
        if box is None:
            return {"reference": 0, "detected": 0, "missed": 0, "test_only": 0}
        t, r = t[box], r[box]

    def components(m: np.ndarray) -> tuple[np.ndarray, int]:
        img = sitk.ConnectedComponent(sitk.GetImageFromArray(m.astype(np.uint8)), True)
        arr = sitk.GetArrayFromImage(img)  # a copy: safe after ``img`` is freed
        return arr, int(arr.max())

    lt, nt = components(t)
    lr, nr = components(r)
    size_t = np.bincount(lt.ravel(), minlength=nt + 1)
    size_r = np.bincount(lr.ravel(), minlength=nr + 1)
    both = (lt > 0) & (lr > 0)
    matched_r = np.zeros(nr + 1, dtype=bool)
    matched_t = np.zeros(nt + 1, dtype=bool)
    if both.any():
        pair = lr[both].astype(np.int64) * (nt + 1) + lt[both]
        if (nr + 1) * (nt + 1) <= 1 << 22:  # few components: a histogram is faster than sorting
            counts = np.bincount(pair, minlength=(nr + 1) * (nt + 1))
            keys = np.flatnonzero(counts)
            inter = counts[keys]
        else:
            keys, inter = np.unique(pair, return_counts=True)
        ir, it = keys // (nt + 1), keys % (nt + 1)
        d = 2.0 * inter / (size_r[ir] + size_t[it])
        ok = d > min_dice
        matched_r[ir[ok]] = True
        matched_t[it[ok]] = True
    detected = int(matched_r[1:].sum())
    return {"reference": nr, "detected": detected, "missed": nr - detected, "test_only": int(nt - matched_t[1:].sum())}


# ------------------------------------------------ compatibility API (spacing in x, y, z)
def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice coefficient ``2|A∩B| / (|A|+|B|)`` (Dice 1945) of two masks of equal shape (any
    axis order; cast to bool), in 0..1; ``None`` when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    s = int(a.sum()) + int(b.sum())
    if s == 0:
        return None
    return 2.0 * int((a & b).sum()) / s


def surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray | None:
    """Union of both directed surface-distance sets (mm) of boolean ``(z, y, x)`` masks ``a``, ``b``.

    ``spacing`` is ``(sx, sy, sz)`` mm (the :class:`~radreview.studies.Volume` order). ``None``
    if either mask is empty. (The earlier version kept a NumPy view of a temporary SimpleITK
    image, freed before use, and could crash the process; this one holds no SimpleITK memory.)
    """
    sd = mask_surface_distances(a, b, tuple(float(s) for s in spacing)[::-1])
    return None if sd is None else sd.all


def hd95(a, b, spacing) -> float | None:
    """95th-percentile symmetric Hausdorff distance (mm) of boolean ``(z, y, x)`` masks.

    ``spacing`` is ``(sx, sy, sz)`` mm. The 95th percentile of the union of both directed
    surface-distance sets (module doc; MONAI ``compute_hausdorff_distance(percentile=95)``);
    ``None`` if a mask is empty.
    """
    d = surface_distances(a, b, spacing)
    return None if d is None else float(np.percentile(d, 95))


def assd(a, b, spacing) -> float | None:
    """Average symmetric surface distance (mm) of boolean ``(z, y, x)`` masks.

    ``spacing`` is ``(sx, sy, sz)`` mm. The mean of the union of both directed surface-distance
    sets (module doc; MONAI ``compute_average_surface_distance(symmetric=True)``); ``None`` if a
    mask is empty.
    """
    d = surface_distances(a, b, spacing)
    return None if d is None else float(d.mean())
