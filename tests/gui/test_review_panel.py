"""The review workflow through the widgets: four states, banner, refusal, keys, sign-off lock, addendum, restore."""

from __future__ import annotations

import json

import numpy as np
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication

from radreview.review.findings import FindingStatus, study_key
from radreview.review.store import ReviewStore
from radreview.viewer._qt.review_panel import FLAG_BG, HEATMAP, STATUS_COLORS
from tests.qt_fixtures import open_window


def run_ai(win, qtbot):
    with qtbot.waitSignal(win.ai_panel.result_ready, timeout=180000) as blocker:
        win.ai_panel.run()
    return blocker.args[0]


def test_states_keys_sign_off_lock_addendum_and_restore(window, qtbot, ct_series):
    run = run_ai(window, qtbot)
    panel = window.review_panel
    by_id = {f.id: f for f in run.findings}
    # the four states: rows coloured by state, Not assessed listed apart with the reason
    rows = panel.rows()
    assert rows and all(f.status is not FindingStatus.NOT_ASSESSED for f in rows)
    for r, f in enumerate(rows):
        assert panel.table.item(r, panel.STATUS_COL).text() == f.status.label
        assert panel.table.item(r, 0).background().color() == STATUS_COLORS[f.status]
    assert STATUS_COLORS[FindingStatus.NEEDS_REVIEW] == FLAG_BG  # amber
    skipped = [f for f in run.findings if f.status is FindingStatus.NOT_ASSESSED]
    assert "kidneys" in {f.name for f in skipped}  # 2 mL "kidneys" on an abdominal CT
    # body, lungs and bone are anatomical context (card role "context"): one line, no table rows, no decision
    assert not {"body", "lungs", "bone"} & {f.name for f in run.findings}
    assert panel.context_label.text() == "Context: body, lungs, bone (not findings)"
    assert "lungs: not assessed" in panel.context_label.toolTip()  # table-foam "lungs" on an abdominal CT
    texts = [panel.not_assessed.item(i).text() for i in range(panel.not_assessed.count())]
    assert any(t.startswith("kidneys") and "40 mL" in t for t in texts)
    assert "Weak study key" in panel.key_label.text()  # the sample CT has no Study Instance UID
    pending = [f for f in run.findings if f.requires_decision]
    assert any(f.status is FindingStatus.AI_POSITIVE for f in pending)
    assert window.banner.isVisible() and f"{len(pending)} finding(s) need a decision" in window.banner.text()
    # sign-off refused while findings lack a decision; the refusal lists them
    with qtbot.waitSignal(panel.signoff_refused) as refused:
        qtbot.mouseClick(panel.signoff_b, Qt.LeftButton)
    assert sorted(refused.args[0]) == sorted(f.id for f in pending)
    assert "sign-off refused" in panel.message.text()
    panel.reviewer.setText("dr gui")
    # keyboard: N jumps to the first finding needing a decision, R rejects it, Shift+N goes back
    panel.table.setFocus()
    qtbot.keyClick(panel.table, Qt.Key_N)
    first = panel.selected()
    assert first is not None and first.id == pending[0].id
    with qtbot.waitSignal(panel.decision_saved):
        qtbot.keyClick(panel.table, Qt.Key_R)
    assert panel.session.decisions[first.id]["decision"] == "reject"
    remaining = [f.id for f in panel.rows() if f.id in {p.id for p in panel.session.pending()}]
    qtbot.keyClick(panel.table, Qt.Key_N)
    assert panel.selected().id == remaining[0]
    qtbot.keyClick(panel.table, Qt.Key_N, Qt.ShiftModifier)  # previous, wrapping to the last one
    assert panel.selected().id == remaining[-1]
    qtbot.keyClick(panel.table, Qt.Key_N)  # next, wrapping to the first one
    second = panel.selected()
    assert second.id == remaining[0]
    assert second.status is FindingStatus.AI_POSITIVE  # left for "Confirm all AI positives"; A is used in the addendum
    # the remaining Needs review ones by button, the AI positives in one explicit, logged action
    for f in panel.session.pending():
        if f.status is FindingStatus.NEEDS_REVIEW:
            panel.select(f.id)
            with qtbot.waitSignal(panel.decision_saved):
                qtbot.mouseClick(panel.accept_b, Qt.LeftButton)
    with qtbot.waitSignal(panel.positives_confirmed) as confirmed:
        qtbot.mouseClick(panel.confirm_all_b, Qt.LeftButton)
    assert second.id in confirmed.args[0] and all(by_id[i].status is FindingStatus.AI_POSITIVE for i in confirmed.args[0])
    assert not window.banner.isVisible()
    with qtbot.waitSignal(panel.signed_off):
        qtbot.mouseClick(panel.signoff_b, Qt.LeftButton)
    # read-only after sign-off: buttons off, keys refused, a second sign-off refused
    assert not panel.accept_b.isEnabled() and not panel.confirm_all_b.isEnabled() and panel.addendum_b.isEnabled()
    panel.select(first.id)
    qtbot.keyClick(panel.table, Qt.Key_A)
    assert panel.session.decisions[first.id]["decision"] == "reject" and "Addendum" in panel.message.text()
    with qtbot.waitSignal(panel.signoff_refused):
        qtbot.mouseClick(panel.signoff_b, Qt.LeftButton)
    assert "nothing changed" in panel.message.text()
    # an addendum: a reason, a logged change shown as such, and a new sign-off
    assert not panel.start_addendum("  ")

    def answer_dialog():  # the real "Addendum…" dialog: type the reason, press OK
        dlg = QApplication.activeModalWidget()
        dlg.setTextValue("second read: it is real")
        dlg.accept()

    QTimer.singleShot(300, answer_dialog)
    qtbot.mouseClick(panel.addendum_b, Qt.LeftButton)
    assert panel.accept_b.isEnabled() and "second read" in panel.message.text()
    panel.select(first.id)
    panel.table.setFocus()
    with qtbot.waitSignal(panel.decision_saved):  # A accepts the selected one
        qtbot.keyClick(panel.table, Qt.Key_A)
    r = [f.id for f in panel.rows()].index(first.id)
    assert panel.table.item(r, panel.DECISION_COL).text() == "accept (addendum)"
    assert "addendum pending sign-off" in panel.state_label.text()
    with qtbot.waitSignal(panel.signed_off):
        qtbot.mouseClick(panel.signoff_b, Qt.LeftButton)
    key = study_key(window.model.volume)
    labels = run.segmentations["ct-organs-2p5d"].labels.copy()
    window.close()
    # reopening the study restores findings, decisions, the sign-off, the label map and the reviewer
    win2 = open_window(qtbot, ct_series)
    p2 = win2.review_panel
    assert [f.id for f in p2.findings()] == [f.id for f in run.findings]
    assert [f.status for f in p2.findings()] == [f.status for f in run.findings]
    decided = {p2.table.item(r, 0).text(): p2.table.item(r, p2.DECISION_COL).text() for r in range(p2.table.rowCount())}
    assert decided[first.id] == "accept (addendum)" and decided[second.id] == "accept"
    assert "Signed off by dr gui" in p2.state_label.text() and not p2.accept_b.isEnabled()
    assert p2.context_label.text() == "Context: body, lungs, bone (not findings)"  # restored with the run
    assert p2.reviewer.text() == "dr gui"
    ov = win2.model.overlays.get("ai-segmentation")
    assert ov is not None and np.array_equal(ov.labels, labels)
    # its 3D surfaces come back from a worker (never built on the GUI thread), added one per turn
    seg = run.segmentations["ct-organs-2p5d"]
    want = [s.index for s in seg.stats if s.voxels and s.name != "body"]
    qtbot.waitUntil(lambda: not win2.ai_panel.drawing and all(win2.view3d.scene.surface_of(i) is not None for i in want),
                    timeout=60000)
    assert win2.view3d.scene.surface_of(next(s.index for s in seg.stats if s.name == "body")) is None
    store = ReviewStore()
    assert store.verify_audit().ok
    actions = [r[3] for r in store.audit_rows()]
    assert actions.count("confirm-all-positives") == 1 and actions.count("sign-off") == 2 and "run-saved" in actions
    assert store.decisions(key)[first.id]["addendum"] is True
    assert store.decisions(key)[first.id]["reason"].startswith("second read: it is real")
    win2.close()


