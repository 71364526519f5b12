"""``radreview info PATH [--json]``: the studies and series under a folder, DICOMDIR, zip or image file."""

from __future__ import annotations

import json
import math
import os

from . import CliError


def json_safe(value):
    """``value`` with every NaN/Inf float replaced by ``None`` (JSON has no NaN, RFC 8259 6)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _info(args) -> int:
    from radreview.studies import is_image_file, load_image_file, scan

    path = args.path
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file or folder")
    if is_image_file(path):
        try:
            vol = load_image_file(path)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        entry = {
            "study_instance_uid": "", "series_instance_uid": "", "modality": vol.info.modality,
            "description": vol.info.series_description, "sop_class": "", "kind": "volume", "files": 1,
            **vol.geometry_dict(), "warnings": vol.warnings,
        }
        data = {"series": [entry], "skipped": []}
    else:
        result = scan(path)
        try:
            data = result.as_dict()
        finally:
            result.cleanup()
    if args.json:
        print(json.dumps(json_safe(data), allow_nan=False))
        if not data["series"]:
            raise CliError(f"{path}: no DICOM series found")
        return 0
    for s in data["series"]:
        geo = ""
        if "size" in s:
            geo = "  {}x{}x{}  spacing {}".format(*s["size"], "x".join(f"{v:.4g}" for v in s["spacing"]))
        stack = f" [{s['stack']}]" if s.get("stack") else ""
        print(f"{s['modality'] or '??':3} {s['description'] or '(no description)'}{stack}  "
              f"{s['files']} file(s)  {s.get('sop_class_name') or s['sop_class']}{geo}")
        print(f"    study {s['study_instance_uid']}\n    series {s['series_instance_uid']}")
        for w in s["warnings"]:
            print(f"    warning: {w}")
    if data["skipped"]:
        print(f"skipped {len(data['skipped'])} file(s):")
        for sk in data["skipped"]:
            print(f"    {sk['path']}: {sk['reason']}")
    if not data["series"]:
        raise CliError(f"{path}: no DICOM series found")
    return 0


def add_subparser(sub) -> None:
    i = sub.add_parser("info", help="list the studies and series found under PATH")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=_info)
