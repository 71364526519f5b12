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

import atexit
import dataclasses
import logging
import os
import shutil
import stat
import tempfile
import warnings
import zipfile
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from .geometry import GAP_SPLIT_FACTOR, StackGeometry, compute_stack_geometry, frame_plane, split_at_gaps
from .sopclass import VOLUME_CLASSES, is_non_image, sop_class_name
from .volume import StudyInfo
from radreview.studies.errors import RadreviewError

log = logging.getLogger(__name__)

__all__ = ["FrameRef", "SeriesEntry", "Skipped", "ScanResult", "scan", "iter_scan", "HeaderProblem",
           "ZIP_MAX_BYTES", "ZIP_MAX_RATIO"]

#: Total bytes a ``.zip`` may extract to (``$RADREVIEW_ZIP_MAX_MB`` overrides, in MiB): a zip bomb
#: stops here instead of filling the disk.
ZIP_MAX_BYTES = 4 << 30

#: An entry whose uncompressed size is over this many times its compressed size (and over
#: 64 MiB) is refused as a likely zip bomb; real DICOM compresses 2-10x, 100x only when empty.
ZIP_MAX_RATIO = 200

#: Encapsulated (compressed) Pixel Data declaring more than this many times the file size once
#: decoded is refused at scan time (lossless JPEG 2000 of CT is about 2-3:1, lossy rarely 100:1).
MAX_COMPRESSION_RATIO = 2000

#: Tolerances for *Image Orientation (Patient)*: each direction cosine vector must have unit
#: length and the two must be orthogonal within this (DICOM stores them as DS, ~6 digits).
ORIENTATION_TOL = 1e-2


class HeaderProblem(ValueError, RadreviewError):
    """A geometry or pixel-description attribute is unusable; the message names it and why."""


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
    echo_numbers: float | None = None  # Echo Numbers (0018,0086), single-frame images
    effective_echo_time: float | None = None  # Effective Echo Time (0018,9082) in ms, MR Echo functional group
    temporal: float | None = None
    stack_id: str | None = None
    transfer_syntax: str = ""
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    photometric: str = "MONOCHROME2"
    pixel_offset: int | None = None  # byte offset of native pixel data in the file (fast path)
    pixel_length: int | None = None
    encapsulated_offset: int | None = None  # byte offset of the value of encapsulated Pixel Data (PS3.5 A.4)
    number_of_frames: int = 1
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
        if self.is_volume and self.geometry is not None:  # is_volume implies a geometry; mypy cannot see it
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
        """Remove the private folder a ``.zip`` was extracted into (also done at exit)."""
        if self._tempdir:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            _LIVE_TEMPDIRS.discard(self._tempdir)
            self._tempdir = None


_LIVE_TEMPDIRS: set[str] = set()
_TMP_PREFIX = "radreview-zip-"


@atexit.register
def _remove_tempdirs() -> None:
    for d in list(_LIVE_TEMPDIRS):
        shutil.rmtree(d, ignore_errors=True)
    _LIVE_TEMPDIRS.clear()


def _private_tempdir() -> str:
    """A new 0700 folder ``radreview-zip-<pid>-*``; folders left by dead processes are removed first."""
    base = Path(tempfile.gettempdir())
    try:
        for old in base.glob(_TMP_PREFIX + "*"):
            parts = old.name[len(_TMP_PREFIX):].split("-", 1)
            if not parts[0].isdigit() or int(parts[0]) == os.getpid():
                continue
            try:
                os.kill(int(parts[0]), 0)
            except ProcessLookupError:  # its process is gone: a killed command's leftovers
                shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
    except OSError:
        pass
    d = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-")
    _LIVE_TEMPDIRS.add(d)
    return d


