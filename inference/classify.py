"""Nodule classification runtime: a fast 2.5-D slice screen, then 3-D candidate analysis.

Stages (timed): **pre** resample to the model grid and normalise; **screen** the 2.5-D network
over every axial slice (sliding window, Gaussian blending) giving a per-voxel nodule
probability; **candidates** 3-D connected components of probability > 0.5 inside the (dilated)
HU-rule lung mask, each with its centre (probability-weighted, LPS mm), equivalent-sphere
diameter (mm) and maximum probability. Probabilities are temperature-scaled with the card's
``calibration.temperature`` (Guo et al., ICML 2017). The question "a solid nodule or mass of at
least 6 mm?" (the Lung-RADS size threshold) is answered per candidate as ``p_cal * g(size)``
with a soft size gate ``g = sigmoid((d - 6 mm) / 0.5 mm)``, and for the study as the maximum
over candidates (0 when there is none).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Generator

import numpy as np
import SimpleITK as sitk

from radreview.studies.jobs import drain
from radreview.studies.volume import Volume

from .lungs import lung_mask
from .package import ModelPackage
from .segment import SegProgress, normalize, open_runtime, sliding_window, to_model_grid

__all__ = ["Candidate", "ClassificationResult", "iter_classify", "classify", "size_gate", "SIZE_THRESHOLD_MM"]

SIZE_THRESHOLD_MM = 6.0


def size_gate(d_mm: float) -> float:
    return float(1.0 / (1.0 + np.exp(-(d_mm - SIZE_THRESHOLD_MM) / 0.5)))


def _calibrate(p: float, temperature: float) -> float:
    p = float(np.clip(p, 1e-6, 1 - 1e-6))
    return float(1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temperature)))


@dataclass
class Candidate:
    """A candidate region: ``probability`` answers the >= 6 mm question (calibrated),
    ``confidence`` is the calibrated probability that it is a nodule at all."""

    rank: int
    center_lps: tuple[float, float, float]
    size_mm: float
    probability: float
    confidence: float
    raw_max: float
    voxels: int
    label: int  # component label in ``ClassificationResult.components``


@dataclass
class ClassificationResult:
    model_id: str
    precision: str
    study_probability: float
    candidates: list[Candidate]
    prob_map: np.ndarray  # (z, y, x) nodule probability on the model grid (uncalibrated)
    components: np.ndarray  # (z, y, x) candidate labels on the model grid
    grid: sitk.Image  # the model grid (geometry only is used)
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def study_confidence(self) -> float:
        return max(self.study_probability, 1 - self.study_probability)

    def as_dict(self) -> dict:
        return {"model": self.model_id, "precision": self.precision, "probability": round(self.study_probability, 4),
                "seconds": round(self.seconds, 3),
                "candidates": [{"rank": c.rank, "center_lps": [round(v, 2) for v in c.center_lps], "size_mm": round(c.size_mm, 1),
                                "probability": round(c.probability, 4), "confidence": round(c.confidence, 4)} for c in self.candidates]}


def candidates_from_prob(prob: np.ndarray, lungs: np.ndarray, grid: sitk.Image, temperature: float,
                         threshold: float = 0.5) -> tuple[list[Candidate], np.ndarray]:
    """Candidate regions of a model-grid probability map (see module doc) and their label map."""
    sp = np.array(grid.GetSpacing())
    dil = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(lungs.astype(np.uint8)), [3, 3, 1])) > 0
    mask = (prob > threshold) & dil
    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)))
    comp = sitk.GetArrayFromImage(sitk.RelabelComponent(cc, minimumObjectSize=2))
    out = []
    for lab in range(1, int(comp.max()) + 1):
        zz, yy, xx = np.nonzero(comp == lab)
        w = prob[zz, yy, xx]
        idx = [float((xx * w).sum() / w.sum()), float((yy * w).sum() / w.sum()), float((zz * w).sum() / w.sum())]
        center = grid.TransformContinuousIndexToPhysicalPoint(idx)
        vol_mm3 = len(zz) * float(np.prod(sp))
        d = float((6 * vol_mm3 / np.pi) ** (1 / 3))
        conf = _calibrate(float(w.max()), temperature)
        out.append(Candidate(0, tuple(center), d, conf * size_gate(d), conf, float(w.max()), len(zz), lab))
    out.sort(key=lambda c: -c.probability)
    for r, c in enumerate(out, 1):
        c.rank = r
    return out, comp


def iter_classify(volume: Volume, package: ModelPackage, precision: str = "int8", threads: int | None = None,
                  crop: bool = False) -> Generator[SegProgress, None, ClassificationResult]:
    """Run a nodule classification package; yields progress, returns the result.

    Raises
    ------
    PackageError
        Wrong task, modality refused, hash failure or a model/card mismatch.
    """
    t0 = time.perf_counter()
    session, warnings = open_runtime(volume, package, "classification", precision, threads)
    spec = package.meta["input"]
    T = float(package.meta["calibration"]["temperature"])
    stage = {}
    t = time.perf_counter()
    yield SegProgress("pre", 0, 1)
    grid = to_model_grid(volume, spec["spacing_mm"])
    hu = sitk.GetArrayFromImage(grid)
    x = normalize(hu, spec["normalization"])
    lungs = lung_mask(hu, grid.GetSpacing(), crop=crop)
    stage["pre"] = time.perf_counter() - t
    t = time.perf_counter()
    gen = sliding_window(x, session, spec, len(package.labels), 1.0)
    while True:
        try:
            p = next(gen)
            p.stage = "screen"
            yield p
        except StopIteration as stop:
            prob = stop.value[1]
            break
    stage["screen"] = time.perf_counter() - t
    t = time.perf_counter()
    cands, comp = candidates_from_prob(prob, lungs, grid, T)
    stage["candidates"] = time.perf_counter() - t
    study = max((c.probability for c in cands), default=0.0)
    yield SegProgress("candidates", 1, 1, eta_s=0.0)
    return ClassificationResult(package.id, precision, study, cands, prob, comp, grid, time.perf_counter() - t0, stage, warnings)


def classify(volume: Volume, package: ModelPackage, precision: str = "int8", threads: int | None = None,
             crop: bool = False) -> ClassificationResult:
    """Blocking form of :func:`iter_classify`."""
    return drain(iter_classify(volume, package, precision, threads, crop))
