"""GUI-free label editing: brush, eraser, threshold paint, fill, islands, interpolation, sparse undo.

:class:`LabelEditor` edits a label map ``(z, y, x)`` (uint8, one value per structure) on the
displayed volume's grid. Every operation records a :class:`Diff` — the flat indices of the
voxels it changed with their old and new values — so undo memory grows with the voxels
changed, not with the volume (3D Slicer's segment editor keeps whole-volume copies per undo
step; on a 512x512x300 CT that is 75 MB a step). A brush *stroke* (all dabs while the mouse
button is down, between :meth:`LabelEditor.begin_stroke` and :meth:`LabelEditor.end_stroke`)
is one undo step.

Nothing here imports Qt or VTK; the edit panel (``viewer/_qt/edit_panel.py``) only calls these
methods and redraws. :func:`save_edited_mask` stores an edited AI mask as a new version (the
AI output file is kept beside it, never overwritten) and records it in the review store with
the Dice between the AI mask and the edited one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from radreview.studies.hashing import sha256_file

__all__ = ["LabelEditor", "Diff", "PLANE_AXIS", "dice", "save_edited_mask", "masks_dir"]

#: numpy axis (of a ``(z, y, x)`` array) normal to each plane for an axially acquired volume.
#: The GUI passes the real normal axis from :class:`viewer.model.PlaneMapping` instead.
PLANE_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}

#: Undo steps kept by default (the issue asks for at least 50).
DEFAULT_UNDO_STEPS = 100


@dataclass
class Diff:
    """One undo step: ``labels.flat[index]`` went from ``old`` to ``new``.

    ``index`` is int32 when the volume has fewer than 2**31 voxels, else int64; ``old``/``new``
    have the label map's dtype. All three are 1-D of the same length (voxels changed).
    """

    index: np.ndarray
    old: np.ndarray
    new: np.ndarray
    name: str = ""

    @property
    def nbytes(self) -> int:
        return int(self.index.nbytes + self.old.nbytes + self.new.nbytes)

    def __len__(self) -> int:
        return int(self.index.size)


def _axis(plane) -> int:
    if isinstance(plane, (int, np.integer)):
        if not 0 <= int(plane) <= 2:
            raise ValueError(f"plane axis must be 0, 1 or 2 (numpy axis of a (z, y, x) array), got {plane}")
        return int(plane)
    if plane not in PLANE_AXIS:
        raise ValueError(f"unknown plane {plane!r}; expected one of {', '.join(PLANE_AXIS)} or a numpy axis 0..2")
    return PLANE_AXIS[plane]


def dice(a: np.ndarray, b: np.ndarray, label: int | None = None) -> float:
    """Sørensen–Dice coefficient ``2|A∩B| / (|A|+|B|)`` of two label maps of the same shape.

    With ``label`` the masks are ``a == label`` and ``b == label``, else the foregrounds
    (``> 0``). Two empty masks give 1.0 (they agree).

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if a.shape != b.shape:
        raise ValueError(f"Dice needs masks on one grid, got {a.shape} and {b.shape}")
    ma = a == label if label is not None else a > 0
    mb = b == label if label is not None else b > 0
    s = int(ma.sum()) + int(mb.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(ma, mb).sum()) / s


