"""The measurements panel and the mouse tools that draw them (thin Qt over :mod:`viewer.measure`).

Tools use the :meth:`SliceView.set_tool` hook: **ruler** and the **ellipse**/**rectangle** ROIs
are press-drag-release; the **angle** takes three clicks (first arm end, vertex, second arm
end). Pressing near an end point of a shown ruler (within 8 screen pixels) drags that point
instead, so AI-proposed nodule axes can be corrected (they then count as the reviewer's).
Every measurement is drawn in the view of its plane on its slice, listed in the table (click:
jump there), saved with the study in the review store (``ReviewStore.save_measurements``)
when a reviewer name is set, and included in :meth:`MeasurePanel.export_dicts`.
"""

from __future__ import annotations

import numpy as np
import vtk
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout, QLabel, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget,
)
from vtk.util import numpy_support

from ..measure import Measurement, MeasurementError, measure, measurement_text

__all__ = ["MeasurePanel", "MeasureTool"]

LINE_RGB = (1.0, 1.0, 0.3)
AI_RGB = (0.3, 0.9, 1.0)
PICK_PX = 8


class MeasureTool:
    """A measuring tool of one kind for the :meth:`SliceView.set_tool` hook."""

    def __init__(self, panel: "MeasurePanel", kind: str) -> None:
        self.panel = panel
        self.kind = kind
        self.points: list[np.ndarray] = []
        self.plane: str | None = None
        self._edit: tuple[Measurement, int] | None = None

    # the hook -------------------------------------------------------------------------
    def press(self, view, lps, index_zyx, event) -> None:
        hit = self.panel.pick_endpoint(view, event.position().toPoint())
        if hit is not None and not (self.kind == "angle" and self.points):
            self._edit = hit
            return
        if self.kind == "angle":
            if not self.points:
                self.plane = view.plane
                self.points = [lps, lps]
            self.panel.set_preview(self._preview())
            view.request_redraw()
            return
        self.plane = view.plane
        self.points = [lps, lps]
        self.panel.set_preview(self._preview())
        view.request_redraw()

    def move(self, view, lps, index_zyx, event) -> None:
        if self._edit is not None:
            m, i = self._edit
            m.points_lps[i] = [float(v) for v in lps]
            m.source = "user"
            self.panel.changed(m, save=False)
            return
        if self.points and view.plane == self.plane:
            self.points[-1] = lps
            self.panel.set_preview(self._preview())
            view.request_redraw()

    def hover(self, view, lps, index_zyx, event) -> None:
        if self.kind == "angle" and self.points and view.plane == self.plane:
            self.points[-1] = lps
            self.panel.set_preview(self._preview())
            view.request_redraw()

    def release(self, view, lps, index_zyx, event) -> None:
        if self._edit is not None:
            m, _ = self._edit
            self._edit = None
            self.panel.changed(m, save=True)
            return
        if not self.points or view.plane != self.plane:
            return
        self.points[-1] = lps
        if self.kind == "angle" and len(self.points) < 3:
            if np.linalg.norm(self.points[-1] - self.points[0]) > 0.5:  # vertex placed (by drag or 2nd click)
                self.points.append(lps.copy())  # the next click places the second arm's end
            self.panel.set_preview(self._preview())
            view.request_redraw()
            return
        m = self._preview()
        self.points = []
        self.panel.set_preview(None)
        if m is not None and _extent_mm(m) > 0.5:
            self.panel.add(m)
        view.request_redraw()

    def deactivate(self, view) -> None:
        self.points = []
        self._edit = None
        self.panel.set_preview(None)

    def _preview(self) -> Measurement | None:
        pts = [p.tolist() for p in self.points]
        if self.kind == "angle":
            pts = (pts + [pts[-1]] * 3)[:3]
        else:
            pts = pts[:2]
        try:
            return Measurement(self.kind, pts, self.plane or "axial")
        except MeasurementError:
            return None


def _extent_mm(m: Measurement) -> float:
    p = np.asarray(m.points_lps)
    return float(np.max(np.linalg.norm(p - p[0], axis=1)))


