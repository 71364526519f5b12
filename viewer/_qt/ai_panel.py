"""The "Run AI" panel: model choice, progress with ETA and Cancel, findings table, overlay controls.

Thin Qt over :mod:`inference.segment` (the logic) and :mod:`viewer.overlay` (drawing state).
The run happens on a superqt worker that yields progress and returns arrays; the GUI thread
builds the overlay and the 3D surfaces. A cancelled or failed run shows nothing of itself.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSlider, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from radreview.inference.package import list_packages

from ..model import ViewerModel
from ..overlay import LabelOverlay
from .workers import run_models_worker

__all__ = ["AIPanel"]

OVERLAY_NAME = "ai-segmentation"


class AIPanel(QWidget):
    """Emits ``result_ready(SegmentationResult)``, ``run_failed(str)``, ``run_cancelled()``."""

    result_ready = Signal(object)
    run_failed = Signal(str)
    run_cancelled = Signal()
    COLUMNS = ["Show", "Label", "Volume mL", "Confidence"]

    def __init__(self, model: ViewerModel, view3d=None, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.view3d = view3d
        self.worker = None
        self.result = None
        self.overlay: LabelOverlay | None = None

        self.model_box = QComboBox()
        self.model_box.addItem("All models that fit the study", "auto")
        self.package_ids = []
        for pkg in list_packages():
            self.package_ids.append(pkg.id)
            self.model_box.addItem(f"{pkg.id} {pkg.meta['version']} ({pkg.task})", pkg.id)
        self.run_result = None  # the whole AIRun
        self.review_panel = None  # set by the main window
        self.precision_box = QComboBox()
        self.precision_box.addItems(["int8", "fp32"])
        self.run_button = QPushButton("Run AI")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.eta = QLabel("")
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(40)
        self.outline = QCheckBox("Outline")
        self.surfaces = QCheckBox("3D surfaces")
        self.surfaces.setChecked(True)

        top = QHBoxLayout()
        top.addWidget(self.model_box, 1)
        top.addWidget(self.precision_box)
        runrow = QHBoxLayout()
        runrow.addWidget(self.run_button)
        runrow.addWidget(self.cancel_button)
        ctl = QHBoxLayout()
        ctl.addWidget(QLabel("Opacity"))
        ctl.addWidget(self.opacity, 1)
        ctl.addWidget(self.outline)
        ctl.addWidget(self.surfaces)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addLayout(runrow)
        lay.addWidget(self.progress)
        lay.addWidget(self.eta)
        lay.addWidget(self.table, 1)
        lay.addLayout(ctl)

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.opacity.valueChanged.connect(self._style_changed)
        self.outline.toggled.connect(self._style_changed)
        self.surfaces.toggled.connect(self._surfaces_toggled)
        self.table.cellClicked.connect(self._row_clicked)
        self.table.cellDoubleClicked.connect(self._pick_color)
        self.table.itemChanged.connect(self._item_changed)
        model.volume_changed.connect(self._volume_changed)

    # ------------------------------------------------------------------ running
    def model_ids(self) -> list[str] | None:
        """The chosen model, or ``None`` for "all that fit" (decided on the worker)."""
        choice = self.model_box.currentData()
        return None if choice == "auto" else [choice]

    def run(self) -> None:
        if self.model.volume is None or self.worker is not None:
            return
        ids = self.model_ids()
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.eta.setText("Preparing…")
        store = self.review_panel.store if self.review_panel is not None else None
        thresholds = {pid: store.thresholds(pid) for pid in self.package_ids} if store else None
        w = run_models_worker(self.model.volume, ids, thresholds, self.precision_box.currentText())
        w.yielded.connect(self._progress)
        w.returned.connect(self._done)
        w.errored.connect(self._failed)
        w.aborted.connect(self._aborted)
        self.worker = w
        w.start()

    def cancel(self) -> None:
        if self.worker is not None:
            self.eta.setText("Cancelling…")
            self.worker.quit()

    def _reset(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setVisible(False)

    def _progress(self, item) -> None:
        mid, p = item
        self.progress.setRange(0, max(p.total, 1))
        self.progress.setValue(p.done)
        self.progress.setFormat(f"{mid} {p.stage} %v/%m")
        self.eta.setText(f"{mid} — {p.stage}: ETA {p.eta_s:.0f} s" if p.eta_s is not None else f"{mid} — {p.stage}")

    def _aborted(self) -> None:
        self._reset()
        self.eta.setText("Cancelled: nothing was added")
        self.run_cancelled.emit()

    def _failed(self, exc: Exception) -> None:
        self._reset()
        self.eta.setText(f"Failed: {exc}")
        self.run_failed.emit(str(exc))

    def _done(self, run) -> None:
        self._reset()
        vol = self.model.volume
        segs = list(run.segmentations.values()) if run is not None else []
        if run is None or vol is None or any(r.labels.shape != vol.array.shape for r in segs):
            self.eta.setText("Result discarded: the study changed during the run")
            return
        if not run.findings:
            msg = "; ".join(run.refused.values()) or (
                f"no shipped model accepts this study ({vol.info.modality or 'unknown'} modality); models accept CT")
            self.eta.setText(f"Failed: {msg}")
            self.run_failed.emit(msg)
            return
        self.run_result = run
        if self.review_panel is not None:
            self.review_panel.set_run(run)
        flagged = {f.name for f in run.findings if f.needs_review and f.kind == "segmentation"}
        if segs:
            self.show_result(segs[0], flagged)
        self._show_candidates(run)
        secs = sum(r.seconds for r in [*segs, *run.classifications.values()])
        self.eta.setText(f"{', '.join(run.packages)} ({self.precision_box.currentText()}): {secs:.1f} s"
                         + (f" — refused: {'; '.join(run.refused.values())}" if run.refused else ""))
        self.result_ready.emit(run)

    def _show_candidates(self, run) -> None:
        from ..overlay import Marker, MarkerOverlay

        vol = self.model.volume
        flagged = {f.id for f in run.findings if f.needs_review}
        markers = []
        for mid, res in run.classifications.items():
            for c in res.candidates:
                markers.append(Marker(tuple(vol.lps_to_index(c.center_lps)), c.size_mm / 2,
                                      flagged=f"{mid}:candidate-{c.rank}" in flagged, name=f"candidate-{c.rank}"))
        if markers:
            self.model.set_overlay("ai-candidates", MarkerOverlay(markers, vol.array.shape, vol.spacing))

    # ------------------------------------------------------------------ display
    def show_result(self, result, flagged_names=()) -> None:
        self.result = result
        colors = {s.index: s.color for s in result.stats}
        names = {s.index: s.name for s in result.stats}
        self.overlay = LabelOverlay(result.labels, colors, names, opacity=self.opacity.value() / 100,
                                    mode="outline" if self.outline.isChecked() else "fill",
                                    flagged={s.index for s in result.stats if s.name in set(flagged_names)})
        self.model.set_overlay(OVERLAY_NAME, self.overlay)
        self.table.blockSignals(True)
        self.table.setRowCount(len(result.stats))
        for r, s in enumerate(result.stats):
            show = QTableWidgetItem()
            show.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled | Qt.ItemIsSelectable)
            show.setCheckState(Qt.Checked)
            show.setData(Qt.UserRole, s.index)
            self.table.setItem(r, 0, show)
            name = QTableWidgetItem(s.name)
            name.setBackground(QColor(*s.color))
            self.table.setItem(r, 1, name)
            self.table.setItem(r, 2, QTableWidgetItem(f"{s.volume_ml:.1f}"))
            self.table.setItem(r, 3, QTableWidgetItem("—" if s.confidence is None else f"{s.confidence:.3f}"))
        self.table.blockSignals(False)
        self.table.resizeColumnsToContents()
        self._update_surfaces()

    def _update_surfaces(self) -> None:
        if self.view3d is None or self.result is None:
            return
        if self.surfaces.isChecked():
            skip = tuple(s.index for s in self.result.stats if s.name == "body" or not self.overlay.visible.get(s.index, True))
            self.view3d.scene.set_labels(self.result.labels, {s.index: s.color for s in self.result.stats}, skip=skip)
        else:
            self.view3d.scene.set_labels(None)
            self.view3d.scene.show_volume_rendering(True)
        self.view3d.render_now()

    def _surfaces_toggled(self, _on: bool) -> None:
        self._update_surfaces()

    def _style_changed(self, *_):
        if self.overlay is None:
            return
        self.overlay.opacity = self.opacity.value() / 100
        self.overlay.mode = "outline" if self.outline.isChecked() else "fill"
        self.model.overlays_changed.emit()

    def _item_changed(self, item) -> None:
        if item.column() != 0 or self.overlay is None:
            return
        self.overlay.set_visible(int(item.data(Qt.UserRole)), item.checkState() == Qt.Checked)
        self.model.overlays_changed.emit()
        self._update_surfaces()

    def set_label_color(self, index: int, rgb) -> None:
        """Change a label's colour in every view (table swatch, MPR overlay, 3D surface)."""
        if self.overlay is None:
            return
        self.overlay.set_color(index, rgb)
        for r in range(self.table.rowCount()):
            if int(self.table.item(r, 0).data(Qt.UserRole)) == index:
                self.table.item(r, 1).setBackground(QColor(*self.overlay.colors[index]))
        if self.result is not None:
            for s in self.result.stats:
                if s.index == index:
                    s.color = tuple(self.overlay.colors[index])
        self.model.overlays_changed.emit()
        self._update_surfaces()

    def _pick_color(self, row: int, col: int) -> None:
        if col != 1 or self.overlay is None:
            return
        from PySide6.QtWidgets import QColorDialog

        index = int(self.table.item(row, 0).data(Qt.UserRole))
        c = QColorDialog.getColor(QColor(*self.overlay.colors[index]), self, "Label colour")
        if c.isValid():
            self.set_label_color(index, (c.red(), c.green(), c.blue()))

    def _row_clicked(self, row: int, _col: int) -> None:
        """Jump the crosshair to the structure's centroid (LPS)."""
        if self.result is None or row >= len(self.result.stats):
            return
        c = self.result.stats[row].centroid_lps
        if c is not None:
            self.model.set_cursor(c)

    def _volume_changed(self, _vol) -> None:
        if self.worker is not None:
            self.worker.quit()
        self.result = None
        self.overlay = None
        self.table.setRowCount(0)
        self.eta.setText("")
