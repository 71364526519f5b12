"""pytest-qt tests driving the real widgets: browser, loading, linked views, W/L, layouts."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, Qt

from radreview.viewer.model import window_presets


def test_browser_lists_series_and_loads(window):
    b = window.browser
    assert b.topLevelItemCount() == 1
    study = b.topLevelItem(0)
    assert study.childCount() == 1
    row = study.child(0)
    assert row.text(3) == "CT" and row.text(4) == "20"
    assert "Slice Thickness" in row.text(6)  # the warning is shown, not hidden
    assert row.text(5) == ""  # no shadow deployment knows this series
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
    # "<HU> HU   LPS (x, y, z) mm" of the voxel under the mouse: image row 256, col 256 of this slice
    import re

    mt = re.fullmatch(r"(-?\d+) HU   LPS \((-?[\d.]+), (-?[\d.]+), (-?[\d.]+)\) mm", text)
    assert mt, text
    m = window.model
    lps = np.array([float(v) for v in mt.groups()[1:]])
    i, j, k = m.volume.lps_to_index(lps)
    assert abs(i - 256) <= 1.5 and abs(j - 256) <= 1.5 and abs(k - m.slice_index("axial")) < 0.1
    ii, jj, kk = np.rint([i, j, k]).astype(int)
    hood = m.volume.array[kk, jj - 1 : jj + 2, ii - 1 : ii + 2]  # the 0.05 mm rounding may cross a voxel edge
    assert int(mt.group(1)) in set(hood.ravel().tolist())


def test_layouts_and_shortcut_sheet(window, qtbot):
    window.set_layout("1x3")
    assert not window.view3d.isVisible() and all(v.isVisible() for v in window.views.values())
    window.set_layout("axial")
    assert window.views["axial"].isVisible() and not window.views["coronal"].isVisible()
    window.set_layout("3d")
    assert window.view3d.isVisible()
    window.set_layout("2x2")
    qtbot.keyClick(window.views["axial"], Qt.Key_2, Qt.ControlModifier)
    assert window.layout_name == "1x3"
    window.set_layout("2x2")
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


def test_hotkeys_window_presets_overlays_heatmap(window, qtbot):
    """1-5 apply the W/L presets; O hides/shows every overlay; H the heatmap only."""
    import numpy as np

    from radreview.viewer.model import window_presets
    from radreview.viewer.overlay import HeatmapOverlay, LabelOverlay
    from radreview.viewer._qt.views import grab_pixels

    ax = window.views["axial"]
    m = window.model
    for key, name in ((Qt.Key_1, "lung"), (Qt.Key_2, "mediastinum"), (Qt.Key_3, "abdomen"), (Qt.Key_4, "bone"),
                      (Qt.Key_5, "brain")):
        qtbot.keyClick(ax, key)
        assert m.preset == name and m.window == window_presets()[name]
    assert window.layout_name == "2x2"  # plain digits no longer switch the layout
    shape = m.volume.array.shape
    lab = np.zeros(shape, np.uint8)
    lab[:, 100:300, 100:300] = 1
    m.set_overlay("seg", LabelOverlay(lab, {1: (0, 0, 255)}, opacity=1.0))
    heat = np.zeros(shape, np.float32)
    heat[:, 320:420, 320:420] = 1.0
    m.set_overlay("heat", HeatmapOverlay(heat, opacity=1.0, title="Grad-CAM"))
    qtbot.wait(20)

    def counts():
        px = grab_pixels(ax).reshape(-1, 3).astype(int)
        blue = ((px[:, 0] == 0) & (px[:, 1] == 0) & (px[:, 2] == 255)).sum()
        red = ((px[:, 0] == 230) & (px[:, 1] == 0) & (px[:, 2] == 0)).sum()  # heat 1.0 = the LUT's top colour
        return blue, red

    blue, red = counts()
    assert blue > 1000 and red > 500 and ax.scene.colorbar.GetVisibility()
    qtbot.keyClick(ax, Qt.Key_H)
    blue2, red2 = counts()
    assert blue2 == blue and red2 == 0 and not ax.scene.colorbar.GetVisibility()
    qtbot.keyClick(ax, Qt.Key_H)
    qtbot.keyClick(ax, Qt.Key_O)
    assert counts() == (0, 0)
    qtbot.keyClick(ax, Qt.Key_O)
    assert counts() == (blue, red)


def test_never_frozen_stalls_on_chest_ct(qtbot, data_dir, capsys):
    """Event-loop stalls on the real chest CT in the default 2x2 layout with 3D: opening, Run AI
    (results drawn), scrolling with overlays + heatmap. Prints the figures; asserts only bounds
    that catch a regression to multi-second freezes (timings depend on the machine's load)."""
    import time

    import numpy as np
    from PySide6.QtCore import QTimer

    from radreview.viewer._qt.main_window import MainWindow
    from radreview.viewer.overlay import HeatmapOverlay

    ticks = []
    timer = QTimer()
    timer.setInterval(2)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()

    def stall(t0, t1):
        ts = [t0] + [t for t in ticks if t0 <= t <= t1] + [t1]
        return float(np.max(np.diff(ts)))

    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1800, 1100)
    win.show()
    qtbot.waitExposed(win)
    marks = {}
    win.first_image_shown.connect(lambda: marks.setdefault("first", time.perf_counter()))
    t0 = time.perf_counter()
    with qtbot.waitSignal(win.volume_loaded, timeout=60000):
        win.open_path(str(data_dir / "ct-chest-tumor" / "series_B70f"))
    qtbot.waitUntil(lambda: win.view3d.built, timeout=30000)
    qtbot.wait(300)
    open_stall = stall(t0, time.perf_counter())
    first = marks["first"] - t0
    panel = win.ai_panel
    t0 = time.perf_counter()
    with qtbot.waitSignal(panel.result_ready, timeout=180000):
        panel.run()
    t_ready = time.perf_counter()
    qtbot.waitUntil(lambda: not panel.drawing, timeout=30000)
    qtbot.wait(300)
    run_stall = stall(t_ready - 0.5, time.perf_counter())
    seg = next(iter(panel.run_result.segmentations.values()))
    ent = np.asarray(seg.entropy, np.float32)
    win.model.set_overlay("uncertainty", HeatmapOverlay(ent / max(float(ent.max()), 1e-6), title="uncertainty"))
    times = []
    for i in range(20):
        t = time.perf_counter()
        win.model.scroll("axial", 1 if (i // 5) % 2 == 0 else -1)
        qtbot.wait(0)
        times.append(time.perf_counter() - t)
    timer.stop()
    p50, p95 = np.percentile(np.array(times) * 1000, [50, 95])
    with capsys.disabled():
        print(f"\n[stalls] open: first image {first:.2f} s, longest stall {open_stall:.2f} s; Run AI "
              f"{t_ready - t0:.1f} s, longest stall while drawn {run_stall:.2f} s; scroll p50 {p50:.0f} ms p95 {p95:.0f} ms")
    assert first < 10 and open_stall < 2.0 and run_stall < 2.0 and p95 < 2000
    win.close()


def test_cyclic_garbage_is_collected_on_the_gui_thread_only(window, qtbot):
    """Automatic GC is off once a window exists (it could run inside a worker and destroy Qt/VTK
    objects off their thread); the GUI-thread timer still frees reference cycles."""
    import gc
    import weakref

    assert not gc.isenabled()

    class Node:
        pass

    a = Node()
    a.me = a  # a reference cycle: only the cyclic collector can free it
    ref = weakref.ref(a)
    del a
    junk = [[] for _ in range(gc.get_threshold()[0] + 100)]  # past the generation-0 threshold
    qtbot.waitUntil(lambda: ref() is None, timeout=5000)
    del junk


def test_linked_crosshair_render_deferred_only_on_slow_renderer(window, qtbot):
    """A scroll in axial moves only the crosshair in coronal: on a slow renderer that view
    renders when the scroll pauses (its scene is updated at once); a panel jump renders now."""
    from radreview.viewer._qt import views as V
    from radreview.viewer._qt.views import grab_pixels

    cor = window.views["coronal"]
    cor.render_now()
    renders = []
    orig = cor.render_now  # a slice view renders (paints) only through render_now
    cor.render_now = lambda: (renders.append(1), orig())[1]  # noqa: B023
    try:
        cor._render_ms = V.SLOW_RENDER_MS * 4  # as measured on llvmpipe
        window.model.scroll("axial", 1)
        qtbot.wait(10)
        assert renders == [] and cor._settle_since is not None  # deferred
        qtbot.waitUntil(lambda: cor._settle_since is None, timeout=2000)
        qtbot.wait(20)
        assert len(renders) >= 1  # caught up after the pause
        k0 = window.model.slice_index("coronal")
        before = grab_pixels(cor)
        window.model.scroll("axial", 3)  # not yet rendered, but a grab shows the new position
        assert window.model.slice_index("coronal") == k0
        assert not np.array_equal(grab_pixels(cor), before)
        n = len(renders)
        window.model.set_cursor(window.model.cursor)  # a jump from a panel (no source view)
        qtbot.wait(10)
        assert len(renders) > n
        cor._render_ms = 1.0  # a GPU: linked views render on every step
        n = len(renders)
        cor._settled()
        qtbot.waitUntil(lambda: len(renders) > n, timeout=2000)
        n = len(renders)
        cor._render_ms = 1.0  # that render updated the running mean with llvmpipe's time
        window.model.scroll("axial", -1)
        assert cor._settle_since is None  # not deferred ...
        qtbot.waitUntil(lambda: len(renders) > n, timeout=100)  # ... rendered before SETTLE_MS (120 ms)
    finally:
        del cor.render_now


def test_3d_cursor_renders_when_a_scroll_pauses_and_at_once_on_a_jump(window, qtbot):
    """With the 3D cursor shown, slice steps in a 2-D view do not re-render the 3D view while
    they go on (a 3D render costs more than a slice step's frame on llvmpipe); it renders once
    the scroll pauses for SETTLE_MS, and a jump from a panel renders without waiting."""
    import time

    from radreview.viewer._qt import views as V

    v3 = window.view3d
    qtbot.waitUntil(lambda: v3.built, timeout=30000)
    v3.set_cursor_shown(True)
    qtbot.wait(300)
    renders = []
    orig = v3.GetRenderWindow().Render
    v3.GetRenderWindow().Render = lambda: (renders.append(time.perf_counter()), orig())[1]  # noqa: B023
    try:
        lps0 = v3.scene.cursor_actor.GetPosition()
        for i in range(6):
            window.model.scroll("axial", 1 if i < 3 else -1)
            qtbot.wait(1)
            assert renders == [], f"3D rendered during the scroll (step {i})"
        t_last = time.perf_counter()
        window.model.scroll("axial", 1)
        qtbot.waitUntil(lambda: len(renders) == 1, timeout=3000)
        assert renders[0] - t_last >= V.SETTLE_MS / 1000 - 0.02
        assert v3.scene.cursor_actor.GetPosition() != lps0  # the cursor moved with the scroll
        n = len(renders)
        window.model.set_cursor(window.model.cursor)  # a jump from a panel (no source view)
        qtbot.waitUntil(lambda: len(renders) > n, timeout=1000)
    finally:
        v3.GetRenderWindow().Render = orig
