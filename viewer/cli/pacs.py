"""``radreview pacs echo|find|retrieve|store|nodes``: query/retrieve and store, headless.

NODE is a name from the PACS settings file (``radreview pacs nodes`` shows where it is), a
DICOMweb base URL (``http(s)://...``) or ``AET@host:port`` (DIMSE). Errors exit non-zero with
one ``radreview: error:`` line naming the node, within the node's timeout (``--timeout``).
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from pathlib import Path

from . import CliError


def _node(args):
    from radreview.studies.pacs import PacsError, load_settings, resolve_node

    try:
        settings = load_settings()
        return resolve_node(args.node, settings, calling_ae=args.calling_ae, timeout=args.timeout), settings
    except (PacsError, ValueError) as exc:
        raise CliError(str(exc)) from None


def _echo(args) -> int:
    from radreview.studies.pacs import PacsError, echo

    node, _ = _node(args)
    try:
        dt = echo(node)
    except PacsError as exc:
        raise CliError(str(exc)) from None
    what = "C-ECHO" if node.kind == "dimse" else "QIDO-RS"
    print(f"{node.label()}: {what} ok in {dt * 1000:.0f} ms")
    return 0


def _find(args) -> int:
    from radreview.studies.pacs import PacsError, StudyQuery, find_studies

    node, _ = _node(args)
    try:
        q = StudyQuery(patient_id=args.patient_id or "", patient_name=args.patient_name or "", accession=args.accession or "",
                       study_date=args.study_date or "", modality=args.modality or "")
        rows = find_studies(node, q)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except PacsError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        keys = ("study_instance_uid", "patient_id", "study_date", "modalities", "description", "series_count")
        print(json.dumps([{k: r.as_dict()[k] for k in keys} for r in rows], indent=1))
    else:
        for r in rows:
            print(f"{r.study_date or '--------'}  {r.patient_id:<16} {'/'.join(r.modalities):<8} {r.series_count or 0:>3} series  "
                  f"{r.description}  {r.study_instance_uid}")
        print(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'} on {node.label()}", file=sys.stderr)
    return 0


def _audit(args, action: str, payload: dict) -> None:
    from radreview.review.store import ReviewStore, StoreCorrupt

    try:
        store = ReviewStore(args.db)
        try:
            store.log_event(args.user or getpass.getuser(), action, payload)
        finally:
            store.close()
    except StoreCorrupt as exc:
        raise CliError(str(exc)) from None


def _retrieve(args) -> int:
    from radreview.studies.pacs import PacsError, iter_retrieve

    node, settings = _node(args)
    out = Path(args.out)
    t0 = time.perf_counter()
    first = None
    n = 0
    nbytes = 0
    try:
        for p in iter_retrieve(node, args.study, args.series, out, method=args.method, settings=settings):
            n, nbytes = p.done, nbytes + p.bytes
            if p.middle is not None and first is None:
                first = time.perf_counter() - t0
            if not args.quiet and sys.stderr.isatty():
                print(f"\r{p.done}/{p.total or '?'}", end="", file=sys.stderr)
    except (PacsError, ValueError) as exc:
        raise CliError(str(exc)) from None
    dt = time.perf_counter() - t0
    if n == 0:
        raise CliError(f"{node.label()}: nothing matched study {args.study}" + (f" series {args.series}" if args.series else ""))
    _audit(args, "pacs-retrieve", {"node": node.name, "study": args.study, "series": args.series or "", "instances": n,
                                   "method": args.method, "out": str(out.resolve())})
    print(json.dumps({"node": node.name, "study_instance_uid": args.study, "series_instance_uid": args.series,
                      "instances": n, "bytes": nbytes, "seconds": round(dt, 3),
                      "first_image_seconds": None if first is None else round(first, 3), "out": str(out)}))
    return 0


def _store(args) -> int:
    from radreview.studies.pacs import PacsError, store

    node, _ = _node(args)
    files = []
    for f in args.files:
        p = Path(f)
        files.extend(sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p])
    try:
        uids = store(node, files)
    except PacsError as exc:
        raise CliError(str(exc)) from None
    _audit(args, "pacs-store", {"node": node.name, "instances": uids})
    print(f"{node.label()}: stored {len(uids)} instance(s)")
    return 0


def _nodes(args) -> int:
    from radreview.studies.pacs import PacsError, config_path, load_settings

    try:
        s = load_settings()
    except PacsError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps([{"name": n.name, "kind": n.kind, "where": n.label()} for n in s.nodes.values()], indent=1))
    else:
        print(f"settings: {config_path()}; cache: {s.cache_path()} (limit {s.cache_limit_mb:g} MB)")
        for n in s.nodes.values():
            print(f"  {n.label()}  [{n.kind}]")
    return 0


def add_subparser(sub) -> None:
    pa = sub.add_parser("pacs", help="PACS query/retrieve and store (DICOMweb or DIMSE)")
    psub = pa.add_subparsers(dest="pacs_cmd", required=True)

    def common(p):
        p.add_argument("node", metavar="NODE", help="configured name, http(s)://DICOMweb-URL or AET@host:port")
        p.add_argument("--timeout", type=float, default=None, help="seconds (default: the node's, 10)")
        p.add_argument("--calling-ae", default=None, help="our AE title for DIMSE (default RADREVIEW)")
        return p

    e = common(psub.add_parser("echo", help="C-ECHO or QIDO-RS ping"))
    e.set_defaults(func=_echo)
    f = common(psub.add_parser("find", help="study-level search"))
    f.add_argument("--patient-id")
    f.add_argument("--patient-name", help="wildcards * and ? allowed")
    f.add_argument("--accession")
    f.add_argument("--study-date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    f.add_argument("--modality")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=_find)
    r = common(psub.add_parser("retrieve", help="C-GET / C-MOVE / WADO-RS a study or series into a folder"))
    r.add_argument("--study", required=True, help="Study Instance UID")
    r.add_argument("--series", default=None, help="Series Instance UID (default: the whole study)")
    r.add_argument("--out", required=True)
    r.add_argument("--method", choices=["auto", "get", "move", "wado"], default="auto")
    r.add_argument("--db", default=None, help="review database for the audit row (default $RADREVIEW_DB)")
    r.add_argument("--user", default=None, help="who retrieves (audit; default the login name)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_retrieve)
    s = common(psub.add_parser("store", help="C-STORE or STOW-RS files (folders are walked)"))
    s.add_argument("files", nargs="+", metavar="FILE")
    s.add_argument("--db", default=None)
    s.add_argument("--user", default=None)
    s.set_defaults(func=_store)
    n = psub.add_parser("nodes", help="configured nodes and the cache")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=_nodes)
