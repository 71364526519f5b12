"""The reading-session window: worklist, read form, phase banner, Lock / Reveal / Final.

A thin Qt layer over :class:`radreview.review.sessions.ReadingSession` (Slicer's Widget/Logic
split): every button calls the session, which validates and stores; the widgets only show what
the session returns. The window composes the MPR :class:`~radreview.viewer._qt.views.SliceView`s
itself rather than the main window, so it has no AI panel, findings table, review banner or
heatmap at all.

No leakage while blind (shadow always, sequential until the reveal): nothing visible depends on
the AI. The AI runs on a worker ahead of the reader (the session's cases without results, the
current case first) and writes only to the session store; it emits no text, progress or log
line, and its completion changes nothing on screen. The AI box is created empty and filled
only from :meth:`ReadingSession.reveal`, which the session refuses while blind.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QDockWidget, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout,
                               QHeaderView, QLabel,
                               QLineEdit, QMainWindow, QMessageBox, QPlainTextEdit, QPushButton, QSlider, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)
from superqt.utils import thread_worker

from radreview.review.sessions import ReadingSession, SessionError
from radreview.viewer.model import ViewerModel

from .views import SliceView, grab_pixels

__all__ = ["SessionWindow", "WorklistPanel", "ReadForm", "RulerTool", "BANNER_BLIND", "BANNER_REVEALED",
           "BANNER_CONCURRENT"]

BANNER_BLIND = "Unaided read - AI hidden"
BANNER_REVEALED = "AI revealed"
BANNER_CONCURRENT = "Concurrent read - AI shown"
STATE_TEXT = {"not started": "not started", "unaided open": "in progress", "unaided locked": "locked",
              "aided open": "revising", "done": "done"}


@thread_worker(ignore_errors=True)
def _open_volume_worker(path: str):
    from radreview.studies import open_volume

    yield None
    return open_volume(path)


@thread_worker(ignore_errors=True)
def _ai_ahead_worker(db: str, order: list[str]):
    """Run the session's models on cases without results, in ``order``; results go to the store only."""
    from radreview.studies import open_volume
    from radreview.review.sessions.core import ai_result_from_run
    from radreview.viewer.workflow import run_models

    import os
    import threading

    try:  # Linux nice is per thread (and inherited by ONNX Runtime's pool): keep the reader's GUI responsive
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass
    s = ReadingSession(db)
    try:
        missing = set(s.cases_without_ai())
        for cid in [c for c in order if c in missing]:
            yield cid
            run = run_models(open_volume(s.case_path(cid)), s.models)
            for mid in s.models:
                if mid in run.classifications:
                    s.store_ai(cid, mid, ai_result_from_run(run, mid))
                else:  # refused: audit only; the reader's view must not change
                    s.log_ai_refused(cid, mid, run.refused.get(mid, "no study-level answer"))
    finally:
        s.close()


class RulerTool:
    """Two-point ruler for a SliceView (press = first point, release = second): reports the
    length (mm) in LPS through ``callback(p0, p1, mm)``."""

    def __init__(self, callback) -> None:
        self.callback = callback
        self.p0 = None

    def press(self, view, lps, ijk, ev) -> None:
        self.p0 = np.asarray(lps, float)

    def move(self, view, lps, ijk, ev) -> None:
        pass

    def release(self, view, lps, ijk, ev) -> None:
        if self.p0 is None:
            return
        p1 = np.asarray(lps, float)
        self.callback(self.p0, p1, float(np.linalg.norm(p1 - self.p0)))
        self.p0 = None


