"""The "Run AI" panel: model choice, progress with ETA and Cancel, findings table, overlay controls.

Thin Qt over :mod:`inference.segment` (the logic) and :mod:`viewer.overlay` (drawing state).
The run happens on a superqt worker that yields progress and returns arrays; the GUI thread
builds the overlay and the 3D surfaces. A cancelled or failed run shows nothing of itself.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSlider, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from radreview.inference.package import list_packages

from ..model import ViewerModel
from ..overlay import LabelOverlay
from ..progress import RunProgress, learn
from .workers import run_ai_worker

__all__ = ["AIPanel"]

OVERLAY_NAME = "ai-segmentation"
#: labels drawn as an outline only: a fill over the whole body tints the patient, and one over the
#: lungs hides the vessels and nodules the reader is looking for
OUTLINE_ONLY = frozenset({"body", "lungs"})


def not_assessed_labels(findings, context=()) -> set[str]:
    """Names of the segmentation labels that cannot be in this scan (``review.plausibility``:
    outside the scan's body-region coverage or below the card's minimum volume) among a run's
    ``findings`` and context structures (e.g. table foam segmented as "lungs"): not drawn by
    default, after Run AI and when the run is restored on reopen."""
    hidden = {f.name for f in findings if f.kind == "segmentation" and getattr(f, "not_assessed", None)}
    return hidden | {c.name for c in context if getattr(c, "not_assessed", None)}


class AIPanel(QWidget):
    """Emits ``result_ready(SegmentationResult)``, ``run_failed(str)``, ``run_cancelled()``."""

    result_ready = Signal(object)
    explanation_ready = Signal(object)
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
        self.overall = RunProgress([])
        self.drawing = False  # 3D surfaces still being added (one per event-loop turn)
        self._surface_source = None
        self._restored_meshes = (None, None)  # (result, meshes) made by a worker for a restored run
        self._mesh_job_for = None
        self._surface_queue: list = []
        from PySide6.QtCore import QTimer

        self._surface_timer = QTimer(self)
        self._surface_timer.setInterval(0)
        self._surface_timer.timeout.connect(self._add_next_surface)

        self.model_box = QComboBox()
        self.model_box.addItem("All models that fit the study", "auto")
        self.package_ids = []
        for pkg in list_packages():
            self.package_ids.append(pkg.id)
            self.model_box.addItem(f"{pkg.id} {pkg.meta['version']} ({pkg.task})", pkg.id)
        self.run_result = None  # the whole AIRun
        self.review_panel = None  # set by the main window
        self.measure_panel = None  # set by the main window: nodule axes become editable rulers
        self.precision_box = QComboBox()
        self.precision_box.addItems(["int8", "fp32"])
        self.run_button = QPushButton("Run AI")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.eta = QLabel("")
        self.eta.setWordWrap(True)  # a long message must not widen the dock (that re-renders every view)
        from PySide6.QtWidgets import QSizePolicy

        self.eta.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.findings_table = QTableWidget(0, 1)
        self.findings_table.setHorizontalHeaderLabels(["Findings (click: go there)"])
        self.findings_table.horizontalHeader().setStretchLastSection(True)
        self.findings_table.verticalHeader().setVisible(False)
        self.findings_table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.findings_table.setSelectionBehavior(QTableWidget.SelectRows)
        self.listed: list[dict] = []  # the candidate findings listed (and drawn), in row order
        self.opacity = QSlider(Qt.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(40)
        self.outline = QCheckBox("Outline")
        self.surfaces = QCheckBox("3D surfaces")
        self.surfaces.setChecked(True)
        self.uncertainty = QCheckBox("Uncertainty")
        self.uncertainty.setToolTip("Voxel entropy of the segmentation (nats) as a heatmap with a colour bar")

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
        ctl.addWidget(self.uncertainty)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addLayout(runrow)
        lay.addWidget(self.progress)
        lay.addWidget(self.eta)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.findings_table, 1)
        self.explain_button = QPushButton("Explain selected finding (Grad-CAM)")
        self.explain_button.setEnabled(False)
        lay.addWidget(self.explain_button)
        lay.addLayout(ctl)

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.opacity.valueChanged.connect(self._style_changed)
        self.outline.toggled.connect(self._style_changed)
        self.surfaces.toggled.connect(self._surfaces_toggled)
        self.uncertainty.toggled.connect(self._uncertainty_toggled)
        self.table.cellClicked.connect(self._row_clicked)
        self.findings_table.cellClicked.connect(self._finding_clicked)
        self.findings_table.cellDoubleClicked.connect(lambda r, _c: self.explain_finding(r))
        self.explain_button.clicked.connect(lambda: self.explain_finding(self.findings_table.currentRow()))
        self.explain_worker = None
        self.table.cellDoubleClicked.connect(self._pick_color)
        self.table.itemChanged.connect(self._item_changed)
        model.volume_changed.connect(self._volume_changed)

    # ------------------------------------------------------------------ running
    def model_ids(self) -> list[str] | None:
        """The chosen model, or ``None`` for "all that fit" (decided on the worker)."""
        choice = self.model_box.currentData()
        return None if choice in ("auto", None) else [choice]

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
        self.overall = RunProgress(ids or [])
        w = run_ai_worker(self.model.volume, ids, thresholds, self.precision_box.currentText())
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
        if self.explain_worker is not None:
            self.eta.setText("Cancelling Grad-CAM…")
            self.explain_worker.quit()

    # ------------------------------------------------------------------ Grad-CAM of one finding
    def explain_finding(self, row: int) -> None:
        """Grad-CAM of listed finding ``row`` on a worker (cropped around it), with progress,
        ETA and Cancel; the heatmap replaces any shown explanation."""
        from .workers import explain_worker

        if not (0 <= row < len(self.listed)) or self.run_result is None or self.worker is not None:
            return
        f = self.listed[row]
        pkg = self.run_result.packages.get(f["model"])
        result = self.run_result.classifications.get(f["model"])
        if pkg is None or result is None:
            return
        if self.explain_worker is not None:
            self.explain_worker.quit()
        self._explain_t0 = __import__("time").perf_counter()
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.cancel_button.setEnabled(True)
        self.eta.setText(f"Grad-CAM for nodule {row + 1}…")
        w = explain_worker(self.model.volume, pkg, result, f["name"])
        w.yielded.connect(self._explain_progress)
        w.returned.connect(self._explained)
        w.errored.connect(lambda e: self._explain_end(f"Explanation refused: {e}"))
        w.aborted.connect(lambda: self._explain_end("Grad-CAM cancelled"))
        self.explain_worker = w
        w.start()

    def _explain_progress(self, item) -> None:
        _, done, total = item
        import time

        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat("Grad-CAM %v/%m")
        el = time.perf_counter() - self._explain_t0
        if done > 1:
            self.eta.setText(f"Grad-CAM: ETA {el / done * (total - done):.0f} s")

    def _explain_end(self, msg: str) -> None:
        self.explain_worker = None
        self.progress.setVisible(False)
        self.cancel_button.setEnabled(self.worker is not None)
        self.eta.setText(msg)

    def _explained(self, ex) -> None:
        from ..overlay import HeatmapOverlay

        self._explain_end(f"Grad-CAM {ex.target}: {ex.seconds:.1f} s, peak at LPS "
                          f"({', '.join(f'{v:.1f}' for v in ex.peak_lps)})")
        vol = self.model.volume
        if vol is None or ex.heatmap.shape != vol.array.shape:
            return
        self.model.set_overlay("explanation", HeatmapOverlay(ex.heatmap, title="Grad-CAM"))
        self.explanation_ready.emit(ex)

    def _reset(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setVisible(False)

    def _progress(self, item) -> None:
        """One bar for the whole run (every model and stage, weighted; see viewer.progress)."""
        mid, p = item
        if mid == "__plan__":
            self.overall = RunProgress(list(p[0]), dict(p[1]))
            return
        if p.stage == "surfaces":
            self.eta.setText("Preparing the 3D surfaces…")
            return
        f = self.overall.update(mid, p.stage, p.done, p.total)
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(round(f * 1000)))
        self.progress.setFormat(f"{f * 100:.0f} %")
        eta = self.overall.eta_s
        step = f"{mid} — {p.stage}" + (f" (model {self.overall.model_ids.index(mid) + 1}/{len(self.overall.model_ids)})"
                                       if mid in self.overall.model_ids else "")
        self.eta.setText(f"{step}: ETA {eta:.0f} s for the whole run" if eta is not None else step)

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
        for mid, r in [*run.segmentations.items(), *run.classifications.items()]:
            learn(mid, r.seconds, getattr(r, "stage_seconds", {}))
        flagged = {f.name for f in run.findings if f.needs_review and f.kind == "segmentation"}
        # a label that cannot be in this scan (review.plausibility) is not a finding: not drawn by default
        hidden = not_assessed_labels(run.findings, getattr(run, "context", []))
        secs = sum(r.seconds for r in [*segs, *run.classifications.values()])
        text = (f"{', '.join(run.packages)} ({self.precision_box.currentText()}): {secs:.1f} s"
                + (f" — refused: {'; '.join(run.refused.values())}" if run.refused else ""))
        # the results are drawn in steps, one per event-loop turn, so the window never stalls on
        # all of them at once; result_ready is emitted when everything is shown
        steps = [lambda: self.review_panel.set_run(run) if self.review_panel is not None else None,
                 lambda: self.show_result(segs[0], flagged, hidden) if segs else None,
                 lambda: self.show_candidates(run.findings),
                 lambda: (self.eta.setText(text), self.result_ready.emit(run))]
        self.drawing = True
        self._draw_steps(run, vol, steps)

    def _draw_steps(self, run, vol, steps) -> None:
        from PySide6.QtCore import QTimer

        if self.run_result is not run or self.model.volume is not vol:
            self.drawing = False
            return  # another run or study meanwhile
        steps.pop(0)()
        if steps:
            QTimer.singleShot(0, lambda: self._draw_steps(run, vol, steps))
        elif not self._surface_queue:
            self.drawing = False

    def lung_mask(self):
        """The organ model's lungs on the study grid (bool ``(z, y, x)``), or ``None``."""
        if self.result is None:
            return None
        for st in self.result.stats:
            if st.name == "lungs" and st.voxels:
                return self.result.labels == st.index
        return None

    def show_candidates(self, findings) -> None:
        """List the candidate findings among ``findings`` (a run's, or those restored from the
        store on reopen; the card's review policy bounds them) as readable rows and draw
        exactly those, numbered as in the list (:mod:`viewer.findings_text`)."""
        from ..findings_text import finding_row_text
        from ..overlay import Marker, MarkerOverlay

        vol = self.model.volume
        self.listed = [f.as_dict() for f in findings if f.kind == "candidate"]
        lungs = self.lung_mask() if self.listed else None
        markers = []
        self.findings_table.setRowCount(len(self.listed))
        for n, f in enumerate(self.listed, start=1):
            text = finding_row_text(f, vol, lungs, number=n)
            item = QTableWidgetItem(text)
            item.setToolTip(f"{f['id']}\nconfidence {f['confidence']:.3f} (threshold {f['threshold']})")
            flagged = f.get("status", "needs_review" if f.get("needs_review") else "") == "needs_review"
            if flagged:
                item.setBackground(QColor(255, 200, 0))
                item.setForeground(QColor(0, 0, 0))
            self.findings_table.setItem(n - 1, 0, item)
            diameter = f.get("long_axis_mm") or f.get("size_mm") or 6.0
            markers.append(Marker(tuple(vol.lps_to_index(f["center_lps"])), float(diameter) / 2, flagged=flagged,
                                  name=f["id"], number=n))
        self.explain_button.setEnabled(bool(self.listed))
        if markers:
            self.model.set_overlay("ai-candidates", MarkerOverlay(markers, vol.array.shape, vol.spacing))
        else:
            self.model.remove_overlay("ai-candidates")
        if self.measure_panel is not None:
            self.measure_panel.add_axis_rulers(self.listed)

    def _finding_clicked(self, row: int, _col: int) -> None:
        """Jump the crosshair to a listed finding's centre (LPS)."""
        if 0 <= row < len(self.listed) and self.listed[row].get("center_lps") is not None:
            self.model.set_cursor(self.listed[row]["center_lps"])

    # ------------------------------------------------------------------ display
    def show_result(self, result, flagged_names=(), hidden_names=()) -> None:
        """Draw a segmentation: every label in the table; labels in ``hidden_names`` (not assessed:
        they cannot be in this scan) start unchecked, so neither their fill nor their surface shows;
        labels in :data:`OUTLINE_ONLY` (body, lungs) are outlined, never filled."""
        self.result = result
        colors = {s.index: s.color for s in result.stats}
        names = {s.index: s.name for s in result.stats}
        self.overlay = LabelOverlay(result.labels, colors, names, opacity=self.opacity.value() / 100,
                                    mode="outline" if self.outline.isChecked() else "fill",
                                    outline_only={s.index for s in result.stats if s.name in OUTLINE_ONLY},
                                    flagged={s.index for s in result.stats if s.name in set(flagged_names)})
        hidden = {s.index for s in result.stats if s.name in set(hidden_names)}
        for idx in hidden:
            self.overlay.set_visible(idx, False)
        self.model.set_overlay(OVERLAY_NAME, self.overlay)
        self.table.blockSignals(True)
        self.table.setRowCount(len(result.stats))
        for r, s in enumerate(result.stats):
            show = QTableWidgetItem()
            show.setFlags(Qt.ItemIsUserCheckable | Qt.ItemIsEnabled | Qt.ItemIsSelectable)
            show.setCheckState(Qt.Unchecked if s.index in hidden else Qt.Checked)
            show.setData(Qt.UserRole, s.index)
            self.table.setItem(r, 0, show)
            name = QTableWidgetItem(s.name + (" (not assessed)" if s.index in hidden else ""))
            name.setBackground(QColor(*s.color))
            self.table.setItem(r, 1, name)
            self.table.setItem(r, 2, QTableWidgetItem(f"{s.volume_ml:.1f}"))
            self.table.setItem(r, 3, QTableWidgetItem("—" if s.confidence is None else f"{s.confidence:.3f}"))
        self.table.blockSignals(False)
        self.table.resizeColumnsToContents()
        if self.uncertainty.isChecked():
            self._uncertainty_toggled(True)
        self._update_surfaces()

    def _update_surfaces(self) -> None:
        """3D surfaces: meshes come from the worker (``AIRun.surface_meshes``); the GUI thread only
        wraps them in actors, one per event-loop turn, then renders once. Toggles only change
        visibility."""
        if self.view3d is None or self.result is None:
            return
        scene = self.view3d.scene
        meshes = (getattr(self.run_result, "surface_meshes", None) or {}).get(self.result.model_id)
        if meshes is None and self._restored_meshes[0] is self.result:
            meshes = self._restored_meshes[1]
        if meshes is None:  # a result shown without the run's meshes (a restored run): a worker makes them
            if not self.surfaces.isChecked():
                scene.clear_surfaces()
                scene.show_volume_rendering(True)
                self.view3d.render_now()
            elif self._mesh_job_for is not self.result:
                self._start_mesh_job(self.result)
            return
        if self._surface_source is not meshes:
            scene.clear_surfaces()
            self._surface_source = meshes
            self._surface_queue = list(meshes.items())
            self.drawing = True
            self._surface_timer.start()
            return
        self._apply_surface_visibility()

    def _start_mesh_job(self, result) -> None:
        import shiboken6

        from .workers import surfaces_worker

        vol = self.model.volume
        if vol is None or result.labels.shape != vol.array.shape:
            return
        idx = [s.index for s in result.stats if s.voxels and s.name != "body"]
        self._mesh_job_for = result
        self.drawing = True
        w = surfaces_worker(result.labels, vol, idx)

        def done(meshes, _result=result):
            if not shiboken6.isValid(self) or not shiboken6.isValid(self._surface_timer) or \
                    (self.view3d is not None and not shiboken6.isValid(self.view3d)):
                return  # the window closed while the worker ran
            if self._mesh_job_for is _result:
                self._mesh_job_for = None
            self.drawing = False
            if _result is self.result:
                self._restored_meshes = (_result, meshes)
                self._update_surfaces()

        def failed(exc, _result=result):
            if not shiboken6.isValid(self):
                return
            if self._mesh_job_for is _result:
                self._mesh_job_for = None
            self.drawing = False
            self.eta.setText(f"3D surfaces not built: {exc}")

        w.returned.connect(done)
        w.errored.connect(failed)
        self._mesh_worker = w  # kept alive while it runs
        w.start()

    def _add_next_surface(self) -> None:
        if not self._surface_queue or self.result is None or self.view3d is None:
            self._surface_timer.stop()
            self.drawing = False
            return
        idx, mesh = self._surface_queue.pop(0)
        colors = {s.index: s.color for s in self.result.stats}
        self.view3d.scene.add_surface(idx, mesh[0], mesh[1], colors.get(idx, (255, 0, 0)), mesh[2] if len(mesh) > 2 else None)
        if not self._surface_queue:
            self._surface_timer.stop()
            self._apply_surface_visibility()
            self.drawing = False

    def _apply_surface_visibility(self) -> None:
        scene = self.view3d.scene
        any_on = False
        for st in self.result.stats:
            actor = scene.surface_of(st.index)
            if actor is None:
                continue
            on = self.surfaces.isChecked() and self.overlay.visible.get(st.index, True)
            actor.SetVisibility(on)
            actor.GetProperty().SetColor(*[c / 255 for c in (self.overlay.colors.get(st.index) or st.color)])
            any_on = any_on or on
        scene.show_volume_rendering(not any_on)
        self.view3d.render_later()

    def _uncertainty_toggled(self, on: bool) -> None:
        """Show the segmentation's voxel entropy (nats) as a heatmap, 0..max on the colour bar."""
        from ..overlay import HeatmapOverlay

        if not on or self.result is None:
            self.model.remove_overlay("uncertainty")
            return
        ent = np.asarray(self.result.entropy, dtype=np.float32)
        top = max(float(ent.max()), 1e-6)
        self.model.set_overlay("uncertainty", HeatmapOverlay(ent / top, opacity=0.5, cutoff=0.2,
                                                             title="uncertainty (nats)", value_range=(0.0, top)))

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
        self.listed = []
        self._surface_timer.stop()
        self._surface_queue = []
        self._surface_source = None
        self.drawing = False
        self.uncertainty.blockSignals(True)
        self.uncertainty.setChecked(False)  # the map belonged to the previous study
        self.uncertainty.blockSignals(False)
        self.table.setRowCount(0)
        self.findings_table.setRowCount(0)
        self.eta.setText("")
