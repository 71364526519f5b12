"""Load time and peak RSS: radreview (scan + parallel decode) vs SimpleITK ImageSeriesReader.

Usage: ``python -m benchmarks.bench_load [--repeats 5]``. Prints the median of the repeats
for each reader and the ratio ours/SimpleITK (lower is better; the issue's target is <= 0.5),
then peak RSS of a fresh process that loads the series once, as a multiple of the volume's
bytes. Both readers run in the same process, after one warm-up each (files in page cache).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from benchmarks.data import SAMPLE, big_series


def load_ours(folder):
    from radreview.studies import load_series, scan

    result = scan(folder)
    return load_series(max(result.volumes, key=lambda e: len(e.frames))).array


_SITK_ALIVE: dict = {}


def load_sitk(folder):
    """SimpleITK's reader; returns a NumPy *view* (no copy, so the RSS figure stays fair) of an
    image that is kept alive in ``_SITK_ALIVE`` until the next call. (A view of the temporary
    ``r.Execute()`` result pointed into freed memory once the image was released.)"""
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    img = r.Execute()
    _SITK_ALIVE["image"] = img
    return sitk.GetArrayViewFromImage(img)


def timed(fn, folder, repeats):
    fn(folder)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(folder)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


RSS_SNIPPET = """
import sys, json
sys.path.insert(0, {root!r})
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1])
import numpy, pydicom, SimpleITK, studies
from benchmarks.bench_load import load_ours, load_sitk
base = hwm()
arr = {fn}({folder!r})
peak = hwm()
print(json.dumps({{"base_kb": base, "peak_kb": peak, "nbytes": int(arr.nbytes)}}))
"""


def peak_rss(fn_name, folder):
    """Peak resident memory (VmHWM, resets at exec unlike ru_maxrss) of a fresh process."""
    from benchmarks.data import ROOT

    code = RSS_SNIPPET.format(root=str(ROOT), fn=fn_name, folder=str(folder))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    rows = []
    for name, folder in (("sample CT, JPEG 2000, 512x512x20", SAMPLE), ("uncompressed 512x512x300", big_series())):
        ours, _ = timed(load_ours, folder, args.repeats)
        ref, _ = timed(load_sitk, folder, args.repeats)
        r_ours = peak_rss("load_ours", folder)
        r_ref = peak_rss("load_sitk", folder)
        mb = r_ours["nbytes"] / 2**20
        rows.append((name, ours, ref, ours / ref, r_ours["peak_kb"] / 1024, r_ref["peak_kb"] / 1024,
                     (r_ours["peak_kb"] - r_ours["base_kb"]) * 1024 / r_ours["nbytes"], mb))
    print(f"load time, median of {args.repeats} (warm cache); peak RSS of a fresh process loading once")
    print(f"{'series':36} {'ours s':>8} {'SimpleITK s':>11} {'ratio':>6} {'ours RSS MB':>11} {'sitk RSS MB':>11} {'ours RSS growth / volume bytes':>30}")
    for name, a, b, r, ra, rb, g, mb in rows:
        print(f"{name:36} {a:8.3f} {b:11.3f} {r:6.2f} {ra:11.0f} {rb:11.0f} {g:24.2f}x of {mb:.0f} MB")


if __name__ == "__main__":
    main()
