"""Start a private Xvfb when no X display is set (CLI ``snapshot`` and the test command)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

__all__ = ["ensure_display"]


def ensure_display() -> str | None:
    """Make sure ``DISPLAY`` points at an X server; start ``Xvfb`` if needed.

    Returns the display name, or ``None`` when there is none and Xvfb is not installed (VTK
    then fails with its own message). The server runs with ``-terminate``: it exits when its
    last client (this process) disconnects, after Qt/VTK have closed their connections.
    """
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"]
    exe = shutil.which("Xvfb")
    if not exe:
        return None
    for num in range(90, 140):
        if os.path.exists(f"/tmp/.X{num}-lock"):
            continue
        proc = subprocess.Popen([exe, f":{num}", "-screen", "0", "1920x1200x24", "-nolisten", "tcp", "-terminate"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if os.path.exists(f"/tmp/.X11-unix/X{num}") or proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.environ["DISPLAY"] = f":{num}"
            return os.environ["DISPLAY"]
    return None
