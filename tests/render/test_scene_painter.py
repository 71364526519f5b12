"""The slice views are painted by Qt (``viewer/_qt/scene_painter.py``) from the VTK scene: the
picture must be VTK's own render of that scene, pixel for pixel where it is not text.

The VTK render is the offscreen render window that holds the view's renderer (same size,
same camera), rendered by Mesa; the Qt picture is ``grab_pixels`` (``QWidget.grab``, the
paint the screen gets). Text is drawn by two different font engines, so the comparison
leaves out the bands where the corner texts, orientation letters, legend and colour bar sit.
"""

from __future__ import annotations

import numpy as np

from radreview.viewer._qt.scene_painter import unpainted
from radreview.viewer._qt.views import grab_pixels
from radreview.viewer.overlay import FLAGGED_RGB, HeatmapOverlay, LabelOverlay, Marker, MarkerOverlay
from radreview.viewer.render import CROSSHAIR_RGB as _GREEN
from radreview.viewer.render import grab_window

CROSSHAIR_RGB = tuple(int(round(255 * c)) for c in _GREEN)


def _scene(window, qtbot):
    m = window.model
    vol = m.volume
    nz, ny, nx = vol.array.shape
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[:, ny // 3:ny // 2, nx // 3:nx // 2] = 1
    lab[nz // 3:2 * nz // 3, ny // 2:ny // 2 + 40, nx // 2:nx // 2 + 40] = 2
    m.set_overlay("seg", LabelOverlay(lab, {1: (255, 0, 255), 2: (0, 255, 0)}, opacity=0.5, flagged={2}))
    z = np.linspace(0, 1, nz, dtype=np.float32)[:, None, None]
    m.set_overlay("heat", HeatmapOverlay(np.broadcast_to(z, vol.array.shape).copy(), opacity=0.4, cutoff=0.1,
                                         title="test", value_range=(0.0, 1.0)))
    ijk = (nx // 2 + 20.0, ny // 2 + 20.0, float(nz // 2))
    centre = vol.index_to_lps(np.array(ijk))
    m.set_overlay("marks", MarkerOverlay([Marker(ijk, 12.0, number=1, flagged=True)], vol.array.shape, vol.spacing))
    m.set_cursor(centre)
    qtbot.wait(100)
    return m


def _centre(px: np.ndarray) -> np.ndarray:
    h, w, _ = px.shape
    return px[int(0.16 * h):int(0.84 * h), int(0.12 * w):int(0.86 * w)].astype(int)


def _vector_mask(qt: np.ndarray, gl: np.ndarray) -> np.ndarray:
    """Centre pixels within 3 px of the crosshair, a ring or a marker number in either picture:
    lines and glyphs are rasterised by each engine's own rules (compared separately below)."""
    from scipy import ndimage

    hit = np.zeros(qt.shape[:2], bool)
    for img in (qt, gl):
        px = img.astype(int)
        hit |= (px == CROSSHAIR_RGB).all(axis=2)
        hit |= np.abs(px - np.array(FLAGGED_RGB)).sum(axis=2) < 120
    return _centre(ndimage.binary_dilation(hit, iterations=3)[..., None])[..., 0].astype(bool)


def _within_one_pixel(qt: np.ndarray, gl: np.ndarray) -> np.ndarray:
    """Per centre pixel of ``qt``: whether it equals (within 8 grey levels) a pixel of ``gl``
    at most one device pixel away. The image itself is resampled as OpenGL samples it
    (``ImageCache``), but a tie at a source-pixel boundary can round either way; a geometry
    error (a flipped axis, half a source pixel or more of offset, a wrong aspect) moves whole
    edges and fails this."""
    a = _centre(qt)
    best = np.full(a.shape[:2], 10**6)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            best = np.minimum(best, np.abs(a - _centre(np.roll(gl, (dy, dx), axis=(0, 1)))).max(axis=2))
    return best <= 8


def test_painted_views_match_vtk_renders_of_the_same_scene(window, qtbot):
    _scene(window, qtbot)
    for plane, view in window.views.items():
        assert unpainted(view.scene.renderer) == [], plane
        qt = grab_pixels(view)
        gl = grab_window(view.GetRenderWindow())
        assert qt.shape == gl.shape, plane
        keep = ~_vector_mask(qt, gl)
        same = (np.abs(_centre(qt) - _centre(gl)).max(axis=2) <= 8)[keep].mean()
        near = _within_one_pixel(qt, gl)[keep].mean()
        assert keep.mean() > 0.8 and same > 0.995 and near > 0.999, (
            f"{plane}: {100 * (1 - same):.2f} % of the image pixels differ from VTK's render, "
            f"{100 * (1 - near):.2f} % by more than one pixel")
        # the same crosshair rows and columns (exact colour, 1 px)
        for img in (qt, gl):
            hit = (img == CROSSHAIR_RGB).all(axis=2)
            assert hit.sum() > 200, plane
        cq, cg = ((img == CROSSHAIR_RGB).all(axis=2) for img in (qt, gl))
        assert abs(int(np.argmax(cq.sum(axis=0))) - int(np.argmax(cg.sum(axis=0)))) <= 1, plane
        assert abs(int(np.argmax(cq.sum(axis=1))) - int(np.argmax(cg.sum(axis=1)))) <= 1, plane


def test_markers_colour_bar_and_text_are_painted(window, qtbot):
    m = _scene(window, qtbot)
    ax = window.views["axial"]
    px = grab_pixels(ax).astype(int)
    h, w, _ = px.shape
    amber = (np.abs(px - np.array(FLAGGED_RGB)).sum(axis=2) < 40)
    assert amber.sum() > 60  # the flagged ring and its number
    assert ax.scene.colorbar.GetVisibility()
    bar = px[int(0.2 * h):int(0.7 * h), int(0.9 * w):int(0.94 * w)]
    assert np.unique(bar.reshape(-1, 3), axis=0).shape[0] > 20  # a colour ramp, not a flat patch
    corner = px[int(0.9 * h):, : int(0.3 * w)]  # "Slice k/n" in the lower-left corner
    assert (corner.sum(axis=2) > 400).sum() > 30
    before = corner.copy()
    m.scroll("axial", 1)
    qtbot.wait(50)
    after = grab_pixels(ax).astype(int)[int(0.9 * h):, : int(0.3 * w)]
    assert not np.array_equal(before, after)  # the slice number changed


def test_unknown_prop_is_reported(window, qtbot):
    import vtk

    ax = window.views["axial"]
    extra = vtk.vtkAxisActor2D()
    ax.scene.renderer.AddViewProp(extra)
    try:
        assert unpainted(ax.scene.renderer) == [extra.GetClassName()]
    finally:
        ax.scene.renderer.RemoveViewProp(extra)
