"""Fixtures shared by the GUI and render tests: a real MainWindow on the sample CT.

These tests need an X display; scripts/test.sh starts Xvfb when DISPLAY is unset.
"""

from __future__ import annotations

import os

import pytest


def require_display() -> None:
    if not os.environ.get("DISPLAY"):
        raise pytest.UsageError("GUI/render tests need an X display: run them with scripts/test.sh (starts Xvfb)")


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
