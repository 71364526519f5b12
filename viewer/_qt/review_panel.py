"""Review panel: the four finding states, decisions, sign-off and addenda, thresholds, explanations.

Thin Qt over :class:`radreview.review.workstation.StudySession` (all rules live there and in
:class:`radreview.review.findings.ReviewSession`; ``radreview review`` drives the same object):
the panel keeps widgets and signal wiring only, as 3D Slicer's Widget/Logic split does. Every decision,
threshold change and sign-off goes through the store (SQLite, audit-logged) before the UI says
it is saved.

* Table rows: **Needs review** (amber), **AI positive** (red), **AI negative** (grey-green), each
  with its answer in words and the reason; **Not assessed** labels are listed separately with
  the reason they cannot be in this scan; the labels the model card marks as anatomical context
  (body, lungs, bone) are not findings: one line names them ("Context: body, lungs, bone (not
  findings)"), their volumes in its tooltip. The study answer ("Nodule >= 6 mm: yes, p 0.92") sits
  above the table.
* Keyboard (table focused): N / Shift+N next / previous finding still needing a decision;
  A / R accept / reject the selected finding.
* "Confirm all AI positives" accepts every undecided AI positive finding in one logged action.
* After sign-off decisions are read-only; "Addendum…" asks for a reason and allows changes that
  are logged as an addendum and need a new sign-off.
* Reopening a study restores its findings, decisions, sign-off and the last run's outputs
  (``run_restored`` carries them for the AI panel); the reviewer name is remembered per
  workstation user.
* "Show explanation (Grad-CAM)" computes on a worker with a progress bar and a Cancel button;
  a cancelled explanation adds no heatmap, and the controls return to idle.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox, QDoubleSpinBox, QHBoxLayout, QInputDialog, QLabel, QLineEdit, QListWidget, QProgressBar, QPushButton, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from radreview.review.findings import Finding, FindingStatus, PackageChanged, ReviewSession, SignOffRefused, StudyLocked
from radreview.review.settings import remember_reviewer, remembered_reviewer
from radreview.review.store import ReviewStore, StoreCorrupt, StoreLocked
from radreview.review.workstation import StudySession

from ..model import ViewerModel
from ..overlay import HeatmapOverlay
from .workers import explain_worker

__all__ = ["ReviewPanel", "STATUS_COLORS", "FLAG_BG"]

HEATMAP = "explanation"
#: Row colours per state: Needs review amber, AI positive red, AI negative grey-green.
STATUS_COLORS = {
    FindingStatus.NEEDS_REVIEW: QColor(255, 214, 120),
    FindingStatus.AI_POSITIVE: QColor(239, 154, 154),
    FindingStatus.AI_NEGATIVE: QColor(205, 220, 205),
}
FLAG_BG = STATUS_COLORS[FindingStatus.NEEDS_REVIEW]


class ReviewPanel(QWidget):
    """Emits ``decision_saved(id)``, ``signed_off(ts)``, ``signoff_refused(list[str])``,
    ``pending_changed(int)``, ``positives_confirmed(list[str])``, ``run_restored(dict)`` (model id
    -> :class:`radreview.review.runs.SavedRun`), ``explanation_ready(Explanation)``,
    ``explanation_failed(str)``, ``explanation_cancelled()``."""

    decision_saved = Signal(str)
    signed_off = Signal(str)
    signoff_refused = Signal(list)
    pending_changed = Signal(int)
    positives_confirmed = Signal(list)
    run_restored = Signal(object)
    explanation_ready = Signal(object)
    explanation_failed = Signal(str)
    explanation_cancelled = Signal()
    COLUMNS = ["Finding", "Status", "Answer", "Confidence", "Threshold", "Decision"]
    STATUS_COL, DECISION_COL = 1, 5

    def __init__(self, model: ViewerModel, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.store: ReviewStore | None = None
        self.store_error = ""
        self._rows: list[Finding] = []
        try:
            self.store = ReviewStore()
        except (StoreCorrupt, StoreLocked) as exc:  # reported, never replaced
            self.store_error = str(exc)
        #: the GUI-free session logic (``None`` without a usable store)
        self.study: StudySession | None = StudySession(self.store) if self.store is not None else None
        self.reviewer = QLineEdit(remembered_reviewer())
        self.reviewer.setPlaceholderText("Reviewer name")
        self.reason = QLineEdit()
        self.reason.setPlaceholderText("Reason (optional)")
        self.key_label = QLabel("")
        self.key_label.setWordWrap(True)
        self.answer_label = QLabel("")
        self.answer_label.setWordWrap(True)
        self.answer_label.setStyleSheet("font-weight:bold;")
        self.state_label = QLabel("")
        #: "Context: body, lungs, bone (not findings)": the card's context labels, not table rows
        self.context_label = QLabel("")
        self.context_label.setWordWrap(True)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setSelectionMode(QTableWidget.SingleSelection)
        self.not_assessed = QListWidget()
        self.not_assessed.setMaximumHeight(90)
        self.accept_b = QPushButton("Accept (A)")
        self.reject_b = QPushButton("Reject (R)")
        self.edit_b = QPushButton("Edit")
        self.confirm_all_b = QPushButton("Confirm all AI positives")
        self.addendum_b = QPushButton("Addendum…")
        self.signoff_b = QPushButton("Sign off study")
        self.threshold_b = QPushButton("Change threshold…")
        self.explain = QCheckBox("Show explanation (Grad-CAM)")
        self.cutoff = QDoubleSpinBox()
        self.cutoff.setRange(0.0, 0.95)
        self.cutoff.setSingleStep(0.05)
        self.cutoff.setValue(0.2)
        self.heat_opacity = QDoubleSpinBox()
        self.heat_opacity.setRange(0.0, 1.0)
        self.heat_opacity.setSingleStep(0.1)
        self.heat_opacity.setValue(0.5)
        self.explain_progress = QProgressBar()  # Grad-CAM steps (explain_worker yields ("explain", done, total))
        self.explain_progress.setVisible(False)
        self.explain_cancel_b = QPushButton("Cancel Grad-CAM")
        self.explain_cancel_b.setEnabled(False)
        self.message = QLabel(self.store_error)
        self.message.setWordWrap(True)
        row1 = QHBoxLayout()
        row1.addWidget(QLabel("Reviewer"))
        row1.addWidget(self.reviewer, 1)
        row2 = QHBoxLayout()
        for b in (self.accept_b, self.reject_b, self.edit_b):
            row2.addWidget(b)
        row3 = QHBoxLayout()
        row3.addWidget(self.explain)
        row3.addWidget(QLabel("cut-off"))
        row3.addWidget(self.cutoff)
        row3.addWidget(QLabel("opacity"))
        row3.addWidget(self.heat_opacity)
        row3b = QHBoxLayout()
        row3b.addWidget(self.explain_progress, 1)
        row3b.addWidget(self.explain_cancel_b)
        row4 = QHBoxLayout()
        row4.addWidget(self.confirm_all_b)
        row4.addWidget(self.threshold_b)
        row5 = QHBoxLayout()
        row5.addWidget(self.signoff_b, 1)
        row5.addWidget(self.addendum_b)
        lay = QVBoxLayout(self)
        lay.addLayout(row1)
        lay.addWidget(self.key_label)
        lay.addWidget(self.answer_label)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.context_label)
        lay.addWidget(QLabel("Not assessed (cannot be in this scan):"))
        lay.addWidget(self.not_assessed)
        lay.addWidget(self.reason)
        lay.addLayout(row2)
        lay.addLayout(row4)
        lay.addLayout(row3)
        lay.addLayout(row3b)
        lay.addLayout(row5)
        lay.addWidget(self.state_label)
        lay.addWidget(self.message)
        self.accept_b.clicked.connect(lambda: self.decide_selected("accept"))
        self.reject_b.clicked.connect(lambda: self.decide_selected("reject"))
        self.edit_b.clicked.connect(lambda: self.decide_selected("edit"))
        self.confirm_all_b.clicked.connect(self.confirm_all_positives)
        self.addendum_b.clicked.connect(self._ask_addendum)
        self.signoff_b.clicked.connect(self.sign_off)
        self.threshold_b.clicked.connect(self._ask_threshold)
        self.explain.toggled.connect(self._explain_toggled)
        self.explain_cancel_b.clicked.connect(self.cancel_explanation)
        self.cutoff.valueChanged.connect(self._cutoff_changed)
        self.heat_opacity.valueChanged.connect(self._cutoff_changed)
        self.table.cellClicked.connect(self._row_clicked)
        # keys on the table only (an event filter: works without window activation, e.g. under a
        # bare X server, and typing a name or reason in the line edits never triggers them)
        self.table.installEventFilter(self)
        self._worker: Any = None  # the running explain_worker (superqt GeneratorWorker) or None
        model.volume_changed.connect(self._volume_changed)
        self._refresh()

    def eventFilter(self, obj, ev):  # noqa: N802 - Qt API
        if obj is self.table and ev.type() == QEvent.KeyPress:
            return self.handle_key(ev.key(), ev.modifiers())
        return super().eventFilter(obj, ev)

    def handle_key(self, key: int, modifiers) -> bool:
        """N / Shift+N next / previous finding needing a decision, A accept, R reject; True if used."""
        if modifiers & (Qt.ControlModifier | Qt.AltModifier | Qt.MetaModifier):
            return False
        if key == Qt.Key_N:
            self.next_pending(-1 if modifiers & Qt.ShiftModifier else +1)
        elif key == Qt.Key_A and not modifiers & Qt.ShiftModifier:
            self.decide_selected("accept")
        elif key == Qt.Key_R and not modifiers & Qt.ShiftModifier:
            self.decide_selected("reject")
        else:
            return False
        return True

    # ------------------------------------------------------------------ session
    @property
    def session(self) -> ReviewSession | None:
        """The study's :class:`ReviewSession` (``None`` while it has no findings)."""
        return self.study.review if self.study else None

    @property
    def run(self):
        """The AI run adopted in this session (``None`` for a restored study)."""
        return self.study.run if self.study else None

    @property
    def saved_runs(self) -> dict:
        """Model id -> :class:`radreview.review.runs.SavedRun` restored on reopen."""
        return self.study.saved_runs if self.study else {}

    def _volume_changed(self, vol) -> None:
        """A new study: the previous study's findings are closed at once; its own stored
        findings, decisions and last run outputs (if any) are restored on the next event-loop
        turn (:meth:`_restore`), so showing the new images and reading the store are two
        short turns, not one long one (0.1 s on reopen; the window must not stall over 0.1 s)."""
        from PySide6.QtCore import QTimer

        self.explain.setChecked(False)
        self.message.setText(self.store_error)
        if self.study is not None:
            self.study.close_study()
        self._refresh()
        if self.study is not None and vol is not None and vol.size[2] >= 2:
            QTimer.singleShot(0, lambda: self._restore(vol))

    def _restore(self, vol) -> None:
        if self.study is None or self.model.volume is not vol:
            return  # another study meanwhile
        self.study.open_study(vol)
        if self.study.message:  # e.g. a saved run file failed its SHA-256
            self.message.setText(self.study.message)
        self._refresh()
        if self.study.saved_runs:
            self.run_restored.emit(self.study.saved_runs)

    def set_run(self, run) -> None:
        """Findings of a new AI run; stored (findings and run outputs) so reopening restores them.

        A changed model package for a study already reviewed under another is refused (message).
        """
        from radreview.viewer.workflow import save_ai_run

        if self.study is None:
            self.message.setText(self.store_error)
            return
        actor = self.reviewer.text().strip() or "radreview"
        try:
            self.study.adopt_run(self.model.volume, run, actor, persist=save_ai_run)
        except PackageChanged as exc:
            self.message.setText(f"AI run not used: {exc}")
            return
        except StoreLocked as exc:
            self.message.setText(str(exc))
            return
        self._refresh()

    def findings(self) -> list[Finding]:
        """Every finding of the session (Not assessed ones included)."""
        return self.study.findings() if self.study else []

    def rows(self) -> list[Finding]:
        """The findings shown as table rows (all but Not assessed), in row order."""
        return list(self._rows)

    def pending_summary(self) -> str:
        """E.g. ``"3 finding(s) need a decision before sign-off: 1 Needs review, 2 AI positive"``."""
        return self.study.pending_summary() if self.study else ""

    def _refresh(self) -> None:
        study = self.study
        decisions = study.decisions() if study else {}
        self._rows = study.assessed() if study else []
        self.table.setRowCount(len(self._rows))
        for r, f in enumerate(self._rows):
            d = decisions.get(f.id)
            items = [f.id, f.status.label, f.answer, "n/a" if f.confidence is None else f"{f.confidence:.3f}",
                     "—" if f.threshold is None else f"{f.threshold:.2f}", "" if d is None else d.label]
            for c, text in enumerate(items):
                it = QTableWidgetItem(text)
                it.setBackground(STATUS_COLORS[f.status])
                it.setToolTip(f.reason)
                self.table.setItem(r, c, it)
        self.table.resizeColumnsToContents()
        self.not_assessed.clear()
        for f in study.not_assessed() if study else []:
            self.not_assessed.addItem(f"{f.name} — {f.reason}")
        self.answer_label.setText("\n".join(study.answers()) if study else "")
        self.context_label.setText(study.context_text() if study else "")
        self.context_label.setToolTip("\n".join(c.text for c in study.context) if study else "")
        if self.session and self.session.key_warning:
            self.key_label.setText(f"\u26a0 Weak study key: {self.session.key_warning}")
            self.key_label.setStyleSheet("color:#8a5300;")
        else:
            self.key_label.setText("")
        locked = bool(study and study.locked)
        editable = bool(study and study.editable)
        for b in (self.accept_b, self.reject_b, self.edit_b, self.confirm_all_b):
            b.setEnabled(editable)
        self.addendum_b.setEnabled(locked and study is not None and study.addendum_reason is None)
        self.state_label.setText(study.state_text() if study else "")
        self.pending_changed.emit(len(study.pending()) if study else 0)

    def selected(self) -> Finding | None:
        rows = self.table.selectionModel().selectedRows()
        return self._rows[rows[0].row()] if rows and rows[0].row() < len(self._rows) else None

    def select(self, finding_id: str) -> None:
        for r, f in enumerate(self._rows):
            if f.id == finding_id:
                self.table.selectRow(r)
                return
        raise KeyError(finding_id)

    def next_pending(self, step: int = 1) -> Finding | None:
        """Select the next (``step`` +1) or previous (-1) finding still needing a decision, wrapping."""
        if self.study is None or self.session is None:
            return None
        cur = self.selected()
        f = self.study.next_pending(cur.id if cur else None, step)
        if f is None:
            self.message.setText("No finding needs a decision")
            return None
        r = [x.id for x in self._rows].index(f.id)
        self.table.selectRow(r)
        self._row_clicked(r, 0)
        return self._rows[r]

    # ------------------------------------------------------------------ actions
    def _reviewer(self) -> str:
        name = self.reviewer.text().strip()
        if name:
            remember_reviewer(name)
        return name

    def decide_selected(self, decision: str) -> None:
        f = self.selected()
        if f is None or self.study is None or self.session is None:
            self.message.setText("Select a finding first")
            return
        addendum = self.study.addendum_reason is not None  # the reason is prefixed by StudySession.decide
        try:
            ts = self.study.decide(f.id, decision, self._reviewer(), self.reason.text().strip() or None)
        except StudyLocked as exc:
            self.message.setText(f"{exc} (use Addendum…)")
            return
        except (ValueError, StoreLocked) as exc:
            self.message.setText(str(exc))
            return
        if decision == "edit" and f.kind == "segmentation":  # the mask is opened for editing (outline view)
            ov = self.model.overlays.get("ai-segmentation")
            if ov is not None:
                ov.mode = "outline"
                self.model.overlays_changed.emit()
        self.message.setText(f"Saved: {f.id} = {decision} ({ts})" + (" as an addendum" if addendum else ""))
        self.reason.clear()
        self._refresh()
        self.select(f.id)
        self.decision_saved.emit(f.id)

    def confirm_all_positives(self) -> list[str]:
        """Accept every undecided AI positive finding (one explicit, audit-logged action)."""
        if self.study is None or self.session is None:
            self.message.setText("Nothing to confirm: run AI first")
            return []
        try:
            ids = self.study.confirm_all_positives(self._reviewer(), self.reason.text() or None)
        except StudyLocked as exc:
            self.message.setText(f"{exc} (use Addendum…)")
            return []
        except (ValueError, StoreLocked) as exc:
            self.message.setText(str(exc))
            return []
        self.message.setText(f"Confirmed {len(ids)} AI positive finding(s)" if ids else "No undecided AI positive finding")
        self._refresh()
        self.positives_confirmed.emit(ids)
        return ids

    def start_addendum(self, reason: str) -> bool:
        """Open a signed-off study for an addendum with ``reason``; False (message) when refused."""
        if self.study is None:
            self.message.setText("Addenda are for signed-off studies")
            return False
        try:
            self.study.start_addendum(reason)
        except ValueError as exc:
            self.message.setText(str(exc))
            return False
        self.message.setText(f"Addendum: {self.study.addendum_reason} — changes are logged as an addendum and need a new sign-off")
        self._refresh()
        return True

    def _ask_addendum(self) -> None:
        reason, ok = QInputDialog.getText(self, "Addendum", "Reason for changing the signed-off study:")
        if ok:
            self.start_addendum(reason)

    def sign_off(self) -> None:
        if self.study is None or self.session is None:
            self.message.setText("Nothing to sign off: run AI first")
            return
        try:
            ts = self.study.sign_off(self._reviewer())  # with the study's saved measurements
        except SignOffRefused as exc:
            self.message.setText(str(exc))
            self.signoff_refused.emit([f.id for f in exc.pending])
            return
        except (ValueError, StoreLocked) as exc:
            self.message.setText(str(exc))
            return
        self.message.setText(f"Signed off at {ts}")
        self._refresh()
        self.signed_off.emit(ts)

    def change_threshold(self, model_id: str, label: str, value: float) -> None:
        """The only way thresholds change: logged with the reviewer's name."""
        if self.study is None or self.session is None:
            self.message.setText("No findings: run AI first")
            return
        self.study.set_threshold(model_id, label, value, self._reviewer(), self.reason.text() or None)
        self._refresh()

    def _ask_threshold(self) -> None:
        f = self.selected()
        if f is None or self.session is None:
            self.message.setText("Select a finding first")
            return
        label = "candidate" if f.kind == "candidate" else f.name
        value, ok = QInputDialog.getDouble(self, "Review threshold", f"Threshold for {f.model_id} / {label}",
                                           f.threshold or 0.5, 0.0, 1.0, 3)
        if ok:
            self.change_threshold(f.model_id, label, value)

    def _row_clicked(self, row: int, _col: int) -> None:
        f = self._rows[row]
        c = f.details.get("center_lps")
        if c:
            self.model.set_cursor(c)
        if self.explain.isChecked():
            self._explain_toggled(True)

    # ------------------------------------------------------------------ explanations
    def _explain_toggled(self, on: bool) -> None:
        if not on:
            self.cancel_explanation()
            self.model.remove_overlay(HEATMAP)
            return
        f = self.selected()
        if f is None or self.run is None or self.model.volume is None:
            self.message.setText("Explanations need a finding from this session's AI run")
            return
        pkg = self.run.packages.get(f.model_id)
        result = self.run.segmentations.get(f.model_id) or self.run.classifications.get(f.model_id)
        target = "study" if f.kind == "classification" else f.name
        if self._worker is not None:  # a new target: the old job's result is dropped (see _current)
            self._worker.quit()
        self.message.setText(f"Computing Grad-CAM for {f.id}…")
        w = explain_worker(self.model.volume, pkg, result, target)
        w.yielded.connect(partial(self._explain_progress, w))
        w.returned.connect(partial(self._explained, w))
        w.errored.connect(partial(self._explain_failed, w))
        w.aborted.connect(partial(self._explain_aborted, w))
        self._worker = w
        self._explaining(True)
        w.start()

    @property
    def explaining(self) -> bool:
        """A Grad-CAM job is running (the Cancel button is live)."""
        return self._worker is not None

    def _explaining(self, busy: bool) -> None:
        """Busy: progress bar shown (busy indicator until the first step), Cancel live, the
        Grad-CAM check box locked; idle: the reverse."""
        self.explain_progress.setVisible(busy)
        if busy:
            self.explain_progress.setRange(0, 0)
        self.explain_cancel_b.setEnabled(busy)
        self.explain.setEnabled(not busy)

    def _current(self, w) -> bool:
        """``w`` is the job the panel waits for and was not cancelled (later signals of an
        abandoned job are ignored)."""
        return w is self._worker and not w.abort_requested

    def cancel_explanation(self) -> None:
        """Cancel the running Grad-CAM (``quit()``: it stops between steps); no heatmap is added
        even if the step under way finishes, and the controls return to idle at once."""
        w = self._worker
        if w is None:
            return
        w.quit()
        self._worker = None
        self._explaining(False)
        self.explain.blockSignals(True)
        self.explain.setChecked(False)
        self.explain.blockSignals(False)
        self.message.setText("Grad-CAM cancelled: no heatmap added")
        self.explanation_cancelled.emit()

    def _explain_progress(self, w, item) -> None:
        if not self._current(w):
            return
        _, done, total = item
        self.explain_progress.setRange(0, max(int(total), 1))
        self.explain_progress.setValue(int(done))
        self.explain_progress.setFormat("Grad-CAM %v/%m")

    def _explain_aborted(self, w) -> None:
        if w is self._worker:  # quit() from elsewhere (cancel_explanation has already cleaned up)
            self.cancel_explanation()

    def _explain_failed(self, w, e) -> None:
        if not self._current(w):
            return
        self._worker = None
        self._explaining(False)
        self.message.setText(f"Explanation refused: {e}")
        self.explanation_failed.emit(str(e))

    def _explained(self, w, ex) -> None:
        if not self._current(w):  # cancelled, or replaced by a newer request
            return
        self._worker = None
        self._explaining(False)
        if self.model.volume is None or ex.heatmap.shape != self.model.volume.array.shape or not self.explain.isChecked():
            return
        self.model.set_overlay(HEATMAP, HeatmapOverlay(ex.heatmap, opacity=self.heat_opacity.value(), cutoff=self.cutoff.value()))
        self.message.setText(f"Grad-CAM {ex.target}: peak at LPS ({', '.join(f'{v:.1f}' for v in ex.peak_lps)}) "
                             f"in {ex.seconds:.1f} s")
        self.explanation_ready.emit(ex)

    def _cutoff_changed(self, _v: float = 0.0) -> None:
        ov = self.model.overlays.get(HEATMAP)
        if ov is not None:
            ov.cutoff = self.cutoff.value()
            ov.opacity = self.heat_opacity.value()
            self.model.overlays_changed.emit()
