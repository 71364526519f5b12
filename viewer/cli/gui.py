"""``radreview open PATH`` and ``radreview demo``: the workstation (imports Qt and VTK when run)."""

from __future__ import annotations

import argparse
import os
import sys

from . import CliError


def _demo_path() -> str:
    from radreview.studies.sample import SampleDataError, sample_ct_path

    try:
        return str(sample_ct_path())
    except SampleDataError as exc:
        raise CliError(str(exc)) from None


def _open_gui(path: str, args) -> int:
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("QT_QPA_PLATFORM"):
        from radreview.viewer.xvfb import ensure_display

        if ensure_display():
            print(f"radreview: no display set; running on a virtual X display {os.environ['DISPLAY']}", file=sys.stderr)
    from radreview.viewer._qt.app import run_app

    return run_app(path, layout=args.layout, preset=args.preset, quit_after_ms=args.quit_after_ms)


def _open(args) -> int:
    if not os.path.exists(args.path):
        raise CliError(f"{args.path}: no such file or folder")
    return _open_gui(args.path, args)


def _demo(args) -> int:
    return _open_gui(_demo_path(), args)


def add_subparser(sub) -> None:
    for name in ("open", "demo"):
        o = sub.add_parser(name, help="open the GUI on PATH" if name == "open" else "open the GUI on the sample CT")
        if name == "open":
            o.add_argument("path")
        o.add_argument("--layout", default="2x2", choices=["2x2", "1x3", "axial", "coronal", "sagittal", "3d"])
        o.add_argument("--preset", default=None, help="W/L preset (brain, lung, bone, ...)")
        o.add_argument("--quit-after-ms", type=int, default=None, help=argparse.SUPPRESS)
        o.set_defaults(func=_open if name == "open" else _demo)
