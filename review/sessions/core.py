"""Reading sessions: protocol, per-reader worklists, reads and their state machine. GUI-free.

A session is a list of cases, a set of readers and a protocol (``mode``):

``shadow``
    The AI runs on every case and is stored, never shown: one blind read per case (phase
    ``unaided``), closed by lock; :meth:`ReadingSession.reveal` is refused.
``sequential`` (second reader)
    Unaided read -> lock (immutable from then on) -> reveal the AI -> the revised read (phase
    ``aided``, starting as a copy of the unaided one) -> final. Both reads are kept.
``concurrent``
    AI visible from the start (the control arm of a reader study): one read, phase ``aided``,
    closed by final (or lock).

Each reader reads only the cases assigned to them, in an order shuffled from the session's
recorded seed (``numpy.random.default_rng([seed, reader_index])``). Nothing returned for a
reader while a read is blind (:meth:`status`, :meth:`record`, :meth:`worklist`) holds an AI
value; AI results live in their own table and come out only through :meth:`reveal` and the
report.

Events (wall clock UTC and ``time.monotonic()`` with the boot id): ``opened``,
``first_interaction``, ``score_set``, ``finding_added`` / ``finding_changed`` /
``finding_removed``, ``text_changed``, ``locked``, ``revealed``, ``revised``, ``final``. Reading
time is opened -> locked (unaided) and revealed -> final (aided), from the monotonic clock when
both ends were taken since the same boot, else from the wall clock.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import and_, delete, select, update

from .db import (SessionDB, ai_t, assign_t, cases_t, events_t, lesions_t, meta_t, now_utc, reads_t,
                 truth_t)
from radreview.studies.errors import RadreviewError

__all__ = ["MODES", "DEFAULT_QUESTION", "POSITIVE_SCORE", "SessionError", "ReadingSession", "Read", "read_cases_csv",
           "read_truth_csv", "boot_id"]

MODES = ("shadow", "sequential", "concurrent")
DEFAULT_QUESTION = "Solid pulmonary nodule or mass >= 6 mm present?"
#: a read is positive when its suspicion score (0-100) is at least this
POSITIVE_SCORE = 50.0
DEFAULT_MODEL = "ct-nodule-2p5d"


class SessionError(ValueError, RadreviewError):
    """A refused request (wrong phase, locked read, unassigned case, bad input); nothing was changed."""


def boot_id() -> str:
    """Linux boot id: monotonic times are comparable only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"pid-{os.getpid()}"


@dataclass
class Read:
    """One read of one case by one reader in one phase (``unaided`` or ``aided``).

    ``findings``: list of dicts ``{"id", "type": "point"|"box", "lps": [x, y, z]`` (point, LPS
    mm) or ``"box": [[x0, y0, z0], [x1, y1, z1]]`` (LPS mm), ``"label"`` (str or None),
    ``"diameter_mm"`` (ruler measurement, mm, or None), and ``"revised": true`` on findings
    added or changed after the reveal.
    """

    reader: str
    case_id: str
    phase: str
    state: str
    score: float | None
    findings: list[dict]
    text: str
    opened_wall: str
    closed_wall: str | None
    seconds: float | None

    @property
    def positive(self) -> bool | None:
        return None if self.score is None else self.score >= POSITIVE_SCORE

    def as_dict(self) -> dict:
        return {"reader": self.reader, "case": self.case_id, "phase": self.phase, "state": self.state,
                "score": self.score, "positive": self.positive, "findings": self.findings, "text": self.text,
                "opened": self.opened_wall, "closed": self.closed_wall, "reading_seconds": self.seconds}


