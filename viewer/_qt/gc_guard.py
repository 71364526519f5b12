"""Garbage collection on the GUI thread only.

Python's cyclic garbage collector runs in whichever thread happens to allocate when a threshold
is crossed; if that is a worker thread (superqt ``thread_worker``, the loaders) and the garbage
holds Qt or VTK objects (a closed panel, a replaced overlay), their destructors run off the GUI
thread and can crash the process (seen here: a segmentation fault "Garbage-collecting" inside a
scan worker). The remedy pyqtgraph ships as ``pyqtgraph.util.garbage_collector``: disable the
automatic collector and collect from a timer on the GUI thread, by generation, with the same
thresholds the automatic collector uses.
"""

from __future__ import annotations

import gc

__all__ = ["install_gui_thread_gc"]

_timer = None


def install_gui_thread_gc(interval_ms: int = 500) -> None:
    """Disable automatic cyclic GC and run it on a GUI-thread QTimer every ``interval_ms``
    (idempotent; call after the QApplication exists, from the GUI thread)."""
    global _timer
    if _timer is not None:
        return
    from PySide6.QtCore import QCoreApplication, QTimer

    app = QCoreApplication.instance()
    if app is None:
        return
    gc.disable()
    t0, t1, t2 = gc.get_threshold()

    def _collect() -> None:
        n0, n1, n2 = gc.get_count()
        if n0 > t0:
            gc.collect(2 if n2 > t2 else 1 if n1 > t1 else 0)

    _timer = QTimer(app)
    _timer.timeout.connect(_collect)
    _timer.start(interval_ms)
