"""``radreview infer PATH --model ID --out DIR``."""

from __future__ import annotations

import json
import os
import sys

from . import CliError


def _infer(args) -> int:
    from radreview.inference.cli_ops import run_infer
    from radreview.inference.package import PackageError
    from radreview.studies import LoadError

    if not os.path.exists(args.path):
        raise CliError(f"{args.path}: no such file or folder")
    try:
        findings = run_infer(args.path, args.model, args.out, precision=args.precision, threads=args.threads,
                             notify=lambda w: print(f"radreview: warning: {w}", file=sys.stderr))
    except (PackageError, LoadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(findings))
    return 0


def add_subparser(sub) -> None:
    inf = sub.add_parser("infer", help="run a model (any registered task); write findings.json (+ segmentation.nii.gz for segmentation)")
    inf.add_argument("path")
    inf.add_argument("--model", required=True)
    inf.add_argument("--out", required=True)
    inf.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    inf.add_argument("--threads", type=int, default=None)
    inf.set_defaults(func=_infer)
