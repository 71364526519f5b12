"""GUI-free operations behind ``radreview models ...`` and ``radreview infer`` (testable)."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from radreview.studies import open_volume
from radreview.studies.volume import Volume

from .package import (ModelPackage, PackageError, list_packages, load_package, models_dir, sha256_file,
                      user_models_dir, write_manifest)
# onnx/onnxruntime load only in the commands that run a model (``models list`` stays fast)

__all__ = ["models_list", "models_verify", "models_quantize", "models_bench", "run_infer", "peak_rss_mb"]


def peak_rss_mb() -> float:
    """VmHWM of this process (MB); resets at exec, unlike ru_maxrss."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def models_list() -> list[dict]:
    return [p.summary() for p in list_packages()]


def models_verify(model_id: str) -> list[str]:
    """Problems found (schema is checked by loading, hashes by verify); empty list = sound."""
    try:
        pkg = load_package(model_id)
    except PackageError as exc:
        return [str(exc)]
    return pkg.verify()


def _mask_dice(a: np.ndarray, b: np.ndarray, labels: list[dict]) -> dict[str, float | None]:
    out = {}
    for lm in labels:
        if lm["index"] == 0:
            continue
        x, y = a == lm["index"], b == lm["index"]
        s = int(x.sum()) + int(y.sum())
        out[lm["name"]] = None if s == 0 else round(2 * int((x & y).sum()) / s, 4)
    return out


def models_bench(model_id: str | Path, threads: int = 2, repeats: int = 10, batch: int = 8) -> dict:
    """FP32 vs INT8 latency of one batch of patches (median of ``repeats``, same threads)."""
    from .segment import make_session

    pkg = load_package(model_id, check_hashes=True)
    spec = pkg.meta["input"]
    ph, pw = spec["patch_size"][-2:]
    x = np.random.default_rng(0).normal(size=(batch, spec["channels"], ph, pw)).astype(np.float32)
    out: dict[str, Any] = {"model": pkg.id, "threads": threads, "batch": batch, "patch": [ph, pw]}
    for prec in ("fp32", "int8"):
        sess = make_session(pkg.file(prec), threads)
        name = sess.get_inputs()[0].name
        sess.run(None, {name: x})
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            sess.run(None, {name: x})
            times.append(time.perf_counter() - t)
        out[prec] = {"median_s": round(statistics.median(times), 5), "p95_s": round(float(np.percentile(times, 95)), 5)}
    out["int8_speedup"] = round(out["fp32"]["median_s"] / out["int8"]["median_s"], 2)
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def models_quantize(model_id: str, calibration: list[str], threads: int = 2) -> dict:
    """Re-make the package's INT8 model from real calibration volumes; record measured deltas.

    A shipped package is never modified: it is copied to ``user_models_dir()/<id>`` (replacing
    an earlier copy) and quantized there, and the user folder's ``manifest.json`` pins the
    result; that copy then shadows the shipped one (:func:`~.package.model_search_path`). A
    package in a user, ``$RADREVIEW_MODELS_PATH`` or explicit folder is re-quantized in place.

    Raises
    ------
    PackageError
        If the package fails its checks; FileNotFoundError / LoadError for bad volumes.
    """
    from .quantize import calibration_patches, edge_convs, quantize_static_int8
    from .segment import segment

    pkg = load_package(model_id, check_hashes=True)
    vols = [open_volume(p) for p in calibration]
    shipped = models_dir().resolve()
    if pkg.source == "shipped" or shipped in pkg.root.resolve().parents:
        dst = user_models_dir() / pkg.id
        if dst.exists():
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(pkg.root, dst)
        pkg = ModelPackage(dst, pkg.meta, source="user")
    for v in vols:
        pkg.check_modality(v.info.modality)
    patches = calibration_patches(vols, pkg.meta["input"], per_volume=32)
    int8 = pkg.root / pkg.meta["files"]["int8"]["path"]
    quantize_static_int8(pkg.file("fp32"), int8, patches, method="percentile", keep_fp32=edge_convs(pkg.file("fp32")))
    meta = dict(pkg.meta)
    meta["files"]["int8"]["sha256"] = sha256_file(int8)
    (pkg.root / "model.json").write_text(json.dumps(meta, indent=1))  # the new file is the package's now
    pkg = ModelPackage(pkg.root, meta, source=pkg.source)
    agreement = {}
    for path, v in zip(calibration, vols):
        a = segment(v, pkg, "fp32", threads).labels
        b = segment(v, pkg, "int8", threads).labels
        agreement[str(path)] = _mask_dice(a, b, pkg.labels)
    bench = models_bench_pkg(pkg, threads)
    meta.setdefault("int8_deltas", {})
    meta["int8_deltas"]["requantized"] = {"calibration": [str(p) for p in calibration], "patches": int(len(patches)),
                                          "dice_fp32_vs_int8_on_calibration": agreement, "latency": bench}
    (pkg.root / "model.json").write_text(json.dumps(meta, indent=1))
    if pkg.source == "user" or (pkg.root.parent / "manifest.json").is_file():
        write_manifest(pkg.root.parent)  # re-pin the folder it was written to (never the shipped one)
    return meta["int8_deltas"]["requantized"]


def models_bench_pkg(pkg: ModelPackage, threads: int) -> dict:
    return {k: v for k, v in models_bench(pkg.root, threads).items() if k in ("fp32", "int8", "int8_speedup")}


def run_infer(path: str, model_id: str, out_dir: str, precision: str = "int8", threads: int | None = None,
              notify=None) -> dict:
    """``radreview infer``: run any registered task (:mod:`.runtime`) on a study and write its
    outputs into ``out_dir`` (:meth:`~.runtime.InferTask.save`: ``findings.json``; a segmentation
    also ``segmentation.nii.gz`` on the input's exact grid). Returns the findings dict.

    ``notify``, if given, is called with each warning about which volume was used when the
    input holds several (``Volume.warnings``, see :func:`radreview.studies.open_volume`).

    Raises
    ------
    PackageError
        Wrong/unsound model, a task with no registered runtime, or modality refused.
    ValueError
        Unknown precision.
    """
    from .runtime import make_task

    pkg = load_package(model_id, check_hashes=True)
    task = make_task(pkg, precision, threads, lazy_maps=True)  # refuses an unknown task before loading the study
    vol: Volume = open_volume(path)
    if notify is not None:
        for w in vol.warnings:
            if "image volumes found" in w:
                notify(w)
    run = task.run(vol)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task.save(run, vol, out)
    return run.findings
