"""Retrieve a 512x512x300 CT (uncompressed, 150 MiB) from a loopback Orthanc: C-GET, C-MOVE and
WADO-RS through radreview, next to Orthanc's own REST download of the same series (the
anchor: ``/series/{id}/archive`` as one ZIP, and ``/instances/{id}/file`` one by one).

Usage: ``python -m benchmarks.bench_pacs [--repeats 3] [--slices 300]``. Prints JSON: the median
of the repeats per method (seconds, MB/s) and the time until the middle slice is decoded and
ready to draw ("first image"), measured from the call that starts the retrieve (the query for
the instance list included). Needs ``/usr/sbin/Orthanc`` and its DICOMweb plugin.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

from benchmarks.data import big_series


def _upload(srv, folder: Path) -> tuple[str, str, str, int]:
    import pydicom
    from pydicom.uid import generate_uid

    study = generate_uid()
    total = 0
    orthanc_series = None
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = study  # the template (sample CT) has none
        ds.PatientID, ds.PatientName = "RR-BENCH", "Bench^CT"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        total += buf.tell()
        orthanc_series = json.loads(srv.request("/instances", buf.getvalue()))["ParentSeries"]
    return study, str(ds.SeriesInstanceUID), orthanc_series, total


def _gui(node, settings, study, repeats, tmp):
    """Time the PACS tab of a real MainWindow: ``retrieve()`` -> ``first_image_shown`` (the
    middle slice drawn) and -> ``volume_loaded``; a fresh cache folder each time."""
    from PySide6.QtWidgets import QApplication

    from radreview.viewer._qt.main_window import MainWindow

    app = QApplication.instance() or QApplication([])
    win = MainWindow()
    win.resize(1600, 1000)
    win.show()
    panel = win.pacs_panel
    panel.settings = settings
    panel.set_node(node)
    panel.patient_id.setText("RR-BENCH")
    state = {}
    panel.searched.connect(lambda n: state.__setitem__("found", n))
    win.first_image_shown.connect(lambda: state.setdefault("first", time.perf_counter()))
    win.volume_loaded.connect(lambda v: state.setdefault("loaded", time.perf_counter()))
    def wait(cond):
        # poll with a sleep: a busy processEvents() loop (millions of calls) trips a None
        # reference-count bug in the bindings under Python 3.11
        while not cond():
            app.processEvents()
            time.sleep(0.001)

    panel.search()
    wait(lambda: "found" in state)
    panel.studies.selectRow(0)
    wait(lambda: panel.series.rowCount() > 0)
    out = []
    for k in range(repeats + 1):
        settings.cache_dir = str(tmp / f"gui-cache-{k}")  # a cold cache each time
        state.pop("first", None)
        state.pop("loaded", None)
        t0 = time.perf_counter()
        panel.retrieve()
        wait(lambda: "loaded" in state)
        if k:  # the first run is a warm-up
            out.append((state["first"] - t0, state["loaded"] - t0))
        for _ in range(50):
            app.processEvents()
            time.sleep(0.001)
    win.close()
    return out


def main(argv=None) -> int:
    from radreview.studies import open_volume
    from radreview.studies.pacs import PacsNode, PacsSettings, iter_retrieve
    from tests.pacs_server import PASSWORD, USER, OrthancServer, free_port, orthanc_missing

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--gui", action="store_true", help="also time the PACS tab (needs an X display): "
                    "Retrieve click -> middle slice drawn, -> whole series loaded")
    args = ap.parse_args(argv)
    why = orthanc_missing()
    if why:
        raise SystemExit(why)
    folder = big_series(args.slices)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    import os

    os.environ.setdefault("RADREVIEW_DB", str(tmp / "review.sqlite"))  # never the user's database
    os.environ.setdefault("RADREVIEW_CONFIG_DIR", str(tmp / "config"))
    scp_port = free_port()
    results: dict[str, list[tuple[float, float | None]]] = {}
    with OrthancServer(tmp / "orthanc", modalities={"RADREVIEW": scp_port}) as srv:
        t0 = time.perf_counter()
        study, series, oseries, nbytes = _upload(srv, folder)
        upload_s = time.perf_counter() - t0
        dimse = PacsNode("bench", "dimse", ae_title=srv.aet, host="127.0.0.1", port=srv.dicom_port, timeout=60)
        web = PacsNode("bench-web", "dicomweb", url=srv.dicomweb_url, auth="basic", username=USER, password=PASSWORD,
                       timeout=60)
        settings = PacsSettings(scp_port=scp_port)
        instances = json.loads(srv.request(f"/series/{oseries}"))["Instances"]

        def ours(node, method):
            out = tmp / f"out-{method}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            first = None
            n = 0
            for p in iter_retrieve(node, study, series, out, method=method, settings=settings):
                n = p.done
                if p.middle is not None and first is None:
                    open_volume(p.middle)  # decoded, ready to draw
                    first = time.perf_counter() - t
            assert n == args.slices, (method, n)
            return time.perf_counter() - t, first

        def rest_archive():
            t = time.perf_counter()
            data = srv.request(f"/series/{oseries}/archive", timeout=600)
            assert len(zipfile.ZipFile(io.BytesIO(data)).namelist()) == args.slices
            return time.perf_counter() - t, None

        def rest_files():
            t = time.perf_counter()
            for i in instances:
                srv.request(f"/instances/{i}/file")
            return time.perf_counter() - t, None

        jobs = {"c-get": lambda: ours(dimse, "get"), "c-move": lambda: ours(dimse, "move"),
                "wado-rs": lambda: ours(web, "wado"), "orthanc-rest-archive": rest_archive,
                "orthanc-rest-instances": rest_files}
        for name, fn in jobs.items():
            fn()  # warm-up (Orthanc's and the OS's caches)
            results[name] = [fn() for _ in range(args.repeats)]
        gui = _gui(dimse, settings, study, args.repeats, tmp) if args.gui else None
    shutil.rmtree(tmp, ignore_errors=True)
    mb = nbytes / 2**20
    report = {"series": f"512x512x{args.slices}", "megabytes": round(mb, 1), "upload_seconds": round(upload_s, 2),
              "repeats": args.repeats, "methods": {}}
    for name, rs in results.items():
        secs = statistics.median(r[0] for r in rs)
        firsts = [r[1] for r in rs if r[1] is not None]
        report["methods"][name] = {"seconds": round(secs, 3), "MB_per_s": round(mb / secs, 1),
                                   "first_image_seconds": round(statistics.median(firsts), 3) if firsts else None}
    if gui:
        report["gui_c_get"] = {"first_image_on_screen_seconds": round(statistics.median(g[0] for g in gui), 3),
                               "series_loaded_seconds": round(statistics.median(g[1] for g in gui), 3)}
    anchor = report["methods"]["orthanc-rest-archive"]["seconds"]
    for v in report["methods"].values():
        v["x_anchor"] = round(v["seconds"] / anchor, 2)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
