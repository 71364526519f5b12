"""The function a shadow-deployment worker runs for one job (GUI-free: no Qt, no VTK).

:func:`run_job` is submitted to Dask by :func:`radreview.review.shadow.runner.run`. It fetches
the series itself (shared path, Orthanc REST, or C-GET from a DICOM node: volumes never travel
through the scheduler), refuses to run a model whose installed package differs from the one the
job was queued for, runs the model with the same code as ``radreview review`` (so the study
probability equals what ``review --json`` gives for the same series, model and precision), and
returns a plain dict. It never raises for a job's own failure: a damaged study, a refused model
or a fetch that failed comes back as ``{"ok": False, "reason", "permanent"}``; only the death of
the worker process itself is left to Dask.

:func:`check_models` is run on every worker before it is given jobs.
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run_job", "check_models", "worker_check", "HU_BINS"]

#: HU histogram bin edges kept per result for the input-drift report (-1024 .. 3072 HU, 64 HU bins)
HU_BINS = np.arange(-1024, 3072 + 64, 64)


def check_models(models: dict[str, str]) -> dict[str, str]:
    """``{model_id: reason}`` for each model this worker cannot run as queued (not installed, or
    its package SHA-256 differs from ``models[model_id]``); empty when all match."""
    from radreview.inference.package import PackageError, load_package

    bad = {}
    for mid, sha in models.items():
        try:
            pkg = load_package(mid, check_hashes=True)
        except PackageError as exc:
            bad[mid] = f"not usable on this worker: {exc}"
            continue
        if pkg.package_sha256 != sha:
            bad[mid] = f"installed package {pkg.package_sha256[:12]} differs from the queued {sha[:12]}"
    return bad


def worker_check(models: dict[str, str]) -> dict[str, Any]:
    """What the driver asks each worker before giving it jobs: ``{"bad": check_models(models),
    "cores": CPUs this process may use}``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"bad": check_models(models), "cores": cores}


def _fetch(source: dict[str, Any], folder: Path) -> Path:
    """The series' files under ``folder / "series"`` (returned); nothing is written outside ``folder``."""
    kind = source.get("kind")
    out = folder / "series"
    if kind == "files":
        out.mkdir()
        for i, f in enumerate(source["files"]):
            if not os.path.exists(f):
                raise FileNotFoundError(f"{f}: no such file (the series moved or the share is not mounted)")
            os.symlink(f, out / f"{i:05d}.dcm")
        return out
    if kind == "orthanc":
        import io

        from radreview.review.shadow.intake import orthanc_request

        with zipfile.ZipFile(io.BytesIO(orthanc_request(source["url"], f"/series/{source['id']}/archive",
                                                        timeout=300))) as zf:
            zf.extractall(out)  # zipfile drops absolute paths and ".." from member names
        return out
    if kind == "dicom":
        from radreview.studies import drain
        from radreview.studies.pacs import iter_retrieve, resolve_node

        node = resolve_node(source["node"])
        drain(iter_retrieve(node, source["study_uid"], source["series_uid"], out, method="get"))
        return out
    raise ValueError(f"unknown source kind {kind!r}")


