"""Evented overlays (issue 10): an overlay emits its own change event; the model re-emits it by
name while the overlay is shown and disconnects when it is removed or the volume changes."""

from __future__ import annotations

import numpy as np

from radreview.studies import Volume
from radreview.viewer.model import ViewerModel, plane_mapping
from radreview.viewer.overlay import HeatmapOverlay, LabelOverlay


def _model() -> tuple[ViewerModel, Volume]:
    arr = np.zeros((8, 16, 16), np.int16)
    vol = Volume(arr, (0.7, 0.7, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    m = ViewerModel()
    m.set_volume(vol)
    return m, vol


def test_label_overlay_emits_once_per_change_and_not_while_built():
    lab = np.zeros((8, 16, 16), np.uint8)
    lab[3, 4:8, 4:8] = 1
    ov = LabelOverlay(lab, {1: (255, 0, 0)})
    seen: list[str] = []
    ov.changed.connect(seen.append)
    ov.opacity = 0.7
    ov.opacity = 0.7  # the same value again: no event
    ov.set_visible(1, False)
    ov.set_visible(1, False)  # unchanged: no event
    ov.mode = "outline"
    assert seen == ["opacity", "visible", "mode"]
    assert ov.opacity == 0.7 and ov.mode == "outline"


def test_model_forwards_overlay_events_by_name_and_disconnects():
    m, vol = _model()
    heat = np.zeros(vol.array.shape, np.float32)
    heat[2] = 0.8
    hm = HeatmapOverlay(heat)
    names: list[str] = []
    m.overlay_changed.connect(names.append)
    m.set_overlay("cam", hm)
    assert hm.changed.n_connected == 1
    hm.cutoff = 0.5
    assert names == ["cam"]
    m.remove_overlay("cam")
    assert hm.changed.n_connected == 0  # a removed overlay no longer reaches the model
    hm.cutoff = 0.3
    assert names == ["cam"]
    m.set_overlay("cam", hm)
    m.set_overlay("cam", hm)  # replaced under the same name: still one subscription
    assert hm.changed.n_connected == 1
    m.set_volume(vol)  # a new grid drops every overlay and its subscription
    assert hm.changed.n_connected == 0 and m.overlays == {}


def test_shows_on_is_true_only_on_slices_with_content():
    m, vol = _model()
    heat = np.zeros(vol.array.shape, np.float32)
    heat[2, 5, 5] = 0.9
    hm = HeatmapOverlay(heat)
    ax = plane_mapping(vol, "axial")
    shown = [k for k in range(ax.n_slices) if hm.shows_on(ax, k)]
    assert len(shown) == 1
