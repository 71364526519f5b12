"""GUI-free orchestration used by the CLI and the Qt panels: run the models that fit a study,
turn their outputs into findings, open the review session. No Qt, no VTK (import-linter)."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.classify import ClassificationResult, classify
from inference.package import ModelPackage, PackageError, load_package
from inference.segment import SegmentationResult, segment
from review.findings import Finding, ReviewSession, findings_from_classification, findings_from_segmentation, study_key
from review.store import ReviewStore
from studies.volume import Volume

__all__ = ["AIRun", "default_models", "run_models", "open_session"]


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
    the study contains lungs (HU rule: at least 50 mL of aerated lung)."""
    if volume.info.modality != "CT":
        return []
    import numpy as np

    from inference.lungs import lung_mask

    step = max(1, int(round(max(volume.size[:2]) / 128)))
    sub = volume.array[:, ::step, ::step]
    sp = (volume.spacing[0] * step, volume.spacing[1] * step, volume.spacing[2])
    lungs_ml = lung_mask(sub, sp).sum() * float(np.prod(sp)) / 1000
    return ["ct-organs-2p5d"] + (["ct-nodule-2p5d"] if lungs_ml >= 50 else [])


def run_models(volume: Volume, model_ids: list[str], store: ReviewStore | None = None, precision: str = "int8",
               threads: int | None = None) -> AIRun:
    """Run each model; a package refused for this study (modality, hash...) is reported, not fatal.

    Thresholds come from the model card's review policy, overridden by logged changes in ``store``.
    """
    run = AIRun()
    for mid in model_ids:
        try:
            pkg = load_package(mid, check_hashes=True)
            overrides = store.thresholds(pkg.id) if store else {}
            if pkg.task == "segmentation":
                res = segment(volume, pkg, precision, threads)
                run.segmentations[pkg.id] = res
                run.findings += findings_from_segmentation(res, pkg, overrides)
            else:
                res = classify(volume, pkg, precision, threads)
                run.classifications[pkg.id] = res
                run.findings += findings_from_classification(res, pkg, overrides)
            run.packages[pkg.id] = pkg
        except PackageError as exc:
            run.refused[mid] = str(exc)
    return run


def open_session(store: ReviewStore, volume: Volume, findings: list[Finding]) -> ReviewSession:
    return ReviewSession(store, study_key(volume), findings)
