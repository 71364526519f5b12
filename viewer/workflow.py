"""GUI-free orchestration used by the CLI and the Qt panels: run the models that fit a study,
turn their outputs into findings, open the review session. No Qt, no VTK (import-linter)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radreview.inference.classify import ClassificationResult
from radreview.inference.package import ModelPackage, PackageError, load_package
from radreview.inference.runtime import InferTask, Precision, Task, TaskRun, make_task, models_for_study
from radreview.inference.segment import SegmentationResult
from radreview.review.findings import (
    ContextStructure, Finding, ReviewSession, context_from_segmentation, finding_from_dict, findings_from_classification,
    findings_from_segmentation, study_key_info,
)
from radreview.review.plausibility import ScanCoverage, scan_coverage
from radreview.review.runs import SavedRun, load_last_run, save_run
from radreview.review.store import ReviewStore
from radreview.studies.jobs import drain
from radreview.studies.volume import Volume

__all__ = ["AIRun", "default_models", "run_models", "iter_run_models", "open_session", "save_ai_run", "restore_last_run",
           "package_hash", "coverage_of", "segmentation_from_saved"]


@dataclass
class AIRun:
    """Everything one Run AI produced for a study."""

    findings: list[Finding] = field(default_factory=list)
    #: labels the card marks ``"role": "context"`` (body, lungs, bone): listed, drawn, never findings
    context: list[ContextStructure] = field(default_factory=list)
    segmentations: dict[str, SegmentationResult] = field(default_factory=dict)
    classifications: dict[str, ClassificationResult] = field(default_factory=dict)
    packages: dict[str, ModelPackage] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    coverage: ScanCoverage | None = None
    #: every model's :class:`~radreview.inference.runtime.TaskRun` (any task, shipped or registered later)
    runs: dict[str, TaskRun] = field(default_factory=dict)
    #: ``{model_id: {"labels": .npz bytes}}`` made by :func:`encode_run_outputs` on the worker,
    #: so :func:`save_ai_run` on the GUI thread only writes them
    encoded: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def package_hashes(self) -> dict[str, tuple[str, str]]:
        """``{model_id: (version, package_sha256)}`` of the packages that ran."""
        return {mid: (pkg.meta["version"], package_hash(pkg)) for mid, pkg in self.packages.items()}


def package_hash(pkg: ModelPackage) -> str:
    """SHA-256 of a package: its exact ``model.json`` bytes plus its file hashes
    (:attr:`ModelPackage.package_sha256`), so a changed card is a changed package."""
    return pkg.package_sha256


def coverage_of(volume: Volume) -> ScanCoverage | None:
    """Body-region coverage of a CT (:func:`radreview.review.plausibility.scan_coverage`); ``None`` for other modalities."""
    if volume.info.modality not in ("CT", ""):
        return None
    return scan_coverage(volume.array, volume.spacing, volume.direction)


def default_models(volume: Volume) -> list[str]:
    """Ids of the installed models that fit a study, from each card's ``modality`` and ``fit``
    block (body region, minimum z coverage: :func:`radreview.inference.runtime.models_for_study`).
    For the shipped cards: the organ model for any CT, plus the nodule model when the scan
    shows the chest (at least 300 mL of aerated lung)."""
    return [p.id for p in models_for_study(volume)]


def _seg_findings(run: AIRun, volume: Volume, res, pkg: ModelPackage, overrides: dict) -> list[Finding]:
    run.segmentations[pkg.id] = res
    if run.coverage is None:
        run.coverage = coverage_of(volume)
    run.context += context_from_segmentation(res, pkg, run.coverage)
    return findings_from_segmentation(res, pkg, overrides, run.coverage)


def _cls_findings(run: AIRun, volume: Volume, res, pkg: ModelPackage, overrides: dict) -> list[Finding]:
    run.classifications[pkg.id] = res
    return findings_from_classification(res, pkg, overrides)


#: Review findings of the shipped tasks (their rules live in radreview.review.findings). A task
#: registered elsewhere supplies its own: ``InferTask.review_findings(result, overrides, coverage)``
#: returning :class:`~radreview.review.findings.Finding` objects, if it defines one.
_REVIEW_FINDINGS: dict[str, Callable[..., list[Finding]]] = {Task.SEGMENTATION: _seg_findings,
                                                              Task.CLASSIFICATION: _cls_findings}


def _review_findings(run: AIRun, volume: Volume, task: InferTask, res: Any, overrides: dict) -> list[Finding]:
    fn = _REVIEW_FINDINGS.get(str(task.task))
    if fn is not None:
        return fn(run, volume, res, task.package, overrides)
    hook = getattr(task, "review_findings", None)
    if hook is None:
        return []
    if run.coverage is None:
        run.coverage = coverage_of(volume)
    return list(hook(res, overrides, run.coverage))


def iter_run_models(volume: Volume, model_ids: list[str] | None, thresholds: dict[str, dict[str, float]] | None = None,
                    precision: str = Precision.INT8, threads: int | None = None):
    """Generator form of :func:`run_models`: yields ``(model_id, SegProgress)``, returns an :class:`AIRun`.

    ``model_ids=None`` runs :func:`default_models` (its lung measurement happens here, on the
    caller's worker thread, not on the GUI thread).

    A package refused for this study (modality, hash, shape...) is recorded in ``AIRun.refused``,
    not raised. ``thresholds`` maps model id to logged threshold overrides.
    """
    run = AIRun()
    if model_ids is None:
        model_ids = default_models(volume)
    for mid in model_ids:
        try:
            pkg = load_package(mid, check_hashes=True)
            overrides = (thresholds or {}).get(pkg.id, {})
            task = make_task(pkg, precision, threads)
            gen = task.iter_run(volume)
            while True:
                try:
                    yield mid, next(gen)
                except StopIteration as stop:
                    out = stop.value
                    break
            run.runs[pkg.id] = out
            run.findings += _review_findings(run, volume, task, out.result, overrides)
            run.packages[pkg.id] = pkg
        except PackageError as exc:
            run.refused[mid] = str(exc)
    return run


def run_models(volume: Volume, model_ids: list[str], store: ReviewStore | None = None, precision: str = "int8",
               threads: int | None = None) -> AIRun:
    """Run each model; a package refused for this study (modality, hash...) is reported, not fatal.

    Thresholds come from the model card's review policy, overridden by logged changes in ``store``.
    """
    thresholds = {mid: store.thresholds(mid) for mid in model_ids} if store else None
    return drain(iter_run_models(volume, model_ids, thresholds, precision, threads))


def open_session(store: ReviewStore, volume: Volume, findings: list[Finding],
                 packages: dict[str, tuple[str, str]] | None = None, actor: str = "radreview") -> ReviewSession:
    """The review session of a study (keyed by :func:`radreview.review.findings.study_key_info`).

    ``packages`` (``AIRun.package_hashes()``) are recorded at first use per study, and a changed
    package for a study already reviewed under another is refused.

    Raises
    ------
    radreview.review.findings.PackageChanged
    """
    k = study_key_info(volume)
    session = ReviewSession(store, k.key, findings, k.weak)
    if packages:
        session.check_packages(packages, actor)
    return session


def _saved_labels(res: SegmentationResult) -> np.ndarray:
    return res.labels.astype(np.uint8 if int(res.labels.max(initial=0)) < 256 else np.uint16)


def encode_run_outputs(run: AIRun) -> dict[str, dict[str, bytes]]:
    """Each segmentation's label map ``(z, y, x)`` (uint8, uint16 above 255 labels) as the
    compressed ``.npz`` bytes :func:`save_ai_run` writes (:func:`radreview.review.runs.encode_array`);
    run it where the run was computed (the Run AI worker) and keep it in ``run.encoded``."""
    from radreview.review.runs import encode_array

    return {mid: {"labels": encode_array(_saved_labels(res))} for mid, res in run.segmentations.items()}


def save_ai_run(store: ReviewStore, session: ReviewSession, run: AIRun, actor: str = "radreview") -> None:
    """Persist a run so reopening the study restores it: the findings (table ``findings``) and
    each model's outputs (:func:`radreview.review.runs.save_run`: the label map ``(z, y, x)``
    uint8/uint16, from ``run.encoded`` when the worker encoded it, with the per-label stats
    and the context structures (``"context"``), or the candidate list), with their SHA-256."""
    store.save_findings(session.key, [f.as_dict() for f in run.findings], actor)
    for mid, pkg in run.packages.items():
        version, sha = pkg.meta["version"], package_hash(pkg)
        if mid in run.segmentations:
            res = run.segmentations[mid]
            labels = run.encoded.get(mid, {}).get("labels")  # encoded on the worker, or now
            save_run(store, session.key, mid, version, sha, {"labels": labels if labels is not None else _saved_labels(res)},
                     {"task": "segmentation", **res.findings_json(),
                      "context": [c.as_dict() for c in run.context if c.model_id == mid],
                      "stats": [{**s.as_dict(), "color": list(s.color),
                                 "centroid_lps": None if s.centroid_lps is None else list(s.centroid_lps)} for s in res.stats]},
                     actor)
        elif mid in run.classifications:
            save_run(store, session.key, mid, version, sha, None,
                     {"task": "classification", **run.classifications[mid].as_dict()}, actor)
        elif mid in run.runs:  # a registered task: its findings dict, no arrays
            save_run(store, session.key, mid, version, sha, None, {"task": str(pkg.task), **run.runs[mid].findings}, actor)


def restore_last_run(store: ReviewStore, volume: Volume) -> tuple[list[Finding], dict[str, SavedRun]]:
    """A study's stored findings and its last saved run outputs (``([], {})`` when never run).

    Raises
    ------
    radreview.review.runs.RunChanged
        A saved run file changed on disk since it was saved.
    """
    key = study_key_info(volume).key
    findings = [finding_from_dict(d) for d in store.load_findings(key)]
    return findings, load_last_run(store, key)


def segmentation_from_saved(saved: SavedRun) -> SegmentationResult | None:
    """A :class:`SegmentationResult` rebuilt from a saved segmentation run (label map and
    per-label stats), for drawing the restored overlay; ``None`` if ``saved`` is not one.
    ``max_prob`` and ``entropy`` are not kept (``None``)."""
    from radreview.inference.segment import LabelStats

    if saved.data.get("task") != "segmentation" or "labels" not in saved.arrays:
        return None
    stats = [LabelStats(int(s["index"]), s["name"], int(s["voxels"]), float(s["volume_ml"]), s.get("confidence"),
                        tuple(s.get("color") or (255, 0, 0)),
                        None if s.get("centroid_lps") is None else tuple(s["centroid_lps"])) for s in saved.data.get("stats", [])]
    return SegmentationResult(saved.model_id, saved.data.get("precision", ""), saved.arrays["labels"], None, None, stats,
                              float(saved.data.get("seconds", 0.0)), warnings=list(saved.data.get("warnings", [])))
