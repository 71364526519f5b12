"""``radreview audit verify [--db FILE]``: the review store's hash chain, its head file
(``<db>.head``, HMAC) and its state tables replayed from the audit rows; non-zero naming every
problem (a reading-session database has its own chain)."""

from __future__ import annotations

import json
import os
import sys

from . import CliError


def _is_review_store(db: str) -> bool:
    """True when ``db`` is an existing SQLite file with the review store's tables (read-only peek,
    so a database locked by a writer is still recognised at once)."""
    import sqlite3
    from pathlib import Path

    p = Path(db)
    if not p.is_file():
        return False
    try:
        con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return False
    return {"audit_head", "decisions", "signoffs"} <= names


def _audit(args) -> int:
    from radreview.review.store import ReviewStore, StoreCorrupt, StoreLocked, StoreMissing

    if args.db and not _is_review_store(args.db):  # a reading-session database (SQLite file or postgresql:// URL): its own audit chain
        from radreview.review.sessions.db import SessionDB, SessionDBError, is_postgres, is_session_db

        if is_postgres(args.db) or is_session_db(args.db):
            try:
                sdb = SessionDB(args.db)
            except SessionDBError as exc:
                raise CliError(str(exc)) from None
            n, problems = sdb.verify_audit()
            if problems:
                raise CliError(f"audit log of session {sdb.name} FAILED verification ({n} rows): " + "; ".join(problems))
            print(f"audit log of session {sdb.name}: {n} rows, hash chain intact")
            return 0
    try:  # never creates a database: a mistyped --db is an error, not a new empty (intact) log
        store = ReviewStore(args.db, create=False, verify=False)
    except (StoreMissing, StoreCorrupt, StoreLocked) as exc:
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
