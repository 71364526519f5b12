"""radreview's user-writable folders (platformdirs), one place for every package to ask.

Everything radreview writes on its own (quantized and user-added model packages, review and
session stores, caches, logs) goes under the user data folder, never into the installed
package (which may be read-only, e.g. a system-wide wheel install).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_data_dir"]


def user_data_dir() -> Path:
    """radreview's user data folder: ``$RADREVIEW_DATA_DIR``, else platformdirs'
    ``user_data_dir("radreview")`` (``~/.local/share/radreview`` on Linux). Not created here.
    """
    if os.environ.get("RADREVIEW_DATA_DIR"):
        return Path(os.environ["RADREVIEW_DATA_DIR"])
    import platformdirs

    return Path(platformdirs.user_data_dir("radreview", appauthor=False))