def read_cases_csv(path: str | os.PathLike) -> list[dict]:
    """``case_id,path[,readers]`` rows (``readers``: ``;``-separated names, empty = everyone).
    Relative paths are taken relative to the CSV's folder.

    Raises
    ------
    SessionError
        Missing file or column, empty or duplicate case id, a path that does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise SessionError(f"{p}: no such cases file")
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"case_id", "path"} <= set(rows[0]):
        raise SessionError(f"{p}: needs a header with columns case_id,path and at least one row")
    out, seen = [], set()
    for i, r in enumerate(rows, start=2):
        cid = (r.get("case_id") or "").strip()
        if not cid or cid in seen:
            raise SessionError(f"{p}, line {i}: {'empty' if not cid else 'duplicate'} case_id {cid!r}")
        seen.add(cid)
        cp = Path((r.get("path") or "").strip())
        cp = cp if cp.is_absolute() else (p.parent / cp)
        if not cp.exists():
            raise SessionError(f"{p}, line {i}: case {cid}: {cp} does not exist")
        readers = [x.strip() for x in (r.get("readers") or "").split(";") if x.strip()]
        out.append({"case_id": cid, "path": str(cp.resolve()), "readers": readers})
    return out


def read_truth_csv(path: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, float, float, float]]]:
    """``case_id,positive[,x,y,z]`` (one row per lesion, LPS mm) -> ``({case: 0|1}, lesions)``.

    Raises
    ------
    SessionError
        Missing file/columns, ``positive`` not 0/1, contradictory rows for a case, bad coordinates.
    """
    p = Path(path)
    if not p.is_file():
        raise SessionError(f"{p}: no such truth file")
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"case_id", "positive"} <= set(rows[0]):
        raise SessionError(f"{p}: needs a header with columns case_id,positive")
    truth: dict[str, int] = {}
    lesions: list[tuple[str, float, float, float]] = []
    for i, r in enumerate(rows, start=2):
        cid = (r["case_id"] or "").strip()
        pos = (r["positive"] or "").strip()
        if pos not in ("0", "1"):
            raise SessionError(f"{p}, line {i}: positive must be 0 or 1, got {pos!r}")
        if cid in truth and truth[cid] != int(pos):
            raise SessionError(f"{p}, line {i}: case {cid} is both positive and negative")
        truth[cid] = int(pos)
        xyz = [(r.get(k) or "").strip() for k in ("x", "y", "z")]
        if any(xyz):
            try:
                lesions.append((cid, float(xyz[0]), float(xyz[1]), float(xyz[2])))
            except ValueError:
                raise SessionError(f"{p}, line {i}: lesion x,y,z must be numbers (LPS mm), got {xyz}") from None
    return truth, lesions


def _diff_findings(old: list[dict], new: list[dict]) -> list[tuple[str, dict]]:
    before = {f["id"]: f for f in old}
    after = {f["id"]: f for f in new}
    ev = [("finding_added", f) for k, f in after.items() if k not in before]
    ev += [("finding_changed", f) for k, f in after.items()
           if k in before and {a: b for a, b in f.items() if a != "revised"} != {a: b for a, b in before[k].items() if a != "revised"}]
    ev += [("finding_removed", f) for k, f in before.items() if k not in after]
    return ev


def normalize_findings(findings: list[dict] | None) -> list[dict]:
    """Validate reader findings; ids default to ``f1, f2...`` by position.

    Raises
    ------
    SessionError
        A finding without 3 finite LPS coordinates (point) or 2 corners (box), or a negative diameter.
    """
    out = []
    for i, f in enumerate(findings or [], start=1):
        g: dict[str, Any] = {"id": str(f.get("id") or f"f{i}")}
        if "box" in f and f["box"] is not None:
            box = [[float(v) for v in c] for c in f["box"]]
            if len(box) != 2 or any(len(c) != 3 for c in box):
                raise SessionError(f"finding {g['id']}: a box needs two corners x,y,z (LPS mm)")
            g["type"], g["box"] = "box", box
            pts = box
        else:
            lps = [float(v) for v in f.get("lps", ())]
            if len(lps) != 3:
                raise SessionError(f"finding {g['id']}: a point needs x,y,z (LPS mm), got {f.get('lps')!r}")
            g["type"], g["lps"] = "point", lps
            pts = [lps]
        if not all(math.isfinite(v) for c in pts for v in c):
            raise SessionError(f"finding {g['id']}: coordinates must be finite numbers (LPS mm)")
        d = f.get("diameter_mm")
        if d is not None:
            d = float(d)
            if not math.isfinite(d) or d < 0:
                raise SessionError(f"finding {g['id']}: diameter must be a non-negative length in mm, got {d}")
        g["diameter_mm"] = d
        g["label"] = f.get("label") or None
        if f.get("revised"):
            g["revised"] = True
        out.append(g)
    return out


def _seconds(start_wall: str, start_mono: float, start_boot: str, end_wall: str, end_mono: float, end_boot: str) -> float:
    if start_boot == end_boot:
        return round(end_mono - start_mono, 3)
    return round((datetime.fromisoformat(end_wall) - datetime.fromisoformat(start_wall)).total_seconds(), 3)


class ReadingSession:
    """A reading session stored in ``db`` (SQLite path or ``postgresql://`` URL).

    Raises
    ------
    SessionDBError
        If ``db`` is not a session database (see :class:`~radreview.review.sessions.db.SessionDB`).
    """

    def __init__(self, db: str | os.PathLike) -> None:
        self.store = SessionDB(db)
        with self.store.read() as conn:
            meta = {k: v for k, v in conn.execute(select(meta_t.c.key, meta_t.c.value))}
        self.mode: str = meta["mode"]
        self.question: str = meta["question"]
        self.seed: int = int(meta["seed"])
        self.models: list[str] = json.loads(meta["models"])
        self.readers: list[str] = json.loads(meta["readers"])

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, db: str | os.PathLike, cases: list[dict], readers: list[str], mode: str,
               models: list[str] | None = None, truth: dict[str, int] | None = None,
               lesions: list[tuple[str, float, float, float]] | None = None, seed: int | None = None,
               question: str = DEFAULT_QUESTION, actor: str = "radreview") -> "ReadingSession":
        """Create a session: ``cases`` as from :func:`read_cases_csv`, each reader's order shuffled
        from ``seed`` (drawn from the OS and recorded when None). ``models``: None = the nodule
        model, ``[]`` = a session without AI (the control for the no-leakage test).

        Raises
        ------
        SessionError
            Unknown mode, no readers or cases, duplicate reader names, truth for unknown cases,
            a case restricted to a reader not in ``readers``.
        SessionDBError
            ``db`` already holds a session or cannot be created.
        """
        if mode not in MODES:
            raise SessionError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        readers = [r.strip() for r in readers if r.strip()]
        if not readers or len(set(readers)) != len(readers):
            raise SessionError("a session needs at least one reader and reader names must be unique")
        if not cases:
            raise SessionError("a session needs at least one case")
        ids = [c["case_id"] for c in cases]
        for c in cases:
            bad = set(c.get("readers") or []) - set(readers)
            if bad:
                raise SessionError(f"case {c['case_id']} is assigned to unknown reader(s) {', '.join(sorted(bad))}")
        unknown = set(truth or {}) - set(ids) | {les[0] for les in lesions or []} - set(ids)
        if unknown:
            raise SessionError(f"truth names case(s) not in the session: {', '.join(sorted(unknown))}")
        seed = int(seed) if seed is not None else int(np.random.default_rng().integers(2**31))
        models = [DEFAULT_MODEL] if models is None else list(models)  # [] = a session without AI
        store = SessionDB(db, create=True)
        with store.write() as conn:
            conn.execute(meta_t.insert(), [{"key": k, "value": v} for k, v in {
                "mode": mode, "question": question, "seed": str(seed), "models": json.dumps(models),
                "readers": json.dumps(readers), "created": now_utc()}.items()])
            conn.execute(cases_t.insert(), [{"case_id": c["case_id"], "path": c["path"], "position": i} for i, c in enumerate(cases)])
            rows = []
            for ri, r in enumerate(readers):
                mine = [c["case_id"] for c in cases if not c.get("readers") or r in c["readers"]]
                order = np.random.default_rng([seed, ri]).permutation(len(mine))
                rows += [{"reader": r, "case_id": mine[j], "position": pos} for pos, j in enumerate(order)]
            if rows:
                conn.execute(assign_t.insert(), rows)
            if truth:
                conn.execute(truth_t.insert(), [{"case_id": k, "positive": int(v)} for k, v in truth.items()])
            if lesions:
                conn.execute(lesions_t.insert(), [{"case_id": c, "x": x, "y": y, "z": z} for c, x, y, z in lesions])
            store.audit(conn, actor, "session-create", {"mode": mode, "question": question, "seed": seed, "models": models,
                                                        "readers": readers, "cases": ids, "truth": bool(truth)})
        store.close()
        return cls(db)

    # ------------------------------------------------------------------ queries
    def cases(self) -> list[dict]:
        """``[{"case_id", "path"}]`` in the order of the cases file."""
        with self.store.read() as conn:
            return [dict(r._mapping) for r in conn.execute(select(cases_t.c.case_id, cases_t.c.path).order_by(cases_t.c.position))]

    def case_path(self, case_id: str) -> str:
        with self.store.read() as conn:
            p = conn.execute(select(cases_t.c.path).where(cases_t.c.case_id == case_id)).scalar()
        if p is None:
            raise SessionError(f"no case {case_id!r} in this session")
        return p

    def worklist(self, reader: str) -> list[str]:
        """The reader's case ids in their randomised order.

        Raises
        ------
        SessionError
            Unknown reader.
        """
        self._check_reader(reader)
        with self.store.read() as conn:
            return list(conn.execute(select(assign_t.c.case_id).where(assign_t.c.reader == reader)
                                     .order_by(assign_t.c.position)).scalars())

    def _check_reader(self, reader: str) -> None:
        if reader not in self.readers:
            raise SessionError(f"no reader {reader!r} in this session (readers: {', '.join(self.readers)})")

    def _check_assigned(self, conn, reader: str, case_id: str) -> None:
        self._check_reader(reader)
        ok = conn.execute(select(assign_t.c.case_id).where(and_(assign_t.c.reader == reader, assign_t.c.case_id == case_id))).first()
        if ok is None:
            known = conn.execute(select(cases_t.c.case_id).where(cases_t.c.case_id == case_id)).first()
            raise SessionError(f"case {case_id!r} is not assigned to reader {reader!r}" if known
                               else f"no case {case_id!r} in this session")

    @staticmethod
    def _row_to_read(r) -> Read:
        m = r._mapping
        secs = None
        if m["closed_wall"] is not None:
            secs = m["closed_mono"] - m["opened_mono"] if m["closed_mono"] is not None else None
        return Read(m["reader"], m["case_id"], m["phase"], m["state"], m["score"], json.loads(m["findings"]), m["text"],
                    m["opened_wall"], m["closed_wall"], None if secs is None else round(secs, 3))

    def reads(self, reader: str | None = None, case_id: str | None = None) -> list[Read]:
        """Stored reads (both phases), optionally for one reader / case."""
        q = select(reads_t)
        if reader:
            q = q.where(reads_t.c.reader == reader)
        if case_id:
            q = q.where(reads_t.c.case_id == case_id)
        with self.store.read() as conn:
            return [self._row_to_read(r) for r in conn.execute(q.order_by(reads_t.c.reader, reads_t.c.case_id, reads_t.c.phase))]

    def events(self, reader: str | None = None, case_id: str | None = None) -> list[dict]:
        q = select(events_t)
        if reader:
            q = q.where(events_t.c.reader == reader)
        if case_id:
            q = q.where(events_t.c.case_id == case_id)
        with self.store.read() as conn:
            return [{**dict(r._mapping), "payload": json.loads(r.payload)} for r in conn.execute(q.order_by(events_t.c.id))]

    def _reads_of(self, conn, reader: str, case_id: str) -> dict[str, Any]:
        rows = conn.execute(select(reads_t).where(and_(reads_t.c.reader == reader, reads_t.c.case_id == case_id))).all()
        return {r.phase: r for r in rows}

    def case_state(self, reader: str, case_id: str) -> str:
        """``not started``, ``unaided open``, ``unaided locked``, ``aided open`` or ``done``.
        Depends only on the reader's own actions, never on the AI."""
        with self.store.read() as conn:
            return self._state(self._reads_of(conn, reader, case_id))

    def _state(self, rs: dict) -> str:
        if self.mode == "concurrent":
            a = rs.get("aided")
            return "not started" if a is None else ("done" if a.state != "open" else "aided open")
        u = rs.get("unaided")
        if u is None:
            return "not started"
        if u.state == "open":
            return "unaided open"
        if self.mode == "shadow":
            return "done"
        a = rs.get("aided")
        if a is None:
            return "unaided locked"
        return "done" if a.state == "final" else "aided open"

    def current_phase(self, reader: str, case_id: str) -> str:
        """The phase a new record goes to (raises :class:`SessionError` when the case is closed)."""
        st = self.case_state(reader, case_id)
        return self._phase_for(st, reader, case_id)

    def _phase_for(self, st: str, reader: str, case_id: str) -> str:
        if st == "done":
            raise SessionError(f"the read of case {case_id} by {reader} is final; it cannot be changed")
        if st == "unaided locked":
            raise SessionError(f"the unaided read of case {case_id} by {reader} is locked; reveal the AI before revising")
        if self.mode == "concurrent" or st == "aided open":
            return "aided"
        return "unaided"

    def is_blind(self, reader: str, case_id: str) -> bool:
        """True while nothing shown to this reader for this case may depend on the AI."""
        st = self.case_state(reader, case_id)
        return self.mode == "shadow" or (self.mode == "sequential" and st in ("not started", "unaided open", "unaided locked"))

    def next_case(self, reader: str) -> str | None:
        """The first case of the reader's worklist that is not done (resume point), or None."""
        states = self.status(reader)["readers"][0]["cases"]
        return next((c["case"] for c in states if c["state"] != "done"), None)

    def status(self, reader: str | None = None) -> dict:
        """Progress per reader: ``{"mode", "question", "readers": [{"reader", "assigned", "done",
        "in_progress", "next", "cases": [{"case", "state"}]}]}``, plus ``ai_cases_done`` (a
        count) when no reader is named. No AI values in it."""
        readers = [reader] if reader else self.readers
        if reader:
            self._check_reader(reader)
        with self.store.read() as conn:
            allreads = conn.execute(select(reads_t.c.reader, reads_t.c.case_id, reads_t.c.phase, reads_t.c.state)).all()
            assigned = conn.execute(select(assign_t.c.reader, assign_t.c.case_id).order_by(assign_t.c.reader, assign_t.c.position)).all()
        by: dict[tuple, dict] = {}
        for r in allreads:
            by.setdefault((r.reader, r.case_id), {})[r.phase] = r
        out = []
        for rd in readers:
            cases = [{"case": c, "state": self._state(by.get((rd, c), {}))} for r_, c in assigned if r_ == rd]
            done = sum(c["state"] == "done" for c in cases)
            out.append({"reader": rd, "assigned": len(cases), "done": done,
                        "in_progress": sum(c["state"] not in ("done", "not started") for c in cases),
                        "next": next((c["case"] for c in cases if c["state"] != "done"), None), "cases": cases})
        res: dict[str, Any] = {"mode": self.mode, "question": self.question, "readers": out}
        if reader is None:  # the coordinator's view: how far the AI run is (a count, never a value)
            res["ai_cases_done"] = len(self.cases()) - len(self.cases_without_ai())
        return res

    # ------------------------------------------------------------------ events and reads
    def _event(self, conn, reader: str, case_id: str, phase: str, kind: str, payload: dict | None = None,
               stamp: tuple[str, float, str] | None = None) -> tuple[str, float, str]:
        wall, mono, boot = stamp or (now_utc(), time.monotonic(), boot_id())
        body = json.dumps(payload or {}, sort_keys=True, separators=(",", ":"))
        conn.execute(events_t.insert().values(reader=reader, case_id=case_id, phase=phase, kind=kind, wall=wall, mono=mono,
                                              boot=boot, payload=body))
        self.store.audit(conn, reader, f"read-{kind}", {"case": case_id, "phase": phase, **(payload or {})}, ts=wall)
        return wall, mono, boot

    def open_read(self, reader: str, case_id: str) -> Read:
        """Open (or resume) the reader's current read of ``case_id``; logs ``opened`` once per phase.

        Raises
        ------
        SessionError
            Unknown reader, case not assigned, or the case is closed / awaiting the reveal.
        """
        with self.store.write() as conn:
            self._check_assigned(conn, reader, case_id)
            rs = self._reads_of(conn, reader, case_id)
            phase = self._phase_for(self._state(rs), reader, case_id)
            if phase not in rs:
                self._insert_read(conn, reader, case_id, phase, None, [], "")
            row = self._reads_of(conn, reader, case_id)[phase]
        return self._row_to_read(row)

    def _insert_read(self, conn, reader, case_id, phase, score, findings, text, kind="opened"):
        wall, mono, boot = self._event(conn, reader, case_id, phase, kind)
        conn.execute(reads_t.insert().values(reader=reader, case_id=case_id, phase=phase, state="open", score=score,
                                             findings=json.dumps(findings), text=text, opened_wall=wall, opened_mono=mono,
                                             boot=boot, updated=wall))

    def record(self, reader: str, case_id: str, score: float | None = None, findings: list[dict] | None = None,
               text: str | None = None, lock: bool = False, final: bool = False) -> Read:
        """Record the reader's current read of ``case_id`` (opening it if needed) and return it.

        ``score``: suspicion 0-100 (positive at >= 50); ``findings``: replaces the read's findings
        when given (see :class:`Read`); ``text``: free text. ``lock`` locks the unaided read
        (sequential) or closes the single read (shadow, concurrent); ``final`` closes the revised
        read (sequential after the reveal) or the single read (concurrent, shadow). A value left
        None is kept. Everything is committed, with its events and audit rows, before returning.

        Raises
        ------
        SessionError
            Case not assigned, read locked or final, ``lock`` after the reveal, ``final`` before
            it (sequential), both flags, score outside 0-100, closing a read without a score.
            Nothing is changed then.
        """
        if lock and final:
            raise SessionError("--lock and --final are exclusive")
        if score is not None and not (0 <= float(score) <= 100 and math.isfinite(float(score))):
            raise SessionError(f"score must be within 0-100, got {score}")
        new_findings = normalize_findings(findings) if findings is not None else None
        with self.store.write() as conn:
            self._check_assigned(conn, reader, case_id)
            rs = self._reads_of(conn, reader, case_id)
            phase = self._phase_for(self._state(rs), reader, case_id)
            if self.mode == "sequential":
                if phase == "unaided" and final:
                    raise SessionError(f"case {case_id}: lock the unaided read (--lock) and reveal the AI before --final")
                if phase == "aided" and lock:
                    raise SessionError(f"case {case_id}: the unaided read is already locked; close the revised read with --final")
            if phase not in rs:
                self._insert_read(conn, reader, case_id, phase, None, [], "")
                rs = self._reads_of(conn, reader, case_id)
            row = rs[phase]
            old_findings = json.loads(row.findings)
            stamp_events: list[tuple[str, dict[str, Any]]] = []
            interacted = conn.execute(select(events_t.c.id).where(and_(
                events_t.c.reader == reader, events_t.c.case_id == case_id, events_t.c.phase == phase,
                events_t.c.kind.in_(("first_interaction",))))).first() is not None
            changes: dict[str, Any] = {}
            if score is not None and float(score) != row.score:
                changes["score"] = float(score)
                stamp_events.append(("score_set", {"score": float(score)}))
            if new_findings is not None:
                if phase == "aided" and self.mode == "sequential":
                    prev = {f["id"]: f for f in old_findings}
                    for f in new_findings:
                        p = prev.get(f["id"])
                        if p is None or {k: v for k, v in p.items() if k != "revised"} != {k: v for k, v in f.items() if k != "revised"}:
                            f["revised"] = True
                        elif p.get("revised"):
                            f["revised"] = True
                diff = _diff_findings(old_findings, new_findings)
                if diff:
                    changes["findings"] = json.dumps(new_findings)
                    stamp_events += [(k, {"finding": f}) for k, f in diff]
            if text is not None and text != row.text:
                changes["text"] = text
                stamp_events.append(("text_changed", {"chars": len(text)}))
            closing = lock or final
            score_after = changes.get("score", row.score)
            if closing and score_after is None:
                raise SessionError(f"case {case_id}: record a suspicion score (0-100) before closing the read")
            if (stamp_events or closing) and not interacted:
                self._event(conn, reader, case_id, phase, "first_interaction")
            if phase == "aided" and self.mode == "sequential" and stamp_events:
                revised = conn.execute(select(events_t.c.id).where(and_(
                    events_t.c.reader == reader, events_t.c.case_id == case_id, events_t.c.kind == "revised"))).first()
                if revised is None:
                    self._event(conn, reader, case_id, phase, "revised")
            for kind, payload in stamp_events:
                self._event(conn, reader, case_id, phase, kind, payload)
            if closing:
                kind = "locked" if (lock and self.mode != "concurrent") else "final"
                if self.mode == "sequential":
                    kind = "locked" if phase == "unaided" else "final"
                wall, mono, boot = self._event(conn, reader, case_id, phase, kind, {"score": score_after})
                changes.update(state="locked" if kind == "locked" else "final", closed_wall=wall,
                               closed_mono=mono if boot == row.boot else None)
                if boot != row.boot:  # closed after a reboot: fall back to the wall clock
                    changes["closed_mono"] = row.opened_mono + _seconds(row.opened_wall, row.opened_mono, row.boot, wall, mono, boot)
            if changes:
                changes["updated"] = now_utc()
                conn.execute(update(reads_t).where(and_(reads_t.c.reader == reader, reads_t.c.case_id == case_id,
                                                        reads_t.c.phase == phase)).values(**changes))
            out = self._reads_of(conn, reader, case_id)[phase]
        return self._row_to_read(out)

    # ------------------------------------------------------------------ AI
    def store_ai(self, case_id: str, model_id: str, result: dict, actor: str = "radreview") -> None:
        """Store one model's result for a case (replacing an earlier one); audit-logged with the
        values, never shown to readers."""
        with self.store.write() as conn:
            ts = now_utc()
            conn.execute(delete(ai_t).where(and_(ai_t.c.case_id == case_id, ai_t.c.model_id == model_id)))
            conn.execute(ai_t.insert().values(case_id=case_id, model_id=model_id, data=json.dumps(result, sort_keys=True), ts=ts))
            self.store.audit(conn, actor, "ai-result", {"case": case_id, "model": model_id, "result": result}, ts=ts)

    def log_ai_refused(self, case_id: str, model_id: str, reason: str, actor: str = "radreview") -> None:
        """Audit-only record that a model refused a case (nothing is shown to readers)."""
        with self.store.write() as conn:
            self.store.audit(conn, actor, "ai-refused", {"case": case_id, "model": model_id, "reason": reason})

    def ai_results(self) -> dict[str, dict[str, dict]]:
        """``{case_id: {model_id: result}}`` (for the report and run-ai; never for a reader's view)."""
        with self.store.read() as conn:
            out: dict[str, dict[str, dict]] = {}
            for r in conn.execute(select(ai_t)):
                out.setdefault(r.case_id, {})[r.model_id] = json.loads(r.data)
        return out

    def cases_without_ai(self) -> list[str]:
        have = self.ai_results()
        return [c["case_id"] for c in self.cases() if not all(m in have.get(c["case_id"], {}) for m in self.models)]

    def reveal(self, reader: str, case_id: str) -> dict:
        """The AI's answer for the case, for this reader: ``{"probability", "threshold",
        "positive", "findings": [...], "model"}`` (first session model). In sequential mode the
        first reveal logs ``revealed`` and opens the revised read as a copy of the locked one.

        Raises
        ------
        SessionError
            Shadow mode; sequential before the unaided read is locked; case not assigned; the AI
            has not run on the case yet. Nothing is changed then.
        """
        if self.mode == "shadow":
            raise SessionError("shadow mode: the AI is never shown to readers in this session")
        if not self.models:
            raise SessionError("this session has no AI model")
        with self.store.write() as conn:
            self._check_assigned(conn, reader, case_id)
            rs = self._reads_of(conn, reader, case_id)
            st = self._state(rs)
            if self.mode == "sequential" and st in ("not started", "unaided open"):
                raise SessionError(f"case {case_id}: lock the unaided read before the AI is revealed")
            ai = conn.execute(select(ai_t.c.data).where(and_(ai_t.c.case_id == case_id, ai_t.c.model_id == self.models[0]))).scalar()
            if ai is None:
                raise SessionError(f"case {case_id}: the AI has not run on it yet (radreview session run-ai)")
            res = json.loads(ai)
            if self.mode == "sequential" and st == "unaided locked":
                u = rs["unaided"]
                self._insert_read(conn, reader, case_id, "aided", u.score, json.loads(u.findings), u.text, kind="revealed")
            else:
                self.store.audit(conn, reader, "ai-viewed", {"case": case_id})
        return {k: res.get(k) for k in ("model", "probability", "threshold", "positive", "findings")}

    def truth(self) -> tuple[dict[str, int], dict[str, list[tuple[float, float, float]]]]:
        with self.store.read() as conn:
            t = {r.case_id: int(r.positive) for r in conn.execute(select(truth_t))}
            les: dict[str, list] = {}
            for r in conn.execute(select(lesions_t).order_by(lesions_t.c.id)):
                les.setdefault(r.case_id, []).append((r.x, r.y, r.z))
        return t, les


def ai_result_from_run(run, model_id: str) -> dict:
    """A session AI result from a :class:`radreview.viewer.workflow.AIRun`-like object's
    classification: ``{"model", "probability", "threshold", "positive", "findings": [{"center_lps",
    "size_mm", "probability"}], "seconds"}``; threshold = the card's ``review_policy.decision_threshold``."""
    res = run.classifications[model_id]
    pkg = run.packages[model_id]
    policy = pkg.meta.get("review_policy", {})
    thr = float(policy.get("decision_threshold", 0.5))
    min_p = float(policy.get("min_candidate_probability", 0.0))
    max_n = int(policy.get("max_candidates", 10**6))
    cands = [c for c in res.candidates if c.probability >= min_p][:max_n]
    p = float(res.study_probability)
    return {"model": model_id, "version": pkg.meta.get("version"), "probability": round(p, 4), "threshold": thr,
            "positive": p >= thr, "seconds": round(float(res.seconds), 3),
            "findings": [{"center_lps": [round(v, 2) for v in c.center_lps], "size_mm": round(float(c.size_mm), 1),
                          "probability": round(float(c.probability), 4)} for c in cands]}


def run_ai(session: ReadingSession, run_models, open_volume, only_missing: bool = True, progress=None) -> list[str]:
    """Run the session's models on every case (or only those without results) and store them.

    ``run_models(volume, model_ids)`` and ``open_volume(path)`` are passed in (the viewer's
    :func:`radreview.viewer.workflow.run_models` and :func:`radreview.studies.open_volume`), so
    this package stays below the viewer layer. Returns the case ids run.

    Raises
    ------
    SessionError
        A model refused a case (the message names case and model).
    """
    todo = session.cases_without_ai() if only_missing else [c["case_id"] for c in session.cases()]
    for cid in todo:
        vol = open_volume(session.case_path(cid))
        run = run_models(vol, session.models)
        for mid in session.models:
            if mid in run.refused:
                raise SessionError(f"case {cid}: model {mid} refused it: {run.refused[mid]}")
            if mid not in run.classifications:
                raise SessionError(f"model {mid} is not a classification model; a session needs a study-level answer")
            session.store_ai(cid, mid, ai_result_from_run(run, mid))
        if progress:
            progress(cid)
    return todo


def ai_from_ledger(session: ReadingSession, ledger, only_missing: bool = True) -> tuple[list[str], list[str]]:
    """Take the session's AI results from a shadow-deployment ledger instead of recomputing them.

    For each case (without results, unless ``only_missing`` is False) the case's image series is
    found by its Series Instance UID (:func:`radreview.studies.scan`) and, for each session model,
    the ledger's stored result of that series and model is stored as the case's AI result (with
    ``"source": "shadow ledger"``), exactly as ``run-ai`` would store it; nothing reaches a reader
    before the protocol allows (:meth:`ReadingSession.reveal`). Returns ``(cases taken, cases
    the ledger has no result for)``.
    """
    from radreview.studies import scan

    results = ledger.results()
    by_series: dict[tuple[str, str], dict] = {}
    for j in ledger.jobs("done"):
        if j["key"] in results:
            by_series[(j["series_uid"].split("#")[0], j["model_id"])] = results[j["key"]]
    todo = session.cases_without_ai() if only_missing else [c["case_id"] for c in session.cases()]
    taken, missing = [], []
    for cid in todo:
        res = scan(session.case_path(cid))
        try:
            uids = [e.series_instance_uid for e in res.volumes if e.series_instance_uid]
        finally:
            res.cleanup()
        found = {}
        for mid in session.models:
            r = next((by_series[(u, mid)] for u in uids if (u, mid) in by_series), None)
            if r is not None and r.get("probability") is not None:
                found[mid] = r
        if len(found) < len(session.models):
            missing.append(cid)
            continue
        for mid, r in found.items():
            session.store_ai(cid, mid, {
                "model": mid, "version": r.get("version"), "probability": r["probability"], "threshold": r["threshold"],
                "positive": bool(r["positive"]), "seconds": (r.get("timings") or {}).get("infer_s"),
                "findings": [{k: f[k] for k in ("center_lps", "size_mm", "probability") if k in f}
                             for f in r.get("findings", [])],
                "source": "shadow ledger"})
        taken.append(cid)
    return taken, missing
