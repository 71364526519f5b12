"""Reading sessions (issue 8): protocols, refusals, blindness, store on SQLite and a real
PostgreSQL, concurrent writers, kill -9, audit chain, report against independent computation.

Cases are the demo's real chest CT slabs with real LIDC nodules pasted in (built once per test
session); the AI is the shipped nodule model, run once per test session through
``radreview session run-ai``; other sessions reuse those stored results.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from radreview.review.sessions import ReadingSession, SessionError, read_cases_csv, read_truth_csv
from tests.pg_server import pg_server, pg_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
MODEL = "ct-nodule-2p5d"


def cli(*args, check: bool | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    if check is True:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="session")
def demo_cases(tmp_path_factory, data_dir):
    """The demo session's cases: 4 real chest CT slabs, 2 with a pasted LIDC nodule (no AI yet)."""
    d = tmp_path_factory.mktemp("demo")
    db = d / "demo.db"
    r = cli("session", "demo", db, "--data", data_dir, "--no-ai", "--cases", 4, "--seed", 11)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    folder = Path(info["folder"])
    return {"db": db, "folder": folder, "cases": folder / "cases.csv", "truth": folder / "truth.csv", "ai": {}, "info": info}


@pytest.fixture(scope="session")
def demo(demo_cases):
    """The demo session with the real nodule model run on every case (``session run-ai``)."""
    r = cli("session", "run-ai", demo_cases["db"])
    assert r.returncode == 0, r.stderr
    s = ReadingSession(demo_cases["db"])
    ai = s.ai_results()
    s.close()
    return {**demo_cases, "ai": ai}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    """A fresh session database location: a SQLite file or a database on a real PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "session.db")
    return request.getfixturevalue("pg_url")


def make_session(db, demo, mode, readers=("a", "b"), seed=5, truth=True, with_ai=True) -> ReadingSession:
    t, les = read_truth_csv(demo["truth"]) if truth else ({}, [])
    s = ReadingSession.create(db, read_cases_csv(demo["cases"]), list(readers), mode, truth=t, lesions=les, seed=seed)
    if with_ai:
        for cid, res in demo["ai"].items():
            s.store_ai(cid, MODEL, res[MODEL])
    return s


def audit_rows(s: ReadingSession) -> int:
    n, problems = s.store.verify_audit()
    assert problems == []
    return n


def ai_strings(demo, case_id) -> list[str]:
    """Spellings of the AI's values for a case that must not appear in a blind output."""
    a = demo["ai"][case_id][MODEL]
    out = [f"{a['probability']:.4f}".rstrip("0"), "probability", "threshold", MODEL]
    out += [str(v) for f in a["findings"] for v in f["center_lps"]]
    return [s for s in out if s not in ("0.", "0", "")]


# ---------------------------------------------------------------------------------------- demo / AI
def test_demo_has_real_truth_and_run_ai_stored_every_case(demo):
    truth, lesions = read_truth_csv(demo["truth"])
    assert len(truth) == 4 and sum(truth.values()) == 2
    assert len(lesions) == 2 and {les[0] for les in lesions} == {c for c, v in truth.items() if v}
    assert set(demo["ai"]) == set(truth)
    for res in demo["ai"].values():
        a = res[MODEL]
        assert 0.0 <= a["probability"] <= 1.0 and a["threshold"] == 0.5 and a["positive"] == (a["probability"] >= 0.5)
    r = cli("audit", "verify", "--db", demo["db"])
    assert r.returncode == 0 and "hash chain intact" in r.stdout, r.stderr