class _Painter:
    """Draws the panel's measurements in one SliceView (registered with ``view.add_painter``)."""

    def __init__(self, panel: "MeasurePanel", view) -> None:
        self.panel = panel
        self.view = view
        self.polys = {}
        for src in ("user", "ai"):
            poly = vtk.vtkPolyData()
            mapper = vtk.vtkPolyDataMapper()
            mapper.SetInputData(poly)
            actor = vtk.vtkActor()
            actor.SetMapper(mapper)
            actor.GetProperty().SetColor(*(AI_RGB if src == "ai" else LINE_RGB))
            actor.GetProperty().SetLineWidth(2.0)
            actor.GetProperty().LightingOff()
            actor.SetVisibility(False)
            view.scene.renderer.AddActor(actor)
            self.polys[src] = (poly, actor)
        self.texts: list = []
        self._key = None
        self._placed_key = None
        self._placed_list: list = []

    def shown(self) -> list[tuple[Measurement, list[tuple[float, float]]]]:
        """The measurements on this view's slice with their points in scene world coordinates."""
        view, model = self.view, self.view.model
        if model.volume is None:
            return []
        out = []
        k = model.slice_index(view.plane)
        for m, xy, dist0 in self._placed():
            if abs(dist0 - k) <= 0.5:
                out.append((m, xy))
        if self.panel.preview is not None and self.panel.preview.plane == view.plane:
            w = [view.lps_to_world(p) for p in self.panel.preview.points_lps]
            if abs(w[0][2]) <= 0.5:
                out.append((self.panel.preview, [(x, y) for x, y, _ in w]))
        return out

    def _placed(self) -> list:
        """``(measurement, [(x, y)] scene world points, slice index of its first point)`` of every
        saved measurement in this plane, computed once per measurement list and volume (the
        slice step only compares the index; a scroll used to re-place every point)."""
        view, model = self.view, self.view.model
        key = (self.panel.version, id(model.volume), view.plane)
        if self._placed_key != key:
            k = model.slice_index(view.plane)
            placed = []
            for m in self.panel.measurements:
                if m.plane != view.plane:
                    continue
                w = [view.lps_to_world(p) for p in m.points_lps]
                placed.append((m, [(x, y) for x, y, _ in w], k + w[0][2]))
            self._placed_key, self._placed_list = key, placed
        return self._placed_list

    def draw(self, view) -> None:
        model = view.model
        if model.volume is None:
            return
        if not self.panel.measurements and self.panel.preview is None:
            if self._key is not None:  # hide what was drawn, once
                self._key = None
                for _, actor in self.polys.values():
                    actor.SetVisibility(False)
                for t in self.texts:
                    t.SetVisibility(False)
            return
        key = (self.panel.version, model.slice_index(view.plane), id(model.volume))
        if key == self._key:
            return
        self._key = key
        shown = self.shown()
        for src, (poly, actor) in self.polys.items():
            pts, cells = [], vtk.vtkCellArray()
            for m, w in shown:
                if (m.source == "ai") != (src == "ai"):
                    continue
                line = _outline(m, w)
                base = len(pts)
                pts.extend(line)
                cells.InsertNextCell(len(line), list(range(base, base + len(line))))
            if not pts:
                actor.SetVisibility(False)
                continue
            arr = np.column_stack([np.asarray(pts, float), np.full(len(pts), 0.8)])
            vpts = vtk.vtkPoints()
            vpts.SetData(numpy_support.numpy_to_vtk(arr, deep=True))
            poly.SetPoints(vpts)
            poly.SetLines(cells)
            poly.Modified()
            actor.SetVisibility(True)
        while len(self.texts) < len(shown):
            t = vtk.vtkTextActor()
            t.GetPositionCoordinate().SetCoordinateSystemToWorld()
            tp = t.GetTextProperty()
            tp.SetFontSize(12)
            tp.SetShadow(True)
            view.scene.renderer.AddViewProp(t)
            self.texts.append(t)
        for i, t in enumerate(self.texts):
            if i >= len(shown):
                t.SetVisibility(False)
                continue
            m, w = shown[i]
            # angle: at the vertex; ruler: past its second end point; ROI: its upper-right corner
            x, y = w[1] if m.kind in ("angle", "ruler") else (max(p[0] for p in w), max(p[1] for p in w))
            t.GetPositionCoordinate().SetValue(x + 2.0, y + 2.0, 0.8)
            t.SetInput(self._label(m, shown))
            t.GetTextProperty().SetColor(*(AI_RGB if m.source == "ai" else LINE_RGB))
            t.SetVisibility(True)


    def _label(self, m: Measurement, shown) -> str:
        """A nodule's AI long and short axes share one label ("11.2 x 8.0 mm") on the long axis."""
        if m.finding_id and m.label in ("Long axis", "Short axis"):
            pair = {x.label: x for x, _ in shown if x.finding_id == m.finding_id}
            if "Long axis" in pair and "Short axis" in pair:
                if m.label == "Short axis":
                    return ""
                lv = self.panel.values_of(pair["Long axis"]).get("length_mm", 0.0)
                sv = self.panel.values_of(pair["Short axis"]).get("length_mm", 0.0)
                return f"{lv:.1f} x {sv:.1f} mm"
        return self.panel.label_of(m)


