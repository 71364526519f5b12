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
    # on this abdominal CT the "lungs" (table foam) and 2 mL of "kidneys" cannot be findings
    # (review.plausibility): listed as not assessed and not drawn by default
    assert names == ["body", "lungs (not assessed)", "liver", "spleen", "kidneys (not assessed)", "bone"]
    shown = {panel.table.item(r, 1).text(): panel.table.item(r, 0).checkState() == Qt.Checked
             for r in range(panel.table.rowCount())}
    assert shown == {"body": True, "lungs (not assessed)": False, "liver": True, "spleen": True,
                     "kidneys (not assessed)": False, "bone": True}
    overlay = window.model.overlays[OVERLAY_NAME]
    lungs = next(s.index for s in result.stats if s.name == "lungs")
    assert overlay.visible.get(lungs) is False
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
    """Cancel mid-run: the worker stops before the end (the bar never reaches 100 %, no
    result), and nothing is written: no overlay, no findings, no saved run in the store."""
    panel = window.ai_panel
    values, results = [], []
    panel.progress.valueChanged.connect(values.append)
    panel.result_ready.connect(results.append)
    store = window.review_panel.store
    saved_before = [r for r in store.audit_rows() if r[3] == "run-saved"]
    with qtbot.waitSignal(panel.run_cancelled, timeout=120000):
        panel.run()
        qtbot.waitUntil(lambda: panel.progress.value() > 0 or panel.eta.text().startswith("infer"), timeout=60000)
        qtbot.mouseClick(panel.cancel_button, Qt.LeftButton)
    qtbot.wait(200)  # a late result would arrive on these event-loop turns
    assert results == [] and panel.run_result is None
    assert values and max(values) < 1000  # stopped before the end of the run
    assert panel.result is None and OVERLAY_NAME not in window.model.overlays
    assert panel.table.rowCount() == 0 and panel.run_button.isEnabled()
    assert window.review_panel.findings() == []
    assert [r for r in store.audit_rows() if r[3] == "run-saved"] == saved_before  # no run stored
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


def test_only_listed_findings_are_drawn_numbered_with_legend(window, qtbot):
    """The table lists the card-bounded candidates as readable rows; exactly those are drawn,
    numbered as in the list, sized to their diameter; the flagged ones in amber, on top."""
    from radreview.review.findings import Finding
    from radreview.viewer._qt.views import grab_pixels
    from radreview.viewer.overlay import FLAGGED_RGB, HeatmapOverlay
    from radreview.viewer.workflow import AIRun

    panel = window.ai_panel
    vol = window.model.volume
    centres = [vol.index_to_lps([150, 200, 10]), vol.index_to_lps([380, 250, 10]), vol.index_to_lps([260, 380, 4])]
    findings = [Finding("ct-nodule-2p5d:study", "ct-nodule-2p5d", "classification", "study", 0.8, 0.9,
                        {"candidates_total": 151, "candidates_listed": 3}, probability=0.8)]
    for rank, (c, size, conf) in enumerate(zip(centres, (20.0, 8.0, 12.0), (0.95, 0.5, 0.97)), start=1):
        findings.append(Finding(f"ct-nodule-2p5d:candidate-{rank}", "ct-nodule-2p5d", "candidate", f"candidate-{rank}",
                                conf, 0.9, {"center_lps": [float(v) for v in c], "size_mm": size}, probability=conf,
                                operating_threshold=0.5))
    panel.run_result = AIRun(findings=findings)
    # a heatmap under the markers: they must stay visible above it
    heat = np.ones(vol.array.shape, np.float32)
    window.model.set_overlay("explanation", HeatmapOverlay(heat, opacity=1.0))
    panel.show_candidates(panel.run_result.findings)
    ov = window.model.overlays["ai-candidates"]
    assert [m.number for m in ov.markers] == [1, 2, 3]  # 3 listed, not 151
    assert [m.flagged for m in ov.markers] == [False, True, False]
    assert ov.markers[0].radius_mm == 10.0
    rows = [panel.findings_table.item(r, 0).text() for r in range(panel.findings_table.rowCount())]
    assert rows[0] == "Nodule 1 - 20 mm - right side - slice 11/20 - p 0.95 - AI positive"
    assert rows[1].startswith("Nodule 2 - 8 mm - left side - slice 11/20 - p 0.50 - needs review")
    # click jumps to the finding
    rect = panel.findings_table.visualItemRect(panel.findings_table.item(1, 0))
    qtbot.mouseClick(panel.findings_table.viewport(), Qt.LeftButton, pos=rect.center())
    assert np.allclose(window.model.cursor, centres[1], atol=1e-6)
    qtbot.wait(20)
    ax = window.views["axial"]
    px = grab_pixels(ax).reshape(-1, 3).astype(int)
    amber = (np.abs(px - np.array(FLAGGED_RGB)).sum(axis=1) < 40).sum()
    assert amber > 30  # the flagged circle (and its number) drawn above the full-opacity heatmap
    assert all(t.GetVisibility() for t in ax.scene.legend)
    texts = [t.GetInput() for t in ax.scene._marker_texts if t.GetVisibility()]
    assert sorted(texts) == ["1", "2"]  # candidates 1 and 2 lie on this slice; 3 does not
    # hiding overlays (O) hides the markers too
    window.model.set_overlays_shown(False)
    qtbot.wait(20)  # views re-draw on the next event-loop turn
    assert not any(t.GetVisibility() for t in ax.scene._marker_texts)
    window.model.set_overlays_shown(True)


