"""``radreview shadow run|status|retry|outcomes|report``: shadow deployment on Dask.

``run --db DB --source DIR|orthanc+http://HOST:PORT|dicom://AET@HOST:PORT [--since DATE]
[--rules FILE] [--model ID]... [--workers N | --scheduler tcp://HOST:PORT] [--threads N] [--once]
[--publish]``: queue every eligible series x model in the ledger and run the jobs on Dask workers
(a local cluster of ``--workers`` processes, default 1, or an existing cluster); ``--once`` exits
when every job is done or failed (exit 0; non-zero only when the run could not proceed).
Nothing is sent anywhere unless ``--publish`` (DICOM SR back to the source PACS).
"""

from __future__ import annotations

import json
import signal
import sys

from . import CliError


def _open(db: str, create: bool = False):
    from radreview.review.shadow import LedgerError, ShadowLedger

    try:
        return ShadowLedger(db, create=create)
    except LedgerError as exc:
        raise CliError(str(exc)) from None


def _run(args) -> int:
    from radreview.review.shadow.intake import SourceError, open_source
    from radreview.review.shadow.rules import RulesError, default_rules, load_rules
    from radreview.review.shadow.runner import local_cluster, run
    from radreview.viewer.shadow_worker import run_job, worker_check

    if args.workers is not None and args.scheduler:
        raise CliError("--workers and --scheduler exclude each other")
    if args.workers is not None and args.workers < 1:
        raise CliError("--workers must be at least 1")
    try:
        sources = [open_source(s, args.since) for s in args.source]
    except SourceError as exc:
        raise CliError(str(exc)) from None
    if args.publish and not all(s.label.startswith(("orthanc+", "dicom://")) for s in sources):
        raise CliError("--publish sends results back to a PACS source: give an orthanc+http:// or dicom:// source")
    try:
        if args.rules:
            rules = load_rules(args.rules)
            if args.model:
                rules = [r for r in rules if set(r.models) & set(args.model)]
        else:
            from radreview.inference.package import PackageError, list_packages

            ids = args.model or [p.id for p in list_packages()]
            try:
                rules = default_rules(ids)
            except PackageError as exc:
                raise CliError(str(exc)) from None
    except RulesError as exc:
        raise CliError(str(exc)) from None
    ledger = _open(args.db, create=True)
    from distributed import Client

    cluster = None
    try:
        if args.scheduler:
            try:
                client = Client(args.scheduler, timeout=args.connect_timeout)
            except OSError as exc:
                raise CliError(f"{args.scheduler}: cannot reach the Dask scheduler ({exc})") from None
        else:
            cluster = local_cluster(args.workers or 1, args.threads)
            client = Client(cluster)
        stop = {"now": False}

        def _stop(*_):
            stop["now"] = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        summary = run(ledger, sources, rules, client, run_job, worker_check, once=args.once, precision=args.precision,
                      threads=args.threads, lease_s=args.lease, max_attempts=args.max_attempts, poll_s=args.poll,
                      publish=args.publish, log=lambda s: print(f"radreview: shadow: {s}", file=sys.stderr),
                      should_stop=lambda: stop["now"], worker_wait_s=args.worker_wait)
        client.close()
    finally:
        if cluster is not None:
            cluster.close()
        ledger.close()
    print(json.dumps({"db": args.db, **summary.as_dict(), "counts": _open(args.db).counts()}))
    return 0


def _status(args) -> int:
    ledger = _open(args.db)
    results = ledger.results()
    jobs = []
    for j in ledger.jobs():
        r = results.get(j["key"], {})
        jobs.append({"study_instance_uid": j["study_uid"], "series_instance_uid": j["series_uid"], "model": j["model_id"],
                     "state": j["state"], "attempts": j["attempts"], "reason": j["reason"] or None,
                     "probability": r.get("probability"), "worker": r.get("worker") or j["worker"] or None,
                     "seconds": (r.get("timings") or {}).get("latency_s")})
    skipped = [{("series_instance_uid" if s["kind"] == "series" else "path"): s["ident"], "reason": s["reason"]}
               for s in ledger.skipped()]
    body = {"jobs": jobs, "skipped": skipped, "counts": ledger.counts()}
    ledger.close()
    if args.json:
        print(json.dumps(body, indent=1))
        return 0
    c = body["counts"]
    print(f"jobs: {c['queued']} queued, {c['running']} running, {c['done']} done, {c['failed']} failed; "
          f"{c['skipped']} skipped")
    fails: dict[str, int] = {}
    for j in jobs:
        if j["state"] == "failed":
            fails[j["reason"]] = fails.get(j["reason"], 0) + 1
    for why, n in sorted(fails.items(), key=lambda kv: -kv[1]):
        print(f"  failed x{n}: {why}")
    return 0


