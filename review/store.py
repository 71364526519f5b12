"""Local review database: decisions, sign-offs, threshold changes, and a hash-chained audit log.

SQLite (stdlib ``sqlite3``) in WAL mode with ``synchronous=FULL``: a decision is reported saved
only after its transaction committed durably, so a killed process never loses it. Every change
is written together with an audit row in one transaction. Audit rows are hash-chained: each
stores the SHA-256 of the previous row's hash and its own canonical content, and
``audit_head`` keeps the last hash and the row count, so editing, deleting or inserting a row
(including the last one) is detected by :meth:`ReviewStore.verify_audit`.

A file that is not a SQLite database, or fails ``PRAGMA integrity_check``, raises
:class:`StoreCorrupt` naming the file; it is never silently replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["ReviewStore", "StoreCorrupt", "AuditReport", "default_db_path", "GENESIS"]

GENESIS = "0" * 64
DECISIONS = ("accept", "reject", "edit")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_key TEXT NOT NULL, finding_id TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'edit')),
    reviewer TEXT NOT NULL, reason TEXT, ts TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_study ON decisions (study_key, finding_id);
CREATE TABLE IF NOT EXISTS signoffs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, study_key TEXT NOT NULL, reviewer TEXT NOT NULL,
    findings_json TEXT NOT NULL, ts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS thresholds (
    model_id TEXT NOT NULL, label TEXT NOT NULL, value REAL NOT NULL CHECK (value >= 0 AND value <= 1),
    reviewer TEXT NOT NULL, reason TEXT, ts TEXT NOT NULL, PRIMARY KEY (model_id, label));
CREATE TABLE IF NOT EXISTS findings (
    study_key TEXT NOT NULL, finding_id TEXT NOT NULL, data TEXT NOT NULL, ts TEXT NOT NULL,
    PRIMARY KEY (study_key, finding_id));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    payload TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_head (one INTEGER PRIMARY KEY CHECK (one = 1), last_hash TEXT NOT NULL, count INTEGER NOT NULL);
"""


class StoreCorrupt(RuntimeError):
    """The review database is damaged or not a database; the message names the file."""