def _outline(m: Measurement, w: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if m.kind in ("ruler", "angle"):
        return list(w)
    (x0, y0), (x1, y1) = w
    if m.kind == "rectangle":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
    a = np.linspace(0, 2 * np.pi, 65)
    return list(zip(cx + rx * np.cos(a), cy + ry * np.sin(a)))


class MeasurePanel(QWidget):
    """Measurement tools, the measurements table, and persistence with the study.

    Emits ``measurements_changed()`` after any add, edit or removal.
    """

    measurements_changed = Signal()
    COLUMNS = ["#", "Measurement", "Where"]

    def __init__(self, model, views: dict, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.views = views
        self.measurements: list[Measurement] = []
        self.preview: Measurement | None = None
        self.version = 0
        self.store = None  # a ReviewStore, set by the main window
        self.reviewer = lambda: ""  # callable giving the reviewer name
        self._values: dict[str, dict] = {}
        self.buttons = {}
        row = QHBoxLayout()
        for kind, text, key in (("ruler", "Ruler", "M"), ("angle", "Angle", "Shift+M"), ("ellipse", "Ellipse", "E"),
                                ("rectangle", "Rect", "Shift+E")):
            b = QPushButton(text)
            b.setToolTip(f"{kind} tool ({key}); Esc: back to the crosshair")
            b.setCheckable(True)
            b.clicked.connect(lambda on, k=kind: self.start_tool(k) if on else self.stop_tool())
            row.addWidget(b)
            self.buttons[kind] = b
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self._delete_selected)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.cellClicked.connect(self._row_clicked)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        from PySide6.QtWidgets import QSizePolicy

        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.table, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.delete_button)
        lay.addLayout(bottom)
        self.view_painters = {}
        for plane, v in views.items():
            p = _Painter(self, v)
            v.add_painter(p)
            v.tool_changed.connect(self._tool_changed)
            self.view_painters[plane] = p
        model.volume_changed.connect(self._volume_changed)

    # ------------------------------------------------------------------ tools
    def start_tool(self, kind: str) -> None:
        """Arm a measuring tool in every slice view (Esc in a view goes back to the crosshair)."""
        tool = MeasureTool(self, kind)
        for v in self.views.values():
            v.set_tool(tool)
        for k, b in self.buttons.items():
            b.setChecked(k == kind)
        self.status.setText(f"{kind}: " + ("click three points (arm, vertex, arm)" if kind == "angle" else "drag in a view"))

    def stop_tool(self) -> None:
        for v in self.views.values():
            if isinstance(v.tool, MeasureTool):
                v.set_tool(None)

    def _tool_changed(self, tool) -> None:
        if tool is None or not isinstance(tool, MeasureTool):
            for b in self.buttons.values():
                b.setChecked(False)
            if tool is None:  # Esc in one view: leave every view's measuring tool
                self.stop_tool()

    # ------------------------------------------------------------------ content
    def values_of(self, m: Measurement) -> dict:
        try:
            return measure(m, self.model.volume)
        except MeasurementError as exc:
            return {"error": str(exc)}

    def text_of(self, m: Measurement) -> str:
        v = self._values.get(m.id) if m is not self.preview else None
        if v is None:
            v = self.values_of(m)
        if "error" in v:
            return f"{m.kind}: {v['error']}"
        unit = "HU" if self.model.volume is not None and self.model.volume.info.modality == "CT" else ""
        return measurement_text(m, v, unit)

    def label_of(self, m: Measurement) -> str:
        """Short text drawn next to a measurement in the view (the table has the full line)."""
        v = self._values.get(m.id) if m is not self.preview else None
        if v is None:
            v = self.values_of(m)
        if "error" in v:
            return "?"
        if m.kind == "ruler":
            return f"{v['length_mm']:.1f} mm"
        if m.kind == "angle":
            return f"{v['angle_deg']:.1f}\N{DEGREE SIGN}"
        if v.get("mean") is None:
            return f"{v['area_mm2']:.0f} mm\N{SUPERSCRIPT TWO}"
        return f"{v['mean']:.0f} \N{PLUS-MINUS SIGN} {v['sd']:.0f}\n{v['area_mm2']:.0f} mm\N{SUPERSCRIPT TWO}"

    def set_preview(self, m: Measurement | None) -> None:
        self.preview = m
        self.version += 1

    def add(self, m: Measurement, save: bool = True) -> None:
        self.measurements.append(m)
        self.changed(m, save)

    def set_measurements(self, items: list[Measurement], save: bool = False) -> None:
        self.measurements = list(items)
        self._values.clear()
        self.changed(None, save)

    def changed(self, m: Measurement | None, save: bool = True) -> None:
        """Recompute, redraw and (``save``) persist after ``m`` (or everything) changed."""
        if m is not None:
            self._values.pop(m.id, None)
        for x in self.measurements:
            if x.id not in self._values:
                self._values[x.id] = self.values_of(x)
        self.version += 1
        self._fill_table()
        for v in self.views.values():  # coalesced: one render per view on the next event-loop turn,
            v.render_later()           # never three synchronous renders inside the caller's turn
        if save:
            self.save()
        self.measurements_changed.emit()

    def remove(self, index: int) -> None:
        m = self.measurements.pop(index)
        self._values.pop(m.id, None)
        self.changed(None, True)

    def _delete_selected(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()}, reverse=True)
        for r in rows:
            if r < len(self.measurements):
                self.measurements.pop(r)
        if rows:
            self.changed(None, True)

    def _fill_table(self) -> None:
        vol = self.model.volume
        self.table.setRowCount(len(self.measurements))
        for r, m in enumerate(self.measurements):
            self.table.setItem(r, 0, QTableWidgetItem(str(r + 1)))
            self.table.setItem(r, 1, QTableWidgetItem(self.text_of(m) + ("  (AI)" if m.source == "ai" else "")))
            where = m.plane
            if vol is not None:
                k, _, _ = self.model.mappings[m.plane].index_to_screen(vol.lps_to_index(m.points_lps[0]))
                where = f"{m.plane} {int(np.rint(k)) + 1}/{self.model.mappings[m.plane].n_slices}"
            self.table.setItem(r, 2, QTableWidgetItem(where))
        self.table.resizeColumnToContents(0)

    def _row_clicked(self, row: int, _col: int) -> None:
        if 0 <= row < len(self.measurements):
            m = self.measurements[row]
            self.model.set_cursor(np.mean(np.asarray(m.points_lps), axis=0))

    def pick_endpoint(self, view, pos) -> tuple[Measurement, int] | None:
        """The shown ruler end point within :data:`PICK_PX` of widget position ``pos``, if any."""
        best = None
        for m in self.measurements:
            if m.kind != "ruler" or m.plane != view.plane:
                continue
            for i, p in enumerate(m.points_lps):
                x, y, dk = view.lps_to_world(p)
                if abs(dk) > 0.5:
                    continue
                r, c = view.scene.world_to_screen(x, y)
                wx, wy = view.widget_pos_of(r, c)
                d = float(np.hypot(wx - pos.x(), wy - pos.y()))
                if d <= PICK_PX and (best is None or d < best[0]):
                    best = (d, m, i)
        return None if best is None else (best[1], best[2])

    # ------------------------------------------------------------------ persistence
    def export_dicts(self) -> list[dict]:
        """Every measurement with its computed values (for the store and findings exports)."""
        return [{**m.as_dict(), "values": self._values.get(m.id) or self.values_of(m)} for m in self.measurements]

    def save(self) -> bool:
        """Save with the study (needs a store, a study and a reviewer name); returns whether saved."""
        from radreview.review.findings import study_key

        name = (self.reviewer() or "").strip()
        if self.store is None or self.model.volume is None:
            return False
        if not name:
            self.status.setText("not saved: enter the reviewer name (Review panel)")
            return False
        self.store.save_measurements(study_key(self.model.volume), self.export_dicts(), name)
        self.status.setText(f"{len(self.measurements)} measurement(s) saved with the study")
        return True

    def load(self) -> None:
        """Restore the study's saved measurements from the store."""
        from radreview.review.findings import study_key

        if self.store is None or self.model.volume is None:
            return
        items = []
        for d in self.store.load_measurements(study_key(self.model.volume)):
            try:
                items.append(Measurement.from_dict(d))
            except MeasurementError:
                continue
        self.set_measurements(items)
        if items:
            self.status.setText(f"{len(items)} saved measurement(s) restored")

    def add_axis_rulers(self, findings: list[dict]) -> int:
        """Show the nodule model's long/short axes (see :func:`viewer.measure.axis_rulers`) as
        editable rulers, replacing earlier AI-proposed ones; returns how many."""
        from ..measure import axis_rulers

        keep = [m for m in self.measurements if m.source != "ai"]
        new = [r for f in findings for r in axis_rulers(f, self.model.volume)]
        self.set_measurements(keep + new, save=False)
        return len(new)

    def _volume_changed(self, vol) -> None:
        self.stop_tool()
        self.preview = None
        self.measurements = []
        self._values.clear()
        self.version += 1
        self._fill_table()
        if vol is not None and vol.size[2] > 1:
            self.load()
