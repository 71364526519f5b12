from tests.qt_fixtures import require_display, window  # noqa: F401

require_display()
