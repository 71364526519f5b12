"""The Qt binding must not leak or drop references to ``None``.

PySide6 6.12.0 on Python 3.11 returns ``None`` from every method declared ``void`` without
taking a reference: each call lowers ``None``'s reference count by one, and after some
thousands of calls (a label set on every mouse move, pens and fonts set on every paint of a
slice view) CPython aborts with "none_dealloc: deallocating None". ``pyproject.toml`` keeps
PySide6 below 6.12; this test fails on a binding with that bug.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QPointF, QTimer
from PySide6.QtGui import QColor, QFont, QImage, QPainter
from PySide6.QtWidgets import QLabel


def test_void_qt_calls_keep_the_reference_count_of_none(qtbot):
    label = QLabel()
    qtbot.addWidget(label)
    timer = QTimer()
    img = QImage(16, 16, QImage.Format_RGB32)
    p = QPainter(img)
    font, color = QFont(), QColor(10, 20, 30)
    calls = {
        "QLabel.setText": lambda: label.setText("W 400 L 40"),
        "QTimer.start": lambda: timer.start(10),
        "QPainter.setPen": lambda: p.setPen(color),
        "QPainter.setFont": lambda: p.setFont(font),
        "QPainter.drawText": lambda: p.drawText(QPointF(1, 10), "1"),
    }
    lost = {}
    try:
        for name, call in calls.items():
            before = sys.getrefcount(None)
            for _ in range(500):
                call()
            lost[name] = before - sys.getrefcount(None)
    finally:
        p.end()
        timer.stop()
    assert all(n < 50 for n in lost.values()), f"references to None lost per 500 calls: {lost}"
