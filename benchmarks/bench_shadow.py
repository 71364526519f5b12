"""Shadow deployment throughput and overheads, all in one run on this machine.

Usage: ``python -m benchmarks.bench_shadow [--studies 8] [--repeats 3] [--model ct-nodule-2p5d] [--pg]``

Input: ``--studies`` real chest CT series (ct-chest-tumor B40f and B70f, 512x512x30, copied with
new Study/Series UIDs so each is a study of its own) in a temporary folder. Measured, each as the
whole ``radreview shadow run --once`` command a user runs (start-up, cluster, intake, jobs):

- **plain loop**: the same studies opened and run one after another by a fresh Python process
  (imports included) with 1 ONNX Runtime thread (``open_volume`` + ``run_models``), no Dask, no
  ledger: the baseline;
- **two plain loops in parallel**, each on half of the studies: what two jobs at once can gain
  on this machine without Dask (the ceiling for the 2-worker speed-up);
- **1 worker x 1 thread** and **2 workers x 1 thread** (LocalCluster): studies per hour,
  core-seconds per study (from the ledger), p50 / p95 latency from "queued" to "result stored",
  Dask's overhead against the plain loop, and the 2-worker speed-up;

They run in turn, ``--repeats`` rounds; medians are reported with every wall time (this
machine's speed drifts by 10-20 % over minutes, so only an interleaved comparison is fair).
- **ledger operations per second** (add series + start + complete, one transaction each) on
  SQLite and, with ``--pg``, on a throw-away PostgreSQL (``tests/pg_server.py``);
- peak RSS of the driver (the workers are separate processes).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.data import SHARED

ROOT = Path(__file__).resolve().parents[1]


def make_studies(out: Path, n: int) -> list[Path]:
    import pydicom
    from pydicom.uid import generate_uid

    folders = []
    for i in range(n):
        src = SHARED / "ct-chest-tumor" / ("series_B40f" if i % 2 == 0 else "series_B70f")
        study, series = generate_uid(), generate_uid()
        dst = out / f"study{i:03d}"
        dst.mkdir(parents=True)
        for f in sorted(src.iterdir()):
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.save_as(dst / f.name, enforce_file_format=True)
        folders.append(dst)
    return folders


_LOOP = """
import sys
from radreview.studies import open_volume
from radreview.viewer.workflow import run_models
for f in sys.argv[3:]:
    run_models(open_volume(f), [sys.argv[1]], threads=int(sys.argv[2]))
"""


def plain_loop(folders: list[Path], model: str, threads: int) -> float:
    """The whole baseline command: a fresh Python process (imports included) opening and running
    each study in turn."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", _LOOP, model, str(threads), *map(str, folders)], check=True, cwd=ROOT)
    return time.perf_counter() - t0


