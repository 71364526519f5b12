"""``radreview`` command line: one module per sub-command (pydicom's ``cli/main.py`` pattern).

Each public module in this package defines ``add_subparser(subparsers)``, which adds its
parser and sets ``func`` with ``set_defaults``; :func:`build_parser` discovers the modules, so a
new sub-command is one new module and touches nothing else.

Contract (scripts rely on it): exit status 0 on success; otherwise non-zero with one line
``radreview: error: ...`` on stderr. A domain error (:class:`CliError`, or any
:class:`radreview.studies.errors.RadreviewError` a command lets through) exits 2. An unexpected
exception exits 3 with the same one line plus the path of the log file that holds the full
traceback; a bare traceback is never printed. Qt and VTK are imported only by the commands that
draw (``open``, ``demo``, ``snapshot``), inside their functions; an import-linter contract keeps
the other modules free of them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path
from radreview.studies.errors import RadreviewError

__all__ = ["main", "build_parser", "CliError", "RadreviewError", "log_dir"]

# No network at run time: ONNX Runtime's telemetry reads this before onnxruntime is imported.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


class CliError(RadreviewError):
    """A user-facing failure raised by a command module: printed as one line
    ``radreview: error: <message>``, exit status 2 (as every :class:`RadreviewError`)."""


def _commands() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def build_parser() -> argparse.ArgumentParser:
    """The ``radreview`` parser with every sub-command module of this package registered."""
    p = argparse.ArgumentParser(prog="radreview", description="Review medical-imaging AI output on CT/MR studies.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in _commands():
        importlib.import_module(f"{__name__}.{name}").add_subparser(sub)
    return p


def log_dir() -> Path:
    """Where unexpected errors are logged: ``$RADREVIEW_LOG_DIR``, else the user log folder (platformdirs)."""
    if os.environ.get("RADREVIEW_LOG_DIR"):
        return Path(os.environ["RADREVIEW_LOG_DIR"])
    import platformdirs

    return Path(platformdirs.user_log_dir("radreview", appauthor=False))


def _log_unexpected(argv: list[str] | None) -> str:
    try:
        folder = log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = folder / f"error-{stamp}-{os.getpid()}.log"
        cmd = " ".join(argv if argv is not None else sys.argv[1:])
        path.write_text(f"radreview {cmd}\n\n{traceback.format_exc()}")
        return str(path)
    except OSError as exc:  # the log folder itself is unusable: say so, still on one line
        return f"nowhere: could not write a log file: {exc}"


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; returns the exit status (0 ok, 2 domain error, 3 unexpected, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RadreviewError as exc:  # CliError and every domain error (bad input, refused action)
        msg = " ".join(str(exc).splitlines()) or type(exc).__name__
        print(f"radreview: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract: never a bare traceback
        where = _log_unexpected(argv)
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"radreview: error: unexpected {type(exc).__name__}: {msg} (full traceback in {where})", file=sys.stderr)
        return 3