class LabelEditor:
    """Edits ``labelmap`` ``(z, y, x)`` with sparse undo/redo.

    Parameters
    ----------
    labelmap : ndarray (z, y, x), integer
        The label map to edit. Copied unless ``copy=False`` (the AI output is never edited in
        place).
    spacing_zyx : 3 floats
        Voxel spacing in mm along (z, y, x) — the reverse of :attr:`studies.Volume.spacing`.
    image : ndarray (z, y, x), optional
        The image values (HU for CT) for threshold-limited painting and filling.
    max_undo : int
        Undo steps kept; older ones are dropped (default 100).

    Raises
    ------
    ValueError
        If ``labelmap`` is not 3-D integer data, ``image`` has another shape, or a spacing is
        not positive.
    """

    def __init__(self, labelmap: np.ndarray, spacing_zyx, image: np.ndarray | None = None,
                 max_undo: int = DEFAULT_UNDO_STEPS, copy: bool = True) -> None:
        labelmap = np.asarray(labelmap)
        if labelmap.ndim != 3 or not np.issubdtype(labelmap.dtype, np.integer):
            raise ValueError(f"label map must be a 3-D integer array (z, y, x), got {labelmap.dtype} {labelmap.shape}")
        if image is not None and np.shape(image) != labelmap.shape:
            raise ValueError(f"image shape {np.shape(image)} does not match the label map {labelmap.shape}")
        sp = np.asarray(spacing_zyx, dtype=float)
        if sp.shape != (3,) or np.any(sp <= 0):
            raise ValueError(f"spacing_zyx must be 3 positive numbers in mm, got {spacing_zyx}")
        self.labels = labelmap.copy() if copy else labelmap
        self.spacing = sp
        self.image = image
        self.max_undo = int(max_undo)
        self._undo: list[Diff] = []
        self._redo: list[Diff] = []
        self._stroke: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._stroke_name = ""
        self._last_dab: np.ndarray | None = None
        self._itype = np.int32 if self.labels.size < 2**31 else np.int64
        self.changed_bbox: tuple[slice, slice, slice] | None = None  # last region changed (for redraw)
        self.version = 0  # counts every change of ``labels`` in place (edits, undo, redo)

    # ------------------------------------------------------------------ undo bookkeeping
    @property
    def undo_bytes(self) -> int:
        """Bytes held by the undo and redo stacks (indices + old + new values)."""
        return sum(d.nbytes for d in self._undo) + sum(d.nbytes for d in self._redo)

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def undo_steps(self) -> int:
        return len(self._undo)

    def _apply(self, flat: np.ndarray, new, bbox=None) -> int:
        """Set ``labels.flat[flat] = new`` for voxels that change; record them. Returns count."""
        lab = self.labels.reshape(-1)
        old = lab[flat]
        new = np.broadcast_to(np.asarray(new, dtype=lab.dtype), old.shape)
        ch = old != new
        if not ch.any():
            return 0
        flat, old, new = flat[ch].astype(self._itype), old[ch], new[ch].copy()
        lab[flat] = new
        self.version += 1
        self.changed_bbox = bbox
        if self._stroke is not None:
            self._stroke.append((flat, old))
        else:
            self._push(Diff(flat, old, new, self._stroke_name))
        return int(flat.size)

    def _push(self, diff: Diff) -> None:
        if not len(diff):
            return
        self._undo.append(diff)
        self._redo.clear()
        while len(self._undo) > self.max_undo:
            self._undo.pop(0)

    def begin_stroke(self, name: str = "stroke") -> None:
        """Start grouping operations into one undo step (mouse press)."""
        if self._stroke is not None:
            self.end_stroke()
        self._stroke = []
        self._stroke_name = name
        self._last_dab = None

    def end_stroke(self) -> Diff | None:
        """Close the current stroke (mouse release); returns its :class:`Diff` (None if nothing changed)."""
        parts, self._stroke = self._stroke, None
        self._last_dab = None
        if not parts:
            return None
        idx = np.concatenate([p[0] for p in parts])
        old = np.concatenate([p[1] for p in parts])
        # a voxel painted by several dabs: keep its value from before the stroke (first record)
        uniq, first = np.unique(idx, return_index=True)
        old = old[first]
        new = self.labels.reshape(-1)[uniq]
        keep = old != new
        diff = Diff(uniq[keep].astype(self._itype), old[keep], new[keep], self._stroke_name)
        self._push(diff)
        return diff if len(diff) else None

    def undo(self) -> bool:
        """Revert the last step; False if there is none."""
        if self._stroke is not None:
            self.end_stroke()
        if not self._undo:
            return False
        d = self._undo.pop()
        self.labels.reshape(-1)[d.index] = d.old
        self.version += 1
        self._redo.append(d)
        self.changed_bbox = None
        return True

    def redo(self) -> bool:
        """Re-apply the last undone step; False if there is none."""
        if not self._redo:
            return False
        d = self._redo.pop()
        self.labels.reshape(-1)[d.index] = d.new
        self.version += 1
        self._undo.append(d)
        self.changed_bbox = None
        return True

    # ------------------------------------------------------------------ geometry helpers
    def _brush_region(self, center, radius_mm: float, mode: str, axis: int):
        """Bounding box slices and boolean ball/disc mask of a brush dab."""
        if radius_mm <= 0:
            raise ValueError(f"brush radius must be > 0 mm, got {radius_mm}")
        if mode not in ("disc2d", "sphere3d"):
            raise ValueError(f"brush mode must be 'disc2d' or 'sphere3d', got {mode!r}")
        c = np.asarray(center, dtype=float)
        shape = self.labels.shape
        lo: list[int] = []
        hi: list[int] = []
        for a in range(3):
            if mode == "disc2d" and a == axis:
                k = int(np.clip(np.rint(c[a]), 0, shape[a] - 1))
                lo.append(k)
                hi.append(k + 1)
            else:
                r = radius_mm / self.spacing[a]
                lo.append(int(max(0, np.floor(c[a] - r))))
                hi.append(int(min(shape[a], np.ceil(c[a] + r) + 1)))
            if hi[-1] <= lo[-1]:
                return None, None
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d2 = 0.0
        for a, g in enumerate((zz, yy, xx)):
            if mode == "disc2d" and a == axis:
                continue
            d2 = d2 + ((g - c[a]) * self.spacing[a]) ** 2
        mask = np.broadcast_to(d2 <= radius_mm**2, tuple(h - l for l, h in zip(lo, hi)))
        return tuple(slice(l, h) for l, h in zip(lo, hi)), mask

    def _flat(self, bbox, mask) -> np.ndarray:
        idx = np.nonzero(mask)
        coords = [i + s.start for i, s in zip(idx, bbox)]
        return np.ravel_multi_index(coords, self.labels.shape)

    def _hu_ok(self, bbox, hu_range):
        if hu_range is None:
            return True
        if self.image is None:
            raise ValueError("threshold-limited painting needs the image (HU) given to LabelEditor")
        lo, hi = hu_range
        v = self.image[bbox]
        return (v >= lo) & (v <= hi)

    # ------------------------------------------------------------------ tools
    def paint(self, center_zyx, radius_mm: float, value: int, mode: str = "disc2d", plane="axial",
              hu_range: tuple[float, float] | None = None, only_label: int | None = None) -> int:
        """Paint a brush dab of ``value``; returns the number of voxels changed.

        Parameters
        ----------
        center_zyx : 3 floats
            Dab centre as a continuous voxel index ``(z, y, x)``.
        radius_mm : float
            Brush radius in mm (physical, so the brush is round on anisotropic voxels).
        value : int
            Label value written (0 erases).
        mode : {"disc2d", "sphere3d"}
            A disc in the slice through the centre normal to ``plane``, or a 3-D ball.
        plane : {"axial", "coronal", "sagittal"} or int
            The slice plane of a disc: a name (axially acquired volume) or the numpy axis of
            the plane normal (the GUI passes ``2 - PlaneMapping.normal_axis``).
        hu_range : (low, high), optional
            Only voxels whose image value (HU) lies within ``[low, high]`` are painted.
        only_label : int, optional
            Only voxels currently holding this label are changed (the eraser uses it).

        Raises
        ------
        ValueError
            Non-positive radius, unknown mode/plane, value outside the label dtype, or
            ``hu_range`` without an image.
        """
        info = np.iinfo(self.labels.dtype)
        if not info.min <= int(value) <= info.max:
            raise ValueError(f"label value {value} does not fit the label map's {self.labels.dtype}")
        bbox, mask = self._brush_region(center_zyx, radius_mm, mode, _axis(plane))
        if bbox is None:
            return 0
        mask = mask & self._hu_ok(bbox, hu_range)
        if only_label is not None:
            mask = mask & (self.labels[bbox] == only_label)
        return self._apply(self._flat(bbox, mask), value, bbox)

    def erase(self, center_zyx, radius_mm: float, mode: str = "disc2d", plane="axial",
              only_label: int | None = None) -> int:
        """Set voxels under the brush to 0 (all labels, or only ``only_label``); returns voxels changed."""
        return self.paint(center_zyx, radius_mm, 0, mode=mode, plane=plane, only_label=only_label)

    def stroke_to(self, center_zyx, radius_mm: float, value: int, **kw) -> int:
        """Paint a dab and fill the gap from the previous dab of this stroke (dabs every radius/2).

        Mouse-move events can be far apart at speed; without the in-between dabs a fast stroke
        would be a dotted line. Same keywords as :meth:`paint`.
        """
        c = np.asarray(center_zyx, dtype=float)
        n = 0
        boxes = []
        centers = []
        if self._last_dab is not None:
            step = max(0.5 * radius_mm, 1e-3)
            dist = float(np.linalg.norm((c - self._last_dab) * self.spacing))
            k = int(dist // step)
            centers = [self._last_dab + t * (c - self._last_dab) for t in np.linspace(0, 1, k + 2)[1:-1]]
        for cc in [*centers, c]:
            self.changed_bbox = None
            m = self.paint(cc, radius_mm, value, **kw)
            if m:
                n += m
                boxes.append(self.changed_bbox)
        self._last_dab = c
        # the union of the dabs' boxes: what a view must redraw
        self.changed_bbox = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes))
                                  for a in range(3)) if boxes else None
        return n

    def fill(self, seed_zyx, value: int, plane="axial", hu_range: tuple[float, float] | None = None) -> int:
        """Flood-fill the connected region of the seed's label on its slice with ``value``.

        The region is the 4-connected set of voxels in the seed's slice (normal to ``plane``)
        with the seed's current label (and, with ``hu_range``, an image value within range).
        Seeding inside a closed drawn contour fills its interior. Returns voxels changed.

        Raises
        ------
        ValueError
            If the seed lies outside the volume.
        """
        from scipy import ndimage

        seed = tuple(int(np.rint(s)) for s in seed_zyx)
        if any(not 0 <= s < n for s, n in zip(seed, self.labels.shape)):
            raise ValueError(f"fill seed {seed} is outside the label map {self.labels.shape}")
        axis = _axis(plane)
        bbox = [slice(None)] * 3
        bbox[axis] = slice(seed[axis], seed[axis] + 1)
        bbox = tuple(slice(*s.indices(n)[:2]) for s, n in zip(bbox, self.labels.shape))
        region = self.labels[bbox] == self.labels[seed]
        region &= self._hu_ok(bbox, hu_range)
        structure = np.zeros((3, 3, 3), bool)
        structure[1, 1, 1] = True
        for a in range(3):
            if a != axis:
                idx = [1, 1, 1]
                idx[a] = 0
                structure[tuple(idx)] = True
                idx[a] = 2
                structure[tuple(idx)] = True
        lab, _ = ndimage.label(region, structure=structure)
        local = tuple(s - b.start for s, b in zip(seed, bbox))
        if lab[local] == 0:
            return 0
        return self._apply(self._flat(bbox, lab == lab[local]), value, bbox)

    def remove_islands(self, min_voxels: int, label: int | None = None) -> int:
        """Set 3-D connected components (26-connectivity) smaller than ``min_voxels`` to 0.

        Applies to ``label`` or to every label present. Returns voxels changed.
        """
        from scipy import ndimage

        values = [label] if label is not None else [int(v) for v in np.unique(self.labels) if v != 0]
        flats = []
        for v in values:
            objs = ndimage.find_objects((self.labels == v).astype(np.uint8))
            if not objs or objs[0] is None:
                continue
            box = objs[0]
            m = self.labels[box] == v
            lab, n = ndimage.label(m, structure=np.ones((3, 3, 3), bool))
            if n <= 1 and m.sum() >= min_voxels:
                continue
            sizes = np.bincount(lab.ravel())
            small = np.nonzero(sizes < min_voxels)[0]
            small = small[small > 0]
            if small.size:
                flats.append(self._flat(box, np.isin(lab, small)))
        if not flats:
            return 0
        return self._apply(np.concatenate(flats), 0)

    def interpolate(self, value: int, plane="axial") -> int:
        """Fill the slices between drawn slices of ``value`` (3D Slicer's "Fill between slices").

        Shape-based interpolation (Raya & Udupa 1990; Herman et al. 1992): each pair of
        consecutive drawn slices along the normal of ``plane`` is turned into signed distance
        maps in mm (``scipy.ndimage.distance_transform_edt`` with the in-plane pixel spacing),
        blended linearly at every slice in between, and the zero level set is the interpolated
        contour. ITK's ``MorphologicalContourInterpolator`` (Albu et al. 2008), which the issue
        names, is an ITK remote module that the SimpleITK 2.5 wheels do not ship. Only
        background voxels are written, other labels are never overwritten. Returns voxels
        changed.
        """
        from scipy import ndimage

        axis = _axis(plane)
        mask = self.labels == value
        objs = ndimage.find_objects(mask.astype(np.uint8))
        if not objs or objs[0] is None:
            return 0
        box = list(objs[0])
        for a in range(3):  # a margin in-plane so the distance maps see outside the contours
            if a != axis:
                box[a] = slice(max(0, box[a].start - 2), min(self.labels.shape[a], box[a].stop + 2))
        box = tuple(box)
        sub = np.moveaxis(mask[box], axis, 0)
        sampling = [s for a, s in enumerate(self.spacing) if a != axis]
        drawn = np.nonzero(sub.reshape(sub.shape[0], -1).any(axis=1))[0]

        def sdf(m):  # negative inside, positive outside, mm
            return ndimage.distance_transform_edt(~m, sampling=sampling) - ndimage.distance_transform_edt(m, sampling=sampling)

        out = np.zeros_like(sub)
        for k0, k1 in zip(drawn[:-1], drawn[1:]):
            if k1 - k0 < 2:
                continue
            d0, d1 = sdf(sub[k0]), sdf(sub[k1])
            for k in range(k0 + 1, k1):
                t = (k - k0) / (k1 - k0)
                out[k] = (1 - t) * d0 + t * d1 <= 0
        add = np.moveaxis(out, 0, axis) & (self.labels[box] == 0)
        return self._apply(self._flat(box, add), value, box)


