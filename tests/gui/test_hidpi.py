"""A high-DPI screen (a logical pixel is 2 x 2 device pixels): clicks land on the image point
under the mouse, and a middle-button drag pans the image with the mouse.

Qt's device pixel ratio is fixed when the application starts, so the check runs in a fresh
process with ``QT_SCALE_FACTOR=2`` on the test's X display.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = r'''
import json, sys, time
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

app = QApplication([])
from radreview.viewer._qt.main_window import MainWindow

win = MainWindow()
win.resize(1400, 900)
win.show()
done = []
win.volume_loaded.connect(lambda _v: done.append(1))
win.open_path(sys.argv[1])
t = time.time()
while not done and time.time() - t < 60:
    app.processEvents()
for _ in range(50):
    app.processEvents()
view = win.views["axial"]
out = {"ratio": view.devicePixelRatioF(), "round_trip": []}
for r, c in ((100.0, 100.0), (256.0, 300.0), (400.0, 50.0)):
    x, y = view.widget_pos_of(r, c)
    out["round_trip"].append([r, c, *view.screen_point(QPoint(x, y))])
a = QPoint(view.width() // 2, view.height() // 2)
b = a + QPoint(40, 25)
before = view.screen_point(a)
QTest.mousePress(view, Qt.MiddleButton, Qt.NoModifier, a)
QTest.mouseMove(view, a + QPoint(20, 12))
QTest.mouseMove(view, b)
QTest.mouseRelease(view, Qt.MiddleButton, Qt.NoModifier, b)
app.processEvents()
out["under_mouse_before"] = before
out["under_mouse_after"] = view.screen_point(b)
out["image_px_per_logical_px"] = abs(view.screen_point(QPoint(a.x() + 100, a.y()))[1] - view.screen_point(a)[1]) / 100
print("RESULT " + json.dumps(out))
win.close()
'''


def test_clicks_and_pan_follow_the_mouse_at_device_pixel_ratio_2(ct_series):
    env = {**os.environ, "QT_SCALE_FACTOR": "2"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(ct_series)], capture_output=True, text=True, env=env, timeout=180)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, r.stdout[-2000:] + r.stderr[-2000:]
    out = json.loads(line[7:])
    assert out["ratio"] == 2.0
    tol = out["image_px_per_logical_px"]  # one logical pixel, in image pixels
    for r0, c0, r1, c1 in out["round_trip"]:
        assert abs(r1 - r0) <= 0.5 * tol + 1e-6 and abs(c1 - c0) <= 0.5 * tol + 1e-6, out
    (rb, cb), (ra, ca) = out["under_mouse_before"], out["under_mouse_after"]
    assert abs(ra - rb) <= tol and abs(ca - cb) <= tol, out  # the grabbed point moved with the mouse
