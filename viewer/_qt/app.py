"""Application entry point for ``radreview open``/``demo``."""

from __future__ import annotations

import sys

__all__ = ["run_app", "make_app"]


def make_app():
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("radreview")
    app.setOrganizationName("radreview")
    return app


def run_app(path: str, layout: str = "2x2", preset: str | None = None, quit_after_ms: int | None = None) -> int:
    """Show the main window on ``path`` and run the Qt event loop; returns the exit status."""
    from PySide6.QtCore import QTimer

    from .main_window import MainWindow

    app = make_app()
    win = MainWindow()
    win.set_layout(layout)
    if preset:
        win.volume_loaded.connect(lambda _v: win.model.apply_preset(preset))
    win.show()
    from radreview.studies.parallel import warm_pool

    # the decode pool starts after the first study is shown (warming it during the first scan
    # would slow that scan on 2 cores), so the next study opened is decoded in parallel at once
    win.first_image_shown.connect(warm_pool)
    win.open_path(path)
    status = {"code": 0}

    def failed(msg):
        print(f"radreview: error: {msg}", file=sys.stderr)
        status["code"] = 2

    win.load_failed.connect(failed)
    if quit_after_ms is not None:
        QTimer.singleShot(quit_after_ms, app.quit)
    code = app.exec()
    return status["code"] or code