# ---------------------------------------------------------------------------------------- protocols
def test_sequential_protocol_and_every_refusal(backend, demo):
    s = make_session(backend, demo, "sequential")
    c1, c2 = s.worklist("a")[:2]
    # reveal before the unaided read exists / before it is locked: refused, nothing changed
    for _ in range(2):
        n = audit_rows(s)
        with pytest.raises(SessionError, match="lock the unaided read"):
            s.reveal("a", c1)
        assert audit_rows(s) == n
        s.record("a", c1, score=30, findings=[{"lps": [10, -20, 30], "diameter_mm": 7}])
    # final before lock: refused, nothing changed
    n = audit_rows(s)
    with pytest.raises(SessionError, match="--lock"):
        s.record("a", c1, score=90, final=True)
    assert audit_rows(s) == n and s.reads("a", c1)[0].score == 30
    out = s.record("a", c1, score=35, lock=True).as_dict()
    assert out["state"] == "locked" and out["phase"] == "unaided" and out["findings"][0]["diameter_mm"] == 7.0
    assert not any(w in json.dumps(out) for w in ai_strings(demo, c1))
    # recording the locked unaided read again: refused, nothing changed
    n = audit_rows(s)
    with pytest.raises(SessionError, match="locked"):
        s.record("a", c1, score=80)
    with pytest.raises(SessionError, match="locked"):
        s.record("a", c1, score=80, lock=True)
    assert audit_rows(s) == n and [x.score for x in s.reads("a", c1)] == [35.0]
    with pytest.raises(SessionError, match="no reader"):
        s.reveal("nobody", c1)
    # reveal: the AI's answer; opens the revised read as a copy of the unaided one
    ai = s.reveal("a", c1)
    want = demo["ai"][c1][MODEL]
    assert ai == {k: want[k] for k in ("model", "probability", "threshold", "positive", "findings")}
    assert s.case_state("a", c1) == "aided open" and s.is_blind("a", c2) and not s.is_blind("a", c1)
    # the revised read: --lock now refused; new finding marked as a revision
    with pytest.raises(SessionError, match="--final"):
        s.record("a", c1, score=75, lock=True)
    out = s.record("a", c1, score=75, findings=[{"lps": [10, -20, 30], "diameter_mm": 7}, {"lps": [40, -50, 60]}],
                   final=True).as_dict()
    assert out["phase"] == "aided" and out["state"] == "final"
    assert [f.get("revised", False) for f in out["findings"]] == [False, True]
    reads = {x.phase: x for x in s.reads("a", c1)}
    assert reads["unaided"].score == 35 and reads["aided"].score == 75  # both reads kept
    # any read after final: refused, nothing changed
    n = audit_rows(s)
    for kw in ({}, {"final": True}, {"lock": True}):
        with pytest.raises(SessionError, match="final"):
            s.record("a", c1, score=10, **kw)
    assert audit_rows(s) == n
    kinds = [e["kind"] for e in s.events("a", c1)]
    assert kinds[:4] == ["opened", "first_interaction", "score_set", "finding_added"]
    for k in ("locked", "revealed", "revised", "final"):
        assert kinds.count(k) == 1
    assert kinds.index("locked") < kinds.index("revealed") < kinds.index("revised") < kinds.index("final")
    # reading time = opened -> locked and revealed -> final, from the monotonic clock
    ev = {e["kind"]: e for e in reversed(s.events("a", c1))}
    assert reads["unaided"].seconds == pytest.approx(ev["locked"]["mono"] - ev["opened"]["mono"], abs=2e-3)
    assert reads["aided"].seconds == pytest.approx(ev["final"]["mono"] - ev["revealed"]["mono"], abs=2e-3)
    # status: states, no AI values
    st = s.status("a")
    row = st["readers"][0]
    assert {c["case"]: c["state"] for c in row["cases"]}[c1] == "done" and row["done"] == 1 and row["next"] == c2
    assert not any(w in json.dumps(st) for w in ai_strings(demo, c1)) and "ai_cases_done" not in st
    assert s.status()["ai_cases_done"] == len(demo["ai"])  # the coordinator's view: a count only
    r = cli("audit", "verify", "--db", backend)
    assert r.returncode == 0 and "hash chain intact" in r.stdout, r.stderr
    s.close()