class FindingMarkers:
    """Draws the reader's own findings (rings of the ruler diameter, else 6 mm; yellow once revised)
    in one SliceView, on the slices within half a slice of each point. Registered with
    ``view.add_painter``; ``findings`` is the read form's list (never the AI's)."""

    def __init__(self, view, findings_source) -> None:
        import vtk

        self.view, self.source = view, findings_source
        self.poly = vtk.vtkPolyData()
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(self.poly)
        self.actor = vtk.vtkActor()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(0.2, 0.8, 1.0)
        self.actor.GetProperty().SetLineWidth(2.0)
        self.actor.GetProperty().LightingOff()
        self.actor.SetVisibility(False)
        view.scene.renderer.AddActor(self.actor)

    def draw(self, view) -> None:
        import vtk
        from vtk.util import numpy_support

        if view.model.volume is None:
            self.actor.SetVisibility(False)
            return
        pts, cells = [], vtk.vtkCellArray()
        for f in self.source():
            lps = f.get("lps") or np.mean(f["box"], axis=0).tolist()
            x, y, dist = view.lps_to_world(lps)
            if abs(dist) > 0.5:
                continue
            r = 0.5 * (f.get("diameter_mm") or 6.0)
            t = np.linspace(0, 2 * np.pi, 33)
            base = len(pts)
            pts += [(x + r * np.cos(a), y + r * np.sin(a)) for a in t]
            cells.InsertNextCell(len(t), list(range(base, base + len(t))))
        if not pts:
            self.actor.SetVisibility(False)
            return
        arr = np.column_stack([np.asarray(pts, float), np.full(len(pts), 0.8)])
        vpts = vtk.vtkPoints()
        vpts.SetData(numpy_support.numpy_to_vtk(arr, deep=True))
        self.poly.SetPoints(vpts)
        self.poly.SetLines(cells)
        self.poly.Modified()
        self.actor.SetVisibility(True)


class WorklistPanel(QWidget):
    """The reader's cases in their randomised order with the reader's own state per case."""

    case_chosen = Signal(str)

    def __init__(self, session: ReadingSession, reader: str, parent=None) -> None:
        super().__init__(parent)
        self.session, self.reader = session, reader
        lay = QVBoxLayout(self)
        self.summary = QLabel("")
        lay.addWidget(self.summary)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["#", "case", "state"])
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.cellDoubleClicked.connect(lambda r, _c: self.case_chosen.emit(self.table.item(r, 1).text()))
        lay.addWidget(self.table, 1)
        self.resume = QPushButton("Resume")
        self.resume.setToolTip("Open the first case of your worklist that is not done")
        self.resume.clicked.connect(self._resume)
        self.open_btn = QPushButton("Open selected")
        self.open_btn.clicked.connect(self._open_selected)
        row = QHBoxLayout()
        row.addWidget(self.resume)
        row.addWidget(self.open_btn)
        lay.addLayout(row)
        self.refresh()

    def refresh(self) -> None:
        st = self.session.status(self.reader)["readers"][0]
        self.table.setRowCount(len(st["cases"]))
        for i, c in enumerate(st["cases"]):
            for j, v in enumerate((str(i + 1), c["case"], STATE_TEXT[c["state"]])):
                self.table.setItem(i, j, QTableWidgetItem(v))
        self.summary.setText(f"{self.reader}: {st['done']} of {st['assigned']} done")
        self.resume.setEnabled(st["next"] is not None)

    def _resume(self) -> None:
        nxt = self.session.next_case(self.reader)
        if nxt:
            self.case_chosen.emit(nxt)

    def _open_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.case_chosen.emit(self.table.item(rows[0].row(), 1).text())


