"""Whole-scan runtime of ``ct-nodule-2p5d`` on a 512x512x300 chest CT (INT8 and FP32).

Usage: ``python -m benchmarks.bench_nodule [--threads 2] [--repeats 3] [--record]``

Input: the real chest CT of ct-chest-tumor (series_B40f, 512x512x30 at 8 mm) resampled
(SimpleITK, linear) along z to 300 slices (0.8 mm): a 512x512x300 chest with its real lungs
and tumour, held in memory (file loading is not timed; ``bench_load`` covers it). Times
``inference.classify.classify`` (resample to 1 mm, lungs, screen, classifier, measurement)
with ``--threads`` ONNX Runtime threads, median of ``--repeats``, per stage too. ``--record``
writes the result into the package's ``model.json`` under ``metrics.runtime``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import SimpleITK as sitk

from benchmarks.data import SHARED

MODEL = "ct-nodule-2p5d"


def chest_512x512x300():
    from radreview.studies import Volume, open_volume

    vol = open_volume(SHARED / "ct-chest-tumor" / "series_B40f")
    img = vol.to_sitk()
    n = 300
    ext = (vol.size[2] - 1) * vol.spacing[2]
    ref = sitk.Image([vol.size[0], vol.size[1], n], sitk.sitkInt16)
    ref.SetSpacing((vol.spacing[0], vol.spacing[1], ext / (n - 1)))
    ref.SetOrigin(vol.origin)
    ref.SetDirection(tuple(vol.direction.ravel()))
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    return Volume.from_sitk(out, info=vol.info)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    from radreview.inference.classify import classify
    from radreview.inference.package import load_package

    pkg = load_package(MODEL, check_hashes=True)
    vol = chest_512x512x300()
    res = {"input": f"{vol.size[0]}x{vol.size[1]}x{vol.size[2]} chest CT (ct-chest-tumor B40f resampled along z)",
           "threads": args.threads, "repeats": args.repeats, "cpu_count": os.cpu_count(),
           "command": "python -m benchmarks.bench_nodule --threads %d --repeats %d" % (args.threads, args.repeats)}
    for prec in ("int8", "fp32"):
        times, stages = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            r = classify(vol, pkg, prec, args.threads)
            times.append(time.perf_counter() - t)
            stages.append(r.stage_seconds)
        res[f"{prec}_s"] = round(statistics.median(times), 2)
        res[f"{prec}_stages"] = {k: round(statistics.median(s[k] for s in stages), 2) for k in stages[0]}
        res[f"{prec}_candidates"] = len(r.candidates)
    print(json.dumps(res, indent=1))
    if args.record:
        path = pkg.root / "model.json"
        meta = json.loads(path.read_text())
        meta.setdefault("metrics", {})["runtime"] = res
        path.write_text(json.dumps(meta, indent=1))
        from radreview.inference.package import write_manifest

        write_manifest()


if __name__ == "__main__":
    main()