def plain_two_processes(folders: list[Path], model: str) -> float:
    """The machine's own ceiling for two jobs at once: two plain loops in parallel, each on half
    of the studies (no Dask)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _LOOP, model, "1", *map(str, folders[k::2])], cwd=ROOT)
             for k in range(2)]
    for p in procs:
        if p.wait():
            raise SystemExit("plain loop failed")
    return time.perf_counter() - t0


def shadow_run(src: Path, db: Path, model: str, workers: int, threads: int) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "shadow", "run", "--db", str(db), "--source",
                        str(src), "--model", model, "--workers", str(workers), "--threads", str(threads), "--once"],
                       capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"shadow run failed: {r.stderr[-2000:]}")
    from radreview.review.shadow import ShadowLedger

    led = ShadowLedger(db)
    res = list(led.results().values())
    led.close()
    lat = sorted(x["timings"]["latency_s"] for x in res)
    job_s = [x["timings"]["fetch_s"] + x["timings"]["load_s"] + x["timings"]["infer_s"] for x in res]
    return {"workers": workers, "threads": threads, "studies": len(res), "wall_s": round(wall, 2),
            # where the wall time goes: the first job waits for the cluster and the worker's imports;
            # then the jobs' own compute (fetch + load + infer) per worker; rest_s is everything
            # else (hand-over between jobs, the driver's start-up and exit)
            "first_job_wait_s": round(min(x["timings"]["queue_wait_s"] for x in res), 2),
            "job_compute_s_sum": round(sum(job_s), 2),
            "rest_s": round(wall - min(x["timings"]["queue_wait_s"] for x in res) - sum(job_s) / workers, 2),
            "studies_per_hour": round(len(res) / wall * 3600, 1),
            "core_seconds_per_study": round(statistics.median(x["core_seconds"] for x in res), 2),
            "infer_s_median": round(statistics.median(x["timings"]["infer_s"] for x in res), 2),
            "latency_p50_s": round(lat[len(lat) // 2], 2), "latency_p95_s": round(lat[min(len(lat) - 1,
                                                                                            int(0.95 * len(lat)))], 2)}


def ledger_ops(db: str, n: int = 200) -> float:
    from radreview.review.shadow import ShadowLedger, job_key

    led = ShadowLedger(db, create=True)
    t0 = time.perf_counter()
    for i in range(n):
        uid = f"1.2.826.0.1.{i}"
        led.add_series(uid, "s", {"kind": "files", "files": []}, {"modality": "CT"}, [("m", "a" * 64, "int8")])
        k = job_key(uid, "m", "a" * 64, "int8")
        led.start(k)
        led.complete(k, {"probability": 0.5})
    dt = time.perf_counter() - t0
    led.close()
    return round(3 * n / dt, 1)


def _median_run(runs: list[dict]) -> dict:
    """The run with the median wall time, with every run's wall time beside it."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    return {**ordered[len(ordered) // 2], "wall_s_all": [r["wall_s"] for r in runs]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each round runs loop, 1 worker, 2 workers in turn")
    ap.add_argument("--model", default="ct-nodule-2p5d")
    ap.add_argument("--pg", action="store_true", help="also time the ledger on a throw-away PostgreSQL")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    try:
        folders = make_studies(tmp / "incoming", args.studies)
        plain_loop(folders[:1], args.model, 1)  # warm the page cache and the model files once
        loops, pairs, ones, twos = [], [], [], []
        for k in range(args.repeats):  # interleaved, so a slow spell of the machine hits all alike
            loops.append(plain_loop(folders, args.model, 1))
            pairs.append(plain_two_processes(folders, args.model))
            ones.append(shadow_run(tmp / "incoming", tmp / f"one{k}.db", args.model, 1, 1))
            twos.append(shadow_run(tmp / "incoming", tmp / f"two{k}.db", args.model, 2, 1))
        loop_s = statistics.median(loops)
        one, two = _median_run(ones), _median_run(twos)
        out = {"studies": args.studies, "model": args.model, "repeats": args.repeats,
               "plain_loop_1_thread": {"wall_s": round(loop_s, 2), "wall_s_all": [round(x, 2) for x in loops],
                                       "studies_per_hour": round(args.studies / loop_s * 3600, 1)},
               "plain_two_processes": {"wall_s": round(statistics.median(pairs), 2),
                                       "wall_s_all": [round(x, 2) for x in pairs]},
               "one_worker_1_thread": one, "two_workers_1_thread": two,
               "dask_overhead_vs_loop": round(one["wall_s"] / loop_s - 1, 3),
               "dask_overhead_two_workers_vs_two_processes": round(two["wall_s"] / statistics.median(pairs) - 1, 3),
               "speedup_two_workers_vs_one": round(one["wall_s"] / two["wall_s"], 2),
               "speedup_two_processes_vs_loop": round(loop_s / statistics.median(pairs), 2),
               "ledger_ops_per_s": {"sqlite": ledger_ops(str(tmp / "ops.db"))}}
        if args.pg:
            sys.path.insert(0, str(ROOT))
            from tests.pg_server import PgServer

            srv = PgServer().start()
            try:
                out["ledger_ops_per_s"]["postgresql"] = ledger_ops(srv.create_database("bench_shadow"))
            finally:
                srv.stop()
        out["driver_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
