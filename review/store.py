"""Local review database: decisions, sign-offs, threshold changes, and a hash-chained audit log.

SQLite (stdlib ``sqlite3``) in WAL mode with ``synchronous=FULL``: a decision is reported saved
only after its transaction committed durably, so a killed process never loses it. Every change
is written together with an audit row in one transaction. Audit rows are hash-chained: each
stores the SHA-256 of the previous row's hash and its own canonical content, and
``audit_head`` keeps the last hash and the row count, so editing, deleting or inserting a row
(including the last one) is detected by :meth:`ReviewStore.verify_audit`.

A file that is not a SQLite database, or fails ``PRAGMA integrity_check``, raises
:class:`StoreCorrupt` naming the file; it is never silently replaced.

On open the store is also checked against what the chain cannot see by itself
(:mod:`radreview.review.integrity`): the chain head is kept outside the database too, in the
HMAC-signed sidecar ``<db>.head`` written atomically after every commit, so a recomputed chain,
a trimmed tail, a wiped audit or a database swapped for an empty one is detected; and the
decisions, sign-offs, thresholds, study packages and saved runs are replayed from the audit rows
and must match their tables, so a row written straight into a table is never obeyed. A failed
check raises :class:`StoreTampered`. A database locked by another process raises
:class:`StoreLocked` with the advice; an explicit path to a missing database raises
:class:`StoreMissing` unless ``create=True``. A database written by radreview 0.1 (no head
file) is adopted once, explicitly and logged, by :func:`adopt_database` (``radreview audit adopt``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["ReviewStore", "StoreCorrupt", "StoreTampered", "StoreLocked", "StoreMissing", "StudyLocked", "AuditReport",
           "AdoptRefused", "adopt_database", "default_db_path", "GENESIS", "Decision", "DECISIONS"]

# the hash chain is shared with the reading-session store (review/audit_chain.py)
from .audit_chain import GENESIS, verify_chain, row_hash as _row_hash  # noqa: E402
from radreview.studies.errors import RadreviewError
from .vocabulary import DECISIONS, Decision  # noqa: E402 - the typed vocabulary (str enums)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_key TEXT NOT NULL, finding_id TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'edit')),
    reviewer TEXT NOT NULL, reason TEXT, ts TEXT NOT NULL, addendum INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS decisions_study ON decisions (study_key, finding_id);
CREATE TABLE IF NOT EXISTS signoffs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, study_key TEXT NOT NULL, reviewer TEXT NOT NULL,
    findings_json TEXT NOT NULL, ts TEXT NOT NULL, addendum INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS study_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, study_key TEXT NOT NULL, model_id TEXT NOT NULL, version TEXT NOT NULL,
    sha256 TEXT NOT NULL, ts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, study_key TEXT NOT NULL, model_id TEXT NOT NULL, version TEXT NOT NULL,
    package_sha256 TEXT NOT NULL, files_json TEXT NOT NULL, ts TEXT NOT NULL);
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


class StoreCorrupt(RuntimeError, RadreviewError):
    """The review database is damaged or not a database; the message names the file."""


class StoreTampered(StoreCorrupt):
    """The database disagrees with its audit chain or chain head file; ``problems`` lists how."""

    def __init__(self, path, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{path}: review database failed verification against its audit log ({len(problems)} problem(s): "
                         + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
                         + ") — it was left untouched; run 'radreview audit verify' for the full list")


class StoreLocked(RuntimeError, RadreviewError):
    """Another process holds the review database's write lock; the message gives the advice."""


class StudyLocked(RuntimeError, RadreviewError):
    """A decision on a signed-off study that is not an addendum with a reason (the store refuses
    it too, so no caller can bypass the sign-off lock)."""


class StoreMissing(FileNotFoundError, RadreviewError):
    """An explicitly named review database does not exist (and ``create`` was not asked for)."""


class AdoptRefused(RuntimeError, RadreviewError):
    """:func:`adopt_database` refused: already adopted, nothing to adopt, or the database is not
    internally intact (the message says which, and leaves the file untouched)."""


def _locked_message(path, exc) -> str:
    return (f"{path}: the review database is locked by another process ({exc}); nothing was saved — close the other "
            "radreview window or command using it and try again")


