"""The reading-session database: SQLAlchemy 2.0 Core tables on SQLite or PostgreSQL.

One database per session. ``DB`` is a file path (SQLite, WAL journal, ``synchronous=FULL``,
every write transaction ``BEGIN IMMEDIATE``) or a ``postgresql://`` URL (psycopg 3; each write
transaction first locks the single ``audit_head`` row ``FOR UPDATE``). Reads do not take the
write lock. Either way every write
(a read, an event, an AI result) commits in the same transaction as its hash-chained audit row
(:mod:`radreview.review.audit_chain`, the review store's scheme), and write transactions are
serialised, so several reader processes or workstations can write at once and a write that
returned is durable (a ``kill -9`` afterwards loses nothing).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (Column, Float, Integer, MetaData, String, Table, Text, create_engine, event, inspect, select,
                        update)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, OperationalError

from ..audit_chain import GENESIS, row_hash, verify_chain
from radreview.studies.errors import RadreviewError

__all__ = ["SessionDB", "SessionDBError", "engine_url", "is_session_db", "now_utc"]

metadata = MetaData()

meta_t = Table("session_meta", metadata,
               Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))
cases_t = Table("session_cases", metadata,
                Column("case_id", String(200), primary_key=True), Column("path", Text, nullable=False),
                Column("position", Integer, nullable=False))
truth_t = Table("session_truth", metadata,
                Column("case_id", String(200), primary_key=True), Column("positive", Integer, nullable=False))
lesions_t = Table("session_lesions", metadata,
                  Column("id", Integer, primary_key=True, autoincrement=True), Column("case_id", String(200), nullable=False),
                  Column("x", Float, nullable=False), Column("y", Float, nullable=False), Column("z", Float, nullable=False))
assign_t = Table("session_assignments", metadata,
                 Column("reader", String(100), primary_key=True), Column("case_id", String(200), primary_key=True),
                 Column("position", Integer, nullable=False))
ai_t = Table("session_ai", metadata,
             Column("case_id", String(200), primary_key=True), Column("model_id", String(100), primary_key=True),
             Column("data", Text, nullable=False), Column("ts", Text, nullable=False))
reads_t = Table("session_reads", metadata,
                Column("reader", String(100), primary_key=True), Column("case_id", String(200), primary_key=True),
                Column("phase", String(16), primary_key=True),  # unaided | aided
                Column("state", String(16), nullable=False),  # open | locked | final
                Column("score", Float), Column("findings", Text, nullable=False), Column("text", Text, nullable=False),
                Column("opened_wall", Text, nullable=False), Column("opened_mono", Float, nullable=False),
                Column("boot", Text, nullable=False),
                Column("closed_wall", Text), Column("closed_mono", Float), Column("updated", Text, nullable=False))
events_t = Table("session_events", metadata,
                 Column("id", Integer, primary_key=True, autoincrement=True),
                 Column("reader", String(100), nullable=False), Column("case_id", String(200), nullable=False),
                 Column("phase", String(16), nullable=False), Column("kind", String(32), nullable=False),
                 Column("wall", Text, nullable=False), Column("mono", Float, nullable=False), Column("boot", Text, nullable=False),
                 Column("payload", Text, nullable=False))
audit_t = Table("audit", metadata,
                Column("id", Integer, primary_key=True, autoincrement=False), Column("ts", Text, nullable=False),
                Column("actor", Text, nullable=False), Column("action", Text, nullable=False),
                Column("payload", Text, nullable=False), Column("prev_hash", Text, nullable=False),
                Column("hash", Text, nullable=False))
head_t = Table("audit_head", metadata,
               Column("one", Integer, primary_key=True, autoincrement=False), Column("last_hash", Text, nullable=False),
               Column("count", Integer, nullable=False))


class SessionDBError(RuntimeError, RadreviewError):
    """The session database is missing, damaged or not a session database; the message names it."""


def now_utc() -> str:
    """Wall-clock time, UTC, ISO 8601 with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def is_postgres(db: str) -> bool:
    return str(db).startswith(("postgresql://", "postgresql+psycopg://", "postgres://"))


def engine_url(db: str | os.PathLike) -> str:
    """SQLAlchemy URL for ``db``: ``postgresql://...`` -> psycopg 3 driver; anything else is a
    SQLite file path (``sqlite:///...`` URLs are accepted as they are)."""
    s = str(db)
    if s.startswith("postgres://"):
        s = "postgresql://" + s[len("postgres://"):]
    if s.startswith("postgresql://"):
        return "postgresql+psycopg://" + s[len("postgresql://"):]
    if s.startswith(("postgresql+psycopg://", "sqlite:///")):
        return s
    return "sqlite:///" + str(Path(s).resolve())


def display_name(db: str | os.PathLike) -> str:
    """``db`` without a password, for messages."""
    s = str(db)
    if is_postgres(s) and "@" in s:
        scheme, rest = s.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return s


def _make_engine(db: str | os.PathLike) -> Engine:
    url = engine_url(db)
    if url.startswith("sqlite"):
        eng = create_engine(url, connect_args={"timeout": 120, "check_same_thread": False})

        @event.listens_for(eng, "connect")
        def _sqlite_connect(dbapi_conn, _record):  # SQLAlchemy's documented pysqlite recipe
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=120000")
            cur.close()

        @event.listens_for(eng, "begin")
        def _sqlite_begin(conn):  # writers take the write lock up front; readers do not block them (WAL)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("rr_write") else "BEGIN")

        return eng
    return create_engine(url, pool_pre_ping=True)


