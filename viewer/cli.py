"""``radreview`` command line.

Contract (scripts rely on it): exit status 0 on success; otherwise non-zero with a one-line
``radreview: error: ...`` on stderr. ``info --json`` prints exactly one JSON object.

Sub-commands: ``info PATH [--json]``, ``open PATH``, ``demo``, ``snapshot PATH --out FILE.png
[--layout ...] [--preset NAME]``, ``models list|verify|quantize|bench``, ``infer PATH --model ID
--out DIR``. Qt and VTK are imported only by the commands that draw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main"]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _info(args) -> int:
    from studies import is_image_file, load_image_file, scan

    path = args.path
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file or folder")
    if is_image_file(path):
        try:
            vol = load_image_file(path)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        entry = {
            "study_instance_uid": "", "series_instance_uid": "", "modality": vol.info.modality,
            "description": vol.info.series_description, "sop_class": "", "kind": "volume", "files": 1,
            **vol.geometry_dict(), "warnings": vol.warnings,
        }
        data = {"series": [entry], "skipped": []}
    else:
        result = scan(path)
        try:
            data = result.as_dict()
        finally:
            result.cleanup()
    if args.json:
        print(json.dumps(data))
        return 0
    for s in data["series"]:
        geo = ""
        if "size" in s:
            geo = "  {}x{}x{}  spacing {}".format(*s["size"], "x".join(f"{v:.4g}" for v in s["spacing"]))
        stack = f" [{s['stack']}]" if s.get("stack") else ""
        print(f"{s['modality'] or '??':3} {s['description'] or '(no description)'}{stack}  "
              f"{s['files']} file(s)  {s.get('sop_class_name') or s['sop_class']}{geo}")
        print(f"    study {s['study_instance_uid']}\n    series {s['series_instance_uid']}")
        for w in s["warnings"]:
            print(f"    warning: {w}")
    if data["skipped"]:
        print(f"skipped {len(data['skipped'])} file(s):")
        for sk in data["skipped"]:
            print(f"    {sk['path']}: {sk['reason']}")
    if not data["series"]:
        raise CliError(f"{path}: no DICOM series found")
    return 0


def _demo_path() -> str:
    from studies.sample import SampleDataError, sample_ct_path

    try:
        return str(sample_ct_path())
    except SampleDataError as exc:
        raise CliError(str(exc)) from None


def _open_gui(path: str, args) -> int:
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("QT_QPA_PLATFORM"):
        from viewer.xvfb import ensure_display

        if ensure_display():
            print(f"radreview: no display set; running on a virtual X display {os.environ['DISPLAY']}", file=sys.stderr)
    from viewer._qt.app import run_app

    return run_app(path, layout=args.layout, preset=args.preset, quit_after_ms=args.quit_after_ms)


def _snapshot(args) -> int:
    from studies import LoadError, open_volume

    if args.layout not in ("2x2", "1x3", "axial", "coronal", "sagittal", "3d"):
        raise CliError(f"unknown layout {args.layout!r}")
    try:
        vol = open_volume(args.path)
    except (FileNotFoundError, LoadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    from viewer.xvfb import ensure_display

    ensure_display()
    from viewer.model import ViewerModel
    from viewer.render import snapshot

    model = ViewerModel(vol)
    if args.preset:
        try:
            model.apply_preset(args.preset)
        except KeyError as exc:
            raise CliError(str(exc.args[0])) from None
    cursor = None
    if args.cursor:
        cursor = [float(v) for v in args.cursor.split(",")]
        if len(cursor) != 3:
            raise CliError("--cursor takes x,y,z in LPS mm")
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
    snapshot(model, args.out, layout=args.layout, size=size, preset3d=args.preset3d, cursor_lps=cursor)
    print(args.out)
    return 0


def _models(args) -> int:
    from inference.cli_ops import models_bench, models_list, models_quantize, models_verify
    from inference.package import PackageError

    try:
        if args.models_cmd == "list":
            items = models_list()
            if args.json:
                print(json.dumps(items))
            else:
                for m in items:
                    print(f"{m['id']} {m['version']}  {m['task']}  {'/'.join(m['modality'])}  labels: {', '.join(m['labels'])}")
            return 0
        if args.models_cmd == "verify":
            problems = models_verify(args.id)
            if problems:
                raise CliError("; ".join(problems))
            print(f"{args.id}: schema and SHA-256 of every file OK")
            return 0
        if args.models_cmd == "quantize":
            print(json.dumps(models_quantize(args.id, args.calibration, threads=args.threads), indent=1))
            return 0
        if args.models_cmd == "bench":
            print(json.dumps(models_bench(args.id, threads=args.threads, repeats=args.repeats), indent=1))
            return 0
    except PackageError as exc:
        raise CliError(str(exc)) from None
    return 1


def _infer(args) -> int:
    from inference.cli_ops import run_infer
    from inference.package import PackageError
    from studies import LoadError

    if not os.path.exists(args.path):
        raise CliError(f"{args.path}: no such file or folder")
    try:
        findings = run_infer(args.path, args.model, args.out, precision=args.precision, threads=args.threads)
    except (PackageError, LoadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(findings))
    return 0


def _review(args) -> int:
    from inference.package import PackageError
    from review.findings import SignOffRefused
    from review.store import ReviewStore, StoreCorrupt
    from studies import LoadError, open_volume
    from viewer.workflow import default_models, open_session, run_models

    if not os.path.exists(args.path):
        raise CliError(f"{args.path}: no such file or folder")
    try:
        vol = open_volume(args.path)
        store = ReviewStore(args.db)
    except (LoadError, ValueError, StoreCorrupt) as exc:
        raise CliError(str(exc)) from None
    models = args.model or default_models(vol)
    run = run_models(vol, models, store, precision=args.precision, threads=args.threads)
    for mid, why in run.refused.items():
        print(f"radreview: model {mid} refused: {why}", file=sys.stderr)
    if not run.findings:
        raise CliError("no findings: no model ran on this study")
    session = open_session(store, vol, run.findings)
    reviewer = args.reviewer or os.environ.get("USER", "")
    for item in args.decide or []:
        if "=" not in item:
            raise CliError(f"--decide takes FINDING=accept|reject|edit, not {item!r}")
        name, decision = item.split("=", 1)
        try:
            ts = session.decide(name, decision, reviewer, args.reason)
        except (KeyError, ValueError) as exc:
            raise CliError(str(exc.args[0] if exc.args else exc)) from None
        print(f"saved: {session.resolve(name).id} = {decision} by {reviewer} at {ts}")
    out = {"study": session.key, "findings": [{**f.as_dict(), "decision": session.decisions.get(f.id, {}).get("decision")}
                                              for f in session.findings.values()]}
    if args.json:
        print(json.dumps(out))
    else:
        for f in session.findings.values():
            flag = "NEEDS REVIEW" if f.needs_review else "ok"
            dec = session.decisions.get(f.id, {}).get("decision", "-")
            conf = "n/a" if f.confidence is None else f"{f.confidence:.3f}"
            print(f"  {f.id:38} confidence {conf:>6} threshold {f.threshold}  {flag:12} decision {dec}")
    if args.sign_off:
        try:
            ts = session.sign_off(reviewer)
        except SignOffRefused as exc:
            lines = "; ".join(f.id for f in exc.pending)
            raise CliError(f"sign-off refused: {len(exc.pending)} flagged finding(s) without a decision: {lines}") from None
        except ValueError as exc:
            raise CliError(str(exc)) from None
        print(f"signed off by {reviewer} at {ts}")
    return 0


def _audit(args) -> int:
    from review.store import ReviewStore, StoreCorrupt

    try:
        store = ReviewStore(args.db)
    except StoreCorrupt as exc:
        raise CliError(str(exc)) from None
    rep = store.verify_audit()
    if not rep.ok:
        raise CliError(f"audit log of {store.path} FAILED verification ({rep.rows} rows): " + "; ".join(rep.problems))
    print(f"audit log of {store.path}: {rep.rows} rows, hash chain intact")
    return 0


def _explain(args) -> int:
    from inference.package import PackageError, load_package
    from studies import LoadError, open_volume, save_label_file

    if not os.path.exists(args.path):
        raise CliError(f"{args.path}: no such file or folder")
    try:
        from explain.gradcam import ExplanationRefused, explain_candidate, explain_label
    except ImportError as exc:
        raise CliError(f"explanations need the 'explain' extra (torch, captum): {exc}") from None
    from inference.classify import classify
    from inference.segment import segment

    try:
        vol = open_volume(args.path)
        pkg = load_package(args.model, check_hashes=True)
        if pkg.task == "classification":
            res = classify(vol, pkg, "fp32", args.threads)
            ex = explain_candidate(vol, pkg, res, args.target or "study")
        else:
            res = segment(vol, pkg, "fp32", args.threads)
            target = args.target or next((s.name for s in res.stats if s.voxels), None)
            ex = explain_label(vol, pkg, res, target)
    except (PackageError, LoadError, ValueError, ExplanationRefused) as exc:
        raise CliError(str(exc)) from None
    out = __import__("pathlib").Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(ex.heatmap.astype("float32"))
    img.CopyInformation(vol.to_sitk())
    sitk.WriteImage(img, str(out / "heatmap.nii.gz"), True, 1)
    data = ex.as_json()
    (out / "explanation.json").write_text(json.dumps(data, indent=1))
    print(json.dumps(data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radreview", description="Review medical-imaging AI output on CT/MR studies.")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("info", help="list the studies and series found under PATH")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    for name in ("open", "demo"):
        o = sub.add_parser(name, help="open the GUI on PATH" if name == "open" else "open the GUI on the sample CT")
        if name == "open":
            o.add_argument("path")
        o.add_argument("--layout", default="2x2", choices=["2x2", "1x3", "axial", "coronal", "sagittal", "3d"])
        o.add_argument("--preset", default=None, help="W/L preset (brain, lung, bone, ...)")
        o.add_argument("--quit-after-ms", type=int, default=None, help=argparse.SUPPRESS)
    s = sub.add_parser("snapshot", help="render offscreen to a PNG")
    s.add_argument("path")
    s.add_argument("--out", required=True)
    s.add_argument("--layout", default="2x2")
    s.add_argument("--preset", default=None, help="W/L preset for the 2-D views")
    s.add_argument("--preset3d", default="bone", help="3D preset: bone, soft tissue, lung")
    s.add_argument("--size", default=None, help="WxH in pixels")
    s.add_argument("--cursor", default=None, help="crosshair at x,y,z (LPS mm)")
    m = sub.add_parser("models", help="list, verify, quantize and benchmark model packages")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    ml = msub.add_parser("list")
    ml.add_argument("--json", action="store_true")
    mv = msub.add_parser("verify")
    mv.add_argument("id")
    mq = msub.add_parser("quantize", help="static QDQ INT8 from real calibration volumes")
    mq.add_argument("id")
    mq.add_argument("--calibration", nargs="+", required=True, metavar="PATH")
    mq.add_argument("--threads", type=int, default=2)
    mb = msub.add_parser("bench", help="FP32 vs INT8 latency and peak RSS")
    mb.add_argument("id")
    mb.add_argument("--threads", type=int, default=2)
    mb.add_argument("--repeats", type=int, default=10)
    inf = sub.add_parser("infer", help="run a segmentation model; write segmentation.nii.gz + findings.json")
    inf.add_argument("path")
    inf.add_argument("--model", required=True)
    inf.add_argument("--out", required=True)
    inf.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    inf.add_argument("--threads", type=int, default=None)
    rv = sub.add_parser("review", help="run the models, record decisions and sign off, headless")
    rv.add_argument("path")
    rv.add_argument("--model", action="append", help="model id (repeatable; default: the models that fit the study)")
    rv.add_argument("--reviewer", default=None)
    rv.add_argument("--decide", action="append", metavar="FINDING=accept|reject|edit")
    rv.add_argument("--reason", default=None)
    rv.add_argument("--sign-off", action="store_true")
    rv.add_argument("--json", action="store_true")
    rv.add_argument("--db", default=None, help="review database (default: user data folder or $RADREVIEW_DB)")
    rv.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    rv.add_argument("--threads", type=int, default=None)
    au = sub.add_parser("audit", help="verify the hash-chained audit log")
    ausub = au.add_subparsers(dest="audit_cmd", required=True)
    av = ausub.add_parser("verify")
    av.add_argument("--db", default=None)
    ex = sub.add_parser("explain", help="Grad-CAM of a model on a study: heatmap.nii.gz + explanation.json")
    ex.add_argument("path")
    ex.add_argument("--model", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--target", default=None, help="classification: study | candidate-N; segmentation: a label name")
    ex.add_argument("--threads", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            return _info(args)
        if args.command == "snapshot":
            return _snapshot(args)
        if args.command == "models":
            return _models(args)
        if args.command == "infer":
            return _infer(args)
        if args.command == "review":
            return _review(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "explain":
            return _explain(args)
        if args.command == "open":
            if not os.path.exists(args.path):
                raise CliError(f"{args.path}: no such file or folder")
            return _open_gui(args.path, args)
        if args.command == "demo":
            return _open_gui(_demo_path(), args)
    except CliError as exc:
        print(f"radreview: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
