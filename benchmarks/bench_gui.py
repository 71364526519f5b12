"""Event-loop stalls and times of the real workstation, from one run (under Xvfb + Mesa llvmpipe).

Usage: ``xvfb-run -a -s "-screen 0 1920x1200x24" python -m benchmarks.bench_gui [--series PATH]
[--steps 60] [--json FILE]``

On the real chest CT (``../shared/data/ct-chest-tumor/series_B70f``), in the default 2x2
layout with the 3D view, a 1800x1100 window:

1. **open**: time to the first image (``first_image_shown``) and to the whole volume, and the
   longest event-loop stall from ``open_path`` until 2 s after the volume is shown (the 3D view
   is built lazily then);
2. **Run AI** (all models that fit, INT8): wall time, and the longest stall from the worker's
   result until everything (overlays, findings, markers, 3D surfaces) is drawn plus 1 s;
3. **scroll** with segmentation overlay, markers and a heatmap (the organ model's voxel
   entropy drawn as an uncertainty heatmap) on: per-step time of one axial slice step (model
   update and every render the step triggers in that event-loop turn), p50/p95 wall and p50
   CPU time of this process (the machine may be shared), 3D cursor hidden (the default) and
   shown, and the time from the last step until the linked views have drawn their crosshair
   (on llvmpipe they re-render when the scroll pauses, see viewer/_qt/views.py); plus the same
   with the linked views forced to render on every step ("linked_views_live"), for comparison;
   the same with every slice composed at its step ("cold": nothing composed ahead or kept);
   then steps paced at 60 and 30 per second (a wheel spun fast, key auto-repeat), where the
   view composes the next slices while it waits (``SliceView`` prefetch): there ``to_frame`` is
   the time from a step until its slice is on screen and ``late_steps`` counts steps delayed by
   the work of the one before.

4. **reopen**: the same study opened again, as a radiologist comes back to it: the first image,
   and the longest stall until 2 s after the volume is shown while the last run is restored
   (overlays, candidate markers, AI table and 3D surfaces from the saved run outputs).

The review store and settings are a fresh temporary folder per run (``RADREVIEW_DATA_DIR``,
``RADREVIEW_CONFIG_DIR``) unless ``--data-dir`` is given, so step 1 is a first open (nothing to
restore) whatever ran before, and the user's own store is never written.

A stall is the longest gap between ticks of a 2 ms ``QTimer`` on the GUI thread (how long the
window could not react). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

DEFAULT_SERIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct-chest-tumor" / "series_B70f"


class StallMeter:
    """Longest gap between 2 ms timer ticks on the GUI thread, per named window of time."""

    def __init__(self) -> None:
        from PySide6.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(2)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.timer.start()

    def longest(self, t0: float, t1: float) -> float:
        """Longest gap (s) between ticks within ``[t0, t1]`` (including the edges)."""
        ts = [t0] + [t for t in self.ticks if t0 <= t <= t1] + [t1]
        return float(np.max(np.diff(ts))) if len(ts) > 1 else 0.0


def pump(app, seconds: float = 0.0, until=None, timeout: float = 600.0) -> None:
    t0 = time.perf_counter()
    while True:
        app.processEvents()
        now = time.perf_counter()
        if until is not None and until():
            if now - t0 >= seconds:
                return
        elif until is None and now - t0 >= seconds:
            return
        if now - t0 > timeout:
            raise TimeoutError("benchmark step timed out")
        time.sleep(0.001)


def run(series: Path, steps: int = 60) -> dict:
    from PySide6.QtWidgets import QApplication

    from radreview.viewer._qt.main_window import MainWindow
    from radreview.viewer.overlay import HeatmapOverlay

    app = QApplication.instance() or QApplication([])
    meter = StallMeter()
    win = MainWindow()
    win.resize(1800, 1100)
    win.show()
    pump(app, 0.3)
    out: dict = {"series": str(series), "layout": win.layout_name}

    # 1. open ------------------------------------------------------------------------------
    marks: dict[str, float] = {}
    win.first_image_shown.connect(lambda: marks.setdefault("first", time.perf_counter()))
    win.volume_loaded.connect(lambda _v: marks.setdefault("full", time.perf_counter()))
    t0 = time.perf_counter()
    win.open_path(str(series))
    pump(app, until=lambda: "full" in marks)
    pump(app, 2.0)
    t1 = time.perf_counter()
    out["open"] = {"first_image_s": round(marks["first"] - t0, 3), "volume_s": round(marks["full"] - t0, 3),
                   "longest_stall_s": round(meter.longest(t0, t1), 3),
                   "view3d_built": bool(getattr(win.view3d, "built", True))}

    # 2. Run AI ----------------------------------------------------------------------------
    panel = win.ai_panel
    got: dict[str, float] = {}
    returned_at: list[float] = []
    panel.result_ready.connect(lambda _r: got.setdefault("ready", time.perf_counter()))
    panel.run_failed.connect(lambda _m: got.setdefault("failed", time.perf_counter()))
    t0 = time.perf_counter()
    panel.run()
    panel.worker.returned.connect(lambda _r: returned_at.append(time.perf_counter()), )
    pump(app, until=lambda: bool(got))
    if "failed" in got:
        raise RuntimeError(f"Run AI failed: {panel.eta.text()}")
    pump(app, 1.0, until=lambda: not getattr(panel, "drawing", False))
    t1 = time.perf_counter()
    t_ret = returned_at[0] if returned_at else got["ready"] - 0.001
    run = panel.run_result
    out["run_ai"] = {"models": list(run.packages), "wall_s": round(got["ready"] - t0, 2),
                     "longest_stall_while_drawn_s": round(meter.longest(t_ret, t1), 3),
                     "longest_stall_during_run_s": round(meter.longest(t0, t_ret), 3),
                     "candidates_listed": panel.findings_table.rowCount()}

    # 3. scroll with overlays + markers + heatmap ----------------------------------------
    seg = next(iter(run.segmentations.values()))
    ent = np.asarray(seg.entropy, dtype=np.float32)
    hm = HeatmapOverlay(ent / max(float(ent.max()), 1e-6), opacity=0.5, cutoff=0.2, title="uncertainty (nats)",
                        value_range=(0.0, float(ent.max())))
    win.model.set_overlay("bench-heatmap", hm)
    pump(app, 0.5)

    axial = win.views["axial"]

    def scroll_times(n: int, period_s: float = 0.0, cold: bool = False):
        """``(wall, cpu, to_frame, late)`` per step. Back to back (``period_s`` 0): wall from the
        step to the end of the event-loop turn it triggers (everything it costs, prefetch of
        the next slice included). Paced: a step every ``period_s`` (as wheel notches or key
        repeats arrive), the events pumped in between; ``to_frame`` is from the step until the
        scrolled view's render ended (the new slice on screen); ``late`` counts steps that could
        not start on time because the work of the step before (prefetch included) overran.
        ``cold``: every step composes its slice (nothing composed ahead, nothing kept), as on the
        first pass over slices without idle time; the volume has few slices, so back-to-back
        steps otherwise revisit kept ones."""
        model = win.model
        nz = model.mappings["axial"].n_slices
        d = 1
        times, cpu, frame = [], [], []
        late = 0
        next_t = time.perf_counter()
        for _ in range(n):
            if not (0 <= model.slice_index("axial") + d < nz):
                d = -d
            if period_s:
                while time.perf_counter() < next_t:
                    app.processEvents()
                    time.sleep(0.0005)
                late += time.perf_counter() - next_t > 0.004
                next_t += period_s
            if cold:
                for v in win.views.values():
                    v.scene._kept.clear()
            t, c = time.perf_counter(), time.process_time()
            model.scroll("axial", d)
            app.processEvents()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            frame.append(axial.rendered_at - t if axial.rendered_at >= t else float("nan"))
        return times, cpu, frame, late

    from radreview.viewer._qt import views as views_mod

    def settle_s() -> float:
        """Seconds from the last step until every linked view has rendered its crosshair."""
        t = time.perf_counter()
        while any(v._settle_since is not None for v in win.views.values()) and time.perf_counter() - t < 5.0:
            app.processEvents()
            time.sleep(0.001)
        return time.perf_counter() - t

    out["scroll"] = {}
    slow = views_mod.SLOW_RENDER_MS
    ahead = views_mod.PREFETCH_AHEAD
    for label, shown, live, period, cold in (("cursor3d_hidden", False, False, 0.0, False),
                                             ("cursor3d_hidden_cold", False, False, 0.0, True),
                                             ("cursor3d_shown", True, False, 0.0, False),
                                             ("cursor3d_hidden_linked_views_live", False, True, 0.0, False),
                                             ("paced_60hz_cursor3d_hidden", False, False, 1 / 60, False),
                                             ("paced_30hz_cursor3d_hidden", False, False, 1 / 30, False)):
        if hasattr(win.view3d, "set_cursor_shown"):
            win.view3d.set_cursor_shown(shown)
        views_mod.SLOW_RENDER_MS = float("inf") if live else slow  # live: every view renders every step
        views_mod.PREFETCH_AHEAD = 0 if cold else ahead
        pump(app, 0.3)
        scroll_times(5, period, cold)  # warm-up
        pump(app, 0.3)
        t0 = time.perf_counter()
        ts, cpu, frame, late = scroll_times(steps, period, cold)
        ts, cpu, frame = (np.array(x) * 1000 for x in (ts, cpu, frame))
        settled = settle_s()
        pump(app, 0.5)  # a deferred 3D render (cursor shown) counts in the stall below
        row = {"p50_ms": round(float(np.percentile(ts, 50)), 1),
               "p95_ms": round(float(np.percentile(ts, 95)), 1),
               "max_ms": round(float(ts.max()), 1),
               "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 1),
               "to_frame_p50_ms": round(float(np.nanpercentile(frame, 50)), 1),
               "to_frame_p95_ms": round(float(np.nanpercentile(frame, 95)), 1),
               "linked_views_settled_after_last_step_s": round(settled, 3),
               "longest_stall_s": round(meter.longest(t0, time.perf_counter()), 3)}
        if period:
            row["late_steps"] = int(late)
        out["scroll"][label] = row
    views_mod.SLOW_RENDER_MS = slow
    views_mod.PREFETCH_AHEAD = ahead

    # 4. reopen: the saved run is restored ---------------------------------------------------
    win.model.remove_overlay("bench-heatmap")
    pump(app, 0.5)
    marks = {}
    win.first_image_shown.connect(lambda: marks.setdefault("first", time.perf_counter()))
    win.volume_loaded.connect(lambda _v: marks.setdefault("full", time.perf_counter()))
    restored: list[float] = []
    win.review_panel.run_restored.connect(lambda _s: restored.append(time.perf_counter()))
    t0 = time.perf_counter()
    win.open_path(str(series))
    pump(app, until=lambda: "full" in marks)
    pump(app, 2.0, until=lambda: not getattr(panel, "drawing", False))
    t1 = time.perf_counter()
    out["reopen"] = {"first_image_s": round(marks["first"] - t0, 3) if "first" in marks else None,
                     "volume_s": round(marks["full"] - t0, 3), "run_restored": bool(restored),
                     "markers_listed": panel.findings_table.rowCount(),
                     "longest_stall_s": round(meter.longest(t0, t1), 3)}
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    out["cpu_cores"] = os.cpu_count()
    win.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=Path, default=DEFAULT_SERIES)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--data-dir", type=Path, help="review store and settings folder (default: a fresh temporary one)")
    args = ap.parse_args(argv)
    import tempfile

    base = args.data_dir or Path(tempfile.mkdtemp(prefix="radreview-bench-"))
    os.environ["RADREVIEW_DATA_DIR"] = str(base / "data")
    os.environ["RADREVIEW_CONFIG_DIR"] = str(base / "config")
    res = run(args.series, args.steps)
    res["data_dir"] = str(base)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
