"""Reference segmentations for an open study: label maps, DICOM SEG and DICOM RTSTRUCT.

:func:`load_reference` reads any of them onto the study's exact grid ``(z, y, x)``:

* **label map** (NIfTI, NRRD, MHA; SimpleITK): names from a sidecar JSON (``<file>.json`` or
  the file name with its image suffix replaced by ``.json``: ``{"1": "liver", ...}`` or
  ``{"labels": {...}}``), else from ``names`` (one per foreground value, ascending), else
  ``"label N"``;
* **DICOM SEG** (highdicom ``segread``/``get_volume``), binary or fractional (a fractional
  segment is the voxels >= 0.5 of *Maximum Fractional Value*), several segments; names are the
  *Segment Label* (0062,0005), values the *Segment Number*;
* **DICOM RTSTRUCT**: contours rasterised by rt-utils (OpenCV polygon fill) on the study's own
  DICOM slices; names are the *ROI Name* (3006,0026), values 1..n in ROI order.

A DICOM reference whose *Frame of Reference UID* differs from the study's is refused. A grid
that differs from the study's only by a whole-voxel offset (e.g. a SEG that omits empty frames)
is pasted in place; any other grid is resampled with nearest neighbour (SimpleITK), which is
stated in ``warnings``; a grid that does not overlap the study is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .imagefile import IMAGE_SUFFIXES, is_image_file
from .volume import Volume
from radreview.studies.errors import RadreviewError

__all__ = ["ReferenceLabels", "LabelImportError", "load_reference", "read_sidecar_names", "place_on_grid",
           "SEG_SOP_CLASS", "RTSTRUCT_SOP_CLASS", "series_files"]

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set Storage


class LabelImportError(ValueError, RadreviewError):
    """A reference segmentation cannot be used for the study; the message names the file and why."""


@dataclass
class ReferenceLabels:
    """A reference label map on a study's grid.

    ``array``: uint16 ``(z, y, x)``, the study volume's shape; 0 background. ``names``: label
    value -> name. ``warnings``: what was changed (resampling, overlapping segments...).
    ``source``: the file read. ``kind``: ``"labelmap"``, ``"seg"`` or ``"rtstruct"``.
    """

    array: np.ndarray
    names: dict[int, str]
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    kind: str = "labelmap"


# ------------------------------------------------------------------------ geometry
def _grid_corners_index(shape_zyx, spacing, origin, direction, volume: Volume) -> np.ndarray:
    """Corners of a grid (voxel centres) as continuous ``(i, j, k)`` indices of ``volume``."""
    nz, ny, nx = shape_zyx
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
    m = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing, float)[None, :]
    lps = np.asarray(origin, float) + corners @ m.T
    return volume.lps_to_index(lps)


def place_on_grid(array: np.ndarray, spacing, origin, direction, volume: Volume, what: str) -> tuple[np.ndarray, list[str]]:
    """Put a label array ``(z, y, x)`` with its own geometry (spacing ``(sx, sy, sz)`` mm, LPS
    origin, 3x3 direction) onto ``volume``'s grid. Returns ``(array on the volume's shape,
    warnings)``.

    Same grid: unchanged. Same spacing and direction with an origin a whole number of voxels
    away: pasted (cropped to the study). Otherwise nearest-neighbour resampling (SimpleITK
    ``Resample``, ``sitkNearestNeighbor``), stated in the warnings.

    Raises
    ------
    LabelImportError
        If the grid does not overlap the study's (message names ``what``).
    """
    import SimpleITK as sitk

    shape = volume.array.shape
    direction = np.asarray(direction, float).reshape(3, 3)
    idx = _grid_corners_index(array.shape, spacing, origin, direction, volume)
    nx, ny, nz = volume.size
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    if (hi < -0.5).any() or (lo > np.array([nx, ny, nz]) - 0.5).any():
        raise LabelImportError(f"{what}: its grid does not overlap the study (it spans study voxel indices "
                               f"{np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()}, the study is {nx}x{ny}x{nz})")
    same_axes = np.allclose(direction, volume.direction, atol=1e-4) and np.allclose(spacing, volume.spacing, rtol=1e-4, atol=1e-4)
    if same_axes:
        off = volume.lps_to_index(np.asarray(origin, float))
        if np.allclose(off, np.rint(off), atol=1e-2):
            oi, oj, ok = (int(v) for v in np.rint(off))
            if (oi, oj, ok) == (0, 0, 0) and array.shape == shape:
                return array, []
            out = np.zeros(shape, dtype=array.dtype)
            sz, sy, sx = array.shape
            dst = tuple(slice(max(o, 0), min(o + s, n)) for o, s, n in zip((ok, oj, oi), (sz, sy, sx), shape))
            src = tuple(slice(d.start - o, d.stop - o) for d, o in zip(dst, (ok, oj, oi)))
            out[dst] = array[src]
            return out, []
    # the same voxel centres in another axis order or orientation (e.g. NIfTI RAS vs DICOM LPS):
    # nearest neighbour is then exact, only the axes are permuted or flipped
    m_src = direction * np.asarray(spacing, float)[None, :]
    m_vol = volume.direction * np.asarray(volume.spacing)[None, :]
    perm = np.linalg.solve(m_vol, m_src)
    exact = (np.allclose(perm, np.rint(perm), atol=1e-3) and np.allclose(np.abs(np.rint(perm)).sum(axis=0), 1)
             and np.allclose(np.abs(np.rint(perm)).sum(axis=1), 1)
             and np.allclose(idx[0], np.rint(idx[0]), atol=1e-2))
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(direction.ravel()))
    ref = sitk.Image(nx, ny, nz, sitk.sitkUInt8)
    ref.SetSpacing(volume.spacing)
    ref.SetOrigin(volume.origin)
    ref.SetDirection(tuple(volume.direction.ravel()))
    res = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, img.GetPixelID())
    out = sitk.GetArrayFromImage(res)  # a copy, independent of ``res``
    if not out.any() and array.any():
        raise LabelImportError(f"{what}: no labelled voxel falls inside the study's grid")
    if exact:
        return out, []
    return out, [f"{what}: its grid ({array.shape[2]}x{array.shape[1]}x{array.shape[0]}, spacing "
                 f"{', '.join(f'{s:.4g}' for s in spacing)} mm) differs from the study's; resampled onto the study "
                 "grid with nearest neighbour"]


def _check_frame_of_reference(uid: str, volume: Volume, what: str, warnings: list[str]) -> None:
    study = getattr(volume.info, "frame_of_reference_uid", "") or ""
    if uid and study and uid != study:
        raise LabelImportError(f"{what}: Frame of Reference UID {uid} differs from the study's {study}; "
                               "the segmentation belongs to another patient coordinate system")
    if uid and not study:
        warnings.append(f"{what}: the study records no Frame of Reference UID; placed by its patient coordinates only")


# ------------------------------------------------------------------------ label maps
def read_sidecar_names(path: str | os.PathLike) -> dict[int, str] | None:
    """Names from a sidecar JSON beside a label map (``<file>.json``, ``<stem>.json``, or the
    ``findings.json`` that ``radreview infer`` writes beside ``segmentation.nii.gz``); ``None``
    if there is none.

    Raises
    ------
    LabelImportError
        If the sidecar exists but is not ``{"value": "name", ...}`` (optionally under ``"labels"``).
    """
    p = Path(path)
    name = p.name
    stem = name
    for s in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(s):
            stem = name[: -len(s)]
            break
    for cand in (p.with_name(name + ".json"), p.with_name(stem + ".json"), p.with_name("findings.json")):
        if cand.is_file():
            try:
                data = json.loads(cand.read_text())
                if isinstance(data, dict) and isinstance(data.get("labels"), (dict, list)):
                    data = data["labels"]
                if isinstance(data, list):  # [{"value": 1, "name": "liver"}, ...] (``index`` as in findings.json)
                    return {int(d["value"] if "value" in d else d["index"]): str(d["name"]) for d in data}
                return {int(k): str(v) for k, v in data.items()}
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise LabelImportError(f"{cand}: not a label-name sidecar ({{\"1\": \"liver\", ...}}): {exc}") from None
    return None


def _load_labelmap(path: Path, volume: Volume, names) -> ReferenceLabels:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise LabelImportError(f"{path}: cannot read label map ({msg})") from None
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise LabelImportError(f"{path}: expected a 3-D scalar label map, got {img.GetDimension()}-D")
    arr = sitk.GetArrayFromImage(img)
    if arr.dtype.kind == "f":
        if not np.allclose(arr, np.rint(arr)):
            raise LabelImportError(f"{path}: label map has non-integer values")
        arr = np.rint(arr)
    if arr.min() < 0 or arr.max() > 65535:
        raise LabelImportError(f"{path}: label values must be 0..65535, got {arr.min()}..{arr.max()}")
    arr = arr.astype(np.uint16)
    warnings: list[str] = []
    placed, w = place_on_grid(arr, img.GetSpacing(), img.GetOrigin(), img.GetDirection(), volume, str(path))
    warnings += w
    values = [int(v) for v in np.flatnonzero(np.bincount(arr.ravel(), minlength=1)) if v != 0]  # faster than unique
    side = read_sidecar_names(path)
    if names:
        names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
        if len(names) != len(values):
            raise LabelImportError(f"{path}: {len(names)} name(s) given for {len(values)} label value(s) "
                                   f"{values[:20]}")
        label_names = dict(zip(values, names))
    elif side is not None:
        label_names = {v: side.get(v, f"label {v}") for v in values}
        missing = [v for v in values if v not in side]
        if missing:
            warnings.append(f"{path}: sidecar names no label for value(s) {missing}")
    else:
        label_names = {v: f"label {v}" for v in values}
    return ReferenceLabels(placed, label_names, warnings, str(path), "labelmap")


# ------------------------------------------------------------------------ DICOM SEG
def _load_seg(path: Path, volume: Volume) -> ReferenceLabels:
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # highdicom raises several types for malformed files
        raise LabelImportError(f"{path}: not a readable DICOM SEG ({exc})") from None
    warnings: list[str] = []
    what = str(path)
    _check_frame_of_reference(str(getattr(seg, "FrameOfReferenceUID", "") or ""), volume, what, warnings)
    numbers = [int(n) for n in seg.segment_numbers]
    names = {}
    value_of: dict[int, int] = {}
    for item in seg.SegmentSequence:
        names[int(item.SegmentNumber)] = str(getattr(item, "SegmentLabel", "") or f"segment {item.SegmentNumber}")
        tid = str(item.get("TrackingID", "") or "")
        if tid.startswith("radreview label value ") and tid.rsplit(" ", 1)[-1].isdigit():
            value_of[int(item.SegmentNumber)] = int(tid.rsplit(" ", 1)[-1])
    if len(value_of) != len(names) or len(set(value_of.values())) != len(value_of):
        value_of = {n: n for n in names}  # segment numbers are the label values
    try:
        hv = seg.get_volume(combine_segments=False, rescale_fractional=True, allow_missing_positions=True)
    except (ValueError, RuntimeError) as exc:
        raise LabelImportError(f"{path}: its frames do not form a regular 3-D volume ({exc})") from None
    data = np.asarray(hv.array)  # (slices, rows, columns, segments)
    if data.ndim == 3:
        data = data[..., None]
    fractional = str(getattr(seg, "SegmentationType", "")) == "FRACTIONAL"
    label = np.zeros(data.shape[:3], dtype=np.uint16)
    overlap = 0
    for s, num in enumerate(numbers):
        m = data[..., s] >= 0.5 if fractional else data[..., s] > 0
        overlap += int((m & (label > 0)).sum())
        label[m] = value_of.get(num, num)
    if overlap:
        warnings.append(f"{what}: {overlap} voxel(s) belong to several segments; the higher segment number was kept")
    if fractional:
        warnings.append(f"{what}: fractional SEG; a voxel belongs to a segment where its fraction is >= 0.5")
    aff = np.asarray(hv.affine, float)  # (slice, row, column) index -> LPS
    # SimpleITK order: i = column, j = row, k = slice
    cols = [aff[:3, 2], aff[:3, 1], aff[:3, 0]]
    spacing = [float(np.linalg.norm(c)) for c in cols]
    direction = np.column_stack([c / s for c, s in zip(cols, spacing)])
    placed, w = place_on_grid(label, spacing, aff[:3, 3], direction, volume, what)
    warnings += w
    return ReferenceLabels(placed, {value_of.get(n, n): names.get(n, f"segment {n}") for n in numbers}, warnings, what, "seg")


# ------------------------------------------------------------------------ RTSTRUCT
def series_files(volume: Volume, study_path=None) -> list[str]:
    """Paths of the DICOM files of ``volume``'s series (sorted along the slice normal), found by
    scanning ``study_path`` (default: the folder of ``volume.info.source``) for its Series
    Instance UID.

    Raises
    ------
    LabelImportError
        If the folder is not available or does not hold the series.
    """
    from .discovery import scan

    if study_path is None:
        src = Path(volume.info.source or "")
        study_path = src.parent if src.is_file() else src
    if not str(study_path) or not Path(study_path).exists() or Path(study_path).is_file() and is_image_file(study_path):
        raise LabelImportError(f"the study's DICOM files are needed and {study_path or 'its folder'} is not a DICOM "
                               "folder that is available")
    result = scan(study_path)
    uid = volume.info.series_instance_uid
    ent = [e for e in result.volumes if not uid or e.series_instance_uid == uid]
    if not ent or result._tempdir:
        raise LabelImportError(f"series {uid or '(any)'} not found as files under {study_path}")
    return [f.path for f in max(ent, key=lambda e: len(e.frames)).frames]


def _load_rtstruct(path: Path, volume: Volume, study_path) -> ReferenceLabels:
    import pydicom
    from rt_utils import RTStructBuilder

    warnings: list[str] = []
    what = str(path)
    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    for_uid = ""
    if "ReferencedFrameOfReferenceSequence" in ds and len(ds.ReferencedFrameOfReferenceSequence):
        for_uid = str(ds.ReferencedFrameOfReferenceSequence[0].get("FrameOfReferenceUID", ""))
    _check_frame_of_reference(for_uid, volume, what, warnings)
    files = series_files(volume, study_path)
    with tempfile.TemporaryDirectory(prefix="radreview-rtss-") as tmp:
        for n, f in enumerate(files):  # rt-utils reads every DICOM under a folder: give it this series only
            os.symlink(os.path.abspath(f), os.path.join(tmp, f"{n:05d}.dcm"))
        try:
            rt = RTStructBuilder.create_from(tmp, str(path), warn_only=True)
        except Exception as exc:  # rt-utils raises bare Exception for invalid files
            raise LabelImportError(f"{path}: not a usable RTSTRUCT for this series ({exc})") from None
        roi_names = rt.get_roi_names()
        if not roi_names:
            raise LabelImportError(f"{path}: the RTSTRUCT holds no ROI")
        # rt-utils masks are (rows, columns, slices) in its own slice order; map each slice by position
        ks = []
        for sl in rt.series_data:
            i, j, k = volume.lps_to_index(np.asarray(sl.ImagePositionPatient, float))
            ks.append(int(np.rint(k)))
        # annotated: numpy 2.4 stubs read np.zeros(<tuple[Any, ...]>) as a 0-d array
        label: np.ndarray = np.zeros(volume.array.shape, dtype=np.uint16)
        names: dict[int, str] = {}
        for v, name in enumerate(roi_names, start=1):
            try:
                m = rt.get_roi_mask_by_name(name)
            except Exception as exc:
                warnings.append(f"{what}: ROI '{name}' could not be rasterised ({exc}); left out")
                continue
            for s, k in enumerate(ks):
                if 0 <= k < label.shape[0] and m[:, :, s].any():
                    sl = m[:, :, s]
                    if sl.shape != label.shape[1:]:
                        raise LabelImportError(f"{path}: slice size {sl.shape} differs from the study's {label.shape[1:]}")
                    label[k][sl] = v
            names[v] = str(name)
    return ReferenceLabels(label, names, warnings, what, "rtstruct")


# ------------------------------------------------------------------------ entry point
def load_reference(path: str | os.PathLike, volume: Volume, names=None, study_path=None) -> ReferenceLabels:
    """Read a reference segmentation onto ``volume``'s grid.

    Parameters
    ----------
    path : path-like
        A label map (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``), a DICOM SEG
        or a DICOM RTSTRUCT file.
    volume : Volume
        The open study; the result has its shape ``(z, y, x)``.
    names : list of str or "a,b,c", optional
        Label-map names, one per foreground value in ascending order; they take precedence over
        a sidecar JSON (ignored for SEG/RTSTRUCT, whose names are in the file).
    study_path : path-like, optional
        The study's DICOM folder (RTSTRUCT only; default: the folder of ``volume.info.source``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    LabelImportError
        Unreadable file, unsupported DICOM object, different Frame of Reference UID, a grid that
        does not overlap the study, names that do not fit.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if is_image_file(p):
        return _load_labelmap(p, volume, names)
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise LabelImportError(f"{p}: neither a label map (.nii/.nrrd/.mha) nor a readable DICOM file ({exc})") from None
    sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop == SEG_SOP_CLASS:
        return _load_seg(p, volume)
    if sop == RTSTRUCT_SOP_CLASS:
        return _load_rtstruct(p, volume, study_path)
    raise LabelImportError(f"{p}: DICOM SOP Class {sop or '(none)'} is neither a Segmentation nor an RT Structure Set")
