"""Load time and peak RSS: radreview (scan + parallel decode) vs SimpleITK ImageSeriesReader.

Usage: ``python -m benchmarks.bench_load [--repeats 5]``. Prints the median of the repeats
for each reader and the ratio ours/SimpleITK (lower is better; the issue's target is <= 0.5),
then peak RSS of a fresh process that loads the series once, as a multiple of the volume's
bytes, and the time to first image (scan + the loader's first, middle slice) warm and in a
fresh process. Both readers run in the same process, after one warm-up each (files in page
cache), with radreview's worker pool started first as a session has it (``1st img cold`` is a
fresh process without it, where large folders are parsed inline).
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


def first_image_ours(folder):
    """Seconds from opening ``folder`` (scan) to the first displayable slice (the loader's
    middle-slice preview, :class:`studies.loader.LoadProgress`): the headless time to first image."""
    from radreview.studies import iter_load, scan

    t = time.perf_counter()
    result = scan(folder)
    gen = iter_load(max(result.volumes, key=lambda e: len(e.frames)))
    progress = next(gen)
    took = time.perf_counter() - t
    gen.close()
    assert progress.preview is not None
    return took


FIRST_SNIPPET = """
import sys
sys.path.insert(0, {root!r})
import numpy, pydicom, studies
from benchmarks.bench_load import first_image_ours
print(first_image_ours({folder!r}))
"""


def first_image_cold(folder) -> float:
    """:func:`first_image_ours` in a fresh process (modules imported, no pool, cold caches of Python)."""
    from benchmarks.data import ROOT

    code = FIRST_SNIPPET.format(root=str(ROOT), folder=str(folder))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


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
    # a session's steady state: the shared worker pool is up (an application starts it with
    # warm_pool(); a process scans large folders inline until then, see the cold column)
    from radreview.studies.parallel import ready_pool, warm_pool

    warm_pool()
    for _ in range(200):
        if ready_pool() is not None:
            break
        time.sleep(0.05)
    rows = []
    for name, folder in (("sample CT, JPEG 2000, 512x512x20", SAMPLE), ("uncompressed 512x512x300", big_series())):
        ours, _ = timed(load_ours, folder, args.repeats)
        ref, _ = timed(load_sitk, folder, args.repeats)
        r_ours = peak_rss("load_ours", folder)
        r_ref = peak_rss("load_sitk", folder)
        mb = r_ours["nbytes"] / 2**20
        first, _ = timed(first_image_ours, folder, args.repeats)
        cold = statistics.median(first_image_cold(folder) for _ in range(3))
        rows.append((name, ours, ref, ours / ref, r_ours["peak_kb"] / 1024, r_ref["peak_kb"] / 1024,
                     (r_ours["peak_kb"] - r_ours["base_kb"]) * 1024 / r_ours["nbytes"], mb, first, cold))
    print(f"load time, median of {args.repeats} (warm cache); peak RSS of a fresh process loading once; "
          "first image: scan + first (middle) slice, warm (median) and in a fresh process (median of 3)")
    print(f"{'series':36} {'ours s':>8} {'SimpleITK s':>11} {'ratio':>6} {'ours RSS MB':>11} {'sitk RSS MB':>11} "
          f"{'ours RSS growth / volume bytes':>30} {'1st img s':>9} {'1st img cold s':>14}")
    for name, a, b, r, ra, rb, g, mb, first, cold in rows:
        print(f"{name:36} {a:8.3f} {b:11.3f} {r:6.2f} {ra:11.0f} {rb:11.0f} {g:24.2f}x of {mb:3.0f} MB "
              f"{first:9.3f} {cold:14.3f}")


if __name__ == "__main__":
    main()
