"""The shadow-deployment job ledger: SQLAlchemy Core on SQLite (default) or PostgreSQL (a centre).

The same database layer as reading sessions (:class:`radreview.review.sessions.db.SessionDB`):
serialised write transactions, and every state change commits with its hash-chained audit row,
whose payload is the changed row itself, so :meth:`ShadowLedger.verify` can replay the jobs and
results from the audit and name any row written past it.

A **job** is one series x model x model SHA-256 x precision: that tuple, hashed, is the
idempotency key. States::

    queued -> running (lease: expiry, worker address, attempt) -> done | failed (reason)

A result is stored once: ``shadow_results.key`` is the primary key and
:meth:`ShadowLedger.complete` inserts only when absent, in the same transaction that marks the
job done, so a retried or duplicated job never yields two results. Only the process that drives
the run (``radreview shadow run``) writes here; workers return their results to it and never need
the database's credentials.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Iterable

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, and_, select, update

from ..sessions.db import SessionDB, SessionDBError, audit_t, head_t, is_session_db, now_utc

__all__ = ["ShadowLedger", "LedgerError", "job_key", "STATES", "is_ledger", "DEFAULT_LEASE_S", "DEFAULT_MAX_ATTEMPTS"]

STATES = ("queued", "running", "done", "failed")
#: seconds a running job's lease lasts without renewal (the driver renews it while the task runs)
DEFAULT_LEASE_S = 120.0
#: attempts (worker deaths and transient errors) before a job fails for good
DEFAULT_MAX_ATTEMPTS = 5
#: back-off before attempt n + 1: BACKOFF_S * 2^(n - 1) seconds, at most BACKOFF_MAX_S
BACKOFF_S = 2.0
BACKOFF_MAX_S = 120.0

metadata = MetaData()
shadow_meta_t = Table("shadow_meta", metadata, Column("key", String(64), primary_key=True),
                      Column("value", Text, nullable=False))
series_t = Table("shadow_series", metadata,
                 Column("series_uid", String(128), primary_key=True), Column("study_uid", String(128), nullable=False),
                 Column("source", Text, nullable=False),  # JSON: where a worker fetches it
                 Column("attrs", Text, nullable=False),  # JSON: modality, manufacturer, kernel, thickness, ...
                 Column("seen", Text, nullable=False))
jobs_t = Table("shadow_jobs", metadata,
               Column("key", String(64), primary_key=True), Column("series_uid", String(128), nullable=False),
               Column("study_uid", String(128), nullable=False), Column("model_id", String(100), nullable=False),
               Column("model_sha256", String(64), nullable=False), Column("precision", String(8), nullable=False),
               Column("state", String(8), nullable=False), Column("attempts", Integer, nullable=False),
               Column("reason", Text, nullable=False), Column("worker", Text, nullable=False),
               Column("lease_expires", Float, nullable=False), Column("not_before", Float, nullable=False),
               Column("queued", Text, nullable=False), Column("queued_epoch", Float, nullable=False),
               Column("updated", Text, nullable=False))
results_t = Table("shadow_results", metadata,
                  Column("key", String(64), primary_key=True),  # one result per job, ever
                  Column("data", Text, nullable=False), Column("stored", Text, nullable=False))
skipped_t = Table("shadow_skipped", metadata,
                  Column("ident", String(300), primary_key=True),  # series UID or path
                  Column("kind", String(16), nullable=False),  # series | path
                  Column("reason", Text, nullable=False), Column("seen", Text, nullable=False))
outcomes_t = Table("shadow_outcomes", metadata,
                   Column("study_uid", String(128), primary_key=True), Column("positive", Integer, nullable=False),
                   Column("lps", Text, nullable=False), Column("source", Text, nullable=False),
                   Column("ts", Text, nullable=False))
audit_t.to_metadata(metadata)
head_t.to_metadata(metadata)

_JOB_COLS = [c.name for c in jobs_t.columns]


class LedgerError(SessionDBError):
    """The ledger is missing, damaged, or refused an action (the message names it)."""


def job_key(series_uid: str, model_id: str, model_sha256: str, precision: str) -> str:
    """The idempotency key: SHA-256 of ``series_uid | model_id | model_sha256 | precision``."""
    return hashlib.sha256("|".join((series_uid, model_id, model_sha256, precision)).encode()).hexdigest()


def is_ledger(db: str | os.PathLike) -> bool:
    """True when ``db`` exists and holds a shadow ledger (``shadow_meta``)."""
    return is_session_db(db, marker="shadow_meta")


def _job_dict(row) -> dict[str, Any]:
    return {k: getattr(row, k) for k in _JOB_COLS}


class ShadowLedger(SessionDB):
    """One shadow ledger (SQLite path or ``postgresql://`` URL).

    Parameters
    ----------
    db:
        SQLite file path or PostgreSQL URL.
    create:
        Create it when it does not exist yet (an existing ledger is opened as it is).

    Raises
    ------
    LedgerError (a :class:`SessionDBError`)
        Not a ledger, damaged, or unreachable.
    """

    METADATA = metadata
    MARKER = "shadow_meta"
    KIND = "shadow ledger"
    CREATE_HINT = "`radreview shadow run --db DB` creates it"

    def __init__(self, db: str | os.PathLike, create: bool = False) -> None:
        exists = is_ledger(db)
        try:
            super().__init__(db, create=create and not exists)
        except LedgerError:
            raise
        except SessionDBError as exc:
            raise LedgerError(str(exc)) from None
        if create and not exists:
            with self.write() as conn:
                conn.execute(shadow_meta_t.insert().values(key="created", value=now_utc()))
                self.audit(conn, "radreview", "ledger-create", {})

    # ------------------------------------------------------------------ meta and series
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.read() as conn:
            v = conn.execute(select(shadow_meta_t.c.value).where(shadow_meta_t.c.key == key)).scalar()
        return default if v is None else str(v)

    def set_meta(self, key: str, value: str, actor: str = "radreview") -> None:
        """Set a meta value (e.g. a source's resume cursor), audit-logged."""
        with self.write() as conn:
            have = conn.execute(select(shadow_meta_t.c.value).where(shadow_meta_t.c.key == key)).scalar()
            if have == value:
                return
            if have is None:
                conn.execute(shadow_meta_t.insert().values(key=key, value=value))
            else:
                conn.execute(update(shadow_meta_t).where(shadow_meta_t.c.key == key).values(value=value))
            self.audit(conn, actor, "meta", {"key": key, "value": value})

    def add_series(self, series_uid: str, study_uid: str, source: dict, attrs: dict,
                   jobs: Iterable[tuple[str, str, str]], actor: str = "radreview") -> list[str]:
        """Record a series and queue one job per ``(model_id, model_sha256, precision)``.

        A series already recorded keeps its first source; a job whose key exists is left as it
        is (idempotent: re-scanning a folder or re-reading a changes feed queues nothing twice).
        Returns the keys of the jobs newly queued.
        """
        ts = now_utc()
        new = []
        with self.write() as conn:
            if conn.execute(select(series_t.c.series_uid).where(series_t.c.series_uid == series_uid)).first() is None:
                row = {"series_uid": series_uid, "study_uid": study_uid, "source": json.dumps(source, sort_keys=True),
                       "attrs": json.dumps(attrs, sort_keys=True), "seen": ts}
                conn.execute(series_t.insert().values(**row))
                self.audit(conn, actor, "series", row, ts=ts)
            for model_id, sha, precision in jobs:
                key = job_key(series_uid, model_id, sha, precision)
                if conn.execute(select(jobs_t.c.key).where(jobs_t.c.key == key)).first() is not None:
                    continue
                job = {"key": key, "series_uid": series_uid, "study_uid": study_uid, "model_id": model_id,
                       "model_sha256": sha, "precision": precision, "state": "queued", "attempts": 0, "reason": "",
                       "worker": "", "lease_expires": 0.0, "not_before": 0.0, "queued": ts,
                       "queued_epoch": time.time(), "updated": ts}
                conn.execute(jobs_t.insert().values(**job))
                self.audit(conn, actor, "job", job, ts=ts)
                new.append(key)
        return new

    def skip(self, ident: str, kind: str, reason: str, actor: str = "radreview") -> bool:
        """Record a series (``kind="series"``) or file (``kind="path"``) that is not eligible, with
        its reason; once per identifier. Returns True when newly recorded."""
        with self.write() as conn:
            if conn.execute(select(skipped_t.c.ident).where(skipped_t.c.ident == ident)).first() is not None:
                return False
            row = {"ident": ident, "kind": kind, "reason": reason, "seen": now_utc()}
            conn.execute(skipped_t.insert().values(**row))
            self.audit(conn, actor, "skipped", row)
        return True

    def series(self, series_uid: str) -> dict[str, Any] | None:
        with self.read() as conn:
            r = conn.execute(select(series_t).where(series_t.c.series_uid == series_uid)).first()
        if r is None:
            return None
        return {"series_uid": r.series_uid, "study_uid": r.study_uid, "source": json.loads(r.source),
                "attrs": json.loads(r.attrs), "seen": r.seen}

    def all_series(self) -> dict[str, dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(select(series_t)).all()
        return {r.series_uid: {"study_uid": r.study_uid, "source": json.loads(r.source), "attrs": json.loads(r.attrs),
                               "seen": r.seen} for r in rows}

    # ------------------------------------------------------------------ job state
    def _set(self, conn, key: str, actor: str, **changes) -> dict[str, Any]:
        ts = now_utc()
        changes["updated"] = ts
        conn.execute(update(jobs_t).where(jobs_t.c.key == key).values(**changes))
        row = _job_dict(conn.execute(select(jobs_t).where(jobs_t.c.key == key)).one())
        self.audit(conn, actor, "job", row, ts=ts)
        return row

    def runnable(self, now: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Queued jobs whose back-off has passed, oldest first."""
        now = time.time() if now is None else now
        q = select(jobs_t).where(and_(jobs_t.c.state == "queued", jobs_t.c.not_before <= now)) \
            .order_by(jobs_t.c.queued_epoch, jobs_t.c.key)
        if limit:
            q = q.limit(limit)
        with self.read() as conn:
            return [_job_dict(r) for r in conn.execute(q)]

    def start(self, key: str, lease_s: float = DEFAULT_LEASE_S, actor: str = "radreview") -> dict[str, Any] | None:
        """queued -> running with a lease and the next attempt number; None when the job is not
        queued (another driver took it, or it finished)."""
        with self.write() as conn:
            r = conn.execute(select(jobs_t.c.state, jobs_t.c.attempts).where(jobs_t.c.key == key)).first()
            if r is None or r.state != "queued":
                return None
            return self._set(conn, key, actor, state="running", attempts=r.attempts + 1, worker="",
                             lease_expires=time.time() + lease_s)

    def renew(self, keys_workers: dict[str, str], lease_s: float = DEFAULT_LEASE_S, actor: str = "radreview") -> None:
        """Extend the leases of running jobs and note the worker running each, when known. A
        renewal alone is not audit-logged (the lease expiry is bookkeeping, excluded from
        :meth:`verify`); a job's worker is."""
        if not keys_workers:
            return
        exp = time.time() + lease_s
        with self.write() as conn:
            for key, worker in keys_workers.items():
                r = conn.execute(select(jobs_t.c.state, jobs_t.c.worker).where(jobs_t.c.key == key)).first()
                if r is None or r.state != "running":
                    continue
                if worker and worker != r.worker:  # the worker running it: state, so audit-logged
                    self._set(conn, key, actor, worker=worker, lease_expires=exp)
                else:
                    conn.execute(update(jobs_t).where(jobs_t.c.key == key).values(lease_expires=exp))

    def complete(self, key: str, result: dict[str, Any], actor: str = "radreview") -> bool:
        """Store the job's result once and mark it done, in one transaction. Returns False when a
        result was already stored (the job is then left done, the new result dropped)."""
        with self.write() as conn:
            have = conn.execute(select(results_t.c.key).where(results_t.c.key == key)).first()
            if have is None:
                row = {"key": key, "data": json.dumps(result, sort_keys=True), "stored": now_utc()}
                conn.execute(results_t.insert().values(**row))
                self.audit(conn, actor, "result", row)
            st = conn.execute(select(jobs_t.c.state).where(jobs_t.c.key == key)).scalar()
            if st != "done":
                self._set(conn, key, actor, state="done", reason="", worker=str(result.get("worker", "")),
                          lease_expires=0.0)
        return have is None

    def fail(self, key: str, reason: str, retry: bool, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
             actor: str = "radreview") -> str:
        """A running job ended without a result. With ``retry`` and attempts left it goes back to
        the queue after a back-off; otherwise it fails for good with ``reason``. Returns the new
        state (a job already done is left done)."""
        with self.write() as conn:
            r = conn.execute(select(jobs_t.c.state, jobs_t.c.attempts).where(jobs_t.c.key == key)).first()
            if r is None or r.state in ("done", "failed"):
                return r.state if r is not None else "missing"
            if retry and r.attempts < max_attempts:
                wait = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** max(r.attempts - 1, 0))
                self._set(conn, key, actor, state="queued", reason=reason, worker="", lease_expires=0.0,
                          not_before=time.time() + wait)
                return "queued"
            why = reason if not retry else f"{reason} (gave up after {r.attempts} attempt(s))"
            self._set(conn, key, actor, state="failed", reason=why, lease_expires=0.0)
            return "failed"

    def requeue(self, key: str, reason: str, actor: str = "radreview") -> None:
        """running -> queued at once, without counting the attempt (the driver lost its task,
        not the job: a scheduler restart, the driver's own restart)."""
        with self.write() as conn:
            r = conn.execute(select(jobs_t.c.state, jobs_t.c.attempts).where(jobs_t.c.key == key)).first()
            if r is not None and r.state == "running":
                self._set(conn, key, actor, state="queued", attempts=max(r.attempts - 1, 0), reason=reason,
                          worker="", lease_expires=0.0, not_before=0.0)

    def expired(self, now: float | None = None) -> list[str]:
        """Keys of running jobs whose lease has expired (their driver or worker is gone)."""
        now = time.time() if now is None else now
        with self.read() as conn:
            return [r.key for r in conn.execute(select(jobs_t.c.key).where(
                and_(jobs_t.c.state == "running", jobs_t.c.lease_expires < now)))]

    def fail_model(self, model_id: str, model_sha256: str, reason: str, actor: str = "radreview") -> int:
        """Fail every queued job of a model package (it no longer matches its hash, say)."""
        with self.write() as conn:
            keys = [r.key for r in conn.execute(select(jobs_t.c.key).where(and_(
                jobs_t.c.model_id == model_id, jobs_t.c.model_sha256 == model_sha256, jobs_t.c.state == "queued")))]
            for key in keys:
                self._set(conn, key, actor, state="failed", reason=reason, lease_expires=0.0)
        return len(keys)

    def retry_failed(self, actor: str = "radreview") -> int:
        """Failed jobs back to the queue with their attempts reset (``shadow retry --failed``)."""
        with self.write() as conn:
            keys = [r.key for r in conn.execute(select(jobs_t.c.key).where(jobs_t.c.state == "failed"))]
            for key in keys:
                self._set(conn, key, actor, state="queued", attempts=0, not_before=0.0)
        return len(keys)

    def retry_now(self, actor: str = "radreview") -> int:
        """Queued jobs waiting for their back-off made runnable now (``shadow retry``)."""
        with self.write() as conn:
            keys = [r.key for r in conn.execute(select(jobs_t.c.key).where(
                and_(jobs_t.c.state == "queued", jobs_t.c.not_before > 0)))]
            for key in keys:
                self._set(conn, key, actor, not_before=0.0)
        return len(keys)

    # ------------------------------------------------------------------ outcomes
    def add_outcome(self, study_uid: str, positive: bool, lps: list[list[float]] | None, source: str,
                    actor: str = "radreview") -> None:
        """Record (or replace) the outcome of a study: what the radiologists decided."""
        row = {"study_uid": study_uid, "positive": int(bool(positive)), "lps": json.dumps(lps or []), "source": source,
               "ts": now_utc()}
        with self.write() as conn:
            if conn.execute(select(outcomes_t.c.study_uid).where(outcomes_t.c.study_uid == study_uid)).first():
                conn.execute(update(outcomes_t).where(outcomes_t.c.study_uid == study_uid).values(**row))
            else:
                conn.execute(outcomes_t.insert().values(**row))
            self.audit(conn, actor, "outcome", row)

    def outcomes(self) -> dict[str, dict[str, Any]]:
        with self.read() as conn:
            return {r.study_uid: {"positive": bool(r.positive), "lps": json.loads(r.lps), "source": r.source}
                    for r in conn.execute(select(outcomes_t))}

    # ------------------------------------------------------------------ reading
    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        q = select(jobs_t).order_by(jobs_t.c.queued_epoch, jobs_t.c.key)
        if state:
            q = q.where(jobs_t.c.state == state)
        with self.read() as conn:
            return [_job_dict(r) for r in conn.execute(q)]

    def results(self) -> dict[str, dict[str, Any]]:
        with self.read() as conn:
            return {r.key: json.loads(r.data) for r in conn.execute(select(results_t))}

    def skipped(self) -> list[dict[str, Any]]:
        with self.read() as conn:
            return [{"ident": r.ident, "kind": r.kind, "reason": r.reason, "seen": r.seen}
                    for r in conn.execute(select(skipped_t).order_by(skipped_t.c.seen))]

    def counts(self) -> dict[str, int]:
        """Jobs per state, plus ``skipped`` series/files and ``results``."""
        out = {s: 0 for s in STATES}
        for j in self.jobs():
            out[j["state"]] += 1
        with self.read() as conn:
            out["skipped"] = len(conn.execute(select(skipped_t.c.ident)).all())
            out["results"] = len(conn.execute(select(results_t.c.key)).all())
        return out

    # ------------------------------------------------------------------ integrity
    def verify(self) -> tuple[int, list[str]]:
        """The audit chain, then the jobs, results, series, skipped and outcomes tables replayed
        from it: ``(audit rows, problems)``. A row edited, inserted or deleted past the audit
        (a probability changed, a result added by hand) is named."""
        n, problems = self.verify_audit()
        want: dict[str, dict[str, dict]] = {"job": {}, "result": {}, "series": {}, "skipped": {}, "outcome": {}}
        keyname = {"job": "key", "result": "key", "series": "series_uid", "skipped": "ident", "outcome": "study_uid"}
        with self.read() as conn:
            for r in conn.execute(select(audit_t.c.action, audit_t.c.payload).order_by(audit_t.c.id)):
                if r.action in want:
                    p = json.loads(r.payload)
                    want[r.action][p[keyname[r.action]]] = p
            tables = {"job": jobs_t, "result": results_t, "series": series_t, "skipped": skipped_t,
                      "outcome": outcomes_t}
            for action, table in tables.items():
                have = {}
                for row in conn.execute(select(table)):
                    d = dict(row._mapping)
                    have[d[keyname[action]]] = d
                exp = want[action]
                for k in sorted(set(have) - set(exp)):
                    problems.append(f"{table.name}: row {k[:16]} is not in the audit log")
                for k in sorted(set(exp) - set(have)):
                    problems.append(f"{table.name}: row {k[:16]} in the audit log is missing")
                for k in sorted(set(have) & set(exp)):
                    cols = [c for c in exp[k] if c != "lease_expires"]
                    diff = [c for c in cols if _norm(have[k].get(c)) != _norm(exp[k].get(c))]
                    if diff:
                        problems.append(f"{table.name}: row {k[:16]} differs from the audit log in {', '.join(diff)}")
        return n, problems


def _norm(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
