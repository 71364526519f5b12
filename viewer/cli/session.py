"""``radreview session ...``: reading sessions (shadow / sequential / concurrent), headless.

Sub-commands: ``create``, ``run-ai``, ``record``, ``reveal``, ``status``, ``report``, ``export``, ``demo``
(headless) and ``read`` (the GUI; its Qt code lives in ``_session_read`` and is imported only
when that command runs, so this module stays free of Qt and VTK).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from . import CliError


def _open(db: str):
    from radreview.review.sessions import ReadingSession, SessionDBError

    try:
        return ReadingSession(db)
    except SessionDBError as exc:
        raise CliError(str(exc)) from None


def _parse_finding(text: str) -> dict:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (3, 4):
        raise CliError(f"--finding takes x,y,z[,diameter_mm] (LPS mm), not {text!r}")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise CliError(f"--finding takes numbers x,y,z[,diameter_mm] (LPS mm), not {text!r}") from None
    return {"lps": vals[:3], "diameter_mm": vals[3] if len(vals) == 4 else None}


def _parse_box(text: str) -> dict:
    try:
        v = [float(p) for p in text.split(",")]
    except ValueError:
        v = []
    if len(v) != 6:
        raise CliError(f"--box takes x0,y0,z0,x1,y1,z1 (two opposite corners, LPS mm), not {text!r}")
    return {"box": [v[:3], v[3:]]}


def _create(args) -> int:
    from radreview.review.sessions import ReadingSession, SessionDBError, SessionError, read_cases_csv, read_truth_csv

    try:
        cases = read_cases_csv(args.cases)
        truth, lesions = read_truth_csv(args.truth) if args.truth else ({}, [])
        s = ReadingSession.create(args.db, cases, args.readers.split(","), args.mode, models=args.model or None,
                                  truth=truth, lesions=lesions, seed=args.seed,
                                  **({"question": args.question} if args.question else {}))
    except (SessionError, SessionDBError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"db": s.store.name, "mode": s.mode, "question": s.question, "seed": s.seed, "models": s.models,
                      "readers": s.readers, "cases": len(cases)}, indent=1))
    return 0


def _run_ai(args) -> int:
    from radreview.review.sessions import SessionError, run_ai
    from radreview.studies import LoadError, open_volume
    from radreview.viewer.workflow import run_models

    s = _open(args.db)
    if args.from_ledger:
        from radreview.review.sessions import ai_from_ledger
        from radreview.review.shadow import LedgerError, ShadowLedger

        try:
            led = ShadowLedger(args.from_ledger)
        except LedgerError as exc:
            raise CliError(str(exc)) from None
        try:
            taken, missing = ai_from_ledger(s, led, only_missing=not args.all)
        finally:
            led.close()
        print(json.dumps({"cases_run": 0, "from_ledger": len(taken), "missing": missing, "models": s.models}))
        return 0
    try:
        done = run_ai(s, run_models, open_volume, only_missing=not args.all,
                      progress=lambda cid: print(f"radreview: AI done on case {cid}", file=sys.stderr))
    except (SessionError, LoadError, ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps({"cases_run": len(done), "models": s.models}))
    return 0


def _record(args) -> int:
    from radreview.review.sessions import SessionError

    s = _open(args.db)
    given = [_parse_finding(f) for f in args.finding or []] + [_parse_box(b) for b in args.box or []]
    findings = given if given else ([] if args.clear_findings else None)
    try:
        r = s.record(args.reader, args.case, score=args.score, findings=findings, text=args.text,
                     lock=args.lock, final=args.final)
    except SessionError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(r.as_dict(), indent=1))
    return 0


def _reveal(args) -> int:
    from radreview.review.sessions import SessionError

    s = _open(args.db)
    try:
        ai = s.reveal(args.reader, args.case)
    except SessionError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(ai, indent=1))
    else:
        print(f"AI ({ai['model']}): probability {ai['probability']:.3f}, threshold {ai['threshold']}, "
              f"{'positive' if ai['positive'] else 'negative'}, {len(ai['findings'])} finding(s)")
    return 0


def _status(args) -> int:
    from radreview.review.sessions import SessionError

    s = _open(args.db)
    try:
        st = s.status(args.reader)
    except SessionError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        for r in st["readers"]:
            print(f"{r['reader']}: {r['done']}/{r['assigned']} done, {r['in_progress']} in progress, next: {r['next'] or '-'}")
    return 0


def _report(args) -> int:
    from radreview.review.sessions.report import write_report

    s = _open(args.db)
    rep = write_report(s, args.out)
    print(json.dumps({"out": str(args.out), "files": rep["files"], "cases": rep["cases"], "readers": len(rep["readers"])}))
    return 0


def _export(args) -> int:
    from radreview.review.sessions import SessionError
    from radreview.review.sessions.export import export_cases_deid
    from radreview.studies.deid import DeidOptions

    s = _open(args.db)
    try:
        res = export_cases_deid(s, args.out, DeidOptions(keep_dates=args.keep_dates, key=args.key or ""))
    except (SessionError, OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    for w in res["warnings"]:
        print(f"radreview: warning: {w}", file=sys.stderr)
    print(json.dumps({"out": res["out"], "cases": len(res["cases"]), "files": sum(c["files"] for c in res["cases"]),
                      "skipped": len(res["skipped"]), "profile": res["profile"]}))
    return 0


def _demo(args) -> int:
    from radreview.review.sessions import SessionDBError, SessionError
    from radreview.review.sessions.demo import DemoError, build_demo

    try:
        info = build_demo(args.db, data_dir=args.data, readers=args.readers.split(","), mode=args.mode, seed=args.seed,
                          n_cases=args.cases)
    except (DemoError, SessionError, SessionDBError) as exc:
        raise CliError(str(exc)) from None
    if not args.no_ai:
        from radreview.review.sessions import ReadingSession, run_ai
        from radreview.studies import open_volume
        from radreview.viewer.workflow import run_models

        s = ReadingSession(args.db)
        try:
            info["ai_cases_run"] = len(run_ai(s, run_models, open_volume))
        except SessionError as exc:
            raise CliError(f"demo session created, but the AI run failed: {exc}") from None
        finally:
            s.close()
    print(json.dumps(info, indent=1))
    print(f"radreview: demo session ready; read it with `radreview session read {args.db} --reader {info['readers'][0]}`",
          file=sys.stderr)
    return 0


def _read(args) -> int:
    return importlib.import_module("radreview.viewer.cli._session_read").run(args)


# the same values as radreview.review.sessions.core.MODES / DEFAULT_QUESTION, spelled here so that
# building the parser (every radreview command does) does not import SQLAlchemy (a test checks they agree)
MODES = ("shadow", "sequential", "concurrent")
DEFAULT_QUESTION = "Solid pulmonary nodule or mass >= 6 mm present?"


def add_subparser(sub) -> None:
    se = sub.add_parser("session", help="reading sessions: shadow mode and reader studies")
    ss = se.add_subparsers(dest="session_cmd", required=True)

    c = ss.add_parser("create", help="create a session database")
    c.add_argument("db", help="SQLite file path or postgresql:// URL")
    c.add_argument("--cases", required=True, help="CSV with columns case_id,path[,readers]")
    c.add_argument("--readers", required=True, help="comma-separated reader names")
    c.add_argument("--mode", required=True, choices=MODES)
    c.add_argument("--model", action="append", help="model id (repeatable; default ct-nodule-2p5d)")
    c.add_argument("--truth", help="CSV case_id,positive[,x,y,z] (LPS mm, one row per lesion)")
    c.add_argument("--seed", type=int, default=None, help="seed of the per-reader case order (recorded)")
    c.add_argument("--question", default=None, help=f"default: {DEFAULT_QUESTION!r}")
    c.set_defaults(func=_create)

    a = ss.add_parser("run-ai", help="run the session's models on every case; results stay in the store")
    a.add_argument("db")
    a.add_argument("--all", action="store_true", help="re-run cases that already have results")
    a.add_argument("--from-ledger", default=None,
                   help="take the results from a shadow-deployment ledger (radreview shadow run) instead of running")
    a.set_defaults(func=_run_ai)

    r = ss.add_parser("record", help="record the reader's current read of a case")
    r.add_argument("db")
    r.add_argument("--reader", required=True)
    r.add_argument("--case", required=True)
    r.add_argument("--score", type=float, default=None, help="suspicion 0-100 (positive at >= 50)")
    r.add_argument("--finding", action="append", help="x,y,z[,diameter_mm] in LPS mm (repeatable; replaces the findings)")
    r.add_argument("--box", action="append", help="x0,y0,z0,x1,y1,z1: a box finding by two corners, LPS mm (repeatable)")
    r.add_argument("--clear-findings", action="store_true", help="remove all findings")
    r.add_argument("--text", default=None, help="free text")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--lock", action="store_true", help="lock the unaided read (immutable from then on)")
    g.add_argument("--final", action="store_true", help="close the revised (or concurrent) read")
    r.set_defaults(func=_record)

    v = ss.add_parser("reveal", help="the AI findings for a case (refused while the read must stay blind)")
    v.add_argument("db")
    v.add_argument("--reader", required=True)
    v.add_argument("--case", required=True)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_reveal)

    t = ss.add_parser("status", help="progress per reader (no AI values)")
    t.add_argument("db")
    t.add_argument("--reader", default=None)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_status)

    p = ss.add_parser("report", help="report.json, reads.csv and report.html with figures")
    p.add_argument("db")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_report)

    x = ss.add_parser("export", help="the session's cases de-identified (PS3.15 Annex E) with a cases.csv index")
    x.add_argument("db")
    x.add_argument("--out", required=True)
    x.add_argument("--keep-dates", action="store_true", help="Retain Full Dates option (default: dates shifted)")
    x.add_argument("--key", default=None, help="secret for consistent UID remapping and pseudonyms across exports")
    x.set_defaults(func=_export)

    d = ss.add_parser("demo", help="build a small demo session from ../shared/data (real CT, real LIDC nodules)")
    d.add_argument("db")
    d.add_argument("--data", default=None, help="the shared data folder (default: $RADREVIEW_DATA_MIRROR, ../shared/data)")
    d.add_argument("--readers", default="reader1,reader2")
    d.add_argument("--mode", default="sequential", choices=MODES)
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--cases", type=int, default=6, help="number of cases (half with a pasted nodule)")
    d.add_argument("--no-ai", action="store_true", help="do not run the AI now (the reading GUI runs it ahead)")
    d.set_defaults(func=_demo)

    o = ss.add_parser("read", help="open the reading GUI on a reader's worklist")
    o.add_argument("db")
    o.add_argument("--reader", required=True)
    o.add_argument("--quit-after-ms", type=int, default=None, help=argparse.SUPPRESS)
    o.set_defaults(func=_read)
