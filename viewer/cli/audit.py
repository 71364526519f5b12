"""``radreview audit verify [--db FILE]``."""

from __future__ import annotations

import json
import os
import sys

from . import CliError


def _audit(args) -> int:
    from radreview.review.store import ReviewStore, StoreCorrupt

    try:
        store = ReviewStore(args.db)
    except StoreCorrupt as exc:
        raise CliError(str(exc)) from None
    rep = store.verify_audit()
    if not rep.ok:
        raise CliError(f"audit log of {store.path} FAILED verification ({rep.rows} rows): " + "; ".join(rep.problems))
    print(f"audit log of {store.path}: {rep.rows} rows, hash chain intact")
    return 0


def add_subparser(sub) -> None:
    au = sub.add_parser("audit", help="verify the hash-chained audit log")
    au.set_defaults(func=_audit)
    ausub = au.add_subparsers(dest="audit_cmd", required=True)
    av = ausub.add_parser("verify")
    av.add_argument("--db", default=None)
