"""``radreview snapshot PATH --out FILE.png``: render offscreen (imports VTK when run)."""

from __future__ import annotations

import math
import os
import sys

from . import CliError


def _parse_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.lower().split("x")
    try:
        w, h = (int(v) for v in parts)
    except ValueError:
        raise CliError(f"--size takes WxH in pixels (e.g. 1200x800), got {text!r}") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise CliError(f"--size {text}: width and height must be 16-8192 pixels")
    return w, h


def _parse_cursor(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        cursor = [float(v) for v in text.split(",")]
    except ValueError:
        raise CliError(f"--cursor takes x,y,z in LPS mm, got {text!r}") from None
    if len(cursor) != 3 or not all(math.isfinite(v) for v in cursor):
        raise CliError(f"--cursor takes three finite numbers x,y,z in LPS mm, got {text!r}")
    return cursor


def _snapshot(args) -> int:
    from radreview.studies import LoadError, open_volume

    if args.layout not in ("2x2", "1x3", "axial", "coronal", "sagittal", "3d"):
        raise CliError(f"unknown layout {args.layout!r}")
    from radreview.viewer.model import volume_render_presets

    known3d = volume_render_presets()
    if args.preset3d not in known3d:
        raise CliError(f"unknown --preset3d {args.preset3d!r} (known: {', '.join(known3d)})")
    size = _parse_size(args.size)
    cursor = _parse_cursor(args.cursor)
    out = os.path.abspath(args.out)
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise CliError(f"{args.out}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CliError(f"{args.out}: output folder {folder} is not writable")
    try:
        import vtk  # noqa: F401 - the 'gui' extra
    except ImportError as exc:
        raise CliError(f"snapshot needs the 'gui' extra (pip install 'radreview[gui]'): {exc}") from None
    try:
        vol = open_volume(args.path)
    except (FileNotFoundError, LoadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    for w in vol.warnings:
        if "image volumes found" in w:  # which series was used, when there are several
            print(f"radreview: warning: {w}", file=sys.stderr)
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
    snapshot(model, args.out, layout=args.layout, size=size, preset3d=args.preset3d, cursor_lps=cursor)
    if not os.path.isfile(out) or os.path.getsize(out) == 0:
        raise CliError(f"{args.out}: the snapshot was not written")
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
