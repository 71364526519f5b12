"""The workstation window: series browser, linked MPR + 3D views, W/L presets, progress."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QImage, QKeySequence
from PySide6.QtWidgets import (
    QComboBox, QDialog, QDockWidget, QFileDialog, QGridLayout, QLabel, QMainWindow, QMessageBox,
    QProgressBar, QPushButton, QTableWidget, QTableWidgetItem, QToolBar, QTreeWidget,
    QTreeWidgetItem, QVBoxLayout, QWidget,
)

from radreview.studies import ScanResult, SeriesEntry, Volume, is_image_file

from ..model import PLANES, ViewerModel, volume_render_presets, window_presets
from ..render import layout_viewports
from .views import SliceView, VolumeView, grab_pixels
from .workers import load_file_worker, load_worker, scan_worker

__all__ = ["MainWindow", "SeriesBrowser", "SHORTCUTS"]

SHORTCUTS = [
    ("Left click / drag", "Move the crosshair; all views follow the LPS point"),
    ("Mouse wheel, Up / Down", "Next / previous slice"),
    ("PageUp / PageDown", "10 slices"),
    ("Right drag", "Window (left-right) and level (up-down)"),
    ("Middle drag", "Pan"),
    ("Ctrl + wheel", "Zoom"),
    ("R", "Reset zoom and pan of the view under focus"),
    ("Left drag in 3D", "Rotate the 3D view"),
    ("1 / 2 / 3 / 4 / 5", "W/L preset lung / mediastinum / abdomen / bone / brain"),
    ("O", "Show / hide all overlays (segmentation, markers, heatmaps)"),
    ("H", "Show / hide the heatmap (Grad-CAM, uncertainty)"),
    ("M / Shift+M / E / Shift+E", "Measure: ruler / angle / ellipse ROI / rectangle ROI (Esc: back to crosshair)"),
    ("Ctrl+1 / 2 / 3 / 4", "Layout 2x2 / 1x3 / axial / 3D"),
    ("Ctrl+O / Ctrl+Shift+O", "Open folder / open file"),
    ("Ctrl+S", "Screenshot of the views to a PNG"),
    ("F1", "This sheet"),
]


HOTKEY_PRESETS = {Qt.Key_1: "lung", Qt.Key_2: "mediastinum", Qt.Key_3: "abdomen", Qt.Key_4: "bone", Qt.Key_5: "brain"}


class SeriesBrowser(QTreeWidget):
    """Study/series list: patient, study, series, modality, images, warnings.

    Emits ``series_chosen(SeriesEntry)`` when a volume series is activated.
    """

    series_chosen = Signal(object)
    COLUMNS = ["Patient", "Study", "Series", "Modality", "Images", "Shadow", "Warnings"]
    #: the Shadow column: a series' shadow-deployment job state, never its AI answer
    SHADOW_TEXT = {"done": "result stored", "failed": "failed", "queued": "queued", "running": "running"}

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setColumnCount(len(self.COLUMNS))
        self.setHeaderLabels(self.COLUMNS)
        self.setRootIsDecorated(True)
        self.setAlternatingRowColors(True)
        self.entries: list[SeriesEntry] = []
        self.shadow_state: dict[str, str] = {}
        self.itemActivated.connect(self._activated)
        self.itemDoubleClicked.connect(self._activated)

    def set_result(self, result: ScanResult) -> None:
        self.clear()
        self.entries = list(result.series)
        studies: dict[str, QTreeWidgetItem] = {}
        for entry in self.entries:
            info = entry.info
            skey = entry.study_instance_uid or info.study_date or "study"
            if skey not in studies:
                top = QTreeWidgetItem([info.patient_name or "(anonymous)", f"{info.study_date} {info.study_description}".strip(),
                                       "", "", "", "", ""])
                self.addTopLevelItem(top)
                studies[skey] = top
            desc = entry.description or "(no description)"
            if entry.stack_label:
                desc += f" [{entry.stack_label}]"
            if entry.kind != "volume":
                desc += f" ({entry.sop_class_name})"
            item = QTreeWidgetItem(["", "", desc, entry.modality, str(len(entry.frames) or len(entry.files)), "",
                                    "; ".join(entry.warnings)])
            item.setData(0, Qt.UserRole, self.entries.index(entry))
            if entry.warnings:
                item.setToolTip(6, "\n".join(entry.warnings))
            if not entry.is_volume:
                item.setDisabled(True)
            studies[skey].addChild(item)
        self.expandAll()
        self._mark_shadow()
        for c in range(len(self.COLUMNS)):
            self.resizeColumnToContents(c)

    def set_shadow_state(self, states: dict[str, str]) -> None:
        """Mark each listed series with its shadow-deployment job state (``{Series UID: state}``)."""
        self.shadow_state = dict(states)
        self._mark_shadow()
        self.resizeColumnToContents(5)

    def _mark_shadow(self) -> None:
        for i in range(self.topLevelItemCount()):
            top = self.topLevelItem(i)
            for j in range(top.childCount()):
                item = top.child(j)
                entry = self.entries[item.data(0, Qt.UserRole)]
                state = self.shadow_state.get(entry.series_instance_uid)
                item.setText(5, self.SHADOW_TEXT.get(state, "") if state else "")
                item.setToolTip(5, "A shadow deployment ran the AI on this series; its answer is not shown here"
                                if state == "done" else "")

    def item_for(self, entry: SeriesEntry) -> QTreeWidgetItem | None:
        idx = self.entries.index(entry)
        for i in range(self.topLevelItemCount()):
            top = self.topLevelItem(i)
            for j in range(top.childCount()):
                if top.child(j).data(0, Qt.UserRole) == idx:
                    return top.child(j)
        return None

    def _activated(self, item, _col=0) -> None:
        idx = item.data(0, Qt.UserRole)
        if idx is not None and self.entries[idx].is_volume:
            self.series_chosen.emit(self.entries[idx])


class ShortcutSheet(QDialog):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("radreview keyboard and mouse")
        table = QTableWidget(len(SHORTCUTS), 2, self)
        table.setHorizontalHeaderLabels(["Input", "Action"])
        for r, (k, v) in enumerate(SHORTCUTS):
            table.setItem(r, 0, QTableWidgetItem(k))
            table.setItem(r, 1, QTableWidgetItem(v))
        table.resizeColumnsToContents()
        close = QPushButton("Close", self)
        close.clicked.connect(self.accept)
        lay = QVBoxLayout(self)
        lay.addWidget(table)
        lay.addWidget(close)
        self.resize(560, 420)
        self.table = table


class MainWindow(QMainWindow):
    """The application window. ``model`` is the shared :class:`ViewerModel`."""

    volume_loaded = Signal(object)
    first_image_shown = Signal()
    load_failed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        from .gc_guard import install_gui_thread_gc

        install_gui_thread_gc()  # cyclic GC only on this thread, never inside a worker
        import radreview.viewer.workflow  # noqa: F401 - import once now, not on the GUI thread at the first open
        self.setWindowTitle("radreview")
        self.model = ViewerModel()
        self.views: dict[str, SliceView] = {p: SliceView(self.model, p) for p in PLANES}
        self.view3d = VolumeView(self.model)
        self.layout_name = "2x2"
        self._worker = None
        self.scan_result: ScanResult | None = None
        self.current_entry: SeriesEntry | None = None

        central = QWidget(self)
        outer = QVBoxLayout(central)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        self.banner = QLabel("")
        self.banner.setStyleSheet("background:#c62828; color:white; font-weight:bold; padding:4px;")
        # its row is kept while hidden: the banner appearing after Run AI must not shrink every
        # view (a re-layout re-paints and re-renders all of them in one turn, 3D included)
        policy = self.banner.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.banner.setSizePolicy(policy)
        self.banner.setVisible(False)
        outer.addWidget(self.banner)
        views = QWidget(central)
        self.grid = QGridLayout(views)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(2)
        outer.addWidget(views, 1)
        self.views_area = views
        self.setCentralWidget(central)

        self.readout = QLabel("")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(260)
        self.progress.setVisible(False)
        self.statusBar().addWidget(self.readout, 1)
        self.statusBar().addPermanentWidget(self.progress)

        self._build_toolbar()
        from .docks import install_docks  # Studies, AI, Review, Measurements, Edit, Compare (viewer/_qt/docks.py)

        install_docks(self)
        for v in self.views.values():
            v.readout.connect(self.readout.setText)
        self.set_layout("2x2")
        self.resize(1400, 900)

    # ------------------------------------------------------------------ UI
    def _build_toolbar(self) -> None:
        tb = QToolBar("Main", self)
        self.addToolBar(tb)
        act = QAction("Open folder…", self, shortcut=QKeySequence("Ctrl+O"), triggered=self._ask_folder)
        tb.addAction(act)
        act = QAction("Open file…", self, shortcut=QKeySequence("Ctrl+Shift+O"), triggered=self._ask_file)
        tb.addAction(act)
        tb.addSeparator()
        tb.addWidget(QLabel(" Layout "))
        self.layout_box = QComboBox()
        self.layout_box.addItems(["2x2", "1x3", "axial", "coronal", "sagittal", "3d"])
        self.layout_box.currentTextChanged.connect(self.set_layout)
        tb.addWidget(self.layout_box)
        tb.addWidget(QLabel(" W/L "))
        self.preset_box = QComboBox()
        self.preset_box.addItems(["(header)"] + list(window_presets()) + ["auto"])
        self.preset_box.textActivated.connect(self._preset_chosen)
        tb.addWidget(self.preset_box)
        tb.addWidget(QLabel(" 3D "))
        self.preset3d_box = QComboBox()
        self.preset3d_box.addItems(list(volume_render_presets()))
        self.preset3d_box.currentTextChanged.connect(self.view3d.set_preset)
        tb.addWidget(self.preset3d_box)
        self.cursor3d_action = QAction("3D cursor", self, checkable=True,
                                       toolTip="Show the crosshair point in 3D (re-renders the 3D view when it moves)")
        self.cursor3d_action.toggled.connect(self.view3d.set_cursor_shown)
        tb.addAction(self.cursor3d_action)
        tb.addSeparator()
        tb.addAction(QAction("Screenshot…", self, shortcut=QKeySequence("Ctrl+S"), triggered=self._ask_screenshot))
        help_act = QAction("Shortcuts", self, shortcut=QKeySequence(Qt.Key_F1), triggered=self.show_shortcuts)
        tb.addAction(help_act)
        for key, name in (("Ctrl+1", "2x2"), ("Ctrl+2", "1x3"), ("Ctrl+3", "axial"), ("Ctrl+4", "3d")):
            a = QAction(self, shortcut=QKeySequence(key), triggered=lambda _=False, n=name: self.layout_box.setCurrentText(n))
            self.addAction(a)
        self.toolbar = tb

    def _pending_changed(self, n: int) -> None:
        self.banner.setText(f"\u26a0 {self.review_panel.pending_summary()}")
        self.banner.setVisible(n > 0)

    def _run_restored(self, saved: dict) -> None:
        """Reopened study: draw its last run's label map again (not-assessed labels hidden, as
        after the run), then, on the next event-loop turn (so the two do not add up to one
        stall), list and draw its candidate findings (nodules) from the restored findings in
        the AI panel, numbered as when the run was made."""
        from PySide6.QtCore import QTimer

        from ..workflow import segmentation_from_saved
        from .ai_panel import not_assessed_labels

        vol = self.model.volume
        for run in saved.values():
            seg = segmentation_from_saved(run)
            if seg is not None and vol is not None and seg.labels.shape == vol.array.shape:
                mine = [f for f in self.review_panel.findings() if f.model_id == seg.model_id]
                flagged = {f.name for f in mine if f.needs_review}
                context = [c for c in (self.review_panel.study.context if self.review_panel.study else []) if c.model_id == seg.model_id]
                # labels that cannot be in this scan stay hidden, as after the run itself
                self.ai_panel.show_result(seg, flagged, not_assessed_labels(mine, context))
                break
        candidates = [f for f in self.review_panel.findings() if f.kind == "candidate"]
        if candidates and vol is not None:
            QTimer.singleShot(0, lambda: self.ai_panel.show_candidates(candidates) if self.model.volume is vol else None)

    def keyPressEvent(self, ev):  # noqa: N802
        """Key events the views did not use (also covers a session without window activation,
        e.g. under a bare X server, where QAction shortcuts do not fire)."""
        layouts = {Qt.Key_1: "2x2", Qt.Key_2: "1x3", Qt.Key_3: "axial", Qt.Key_4: "3d"}
        mods = ev.modifiers() & ~Qt.KeypadModifier
        if ev.key() == Qt.Key_F1:
            self.show_shortcuts()
        elif ev.key() in layouts and mods == Qt.ControlModifier:
            self.layout_box.setCurrentText(layouts[ev.key()])
        elif ev.key() in HOTKEY_PRESETS and not mods:
            self.apply_hotkey_preset(ev.key())
        elif ev.key() == Qt.Key_O and not mods:
            self.model.set_overlays_shown(not self.model.overlays_shown)
        elif ev.key() == Qt.Key_H and not mods:
            self.model.set_heatmaps_shown(not self.model.heatmaps_shown)
        elif ev.key() in (Qt.Key_M, Qt.Key_E) and mods in (Qt.NoModifier, Qt.ShiftModifier) and hasattr(self, "measure_panel"):
            kind = {(Qt.Key_M, False): "ruler", (Qt.Key_M, True): "angle", (Qt.Key_E, False): "ellipse",
                    (Qt.Key_E, True): "rectangle"}[(ev.key(), mods == Qt.ShiftModifier)]
            self.measure_panel.start_tool(kind)
            self.measure_dock.raise_()
        else:
            super().keyPressEvent(ev)

    def apply_hotkey_preset(self, key) -> None:
        """W/L preset of hot key 1-5 (:data:`HOTKEY_PRESETS`), CT only."""
        if self.model.volume is None:
            return
        name = HOTKEY_PRESETS[key]
        self.model.apply_preset(name)
        if self.preset_box.findText(name) >= 0:
            self.preset_box.setCurrentText(name)

    def show_shortcuts(self) -> ShortcutSheet:
        sheet = ShortcutSheet(self)
        sheet.show()
        self._sheet = sheet
        return sheet

    def set_layout(self, name: str) -> None:
        extra = getattr(self, "extra_layouts", {})  # name -> place(grid), e.g. "ai|manual" (compare_panel)
        for w in getattr(self, "extra_views", []):
            self.grid.removeWidget(w)
            w.setVisible(False)
        ports = {} if name in extra else layout_viewports(name)
        widgets = {**self.views, "3d": self.view3d}
        for w in widgets.values():
            self.grid.removeWidget(w)
            w.setVisible(False)
        for i in range(4):
            self.grid.setRowStretch(i, 0)
            self.grid.setColumnStretch(i, 0)
        for view_name, (x0, y0, x1, y1) in ports.items():
            w = widgets[view_name]
            if name == "2x2":
                r, c = (0 if y0 >= 0.5 else 1), (0 if x0 < 0.5 else 1)
            elif name == "1x3":
                r, c = 0, int(round(x0 * 3))
            else:
                r, c = 0, 0
            self.grid.addWidget(w, r, c)
            self.grid.setRowStretch(r, 1)
            self.grid.setColumnStretch(c, 1)
            w.setVisible(True)
        if name in extra:
            extra[name](self.grid)
        elif hasattr(self, "compare_layout"):
            self.compare_layout.hidden()
        self.layout_name = name
        if self.layout_box.currentText() != name:
            self.layout_box.setCurrentText(name)

    def _preset_chosen(self, name: str) -> None:
        if self.model.volume is None:
            return
        if name == "(header)":
            (c, w), preset = ViewerModel.default_window(self.model.volume)
            self.model.set_window(c, w, preset)
        else:
            self.model.apply_preset(name)

    # ------------------------------------------------------------------ loading
    def _ask_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open DICOM folder")
        if path:
            self.open_path(path)

    def _ask_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", "", "Images (*.nii *.nii.gz *.nrrd *.mha *.mhd *.zip DICOMDIR *.dcm);;All files (*)")
        if path:
            self.open_path(path)

    def _cancel_worker(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._worker = None

    def open_path(self, path: str) -> None:
        """Open a DICOM folder/zip/DICOMDIR/file or an image file, off the GUI thread."""
        self._cancel_worker()
        self.setWindowTitle(f"radreview — {path}")
        self._show_progress("Scanning", 0, 0)
        if is_image_file(path):
            worker = load_file_worker(path)
            worker.returned.connect(self._volume_ready)
        else:
            worker = scan_worker(path)
            worker.yielded.connect(lambda p: self._show_progress("Scanning", p[1], p[2]))
            worker.returned.connect(self._scan_ready)
        worker.errored.connect(self._failed)
        self._worker = worker
        worker.start()

    def _scan_ready(self, result: ScanResult) -> None:
        self.scan_result = result
        self.browser.set_result(result)
        vols = result.volumes
        if result.skipped:
            self.statusBar().showMessage(f"{len(result.skipped)} file(s) skipped (see Studies tooltips / radreview info)", 8000)
        if not vols:
            self._hide_progress()
            self._failed(RuntimeError(f"no image volume in {result.root}"))
            return
        best = max(vols, key=lambda e: len(e.frames))
        item = self.browser.item_for(best)
        if item is not None:
            self.browser.setCurrentItem(item)
        self.load_entry(best)

    def load_entry(self, entry: SeriesEntry) -> None:
        self._cancel_worker()
        self.current_entry = entry
        self._preview_done = False
        worker = load_worker(entry)
        worker.yielded.connect(self._load_progress)
        worker.returned.connect(self._volume_ready)
        worker.errored.connect(self._failed)
        self._worker = worker
        worker.start()

    def _load_progress(self, p) -> None:
        _, done, total, preview = p
        self._show_progress("Loading", done, total)
        if preview is not None and not self._preview_done:
            k, sl = preview
            self._preview_done = True
            self.model.set_volume(self._preview_volume(k, sl))
            self.first_image_shown.emit()

    def _preview_volume(self, k: int, sl: np.ndarray) -> Volume:
        e = self.current_entry
        g = e.geometry
        f = e.frames[k]
        return Volume(np.asarray(sl)[None], spacing=(g.spacing[0], g.spacing[1], g.spacing[2]),
                      origin=tuple(f.position), direction=g.direction, info=e.info,
                      warnings=["preview: loading the rest of the series"])

    def _volume_ready(self, volume: Volume) -> None:
        self._worker = None
        self._hide_progress()
        self.model.set_volume(volume)
        self.preset_box.setCurrentIndex(0)
        if volume.warnings:
            self.statusBar().showMessage("; ".join(volume.warnings), 10000)
        self.volume_loaded.emit(volume)

    def _failed(self, exc: Exception) -> None:
        self._worker = None
        self._hide_progress()
        msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (RuntimeError, ValueError, FileNotFoundError)) else str(exc)
        self.statusBar().showMessage(msg, 15000)
        self.load_failed.emit(msg)

    def _show_progress(self, what: str, done: int, total: int) -> None:
        self.progress.setVisible(True)
        self.progress.setFormat(f"{what} %v/%m")
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _hide_progress(self) -> None:
        self.progress.setVisible(False)

    # ------------------------------------------------------------------ screenshot
    def _ask_screenshot(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save screenshot", "radreview.png", "PNG (*.png)")
        if path:
            self.save_screenshot(path)

    def save_screenshot(self, path: str) -> np.ndarray:
        """Write the visible views, tiled as on screen, to a PNG; returns the RGB pixels."""
        central = self.views_area
        ratio = central.devicePixelRatioF()
        h, w = int(central.height() * ratio), int(central.width() * ratio)
        canvas = np.zeros((h, w, 3), dtype=np.uint8)
        for v in [*self.views.values(), self.view3d, *getattr(self, "extra_views", [])]:
            if not v.isVisible():
                continue
            px = grab_pixels(v)
            x0, y0 = int(v.x() * ratio), int(v.y() * ratio)
            ph, pw = min(px.shape[0], h - y0), min(px.shape[1], w - x0)
            canvas[y0 : y0 + ph, x0 : x0 + pw] = px[:ph, :pw]
        img = QImage(canvas.data, w, h, 3 * w, QImage.Format_RGB888)
        if not img.save(str(path)):
            raise OSError(f"{path}: could not write PNG")
        return canvas
