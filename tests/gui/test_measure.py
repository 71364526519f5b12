"""Measurements (viewer.measure, hand-computed values), readable findings (viewer.findings_text),
their persistence (review.measurements), and the mouse tools and panel on the real sample CT."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt

from radreview.review.store import ReviewStore
from radreview.studies import Volume, open_volume
from radreview.studies.volume import StudyInfo
from radreview.viewer.findings_text import describe_location, finding_row_text, status_text
from radreview.viewer.measure import (
    Measurement, MeasurementError, angle_deg, axis_rulers, measure, measurement_text, roi_stats, ruler_length_mm,
)


@pytest.fixture(scope="module")
def ct(ct_series):
    return open_volume(ct_series)


# ---------------------------------------------------------------------------- geometry
def test_ruler_and_angle_hand_computed():
    assert ruler_length_mm([0, 0, 0], [3, 4, 12]) == pytest.approx(13.0)
    assert angle_deg([10, 0, 0], [0, 0, 0], [0, 5, 0]) == pytest.approx(90.0)
    assert angle_deg([1, 0, 0], [0, 0, 0], [1, 1, 0]) == pytest.approx(45.0)
    assert angle_deg([1, 0, 0], [0, 0, 0], [-1, 0, 0]) == pytest.approx(180.0)
    with pytest.raises(MeasurementError, match="zero length"):
        angle_deg([0, 0, 0], [0, 0, 0], [1, 0, 0])
    with pytest.raises(MeasurementError, match="needs 3"):
        Measurement("angle", [[0, 0, 0], [1, 0, 0]])
    with pytest.raises(MeasurementError, match="unknown measurement kind"):
        Measurement("lasso", [[0, 0, 0], [1, 0, 0]])


def test_rectangle_roi_statistics_on_real_ct(ct):
    """A rectangle between pixel centres (row 200..209, col 150..169) of axial slice 10 covers
    exactly those 200 voxels: statistics equal numpy's on the same voxels."""
    m = ct.array.shape
    k, (r0, r1), (c0, c1) = 10, (200, 209), (150, 169)
    p0 = ct.index_to_lps([c0, r0, k])  # axial: screen col = i, row = j (identity direction)
    p1 = ct.index_to_lps([c1, r1, k])
    s = roi_stats(ct, "axial", p0, p1, "rectangle")
    block = ct.array[k, r0:r1 + 1, c0:c1 + 1].astype(float)
    assert m[1:] == (512, 512)
    assert s["pixels"] == 200 and s["slice"] == k
    assert s["mean"] == pytest.approx(block.mean()) and s["sd"] == pytest.approx(block.std())
    assert s["min"] == block.min() and s["max"] == block.max()
    sy, sx = ct.spacing[1], ct.spacing[0]
    assert s["area_mm2"] == pytest.approx((r1 - r0) * sy * (c1 - c0) * sx)
    text = measurement_text(Measurement("rectangle", [p0.tolist(), p1.tolist()]), s)
    assert text.startswith("Rectangle ") and "mean" in text and text.endswith("HU")


def test_ellipse_roi_on_known_values():
    """A 41 x 21 pixel ellipse (1 mm pixels) on a volume whose values are the column index:
    area pi/4 * 40 * 20 mm^2, mean = the centre column (symmetric), min/max at the ends."""
    arr = np.tile(np.arange(100, dtype=np.int16), (3, 60, 1))  # value = x index
    vol = Volume(arr, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), info=StudyInfo(modality="CT", source="test"))
    s = roi_stats(vol, "axial", [30, 20, 2], [70, 40, 2], "ellipse")
    assert s["area_mm2"] == pytest.approx(math.pi / 4 * 40 * 20)
    assert s["mean"] == pytest.approx(50.0) and s["min"] == 30 and s["max"] == 70
    assert s["slice"] == 1
    assert abs(s["pixels"] - math.pi / 4 * 40 * 20) < 0.05 * s["pixels"]  # pixel count near the analytic area
    # coronal ROI on the same volume: rows are slices (2 mm), columns x
    s2 = roi_stats(vol, "coronal", [10, 30, 0], [20, 30, 4], "rectangle")
    assert s2["pixels"] == 11 * 3 and s2["height_mm"] == pytest.approx(4.0) and s2["width_mm"] == pytest.approx(10.0)
    assert s2["mean"] == pytest.approx(15.0)


