"""``radreview explain PATH --model ID --out DIR``: Grad-CAM heatmap and explanation.json."""

from __future__ import annotations

import json
import os

from . import CliError


def _explain(args) -> int:
    from radreview.inference.package import PackageError, load_package
    from radreview.studies import LoadError, open_volume

    if not os.path.exists(args.path):
        raise CliError(f"{args.path}: no such file or folder")
    try:
        from radreview.explain.gradcam import ExplanationRefused, explain_candidate, explain_label
    except ImportError as exc:
        raise CliError(f"explanations need the 'explain' extra (torch, captum): {exc}") from None
    from radreview.inference.classify import classify
    from radreview.inference.segment import segment

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


def add_subparser(sub) -> None:
    ex = sub.add_parser("explain", help="Grad-CAM of a model on a study: heatmap.nii.gz + explanation.json")
    ex.add_argument("path")
    ex.add_argument("--model", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--target", default=None, help="classification: study | candidate-N; segmentation: a label name")
    ex.add_argument("--threads", type=int, default=None)
    ex.set_defaults(func=_explain)
