"""Compare panel and the "ai|manual" layout: AI (or edited) mask against a reference.

Thin Qt over the headless comparison (:mod:`review.compare`: ``match_labels``,
``compare_labels``, ``disagreement_map``), the reference reader (:mod:`studies.labels`) and
the SEG writer (:mod:`studies.seg`). The panel imports a reference label map (NIfTI / NRRD /
MHA, DICOM SEG, RTSTRUCT), fills a metrics table per matched label (a row click jumps to the
slice with the largest disagreement of that label), toggles a single-view disagreement map
(agreement / AI only / reference only, with a legend) or both outlines together (AI solid,
reference dashed), and exports the AI or edited mask as DICOM SEG.

:class:`CompareLayout` adds the layout "ai|manual" to the main window: two columns of linked
views (same slice, crosshair, window and — through one shared VTK camera per plane — zoom and
pan), the AI mask on the left and the reference on the right.

:func:`install_edit` and :func:`install_compare` build the Edit and Compare panels for their registered docks (viewer/_qt/docks.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk
from PySide6.QtCore import Signal
from PySide6.QtGui import QAction, QColor
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QTableWidget,
    QTableWidgetItem, QVBoxLayout, QWidget,
)

from ..compare_overlay import DisagreementOverlay, OutlinePairOverlay
from ..model import ViewerModel
from ..overlay import LabelOverlay
from .edit_panel import EDIT_OVERLAY, EditPanel, KeyFilter
from .edit_panel import SHORTCUTS as EDIT_SHORTCUTS
from .views import SliceView

__all__ = ["ComparePanel", "CompareLayout", "install_edit", "install_compare", "TOTALSEGMENTATOR_TOTAL", "COLUMNS"]

COMPARE_LAYOUT = "ai|manual"
REF_OVERLAY = "reference"
DIS_OVERLAY = "disagreement"
PAIR_OVERLAY = "outlines"
AI_OVERLAY = "ai-segmentation"

#: TotalSegmentator v2 "total" class map, the values used in radreview's data (README of the
#: shared data; https://github.com/wasserth/TotalSegmentator#class-details). Used for a label
#: file whose name says "totalsegmentator" and that carries no names of its own.
TOTALSEGMENTATOR_TOTAL = {
    1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver", 6: "stomach", 7: "pancreas",
    8: "adrenal_gland_right", 9: "adrenal_gland_left", 10: "lung_upper_lobe_left", 11: "lung_lower_lobe_left",
    12: "lung_upper_lobe_right", 13: "lung_middle_lobe_right", 14: "lung_lower_lobe_right", 15: "esophagus",
    16: "trachea", 17: "thyroid_gland", 18: "small_bowel",
}

#: (header, key in LabelComparison.as_dict(), format)
COLUMNS = [
    ("Label", "name", "{}"), ("Dice", "dice", "{:.3f}"), ("Jaccard", "jaccard", "{:.3f}"),
    ("HD95 mm", "hd95_mm", "{:.1f}"), ("HD mm", "hd_mm", "{:.1f}"), ("ASSD mm", "assd_mm", "{:.2f}"),
    ("MSSD mm", "mssd_mm", "{:.2f}"), ("AI mL", "volume_test_ml", "{:.1f}"), ("Ref mL", "volume_reference_ml", "{:.1f}"),
    ("Diff mL", "volume_diff_ml", "{:+.1f}"), ("Diff %", "volume_diff_pct", "{:+.1f}"),
    ("Sensitivity", "sensitivity", "{:.3f}"), ("Precision", "precision", "{:.3f}"), ("Lesions ref/det/miss/AI-only", "lesions", "{}"),
]

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def _fmt(key: str, fmt: str, value) -> str:
    if value is None:
        return "—"
    if key == "lesions":
        v = value
        return f"{v.get('reference', 0)}/{v.get('detected', 0)}/{v.get('missed', 0)}/{v.get('test_only', 0)}"
    if isinstance(value, float) and not np.isfinite(value):
        return "inf" if value > 0 else "—"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


class _TextPainter:
    """Painter (SliceView.add_painter) drawing fixed lines of coloured text in a view corner."""

    def __init__(self, lines: list[tuple[str, tuple[int, int, int]]], corner: str = "top-center", size: int = 14) -> None:
        self.lines = lines
        self.corner = corner
        self.size = size
        self.enabled = True
        self._actors: dict[int, list] = {}

    def draw(self, view) -> None:
        key = id(view)
        if key not in self._actors:
            acts = []
            for i, (text, rgb) in enumerate(self.lines):
                t = vtk.vtkTextActor()
                t.SetInput(text)
                tp = t.GetTextProperty()
                tp.SetFontSize(self.size)
                tp.SetBold(True)
                tp.SetColor(*(c / 255 for c in rgb))
                tp.SetBackgroundColor(0, 0, 0)
                tp.SetBackgroundOpacity(0.6)
                coord = t.GetPositionCoordinate()
                coord.SetCoordinateSystemToNormalizedViewport()
                if self.corner == "top-center":
                    tp.SetJustificationToCentered()
                    tp.SetVerticalJustificationToTop()
                    coord.SetValue(0.5, 0.955 - 0.05 * i)
                else:  # legend in the upper-left, under the patient text (air in most axial views)
                    tp.SetBackgroundOpacity(0.85)
                    tp.SetJustificationToLeft()
                    tp.SetVerticalJustificationToTop()
                    coord.SetValue(0.01, 0.90 - 0.04 * i)
                view.scene.renderer.AddViewProp(t)
                acts.append(t)
            self._actors[key] = acts
        for t in self._actors[key]:
            t.SetVisibility(self.enabled)


class CompareLayout:
    """The "ai|manual" layout: a second :class:`ViewerModel` for the reference, linked both ways.

    ``views`` are the main window's views (left column, AI); ``ref_views`` the reference's
    (right column). Cursor and window are synchronised with a guard flag; each plane's two
    renderers share one ``vtkCamera``, and rendering one view renders its partner, so zoom and
    pan follow too.
    """

    PLANES = ("axial", "coronal")

    def __init__(self, model: ViewerModel, views: dict) -> None:
        self.model = model
        self.views = views
        self.ref_model = ViewerModel()
        self.ref_views = {p: SliceView(self.ref_model, p) for p in self.PLANES}
        for v in self.ref_views.values():
            v.setVisible(False)
        self._sync = False
        self._rendering = False
        self.titles = {"ai": _TextPainter([("AI", (255, 255, 255))]), "ref": _TextPainter([("Reference", (255, 255, 255))])}
        model.volume_changed.connect(self._volume)
        model.cursor_changed.connect(lambda lps: self._copy(self.ref_model.set_cursor, lps))
        self.ref_model.cursor_changed.connect(lambda lps: self._copy(self.model.set_cursor, lps))
        model.window_changed.connect(lambda c, w: self._copy(self.ref_model.set_window, c, w, self.model.preset))
        self.ref_model.window_changed.connect(lambda c, w: self._copy(self.model.set_window, c, w, self.ref_model.preset))
        for p in self.PLANES:
            a, b = views[p], self.ref_views[p]
            b.scene.renderer.SetActiveCamera(a.scene.renderer.GetActiveCamera())
            a.add_painter(_Partner(self, b))
            b.add_painter(_Partner(self, a))
        views["axial"].add_painter(self.titles["ai"])
        self.ref_views["axial"].add_painter(self.titles["ref"])
        self.titles["ai"].enabled = False  # only shown in the ai|manual layout
        if model.volume is not None:
            self._volume(model.volume)

    def _copy(self, fn, *args) -> None:
        if self._sync or self.model.volume is None or self.ref_model.volume is None:
            return
        self._sync = True
        try:
            fn(*args)
        finally:
            self._sync = False

    def _volume(self, vol) -> None:
        self._sync = True
        try:
            self.ref_model.set_volume(vol)
            self.ref_model.set_window(*self.model.window, self.model.preset)
            self.ref_model.set_cursor(self.model.cursor)
        finally:
            self._sync = False

    def set_title(self, side: str, text: str) -> None:
        painter = self.titles[side]
        painter.lines = [(text, (255, 255, 255))]
        for acts in painter._actors.values():
            for t in acts:
                t.SetInput(text)

    def place(self, grid) -> None:
        """Put AI views (left) and reference views (right) into the main window's grid."""
        for r, p in enumerate(self.PLANES):
            for c, v in enumerate((self.views[p], self.ref_views[p])):
                grid.addWidget(v, r, c)
                v.setVisible(True)
            grid.setRowStretch(r, 3 if p == "axial" else 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        self.titles["ai"].enabled = True

    def hidden(self) -> None:
        self.titles["ai"].enabled = False


class _Partner:
    """Painter hook: rendering one view of a linked pair also renders the other (shared
    camera). It acts after an explicit render (``after_render``), never inside a paint event
    (a Qt repaint of another widget from there is refused as recursive)."""

    def __init__(self, layout: CompareLayout, other: SliceView) -> None:
        self.layout = layout
        self.other = other

    def draw(self, view) -> None:
        pass

    def after_render(self, view) -> None:
        if self.layout._rendering or not self.other.isVisible() or not view.isVisible():
            return
        self.layout._rendering = True
        try:
            self.other.render_now()
        finally:
            self.layout._rendering = False


def _load_reference(path: str, volume, names=None):
    """``studies.labels.load_reference`` (array, names, warnings); TotalSegmentator names added."""
    from radreview.studies.labels import load_reference

    ref = load_reference(path, volume, names=names)
    arr, rnames, warnings = np.asarray(ref.array), dict(ref.names), list(ref.warnings)
    generic = all(str(n).strip() in ("", str(v), f"label {v}", f"Label {v}") for v, n in rnames.items())
    if generic and "totalsegmentator" in Path(path).name.lower():
        rnames = {int(v): TOTALSEGMENTATOR_TOTAL.get(int(v), f"label {v}") for v in np.unique(arr) if v}
        warnings.append("names of values 1-18 from the TotalSegmentator 'total' class map (the file has none); "
                        "other values as 'label N'")
    return arr, rnames, warnings


class ComparePanel(QWidget):
    """Emits ``reference_loaded(dict names)``, ``compared(list[dict])``, ``failed(str)``,
    ``seg_exported(str path)``."""

    reference_loaded = Signal(object)
    compared = Signal(object)
    failed = Signal(str)
    seg_exported = Signal(str)

    def __init__(self, model: ViewerModel, ai_panel=None, edit_panel: EditPanel | None = None,
                 layout: CompareLayout | None = None, window=None, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.ai_panel = ai_panel
        self.edit_panel = edit_panel
        self.layout_ = layout
        self.window = window
        self.reference: np.ndarray | None = None
        self.ref_names: dict[int, str] = {}
        self.ref_path = ""
        self.pairs: list = []
        self.rows: list[dict] = []
        self.dmap: np.ndarray | None = None
        self.legend = _TextPainter(DisagreementOverlay.legend(), corner="legend", size=13)
        self.legend.enabled = False
        self.outline_legend = _TextPainter([("AI: solid outline", (255, 255, 255)),
                                            ("reference: dashed outline", (255, 255, 255))], corner="legend", size=13)
        self.outline_legend.enabled = False
        if layout is not None:
            layout.views["axial"].add_painter(self.legend)
            layout.views["axial"].add_painter(self.outline_legend)

        self.import_button = QPushButton("Import reference…")
        self.export_button = QPushButton("Export SEG…")
        self.export_what = QComboBox()
        self.export_what.addItem("edited mask (else AI)", "edited")
        self.export_what.addItem("AI mask", "ai")
        self.show_dis = QCheckBox("Disagreement map")
        self.show_pair = QCheckBox("Both outlines (AI solid, reference dashed)")
        self.side_by_side = QPushButton("AI | manual layout")
        self.info = QLabel("No reference")
        self.info.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c[0] for c in COLUMNS])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)

        top = QHBoxLayout()
        top.addWidget(self.import_button)
        top.addWidget(self.side_by_side)
        exp = QHBoxLayout()
        exp.addWidget(self.export_button)
        exp.addWidget(self.export_what, 1)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.show_dis)
        lay.addWidget(self.show_pair)
        lay.addWidget(self.info)
        lay.addWidget(self.table, 1)
        lay.addLayout(exp)

        self.import_button.clicked.connect(self._ask_reference)
        self.export_button.clicked.connect(self._ask_export)
        self.side_by_side.clicked.connect(lambda: self.window.set_layout(COMPARE_LAYOUT) if self.window else None)
        self.show_dis.toggled.connect(self.set_disagreement_visible)
        self.show_pair.toggled.connect(self.set_outlines_visible)
        self.table.cellClicked.connect(self._row_clicked)
        model.volume_changed.connect(self._volume_changed)
        if edit_panel is not None:
            edit_panel.mask_changed.connect(self._mask_changed)
            edit_panel.mask_saved.connect(lambda _r: self.recompare())

    # ------------------------------------------------------------------ test (AI / edited) side
    def test_labels(self) -> tuple[np.ndarray | None, dict[int, str], dict[int, tuple]]:
        """The mask compared: the edited copy while editing, else the AI result."""
        ed = self.edit_panel.editor if self.edit_panel is not None else None
        res = getattr(self.ai_panel, "result", None)
        names = {s.index: s.name for s in res.stats} if res is not None else {}
        colors = {s.index: tuple(s.color) for s in res.stats} if res is not None else {}
        if ed is not None:
            ov = self.edit_panel.overlay
            present = {int(v) for v in np.unique(ed.labels) if v}
            names = {v: ov.names.get(v, names.get(v, f"label {v}")) for v in present | set(names)}
            colors = {v: tuple(ov.colors.get(v, (255, 0, 0))) for v in names}
            return ed.labels, names, colors
        if res is not None:
            return res.labels, names, colors
        return None, {}, {}

    # ------------------------------------------------------------------ reference
    def show_dock(self, *_args) -> None:
        """Show the Compare dock (hidden until there is something to compare)."""
        if getattr(self, "dock", None) is not None:
            self.dock.setVisible(True)

    def layout_chosen(self, name: str) -> None:
        if name == COMPARE_LAYOUT:
            self.show_dock()

    def _ask_reference(self) -> None:
        self.show_dock()
        path, _ = QFileDialog.getOpenFileName(
            self, "Import reference segmentation", "",
            "Label maps and DICOM (*.nii *.nii.gz *.nrrd *.mha *.mhd *.dcm);;All files (*)")
        if path:
            self.import_reference(path)

    def import_reference(self, path: str, names=None) -> bool:
        """Load a reference on the current volume's grid, show it, compare; False on failure."""
        vol = self.model.volume
        if vol is None:
            self.info.setText("Open a study first")
            return False
        try:
            arr, rnames, warnings = _load_reference(str(path), vol, names)
        except (ValueError, OSError, RuntimeError, ImportError) as exc:
            msg = f"{Path(path).name}: {exc}"
            self.info.setText(msg)
            self.failed.emit(msg)
            return False
        self.reference, self.ref_names, self.ref_path = arr, rnames, str(path)
        self._warnings = warnings
        self._show_reference()
        self.reference_loaded.emit(rnames)
        self.recompare()
        return True

    def _ref_colors(self) -> dict[int, tuple]:
        """Reference colours: the AI colour of the matched label, else a palette colour."""
        _t, _n, tcolors = self.test_labels()
        colors = {}
        for _name, tv, rv in self.pairs:
            tvs = tv if isinstance(tv, tuple) else (tv,)
            for r in (rv if isinstance(rv, tuple) else (rv,)):
                colors[int(r)] = tcolors.get(int(tvs[0]), _PALETTE[int(r) % len(_PALETTE)])
        for v in self.ref_names:
            colors.setdefault(int(v), _PALETTE[int(v) % len(_PALETTE)])
        return colors

    def matched_reference_values(self) -> set[int]:
        return {int(v) for p in self.pairs for v in (p[2] if isinstance(p[2], tuple) else (p[2],))}

    def _show_reference(self) -> None:
        if self.reference is None or self.layout_ is None:
            return
        ref_model = self.layout_.ref_model
        if ref_model.volume is None or ref_model.volume.array.shape != self.reference.shape:
            return
        matched = self.matched_reference_values()
        colors = self._ref_colors()
        # only the labels matched to the AI's are drawn (a TotalSegmentator map has 100+ structures);
        # before a comparison, all of them
        visible = {v: (not matched or v in matched) for v in colors}
        opacity = self.ai_panel.overlay.opacity if getattr(self.ai_panel, "overlay", None) is not None else 0.4
        ov = LabelOverlay(self.reference, colors, dict(self.ref_names), opacity=opacity, visible=visible)
        ref_model.set_overlay(REF_OVERLAY, ov)
        self.layout_.set_title("ref", f"Reference: {Path(self.ref_path).name}")

    # ------------------------------------------------------------------ comparison
    def recompare(self) -> list[dict]:
        """Match labels and fill the metrics table; returns the rows (``as_dict()`` each)."""
        from radreview.review.compare import compare_labels, match_labels

        test, tnames, _c = self.test_labels()
        vol = self.model.volume
        if self.reference is None or vol is None:
            return []
        if test is None:
            self.info.setText(f"Reference {Path(self.ref_path).name}: {len(self.ref_names)} label(s). Run AI to compare.")
            self.rows = []
            self.table.setRowCount(0)
            return []
        self.pairs = match_labels(tnames, self.ref_names)
        comps = compare_labels(test, self.reference, tuple(vol.spacing[::-1]), self.pairs, volume=vol)
        self.rows = [c.as_dict() for c in comps]
        self.table.setRowCount(len(self.rows))
        for r, row in enumerate(self.rows):
            for c, (_h, key, fmt) in enumerate(COLUMNS):
                it = QTableWidgetItem(_fmt(key, fmt, row.get(key)))
                if key == "dice" and row.get("dice") is not None:
                    d = float(row["dice"])
                    it.setBackground(QColor(255, 200, 200) if d < 0.7 else QColor(255, 240, 200) if d < 0.85 else QColor(210, 245, 210))
                self.table.setItem(r, c, it)
        self.table.resizeColumnsToContents()
        unmatched = sorted(set(self.ref_names) - self.matched_reference_values())
        msg = f"Reference {Path(self.ref_path).name}: {len(self.pairs)} matched label(s)"
        if unmatched:
            msg += f"; not in the AI output: {', '.join(self.ref_names[v] for v in unmatched[:8])}" + ("…" if len(unmatched) > 8 else "")
        if getattr(self, "_warnings", None):
            msg += "\n" + "; ".join(self._warnings)
        self.info.setText(msg)
        self._show_reference()
        if self.show_dis.isChecked():
            self.set_disagreement_visible(True)
        if self.show_pair.isChecked():
            self.set_outlines_visible(True)
        self.compared.emit(self.rows)
        return self.rows

    def _mask_changed(self) -> None:
        # the table is recomputed on save or on demand; the maps follow edits immediately
        if self.show_dis.isChecked():
            self.set_disagreement_visible(True)

    def _row_clicked(self, row: int, _col: int = 0) -> None:
        """Jump to the slice with the largest disagreement of that label."""
        if row >= len(self.rows) or self.model.volume is None:
            return
        d = self.rows[row]
        vol = self.model.volume
        if d.get("worst_slice_lps") is not None:
            self.model.set_cursor(np.asarray(d["worst_slice_lps"], float))
        elif d.get("worst_slice") is not None:
            ijk = vol.lps_to_index(self.model.cursor)
            ijk[2] = int(d["worst_slice"])
            self.model.set_cursor(vol.index_to_lps(ijk))

    def _hide_label_overlays(self, hide: bool) -> None:
        """While a comparison map is shown the plain AI/edited fill is hidden (and restored)."""
        stash = self.__dict__.setdefault("_stash", {})
        if hide:
            for name in (AI_OVERLAY, EDIT_OVERLAY):
                if name in self.model.overlays:
                    stash[name] = self.model.overlays.pop(name)
        elif not self.show_dis.isChecked() and not self.show_pair.isChecked():
            editing = self.edit_panel is not None and self.edit_panel.editor is not None
            for name, ov in list(stash.items()):
                if name == AI_OVERLAY and editing:  # the edited copy is shown instead
                    self.edit_panel._hidden_ai = ov
                    continue
                if name == EDIT_OVERLAY and not editing:
                    continue
                if self.model.volume is not None and ov.shape == self.model.volume.array.shape:
                    self.model.overlays[name] = ov
            stash.clear()

    def set_disagreement_visible(self, on: bool) -> None:
        """Single-view disagreement map (axial layout) with its legend."""
        from radreview.review.compare import disagreement_map

        test, _n, _c = self.test_labels()
        if on and (self.reference is None or test is None):
            self.info.setText("Import a reference and run AI first")
            self.show_dis.blockSignals(True)
            self.show_dis.setChecked(False)
            self.show_dis.blockSignals(False)
            return
        if on:
            if not self.pairs:
                self.recompare()
            self.dmap = disagreement_map(test, self.reference, self.pairs)
            self._hide_label_overlays(True)
            self.model.overlays[DIS_OVERLAY] = DisagreementOverlay(self.dmap)
            self.legend.enabled = True
            if self.window is not None and self.window.layout_name not in ("axial", "coronal", "sagittal"):
                self.window.set_layout("axial")
        else:
            self.model.overlays.pop(DIS_OVERLAY, None)
            self.legend.enabled = False
            self._hide_label_overlays(False)
        self.model.overlays_changed.emit()

    def set_outlines_visible(self, on: bool) -> None:
        """AI outlines solid and reference outlines dashed, together in the main views."""
        test, _n, tcolors = self.test_labels()
        if on and (self.reference is None or test is None):
            self.show_pair.blockSignals(True)
            self.show_pair.setChecked(False)
            self.show_pair.blockSignals(False)
            return
        if on:
            self._hide_label_overlays(True)
            if not self.pairs:
                self.recompare()
            tvals = {int(v) for p in self.pairs for v in (p[1] if isinstance(p[1], tuple) else (p[1],))}
            rvals = self.matched_reference_values()
            rcolors = {v: c for v, c in self._ref_colors().items() if v in rvals}
            self.model.overlays[PAIR_OVERLAY] = OutlinePairOverlay(
                test, self.reference, {v: c for v, c in tcolors.items() if v in tvals}, rcolors)
            self.outline_legend.enabled = True
        else:
            self.model.overlays.pop(PAIR_OVERLAY, None)
            self.outline_legend.enabled = False
            self._hide_label_overlays(False)
        self.model.overlays_changed.emit()

    # ------------------------------------------------------------------ export
    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export DICOM SEG", "segmentation.dcm", "DICOM (*.dcm)")
        if path:
            self.export_seg(path, self.export_what.currentData())

    def export_seg(self, path: str, what: str = "edited") -> str | None:
        """Write the edited (``"edited"``, falling back to AI) or AI mask as DICOM SEG; returns the path."""
        from radreview.studies.seg import export_seg

        vol = self.model.volume
        res = getattr(self.ai_panel, "result", None)
        ed = self.edit_panel.editor if self.edit_panel is not None else None
        if what == "edited" and ed is not None:
            labels, names = ed.labels, dict(self.edit_panel.overlay.names)
        elif res is not None:
            labels, names = res.labels, {s.index: s.name for s in res.stats}
        else:
            self.info.setText("Nothing to export: run AI or edit a mask first")
            return None
        present = {int(v) for v in np.unique(labels) if v}
        names = {v: names.get(v, f"label {v}") for v in sorted(present)}
        edited = what == "edited" and ed is not None
        try:  # an edited mask is written as MANUAL segments, the AI's as AUTOMATIC with the algorithm
            out = export_seg(vol, labels, names, path, **({"algorithm": None} if edited else {}))
        except (ValueError, OSError, RuntimeError) as exc:
            msg = f"Export SEG failed: {exc}"
            self.info.setText(msg)
            self.failed.emit(msg)
            return None
        self.info.setText(f"Exported {len(names)} segment(s) to {out}")
        self.seg_exported.emit(str(out))
        return str(out)

    def _volume_changed(self, _vol) -> None:
        self.reference = None
        self.ref_names = {}
        self.pairs = []
        self.rows = []
        self.dmap = None
        self.table.setRowCount(0)
        self.legend.enabled = False
        self.outline_legend.enabled = False
        for b in (self.show_dis, self.show_pair):
            b.blockSignals(True)
            b.setChecked(False)
            b.blockSignals(False)
        self.__dict__.get("_stash", {}).clear()
        self.info.setText("No reference")


