"""DICOM Segmentation (SEG) export and import with highdicom.

:func:`export_seg` writes a label map on a DICOM series' grid as a BINARY SEG that references
the series' images (highdicom builds the Segmentation IOD: *Referenced Series Sequence*,
*Derivation Image* per frame, *Shared/Per-frame Functional Groups*), one segment per label
value. Segment numbers must be 1..n (PS3.3 C.8.20.2), so values are renumbered in ascending
order; the original value is kept in each segment's *Tracking ID* (0062,0020) as
``"radreview label value N"`` (with a *Tracking UID*), which :func:`import_seg` reads back, so
export then import gives the identical label map. Segmented property category and type are
SNOMED CT codes from the model cards (``resources/models/*/model.json``, ``outputs.labels[].snomed``)
where the label name is known there, else SCT 85756007 "Tissue".

:func:`import_seg` is :func:`radreview.studies.labels.load_reference` for a SEG file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .labels import LabelImportError, ReferenceLabels, load_reference, series_files
from .volume import Volume
from radreview.studies.errors import RadreviewError

__all__ = ["export_seg", "import_seg", "seg_geometry_volume", "model_card_codes", "SegExportError", "TRACKING_PREFIX"]

TRACKING_PREFIX = "radreview label value "

#: Fallback when a label is in no model card: SCT 85756007 "Tissue" for category and type.
_TISSUE = ("SCT", "85756007", "Tissue")


class SegExportError(ValueError, RadreviewError):
    """The label map cannot be written as a SEG of that series; the message says why."""


def model_card_codes() -> dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]]:
    """Normalised label name -> ((scheme, value, meaning) of the category, (...) of the type),
    from every shipped model card's ``outputs.labels[].snomed`` (background left out)."""
    from importlib.resources import files

    out: dict = {}
    root = Path(str(files("radreview.resources"))) / "models"
    for card in sorted(root.glob("*/model.json")):
        try:
            labels = json.loads(card.read_text()).get("outputs", {}).get("labels", [])
        except (OSError, ValueError):
            continue
        for lab in labels:
            sn = lab.get("snomed") or {}
            if lab.get("index") == 0 or "category" not in sn or "type" not in sn:
                continue
            c, t = sn["category"], sn["type"]
            out.setdefault(_norm(lab["name"]), ((c["scheme"], c["value"], c["meaning"]), (t["scheme"], t["value"], t["meaning"])))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _source_datasets(series, labelmap_shape) -> tuple[list, Volume]:
    """The series' datasets (headers only) in the volume's slice order, and the volume."""
    import pydicom

    from . import open_volume

    if isinstance(series, Volume):
        volume = series
        files = series_files(volume)
    else:
        volume = open_volume(series)
        files = series_files(volume, series)
    if volume.array.shape != tuple(labelmap_shape):
        raise SegExportError(f"label map shape {tuple(labelmap_shape)} (z, y, x) differs from the series' {volume.array.shape}")
    by_k: dict[int, object] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPClassUID") and meta is not None:  # anonymisers sometimes blank these;
            ds.SOPClassUID = meta.get("MediaStorageSOPClassUID", "")  # the file meta holds the same UIDs
        if not ds.get("SOPInstanceUID") and meta is not None:
            ds.SOPInstanceUID = meta.get("MediaStorageSOPInstanceUID", "")
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not ds.get(kw):
                raise SegExportError(f"{f}: the source image has no {kw}, so a SEG cannot reference it "
                                     "(anonymised without new UIDs?)")
        i, j, k = volume.lps_to_index(np.asarray(ds.ImagePositionPatient, float))
        if abs(k - round(k)) > 0.05 or abs(i) > 0.05 or abs(j) > 0.05:
            raise SegExportError(f"{f}: slice is not on the volume's grid (resampled series); a SEG must reference the "
                                 "acquired slices")
        by_k[int(round(k))] = ds
    missing = [k for k in range(volume.array.shape[0]) if k not in by_k]
    if missing:
        raise SegExportError(f"slices {missing[:10]} of the volume have no DICOM image (resampled series); "
                             "a SEG must reference the acquired slices")
    return [by_k[k] for k in range(volume.array.shape[0])], volume


