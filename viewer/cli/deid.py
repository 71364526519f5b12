"""``radreview deid IN... --out DIR [--keep-dates] [--key KEY] [--json]``: PS3.15 Annex E export."""

from __future__ import annotations

import json
import sys

from . import CliError


def _deid(args) -> int:
    from radreview.studies.deid import DeidOptions, deidentify_files

    try:
        rep = deidentify_files(args.inputs, args.out, DeidOptions(keep_dates=args.keep_dates, key=args.key or ""))
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    if not rep.written:
        raise CliError(f"no DICOM file found in {', '.join(args.inputs)} ({len(rep.skipped)} skipped)")
    for w in rep.warnings:
        print(f"radreview: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(rep.as_dict(), indent=1))
    else:
        print(f"{len(rep.written)} file(s) of {rep.studies} study(ies) de-identified into {args.out} "
              f"({'dates kept' if args.keep_dates else 'dates shifted'}; {len(rep.skipped)} skipped, "
              f"{len(rep.warnings)} warning(s))")
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser("deid", help="de-identified copy (DICOM PS3.15 Annex E Basic Profile)")
    p.add_argument("inputs", nargs="+", metavar="IN", help="DICOM files or folders")
    p.add_argument("--out", required=True)
    p.add_argument("--keep-dates", action="store_true", help="Full Dates option (default: dates shifted)")
    p.add_argument("--key", default=None, help="secret for consistent UIDs/pseudonyms across runs (default: random)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_deid)
