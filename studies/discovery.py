"""Find DICOM objects under a folder, a DICOMDIR or a .zip and group them into series and stacks.

Only headers are read here (pixel data is deferred, PS3.10 file format); decoding happens in
:mod:`studies.loader`. Every file that will not be used ends up in :attr:`ScanResult.skipped`
with its path and a reason; nothing raises for bad input except a missing path.

Grouping follows what DICOM defines and what viewers such as 3D Slicer's DICOMScalarVolumePlugin
do: files are grouped by *Study Instance UID* (0020,000D) and *Series Instance UID* (0020,000E),
then a series is split into stacks when its images differ in *Image Orientation (Patient)*
(0020,0037), *Rows*/*Columns*, *Echo Numbers* (0018,0086) or *Temporal Position Identifier*
(0020,0100). Enhanced multi-frame objects are split with the per-frame functional groups
(PS3.3 C.7.6.16: Plane Position/Orientation, Frame Content *Stack ID* and *Temporal Position
Index*, MR Echo *Effective Echo Time*).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from .geometry import GAP_SPLIT_FACTOR, StackGeometry, compute_stack_geometry, split_at_gaps
from .sopclass import VOLUME_CLASSES, is_non_image, sop_class_name
from .volume import StudyInfo

log = logging.getLogger(__name__)

__all__ = ["FrameRef", "SeriesEntry", "Skipped", "ScanResult", "scan", "iter_scan"]

_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # Implicit / Explicit VR Little Endian


@dataclass
class Skipped:
    """A file (or frame) that is not used, with the reason shown to the user."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class FrameRef:
    """One 2-D image: a single-frame file or one frame of a multi-frame file.

    ``position`` is *Image Position (Patient)* (LPS mm, centre of the first pixel),
    ``orientation`` the six direction cosines of *Image Orientation (Patient)*,
    ``pixel_spacing`` is ``(row spacing, column spacing)`` in mm (PS3.3 10.7.1.3).
    """

    path: str
    frame: int | None
    sop_instance_uid: str
    rows: int
    cols: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float]
    slope: float = 1.0
    intercept: float = 0.0
    instance_number: int | None = None
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    echo: float | None = None
    temporal: float | None = None
    stack_id: str | None = None
    transfer_syntax: str = ""
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    photometric: str = "MONOCHROME2"
    pixel_offset: int | None = None  # byte offset of native pixel data in the file (fast path)
    pixel_length: int | None = None
    display_path: str = ""

    @property
    def shown_path(self) -> str:
        base = self.display_path or self.path
        return base if self.frame is None else f"{base} [frame {self.frame + 1}]"


@dataclass
class SeriesEntry:
    """A series, or one stack of a series that holds several.

    For image volumes ``frames`` are sorted along the slice normal and ``geometry`` holds the
    grid the loader will produce (size, spacing, origin, direction as SimpleITK reports them).
    """

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    description: str
    sop_class_uid: str
    files: list[str] = field(default_factory=list)
    frames: list[FrameRef] = field(default_factory=list)
    geometry: StackGeometry | None = None
    info: StudyInfo = field(default_factory=StudyInfo)
    warnings: list[str] = field(default_factory=list)
    stack_label: str = ""
    kind: str = "volume"  # "volume" | "image" (2-D, no plane geometry) | "non-image"

    @property
    def is_volume(self) -> bool:
        return self.kind == "volume" and self.geometry is not None

    @property
    def sop_class_name(self) -> str:
        return sop_class_name(self.sop_class_uid)

    def as_dict(self) -> dict:
        d = {
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "modality": self.modality,
            "description": self.description,
            "sop_class": self.sop_class_uid,
            "sop_class_name": self.sop_class_name,
            "kind": self.kind,
            "files": len(self.files),
            "warnings": list(self.warnings),
        }
        if self.stack_label:
            d["stack"] = self.stack_label
        if self.is_volume:
            d.update(self.geometry.as_dict())
        return d


