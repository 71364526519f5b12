"""Viewer timings under the current X display (run under Xvfb + Mesa llvmpipe in CI-like setups).

Usage: ``xvfb-run -a python -m benchmarks.bench_view [--repeats 5] [--steps 200]``

1. Time to first image: ``MainWindow.open_path`` on the 512x512x300 uncompressed series until
   the first (middle) slice has been rendered, median of repeats, and until the whole volume
   is shown. Peer: SimpleITK's time to read the whole series (a reader without a preview must
   wait for it).
   (``--real-layout``: the default 2x2 layout with the 3D view, overlays, markers and a heatmap
   on the real chest CT after Run AI instead; see ``benchmarks/bench_gui.py``.)
2. Slice-change render time at a 512x512 viewport: one wheel step (model update, W/L, texture
   upload, render) timed per step, median and p95. Peer in the same run: the stock VTK pipeline
   ``vtkImageReslice`` -> ``vtkImageMapToWindowLevelColors`` -> ``vtkImageActor`` rendering the
   same slices in the same size window.
3. Peak RSS of this process after loading and viewing, as a multiple of the volume's bytes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def p95(xs):
    return float(np.percentile(xs, 95))


def time_to_first_image(folder, repeats):
    from PySide6.QtWidgets import QApplication

    from radreview.viewer._qt.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    firsts, fulls = [], []
    win = None
    for _ in range(repeats + 1):  # +1 warm-up (imports, pool start)
        win = MainWindow()
        win.resize(1200, 900)
        win.show()
        app.processEvents()
        marks = {}
        t0 = time.perf_counter()
        win.first_image_shown.connect(lambda: marks.setdefault("first", time.perf_counter() - t0))
        win.volume_loaded.connect(lambda _v: marks.setdefault("full", time.perf_counter() - t0))
        win.open_path(str(folder))
        while "full" not in marks:
            app.processEvents()
            time.sleep(0.001)
        firsts.append(marks["first"])
        fulls.append(marks["full"])
        if _ < repeats:
            win.close()
            win.deleteLater()
            app.processEvents()
    return firsts[1:], fulls[1:], win


def slice_change_ours(win, steps):
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    win.set_layout("axial")
    win.resize(512 + win.width() - win.centralWidget().width(), 512 + win.height() - win.centralWidget().height())
    app.processEvents()
    view = win.views["axial"]
    model = win.model
    times = []
    n = model.mappings["axial"].n_slices
    direction = 1
    for _ in range(steps):
        if not (0 < model.slice_index("axial") + direction < n):
            direction = -direction
        t = time.perf_counter()
        model.scroll("axial", direction)  # synchronous: model -> slice -> W/L -> texture -> Render()
        times.append(time.perf_counter() - t)
    return times, (view.width(), view.height())


def slice_change_vtk_peer(volume, steps, window):
    """The stock VTK slice pipeline at 512x512, same slices and window."""
    import vtk

    from radreview.viewer.render import volume_to_vtk

    img = volume_to_vtk(volume)
    reslice = vtk.vtkImageReslice()
    reslice.SetInputData(img)
    reslice.SetOutputDimensionality(2)
    axes = vtk.vtkMatrix4x4()
    reslice.SetResliceAxes(axes)
    wl = vtk.vtkImageMapToWindowLevelColors()
    wl.SetInputConnection(reslice.GetOutputPort())
    wl.SetWindow(window[1])
    wl.SetLevel(window[0])
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputConnection(wl.GetOutputPort())
    ren = vtk.vtkRenderer()
    ren.AddActor(actor)
    win = vtk.vtkRenderWindow()
    win.SetSize(512, 512)
    win.SetOffScreenRendering(1)
    win.AddRenderer(ren)
    ox, oy, oz = volume.origin
    sz = volume.spacing[2]
    n = volume.size[2]
    axes.DeepCopy((1, 0, 0, ox, 0, 1, 0, oy, 0, 0, 1, oz, 0, 0, 0, 1))
    win.Render()
    ren.ResetCamera()
    times = []
    k, direction = n // 2, 1
    for _ in range(steps):
        if not (0 < k + direction < n):
            direction = -direction
        k += direction
        t = time.perf_counter()
        axes.SetElement(2, 3, oz + k * sz)
        reslice.Modified()
        win.Render()
        times.append(time.perf_counter() - t)
    win.Finalize()
    return times


RSS_SNIPPET = """
import sys, time
sys.path.insert(0, {root!r})
from benchmarks.bench_view import hwm_mb
from radreview.viewer.xvfb import ensure_display
ensure_display()
import vtk
from PySide6.QtWidgets import QApplication
from radreview.viewer._qt.main_window import MainWindow
app = QApplication([])
win = MainWindow(); win.resize(1200, 900); win.show(); app.processEvents()
base = hwm_mb()
done = []
win.volume_loaded.connect(lambda v: done.append(v))
win.open_path({folder!r})
while not done:
    app.processEvents(); time.sleep(0.001)
