"""Manual tools through the mouse and keys, and the AI-vs-reference comparison, in a real window.

The flow test is the issue's: open the sample CT, run AI, import the TotalSegmentator
reference, see both in the "ai|manual" layout, edit the AI mask, export SEG. Screenshots land
in ``test-artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PySide6.QtCore import QPoint, Qt

from radreview.review.compare import compare_labels
from radreview.studies.labels import load_reference
from radreview.viewer._qt.views import grab_pixels
from radreview.viewer.compare_overlay import DISAGREEMENT_CLASSES
from radreview.viewer.editing import dice
from tests.qt_fixtures import open_window

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _drag(qtbot, view, points):
    """Left-drag through image ``(row, col)`` points of ``view``."""
    pos = [QPoint(*view.widget_pos_of(r, c)) for r, c in points]
    qtbot.mousePress(view, Qt.LeftButton, pos=pos[0])
    for p in pos[1:]:
        qtbot.mouseMove(view, pos=p)
    qtbot.mouseRelease(view, Qt.LeftButton, pos=pos[-1])


def _has_color(px, rgb, tol=12, min_count=20):
    d = np.abs(px.astype(int) - np.asarray(rgb)[None, None, :]).max(axis=2)
    return int((d <= tol).sum()) >= min_count


def test_brush_eraser_fill_undo_with_mouse_and_keys(window, qtbot):
    view = window.views["axial"]
    panel = window.edit_panel
    k = window.model.slice_index("axial")
    view.setFocus()
    qtbot.keyClick(view, Qt.Key_B)
    assert view.tool is not None and view.tool.kind == "brush" and panel.buttons["brush"].isChecked()
    ed = panel.editor
    assert ed is not None and not ed.labels.any()  # no AI result: a new, empty label map
    r0 = 256.0
    _drag(qtbot, view, [(r0, 150.0), (r0, 200.0), (r0, 260.0), (r0, 330.0)])
    painted = ed.labels[k] > 0
    assert painted.sum() > 500 and set(np.unique(np.nonzero(ed.labels)[0])) == {k}
    assert ed.undo_steps == 1  # one stroke = one undo step
    # the stroke is on screen in the label's colour
    color = panel.overlay.colors[panel.value()]
    assert _has_color(grab_pixels(view), color, tol=150)
    before = ed.labels.copy()
    qtbot.keyClick(view, Qt.Key_Z, Qt.ControlModifier)
    assert not ed.labels.any()
    qtbot.keyClick(view, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    assert np.array_equal(ed.labels, before)
    r = panel.radius()
    qtbot.keyClick(view, Qt.Key_BracketRight)
    assert panel.radius() > r
    qtbot.keyClick(view, Qt.Key_BracketLeft)
    assert panel.radius() == pytest.approx(r)
    # eraser through the middle of the stroke
    qtbot.keyClick(view, Qt.Key_E)
    assert view.tool.kind == "eraser"
    _drag(qtbot, view, [(r0 - 30, 240.0), (r0 + 30, 240.0)])
    assert ed.labels[k].sum() < before[k].sum() and ed.labels[k, int(r0)].min() == 0
    # fill: a closed ring drawn with the brush, then a click inside fills it
    panel.set_tool("brush")
    panel.radius_box.setValue(1.5)
    ring = [(100 + 25 * np.sin(t), 400 + 25 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 40)]
    _drag(qtbot, view, ring)
    panel.set_tool("fill")
    _drag(qtbot, view, [(100.0, 400.0)])
    i, j, _k = np.rint(view.model.mappings["axial"].screen_to_index(k, 100, 400)).astype(int)
    assert ed.labels[k, j, i] == panel.value()
    # islands: a tiny dab is removed, the big stroke stays
    panel.radius_box.setValue(1.0)
    panel.set_tool("brush")
    _drag(qtbot, view, [(450.0, 60.0)])
    i, j, _k = np.rint(view.model.mappings["axial"].screen_to_index(k, 450, 60)).astype(int)
    assert ed.labels[k, j, i] == panel.value()
    n_before = int((ed.labels > 0).sum())
    panel.islands.setValue(30)
    removed = panel.remove_islands()
    assert 0 < removed < 30 and ed.labels[k, j, i] == 0 and (ed.labels > 0).sum() == n_before - removed
    # threshold-limited brush: only voxels within the HU range are painted
    panel.threshold.setChecked(True)
    panel.hu_low.setValue(100.0)
    panel.hu_high.setValue(3000.0)
    panel.radius_box.setValue(20.0)
    panel.label_box.setCurrentIndex(panel.label_box.findData(2))
    vol = window.model.volume
    bone = np.argwhere(vol.array[k] > 300)  # a bright (bone) voxel of this slice
    yb, xb = np.median(bone, axis=0).astype(int)
    _, rb, cb = view.model.mappings["axial"].index_to_screen([xb, yb, k])
    _drag(qtbot, view, [(rb, cb), (rb + 3, cb + 3)])
    hu = vol.array[ed.labels == 2]
    assert hu.size > 20 and hu.min() >= 100
    panel.threshold.setChecked(False)
    # fill between slices: discs on slices k-4 and k, interpolated in between
    panel.label_box.setCurrentIndex(panel.label_box.findData(3))
    panel.radius_box.setValue(10.0)
    for kk in (k - 4, k):
        window.model.scroll("axial", kk - window.model.slice_index("axial"))
        _drag(qtbot, view, [(300.0, 300.0)])
    assert [(ed.labels[z] == 3).any() for z in range(k - 4, k + 1)] == [True, False, False, False, True]
    assert panel.interpolate() > 0
    assert all((ed.labels[z] == 3).sum() > 100 for z in range(k - 4, k + 1))
    steps = ed.undo_steps
    assert steps >= 5 and ed.undo_bytes < 0.05 * ed.labels.nbytes
    qtbot.keyClick(view, Qt.Key_Escape)
    assert view.tool is None and not panel.buttons["brush"].isChecked()


def test_stroke_preview_follows_window_overlays_and_slice_changes_mid_drag(window, qtbot):
    """During a brush drag the view shows only the changed rectangle re-composed on a base
    slice made at the stroke's start: a preset key (W/L), O (overlays off and on) or a wheel
    step in the middle of the drag must not leave stale pixels, and a stroke that crosses a
    slice step is two undo steps, one per slice."""
    view = window.views["axial"]
    panel = window.edit_panel
    m = window.model
    view.setFocus()
    qtbot.keyClick(view, Qt.Key_B)
    ed = panel.editor
    k = m.slice_index("axial")

    def at(r, c):
        return QPoint(*view.widget_pos_of(r, c))

    def stale_pixels() -> int:
        view.flush()
        fresh = m.compose_slice("axial", m.slice_index("axial")).astype(int)
        return int((np.abs(view.scene.shown_rgb.astype(int) - fresh).max(axis=2) > 8).sum())

    qtbot.mousePress(view, Qt.LeftButton, pos=at(256, 150))
    qtbot.mouseMove(view, pos=at(256, 200))
    assert stale_pixels() == 0
    window_before = m.window
    qtbot.keyClick(view, Qt.Key_1)  # lung preset in the middle of the drag
    assert m.window != window_before
    qtbot.mouseMove(view, pos=at(256, 240))
    assert stale_pixels() == 0
    qtbot.keyClick(window, Qt.Key_O)  # overlays off ...
    assert not m.overlays_shown
    qtbot.mouseMove(view, pos=at(256, 270))
    assert stale_pixels() == 0
    qtbot.keyClick(window, Qt.Key_O)  # ... and on again
    qtbot.mouseMove(view, pos=at(256, 300))
    assert stale_pixels() == 0
    steps = ed.undo_steps
    m.scroll("axial", 1)  # a wheel step in the middle of the drag
    qtbot.mouseMove(view, pos=at(300, 300))
    assert ed.undo_steps == steps + 1  # what was painted on slice k is one step
    qtbot.mouseMove(view, pos=at(330, 300))
    assert stale_pixels() == 0
    qtbot.mouseRelease(view, Qt.LeftButton, pos=at(330, 300))
    assert ed.undo_steps == steps + 2
    assert (ed.labels[k] > 0).sum() > 200 and (ed.labels[k + 1] > 0).sum() > 100
    before_k = ed.labels[k].copy()
    assert ed.undo()  # undoes the slice k + 1 part only
    assert not ed.labels[k + 1].any() and np.array_equal(ed.labels[k], before_k)


def test_reference_of_another_study_is_refused_with_the_file_named(window, qtbot, data_dir):
    cp = window.compare_panel
    bad = data_dir / "mr-brain-label" / "brain1_label.nrrd"  # a brain MR label map: not this CT's space
    with qtbot.waitSignal(cp.failed, timeout=30000) as blocker:
        assert not cp.import_reference(str(bad))
    assert "brain1_label.nrrd" in blocker.args[0] and cp.reference is None
    assert "brain1_label.nrrd" in cp.info.text()
    cp.show_dis.setChecked(True)  # nothing to compare: refused, unchecked again
    assert not cp.show_dis.isChecked() and "disagreement" not in window.model.overlays


@pytest.fixture
def uid_window(qtbot, uncompressed_ct):
    """The sample CT with a Study Instance UID (the shipped files have none, and a SEG must
    reference its study); same pixels and geometry."""
    win = open_window(qtbot, uncompressed_ct[0])
    yield win
    win.close()


def test_ai_vs_reference_flow_edit_and_export(uid_window, qtbot, data_dir, tmp_path):
    window = uid_window
    ARTIFACTS.mkdir(exist_ok=True)
    vol = window.model.volume
    with qtbot.waitSignal(window.ai_panel.result_ready, timeout=180000):
        window.ai_panel.run()
    ai = window.ai_panel.result.labels.copy()
    ref_path = data_dir / "ct-abdomen-dicom" / "totalsegmentator_labels.nii.gz"
    cp = window.compare_panel
    assert not window.compare_dock.isVisible()  # the review panel keeps its height until there is a reference
    with qtbot.waitSignal(cp.compared, timeout=60000):
        assert cp.import_reference(str(ref_path))
    assert window.compare_dock.isVisible()
    names = [r["name"] for r in cp.rows]
    assert names == ["liver", "spleen"]  # the slab has no TotalSegmentator kidneys or lungs
    # the table equals the headless comparison
    ref = load_reference(ref_path, vol).array  # the NIfTI is RAS: placed on the DICOM (LPS) grid
    direct = {c.name: c.as_dict() for c in compare_labels(ai, ref, tuple(vol.spacing[::-1]), cp.pairs)}
    liver_row = names.index("liver")
    assert float(cp.table.item(liver_row, 1).text()) == pytest.approx(direct["liver"]["dice"], abs=6e-4)
    assert cp.table.columnCount() == 14 and cp.table.horizontalHeaderItem(3).text() == "HD95 mm"

    # "ai|manual": both columns visible, same slice, linked crosshair and window
    window.set_layout("ai|manual")
    qtbot.wait(100)
    left, right = window.views["axial"], window.compare_layout.ref_views["axial"]
    assert left.isVisible() and right.isVisible() and not window.views["sagittal"].isVisible()
    rect = cp.table.visualItemRect(cp.table.item(liver_row, 0))
    qtbot.mouseClick(cp.table.viewport(), Qt.LeftButton, pos=rect.center())
    k = window.model.slice_index("axial")
    assert k == direct["liver"]["worst_slice"]
    assert window.compare_layout.ref_model.slice_index("axial") == k
    assert np.allclose(window.compare_layout.ref_model.cursor, window.model.cursor)
    window.model.apply_preset("abdomen")
    assert window.compare_layout.ref_model.window == window.model.window
    # a representative slice for the screenshot (the worst liver slice is the last one, where
    # the AI output is empty)
    ijk = vol.lps_to_index(window.model.cursor)
    ijk[2] = 10
    window.model.set_cursor(vol.index_to_lps(ijk))
    left.scene.zoom(1.3)
    left.render_now()
    assert right.scene.renderer.GetActiveCamera() is left.scene.renderer.GetActiveCamera()
    qtbot.wait(50)
    shot = window.save_screenshot(str(ARTIFACTS / "compare_ai_manual.png"))
    window.compare_dock.raise_()
    qtbot.wait(50)
    window.grab().save(str(ARTIFACTS / "compare_window_panels.png"))  # the docks (VTK views may be blank here)
    assert shot.shape[0] > 300
    lpx, rpx = grab_pixels(left), grab_pixels(right)
    liver_ai = window.ai_panel.overlay.colors[3]
    assert not np.array_equal(lpx, rpx)  # different masks on the two sides
    assert _has_color(lpx, np.asarray(liver_ai), tol=140) and _has_color(rpx, np.asarray(liver_ai), tol=140)

    # disagreement map: single view, three colours, legend
    cp.show_dis.setChecked(True)
    qtbot.wait(50)
    assert window.layout_name == "axial" and cp.legend.enabled
    dmap = cp.dmap
    counts = np.stack([(dmap == v).sum(axis=(1, 2)) for v in (1, 2, 3)])
    k = int(np.argmax(counts.min(axis=0)))  # the slice where all three classes are largest
    assert counts[:, k].min() > 100
    ijk[2] = k
    window.model.set_cursor(vol.index_to_lps(ijk))
    qtbot.wait(50)
    px = grab_pixels(window.views["axial"])
    for _v, _name, rgb in DISAGREEMENT_CLASSES:
        assert _has_color(px, rgb, tol=10), _name
    window.save_screenshot(str(ARTIFACTS / "compare_disagreement.png"))
    cp.show_dis.setChecked(False)
    cp.show_pair.setChecked(True)
    qtbot.wait(50)
    window.save_screenshot(str(ARTIFACTS / "compare_outlines.png"))
    cp.show_pair.setChecked(False)
    assert "ai-segmentation" in window.model.overlays

    # edit the AI mask: erase part of the spleen with a 3-D eraser, save a new version
    ep = window.edit_panel
    window.set_layout("axial")
    ep.set_tool("eraser")
    assert ep.ai_labels is window.ai_panel.result.labels
    spleen = np.argwhere(ai == 4)
    zc, yc, xc = np.median(spleen, axis=0)
    ijk = np.array([xc, yc, zc])
    window.model.set_cursor(vol.index_to_lps(ijk))
    view = window.views["axial"]
    _, r, c = view.model.mappings["axial"].index_to_screen(ijk)
    ep.mode_box.setCurrentIndex(1)  # 3-D sphere
    ep.radius_box.setValue(12.0)
    _drag(qtbot, view, [(r, c), (r + 5, c + 5)])
    assert np.array_equal(window.ai_panel.result.labels, ai)  # the AI output is never written
    assert (ep.editor.labels == 4).sum() < (ai == 4).sum()
    ep.label_box.setCurrentIndex(ep.label_box.findData(4))
    window.review_panel.reviewer.setText("dr. gui")
    with qtbot.waitSignal(ep.mask_saved, timeout=30000) as saved:
        ep.save()
    res = saved.args[0]
    assert res["version"] == 1 and res["dice_vs_ai"] == pytest.approx(dice(ai, ep.editor.labels, 4))
    store = window.review_panel.store
    audit = [row for row in store.audit_rows() if row[3] == "mask-edit"]
    assert audit and audit[-1][2] == "dr. gui" and "ct-organs-2p5d:spleen" in audit[-1][4]
    assert store.verify_audit().ok
    assert window.review_panel.session.decisions["ct-organs-2p5d:spleen"]["decision"] == "edit"
    assert Path(res["path"]).is_file() and Path(res["ai_path"]).is_file()
    # the comparison now uses the edited mask
    spleen_row = [r["name"] for r in cp.rows].index("spleen")
    assert cp.rows[spleen_row]["dice"] != pytest.approx(direct["spleen"]["dice"])

    # export the edited mask as DICOM SEG
    out = cp.export_seg(str(tmp_path / "edited_seg.dcm"), "edited")
    assert out is not None, cp.info.text()
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG"
    seg_names = {s.SegmentLabel for s in ds.SegmentSequence}
    assert {"liver", "spleen"} <= seg_names
    # and the SEG reads back as a reference (the edited spleen against itself: Dice 1)
    edited = ep.editor.labels.copy()
    ep.stop_editing()
    assert cp.import_reference(out)
    assert "spleen" in [r["name"] for r in cp.rows]
    back = cp.reference
    spleen_value = [v for v, n in cp.ref_names.items() if n == "spleen"][0]
    assert dice(back == spleen_value, edited == 4) == pytest.approx(1.0)


def test_esc_in_the_middle_of_a_brush_stroke_ends_it_and_no_view_shows_the_old_mask(window, qtbot):
    """Esc while the left button still drags a brush stroke clears the tool: the stroke ends
    as a release would (one undo step), and no view shows (now or after a slice step onto a
    slice composed before the stroke) the labels as they were before it."""
    m = window.model
    view = window.views["axial"]
    panel = window.edit_panel
    for plane in ("sagittal", "axial"):  # slices next to the shown ones composed ahead (prefetch)
        m.scroll(plane, 1)
        qtbot.wait(50)
        m.scroll(plane, -1)
        qtbot.wait(50)
    view.setFocus()
    qtbot.keyClick(view, Qt.Key_B)
    ed = panel.editor
    k = m.slice_index("axial")
    rows, cols = m.mappings["axial"].shape
    pos = [QPoint(*view.widget_pos_of(rows / 2, c)) for c in (150.0, 200.0, 260.0)]
    qtbot.mousePress(view, Qt.LeftButton, pos=pos[0])
    for p in pos[1:]:
        qtbot.mouseMove(view, pos=p)
    qtbot.keyClick(view, Qt.Key_Escape)  # the button is still down
    qtbot.mouseRelease(view, Qt.LeftButton, pos=pos[-1])
    qtbot.wait(100)
    assert view.tool is None and ed._stroke is None and ed.undo_steps == 1
    assert (ed.labels[k] > 0).sum() > 200
    for plane in ("axial", "sagittal", "coronal"):
        for step in (1, -1):
            m.scroll(plane, step)
            qtbot.wait(50)
            v = window.views[plane]
            shown = v.scene.shown_rgb  # what the view paints
            assert np.array_equal(shown, m.compose_slice(plane)), f"{plane} slice {m.slice_index(plane)} is stale"
