"""Soak: a Dask worker killed with SIGKILL mid-job, ``--kills`` times in a row, during one
``radreview shadow run --once``; afterwards every job must have exactly one result (0 lost,
0 duplicated) and the ledger must verify.

Usage: ``python -m benchmarks.soak_shadow_kill [--kills 100] [--studies 24]``

Starts a real ``dask scheduler`` and two ``dask worker`` processes (with their nannies, which
restart a killed worker) on loopback, copies ``--studies`` real chest CT series (ct-chest-tumor)
with new UIDs, runs the shadow deployment against that cluster, and kills whichever worker is
busy, about a second into its job, until ``--kills`` kills are done. Bounded: it stops by itself
after ``--max-minutes``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_shadow import make_studies

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--studies", type=int, default=24)
    ap.add_argument("--max-minutes", type=float, default=40.0)
    args = ap.parse_args(argv)
    from distributed import Client

    from radreview.review.shadow import ShadowLedger

    tmp = Path(tempfile.mkdtemp(prefix="soak-shadow-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"tcp://127.0.0.1:{port}"
    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True, "env": env}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], **quiet)]
    time.sleep(2)
    procs += [subprocess.Popen([dask, "worker", addr, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                               **quiet) for _ in range(2)]
    deadline = time.monotonic() + args.max_minutes * 60
    kills = 0
    try:
        make_studies(tmp / "incoming", args.studies)
        db = tmp / "ledger.db"
        run = subprocess.Popen([sys.executable, "-m", "radreview.viewer.cli", "shadow", "run", "--db", str(db),
                                "--source", str(tmp / "incoming"), "--model", "ct-nodule-2p5d", "--scheduler", addr,
                                "--once", "--threads", "1", "--max-attempts", str(args.kills + 10)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        with Client(addr, timeout=60) as c:
            while kills < args.kills and run.poll() is None and time.monotonic() < deadline:
                try:
                    busy = [w for w, ks in c.processing().items() if ks]
                    if busy:
                        time.sleep(1.0)
                        pid = c.run(os.getpid, workers=busy[:1])[busy[0]]
                        os.kill(pid, signal.SIGKILL)
                        kills += 1
                        time.sleep(0.5)
                except Exception:  # noqa: BLE001 - the worker died between the calls: try again
                    pass
                time.sleep(0.1)
        out, _ = run.communicate(timeout=max(60, deadline - time.monotonic()))
        led = ShadowLedger(db)
        jobs, results = led.jobs(), led.results()
        problems = led.verify()[1]
        led.close()
        done = {j["key"] for j in jobs if j["state"] == "done"}
        print(json.dumps({"kills": kills, "jobs": len(jobs), "done": len(done),
                          "failed": sum(j["state"] == "failed" for j in jobs),
                          "results": len(results), "lost": len(done - set(results)),
                          "duplicated_or_orphan": len(set(results) - done),
                          "max_attempts_seen": max(j["attempts"] for j in jobs), "ledger_problems": problems,
                          "run_exit": run.returncode, "run_summary": json.loads(out) if out.strip() else None},
                         indent=1))
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