def _input_stats(vol) -> dict[str, Any]:
    a = vol.array
    step = max(1, a.size // 2_000_000)
    sample = a.reshape(-1)[::step]
    hist, _ = np.histogram(sample, bins=HU_BINS)
    return {"hu_hist": [int(v) for v in hist], "hu_sample_step": step, "spacing_mm": [round(float(s), 4) for s in vol.spacing],
            "size": [int(v) for v in a.shape[::-1]]}


def _summary(run, model_id: str) -> dict[str, Any]:
    pkg = run.packages[model_id]
    out: dict[str, Any] = {"model": model_id, "version": pkg.meta.get("version"), "model_sha256": pkg.package_sha256}
    if model_id in run.classifications:
        res = run.classifications[model_id]
        policy = pkg.meta.get("review_policy", {})
        thr = float(policy.get("decision_threshold", 0.5))
        p = float(res.study_probability)
        out.update(probability=round(p, 4) if np.isfinite(p) else None, threshold=thr,
                   positive=bool(np.isfinite(p) and round(p, 4) >= thr), lung_rads=res.lung_rads,
                   findings=[{"center_lps": [round(float(v), 2) for v in c.center_lps],
                              "size_mm": round(float(c.size_mm), 1), "probability": round(float(c.probability), 4),
                              "type": str(getattr(c, "nodule_type", "") or "")} for c in res.candidates
                             if float(c.probability) >= float(policy.get("min_candidate_probability", 0.0))],
                   warnings=list(res.warnings))
    elif model_id in run.segmentations:
        res = run.segmentations[model_id]
        out.update(probability=None, threshold=None, positive=None, warnings=list(res.warnings),
                   findings=[{"label": s.name, "volume_ml": round(float(s.volume_ml), 2),
                              "confidence": None if s.confidence is None else round(float(s.confidence), 4)}
                             for s in res.stats])
    return out


def _publish(spec: dict[str, Any], path: Path, run) -> str:
    """The result as DICOM SR (TID 1500), sent back to the source PACS; returns its SOP Instance UID."""
    from radreview.review.sr import build_sr, read_series

    findings = [{"id": f.id, "model": f.model_id, "kind": str(f.kind), "name": f.name, "confidence": f.confidence,
                 "threshold": f.threshold, "probability": f.probability, **f.details, "review": None}
                for f in run.findings]
    images = read_series(path)
    sr = build_sr(images, findings)
    out = path.parent / "radreview-sr.dcm"  # beside the series' folder, never inside it
    sr.save_as(out, enforce_file_format=True)
    src = spec["source"]
    if src["kind"] == "orthanc":
        from radreview.review.shadow.intake import orthanc_request

        orthanc_request(src["url"], "/instances", timeout=60, data=out.read_bytes())
    elif src["kind"] == "dicom":
        from radreview.studies.pacs import resolve_node, store

        store(resolve_node(src["node"]), [out])
    return str(sr.SOPInstanceUID)


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one job; see the module docstring.

    ``spec``: ``key``, ``series_uid``, ``study_uid``, ``model_id``, ``model_sha256``,
    ``precision``, ``threads`` (ONNX Runtime intra-op threads), ``source``, ``queued_epoch``,
    ``publish``.

    Returns ``{"ok": True, "result": {...}}`` (probability, threshold, positive, findings, model
    id/version/hash, precision, timings ``queue_wait_s, fetch_s, load_s, infer_s``,
    ``core_seconds``, ``worker``, input statistics) or ``{"ok": False, "reason", "permanent"}``.
    """
    from radreview.inference.package import PackageError
    from radreview.studies import LoadError, open_volume
    from radreview.studies.errors import RadreviewError
    from radreview.viewer.workflow import run_models

    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = f"local-{os.getpid()}"
    t0, cpu0 = time.time(), time.process_time()
    timings: dict[str, float] = {"queue_wait_s": round(max(0.0, t0 - float(spec.get("queued_epoch") or t0)), 3),
                                 "dispatch_s": round(max(0.0, t0 - float(spec.get("submitted_epoch") or t0)), 3)}
    mid = spec["model_id"]
    bad = check_models({mid: spec["model_sha256"]})
    if bad:
        return {"ok": False, "permanent": True, "reason": f"model {mid}: {bad[mid]}", "worker": worker}
    try:
        with tempfile.TemporaryDirectory(prefix="radreview-shadow-") as tmp:
            try:
                path = _fetch(spec["source"], Path(tmp))
            except (OSError, RadreviewError, ValueError, zipfile.BadZipFile) as exc:
                return {"ok": False, "permanent": False, "reason": f"fetch failed: {' '.join(str(exc).split())[:300]}",
                        "worker": worker}
            t1 = time.time()
            timings["fetch_s"] = round(t1 - t0, 3)
            try:
                vol = open_volume(path)
            except (LoadError, ValueError, FileNotFoundError) as exc:
                return {"ok": False, "permanent": True, "reason": f"damaged study: {' '.join(str(exc).split())[:300]}",
                        "worker": worker}
            if vol.array.dtype.kind == "f" and not np.isfinite(vol.array).all():
                return {"ok": False, "permanent": True, "reason": "damaged study: non-finite voxel values",
                        "worker": worker}
            t2 = time.time()
            timings["load_s"] = round(t2 - t1, 3)
            run = run_models(vol, [mid], precision=spec["precision"], threads=spec.get("threads"))
            if mid in run.refused or mid not in run.packages:
                return {"ok": False, "permanent": True,
                        "reason": f"refused by the model: {run.refused.get(mid, 'did not run')}", "worker": worker}
            timings["infer_s"] = round(time.time() - t2, 3)
            result = _summary(run, mid)
            result["input"] = _input_stats(vol)
            if spec.get("publish"):
                result["published_sr"] = _publish(spec, path, run)
    except PackageError as exc:
        return {"ok": False, "permanent": True, "reason": f"model {mid}: {exc}", "worker": worker}
    except RadreviewError as exc:
        return {"ok": False, "permanent": True, "reason": " ".join(str(exc).split())[:300], "worker": worker}
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which retries with back-off
        return {"ok": False, "permanent": False, "reason": f"unexpected {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:300]}", "worker": worker}
    result.update(precision=spec["precision"], worker=worker, timings=timings,
                  core_seconds=round(time.process_time() - cpu0, 3), finished_epoch=time.time(),
                  threads=spec.get("threads"))
    return {"ok": True, "result": result}