def test_threshold_change_is_logged_and_reflags(window, qtbot):
    run_ai(window, qtbot)
    panel = window.review_panel
    panel.reviewer.setText("dr t")
    liver = next(f for f in panel.findings() if f.name == "liver")
    assert liver.status is FindingStatus.AI_POSITIVE
    panel.change_threshold("ct-organs-2p5d", "liver", 0.999)
    assert next(f for f in panel.findings() if f.name == "liver").needs_review
    assert window.banner.isVisible()
    rows = [r for r in ReviewStore().audit_rows() if r[3] == "threshold"]
    assert json.loads(rows[-1][4])["new"] == 0.999 and rows[-1][2] == "dr t"


def test_explanation_toggle_shows_heatmap(window, qtbot):
    run_ai(window, qtbot)
    panel = window.review_panel
    panel.select("ct-organs-2p5d:liver")
    with qtbot.waitSignal(panel.explanation_ready, timeout=120000) as blocker:
        panel.explain.setChecked(True)
    ex = blocker.args[0]
    assert HEATMAP in window.model.overlays
    assert ex.heatmap.shape == window.model.volume.array.shape and float(ex.heatmap.max()) == 1.0
    seg = panel.run.segmentations["ct-organs-2p5d"]
    # the heatmap's peak lies on the liver or right next to it
    idx = window.model.volume.lps_to_index(ex.peak_lps).round().astype(int)
    k, j, i = idx[2], idx[1], idx[0]
    near = seg.labels[max(k - 2, 0) : k + 3, max(j - 15, 0) : j + 16, max(i - 15, 0) : i + 16]
    assert (near == 3).any()
    panel.explain.setChecked(False)
    assert HEATMAP not in window.model.overlays