for i in range(100):
    win.model.scroll("axial", 1 if (i // 50) % 2 == 0 else -1)
    app.processEvents()
print(base, hwm_mb(), done[0].nbytes)
"""


def peak_rss_view(folder):
    """VmHWM growth of a fresh viewer process that loads ``folder`` once (2x2 with 3D) and scrolls."""
    import subprocess
    import sys

    from benchmarks.data import ROOT

    out = subprocess.run([sys.executable, "-c", RSS_SNIPPET.format(root=str(ROOT), folder=str(folder))],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    base, peak, nbytes = out.split()
    return float(base), float(peak), int(nbytes)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--real-layout", action="store_true",
                   help="measure slice changes in the default 2x2 layout with the 3D view, segmentation, "
                        "markers and a heatmap on the real chest CT after Run AI (benchmarks.bench_gui)")
    args = p.parse_args(argv)
    from radreview.viewer.xvfb import ensure_display

    ensure_display()
    if args.real_layout:
        from benchmarks.bench_gui import DEFAULT_SERIES, run

        res = run(DEFAULT_SERIES, min(args.steps, 100))
        for label, r in res["scroll"].items():
            print(f"slice change, 2x2 + 3D ({label.replace('_', ' ')}) + overlays + markers + heatmap: "
                  f"median {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms (CPU {r.get('cpu_p50_ms', float('nan')):.1f} ms)")
        return
    from benchmarks.bench_load import load_sitk, timed
    from benchmarks.data import big_series

    folder = big_series()
    sitk_med, _ = timed(load_sitk, folder, args.repeats)
    firsts, fulls, win = time_to_first_image(folder, args.repeats)
    vol = win.model.volume
    ours, size = slice_change_ours(win, args.steps)
    peer = slice_change_vtk_peer(vol, args.steps, win.model.window)
    r_base, r_peak, nbytes = peak_rss_view(folder)
    print(f"display {os.environ.get('DISPLAY')}; series 512x512x300 uncompressed ({vol.nbytes / 2**20:.0f} MB volume)")
    print(f"time to first image: median {statistics.median(firsts):.3f} s (full volume shown {statistics.median(fulls):.3f} s); "
          f"SimpleITK full read {sitk_med:.3f} s; ratio first-image/SimpleITK {statistics.median(firsts) / sitk_med:.2f}")
    print(f"slice change at {size[0]}x{size[1]}: ours median {1000 * statistics.median(ours):.1f} ms, p95 {1000 * p95(ours):.1f} ms; "
          f"VTK reslice pipeline median {1000 * statistics.median(peer):.1f} ms, p95 {1000 * p95(peer):.1f} ms; "
          f"ratio (median) {statistics.median(ours) / statistics.median(peer):.2f}")
    print(f"peak RSS of a fresh viewer process that loads the series once (2x2 + 3D) and scrolls 100 slices: "
          f"{r_peak:.0f} MB, {r_base:.0f} MB of it before loading (Python, Qt, VTK); growth "
          f"{(r_peak - r_base) * 2**20 / nbytes:.2f}x the volume's {nbytes / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
