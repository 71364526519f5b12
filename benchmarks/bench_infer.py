"""Inference benchmarks for ``ct-organs-2p5d`` (same threads, same inputs, medians, one run).

Usage: ``xvfb-run -a python -m benchmarks.bench_infer [--threads 2] [--repeats 5]``

1. ORT FP32 vs PyTorch eager (the state_dict twin) on one batch of 8 patches 3x128x128;
2. ORT INT8 vs ORT FP32 on the same batch;
3. end-to-end ``radreview infer`` (a fresh process: load, resample, sliding window, map back,
   write NIfTI) on the sample DICOM series and on a 512x512x300 CT built from the shared
   abdomen-pelvis NIfTI; INT8 and FP32, with the median of each stage the runs report
   (pre / infer / inverse / post, "other" = process start-up, loading and writing) and the
   FP32/INT8 ratios measured in the same run (``--e2e-only`` runs just this part);
4. GUI event-loop stall while the AI panel's worker runs: a 5 ms QTimer's longest gap and p99.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.data import OUT, SAMPLE, SHARED

MODEL = "ct-organs-2p5d"


def big_ct() -> Path:
    """512x512x300 CT (NIfTI) resampled (linear) from ct-abdomen-nifti/ct.nii.gz, same extent."""
    import SimpleITK as sitk

    path = OUT / "ct512x512x300.nii.gz"
    if path.exists():
        return path
    OUT.mkdir(exist_ok=True)
    img = sitk.ReadImage(str(SHARED / "ct-abdomen-nifti/ct.nii.gz"))
    size = [512, 512, 300]
    sp = [img.GetSpacing()[i] * (img.GetSize()[i] - 1) / (size[i] - 1) for i in range(3)]
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing(sp)
    ref.SetOrigin(img.GetOrigin())
    ref.SetDirection(img.GetDirection())
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1024, sitk.sitkInt16)
    sitk.WriteImage(out, str(path))
    return path


def median_time(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def kernels(threads, repeats):
    import torch

    from radreview.explain.nets import build_from_card
    from radreview.inference.package import load_package
    from radreview.inference.segment import make_session

    pkg = load_package(MODEL, check_hashes=True)
    x = np.random.default_rng(0).normal(size=(8, 3, 128, 128)).astype(np.float32)
    torch.set_num_threads(threads)
    net = build_from_card(pkg.meta)
    net.load_state_dict(torch.load(pkg.file("state_dict"), weights_only=True))
    net.eval()
    xt = torch.from_numpy(x)

    def torch_run():
        with torch.inference_mode():
            net(xt)

    s32 = make_session(pkg.file("fp32"), threads)
    s8 = make_session(pkg.file("int8"), threads)
    t_torch = median_time(torch_run, repeats)
    t32 = median_time(lambda: s32.run(None, {"image": x}), repeats)
    t8 = median_time(lambda: s8.run(None, {"image": x}), repeats)
    return t_torch, t32, t8


def end_to_end(path, precision, threads, repeats, tmp):
    """Median wall time of ``radreview infer`` (fresh process) and the median of each stage the
    run reports in its findings (``stage_seconds``; "other" = start-up, loading, writing)."""
    stages = []

    def run():
        p = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "infer", str(path), "--model", MODEL, "--out", str(tmp),
                            "--precision", precision, "--threads", str(threads)], check=True, capture_output=True, text=True)
        stages.append(json.loads(p.stdout)["stage_seconds"])

    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t)
        stages[-1]["other"] = ts[-1] - sum(stages[-1].values())
    per = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    return statistics.median(ts), per


def gui_stall(path, threads):
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from radreview.studies import open_volume
    from radreview.viewer._qt.workers import run_models_worker

    app = QApplication.instance() or QApplication([])
    vol = open_volume(path)
    ticks = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    done = []
    w = run_models_worker(vol, [MODEL], None, "int8", threads)
    w.returned.connect(lambda r: done.append(r))
    w.errored.connect(lambda e: done.append(e))
    timer.start()
    t0 = time.perf_counter()
    w.start()
    while not done:
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    gaps = np.diff(np.array(ticks)) * 1000
    return float(gaps.max()), float(np.percentile(gaps, 99)), time.perf_counter() - t0, len(ticks)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--e2e-repeats", type=int, default=3)
    ap.add_argument("--e2e-only", action="store_true", help="only the end-to-end runs (no kernel or GUI benchmark)")
    args = ap.parse_args(argv)
    from radreview.viewer.xvfb import ensure_display

    ensure_display()
    if not args.e2e_only:
        tt, t32, t8 = kernels(args.threads, 10)
        print(f"batch 8x3x128x128, {args.threads} threads, median of 10:")
        print(f"  PyTorch eager {1000 * tt:.1f} ms | ORT FP32 {1000 * t32:.1f} ms | ORT INT8 {1000 * t8:.1f} ms")
        print(f"  ORT FP32 vs PyTorch: {tt / t32:.2f}x faster; ORT INT8 vs FP32: {t32 / t8:.2f}x faster")
    tmp = OUT / "infer-out"
    big = big_ct()
    for name, path in (("sample DICOM 512x512x20 (JPEG 2000)", SAMPLE), ("NIfTI CT 512x512x300", big)):
        res = {}
        for prec in ("int8", "fp32"):
            res[prec] = t, per = end_to_end(path, prec, args.threads, args.e2e_repeats, tmp)
            print(f"end-to-end radreview infer, {name}, {prec}: median {t:.2f} s of {args.e2e_repeats}; stages (median s): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
        print(f"  {name}: FP32/INT8 end to end {res['fp32'][0] / res['int8'][0]:.2f}x; "
              f"network stage {res['fp32'][1]['infer'] / res['int8'][1]['infer']:.2f}x")
    if args.e2e_only:
        return
    mx, p99, dur, n = gui_stall(big, args.threads)
    print(f"GUI event loop during INT8 inference on 512x512x300 ({dur:.1f} s, {n} timer ticks): "
          f"longest gap {mx:.0f} ms, p99 {p99:.0f} ms (5 ms timer)")


if __name__ == "__main__":
    main()
