"""Overlay pixels on screen equal the numpy reference, on the real chest CT (under Xvfb).

The MPR views draw overlays by composing them into the slice's RGB texture with
``LabelOverlay.compose`` / ``HeatmapOverlay.compose`` (per-channel look-up tables). These tests
check that the composed pixels follow the documented rule exactly (an independent float
implementation of it), and that the real render window shows them pixel for pixel (nearest
neighbour, no blurring of label edges, same placement) and changes when only the opacity does.
The screenshot is kept as ``test-artifacts/overlay_pixels_axial.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from radreview.studies import open_volume
from radreview.viewer.model import ViewerModel, apply_window
from radreview.viewer.overlay import HeatmapOverlay, LabelOverlay, heat_lut, outline
from radreview.viewer.render import grab_window, snapshot

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARTIFACTS.mkdir(exist_ok=True)
COLORS = {1: (177, 122, 101), 2: (0, 151, 206), 3: (241, 214, 145), 4: (230, 25, 75)}


@pytest.fixture(scope="module")
def chest(data_dir):
    """The real chest CT and a label map made from its HU values: 1 body (outline only),
    2 lungs, 3 bone, 4 a sphere in the right lung (flagged), plus a heatmap around it."""
    vol = open_volume(data_dir / "ct-chest-tumor" / "series_B70f")
    a = vol.array
    k = a.shape[0] // 2
    body = np.stack([ndimage.binary_fill_holes(s > -500) for s in a])
    lab = np.zeros(a.shape, np.uint8)
    lab[body] = 1
    lab[body & (a < -400)] = 2
    lab[body & (a > 300)] = 3
    lung = np.argwhere(lab[k] == 2)
    assert len(lung) > 1000, "no lung found on the middle slice"
    r, c = lung[len(lung) // 2]
    zz, yy, xx = np.indices(a.shape, sparse=True)
    sphere = ((zz - k) * vol.spacing[2]) ** 2 + ((yy - r) * vol.spacing[1]) ** 2 + ((xx - c) * vol.spacing[0]) ** 2 < 15.0 ** 2
    lab[sphere] = 4
    d2 = ((zz - k) * vol.spacing[2]) ** 2 + ((yy - r) * vol.spacing[1]) ** 2 + ((xx - c) * vol.spacing[0]) ** 2
    heat = np.exp(-d2 / (2 * 30.0 ** 2)).astype(np.float32)
    return vol, lab, heat, k


def reference_compose(rgb, lab, heat_q, ov: LabelOverlay, hm: HeatmapOverlay):
    """The documented look, written plainly in float: label fill at ``opacity``, outline-only
    labels and outline mode as 1-pixel outlines at alpha 1, flagged labels hatched
    ``((row + col) % 6) < 2`` plus outline at ``1 - (1 - opacity) * 0.3``; then the heatmap at
    its opacity where ``heat >= cutoff``; blend ``(x (256 - w) + colour w) >> 8``, ``w = rint(256 a)``."""
    on = np.array([ov.visible.get(int(v), True) and int(v) in ov.colors and v > 0 for v in range(256)])[lab]
    edge = outline(lab) & on
    oo = np.isin(lab, list(ov.outline_only)) & on
    fl = np.isin(lab, list(ov.flagged)) & on
    base = 1.0 if ov.mode == "outline" else float(ov.opacity)
    a = np.zeros(lab.shape, np.float32)
    if ov.mode == "outline":
        a[edge] = 1
    else:
        a[on] = base
        a[oo] = 0
        a[oo & edge] = 1
    rr, cc = np.indices(lab.shape)
    a[fl] = 0
    a[fl & ((((rr + cc) % 6) < 2) | edge)] = 1 - (1 - base) * 0.3
    col = np.zeros((256, 3), np.float32)
    for v, rgbv in ov.colors.items():
        col[v] = rgbv
    w = np.rint(a * np.float32(256)).astype(np.int64)[..., None]
    out = (rgb.astype(np.int64) * (256 - w) + col[lab].astype(np.int64) * w) >> 8
    show = heat_q >= int(np.ceil(hm.cutoff * 255 - 1e-6))
    wh = np.where(show, int(np.rint(np.float32(hm.opacity) * np.float32(256))), 0)[..., None]
    out = (out * (256 - wh) + heat_lut()[heat_q].astype(np.int64) * wh) >> 8
    return out.astype(np.uint8)


def _grey_rgb(model, plane="axial"):
    g = apply_window(model.slice_image(plane), *model.window)
    if model.volume.info.invert_grayscale:
        g = 255 - g
    return np.repeat(g[:, :, None], 3, axis=2)


@pytest.mark.parametrize("mode, opacity, flag_body", [("fill", 0.4, False), ("fill", 0.0, False), ("fill", 1.0, True),
                                                       ("outline", 0.4, False)])
def test_compose_matches_the_documented_rule_on_chest_ct(chest, mode, opacity, flag_body):
    vol, lab, heat, k = chest
    model = ViewerModel(vol)
    ov = LabelOverlay(lab, dict(COLORS), outline_only={1}, flagged={4, 1} if flag_body else {4}, opacity=opacity, mode=mode)
    hm = HeatmapOverlay(heat, opacity=0.5, cutoff=0.2)
    model.set_overlay("seg", ov)
    model.set_overlay("heat", hm)
    model.set_cursor(vol.index_to_lps(np.array([2.0, 2.0, k])))
    assert model.slice_index("axial") == k
    mapping = model.mappings["axial"]
    rgb = _grey_rgb(model)
    got = model.compose_overlays(rgb, "axial")
    want = reference_compose(rgb, mapping.extract(lab, k), mapping.extract(hm._q, k), ov, hm)
    assert np.array_equal(got, want), f"{int((got != want).any(axis=2).sum())} pixels differ"
    assert (got != rgb).any(axis=2).mean() > 0.02  # the overlays drew something


def _render_axial(model, png):
    """Render the axial view offscreen 1:1 (one screen pixel per image pixel), crosshair,
    texts and colour bar hidden; returns ``(pixels (rows, cols, 3), scene, window)``."""

    rows, cols = model.mappings["axial"].shape
    scenes: list = []
    snapshot(model, ARTIFACTS / "overlay_pixels_setup.png", layout="axial", size=(cols, rows), scenes_out=scenes)
    scene, win = scenes[0], scenes[-1]
    for _src, actor in scene.lines:
        actor.SetVisibility(False)
    for t in scene.corners + scene.letters + scene.legend:
        t.SetVisibility(False)
    scene.colorbar.SetVisibility(False)
    scene.update_colorbar = lambda: None  # keep the bar hidden on re-renders
    sr, _sc = model.mappings["axial"].pixel_spacing
    scene.renderer.GetActiveCamera().SetParallelScale(rows * sr / 2)
    return grab_window(win, png_path=str(png)), scene, win


def test_window_pixels_equal_compose_reference_and_follow_opacity(chest):
    vol, lab, heat, k = chest
    model = ViewerModel(vol)
    model.set_cursor(vol.index_to_lps(np.array([2.0, 2.0, k])))
    ov = LabelOverlay(lab, dict(COLORS), outline_only={1}, flagged={4}, opacity=0.4)
    hm = HeatmapOverlay(heat, opacity=0.5, cutoff=0.2)
    model.set_overlay("seg", ov)
    model.set_overlay("heat", hm)
    assert model.slice_index("axial") == k
    px, scene, win = _render_axial(model, ARTIFACTS / "overlay_pixels_axial.png")
    try:
        ref = model.compose_overlays(_grey_rgb(model), "axial")
        assert px.shape == ref.shape
        close = (np.abs(px.astype(int) - ref).max(axis=2) <= 3).mean()
        assert close >= 0.99, f"only {close:.2%} of pixels match the compose() reference"
        # body: outline only (inner body pixels away from other labels stay grey), lungs tinted
        sl = lab[k]
        inner_body = ndimage.binary_erosion(sl == 1, iterations=3) & (heat[k] < 0.2)  # outside the heatmap
        grey = px[inner_body]
        assert (grey.max(axis=1).astype(int) - grey.min(axis=1) <= 3).mean() > 0.99
        body_edge = outline(sl) & (sl == 1) & ~ndimage.binary_dilation(sl > 1, iterations=2)
        assert (np.abs(px[body_edge].astype(int) - COLORS[1]).max(axis=1) <= 3).mean() > 0.95
        # an opacity change alone changes the fill pixels on screen, to the new reference
        ov.opacity = 0.8
        scene.update_image()
        px2 = grab_window(win, png_path=str(ARTIFACTS / "overlay_pixels_axial_opacity08.png"))
        lungs = ndimage.binary_erosion(sl == 2, iterations=2)
        assert (np.abs(px2[lungs].astype(int) - px[lungs]).max(axis=1) > 10).mean() > 0.5
        ref2 = model.compose_overlays(_grey_rgb(model), "axial")
        assert (np.abs(px2.astype(int) - ref2).max(axis=2) <= 3).mean() >= 0.99
    finally:
        win.Finalize()


def test_evented_opacity_change_redraws_only_the_planes_it_shows_on(window, qtbot):
    """Setting ``opacity`` on a shown overlay (``overlay_changed``, no ``overlays_changed``)
    re-composes the axial view that shows it, to the new look, and leaves the coronal and
    sagittal views alone when their slices do not cut the overlay."""
    from radreview.viewer._qt.views import grab_pixels

    m = window.model
    vol = m.volume
    nz, ny, nx = vol.array.shape
    k = nz // 2
    m.set_cursor(vol.index_to_lps(np.array([nx // 4, ny // 4, k], float)))
    lab = np.zeros(vol.array.shape, np.uint8)
    r0, c0 = ny // 2, nx // 2  # a box on the axial slice only, away from the coronal/sagittal cuts
    lab[k, r0:r0 + 60, c0:c0 + 60] = 1
    ov = LabelOverlay(lab, {1: (255, 0, 255)}, opacity=0.3)
    m.set_overlay("box", ov)
    qtbot.wait(100)
    ax = window.views["axial"]
    calls = {p: 0 for p in ("axial", "coronal", "sagittal")}
    for plane in calls:
        scene = window.views[plane].scene
        orig = scene.update_image

        def counted(*a, _orig=orig, _plane=plane, **kw):
            calls[_plane] += 1
            _orig(*a, **kw)
        scene.update_image = counted
    mapping = m.mappings["axial"]
    _, rr, cc = mapping.index_to_screen(np.array([c0 + 30, r0 + 30, k], float))

    def centre_rgb(px):
        x, y = ax.scene.screen_to_display(rr, cc)
        return px[int(round(px.shape[0] - 1 - y)), int(round(x))].astype(int)

    before = centre_rgb(grab_pixels(ax))
    ov.opacity = 1.0
    qtbot.waitUntil(lambda: calls["axial"] >= 1, timeout=5000)
    after = centre_rgb(grab_pixels(ax))
    assert np.abs(after - (255, 0, 255)).max() <= 3, after
    assert np.abs(after - before).max() > 40, (before, after)
    assert calls["coronal"] == 0 and calls["sagittal"] == 0, calls
