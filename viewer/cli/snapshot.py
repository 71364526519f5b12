"""``radreview snapshot PATH --out FILE.png``: render offscreen (imports VTK when run)."""

from __future__ import annotations

import json
import os
import sys

from . import CliError


def _snapshot(args) -> int:
    from radreview.studies import LoadError, open_volume

    if args.layout not in ("2x2", "1x3", "axial", "coronal", "sagittal", "3d"):
        raise CliError(f"unknown layout {args.layout!r}")
    try:
        vol = open_volume(args.path)
    except (FileNotFoundError, LoadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    from radreview.viewer.xvfb import ensure_display

    ensure_display()
    from radreview.viewer.model import ViewerModel
    from radreview.viewer.render import snapshot

    model = ViewerModel(vol)
    if args.preset:
        try:
            model.apply_preset(args.preset)
        except KeyError as exc:
            raise CliError(str(exc.args[0])) from None
    cursor = None
    if args.cursor:
        cursor = [float(v) for v in args.cursor.split(",")]
        if len(cursor) != 3:
            raise CliError("--cursor takes x,y,z in LPS mm")
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    snapshot(model, args.out, layout=args.layout, size=size, preset3d=args.preset3d, cursor_lps=cursor)
    print(args.out)
    return 0


def add_subparser(sub) -> None:
    s = sub.add_parser("snapshot", help="render offscreen to a PNG")
    s.add_argument("path")
    s.add_argument("--out", required=True)
    s.add_argument("--layout", default="2x2")
    s.add_argument("--preset", default=None, help="W/L preset for the 2-D views")
    s.add_argument("--preset3d", default="bone", help="3D preset: bone, soft tissue, lung")
    s.add_argument("--size", default=None, help="WxH in pixels")
    s.add_argument("--cursor", default=None, help="crosshair at x,y,z (LPS mm)")
    s.set_defaults(func=_snapshot)
