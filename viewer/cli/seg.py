"""``radreview seg export SERIES LABELMAP --out FILE.dcm [--names a,b]`` and
``radreview seg import FILE.dcm --out labels.nii.gz [--image STUDY]``."""

from __future__ import annotations

import json
import os

from . import CliError


def _export(args) -> int:
    from radreview.studies import LoadError, open_volume
    from radreview.studies.labels import LabelImportError, load_reference
    from radreview.studies.seg import SegExportError, export_seg

    for p in (args.series, args.labelmap):
        if not os.path.exists(p):
            raise CliError(f"{p}: no such file or folder")
    try:
        vol = open_volume(args.series)
        lab = load_reference(args.labelmap, vol, names=args.names, study_path=args.series)
        out = export_seg(vol, lab.array, lab.names, args.out)
    except (LoadError, LabelImportError, SegExportError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"out": str(out), "segments": [{"value": v, "name": n} for v, n in sorted(lab.names.items())],
                      "warnings": lab.warnings}))
    return 0


def _import(args) -> int:
    import numpy as np

    from radreview.studies import LoadError, open_volume, save_label_file
    from radreview.studies.labels import LabelImportError
    from radreview.studies.seg import seg_geometry_volume

    if not os.path.exists(args.file):
        raise CliError(f"{args.file}: no such file")
    try:
        vol = open_volume(args.image) if args.image else seg_geometry_volume(args.file)
        from radreview.studies.seg import import_seg

        ref = import_seg(args.file, vol)
        tmp = f"{args.out}.{os.getpid()}.tmp.nii.gz"
        try:
            save_label_file(ref.array.astype(np.uint16), vol, tmp)
            os.replace(tmp, args.out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        side = {str(v): n for v, n in sorted(ref.names.items())}
        _write_sidecar(args.out, side)
    except (LoadError, LabelImportError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"out": str(args.out), "labels": side, "warnings": ref.warnings}))
    return 0


def _write_sidecar(label_path: str, names: dict) -> None:
    """``labels.nii.gz`` -> ``labels.json`` beside it: ``{"1": "liver", ...}`` (read back by compare)."""
    p = str(label_path)
    for suf in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"):
        if p.lower().endswith(suf):
            p = p[: -len(suf)]
            break
    with open(p + ".json", "w") as fh:
        json.dump(names, fh, indent=1)


def add_subparser(sub) -> None:
    p = sub.add_parser("seg", help="DICOM SEG export (label map -> SEG) and import (SEG -> label map)")
    s = p.add_subparsers(dest="seg_command", required=True)
    e = s.add_parser("export", help="write a label map on a DICOM series as a DICOM SEG referencing it")
    e.add_argument("series", help="the DICOM series (folder) the label map is on")
    e.add_argument("labelmap", help="label map file (NIfTI/NRRD/MHA) on the series' grid (or resampled to it)")
    e.add_argument("--out", required=True, help="the SEG file to write (.dcm)")
    e.add_argument("--names", default=None, help="comma-separated segment names, one per label value ascending "
                                                 "(default: sidecar JSON, else 'label N')")
    e.set_defaults(func=_export)
    i = s.add_parser("import", help="read a DICOM SEG into a label map (+ a names JSON beside it)")
    i.add_argument("file", help="the DICOM SEG file")
    i.add_argument("--out", required=True, help="label map to write (.nii.gz, .nrrd, .mha)")
    i.add_argument("--image", default=None, help="study whose grid to use (default: the SEG's own frames)")
    i.set_defaults(func=_import)