def test_cli_refuses_with_exit_2_and_prints_no_ai_while_blind(tmp_path, demo):
    """The headless twins: each refusal is one line ``radreview: error: ...``, exit 2, nothing changed."""
    db = tmp_path / "cli.db"
    s = make_session(db, demo, "sequential", readers=("a",))
    c = s.worklist("a")[0]
    r = cli("session", "record", db, "--reader", "a", "--case", c, "--score", 30, "--finding", "10,-20,30,7",
            "--box", "1,2,3,11,12,13", "--text", "RUL nodule", "--lock")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["state"] == "locked" and out["findings"][0]["lps"] == [10.0, -20.0, 30.0] and out["text"] == "RUL nodule"
    assert out["findings"][1] == {"id": "f2", "type": "box", "box": [[1.0, 2.0, 3.0], [11.0, 12.0, 13.0]],
                                  "diameter_mm": None, "label": None}
    assert not any(w in r.stdout for w in ai_strings(demo, c))
    n = audit_rows(s)
    r = cli("session", "record", db, "--reader", "a", "--case", c, "--score", 80)
    assert r.returncode == 2 and r.stderr.startswith("radreview: error: ") and "locked" in r.stderr
    r = cli("session", "reveal", db, "--reader", "a", "--case", s.worklist("a")[1], "--json")
    assert r.returncode == 2 and "lock the unaided read" in r.stderr and r.stdout == ""
    assert audit_rows(s) == n
    st = cli("session", "status", db, "--reader", "a", "--json")
    assert st.returncode == 0 and "probability" not in st.stdout and MODEL not in st.stdout
    assert json.loads(st.stdout)["readers"][0]["cases"][0]["state"] == "unaided locked"
    r = cli("session", "reveal", db, "--reader", "a", "--case", c, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["probability"] == demo["ai"][c][MODEL]["probability"]
    r = cli("session", "record", db, "--reader", "a", "--case", c, "--score", 60, "--final")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "final"
    r = cli("session", "record", db, "--reader", "a", "--case", c, "--score", 10)
    assert r.returncode == 2 and "final" in r.stderr
    sh = tmp_path / "shadow.db"
    make_session(sh, demo, "shadow", readers=("a",)).close()
    r = cli("session", "reveal", sh, "--reader", "a", "--case", c, "--json")
    assert r.returncode == 2 and "shadow mode" in r.stderr and r.stdout == ""
    from radreview.review.sessions.core import DEFAULT_QUESTION, MODES
    from radreview.viewer.cli import session as cli_session

    assert cli_session.MODES == MODES and cli_session.DEFAULT_QUESTION == DEFAULT_QUESTION


def test_shadow_mode_never_reveals_and_outputs_hold_no_ai(backend, demo):
    s = make_session(backend, demo, "shadow", readers=("a",))
    c = s.worklist("a")[0]
    out = s.record("a", c, score=60, lock=True).as_dict()
    assert out["state"] == "locked" and not any(w in json.dumps(out) for w in ai_strings(demo, c))
    n = audit_rows(s)
    for case in s.worklist("a"):
        with pytest.raises(SessionError, match="shadow mode"):
            s.reveal("a", case)
    assert audit_rows(s) == n
    with pytest.raises(SessionError, match="final"):
        s.record("a", c, score=10)
    st = s.status("a")
    assert "probability" not in json.dumps(st) and st["readers"][0]["done"] == 1
    assert all(s.is_blind("a", case) for case in s.worklist("a"))
    s.close()


def test_concurrent_mode_ai_visible_from_start(tmp_path, demo):
    s = make_session(tmp_path / "conc.db", demo, "concurrent", readers=("a",))
    c = s.worklist("a")[0]
    assert not s.is_blind("a", c)
    assert s.reveal("a", c)["probability"] == demo["ai"][c][MODEL]["probability"]
    out = s.record("a", c, score=55, final=True)
    assert out.phase == "aided" and out.state == "final" and s.case_state("a", c) == "done"
    with pytest.raises(SessionError, match="final"):
        s.record("a", c, score=5)
    s.close()


def test_worklist_seeded_assignment_and_resume(tmp_path, demo_cases):
    cases = read_cases_csv(demo_cases["cases"])
    a = ReadingSession.create(tmp_path / "a.db", cases, ["r1", "r2"], "sequential", seed=42)
    b = ReadingSession.create(tmp_path / "b.db", cases, ["r1", "r2"], "sequential", seed=42)
    assert a.worklist("r1") == b.worklist("r1") and a.worklist("r2") == b.worklist("r2")
    assert sorted(a.worklist("r1")) == sorted(c["case_id"] for c in cases)
    orders = {tuple(ReadingSession.create(tmp_path / f"s{k}.db", cases, ["r1"], "shadow", seed=k).worklist("r1"))
              for k in range(6)}
    assert len(orders) > 1  # the order really depends on the seed
    # a case restricted to one reader (readers column)
    p = tmp_path / "cases.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "path", "readers"])
        for i, c in enumerate(cases):
            w.writerow([c["case_id"], c["path"], "r1" if i == 0 else ""])
    r = cli("session", "create", tmp_path / "r.db", "--cases", p, "--readers", "r1,r2", "--mode", "sequential", "--seed", 3)
    assert r.returncode == 0, r.stderr
    r = cli("session", "record", tmp_path / "r.db", "--reader", "r2", "--case", cases[0]["case_id"], "--score", 40)
    assert r.returncode == 2 and "not assigned" in r.stderr
    with pytest.raises(SessionError, match="not assigned"):
        ReadingSession(tmp_path / "r.db").reveal("r2", cases[0]["case_id"])
    # pause and resume in another process: the open read is the resume point, its data kept
    s = ReadingSession(tmp_path / "r.db")
    first = s.worklist("r1")[0]
    s.open_read("r1", first)
    s.record("r1", first, score=20, findings=[{"lps": [1, 2, 3], "diameter_mm": 6.5, "label": "RUL"}])
    s.close()
    st = ReadingSession(tmp_path / "r.db").status("r1")["readers"][0]
    assert st["next"] == first and st["in_progress"] == 1
    s = ReadingSession(tmp_path / "r.db")
    again = s.open_read("r1", first)
    assert again.score == 20 and again.findings[0]["label"] == "RUL"
    assert [e["kind"] for e in s.events("r1", first)].count("opened") == 1


def test_bad_input_is_refused_with_a_clear_message(tmp_path, demo_cases):
    bad = tmp_path / "bad.csv"
    bad.write_text("case,file\nx,y\n")
    r = cli("session", "create", tmp_path / "x.db", "--cases", bad, "--readers", "a", "--mode", "shadow")
    assert r.returncode == 2 and "bad.csv" in r.stderr and "case_id,path" in r.stderr
    ReadingSession.create(tmp_path / "x.db", read_cases_csv(demo_cases["cases"]), ["a"], "shadow").close()
    r = cli("session", "create", tmp_path / "x.db", "--cases", demo_cases["cases"], "--readers", "a", "--mode", "shadow")
    assert r.returncode == 2 and "already holds a reading session" in r.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all")
    r = cli("session", "status", junk, "--json")
    assert r.returncode == 2 and "junk.db" in r.stderr and "not a SQLite database" in r.stderr
    s = ReadingSession(tmp_path / "x.db")
    c = s.worklist("a")[0]
    with pytest.raises(SessionError, match="0-100"):
        s.record("a", c, score=120)
    with pytest.raises(SessionError, match="score"):
        s.record("a", c, lock=True)
    r = cli("session", "record", tmp_path / "x.db", "--reader", "a", "--case", c, "--finding", "1,2")
    assert r.returncode == 2 and "x,y,z" in r.stderr


# ---------------------------------------------------------------------------------------- store
WRITER = r"""
import sys, time
from radreview.review.sessions import ReadingSession
db, reader = sys.argv[1], sys.argv[2]
s = ReadingSession(db)
for c in s.worklist(reader):
    s.record(reader, c, score=10.0, findings=[{"lps": [1.0, 2.0, 3.0]}])
    s.record(reader, c, score=70.0, lock=True)
    s.reveal(reader, c)
    s.record(reader, c, score=40.0, final=True)
print("ok", flush=True)
"""


def test_two_reader_processes_write_at_once(backend, demo):
    s = make_session(backend, demo, "sequential", readers=("a", "b"))
    before = audit_rows(s)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(backend), r], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT) for r in ("a", "b")]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    st = s.status()
    assert [r["done"] for r in st["readers"]] == [4, 4]
    reads = s.reads()
    assert len(reads) == 16 and {(r.phase, r.score) for r in reads} == {("unaided", 70.0), ("aided", 40.0)}
    # per case and reader: opened, first_interaction, score_set, finding_added, score_set, locked,
    # revealed, first_interaction (of the revised read), revised, score_set, final = 11 audit rows
    assert audit_rows(s) == before + 8 * 11  # audit_rows also verifies the chain
    s.close()


