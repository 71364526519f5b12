"""Findings, their review states and the sign-off rule — the review gate, GUI-free.

Every AI output becomes a :class:`Finding`: each segmented label, the study-level
classification and each listed candidate region — except the labels a model card marks
``"role": "context"`` (``ct-organs-2p5d``: body, lungs, bone). Those are anatomical context (the
body outline, the lungs that place a nodule in its lobe or lung half, bone): a
:class:`ContextStructure` with its volume, drawn and measured like any label, listed apart
(``context`` in ``radreview review --json``), never a finding to decide. Its
:attr:`Finding.status` is one of four :class:`FindingStatus` states:

* **Needs review** — confidence below the review threshold, or no usable result (an empty label,
  a non-finite confidence, no threshold in the card): a decision is required.
* **AI positive** — a confident positive finding (a segmented organ, a nodule answer at or above
  the card's operating threshold): the reviewer confirms or rejects it before sign-off.
* **AI negative** — a confident negative answer: no action needed.
* **Not assessed** — the label cannot be in this scan (its body region is outside the scan's
  coverage, or its volume is below the card's plausible minimum); listed with the reason, never
  flagged (:mod:`radreview.review.plausibility`).

:class:`ReviewSession` records decisions and signs a study off. Sign-off is refused while a
Needs review or AI positive finding has no decision; it closes the study (later decisions are
addenda with a reason and need a new sign-off); a second sign-off with nothing changed is refused.

Vocabulary (``str`` enums, so JSON and the store keep plain strings): :class:`FindingStatus`
(the four states above), :class:`~radreview.review.vocabulary.FindingKind` (``segmentation``,
``classification``, ``candidate``) and :class:`~radreview.review.vocabulary.Decision`
(``accept``, ``reject``, ``edit``).

**Confidence and probability mean two different things, everywhere in radreview:**

* **probability** — the calibrated probability that the answer to the model card's question is
  *yes* (classification and candidates only; ``ct-nodule-2p5d``: a solid nodule >= 6 mm, the
  temperature-scaled, size-gated score of :mod:`radreview.inference.classify`). Compared with
  the *operating threshold* (the card's ``review_policy.decision_threshold``, default 0.5) it
  gives the answer: positive at or above, negative below.
* **confidence** — how sure the model is of the answer it gives, *whatever that answer is*,
  0..1: for a classification ``max(p, 1 - p)`` of that probability (p 0.03 is a confident
  *no*, confidence 0.97); for a segmented label the mean max-softmax probability over the
  label's voxels. Compared with the *review threshold* (the card's
  ``review_policy.confidence_threshold``, or a logged override) it decides whether a human must
  look: below it the finding is Needs review. Confidence never says which answer; probability
  never says how sure.

The runtime's per-candidate nodule score (``Candidate.confidence`` in
:mod:`radreview.inference.classify`) is a *probability* in this sense; it is kept as
``details["nodule_probability"]`` so that ``confidence`` keeps its one meaning here.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

import numpy as np

from .store import ReviewStore, StudyLocked
from .vocabulary import DECISIONS, Decision, FindingKind
from radreview.studies.errors import RadreviewError

__all__ = ["FindingStatus", "FindingKind", "Decision", "finding_from_dict", "Finding", "SignOffRefused", "StudyLocked", "PackageChanged",
           "ReviewSession", "findings_from_segmentation", "findings_from_classification", "study_key",
           "study_key_info", "StudyKey", "DEFAULT_OPERATING_THRESHOLD", "ContextStructure", "context_from_segmentation",
           "context_from_dict"]

#: Operating threshold on the probability when a classification card states none (the usual 0.5).
DEFAULT_OPERATING_THRESHOLD = 0.5


class FindingStatus(str, Enum):
    """Review state of one finding (the value is the ``status`` string of the CLI's JSON)."""

    NEEDS_REVIEW = "needs_review"
    AI_POSITIVE = "ai_positive"
    AI_NEGATIVE = "ai_negative"
    NOT_ASSESSED = "not_assessed"

    @property
    def label(self) -> str:
        """Human name shown in the review panel."""
        return {"needs_review": "Needs review", "ai_positive": "AI positive", "ai_negative": "AI negative",
                "not_assessed": "Not assessed"}[self.value]

    @property
    def requires_decision(self) -> bool:
        """Needs review and AI positive findings must be decided before sign-off."""
        return self in (FindingStatus.NEEDS_REVIEW, FindingStatus.AI_POSITIVE)


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


@dataclass
class Finding:
    """One AI output to review. ``id`` is stable across runs: ``"<model>:<name>"``.

    Two numbers, two meanings:

    * ``probability`` (classification and candidates only): the calibrated probability that the
      answer to the card's question is *yes* (``ct-nodule-2p5d``: a solid nodule >= 6 mm; the
      temperature-scaled, size-gated score of :mod:`radreview.inference.classify`). Compared
      with ``operating_threshold`` (the card's ``review_policy.decision_threshold``) it gives
      the answer: positive at or above it, negative below.
    * ``confidence``: how sure the model is of the answer it gives, whatever that answer is,
      0..1. Classification: ``max(p, 1 - p)`` of that probability (a p 0.03 candidate is a
      confident *no*, confidence 0.97). Segmentation: the mean max-softmax probability inside
      the label's region (how sure each voxel's label is, averaged; not temperature-calibrated
      for ``ct-organs-2p5d``). Compared with ``threshold`` (the card's
      ``review_policy.confidence_threshold``, or a logged override) it decides whether a human
      must look: below it the finding is **Needs review**.

    ``details`` holds ``volume_ml``, ``voxels``, ``center_lps`` (LPS mm), ``size_mm``,
    ``diameter_mm`` and whatever else the model reports (passed through unchanged).
    ``not_assessed`` is the reason the label cannot be in this scan (``None`` when assessed).
    """

    id: str
    model_id: str
    kind: FindingKind  # a plain string is converted ("segmentation" | "classification" | "candidate")
    name: str
    confidence: float | None
    threshold: float | None
    details: dict[str, Any] = field(default_factory=dict)
    probability: float | None = None
    operating_threshold: float | None = None
    not_assessed: str | None = None

    def __post_init__(self) -> None:
        self.kind = FindingKind(self.kind)  # ValueError for an unknown kind
        # older callers put a classification's probability in details: read it from there
        if self.probability is None and self.kind is not FindingKind.SEGMENTATION and "probability" in self.details:
            self.probability = self.details["probability"]

    # ------------------------------------------------------------------ the gate
    @property
    def status(self) -> FindingStatus:
        """The review state (see the module docstring); empty or non-finite results are Needs review."""
        if self.not_assessed:
            return FindingStatus.NOT_ASSESSED
        if self.problem is not None or self.confidence is None or self.threshold is None:  # problem covers both
            return FindingStatus.NEEDS_REVIEW
        if float(self.confidence) < float(self.threshold):
            return FindingStatus.NEEDS_REVIEW
        if self.kind is FindingKind.SEGMENTATION:
            return FindingStatus.AI_POSITIVE  # the organ is present and segmented: confirm it
        if self.probability is None:  # reported by problem above; this guard is for the type checker
            return FindingStatus.NEEDS_REVIEW
        op = DEFAULT_OPERATING_THRESHOLD if self.operating_threshold is None else float(self.operating_threshold)
        return FindingStatus.AI_POSITIVE if float(self.probability) >= op else FindingStatus.AI_NEGATIVE

    @property
    def problem(self) -> str | None:
        """Why the result itself is unusable (then the finding is Needs review), else ``None``."""
        if self.kind is FindingKind.SEGMENTATION and self.details.get("voxels") == 0:
            return f"empty result: no {self.name} voxels segmented"
        if self.confidence is None:
            return "no confidence reported"
        if not _finite(self.confidence):
            return f"confidence is not a finite number ({self.confidence})"
        if self.threshold is None or not _finite(self.threshold):
            return "no review threshold for it in the model card"
        if self.kind is not FindingKind.SEGMENTATION:
            if self.probability is None or not _finite(self.probability):
                return f"probability is not a finite number ({self.probability})"
        return None

    @property
    def reason(self) -> str:
        """One line: why the finding is in its state."""
        st = self.status
        if st is FindingStatus.NOT_ASSESSED:
            return str(self.not_assessed)
        if self.problem:
            return self.problem
        if st is FindingStatus.NEEDS_REVIEW:
            return f"confidence {self.confidence:.3f} < threshold {self.threshold:.2f}"
        if self.kind is FindingKind.SEGMENTATION:
            return f"segmented with confidence {self.confidence:.3f} >= {self.threshold:.2f}: confirm or reject"
        op = DEFAULT_OPERATING_THRESHOLD if self.operating_threshold is None else self.operating_threshold
        rel = ">=" if st is FindingStatus.AI_POSITIVE else "<"
        return f"p {self.probability:.2f} {rel} operating threshold {op:.2f}, confidence {self.confidence:.3f}"

    @property
    def needs_review(self) -> bool:
        """Low confidence or unusable result (status Needs review)."""
        return self.status is FindingStatus.NEEDS_REVIEW

    @property
    def requires_decision(self) -> bool:
        """Must be decided before sign-off (Needs review or AI positive)."""
        return self.status.requires_decision

    @property
    def answer(self) -> str:
        """The finding in words, e.g. ``"Nodule >= 6 mm: yes, p 0.92"`` or ``"liver: segmented, 1500 mL"``."""
        st = self.status
        if st is FindingStatus.NOT_ASSESSED:
            return f"{self.name}: not assessed ({self.not_assessed})"
        if self.kind is FindingKind.SEGMENTATION:
            if self.details.get("voxels") == 0:
                return f"{self.name}: not found"
            vol = self.details.get("volume_ml")
            return f"{self.name}: segmented" + (f", {vol:g} mL" if vol is not None else "")
        label = self.details.get("answer_label") or self.details.get("question") or self.name
        if self.kind is FindingKind.CANDIDATE:
            label = f"{self.name}" + (f" ({self.details['size_mm']:g} mm)" if self.details.get("size_mm") is not None else "")
        if self.probability is None or not _finite(self.probability):
            return f"{label}: no answer (probability {self.probability})"
        op = DEFAULT_OPERATING_THRESHOLD if self.operating_threshold is None else self.operating_threshold
        word = "yes" if self.probability >= op else "no"
        unsure = ", uncertain" if st is FindingStatus.NEEDS_REVIEW else ""
        return f"{label}: {word}, p {self.probability:.2f}{unsure}"

    def as_dict(self) -> dict:
        """JSON-ready: the core fields, ``status`` (a :class:`FindingStatus` value), ``reason``,
        ``answer``, ``needs_review`` (kept for older readers) and the details flattened in."""
        d = {"id": self.id, "model": self.model_id, "kind": self.kind.value, "name": self.name,
             "confidence": None if self.confidence is None or not _finite(self.confidence) else float(self.confidence),
             "threshold": self.threshold, "status": self.status.value, "reason": self.reason, "answer": self.answer,
             "needs_review": self.needs_review}
        if self.kind is not FindingKind.SEGMENTATION or self.probability is not None:
            d["probability"] = None if self.probability is None or not _finite(self.probability) else float(self.probability)
            d["operating_threshold"] = self.operating_threshold
        if self.not_assessed:
            d["not_assessed"] = self.not_assessed
        if self.confidence is not None and not _finite(self.confidence):
            d["confidence_raw"] = str(self.confidence)
        return {**d, **{k: v for k, v in self.details.items() if k not in d}}


_CORE = {"id", "model", "kind", "name", "confidence", "threshold", "needs_review", "status", "reason", "answer",
         "probability", "operating_threshold", "not_assessed", "confidence_raw", "decision"}


def finding_from_dict(d: dict) -> Finding:
    """Inverse of :meth:`Finding.as_dict` (used to restore a study's findings from the store)."""
    conf = d.get("confidence")
    if conf is None and d.get("confidence_raw"):
        conf = float(d["confidence_raw"])  # "nan" stays NaN, so the restored finding is still Needs review
    return Finding(d["id"], d["model"], d["kind"], d["name"], conf, d.get("threshold"),
                   {k: v for k, v in d.items() if k not in _CORE}, probability=d.get("probability"),
                   operating_threshold=d.get("operating_threshold"), not_assessed=d.get("not_assessed"))


class SignOffRefused(RuntimeError, RadreviewError):
    """Sign-off refused: ``pending`` lists the findings that still need a decision (may be empty
    when the refusal has another reason, e.g. nothing changed since the last sign-off)."""

    def __init__(self, pending: list[Finding], message: str | None = None) -> None:
        self.pending = pending
        if message is None:
            names = ", ".join(f"{f.id} ({f.status.label}: {f.reason})" for f in pending)
            message = f"sign-off refused: {len(pending)} finding(s) need a decision: {names}"
        super().__init__(message)


class PackageChanged(RuntimeError, RadreviewError):
    """The installed model package differs from the one this study was reviewed under."""


# ---------------------------------------------------------------------- study keys
@dataclass(frozen=True)
class StudyKey:
    """``key`` identifies a study in the store; ``weak`` says (in words) why it is not a UID, or ``None``."""

    key: str
    weak: str | None = None


def study_key_info(volume) -> StudyKey:
    """The store key of a study, never derived from its path.

    *Study Instance UID* (0020,000D) when present (``study:<uid>``). Otherwise a SHA-256 of the
    voxel data (shape, dtype, bytes), the grid (spacing, origin, direction rounded to 1e-4 mm)
    and the Patient ID (``content:<hash>``), and ``weak`` explains it: a re-saved or resampled
    copy of the same scan gets another key, while the same file opened by another path, or
    another patient's scan copied over it, is told apart correctly.
    """
    cached = getattr(volume, "_radreview_study_key", None)
    if cached is not None and cached[0] == id(volume.array):
        return cached[1]
    info = volume.info
    if info.study_instance_uid:
        out = StudyKey(f"study:{info.study_instance_uid}")
    else:
        h = hashlib.sha256()
        arr = np.ascontiguousarray(volume.array)
        h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
        h.update(np.round(np.r_[volume.spacing, volume.origin, np.asarray(volume.direction).ravel()], 4).tobytes())
        h.update(f"|patient:{info.patient_id}|".encode())
        h.update(arr.data.cast("B"))  # the contiguous buffer, not a copy
        out = StudyKey("content:" + h.hexdigest()[:32],
                       "no Study Instance UID: decisions are keyed by a hash of the pixel data"
                       + (" and Patient ID" if info.patient_id else " (no Patient ID either)")
                       + "; a re-saved or resampled copy of this scan is a different study")
    try:
        object.__setattr__(volume, "_radreview_study_key", (id(volume.array), out))
    except (AttributeError, TypeError):
        pass
    return out


def study_key(volume) -> str:
    """Stable store key of a study (see :func:`study_key_info`)."""
    return study_key_info(volume).key


# ---------------------------------------------------------------------- findings from results
def _threshold(policy: dict, overrides: dict, name: str) -> float | None:
    if name in overrides:
        return overrides[name]
    return policy.get(name)


def _jsonable(v):
    if isinstance(v, (str, bool)) or v is None:
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else str(float(v))
    if isinstance(v, Enum):
        return _jsonable(v.value)
    if isinstance(v, (list, tuple)):
        out = [_jsonable(x) for x in v]
        return None if any(x is _SKIP for x in out) else out
    if isinstance(v, dict):
        out = {str(k): _jsonable(x) for k, x in v.items()}
        return None if any(x is _SKIP for x in out.values()) else out
    if isinstance(v, np.ndarray) and v.size <= 16:
        return _jsonable(v.tolist())
    return _SKIP


_SKIP = object()


def _extra(obj, known: set[str]) -> dict:
    """JSON-safe attributes of a result/candidate dataclass that this module does not interpret
    (e.g. ``long_axis_mm``, ``nodule_type``, ``lung_rads``), passed through into ``details``."""
    if is_dataclass(obj):
        items = {f.name: getattr(obj, f.name) for f in fields(obj)}
    else:
        items = dict(getattr(obj, "__dict__", {}))
    out = {}
    for k, v in items.items():
        if k in known or k.startswith("_"):
            continue
        j = _jsonable(v)
        if j is not _SKIP:
            out[k] = j
    return out


def findings_from_segmentation(result, package, overrides: dict[str, float] | None = None, coverage=None) -> list[Finding]:
    """One finding per label segmented or named in the card's review policy, except the labels
    the card marks ``"role": "context"`` (body outline, lungs, bone): those are anatomical context,
    listed by :func:`context_from_segmentation`, never a finding to decide.

    ``result``: a :class:`radreview.inference.segment.SegmentationResult` (``labels`` ``(z, y, x)``
    on the study grid and per-label ``stats``). ``coverage``: an optional
    :class:`radreview.review.plausibility.ScanCoverage`; with it, a label whose card
    ``body_region`` lies outside the scan, or whose volume (mL) is below the card's
    ``min_volume_ml``, becomes **Not assessed** with the reason instead of a finding to decide.
    """
    from radreview.inference.package import CONTEXT, label_role

    from .plausibility import implausible

    policy = package.meta["review_policy"]["confidence_threshold"]
    cards = {lab["name"]: lab for lab in package.meta["outputs"]["labels"]}
    overrides = overrides or {}
    out = []
    for s in result.stats:
        if label_role(cards.get(s.name, {})) == CONTEXT:
            continue  # anatomical context, not a finding: context_from_segmentation lists it
        if s.voxels == 0 and s.name not in policy:
            continue
        why = implausible(s.name, s.index, s.voxels, s.volume_ml, cards.get(s.name, {}), result.labels, coverage)
        out.append(Finding(
            id=f"{package.id}:{s.name}", model_id=package.id, kind=FindingKind.SEGMENTATION, name=s.name,
            confidence=None if s.confidence is None else float(s.confidence),
            threshold=_threshold(policy, overrides, s.name),
            details={"volume_ml": round(float(s.volume_ml), 2), "voxels": int(s.voxels),
                     "center_lps": None if s.centroid_lps is None else [round(float(v), 2) for v in s.centroid_lps],
                     "body_region": cards.get(s.name, {}).get("body_region"),
                     "model_version": package.meta.get("version")},
            not_assessed=why,
        ))
    return out


@dataclass
class ContextStructure:
    """A segmented label the model card marks ``"role": "context"``: anatomy that orients the
    reader and places findings (body outline, lungs for the nodule rows' lobe or lung half,
    bone), drawn and measured like any label but **not a finding**: it has no review status,
    needs no decision and never blocks sign-off.

    ``volume_ml`` (mL), ``voxels``, ``center_lps`` (LPS mm, ``None`` when empty), ``confidence``
    (mean max-softmax over its voxels, for information only). ``not_assessed`` is why the label
    cannot be in this scan (:func:`radreview.review.plausibility.implausible`, e.g. "lungs" that
    are table foam on an abdominal CT), else ``None``; such a structure is not drawn by default.
    """

    id: str
    model_id: str
    name: str
    volume_ml: float
    voxels: int
    center_lps: list[float] | None = None
    confidence: float | None = None
    body_region: str | None = None
    model_version: str | None = None
    not_assessed: str | None = None

    role = "context"

    @property
    def text(self) -> str:
        """In words, e.g. ``"lungs 2820 mL"``, ``"bone: not segmented"`` or ``"lungs: not assessed (...)"``."""
        if self.not_assessed:
            return f"{self.name}: not assessed ({self.not_assessed})"
        if self.voxels == 0:
            return f"{self.name}: not segmented"
        return f"{self.name} {self.volume_ml:.0f} mL"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``"role": "context"`` (and no ``status``: it is not a finding)."""
        d: dict[str, Any] = {"id": self.id, "model": self.model_id, "name": self.name, "role": self.role,
                             "volume_ml": self.volume_ml, "voxels": self.voxels, "center_lps": self.center_lps,
                             "confidence": self.confidence if _finite(self.confidence) else None,
                             "body_region": self.body_region, "model_version": self.model_version}
        if self.not_assessed:
            d["not_assessed"] = self.not_assessed
        return d


def context_from_dict(d: dict) -> ContextStructure:
    """Inverse of :meth:`ContextStructure.as_dict` (restoring a study's last run)."""
    return ContextStructure(d["id"], d["model"], d["name"], float(d.get("volume_ml") or 0.0), int(d.get("voxels") or 0),
                            d.get("center_lps"), d.get("confidence"), d.get("body_region"), d.get("model_version"),
                            d.get("not_assessed"))


def context_from_segmentation(result, package, coverage=None) -> list[ContextStructure]:
    """The labels of ``result`` that the card marks ``"role": "context"``, in label order.

    ``result``: a :class:`radreview.inference.segment.SegmentationResult` (``labels`` ``(z, y,
    x)``, per-label ``stats``); ``coverage``: as :func:`findings_from_segmentation`, so a context
    label that cannot be in this scan carries the reason in ``not_assessed``. Empty context
    labels are listed too (``voxels`` 0: "not segmented").
    """
    from radreview.inference.package import CONTEXT, label_role

    from .plausibility import implausible

    cards = {lab["name"]: lab for lab in package.meta["outputs"]["labels"]}
    out = []
    for s in result.stats:
        card = cards.get(s.name, {})
        if label_role(card) != CONTEXT:
            continue
        conf = None if s.confidence is None or not _finite(s.confidence) else round(float(s.confidence), 4)
        out.append(ContextStructure(
            id=f"{package.id}:{s.name}", model_id=package.id, name=s.name, volume_ml=round(float(s.volume_ml), 2),
            voxels=int(s.voxels), center_lps=None if s.centroid_lps is None else [round(float(v), 2) for v in s.centroid_lps],
            confidence=conf, body_region=card.get("body_region"), model_version=package.meta.get("version"),
            not_assessed=implausible(s.name, s.index, s.voxels, s.volume_ml, card, result.labels, coverage)))
    return out


_CANDIDATE_KNOWN = {"rank", "center_lps", "size_mm", "probability", "confidence", "raw_max", "voxels", "label"}
_RESULT_KNOWN = {"model_id", "precision", "study_probability", "candidates", "prob_map", "components", "grid", "seconds",
                 "stage_seconds", "warnings"}


def findings_from_classification(result, package, overrides: dict[str, float] | None = None) -> list[Finding]:
    """The study-level finding plus one per listed candidate region.

    ``result``: a :class:`radreview.inference.classify.ClassificationResult`. The card's
    ``review_policy`` gives the confidence thresholds (``study``, ``candidate``), the operating
    threshold on the probability (``decision_threshold``, default 0.5), ``min_candidate_probability``
    and ``max_candidates`` (the runtime keeps all candidates; the review lists these). Confidence
    is ``max(p, 1 - p)`` of the calibrated probability (see :class:`Finding`); the runtime's own
    per-candidate nodule probability is kept as ``details["nodule_probability"]``. Attributes of
    the result or its candidates that this function does not interpret (e.g. ``lung_rads``,
    ``long_axis_mm``) are passed through into ``details``.
    """
    rp = package.meta["review_policy"]
    policy = rp["confidence_threshold"]
    op = float(rp.get("decision_threshold", DEFAULT_OPERATING_THRESHOLD))
    overrides = overrides or {}
    p_study = float(result.study_probability)
    study = Finding(id=f"{package.id}:study", model_id=package.id, kind=FindingKind.CLASSIFICATION, name="study",
                    confidence=max(p_study, 1 - p_study) if math.isfinite(p_study) else p_study,
                    threshold=_threshold(policy, overrides, "study"),
                    details={"question": package.meta.get("question", ""), "answer_label": rp.get("answer_label", ""),
                             "model_version": package.meta.get("version"), **_extra(result, _RESULT_KNOWN)},
                    probability=round(p_study, 4) if math.isfinite(p_study) else p_study, operating_threshold=op)
    out = [study]
    min_p = float(rp.get("min_candidate_probability", 0.0))
    max_n = int(rp.get("max_candidates", 10**6))
    shown = [c for c in result.candidates if not (float(c.probability) < min_p)][:max_n]  # NaN stays listed
    study.details["candidates_total"] = len(result.candidates)
    study.details["candidates_listed"] = len(shown)
    for c in shown:
        p = float(c.probability)
        out.append(Finding(id=f"{package.id}:candidate-{c.rank}", model_id=package.id, kind=FindingKind.CANDIDATE,
                           name=f"candidate-{c.rank}", confidence=max(p, 1 - p) if math.isfinite(p) else p,
                           threshold=_threshold(policy, overrides, "candidate"),
                           details={"center_lps": [round(float(v), 2) for v in c.center_lps],
                                    "size_mm": round(float(c.size_mm), 1),
                                    "diameter_mm": round(float(c.size_mm), 1),
                                    "nodule_probability": _jsonable(round(float(c.confidence), 4)),
                                    "model_version": package.meta.get("version"),
                                    **_extra(c, _CANDIDATE_KNOWN)},
                           probability=round(p, 4) if math.isfinite(p) else p, operating_threshold=op))
    return out


# ---------------------------------------------------------------------- the session
class ReviewSession:
    """Decisions and sign-off for one study over a store. Decisions already stored are restored.

    ``key`` is the study key (:func:`study_key`); ``key_warning`` says why it is weak, if it is.
    """

    def __init__(self, store: ReviewStore, key: str, findings: list[Finding], key_warning: str | None = None) -> None:
        self.store = store
        self.key = key
        self.key_warning = key_warning
        self.findings = {f.id: f for f in findings}

    # ------------------------------------------------------------------ state
    @property
    def decisions(self) -> dict[str, dict]:
        """Latest decision per finding: ``{finding_id: {decision, reviewer, reason, ts, addendum}}``."""
        return self.store.decisions(self.key)

    def flagged(self) -> list[Finding]:
        """Needs review findings."""
        return [f for f in self.findings.values() if f.needs_review]

    def by_status(self, status: FindingStatus) -> list[Finding]:
        return [f for f in self.findings.values() if f.status is status]

    def pending(self) -> list[Finding]:
        """Needs review and AI positive findings without a decision (block sign-off)."""
        done = self.decisions
        return [f for f in self.findings.values() if f.requires_decision and f.id not in done]

    def signed_off(self) -> list[dict]:
        return self.store.signoffs(self.key)

    @property
    def locked(self) -> bool:
        """Signed off: decisions are read-only except as addenda."""
        return bool(self.signed_off())

    def changes_since_signoff(self) -> list[dict]:
        """Decisions recorded after the last sign-off (addenda awaiting a new sign-off)."""
        so = self.signed_off()
        if not so:
            return []
        last = so[-1]["ts"]
        return [d for d in self.store.decision_history(self.key) if d["ts"] > last]

    def state(self) -> str:
        """``"open"``, ``"signed off"`` or ``"addendum pending sign-off"``."""
        if not self.locked:
            return "open"
        return "addendum pending sign-off" if self.changes_since_signoff() else "signed off"

    def resolve(self, name: str) -> Finding:
        """A finding by full id or by a unique name/suffix (``liver``, ``candidate-1``, ``study``).

        Raises
        ------
        KeyError
            Unknown or ambiguous name (the message lists the findings).
        """
        if name in self.findings:
            return self.findings[name]
        hits = [f for f in self.findings.values() if f.name == name or f.id.endswith(":" + name)]
        if len(hits) == 1:
            return hits[0]
        raise KeyError(f"{'ambiguous' if hits else 'unknown'} finding {name!r}; findings: {', '.join(self.findings)}")

    # ------------------------------------------------------------------ actions
    def decide(self, name: str, decision: Decision | str, reviewer: str, reason: str | None = None, addendum: bool = False) -> str:
        """Record a decision; returns its timestamp once it is durably saved.

        Raises
        ------
        ValueError
            Unknown decision, empty reviewer, or an addendum without a reason.
        StudyLocked
            The study is signed off and ``addendum`` is not set.
        KeyError
            Unknown finding.
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        f = self.resolve(name)
        if self.locked:
            so = self.signed_off()[-1]
            if not addendum:
                raise StudyLocked(f"study is signed off (by {so['reviewer']} at {so['ts']}): decisions are read-only; "
                                  "record a change as an addendum with a reason")
            if not (reason or "").strip():
                raise ValueError("an addendum to a signed-off study needs a reason")
        return self.store.record_decision(self.key, f.id, decision, reviewer, reason, addendum=bool(addendum and self.locked))

    def confirm_all_positives(self, reviewer: str, reason: str | None = None, addendum: bool = False) -> list[str]:
        """Accept every undecided AI positive finding in one explicit, audit-logged action.

        Returns the finding ids accepted (``[]`` when there were none).

        Raises
        ------
        StudyLocked, ValueError
            As :meth:`decide`.
        """
        done = self.decisions
        ids = [f.id for f in self.findings.values() if f.status is FindingStatus.AI_POSITIVE and f.id not in done]
        if not ids:
            return []
        if self.locked:
            if not addendum:
                raise StudyLocked("study is signed off: decisions are read-only; record a change as an addendum with a reason")
            if not (reason or "").strip():
                raise ValueError("an addendum to a signed-off study needs a reason")
        self.store.record_decisions(self.key, ids, Decision.ACCEPT, reviewer, reason or "confirm all AI positives",
                                    action="confirm-all-positives", addendum=bool(addendum and self.locked))
        return ids

    def sign_off(self, reviewer: str, measurements: list[dict] | None = None, context: list[dict] | None = None) -> str:
        """Sign the study off; the audit row holds every finding with its decision and, when
        given, the study's ``measurements`` (dicts of :mod:`radreview.review.measurements`) and
        ``context`` structures (:meth:`ContextStructure.as_dict`: listed, not decided).

        Raises
        ------
        SignOffRefused
            While any Needs review or AI positive finding lacks a decision (the refusal lists
            them), or when the study is already signed off and nothing changed since.
        ValueError
            Empty reviewer name.
        """
        pending = self.pending()
        if pending:
            raise SignOffRefused(pending)
        if not reviewer.strip():
            raise ValueError("sign-off needs a reviewer name")
        so = self.signed_off()
        if so and not self.changes_since_signoff():
            raise SignOffRefused([], f"sign-off refused: already signed off by {so[-1]['reviewer']} at {so[-1]['ts']} "
                                     "and nothing changed since (record an addendum first)")
        decisions = self.decisions
        summary = [{**f.as_dict(), "decision": decisions.get(f.id, {}).get("decision")} for f in self.findings.values()]
        return self.store.record_signoff(self.key, reviewer, summary, addendum=bool(so), measurements=measurements,
                                         context=context)

    def set_threshold(self, model_id: str, label: str, value: float, reviewer: str, reason: str | None = None) -> None:
        """Logged threshold change; re-flags the findings it applies to."""
        self.store.set_threshold(model_id, label, value, reviewer, reason)
        for f in self.findings.values():
            if f.model_id == model_id and (f.name == label or (label == "candidate" and f.kind is FindingKind.CANDIDATE)):
                f.threshold = float(value)

    def check_packages(self, packages: dict[str, tuple[str, str]], actor: str = "radreview") -> None:
        """Record each model's ``(version, package_sha256)`` for this study at first use; refuse
        a different package for a study already reviewed (decided or signed off) under another.

        Raises
        ------
        PackageChanged
            Naming the model, both versions and both hashes.
        """
        known = self.store.study_packages(self.key)
        reviewed = bool(self.store.decision_history(self.key)) or bool(self.signed_off())
        for mid, (version, sha) in packages.items():
            old = known.get(mid)
            if old is not None and old["sha256"] != sha:
                if reviewed:
                    raise PackageChanged(
                        f"model {mid}: this study was reviewed with package {old['version']} (sha256 {old['sha256'][:12]}...), "
                        f"the installed package is {version} (sha256 {sha[:12]}...); its findings would not match the "
                        "decisions on record — reinstall the original package to review this study")
            if old is None or old["sha256"] != sha:
                self.store.record_study_package(self.key, mid, version, sha, actor)
