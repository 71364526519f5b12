"""``radreview models list|verify|quantize|bench``."""

from __future__ import annotations

import json
import os
import sys

from . import CliError


def _models(args) -> int:
    from radreview.inference.cli_ops import models_bench, models_list, models_quantize, models_verify
    from radreview.inference.package import PackageError

    try:
        if args.models_cmd == "list":
            items = models_list()
            if args.json:
                print(json.dumps(items))
            else:
                for m in items:
                    print(f"{m['id']} {m['version']}  {m['task']}  {'/'.join(m['modality'])}  labels: {', '.join(m['labels'])}"
                          f"  [{m['source']}: {m['path']}]")
            return 0
        if args.models_cmd == "verify":
            problems = models_verify(args.id)
            if problems:
                raise CliError("; ".join(problems))
            print(f"{args.id}: schema and SHA-256 of every file OK")
            return 0
        if args.models_cmd == "quantize":
            rec = models_quantize(args.id, args.calibration, threads=args.threads)
            print(json.dumps(rec, indent=1))
            from radreview.inference.package import load_package

            print(f"quantized package written to {load_package(args.id).root}", file=sys.stderr)
            return 0
        if args.models_cmd == "bench":
            print(json.dumps(models_bench(args.id, threads=args.threads, repeats=args.repeats), indent=1))
            return 0
    except PackageError as exc:
        raise CliError(str(exc)) from None
    return 1


def add_subparser(sub) -> None:
    m = sub.add_parser("models", help="list, verify, quantize and benchmark model packages")
    m.set_defaults(func=_models)
    msub = m.add_subparsers(dest="models_cmd", required=True)
    ml = msub.add_parser("list")
    ml.add_argument("--json", action="store_true")
    mv = msub.add_parser("verify")
    mv.add_argument("id")
    mq = msub.add_parser("quantize", help="static QDQ INT8 from real calibration volumes")
    mq.add_argument("id")
    mq.add_argument("--calibration", nargs="+", required=True, metavar="PATH")
    mq.add_argument("--threads", type=int, default=2)
    mb = msub.add_parser("bench", help="FP32 vs INT8 latency and peak RSS")
    mb.add_argument("id")
    mb.add_argument("--threads", type=int, default=2)
    mb.add_argument("--repeats", type=int, default=10)
