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





def _surfaces(labels, volume, indices, tick):
    """Surface meshes of ``indices`` in ``labels`` ``(z, y, x)`` on ``volume``'s grid
    (``render.label_surfaces``, strided to 128 voxels per axis), yielding ``tick`` while they
    are computed. VTK filters hold the GIL, so they run in the shared process pool (the GUI
    thread keeps turning); in this thread when there is no pool."""
    import numpy as np
    from concurrent.futures import wait

    from radreview.studies.parallel import decode_pool
    from radreview.viewer.render import label_surfaces, strided_array

    arr, sp = strided_array(labels, volume.spacing, 128)
    args = (arr, tuple(sp), tuple(volume.origin), np.asarray(volume.direction), list(indices), None)
    pool = decode_pool()
    if pool is None:
        return label_surfaces(*args)
    fut = pool.submit(label_surfaces, *args)
    while not fut.done():  # cancellable while waiting
        yield tick
        wait([fut], timeout=0.2)
    return fut.result()


@thread_worker(ignore_errors=True)
def surfaces_worker(labels, volume, indices):
    """3D surface meshes of a label map shown without them (a restored run): returns
    ``{index: (points, triangles, normals)}`` for ``VolumeScene.add_surface``."""
    return (yield from _guard(_surfaces(labels, volume, indices, ("surfaces", 0, 1))))


def _stride(volume, max_dim):
    from radreview.viewer.render import strided_array

    yield ("stride", 0, 1)
    return strided_array(volume.array, volume.spacing, max_dim)


@thread_worker(ignore_errors=True)
def stride_worker(volume, max_dim: int):
    """The 3D view's strided copy ``(array (z, y, x), spacing (sx, sy, sz) mm)``, off the GUI thread."""
    return (yield from _guard(_stride(volume, max_dim)))


def _run_models(volume, model_ids, thresholds, precision, threads):

    from radreview.inference.segment import SegProgress
    from radreview.viewer.workflow import default_models, iter_run_models

    if model_ids is None:
        model_ids = default_models(volume)
    from radreview.inference.package import PackageError, load_package

    tasks = {}
    for mid in model_ids:
        try:
            tasks[mid] = load_package(mid).task
        except PackageError:
            tasks[mid] = "segmentation"
    yield ("__plan__", (list(model_ids), tasks))
    run = yield from iter_run_models(volume, model_ids, thresholds, precision, threads)
    # 3D surfaces of every segmented label except the body, here on the worker (never on the GUI thread)
    run.surface_meshes = {}
    for mid, seg in run.segmentations.items():
        idx = [s.index for s in seg.stats if s.voxels and s.name != "body"]
        run.surface_meshes[mid] = yield from _surfaces(seg.labels, volume, idx, (mid, SegProgress("surfaces", 0, 1)))
    if run.segmentations:  # the label maps compressed here, not when the GUI thread saves the run
        from radreview.viewer.workflow import encode_run_outputs

        run.encoded = encode_run_outputs(run)
    return run


@thread_worker(ignore_errors=True)
def run_ai_worker(volume, model_ids, thresholds, precision: str = "int8", threads: int | None = None):
    """As :func:`run_models_worker`, first yielding ``("__plan__", ([model ids], {id: task}))`` (the models that
    fit, decided here), and returning the ``AIRun`` with ``surface_meshes``
    ``{model_id: {label index: (points, triangles)}}`` computed on this worker."""
    return (yield from _guard(_run_models(volume, model_ids, thresholds, precision, threads)))


def iter_explain_candidate(volume, package, result, target: str = "study", margin: int = 32, group: int = 4):
    """Grad-CAM of one nodule candidate (or the study's top one), cropped around it, as a generator.

    Yields ``("explain", done, total)`` between steps (load the PyTorch twin, check it against
    the shipped ONNX model on the crop, then one step per ``group`` slices), so a Cancel takes
    effect within one step; returns the ``Explanation`` with the heatmap on the study grid.
    The network runs on the candidate's bounding box plus ``margin`` voxels of context on the
    model grid instead of whole slices (Grad-CAM is local: the map outside the crop is 0 in
    :func:`explain.gradcam.explain_candidate` too, which masks the score to the candidate).

    Raises
    ------
    ExplanationRefused
        Unknown target, empty region, twin disagreement, or an all-zero map.
    """
    import time

    import numpy as np
    import SimpleITK as sitk

    from radreview.explain import gradcam as gc
    from radreview.inference.segment import normalize

    t0 = time.perf_counter()
    yield ("explain", 0, 3)
    net = gc.load_twin(package)
    if package.meta.get("architecture", {}).get("name") == "TriPlanarNet":
        # ct-nodule-2p5d >= 0.2: Grad-CAM of the candidate's own 32 mm cube, already local and fast
        yield ("explain", 1, 2)
        return gc.explain_candidate(volume, package, result, target, net=net)
    spec = package.meta["input"]
    hu = sitk.GetArrayFromImage(result.grid)
    cand, prob = gc.resolve_target(result, target)
    if cand is None or not hasattr(result, "components") or not hasattr(cand, "label"):
        # no candidate (the method explains the lungs), or a runtime without candidate masks:
        # the uncropped method, in one step
        return gc.explain_candidate(volume, package, result, target, net=net)
    region = result.components == cand.label
    zs, ys, xs = np.nonzero(region)
    if zs.size == 0:
        raise gc.ExplanationRefused("nothing to explain: the target region is empty")
    y0, y1 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, hu.shape[1])
    x0, x1 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, hu.shape[2])
    x = normalize(hu[:, y0:y1, x0:x1], spec["normalization"])
    reg = region[:, y0:y1, x0:x1]
    ctx = int(spec.get("context_slices", 1))
    slices = [int(k) for k in np.flatnonzero(reg.any(axis=(1, 2)))]
    total = 2 + (len(slices) + group - 1) // group
    yield ("explain", 1, total)
    mid = slices[len(slices) // 2]
    probe, _ = gc._pad8(np.stack([x[np.clip(np.arange(mid - ctx, mid + ctx + 1), 0, x.shape[0] - 1)]]))
    diff = gc.check_twin(net, package, probe)
    yield ("explain", 2, total)
    layer = package.meta.get("gradcam_layer", "bottleneck")
    cam_grid = np.zeros(hu.shape, np.float32)
    for n, s in enumerate(range(0, len(slices), group)):
        part = slices[s:s + group]
        cams = gc.gradcam_slices(net, layer, x, part, reg[part], 1, ctx)
        cam_grid[part, y0:y1, x0:x1] = cams
        yield ("explain", 3 + n, total)
    return gc._finish(package, target, cam_grid, result.grid, volume, prob, t0, diff)


def _explain(volume, package, result, target):
    if package.task == "classification":
        return (yield from iter_explain_candidate(volume, package, result, target))
    yield ("explain", 0, 1)
    from radreview.explain.gradcam import explain_label

    return explain_label(volume, package, result, target)


@thread_worker(ignore_errors=True)
def explain_worker(volume, package, result, target: str):
    """Grad-CAM on the worker: yields ``("explain", done, total)`` (cancel with ``quit()``
    between steps); returns the ``Explanation`` (heatmap array on the study grid). Candidates
    are explained on a crop around them (:func:`iter_explain_candidate`)."""
    return (yield from _guard(_explain(volume, package, result, target)))
