"""What a shadow deployment's AI is measured against: the radiologists' answer per study.

Three sources, each keyed by Study Instance UID:

- a CSV ``study_instance_uid,positive[,x,y,z]`` (one row per lesion for a positive study, LPS mm;
  for example coded from the reports): :func:`import_csv`;
- a reading session's closed reads (:func:`import_session`): per case, the final read of each
  reader (the aided read in sequential mode, else the locked one); the study is positive when
  at least half of its readers called it positive (a tie counts as positive);
- a review database's signed-off decisions on a model's study-level finding
  (:func:`import_reviews`): an AI-positive finding accepted, or an AI-negative one rejected,
  makes the study positive; the reverse makes it negative; ``edit`` counts as positive.

Importing again replaces a study's earlier outcome (audit-logged).
"""

from __future__ import annotations

import csv
import os

from radreview.studies.errors import RadreviewError

from .ledger import ShadowLedger

__all__ = ["OutcomeError", "import_csv", "import_session", "import_reviews"]


class OutcomeError(ValueError, RadreviewError):
    """Outcomes that cannot be imported (the message names the file and the row)."""


def import_csv(ledger: ShadowLedger, path: str | os.PathLike) -> int:
    """Import ``study_instance_uid,positive[,x,y,z]`` rows; returns the number of studies.

    Raises
    ------
    OutcomeError
        Unreadable file, missing column, ``positive`` not 0/1, a study given both answers, or a
        lesion coordinate that is not a number.
    """
    studies: dict[str, tuple[bool, list[list[float]]]] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rd = csv.DictReader(fh)
            cols = [c.strip() for c in rd.fieldnames or []]
            if "study_instance_uid" not in cols or "positive" not in cols:
                raise OutcomeError(f"{path}: row 1: needs columns study_instance_uid,positive[,x,y,z]")
            rd.fieldnames = cols
            for n, row in enumerate(rd, start=2):
                uid = (row.get("study_instance_uid") or "").strip()
                pos = (row.get("positive") or "").strip()
                if not uid or pos not in ("0", "1"):
                    raise OutcomeError(f"{path}: row {n}: needs a study UID and positive 0 or 1 (got {pos!r})")
                lps: list[list[float]] = []
                if all((row.get(k) or "").strip() for k in ("x", "y", "z")):
                    try:
                        lps = [[float(row["x"]), float(row["y"]), float(row["z"])]]
                    except ValueError:
                        raise OutcomeError(f"{path}: row {n}: x, y, z must be numbers (LPS mm)") from None
                if uid in studies and studies[uid][0] != (pos == "1"):
                    raise OutcomeError(f"{path}: row {n}: study {uid} is given as both positive and negative")
                prev = studies.get(uid, (pos == "1", []))[1]
                studies[uid] = (pos == "1", prev + lps)
    except OSError as exc:
        raise OutcomeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for uid, (pos, lps) in studies.items():
        ledger.add_outcome(uid, pos, lps, source=f"csv:{os.path.basename(str(path))}")
    return len(studies)


def _study_uid_of(path: str) -> str:
    import pydicom

    from radreview.studies import scan

    res = scan(path)
    try:
        for e in res.series:
            if e.study_instance_uid:
                return e.study_instance_uid
    finally:
        res.cleanup()
    f = path if os.path.isfile(path) else None
    if f:
        try:
            return str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
        except Exception:  # noqa: BLE001 - not DICOM: no UID
            return ""
    return ""


def import_session(ledger: ShadowLedger, db: str) -> int:
    """Outcomes from a reading session's closed reads (see the module docstring)."""
    from radreview.review.sessions import ReadingSession, SessionDBError

    try:
        s = ReadingSession(db)
    except SessionDBError as exc:
        raise OutcomeError(str(exc)) from None
    try:
        final: dict[tuple[str, str], bool] = {}
        for r in s.reads():
            if r.state == "open" or r.score is None:
                continue
            if r.phase == "aided" or (r.reader, r.case_id) not in final:
                final[(r.reader, r.case_id)] = bool(r.positive)
        n = 0
        for c in s.cases():
            votes = [v for (rd, cid), v in final.items() if cid == c["case_id"]]
            if not votes:
                continue
            uid = _study_uid_of(c["path"])
            if not uid:
                continue
            ledger.add_outcome(uid, sum(votes) * 2 >= len(votes), None, source=f"session:{s.store.name}:{c['case_id']}")
            n += 1
    finally:
        s.close()
    return n


def import_reviews(ledger: ShadowLedger, db: str) -> int:
    """Outcomes from a review database's signed-off studies (see the module docstring)."""
    from radreview.review.store import ReviewStore

    try:
        store = ReviewStore(db, create=False)
    except RadreviewError as exc:
        raise OutcomeError(str(exc)) from None
    n = 0
    try:
        keys = [r[0] for r in store.conn.execute("SELECT DISTINCT study_key FROM signoffs")]
        for key in keys:
            if not key.startswith("study:"):
                continue
            decisions = store.decisions(key)
            for f in store.load_findings(key):
                if f.get("name") != "study" or f.get("probability") is None or f["id"] not in decisions:
                    continue
                ai_pos = float(f["probability"]) >= float(f.get("operating_threshold") or 0.5)
                d = str(decisions[f["id"]]["decision"].value if hasattr(decisions[f["id"]]["decision"], "value")
                        else decisions[f["id"]]["decision"])
                positive = True if d == "edit" else (ai_pos if d == "accept" else not ai_pos)
                ledger.add_outcome(key[len("study:"):], positive, None, source=f"review:{os.path.basename(db)}")
                n += 1
                break
    finally:
        store.close()
    return n
