"""Findings, flags, decisions, sign-off, the SQLite store and its hash-chained audit log."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from radreview.review.findings import Finding, ReviewSession, SignOffRefused
from radreview.review.store import ReviewStore, StoreCorrupt


def findings():
    return [
        Finding("m:liver", "m", "segmentation", "liver", 0.95, 0.85, {"volume_ml": 1500.0, "voxels": 9000}),
        Finding("m:lungs", "m", "segmentation", "lungs", 0.70, 0.85, {"voxels": 500}),
        Finding("n:study", "n", "classification", "study", 0.62, 0.9, probability=0.62, operating_threshold=0.5),
        Finding("n:candidate-1", "n", "candidate", "candidate-1", 0.97, 0.9, {"size_mm": 12.0}, probability=0.03,
                operating_threshold=0.5),
    ]


def test_flags_follow_thresholds():
    f = {x.id: x for x in findings()}
    assert not f["m:liver"].needs_review and f["m:lungs"].needs_review
    assert f["n:study"].needs_review and not f["n:candidate-1"].needs_review
    assert Finding("x", "m", "segmentation", "kidneys", None, 0.85, {"voxels": 3}).needs_review  # no confidence: flagged
    assert [f[k].status.value for k in ("m:liver", "m:lungs", "n:study", "n:candidate-1")] == [
        "ai_positive", "needs_review", "needs_review", "ai_negative"]


def test_sign_off_gate_and_restore(tmp_path):
    db = tmp_path / "r.sqlite"
    store = ReviewStore(db)
    s = ReviewSession(store, "study:1", findings())
    with pytest.raises(SignOffRefused) as err:
        s.sign_off("dr a")
    # liver is AI positive (confident, segmented): it needs a decision as well
    assert [f.id for f in err.value.pending] == ["m:liver", "m:lungs", "n:study"]
    assert "m:lungs" in str(err.value) and "n:study" in str(err.value)
    s.decide("lungs", "reject", "dr a", "table foam, not lung")
    s.decide("liver", "accept", "dr a")
    with pytest.raises(SignOffRefused, match="n:study"):
        s.sign_off("dr a")
    s.decide("n:study", "accept", "dr a")
    ts = s.sign_off("dr a")
    assert ts and s.signed_off()[0]["reviewer"] == "dr a"
    store.close()
    # reopening restores the decisions and the sign-off
    store2 = ReviewStore(db)
    s2 = ReviewSession(store2, "study:1", findings())
    assert s2.decisions["m:lungs"] == {"decision": "reject", "reviewer": "dr a", "reason": "table foam, not lung",
                                       "ts": s2.decisions["m:lungs"]["ts"], "addendum": False}
    assert s2.pending() == [] and len(s2.signed_off()) == 1
    assert store2.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store2.verify_audit().ok


def test_bad_decisions_refused(tmp_path):
    s = ReviewSession(ReviewStore(tmp_path / "r.sqlite"), "k", findings())
    with pytest.raises(ValueError, match="accept, reject, edit"):
        s.decide("lungs", "maybe", "dr a")
    with pytest.raises(ValueError, match="reviewer"):
        s.decide("lungs", "accept", " ")
    with pytest.raises(KeyError, match="unknown finding"):
        s.decide("pancreas", "accept", "dr a")


def test_threshold_change_is_logged_and_reflags(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    s = ReviewSession(store, "k", findings())
    assert not s.findings["m:liver"].needs_review
    s.set_threshold("m", "liver", 0.97, "dr b", "stricter for liver")
    assert s.findings["m:liver"].needs_review
    assert store.thresholds("m") == {"liver": 0.97}
    rows = [r for r in store.audit_rows() if r[3] == "threshold"]
    assert len(rows) == 1 and json.loads(rows[0][4])["old"] is None and json.loads(rows[0][4])["new"] == 0.97
    with pytest.raises(ValueError, match="0..1"):
        store.set_threshold("m", "liver", 1.5, "dr b")


def test_audit_detects_edit_delete_and_truncation(tmp_path):
    db = tmp_path / "r.sqlite"
    store = ReviewStore(db)
    s = ReviewSession(store, "k", findings())
    for i in range(4):
        s.decide("lungs", ["accept", "reject"][i % 2], f"dr {i}")
    assert store.verify_audit().ok and store.verify_audit().rows == 4
    store.close()
    raw = sqlite3.connect(db)
    raw.execute("UPDATE audit SET payload = replace(payload, 'reject', 'accept') WHERE id = 2")
    raw.commit()
    rep = ReviewStore(db, verify=False).verify_audit()
    assert not rep.ok and any("row 2" in p and "edited" in p for p in rep.problems)
    # delete the last row (the chain alone cannot see it; the head can)
    db2 = tmp_path / "r2.sqlite"
    st = ReviewStore(db2)
    for d in ("accept", "reject", "edit"):
        ReviewSession(st, "k", findings()).decide("lungs", d, "dr a")
    st.close()
    raw = sqlite3.connect(db2)
    raw.execute("DELETE FROM audit WHERE id = (SELECT MAX(id) FROM audit)")
    raw.commit()
    assert not ReviewStore(db2, verify=False).verify_audit().ok
    raw.execute("DELETE FROM audit WHERE id = 1")
    raw.commit()
    rep = ReviewStore(db2, verify=False).verify_audit()
    assert any("missing" in p or "link broken" in p for p in rep.problems)


def test_corrupt_database_is_reported_not_replaced(tmp_path):
    db = tmp_path / "r.sqlite"
    db.write_bytes(b"this is not sqlite" * 100)
    before = db.read_bytes()
    with pytest.raises(StoreCorrupt, match="r.sqlite"):
        ReviewStore(db)
    assert db.read_bytes() == before
    # a real database with a damaged page
    good = tmp_path / "g.sqlite"
    st = ReviewStore(good)
    for i in range(50):
        st.record_decision("k", f"f{i}", "accept", "dr a", "x" * 200)
    st.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    st.close()
    data = bytearray(good.read_bytes())
    for i in range(4096, len(data) - 1, 97):  # damage every page after the header page
        data[i] = 0xAB
    good.write_bytes(bytes(data))
    damaged = good.read_bytes()
    with pytest.raises(StoreCorrupt, match="integrity check|not a usable"):
        ReviewStore(good)
    assert good.read_bytes() == damaged  # left untouched for recovery


def test_killed_process_keeps_saved_decision(tmp_path):
    db = tmp_path / "r.sqlite"
    code = textwrap.dedent(f"""
        import os, signal, sys
        from radreview.review.store import ReviewStore
        s = ReviewStore({str(db)!r})
        ts = s.record_decision("study:k", "m:lungs", "reject", "dr kill", "saved then killed")
        print("saved", ts, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL and p.stdout.startswith("saved")
    d = ReviewStore(db).decisions("study:k")
    assert d["m:lungs"]["decision"] == "reject" and d["m:lungs"]["reviewer"] == "dr kill"
    assert ReviewStore(db).verify_audit().ok


def _cli(*args, db):
    return subprocess.run([sys.executable, "-m", "radreview.viewer.cli", *args, "--db", str(db)], capture_output=True, text=True)


def test_cli_review_refuses_then_signs_off(ct_series, tmp_path):
    db = tmp_path / "r.sqlite"
    p = _cli("review", str(ct_series), "--model", "ct-organs-2p5d", "--reviewer", "dr cli", "--json", db=db)
    assert p.returncode == 2 and "no such review database" in p.stderr and not db.exists()  # --db must exist...
    p = _cli("review", str(ct_series), "--model", "ct-organs-2p5d", "--reviewer", "dr cli", "--json", "--create", db=db)
    assert p.returncode == 0, p.stderr  # ...unless --create
    data = json.loads(p.stdout.strip().splitlines()[-1])
    statuses = {f["id"]: f["status"] for f in data["findings"]}
    assert set(statuses.values()) <= {"needs_review", "ai_positive", "ai_negative", "not_assessed"}
    flagged = [fid for fid, st in statuses.items() if st in ("needs_review", "ai_positive")]
    assert flagged, "the sample CT should have findings that need a decision"
    assert all(f["reason"] for f in data["findings"] if f["status"] == "not_assessed")
    p = _cli("review", str(ct_series), "--model", "ct-organs-2p5d", "--reviewer", "dr cli", "--sign-off", "--reuse-last-run",
             db=db)
    assert p.returncode == 2
    assert "sign-off refused" in p.stderr and all(fid in p.stderr for fid in flagged)
    decide = sum((["--decide", f"{fid}=accept"] for fid in flagged), [])
    p = _cli("review", str(ct_series), "--model", "ct-organs-2p5d", "--reviewer", "dr cli", *decide,
             "--reason", "checked", "--sign-off", "--reuse-last-run", db=db)
    assert p.returncode == 0, p.stderr
    assert "signed off by dr cli" in p.stdout
    p = _cli("audit", "verify", db=db)
    assert p.returncode == 0 and "hash chain intact" in p.stdout
    raw = sqlite3.connect(db)
    raw.execute("UPDATE decisions SET decision = 'reject'")  # the decisions table is checked against the audit log
    raw.commit()
    p = _cli("audit", "verify", db=db)
    assert p.returncode == 2 and "FAILED" in p.stderr and "decisions table" in p.stderr
    raw.execute("UPDATE audit SET actor = 'someone else' WHERE id = 1")  # and editing the log is caught
    raw.commit()
    p = _cli("audit", "verify", db=db)
    assert p.returncode == 2 and "FAILED" in p.stderr and "row 1" in p.stderr
