"""Findings, confidence flags and the sign-off rule — the review logic, GUI-free.

Every AI output becomes a :class:`Finding` with its calibrated confidence: each segmented
label, the study-level classification and each candidate region. A finding whose confidence is
below its threshold (the model card's ``review_policy``, or a logged override from the store)
is flagged **Needs review**. :class:`ReviewSession` records decisions (accept, reject, edit)
and refuses sign-off while any flagged finding has no decision, listing them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from .store import DECISIONS, ReviewStore

__all__ = ["finding_from_dict", "Finding", "SignOffRefused", "ReviewSession", "findings_from_segmentation",
           "findings_from_classification", "study_key"]


@dataclass
class Finding:
    """One AI output to review. ``id`` is stable across runs: ``"<model>:<name>"``.

    ``confidence`` is the calibrated probability (segmentation: mean max-softmax inside the
    region; classification: temperature-scaled probability), ``threshold`` the review
    threshold in force; ``details`` holds volume (mL), centre (LPS mm), size (mm)...
    """

    id: str
    model_id: str
    kind: str  # "segmentation" | "classification" | "candidate"
    name: str
    confidence: float | None
    threshold: float | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_review(self) -> bool:
        """Flagged: below its threshold, or without a confidence at all."""
        if self.threshold is None:
            return False
        return self.confidence is None or self.confidence < self.threshold

    def as_dict(self) -> dict:
        return {"id": self.id, "model": self.model_id, "kind": self.kind, "name": self.name,
                "confidence": self.confidence, "threshold": self.threshold,
                "needs_review": self.needs_review, **{k: v for k, v in self.details.items()}}


def finding_from_dict(d: dict) -> Finding:
    """Inverse of :meth:`Finding.as_dict` (used to restore a study's findings from the store)."""
    core = {"id", "model", "kind", "name", "confidence", "threshold", "needs_review"}
    return Finding(d["id"], d["model"], d["kind"], d["name"], d.get("confidence"), d.get("threshold"),
                   {k: v for k, v in d.items() if k not in core})


class SignOffRefused(RuntimeError):
    """Sign-off refused: ``pending`` lists the flagged findings without a decision."""

    def __init__(self, pending: list[Finding]) -> None:
        self.pending = pending
        names = ", ".join(f"{f.id} (confidence {f.confidence if f.confidence is None else round(f.confidence, 3)} "
                          f"< {f.threshold})" for f in pending)
        super().__init__(f"sign-off refused: {len(pending)} flagged finding(s) need a decision: {names}")


def study_key(volume) -> str:
    """Stable key of a study: Study Instance UID, else Series Instance UID, else a hash of its source."""
    info = volume.info
    if info.study_instance_uid:
        return f"study:{info.study_instance_uid}"
    if info.series_instance_uid:
        return f"series:{info.series_instance_uid}"
    return "source:" + hashlib.sha256(str(info.source).encode()).hexdigest()[:16]


def _threshold(policy: dict, overrides: dict, name: str) -> float | None:
    if name in overrides:
        return overrides[name]
    return policy.get(name)


def findings_from_segmentation(result, package, overrides: dict[str, float] | None = None) -> list[Finding]:
    """One finding per segmented label present (or expected by the policy), with its threshold."""
    policy = package.meta["review_policy"]["confidence_threshold"]
    overrides = overrides or {}
    out = []
    for s in result.stats:
        if s.voxels == 0 and s.name not in policy:
            continue
        out.append(Finding(
            id=f"{package.id}:{s.name}", model_id=package.id, kind="segmentation", name=s.name,
            confidence=None if s.confidence is None else float(s.confidence),
            threshold=_threshold(policy, overrides, s.name) if s.voxels else None,
            details={"volume_ml": round(s.volume_ml, 2), "voxels": s.voxels,
                     "center_lps": None if s.centroid_lps is None else [round(v, 2) for v in s.centroid_lps]},
        ))
    return out


def findings_from_classification(result, package, overrides: dict[str, float] | None = None) -> list[Finding]:
    """The study-level finding plus one per candidate region (``result`` from inference.classify)."""
    policy = package.meta["review_policy"]["confidence_threshold"]
    overrides = overrides or {}
    out = [Finding(id=f"{package.id}:study", model_id=package.id, kind="classification", name="study",
                   confidence=float(result.study_confidence), threshold=_threshold(policy, overrides, "study"),
                   details={"probability": round(float(result.study_probability), 4),
                            "question": package.meta.get("question", "")})]
    # the card's review policy bounds how many candidates become findings (the runtime keeps all)
    min_p = float(package.meta["review_policy"].get("min_candidate_probability", 0.0))
    max_n = int(package.meta["review_policy"].get("max_candidates", 10**6))
    shown = [c for c in result.candidates if c.probability >= min_p][:max_n]
    out[0].details["candidates_total"] = len(result.candidates)
    out[0].details["candidates_listed"] = len(shown)
    for c in shown:
        out.append(Finding(id=f"{package.id}:candidate-{c.rank}", model_id=package.id, kind="candidate",
                           name=f"candidate-{c.rank}", confidence=float(c.confidence),
                           threshold=_threshold(policy, overrides, "candidate"),
                           details={"probability": round(float(c.probability), 4),
                                    "center_lps": [round(v, 2) for v in c.center_lps], "size_mm": round(c.size_mm, 1)}))
    return out


class ReviewSession:
    """Decisions and sign-off for one study over a store. Decisions already stored are restored."""

    def __init__(self, store: ReviewStore, key: str, findings: list[Finding]) -> None:
        self.store = store
        self.key = key
        self.findings = {f.id: f for f in findings}

    # ------------------------------------------------------------------ state
    @property
    def decisions(self) -> dict[str, dict]:
        return self.store.decisions(self.key)

    def flagged(self) -> list[Finding]:
        return [f for f in self.findings.values() if f.needs_review]

    def pending(self) -> list[Finding]:
        done = self.decisions
        return [f for f in self.flagged() if f.id not in done]

    def signed_off(self) -> list[dict]:
        return self.store.signoffs(self.key)

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
    def decide(self, name: str, decision: str, reviewer: str, reason: str | None = None) -> str:
        """Record a decision; returns its timestamp once it is durably saved."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        f = self.resolve(name)
        return self.store.record_decision(self.key, f.id, decision, reviewer, reason)

    def sign_off(self, reviewer: str) -> str:
        """Sign the study off.

        Raises
        ------
        SignOffRefused
            While any flagged finding lacks a decision (the refusal lists them).
        """
        pending = self.pending()
        if pending:
            raise SignOffRefused(pending)
        if not reviewer.strip():
            raise ValueError("sign-off needs a reviewer name")
        summary = [{**f.as_dict(), "decision": self.decisions.get(f.id, {}).get("decision")} for f in self.findings.values()]
        return self.store.record_signoff(self.key, reviewer, summary)

    def set_threshold(self, model_id: str, label: str, value: float, reviewer: str, reason: str | None = None) -> None:
        """Logged threshold change; re-flags the findings it applies to."""
        self.store.set_threshold(model_id, label, value, reviewer, reason)
        for f in self.findings.values():
            if f.model_id == model_id and (f.name == label or (label == "candidate" and f.kind == "candidate")):
                if f.threshold is not None or f.kind != "segmentation":
                    f.threshold = float(value)
