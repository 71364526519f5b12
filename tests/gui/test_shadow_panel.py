"""The read-only Shadow panel and the study browser's shadow marks, on a real chest CT study:
a coordinator opens the ledger, sees counts, failures and the report headline, and the browser
marks each series' job state without any AI answer. The screenshot is kept in
``test-artifacts/`` (git-ignored)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from radreview.review.shadow import ShadowLedger, job_key
from tests.qt_fixtures import open_window

MODEL = "ct-nodule-2p5d"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _uid(folder) -> str:
    return str(pydicom.dcmread(next(iter(sorted(folder.iterdir()))), stop_before_pixels=True).SeriesInstanceUID)


def test_shadow_panel_shows_the_ledger_and_the_browser_marks_series_without_answers(qtbot, data_dir, tmp_path):
    chest = data_dir / "ct-chest-tumor"
    b40, b70 = _uid(chest / "series_B40f"), _uid(chest / "series_B70f")
    led = ShadowLedger(tmp_path / "ledger.db", create=True)
    for uid in (b40, b70):
        led.add_series(uid, "study-1", {"kind": "files", "files": []}, {"modality": "CT", "manufacturer": "SIEMENS"},
                       [(MODEL, "a" * 64, "int8")])
        led.start(job_key(uid, MODEL, "a" * 64, "int8"))
    led.complete(job_key(b40, MODEL, "a" * 64, "int8"), {"probability": 0.9876, "threshold": 0.5, "positive": True})
    led.fail(job_key(b70, MODEL, "a" * 64, "int8"), "damaged study: no slice could be decoded", retry=False)
    led.close()

    win = open_window(qtbot, chest)
    win.docks["shadow"].raise_()
    with qtbot.waitSignal(win.shadow_panel.summary_ready, timeout=30000):
        win.shadow_panel.set_ledger(str(tmp_path / "ledger.db"))
    p = win.shadow_panel
    assert "0 queued, 0 running, 1 done, 1 failed" in p.counts_label.text()
    assert p.failures_table.rowCount() == 1 and "damaged study" in p.failures_table.item(0, 1).text()
    assert p.models_table.item(0, 0).text() == MODEL
    rows = {}
    top = win.browser.topLevelItem(0)
    for j in range(top.childCount()):
        item = top.child(j)
        entry = win.browser.entries[item.data(0, 0x0100)]
        rows[entry.series_instance_uid] = [item.text(c) for c in range(item.columnCount())]
    assert rows[b40][5] == "result stored" and rows[b70][5] == "failed"
    assert not any("0.98" in t or "0.99" in t for r in rows.values() for t in r)  # no AI answer in the browser
    ARTIFACTS.mkdir(exist_ok=True)
    win.grab().save(str(ARTIFACTS / "viewer_shadow_panel.png"))  # the whole window, kept for a person to look at
    win.close()