def default_db_path() -> Path:
    """``$RADREVIEW_DB``, else ``review.sqlite`` in the user data folder
    (:func:`radreview.studies.userdirs.user_data_dir`: ``$RADREVIEW_DATA_DIR``, else
    ``$XDG_DATA_HOME/radreview``, i.e. ``~/.local/share/radreview`` on Linux)."""
    if os.environ.get("RADREVIEW_DB"):
        return Path(os.environ["RADREVIEW_DB"])
    from radreview.studies.userdirs import user_data_dir

    return user_data_dir() / "review.sqlite"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


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

    def __init__(self, path: str | os.PathLike | None = None, create: bool = True, verify: bool = True,
                 timeout: float = 5.0) -> None:
        """Open (or, with ``create``, create) the database; ``verify`` checks it against its audit
        chain and head file (:class:`StoreTampered`); ``timeout`` (s) waits for another writer.

        Raises
        ------
        StoreMissing
            ``path`` does not exist and ``create`` is False.
        StoreCorrupt, StoreTampered, StoreLocked
        """
        self.path = Path(path) if path else default_db_path()
        if not create and not self.path.is_file():
            raise StoreMissing(f"{self.path}: no such review database (check the path; use --create to start a new one)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=timeout)
            if existed:
                res = self.conn.execute("PRAGMA integrity_check").fetchone()[0]
                if res != "ok":
                    raise StoreCorrupt(f"{self.path}: review database failed its integrity check ({res}); "
                                       "it was left untouched — restore it from a backup or move it aside")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.executescript(_SCHEMA)
            self.conn.execute("INSERT OR IGNORE INTO audit_head (one, last_hash, count) VALUES (1, ?, 0)", (GENESIS,))
            for table in ("decisions", "signoffs"):  # databases from before addenda
                cols = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
                if "addendum" not in cols:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN addendum INTEGER NOT NULL DEFAULT 0")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreLocked(_locked_message(self.path, exc)) from None
            raise StoreCorrupt(f"{self.path}: not a usable review database ({exc}); it was left untouched — "
                               "restore it from a backup or move it aside") from None
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(f"{self.path}: not a usable review database ({exc}); it was left untouched — "
                               "restore it from a backup or move it aside") from None

        if verify:
            rep = self.verify_audit()
            if not rep.ok:
                self.conn.close()
                raise StoreTampered(self.path, rep.problems)

    def close(self) -> None:
        self.conn.close()

    def _integrity_problems(self, rows: list[tuple]) -> list[str]:
        """The chain head file and the state tables checked against the audit rows (see module doc)."""
        from .integrity import check_head, compare_state

        last = rows[-1][6] if rows else GENESIS
        return check_head(self.path, len(rows), last) + compare_state(self.conn, rows)

    # ------------------------------------------------------------------ writes
    def _write(self, actor: str, action: str, payload: dict[str, Any], sql: str | None, params: tuple = (),
               ts: str | None = None, many: list[tuple[str, tuple]] | None = None) -> str:
        """Run ``sql`` (and each ``(sql, params)`` of ``many``) and append the audit row in one
        durable transaction, then update the chain head file; returns the timestamp.

        Raises
        ------
        StoreLocked
            Another process held the write lock longer than the timeout (nothing was saved).
        """
        from .integrity import head_lock, write_head

        ts = ts or _now()
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        with self._lock, head_lock(self.path):
            cur = self.conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreLocked(_locked_message(self.path, exc)) from None
            try:
                if sql:
                    cur.execute(sql, params)
                for q, qp in many or ():
                    cur.execute(q, qp)
                prev, count = cur.execute("SELECT last_hash, count FROM audit_head WHERE one = 1").fetchone()
                row_id = cur.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM audit").fetchone()[0]
                h = _row_hash(prev, row_id, ts, actor, action, body)
                cur.execute("INSERT INTO audit (id, ts, actor, action, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (row_id, ts, actor, action, body, prev, h))
                cur.execute("UPDATE audit_head SET last_hash = ?, count = ? WHERE one = 1", (h, count + 1))
                cur.execute("COMMIT")
            except BaseException as exc:
                cur.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
                    raise StoreLocked(_locked_message(self.path, exc)) from None
                raise
            write_head(self.path, count + 1, h)
        return ts

    def _check_decision(self, study_key: str, decision: str, reviewer: str, addendum: bool, reason: str | None) -> None:
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        if not reviewer.strip():
            raise ValueError("a decision needs a reviewer name")
        self._check_unlocked(study_key, addendum, reason)

    def record_decision(self, study_key: str, finding_id: str, decision: Decision | str, reviewer: str, reason: str | None = None,
                        addendum: bool = False) -> str:
        """Persist a decision (accept/reject/edit); returns its timestamp once durably committed.

        Raises
        ------
        ValueError
            Unknown decision or empty reviewer name.
        """
        self._check_decision(study_key, decision, reviewer, addendum, reason)
        decision = Decision(decision).value
        ts = _now()
        payload: dict[str, Any] = {"study": study_key, "finding": finding_id, "decision": decision, "reason": reason or ""}
        if addendum:
            payload["addendum"] = True
        return self._write(reviewer, "decision", payload,
                           "INSERT INTO decisions (study_key, finding_id, decision, reviewer, reason, ts, addendum) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (study_key, finding_id, decision, reviewer, reason, ts, int(bool(addendum))), ts)

    def record_decisions(self, study_key: str, finding_ids: list[str], decision: Decision | str, reviewer: str, reason: str,
                         action: str = "confirm-all-positives", addendum: bool = False) -> str:
        """The same decision on several findings as ONE audit row ``action`` in one transaction
        (e.g. "Confirm all AI positives"); returns the timestamp.

        Raises
        ------
        ValueError
            Unknown decision or empty reviewer name.
        """
        self._check_decision(study_key, decision, reviewer, addendum, reason)
        decision = Decision(decision).value
        ts = _now()
        payload: dict[str, Any] = {"study": study_key, "findings": list(finding_ids), "decision": decision,
                                   "reason": reason or ""}
        if addendum:
            payload["addendum"] = True
        many = [("INSERT INTO decisions (study_key, finding_id, decision, reviewer, reason, ts, addendum) VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (study_key, fid, decision, reviewer, reason or "", ts, int(bool(addendum)))) for fid in finding_ids]
        return self._write(reviewer, action, payload, None, (), ts, many=many)

    def _check_unlocked(self, study_key: str, addendum: bool, reason: str | None) -> None:
        row = self.conn.execute("SELECT reviewer, ts FROM signoffs WHERE study_key = ? ORDER BY id DESC LIMIT 1",
                                (study_key,)).fetchone()
        if row is None:
            return
        if not addendum:
            raise StudyLocked(f"study is signed off (by {row[0]} at {row[1]}): decisions are read-only; "
                              "record a change as an addendum with a reason")
        if not (reason or "").strip():
            raise ValueError("an addendum to a signed-off study needs a reason")

    def record_signoff(self, study_key: str, reviewer: str, findings: list[dict], addendum: bool = False,
                       measurements: list[dict] | None = None, context: list[dict] | None = None) -> str:
        """Persist a sign-off with the findings and decisions it covers (``addendum``: a re-sign-off)
        and, when given, the study's measurements and context structures (anatomy listed with
        the findings, not decided), kept in the hash-chained audit row's payload."""
        ts = _now()
        payload: dict[str, Any] = {"study": study_key, "findings": findings}
        if measurements is not None:
            payload["measurements"] = measurements
        if context:
            payload["context"] = context
        if addendum:
            payload["addendum"] = True
        return self._write(reviewer, "sign-off", payload,
                           "INSERT INTO signoffs (study_key, reviewer, findings_json, ts, addendum) VALUES (?, ?, ?, ?, ?)",
                           (study_key, reviewer, json.dumps(findings, sort_keys=True), ts, int(bool(addendum))), ts)

    def record_study_package(self, study_key: str, model_id: str, version: str, sha256: str, actor: str = "radreview") -> str:
        """Record the model package (version, package SHA-256) a study is reviewed under."""
        ts = _now()
        return self._write(actor, "package", {"study": study_key, "model": model_id, "version": version, "sha256": sha256},
                           "INSERT INTO study_packages (study_key, model_id, version, sha256, ts) VALUES (?, ?, ?, ?, ?)",
                           (study_key, model_id, version, sha256, ts), ts)

    def study_packages(self, study_key: str) -> dict[str, dict]:
        """Latest package per model for a study: ``{model_id: {version, sha256, ts}}``."""
        rows = self.conn.execute("SELECT model_id, version, sha256, ts FROM study_packages WHERE study_key = ? ORDER BY id",
                                 (study_key,)).fetchall()
        return {m: {"version": v, "sha256": h, "ts": ts} for m, v, h, ts in rows}

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
        """Store the findings of an AI run (replacing that study's previous ones) and the audit row
        ``ai-run`` (ids and SHA-256 of the stored rows) in one transaction."""
        from .integrity import findings_digest

        ts = _now()
        rows = [json.dumps(f, sort_keys=True) for f in findings]
        many: list[tuple[str, tuple[Any, ...]]] = [("DELETE FROM findings WHERE study_key = ?", (study_key,))]
        many += [("INSERT INTO findings (study_key, finding_id, data, ts) VALUES (?, ?, ?, ?)", (study_key, f["id"], r, ts))
                 for f, r in zip(findings, rows)]
        return self._write(actor, "ai-run", {"study": study_key, "findings": [f["id"] for f in findings],
                                             "sha256": findings_digest(rows)}, None, (), ts, many=many)

    def load_findings(self, study_key: str) -> list[dict]:
        rows = self.conn.execute("SELECT data FROM findings WHERE study_key = ? ORDER BY rowid", (study_key,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def log_event(self, actor: str, action: str, payload: dict) -> str:
        """Audit-only event (e.g. a shadow-mode reveal, a model run)."""
        return self._write(actor, action, payload, None)

    # ------------------------------------------------------------------ reads
    def decisions(self, study_key: str) -> dict[str, dict]:
        """Latest decision per finding for a study: ``{finding_id: {decision, reviewer, reason, ts}}``."""
        return {d["finding"]: {k: v for k, v in d.items() if k != "finding"} for d in self.decision_history(study_key)}

    def decision_history(self, study_key: str) -> list[dict]:
        """Every decision of a study in order: ``[{finding, decision, reviewer, reason, ts, addendum}]``."""
        rows = self.conn.execute(
            "SELECT finding_id, decision, reviewer, reason, ts, addendum FROM decisions WHERE study_key = ? ORDER BY id",
            (study_key,)).fetchall()
        return [{"finding": f, "decision": Decision(d), "reviewer": r, "reason": reason or "", "ts": ts, "addendum": bool(a)}
                for f, d, r, reason, ts, a in rows]

    def signoffs(self, study_key: str) -> list[dict]:
        """Sign-offs of a study in order: ``[{reviewer, ts, addendum}]``."""
        rows = self.conn.execute("SELECT reviewer, ts, addendum FROM signoffs WHERE study_key = ? ORDER BY id",
                                 (study_key,)).fetchall()
        return [{"reviewer": r, "ts": ts, "addendum": bool(a)} for r, ts, a in rows]

    def thresholds(self, model_id: str) -> dict[str, float]:
        rows = self.conn.execute("SELECT label, value FROM thresholds WHERE model_id = ?", (model_id,)).fetchall()
        return {lab: float(v) for lab, v in rows}

    def audit_rows(self) -> list[tuple]:
        return self.conn.execute("SELECT id, ts, actor, action, payload, prev_hash, hash FROM audit ORDER BY id").fetchall()

    def verify_audit(self) -> AuditReport:
        """Recompute the hash chain; report edited, deleted, inserted or reordered rows, a chain
        that does not match its head file, and state-table rows the audit log does not back."""
        from .integrity import head_lock

        with head_lock(self.path):  # no writer between reading the rows and the head file
            rows = self.audit_rows()
            head = self.conn.execute("SELECT last_hash, count FROM audit_head WHERE one = 1").fetchone()
            problems_outside = self._integrity_problems(rows)
        _, problems = verify_chain(rows, head)
        problems += problems_outside
        return AuditReport(not problems, len(rows), problems)

    def save_mask_version(self, study_key: str, label: str, path: str, sha256: str, reviewer: str, dice_vs_ai: float,
                          ai_path: str | None = None, ai_sha256: str | None = None, voxels_changed: int | None = None) -> dict:
        """Record an edited AI mask as a new version (the AI output is kept, never replaced).

        The NIfTI files themselves are written by the caller (``viewer.editing.save_edited_mask``);
        this stores their paths and SHA-256 in ``mask_versions`` and an audit row ``mask-edit``
        with the Dice between the AI mask and the edited one, in one durable transaction.
        Returns ``{"version": n, "ts": ...}`` (n counts from 1 per study and label).

        Raises
        ------
        ValueError
            If the reviewer is empty or ``dice_vs_ai`` is outside 0..1.
        """
        if not reviewer.strip():
            raise ValueError("a mask edit needs a reviewer name")
        if not 0.0 <= float(dice_vs_ai) <= 1.0:
            raise ValueError(f"Dice must be within 0..1, got {dice_vs_ai}")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS mask_versions (id INTEGER PRIMARY KEY AUTOINCREMENT, study_key TEXT NOT NULL, "
            "label TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL, ai_path TEXT, "
            "ai_sha256 TEXT, reviewer TEXT NOT NULL, dice_vs_ai REAL NOT NULL, voxels_changed INTEGER, ts TEXT NOT NULL, "
            "UNIQUE (study_key, label, version))")
        version = self.conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM mask_versions WHERE study_key = ? AND label = ?",
                                    (study_key, label)).fetchone()[0]
        ts = _now()
        payload = {"study": study_key, "label": label, "version": version, "sha256": sha256, "ai_sha256": ai_sha256,
                   "dice_vs_ai": round(float(dice_vs_ai), 6), "voxels_changed": voxels_changed}
        self._write(reviewer, "mask-edit", payload,
                    "INSERT INTO mask_versions (study_key, label, version, path, sha256, ai_path, ai_sha256, reviewer, "
                    "dice_vs_ai, voxels_changed, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (study_key, label, version, path, sha256, ai_path, ai_sha256, reviewer, float(dice_vs_ai), voxels_changed, ts), ts)
        return {"version": version, "ts": ts}

    # ------------------------------------------------------------------ measurements (review/measurements.py)
    def save_measurements(self, study_key: str, items: list[dict], actor: str) -> str:
        """Replace a study's measurements (ruler, angle, ROI dicts), audit-logged; returns the timestamp."""
        from .measurements import save_measurements

        return save_measurements(self, study_key, items, actor)

    def load_measurements(self, study_key: str) -> list[dict]:
        """A study's saved measurements (``[]`` when none)."""
        from .measurements import load_measurements

        return load_measurements(self, study_key)


# ---------------------------------------------------------------------- adopting a 0.1 database
def adopt_database(path: str | os.PathLike, actor: str, reason: str) -> AuditReport:
    """Adopt a review database written by radreview 0.1, which kept no chain head file.

    Such a database is refused on open (the head file ``<db>.head`` is missing: truncation or a
    recomputed chain could not be told from an honest history). Adoption is the explicit,
    logged way forward; it

    1. refuses a database that already has a head file (adopted before, or written by a later
       radreview: nothing to adopt) or that has no audit rows;
    2. checks, read-only, that the database is internally intact: ``PRAGMA integrity_check``,
       every hash link of the audit chain and its in-database ``audit_head``
       (:func:`radreview.review.audit_chain.verify_chain`), and the state tables replayed from
       the audit rows (:func:`radreview.review.integrity.compare_state`; the only tolerance is
       0.1's ``ai-run`` rows, which logged no SHA-256 of the stored findings);
    3. appends the audit row ``adopted`` (actor ``actor``, its timestamp, payload: ``reason``,
       the OS user, the adopted row count and last hash, and the SHA-256 of each study's stored
       findings that 0.1 never logged, so they are pinned from now on) and writes the signed head
       file, in the store's usual durable transaction;
    4. verifies the adopted database as every open does and returns that report.

    Honest limit: adoption vouches for the chain's internal consistency only; an edit made
    *before* adoption by someone who recomputed the whole chain is indistinguishable from an
    honest history (that is what the head file prevents from now on). The ``adopted`` row
    records who vouched for it, when and why.

    Raises
    ------
    StoreMissing
        No such file.
    AdoptRefused
        Empty ``actor`` or ``reason``; a head file already exists; no audit rows; the chain or
        the state tables fail the checks (each problem named). The file is left untouched.
    StoreCorrupt, StoreLocked
        Not a usable SQLite database / another process holds its write lock.
    """
    import getpass
    import hashlib

    from .integrity import compare_state, findings_digest, head_path, read_head

    db = Path(path)
    if not str(actor or "").strip():
        raise AdoptRefused("adopting a review database needs a user name (who vouches for it)")
    if not str(reason or "").strip():
        raise AdoptRefused("adopting a review database needs a reason (--reason TEXT)")
    if not db.is_file():
        raise StoreMissing(f"{db}: no such review database (check the path)")
    if read_head(db) is not None:
        raise AdoptRefused(f"{db}: it already has a chain head file ({head_path(db).name}): nothing to adopt "
                           f"(adopted before, or written by this radreview); check it with: radreview audit verify --db {db}")
    try:  # read-only checks first: a refused database is never written to
        ro = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            res = ro.execute("PRAGMA integrity_check").fetchone()[0]
            if res != "ok":
                raise StoreCorrupt(f"{db}: review database failed its integrity check ({res}); it was left untouched")
            tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"audit", "audit_head", "decisions", "signoffs"} <= tables:
                raise AdoptRefused(f"{db}: not a radreview review database (no audit tables); nothing was changed")
            rows = ro.execute("SELECT id, ts, actor, action, payload, prev_hash, hash FROM audit ORDER BY id").fetchall()
            head = ro.execute("SELECT last_hash, count FROM audit_head WHERE one = 1").fetchone()
            if not rows:
                raise AdoptRefused(f"{db}: the audit log has no rows: nothing to adopt (the database opens as it is)")
            _, problems = verify_chain(rows, head)
            problems += _state_problems_for_adoption(ro, rows, tables, compare_state)
            legacy = {}
            if not problems:
                from .integrity import replay_state

                for study in sorted(replay_state(rows)["legacy_findings"]):
                    data = [r[0] for r in ro.execute("SELECT data FROM findings WHERE study_key = ? ORDER BY rowid", (study,))]
                    if data:
                        legacy[study] = findings_digest(data)
        finally:
            ro.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreLocked(_locked_message(db, exc)) from None
        raise StoreCorrupt(f"{db}: not a usable review database ({exc}); it was left untouched") from None
    except sqlite3.DatabaseError as exc:
        raise StoreCorrupt(f"{db}: not a usable review database ({exc}); it was left untouched") from None
    if problems:
        raise AdoptRefused(f"{db}: adoption refused: the database is not internally intact ({len(problems)} problem(s): "
                           + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
                           + ") — it was left untouched; restore it from a backup")
    try:
        os_user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        os_user = ""
    store = ReviewStore(db, create=False, verify=False)
    try:
        payload = {"reason": reason.strip(), "os_user": os_user, "database": db.name, "adopted_rows": len(rows),
                   "adopted_last_hash": rows[-1][6],
                   "adopted_audit_sha256": hashlib.sha256("".join(r[6] for r in rows).encode()).hexdigest(),
                   "findings_sha256": legacy, "from": "radreview 0.1 (no chain head file)"}
        store._write(actor.strip(), "adopted", payload, None)
        rep = store.verify_audit()
    finally:
        store.close()
    if not rep.ok:  # cannot happen unless someone wrote meanwhile; say so rather than report success
        raise AdoptRefused(f"{db}: adopted, but verification then failed: " + "; ".join(rep.problems[:5]))
    return rep


def _state_problems_for_adoption(conn, rows, tables: set[str], compare_state) -> list[str]:
    """:func:`compare_state` on a read-only connection to a 0.1 database, whose tables added
    later (``study_packages``, ``runs``, the ``addendum`` columns) may not exist yet: those count
    as empty (the store creates them on its first open)."""
    missing = {"study_packages", "runs", "thresholds", "findings"} - tables
    cols = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in ("decisions", "signoffs")}
    if not missing and all("addendum" in c for c in cols.values()):
        return compare_state(conn, rows, allow_legacy_findings=True)
    mem = sqlite3.connect(":memory:")  # a scratch copy with the current schema: the file itself stays read-only
    try:
        mem.executescript(_SCHEMA)
        for t in ("decisions", "signoffs", "study_packages", "runs", "thresholds", "findings"):
            if t in missing:
                continue
            src_cols = [r[1] for r in conn.execute(f"PRAGMA table_info({t})")]
            data = conn.execute(f"SELECT {', '.join(src_cols)} FROM {t}").fetchall()
            if data:
                mem.executemany(f"INSERT INTO {t} ({', '.join(src_cols)}) VALUES ({', '.join('?' * len(src_cols))})", data)
        return compare_state(mem, rows, allow_legacy_findings=True)
    finally:
        mem.close()