def default_db_path() -> Path:
    """``$RADREVIEW_DB``, else ``$XDG_DATA_HOME/radreview/review.sqlite`` (``~/.local/share``)."""
    if os.environ.get("RADREVIEW_DB"):
        return Path(os.environ["RADREVIEW_DB"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "radreview" / "review.sqlite"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _row_hash(prev_hash: str, row_id: int, ts: str, actor: str, action: str, payload: str) -> str:
    canon = json.dumps([prev_hash, row_id, ts, actor, action, payload], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


@dataclass
class AuditReport:
    ok: bool
    rows: int
    problems: list[str]


class ReviewStore:
    """The review database at ``path`` (created if absent).

    Raises
    ------
    StoreCorrupt
        If the file exists but is not a healthy SQLite database.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            if existed:
                res = self.conn.execute("PRAGMA integrity_check").fetchone()[0]
                if res != "ok":
                    raise StoreCorrupt(f"{self.path}: review database failed its integrity check ({res}); "
                                       "it was left untouched — restore it from a backup or move it aside")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
            self.conn.execute("INSERT OR IGNORE INTO audit_head (one, last_hash, count) VALUES (1, ?, 0)", (GENESIS,))
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self.path}: not a usable review database ({exc}); it was left untouched — "
                               "restore it from a backup or move it aside") from None

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------ writes
    def _write(self, actor: str, action: str, payload: dict[str, Any], sql: str | None, params: tuple = (),
               ts: str | None = None) -> str:
        """Run ``sql`` and append the audit row in one durable transaction; returns the timestamp."""
        ts = ts or _now()
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                if sql:
                    cur.execute(sql, params)
                prev, count = cur.execute("SELECT last_hash, count FROM audit_head WHERE one = 1").fetchone()
                row_id = cur.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM audit").fetchone()[0]
                h = _row_hash(prev, row_id, ts, actor, action, body)
                cur.execute("INSERT INTO audit (id, ts, actor, action, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (row_id, ts, actor, action, body, prev, h))
                cur.execute("UPDATE audit_head SET last_hash = ?, count = ? WHERE one = 1", (h, count + 1))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return ts

    def record_decision(self, study_key: str, finding_id: str, decision: str, reviewer: str, reason: str | None = None) -> str:
        """Persist a decision (accept/reject/edit); returns its timestamp once durably committed.

        Raises
        ------
        ValueError
            Unknown decision or empty reviewer name.
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        if not reviewer.strip():
            raise ValueError("a decision needs a reviewer name")
        ts = _now()
        payload = {"study": study_key, "finding": finding_id, "decision": decision, "reason": reason or ""}
        return self._write(reviewer, "decision", payload,
                           "INSERT INTO decisions (study_key, finding_id, decision, reviewer, reason, ts) VALUES (?, ?, ?, ?, ?, ?)",
                           (study_key, finding_id, decision, reviewer, reason, ts), ts)

    def record_signoff(self, study_key: str, reviewer: str, findings: list[dict]) -> str:
        ts = _now()
        return self._write(reviewer, "sign-off", {"study": study_key, "findings": findings},
                           "INSERT INTO signoffs (study_key, reviewer, findings_json, ts) VALUES (?, ?, ?, ?)",
                           (study_key, reviewer, json.dumps(findings, sort_keys=True), ts), ts)

    def set_threshold(self, model_id: str, label: str, value: float, reviewer: str, reason: str | None = None) -> str:
        """Change a review threshold (the only way to; logged in the audit table).

        Raises
        ------
        ValueError
            If ``value`` is outside 0..1 or the reviewer is empty.
        """
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"threshold must be within 0..1, got {value}")
        if not reviewer.strip():
            raise ValueError("a threshold change needs a reviewer name")
        old = self.thresholds(model_id).get(label)
        ts = _now()
        return self._write(reviewer, "threshold", {"model": model_id, "label": label, "old": old, "new": float(value), "reason": reason or ""},
                           "INSERT OR REPLACE INTO thresholds (model_id, label, value, reviewer, reason, ts) VALUES (?, ?, ?, ?, ?, ?)",
                           (model_id, label, float(value), reviewer, reason, ts), ts)

    def save_findings(self, study_key: str, findings: list[dict], actor: str = "radreview") -> str:
        """Store the findings of an AI run (replacing that study's previous ones), audit-logged."""
        ts = _now()
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.execute("DELETE FROM findings WHERE study_key = ?", (study_key,))
                self.conn.executemany("INSERT INTO findings (study_key, finding_id, data, ts) VALUES (?, ?, ?, ?)",
                                      [(study_key, f["id"], json.dumps(f, sort_keys=True), ts) for f in findings])
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return self.log_event(actor, "ai-run", {"study": study_key, "findings": [f["id"] for f in findings]})

    def load_findings(self, study_key: str) -> list[dict]:
        rows = self.conn.execute("SELECT data FROM findings WHERE study_key = ? ORDER BY rowid", (study_key,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def log_event(self, actor: str, action: str, payload: dict) -> str:
        """Audit-only event (e.g. a shadow-mode reveal, a model run)."""
        return self._write(actor, action, payload, None)

    # ------------------------------------------------------------------ reads
    def decisions(self, study_key: str) -> dict[str, dict]:
        """Latest decision per finding for a study: ``{finding_id: {decision, reviewer, reason, ts}}``."""
        rows = self.conn.execute(
            "SELECT finding_id, decision, reviewer, reason, ts FROM decisions WHERE study_key = ? ORDER BY id", (study_key,)).fetchall()
        return {f: {"decision": d, "reviewer": r, "reason": reason or "", "ts": ts} for f, d, r, reason, ts in rows}

    def signoffs(self, study_key: str) -> list[dict]:
        rows = self.conn.execute("SELECT reviewer, ts FROM signoffs WHERE study_key = ? ORDER BY id", (study_key,)).fetchall()
        return [{"reviewer": r, "ts": ts} for r, ts in rows]

    def thresholds(self, model_id: str) -> dict[str, float]:
        rows = self.conn.execute("SELECT label, value FROM thresholds WHERE model_id = ?", (model_id,)).fetchall()
        return {lab: float(v) for lab, v in rows}

    def audit_rows(self) -> list[tuple]:
        return self.conn.execute("SELECT id, ts, actor, action, payload, prev_hash, hash FROM audit ORDER BY id").fetchall()

    def verify_audit(self) -> AuditReport:
        """Recompute the hash chain; report edited, deleted, inserted or reordered rows."""
        problems = []
        prev = GENESIS
        expected_id = 1
        rows = self.audit_rows()
        for row_id, ts, actor, action, payload, prev_hash, h in rows:
            if row_id != expected_id:
                problems.append(f"audit row {expected_id} is missing (next row is {row_id})")
                expected_id = row_id
            if prev_hash != prev:
                problems.append(f"audit row {row_id}: previous-hash link broken (a row before it was changed or removed)")
            if _row_hash(prev_hash, row_id, ts, actor, action, payload) != h:
                problems.append(f"audit row {row_id}: content does not match its hash (edited)")
            prev = h
            expected_id += 1
        head = self.conn.execute("SELECT last_hash, count FROM audit_head WHERE one = 1").fetchone()
        if head is None or head[0] != prev or head[1] != len(rows):
            problems.append(f"audit head says {head[1] if head else '?'} rows ending in {head[0][:12] if head else '?'}..., "
                            f"table has {len(rows)} ending in {prev[:12]}... (rows deleted or appended outside radreview)")
        return AuditReport(not problems, len(rows), problems)
