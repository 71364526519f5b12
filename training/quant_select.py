"""Choose the INT8 recipe by FP32-vs-INT8 mask agreement on a *training* volume (abdB).

The held-out patient is not used for this choice. Usage: ``python -m training.quant_select``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from radreview.inference.package import ModelPackage, load_package, sha256_file
from radreview.inference.quantize import calibration_patches, edge_convs, quantize_static_int8
from radreview.inference.segment import segment
from radreview.review.metrics import dice
from training.seg_data import CLASSES, volumes

RECIPES = [("minmax", False), ("minmax", True), ("percentile", False), ("percentile", True), ("entropy", True)]


def main():
    src = Path("resources/models/ct-organs-2p5d")
    vols = volumes()
    base = load_package(src)
    patches = calibration_patches([vols[n][0] for n in ("abdB", "head", "chest")], base.meta["input"], per_volume=32)
    abdB = vols["abdB"][0]
    r32 = None
    results = {}
    for method, keep in RECIPES:
        tmp = Path(tempfile.mkdtemp())
        shutil.copytree(src, tmp / "pkg")
        d = tmp / "pkg"
        quantize_static_int8(d / "fp32.onnx", d / "int8.onnx", patches, method=method,
                             keep_fp32=edge_convs(d / "fp32.onnx") if keep else None)
        meta = json.loads((d / "model.json").read_text())
        meta["files"]["int8"]["sha256"] = sha256_file(d / "int8.onnx")
        pkg = ModelPackage(d, meta)
        if r32 is None:
            r32 = segment(abdB, pkg, "fp32", 2).labels
        r8 = segment(abdB, pkg, "int8", 2).labels
        agree = {name: dice(r32 == i, r8 == i) for i, name in enumerate(CLASSES) if i}
        results[f"{method}{'+edges-fp32' if keep else ''}"] = {k: None if v is None else round(v, 4) for k, v in agree.items()}
        print(method, keep, results[f"{method}{'+edges-fp32' if keep else ''}"], flush=True)
        shutil.rmtree(tmp)
    Path("training/quant_select.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