def test_run_ai_body_outline_surfaces_overall_progress(window, qtbot):
    """Body and lungs drawn as outlines only by default; 3D surfaces arrive from the worker; one
    progress bar with an ETA for the whole run."""
    panel = window.ai_panel
    values, texts = [], []
    panel.progress.valueChanged.connect(values.append)
    orig = panel._progress

    def spy(item):
        orig(item)
        texts.append(panel.eta.text())

    with qtbot.waitSignal(panel.result_ready, timeout=120000):
        panel.run()
        panel.worker.yielded.disconnect()
        panel.worker.yielded.connect(spy)
    assert values == sorted(values) and max(values) >= 900  # one bar, never going back
    assert any("for the whole run" in t for t in texts)
    body = next(s for s in panel.result.stats if s.name == "body")
    lungs = next(s for s in panel.result.stats if s.name == "lungs")
    assert panel.overlay.outline_only == {body.index, lungs.index}
    k = window.model.slice_index("axial")
    mapping = window.model.mappings["axial"]
    lab = mapping.extract(panel.result.labels, k)
    rgb = np.full(lab.shape + (3,), 100, np.uint8)
    out = panel.overlay.compose(rgb, mapping, k)
    from radreview.viewer.overlay import outline

    inner = (lab == body.index) & ~outline(lab)
    assert inner.sum() > 1000 and (out[inner] == 100).all()  # the body interior is not tinted
    assert (out[(lab == body.index) & outline(lab)] != 100).any(axis=1).mean() > 0.9
    panel.uncertainty.setChecked(True)  # the voxel entropy as a heatmap with its colour bar
    qtbot.wait(20)
    ax = window.views["axial"]
    assert "uncertainty" in window.model.overlays and ax.scene.colorbar.GetVisibility()
    assert ax.scene.colorbar.GetTitle() == "uncertainty (nats)"
    panel.uncertainty.setChecked(False)
    assert "uncertainty" not in window.model.overlays
    qtbot.waitUntil(lambda: not panel.drawing, timeout=30000)
    meshes = panel.run_result.surface_meshes["ct-organs-2p5d"]
    assert body.index not in meshes and len(meshes) >= 3
    assert all(window.view3d.scene.surface_of(i) is not None for i in meshes)
