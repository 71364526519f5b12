"""Registered docks (issue 10): the window builds its docks from the registry, and a panel
registered by a plug-in appears without editing MainWindow."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from radreview.viewer._qt import docks
from radreview.viewer._qt.main_window import MainWindow


def test_builtin_docks_come_from_the_registry(qtbot):
    win = MainWindow()
    qtbot.addWidget(win)
    names = [s.name for s in docks.registered_docks()]
    assert names[:4] == ["studies", "ai", "review", "measure"]
    assert set(win.docks) == set(names)
    assert win.docks["ai"].widget() is win.ai_panel
    assert win.docks["review"].widget() is win.review_panel
    assert win.measure_dock is win.docks["measure"]
    assert win.tabifiedDockWidgets(win.docks["review"]) == [win.docks["measure"], win.docks["shadow"]]
    assert win.compare_panel.dock is win.docks["compare"]
    win.show()
    qtbot.waitExposed(win)
    assert not win.docks["compare"].isVisible()  # shown only when there is something to compare
    assert win.docks["review"].isVisible()


def test_a_registered_plugin_dock_appears(qtbot):
    built = []

    def build(win):
        built.append(win)
        return QLabel(f"plug-in on {type(win.model).__name__}")

    docks.register_dock(docks.DockSpec("toy", "Toy", Qt.RightDockWidgetArea, build, order=99))
    try:
        win = MainWindow()
        qtbot.addWidget(win)
        assert built == [win]
        assert win.toy_dock.widget().text() == "plug-in on ViewerModel"
        assert win.docks["toy"].windowTitle() == "Toy"
    finally:
        docks._DOCKS.pop("toy", None)
