"""``radreview audit verify [--db FILE]``: the review store's hash chain, its head file
(``<db>.head``, HMAC) and its state tables replayed from the audit rows; non-zero naming every
problem (a reading-session database has its own chain).

``radreview audit adopt --db FILE --reason TEXT [--user NAME]``: adopt a review database written
by radreview 0.1, which has no chain head file and is therefore refused on open. The chain must
be internally intact (every hash link, the in-database head, the state tables replayed from the
audit rows); then an audit row ``adopted`` (user, time, reason) is appended and the signed head
file written (:func:`radreview.review.store.adopt_database`). A database that already has a head
file, or fails a check, is refused (exit 2, one line) and left untouched."""

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


def _verify_audited(cls, db: str, what: str, ok_text: str, verify) -> int:
    """Open an audited SQLAlchemy database (session or ledger) and print or refuse its verification."""
    from radreview.review.sessions.db import SessionDBError

    try:
        obj = cls(db)
    except SessionDBError as exc:
        raise CliError(str(exc)) from None
    n, problems = verify(obj)
    if problems:
        raise CliError(f"audit log of {what} {obj.name} FAILED verification ({n} rows): " + "; ".join(problems))
    print(f"audit log of {what} {obj.name}: {n} rows, {ok_text}")
    return 0


def _audit(args) -> int:
    from radreview.review.store import ReviewStore, StoreCorrupt, StoreLocked, StoreMissing

    if args.db and not _is_review_store(args.db):  # a reading-session database (SQLite file or postgresql:// URL): its own audit chain
        from radreview.review.sessions.db import SessionDB, is_postgres, is_session_db
        from radreview.review.shadow import ShadowLedger, is_ledger

        if is_ledger(args.db):  # a shadow ledger: chain plus jobs and results replayed from it
            return _verify_audited(ShadowLedger, args.db, "shadow ledger", "hash chain intact, state tables replayed",
                                   lambda d: d.verify())
        if is_postgres(args.db) or is_session_db(args.db):
            return _verify_audited(SessionDB, args.db, "session", "hash chain intact", lambda d: d.verify_audit())
    try:  # never creates a database: a mistyped --db is an error, not a new empty (intact) log
        store = ReviewStore(args.db, create=False, verify=False)
    except (StoreMissing, StoreCorrupt, StoreLocked) as exc:
        raise CliError(str(exc)) from None
    rep = store.verify_audit()
    if not rep.ok:
        raise CliError(f"audit log of {store.path} FAILED verification ({rep.rows} rows): " + "; ".join(rep.problems))
    print(f"audit log of {store.path}: {rep.rows} rows, hash chain intact")
    return 0


def _adopt(args) -> int:
    import getpass

    from radreview.review.store import adopt_database

    if not _is_review_store(args.db):
        if not os.path.isfile(args.db):
            raise CliError(f"{args.db}: no such review database (check the path)")
        raise CliError(f"{args.db}: not a radreview review database; nothing was changed")
    user = args.user
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            raise CliError("no user name for the adopted event: give --user NAME") from None
    # AdoptRefused / StoreMissing / StoreCorrupt / StoreLocked are RadreviewErrors: one line, exit 2
    rep = adopt_database(args.db, user, args.reason)
    print(f"adopted {args.db} by {user}: {rep.rows} audit rows (the last one 'adopted'), chain head file written; "
          "hash chain intact")
    return 0


def add_subparser(sub) -> None:
    au = sub.add_parser("audit", help="verify the hash-chained audit log; adopt a radreview 0.1 database")
    au.set_defaults(func=_audit)
    ausub = au.add_subparsers(dest="audit_cmd", required=True)
    av = ausub.add_parser("verify", help="check the hash chain, its head file and the state tables")
    av.add_argument("--db", default=None)
    av.set_defaults(func=_audit)
    ad = ausub.add_parser("adopt", help="adopt a review database written by radreview 0.1 (no chain head file): "
                                        "checks its chain, logs an 'adopted' event, writes the head file")
    ad.add_argument("--db", required=True, help="the review database file")
    ad.add_argument("--reason", required=True, help="why this database is adopted (kept in the audit log)")
    ad.add_argument("--user", default=None, help="who adopts it (default: the OS user name)")
    ad.set_defaults(func=_adopt)
