"""GUI fixtures: a real MainWindow on the sample CT (needs an X display; the test command
starts Xvfb when DISPLAY is unset)."""

from __future__ import annotations

import os

import pytest

if not os.environ.get("DISPLAY"):
    raise pytest.UsageError("GUI tests need an X display: run them with scripts/test.sh (starts Xvfb)")


@pytest.fixture
def window(qtbot, ct_series):
    from viewer._qt.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1200, 900)
    win.show()
    qtbot.waitExposed(win)
    with qtbot.waitSignal(win.volume_loaded, timeout=60000):
        win.open_path(str(ct_series))
    qtbot.wait(50)
    yield win
    win.close()