@dataclass
class ScanResult:
    series: list[SeriesEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    root: str = ""
    _tempdir: str | None = None

    @property
    def volumes(self) -> list[SeriesEntry]:
        return [s for s in self.series if s.is_volume]

    def as_dict(self) -> dict:
        return {
            "series": [s.as_dict() for s in self.series],
            "skipped": [s.as_dict() for s in self.skipped],
        }

    def cleanup(self) -> None:
        if self._tempdir:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None


# --------------------------------------------------------------------------- file enumeration
def _iter_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _dicomdir_files(dicomdir: Path, skipped: list[Skipped]) -> list[Path]:
    """Files referenced by a DICOMDIR (PS3.10 Media Storage Directory), via pydicom's FileSet."""
    from pydicom.fileset import FileSet

    try:
        fs = FileSet(pydicom.dcmread(dicomdir))
    except Exception as exc:  # corrupt DICOMDIR: fall back to scanning its folder
        skipped.append(Skipped(str(dicomdir), f"unreadable DICOMDIR ({exc}); folder scanned instead"))
        return [p for p in _iter_files(dicomdir.parent) if p != dicomdir]
    out = []
    for inst in fs:
        p = Path(inst.path)
        if p.exists():
            out.append(p)
        else:
            skipped.append(Skipped(str(p), "referenced by DICOMDIR but missing on disk"))
    return out


def _first_number(value, default=None):
    if value is None or value == "":
        return default
    try:
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return default


def _str(ds, keyword: str) -> str:
    v = ds.get(keyword, "")
    return "" if v is None else str(v)


def _info_from(ds, source: str) -> StudyInfo:
    return StudyInfo(
        patient_name=_str(ds, "PatientName"),
        patient_id=_str(ds, "PatientID"),
        study_date=_str(ds, "StudyDate"),
        study_description=_str(ds, "StudyDescription"),
        study_instance_uid=_str(ds, "StudyInstanceUID"),
        series_instance_uid=_str(ds, "SeriesInstanceUID"),
        series_description=_str(ds, "SeriesDescription"),
        series_number=_str(ds, "SeriesNumber"),
        modality=_str(ds, "Modality"),
        sop_class_uid=_str(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", "")),
        window_center=_first_number(ds.get("WindowCenter")),
        window_width=_first_number(ds.get("WindowWidth")),
        source=source,
    )


def _pixel_location(ds, path: Path) -> tuple[int | None, int | None, str | None]:
    """Offset/length of native pixel data and a problem message (truncated file) if any."""
    elem = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    if elem is None:
        return None, None, None
    tell = getattr(elem, "value_tell", None)
    length = getattr(elem, "length", None)
    if tell is None or length in (None, 0xFFFFFFFF):
        return None, None, None
    size = path.stat().st_size
    if tell + length > size:
        return None, None, f"truncated file: Pixel Data needs {length} bytes, {max(size - tell, 0)} present"
    return int(tell), int(length), None


def _frames_from_single(ds, path: Path, display: str) -> list[FrameRef]:
    ipp = ds.get("ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or [1.0, 1.0]
    offset, length, _ = _pixel_location(ds, path)
    return [
        FrameRef(
            path=str(path),
            frame=None,
            sop_instance_uid=_str(ds, "SOPInstanceUID"),
            rows=int(ds.Rows),
            cols=int(ds.Columns),
            position=None if ipp is None else np.array([float(v) for v in ipp]),
            orientation=None if iop is None else np.array([float(v) for v in iop]),
            pixel_spacing=(float(ps[0]), float(ps[1])),
            slope=_first_number(ds.get("RescaleSlope"), 1.0) or 1.0,
            intercept=_first_number(ds.get("RescaleIntercept"), 0.0),
            instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
            slice_thickness=_first_number(ds.get("SliceThickness")),
            spacing_between_slices=_first_number(ds.get("SpacingBetweenSlices")),
            echo=_first_number(ds.get("EchoNumbers")),
            temporal=_first_number(ds.get("TemporalPositionIdentifier")),
            transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
            bits_allocated=int(ds.get("BitsAllocated", 16)),
            bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
            pixel_representation=int(ds.get("PixelRepresentation", 0)),
            photometric=_str(ds, "PhotometricInterpretation") or "MONOCHROME2",
            pixel_offset=offset,
            pixel_length=length,
            display_path=display,
        )
    ]


def _fg(frame_item, shared_item, seq: str):
    """First item of functional group ``seq`` from the per-frame item, else the shared one."""
    for item in (frame_item, shared_item):
        if item is not None and seq in item and len(item[seq].value):
            return item[seq].value[0]
    return None


def _frames_from_multiframe(ds, path: Path, display: str) -> list[FrameRef]:
    """Frames of an enhanced multi-frame object from its functional groups (PS3.3 C.7.6.16)."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per = ds.PerFrameFunctionalGroupsSequence if "PerFrameFunctionalGroupsSequence" in ds else None
    out = []
    for f in range(n):
        item = per[f] if per is not None and f < len(per) else None
        pos = _fg(item, shared, "PlanePositionSequence")
        ori = _fg(item, shared, "PlaneOrientationSequence")
        meas = _fg(item, shared, "PixelMeasuresSequence")
        pvt = _fg(item, shared, "PixelValueTransformationSequence")
        content = _fg(item, shared, "FrameContentSequence")
        echo = _fg(item, shared, "MREchoSequence")
        ps = (meas.get("PixelSpacing") if meas is not None else None) or ds.get("PixelSpacing") or [1.0, 1.0]
        ipp = pos.get("ImagePositionPatient") if pos is not None else None
        iop = ori.get("ImageOrientationPatient") if ori is not None else None
        out.append(
            FrameRef(
                path=str(path),
                frame=f,
                sop_instance_uid=_str(ds, "SOPInstanceUID"),
                rows=int(ds.Rows),
                cols=int(ds.Columns),
                position=None if ipp is None else np.array([float(v) for v in ipp]),
                orientation=None if iop is None else np.array([float(v) for v in iop]),
                pixel_spacing=(float(ps[0]), float(ps[1])),
                slope=(_first_number(pvt.get("RescaleSlope"), 1.0) if pvt is not None else 1.0) or 1.0,
                intercept=_first_number(pvt.get("RescaleIntercept"), 0.0) if pvt is not None else 0.0,
                slice_thickness=_first_number(meas.get("SliceThickness")) if meas is not None else None,
                echo=_first_number(echo.get("EffectiveEchoTime")) if echo is not None else None,
                temporal=_first_number(content.get("TemporalPositionIndex")) if content is not None else None,
                stack_id=str(content.get("StackID", "")) or None if content is not None else None,
                transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
                bits_allocated=int(ds.get("BitsAllocated", 16)),
                bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
                pixel_representation=int(ds.get("PixelRepresentation", 0)),
                photometric=_str(ds, "PhotometricInterpretation") or "MONOCHROME2",
                display_path=display,
            )
        )
    return out


# --------------------------------------------------------------------------- the scan
@dataclass
class _Obj:
    path: Path
    display: str
    ds: object


def _read_header(path: Path, display: str, skipped: list[Skipped]) -> _Obj | None:
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except InvalidDicomError:
        skipped.append(Skipped(display, "not a DICOM file (no 'DICM' preamble / File Meta Information, PS3.10 7.1)"))
        return None
    except Exception as exc:  # truncated header, broken sequence, bad VR...
        skipped.append(Skipped(display, f"unreadable DICOM header: {type(exc).__name__}: {exc}"))
        return None
    return _Obj(path, display, ds)


def iter_scan(path: str | os.PathLike) -> Iterator[tuple[int, int, ScanResult | None]]:
    """Scan ``path`` (folder, DICOMDIR, .zip or a single DICOM file), yielding progress.

    Yields ``(files_done, files_total, None)`` while reading headers and finally
    ``(total, total, ScanResult)``; stop iterating to cancel.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    result = ScanResult(root=str(root))
    skipped = result.skipped
    files: list[tuple[Path, str]] = []
    if root.is_dir():
        dicomdir = root / "DICOMDIR"
        if dicomdir.is_file():
            listed = _dicomdir_files(dicomdir, skipped)
            files = [(p, str(p)) for p in listed]
        else:
            files = [(p, str(p)) for p in _iter_files(root)]
    elif zipfile.is_zipfile(root):
        tmp = tempfile.mkdtemp(prefix="radreview-zip-")
        result._tempdir = tmp
        with zipfile.ZipFile(root) as zf:
            for member in zf.infolist():
                if member.is_dir():
                    continue
                target = Path(tmp) / f"{len(files):06d}"
                try:
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                except Exception as exc:
                    skipped.append(Skipped(f"{root}!{member.filename}", f"cannot extract from zip: {exc}"))
                    continue
                files.append((target, f"{root}!{member.filename}"))
    elif root.name.upper() == "DICOMDIR":
        files = [(p, str(p)) for p in _dicomdir_files(root, skipped)]
    else:
        files = [(root, str(root))]

    objs: list[_Obj] = []
    total = len(files)
    for n, (p, display) in enumerate(files, 1):
        if p.name.upper() == "DICOMDIR" and p.parent == (root if root.is_dir() else root.parent):
            continue
        obj = _read_header(p, display, skipped)
        if obj is not None:
            objs.append(obj)
        if n % 16 == 0:
            yield n, total, None
    _group(objs, result)
    yield total, total, result


def scan(path: str | os.PathLike) -> ScanResult:
    """Scan ``path`` and return the grouped :class:`ScanResult` (see :func:`iter_scan`)."""
    result = None
    for _, _, result in iter_scan(path):
        pass
    assert result is not None
    return result


def _group(objs: list[_Obj], result: ScanResult) -> None:
    skipped = result.skipped
    seen_sop: dict[str, str] = {}
    by_series: dict[tuple[str, str], list[FrameRef]] = defaultdict(list)
    series_meta: dict[tuple[str, str], dict] = {}
    others: dict[tuple[str, str, str], SeriesEntry] = {}

    for obj in objs:
        ds = obj.ds
        sop_class = _str(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
        sop_uid = _str(ds, "SOPInstanceUID") or str(ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
        if sop_class == "1.2.840.10008.1.3.10":  # a nested DICOMDIR
            skipped.append(Skipped(obj.display, "DICOMDIR index (not an image; the files it lists are scanned)"))
            continue
        if not sop_class or not sop_uid:
            skipped.append(Skipped(obj.display, "no SOP Class UID / SOP Instance UID (0008,0016/0018)"))
            continue
        if sop_uid in seen_sop:
            skipped.append(Skipped(obj.display, f"duplicate SOP Instance UID {sop_uid} (same as {seen_sop[sop_uid]})"))
            continue
        seen_sop[sop_uid] = obj.display
        study = _str(ds, "StudyInstanceUID")
        series = _str(ds, "SeriesInstanceUID")
        key = (study, series)
        modality = _str(ds, "Modality")
        if is_non_image(sop_class) or "PixelData" not in ds and sop_class not in VOLUME_CLASSES:
            okey = (study, series, sop_class)
            if okey not in others:
                others[okey] = SeriesEntry(
                    study, series, modality, _str(ds, "SeriesDescription"), sop_class,
                    info=_info_from(ds, obj.display), kind="non-image",
                )
            others[okey].files.append(obj.display)
            continue
        if "PixelData" not in ds:
            skipped.append(Skipped(obj.display, "image SOP Class but no Pixel Data (7FE0,0010)"))
            continue
        offset, length, problem = _pixel_location(ds, obj.path)
        if problem:
            skipped.append(Skipped(obj.display, problem))
            continue
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        spp = int(ds.get("SamplesPerPixel", 1))
        try:
            if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
                frames = _frames_from_multiframe(ds, obj.path, obj.display)
            else:
                frames = _frames_from_single(ds, obj.path, obj.display)
        except Exception as exc:
            skipped.append(Skipped(obj.display, f"unusable image header: {type(exc).__name__}: {exc}"))
            continue
        if spp != 1 or any(f.position is None or f.orientation is None for f in frames):
            why = "colour image" if spp != 1 else "no Image Position/Orientation (Patient)"
            okey = (study, series, sop_class)
            if okey not in others:
                others[okey] = SeriesEntry(
                    study, series, modality, _str(ds, "SeriesDescription"), sop_class,
                    info=_info_from(ds, obj.display), kind="image",
                    warnings=[f"2-D images only ({why}); not stacked into a volume"],
                )
            others[okey].files.append(obj.display)
            continue
        by_series[key].extend(frames)
        if key not in series_meta:
            series_meta[key] = {"ds": ds, "display": obj.display, "sop_class": sop_class}
        for f in frames:
            f.sop_instance_uid = f.sop_instance_uid or sop_uid

    for key, frames in by_series.items():
        result.series.extend(_split_series(key, frames, series_meta[key], skipped))
    result.series.extend(others.values())
    result.series.sort(key=lambda s: (s.study_instance_uid, s.info.series_number.zfill(6), s.series_instance_uid, s.stack_label))


def _stack_key(f: FrameRef):
    ori = tuple(np.round(f.orientation, 3) + 0.0)
    return (f.stack_id, ori, f.echo, f.temporal)


def _split_series(key, frames: list[FrameRef], meta: dict, skipped: list[Skipped]) -> list[SeriesEntry]:
    ds = meta["ds"]
    groups: dict[tuple, list[FrameRef]] = defaultdict(list)
    for f in frames:
        groups[_stack_key(f)].append(f)

    # Within one stack, images whose size differs from the majority are not used.
    entries = []
    stacks = []
    for skey, members in groups.items():
        sizes = Counter((f.rows, f.cols) for f in members)
        (rows, cols), _ = sizes.most_common(1)[0]
        keep = []
        for f in members:
            if (f.rows, f.cols) != (rows, cols):
                skipped.append(Skipped(f.shown_path, f"image size {f.rows}x{f.cols} differs from the rest of its series ({rows}x{cols})"))
            else:
                keep.append(f)
        slabs = split_at_gaps(keep)
        for n_slab, slab in enumerate(slabs, 1):
            note = f"slab {n_slab}/{len(slabs)}" if len(slabs) > 1 else ""
            stacks.append((skey, slab, note))

    for idx, (skey, members, slab_note) in enumerate(stacks, 1):
        entry = SeriesEntry(
            study_instance_uid=key[0],
            series_instance_uid=key[1],
            modality=_str(ds, "Modality"),
            description=_str(ds, "SeriesDescription"),
            sop_class_uid=meta["sop_class"],
            info=_info_from(ds, meta["display"]),
        )
        if len(stacks) > 1:
            parts = []
            stack_id, ori, echo, temporal = skey
            if stack_id:
                parts.append(f"stack {stack_id}")
            if echo is not None:
                parts.append(f"echo {echo:g}")
            if temporal is not None:
                parts.append(f"time {temporal:g}")
            if len({k[1] for k, _, _ in stacks}) > 1:
                parts.append(_orientation_name(np.array(ori)))
            if slab_note:
                parts.append(slab_note)
            entry.stack_label = f"{idx}/{len(stacks)}" + (f" ({', '.join(parts)})" if parts else "")
        geom, ordered, dups = compute_stack_geometry(members)
        for f, reason in dups:
            skipped.append(Skipped(f.shown_path, reason))
        entry.frames = ordered
        entry.geometry = geom
        entry.warnings = list(geom.warnings)
        if slab_note:
            entry.warnings.insert(0, f"series split into separate slabs at gaps over {GAP_SPLIT_FACTOR:g}x the usual "
                                     f"slice spacing ({slab_note})")
        entry.files = sorted({f.display_path or f.path for f in ordered})
        entries.append(entry)
    return entries


def _orientation_name(ori: np.ndarray) -> str:
    normal = np.cross(ori[:3], ori[3:])
    axis = int(np.argmax(np.abs(normal)))
    return ("sagittal", "coronal", "axial")[axis]
