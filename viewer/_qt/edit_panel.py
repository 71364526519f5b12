"""Segment-editor panel: brush, eraser, threshold paint, fill, islands, interpolation, undo/redo.

Thin Qt over :class:`viewer.editing.LabelEditor` (all computation lives there). The panel owns
one editor on a *copy* of the AI mask (or a new, empty label map when there is no AI result),
shows it as the ``edited-mask`` overlay in place of the AI overlay, and routes the left mouse
button of every MPR view to the active tool through :meth:`SliceView.set_tool`. "Save edit"
stores the edited mask as a new version next to the untouched AI mask
(:func:`viewer.editing.save_edited_mask`) and records the review decision "edit".

Keys (main window and views): B brush, E eraser, Ctrl+Z undo, Ctrl+Shift+Z redo, [ and ]
brush radius down/up.
"""

from __future__ import annotations

import numpy as np
import vtk
from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QGridLayout, QHBoxLayout, QLabel, QPushButton,
    QSpinBox, QVBoxLayout, QWidget,
)

from ..editing import LabelEditor, save_edited_mask
from ..model import ViewerModel
from ..overlay import LabelOverlay

__all__ = ["EditPanel", "EditTool", "EDIT_OVERLAY", "SHORTCUTS"]

EDIT_OVERLAY = "edited-mask"
AI_OVERLAY = "ai-segmentation"
SHORTCUTS = [
    ("B / E", "Brush / eraser (left button paints in the slice views; Esc: crosshair again)"),
    ("[ / ]", "Brush radius smaller / larger"),
    ("Ctrl+Z / Ctrl+Shift+Z", "Undo / redo an edit (a whole stroke is one step)"),
]
_DEFAULT_COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                   (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


class _SubMapping:
    """A :class:`PlaneMapping` stand-in whose slices are the screen rectangle ``rows x cols`` of
    the real one (overlays only call ``extract``)."""

    def __init__(self, mapping, rows: slice, cols: slice) -> None:
        self.mapping, self.rows, self.cols = mapping, rows, cols

    def extract(self, array, index):
        return self.mapping.extract(array, index)[self.rows, self.cols]


class _StrokePreview:
    """Redraw during a stroke: re-compose only the screen rectangle a dab changed, in place in
    the view's own copy of the shown slice (``SliceScene.shown_rgb``), then paint. The slice
    below the edited overlay (windowed image and the overlays drawn before it) is composed
    once, at the stroke's start; the release re-composes
    the whole slice in every view. Falls back (``ok`` False) when the edited overlay is not the
    top one or the shown slice does not have the plane's shape."""

    PAD = 2  # pixels re-composed around the rectangle so outlines at its edge stay right

    def __init__(self, view, overlay) -> None:
        from ..model import apply_window

        m = view.model
        self.view, self.overlay, self.ok = view, overlay, False
        self.mapping = m.mappings[view.plane]
        self.k = m.slice_index(view.plane)
        self.state = self.state_of(view, overlay)
        ovs = self._overlays(m)
        view.flush()  # a redraw still pending (overlays toggled) composes the shown slice first
        shown = view.scene.shown_rgb
        rows, cols = self.mapping.shape
        if not ovs or ovs[-1] is not overlay or shown is None or shown.shape[:2] != (rows, cols):
            return
        gray = apply_window(m.slice_image(view.plane), *m.window)
        if m.volume.info.invert_grayscale:
            gray = 255 - gray
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
        for ov in ovs[:-1]:
            rgb = ov.compose(rgb, self.mapping, self.k)
        self.base = rgb
        self.tex = None  # the stroke's own copy of the shown slice (kept slices stay as composed)
        self.ok = True

    @staticmethod
    def _overlays(m) -> list:
        return list(m.visible_overlays()) if hasattr(m, "visible_overlays") else list(m.overlays.values())

    @classmethod
    def state_of(cls, view, overlay) -> tuple:
        """What the preview's base slice depends on, besides the edits of the stroke itself:
        slice index, window, grey-scale inversion, the overlays drawn (which and in what order)
        and the look of those below the edited one. A change mid-stroke (a wheel step, a W/L
        drag or preset key, O or H) makes the base stale: :meth:`EditTool._dab` rebuilds it."""
        m = view.model
        ovs = cls._overlays(m)
        below = []
        for ov in ovs:
            if ov is overlay:
                continue
            fn = getattr(ov, "display_key", None)
            below.append((id(ov), fn() if fn is not None else None))
        return (m.slice_index(view.plane), m.window, bool(m.volume.info.invert_grayscale),
                tuple(id(ov) for ov in ovs), tuple(below))

    def current(self) -> bool:
        """Whether the base slice still matches what the view shows (:meth:`state_of`)."""
        return self.state == self.state_of(self.view, self.overlay)

    def update(self, bbox) -> None:
        """Re-compose the screen rectangle of voxel box ``bbox`` (slices in z, y, x)."""
        corners = np.array([[b.start, b.stop - 1] for b in bbox[::-1]], float)  # (i, j, k) rows
        pts = [self.mapping.index_to_screen([corners[0, a], corners[1, b], corners[2, c]])
               for a in (0, 1) for b in (0, 1) for c in (0, 1)]
        rows, cols = self.mapping.shape
        rr = [p[1] for p in pts]
        cc = [p[2] for p in pts]
        p = self.PAD
        r0, r1 = max(0, int(min(rr)) - 2 * p), min(rows, int(max(rr)) + 2 * p + 1)
        c0, c1 = max(0, int(min(cc)) - 2 * p), min(cols, int(max(cc)) + 2 * p + 1)
        if r0 >= r1 or c0 >= c1:
            return
        sub = self.overlay.compose(self.base[r0:r1, c0:c1], _SubMapping(self.mapping, slice(r0, r1), slice(c0, c1)), self.k)
        ir0, ir1 = r0 + (p if r0 > 0 else 0), r1 - (p if r1 < rows else 0)
        ic0, ic1 = c0 + (p if c0 > 0 else 0), c1 - (p if c1 < cols else 0)
        scene = self.view.scene
        if self.tex is None or scene.shown_rgb is not self.tex:  # first dab, or the slice was redrawn
            self.tex = np.array(scene.shown_rgb, copy=True)
            scene.shown_rgb = self.tex
        self.tex[ir0:ir1, ic0:ic1] = sub[ir0 - r0:ir1 - r0, ic0 - c0:ic1 - c0]
        scene.shown_changed()
        self.view.request_redraw()


class EditTool:
    """The interaction tool given to :meth:`SliceView.set_tool`: brush, eraser or fill.

    Uses the views' hook (``press/move/release/hover/draw/deactivate``); all voxel work is
    :class:`LabelEditor`'s. Draws the brush outline (its true radius in mm) under the mouse.
    """

    def __init__(self, panel: "EditPanel", kind: str) -> None:
        self.panel = panel
        self.kind = kind  # "brush" | "eraser" | "fill"
        self._circles: dict[int, tuple] = {}
        self._hover: dict[int, np.ndarray] = {}

    # ---------------------------------------------------------------- hook
    def press(self, view, lps, index_zyx, event) -> None:
        p = self.panel
        if p.editor is None:
            p.start_editing()
        if self.kind == "fill":
            seed = np.clip(np.rint(index_zyx), 0, np.array(p.editor.labels.shape) - 1)
            p.editor.fill(seed, p.value(), plane=p.plane_axis(view), hu_range=p.hu_range())
            p.edited(view, final=True)
            return
        p.editor.begin_stroke(self.kind)
        self._preview = _StrokePreview(view, p.overlay)
        self._dab(view, index_zyx)

    def move(self, view, lps, index_zyx, event) -> None:
        self._hover[id(view)] = lps
        if self.kind != "fill" and self.panel.editor is not None and self.panel.editor._stroke is not None:
            self._dab(view, index_zyx)

    def release(self, view, lps, index_zyx, event) -> None:
        ed = self.panel.editor
        if ed is not None and ed._stroke is not None:
            ed.end_stroke()
            self.panel.edited(view, final=True)

    def hover(self, view, lps, index_zyx, event) -> None:
        self._hover[id(view)] = lps
        view.request_redraw()

    def _dab(self, view, index_zyx) -> None:
        p = self.panel
        pv = getattr(self, "_preview", None)
        if pv is not None and not pv.current():
            if pv.view is view and pv.k != view.model.slice_index(view.plane) and p.editor._stroke is not None:
                # the slice changed under the drag (wheel, arrow key): what was painted on the
                # old slice is one undo step, the drag goes on as a new stroke on this slice
                p.editor.end_stroke()
                p.edited(view, final=True)
                p.editor.begin_stroke(self.kind)
            self._preview = _StrokePreview(view, p.overlay)
        value = 0 if self.kind == "eraser" else p.value()
        kw = {"mode": p.mode(), "plane": p.plane_axis(view)}
        if self.kind == "brush":
            kw["hu_range"] = p.hu_range()
        if p.editor.stroke_to(index_zyx, p.radius(), value, **kw):
            pv = getattr(self, "_preview", None)
            if pv is not None and pv.ok and kw["mode"] == "disc2d" and p.editor.changed_bbox is not None:
                pv.update(p.editor.changed_bbox)
            else:
                p.edited(view, final=False)

    # ---------------------------------------------------------------- brush outline
    def draw(self, view) -> None:
        lps = self._hover.get(id(view))
        if lps is None or self.kind == "fill":
            return
        if id(view) not in self._circles:
            src = vtk.vtkRegularPolygonSource()
            src.SetNumberOfSides(48)
            src.GeneratePolygonOff()
            mapper = vtk.vtkPolyDataMapper()
            mapper.SetInputConnection(src.GetOutputPort())
            actor = vtk.vtkActor()
            actor.SetMapper(mapper)
            actor.GetProperty().SetColor(1.0, 1.0, 1.0)
            actor.GetProperty().LightingOff()
            view.scene.renderer.AddActor(actor)
            self._circles[id(view)] = (src, actor, view)
        src, actor, _ = self._circles[id(view)]
        x, y, _d = view.lps_to_world(lps)
        src.SetCenter(x, y, 0.6)
        src.SetRadius(self.panel.radius())
        actor.GetProperty().SetColor(*((1.0, 0.6, 0.6) if self.kind == "eraser" else (1.0, 1.0, 1.0)))

    def deactivate(self, view) -> None:
        """The tool was replaced or cleared (Esc), perhaps in the middle of a drag: a stroke
        still open ends as a mouse release would end it (one undo step, every view redrawn)."""
        ed = self.panel.editor
        if ed is not None and ed._stroke is not None:
            ed.end_stroke()
            self.panel.edited(view, final=True)
        item = self._circles.pop(id(view), None)
        if item is not None:
            view.scene.renderer.RemoveActor(item[1])
        self._hover.pop(id(view), None)


class EditPanel(QWidget):
    """Manual tools. ``views`` maps plane -> :class:`SliceView`; ``ai_panel``/``review_panel``
    are the main window's (optional). Emits ``mask_changed()`` after each edit step and
    ``mask_saved(dict)`` with :func:`save_edited_mask`'s result."""

    mask_changed = Signal()
    mask_saved = Signal(object)

    def __init__(self, model: ViewerModel, views: dict, ai_panel=None, review_panel=None, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.views = views
        self.ai_panel = ai_panel
        self.review_panel = review_panel
        self.editor: LabelEditor | None = None
        self.overlay: LabelOverlay | None = None
        self.ai_labels: np.ndarray | None = None  # the AI mask the edit started from (never written)
        self.source = ""  # finding prefix (model id) of the AI mask, "" for a manual map
        self._hidden_ai = None
        self.tool: EditTool | None = None

        self.buttons = {}
        tools = QHBoxLayout()
        for kind, text in (("brush", "Brush (B)"), ("eraser", "Eraser (E)"), ("fill", "Fill")):
            b = QPushButton(text)
            b.setCheckable(True)
            b.toggled.connect(lambda on, k=kind: self._tool_toggled(k, on))
            tools.addWidget(b)
            self.buttons[kind] = b
        self.label_box = QComboBox()
        self.radius_box = QDoubleSpinBox()
        self.radius_box.setRange(0.5, 100.0)
        self.radius_box.setValue(5.0)
        self.radius_box.setSuffix(" mm")
        self.mode_box = QComboBox()
        self.mode_box.addItem("2-D disc", "disc2d")
        self.mode_box.addItem("3-D sphere", "sphere3d")
        self.threshold = QCheckBox("Only HU")
        self.hu_low = QDoubleSpinBox()
        self.hu_high = QDoubleSpinBox()
        for box, v in ((self.hu_low, -100.0), (self.hu_high, 300.0)):
            box.setRange(-3000, 30000)
            box.setValue(v)
            box.setSuffix(" HU")
        self.islands = QSpinBox()
        self.islands.setRange(1, 10_000_000)
        self.islands.setValue(100)
        self.islands.setSuffix(" voxels")
        self.islands_button = QPushButton("Remove islands")
        self.interp_button = QPushButton("Fill between slices")
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.save_button = QPushButton("Save edit")
        self.close_button = QPushButton("Close edit")
        self.close_button.setToolTip("Stop editing and show the AI mask again (unsaved changes are dropped)")
        self.status = QLabel("No mask being edited")
        self.status.setWordWrap(True)

        grid = QGridLayout()
        grid.addWidget(QLabel("Label"), 0, 0)
        grid.addWidget(self.label_box, 0, 1, 1, 2)
        grid.addWidget(QLabel("Radius"), 1, 0)
        grid.addWidget(self.radius_box, 1, 1)
        grid.addWidget(self.mode_box, 1, 2)
        grid.addWidget(self.threshold, 2, 0)
        grid.addWidget(self.hu_low, 2, 1)
        grid.addWidget(self.hu_high, 2, 2)
        grid.addWidget(self.islands_button, 3, 0)
        grid.addWidget(self.islands, 3, 1, 1, 2)
        undo = QHBoxLayout()
        for b in (self.interp_button, self.undo_button, self.redo_button):
            undo.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addLayout(tools)
        lay.addLayout(grid)
        lay.addLayout(undo)
        save = QHBoxLayout()
        save.addWidget(self.save_button)
        save.addWidget(self.close_button)
        lay.addLayout(save)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.islands_button.clicked.connect(self.remove_islands)
        self.interp_button.clicked.connect(self.interpolate)
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.save_button.clicked.connect(self.save)
        self.close_button.clicked.connect(self.stop_editing)
        model.volume_changed.connect(self._volume_changed)
        if ai_panel is not None and hasattr(ai_panel, "result_ready"):
            ai_panel.result_ready.connect(self._new_ai_result)
        for v in views.values():
            v.tool_changed.connect(self._view_tool_changed)
        self._update_state()

    # ------------------------------------------------------------------ parameters
    def radius(self) -> float:
        return float(self.radius_box.value())

    def mode(self) -> str:
        return self.mode_box.currentData()

    def value(self) -> int:
        v = self.label_box.currentData()
        return int(v) if v is not None else 1

    def hu_range(self):
        return (self.hu_low.value(), self.hu_high.value()) if self.threshold.isChecked() else None

    def plane_axis(self, view) -> int:
        """numpy axis (of the (z, y, x) arrays) normal to ``view``'s plane."""
        return 2 - self.model.mappings[view.plane].normal_axis

    # ------------------------------------------------------------------ editing session
    def start_editing(self) -> LabelEditor:
        """Open an editor on a copy of the AI mask (or a new empty map); returns it."""
        vol = self.model.volume
        if vol is None:
            raise RuntimeError("open a study before editing")
        if self.editor is not None:
            return self.editor
        res = getattr(self.ai_panel, "result", None)
        if res is not None and res.labels.shape == vol.array.shape:
            self.ai_labels = res.labels
            colors = {s.index: tuple(s.color) for s in res.stats}
            names = {s.index: s.name for s in res.stats}
            run = getattr(self.ai_panel, "run_result", None)
            self.source = next(iter(run.segmentations)) if run is not None and run.segmentations else ""
            labels = res.labels.astype(np.uint8)
        else:
            self.ai_labels = None
            colors, names, self.source = {1: _DEFAULT_COLORS[0]}, {1: "manual"}, ""
            labels = np.zeros(vol.array.shape, np.uint8)
        for i in range(1, 11):  # paintable values beyond the AI's get distinct colours
            colors.setdefault(i, _DEFAULT_COLORS[(i - 1) % len(_DEFAULT_COLORS)])
        self.editor = LabelEditor(labels, vol.spacing[::-1], vol.array, copy=False)  # ``labels`` is already a copy
        opacity = self.ai_panel.overlay.opacity if getattr(self.ai_panel, "overlay", None) is not None else 0.4
        self.overlay = LabelOverlay(self.editor.labels, colors, names, opacity=opacity, editor=self.editor)
        self._hidden_ai = self.model.overlays.get(AI_OVERLAY)
        if self._hidden_ai is not None:
            self.model.overlays.pop(AI_OVERLAY)
        self.model.set_overlay(EDIT_OVERLAY, self.overlay)
        self.label_box.blockSignals(True)
        self.label_box.clear()
        for i in sorted(colors):
            self.label_box.addItem(f"{i} {names.get(i, '')}".strip(), i)
        self.label_box.blockSignals(False)
        self._update_state()
        return self.editor

    def stop_editing(self) -> None:
        """Close the editor without saving; the AI overlay comes back unchanged."""
        for v in self.views.values():
            if isinstance(v.tool, EditTool):
                v.set_tool(None)
        self.editor = None
        self.overlay = None
        self.model.remove_overlay(EDIT_OVERLAY)
        if self._hidden_ai is not None and self.model.volume is not None:
            self.model.set_overlay(AI_OVERLAY, self._hidden_ai)
        self._hidden_ai = None
        self._update_state()

    def _new_ai_result(self, _run) -> None:
        """A new AI run replaces the mask being edited: the editor (on the old copy) is closed."""
        if self.editor is None:
            return
        unsaved = self.editor.can_undo
        self._hidden_ai = None  # the AI panel has already shown the new result
        self.stop_editing()
        if unsaved:
            self.status.setText("A new AI result replaced the mask: the unsaved edit of the previous one was closed")

    def _volume_changed(self, _vol) -> None:
        self.editor = None
        self.overlay = None
        self._hidden_ai = None
        self.set_tool(None)
        self._update_state()

    # ------------------------------------------------------------------ tools
    def set_tool(self, kind: str | None) -> None:
        """Activate ``"brush"``, ``"eraser"``, ``"fill"`` in every MPR view, or ``None`` (crosshair)."""
        if kind is not None and self.model.volume is not None and self.editor is None:
            self.start_editing()
        self.tool = EditTool(self, kind) if kind else None
        for v in self.views.values():
            v.set_tool(self.tool)
        for k, b in self.buttons.items():
            b.blockSignals(True)
            b.setChecked(k == kind)
            b.blockSignals(False)

    def _tool_toggled(self, kind: str, on: bool) -> None:
        self.set_tool(kind if on else None)

    def _view_tool_changed(self, tool) -> None:
        if tool is None and self.tool is not None:  # Esc in one view: back to the crosshair everywhere
            self.set_tool(None)

    def edited(self, view=None, final: bool = True) -> None:
        """Redraw after an edit: only ``view`` during a stroke, every view at its end."""
        if view is not None and not final:
            view.refresh()
        else:
            self.model.overlays_changed.emit()
            self.mask_changed.emit()
        self._update_state()

    def remove_islands(self) -> int:
        ed = self.editor or (self.start_editing() if self.model.volume is not None else None)
        if ed is None:
            return 0
        n = ed.remove_islands(self.islands.value(), label=self.value())
        self.edited()
        self.status.setText(f"Removed {n} voxels in islands under {self.islands.value()} voxels. " + self._memory_text())
        return n

    def interpolate(self) -> int:
        ed = self.editor or (self.start_editing() if self.model.volume is not None else None)
        if ed is None:
            return 0
        plane = next((v.plane for v in self.views.values() if v.hasFocus()), "axial")
        n = ed.interpolate(self.value(), plane=2 - self.model.mappings[plane].normal_axis)
        self.edited()
        self.status.setText(f"Filled {n} voxels between {plane} slices. " + self._memory_text())
        return n

    def undo(self) -> bool:
        ok = self.editor is not None and self.editor.undo()
        if ok:
            self.edited()
        return ok

    def redo(self) -> bool:
        ok = self.editor is not None and self.editor.redo()
        if ok:
            self.edited()
        return ok

    def change_radius(self, factor: float) -> None:
        self.radius_box.setValue(self.radius() * factor)
        for v in self.views.values():
            if v.tool is not None:
                v.request_redraw()

    # ------------------------------------------------------------------ save
    def save(self) -> dict | None:
        """Save the edited mask as a new version (AI mask kept); records the decision "edit"."""
        from radreview.review.findings import study_key

        if self.editor is None or self.model.volume is None:
            self.status.setText("Nothing to save: paint or erase first")
            return None
        rp = self.review_panel
        store = getattr(rp, "store", None)
        if store is None:
            self.status.setText("No review database: " + getattr(rp, "store_error", "not available"))
            return None
        reviewer = rp.reviewer.text().strip() if rp is not None else ""
        vol = self.model.volume
        ai = self.ai_labels if self.ai_labels is not None else np.zeros(vol.array.shape, np.uint8)
        value = self.value()
        name = self.overlay.names.get(value, f"label {value}")
        finding = f"{self.source}:{name}" if self.source else f"manual:{name}"
        try:
            res = save_edited_mask(store, vol, study_key(vol), finding, ai, self.editor.labels, reviewer, label_value=value)
        except ValueError as exc:
            self.status.setText(str(exc))
            return None
        session = getattr(rp, "session", None)
        if session is not None and finding in session.findings:
            if session.decisions.get(finding, {}).get("decision") != "edit":
                session.decide(finding, "edit", reviewer, f"mask edited: version {res['version']}, Dice vs AI {res['dice_vs_ai']:.3f}")
            if hasattr(rp, "_refresh"):
                rp._refresh()
        self.status.setText(f"Saved {finding} version {res['version']} (Dice vs AI {res['dice_vs_ai']:.3f}, "
                            f"{res['voxels_changed']} voxels changed) by {reviewer}")
        self.mask_saved.emit(res)
        return res

    # ------------------------------------------------------------------ keys
    def handle_key(self, key: int, modifiers) -> bool:
        """B, E, [, ], Ctrl+Z, Ctrl+Shift+Z; True if the key was used."""
        ctrl = bool(modifiers & Qt.ControlModifier)
        shift = bool(modifiers & Qt.ShiftModifier)
        if self.model.volume is None:
            return False
        if key == Qt.Key_Z and ctrl:
            (self.redo if shift else self.undo)()
            return True
        if ctrl or modifiers & Qt.AltModifier:
            return False
        if key == Qt.Key_B:
            self.set_tool("brush")
        elif key == Qt.Key_E:
            self.set_tool("eraser")
        elif key == Qt.Key_BracketLeft:
            self.change_radius(1 / 1.25)
        elif key == Qt.Key_BracketRight:
            self.change_radius(1.25)
        else:
            return False
        return True

    def _memory_text(self) -> str:
        ed = self.editor
        if ed is None:
            return ""
        return f"Undo: {ed.undo_steps} step(s), {ed.undo_bytes / 1e6:.2f} MB"

    def _update_state(self) -> None:
        on = self.editor is not None
        self.undo_button.setEnabled(on and self.editor.can_undo)
        self.redo_button.setEnabled(on and self.editor.can_redo)
        self.save_button.setEnabled(on)
        self.close_button.setEnabled(on)
        if on:
            self.status.setText(("Editing a copy of the AI mask. " if self.ai_labels is not None else "Editing a new label map. ")
                                + self._memory_text())
        else:
            self.status.setText("No mask being edited")


class KeyFilter(QObject):
    """Event filter for the main window: the editor's keys reach the panel even when a QAction
    shortcut would not fire (no window activation under a bare X server)."""

    def __init__(self, panel: EditPanel) -> None:
        super().__init__(panel)
        self.panel = panel

    def eventFilter(self, obj, ev):  # noqa: N802 - Qt naming
        if ev.type() == QEvent.KeyPress and self.panel.handle_key(ev.key(), ev.modifiers()):
            return True
        return False

