"""Background jobs for the GUI: superqt ``thread_worker`` around the GUI-free generators.

Workers never touch widgets or VTK objects: they yield progress and numpy arrays, and the GUI
thread builds the VTK data from what arrives through the signals.
"""

from __future__ import annotations

from superqt.utils import thread_worker

from studies import iter_load, iter_scan, load_image_file


@thread_worker
def scan_worker(path: str):
    """Yields ``("scan", done, total)`` and returns the ScanResult."""
    result = None
    for done, total, result in iter_scan(path):
        yield ("scan", done, total, None)
    return result


@thread_worker
def load_worker(entry):
    """Yields ``("load", done, total, preview)`` and returns the Volume."""
    gen = iter_load(entry)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield ("load", p.done, p.total, p.preview)


@thread_worker
def load_file_worker(path: str):
    """Loads a NIfTI/NRRD/MHA file (SimpleITK does it in one call)."""
    yield ("load", 0, 1, None)
    return load_image_file(path)
