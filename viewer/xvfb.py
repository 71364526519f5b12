"""Start a private Xvfb when no X display is set (CLI ``snapshot`` and the test command)."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import time

from radreview.studies.parallel import die_with_parent

__all__ = ["ensure_display", "stop_display"]

_started: list[subprocess.Popen] = []


def _die_with_parent() -> None:  # runs in the child between fork and exec: no imports here
    die_with_parent(signal.SIGTERM)


@atexit.register
def stop_display() -> None:
    """Stop the Xvfb this process started, if any (also at exit, and when this process dies)."""
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def ensure_display() -> str | None:
    """Make sure ``DISPLAY`` points at an X server; start ``Xvfb`` if needed.

    Returns the display name, or ``None`` when there is none and Xvfb is not installed (VTK
    then fails with its own message). The server runs with ``-terminate``: it exits when its
    last client (this process) disconnects, after Qt/VTK have closed their connections; it is
    also stopped at exit and, through ``PR_SET_PDEATHSIG``, when this process is killed (a
    failed ``snapshot`` never leaves it running).
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
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        for _ in range(50):
            if os.path.exists(f"/tmp/.X11-unix/X{num}") or proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            _started.append(proc)
            os.environ["DISPLAY"] = f":{num}"
            return os.environ["DISPLAY"]
    return None