class ReadForm(QWidget):
    """Score slider, findings list (point at the cursor, ruler diameter, label), free text,
    Save / Lock read / Reveal AI / Final read, and the phase banner."""

    changed = Signal()

    def __init__(self, session: ReadingSession, reader: str, model: ViewerModel, parent=None) -> None:
        super().__init__(parent)
        self.session, self.reader, self.model = session, reader, model
        self.case_id: str | None = None
        self.findings: list[dict] = []
        self._guard = False
        lay = QVBoxLayout(self)
        self.banner = QLabel("")
        self.banner.setAlignment(Qt.AlignCenter)
        lay.addWidget(self.banner)
        self.case_label = QLabel("No case open")
        lay.addWidget(self.case_label)
        self.question = QLabel(session.question)
        self.question.setWordWrap(True)
        lay.addWidget(self.question)
        form = QFormLayout()
        srow = QHBoxLayout()
        self.score = QSlider(Qt.Horizontal)
        self.score.setRange(0, 100)
        self.score.setToolTip("Suspicion 0-100; positive at 50 or more")
        self.score_value = QLabel("not set")
        self.score.valueChanged.connect(self._score_moved)
        srow.addWidget(self.score, 1)
        srow.addWidget(self.score_value)
        form.addRow("Suspicion", srow)
        lay.addLayout(form)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["finding", "LPS (mm)", "diameter (mm)", "label", "revision"])
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.cellClicked.connect(self._jump)
        hh = self.table.horizontalHeader()
        hh.setStretchLastSection(True)
        hh.setSectionResizeMode(QHeaderView.ResizeToContents)
        lay.addWidget(self.table, 1)
        brow = QHBoxLayout()
        self.add_btn = QPushButton("Add finding at cursor")
        self.add_btn.clicked.connect(self.add_finding_at_cursor)
        self.ruler_btn = QPushButton("Ruler")
        self.ruler_btn.setCheckable(True)
        self.ruler_btn.setToolTip("Drag across the selected finding in a view to measure its diameter")
        self.remove_btn = QPushButton("Remove finding")
        self.remove_btn.clicked.connect(self.remove_selected)
        for b in (self.add_btn, self.ruler_btn, self.remove_btn):
            brow.addWidget(b)
        lay.addLayout(brow)
        self.label_edit = QLineEdit()
        self.label_edit.setPlaceholderText("label of the next finding (e.g. RUL)")
        lay.addWidget(self.label_edit)
        self.text = QPlainTextEdit()
        self.text.setPlaceholderText("free text")
        self.text.setMaximumHeight(70)
        lay.addWidget(self.text)
        arow = QHBoxLayout()
        self.save_btn = QPushButton("Save")
        self.save_btn.clicked.connect(lambda: self.save())
        self.lock_btn = QPushButton("Lock read")
        self.lock_btn.clicked.connect(self.lock)
        self.reveal_btn = QPushButton("Reveal AI")
        self.reveal_btn.clicked.connect(self.reveal)
        self.final_btn = QPushButton("Final read")
        self.final_btn.clicked.connect(self.final)
        for b in (self.save_btn, self.lock_btn, self.reveal_btn, self.final_btn):
            arow.addWidget(b)
        lay.addLayout(arow)
        self.ai_box = QGroupBox("")
        self.ai_box.setVisible(False)
        ab = QVBoxLayout(self.ai_box)
        self.ai_text = QLabel("")
        self.ai_text.setWordWrap(True)
        ab.addWidget(self.ai_text)
        lay.addWidget(self.ai_box)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        lay.addWidget(self.message)
        self.set_enabled(False)

    # ------------------------------------------------------------------ state
    def set_enabled(self, on: bool) -> None:
        for w in (self.score, self.table, self.add_btn, self.ruler_btn, self.remove_btn, self.label_edit, self.text,
                  self.save_btn):
            w.setEnabled(on)

    def load_case(self, case_id: str) -> None:
        """Open (or resume) the reader's read of ``case_id`` and show it."""
        self.case_id = case_id
        self.ai_box.setVisible(False)
        self.ai_text.setText("")
        self.message.setText("")
        st = self.session.case_state(self.reader, case_id)
        if st in ("not started", "unaided open", "aided open"):
            read = self.session.open_read(self.reader, case_id)
        else:
            reads = {r.phase: r for r in self.session.reads(self.reader, case_id)}
            read = reads.get("aided") or reads["unaided"]
        self._show_read(read, st if st != "not started" else self.session.case_state(self.reader, case_id))
        if not self.session.is_blind(self.reader, case_id) and self.session.models:
            self._show_ai()

    def _show_read(self, read, state: str) -> None:
        self._guard = True
        self.case_label.setText(f"Case {read.case_id} ({read.phase} read, {STATE_TEXT[state]})")
        self.score.setValue(int(round(read.score)) if read.score is not None else 0)
        self.score_value.setText("not set" if read.score is None else f"{read.score:.0f}")
        self._score_set = read.score is not None
        self.findings = [dict(f) for f in read.findings]
        self.text.setPlainText(read.text)
        self._guard = False
        self._fill_table()
        editable = read.state == "open"
        self.set_enabled(editable)
        mode = self.session.mode
        self.lock_btn.setEnabled(editable and (mode == "shadow" or (mode == "sequential" and read.phase == "unaided")))
        self.lock_btn.setVisible(mode != "concurrent")
        self.reveal_btn.setVisible(mode == "sequential")
        self.reveal_btn.setEnabled(mode == "sequential" and state == "unaided locked")
        self.final_btn.setVisible(mode != "shadow")
        self.final_btn.setEnabled(editable and read.phase == "aided")
        blind = self.session.is_blind(self.reader, read.case_id)
        if mode == "concurrent":
            self._set_banner(BANNER_CONCURRENT, "#1565c0")
        else:
            self._set_banner(BANNER_BLIND if blind else BANNER_REVEALED, "#2e7d32" if blind else "#e65100")

    def _set_banner(self, text: str, color: str) -> None:
        self.banner.setText(text)
        self.banner.setStyleSheet(f"background:{color}; color:white; font-weight:bold; padding:6px;")

    def _fill_table(self) -> None:
        self.table.setRowCount(len(self.findings))
        for i, f in enumerate(self.findings):
            lps = f.get("lps") or np.mean(f["box"], axis=0).tolist()
            vals = (f["id"], ", ".join(f"{v:.1f}" for v in lps),
                    "" if f.get("diameter_mm") is None else f"{f['diameter_mm']:.1f}", f.get("label") or "",
                    "revised after reveal" if f.get("revised") else "")
            for j, v in enumerate(vals):
                it = QTableWidgetItem(v)
                if f.get("revised"):
                    it.setBackground(Qt.yellow)
                self.table.setItem(i, j, it)

    def _score_moved(self, v: int) -> None:
        if self._guard:
            return
        self._score_set = True
        self.score_value.setText(str(v))

    def _jump(self, row: int, _col: int) -> None:
        f = self.findings[row]
        self.model.set_cursor(f.get("lps") or np.mean(f["box"], axis=0))

    # ------------------------------------------------------------------ edits
    def add_finding_at_cursor(self) -> None:
        n = 1 + max([int(f["id"][1:]) for f in self.findings if f["id"][1:].isdigit()] or [0])
        self.findings.append({"id": f"f{n}", "lps": [round(float(v), 2) for v in self.model.cursor],
                              "label": self.label_edit.text().strip() or None, "diameter_mm": None})
        self._fill_table()
        self.table.selectRow(len(self.findings) - 1)
        self.save()

    def set_diameter(self, mm: float) -> None:
        """Ruler result: the diameter of the selected finding (the last one if none is selected)."""
        if not self.findings:
            self.message.setText("Add a finding before measuring its diameter")
            return
        rows = self.table.selectionModel().selectedRows()
        i = rows[0].row() if rows else len(self.findings) - 1
        self.findings[i]["diameter_mm"] = round(mm, 1)
        self._fill_table()
        self.save()

    def remove_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            del self.findings[rows[0].row()]
            self._fill_table()
            self.save()

    def _record(self, **kw):
        try:
            read = self.session.record(self.reader, self.case_id, score=float(self.score.value()) if self._score_set else None,
                                       findings=self.findings, text=self.text.toPlainText(), **kw)
        except SessionError as exc:
            self.message.setText(str(exc))
            return None
        self.message.setText("")
        self._show_read(read, self.session.case_state(self.reader, self.case_id))
        self.changed.emit()
        return read

    def save(self):
        return self._record() if self.case_id else None

    def lock(self):
        return self._record(lock=self.session.mode != "concurrent", final=self.session.mode == "concurrent")

    def final(self):
        return self._record(final=True)

    def reveal(self) -> None:
        try:
            self.session.reveal(self.reader, self.case_id)
        except SessionError as exc:
            self.message.setText(str(exc))
            return
        self.load_case(self.case_id)
        self.changed.emit()

    def _show_ai(self) -> None:
        try:
            ai = self.session.reveal(self.reader, self.case_id)  # allowed only once the read is not blind
        except SessionError as exc:  # the AI has not finished on this case yet
            self.ai_box.setTitle("AI")
            self.ai_text.setText(str(exc))
            self.ai_box.setVisible(True)
            return
        lines = [f"{ai['model']}: probability {ai['probability']:.2f} (threshold {ai['threshold']:.2f}) - "
                 f"{'positive' if ai['positive'] else 'negative'}"]
        lines += [f"candidate at {', '.join(f'{v:.1f}' for v in f['center_lps'])} mm, {f['size_mm']:.1f} mm, "
                  f"p {f['probability']:.2f}" for f in ai["findings"][:5]]
        self.ai_box.setTitle("AI")
        self.ai_text.setText("\n".join(lines))
        self.ai_box.setVisible(True)


