"""Decode a :class:`~studies.discovery.SeriesEntry` into a :class:`~studies.volume.Volume`.

Decoding is parallel (a thread pool for native data and JPEG 2000 through imagecodecs, which
release the GIL; a process pool for the pylibjpeg decoders, which hold it) and the middle
slice is decoded first so a viewer can show it at once. The job is a generator yielding :class:`LoadProgress`; stop iterating to cancel.

Modality LUT: values are ``stored * Rescale Slope + Rescale Intercept`` (PS3.3 C.11.1.1.2),
per frame when frames differ. MONOCHROME1 (PS3.3 C.7.6.3.1.2) keeps the values and sets
``StudyInfo.invert_grayscale`` so the viewer displays the minimum as white.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Generator

import numpy as np

from .jobs import drain
from .discovery import FrameRef, SeriesEntry, Skipped, _NATIVE_LE
from .geometry import StackGeometry
from .parallel import decode_pool
from .volume import Volume
from radreview.studies.errors import RadreviewError

__all__ = ["LoadProgress", "iter_load", "load_series", "LoadError", "decode_frame", "output_dtype", "memory_budget"]


class LoadError(RuntimeError, RadreviewError):
    """A series could not be turned into a volume (message names the series and the cause)."""


def memory_budget() -> int:
    """Bytes a volume may take: ``MemAvailable`` (/proc/meminfo) and, when set, what is left of
    the address-space limit (``RLIMIT_AS``), whichever is smaller; 8 GiB where neither is known.
    """
    budget = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    budget = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = 0
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmSize:"):
                        used = int(line.split()[1]) * 1024
            left = max(soft - used, 0)
            budget = left if budget is None else min(budget, left)
    except (ImportError, OSError, ValueError):
        pass
    return budget if budget is not None else 8 << 30


def _check_fits(entry: SeriesEntry, geom: StackGeometry, n: int, rows: int, cols: int, dtype: np.dtype) -> None:
    """Refuse (``LoadError``) a volume whose arrays would not fit in memory, before allocating."""
    need = n * rows * cols * dtype.itemsize
    out_voxels = int(np.prod([int(v) for v in geom.size], dtype=np.float64))
    if geom.tilt_direction is not None or geom.resample_positions is not None:
        need += out_voxels * max(dtype.itemsize, 4)  # the resampled copy (float32 at worst)
    budget = memory_budget()
    if need > 0.8 * budget:
        raise LoadError(
            f"series {entry.series_instance_uid or '(no UID)'}: {n} slice(s) of {rows}x{cols} need "
            f"{need / 2**30:.2f} GiB, more than the {budget / 2**30:.2f} GiB of memory available; not loaded"
        )


@dataclass
class LoadProgress:
    """Progress of a load: ``done``/``total`` frames; ``preview`` is the first decoded slice.

    ``preview`` is ``(k, slice)`` with ``slice`` of shape ``(ny, nx)`` (rescaled values), sent
    once, for the middle slice, so a viewer can show it before the volume is complete.
    """

    done: int
    total: int
    message: str = ""
    preview: tuple[int, np.ndarray] | None = None


def _native_dtype(f: FrameRef) -> np.dtype | None:
    if f.transfer_syntax not in _NATIVE_LE or f.pixel_offset is None:
        return None
    if f.bits_allocated == 16:
        dt = np.dtype("<i2" if f.pixel_representation else "<u2")
    elif f.bits_allocated == 8:
        dt = np.dtype("i1" if f.pixel_representation else "u1")
    elif f.bits_allocated == 32:
        dt = np.dtype("<i4" if f.pixel_representation else "<u4")
    else:
        return None
    if f.pixel_length != f.rows * f.cols * dt.itemsize:
        return None
    if f.bits_stored != f.bits_allocated and f.pixel_representation:
        return None  # signed with spare high bits: let pydicom sign-extend
    return dt


#: JPEG 2000 transfer syntaxes (PS3.5 A.4.4: lossless only / lossy) decoded by imagecodecs.
_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}

_jpeg2k_decode: Callable[..., np.ndarray] | None
try:  # OpenJPEG through imagecodecs releases the GIL, so frames decode in parallel on threads
    import imagecodecs

    _jpeg2k_decode = imagecodecs.jpeg2k_decode
except ImportError:  # pragma: no cover - imagecodecs is a dependency; pydicom/pylibjpeg remain the fallback
    _jpeg2k_decode = None


def _threadable(f: FrameRef) -> bool:
    """True when ``f`` decodes outside the GIL (native data read by offset, or JPEG 2000 via imagecodecs)."""
    return _native_dtype(f) is not None or (
        _jpeg2k_decode is not None and f.transfer_syntax in _J2K and f.encapsulated_offset is not None)


def _decode_j2k(f: FrameRef, threads: int = 1) -> np.ndarray | None:
    """One JPEG 2000 frame through imagecodecs (OpenJPEG), or ``None`` when pydicom must decide.

    The codestream is taken from the encapsulated Pixel Data at the offset found at scan time
    (``pydicom.encaps.get_frame``, PS3.5 A.4); its declared size must match the header before it
    is decoded. The result is used only when its shape and
    signedness agree with the header (Rows, Columns, Bits Allocated, Pixel Representation);
    otherwise ``None`` and the caller uses pydicom, which reconciles a J2K header that
    disagrees with the DICOM one, so values stay identical to ``pydicom``'s ``pixel_array``.
    """
    from pydicom.encaps import get_frame

    if _jpeg2k_decode is None or f.encapsulated_offset is None:
        return None  # no imagecodecs, or no offset found at scan time: pydicom decides
    with open(f.path, "rb") as fh:
        fh.seek(f.encapsulated_offset)
        index = 0 if f.frame is None else f.frame
        data = get_frame(fh, index, number_of_frames=max(f.number_of_frames, 1))
    # The codestream's own size (SIZ marker segment, ITU-T T.800 A.5.1) is checked before
    # OpenJPEG allocates anything: it must be one component of Rows x Columns.
    if len(data) < 42 or data[:4] != b"\xff\x4f\xff\x51":
        return None  # not a bare codestream (e.g. a JP2 wrapper): pydicom decides
    xsiz, ysiz, xo, yo = struct.unpack(">4I", data[8:24])
    (csiz,) = struct.unpack(">H", data[40:42])
    if (ysiz - yo, xsiz - xo) != (f.rows, f.cols) or csiz != 1:
        return None
    arr = _jpeg2k_decode(data, numthreads=threads)
    want_kind = "i" if f.pixel_representation else "u"
    if (arr.shape != (f.rows, f.cols) or arr.dtype.kind != want_kind
            or arr.dtype.itemsize * 8 != f.bits_allocated):
        return None
    return arr


def decode_frame(f: FrameRef, threads: int = 1) -> np.ndarray:
    """Stored pixel values of one frame, shape ``(rows, cols)``, before the modality LUT.

    Native little-endian pixel data is read straight from its byte offset (the header was
    parsed at scan time; measured 5-10x faster than re-parsing with pydicom); everything
    else (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE, big endian) goes through
    ``pydicom.pixels.pixel_array`` and its pylibjpeg plugins, except JPEG 2000, decoded by
    imagecodecs (OpenJPEG, GIL released; ``threads`` OpenJPEG threads for this frame) when its
    output agrees with the header, else by pydicom as well.

    Raises
    ------
    Exception
        Whatever the decoder raises for corrupt data; callers turn it into a skipped frame.
    """
    dt = _native_dtype(f)
    if dt is not None and f.pixel_offset is not None:  # _native_dtype checked the offset too
        arr = np.fromfile(f.path, dtype=dt, count=f.rows * f.cols, offset=f.pixel_offset)
        if arr.size != f.rows * f.cols:
            raise ValueError(f"truncated pixel data ({arr.size} of {f.rows * f.cols} pixels)")
        if f.bits_stored < f.bits_allocated and not f.pixel_representation:
            arr = arr & ((1 << f.bits_stored) - 1)
        return arr.reshape(f.rows, f.cols)
    if _threadable(f):
        try:
            j2k = _decode_j2k(f, threads)
        except Exception:  # noqa: BLE001 - let pydicom decode it, or raise its own error
            j2k = None
        if j2k is not None:
            return j2k
    from pydicom.pixels import pixel_array

    if f.frame is None:
        arr = pixel_array(f.path)
    else:
        arr = pixel_array(f.path, index=f.frame)
    if arr.shape != (f.rows, f.cols):
        raise ValueError(f"decoded shape {arr.shape} is not {f.rows}x{f.cols}")
    return arr


def output_dtype(frames: list[FrameRef]) -> np.dtype:
    """Voxel dtype of the volume, from the header alone (as GDCM/SimpleITK decide it).

    The range of stored values follows *Bits Stored* and *Pixel Representation*; with integer
    Rescale Slope/Intercept on every frame the output is int16 when the rescaled range fits,
    else int32; any non-integer slope or intercept gives float32.
    """
    slopes = np.array([f.slope for f in frames], dtype=float)
    inter = np.array([f.intercept for f in frames], dtype=float)
    f0 = frames[0]
    bs = max(1, min(f0.bits_stored, 32))
    lo, hi = ((-(2 ** (bs - 1)), 2 ** (bs - 1) - 1) if f0.pixel_representation else (0, 2**bs - 1))
    if np.all(slopes == np.round(slopes)) and np.all(inter == np.round(inter)):
        ends = np.concatenate([lo * slopes + inter, hi * slopes + inter])
        if ends.min() >= -32768 and ends.max() <= 32767:
            return np.dtype(np.int16)
        return np.dtype(np.int32)
    return np.dtype(np.float32)


def _store(out: np.ndarray, arr: np.ndarray, f: FrameRef) -> None:
    """Write ``arr * slope + intercept`` (PS3.3 C.11.1.1.2) into ``out`` without big temporaries."""
    if f.slope == 1 and f.intercept == 0:
        np.copyto(out, arr, casting="unsafe")
    elif out.dtype == np.float32:
        np.multiply(arr, np.float32(f.slope), out=out, casting="unsafe")
        out += np.float32(f.intercept)
    elif f.slope == 1 and out.dtype == np.int16 and arr.dtype == np.uint16 and f.bits_stored <= 15:
        np.add(arr.view(np.int16), np.int16(f.intercept), out=out)  # values < 2**15: same bits
    else:
        np.copyto(out, arr.astype(np.int32) * int(f.slope) + int(f.intercept), casting="unsafe")


def _needs_process(f: FrameRef) -> bool:
    """True for frames whose decoder holds the GIL (pylibjpeg JPEG/JPEG-LS/RLE, big endian...)."""
    return not _threadable(f)


def iter_load(entry: SeriesEntry, workers: int | None = None) -> Generator[LoadProgress, None, Volume]:
    """Decode ``entry`` into a Volume, yielding progress; the generator's return value is it.

    Frames are written straight into the output array ``(z, y, x)``. Native pixel data and
    JPEG 2000 (imagecodecs) are decoded on a thread pool, as both release the GIL; other
    compressed frames (JPEG, JPEG-LS, RLE through pylibjpeg) on the shared process pool of
    :mod:`studies.parallel` since their decoders hold it. The middle slice is decoded first,
    with all CPUs working on it for JPEG 2000. Corrupt frames are
    skipped (listed in the ``skipped`` attribute of the returned volume and in its warnings)
    and the remaining slices are resampled onto a uniform grid.

    Raises
    ------
    LoadError
        If the entry is not an image volume or no frame could be decoded.
    """
    geom = entry.geometry
    if not entry.is_volume or geom is None:
        raise LoadError(f"series {entry.series_instance_uid} ({entry.sop_class_name}) is not an image volume")
    frames = list(entry.frames)
    n = len(frames)
    mid = n // 2
    f0 = frames[0]
    out_dtype = output_dtype(frames)
    _check_fits(entry, geom, n, f0.rows, f0.cols, out_dtype)
    try:
        vol = np.empty((n, f0.rows, f0.cols), dtype=out_dtype)
    except MemoryError:
        raise LoadError(f"series {entry.series_instance_uid or '(no UID)'}: not enough memory for {n} slice(s) of "
                        f"{f0.rows}x{f0.cols}") from None
    ok = np.zeros(n, dtype=bool)
    skipped: list[Skipped] = []

    def fail(j: int, why: str) -> None:
        skipped.append(Skipped(frames[j].shown_path, f"cannot decode pixel data ({why}); slice skipped"))

    def work(j: int, threads: int = 1) -> None:
        try:
            _store(vol[j], decode_frame(frames[j], threads), frames[j])
            ok[j] = True
        except Exception as exc:  # corrupt slice: report, keep going
            fail(j, f"{type(exc).__name__}: {exc}")

    workers = workers or min(8, os.cpu_count() or 1)
    # the middle slice first, so a viewer can show it at once
    work(mid, workers)
    yield LoadProgress(1, n, "decoding", preview=(mid, vol[mid].copy()) if ok[mid] else None)
    done = 1
    rest = [j for j in range(n) if j != mid]
    pool = decode_pool() if (len(rest) >= 4 and any(_needs_process(frames[j]) for j in rest)) else None
    if pool is not None:
        chunk = max(4, len(rest) // (4 * (os.cpu_count() or 1)) or 1)
        futures = {}
        for s in range(0, len(rest), chunk):
            part = rest[s : s + chunk]
            futures[pool.submit(_decode_many, [frames[j] for j in part])] = part
        try:
            for fut in as_completed(futures):
                part = futures[fut]
                try:
                    results = fut.result()
                except Exception:  # pool broken (e.g. a worker was killed): decode here instead
                    results = None
                    for j in part:
                        work(j)
                for j, (arr, err) in zip(part, results or []):
                    if arr is not None:
                        _store(vol[j], arr, frames[j])
                        ok[j] = True
                    else:
                        fail(j, err or "no error text")
                done += len(part)
                yield LoadProgress(done, n, "decoding")
        finally:
            for fut in futures:
                fut.cancel()
    else:
        with ThreadPoolExecutor(max_workers=workers) as tp:
            chunk = max(workers * 8, 16)  # bounded chunks keep cancellation responsive
            for s in range(0, len(rest), chunk):
                part = rest[s : s + chunk]
                list(tp.map(work, part))
                done += len(part)
                yield LoadProgress(done, n, "decoding")

    good = np.flatnonzero(ok)
    if good.size == 0:
        raise LoadError(f"series {entry.series_instance_uid}: no slice could be decoded ({skipped[0].reason if skipped else ''})")
    warnings = list(entry.warnings)
    info = entry.info
    info.invert_grayscale = frames[int(good[0])].photometric == "MONOCHROME1"
    if info.invert_grayscale:
        warnings.append("MONOCHROME1: displayed inverted (minimum shown white); values unchanged")
    if good.size < n:
        vol = vol[good]
    positions = geom.source_positions[good]

    resample_to = geom.resample_positions
    if good.size < n:
        warnings.append(f"{n - good.size} slice(s) could not be decoded and were skipped")
        if geom.tilt_direction is None and good.size > 1 and resample_to is None:
            resample_to = np.linspace(geom.source_positions[0], geom.source_positions[-1], n)

    yield LoadProgress(n, n, "assembling volume")
    try:
        volume = _assemble(entry, geom, frames, vol, good, positions, resample_to, info, warnings, n)
    except (ValueError, ArithmeticError, MemoryError, RuntimeError) as exc:  # geometry the grid cannot hold
        raise LoadError(f"series {entry.series_instance_uid or '(no UID)'}: cannot build the volume "
                        f"({type(exc).__name__}: {exc})") from None
    volume.skipped = skipped  # type: ignore[attr-defined]
    return volume


def _assemble(entry, geom, frames, vol, good, positions, resample_to, info, warnings, n) -> Volume:
    spacing = geom.spacing
    origin = geom.origin
    direction = geom.direction
    if geom.tilt_direction is not None:
        vol, origin, spacing, direction = _resample_tilt(vol, geom, [frames[j] for j in good])
    elif resample_to is not None and good.size > 1:
        vol = _resample_along_normal(vol, positions, resample_to)
        step = float((resample_to[-1] - resample_to[0]) / (len(resample_to) - 1))
        spacing = (spacing[0], spacing[1], step)
        normal = geom.direction[:, 2]
        first = np.asarray(frames[int(good[0])].position, float)
        origin = tuple(first + normal * (resample_to[0] - positions[0]))
        direction = np.column_stack([geom.direction[:, 0], geom.direction[:, 1], normal])
        if good.size < n and geom.resample_positions is None:
            warnings.append(f"resampled to a uniform {step:.4g} mm grid across the missing slice(s)")
    return Volume(vol, spacing=spacing, origin=origin, direction=direction, info=info, warnings=warnings)


def _decode_many(frames: list[FrameRef]) -> list[tuple[np.ndarray | None, str | None]]:
    """Process-pool task: decode several frames, errors returned as text (picklable)."""
    out: list[tuple[np.ndarray | None, str | None]] = []
    for f in frames:
        try:
            out.append((decode_frame(f), None))
        except Exception as exc:
            out.append((None, f"{type(exc).__name__}: {exc}"))
    return out


def load_series(entry: SeriesEntry, workers: int | None = None) -> Volume:
    """Blocking form of :func:`iter_load`."""
    return drain(iter_load(entry, workers))


def _resample_along_normal(vol: np.ndarray, pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Linear interpolation of slices ``vol`` (k, y, x) at ``pos`` (mm) onto ``target`` (mm)."""
    out_dtype = vol.dtype
    out = np.empty((len(target), vol.shape[1], vol.shape[2]), dtype=out_dtype)
    idx = np.clip(np.searchsorted(pos, target, side="right") - 1, 0, len(pos) - 2)
    for k, (t, i) in enumerate(zip(target, idx)):
        w = (t - pos[i]) / (pos[i + 1] - pos[i])
        w = min(max(w, 0.0), 1.0)
        val = vol[i].astype(np.float32) * (1 - w) + vol[i + 1].astype(np.float32) * w
        out[k] = np.rint(val) if np.issubdtype(out_dtype, np.integer) else val
    return out


def _resample_tilt(vol: np.ndarray, geom, frames: list[FrameRef]):
    """Resample a gantry-tilted stack onto the orthogonal grid in ``geom`` (SimpleITK, linear)."""
    import SimpleITK as sitk

    src = sitk.GetImageFromArray(vol)
    sx, sy, _ = geom.spacing
    first = np.asarray(frames[0].position, float)
    last = np.asarray(frames[-1].position, float)
    sz = float(np.linalg.norm(last - first) / max(len(frames) - 1, 1))
    src.SetSpacing((sx, sy, sz))
    src.SetOrigin(tuple(first))
    d = np.column_stack([geom.direction[:, 0], geom.direction[:, 1], (last - first) / np.linalg.norm(last - first)])
    src.SetDirection(tuple(d.ravel()))
    ref = sitk.Image([int(v) for v in geom.size], src.GetPixelID())
    ref.SetSpacing(tuple(geom.spacing))
    ref.SetOrigin(tuple(geom.origin))
    ref.SetDirection(tuple(np.asarray(geom.direction).ravel()))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, float(vol.min()))
    return sitk.GetArrayFromImage(out), tuple(geom.origin), tuple(geom.spacing), np.asarray(geom.direction)
