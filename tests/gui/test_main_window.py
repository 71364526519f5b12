"""pytest-qt tests driving the real widgets: browser, loading, linked views, W/L, layouts."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt

from radreview.viewer.model import window_presets


def test_browser_lists_series_and_loads(window):
    b = window.browser
    assert b.topLevelItemCount() == 1
    study = b.topLevelItem(0)
    assert study.childCount() == 1
    row = study.child(0)
    assert row.text(3) == "CT" and row.text(4) == "20"
    assert "Slice Thickness" in row.text(5)  # the warning is shown, not hidden
    assert window.model.volume.size == (512, 512, 20)
    assert not window.progress.isVisible()


def test_first_image_before_volume(qtbot, ct_series):
    from radreview.viewer._qt.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    events = []
    win.first_image_shown.connect(lambda: events.append(("first", win.model.volume.size)))
    win.volume_loaded.connect(lambda v: events.append(("full", v.size)))
    with qtbot.waitSignal(win.volume_loaded, timeout=60000):
        win.open_path(str(ct_series))
    assert events[0][0] == "first" and events[0][1][2] == 1  # one decoded slice shown first
    assert events[-1] == ("full", (512, 512, 20))


def test_click_moves_crosshair_in_all_views(window, qtbot):
    ax = window.views["axial"]
    pos = ax.widget_pos_of(300, 150)  # image row 300, col 150
    qtbot.mouseClick(ax, Qt.LeftButton, pos=QPoint(*pos))
    m = window.model
    r, c = m.cursor_on_screen("axial")
    assert abs(r - 300) <= 1.5 and abs(c - 150) <= 1.5
    # the other planes now show the slices through that point
    ijk = m.volume.lps_to_index(m.cursor)
    assert m.slice_index("coronal") == int(round(ijk[1]))
    assert m.slice_index("sagittal") == int(round(ijk[0]))
    # and their crosshairs pass through the same LPS point
    cor_r, cor_c = m.cursor_on_screen("coronal")
    assert abs(cor_c - c) < 1e-6  # same L-R column in axial and coronal


def test_drag_in_coronal_changes_axial_slice(window, qtbot):
    cor = window.views["coronal"]
    m = window.model
    start = m.slice_index("axial")
    rows = m.mappings["coronal"].shape[0]
    target_row = 2 if start > 10 else rows - 3  # near the top/bottom = another axial slice
    qtbot.mouseClick(cor, Qt.LeftButton, pos=QPoint(*cor.widget_pos_of(target_row, 256)))
    assert m.slice_index("axial") != start


def test_wheel_and_keys_scroll(window, qtbot):
    ax = window.views["axial"]
    m = window.model
    k0 = m.slice_index("axial")
    ax.setFocus()
    qtbot.keyClick(ax, Qt.Key_Down)
    assert m.slice_index("axial") == k0 - 1
    qtbot.keyClick(ax, Qt.Key_PageUp)
    assert m.slice_index("axial") == min(k0 - 1 + 10, 19)
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    k1 = m.slice_index("axial")
    ev = QWheelEvent(QPointF(100, 100), QPointF(ax.mapToGlobal(QPoint(100, 100))), QPoint(0, 0), QPoint(0, -120),
                     Qt.NoButton, Qt.NoModifier, Qt.NoScrollPhase, False)
    QApplication.sendEvent(ax, ev)
    assert m.slice_index("axial") == k1 - 1
    # ctrl+wheel zooms instead of scrolling
    scale = ax.scene.renderer.GetActiveCamera().GetParallelScale()
    ev = QWheelEvent(QPointF(100, 100), QPointF(ax.mapToGlobal(QPoint(100, 100))), QPoint(0, 0), QPoint(0, 120),
                     Qt.NoButton, Qt.ControlModifier, Qt.NoScrollPhase, False)
    QApplication.sendEvent(ax, ev)
    assert m.slice_index("axial") == k1 - 1
    assert ax.scene.renderer.GetActiveCamera().GetParallelScale() < scale


def test_right_drag_changes_window_level(window, qtbot):
    ax = window.views["axial"]
    m = window.model
    c0, w0 = m.window
    qtbot.mousePress(ax, Qt.RightButton, pos=QPoint(200, 200))
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication
    from PySide6.QtCore import QEvent, QPointF

    ev = QMouseEvent(QEvent.MouseMove, QPointF(260, 180), QPointF(ax.mapToGlobal(QPoint(260, 180))),
                     Qt.NoButton, Qt.RightButton, Qt.NoModifier)
    QApplication.sendEvent(ax, ev)
    qtbot.mouseRelease(ax, Qt.RightButton, pos=QPoint(260, 180))
    c1, w1 = m.window
    assert w1 > w0 and c1 > c0


def test_preset_combo_and_readout(window, qtbot):
    window.preset_box.textActivated.emit("lung")
    assert window.model.window == window_presets()["lung"]
    ax = window.views["axial"]
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication
    from PySide6.QtCore import QEvent, QPointF

    x, y = ax.widget_pos_of(256, 256)
    ev = QMouseEvent(QEvent.MouseMove, QPointF(x, y), QPointF(ax.mapToGlobal(QPoint(x, y))), Qt.NoButton,
                     Qt.NoButton, Qt.NoModifier)
    QApplication.sendEvent(ax, ev)
    text = window.readout.text()
    assert "HU" in text and "LPS" in text


def test_layouts_and_shortcut_sheet(window, qtbot):
    window.set_layout("1x3")
    assert not window.view3d.isVisible() and all(v.isVisible() for v in window.views.values())
    window.set_layout("axial")
    assert window.views["axial"].isVisible() and not window.views["coronal"].isVisible()
    window.set_layout("3d")
    assert window.view3d.isVisible()
    window.set_layout("2x2")
    qtbot.keyClick(window.views["axial"], Qt.Key_2)
    assert window.layout_name == "1x3"
    qtbot.keyClick(window.views["axial"], Qt.Key_F1)
    sheet = window._sheet
    assert sheet.isVisible() and sheet.table.rowCount() >= 8
    sheet.close()


def test_screenshot_and_bad_folder(window, qtbot, tmp_path):
    px = window.save_screenshot(str(tmp_path / "shot.png"))
    assert (tmp_path / "shot.png").stat().st_size > 10000
    assert px.std() > 10
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with qtbot.waitSignal(window.load_failed, timeout=20000) as blocker:
        window.open_path(str(tmp_path / "junk"))
    assert "no image volume" in blocker.args[0]
    assert window.model.volume is not None  # the previous study stays usable


def test_nifti_and_mr_open(mr_window):
    win = mr_window
    assert win.model.preset == "auto"
    assert win.model.volume.info.modality == "MR"
