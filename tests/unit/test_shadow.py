"""Shadow deployment: ledger, rules, report, and whole runs on real studies with real Dask
workers (a LocalCluster, and `dask scheduler` + `dask worker` processes on loopback), a worker
killed with SIGKILL mid-job, PostgreSQL stopped mid-run, and Orthanc's changes feed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, generate_uid

from radreview.review.shadow import ShadowLedger, job_key
from radreview.review.shadow.report import build_report
from radreview.review.shadow.rules import RulesError, eligible_models, load_rules
from tests.pacs_server import abdomen_with_uids
from tests.pg_server import pg_server, pg_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
MODEL = "ct-nodule-2p5d"
RULES = """
[[rule]]
name = "chest CT"
modality = ["CT"]
min_slices = 12
slice_thickness_mm = [0.5, 10.0]
models = ["ct-nodule-2p5d"]
"""


def cli(*args, timeout=600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "radreview.viewer.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env=env)


def damaged_copy(src: Path, out: Path, n: int = 12) -> str:
    """``n`` slices of a real series with a new Series UID whose pixel data cannot be decoded
    (JPEG 2000 headers followed by zeros): headers pass intake, the load fails."""
    out.mkdir(parents=True)
    uid = generate_uid()
    for f in sorted(src.iterdir())[:n]:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(5000)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.save_as(out / f.name, enforce_file_format=True)
    return uid


@pytest.fixture(scope="module")
def studies(tmp_path_factory, data_dir):
    """A folder of real studies as they arrive: the chest CT in two reconstructions (B40f, B70f),
    the abdominal CT (with the UIDs it lacks), a damaged series, and a file that is not DICOM."""
    root = tmp_path_factory.mktemp("arrivals") / "incoming"
    root.mkdir()
    for k in ("B40f", "B70f"):
        shutil.copytree(data_dir / "ct-chest-tumor" / f"series_{k}", root / k)
    _, _, abd_series = abdomen_with_uids(data_dir, root / "abdomen")
    bad = damaged_copy(data_dir / "ct-chest-tumor" / "series_B70f", root / "damaged")
    (root / "notes.txt").write_text("not DICOM")
    uids = {k: str(pydicom.dcmread(next((root / k).iterdir()), stop_before_pixels=True).SeriesInstanceUID)
            for k in ("B40f", "B70f")}
    rules = root.parent / "rules.toml"
    rules.write_text(RULES)
    return {"root": root, "uids": uids, "abdomen": abd_series, "damaged": bad, "rules": rules}


def test_rules_match_refuse_and_explain(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text(RULES)
    rules = load_rules(f)
    ok, why = eligible_models(rules, {"modality": "CT", "slices": 30, "slice_thickness_mm": 8.0})
    assert ok == [MODEL] and why == ""
    none, why = eligible_models(rules, {"modality": "MR", "slices": 5, "slice_thickness_mm": None})
    assert none == [] and "modality MR not in CT" in why and "5 slice(s), fewer than 12" in why
    assert "Slice Thickness missing" in why
    f.write_text('[[rule]]\nname = "x"\nmodels = ["m"]\nbody = "CHEST"\n')
    with pytest.raises(RulesError, match="unknown key"):
        load_rules(f)
    f.write_text("[[rule]\n")
    with pytest.raises(RulesError, match="not valid TOML"):
        load_rules(f)


def _fake_series(ledger: ShadowLedger, uid: str, sha: str = "a" * 64) -> str:
    ledger.add_series(uid, f"study-{uid}", {"kind": "files", "files": []}, {"modality": "CT", "study_date": "20260105"},
                      [(MODEL, sha, "int8")])
    return job_key(uid, MODEL, sha, "int8")


def test_ledger_is_idempotent_and_retries_then_fails(tmp_path):
    led = ShadowLedger(tmp_path / "l.db", create=True)
    key = _fake_series(led, "1.2.3")
    assert _fake_series(led, "1.2.3") == key and len(led.jobs()) == 1  # queued once
    assert led.start(key)["attempts"] == 1 and led.start(key) is None  # taken once
    assert led.fail(key, "worker died", retry=True, max_attempts=2) == "queued"
    assert led.runnable() == []  # back-off
    assert led.runnable(now=time.time() + 10)[0]["key"] == key
    led.retry_now()
    assert led.start(key)["attempts"] == 2
    assert led.fail(key, "worker died", retry=True, max_attempts=2) == "failed"
    assert "gave up after 2 attempt(s)" in led.jobs()[0]["reason"]
    assert led.retry_failed() == 1 and led.start(key)["attempts"] == 1
    assert led.complete(key, {"probability": 0.7}) is True
    assert led.complete(key, {"probability": 0.1}) is False  # stored once: the second result is dropped
    assert led.results() == {key: {"probability": 0.7}}
    assert led.verify()[1] == []
    led.close()
    con = sqlite3.connect(tmp_path / "l.db")
    con.execute("UPDATE shadow_results SET data = ?", (json.dumps({"probability": 0.01}),))
    con.commit()
    con.close()
    led = ShadowLedger(tmp_path / "l.db")
    problems = led.verify()[1]
    assert any("shadow_results" in p and "differs from the audit log in data" in p for p in problems), problems
    r = cli("audit", "verify", "--db", tmp_path / "l.db")
    assert r.returncode == 2 and "shadow_results" in r.stderr


def test_report_equals_an_independent_computation_on_the_ledger(tmp_path):
    """60 studies with known outcomes written through the ledger API; the report's AUC, DeLong CI,
    Wilson intervals, ECE and subgroups are recomputed here from the ledger's own rows."""
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score
    from statsmodels.stats.proportion import proportion_confint

    led = ShadowLedger(tmp_path / "l.db", create=True)
    rng = np.random.default_rng(2)
    for i in range(60):
        y = int(i % 3 == 0)
        p = float(np.clip(rng.normal(0.35 + 0.35 * y, 0.2), 0.001, 0.999))
        uid = f"1.2.{i}"
        attrs = {"modality": "CT", "manufacturer": "SIEMENS" if i < 45 else "GE", "study_date": f"202601{1 + i % 20:02d}",
                 "kernel": "B40f"}
        led.add_series(uid, f"s{i}", {"kind": "files", "files": []}, attrs, [(MODEL, "a" * 64, "int8")])
        key = job_key(uid, MODEL, "a" * 64, "int8")
        led.start(key)
        led.complete(key, {"probability": round(p, 4), "threshold": 0.5, "positive": round(p, 4) >= 0.5,
                           "input": {"hu_hist": [1, 2, 3], "spacing_mm": [0.7, 0.7, 2.0]}})
        led.add_outcome(f"s{i}", bool(y), None, "test")
    rep = build_report(led)["models"][MODEL]
    res = led.results()
    outs = led.outcomes()
    rows = [(outs[j["study_uid"]]["positive"], res[j["key"]]["probability"]) for j in led.jobs()]
    y = np.array([int(a) for a, _ in rows])
    p = np.array([b for _, b in rows])
    assert rep["n"] == 60 and rep["positives"] == int(y.sum())
    auc = roc_auc_score(y, p)
    assert rep["auc"] == pytest.approx(auc, abs=1e-4)
    # DeLong's variance written out from the kernel matrix, CI on the logit scale
    pos, neg = p[y == 1], p[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    var = psi.mean(axis=1).var(ddof=1) / len(pos) + psi.mean(axis=0).var(ddof=1) / len(neg)
    se = np.sqrt(var) / (auc * (1 - auc))
    lg = np.log(auc / (1 - auc))
    want = [1 / (1 + np.exp(-(lg - norm.ppf(0.975) * se))), 1 / (1 + np.exp(-(lg + norm.ppf(0.975) * se)))]
    assert rep["auc_ci95"] == pytest.approx(want, abs=2e-4)
    d = p >= 0.5
    tp, fn = int((d & (y == 1)).sum()), int((~d & (y == 1)).sum())
    assert rep["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-4)
    assert rep["sensitivity_ci95"] == pytest.approx(list(proportion_confint(tp, tp + fn, method="wilson")), abs=1e-4)
    bins = np.clip((p * 10).astype(int), 0, 9)
    ece = sum((bins == b).sum() / len(p) * abs(p[bins == b].mean() - y[bins == b].mean()) for b in set(bins))
    assert rep["ece"] == pytest.approx(ece, abs=1e-4)
    ge = next(g for g in rep["subgroups"] if g["field"] == "manufacturer" and g["value"] == "GE")
    si = next(g for g in rep["subgroups"] if g["field"] == "manufacturer" and g["value"] == "SIEMENS")
    assert ge["n"] == 15 and si["n"] == 45 and si["auc"] == pytest.approx(roc_auc_score(y[:45], p[:45]), abs=1e-4)
    small = build_report(led, until="2026-01-03")["models"][MODEL]
    assert small["n"] < 10 and all("reason" in g for g in small["subgroups"])
    assert len(rep["drift"]) >= 2 and rep["drift"][0]["probability_psi"] == pytest.approx(0.0, abs=1e-9)


def _eligible(studies) -> set[str]:
    return {studies["uids"]["B40f"], studies["uids"]["B70f"], studies["abdomen"], studies["damaged"]}


@pytest.mark.slow
def test_folder_once_two_local_workers_one_outcome_per_series_and_review_json_agrees(tmp_path, studies):
    db = tmp_path / "ledger.db"
    r = cli("shadow", "run", "--db", db, "--source", studies["root"], "--rules", studies["rules"], "--workers", 2,
            "--once", "--threads", 1)
    assert r.returncode == 0, r.stderr
    st = json.loads(cli("shadow", "status", "--db", db, "--json").stdout)
    by_series = {}
    for j in st["jobs"]:
        by_series.setdefault(j["series_instance_uid"], []).append(j)
    assert set(by_series) == _eligible(studies)
    assert all(len(v) == 1 and v[0]["state"] in ("done", "failed") for v in by_series.values())
    dmg = by_series[studies["damaged"]][0]
    assert dmg["state"] == "failed" and dmg["reason"].startswith("damaged study") and dmg["attempts"] == 1
    abd = by_series[studies["abdomen"]][0]
    assert abd["state"] in ("done", "failed") and (abd["state"] == "done" or abd["reason"])
    skipped = {s.get("path", s.get("series_instance_uid")): s["reason"] for s in st["skipped"]}
    assert any(k.endswith("notes.txt") and "not a DICOM file" in v for k, v in skipped.items())
    led = ShadowLedger(db)
    assert len(led.results()) == sum(j["state"] == "done" for j in st["jobs"]) and led.verify()[1] == []
    led.close()
    # the ledger's study probability equals `radreview review --json` on the same series, model, precision
    rv = cli("review", studies["root"] / "B40f", "--model", MODEL, "--json", "--threads", 1, "--db", tmp_path / "r.db",
             "--create")
    assert rv.returncode == 0, rv.stderr
    want = next(f["probability"] for f in json.loads(rv.stdout)["findings"] if f["id"] == f"{MODEL}:study")
    assert by_series[studies["uids"]["B40f"]][0]["probability"] == want
    # running again queues nothing (idempotent); the report works on outcomes from a CSV
    again = cli("shadow", "run", "--db", db, "--source", studies["root"], "--rules", studies["rules"], "--once")
    assert again.returncode == 0 and json.loads(again.stdout)["queued"] == 0
    study = by_series[studies["uids"]["B40f"]][0]["study_instance_uid"]
    (tmp_path / "o.csv").write_text(f"study_instance_uid,positive,x,y,z\n{study},1,-120,-150,-180\n")
    assert cli("shadow", "outcomes", "import", "--db", db, tmp_path / "o.csv").returncode == 0
    rp = cli("shadow", "report", "--db", db, "--out", tmp_path / "rep")
    assert rp.returncode == 0, rp.stderr
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    m = rep["models"][MODEL]
    assert m["n"] == 1 and m["auc"] is None and "one outcome class" in m["auc_ci95_reason"]
    assert any(f["reason"].startswith("damaged study") for f in rep["failures"])
    # a shadow-mode reading session takes its AI from the ledger; readers still never see it
    (tmp_path / "cases.csv").write_text(f"case_id,path\nc1,{studies['root'] / 'B40f'}\nc2,{studies['root'] / 'B70f'}\n")
    assert cli("session", "create", tmp_path / "s.db", "--cases", tmp_path / "cases.csv", "--readers", "a",
               "--mode", "shadow").returncode == 0
    took = cli("session", "run-ai", tmp_path / "s.db", "--from-ledger", db)
    assert took.returncode == 0, took.stderr
    assert json.loads(took.stdout)["from_ledger"] == 2
    from radreview.review.sessions import ReadingSession

    s = ReadingSession(tmp_path / "s.db")
    assert s.ai_results()["c1"][MODEL]["probability"] == want and s.ai_results()["c1"][MODEL]["source"] == "shadow ledger"
    s.close()
    blind = cli("session", "reveal", tmp_path / "s.db", "--reader", "a", "--case", "c1")
    assert blind.returncode == 2 and str(want) not in blind.stdout + blind.stderr


def _start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)


def _jobs_now(db) -> list[dict]:
    """The ledger's jobs as a running driver has written them so far ([] while it is being created)."""
    from radreview.review.shadow import LedgerError

    try:
        led = ShadowLedger(db)
    except LedgerError:
        return []
    try:
        return led.jobs()
    finally:
        led.close()


def _wait_for_state(db, state: str, timeout: float = 60, alive=None) -> list[dict]:
    """Poll the ledger a running driver writes until some job is in ``state`` (or ``timeout`` s
    pass, or the process ``alive`` exits); returns those jobs ([] when none came)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and (alive is None or alive.poll() is None):
        jobs = [j for j in _jobs_now(db) if j["state"] == state]
        if jobs:
            return jobs
        time.sleep(0.3)
    return []


def _kill_all(procs) -> None:
    """SIGKILL each process group started by :func:`_start` (none outlives its test)."""
    for p in procs:
        if p is None:
            continue
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster():
    """A real `dask scheduler` and two `dask worker` processes (nanny, 1 thread each) on loopback."""
    port = _free_port()
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    dask = str(Path(sys.executable).parent / "dask")
    procs = [_start([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], env)]
    addr = f"tcp://127.0.0.1:{port}"
    for _ in range(2):
        procs.append(_start([dask, "worker", addr, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                             "--host", "127.0.0.1", "--memory-limit", "6GB"], env))
    from distributed import Client

    with Client(addr, timeout=60) as c:
        c.wait_for_workers(2, timeout=90)
    try:
        yield addr
    finally:
        _kill_all(procs)


@pytest.mark.slow
@pytest.mark.server
def test_dask_cluster_worker_killed_mid_job_loses_nothing_and_duplicates_nothing(tmp_path, studies, dask_cluster):
    from distributed import Client

    db = tmp_path / "ledger.db"
    run = subprocess.Popen([sys.executable, "-m", "radreview.viewer.cli", "shadow", "run", "--db", str(db), "--source",
                            str(studies["root"]), "--rules", str(studies["rules"]), "--scheduler", dask_cluster, "--once",
                            "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    with Client(dask_cluster, timeout=30) as c:
        t0 = time.monotonic()
        while killed is None and time.monotonic() - t0 < 120 and run.poll() is None:
            busy = {w: ks for w, ks in c.processing().items() if ks}
            if busy:
                time.sleep(1.0)  # mid-job: fetched and loading or inferring
                w = next(iter(busy))
                pid = c.run(os.getpid, workers=[w])[w]
                os.kill(pid, signal.SIGKILL)
                killed = w
            time.sleep(0.2)
    out, err = run.communicate(timeout=600)
    assert killed is not None, "no job was ever running"
    assert run.returncode == 0, err
    assert "worker died during the job" in err
    led = ShadowLedger(db)
    jobs = led.jobs()
    assert {j["series_uid"] for j in jobs} == _eligible(studies) and len(jobs) == 4
    assert all(j["state"] in ("done", "failed") for j in jobs)
    results = led.results()
    assert set(results) == {j["key"] for j in jobs if j["state"] == "done"}  # one result per done job, none else
    assert any(j["attempts"] >= 2 for j in jobs)  # the killed job ran again
    assert led.verify()[1] == []
    led.close()


@pytest.mark.slow
@pytest.mark.server
def test_postgresql_stopped_mid_run_the_run_waits_and_resumes(tmp_path, studies, pg_server):  # noqa: F811
    url = pg_server.create_database(f"shadow_{os.getpid()}")
    src = tmp_path / "one"
    shutil.copytree(studies["root"] / "B40f", src / "B40f")
    run = subprocess.Popen([sys.executable, "-m", "radreview.viewer.cli", "shadow", "run", "--db", url, "--source",
                            str(src), "--rules", str(studies["rules"]), "--workers", "1", "--once", "--threads", "1"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = bool(_wait_for_state(url, "running", timeout=120))
    assert started
    pg_server.halt()
    time.sleep(60)  # a minute without the ledger: the job finishes meanwhile, the driver keeps its result
    pg_server.resume()
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "ledger unreachable, waiting" in err
    led = ShadowLedger(url)
    jobs = led.jobs()
    assert [j["state"] for j in jobs] == ["done"] and len(led.results()) == 1
    assert led.verify()[1] == []
    led.close()


def _wait_stable(srv, n_series: int, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ch = json.loads(srv.request("/changes?since=0&limit=1000"))
        if sum(c["ChangeType"] == "StableSeries" for c in ch["Changes"]) >= n_series:
            return
        time.sleep(0.3)
    raise AssertionError("Orthanc never reported the series stable")


@pytest.mark.slow
@pytest.mark.server
def test_orthanc_changes_feed_resumes_and_survives_an_orthanc_restart(tmp_path, studies, data_dir):
    """StableSeries from Orthanc's REST changes feed; the cursor resumes after a restart of the
    run; Orthanc stopped while a job fetches its series: the job is retried and completes."""
    from tests.pacs_server import PASSWORD, USER, OrthancServer, orthanc_missing

    why = orthanc_missing()
    if why:
        pytest.fail(why)
    env = {**os.environ, "RADREVIEW_ORTHANC_USER": USER, "RADREVIEW_ORTHANC_PASSWORD": PASSWORD}
    srv = OrthancServer(tmp_path / "orthanc").start()
    try:
        srv.upload(sorted((studies["root"] / "B40f").iterdir()))
        _wait_stable(srv, 1)
        db = tmp_path / "ledger.db"
        src = f"orthanc+{srv.url}"
        r = cli("shadow", "run", "--db", db, "--source", src, "--rules", studies["rules"], "--workers", 1, "--once",
                "--threads", 1, "--publish", env=env)
        assert r.returncode == 0, r.stderr
        led = ShadowLedger(db)
        assert [j["state"] for j in led.jobs()] == ["done"], [j["reason"] for j in led.jobs()]
        assert int(led.get_meta(f"cursor:orthanc+{srv.url}")) > 0
        led.close()
        series = [json.loads(srv.request(f"/series/{i}"))["MainDicomTags"] for i in json.loads(srv.request("/series"))]
        assert sorted(s.get("Modality") for s in series) == ["CT", "SR"]  # --publish sent the SR back
        _wait_stable(srv, 2)
        again = cli("shadow", "run", "--db", db, "--source", src, "--rules", studies["rules"], "--workers", 1, "--once",
                    env=env)
        assert again.returncode == 0, again.stderr
        body = json.loads(again.stdout)  # resumed after the cursor: only the SR series is new, and not eligible
        assert body["series_seen"] == 1 and body["queued"] == 0 and body["skipped"] == 1
        # Orthanc goes away while the next series is being fetched
        srv.upload(sorted((studies["root"] / "B70f").iterdir()))
        _wait_stable(srv, 3)
        port = _free_port()
        dask = str(Path(sys.executable).parent / "dask")
        sched = _start([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])
        worker = None
        try:
            time.sleep(2)
            run = subprocess.Popen([sys.executable, "-m", "radreview.viewer.cli", "shadow", "run", "--db", str(db),
                                    "--source", src, "--rules", str(studies["rules"]), "--scheduler",
                                    f"tcp://127.0.0.1:{port}", "--once", "--threads", "1"], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            queued = _wait_for_state(db, "queued")
            assert queued, "the second series was never queued"
            srv.stop()
            worker = _start([dask, "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--no-dashboard",
                             "--host", "127.0.0.1"], env)
            time.sleep(6)  # the worker joins, its fetch fails, the job waits for its back-off
            srv.start()
            out, err = run.communicate(timeout=300)
        finally:
            _kill_all([sched, worker])
        assert run.returncode == 0, err
        assert "fetch failed" in err and "unreachable" in err
        led = ShadowLedger(db)
        jobs = led.jobs()
        assert [j["state"] for j in jobs] == ["done", "done"] and len(led.results()) == 2
        assert max(j["attempts"] for j in jobs) >= 2
        led.close()
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.server
def test_scheduler_killed_and_restarted_the_run_resumes(tmp_path, studies):
    """`dask worker` processes exit when their scheduler dies (a supervisor restarts them in a
    deployment; here the test does): the driver requeues the lost tasks and finishes."""
    src = tmp_path / "two"
    for k in ("B40f", "B70f"):
        shutil.copytree(studies["root"] / k, src / k)
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    sched_cmd = [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]
    worker_cmd = [dask, "worker", addr, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
    procs = [_start(sched_cmd, env)]
    time.sleep(2)
    procs.append(_start(worker_cmd, env))
    db = tmp_path / "ledger.db"
    try:
        run = subprocess.Popen([sys.executable, "-m", "radreview.viewer.cli", "shadow", "run", "--db", str(db),
                                "--source", str(src), "--rules", str(studies["rules"]), "--scheduler", addr, "--once",
                                "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        running = bool(_wait_for_state(db, "running", timeout=120, alive=run))
        assert running
        time.sleep(1.0)
        os.killpg(procs[0].pid, signal.SIGKILL)
        procs[0].wait(timeout=30)
        time.sleep(3)
        procs.append(_start(sched_cmd, env))
        time.sleep(2)
        procs.append(_start(worker_cmd, env))
        out, err = run.communicate(timeout=400)
    finally:
        _kill_all(procs)
    assert run.returncode == 0, err
    summary = json.loads(out)
    assert summary["requeued"] >= 1
    led = ShadowLedger(db)
    jobs = led.jobs()
    assert [j["state"] for j in jobs] == ["done", "done"] and len(led.results()) == 2
    assert led.verify()[1] == []
    led.close()


TEST_MODEL = "shadow-test-nodule"


def _model_copy(folder: Path) -> Path:
    """The shipped nodule package under another id (a user package, as a centre would install)."""
    from radreview.inference.package import load_package

    src = load_package(MODEL).root
    dst = folder / TEST_MODEL
    shutil.copytree(src, dst)
    meta = json.loads((dst / "model.json").read_text())
    meta["id"] = TEST_MODEL
    (dst / "model.json").write_text(json.dumps(meta, indent=1))
    return dst


@pytest.mark.slow
@pytest.mark.server
def test_worker_without_the_model_is_refused_and_a_changed_package_fails_its_jobs(tmp_path, studies):
    models = tmp_path / "models"
    pkg = _model_copy(models)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.replace(MODEL, TEST_MODEL))
    src = tmp_path / "two"
    for k in ("B40f", "B70f"):
        shutil.copytree(studies["root"] / k, src / k)
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    with_model = {**os.environ, "RADREVIEW_MODELS_PATH": str(models)}
    without = {k: v for k, v in os.environ.items() if k != "RADREVIEW_MODELS_PATH"}
    procs = [_start([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])]
    time.sleep(2)
    wcmd = [dask, "worker", addr, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
    procs += [_start(wcmd, with_model), _start(wcmd, without)]
    db = tmp_path / "ledger.db"
    try:
        from distributed import Client

        with Client(addr, timeout=60) as c:
            c.wait_for_workers(2, timeout=90)
            pids = c.run(os.getpid)
            env_of = c.run(lambda: os.environ.get("RADREVIEW_MODELS_PATH", ""))
        good = next(a for a, v in env_of.items() if v)
        r = cli("shadow", "run", "--db", db, "--source", src, "--rules", rules, "--scheduler", addr, "--once",
                "--threads", 1, env=with_model)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        bad = [a for a in pids if a != good]
        assert list(summary["refused_workers"]) == bad and "not usable on this worker" in summary["refused_workers"][bad[0]]
        led = ShadowLedger(db)
        assert {led.results()[j["key"]]["worker"] for j in led.jobs()} == {good}
        led.close()
        # the package changes on disk while new jobs wait for a worker: they fail with that reason
        _kill_all(procs[1:])
        more = tmp_path / "more"
        damaged_copy(studies["root"] / "B40f", more / "x", n=14)  # a third series (its content does not matter)
        run = subprocess.Popen([sys.executable, "-m", "radreview.viewer.cli", "shadow", "run", "--db", str(db),
                                "--source", str(more), "--rules", str(rules), "--scheduler", addr, "--once",
                                "--worker-wait", "60"], cwd=ROOT, env=with_model, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        queued = _wait_for_state(db, "queued")
        assert queued
        onnx = next(pkg.glob("*.onnx"))
        onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        led = ShadowLedger(db)
        failed = [j for j in led.jobs() if j["state"] == "failed"]
        assert len(failed) == 1 and f"model {TEST_MODEL} refused" in failed[0]["reason"]
        assert "SHA-256" in failed[0]["reason"] or "sha256" in failed[0]["reason"].lower()
        led.close()
    finally:
        _kill_all(procs)


@pytest.mark.slow
@pytest.mark.server
def test_dicom_node_over_a_date_range_with_results_published_back_as_sr(tmp_path, studies):
    """A retrospective run: C-FIND of the studies since a date, C-GET by the worker; --publish
    sends the result back to the node as DICOM SR, nothing is sent without it."""
    from tests.pacs_server import SCP_AET, OrthancServer, orthanc_missing

    why = orthanc_missing()
    if why:
        pytest.fail(why)
    srv = OrthancServer(tmp_path / "orthanc", modalities={SCP_AET: _free_port()}).start()
    try:
        srv.upload(sorted((studies["root"] / "B40f").iterdir()))
        src = f"dicom://{srv.aet}@127.0.0.1:{srv.dicom_port}"
        # series-level C-FIND gives no Slice Thickness: a rule on it does not match, and says why
        thick = cli("shadow", "run", "--db", tmp_path / "l0.db", "--source", src, "--since", "2000-01-01", "--rules",
                    studies["rules"], "--workers", 1, "--once")
        assert thick.returncode == 0, thick.stderr
        led = ShadowLedger(tmp_path / "l0.db")
        assert led.jobs() == [] and "Slice Thickness missing" in led.skipped()[0]["reason"]
        led.close()
        rules = tmp_path / "rules.toml"
        rules.write_text(RULES.replace("slice_thickness_mm = [0.5, 10.0]\n", ""))
        db = tmp_path / "ledger.db"
        r = cli("shadow", "run", "--db", db, "--source", src, "--since", "2000-01-01", "--rules", rules,
                "--workers", 1, "--once", "--threads", 1)
        assert r.returncode == 0, r.stderr
        led = ShadowLedger(db)
        assert [j["state"] for j in led.jobs()] == ["done"]
        led.close()
        assert len(json.loads(srv.request("/series"))) == 1  # silent: nothing was sent back
        none = cli("shadow", "run", "--db", tmp_path / "l2.db", "--source", src, "--since", "2030-01-01", "--rules",
                   rules, "--workers", 1, "--once")
        assert none.returncode == 0 and json.loads(none.stdout)["series_seen"] == 0  # outside the date range
        pub = cli("shadow", "run", "--db", tmp_path / "l3.db", "--source", src, "--since", "2000-01-01", "--rules",
                  rules, "--workers", 1, "--once", "--threads", 1, "--publish")
        assert pub.returncode == 0, pub.stderr
        series = [json.loads(srv.request(f"/series/{i}"))["MainDicomTags"] for i in json.loads(srv.request("/series"))]
        assert sorted(s.get("Modality") for s in series) == ["CT", "SR"]
        led = ShadowLedger(tmp_path / "l3.db")
        assert next(iter(led.results().values()))["published_sr"]
        led.close()
        refused = cli("shadow", "run", "--db", tmp_path / "l4.db", "--source", studies["root"], "--publish", "--once")
        assert refused.returncode == 2 and "--publish" in refused.stderr
    finally:
        srv.stop()


def test_outcomes_from_a_reading_session_and_from_signed_off_reviews(tmp_path, data_dir):
    from radreview.review.vocabulary import Decision
    from radreview.review.sessions import ReadingSession
    from radreview.review.shadow.outcomes import import_reviews, import_session
    from radreview.review.store import ReviewStore

    chest = data_dir / "ct-chest-tumor"
    study = str(pydicom.dcmread(next((chest / "series_B40f").iterdir()), stop_before_pixels=True).StudyInstanceUID)
    led = ShadowLedger(tmp_path / "l.db", create=True)
    s = ReadingSession.create(tmp_path / "s.db", [{"case_id": "c1", "path": str(chest / "series_B40f")}],
                              ["a", "b", "c"], "shadow", models=[])
    for rd, score in (("a", 80), ("b", 20), ("c", 70)):
        s.record(rd, "c1", score=score, lock=True)
    s.close()
    assert import_session(led, str(tmp_path / "s.db")) == 1
    assert led.outcomes()[study]["positive"] is True  # 2 of 3 readers positive
    store = ReviewStore(tmp_path / "r.db", create=True)
    key = "study:9.9.9"
    store.save_findings(key, [{"id": f"{MODEL}:study", "name": "study", "probability": 0.9, "operating_threshold": 0.5}])
    store.record_decision(key, f"{MODEL}:study", Decision.REJECT, "dr x", reason="a vessel")
    store.record_signoff(key, "dr x", [{"id": f"{MODEL}:study"}])
    store.close()
    assert import_reviews(led, str(tmp_path / "r.db")) == 1
    assert led.outcomes()["9.9.9"]["positive"] is False  # the AI's positive was rejected
    assert led.verify()[1] == []
    led.close()


def test_panel_summary_gives_no_throughput_from_a_handful_of_results(tmp_path):
    from radreview.review.shadow.status import MIN_RATE_RESULTS, summary

    led = ShadowLedger(tmp_path / "l.db", create=True)
    for i in range(2):
        key = _fake_series(led, f"1.2.{i}")
        led.start(key)
        led.complete(key, {"probability": 0.4, "threshold": 0.5, "positive": False})
    s = summary(led)
    assert s["counts"]["done"] == 2 and s["last_hour"] == 2
    assert s["throughput_per_hour"] is None and MIN_RATE_RESULTS > 2  # two results seconds apart are no rate
    assert s["series_state"] == {"1.2.0": "done", "1.2.1": "done"}
    led.close()