def is_session_db(db: str | os.PathLike, marker: str = "session_meta") -> bool:
    """True when ``db`` exists and holds a reading session's tables (``session_meta``; another
    audited database kind by its own ``marker`` table)."""
    if not is_postgres(str(db)) and not str(db).startswith("sqlite:///"):
        p = Path(db)
        if not p.is_file() or p.stat().st_size == 0:
            return False
        with open(p, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return False
    try:
        eng = _make_engine(db)
        try:
            return inspect(eng).has_table(marker)
        finally:
            eng.dispose()
    except DatabaseError:
        return False


class SessionDB:
    """Connection to one session database (the base of every audited SQLAlchemy database here:
    a subclass sets :attr:`METADATA` (its tables, which must include copies of ``audit`` and
    ``audit_head``), :attr:`MARKER` (the table that identifies it) and :attr:`KIND` (its name in
    messages), and gets the same transactions, audit chain and checks).

    Parameters
    ----------
    db
        SQLite file path or ``postgresql://user@host:port/dbname`` URL.
    create
        Create the tables (the database or file must be empty of a session); otherwise the
        database must already hold a session.

    Raises
    ------
    SessionDBError
        ``create`` on an existing session, a missing file, a file that is not a SQLite
        database or fails ``PRAGMA integrity_check``, or a database without session tables.
    """

    METADATA: MetaData = metadata
    MARKER = "session_meta"
    KIND = "reading session"
    CREATE_HINT = "create it with `radreview session create`"

    def __init__(self, db: str | os.PathLike, create: bool = False) -> None:
        kind = self.KIND
        self.db = str(db)
        self.name = display_name(db)
        sqlite = not is_postgres(self.db)
        if sqlite and not self.db.startswith("sqlite:///"):
            p = Path(self.db)
            if not create and not p.is_file():
                raise SessionDBError(f"{p}: no such {kind} database ({self.CREATE_HINT})")
            if p.is_file() and p.stat().st_size > 0:
                with open(p, "rb") as fh:
                    if fh.read(16) != b"SQLite format 3\x00":
                        raise SessionDBError(f"{p}: not a SQLite database; it was left untouched")
                if create and not is_session_db(p, self.MARKER):
                    raise SessionDBError(f"{p}: already exists (and is not a {kind}); a {kind} gets a new file of its own")
            p.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = _make_engine(self.db)
            with self.engine.connect() as conn:
                if sqlite:
                    res = conn.exec_driver_sql("PRAGMA quick_check").scalar()
                    if res != "ok":
                        raise SessionDBError(f"{self.name}: {kind} database failed its integrity check ({res})")
                has = inspect(conn).has_table(self.MARKER)
            if create:
                if has:
                    raise SessionDBError(f"{self.name}: already holds a {kind}; choose a new file or database")
                self.METADATA.create_all(self.engine)
                with self.engine.begin() as conn:
                    conn.execute(head_t.insert().values(one=1, last_hash=GENESIS, count=0))
            elif not has:
                raise SessionDBError(f"{self.name}: not a {kind} database (no {kind} tables)")
        except OperationalError as exc:
            raise SessionDBError(f"{self.name}: cannot open the {kind} database "
                                 f"({' '.join(str(exc.orig).split())[:300]})") from None
        except DatabaseError as exc:
            raise SessionDBError(f"{self.name}: not a usable {kind} database ({' '.join(str(exc.orig).split())[:300]})") from None

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A serialised write transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``audit_head``
        row lock). Everything written through it, audit rows included, commits together."""
        with self.engine.connect().execution_options(rr_write=True) as conn, conn.begin():
            conn.execute(select(head_t.c.count).where(head_t.c.one == 1).with_for_update()).one()
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn
            conn.rollback()

    @staticmethod
    def audit(conn: Connection, actor: str, action: str, payload: dict[str, Any], ts: str | None = None) -> str:
        """Append one hash-chained audit row inside the caller's write transaction."""
        ts = ts or now_utc()
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        prev, count = conn.execute(select(head_t.c.last_hash, head_t.c.count).where(head_t.c.one == 1)).one()
        row_id = count + 1
        h = row_hash(prev, row_id, ts, actor, action, body)
        conn.execute(audit_t.insert().values(id=row_id, ts=ts, actor=actor, action=action, payload=body,
                                             prev_hash=prev, hash=h))
        conn.execute(update(head_t).where(head_t.c.one == 1).values(last_hash=h, count=row_id))
        return ts

    def verify_audit(self) -> tuple[int, list[str]]:
        """Recompute the audit hash chain: ``(rows, problems)``, no problems when intact."""
        with self.read() as conn:
            rows = [tuple(r) for r in conn.execute(select(audit_t).order_by(audit_t.c.id))]
            head = conn.execute(select(head_t.c.last_hash, head_t.c.count).where(head_t.c.one == 1)).first()
        return verify_chain(rows, tuple(head) if head else None)
