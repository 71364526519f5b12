"""``radreview session read DB --reader R``: the reading GUI (imports Qt; loaded only by that command)."""

from __future__ import annotations

import os
import sys

from . import CliError


def run(args) -> int:
    from radreview.review.sessions import ReadingSession, SessionDBError, SessionError

    try:
        s = ReadingSession(args.db)
        s.worklist(args.reader)
        s.close()
    except (SessionDBError, SessionError) as exc:
        raise CliError(str(exc)) from None
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("QT_QPA_PLATFORM"):
        from radreview.viewer.xvfb import ensure_display

        if ensure_display():
            print(f"radreview: no display set; running on a virtual X display {os.environ['DISPLAY']}", file=sys.stderr)
    try:
        from PySide6.QtCore import QTimer

        from radreview.viewer._qt.app import make_app
        from radreview.viewer._qt.session_panel import SessionWindow
    except ImportError as exc:
        raise CliError(f"session read needs the 'gui' extra (pip install 'radreview[gui]'): {exc}") from None

    app = make_app()
    win = SessionWindow(args.db, args.reader)
    win.show()
    nxt = win.session.next_case(args.reader)
    if args.quit_after_ms is not None:  # tests: quit that long after the first case is on screen
        if nxt:
            win.case_loaded.connect(lambda _c: QTimer.singleShot(args.quit_after_ms, app.quit))
        else:
            QTimer.singleShot(args.quit_after_ms, app.quit)
    if nxt:
        win.open_case(nxt)
    return app.exec()
