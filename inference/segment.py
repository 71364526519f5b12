"""Segmentation runtime: MONAI-Label-style stages on ONNX Runtime, GUI-free.

``iter_segment`` runs the stages of a segmentation package, each timed:

1. **pre**: resample the study to the model grid (SimpleITK, linear, axis-aligned LPS at the
   card's ``spacing_mm``) and normalise intensities (HU clip + scale, or percentile z-score);
2. **infer**: 2.5-D sliding window over axial slices (``2k+1`` neighbouring slices as channels,
   in-plane patches with the card's overlap) blended with a Gaussian importance map (sigma =
   patch/8, as nnU-Net: Isensee et al., Nat Methods 2021), softmax with the card's temperature;
3. **inverse**: probabilities resampled back onto the study grid channel by channel (linear),
   keeping the running argmax, max probability and the label map, so the mask lines up voxel
   for voxel with the input series;
4. **post**: largest connected component for the labels the card lists; per-label voxel
   count, volume (mL), confidence (mean max-softmax probability inside the predicted region)
   and the voxel entropy map (uncertainty).

The generator yields :class:`SegProgress` (with an ETA) and can be closed to cancel; nothing
is returned until every stage finished, so a cancelled run leaves no partial result.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Generator

import numpy as np
import SimpleITK as sitk

from radreview.studies.jobs import drain
from radreview.studies.volume import Volume

from .package import ModelPackage, PackageError

__all__ = ["open_runtime", "SegProgress", "LabelStats", "SegmentationResult", "iter_segment", "segment", "gaussian_importance",
           "make_session", "to_model_grid", "normalize"]


@dataclass
class SegProgress:
    """``done``/``total`` work units of the current ``stage``; ``eta_s`` remaining seconds."""

    stage: str
    done: int
    total: int
    eta_s: float | None = None


@dataclass
class LabelStats:
    index: int
    name: str
    voxels: int
    volume_ml: float
    confidence: float | None
    color: tuple[int, int, int] = (255, 0, 0)
    centroid_lps: tuple[float, float, float] | None = None

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "voxels": self.voxels,
                "volume_ml": round(self.volume_ml, 3),
                "confidence": None if self.confidence is None else round(self.confidence, 4)}


@dataclass
class SegmentationResult:
    """Labels ``(z, y, x)`` on the input volume's exact grid, plus per-label stats.

    ``max_prob`` is the max-softmax probability per voxel (float16), ``entropy`` the voxel
    entropy in nats (float16); both on the same grid.
    """

    model_id: str
    precision: str
    labels: np.ndarray
    max_prob: np.ndarray
    entropy: np.ndarray
    stats: list[LabelStats]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def findings_json(self) -> dict:
        return {"model": self.model_id, "precision": self.precision, "seconds": round(self.seconds, 3),
                "labels": [s.as_dict() for s in self.stats], "warnings": self.warnings,
                "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()}}


def check_session(session, package: ModelPackage, n_out: int) -> None:
    """Refuse an ONNX model whose input/output shape does not match its card.

    Raises
    ------
    PackageError
        Channels, dimensionality or output classes differ from ``model.json``.
    """
    spec = package.meta["input"]
    inp = session.get_inputs()[0]
    ctx = int(spec.get("context_slices", 1))
    channels = int(spec["channels"])
    if channels != 2 * ctx + 1:
        raise PackageError(f"{package.id}: input.channels {channels} != 2*context_slices+1")
    if len(inp.shape) != 4 or (isinstance(inp.shape[1], int) and inp.shape[1] != channels):
        raise PackageError(f"{package.id}: ONNX input {inp.name} has shape {inp.shape}, card says {channels} channels, 2-D patches")
    out_shape = session.get_outputs()[0].shape
    if isinstance(out_shape[1], int) and out_shape[1] != n_out:
        raise PackageError(f"{package.id}: ONNX output has {out_shape[1]} channels, card lists {n_out} labels")


def open_runtime(volume: Volume, package: ModelPackage, task: str, precision: str, threads: int | None):
    """Checks shared by every runtime, then an ONNX session: ``(session, warnings)``.

    Raises
    ------
    PackageError
        Wrong task, modality refused by the card, file hash failure or a model/card mismatch.
    ValueError
        Unknown precision.
    """
    if package.task != task:
        raise PackageError(f"model {package.id} is a {package.task} model, not {task}")
    if precision not in ("int8", "fp32"):
        raise ValueError(f"precision must be int8 or fp32, not {precision!r}")
    warnings = []
    w = package.check_modality(volume.info.modality)
    if w:
        warnings.append(w)
    session = make_session(package.file(precision), threads)
    check_session(session, package, len(package.labels))
    return session, warnings


def make_session(path, threads: int | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (all cores if ``None``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def gaussian_importance(size: tuple[int, int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """Gaussian weights ``(h, w)`` peaking at the patch centre, minimum clamped above 0."""
    h, w = size
    yy = np.exp(-0.5 * ((np.arange(h) - (h - 1) / 2) / (h * sigma_scale)) ** 2)
    xx = np.exp(-0.5 * ((np.arange(w) - (w - 1) / 2) / (w * sigma_scale)) ** 2)
    g = np.outer(yy, xx).astype(np.float32)
    g /= g.max()
    g[g < 1e-3] = 1e-3
    return g


def to_model_grid(volume: Volume, spacing_mm, default: float = -1024.0) -> sitk.Image:
    """Resample to an axis-aligned LPS grid at ``spacing_mm`` covering the volume (linear).

    The output's array ``(z, y, x)`` runs along +S, +P, +L whatever the input's direction.
    """
    img = volume.to_sitk()
    img = sitk.Cast(img, sitk.sitkFloat32)
    nx, ny, nz = volume.size
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
    pts = volume.index_to_lps(corners)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    sp = np.asarray(spacing_mm, float)
    size = np.maximum(np.round((hi - lo) / sp).astype(int) + 1, 1)
    ref = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    ref.SetSpacing(tuple(sp))
    ref.SetOrigin(tuple(lo))
    ref.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, float(default), sitk.sitkFloat32)


def normalize(arr: np.ndarray, spec: dict) -> np.ndarray:
    """Intensity normalisation from the card (``hu_clip_scale`` or ``percentile_zscore``)."""
    if spec["method"] == "hu_clip_scale":
        lo, hi = spec["clip"]
        return ((np.clip(arr, lo, hi) - spec.get("offset", 0.0)) * spec["scale"]).astype(np.float32)
    lo, hi = np.percentile(arr, spec["percentiles"])
    clipped = np.clip(arr, lo, hi)
    return ((clipped - clipped.mean()) / max(clipped.std(), 1e-6)).astype(np.float32)


def _windows(n: int, patch: int, stride: int) -> list[int]:
    if n <= patch:
        return [0]
    starts = list(range(0, n - patch + 1, stride))
    if starts[-1] != n - patch:
        starts.append(n - patch)
    return starts


def sliding_window(x: np.ndarray, session, spec: dict, n_cls: int, temperature: float = 1.0, batch: int = 8):
    """2.5-D sliding window over a normalised model-grid array ``x`` ``(z, y, x)``.

    Yields :class:`SegProgress` ("infer"); returns softmax probabilities ``(n_cls, z, y, x)``
    blended with a Gaussian importance map. Neighbouring slices (``context_slices`` each side,
    clamped at the ends) form the channels.
    """
    t = time.perf_counter()
    ctx = int(spec.get("context_slices", 1))
    channels = 2 * ctx + 1
    name = session.get_inputs()[0].name
    ph, pw = spec["patch_size"][-2:]
    overlap = float(spec.get("overlap", 0.5))
    nz, ny, nx = x.shape
    pad_y, pad_x = max(0, ph - ny), max(0, pw - nx)
    if pad_y or pad_x:
        x = np.pad(x, ((0, 0), (0, pad_y), (0, pad_x)), mode="constant", constant_values=float(x.min()))
    Z, Y, X = x.shape
    sy, sx = max(1, int(ph * (1 - overlap))), max(1, int(pw * (1 - overlap)))
    ys, xs = _windows(Y, ph, sy), _windows(X, pw, sx)
    g = gaussian_importance((ph, pw))
    prob = np.zeros((n_cls, Z, Y, X), dtype=np.float32)
    norm = np.zeros((Y, X), dtype=np.float32)
    for y0 in ys:
        for x0 in xs:
            norm[y0 : y0 + ph, x0 : x0 + pw] += g
    tiles = [(k, y0, x0) for k in range(Z) for y0 in ys for x0 in xs]
    total = len(tiles)
    for b0 in range(0, total, batch):
        part = tiles[b0 : b0 + batch]
        inp_arr = np.empty((len(part), channels, ph, pw), dtype=np.float32)
        for n, (k, y0, x0) in enumerate(part):
            idx = np.clip(np.arange(k - ctx, k + ctx + 1), 0, Z - 1)
            inp_arr[n] = x[idx, y0 : y0 + ph, x0 : x0 + pw]
        logits = session.run(None, {name: inp_arr})[0] / temperature
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        p = e / e.sum(axis=1, keepdims=True)
        for n, (k, y0, x0) in enumerate(part):
            prob[:, k, y0 : y0 + ph, x0 : x0 + pw] += p[n] * g
        done = min(b0 + batch, total)
        elapsed = time.perf_counter() - t
        yield SegProgress("infer", done, total, eta_s=elapsed / done * (total - done) + 0.3 * elapsed * (done < total))
    prob /= norm[None]
    return prob[:, :, :ny, :nx]


def iter_segment(volume: Volume, package: ModelPackage, precision: str = "int8", threads: int | None = None,
                 batch: int = 8) -> Generator[SegProgress, None, SegmentationResult]:
    """Run a segmentation package on ``volume``; yields progress, returns the result.

    Raises
    ------
    PackageError
        Wrong task, modality refused by the card, file hash failure, or an ONNX model whose
        input/output shape does not match the card.
    ValueError
        Unknown precision.
    """
    t_start = time.perf_counter()
    session, warnings = open_runtime(volume, package, "segmentation", precision, threads)
    spec = package.meta["input"]
    labels_meta = package.labels
    n_cls = len(labels_meta)
    temperature = float(package.meta["calibration"]["temperature"])
    stage = {}

    # ---------------------------------------------------------------- pre
    t = time.perf_counter()
    yield SegProgress("pre", 0, 1)
    grid = to_model_grid(volume, spec["spacing_mm"])
    x = normalize(sitk.GetArrayViewFromImage(grid), spec["normalization"])  # (z, y, x) on the model grid
    stage["pre"] = time.perf_counter() - t

    # ---------------------------------------------------------------- infer
    t = time.perf_counter()
    gen = sliding_window(x, session, spec, n_cls, temperature, batch)
    while True:
        try:
            yield next(gen)
        except StopIteration as stop:
            prob = stop.value
            break
    stage["infer"] = time.perf_counter() - t

    # ---------------------------------------------------------------- inverse
    t = time.perf_counter()
    ref = volume.to_sitk()
    ent_model = -(prob * np.log(np.clip(prob, 1e-8, 1))).sum(axis=0).astype(np.float32)
    shape = volume.array.shape
    best = np.full(shape, -1.0, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8 if max(lbl["index"] for lbl in labels_meta) < 256 else np.uint16)
    upd = np.empty(shape, dtype=bool)

    def back(arr: np.ndarray) -> np.ndarray:
        im = sitk.GetImageFromArray(arr)
        im.CopyInformation(grid)
        out = sitk.Resample(im, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayViewFromImage(out), out

    for c, lm in enumerate(labels_meta):
        pc, _keep = back(np.ascontiguousarray(prob[c]))
        # running argmax without fancy indexing (no index temporaries; numpy drops the GIL)
        np.greater(pc, best, out=upd)
        np.copyto(best, pc, where=upd)
        np.copyto(lab, lm["index"], where=upd)
        del _keep
        yield SegProgress("inverse", c + 1, n_cls)
    del upd
    ent_view, ent_img = back(ent_model)  # the view is only valid while ent_img lives
    entropy = np.array(ent_view, dtype=np.float16)
    del ent_view, ent_img
    del prob
    stage["inverse"] = time.perf_counter() - t

    # ---------------------------------------------------------------- post
    t = time.perf_counter()
    lcc = set(package.meta["outputs"].get("largest_component", []))
    by_name = {lm["name"]: lm["index"] for lm in labels_meta}
    fill = by_name.get("body", 0)
    for name in lcc:
        idx = by_name.get(name)
        if idx is not None:
            _keep_largest_component(lab, idx, fill if idx != fill else 0)
    yield SegProgress("post", 1, 2)
    lab_img = sitk.GetImageFromArray(lab)
    lab_img.CopyInformation(ref)
    prob_img = sitk.GetImageFromArray(best)
    prob_img.CopyInformation(ref)
    st = sitk.LabelIntensityStatisticsImageFilter()
    st.Execute(lab_img, prob_img)
    present = set(st.GetLabels())
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    stats = []
    for lm in labels_meta:
        if lm["index"] == 0:
            continue
        i = lm["index"]
        if i in present:
            n = int(st.GetNumberOfPixels(i))
            stats.append(LabelStats(i, lm["name"], n, n * voxel_ml, float(st.GetMean(i)), tuple(lm["color"]),
                                    tuple(float(v) for v in st.GetCentroid(i))))
        else:
            stats.append(LabelStats(i, lm["name"], 0, 0.0, None, tuple(lm["color"]), None))
    stage["post"] = time.perf_counter() - t
    yield SegProgress("post", 2, 2, eta_s=0.0)
    return SegmentationResult(package.id, precision, lab, best.astype(np.float16), entropy, stats,
                              time.perf_counter() - t_start, stage, warnings)


def _keep_largest_component(lab: np.ndarray, idx: int, fill: int) -> None:
    """Keep the largest 3-D connected component of label ``idx`` (in place); others become ``fill``.

    Works on the label's bounding box only (SimpleITK ConnectedComponent + RelabelComponent).
    """
    zs = np.flatnonzero((lab == idx).any(axis=(1, 2)))
    if zs.size == 0:
        return
    sub = lab[zs[0] : zs[-1] + 1]
    mask2 = (sub == idx).any(axis=0)
    ys, xs = np.flatnonzero(mask2.any(axis=1)), np.flatnonzero(mask2.any(axis=0))
    box = sub[:, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
    mask = box == idx
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))), sortByObjectSize=True)
    drop = mask & (sitk.GetArrayViewFromImage(cc) != 1)
    box[drop] = fill


def segment(volume: Volume, package: ModelPackage, precision: str = "int8", threads: int | None = None) -> SegmentationResult:
    """Blocking form of :func:`iter_segment`."""
    return drain(iter_segment(volume, package, precision, threads))