def test_measurement_round_trip_and_axis_rulers(ct):
    m = Measurement("ruler", [[0, 0, 0], [0, 0, 25]], "coronal", label="L")
    m2 = Measurement.from_dict({**m.as_dict(), "values": {"length_mm": 25}})
    assert m2 == m and measure(m2)["length_mm"] == pytest.approx(25)
    with pytest.raises(MeasurementError, match="lacks 'kind'"):
        Measurement.from_dict({"points_lps": []})
    c = ct.center_lps().tolist()
    rulers = axis_rulers({"id": "x:candidate-1", "center_lps": c, "long_axis_mm": 22.0, "short_axis_mm": 15.0})
    assert [r.label for r in rulers] == ["Long axis", "Short axis"]
    assert [round(measure(r)["length_mm"], 6) for r in rulers] == [22.0, 15.0]
    assert all(r.source == "ai" and r.finding_id == "x:candidate-1" for r in rulers)
    # from a mask: an axis-aligned 21 x 11 voxel rectangle on one slice
    mask = np.zeros(ct.array.shape, bool)
    mask[10, 100:111, 200:221] = True
    long_, short = axis_rulers({"id": "n"}, ct, mask)
    diag = math.hypot(20 * ct.spacing[0], 10 * ct.spacing[1])
    assert measure(long_)["length_mm"] == pytest.approx(diag, rel=1e-6)
    assert 0 < measure(short)["length_mm"] < measure(long_)["length_mm"]


# ---------------------------------------------------------------------------- findings text
def test_describe_location_from_lung_mask(data_dir):
    vol = open_volume(data_dir / "ct-chest-tumor" / "series_B70f")
    from radreview.inference.lungs import lung_mask

    lungs = lung_mask(vol.array, vol.spacing)
    zs, ys, xs = np.nonzero(lungs)
    # the patient's right lung lies at smaller LPS x (x runs to the patient's left)
    right = vol.index_to_lps([np.percentile(xs, 10), np.median(ys), np.percentile(zs, 15)])
    left_top = vol.index_to_lps([np.percentile(xs, 90), np.median(ys), np.percentile(zs, 95)])
    assert describe_location(right, vol, lungs) == ("right lung, lower half" if vol.direction[2, 2] > 0 else "right lung, upper half")
    assert describe_location(left_top, vol, lungs).startswith("left lung, ")
    assert describe_location(right, vol, None) == "right side"
    lobes = np.zeros(vol.array.shape, np.uint8)
    i, j, k = np.rint(vol.lps_to_index(right)).astype(int)
    lobes[k, j, i] = 14
    assert describe_location(right, vol, lungs, lobes) == "right lower lobe"
    with pytest.raises(ValueError, match="does not match"):
        describe_location(right, vol, lungs[:2])


def test_finding_row_text(ct):
    c = ct.index_to_lps([256, 256, 12]).tolist()
    f = {"id": "ct-nodule-2p5d:candidate-3", "kind": "candidate", "name": "candidate-3", "confidence": 0.8,
         "threshold": 0.9, "needs_review": True, "probability": 0.9213, "center_lps": c, "size_mm": 21.6}
    assert finding_row_text(f, ct, number=1) == "Nodule 1 - 22 mm - left side - slice 13/20 - p 0.92 - needs review"
    assert finding_row_text({**f, "status": "ai_positive", "long_axis_mm": 25.2}, ct).startswith("Nodule 3 - 25 mm")
    assert status_text({**f, "status": "ai_positive"}) == "AI positive"
    assert status_text({"needs_review": False, "probability": 0.2}) == "AI negative"
    seg = {"kind": "segmentation", "name": "liver", "volume_ml": 746.86, "center_lps": c, "confidence": 0.8653,
           "needs_review": False}
    assert finding_row_text(seg, ct) == "Liver - 746.9 mL - slice 13/20 - conf 0.87 - ok"


