"""DICOM/NIfTI discovery and loading, the :class:`Volume` (array + LPS geometry), label I/O.

GUI-free: nothing here imports Qt, VTK or torch.
"""

from .discovery import FrameRef, HeaderProblem, ScanResult, SeriesEntry, Skipped, iter_scan, scan
from .jobs import drain
from .imagefile import is_image_file, load_image_file, save_label_file
from .loader import LoadError, LoadProgress, iter_load, load_series
from .volume import StudyInfo, Volume

__all__ = [
    "FrameRef", "HeaderProblem", "ScanResult", "SeriesEntry", "Skipped", "iter_scan", "scan",
    "is_image_file", "load_image_file", "save_label_file",
    "LoadError", "LoadProgress", "iter_load", "load_series",
    "StudyInfo", "Volume", "open_volume", "drain",
]


def _describe(e: SeriesEntry) -> str:
    nx, ny, nz = e.geometry.size if e.geometry is not None else (0, 0, 0)
    label = f" stack {e.stack_label}" if e.stack_label else ""
    desc = e.description or "(no description)"
    return f"{e.series_instance_uid or '(no UID)'}{label} '{desc}' ({nx}x{ny}x{nz})"


def open_volume(path, series_uid: str | None = None) -> Volume:
    """Open the largest (or the named) image volume at ``path``: a DICOM folder/zip/DICOMDIR or
    a NIfTI/NRRD/MHA file. Array ``(z, y, x)``, geometry LPS mm.

    When ``path`` holds several image volumes the largest stack is used and
    ``Volume.warnings`` names it and the others found (so ``open``, ``infer``, ``review`` and
    ``snapshot`` never use one silently). Files that were not used are in ``Volume.skipped``.
    A ``.zip`` is extracted into a private temporary folder that is removed before this
    returns.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    LoadError
        If no image volume is found (the message lists what was skipped) or the chosen one
        cannot be loaded (bad geometry, too large for memory, nothing decodable).
    """
    if is_image_file(path):
        return load_image_file(path)
    result = scan(path)
    try:
        vols = result.volumes
        if series_uid:
            vols = [v for v in vols if v.series_instance_uid == series_uid]
        if not vols:
            why = "; ".join(f"{s.path}: {s.reason}" for s in result.skipped[:5])
            raise LoadError(f"{path}: no image volume found" + (f" (skipped: {why})" if why else ""))
        # Prefer the largest stack (localisers and single slices last).
        best = max(vols, key=lambda e: len(e.frames))
        vol = load_series(best)
    finally:
        result.cleanup()
    if len(vols) > 1:
        others = [v for v in vols if v is not best]
        vol.warnings.insert(0, f"{len(vols)} image volumes found; using series {_describe(best)}; not used: "
                               + "; ".join(_describe(v) for v in others[:5]) + (" ..." if len(others) > 5 else ""))
    vol.skipped = list(result.skipped) + list(getattr(vol, "skipped", []))  # type: ignore[attr-defined]
    return vol
