"""Registered docks of the workstation window (issue 10: docks are registered, not hand-wired).

A dock is declared once by a :class:`DockSpec`: its name, title, dock area, the panel factory
and where it sits (tabbed with another dock, hidden until needed). :class:`MainWindow` builds
every registered dock in ``order`` with :func:`install_docks`; a new panel is one factory plus
one :func:`register_dock` call, as napari registers its dock widgets and 3D Slicer its module
widgets. The factory builds the panel from the window's GUI-free model and the panels built
before it, wires their signals, and returns the widget to dock. Each built dock is reachable as
``window.docks[name]`` (and ``window.<name>_dock`` for the existing callers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDockWidget, QWidget

__all__ = ["DockSpec", "register_dock", "registered_docks", "install_docks"]


@dataclass(frozen=True)
class DockSpec:
    """One dock: ``build(window) -> QWidget`` makes and wires its panel.

    ``area``: Qt dock area; ``order``: build order (a factory may use panels of lower order);
    ``tabify_with``: name of a dock to share a tab group with (the first of the group stays in
    front); ``shown``: visible when the window opens; ``after(window, dock)``: wiring that
    needs the dock itself (e.g. a panel that shows its own dock).
    """

    name: str
    title: str
    area: Qt.DockWidgetArea
    build: Callable[[object], QWidget]
    order: int = 100
    tabify_with: str | None = None
    shown: bool = True
    after: Callable[[object, QDockWidget], None] | None = None


_DOCKS: dict[str, DockSpec] = {}


def register_dock(spec: DockSpec) -> DockSpec:
    """Add ``spec`` to the registry (a later spec of the same name replaces the earlier one)."""
    _DOCKS[spec.name] = spec
    return spec


def registered_docks() -> list[DockSpec]:
    """The registered specs in build order (``order``, then name)."""
    _register_builtin()
    return sorted(_DOCKS.values(), key=lambda s: (s.order, s.name))


def install_docks(window) -> dict[str, QDockWidget]:
    """Build every registered dock on ``window`` (a :class:`MainWindow`) and return them by name."""
    docks: dict[str, QDockWidget] = {}
    window.docks = docks
    for spec in registered_docks():
        widget = spec.build(window)
        dock = QDockWidget(spec.title, window)
        dock.setObjectName(f"dock-{spec.name}")  # saveState()/restoreState() need names
        dock.setWidget(widget)
        window.addDockWidget(spec.area, dock)
        dock.setVisible(spec.shown)
        if spec.tabify_with in docks:
            window.tabifyDockWidget(docks[spec.tabify_with], dock)
            docks[spec.tabify_with].raise_()
        docks[spec.name] = dock
        setattr(window, f"{spec.name}_dock", dock)
        if spec.after is not None:
            spec.after(window, dock)
    return docks


# ---------------------------------------------------------------------- built-in panels
def _studies(win) -> QWidget:
    from .main_window import SeriesBrowser
    from .pacs_panel import pacs_tabs

    win.browser = SeriesBrowser()
    win.browser.series_chosen.connect(win.load_entry)
    return pacs_tabs(win, win.browser)  # "Local" | "PACS" tabs


def _ai(win) -> QWidget:
    from .ai_panel import AIPanel

    win.ai_panel = AIPanel(win.model, win.view3d)
    pacs = getattr(win, "pacs_panel", None)
    if pacs is not None:  # "Send results" sends the explanation shown last
        win.ai_panel.explanation_ready.connect(lambda ex: setattr(pacs, "explanation", ex))
    return win.ai_panel


def _review(win) -> QWidget:
    from .review_panel import ReviewPanel

    win.review_panel = ReviewPanel(win.model)
    win.ai_panel.review_panel = win.review_panel
    win.review_panel.pending_changed.connect(win._pending_changed)
    win.review_panel.run_restored.connect(win._run_restored)
    return win.review_panel


def _measure(win) -> QWidget:
    from .measure_panel import MeasurePanel

    win.measure_panel = MeasurePanel(win.model, win.views)
    win.measure_panel.store = win.review_panel.store
    win.measure_panel.reviewer = lambda: win.review_panel.reviewer.text()
    win.ai_panel.measure_panel = win.measure_panel
    return win.measure_panel


def _shadow(win) -> QWidget:
    from .shadow_panel import ShadowPanel

    win.shadow_panel = ShadowPanel()
    win.shadow_panel.summary_ready.connect(lambda s: win.browser.set_shadow_state(s["series_state"]))
    return win.shadow_panel


def _edit(win) -> QWidget:
    from .compare_panel import install_edit

    return install_edit(win)


def _compare(win) -> QWidget:
    from .compare_panel import install_compare

    return install_compare(win)


def _compare_dock(win, dock: QDockWidget) -> None:
    win.compare_panel.dock = dock


_BUILTIN_DONE = False


def _register_builtin() -> None:
    global _BUILTIN_DONE
    if _BUILTIN_DONE:
        return
    _BUILTIN_DONE = True
    for spec in (
        DockSpec("studies", "Studies", Qt.LeftDockWidgetArea, _studies, order=10),
        DockSpec("ai", "AI", Qt.RightDockWidgetArea, _ai, order=20),
        DockSpec("review", "Review", Qt.RightDockWidgetArea, _review, order=30),
        DockSpec("measure", "Measurements", Qt.RightDockWidgetArea, _measure, order=40, tabify_with="review"),
        # read-only: a shadow deployment's queue, failures and latest report (no study's AI answer)
        DockSpec("shadow", "Shadow", Qt.RightDockWidgetArea, _shadow, order=45, tabify_with="review"),
        # under the study browser, which needs little height
        DockSpec("edit", "Edit", Qt.LeftDockWidgetArea, _edit, order=50),
        # the metrics table is wide (14 columns); the review table is the product's main panel, so
        # the Compare dock takes its height only when there is something to compare
        DockSpec("compare", "Compare", Qt.BottomDockWidgetArea, _compare, order=60, shown=False,
                 after=_compare_dock),
    ):
        _DOCKS.setdefault(spec.name, spec)
