"""Fixtures shared by the GUI and render tests: a real MainWindow on the sample CT.

These tests need an X display; scripts/test.sh starts Xvfb when DISPLAY is unset.
"""

from __future__ import annotations

import os

import pytest


def require_display() -> None:
    if not os.environ.get("DISPLAY"):
        raise pytest.UsageError("GUI/render tests need an X display: run them with scripts/test.sh (starts Xvfb)")


def open_window(qtbot, path):
    """A shown MainWindow with ``path`` loaded (waits for ``volume_loaded``)."""
    from radreview.viewer._qt.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1800, 1100)
    win.show()
    qtbot.waitExposed(win)
    with qtbot.waitSignal(win.volume_loaded, timeout=60000):
        win.open_path(str(path))
    qtbot.wait(50)
    return win


@pytest.fixture
def window(qtbot, ct_series):
    win = open_window(qtbot, ct_series)
    yield win
    win.close()


@pytest.fixture
def mr_window(qtbot, data_dir):
    win = open_window(qtbot, data_dir / "mr-brain-label/brain1_image.nrrd")
    yield win
    win.close()