def export_seg(series_path_or_volume, labelmap: np.ndarray, names=None, out_path=None, codes=None,
               algorithm: tuple[str, str] | None = ("radreview", "1"), omit_empty_frames: bool = False) -> Path:
    """Write ``labelmap`` as a DICOM SEG referencing the source series.

    Parameters
    ----------
    series_path_or_volume : path-like or Volume
        The DICOM series (folder) or its loaded :class:`Volume` (whose ``info.source`` is one of
        its files).
    labelmap : numpy.ndarray
        Integer ``(z, y, x)`` on the series' grid; 0 background, each other value a segment.
    names : dict[int, str] or list of str, optional
        Segment labels per value (a list is for the foreground values in ascending order);
        default ``"label N"``.
    out_path : path-like
        The ``.dcm`` to write (written to a temporary file beside it, then renamed).
    codes : dict, optional
        Name -> ((scheme, value, meaning) category, (scheme, value, meaning) type); default
        :func:`model_card_codes`.
    algorithm : (name, version) or None
        AUTOMATIC segments with this *Algorithm Identification* (family "Artificial
        Intelligence"); ``None`` for MANUAL.
    omit_empty_frames : bool
        Leave out frames with no voxel of a segment (smaller files). Default ``False``: every
        source slice has a frame, so the SEG alone carries the whole series grid and
        ``radreview seg import`` without ``--image`` restores the label map on that exact grid.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    SegExportError
        Empty label map, shape not the series', names that do not fit, resampled series.
    """
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept
    from pydicom.sr.codedict import codes as dcm_codes

    if out_path is None:
        raise SegExportError("out_path is required")
    lab = np.asarray(labelmap)
    if lab.ndim != 3 or lab.dtype.kind not in "iub":
        raise SegExportError(f"label map must be a 3-D integer array (z, y, x), got {lab.dtype} {lab.shape}")
    values = [int(v) for v in np.unique(lab) if v != 0]
    if not values:
        raise SegExportError("label map is empty (no voxel > 0): nothing to export")
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    if isinstance(names, (list, tuple)):
        if len(names) != len(values):
            raise SegExportError(f"{len(names)} name(s) given for {len(values)} label value(s) {values[:20]}")
        names = dict(zip(values, names))
    names = {int(k): str(v) for k, v in (names or {}).items()}
    sources, volume = _source_datasets(series_path_or_volume, lab.shape)
    table = model_card_codes() if codes is None else {_norm(k): v for k, v in codes.items()}
    family = dcm_codes.cid7162.ArtificialIntelligence
    algo = hd.AlgorithmIdentificationSequence(name=algorithm[0], version=algorithm[1], family=family) if algorithm else None
    descs = []
    seg_array = np.zeros(lab.shape, dtype=np.uint16 if len(values) > 255 else np.uint8)
    for n, v in enumerate(values, start=1):
        seg_array[lab == v] = n
        name = names.get(v, f"label {v}")
        cat, typ = table.get(_norm(name), (_TISSUE, _TISSUE))
        descs.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=name[:64],
            segmented_property_category=CodedConcept(value=cat[1], scheme_designator=cat[0], meaning=cat[2]),
            segmented_property_type=CodedConcept(value=typ[1], scheme_designator=typ[0], meaning=typ[2]),
            algorithm_type="AUTOMATIC" if algo else "MANUAL", algorithm_identification=algo,
            tracking_id=f"{TRACKING_PREFIX}{v}", tracking_uid=hd.UID(),
        ))
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=seg_array, segmentation_type="BINARY",
            segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=900,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="radreview",
            manufacturer_model_name="radreview", software_versions="1", device_serial_number="0",
            series_description="radreview segmentation", content_label="RADREVIEW",
            content_description="Segmentation exported by radreview", omit_empty_frames=omit_empty_frames,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise SegExportError(f"highdicom could not build the SEG: {exc}") from None
    out = Path(out_path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        seg.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def import_seg(path: str | os.PathLike, volume: Volume) -> ReferenceLabels:
    """Read a DICOM SEG onto ``volume``'s grid (see :func:`~radreview.studies.labels.load_reference`).

    Label values are the segment numbers, or the original values when every segment carries a
    ``"radreview label value N"`` *Tracking ID* (written by :func:`export_seg`).

    Raises
    ------
    LabelImportError
        Not a SEG, different Frame of Reference UID, no overlap with the study.
    """
    ref = load_reference(path, volume)
    if ref.kind != "seg":
        raise LabelImportError(f"{path}: not a DICOM SEG")
    return ref


def seg_geometry_volume(path: str | os.PathLike) -> Volume:
    """An all-zero :class:`Volume` on the grid of a SEG's own frames (highdicom
    ``get_volume``), with its Frame of Reference UID: the grid ``seg import`` writes on when no
    study is given.

    Raises
    ------
    LabelImportError
        Not a readable SEG, or frames that do not form a regular volume.
    """
    import highdicom as hd

    from .volume import StudyInfo

    try:
        seg = hd.seg.segread(str(path))
        hv = seg.get_volume(combine_segments=False, allow_missing_positions=True)
    except Exception as exc:  # highdicom raises several types for malformed files
        raise LabelImportError(f"{path}: not a readable DICOM SEG with a regular 3-D grid ({exc})") from None
    aff = np.asarray(hv.affine, float)
    cols = [aff[:3, 2], aff[:3, 1], aff[:3, 0]]
    spacing = (float(np.linalg.norm(cols[0])), float(np.linalg.norm(cols[1])), float(np.linalg.norm(cols[2])))
    direction = np.column_stack([c / s for c, s in zip(cols, spacing)])
    origin = aff[:3, 3].copy()
    nz = hv.array.shape[0]
    if np.dot(direction[:, 2], np.cross(direction[:, 0], direction[:, 1])) < 0:
        # slices along the normal of Image Orientation (Patient), as the series loader orders them
        origin = origin + direction[:, 2] * spacing[2] * (nz - 1)
        direction[:, 2] = -direction[:, 2]
    info = StudyInfo(source=str(path), frame_of_reference_uid=str(getattr(seg, "FrameOfReferenceUID", "") or ""),
                     modality="SEG")
    return Volume(np.zeros(hv.array.shape[:3], np.uint8), spacing=spacing, origin=tuple(origin),
                  direction=direction, info=info)