def install_edit(win) -> EditPanel:
    """The Edit panel with the "ai|manual" layout's reference views and the editor keys, for the
    registered "edit" dock (viewer/_qt/docks.py)."""
    from . import main_window as mw

    win.compare_layout = CompareLayout(win.model, win.views)
    win.extra_views = list(win.compare_layout.ref_views.values())
    win.extra_layouts = {COMPARE_LAYOUT: win.compare_layout.place}
    win.edit_panel = EditPanel(win.model, win.views, win.ai_panel, win.review_panel)
    win._edit_keys = KeyFilter(win.edit_panel)
    win.installEventFilter(win._edit_keys)
    for v in [*win.views.values(), *win.extra_views]:
        v.installEventFilter(win._edit_keys)
    if win.layout_box.findText(COMPARE_LAYOUT) < 0:
        win.layout_box.addItem(COMPARE_LAYOUT)
    for item in EDIT_SHORTCUTS + [("Layout ai|manual", "AI mask (left) and reference (right), linked")]:
        if item not in mw.SHORTCUTS:
            mw.SHORTCUTS.append(item)
    return win.edit_panel


def install_compare(win) -> ComparePanel:
    """The Compare panel and its Import reference / Export SEG actions, for the registered
    "compare" dock (hidden until there is something to compare: a reference imported, or the
    ai|manual layout chosen)."""
    win.compare_panel = ComparePanel(win.model, win.ai_panel, win.edit_panel, win.compare_layout, win)
    win.compare_panel.reference_loaded.connect(win.compare_panel.show_dock)
    win.layout_box.currentTextChanged.connect(win.compare_panel.layout_chosen)
    tb = win.toolbar
    tb.addSeparator()
    tb.addAction(QAction("Import reference…", win, triggered=win.compare_panel._ask_reference))
    tb.addAction(QAction("Export SEG…", win, triggered=win.compare_panel._ask_export))
    return win.compare_panel