def shown(path) -> str:
    """``path`` as printable text: undecodable (non-UTF-8) bytes of a file name become ``\\xNN``."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------- file enumeration
def _iter_files(root: Path, skipped: list[Skipped] | None = None, confine: bool = False) -> Iterator[Path]:
    """Regular files under ``root`` (sorted, symbolic links to folders not followed).

    Unreadable folders, links to folders, FIFOs, sockets, devices, dangling links and link
    loops are reported in ``skipped`` (a FIFO would block a reader forever). With ``confine``,
    links to files outside ``root`` are reported instead of read.
    """
    base = root.resolve() if confine else None
    def onerror(exc: OSError) -> None:
        if skipped is not None:
            skipped.append(Skipped(shown(exc.filename or root), f"unreadable folder ({exc.strerror or exc}); not scanned"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                dirnames.remove(d)
                if skipped is not None:
                    skipped.append(Skipped(shown(os.path.join(dirpath, d)), "symbolic link to a folder: not followed"))
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            problem = _not_regular(p)
            if not problem and base is not None and p.is_symlink() and base not in p.resolve().parents:
                problem = f"symbolic link to a file outside {shown(base)}; not read"
            if problem:
                if skipped is not None:
                    skipped.append(Skipped(shown(p), problem))
                continue
            yield p


def _not_regular(p: Path) -> str | None:
    """Why ``p`` cannot be read as a file (``None`` for a regular file)."""
    try:
        st = os.stat(p)
    except OSError as exc:
        return f"cannot open ({exc.strerror or exc}{'; dangling or looping symbolic link' if os.path.islink(p) else ''})"
    if stat.S_ISREG(st.st_mode):
        return None
    kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
            else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "folder" if stat.S_ISDIR(st.st_mode)
            else "special file")
    return f"not a regular file ({kind}); not read"


def _dicomdir_files(dicomdir: Path, skipped: list[Skipped]) -> list[Path]:
    """Files referenced by a DICOMDIR (PS3.10 Media Storage Directory), via pydicom's FileSet."""
    from pydicom.fileset import FileSet

    try:
        fs = FileSet(pydicom.dcmread(dicomdir))
    except Exception as exc:  # corrupt DICOMDIR: fall back to scanning its folder
        skipped.append(Skipped(str(dicomdir), f"unreadable DICOMDIR ({exc}); folder scanned instead"))
        return [p for p in _iter_files(dicomdir.parent, skipped, confine=True) if p != dicomdir]
    out = []
    base = dicomdir.parent.resolve()
    for inst in fs:
        try:
            p = Path(inst.path)
            real = p.resolve()
        except Exception as exc:  # a malformed Referenced File ID
            skipped.append(Skipped(shown(dicomdir), f"DICOMDIR entry with an unusable Referenced File ID ({exc})"))
            continue
        if real != base and base not in real.parents:
            skipped.append(Skipped(shown(p), f"referenced by DICOMDIR but outside its folder {shown(base)}; not read"))
            continue
        problem = _not_regular(p)
        if problem and not p.exists():
            skipped.append(Skipped(shown(p), "referenced by DICOMDIR but missing on disk"))
        elif problem:
            skipped.append(Skipped(shown(p), problem))
        else:
            out.append(p)
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
        frame_of_reference_uid=_str(ds, "FrameOfReferenceUID"),
        sop_class_uid=_str(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", "")),
        window_center=_first_number(ds.get("WindowCenter")),
        window_width=_first_number(ds.get("WindowWidth")),
        source=source,
    )


def _encapsulated_offset(ds) -> int | None:
    """Byte offset of the value (the Basic Offset Table item) of encapsulated Pixel Data, else ``None``."""
    elem = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    if elem is None or getattr(elem, "length", None) != 0xFFFFFFFF:
        return None
    tell = getattr(elem, "value_tell", None)
    return int(tell) if tell is not None else None


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