def _retry(args) -> int:
    ledger = _open(args.db)
    n = ledger.retry_failed() if args.failed else ledger.retry_now()
    ledger.close()
    print(json.dumps({"requeued": n}))
    return 0


def _outcomes(args) -> int:
    from radreview.review.shadow.outcomes import OutcomeError, import_csv, import_reviews, import_session

    ledger = _open(args.db)
    try:
        if args.from_session:
            n = import_session(ledger, args.from_session)
        elif args.from_review:
            n = import_reviews(ledger, args.from_review)
        elif args.file:
            n = import_csv(ledger, args.file)
        else:
            raise CliError("give FILE.csv, --from-session DB or --from-review DB")
    except OutcomeError as exc:
        raise CliError(str(exc)) from None
    finally:
        ledger.close()
    print(json.dumps({"outcomes": n}))
    return 0


def _report(args) -> int:
    from radreview.review.shadow.report import ReportError, write_report

    ledger = _open(args.db)
    try:
        rep = write_report(ledger, args.out, since=args.since, until=args.until,
                           by=[b for b in (args.by or "").split(",") if b] or None)
    except ReportError as exc:
        raise CliError(str(exc)) from None
    finally:
        ledger.close()
    print(json.dumps({"out": args.out, "files": rep["files"],
                      "models": {m: {k: v[k] for k in ("n", "auc", "auc_ci95")} for m, v in rep["models"].items()}}))
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser("shadow", help="shadow deployment: the AI runs silently on every arriving study (Dask)")
    ss = p.add_subparsers(dest="shadow_command", required=True)

    r = ss.add_parser("run", help="queue eligible series and run them on Dask workers")
    r.add_argument("--db", required=True, help="the ledger: a SQLite file (created when missing) or postgresql:// URL")
    r.add_argument("--source", required=True, action="append",
                   help="DIR, orthanc+http://HOST:PORT or dicom://AET@HOST:PORT (repeatable)")
    r.add_argument("--since", default=None, help="first study date for a dicom:// source (YYYY-MM-DD)")
    r.add_argument("--rules", default=None, help="eligibility rules (TOML); default: each model's card")
    r.add_argument("--model", action="append", help="model id (repeatable; default: every installed model)")
    r.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default 1)")
    r.add_argument("--scheduler", default=None, help="tcp://HOST:PORT of a running dask scheduler")
    r.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime threads per job (default: cores // task slots per host)")
    r.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    r.add_argument("--once", action="store_true", help="exit when every job is done or failed")
    r.add_argument("--publish", action="store_true", help="send each result as DICOM SR back to the source PACS")
    r.add_argument("--lease", type=float, default=120.0, help="seconds a running job's lease lasts unrenewed")
    r.add_argument("--max-attempts", type=int, default=5, help="attempts before a job fails for good")
    r.add_argument("--poll", type=float, default=10.0, help="seconds between source polls (without --once)")
    r.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to reach --scheduler")
    r.add_argument("--worker-wait", type=float, default=120.0,
                   help="with --once: seconds to wait for a worker that can run the queued jobs before giving up")
    r.set_defaults(func=_run)

    t = ss.add_parser("status", help="jobs, skipped series and counts (no report)")
    t.add_argument("--db", required=True)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_status)

    y = ss.add_parser("retry", help="make queued jobs runnable now; with --failed, queue failed jobs again")
    y.add_argument("--db", required=True)
    y.add_argument("--failed", action="store_true")
    y.set_defaults(func=_retry)

    o = ss.add_parser("outcomes", help="what the AI is measured against")
    oo = o.add_subparsers(dest="outcomes_command", required=True)
    oi = oo.add_parser("import", help="import outcomes: CSV study_instance_uid,positive[,x,y,z], a reading "
                                      "session's final reads, or a review database's signed-off decisions")
    oi.add_argument("--db", required=True)
    oi.add_argument("file", nargs="?", default=None)
    oi.add_argument("--from-session", default=None, help="a reading-session database")
    oi.add_argument("--from-review", default=None, help="a review database")
    oi.set_defaults(func=_outcomes)

    rp = ss.add_parser("report", help="report.json, report.html (plots) and results.csv")
    rp.add_argument("--db", required=True)
    rp.add_argument("--out", required=True)
    rp.add_argument("--since", default=None, help="first study date (YYYY-MM-DD)")
    rp.add_argument("--until", default=None, help="last study date (YYYY-MM-DD)")
    rp.add_argument("--by", default=None, help="subgroup fields, comma-separated (default: manufacturer, scanner, "
                                               "kernel, slice_thickness_mm, site)")
    rp.set_defaults(func=_report)
