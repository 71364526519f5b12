"""GUI-free orchestration used by the CLI and the Qt panels: run the models that fit a study,
turn their outputs into findings, open the review session. No Qt, no VTK (import-linter)."""

from __future__ import annotations

from dataclasses import dataclass, field

from radreview.inference.classify import ClassificationResult
from radreview.inference.package import ModelPackage, PackageError, load_package
from radreview.inference.segment import SegmentationResult
from radreview.review.findings import Finding, ReviewSession, findings_from_classification, findings_from_segmentation, study_key
from radreview.review.store import ReviewStore
from radreview.studies.jobs import drain
from radreview.studies.volume import Volume

__all__ = ["AIRun", "default_models", "run_models", "iter_run_models", "open_session"]


@dataclass
class AIRun:
    """Everything one Run AI produced for a study."""

    findings: list[Finding] = field(default_factory=list)
    segmentations: dict[str, SegmentationResult] = field(default_factory=dict)
    classifications: dict[str, ClassificationResult] = field(default_factory=dict)
    packages: dict[str, ModelPackage] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def default_models(volume: Volume) -> list[str]:
    """The shipped models that fit a study: the organ model for CT, plus the nodule model when
    the study holds a chest (HU rule: at least 300 mL of aerated lung; bowel gas and lung bases
    in an abdominal scan stay below that)."""
    if volume.info.modality != "CT":
        return []
    import numpy as np

    from radreview.inference.lungs import lung_mask

    step = max(1, int(round(max(volume.size[:2]) / 128)))
    sub = volume.array[:, ::step, ::step]
    sp = (volume.spacing[0] * step, volume.spacing[1] * step, volume.spacing[2])
    lungs_ml = lung_mask(sub, sp).sum() * float(np.prod(sp)) / 1000
    return ["ct-organs-2p5d"] + (["ct-nodule-2p5d"] if lungs_ml >= 300 else [])


def iter_run_models(volume: Volume, model_ids: list[str] | None, thresholds: dict[str, dict[str, float]] | None = None,
                    precision: str = "int8", threads: int | None = None):
    """Generator form of :func:`run_models`: yields ``(model_id, SegProgress)``, returns an :class:`AIRun`.

    ``model_ids=None`` runs :func:`default_models` (its lung measurement happens here, on the
    caller's worker thread, not on the GUI thread).

    A package refused for this study (modality, hash, shape...) is recorded in ``AIRun.refused``,
    not raised. ``thresholds`` maps model id to logged threshold overrides.
    """
    from radreview.inference.classify import iter_classify
    from radreview.inference.segment import iter_segment

    run = AIRun()
    if model_ids is None:
        model_ids = default_models(volume)
    for mid in model_ids:
        try:
            pkg = load_package(mid, check_hashes=True)
            overrides = (thresholds or {}).get(pkg.id, {})
            gen = (iter_segment if pkg.task == "segmentation" else iter_classify)(volume, pkg, precision, threads)
            while True:
                try:
                    yield mid, next(gen)
                except StopIteration as stop:
                    res = stop.value
                    break
            if pkg.task == "segmentation":
                run.segmentations[pkg.id] = res
                run.findings += findings_from_segmentation(res, pkg, overrides)
            else:
                run.classifications[pkg.id] = res
                run.findings += findings_from_classification(res, pkg, overrides)
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


def open_session(store: ReviewStore, volume: Volume, findings: list[Finding]) -> ReviewSession:
    return ReviewSession(store, study_key(volume), findings)
