from tests.qt_fixtures import mr_window, require_display, window  # noqa: F401

require_display()
