"""The AI panel driven through its widgets: run, findings table, centroid jump, overlay, cancel."""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import Qt, QTimer

from radreview.viewer._qt.ai_panel import OVERLAY_NAME


def test_run_ai_shows_findings_and_keeps_gui_responsive(window, qtbot):
    panel = window.ai_panel
    assert panel.model_box.count() >= 1
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()
    with qtbot.waitSignal(panel.result_ready, timeout=120000) as blocker:
        qtbot.mouseClick(panel.run_button, Qt.LeftButton)
        assert not panel.run_button.isEnabled() and panel.cancel_button.isEnabled()
    run_s = time.perf_counter() - t0
    timer.stop()
    run = blocker.args[0]
    assert list(run.segmentations) == ["ct-organs-2p5d"]  # abdominal CT: no nodule model
    result = run.segmentations["ct-organs-2p5d"]
    # the event loop kept turning while the model ran on the worker thread
    gaps = np.diff(ticks)
    assert len(ticks) > 10 and gaps.max() < run_s / 4
    assert panel.table.rowCount() == len(result.stats) == 6
    names = [panel.table.item(r, 1).text() for r in range(panel.table.rowCount())]
    assert names == ["body", "lungs", "liver", "spleen", "kidneys", "bone"]
    assert OVERLAY_NAME in window.model.overlays
    assert panel.run_button.isEnabled() and not panel.progress.isVisible()


def test_row_click_jumps_to_centroid_and_toggles(window, qtbot):
    panel = window.ai_panel
    with qtbot.waitSignal(panel.result_ready, timeout=120000):
        panel.run()
    liver_row = [panel.table.item(r, 1).text() for r in range(panel.table.rowCount())].index("liver")
    rect = panel.table.visualItemRect(panel.table.item(liver_row, 2))
    qtbot.mouseClick(panel.table.viewport(), Qt.LeftButton, pos=rect.center())
    c = panel.result.stats[liver_row].centroid_lps
    assert np.allclose(window.model.cursor, window.model.volume.index_to_lps(
        np.clip(window.model.volume.lps_to_index(c), 0, None)), atol=1e-6)
    lab = panel.result.labels
    k = window.model.slice_index("axial")
    assert (lab[k] == 3).any()  # the axial view now shows a liver slice
    # hide the liver: its colour leaves the axial view
    item = panel.table.item(liver_row, 0)
    item.setCheckState(Qt.Unchecked)
    assert panel.overlay.visible[3] is False
    panel.outline.setChecked(True)
    assert panel.overlay.mode == "outline"
    panel.opacity.setValue(80)
    assert panel.overlay.opacity == 0.8


def test_cancel_leaves_no_result(window, qtbot):
    panel = window.ai_panel
    with qtbot.waitSignal(panel.run_cancelled, timeout=120000):
        panel.run()
        qtbot.waitUntil(lambda: panel.progress.value() > 0 or panel.eta.text().startswith("infer"), timeout=60000)
        qtbot.mouseClick(panel.cancel_button, Qt.LeftButton)
    assert panel.result is None and OVERLAY_NAME not in window.model.overlays
    assert panel.table.rowCount() == 0 and panel.run_button.isEnabled()
    assert "Cancelled" in panel.eta.text()
    # the app keeps working: a new run completes
    with qtbot.waitSignal(panel.result_ready, timeout=120000):
        panel.run()


def test_mr_study_is_refused_with_message(qtbot, mr_window):
    win = mr_window
    with qtbot.waitSignal(win.ai_panel.run_failed, timeout=60000) as blocker:
        win.ai_panel.run()
    assert "accept CT" in blocker.args[0] and "MR" in blocker.args[0]
    assert not win.model.overlays


def test_label_colour_change_reaches_the_views(window, qtbot):
    from radreview.viewer._qt.views import grab_pixels

    panel = window.ai_panel
    panel.opacity.setValue(100)
    with qtbot.waitSignal(panel.result_ready, timeout=120000):
        panel.run()
    liver = next(s for s in panel.result.stats if s.name == "liver")
    window.model.set_cursor(liver.centroid_lps)
    panel.set_label_color(liver.index, (0, 0, 255))
    qtbot.wait(50)
    px = grab_pixels(window.views["axial"]).reshape(-1, 3)
    assert ((px[:, 0] == 0) & (px[:, 1] == 0) & (px[:, 2] == 255)).sum() > 500  # liver now drawn pure blue
    row = [panel.table.item(r, 1).text() for r in range(panel.table.rowCount())].index("liver")
    assert panel.table.item(row, 1).background().color().getRgb()[:3] == (0, 0, 255)