class SessionWindow(QMainWindow):
    """The reader's workstation for one session: worklist (left), MPR views, read form (right)."""

    case_loaded = Signal(str)

    def __init__(self, db: str, reader: str, run_ai_ahead: bool = True) -> None:
        super().__init__()
        from .gc_guard import install_gui_thread_gc

        install_gui_thread_gc()  # cyclic GC only on this thread, never inside a worker
        self.db = db
        self.session = ReadingSession(db)
        self.reader = reader
        self.session.worklist(reader)  # raises SessionError for an unknown reader
        self.setWindowTitle(f"radreview reading session - {reader}")
        self.model = ViewerModel()
        self.views = {p: SliceView(self.model, p) for p in ("axial", "coronal", "sagittal")}
        central = QWidget(self)
        grid = QGridLayout(central)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        grid.addWidget(self.views["axial"], 0, 0, 2, 1)
        grid.addWidget(self.views["coronal"], 0, 1)
        grid.addWidget(self.views["sagittal"], 1, 1)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 2)
        self.setCentralWidget(central)
        self.worklist = WorklistPanel(self.session, reader)
        self.worklist.case_chosen.connect(self.open_case)
        self.worklist.setMinimumWidth(300)
        d = QDockWidget("Worklist", self)
        d.setWidget(self.worklist)
        self.addDockWidget(Qt.LeftDockWidgetArea, d)
        self.form = ReadForm(self.session, reader, self.model)
        self.form.setMinimumWidth(460)
        self.form.changed.connect(self.worklist.refresh)
        self.form.ruler_btn.toggled.connect(self._ruler_toggled)
        d = QDockWidget("Read", self)
        d.setWidget(self.form)
        self.addDockWidget(Qt.RightDockWidgetArea, d)
        self.readout = QLabel("")
        self.statusBar().addWidget(self.readout, 1)
        for v in self.views.values():
            v.readout.connect(self.readout.setText)
        self._ruler = RulerTool(lambda p0, p1, mm: self.form.set_diameter(mm))
        self.markers = {p: FindingMarkers(v, lambda: self.form.findings) for p, v in self.views.items()}
        for p, v in self.views.items():
            v.add_painter(self.markers[p])
        self.form.changed.connect(self._redraw)
        self._loader = None
        self._ai_worker = None
        if run_ai_ahead and self.session.models:
            self._start_ai_ahead()
        self.resize(1600, 950)

    def _start_ai_ahead(self) -> None:
        nxt = self.session.next_case(self.reader)
        order = self.session.worklist(self.reader)
        if nxt:
            i = order.index(nxt)
            order = order[i:] + order[:i]
        w = _ai_ahead_worker(self.db, order)
        # deliberately no connection to anything visible: the reader must not notice the AI
        self._ai_worker = w
        w.start()

    def ai_ahead_done(self) -> bool:
        return self._ai_worker is None or not self._ai_worker.is_running

    def _redraw(self) -> None:
        for v in self.views.values():
            v.render_now()

    def _ruler_toggled(self, on: bool) -> None:
        for v in self.views.values():
            v.set_tool(self._ruler if on else None)

    def open_case(self, case_id: str) -> None:
        """Load the case's image on a worker, then open the reader's read of it."""
        try:
            path = self.session.case_path(case_id)
            self.session.case_state(self.reader, case_id)
        except SessionError as exc:
            QMessageBox.warning(self, "radreview", str(exc))
            return
        w = _open_volume_worker(path)
        w.returned.connect(lambda vol, c=case_id: self._volume_ready(c, vol))
        w.errored.connect(lambda exc: self.form.message.setText(f"{path}: {exc}"))
        self._loader = w
        w.start()

    def _volume_ready(self, case_id: str, vol) -> None:
        self._loader = None
        self.model.set_volume(vol)
        self.model.apply_preset("lung")
        self.form.load_case(case_id)
        self.worklist.refresh()
        self.case_loaded.emit(case_id)

    def screenshot(self, path: str) -> None:
        """PNG of the whole window with the VTK views' pixels painted in (``QWidget.grab`` leaves
        OpenGL views black)."""
        from PySide6.QtGui import QImage, QPainter

        pix = self.grab()
        painter = QPainter(pix)
        for v in self.views.values():
            px = np.ascontiguousarray(grab_pixels(v))
            h, w = px.shape[:2]
            img = QImage(px.data, w, h, 3 * w, QImage.Format_RGB888).scaled(v.width(), v.height())
            painter.drawImage(v.mapTo(self, v.rect().topLeft()), img)
        painter.end()
        if not pix.save(str(path)):
            raise OSError(f"{path}: could not write PNG")

    def view_pixels(self) -> dict[str, np.ndarray]:
        """RGB pixels of each MPR view (for the no-leakage test)."""
        return {p: grab_pixels(v) for p, v in self.views.items()}

    def closeEvent(self, ev):  # noqa: N802
        if self._ai_worker is not None and self._ai_worker.is_running:
            self._ai_worker.quit()
        super().closeEvent(ev)
