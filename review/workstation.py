"""GUI-free session logic of the review workstation: the current study and everything about it.

:class:`StudySession` holds what the review panel and ``radreview review`` both need: the current
study key (and why it is weak), the AI run in use or the saved run outputs restored on reopen,
the findings with their decisions (a :class:`~radreview.review.findings.ReviewSession` over the
store), the study's saved measurements, and the addendum state of a signed-off study. The Qt
review panel keeps only widgets and signal wiring (3D Slicer's Logic/Widget split); the CLI
drives the same object, so both apply the same rules and print the same JSON
(:meth:`StudySession.as_dict`).

The decision and sign-off records read from the store are typed here too
(:class:`DecisionRecord`, :class:`SignOff`), each with its ``as_dict()``; the JSON of the CLI is
built from these objects' own ``as_dict()`` and :meth:`Finding.as_dict`.

No Qt, no VTK, no viewer import (import-linter: ``review`` sits below ``viewer``); what runs the
models and saves their outputs is passed in (``persist``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .findings import ContextStructure, Finding, FindingStatus, ReviewSession, context_from_dict, finding_from_dict, study_key_info
from .runs import RunChanged, load_last_run
from .store import ReviewStore
from .vocabulary import Decision, FindingKind

__all__ = ["DecisionRecord", "SignOff", "StudySession"]


@dataclass(frozen=True)
class DecisionRecord:
    """The latest decision on one finding (a row of the store's ``decisions`` table)."""

    finding: str
    decision: Decision
    reviewer: str
    reason: str = ""
    ts: str = ""
    addendum: bool = False

    @classmethod
    def from_store(cls, finding_id: str, d: dict) -> "DecisionRecord":
        """From one value of :meth:`ReviewStore.decisions` (``{decision, reviewer, reason, ts, addendum}``)."""
        return cls(finding_id, Decision(d["decision"]), d.get("reviewer", ""), d.get("reason") or "", d.get("ts", ""),
                   bool(d.get("addendum", False)))

    @property
    def label(self) -> str:
        """``"accept"`` or ``"accept (addendum)"`` (the review table's Decision column)."""
        return self.decision.value + (" (addendum)" if self.addendum else "")

    def as_dict(self) -> dict[str, Any]:
        return {"finding": self.finding, "decision": self.decision.value, "reviewer": self.reviewer,
                "reason": self.reason, "ts": self.ts, "addendum": self.addendum}


@dataclass(frozen=True)
class SignOff:
    """One sign-off of a study (``addendum``: a re-sign-off after changes to a signed-off study)."""

    reviewer: str
    ts: str
    addendum: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"reviewer": self.reviewer, "ts": self.ts, "addendum": self.addendum}


def _older_run_note(findings: list[Finding]) -> str:
    """A note when stored findings come from another version of an installed model package
    (e.g. ``ct-organs-2p5d`` 0.1.0, where body, lungs and bone were still findings), else ``""``.
    The stored findings and their decisions are shown as they were recorded; a new AI run uses the
    installed package (refused for a study already reviewed under the other one)."""
    from radreview.inference.package import PackageError, load_package

    notes = []
    for mid in dict.fromkeys(f.model_id for f in findings):
        stored = next((f.details.get("model_version") for f in findings if f.model_id == mid), None)
        try:
            installed = load_package(mid).meta.get("version")
        except PackageError:
            continue
        if stored and installed and stored != installed:
            notes.append(f"{mid} {stored} (installed: {installed})")
    if not notes:
        return ""
    return ("Findings of the last run come from " + ", ".join(notes) + ": run AI again to review "
            "with the installed package (refused if this study was already reviewed under the older one)")