# ---------------------------------------------------------------------------- store
def test_measurements_saved_in_store_with_audit(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    items = [Measurement("ruler", [[0, 0, 0], [3, 4, 0]]).as_dict()]
    store.save_measurements("study:1", items, "dr-a")
    assert store.load_measurements("study:1") == items and store.load_measurements("study:2") == []
    store.save_measurements("study:1", [], "dr-a")
    assert store.load_measurements("study:1") == []
    rows = store.audit_rows()
    assert [r[3] for r in rows] == ["measurements", "measurements"] and rows[0][2] == "dr-a"
    assert store.verify_audit().ok
    with pytest.raises(ValueError, match="reviewer name"):
        store.save_measurements("study:1", items, " ")
    with pytest.raises(ValueError, match="must be a dict"):
        store.save_measurements("study:1", [{"kind": "ruler"}], "dr-a")


# ---------------------------------------------------------------------------- GUI tools
def _drag(qtbot, view, a, b):
    qtbot.mousePress(view, Qt.LeftButton, pos=QPoint(*a))
    from PySide6.QtCore import QEvent, QPointF
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    for t in (0.5, 1.0):
        p = QPointF(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)
        QApplication.sendEvent(view, QMouseEvent(QEvent.MouseMove, p, view.mapToGlobal(p), Qt.NoButton,
                                                 Qt.LeftButton, Qt.NoModifier))
    qtbot.mouseRelease(view, Qt.LeftButton, pos=QPoint(*b))


def test_ruler_roi_angle_tools_in_the_views(window, qtbot):
    from radreview.viewer._qt.views import grab_pixels

    panel = window.measure_panel
    ax = window.views["axial"]
    m = window.model
    cursor0 = m.cursor.copy()
    window.review_panel.reviewer.setText("dr-test")
    qtbot.keyClick(ax, Qt.Key_M)  # ruler hot key (handled by the main window)
    assert ax.tool is not None and ax.tool.kind == "ruler" and panel.buttons["ruler"].isChecked()
    a, b = ax.widget_pos_of(200, 150), ax.widget_pos_of(200, 250)
    _drag(qtbot, ax, a, b)
    assert np.allclose(m.cursor, cursor0)  # the crosshair did not follow the tool
    assert len(panel.measurements) == 1
    length = measure(panel.measurements[0])["length_mm"]
    sx = m.volume.spacing[0]
    assert abs(length - 100 * sx) < 2 * sx  # 100 pixel columns at 0.977 mm
    assert panel.table.rowCount() == 1 and "mm" in panel.table.item(0, 1).text()
    qtbot.wait(20)
    px = grab_pixels(ax)
    yellow = (px[..., 0] > 200) & (px[..., 1] > 200) & (px[..., 2] < 140)
    assert yellow.sum() > 50  # the ruler is drawn

    def n_yellow():
        q = grab_pixels(ax)
        return int(((q[..., 0] > 200) & (q[..., 1] > 200) & (q[..., 2] < 140)).sum())
    # only on its own slice: gone one slice up, back when scrolled back
    on = n_yellow()
    m.scroll("axial", 1)
    qtbot.wait(20)
    off = n_yellow()
    m.scroll("axial", -1)
    qtbot.wait(20)
    assert on - off > 40 and abs(n_yellow() - on) <= 2, (on, off)

    # rectangle ROI: statistics equal numpy's over the covered pixels
    panel.start_tool("rectangle")
    _drag(qtbot, ax, ax.widget_pos_of(250, 200), ax.widget_pos_of(280, 240))
    roi = panel.measurements[1]
    s = measure(roi, m.volume)
    k = m.slice_index("axial")
    mask_vals = m.volume.array[k][np.asarray(__import__("radreview.viewer.measure", fromlist=["roi_mask"]).roi_mask(
        m.volume, "axial", *roi.points_lps, "rectangle")[0])]
    assert s["pixels"] == mask_vals.size > 800 and s["mean"] == pytest.approx(float(mask_vals.mean()))

    # angle: three clicks
    panel.start_tool("angle")
    for p in (ax.widget_pos_of(100, 300), ax.widget_pos_of(100, 200), ax.widget_pos_of(0, 200)):
        qtbot.mouseClick(ax, Qt.LeftButton, pos=QPoint(*p))
    assert panel.measurements[-1].kind == "angle"
    assert measure(panel.measurements[-1])["angle_deg"] == pytest.approx(90, abs=2)

    # saved with the study (reviewer set): restored after re-opening the same study
    from radreview.review.findings import study_key

    saved = window.review_panel.store.load_measurements(study_key(m.volume))
    assert [d["kind"] for d in saved] == ["ruler", "rectangle", "angle"] and "values" in saved[0]
    # Esc returns to the crosshair in every view
    qtbot.keyClick(ax, Qt.Key_Escape)
    assert all(v.tool is None for v in window.views.values()) and not panel.buttons["angle"].isChecked()
    # editing: drag a ruler end point (no tool armed -> arm ruler, press near the end point)
    panel.start_tool("ruler")
    end = ax.widget_pos_of(200, 250)
    _drag(qtbot, ax, end, ax.widget_pos_of(200, 300))
    assert len(panel.measurements) == 3
    assert abs(measure(panel.measurements[0])["length_mm"] - 150 * sx) < 2 * sx
    panel.set_measurements([])
    window.model.set_volume(m.volume)  # the same study again: measurements come back from the store
    assert len(panel.measurements) == 3


# ---------------------------------------------------------------------------- overall progress
def test_run_progress_one_bar_for_the_whole_run():
    """Two models: the bar reaches 1 only at the end of the last one; the ETA covers the rest of
    the run (not the current stage), from the weights and the elapsed time."""
    from radreview.viewer.progress import DEFAULT_STAGES, RunProgress

    now = [0.0]
    p = RunProgress(["seg-model", "cls-model"], {"seg-model": "segmentation", "cls-model": "classification"},
                    clock=lambda: now[0])
    assert p.eta_s is None
    now[0] = 2.0
    f1 = p.update("seg-model", "infer", 5, 10)  # half of infer: pre (0.08) + 0.36 of the 10 s model
    seg_share = 10.0 / 16.0  # default model seconds: segmentation 10 s, classification 6 s
    assert f1 == pytest.approx(seg_share * (DEFAULT_STAGES["segmentation"][0][1] + 0.72 / 2))
    assert p.eta_s == pytest.approx(2.0 * (1 - f1) / f1)
    f2 = p.update("seg-model", "post", 2, 2)
    assert f2 == pytest.approx(seg_share)  # the first model done: not 100 % of the bar
    f3 = p.update("cls-model", "pre", 0, 4)
    assert f3 == pytest.approx(seg_share) and p.update("cls-model", "measure", 4, 4) == pytest.approx(1.0)
    assert p.update("cls-model", "pre", 0, 4) == pytest.approx(1.0)  # never goes back
