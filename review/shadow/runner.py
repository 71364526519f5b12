"""The driver of a shadow deployment: intake -> ledger -> Dask workers -> ledger.

:func:`run` is the loop behind ``radreview shadow run``. It polls the sources, applies the
rules, queues jobs in the ledger, and hands runnable jobs to a Dask ``distributed`` cluster (a
``LocalCluster`` of worker processes, or workers started with ``dask scheduler`` /
``dask worker`` on other machines). Workers fetch their series themselves and return a plain
dict (:func:`radreview.viewer.shadow_worker.run_job`); only this driver writes the ledger.

Faults and what happens:

- A worker dies mid-job (SIGKILL, out of memory): Dask reports the task's worker lost
  (``KilledWorker``; the local cluster is configured with ``allowed-failures = 0`` so every death
  reaches the ledger); the job goes back to the queue with a back-off and its attempt counted,
  and fails for good after ``max_attempts``. The result of a job is stored once whatever happens.
- A job's lease expires (its driver died): the next driver requeues it.
- The scheduler is lost and comes back: the tasks it held are requeued without counting an
  attempt, and the driver waits for the client to reconnect.
- The ledger's database is unreachable (PostgreSQL stopped): every ledger call is retried
  every 2 s for up to ``db_wait_s``; results already computed wait in memory.
- A model package that no longer matches its hash fails all of its queued jobs with that reason;
  a worker whose installed package differs (or is missing) is refused and gets no jobs.

Threads: each job runs ONNX Runtime with ``threads`` intra-op threads. The default keeps
``workers x threads <= cores`` on each host: ``max(1, cores // task slots on that host)``
(:func:`default_threads`), so two workers on two cores get one thread each.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .ledger import DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS, ShadowLedger
from .rules import Rule, eligible_models

__all__ = ["run", "RunSummary", "default_threads", "local_cluster", "ShadowRunError"]

from radreview.studies.errors import RadreviewError


#: seconds between re-checks of the installed model packages' hashes during a run
MODEL_CHECK_S = 5.0
#: jobs handed to the cluster per task slot. 1: a job is submitted only when a slot is free, so a
#: worker's death costs an attempt only to the job it was running (a job queued behind it on that
#: worker would be counted too); the hand-over gap this leaves is milliseconds per job
PREFETCH = 1


class ShadowRunError(RuntimeError, RadreviewError):
    """The run itself cannot proceed (no usable worker, the ledger unreachable for too long)."""


def default_threads(cores: int, slots_on_host: int) -> int:
    """ONNX Runtime intra-op threads per job so that task slots x threads <= cores."""
    return max(1, int(cores) // max(1, int(slots_on_host)))


def local_cluster(workers: int, threads: int | None = None):
    """A ``distributed.LocalCluster`` of ``workers`` single-threaded worker processes on loopback
    (no dashboard), with ``allowed-failures = 0`` so that each worker death reaches the ledger.

    The worker processes get ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` / ``MKL_NUM_THREADS`` =
    the jobs' threads (``threads``, else :func:`default_threads`) and not Dask's default
    ``MALLOC_TRIM_THRESHOLD_=65536``: with it, glibc hands the large arrays of every study back
    to the system and faults them in again, and a job took about 8 % longer here. Dask's
    statistical profiler (a thread sampling every worker's stacks every 10 ms) is off: with it two
    concurrent jobs took about 5 % longer.
    """
    import logging

    import dask
    from distributed import LocalCluster

    n = str(threads or default_threads(_cores(), workers))
    dask.config.set({"distributed.scheduler.allowed-failures": 0,
                     "distributed.worker.profile.enabled": False,
                     "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
                                                             "MKL_NUM_THREADS": n}})
    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                        dashboard_address=None, silence_logs=logging.ERROR)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class RunSummary:
    """What one :func:`run` did."""

    series_seen: int = 0
    skipped: int = 0
    queued: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    requeued: int = 0
    refused_workers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _is_db_down(exc: BaseException) -> bool:
    from sqlalchemy.exc import DBAPIError, OperationalError

    return isinstance(exc, (OperationalError, DBAPIError))


class _Driver:
    def __init__(self, ledger: ShadowLedger, client, job_fn: Callable, check_fn: Callable, precision: str,
                 threads: int | None, lease_s: float, max_attempts: int, db_wait_s: float, publish: bool,
                 log: Callable[[str], None]):
        self.ledger, self.client, self.job_fn, self.check_fn = ledger, client, job_fn, check_fn
        self.hosts: dict[str, tuple[str, int]] = {}
        self.precision, self.threads, self.lease_s = precision, threads, lease_s
        self.max_attempts, self.db_wait_s, self.publish, self.log = max_attempts, db_wait_s, publish, log
        self.inflight: dict[str, Any] = {}  # dask key -> future
        self.job_of: dict[str, dict] = {}  # dask key -> job row
        self.models: dict[str, str] = {}  # model id -> installed package sha (checked)
        self.model_errors: dict[str, str] = {}
        self.ok_workers: dict[str, int] = {}  # address -> task slots
        self.refused: dict[str, str] = {}
        self.summary = RunSummary()

    # ------------------------------------------------------------------ the ledger, patiently
    def db(self, fn: Callable, *args, **kw):
        t0 = time.monotonic()
        warned = False
        while True:
            try:
                return fn(*args, **kw)
            except Exception as exc:  # noqa: BLE001 - only database outages are waited for
                if not _is_db_down(exc) or time.monotonic() - t0 > self.db_wait_s:
                    if _is_db_down(exc):
                        raise ShadowRunError(f"ledger {self.ledger.name} unreachable for {self.db_wait_s:.0f} s: "
                                             f"{' '.join(str(exc).split())[:200]}") from None
                    raise
                if not warned:
                    self.log(f"ledger unreachable, waiting (up to {self.db_wait_s:.0f} s): "
                             f"{' '.join(str(exc).split())[:120]}")
                    warned = True
                time.sleep(2.0)

    # ------------------------------------------------------------------ models and workers
    def check_model(self, mid: str) -> str | None:
        """The installed package's SHA-256 (None when it cannot be used; the reason is kept)."""
        from radreview.inference.package import PackageError, load_package

        try:
            pkg = load_package(mid, check_hashes=True)
        except PackageError as exc:
            self.model_errors[mid] = f"model {mid} refused: {' '.join(str(exc).split())[:300]}"
            self.models.pop(mid, None)
            return None
        self.models[mid] = pkg.package_sha256
        self.model_errors.pop(mid, None)
        return pkg.package_sha256

    def check_workers(self) -> None:
        try:
            info = self.client.scheduler_info()["workers"]
        except Exception as exc:  # noqa: BLE001 - the scheduler is away; the loop waits for it
            self.log(f"scheduler unreachable: {' '.join(str(exc).split())[:120]}")
            self.ok_workers = {}
            return
        new = [a for a in info if a not in self.ok_workers and a not in self.refused]
        gone = [a for a in list(self.ok_workers) if a not in info]
        for a in gone:
            self.ok_workers.pop(a, None)
        for a in list(self.refused):
            if a not in info:
                self.refused.pop(a)
        if not new:
            return
        try:
            answers = self.client.run(self.check_fn, dict(self.models), workers=new, on_error="return")
        except Exception as exc:  # noqa: BLE001
            self.log(f"worker check failed: {exc}")
            return
        for a in new:
            ans = answers.get(a)
            if isinstance(ans, BaseException) or ans is None:
                continue  # not answering yet: asked again next turn
            bad = ans.get("bad", {})
            if bad:
                why = "; ".join(f"{m}: {r}" for m, r in sorted(bad.items()))
                self.refused[a] = why
                self.summary.refused_workers[a] = why
                self.log(f"worker {a} refused: {why}")
                self.db(self.ledger.set_meta, f"worker-refused:{a}", why)
            else:
                self.ok_workers[a] = int(info[a].get("nthreads", 1) or 1)
                self.hosts[a] = (info[a].get("host", a), int(ans.get("cores", 1)))

    def job_threads(self) -> int:
        if self.threads:
            return self.threads
        per_host: dict[str, tuple[int, int]] = {}
        for a, slots in self.ok_workers.items():
            host, cores = self.hosts.get(a, (a, _cores()))
            s, c = per_host.get(host, (0, cores))
            per_host[host] = (s + slots, c)
        if not per_host:
            return 1
        return min(default_threads(c, s) for s, c in per_host.values())

    # ------------------------------------------------------------------ intake
    def intake(self, sources, rules: list[Rule]) -> None:
        from .intake import SourceError

        for src in sources:
            try:
                for item in src.poll(self.ledger):
                    if item.skip_reason:
                        if self.db(self.ledger.skip, item.ident, item.kind, item.skip_reason):
                            self.summary.skipped += 1
                        continue
                    self.summary.series_seen += 1
                    models, why = eligible_models(rules, item.attrs)
                    if not models:
                        if self.db(self.ledger.skip, item.series_uid, "series", f"not eligible: {why}"):
                            self.summary.skipped += 1
                        continue
                    jobs = []
                    for mid in models:
                        sha = self.models.get(mid) or self.check_model(mid)
                        if sha is None:
                            if self.db(self.ledger.skip, f"{item.series_uid}|{mid}", "series", self.model_errors[mid]):
                                self.summary.skipped += 1
                            continue
                        jobs.append((mid, sha, self.precision))
                    new = self.db(self.ledger.add_series, item.series_uid, item.study_uid, item.source, item.attrs, jobs)
                    self.summary.queued += len(new)
            except SourceError as exc:
                self.log(f"source {src.label}: {exc}; tried again next turn")

    # ------------------------------------------------------------------ jobs
    def fail_stale_models(self) -> None:
        for j in self.db(self.ledger.jobs, "queued"):
            mid = j["model_id"]
            sha = self.models.get(mid) or (None if mid in self.model_errors else self.check_model(mid))
            if sha is None:
                self.db(self.ledger.fail_model, mid, j["model_sha256"], self.model_errors[mid])
            elif sha != j["model_sha256"]:
                self.db(self.ledger.fail_model, mid, j["model_sha256"],
                        f"model {mid}: the job was queued for package {j['model_sha256'][:12]}, the installed package "
                        f"is {sha[:12]} (it changed: queue the series again for the new package)")

    def submit(self) -> None:
        capacity = PREFETCH * sum(self.ok_workers.values()) - len(self.inflight)
        if capacity <= 0:
            return
        for j in self.db(self.ledger.runnable, None, capacity * 2):
            if capacity <= 0:
                break
            if self.models.get(j["model_id"]) != j["model_sha256"]:
                continue  # fail_stale_models fails it with the reason
            row = self.db(self.ledger.start, j["key"], self.lease_s)
            if row is None:
                continue
            series = self.db(self.ledger.series, j["series_uid"])
            spec = {"key": j["key"], "series_uid": j["series_uid"], "study_uid": j["study_uid"],
                    "model_id": j["model_id"], "model_sha256": j["model_sha256"], "precision": j["precision"],
                    "threads": self.job_threads(), "source": series["source"], "queued_epoch": j["queued_epoch"],
                    "submitted_epoch": time.time(), "publish": self.publish}
            dkey = f"shadow-{j['key'][:20]}-{row['attempts']}-{int(time.time() * 1000) % 100000}"
            fut = self.client.submit(self.job_fn, spec, key=dkey, pure=False, retries=0,
                                     workers=list(self.ok_workers), allow_other_workers=False)
            self.inflight[dkey] = fut
            self.job_of[dkey] = row
            capacity -= 1

    def collect(self, timeout: float) -> None:
        from distributed import wait

        if not self.inflight:
            time.sleep(min(timeout, 0.5))
            return
        try:
            wait(list(self.inflight.values()), timeout=timeout, return_when="FIRST_COMPLETED")
        except Exception:  # noqa: BLE001 - TimeoutError: nothing finished in this turn
            pass
        for dkey, fut in list(self.inflight.items()):
            if fut.status == "pending":
                continue
            job = self.job_of.pop(dkey)
            del self.inflight[dkey]
            self.finish(job, fut)

    def finish(self, job: dict, fut) -> None:
        key = job["key"]
        if fut.status == "finished":
            try:
                out = fut.result()
            except Exception as exc:  # noqa: BLE001
                out = {"ok": False, "permanent": False, "reason": f"result lost: {exc}"}
            if out.get("ok"):
                res = out["result"]
                now = time.time()
                timings = {**res.get("timings", {}), "return_s": round(now - res.get("finished_epoch", now), 3),
                           "latency_s": round(now - float(job["queued_epoch"]), 3)}
                self.db(self.ledger.complete, key, {**res, "timings": timings, "stored_epoch": now})
                self.summary.done += 1
                self.log(f"done {job['model_id']} on {job['series_uid']} (p={res.get('probability')}, "
                         f"{res.get('worker')})")
            else:
                state = self.db(self.ledger.fail, key, out.get("reason", "failed"), not out.get("permanent", False),
                                self.max_attempts)
                self._count(state, job, out.get("reason", ""))
            return
        if fut.status == "cancelled" or fut.status == "lost":
            self.db(self.ledger.requeue, key, "the scheduler lost the task; queued again")
            self.summary.requeued += 1
            return
        err = fut.exception()
        name = type(err).__name__
        reason = (f"worker died during the job ({name})" if name in ("KilledWorker", "CommClosedError")
                  else f"task error {name}: {' '.join(str(err).split())[:200]}")
        state = self.db(self.ledger.fail, key, reason, True, self.max_attempts)
        self._count(state, job, reason)

    def _count(self, state: str, job: dict, reason: str) -> None:
        if state == "queued":
            self.summary.retried += 1
            self.log(f"retry {job['model_id']} on {job['series_uid']}: {reason}")
        elif state == "failed":
            self.summary.failed += 1
            self.log(f"failed {job['model_id']} on {job['series_uid']}: {reason}")

    def renew(self) -> None:
        if not self.inflight:
            return
        try:
            processing = self.client.processing()
        except Exception:  # noqa: BLE001 - the scheduler is away: leases are renewed when it is back
            processing = {}
        where = {k: w for w, keys in processing.items() for k in keys}
        self.db(self.ledger.renew, {self.job_of[d]["key"]: where.get(d, "") for d in self.inflight}, self.lease_s)

    def requeue_expired(self) -> None:
        mine = {j["key"] for j in self.job_of.values()}
        for key in self.db(self.ledger.expired):
            if key not in mine:
                self.db(self.ledger.requeue, key, "lease expired (its driver or worker is gone); queued again")
                self.summary.requeued += 1

    def scheduler_lost(self) -> bool:
        return getattr(self.client, "status", "running") not in ("running", "connecting")


def run(ledger: ShadowLedger, sources: list, rules: list[Rule], client, job_fn: Callable, check_fn: Callable, *,
        once: bool = False,
        precision: str = "int8", threads: int | None = None, lease_s: float = DEFAULT_LEASE_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS, poll_s: float = 10.0, db_wait_s: float = 600.0,
        publish: bool = False, log: Callable[[str], None] = lambda s: None,
        should_stop: Callable[[], bool] = lambda: False, worker_wait_s: float = 120.0) -> RunSummary:
    """Run a shadow deployment until stopped, or with ``once`` until every job is done or failed.

    Parameters
    ----------
    ledger:
        The job ledger (:class:`ShadowLedger`).
    sources:
        Objects with ``poll(ledger)`` yielding :class:`~radreview.review.shadow.intake.Arrival`.
    rules:
        Eligibility rules (:mod:`radreview.review.shadow.rules`).
    client:
        A connected ``distributed.Client``.
    job_fn, check_fn:
        The worker function (:func:`radreview.viewer.shadow_worker.run_job`) and the check run on
        each worker before it gets jobs (:func:`radreview.viewer.shadow_worker.worker_check`:
        ``{"bad": {model: reason}, "cores": n}``).
    lease_s, max_attempts, poll_s, db_wait_s:
        Lease length (s), attempts before a job fails for good, seconds between intake polls
        (without ``once``), how long an unreachable ledger is waited for (s).

    Raises
    ------
    ShadowRunError
        No worker can run the queued jobs within ``worker_wait_s``, or the ledger stayed
        unreachable for ``db_wait_s``.
    """
    d = _Driver(ledger, client, job_fn, check_fn, precision, threads, lease_s, max_attempts, db_wait_s, publish, log)
    t_start = time.monotonic()
    for r in rules:  # the models the rules name are checked once up front
        for mid in r.models:
            if mid not in d.models and mid not in d.model_errors:
                d.check_model(mid)
    d.check_workers()
    d.intake(sources, rules)
    d.fail_stale_models()
    last_poll = last_models = time.monotonic()
    no_worker_since: float | None = None
    while not should_stop():
        if time.monotonic() - last_models > MODEL_CHECK_S:  # a package changed on disk fails its queued jobs
            for mid in list(d.models) + list(d.model_errors):
                d.check_model(mid)
            d.fail_stale_models()
            last_models = time.monotonic()
        if d.scheduler_lost():
            for dkey in list(d.inflight):
                job = d.job_of.pop(dkey)
                d.inflight.pop(dkey)
                d.db(ledger.requeue, job["key"], "the scheduler was lost; queued again")
                d.summary.requeued += 1
            d.ok_workers = {}
            time.sleep(1.0)
            continue
        d.check_workers()
        d.requeue_expired()
        d.submit()
        d.collect(timeout=1.0)
        d.renew()
        if not once and time.monotonic() - last_poll > poll_s:
            d.intake(sources, rules)
            d.fail_stale_models()
            last_poll = time.monotonic()
        if once:
            counts = d.db(ledger.counts)
            if counts["queued"] == 0 and counts["running"] == 0 and not d.inflight:
                break
            if not d.ok_workers and counts["queued"]:
                no_worker_since = no_worker_since or time.monotonic()
                if time.monotonic() - no_worker_since > worker_wait_s:
                    refused = "; ".join(f"{a}: {r}" for a, r in d.refused.items()) or "none connected"
                    raise ShadowRunError(f"no worker can run the queued jobs after {worker_wait_s:.0f} s "
                                         f"(refused workers: {refused})")
            else:
                no_worker_since = None
    d.summary.seconds = round(time.monotonic() - t_start, 2)
    return d.summary
