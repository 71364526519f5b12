"""``radreview review PATH ...``: run the models, record decisions and sign off, headless."""

from __future__ import annotations

import json
import os
import sys

from . import CliError


def _review(args) -> int:
    from radreview.inference.package import PackageError
    from radreview.review.findings import SignOffRefused
    from radreview.review.store import ReviewStore, StoreCorrupt
    from radreview.studies import LoadError, open_volume
    from radreview.viewer.workflow import default_models, open_session, run_models

    if not os.path.exists(args.path):
        raise CliError(f"{args.path}: no such file or folder")
    try:
        vol = open_volume(args.path)
        store = ReviewStore(args.db)
    except (LoadError, ValueError, StoreCorrupt) as exc:
        raise CliError(str(exc)) from None
    models = args.model or default_models(vol)
    run = run_models(vol, models, store, precision=args.precision, threads=args.threads)
    for mid, why in run.refused.items():
        print(f"radreview: model {mid} refused: {why}", file=sys.stderr)
    if not run.findings:
        raise CliError("no findings: no model ran on this study")
    session = open_session(store, vol, run.findings)
    reviewer = args.reviewer or os.environ.get("USER", "")
    for item in args.decide or []:
        if "=" not in item:
            raise CliError(f"--decide takes FINDING=accept|reject|edit, not {item!r}")
        name, decision = item.split("=", 1)
        try:
            ts = session.decide(name, decision, reviewer, args.reason)
        except (KeyError, ValueError) as exc:
            raise CliError(str(exc.args[0] if exc.args else exc)) from None
        print(f"saved: {session.resolve(name).id} = {decision} by {reviewer} at {ts}")
    out = {"study": session.key, "findings": [{**f.as_dict(), "decision": session.decisions.get(f.id, {}).get("decision")}
                                              for f in session.findings.values()]}
    if args.json:
        print(json.dumps(out))
    else:
        for f in session.findings.values():
            flag = "NEEDS REVIEW" if f.needs_review else "ok"
            dec = session.decisions.get(f.id, {}).get("decision", "-")
            conf = "n/a" if f.confidence is None else f"{f.confidence:.3f}"
            print(f"  {f.id:38} confidence {conf:>6} threshold {f.threshold}  {flag:12} decision {dec}")
    if args.sign_off:
        try:
            ts = session.sign_off(reviewer)
        except SignOffRefused as exc:
            lines = "; ".join(f.id for f in exc.pending)
            raise CliError(f"sign-off refused: {len(exc.pending)} flagged finding(s) without a decision: {lines}") from None
        except ValueError as exc:
            raise CliError(str(exc)) from None
        print(f"signed off by {reviewer} at {ts}")
    return 0


def add_subparser(sub) -> None:
    rv = sub.add_parser("review", help="run the models, record decisions and sign off, headless")
    rv.add_argument("path")
    rv.add_argument("--model", action="append", help="model id (repeatable; default: the models that fit the study)")
    rv.add_argument("--reviewer", default=None)
    rv.add_argument("--decide", action="append", metavar="FINDING=accept|reject|edit")
    rv.add_argument("--reason", default=None)
    rv.add_argument("--sign-off", action="store_true")
    rv.add_argument("--json", action="store_true")
    rv.add_argument("--db", default=None, help="review database (default: user data folder or $RADREVIEW_DB)")
    rv.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    rv.add_argument("--threads", type=int, default=None)
    rv.set_defaults(func=_review)