def _vm(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


def _finite(value, name: str, tag: str, count: int) -> np.ndarray:
    """``count`` finite numbers from a DS/FD attribute, else :class:`HeaderProblem` naming it."""
    vals = _vm(value)
    if len(vals) != count:
        raise HeaderProblem(f"{name} {tag} has {len(vals)} value(s), needs {count}")
    try:
        arr = np.array([float(v) for v in vals], dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise HeaderProblem(f"{name} {tag} is not numeric ({'/'.join(str(v) for v in vals)[:60]})") from None
    if not np.all(np.isfinite(arr)):
        raise HeaderProblem(f"{name} {tag} holds a non-finite value (NaN or Inf)")
    return arr


def check_position(value) -> np.ndarray | None:
    """*Image Position (Patient)* (0020,0032): 3 finite numbers (LPS mm) or ``None`` if absent.

    Raises
    ------
    HeaderProblem
        Wrong value multiplicity, not numeric, NaN or Inf.
    """
    if value is None or value == "" or (hasattr(value, "__len__") and len(value) == 0):
        return None
    return _finite(value, "Image Position (Patient)", "(0020,0032)", 3)


def check_orientation(value) -> np.ndarray | None:
    """*Image Orientation (Patient)* (0020,0037): 6 finite direction cosines, two unit vectors
    orthogonal within :data:`ORIENTATION_TOL` (PS3.3 C.7.6.2.1.1), or ``None`` if absent.

    Raises
    ------
    HeaderProblem
        Wrong VM, not numeric, NaN/Inf, a row or column vector not of unit length, or the two
        not orthogonal.
    """
    if value is None or value == "" or (hasattr(value, "__len__") and len(value) == 0):
        return None
    arr = _finite(value, "Image Orientation (Patient)", "(0020,0037)", 6)
    r, c = arr[:3], arr[3:]
    nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
    if abs(nr - 1) > ORIENTATION_TOL or abs(nc - 1) > ORIENTATION_TOL:
        raise HeaderProblem(f"Image Orientation (Patient) (0020,0037): direction cosines are not unit vectors "
                            f"(lengths {nr:.4g}, {nc:.4g})")
    dot = float(np.dot(r, c)) / (nr * nc)
    if abs(dot) > ORIENTATION_TOL:
        raise HeaderProblem(f"Image Orientation (Patient) (0020,0037): row and column directions are not orthogonal "
                            f"(cosine {dot:.4g})")
    return arr


def check_spacing(value, keyword: str = "Pixel Spacing", tag: str = "(0028,0030)") -> tuple[float, float]:
    """*Pixel Spacing* (0028,0030): ``(row spacing, column spacing)``, 2 positive finite mm values.

    Raises
    ------
    HeaderProblem
        Wrong VM, not numeric, NaN/Inf, zero or negative.
    """
    arr = _finite(value, keyword, tag, 2)
    if np.any(arr <= 0):
        raise HeaderProblem(f"{keyword} {tag} must be two positive numbers (mm), got {arr[0]:g}\\{arr[1]:g}")
    return float(arr[0]), float(arr[1])


def _int_attr(ds, keyword: str, default=None, lo: int = 0, hi: int = 2**32 - 1) -> int:
    v = ds.get(keyword, default)
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
        v = v[0] if len(v) else default
    if v is None or v == "":
        if default is None:
            raise HeaderProblem(f"{keyword} is missing")
        v = default
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        raise HeaderProblem(f"{keyword} is not an integer ({str(v)[:30]})") from None
    if not lo <= n <= hi:
        raise HeaderProblem(f"{keyword} = {n} is outside {lo}..{hi}")
    return n


def check_pixel_description(ds, path: Path) -> tuple[int, int, int, int]:
    """``(rows, cols, frames, bits_allocated)`` after checking them against the Pixel Data.

    *Rows*/*Columns* must be 1-65535 (US), *Bits Allocated* 1, 8, 16, 32 or 64, *Bits Stored* no
    more than that; native Pixel Data must hold Rows x Columns x frames x samples x bits bytes
    (PS3.5 8.1.1), and encapsulated Pixel Data needs at least one 8-byte item per frame
    (PS3.5 A.4), so a declared size larger than the file is refused before anything is
    allocated.

    Raises
    ------
    HeaderProblem
        With the attribute and the numbers that disagree.
    """
    rows = _int_attr(ds, "Rows", None, 1, 65535)
    cols = _int_attr(ds, "Columns", None, 1, 65535)
    frames = _int_attr(ds, "NumberOfFrames", 1, 0, 2**31)
    frames = max(frames, 1)
    spp = _int_attr(ds, "SamplesPerPixel", 1, 1, 4)
    bits = _int_attr(ds, "BitsAllocated", 16, 1, 64)
    if bits not in (1, 8, 16, 32, 64):
        raise HeaderProblem(f"Bits Allocated (0028,0100) = {bits} is not 1, 8, 16, 32 or 64")
    stored = _int_attr(ds, "BitsStored", bits, 1, 64)
    if stored > bits:
        raise HeaderProblem(f"Bits Stored (0028,0101) = {stored} exceeds Bits Allocated = {bits}")
    size = path.stat().st_size
    elem = ds.get_item("PixelData", keep_deferred=True)
    length = getattr(elem, "length", None)
    if length is not None and length != 0xFFFFFFFF:
        need = (rows * cols * frames * spp * bits + 7) // 8
        if length < need:
            raise HeaderProblem(f"Pixel Data (7FE0,0010) holds {length} bytes but Rows x Columns x frames x samples x "
                                f"Bits Allocated = {rows}x{cols}x{frames}x{spp}x{bits} bits need {need}")
    else:
        if frames * 8 > size:
            raise HeaderProblem(f"Number of Frames (0028,0008) = {frames} cannot fit in a {size}-byte file "
                                "(encapsulated Pixel Data needs at least one 8-byte item per frame)")
        decoded = (rows * cols * frames * spp * bits + 7) // 8
        if decoded > MAX_COMPRESSION_RATIO * size:
            raise HeaderProblem(f"Rows x Columns x frames = {rows}x{cols}x{frames} would decode to {decoded / 2**20:.0f} MiB "
                                f"from a {size / 2**10:.0f} KiB file (over {MAX_COMPRESSION_RATIO}:1); not loaded")
    return rows, cols, frames, bits


def _spacing_of(ds_or_item, fallback=None) -> tuple[float, float]:
    for kw, name, tag in (("PixelSpacing", "Pixel Spacing", "(0028,0030)"),
                          ("ImagerPixelSpacing", "Imager Pixel Spacing", "(0018,1164)")):
        v = ds_or_item.get(kw) if ds_or_item is not None else None
        if v is not None and v != "" and len(_vm(v)):
            return check_spacing(v, name, tag)
    return fallback if fallback is not None else (1.0, 1.0)


def _frames_from_single(ds, path: Path, display: str) -> list[FrameRef]:
    rows, cols, _, _ = check_pixel_description(ds, path)
    ipp = check_position(ds.get("ImagePositionPatient"))
    iop = check_orientation(ds.get("ImageOrientationPatient"))
    ps = _spacing_of(ds)
    offset, length, _ = _pixel_location(ds, path)
    inst = ds.get("InstanceNumber")
    return [
        FrameRef(
            path=str(path),
            frame=None,
            sop_instance_uid=_str(ds, "SOPInstanceUID"),
            rows=rows,
            cols=cols,
            position=ipp,
            orientation=iop,
            pixel_spacing=ps,
            slope=_first_number(ds.get("RescaleSlope"), 1.0) or 1.0,
            intercept=_first_number(ds.get("RescaleIntercept"), 0.0),
            instance_number=int(_first_number(inst, 0)) if inst not in (None, "") else None,
            slice_thickness=_first_number(ds.get("SliceThickness")),
            spacing_between_slices=_first_number(ds.get("SpacingBetweenSlices")),
            echo_numbers=_first_number(ds.get("EchoNumbers")),
            temporal=_first_number(ds.get("TemporalPositionIdentifier")),
            transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
            bits_allocated=int(ds.get("BitsAllocated", 16)),
            bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
            pixel_representation=int(ds.get("PixelRepresentation", 0)),
            photometric=_str(ds, "PhotometricInterpretation") or "MONOCHROME2",
            pixel_offset=offset,
            pixel_length=length,
            encapsulated_offset=_encapsulated_offset(ds),
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
    rows, cols, n, _ = check_pixel_description(ds, path)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per = ds.PerFrameFunctionalGroupsSequence if "PerFrameFunctionalGroupsSequence" in ds else None
    out = []
    encapsulated = _encapsulated_offset(ds)
    for f in range(n):
        item = per[f] if per is not None and f < len(per) else None
        pos = _fg(item, shared, "PlanePositionSequence")
        ori = _fg(item, shared, "PlaneOrientationSequence")
        meas = _fg(item, shared, "PixelMeasuresSequence")
        pvt = _fg(item, shared, "PixelValueTransformationSequence")
        content = _fg(item, shared, "FrameContentSequence")
        echo = _fg(item, shared, "MREchoSequence")
        ps = _spacing_of(meas, _spacing_of(ds))
        ipp = check_position(pos.get("ImagePositionPatient")) if pos is not None else None
        iop = check_orientation(ori.get("ImageOrientationPatient")) if ori is not None else None
        out.append(
            FrameRef(
                path=str(path),
                frame=f,
                sop_instance_uid=_str(ds, "SOPInstanceUID"),
                rows=rows,
                cols=cols,
                position=ipp,
                orientation=iop,
                pixel_spacing=ps,
                slope=(_first_number(pvt.get("RescaleSlope"), 1.0) if pvt is not None else 1.0) or 1.0,
                intercept=_first_number(pvt.get("RescaleIntercept"), 0.0) if pvt is not None else 0.0,
                slice_thickness=_first_number(meas.get("SliceThickness")) if meas is not None else None,
                effective_echo_time=_first_number(echo.get("EffectiveEchoTime")) if echo is not None else None,
                temporal=_first_number(content.get("TemporalPositionIndex")) if content is not None else None,
                stack_id=str(content.get("StackID", "")) or None if content is not None else None,
                transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
                bits_allocated=int(ds.get("BitsAllocated", 16)),
                bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16))),
                pixel_representation=int(ds.get("PixelRepresentation", 0)),
                photometric=_str(ds, "PhotometricInterpretation") or "MONOCHROME2",
                encapsulated_offset=encapsulated,
                number_of_frames=n,
                display_path=display,
            )
        )
    return out


# --------------------------------------------------------------------------- the scan
#: Folders with at least this many files have their headers parsed on the shared process pool
#: (:mod:`studies.parallel`): pydicom's parser is pure Python and holds the GIL, so threads
#: would not help. Smaller folders are parsed here (a pool round trip costs more than it saves).
PARALLEL_SCAN_MIN_FILES = 64
_INLINE_BIG_SCANS = 0


@dataclass
class _Parsed:
    """What one file's header says, extracted where it was parsed (picklable, no Dataset).

    ``early`` is a reason found before the duplicate-SOP check, ``late`` one found after it
    (the order :func:`_merge` applies them in); ``info`` is set for the first file of each
    series key in a parse batch.
    """

    display: str
    unreadable: str | None = None
    early: str | None = None
    late: str | None = None
    sop_class: str = ""
    sop_uid: str = ""
    study: str = ""
    series: str = ""
    patient: str = ""
    modality: str = ""
    description: str = ""
    kind: str = "volume"
    why_2d: str = ""
    frames: list = field(default_factory=list)
    info: StudyInfo | None = None


def _read_header(path: Path, display: str):
    """``(dataset, None)`` or ``(None, reason)``; the pixel data value is deferred (only its
    offset and length are read, PS3.10 file format), so a header read never loads pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns for every odd value; the checks below decide
            return pydicom.dcmread(path, defer_size=1024), None
    except InvalidDicomError:
        return None, "not a DICOM file (no 'DICM' preamble / File Meta Information, PS3.10 7.1)"
    except Exception as exc:  # truncated header, broken sequence, bad VR...
        return None, f"unreadable DICOM header: {type(exc).__name__}: {exc}"


def _parse_file(path: Path, display: str, info_keys: set) -> _Parsed:
    """Read and sort out one file's header; never raises (problems become reasons)."""
    rec = _Parsed(display)
    ds, rec.unreadable = _read_header(path, display)
    if ds is None:
        return rec
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _extract(ds, path, rec, info_keys)
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the scan
        if rec.sop_uid and rec.early is None:
            rec.late = f"unusable DICOM header: {type(exc).__name__}: {exc}"
        else:
            rec.early = f"unusable DICOM header: {type(exc).__name__}: {exc}"
    return rec


def _parse_batch(items: list[tuple[Path, str]]) -> list[_Parsed]:
    """Process-pool task: :func:`_parse_file` for several files, in order."""
    info_keys: set = set()
    return [_parse_file(p, d, info_keys) for p, d in items]


def _parse_all(items: list[tuple[Path, str]]) -> Iterator[tuple[int, list[_Parsed]]]:
    """Parse ``items``, yielding ``(files done, records)`` batches in file order.

    Large folders are parsed on the process pool once its workers are up
    (:func:`studies.parallel.ready_pool`); until then, and if it breaks, here. A process that
    scans a second large folder starts the pool's workers in the background after that scan
    (a one-shot command that scans once does not pay their start-up); an application can start
    them early with :func:`studies.parallel.warm_pool`.
    """
    from .parallel import ready_pool, warm_pool

    big = len(items) >= PARALLEL_SCAN_MIN_FILES
    pool = ready_pool() if big else None
    if pool is None:
        info_keys: set = set()
        for s in range(0, len(items), 16):
            yield min(s + 16, len(items)), [_parse_file(p, d, info_keys) for p, d in items[s : s + 16]]
        if big:
            global _INLINE_BIG_SCANS
            _INLINE_BIG_SCANS += 1
            if _INLINE_BIG_SCANS >= 2:  # a session that scans large folders again: start the pool for the next
                warm_pool()  # after this scan, so that it does not slow it down
        return
    n_cpu = os.cpu_count() or 1
    size = max(16, len(items) // (4 * n_cpu) or 1)
    batches = [items[s : s + size] for s in range(0, len(items), size)]
    futures = [pool.submit(_parse_batch, b) for b in batches]
    done = 0
    try:
        for batch, fut in zip(batches, futures):
            try:
                recs = fut.result()
            except Exception:  # noqa: BLE001 - pool broken (a worker was killed): parse here instead
                recs = _parse_batch(batch)
            done += len(batch)
            yield done, recs
    finally:
        for fut in futures:
            fut.cancel()


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
    if not root.exists() and not root.is_symlink():
        raise FileNotFoundError(f"{shown(root)}: no such file or folder")
    result = ScanResult(root=shown(root))
    skipped = result.skipped
    files: list[tuple[Path, str]] = []
    problem = _not_regular(root) if not root.is_dir() else None
    if problem:
        skipped.append(Skipped(shown(root), problem))
    elif root.is_dir():
        dicomdir = root / "DICOMDIR"
        if dicomdir.is_file():
            listed = _dicomdir_files(dicomdir, skipped)
            files = [(p, shown(p)) for p in listed]
        else:
            files = [(p, shown(p)) for p in _iter_files(root, skipped)]
    elif _is_zip(root):
        files = _extract_zip(root, result)
    elif root.name.upper() == "DICOMDIR":
        files = [(p, shown(p)) for p in _dicomdir_files(root, skipped)]
    else:
        files = [(root, shown(root))]

    total = len(files)
    top = root if root.is_dir() else root.parent
    items = [(p, d) for p, d in files if not (p.name.upper() == "DICOMDIR" and p.parent == top)]
    records: list[_Parsed] = []
    for n, batch in _parse_all(items):
        for rec in batch:
            if rec.unreadable:
                skipped.append(Skipped(rec.display, rec.unreadable))
            else:
                records.append(rec)
        yield n, total, None
    _group(records, result)
    yield total, total, result


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _zip_limit() -> int:
    try:
        return int(float(os.environ["RADREVIEW_ZIP_MAX_MB"]) * (1 << 20))
    except (KeyError, ValueError):
        return ZIP_MAX_BYTES


def _extract_zip(root: Path, result: ScanResult) -> list[tuple[Path, str]]:
    """Extract a ``.zip`` into a private folder (removed by :meth:`ScanResult.cleanup` or at exit).

    Entries are written under numbered names, so ``../`` and absolute entry names cannot write
    outside it; the total is capped at :data:`ZIP_MAX_BYTES` and an entry compressed more than
    :data:`ZIP_MAX_RATIO`:1 (over 64 MiB) is refused as a zip bomb. Refused entries go to
    ``skipped``.
    """
    skipped = result.skipped
    limit = _zip_limit()
    files: list[tuple[Path, str]] = []
    try:
        zf = zipfile.ZipFile(root)
    except Exception as exc:  # noqa: BLE001 - a damaged central directory
        skipped.append(Skipped(shown(root), f"unreadable zip archive ({type(exc).__name__}: {exc})"))
        return files
    tmp = _private_tempdir()
    result._tempdir = tmp
    total = 0
    with zf:
        for member in zf.infolist():
            name = f"{shown(root)}!{member.filename}"
            if member.is_dir():
                continue
            if member.file_size > (64 << 20) and member.file_size > ZIP_MAX_RATIO * max(member.compress_size, 1):
                skipped.append(Skipped(name, f"zip entry expands {member.file_size // max(member.compress_size, 1)}:1 "
                                             f"to {member.file_size >> 20} MiB (zip bomb?); not extracted"))
                continue
            if total + member.file_size > limit:
                skipped.append(Skipped(name, f"zip extraction limit of {limit >> 20} MiB reached "
                                             "(RADREVIEW_ZIP_MAX_MB); not extracted"))
                continue
            target = Path(tmp) / f"{len(files):06d}"
            try:
                written = 0
                with zf.open(member) as src, open(target, "wb") as dst:
                    while True:
                        block = src.read(1 << 20)
                        if not block:
                            break
                        written += len(block)
                        if written > member.file_size or total + written > limit:
                            raise ValueError("entry is larger than its declared size or the extraction limit")
                        dst.write(block)
            except Exception as exc:  # noqa: BLE001 - CRC error, bad compression, lying sizes...
                target.unlink(missing_ok=True)
                skipped.append(Skipped(name, f"cannot extract from zip: {type(exc).__name__}: {exc}"))
                continue
            total += written
            files.append((target, name))
    return files


def scan(path: str | os.PathLike) -> ScanResult:
    """Scan ``path`` and return the grouped :class:`ScanResult` (see :func:`iter_scan`)."""
    last = deque(iter_scan(path), maxlen=1)  # run the scan to the end, keep the final yield
    result = last[0][2] if last else None
    assert result is not None, "iter_scan ends with its ScanResult"
    return result


def _group(records: list[_Parsed], result: ScanResult) -> None:
    skipped = result.skipped
    seen_sop: dict[str, str] = {}
    by_series: dict[tuple[str, str, str], list[FrameRef]] = defaultdict(list)
    series_meta: dict[tuple[str, str, str], dict] = {}
    others: dict[tuple[str, str, str], SeriesEntry] = {}
    infos: dict[tuple, StudyInfo] = {}

    for rec in records:
        _merge(rec, skipped, seen_sop, by_series, series_meta, others, infos)

    for key, frames in by_series.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result.series.extend(_split_series(key, frames, series_meta[key], skipped))
        except Exception as exc:  # noqa: BLE001 - a bad stack is reported, the others load
            for f in sorted({f.display_path or f.path for f in frames}):
                skipped.append(Skipped(f, f"series {key[1] or '(no UID)'} could not be stacked: {type(exc).__name__}: {exc}"))
    patients = defaultdict(set)
    for s in result.series:
        patients[(s.study_instance_uid, s.series_instance_uid)].add(s.info.patient_id)
    for s in result.series:
        ids = patients[(s.study_instance_uid, s.series_instance_uid)]
        if len(ids) > 1:
            s.warnings.insert(0, f"images of {len(ids)} patients share this Study/Series Instance UID; split by "
                                 f"Patient ID (this one: {s.info.patient_id or '(none)'})")
    result.series.extend(others.values())
    result.series.sort(key=lambda s: (s.study_instance_uid, s.info.series_number.zfill(6), s.series_instance_uid,
                                      s.info.patient_id, s.stack_label))


def _info_key(rec: _Parsed) -> tuple:
    if rec.kind == "volume":
        return ("volume", rec.study, rec.series, rec.patient)
    return (rec.kind, rec.study, rec.series, rec.sop_class)


def _merge(rec: _Parsed, skipped, seen_sop, by_series, series_meta, others, infos) -> None:
    """Sort one parsed file into a series (or ``skipped``), in file order."""
    if rec.info is not None:
        infos.setdefault(_info_key(rec), rec.info)
    if rec.early:
        skipped.append(Skipped(rec.display, rec.early))
        return
    if rec.sop_uid in seen_sop:
        skipped.append(Skipped(rec.display, f"duplicate SOP Instance UID {rec.sop_uid} (same as {seen_sop[rec.sop_uid]})"))
        return
    seen_sop[rec.sop_uid] = rec.display
    if rec.late:
        skipped.append(Skipped(rec.display, rec.late))
        return
    info = infos.get(_info_key(rec)) or StudyInfo(study_instance_uid=rec.study, series_instance_uid=rec.series,
                                                 patient_id=rec.patient, modality=rec.modality,
                                                 series_description=rec.description, sop_class_uid=rec.sop_class,
                                                 source=rec.display)
    if rec.kind in ("non-image", "image"):
        okey = (rec.study, rec.series, rec.sop_class)
        if okey not in others:
            others[okey] = SeriesEntry(
                rec.study, rec.series, rec.modality, rec.description, rec.sop_class,
                info=dataclasses.replace(info), kind=rec.kind,
                warnings=[f"2-D images only ({rec.why_2d}); not stacked into a volume"] if rec.kind == "image" else [],
            )
        others[okey].files.append(rec.display)
        return
    key = (rec.study, rec.series, rec.patient)  # two patients never share a volume
    by_series[key].extend(rec.frames)
    if key not in series_meta:
        series_meta[key] = {"modality": rec.modality, "description": rec.description, "info": info,
                            "sop_class": rec.sop_class}
    for f in rec.frames:
        f.sop_instance_uid = f.sop_instance_uid or rec.sop_uid


def _extract(ds, path: Path, rec: _Parsed, info_keys: set) -> None:
    """Fill ``rec`` from one header; raises for headers too broken to read."""
    display = rec.display
    rec.sop_class = sop_class = _str(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    rec.sop_uid = _str(ds, "SOPInstanceUID") or str(ds.file_meta.get("MediaStorageSOPInstanceUID", ""))
    if sop_class == "1.2.840.10008.1.3.10":  # a nested DICOMDIR
        rec.early = "DICOMDIR index (not an image; the files it lists are scanned)"
        return
    if not sop_class or not rec.sop_uid:
        rec.early = "no SOP Class UID / SOP Instance UID (0008,0016/0018)"
        return
    rec.study = _str(ds, "StudyInstanceUID")
    rec.series = _str(ds, "SeriesInstanceUID")
    rec.patient = _str(ds, "PatientID")
    rec.modality = _str(ds, "Modality")
    rec.description = _str(ds, "SeriesDescription")

    def need_info() -> None:
        key = _info_key(rec)
        if key not in info_keys:
            rec.info = _info_from(ds, display)
            info_keys.add(key)

    if is_non_image(sop_class) or "PixelData" not in ds and sop_class not in VOLUME_CLASSES:
        rec.kind = "non-image"
        need_info()
        return
    if "PixelData" not in ds:
        rec.late = "image SOP Class but no Pixel Data (7FE0,0010)"
        return
    offset, length, problem = _pixel_location(ds, path)
    if problem:
        rec.late = problem
        return
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1))
    try:
        if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
            frames = _frames_from_multiframe(ds, path, display)
        else:
            frames = _frames_from_single(ds, path, display)
    except HeaderProblem as exc:
        rec.late = str(exc)
        return
    except Exception as exc:
        rec.late = f"unusable image header: {type(exc).__name__}: {exc}"
        return
    if spp != 1 or any(f.position is None or f.orientation is None for f in frames):
        rec.kind = "image"
        rec.why_2d = "colour image" if spp != 1 else "no Image Position/Orientation (Patient)"
        need_info()
        return
    rec.kind = "volume"
    rec.frames = frames
    need_info()


def _stack_key(f: FrameRef):
    ori = tuple(np.round(frame_plane(f)[1], 3) + 0.0)
    return (f.stack_id, ori, f.echo_numbers, f.effective_echo_time, f.temporal)


def _split_series(key, frames: list[FrameRef], meta: dict, skipped: list[Skipped]) -> list[SeriesEntry]:
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
            modality=meta["modality"],
            description=meta["description"],
            sop_class_uid=meta["sop_class"],
            info=dataclasses.replace(meta["info"]),
        )
        if len(stacks) > 1:
            parts = []
            stack_id, ori, echo_numbers, echo_time, temporal = skey
            if stack_id:
                parts.append(f"stack {stack_id}")
            if echo_numbers is not None:
                parts.append(f"echo {echo_numbers:g}")
            if echo_time is not None:
                parts.append(f"echo time {echo_time:g} ms")
            if temporal is not None:
                parts.append(f"time {temporal:g}")
            if len({k[1] for k, _, _ in stacks}) > 1:
                parts.append(_orientation_name(np.array(ori)))
            if slab_note:
                parts.append(slab_note)
            entry.stack_label = f"{idx}/{len(stacks)}" + (f" ({', '.join(parts)})" if parts else "")
        try:
            geom, ordered, dups = compute_stack_geometry(members)
        except Exception as exc:  # noqa: BLE001 - this stack is reported, the others still load
            for path in sorted({f.display_path or f.path for f in members}):
                skipped.append(Skipped(path, f"stack {idx}/{len(stacks)} of series {key[1] or '(no UID)'} has unusable "
                                             f"geometry: {type(exc).__name__}: {exc}"))
            continue
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
