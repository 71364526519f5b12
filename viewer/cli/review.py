"""``radreview review PATH ...``: run the models, record decisions and sign off, headless.

Contract: ``--json`` prints one object ``{"study", "study_key_warning", "state", "findings": [...],
"not_assessed": [...], "context": [...], "measurements": [...]}`` (:meth:`radreview.review.workstation.StudySession.as_dict`;
``context``: the labels the model card marks ``"role": "context"`` (body, lungs, bone), each with
``name``, ``volume_ml`` and ``"role": "context"`` and no status — anatomy, not findings, never
decided; ``measurements``: the ruler, angle and ROI dicts saved with the study, LPS mm); every finding has
``status`` (``needs_review``, ``ai_positive``, ``ai_negative`` or ``not_assessed``), ``reason``,
``answer`` and, for classification, ``probability``. ``--sign-off`` is refused (exit 2, pending findings listed) while a
``needs_review`` or ``ai_positive`` finding has no decision, and when nothing changed since the
last sign-off. After a sign-off ``--decide`` needs ``--addendum --reason TEXT``.
``--confirm-all-positives`` accepts every undecided AI positive finding as one logged action.
``--db FILE`` must exist unless ``--create`` is given. A sign-off prints the saved measurements it
signed with (one line each).

Decisions, addenda and sign-off go through :class:`radreview.review.workstation.StudySession`,
the same GUI-free session logic as the review panel.
"""

from __future__ import annotations

import json
import os
import sys

from . import CliError


_VALUE_KEYS = ("length_mm", "angle_deg", "mean", "sd", "area_mm2")  # computed by radreview.viewer.measure


def _measurement_line(m: dict) -> str:
    """One saved measurement in words, e.g. ``  ruler m1 (axial) "liver span": length_mm 50.0``.

    The computed values are read from the item's ``values`` dict (as the measure panel saves
    them) or from top-level keys."""
    vals = {**m, **(m.get("values") or {})}
    values = ", ".join(f"{k} {vals[k]:.1f}" if isinstance(vals[k], float) else f"{k} {vals[k]}"
                       for k in _VALUE_KEYS if vals.get(k) is not None)
    where = f" ({m['plane']})" if m.get("plane") else ""
    label = f' "{m["label"]}"' if m.get("label") else ""
    return f"  {m.get('kind')} {m.get('id', '')}{where}{label}: {values or 'no computed values'}"


def _review(args) -> int:
    from radreview.inference.package import PackageError, load_package
    from radreview.review.findings import PackageChanged, SignOffRefused, StudyLocked
    from radreview.review.runs import RunChanged
    from radreview.review.settings import remember_reviewer, remembered_reviewer
    from radreview.review.store import ReviewStore, StoreLocked
    from radreview.review.workstation import StudySession
    from radreview.studies import LoadError, open_volume
    from radreview.viewer.workflow import default_models, run_models, save_ai_run

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
    study = StudySession(store)  # the same GUI-free session logic as the review panel
    try:
        if args.reuse_last_run:  # decide on the stored findings of the last run: no inference
            study.open_study(vol)
            if study.message:  # a saved run file changed on disk since it was saved
                raise CliError(f"{args.path}: {study.message}")
            findings = study.findings()
            if not findings or not study.saved_runs:
                raise CliError(f"{args.path}: no stored run of this study to reuse; run without --reuse-last-run")
            if args.model:
                findings = [f for f in findings if f.model_id in args.model]
            hashes = {}
            for mid in study.saved_runs:
                pkg = load_package(mid, check_hashes=True)
                hashes[mid] = (pkg.meta["version"], pkg.package_sha256)
            study.adopt_findings(vol, findings, hashes, reviewer or "radreview")
        else:
            models = args.model or default_models(vol)
            run = run_models(vol, models, store, precision=args.precision, threads=args.threads)
            for mid, why in run.refused.items():
                print(f"radreview: model {mid} refused: {why}", file=sys.stderr)
            if not run.findings:
                raise CliError("no findings: no model ran on this study")
            study.adopt_run(vol, run, reviewer or "radreview", persist=save_ai_run)
        review = study.review
        assert review is not None  # adopt_run / adopt_findings set it
        if study.key_warning:
            print(f"radreview: warning: weak study key {study.key}: {study.key_warning}", file=sys.stderr)
        if args.decide or args.confirm_all_positives or args.sign_off:
            if not reviewer.strip():
                raise CliError("a decision or sign-off needs --reviewer NAME")
            remember_reviewer(reviewer)
        if args.addendum and study.locked and (args.decide or args.confirm_all_positives):
            study.start_addendum(args.reason)  # the reason is checked above
        reason = None if study.addendum_reason is not None else args.reason
        for item in args.decide or []:
            if "=" not in item:
                raise CliError(f"--decide takes FINDING=accept|reject|edit, not {item!r}")
            name, decision = item.split("=", 1)
            try:
                ts = study.decide(name, decision, reviewer, reason)
            except StudyLocked as exc:
                raise CliError(f"{exc} (--addendum --reason TEXT)") from None
            except (KeyError, ValueError) as exc:
                raise CliError(str(exc.args[0] if exc.args else exc)) from None
            print(f"saved: {review.resolve(name).id} = {decision} by {reviewer} at {ts}"
                  + (" (addendum)" if study.locked else ""))
        if args.confirm_all_positives:
            try:
                ids = study.confirm_all_positives(reviewer, reason)
            except StudyLocked as exc:
                raise CliError(f"{exc} (--addendum --reason TEXT)") from None
            except ValueError as exc:
                raise CliError(str(exc)) from None
            print(f"confirmed {len(ids)} AI positive finding(s): {', '.join(ids) or 'none undecided'}")
        if args.json:
            print(json.dumps(study.as_dict()))
        else:
            decisions = study.decisions()
            for f in study.assessed():
                d = decisions.get(f.id)
                print(f"  {f.id:38} {f.status.label:13} {f.answer:40} ({f.reason})  decision "
                      f"{'-' if d is None else d.decision.value}")
            for f in study.not_assessed():
                print(f"  {f.id:38} Not assessed: {f.reason}")
            if study.context:
                print(f"  {study.context_text()}: " + "; ".join(c.text for c in study.context))
        if args.sign_off:
            try:
                ts = study.sign_off(reviewer)
            except SignOffRefused as exc:
                if exc.pending:
                    lines = "; ".join(f"{f.id} ({f.status.label})" for f in exc.pending)
                    raise CliError(f"sign-off refused: {len(exc.pending)} finding(s) without a decision: {lines}") from None
                raise CliError(str(exc)) from None
            except ValueError as exc:
                raise CliError(str(exc)) from None
            measurements = study.store.load_measurements(review.key)
            print(f"signed off by {reviewer} at {ts} with {len(measurements)} measurement(s)")
            for m in measurements:
                print(_measurement_line(m))
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