# ---------------------------------------------------------------------- edited mask versions
def masks_dir() -> Path:
    """Folder for mask files: ``$RADREVIEW_MASK_DIR``, else ``<user data dir>/radreview/masks``
    (platformdirs), next to where the review database lives by default."""
    if os.environ.get("RADREVIEW_MASK_DIR"):
        return Path(os.environ["RADREVIEW_MASK_DIR"])
    if os.environ.get("RADREVIEW_DB"):  # tests and private databases keep their masks beside it
        return Path(os.environ["RADREVIEW_DB"]).parent / "masks"
    import platformdirs

    return Path(platformdirs.user_data_dir("radreview", appauthor=False)) / "masks"




def save_edited_mask(store, volume, study: str, label: str, ai_labels: np.ndarray, edited: np.ndarray,
                     reviewer: str, label_value: int | None = None, folder: str | os.PathLike | None = None) -> dict:
    """Save an edited AI mask as a new version; the AI mask is kept, never overwritten.

    Writes ``edited`` (and, once per content, ``ai_labels``) as NIfTI label maps on
    ``volume``'s exact grid under ``folder`` (default :func:`masks_dir` / study key, files
    named by their SHA-256 so nothing is ever overwritten), then calls
    ``store.save_mask_version`` which writes the version row and an audit row ("mask-edit")
    in one transaction.

    Parameters
    ----------
    store : review.store.ReviewStore
    volume : studies.Volume
        The displayed volume (grid of both label maps).
    study : str
        Study key (:func:`review.findings.study_key`).
    label : str
        The finding or label name edited (e.g. ``"ct-organs-2p5d:liver"``).
    ai_labels, edited : ndarray (z, y, x), integer
        The AI output and the edited label map.
    reviewer : str
    label_value : int, optional
        Dice is computed for this label value; default the whole foreground.

    Returns
    -------
    dict
        ``{"version", "path", "sha256", "ai_path", "ai_sha256", "dice_vs_ai", "voxels_changed", "ts"}``.

    Raises
    ------
    ValueError
        Shapes differ from the volume, or the reviewer name is empty.
    """
    from radreview.studies.imagefile import save_label_file

    if not reviewer or not reviewer.strip():
        raise ValueError("saving an edited mask needs a reviewer name")
    if ai_labels.shape != volume.array.shape or edited.shape != volume.array.shape:
        raise ValueError(f"mask shapes {ai_labels.shape}/{edited.shape} do not match the volume {volume.array.shape}")
    base = Path(folder) if folder else masks_dir()
    out = base / hashlib.sha1(study.encode()).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, arr in (("ai", ai_labels), ("edited", edited)):
        tmp = out / f".{kind}-{os.getpid()}.nii.gz"
        save_label_file(np.ascontiguousarray(arr.astype(np.uint8, copy=False)), volume, tmp)
        sha = sha256_file(tmp)
        final = out / f"{kind}-{sha[:16]}.nii.gz"
        if final.exists():
            tmp.unlink()
        else:
            tmp.replace(final)
        paths[kind] = (final, sha)
    d = dice(ai_labels, edited, label_value)
    changed = int(np.count_nonzero(ai_labels != edited))
    res = store.save_mask_version(study, label, str(paths["edited"][0]), paths["edited"][1], reviewer, d,
                                  ai_path=str(paths["ai"][0]), ai_sha256=paths["ai"][1], voxels_changed=changed)
    return {"version": res["version"], "ts": res["ts"], "path": str(paths["edited"][0]), "sha256": paths["edited"][1],
            "ai_path": str(paths["ai"][0]), "ai_sha256": paths["ai"][1], "dice_vs_ai": d, "voxels_changed": changed}
