"""Slices composed ahead of a scroll (``SliceView`` prefetch, ``SliceScene`` kept slices) show
exactly what a fresh compose shows, and never an old look.

A slice step reuses a slice composed before only under the same display state
(``ViewerModel.display_key``); a change of opacity, window or shown flags, an edit in place
followed by a redraw request, and an overlay without a ``display_key`` all make the view
compose again. Pixels are compared on the real render window (under Xvfb).
"""

from __future__ import annotations

import numpy as np

from radreview.viewer._qt.views import PREFETCH_AHEAD, grab_pixels
from radreview.viewer.overlay import HeatmapOverlay, LabelOverlay


def _setup(window, qtbot):
    m = window.model
    vol = m.volume
    nz, ny, nx = vol.array.shape
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[:, ny // 3:ny // 2, nx // 3:nx // 2] = 1  # a box through every axial slice
    lab[:, ny // 2:ny // 2 + 20, nx // 2:nx // 2 + 20] = 2
    ov = LabelOverlay(lab, {1: (255, 0, 255), 2: (0, 255, 0)}, opacity=0.4, flagged={2})
    z = np.linspace(0, 1, nz, dtype=np.float32)[:, None, None]
    hm = HeatmapOverlay(np.broadcast_to(z, vol.array.shape).copy(), opacity=0.5, cutoff=0.1)
    m.set_overlay("seg", ov)
    m.set_overlay("heat", hm)
    m.set_cursor(vol.index_to_lps(np.array([nx // 2, ny // 2, 2], float)))
    qtbot.wait(100)
    return m, ov, hm


def _shown_equals_fresh(window, m) -> None:
    """The axial view's shown slice (what it paints) equals a fresh compose, pixel for pixel."""
    shown = window.views["axial"].scene.shown_rgb
    fresh = m.compose_slice("axial")
    assert np.array_equal(shown, fresh), f"slice {m.slice_index('axial')}: {(shown != fresh).any(axis=2).sum()} pixels differ"


def test_scroll_prefetches_ahead_and_shows_the_same_pixels(window, qtbot):
    m, ov, _hm = _setup(window, qtbot)
    ax = window.views["axial"]
    composed = []
    orig = m.compose_slice

    def counting(plane, index=None):
        if plane == "axial":
            composed.append(m.slice_index(plane) if index is None else index)
        return orig(plane, index)
    m.compose_slice = counting
    m.scroll("axial", 1)
    k = m.slice_index("axial")
    qtbot.waitUntil(lambda: all(k + n in ax.scene._kept for n in range(1, PREFETCH_AHEAD + 1)), timeout=5000)
    n_before = len(composed)
    m.scroll("axial", 1)  # onto a prefetched slice: shown without composing it again
    qtbot.wait(50)
    assert m.slice_index("axial") == k + 1
    assert composed[n_before:].count(k + 1) == 0, composed
    _shown_equals_fresh(window, m)
    # back one step: the slice shown before is kept too
    n_before = len(composed)
    m.scroll("axial", -1)
    qtbot.wait(50)
    assert composed[n_before:].count(k) == 0, composed
    _shown_equals_fresh(window, m)
    # the render window shows the kept slice (an overlay pixel of the box)
    px = grab_pixels(ax)
    assert px.any()


def test_a_changed_look_is_never_shown_from_kept_slices(window, qtbot):
    m, ov, hm = _setup(window, qtbot)
    ax = window.views["axial"]
    m.scroll("axial", 1)
    k = m.slice_index("axial")
    qtbot.waitUntil(lambda: k + 1 in ax.scene._kept, timeout=5000)
    # opacity: an evented change; the next step composes again, to the new look
    ov.opacity = 0.9
    qtbot.wait(50)
    m.scroll("axial", 1)
    qtbot.wait(50)
    _shown_equals_fresh(window, m)
    # window / level
    qtbot.waitUntil(lambda: m.slice_index("axial") + 1 in ax.scene._kept, timeout=5000)
    m.set_window(300.0, 1500.0)
    qtbot.wait(50)
    m.scroll("axial", 1)
    qtbot.wait(50)
    _shown_equals_fresh(window, m)
    # heatmaps hidden (H)
    qtbot.waitUntil(lambda: m.slice_index("axial") + 1 in ax.scene._kept, timeout=5000)
    m.set_heatmaps_shown(False)
    qtbot.wait(50)
    m.scroll("axial", 1)
    qtbot.wait(50)
    _shown_equals_fresh(window, m)
    # an edit in place (as the brush does) followed by the redraw request the edit panel sends
    k2 = m.slice_index("axial")
    qtbot.waitUntil(lambda: k2 + 1 in ax.scene._kept, timeout=5000)
    ov.labels[k2 + 1] = 0
    for v in window.views.values():
        v.refresh()
    qtbot.wait(50)
    kept = ax.scene._kept.get(k2 + 1)  # dropped, or composed again after the edit (a prefetch still queued)
    assert kept is None or np.array_equal(kept, m.compose_slice("axial", k2 + 1))
    m.scroll("axial", 1)
    qtbot.wait(50)
    _shown_equals_fresh(window, m)
    assert not (ax.scene.shown_rgb == (255, 0, 255)).all(axis=-1).any()


def test_an_overlay_without_display_key_is_never_kept(window, qtbot):
    m, _ov, _hm = _setup(window, qtbot)

    class Plain:
        """An overlay whose look the model cannot tell apart (no ``display_key``)."""
        z_order = 3
        kind = "plain"

        def __init__(self, shape):
            self.value = 10
            self.shape = shape

        def compose(self, rgb, mapping, index):
            out = rgb.copy()
            out[:8, :8] = self.value
            return out

    p = Plain(m.volume.array.shape)
    m.set_overlay("plain", p)
    qtbot.wait(100)
    assert m.display_key() is None
    ax = window.views["axial"]
    m.scroll("axial", 1)
    qtbot.wait(100)
    assert not ax.scene._kept
    p.value = 200  # changed without any signal: the next step still shows it
    m.scroll("axial", 1)
    qtbot.wait(50)
    _shown_equals_fresh(window, m)


def test_an_evented_change_off_the_shown_slice_is_not_shown_stale(window, qtbot):
    """An opacity change of an overlay that does not cut the shown slice redraws nothing
    (``shows_on``), but a kept slice it does cut is composed again on the step onto it."""
    m = window.model
    vol = m.volume
    nz, ny, nx = vol.array.shape
    k = 2
    m.set_cursor(vol.index_to_lps(np.array([nx // 2, ny // 2, k], float)))
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[k + 1:k + 3, ny // 3:ny // 2, nx // 3:nx // 2] = 1  # only on the next two slices
    ov = LabelOverlay(lab, {1: (255, 0, 255)}, opacity=0.3)
    m.set_overlay("next", ov)
    qtbot.wait(100)
    ax = window.views["axial"]
    m.scroll("axial", -1)
    m.scroll("axial", 1)  # back on k, scrolling up: k + 1 and k + 2 are composed ahead
    qtbot.waitUntil(lambda: k + 1 in ax.scene._kept and k + 2 in ax.scene._kept, timeout=5000)
    assert m.slice_index("axial") == k
    ov.opacity = 0.9
    qtbot.wait(50)
    m.scroll("axial", 1)
    qtbot.wait(50)
    _shown_equals_fresh(window, m)


def test_kept_slices_are_bounded_by_count_and_bytes(window, qtbot):
    m, _ov, _hm = _setup(window, qtbot)
    scene = window.views["axial"].scene
    rows, cols = m.mappings["axial"].shape
    scene.KEEP_BYTES = 3 * rows * cols * 3  # room for three composed slices
    for _ in range(8):
        m.scroll("axial", 1)
        qtbot.wait(30)
        assert 1 <= len(scene._kept) <= 3, sorted(scene._kept)
    assert m.slice_index("axial") in scene._kept  # the shown slice is never the one dropped
