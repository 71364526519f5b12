"""The review workflow through the widgets: flag banner, refusal, decisions, sign-off, restore."""

from __future__ import annotations

import json

from PySide6.QtCore import Qt

from radreview.review.findings import study_key
from radreview.review.store import ReviewStore
from tests.qt_fixtures import open_window
from radreview.viewer._qt.review_panel import FLAG_BG, HEATMAP


def run_ai(win, qtbot):
    with qtbot.waitSignal(win.ai_panel.result_ready, timeout=180000) as blocker:
        win.ai_panel.run()
    return blocker.args[0]


def test_flag_refuse_decide_sign_off_restore(window, qtbot, ct_series):
    run = run_ai(window, qtbot)
    panel = window.review_panel
    flagged = [f for f in run.findings if f.needs_review]
    assert flagged, "the sample CT has low-confidence findings"
    # banner names the count; flagged rows are marked
    assert window.banner.isVisible() and f"{len(flagged)} low-confidence" in window.banner.text()
    for r, f in enumerate(panel.findings()):
        assert (panel.table.item(r, 3).text() == "Needs review") == f.needs_review
        if f.needs_review:
            assert panel.table.item(r, 0).background().color() == FLAG_BG
    # the overlay draws flagged labels in their own (hatched) style
    ov = window.model.overlays["ai-segmentation"]
    assert ov.flagged == {s.index for s in run.segmentations["ct-organs-2p5d"].stats
                          if any(f.name == s.name for f in flagged)}
    # sign-off refused while flagged findings lack a decision
    with qtbot.waitSignal(panel.signoff_refused) as refused:
        qtbot.mouseClick(panel.signoff_b, Qt.LeftButton)
    assert sorted(refused.args[0]) == sorted(f.id for f in flagged)
    assert "sign-off refused" in panel.message.text()
    panel.reviewer.setText("dr gui")
    for i, f in enumerate(flagged):
        panel.select(f.id)
        panel.reason.setText("checked on the images")
        with qtbot.waitSignal(panel.decision_saved):
            qtbot.mouseClick(panel.reject_b if i == 0 else panel.accept_b, Qt.LeftButton)
    assert not window.banner.isVisible()
    with qtbot.waitSignal(panel.signed_off):
        qtbot.mouseClick(panel.signoff_b, Qt.LeftButton)
    key = study_key(window.model.volume)
    window.close()
    # reopening the study restores findings, decisions and the sign-off
    win2 = open_window(qtbot, ct_series)
    p2 = win2.review_panel
    assert [f.id for f in p2.findings()] == [f.id for f in run.findings]
    decided = {p2.table.item(r, 0).text(): p2.table.item(r, 4).text() for r in range(p2.table.rowCount())}
    assert decided[flagged[0].id] == "reject" and all(decided[f.id] == "accept" for f in flagged[1:])
    assert "Signed off by dr gui" in p2.message.text()
    store = ReviewStore()
    assert store.verify_audit().ok
    actions = [r[3] for r in store.audit_rows()]
    assert actions.count("decision") == len(flagged) and "sign-off" in actions and "ai-run" in actions
    assert store.decisions(key)[flagged[0].id]["reason"] == "checked on the images"
    win2.close()


def test_threshold_change_is_logged_and_reflags(window, qtbot):
    run_ai(window, qtbot)
    panel = window.review_panel
    panel.reviewer.setText("dr t")
    liver = next(f for f in panel.findings() if f.name == "liver")
    assert not liver.needs_review
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
