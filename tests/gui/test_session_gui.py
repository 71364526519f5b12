"""The reading-session window (issue 8): no leakage while blind (every visible widget's text and
tooltip, and the views' pixels, equal those of the same session without AI, while the AI has
really run ahead on the worker), then lock -> reveal -> revision -> final in the GUI.

Screenshots of the blind read and of the reveal are kept in ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import (QAbstractButton, QComboBox, QGroupBox, QLabel, QLineEdit, QPlainTextEdit, QTableWidget,
                               QWidget)

from radreview.review.sessions import ReadingSession, read_cases_csv, read_truth_csv
from radreview.review.sessions.demo import build_demo

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
MODEL = "ct-nodule-2p5d"


@pytest.fixture(scope="module")
def two_cases(tmp_path_factory, data_dir):
    """Two demo cases (real chest CT slabs; the seed puts a pasted LIDC nodule in one)."""
    d = tmp_path_factory.mktemp("gui_demo")
    build_demo(d / "all.db", data_dir=data_dir, readers=["a"], n_cases=2, seed=11, folder=d / "cases")
    return d / "cases" / "cases.csv", d / "cases" / "truth.csv"


def visible_texts(win) -> list[str]:
    """Every string a reader can see or hover: window title, labels, buttons, fields, tables
    (cells and headers), group titles, tooltips, the status bar."""
    out = [win.windowTitle(), win.statusBar().currentMessage()]
    for w in win.findChildren(QWidget):
        if not w.isVisible():
            continue
        out += [w.toolTip(), w.statusTip(), w.windowTitle(), w.accessibleName()]
        if isinstance(w, (QLabel, QAbstractButton, QLineEdit)):
            out.append(w.text())
        if isinstance(w, QLineEdit):
            out.append(w.placeholderText())
        if isinstance(w, QPlainTextEdit):
            out += [w.toPlainText(), w.placeholderText()]
        if isinstance(w, QGroupBox):
            out.append(w.title())
        if isinstance(w, QComboBox):
            out += [w.itemText(i) for i in range(w.count())]
        if isinstance(w, QTableWidget):
            for r in range(w.rowCount()):
                for c in range(w.columnCount()):
                    it = w.item(r, c)
                    if it is not None:
                        out += [it.text(), it.toolTip()]
            for c in range(w.columnCount()):
                h = w.horizontalHeaderItem(c)
                if h is not None:
                    out.append(h.text())
    return [t for t in out if t]


def tokens(texts: list[str]) -> set[str]:
    """Words and numbers as shown (so "0.87" does not match inside "10.875")."""
    return set(re.findall(r"-?\d+(?:\.\d+)?%?|[A-Za-z][\w-]*", "\n".join(texts)))


def ai_needles(ai: dict) -> list[str]:
    """Ways an AI value could be written on screen."""
    p = ai["probability"]
    out = [MODEL, "probability", "candidate", f"{p:.2f}", f"{p:.3f}", f"{100 * p:.0f}%", f"{100 * p:.1f}"]
    for f in ai["findings"]:
        out += [f"{v:.1f}" for v in f["center_lps"]] + [f"{f['size_mm']:.1f}"]
    return out


def open_window(qtbot, db, reader="a", run_ai_ahead=True):
    from radreview.viewer._qt.session_panel import SessionWindow

    win = SessionWindow(str(db), reader, run_ai_ahead=run_ai_ahead)
    qtbot.addWidget(win)
    win.resize(1500, 900)
    win.show()
    qtbot.waitExposed(win)
    return win


def load(qtbot, win, case_id):
    with qtbot.waitSignal(win.case_loaded, timeout=60000):
        win.open_case(case_id)
    qtbot.wait(100)


def blind_steps(qtbot, win, case_id):
    """The same reader actions in both windows: score, a finding at the cursor, a ruler diameter."""
    load(qtbot, win, case_id)
    win.form.score.setValue(63)
    win.model.set_cursor(win.model.volume.center_lps())
    win.form.label_edit.setText("RUL")
    win.form.add_finding_at_cursor()
    # the ruler: a real left-button drag in the axial view measures the finding's diameter
    view = win.views["axial"]
    c = view.rect().center()
    p0, p1 = QPoint(c.x() - 20, c.y()), QPoint(c.x() + 25, c.y() + 10)
    want = float(np.linalg.norm(view.event_lps_index(p1)[0] - view.event_lps_index(p0)[0]))
    win.form.ruler_btn.setChecked(True)
    qtbot.mousePress(view, Qt.LeftButton, pos=p0)
    qtbot.mouseRelease(view, Qt.LeftButton, pos=p1)
    win.form.ruler_btn.setChecked(False)
    assert win.form.findings[0]["diameter_mm"] == pytest.approx(want, abs=0.051) and want > 5
    for v in win.views.values():
        v.render_now()
    qtbot.wait(100)
    return want


def test_blind_read_shows_nothing_of_the_ai_then_reveal(qtbot, tmp_path, two_cases):
    from radreview.viewer._qt.session_panel import BANNER_BLIND, BANNER_REVEALED

    cases_csv, truth_csv = two_cases
    cases = read_cases_csv(cases_csv)
    truth, lesions = read_truth_csv(truth_csv)
    ai_db, plain_db = tmp_path / "ai.db", tmp_path / "plain.db"
    ReadingSession.create(ai_db, cases, ["a"], "sequential", truth=truth, lesions=lesions, seed=4).close()
    ReadingSession.create(plain_db, cases, ["a"], "sequential", truth=truth, lesions=lesions, seed=4, models=[]).close()
    win = open_window(qtbot, ai_db)
    case = win.session.worklist("a")[0]
    ruler_mm = blind_steps(qtbot, win, case)
    # the AI really ran ahead on the worker, for every case, into the store
    qtbot.waitUntil(win.ai_ahead_done, timeout=120000)
    ai_all = win.session.ai_results()
    assert set(ai_all) == {c["case_id"] for c in cases}
    ai = ai_all[case][MODEL]
    qtbot.wait(50)
    assert win.form.banner.text() == BANNER_BLIND and not win.form.ai_box.isVisible()
    texts = visible_texts(win)
    seen = tokens(texts)
    for needle in ai_needles(ai):
        assert needle not in seen, f"AI value {needle!r} visible while blind"
    px = win.view_pixels()
    ARTIFACTS.mkdir(exist_ok=True)
    win.screenshot(str(ARTIFACTS / "session_blind_read.png"))

    plain = open_window(qtbot, plain_db, run_ai_ahead=False)
    blind_steps(qtbot, plain, case)
    assert visible_texts(plain) == texts  # everything visible equals the session without AI
    px0 = plain.view_pixels()
    for plane in px:
        assert px[plane].std() > 10, f"{plane} view is blank"  # the CT is drawn, so equality means something
        assert px[plane].shape == px0[plane].shape and np.array_equal(px[plane], px0[plane]), plane
    plain.close()

    # lock: still blind; Reveal AI enabled only now
    assert not win.form.reveal_btn.isEnabled()
    win.form.lock()
    assert win.session.case_state("a", case) == "unaided locked"
    assert win.form.reveal_btn.isEnabled() and win.form.banner.text() == BANNER_BLIND
    seen = tokens(visible_texts(win))
    assert not any(n in seen for n in ai_needles(ai))
    # reveal: the banner changes and the AI's values appear (so the walk above could have failed)
    win.form.reveal()
    qtbot.wait(50)
    assert win.form.banner.text() == BANNER_REVEALED and win.form.ai_box.isVisible()
    seen = tokens(visible_texts(win))
    assert f"{ai['probability']:.2f}" in seen and MODEL in seen
    # revision: a second finding is marked in the findings list, then the final read
    win.model.set_cursor(win.model.volume.center_lps() + np.array([10.0, 0, 0]))
    win.form.add_finding_at_cursor()
    marks = [win.form.table.item(r, 4).text() for r in range(win.form.table.rowCount())]
    assert marks == ["", "revised after reveal"]
    win.screenshot(str(ARTIFACTS / "session_revealed.png"))
    win.form.score.setValue(80)
    win.form.final()
    reads = {r.phase: r for r in win.session.reads("a", case)}
    assert reads["unaided"].score == 63 and reads["unaided"].findings[0]["diameter_mm"] == pytest.approx(ruler_mm, abs=0.051)
    assert reads["unaided"].findings[0]["label"] == "RUL"
    assert reads["aided"].state == "final" and reads["aided"].score == 80 and len(reads["aided"].findings) == 2
    states = [win.worklist.table.item(r, 2).text() for r in range(win.worklist.table.rowCount())]
    assert states[0] == "done"
    n, problems = win.session.store.verify_audit()
    assert problems == [] and n > 10
    ai_all = win.session.ai_results()
    win.close()
    # concurrent mode: the AI is shown from the start, with its own banner
    from radreview.viewer._qt.session_panel import BANNER_CONCURRENT

    conc = tmp_path / "conc.db"
    s = ReadingSession.create(conc, cases, ["a"], "concurrent", seed=4)
    for cid, res in ai_all.items():
        s.store_ai(cid, MODEL, res[MODEL])
    s.close()
    win = open_window(qtbot, conc, run_ai_ahead=False)
    load(qtbot, win, case)
    assert win.form.banner.text() == BANNER_CONCURRENT and win.form.ai_box.isVisible()
    assert f"{ai['probability']:.2f}" in win.form.ai_text.text()
    assert not win.form.lock_btn.isVisible() and win.form.final_btn.isEnabled()
    win.close()


def test_shadow_window_has_no_reveal_and_resumes(qtbot, tmp_path, two_cases):
    from radreview.viewer._qt.session_panel import BANNER_BLIND

    cases_csv, truth_csv = two_cases
    db = tmp_path / "shadow.db"
    ReadingSession.create(db, read_cases_csv(cases_csv), ["a"], "shadow", seed=2).close()
    win = open_window(qtbot, db, run_ai_ahead=False)
    first = win.session.worklist("a")[0]
    win.worklist.resume.click()
    qtbot.waitUntil(lambda: win.form.case_id == first, timeout=60000)
    assert not win.form.reveal_btn.isVisible() and win.form.banner.text() == BANNER_BLIND
    win.form.score.setValue(20)
    win.form.lock()
    assert win.session.case_state("a", first) == "done"
    win.close()
    # resumed in a new window (another day): the next case is the one not done
    win = open_window(qtbot, db, run_ai_ahead=False)
    assert win.session.next_case("a") == win.session.worklist("a")[1]
    assert win.worklist.summary.text() == "a: 1 of 2 done"
    win.close()


def test_session_read_command_opens_the_worklist(tmp_path, two_cases):
    import subprocess
    import sys

    db = tmp_path / "cmd.db"
    ReadingSession.create(db, read_cases_csv(two_cases[0]), ["a"], "shadow", seed=1, models=[]).close()
    r = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "session", "read", str(db), "--reader", "a",
                        "--quit-after-ms", "200"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    s = ReadingSession(db)
    first = s.worklist("a")[0]
    assert s.case_state("a", first) == "unaided open"  # the GUI opened the reader's first case
    assert [e["kind"] for e in s.events("a", first)] == ["opened"]
    r = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "session", "read", str(db), "--reader", "zz"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no reader 'zz'" in r.stderr
