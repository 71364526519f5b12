"""``radreview review PATH ...``: run the models, record decisions and sign off, headless.

Contract: ``--json`` prints one object ``{"study", "study_key_warning", "state", "findings": [...],
"not_assessed": [...]}``; every finding has ``status`` (``needs_review``, ``ai_positive``,
``ai_negative`` or ``not_assessed``), ``reason``, ``answer`` and, for classification,
``probability``. ``--sign-off`` is refused (exit 2, pending findings listed) while a
``needs_review`` or ``ai_positive`` finding has no decision, and when nothing changed since the
last sign-off. After a sign-off ``--decide`` needs ``--addendum --reason TEXT``.
``--confirm-all-positives`` accepts every undecided AI positive finding as one logged action.
``--db FILE`` must exist unless ``--create`` is given.
"""

from __future__ import annotations

import json
import os
import sys

from . import CliError


def _review(args) -> int:
    from radreview.inference.package import PackageError, load_package
    from radreview.review.findings import FindingStatus, PackageChanged, SignOffRefused, StudyLocked
    from radreview.review.settings import remember_reviewer, remembered_reviewer
    from radreview.review.store import ReviewStore, StoreLocked
    from radreview.studies import LoadError, open_volume
    from radreview.review.runs import RunChanged
    from radreview.viewer.workflow import default_models, open_session, restore_last_run, run_models, save_ai_run

    if not os.path.exists(args.path):
        raise CliError(f"{args.path}: no such file or folder")
    if args.addendum and not (args.reason or "").strip():
        raise CliError("--addendum needs --reason TEXT (why the signed-off study is changed)")
    # StoreMissing / StoreCorrupt / StoreLocked are RadreviewErrors: one line, exit 2 (cli.main)
    store = ReviewStore(args.db, create=args.create or args.db is None)
    try:
        vol = open_volume(args.path)
    except (LoadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    reviewer = args.reviewer or remembered_reviewer()
    try:
        if args.reuse_last_run:  # decide on the stored findings of the last run: no inference
            findings, saved = restore_last_run(store, vol)
            if not findings or not saved:
                raise CliError(f"{args.path}: no stored run of this study to reuse; run without --reuse-last-run")
            if args.model:
                findings = [f for f in findings if f.model_id in args.model]
            hashes = {}
            for mid, sr in saved.items():
                pkg = load_package(mid, check_hashes=True)
                hashes[mid] = (pkg.meta["version"], pkg.package_sha256)
            session = open_session(store, vol, findings, hashes, reviewer or "radreview")
        else:
            models = args.model or default_models(vol)
            run = run_models(vol, models, store, precision=args.precision, threads=args.threads)
            for mid, why in run.refused.items():
                print(f"radreview: model {mid} refused: {why}", file=sys.stderr)
            if not run.findings:
                raise CliError("no findings: no model ran on this study")
            session = open_session(store, vol, run.findings, run.package_hashes(), reviewer or "radreview")
            save_ai_run(store, session, run, reviewer or "radreview")
        if session.key_warning:
            print(f"radreview: warning: weak study key {session.key}: {session.key_warning}", file=sys.stderr)
        if args.decide or args.confirm_all_positives or args.sign_off:
            if not reviewer.strip():
                raise CliError("a decision or sign-off needs --reviewer NAME")
            remember_reviewer(reviewer)
        for item in args.decide or []:
            if "=" not in item:
                raise CliError(f"--decide takes FINDING=accept|reject|edit, not {item!r}")
            name, decision = item.split("=", 1)
            try:
                ts = session.decide(name, decision, reviewer, args.reason, addendum=args.addendum)
            except StudyLocked as exc:
                raise CliError(f"{exc} (--addendum --reason TEXT)") from None
            except (KeyError, ValueError) as exc:
                raise CliError(str(exc.args[0] if exc.args else exc)) from None
            print(f"saved: {session.resolve(name).id} = {decision} by {reviewer} at {ts}"
                  + (" (addendum)" if session.locked else ""))
        if args.confirm_all_positives:
            try:
                ids = session.confirm_all_positives(reviewer, args.reason, addendum=args.addendum)
            except StudyLocked as exc:
                raise CliError(f"{exc} (--addendum --reason TEXT)") from None
            except ValueError as exc:
                raise CliError(str(exc)) from None
            print(f"confirmed {len(ids)} AI positive finding(s): {', '.join(ids) or 'none undecided'}")
        decisions = session.decisions
        assessed = [f for f in session.findings.values() if f.status is not FindingStatus.NOT_ASSESSED]
        skipped = [f for f in session.findings.values() if f.status is FindingStatus.NOT_ASSESSED]

        def row(f):
            d = decisions.get(f.id, {})
            return {**f.as_dict(), "decision": d.get("decision"), "addendum": d.get("addendum", False)}

        if args.json:
            print(json.dumps({"study": session.key, "study_key_warning": session.key_warning, "state": session.state(),
                              "findings": [row(f) for f in session.findings.values()],
                              "not_assessed": [{"id": f.id, "reason": f.reason} for f in skipped]}))
        else:
            for f in assessed:
                dec = decisions.get(f.id, {}).get("decision", "-")
                print(f"  {f.id:38} {f.status.label:13} {f.answer:40} ({f.reason})  decision {dec}")
            for f in skipped:
                print(f"  {f.id:38} Not assessed: {f.reason}")
        if args.sign_off:
            try:
                ts = session.sign_off(reviewer)
            except SignOffRefused as exc:
                if exc.pending:
                    lines = "; ".join(f"{f.id} ({f.status.label})" for f in exc.pending)
                    raise CliError(f"sign-off refused: {len(exc.pending)} finding(s) without a decision: {lines}") from None
                raise CliError(str(exc)) from None
            except ValueError as exc:
                raise CliError(str(exc)) from None
            print(f"signed off by {reviewer} at {ts}")
    except (PackageChanged, StoreLocked, PackageError, RunChanged) as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    return 0


def add_subparser(sub) -> None:
    rv = sub.add_parser("review", help="run the models, record decisions and sign off, headless")
    rv.add_argument("path")
    rv.add_argument("--model", action="append", help="model id (repeatable; default: the models that fit the study)")
    rv.add_argument("--reviewer", default=None, help="reviewer name (default: the last one used on this workstation)")
    rv.add_argument("--decide", action="append", metavar="FINDING=accept|reject|edit")
    rv.add_argument("--reason", default=None)
    rv.add_argument("--addendum", action="store_true", help="change a signed-off study (needs --reason)")
    rv.add_argument("--confirm-all-positives", action="store_true",
                    help="accept every undecided AI positive finding (one explicit, logged action)")
    rv.add_argument("--sign-off", action="store_true")
    rv.add_argument("--reuse-last-run", action="store_true",
                    help="decide on the findings stored by this study's last run (no inference; refused if the "
                         "package or a saved run file changed)")
    rv.add_argument("--json", action="store_true")
    rv.add_argument("--db", default=None, help="review database (default: user data folder or $RADREVIEW_DB); must exist "
                                               "unless --create")
    rv.add_argument("--create", action="store_true", help="create the --db file if it does not exist")
    rv.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    rv.add_argument("--threads", type=int, default=None)
    rv.set_defaults(func=_review)