KILLED = r"""
import sys
from radreview.review.sessions import ReadingSession
db = sys.argv[1]
s = ReadingSession(db)
cases = s.worklist("a")
i = 0
while True:
    for c in cases:
        i += 1
        s.record("a", c, score=float(i % 100), findings=[{"lps": [float(i), 0.0, 0.0]}])
        print(f"saved {c} {i}", flush=True)
"""


def test_kill9_during_a_read_loses_nothing_reported_saved(backend, demo_cases):
    s = make_session(backend, demo_cases, "sequential", readers=("a",), with_ai=False)
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(backend)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    saved = {}
    t0 = time.monotonic()
    while len(saved) < 4 or max(int(v) for v in saved.values()) < 40:
        line = p.stdout.readline()
        assert line, p.stderr.read()[-2000:]
        _, c, i = line.split()
        saved[c] = i
        assert time.monotonic() - t0 < 120
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    s.close()
    s = ReadingSession(backend)
    for c, i in saved.items():
        got = s.reads("a", c)[0]
        # the last value reported saved is there (or a later one written after the last line read)
        assert got.findings[0]["lps"][0] >= float(i)
    assert audit_rows(s) > len(saved)  # and the hash chain is intact
    s.close()


def test_audit_verify_detects_an_edited_session_row(tmp_path, demo_cases):
    db = tmp_path / "t.db"
    s = make_session(db, demo_cases, "shadow", readers=("a",), with_ai=False)
    c = s.worklist("a")[0]
    s.record("a", c, score=80, lock=True)
    s.close()
    assert ReadingSession(db).store.verify_audit()[1] == []
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # WAL, set by the store (persistent)
    con.close()
    eng = ReadingSession(db).store.engine
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL on the store's own connections
    con = sqlite3.connect(db)
    con.execute("UPDATE audit SET payload = replace(payload, '80.0', '20.0') WHERE action = 'read-locked'")
    con.commit()
    con.close()
    r = cli("audit", "verify", "--db", db)
    assert r.returncode == 2 and "FAILED" in r.stderr and "edited" in r.stderr
    assert {t for (t,) in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")} >= {"session_meta"}
    assert "decisions" not in {t for (t,) in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")}


# ---------------------------------------------------------------------------------------- report
def _independent(y, scores, decisions):
    from sklearn.metrics import roc_auc_score

    y, d = np.asarray(y), np.asarray(decisions, bool)
    return {"auc": round(roc_auc_score(y, scores), 4), "sensitivity": round(d[y == 1].mean(), 4),
            "specificity": round(1 - d[y == 0].mean(), 4)}


def test_report_matches_values_computed_from_the_same_reads(tmp_path, demo):
    from sklearn.metrics import cohen_kappa_score, roc_curve

    db = tmp_path / "rep.db"
    s = make_session(db, demo, "sequential", readers=("a", "b"), seed=9)
    truth, _ = s.truth()
    ai = {c: v[MODEL] for c, v in demo["ai"].items()}
    rng = np.random.default_rng(0)
    plan = {}
    for reader in ("a", "b"):
        for c in s.worklist(reader):
            u = float(rng.integers(0, 101))
            # aided: drift toward the AI's answer (automation bias) on some cases
            f = float(np.clip(u + (30 if ai[c]["positive"] else -30) * rng.integers(0, 2), 0, 100))
            plan[(reader, c)] = (u, f)
            s.record(reader, c, score=u, lock=True)
            s.reveal(reader, c)
            s.record(reader, c, score=f, final=True)
    out = tmp_path / "report"
    r = cli("session", "report", db, "--out", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    cases = sorted(truth)
    y = [truth[c] for c in cases]
    want_ai = _independent(y, [ai[c]["probability"] for c in cases], [ai[c]["positive"] for c in cases])
    for k, v in want_ai.items():
        assert rep["ai"][k] == pytest.approx(v, abs=1e-4)
    for blk in rep["readers"]:
        rd = blk["reader"]
        for phase, j in (("unaided", 0), ("aided", 1)):
            sc = [plan[(rd, c)][j] for c in cases]
            want = _independent(y, [v / 100 for v in sc], [v >= 50 for v in sc])
            for k, v in want.items():
                assert blk[phase][k] == pytest.approx(v, abs=1e-4), (rd, phase, k)
            lo, hi = blk[phase]["auc_ci95"]
            assert lo <= blk[phase]["auc"] <= hi
            kap = cohen_kappa_score([v >= 50 for v in sc], [ai[c]["positive"] for c in cases])
            got = blk["kappa_vs_ai"][phase]
            assert (got is None and np.isnan(kap)) or got == pytest.approx(kap, abs=1e-4)
            fpr, tpr, _ = roc_curve(y, [v / 100 for v in sc])
            fig = rep["figures"]["roc"][f"{rd} {phase}"]
            assert np.allclose(fig["fpr"], fpr, atol=1e-4) and np.allclose(fig["tpr"], tpr, atol=1e-4)
        sw = [c for c in cases if (plan[(rd, c)][0] >= 50) != (plan[(rd, c)][1] >= 50)]
        assert blk["switches"]["total"] == len(sw)
        assert blk["switches"]["toward_ai"] == sum((plan[(rd, c)][1] >= 50) == ai[c]["positive"] for c in sw)
        assert blk["switches"]["to_correct"] == sum(int(plan[(rd, c)][1] >= 50) == truth[c] for c in sw)
        assert rep["figures"]["switches"][rd] == blk["switches"]
    # pooled: both readers' reads together
    sc = [plan[(rd, c)][1] for rd in ("a", "b") for c in cases]
    want = _independent(y * 2, [v / 100 for v in sc], [v >= 50 for v in sc])
    assert rep["pooled"]["aided"]["auc"] == pytest.approx(want["auc"], abs=1e-4)
    # MRMC: the reads as ratings (modality = phase); reader AUCs equal the per-reader AUCs above,
    # and `radreview mrmc` on the written ratings.csv gives the same analysis
    m = rep["mrmc"]
    assert m["computed"] is True and m["cases_used"] == len(cases) and m["modalities"] == ["aided", "unaided"]
    for blk in rep["readers"]:
        for phase in ("unaided", "aided"):
            assert m["auc"][phase][blk["reader"]] == pytest.approx(blk[phase]["auc"], abs=1e-4)
    assert m["rrrc"]["comparisons"][0]["a"] == "aided" and m["rrrc"]["comparisons"][0]["b"] == "unaided"
    assert m["power"]["effect"] == 0.05 and len(m["power"]["table"]) > 4
    again = cli("mrmc", out / "ratings.csv", "--json")
    assert again.returncode == 0, again.stderr
    redo = json.loads(again.stdout)
    assert redo["auc"] == m["auc"] and redo["rrrc"]["comparisons"] == m["rrrc"]["comparisons"]
    assert json.loads((out / "mrmc.json").read_text())["variance_components"] == m["variance_components"]
    ratings = list(csv.DictReader(open(out / "ratings.csv")))
    assert len(ratings) == 2 * 2 * len(cases)
    assert all(float(r["rating"]) == plan[(r["reader"], r["case"])][0 if r["modality"] == "unaided" else 1]
               for r in ratings)
    # McNemar on the switches to correct / to incorrect; kappa with its reason where undefined
    for blk in rep["readers"]:
        mc, sw = blk["mcnemar"], blk["switches"]
        assert (mc["to_correct"], mc["to_incorrect"]) == (sw["to_correct"], sw["to_incorrect"])
        assert (mc["p"] is None) == (sw["total"] == 0)
        for phase in ("unaided", "aided"):
            d = blk["kappa_vs_ai_detail"][phase]
            assert d["ci95"] is None and "below 10 cases" in d["reason"] or d["kappa"] is None
    rows = list(csv.DictReader(open(out / "reads.csv")))
    assert len(rows) == 16 and {r["phase"] for r in rows} == {"unaided", "aided"}
    assert all(float(r["score"]) == plan[(r["reader"], r["case_id"])][0 if r["phase"] == "unaided" else 1] for r in rows)
    html = (out / "report.html").read_text()
    assert "MRMC analysis (Obuchowski-Rockette" in html and 'src="roc.png"' in html
    assert "Random readers, random cases" in html and "Power of a follow-up study" in html
    from PIL import Image

    for name in ("roc.png", "switches.png", "times.png", "mrmc_readers.png"):
        im = np.asarray(Image.open(out / name).convert("L"))
        assert im.shape[0] > 300 and im.std() > 5  # a drawn figure, not a blank page


def test_reader_study_report_mrmc_agreement_and_times_from_the_reads(tmp_path, demo_cases):
    """Three readers read 24 cases blind, lock, then revise with the AI shown: the report's MRMC,
    kappa, McNemar and reading-time figures equal independent computations on the same reads."""
    from scipy.stats import binomtest, wilcoxon
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    from radreview.review.sessions.report import write_report

    base = read_cases_csv(demo_cases["cases"])
    cases = [{**base[k % len(base)], "case_id": f"c{k:02d}"} for k in range(24)]
    truth = {c["case_id"]: k % 2 for k, c in enumerate(cases)}
    readers = ("r1", "r2", "r3")
    s = ReadingSession.create(tmp_path / "study.db", cases, list(readers), "sequential", truth=truth, seed=3)
    rng = np.random.default_rng(4)
    ai = {}
    for c in truth:  # an AI result per case: probability, threshold 0.5 (stored as run-ai stores it)
        p = float(np.clip(rng.normal(0.3 + 0.4 * truth[c], 0.2), 0, 1))
        ai[c] = p >= 0.5
        s.store_ai(c, MODEL, {"model": MODEL, "probability": p, "threshold": 0.5, "positive": p >= 0.5, "findings": []})
    plan = {}
    for rd in readers:
        for c in s.worklist(rd):
            u = float(np.clip(rng.normal(40 + 25 * truth[c], 18), 0, 100))
            a = float(np.clip(u + rng.normal(8 if truth[c] else -6, 10), 0, 100))
            plan[(rd, c)] = (u, a)
            s.open_read(rd, c)
            s.record(rd, c, score=u, lock=True)
            s.reveal(rd, c)
            s.record(rd, c, score=a, final=True)
    rep = write_report(s, tmp_path / "out")
    s.close()
    m = rep["mrmc"]
    assert m["computed"] and m["cases_used"] == 24 and m["excluded"] == {}
    y = [truth[c["case_id"]] for c in cases]
    for rd in readers:
        for j, phase in ((0, "unaided"), (1, "aided")):
            want = roc_auc_score(y, [plan[(rd, c["case_id"])][j] for c in cases])
            assert m["auc"][phase][rd] == pytest.approx(want, abs=1e-12)
    cmp = m["rrrc"]["comparisons"][0]
    assert (cmp["a"], cmp["b"]) == ("aided", "unaided") and m["rrrc"]["reason"] is None and 0 < m["rrrc"]["p"] < 1
    assert cmp["ci95"][0] < cmp["difference"] < cmp["ci95"][1]
    assert all(row["power"] is not None for row in m["power"]["table"])
    # Fleiss' kappa among the three readers, written out (Fleiss 1971)
    for j, phase in ((0, "unaided"), (1, "aided")):
        d = np.array([[plan[(rd, c["case_id"])][j] >= 50 for rd in readers] for c in cases], int)
        n_pos = d.sum(axis=1)
        k = len(readers)
        p_i = (n_pos * (n_pos - 1) + (k - n_pos) * (k - n_pos - 1)) / (k * (k - 1))
        pj = n_pos.sum() / d.size
        pe = pj ** 2 + (1 - pj) ** 2
        fk = rep["agreement"]["fleiss_readers"][phase]
        assert fk["kappa"] == pytest.approx((p_i.mean() - pe) / (1 - pe), abs=1e-4)
        assert fk["ci95"][0] <= fk["kappa"] <= fk["ci95"][1] and fk["ci95"][0] < fk["ci95"][1]
    for blk in rep["readers"]:
        rd = blk["reader"]
        right = {c: (plan[(rd, c)][0] >= 50) == bool(truth[c]) for c in truth}
        after = {c: (plan[(rd, c)][1] >= 50) == bool(truth[c]) for c in truth}
        b = sum(after[c] and not right[c] for c in truth)
        w = sum(right[c] and not after[c] for c in truth)
        mc = blk["mcnemar"]
        assert (mc["to_correct"], mc["to_incorrect"]) == (b, w)
        assert mc["p"] == (None if b + w == 0 else pytest.approx(binomtest(b, b + w).pvalue, abs=1e-4))
        for j, phase in ((0, "unaided"), (1, "aided")):
            kd = blk["kappa_vs_ai_detail"][phase]
            want = cohen_kappa_score([plan[(rd, c)][j] >= 50 for c in truth], [ai[c] for c in truth])
            assert kd["kappa"] == pytest.approx(want, abs=1e-4) and kd["n"] == 24
            assert kd["ci95"][0] < kd["kappa"] < kd["ci95"][1], kd
        rt = blk["reading_time"]
        reads = {(r.case_id, r.phase): r.seconds for r in ReadingSession(tmp_path / "study.db").reads(reader=rd)}
        un = [reads[(c, "unaided")] for c in truth]
        ad = [reads[(c, "aided")] for c in truth]
        assert rt["pairs"] == 24
        assert rt["first"]["median"] == pytest.approx(float(np.median(un)), abs=1e-3)
        assert rt["wilcoxon_p"] == pytest.approx(wilcoxon(ad, un).pvalue, abs=1e-4)
    html = (tmp_path / "out" / "report.html").read_text()
    for text in ("Random readers, random cases", "Fixed readers, random cases", "Random readers, fixed cases",
                 "Power of a follow-up study", "Fleiss' kappa among readers", "McNemar", "How to read it"):
        assert text in html, text
    assert "Not defined" not in html


def test_report_without_truth_has_null_metrics(tmp_path, demo):
    db = tmp_path / "nt.db"
    s = make_session(db, demo, "shadow", readers=("a",), truth=False)
    for c in s.worklist("a"):
        s.record("a", c, score=60, lock=True)
    out = tmp_path / "r"
    from radreview.review.sessions.report import write_report

    write_report(s, out)
    rep = json.loads((out / "report.json").read_text())
    blk = rep["readers"][0]
    assert blk["unaided"]["auc"] is None and blk["unaided"]["sensitivity"] is None and blk["unaided"]["auc_ci95"] is None
    assert rep["ai"]["auc"] is None and blk["aided"] is None and blk["switches"] is None
    # reading time is still reported: the median of the stored reads' seconds
    secs = [r.seconds for r in s.reads() if r.phase == "unaided"]
    assert len(secs) == len(s.worklist("a")) and all(x >= 0 for x in secs)
    assert blk["unaided"]["median_seconds"] == pytest.approx(float(np.median(secs)), abs=1e-4)


def test_deidentified_export_of_the_session_cases(tmp_path, demo_cases, uncompressed_ct):
    """``session export``: every case de-identified (DICOM through Annex E, image files as voxels
    + geometry only), with a cases.csv a new session can be created from; refused into a
    non-empty folder."""
    import pydicom
    import SimpleITK as sitk

    folder, paths, dss = uncompressed_ct
    for p in paths:  # plant identifying values in the real slices
        ds = pydicom.dcmread(p)
        ds.PatientName, ds.PatientID, ds.InstitutionName = "Doe^Jane", "MRN-4711", "St Elsewhere"
        ds.save_as(p)
    src = read_cases_csv(demo_cases["cases"])[:1]
    cases = tmp_path / "cases.csv"
    cases.write_text(f"case_id,path\n{src[0]['case_id']},{src[0]['path']}\nct1,{folder}\n")
    db = tmp_path / "x.db"
    ReadingSession.create(db, read_cases_csv(cases), ["a"], "shadow", models=[]).close()
    out = tmp_path / "export"
    r = cli("session", "export", db, "--out", out)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["cases"] == 2 and summary["files"] == len(paths) + 1
    exported = sorted((out / "ct1").rglob("*.dcm"))
    assert len(exported) == len(paths)
    old_uids = {str(d.SOPInstanceUID) for d in dss} | {str(dss[0].StudyInstanceUID), str(dss[0].SeriesInstanceUID)}
    for f in exported:
        ds = pydicom.dcmread(f)
        text = str(ds)
        assert "Doe^Jane" not in text and "MRN-4711" not in text and "St Elsewhere" not in text
        assert not ({str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)} & old_uids)
        assert ds.PatientIdentityRemoved == "YES"
    assert len({str(pydicom.dcmread(f).StudyInstanceUID) for f in exported}) == 1  # consistent across the study
    img = sitk.ReadImage(str(out / src[0]["case_id"] / "image.nii.gz"))
    orig = sitk.ReadImage(src[0]["path"])
    assert img.GetSize() == orig.GetSize() and np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(orig))
    rows = read_cases_csv(out / "cases.csv")  # a new session can be made from the export
    assert [r["case_id"] for r in rows] == [src[0]["case_id"], "ct1"]
    again = cli("session", "export", db, "--out", out)
    assert again.returncode == 2 and "not empty" in again.stderr
