"""The PACS tab against the loopback Orthanc: search, retrieve with the middle slice shown first,
open as a study, audit rows, and "Send results to PACS" (SR of the open study)."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt

from radreview.review.findings import Finding
from radreview.review.store import ReviewStore
from radreview.studies.pacs import PacsNode, PacsSettings, find_series, save_settings
from tests.pacs_server import SCP_AET, orthanc  # noqa: F401


def test_search_retrieve_open_and_send(qtbot, orthanc, tmp_path, monkeypatch):
    srv, info = orthanc
    node = PacsNode("loopback", "dimse", ae_title=srv.aet, host="127.0.0.1", port=srv.dicom_port, calling_ae=SCP_AET, timeout=5)
    save_settings(PacsSettings(nodes={"loopback": node}, scp_port=info["scp_port"]), tmp_path / "pacs.json")
    monkeypatch.setenv("RADREVIEW_PACS_CONFIG", str(tmp_path / "pacs.json"))
    monkeypatch.setenv("RADREVIEW_CACHE_DIR", str(tmp_path / "cache"))
    from radreview.viewer._qt.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1600, 1000)
    win.show()
    qtbot.waitExposed(win)
    panel = win.pacs_panel
    assert win.browser_tabs.tabText(1) == "PACS" and panel.node_box.currentText() == "loopback"
    panel.date_from.setText("20070101")
    panel.date_to.setText("20071231")
    with qtbot.waitSignal(panel.searched, timeout=20000) as found:
        qtbot.mouseClick(panel.search_button, Qt.LeftButton)
    assert found.args == [1] and panel.studies.item(0, 6).text() == info["chest"][0]
    panel.studies.selectRow(0)
    qtbot.waitUntil(lambda: panel.series.rowCount() == 1, timeout=20000)
    assert panel.series.item(0, 2).text() == "30"
    shown, loaded = [], []
    win.first_image_shown.connect(lambda: shown.append((time.perf_counter(), win.model.volume.array.shape)))
    win.volume_loaded.connect(lambda v: loaded.append(v))
    t0 = time.perf_counter()
    qtbot.mouseClick(panel.retrieve_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: bool(loaded), timeout=60000)
    assert shown and shown[0][1] == (1, 512, 512)  # the middle slice, before the series
    assert shown[0][0] - t0 < 5.0 and panel.first_image_seconds is not None
    assert loaded[0].array.shape == (30, 512, 512) and loaded[0].info.study_instance_uid == info["chest"][0]
    assert len(list((tmp_path / "cache").rglob("*.dcm"))) == 30
    rows = ReviewStore().audit_rows()
    assert [r[3] for r in rows if r[3] in ("pacs-retrieve", "open")] == ["pacs-retrieve", "open"]
    assert all(info["chest"][0] in r[4] for r in rows if r[3] in ("pacs-retrieve", "open"))

    # results back: findings stored for the open study, SR built and C-STOREd
    st = ReviewStore()
    key = f"study:{info['chest'][0]}"
    cand = Finding("ct-nodule-2p5d:candidate-1", "ct-nodule-2p5d", "candidate", "candidate-1", 0.4, 0.5,
                   {"probability": 0.45, "center_lps": [0.0, 0.0, -150.0], "size_mm": 9.0})
    st.save_findings(key, [cand.as_dict()])
    st.record_decision(key, cand.id, "accept", "Doe^Jane")
    with qtbot.waitSignal(panel.sent, timeout=30000) as sent:
        qtbot.mouseClick(panel.send_button, Qt.LeftButton)
    assert len(sent.args[0]) == 1
    assert "SR" in {s.modality for s in find_series(node, info["chest"][0])}
    win.close()
