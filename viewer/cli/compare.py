"""``radreview compare IMAGE --test SEG --reference SEG [--names a,b] --out DIR``."""

from __future__ import annotations

import json
import os

from . import CliError


def _compare(args) -> int:
    from radreview.review.compare_report import CompareError, run_compare
    from radreview.studies import LoadError
    from radreview.studies.labels import LabelImportError

    for p in (args.image, args.test, args.reference):
        if not os.path.exists(p):
            raise CliError(f"{p}: no such file or folder")
    try:
        result = run_compare(args.image, args.test, args.reference, args.out, names=args.names)
    except (FileNotFoundError, LoadError, LabelImportError, CompareError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"out": str(args.out), "seconds": result["seconds"],
                      "labels": [{k: d[k] for k in ("name", "dice", "hd95_mm", "empty")} for d in result["labels"]]}))
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser("compare", help="compare an AI segmentation with a reference: comparison.json, "
                                       "disagreement.nii.gz, report.html")
    p.add_argument("image", help="the study (DICOM folder/zip/DICOMDIR or NIfTI/NRRD/MHA)")
    p.add_argument("--test", required=True, help="AI segmentation: label map, DICOM SEG or RTSTRUCT")
    p.add_argument("--reference", required=True, help="reference segmentation: label map, DICOM SEG or RTSTRUCT")
    p.add_argument("--names", default=None, help="comma-separated names for label maps without a sidecar JSON, "
                                                 "one per foreground value in ascending order")
    p.add_argument("--out", required=True, help="output folder (replaced as a whole on success)")
    p.set_defaults(func=_compare)
