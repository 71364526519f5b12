"""Review panel: findings with their flags, decisions, sign-off, thresholds, explanations.

Thin Qt over :class:`review.findings.ReviewSession` (all rules live there). Every decision,
threshold change and sign-off goes through the store (SQLite, audit-logged) before the UI says
it is saved.
"""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox, QDoubleSpinBox, QHBoxLayout, QInputDialog, QLabel, QLineEdit, QPushButton, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from radreview.review.findings import Finding, ReviewSession, SignOffRefused, finding_from_dict, study_key
from radreview.review.store import ReviewStore, StoreCorrupt

from ..model import ViewerModel
from ..overlay import HeatmapOverlay
from .workers import explain_worker

__all__ = ["ReviewPanel"]

HEATMAP = "explanation"
FLAG_BG = QColor(255, 214, 120)


class ReviewPanel(QWidget):
    """Emits ``decision_saved(id)``, ``signed_off(ts)``, ``signoff_refused(list[str])``,
    ``pending_changed(int)``, ``explanation_ready(Explanation)``, ``explanation_failed(str)``."""

    decision_saved = Signal(str)
    signed_off = Signal(str)
    signoff_refused = Signal(list)
    pending_changed = Signal(int)
    explanation_ready = Signal(object)
    explanation_failed = Signal(str)
    COLUMNS = ["Finding", "Confidence", "Threshold", "Status", "Decision"]

    def __init__(self, model: ViewerModel, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.session: ReviewSession | None = None
        self.run = None
        self.store: ReviewStore | None = None
        self.store_error = ""
        try:
            self.store = ReviewStore()
        except StoreCorrupt as exc:  # reported, never replaced
            self.store_error = str(exc)
        self.reviewer = QLineEdit(os.environ.get("USER", ""))
        self.reviewer.setPlaceholderText("Reviewer name")
        self.reason = QLineEdit()
        self.reason.setPlaceholderText("Reason (optional)")
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.setSelectionMode(QTableWidget.SingleSelection)
        self.accept_b = QPushButton("Accept")
        self.reject_b = QPushButton("Reject")
        self.edit_b = QPushButton("Edit")
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
        lay = QVBoxLayout(self)
        lay.addLayout(row1)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.reason)
        lay.addLayout(row2)
        lay.addLayout(row3)
        lay.addWidget(self.threshold_b)
        lay.addWidget(self.signoff_b)
        lay.addWidget(self.message)
        self.accept_b.clicked.connect(lambda: self.decide_selected("accept"))
        self.reject_b.clicked.connect(lambda: self.decide_selected("reject"))
        self.edit_b.clicked.connect(lambda: self.decide_selected("edit"))
        self.signoff_b.clicked.connect(self.sign_off)
        self.threshold_b.clicked.connect(self._ask_threshold)
        self.explain.toggled.connect(self._explain_toggled)
        self.cutoff.valueChanged.connect(self._cutoff_changed)
        self.heat_opacity.valueChanged.connect(self._cutoff_changed)
        self.table.cellClicked.connect(self._row_clicked)
        self._worker = None
        model.volume_changed.connect(self._volume_changed)

    # ------------------------------------------------------------------ session
    def _volume_changed(self, vol) -> None:
        """A new study: restore its stored findings and decisions (if any)."""
        self.run = None
        self.explain.setChecked(False)
        if self.store is None or vol is None or vol.size[2] < 2:
            self.session = None
            self._refresh()
            return
        saved = [finding_from_dict(d) for d in self.store.load_findings(study_key(vol))]
        self.session = ReviewSession(self.store, study_key(vol), saved) if saved else None
        self._refresh()

    def set_run(self, run) -> None:
        """Findings of a new AI run; stored so reopening the study restores them."""
        if self.store is None:
            self.message.setText(self.store_error)
            return
        self.run = run
        vol = self.model.volume
        self.session = ReviewSession(self.store, study_key(vol), run.findings)
        self.store.save_findings(self.session.key, [f.as_dict() for f in run.findings], self.reviewer.text() or "radreview")
        self._refresh()

    def findings(self) -> list[Finding]:
        return list(self.session.findings.values()) if self.session else []

    def _refresh(self) -> None:
        fs = self.findings()
        decisions = self.session.decisions if self.session else {}
        self.table.setRowCount(len(fs))
        for r, f in enumerate(fs):
            items = [f.id, "n/a" if f.confidence is None else f"{f.confidence:.3f}",
                     "—" if f.threshold is None else f"{f.threshold:.2f}",
                     "Needs review" if f.needs_review else "ok", decisions.get(f.id, {}).get("decision", "")]
            for c, text in enumerate(items):
                it = QTableWidgetItem(text)
                if f.needs_review:
                    it.setBackground(FLAG_BG)
                self.table.setItem(r, c, it)
        self.table.resizeColumnsToContents()
        pending = len(self.session.pending()) if self.session else 0
        signed = self.session.signed_off() if self.session else []
        if signed:
            self.message.setText(f"Signed off by {signed[-1]['reviewer']} at {signed[-1]['ts']}")
        self.pending_changed.emit(pending)

    def selected(self) -> Finding | None:
        rows = self.table.selectionModel().selectedRows()
        fs = self.findings()
        return fs[rows[0].row()] if rows and rows[0].row() < len(fs) else None

    def select(self, finding_id: str) -> None:
        for r, f in enumerate(self.findings()):
            if f.id == finding_id:
                self.table.selectRow(r)
                return
        raise KeyError(finding_id)

    # ------------------------------------------------------------------ actions
    def decide_selected(self, decision: str) -> None:
        f = self.selected()
        if f is None or self.session is None:
            self.message.setText("Select a finding first")
            return
        try:
            ts = self.session.decide(f.id, decision, self.reviewer.text(), self.reason.text() or None)
        except ValueError as exc:
            self.message.setText(str(exc))
            return
        if decision == "edit" and f.kind == "segmentation":  # the mask is opened for editing (outline view)
            ov = self.model.overlays.get("ai-segmentation")
            if ov is not None:
                ov.mode = "outline"
                self.model.overlays_changed.emit()
        self.message.setText(f"Saved: {f.id} = {decision} ({ts})")
        self.reason.clear()
        self._refresh()
        self.decision_saved.emit(f.id)

    def sign_off(self) -> None:
        if self.session is None:
            self.message.setText("Nothing to sign off: run AI first")
            return
        try:
            ts = self.session.sign_off(self.reviewer.text())
        except SignOffRefused as exc:
            self.message.setText(str(exc))
            self.signoff_refused.emit([f.id for f in exc.pending])
            return
        except ValueError as exc:
            self.message.setText(str(exc))
            return
        self._refresh()
        self.signed_off.emit(ts)

    def change_threshold(self, model_id: str, label: str, value: float) -> None:
        """The only way thresholds change: logged with the reviewer's name."""
        self.session.set_threshold(model_id, label, value, self.reviewer.text(), self.reason.text() or None)
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
        f = self.findings()[row]
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
