"""DICOM/NIfTI discovery and loading, the :class:`Volume` (array + LPS geometry), label I/O.

GUI-free: nothing here imports Qt, VTK or torch.
"""

from .discovery import FrameRef, ScanResult, SeriesEntry, Skipped, iter_scan, scan
from .jobs import drain
from .imagefile import is_image_file, load_image_file, save_label_file
from .loader import LoadError, LoadProgress, iter_load, load_series
from .volume import StudyInfo, Volume

__all__ = [
    "FrameRef", "ScanResult", "SeriesEntry", "Skipped", "iter_scan", "scan",
    "is_image_file", "load_image_file", "save_label_file",
    "LoadError", "LoadProgress", "iter_load", "load_series",
    "StudyInfo", "Volume", "open_volume", "drain",
]


def open_volume(path, series_uid: str | None = None) -> Volume:
    """Open the first (or the named) image volume at ``path``: a DICOM folder/zip/DICOMDIR or
    a NIfTI/NRRD/MHA file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    LoadError
        If no image volume is found (the message lists what was skipped).
    """
    if is_image_file(path):
        return load_image_file(path)
    result = scan(path)
    vols = result.volumes
    if series_uid:
        vols = [v for v in vols if v.series_instance_uid == series_uid]
    if not vols:
        why = "; ".join(f"{s.path}: {s.reason}" for s in result.skipped[:5])
        raise LoadError(f"{path}: no image volume found" + (f" (skipped: {why})" if why else ""))
    # Prefer the largest stack (localisers and single slices last).
    best = max(vols, key=lambda e: len(e.frames))
    vol = load_series(best)
    vol.skipped = list(result.skipped) + list(getattr(vol, "skipped", []))  # type: ignore[attr-defined]
    return vol