def test_explanation_progress_cancel_then_run(window, qtbot):
    run_ai(window, qtbot)
    panel = window.review_panel
    panel.select("ct-organs-2p5d:liver")
    assert not panel.explain_cancel_b.isEnabled() and not panel.explain_progress.isVisible()
    ready = []
    panel.explanation_ready.connect(ready.append)
    panel.explain.setChecked(True)  # starts Grad-CAM on the worker
    assert panel.explaining and panel.explain_cancel_b.isEnabled() and panel.explain_progress.isVisible()
    assert not panel.explain.isEnabled()  # locked while it runs
    worker = panel._worker
    with qtbot.waitSignal(panel.explanation_cancelled):
        qtbot.mouseClick(panel.explain_cancel_b, Qt.LeftButton)
    # idle at once: Cancel off, progress hidden, the check box free and cleared
    assert not panel.explaining and not panel.explain_cancel_b.isEnabled() and not panel.explain_progress.isVisible()
    assert panel.explain.isEnabled() and not panel.explain.isChecked()
    assert "cancelled" in panel.message.text()
    # the cancelled job ends (aborted between steps, or its step under way finishes) without a heatmap
    qtbot.waitUntil(lambda: worker.abort_requested and not worker.is_running, timeout=120000)
    qtbot.wait(200)  # let its last queued signal reach the panel
    assert HEATMAP not in window.model.overlays and not ready
    # a normal run afterwards: progress steps, then the heatmap is added and the controls go idle
    with qtbot.waitSignal(panel.explanation_ready, timeout=120000):
        panel.explain.setChecked(True)
        assert panel.explain_progress.maximum() == 0  # busy indicator until the first step arrives
    assert HEATMAP in window.model.overlays and ready
    assert panel.explain_progress.maximum() >= 1  # the worker's ("explain", done, total) steps reached the bar
    assert not panel.explaining and not panel.explain_cancel_b.isEnabled() and not panel.explain_progress.isVisible()
    assert panel.explain.isEnabled() and panel.explain.isChecked()


def test_panel_sign_off_carries_saved_measurements(window, qtbot):
    run_ai(window, qtbot)
    panel = window.review_panel
    panel.reviewer.setText("dr m")
    key = study_key(window.model.volume)
    ruler = {"id": "m1", "kind": "ruler", "points_lps": [[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], "values": {"length_mm": 5.0}}
    panel.store.save_measurements(key, [ruler], "dr m")
    for f in panel.session.pending():
        if f.status is FindingStatus.NEEDS_REVIEW:
            panel.select(f.id)
            with qtbot.waitSignal(panel.decision_saved):
                qtbot.mouseClick(panel.accept_b, Qt.LeftButton)
    panel.confirm_all_positives()
    with qtbot.waitSignal(panel.signed_off):
        qtbot.mouseClick(panel.signoff_b, Qt.LeftButton)
    row = next(r for r in reversed(ReviewStore().audit_rows()) if r[3] == "sign-off")
    assert json.loads(row[4])["measurements"] == [ruler]  # the panel signs off through StudySession
    assert panel.study.as_dict()["measurements"] == [ruler] and panel.state_label.text().startswith("Signed off by dr m")
