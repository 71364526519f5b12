"""Background jobs for the GUI: superqt ``thread_worker`` around the GUI-free generators.

Workers never touch widgets or VTK objects: they yield progress and numpy arrays, and the GUI
thread builds the VTK data from what arrives through the signals. superqt treats a
``RuntimeError`` raised by a worker as "worker deleted" and only warns, so every job runs
through :func:`_guard`, which re-raises it as :class:`JobFailed` and reaches ``errored``.
"""

from __future__ import annotations

from superqt.utils import thread_worker

from radreview.studies import iter_load, iter_scan, load_image_file


class JobFailed(Exception):
    """A background job failed; the message is the original error's."""


def _guard(gen):
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            yield item
    except RuntimeError as exc:
        raise JobFailed(str(exc)) from exc


def _scan(path):
    result = None
    for done, total, result in iter_scan(path):
        yield ("scan", done, total, None)
    return result


@thread_worker(ignore_errors=True)
def scan_worker(path: str):
    """Yields ``("scan", done, total, None)`` and returns the ScanResult."""
    return (yield from _guard(_scan(path)))


def _load(entry):
    gen = iter_load(entry)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield ("load", p.done, p.total, p.preview)


@thread_worker(ignore_errors=True)
def load_worker(entry):
    """Yields ``("load", done, total, preview)`` and returns the Volume."""
    return (yield from _guard(_load(entry)))


def _load_file(path):
    yield ("load", 0, 1, None)
    return load_image_file(path)


@thread_worker(ignore_errors=True)
def load_file_worker(path: str):
    """Loads a NIfTI/NRRD/MHA file (SimpleITK does it in one call)."""
    return (yield from _guard(_load_file(path)))


@thread_worker(ignore_errors=True)
def run_models_worker(volume, model_ids, thresholds, precision: str = "int8", threads: int | None = None):
    """Yields ``(model_id, SegProgress)``; returns the ``AIRun`` (arrays and findings only)."""
    from radreview.viewer.workflow import iter_run_models

    return (yield from _guard(iter_run_models(volume, model_ids, thresholds, precision, threads)))


def _explain(volume, package, result, target):
    yield ("explain", 0, 1)
    from radreview.explain.gradcam import explain_candidate, explain_label

    if package.task == "classification":
        return explain_candidate(volume, package, result, target)
    return explain_label(volume, package, result, target)


@thread_worker(ignore_errors=True)
def explain_worker(volume, package, result, target: str):
    """Grad-CAM on the worker; returns the ``Explanation`` (heatmap array on the study grid)."""
    return (yield from _guard(_explain(volume, package, result, target)))
