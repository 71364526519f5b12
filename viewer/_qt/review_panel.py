"""Review panel: the four finding states, decisions, sign-off and addenda, thresholds, explanations.

Thin Qt over :class:`review.findings.ReviewSession` (all rules live there). Every decision,
threshold change and sign-off goes through the store (SQLite, audit-logged) before the UI says
it is saved.

* Table rows: **Needs review** (amber), **AI positive** (red), **AI negative** (grey-green), each
  with its answer in words and the reason; **Not assessed** labels are listed separately with
  the reason they cannot be in this scan. The study answer ("Nodule >= 6 mm: yes, p 0.92") sits
  above the table.
* Keyboard (table focused): N / Shift+N next / previous finding still needing a decision;
  A / R accept / reject the selected finding.
* "Confirm all AI positives" accepts every undecided AI positive finding in one logged action.
* After sign-off decisions are read-only; "Addendum…" asks for a reason and allows changes that
  are logged as an addendum and need a new sign-off.
* Reopening a study restores its findings, decisions, sign-off and the last run's outputs
  (``run_restored`` carries them for the AI panel); the reviewer name is remembered per
  workstation user.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox, QDoubleSpinBox, QHBoxLayout, QInputDialog, QLabel, QLineEdit, QListWidget, QPushButton, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from radreview.review.findings import (
    Finding, FindingStatus, PackageChanged, ReviewSession, SignOffRefused, StudyLocked, study_key_info,
)
from radreview.review.runs import RunChanged
from radreview.review.settings import remember_reviewer, remembered_reviewer
from radreview.review.store import ReviewStore, StoreCorrupt, StoreLocked

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
    ``explanation_failed(str)``."""

    decision_saved = Signal(str)
    signed_off = Signal(str)
    signoff_refused = Signal(list)
    pending_changed = Signal(int)
    positives_confirmed = Signal(list)
    run_restored = Signal(object)
    explanation_ready = Signal(object)
    explanation_failed = Signal(str)
    COLUMNS = ["Finding", "Status", "Answer", "Confidence", "Threshold", "Decision"]
    STATUS_COL, DECISION_COL = 1, 5

    def __init__(self, model: ViewerModel, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.session: ReviewSession | None = None
        self.run = None
        self.saved_runs: dict = {}
        self.store: ReviewStore | None = None
        self.store_error = ""
        self._addendum_reason: str | None = None
        self._rows: list[Finding] = []
        try:
            self.store = ReviewStore()
        except (StoreCorrupt, StoreLocked) as exc:  # reported, never replaced
            self.store_error = str(exc)
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
        lay.addWidget(QLabel("Not assessed (cannot be in this scan):"))
        lay.addWidget(self.not_assessed)
        lay.addWidget(self.reason)
        lay.addLayout(row2)
        lay.addLayout(row4)
        lay.addLayout(row3)
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
        self.cutoff.valueChanged.connect(self._cutoff_changed)
        self.heat_opacity.valueChanged.connect(self._cutoff_changed)
        self.table.cellClicked.connect(self._row_clicked)
        # keys on the table only (an event filter: works without window activation, e.g. under a
        # bare X server, and typing a name or reason in the line edits never triggers them)
        self.table.installEventFilter(self)
        self._worker = None
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
    def _volume_changed(self, vol) -> None:
        """A new study: restore its stored findings, decisions and last run outputs (if any)."""
        from radreview.viewer.workflow import restore_last_run

        self.run = None
        self.saved_runs = {}
        self._addendum_reason = None
        self.explain.setChecked(False)
        self.message.setText(self.store_error)
        if self.store is None or vol is None or vol.size[2] < 2:
            self.session = None
            self._refresh()
            return
        k = study_key_info(vol)
        try:
            saved, runs = restore_last_run(self.store, vol)
        except RunChanged as exc:
            saved, runs = [], {}
            self.message.setText(f"Last run not restored: {exc}")
            from radreview.review.findings import finding_from_dict

            saved = [finding_from_dict(d) for d in self.store.load_findings(k.key)]
        self.session = ReviewSession(self.store, k.key, saved, k.weak) if saved else None
        self.saved_runs = runs
        self._refresh()
        if runs:
            self.run_restored.emit(runs)

    def set_run(self, run) -> None:
        """Findings of a new AI run; stored (findings and run outputs) so reopening restores them.

        A changed model package for a study already reviewed under another is refused (message).
        """
        from radreview.viewer.workflow import open_session, save_ai_run

        if self.store is None:
            self.message.setText(self.store_error)
            return
        actor = self.reviewer.text().strip() or "radreview"
        try:
            session = open_session(self.store, self.model.volume, run.findings, run.package_hashes(), actor)
            save_ai_run(self.store, session, run, actor)
        except PackageChanged as exc:
            self.message.setText(f"AI run not used: {exc}")
            return
        except StoreLocked as exc:
            self.message.setText(str(exc))
            return
        self.run = run
        self.session = session
        self._addendum_reason = None
        self._refresh()

    def findings(self) -> list[Finding]:
        """Every finding of the session (Not assessed ones included)."""
        return list(self.session.findings.values()) if self.session else []

    def rows(self) -> list[Finding]:
        """The findings shown as table rows (all but Not assessed), in row order."""
        return list(self._rows)

    def pending_summary(self) -> str:
        """E.g. ``"3 finding(s) need a decision before sign-off: 1 Needs review, 2 AI positive"``."""
        pend = self.session.pending() if self.session else []
        if not pend:
            return ""
        nr = sum(f.status is FindingStatus.NEEDS_REVIEW for f in pend)
        return (f"{len(pend)} finding(s) need a decision before sign-off: {nr} Needs review (low confidence), "
                f"{len(pend) - nr} AI positive")

    def _refresh(self) -> None:
        fs = self.findings()
        decisions = self.session.decisions if self.session else {}
        self._rows = [f for f in fs if f.status is not FindingStatus.NOT_ASSESSED]
        self.table.setRowCount(len(self._rows))
        for r, f in enumerate(self._rows):
            d = decisions.get(f.id, {})
            dec = d.get("decision", "") + (" (addendum)" if d.get("addendum") else "")
            items = [f.id, f.status.label, f.answer, "n/a" if f.confidence is None else f"{f.confidence:.3f}",
                     "—" if f.threshold is None else f"{f.threshold:.2f}", dec]
            for c, text in enumerate(items):
                it = QTableWidgetItem(text)
                it.setBackground(STATUS_COLORS[f.status])
                it.setToolTip(f.reason)
                self.table.setItem(r, c, it)
        self.table.resizeColumnsToContents()
        self.not_assessed.clear()
        for f in fs:
            if f.status is FindingStatus.NOT_ASSESSED:
                self.not_assessed.addItem(f"{f.name} — {f.reason}")
        answers = [f.answer for f in fs if f.kind == "classification"]
        self.answer_label.setText("\n".join(answers))
        if self.session and self.session.key_warning:
            self.key_label.setText(f"\u26a0 Weak study key: {self.session.key_warning}")
            self.key_label.setStyleSheet("color:#8a5300;")
        else:
            self.key_label.setText("")
        locked = bool(self.session and self.session.locked)
        editable = self.session is not None and (not locked or self._addendum_reason is not None)
        for b in (self.accept_b, self.reject_b, self.edit_b, self.confirm_all_b):
            b.setEnabled(editable)
        self.addendum_b.setEnabled(locked and self._addendum_reason is None)
        state = self.session.state() if self.session else ""
        if locked:
            so = self.session.signed_off()[-1]
            self.state_label.setText(f"Signed off by {so['reviewer']} at {so['ts']}"
                                     + (" — addendum pending sign-off" if state.startswith("addendum") else " (read-only)"))
        else:
            self.state_label.setText("")
        pending = len(self.session.pending()) if self.session else 0
        self.pending_changed.emit(pending)

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
        if self.session is None:
            return None
        pend = {f.id for f in self.session.pending()}
        if not pend:
            self.message.setText("No finding needs a decision")
            return None
        cur = self.selected()
        n = len(self._rows)
        start = self._rows.index(cur) if cur in self._rows else (-1 if step > 0 else n)
        for i in range(1, n + 1):
            r = (start + step * i) % n
            if self._rows[r].id in pend:
                self.table.selectRow(r)
                self._row_clicked(r, 0)
                return self._rows[r]
        return None

    # ------------------------------------------------------------------ actions
    def _reviewer(self) -> str:
        name = self.reviewer.text().strip()
        if name:
            remember_reviewer(name)
        return name

    def decide_selected(self, decision: str) -> None:
        f = self.selected()
        if f is None or self.session is None:
            self.message.setText("Select a finding first")
            return
        addendum = self._addendum_reason is not None
        reason = self.reason.text().strip() or None
        if addendum:
            reason = self._addendum_reason + (f" — {reason}" if reason else "")
        try:
            ts = self.session.decide(f.id, decision, self._reviewer(), reason, addendum=addendum)
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
        if self.session is None:
            self.message.setText("Nothing to confirm: run AI first")
            return []
        addendum = self._addendum_reason is not None
        try:
            ids = self.session.confirm_all_positives(self._reviewer(), self._addendum_reason or self.reason.text() or None,
                                                     addendum=addendum)
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
        if self.session is None or not self.session.locked:
            self.message.setText("Addenda are for signed-off studies")
            return False
        if not reason.strip():
            self.message.setText("An addendum needs a reason")
            return False
        self._addendum_reason = reason.strip()
        self.message.setText(f"Addendum: {self._addendum_reason} — changes are logged as an addendum and need a new sign-off")
        self._refresh()
        return True

    def _ask_addendum(self) -> None:
        reason, ok = QInputDialog.getText(self, "Addendum", "Reason for changing the signed-off study:")
        if ok:
            self.start_addendum(reason)

    def sign_off(self) -> None:
        if self.session is None:
            self.message.setText("Nothing to sign off: run AI first")
            return
        try:
            ts = self.session.sign_off(self._reviewer())
        except SignOffRefused as exc:
            self.message.setText(str(exc))
            self.signoff_refused.emit([f.id for f in exc.pending])
            return
        except (ValueError, StoreLocked) as exc:
            self.message.setText(str(exc))
            return
        self._addendum_reason = None
        self.message.setText(f"Signed off at {ts}")
        self._refresh()
        self.signed_off.emit(ts)

    def change_threshold(self, model_id: str, label: str, value: float) -> None:
        """The only way thresholds change: logged with the reviewer's name."""
        self.session.set_threshold(model_id, label, value, self._reviewer(), self.reason.text() or None)
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
            self.model.remove_overlay(HEATMAP)
            return
        f = self.selected()
        if f is None or self.run is None or self.model.volume is None:
            self.message.setText("Explanations need a finding from this session's AI run")
            return
        pkg = self.run.packages.get(f.model_id)
        result = self.run.segmentations.get(f.model_id) or self.run.classifications.get(f.model_id)
        target = "study" if f.kind == "classification" else f.name
        if self._worker is not None:
            self._worker.quit()
        self.message.setText(f"Computing Grad-CAM for {f.id}…")
        w = explain_worker(self.model.volume, pkg, result, target)
        w.returned.connect(self._explained)
        w.errored.connect(lambda e: (self.message.setText(f"Explanation refused: {e}"), self.explanation_failed.emit(str(e))))
        self._worker = w
        w.start()

    def _explained(self, ex) -> None:
        self._worker = None
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