class StudySession:
    """The workstation's current study over one :class:`ReviewStore`.

    Attributes: ``key`` / ``key_warning`` (see :func:`radreview.review.findings.study_key_info`;
    ``None`` before a study is opened), ``review`` (the :class:`ReviewSession`, ``None`` while the
    study has no findings), ``run`` (the AI run adopted in this session, any object; ``None`` for
    a restored study), ``saved_runs`` (model id -> :class:`~radreview.review.runs.SavedRun`
    restored on reopen), ``context`` (the :class:`~radreview.review.findings.ContextStructure`
    list of the run in use or restored: labels the card marks ``"role": "context"``, not
    findings), ``measurements`` (the study's saved measurement dicts), ``message`` (a
    note for the user about the last open, e.g. a run file that failed its SHA-256) and
    ``addendum_reason`` (set while a signed-off study is opened for an addendum).
    """

    def __init__(self, store: ReviewStore) -> None:
        self.store = store
        self.close_study()

    # ------------------------------------------------------------------ opening
    def close_study(self) -> None:
        """Forget the current study (nothing in the store changes)."""
        self.key: str | None = None
        self.key_warning: str | None = None
        self.review: ReviewSession | None = None
        self.run = None
        self.saved_runs: dict = {}
        self.context: list[ContextStructure] = []
        self.measurements: list[dict] = []
        self.message = ""
        self.addendum_reason: str | None = None

    def open_study(self, volume) -> "StudySession":
        """Make ``volume`` the current study and restore what the store holds for it: its findings
        and decisions, sign-offs, last run outputs and measurements.

        A saved run file that is missing or fails its SHA-256 is not restored (``message`` says
        which); the findings and decisions still are. Returns ``self``.
        """
        self.close_study()
        k = study_key_info(volume)
        self.key, self.key_warning = k.key, k.weak
        findings = [finding_from_dict(d) for d in self.store.load_findings(k.key)]
        try:
            self.saved_runs = load_last_run(self.store, k.key)
        except RunChanged as exc:
            self.saved_runs = {}
            self.message = f"Last run not restored: {exc}"
        self.review = ReviewSession(self.store, k.key, findings, k.weak) if findings else None
        self.context = [context_from_dict(c) for r in self.saved_runs.values() for c in r.data.get("context", [])]
        self.measurements = self.store.load_measurements(k.key)
        if not self.message:
            self.message = _older_run_note(findings)
        return self

    def adopt_run(self, volume, run, actor: str = "radreview",
                  persist: Callable[[ReviewStore, ReviewSession, Any, str], None] | None = None) -> ReviewSession:
        """Use the findings of a new AI run (``run.findings``, ``run.package_hashes()``) for
        ``volume``; ``persist(store, review_session, run, actor)`` saves its outputs (the viewer's
        ``save_ai_run``). The previous state is kept when the run is refused.

        Raises
        ------
        radreview.review.findings.PackageChanged
            A model package differs from the one this study was reviewed under.
        radreview.review.store.StoreLocked
        """
        k = study_key_info(volume)
        review = ReviewSession(self.store, k.key, list(run.findings), k.weak)
        review.check_packages(run.package_hashes(), actor)
        if persist is not None:
            persist(self.store, review, run, actor)
        if k.key != self.key:
            self.measurements = self.store.load_measurements(k.key)
            self.saved_runs = {}
        self.key, self.key_warning = k.key, k.weak
        self.review, self.run = review, run
        self.context = list(getattr(run, "context", []) or [])
        self.addendum_reason = None
        return review

    def adopt_findings(self, volume, findings: list[Finding], packages: dict[str, tuple[str, str]] | None = None,
                       actor: str = "radreview") -> ReviewSession:
        """Use stored or given ``findings`` (no run outputs), checking ``packages`` as :meth:`adopt_run`."""
        k = study_key_info(volume)
        review = ReviewSession(self.store, k.key, list(findings), k.weak)
        if packages:
            review.check_packages(packages, actor)
        if k.key != self.key:
            self.measurements = self.store.load_measurements(k.key)
            self.context = []
        self.key, self.key_warning, self.review = k.key, k.weak, review
        return review

    # ------------------------------------------------------------------ reading
    def findings(self) -> list[Finding]:
        """Every finding of the study (Not assessed ones included), in run order."""
        return list(self.review.findings.values()) if self.review else []

    def assessed(self) -> list[Finding]:
        """The findings to show as table rows: all but Not assessed."""
        return [f for f in self.findings() if f.status is not FindingStatus.NOT_ASSESSED]

    def not_assessed(self) -> list[Finding]:
        return [f for f in self.findings() if f.status is FindingStatus.NOT_ASSESSED]

    def context_text(self) -> str:
        """One line naming the context structures, e.g. ``"Context: body, lungs, bone (not
        findings)"``; ``""`` when there are none."""
        if not self.context:
            return ""
        return f"Context: {', '.join(c.name for c in self.context)} (not findings)"

    def decisions(self) -> dict[str, DecisionRecord]:
        """Latest decision per finding id."""
        if self.review is None:
            return {}
        return {fid: DecisionRecord.from_store(fid, d) for fid, d in self.review.decisions.items()}

    def signoffs(self) -> list[SignOff]:
        if self.review is None:
            return []
        return [SignOff(s["reviewer"], s["ts"], bool(s.get("addendum"))) for s in self.review.signed_off()]

    @property
    def locked(self) -> bool:
        """Signed off (decisions only as addenda)."""
        return bool(self.review and self.review.locked)

    @property
    def editable(self) -> bool:
        """Decisions can be recorded now: findings exist and the study is open or in an addendum."""
        return self.review is not None and (not self.locked or self.addendum_reason is not None)

    def state(self) -> str:
        """``""`` without findings, else :meth:`ReviewSession.state`."""
        return self.review.state() if self.review else ""

    def state_text(self) -> str:
        """E.g. ``"Signed off by A at <ts> (read-only)"``; ``""`` while open."""
        so = self.signoffs()
        if not so or not self.locked:
            return ""
        tail = " — addendum pending sign-off" if self.state().startswith("addendum") else " (read-only)"
        return f"Signed off by {so[-1].reviewer} at {so[-1].ts}{tail}"

    def answers(self) -> list[str]:
        """The study-level answers in words (one per classification model)."""
        return [f.answer for f in self.findings() if f.kind is FindingKind.CLASSIFICATION]

    def pending(self) -> list[Finding]:
        return self.review.pending() if self.review else []

    def pending_summary(self) -> str:
        """E.g. ``"3 finding(s) need a decision before sign-off: 1 Needs review (low confidence), 2 AI positive"``."""
        pend = self.pending()
        if not pend:
            return ""
        nr = sum(f.status is FindingStatus.NEEDS_REVIEW for f in pend)
        return (f"{len(pend)} finding(s) need a decision before sign-off: {nr} Needs review (low confidence), "
                f"{len(pend) - nr} AI positive")

    def next_pending(self, current_id: str | None, step: int = 1) -> Finding | None:
        """The next (``step`` +1) or previous (-1) table row still needing a decision after
        ``current_id`` (wrapping; from the top or bottom without one); ``None`` when none."""
        rows = self.assessed()
        pend = {f.id for f in self.pending()}
        if not pend or not rows:
            return None
        ids = [f.id for f in rows]
        n = len(rows)
        start = ids.index(current_id) if current_id in ids else (-1 if step > 0 else n)
        for i in range(1, n + 1):
            r = (start + step * i) % n
            if rows[r].id in pend:
                return rows[r]
        return None

    # ------------------------------------------------------------------ actions
    def _need_review(self) -> ReviewSession:
        if self.review is None:
            from .findings import SignOffRefused

            raise SignOffRefused([], "no findings for this study: run AI first")
        return self.review

    def start_addendum(self, reason: str) -> None:
        """Open the signed-off study for changes logged as an addendum with ``reason``.

        Raises
        ------
        ValueError
            The study is not signed off, or the reason is empty.
        """
        if not self.locked:
            raise ValueError("Addenda are for signed-off studies")
        if not (reason or "").strip():
            raise ValueError("An addendum needs a reason")
        self.addendum_reason = reason.strip()

    def decide(self, finding: str, decision: Decision | str, reviewer: str, reason: str | None = None) -> str:
        """Record a decision (as an addendum while one is open: its reason is prefixed); returns the timestamp.

        Raises
        ------
        StudyLocked, ValueError, KeyError
            As :meth:`ReviewSession.decide`.
        """
        review = self._need_review()
        addendum = self.addendum_reason is not None
        if self.addendum_reason is not None:
            reason = self.addendum_reason + (f" — {reason}" if reason else "")
        return review.decide(finding, decision, reviewer, reason, addendum=addendum)

    def confirm_all_positives(self, reviewer: str, reason: str | None = None) -> list[str]:
        """Accept every undecided AI positive finding in one logged action; returns their ids."""
        review = self._need_review()
        addendum = self.addendum_reason is not None
        return review.confirm_all_positives(reviewer, self.addendum_reason or reason, addendum=addendum)

    def sign_off(self, reviewer: str) -> str:
        """Sign the study off with its findings, decisions and measurements; returns the timestamp.

        Raises
        ------
        SignOffRefused, ValueError
            As :meth:`ReviewSession.sign_off`.
        """
        review = self._need_review()
        ts = review.sign_off(reviewer, measurements=self.store.load_measurements(review.key),
                             context=[c.as_dict() for c in self.context])
        self.addendum_reason = None
        return ts

    def set_threshold(self, model_id: str, label: str, value: float, reviewer: str, reason: str | None = None) -> None:
        self._need_review().set_threshold(model_id, label, value, reviewer, reason)

    # ------------------------------------------------------------------ JSON
    def finding_row(self, f: Finding, decisions: dict[str, DecisionRecord] | None = None) -> dict[str, Any]:
        """:meth:`Finding.as_dict` plus its latest ``decision`` and ``addendum`` flag."""
        d = (self.decisions() if decisions is None else decisions).get(f.id)
        return {**f.as_dict(), "decision": None if d is None else d.decision.value,
                "addendum": False if d is None else d.addendum}

    def as_dict(self) -> dict[str, Any]:
        """The ``radreview review --json`` object: ``study``, ``study_key_warning``, ``state``,
        ``findings`` (each :meth:`finding_row`; every one has a ``status``), ``not_assessed``
        (``id``, ``reason``), ``context`` (each :meth:`ContextStructure.as_dict`: ``name``,
        ``volume_ml``, ``"role": "context"``, no status: anatomy, not findings) and
        ``measurements`` (the study's saved measurement dicts, LPS mm)."""
        decisions = self.decisions()
        return {"study": self.key, "study_key_warning": self.key_warning, "state": self.state(),
                "findings": [self.finding_row(f, decisions) for f in self.findings()],
                "not_assessed": [{"id": f.id, "reason": f.reason} for f in self.not_assessed()],
                "context": [c.as_dict() for c in self.context],
                "measurements": self.store.load_measurements(self.key) if self.key else []}
