"""``radreview compare`` on a 512x512x300 CT with 6 labels vs the same metrics with seg-metrics.

Usage: ``python -m benchmarks.bench_compare [--repeats 3] [--segmetrics-repeats 3]``.

Inputs (built once under ``bench-data/``): the 512x512x300 series of :func:`benchmarks.data.big_series`;
reference = the sample CT's TotalSegmentator labels (nearest neighbour along z onto the 300
slices) for 6 organs; test = each organ morphologically perturbed (dilated 2 voxels, eroded 1
voxel, shifted 3 voxels, alternately) plus a small AI-only blob. Prints the median (s) of:

* ``radreview compare`` end to end (a fresh process: load the CT, both label maps, metrics,
  disagreement.nii.gz, report.html with key images);
* our metrics core alone (:func:`radreview.review.compare.compare_labels`, in process);
* seg-metrics ``write_metrics`` on the same arrays and spacing (Dice, Jaccard, precision,
  recall, HD, HD95, MSD; full grid per label, its own design).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks.data import OUT, SHARED, big_series

LABELS = {1: "spleen", 5: "liver", 6: "stomach", 20: "colon", 32: "vertebrae_T12", 52: "aorta"}  # TotalSegmentator v2 values


def inputs() -> tuple:
    """(series folder, test.nii.gz, reference.nii.gz), written once."""
    import SimpleITK as sitk
    from scipy import ndimage

    from radreview.studies import open_volume

    series = big_series()
    folder = OUT / "compare6"
    test_p, ref_p = folder / "test.nii.gz", folder / "reference.nii.gz"
    if test_p.is_file() and ref_p.is_file():
        return series, test_p, ref_p
    folder.mkdir(parents=True, exist_ok=True)
    vol = open_volume(series)
    lab = sitk.ReadImage(str(SHARED / "ct-abdomen-dicom" / "totalsegmentator_labels.nii.gz"))
    ref_img = sitk.Image(*vol.size, sitk.sitkUInt8)
    ref_img.SetSpacing(vol.spacing)
    ref_img.SetOrigin(vol.origin)
    ref_img.SetDirection(tuple(vol.direction.ravel()))
    ref_arr = sitk.GetArrayFromImage(sitk.Resample(lab, ref_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
    ref_arr = np.where(np.isin(ref_arr, list(LABELS)), ref_arr, 0).astype(np.uint8)
    test_arr = np.zeros_like(ref_arr)
    for n, v in enumerate(LABELS):
        m = ref_arr == v
        box = ndimage.find_objects(m.astype(np.uint8))[0]
        box = tuple(slice(max(s.start - 4, 0), s.stop + 4) for s in box)
        sub = m[box]
        if n % 3 == 0:
            sub = ndimage.binary_dilation(sub, iterations=2)
        elif n % 3 == 1:
            sub = ndimage.binary_erosion(sub, iterations=1)
        else:
            sub = np.roll(sub, 3, axis=2)
        t = test_arr[box]
        t[sub & (t == 0)] = v
    test_arr[150:160, 300:320, 100:120] = 1  # an AI-only spleen blob
    for arr, p in ((ref_arr, ref_p), (test_arr, test_p)):
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(ref_img)
        sitk.WriteImage(img, str(p), True, 1)
    names = {str(v): n for v, n in LABELS.items()}
    for p in (ref_p, test_p):
        p.with_name(p.name[: -len(".nii.gz")] + ".json").write_text(json.dumps(names))
    return series, test_p, ref_p


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def time_cli(series, test_p, ref_p, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds (user + system, all threads) of each ``radreview compare`` run."""
    out = OUT / "compare6" / "out"
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), _child_cpu()
        subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "compare", str(series), "--test", str(test_p),
                        "--reference", str(ref_p), "--out", str(out)], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
        cpu.append(_child_cpu() - c)
    return times, cpu


def main(argv=None) -> None:
    import SimpleITK as sitk

    from radreview.review.compare import compare_labels, match_labels

    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--segmetrics-repeats", type=int, default=3)
    args = p.parse_args(argv)
    series, test_p, ref_p = inputs()
    test = sitk.GetArrayFromImage(sitk.ReadImage(str(test_p)))
    ref_img = sitk.ReadImage(str(ref_p))
    ref = sitk.GetArrayFromImage(ref_img)
    spacing_zyx = tuple(ref_img.GetSpacing()[::-1])
    pairs = match_labels(LABELS, LABELS)

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (wall times grow with the load; "
          "CPU seconds do not)", flush=True)
    cli, cli_cpu = time_cli(series, test_p, ref_p, args.repeats)
    core, core_cpu = [], []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        rows = compare_labels(test, ref, spacing_zyx, pairs)
        core.append(time.perf_counter() - t)
        core_cpu.append(time.process_time() - c)
    import seg_metrics.seg_metrics as sg

    print(f"radreview compare (CLI, end to end)   median {statistics.median(cli):.2f} s wall, "
          f"{statistics.median(cli_cpu):.2f} s CPU  {[round(x, 2) for x in cli]}", flush=True)
    print(f"compare_labels (metrics core)          median {statistics.median(core):.2f} s wall, "
          f"{statistics.median(core_cpu):.2f} s CPU  {[round(x, 2) for x in core]}", flush=True)
    seg, seg_cpu, sm = [], [], [None]
    for _ in range(args.segmetrics_repeats):
        # one label per call: seg-metrics holds ~9 full-grid int64/float64 arrays per label
        # (about 6 GB here), all six at once needs over 14 GB
        t, c = time.perf_counter(), time.process_time()
        sm = {"dice": [], "hd95": []}
        for v in LABELS:
            one = sg.write_metrics(labels=[v], gdth_img=ref, pred_img=test, spacing=spacing_zyx,
                                   metrics=["dice", "jaccard", "precision", "recall", "hd", "hd95", "msd"],
                                   fully_connected=False)[0]
            sm["dice"] += one["dice"]
            sm["hd95"] += one["hd95"]
            print(f"  seg-metrics label {v}: {time.perf_counter() - t:.1f} s wall so far", flush=True)
        seg.append(time.perf_counter() - t)
        seg_cpu.append(time.process_time() - c)
        sm = [sm]
    print(f"input: {test.shape[2]}x{test.shape[1]}x{test.shape[0]} voxels, spacing (z, y, x) "
          f"{tuple(round(s, 4) for s in spacing_zyx)} mm, {len(pairs)} labels")
    if not seg:
        return
    print(f"seg-metrics write_metrics (same input) median {statistics.median(seg):.2f} s wall, "
          f"{statistics.median(seg_cpu):.2f} s CPU  {[round(x, 2) for x in seg]}")
    print(f"{'label':20} {'dice ours':>9} {'dice sm':>9} {'hd95 ours':>9} {'hd95 sm':>9}")
    sm0 = sm[0]
    for i, r in enumerate(rows):
        print(f"{r.name:20} {r.metrics['dice']:9.4f} {sm0['dice'][i]:9.4f} {r.metrics['hd95_mm']:9.3f} {sm0['hd95'][i]:9.3f}")


if __name__ == "__main__":
    main()
