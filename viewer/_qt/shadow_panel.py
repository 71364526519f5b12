"""The read-only Shadow panel: a shadow deployment's queue, throughput, failures and latest
report, read from its ledger (:func:`radreview.review.shadow.status.summary`, on a worker
thread). It never shows a study's AI answer; the study browser only gets each series' job state."""

from __future__ import annotations

import os

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)
from superqt.utils import thread_worker

__all__ = ["ShadowPanel", "REFRESH_MS"]

#: the panel re-reads the ledger this often while a ledger is open
REFRESH_MS = 30_000


@thread_worker(ignore_errors=True)
def _summary_worker(db: str):
    from radreview.review.shadow import ShadowLedger
    from radreview.review.shadow.status import summary

    led = ShadowLedger(db)
    try:
        return summary(led)
    finally:
        led.close()


def _fmt(v, nd: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, list):
        return "(" + ", ".join(_fmt(x, nd) for x in v) + ")"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


class ShadowPanel(QWidget):
    """Shows one ledger (``$RADREVIEW_SHADOW_DB`` when set, or the one chosen with *Open ledger…*).

    Emits ``summary_ready(dict)`` after each refresh; :attr:`series_state` maps Series Instance
    UID -> job state for the study browser."""

    summary_ready = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.db: str | None = None
        self.series_state: dict[str, str] = {}
        self._worker = None
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.ledger_label = QLabel("No ledger open")
        self.ledger_label.setWordWrap(True)
        self.open_button = QPushButton("Open ledger…")
        self.open_button.clicked.connect(self._ask_ledger)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setEnabled(False)
        self.refresh_button.setToolTip("Open a ledger first")
        self.refresh_button.clicked.connect(self.refresh)
        row.addWidget(self.open_button)
        row.addWidget(self.refresh_button)
        lay.addLayout(row)
        lay.addWidget(self.ledger_label)
        self.counts_label = QLabel("")
        self.counts_label.setWordWrap(True)
        lay.addWidget(self.counts_label)
        lay.addWidget(QLabel("Models (studies with an outcome):"))
        self.models_table = QTableWidget(0, 5)
        self.models_table.setHorizontalHeaderLabels(["model", "studies", "AUC (95% CI)", "sensitivity", "specificity"])
        lay.addWidget(self.models_table)
        lay.addWidget(QLabel("Failures by reason:"))
        self.failures_table = QTableWidget(0, 2)
        self.failures_table.setHorizontalHeaderLabels(["jobs", "reason"])
        self.failures_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        lay.addWidget(self.failures_table)
        for t in (self.models_table, self.failures_table):
            t.setEditTriggers(QTableWidget.NoEditTriggers)
            t.verticalHeader().setVisible(False)
        self.models_table.setMaximumHeight(120)  # a few models; the failures list takes the rest
        self.counts_label.setMinimumHeight(3 * self.counts_label.fontMetrics().lineSpacing())
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        if os.environ.get("RADREVIEW_SHADOW_DB"):
            self.set_ledger(os.environ["RADREVIEW_SHADOW_DB"])

    def _ask_ledger(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a shadow ledger", "", "Ledger (*.db *.sqlite);;All files (*)")
        if path:
            self.set_ledger(path)

    def set_ledger(self, db: str) -> None:
        """Show ``db`` (SQLite path or PostgreSQL URL) and refresh now and every :data:`REFRESH_MS`."""
        self.db = db
        self.ledger_label.setText(f"Ledger: {db}")
        self.refresh_button.setEnabled(True)
        self.refresh_button.setToolTip("Read the ledger again")
        self.timer.start()
        self.refresh()

    def refresh(self) -> None:
        if not self.db or self._worker is not None:
            return
        self.counts_label.setText("Reading the ledger…")
        w = _summary_worker(self.db)
        w.returned.connect(self._show)
        w.errored.connect(self._failed)
        w.finished.connect(self._done)
        self._worker = w
        w.start()

    def _done(self) -> None:
        self._worker = None

    def _failed(self, exc: Exception) -> None:
        self.counts_label.setText(f"Cannot read the ledger: {' '.join(str(exc).split())[:300]}")

    def _show(self, s: dict) -> None:
        c = s["counts"]
        rate = s["throughput_per_hour"]
        self.counts_label.setText(
            f"{c['queued']} queued, {c['running']} running, {c['done']} done, {c['failed']} failed; "
            f"{c['skipped']} not eligible. Throughput: "
            f"{_fmt(rate, 1) + ' studies/hour' if rate is not None else 'n/a (too few results yet)'} "
            f"({s['last_hour']} in the last hour).")
        self.models_table.setRowCount(len(s["models"]))
        for i, (mid, m) in enumerate(sorted(s["models"].items())):
            ci = _fmt(m.get("auc_ci95")) if m.get("auc_ci95") else ""
            for j, v in enumerate([mid, _fmt(m.get("n")), f"{_fmt(m.get('auc'))} {ci}".strip(),
                                   _fmt(m.get("sensitivity")), _fmt(m.get("specificity"))]):
                self.models_table.setItem(i, j, QTableWidgetItem(v))
        self.models_table.resizeColumnsToContents()
        self.failures_table.setRowCount(len(s["failures"]))
        for i, f in enumerate(s["failures"]):
            self.failures_table.setItem(i, 0, QTableWidgetItem(str(f["count"])))
            item = QTableWidgetItem(f["reason"])
            item.setToolTip(f["reason"])
            self.failures_table.setItem(i, 1, item)
        self.series_state = dict(s["series_state"])
        self.summary_ready.emit(s)
