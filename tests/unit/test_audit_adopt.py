"""Adopting a review database written by radreview 0.1 (no chain head file): ``radreview audit adopt``.

The 0.1 databases are made the old way: the real store writes decisions, an AI run and a
sign-off; then what 0.1 did not have is taken away as 0.1 would have written it (no
``<db>.head`` sidecar, ``ai-run`` rows without the findings' SHA-256, the chain computed over
those rows by the real :func:`row_hash`; optionally without the tables 0.1 lacked).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys

import pytest

from radreview.review.findings import Finding, ReviewSession
from radreview.review.integrity import head_path
from radreview.review.store import AdoptRefused, ReviewStore, StoreTampered, adopt_database
from tests.audit_tamper import recompute_chain


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "radreview.viewer.cli", *args], capture_output=True, text=True)




def _old_db(tmp_path, drop_new_tables: bool = False):
    """A radreview 0.1 style database: decisions, an AI run, a sign-off, no head file."""
    db = tmp_path / "review.sqlite"
    st = ReviewStore(db)
    findings = [Finding("m:liver", "m", "segmentation", "liver", 0.95, 0.85, {"volume_ml": 1500.0, "voxels": 9000}),
                Finding("m:spleen", "m", "segmentation", "spleen", 0.70, 0.85, {"voxels": 500})]
    st.save_findings("study:1", [f.as_dict() for f in findings])
    s = ReviewSession(st, "study:1", findings)
    s.decide("liver", "accept", "dr old")
    s.decide("spleen", "reject", "dr old", "fragment")
    s.sign_off("dr old")
    st.close()
    con = sqlite3.connect(db, isolation_level=None)
    for rid, payload in con.execute("SELECT id, payload FROM audit WHERE action = 'ai-run'").fetchall():
        p = json.loads(payload)
        del p["sha256"]  # 0.1 did not log the digest of the stored findings
        con.execute("UPDATE audit SET payload = ? WHERE id = ?", (json.dumps(p, sort_keys=True, separators=(",", ":")), rid))
    if drop_new_tables:
        con.execute("DROP TABLE runs")
        con.execute("DROP TABLE study_packages")
    recompute_chain(con)
    con.close()
    head_path(db).unlink()
    return db


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_old_database_is_refused_with_the_way_forward(tmp_path):
    db = _old_db(tmp_path)
    with pytest.raises(StoreTampered, match="head file review.sqlite.head is missing") as err:
        ReviewStore(db)
    assert f"radreview audit adopt --db {db} --reason TEXT" in str(err.value)
    p = _cli("audit", "verify", "--db", str(db))
    assert p.returncode == 2 and "radreview audit adopt --db" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("drop_new_tables", [False, True])
def test_adopt_once_then_intact_and_a_later_truncation_is_detected(tmp_path, drop_new_tables):
    db = _old_db(tmp_path, drop_new_tables)
    before = sqlite3.connect(db).execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    p = _cli("audit", "adopt", "--db", str(db), "--reason", "written by radreview 0.1 on this workstation",
             "--user", "dr admin")
    assert p.returncode == 0, p.stderr
    assert "adopted" in p.stdout and head_path(db).is_file()
    rows = ReviewStore(db).audit_rows()  # opens (verified) now
    assert len(rows) == before + 1
    _id, ts, actor, action, payload, _prev, _h = rows[-1]
    body = json.loads(payload)
    assert action == "adopted" and actor == "dr admin" and ts.startswith("20")
    assert body["reason"] == "written by radreview 0.1 on this workstation" and body["adopted_rows"] == before
    assert body["adopted_last_hash"] == rows[-2][6] and list(body["findings_sha256"]) == ["study:1"]
    p = _cli("audit", "verify", "--db", str(db))
    assert p.returncode == 0 and "hash chain intact" in p.stdout
    # the adopted state is the old one, and the store works as usual
    st = ReviewStore(db)
    assert st.decisions("study:1")["m:spleen"]["decision"] == "reject" and st.signoffs("study:1")[0]["reviewer"] == "dr old"
    st.record_decision("study:2", "m:liver", "accept", "dr new")
    st.close()
    # a second adoption is refused and changes nothing
    digest = _sha(db)
    p = _cli("audit", "adopt", "--db", str(db), "--reason", "again")
    assert p.returncode == 2 and "already has a chain head file" in p.stderr
    assert _sha(db) == digest
    with pytest.raises(AdoptRefused, match="already has a chain head file"):
        adopt_database(db, "dr admin", "again")
    # truncation after adoption: drop the last rows and fix the in-database head -> detected
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("DELETE FROM audit WHERE id > ?", (before,))
    con.execute("DELETE FROM decisions WHERE study_key = 'study:2'")
    last = con.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()[0]
    con.execute("UPDATE audit_head SET last_hash = ?, count = ? WHERE one = 1", (last, before))
    con.close()
    p = _cli("audit", "verify", "--db", str(db))
    assert p.returncode == 2 and "does not match its head file" in p.stderr
    with pytest.raises(StoreTampered, match="does not match its head file"):
        ReviewStore(db)


def test_tampered_old_database_is_refused_and_left_untouched(tmp_path):
    db = _old_db(tmp_path)
    con = sqlite3.connect(db, isolation_level=None)
    rid, payload = con.execute("SELECT id, payload FROM audit WHERE action = 'decision' ORDER BY id LIMIT 1").fetchone()
    con.execute("UPDATE audit SET payload = ? WHERE id = ?", (payload.replace('"accept"', '"reject"'), rid))
    con.close()
    digest = _sha(db)
    p = _cli("audit", "adopt", "--db", str(db), "--reason", "old db")
    assert p.returncode == 2 and "not internally intact" in p.stderr and "edited" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert _sha(db) == digest and not head_path(db).exists()
    # a row written straight into a state table (the chain itself intact) is refused too
    (tmp_path / "b").mkdir()
    db2 = _old_db(tmp_path / "b")
    con = sqlite3.connect(db2, isolation_level=None)
    con.execute("INSERT INTO decisions (study_key, finding_id, decision, reviewer, reason, ts, addendum) "
                "VALUES ('study:1', 'm:other', 'accept', 'mallory', '', '2026-01-01T00:00:00+00:00', 0)")
    con.close()
    with pytest.raises(AdoptRefused, match="not in the audit log"):
        adopt_database(db2, "dr admin", "old db")
    assert not head_path(db2).exists()
    with pytest.raises(AdoptRefused, match="needs a reason"):
        adopt_database(db2, "dr admin", "  ")
