"""Background jobs for the GUI: superqt ``thread_worker`` around the GUI-free generators.

Workers never touch widgets or VTK objects: they yield progress and numpy arrays, and the GUI
thread builds the VTK data from what arrives through the signals.
"""

from __future__ import annotations

from superqt.utils import thread_worker

from studies import iter_load, iter_scan, load_image_file


@thread_worker(ignore_errors=True)
def scan_worker(path: str):
    """Yields ``("scan", done, total)`` and returns the ScanResult."""
    result = None
    for done, total, result in iter_scan(path):
        yield ("scan", done, total, None)
    return result


@thread_worker(ignore_errors=True)
def load_worker(entry):
    """Yields ``("load", done, total, preview)`` and returns the Volume."""
    gen = iter_load(entry)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield ("load", p.done, p.total, p.preview)


@thread_worker(ignore_errors=True)
def load_file_worker(path: str):
    """Loads a NIfTI/NRRD/MHA file (SimpleITK does it in one call)."""
    yield ("load", 0, 1, None)
    return load_image_file(path)


@thread_worker(ignore_errors=True)
def segment_worker(volume, package_id: str, precision: str = "int8", threads: int | None = None):
    """Yields ``SegProgress``; returns the ``SegmentationResult`` (arrays only, no VTK/Qt)."""
    from inference.package import load_package
    from inference.segment import iter_segment

    pkg = load_package(package_id, check_hashes=True)
    gen = iter_segment(volume, pkg, precision, threads)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield p
