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


def test_props_painted_only_in_part_are_reported(window, qtbot):
    """Prop types the painter draws, used in ways it does not draw (strips, vertices, colour
    by scalars, a horizontal colour bar, an image actor without its half-pixel border), are
    named with the reason: a tool that adds one is told, not silently drawn wrong."""
    import vtk
    from vtkmodules.util import numpy_support

    ren = window.views["axial"].scene.renderer
    assert unpainted(ren) == []

    def actor(poly):
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(poly)
        a = vtk.vtkActor()
        a.SetMapper(mapper)
        return a

    strips = vtk.vtkStripper()
    sphere = vtk.vtkSphereSource()
    strips.SetInputConnection(sphere.GetOutputPort())
    strips.Update()
    verts = vtk.vtkPolyData()
    pts = vtk.vtkPoints()
    pts.InsertNextPoint(1.0, 1.0, 0.5)
    verts.SetPoints(pts)
    cells = vtk.vtkCellArray()
    cells.InsertNextCell(1)
    cells.InsertCellPoint(0)
    verts.SetVerts(cells)
    line = vtk.vtkLineSource()
    line.Update()
    coloured = vtk.vtkPolyData()
    coloured.DeepCopy(line.GetOutput())
    coloured.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.array([0.0, 1.0])))
    bar = vtk.vtkScalarBarActor()
    bar.SetOrientationToHorizontal()
    image = vtk.vtkImageActor()
    img = vtk.vtkImageData()
    img.SetDimensions(2, 2, 1)
    img.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    image.GetMapper().SetInputData(img)
    square = vtk.vtkPlaneSource()
    square.Update()
    edged = actor(square.GetOutput())
    edged.GetProperty().EdgeVisibilityOn()
    lit = actor(square.GetOutput())  # lighting on by default: VTK shades it, the painter fills it flat
    field = vtk.vtkPolyData()
    field.DeepCopy(line.GetOutput())
    arr = numpy_support.numpy_to_vtk(np.array([0.0, 1.0]))
    arr.SetName("v")
    field.GetPointData().AddArray(arr)
    by_field = actor(field)
    by_field.GetMapper().SetScalarModeToUsePointFieldData()
    by_field.GetMapper().SelectColorArray("v")
    before = vtk.vtkScalarBarActor()
    before.SetTextPositionToPrecedeScalarBar()
    turned, framed = vtk.vtkTextActor(), vtk.vtkTextActor()
    turned.SetInput("x")
    turned.SetOrientation(90)
    framed.SetInput("x")
    framed.GetTextProperty().SetFrame(1)
    scaled = vtk.vtkImageActor()
    scaled.GetMapper().SetInputData(img)
    scaled.GetMapper().BorderOn()
    scaled.SetScale(2, 1, 1)
    props = [actor(strips.GetOutput()), actor(verts), actor(coloured), bar, image, edged, lit, by_field, before,
             turned, framed, scaled]
    for p in props:
        ren.AddViewProp(p)
    try:
        got = unpainted(ren)
    finally:
        for p in props:
            ren.RemoveViewProp(p)
    reasons = ["triangle strips", "vertices", "colour from scalars", "horizontal", "border off", "polygon edges",
               "lit polygons", "field array", "labels before the bar", "rotated text", "text frame", "rotated or scaled image"]
    assert len(got) == len(reasons) and all(r in g for r, g in zip(reasons, got)), got
    ren.GradientBackgroundOn()
    ren.SetViewport(0.0, 0.0, 0.5, 1.0)
    try:
        got = unpainted(ren)
    finally:
        ren.GradientBackgroundOff()
        ren.SetViewport(0.0, 0.0, 1.0, 1.0)
    assert len(got) == 2 and "background" in got[0] and "viewport" in got[1], got


def _image_rows(px: np.ndarray, col: int) -> tuple[int, int]:
    rows = np.nonzero(px[:, col].astype(int).sum(axis=1) > 30)[0]
    return int(rows.min()), int(rows.max())


def test_edge_pixels_are_drawn_whole_by_both_painters(window, qtbot):
    """The coronal and sagittal views of the 20-slice CT, zoomed 4x so a 2 mm slice is about
    7 device pixels tall: the first and last slices are drawn whole (from half a slice above
    the first slice centre to half a slice below the last) in the Qt view and in VTK's own
    render (its mapper's default drew them half size, from centre to centre, half a row short at
    each end), as the geometry says."""
    from radreview.viewer._qt.scene_painter import world_to_device

    m = window.model
    for plane in ("coronal", "sagittal"):
        view = window.views[plane]
        cam = view.scene.renderer.GetActiveCamera()
        cam.SetParallelScale(cam.GetParallelScale() / 4)
        view.render_now()
        qtbot.wait(20)
        mapping = m.mappings[plane]
        rows, _cols = mapping.shape
        sr, sc = mapping.pixel_spacing
        h = view.GetRenderWindow().GetSize()[1]
        dev = world_to_device(view.scene.renderer, h)
        (_, y_top), (_, y_bottom) = (dev @ np.array([0.0, y, 1.0]) for y in ((rows - 0.5) * sr, -0.5 * sr))
        assert y_bottom - y_top > 60, plane  # the zoom worked: slices are several pixels tall
        qt = grab_pixels(view)
        gl = grab_window(view.GetRenderWindow())
        cross = (qt == CROSSHAIR_RGB).all(axis=2).sum(axis=0)
        col = next(c for c in range(int(0.45 * qt.shape[1]), qt.shape[1]) if cross[c] < 5)  # off the vertical line
        for name, px in (("Qt", qt), ("VTK", gl)):
            top, bottom = _image_rows(px, col)
            assert abs(top - y_top) <= 1.0 and abs(bottom + 1 - y_bottom) <= 1.0, (
                f"{plane} ({name}): image rows {top}-{bottom}, geometry {y_top:.1f}-{y_bottom:.1f}")


def _on_screen(view) -> np.ndarray:
    """What the X server shows of ``view`` now (the root window's pixels: no paint is asked for)."""
    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QGuiApplication, QImage

    g = view.mapToGlobal(QPoint(0, 0))
    img = QGuiApplication.primaryScreen().grabWindow(0, g.x(), g.y(), view.width(), view.height()).toImage()
    img = img.convertToFormat(QImage.Format_RGB888)
    w, h = img.width(), img.height()
    arr = np.frombuffer(img.constBits(), np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())
    return arr[:, : 3 * w].reshape(h, w, 3).copy()


def test_painters_run_on_repaints_qt_asks_for(window, qtbot):
    """A layout change repaints the views because Qt asks (resize, show), not through a
    render: the compare layout's "AI" title (a painter) is on screen after the switch and gone
    after the switch back, without any render call."""
    def title_pixels() -> int:
        px = _on_screen(window.views["axial"]).astype(int)
        h, w, _ = px.shape
        top = px[: int(0.09 * h), int(0.4 * w): int(0.6 * w)]
        return int((top.min(axis=2) > 225).sum())  # white text (the orientation letter is amber)

    assert title_pixels() < 5
    window.set_layout("ai|manual")
    qtbot.wait(400)
    assert title_pixels() > 15
    window.set_layout("2x2")
    qtbot.wait(400)
    assert title_pixels() < 5
