"""Draw a 2-D VTK scene (one :class:`~radreview.viewer.render.SliceScene` renderer) with QPainter.

Why: on a workstation without a GPU (Mesa llvmpipe, the CI machine, thin clients) a VTK
render of one 484x510 slice view costs 9-14 ms (about 2-3 ms of it the GLX swap, 2-5 ms the
textured image quad, the rest text and line actors), more than a 60 Hz frame once the step
itself is added. Qt's raster engine draws the same picture (the composed RGB slice scaled
with nearest-neighbour sampling, crosshair, rings, measurements, text, colour bar) in about
1.5-2.5 ms. The VTK scene stays the single description of what a view shows: its actors
hold the geometry, colours and texts, its camera the zoom and pan, so the CLI's offscreen
snapshot (``render.snapshot``) and the tools that add their own actors keep working; this
module only paints that state.

What it paints, in VTK's order (3-D props by their depth, nearest last; then 2-D props):

* ``vtkImageActor``: the RGB image given for it (``images``), or its ``vtkImageData``'s
  unsigned-char RGB scalars, over the world rectangle its pixels cover (pixel ``i`` centred on
  ``origin + i * spacing``, each pixel whole, as VTK draws it with the mapper's ``BorderOn``),
  nearest-neighbour, as ``InterpolateOff`` does in VTK;
* ``vtkActor`` with a poly-data mapper: lines and poly-lines, and polygons (filled when the
  property's representation is surface, outlined otherwise), in the property's colour,
  opacity and line width, through the actor's matrix;
* ``vtkTextActor``: multi-line text at its position coordinate (any coordinate system VTK
  computes: normalised viewport, world, display), with font size (pixels, as VTK's 72 dpi),
  bold, italic, colour, opacity, justification, shadow and background;
* ``vtkScalarBarActor`` (vertical): its lookup table as a bar, evenly spaced value labels in
  its label format and its title.

Other prop types are not drawn; :func:`unpainted` lists them, and a test keeps the list of
props the application adds empty.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetricsF, QImage, QPainter, QPen, QPolygonF
from vtkmodules.util import numpy_support

__all__ = ["ImageCache", "paint_renderer", "unpainted", "world_to_device"]

_FONT_CACHE: dict[tuple, tuple[QFont, QFontMetricsF]] = {}


def world_to_device(renderer, height_px: int) -> np.ndarray:
    """Affine map ``(2, 3)`` from scene world ``(x, y)`` (mm) to device pixels ``(X, Y)`` of the
    widget (origin top-left, Y down), for a renderer whose camera looks down the z axis in
    parallel projection (every ``SliceScene``). VTK display coordinates have their origin
    bottom-left, so ``Y = height_px - y_display``. Computed from three ``WorldToDisplay`` points."""
    out = []
    for x, y in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)):
        renderer.SetWorldPoint(x, y, 0.0, 1.0)
        renderer.WorldToDisplay()
        dx, dy, _ = renderer.GetDisplayPoint()
        out.append((dx, height_px - dy))
    (ax, ay), (bx, by), (cx, cy) = out
    return np.array([[bx - ax, cx - ax, ax], [by - ay, cy - ay, ay]])


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ m[:, :2].T + m[:, 2]


def _qcolor(rgb, opacity: float = 1.0) -> QColor:
    c = QColor.fromRgbF(*(min(max(float(v), 0.0), 1.0) for v in rgb[:3]))
    c.setAlphaF(min(max(float(opacity), 0.0), 1.0))
    return c


def _props(renderer) -> list:
    props = renderer.GetViewProps()
    props.InitTraversal()
    return [props.GetNextProp() for _ in range(props.GetNumberOfItems())]


_KINDS = ("vtkImageActor", "vtkOpenGLImageActor", "vtkOpenGLActor", "vtkActor", "vtkOpenGLTextActor",
          "vtkTextActor", "vtkScalarBarActor", "vtkOpenGLScalarBarActor")


def unpainted(renderer) -> list[str]:
    """What :func:`paint_renderer` would not draw as VTK does, one entry per visible prop:
    its class name, followed by the reason in brackets where the prop type is painted but
    this use of it is not (``"vtkOpenGLActor (triangle strips)"``). Not drawn: prop types
    outside the list in the module docstring; poly-data vertices and triangle strips; colour
    from scalars or a field array (a mapper with scalar visibility on and data to colour
    by); the points representation; polygon edges; lit filled polygons (painted flat);
    textures; a non-poly-data mapper; a horizontal scalar bar, or labels before the bar;
    rotated, framed or scaled text; a rotated, scaled or cropped (display extent) image; a
    gradient or textured background; a renderer viewport other than the whole view (the
    painter fills the view with each renderer it is given); an image actor whose own image is not RGB unsigned char (unless the view gives its
    picture, as every ``SliceView`` does for its slice), or whose mapper has its half-pixel
    border off (VTK then draws the first and last rows and columns half size; the painter,
    like every viewer, draws each pixel whole)."""
    out = []
    if renderer.GetGradientBackground() or renderer.GetTexturedBackground():
        out.append(f"{renderer.GetClassName()} (gradient or textured background)")
    vp = tuple(renderer.GetViewport())
    if vp != (0.0, 0.0, 1.0, 1.0):
        out.append(f"{renderer.GetClassName()} (viewport {vp}: the painter fills the whole view)")
    for p in _props(renderer):
        if not p.GetVisibility():
            continue
        name = p.GetClassName()
        if name not in _KINDS:
            out.append(name)
            continue
        why = _unpainted_use(p, name)
        if why:
            out.append(f"{name} ({why})")
    return out


def _unpainted_use(p, name: str) -> str:
    if name in ("vtkOpenGLActor", "vtkActor"):
        mapper = p.GetMapper()
        if mapper is None:
            return ""
        if not mapper.IsA("vtkPolyDataMapper"):
            return f"mapper {mapper.GetClassName()}"
        alg = mapper.GetInputAlgorithm()
        if alg is not None:
            alg.Update()
        poly = mapper.GetInput()
        if poly is None or poly.GetNumberOfPoints() == 0:
            return ""
        if poly.GetStrips() is not None and poly.GetStrips().GetNumberOfCells():
            return "triangle strips"
        if poly.GetVerts() is not None and poly.GetVerts().GetNumberOfCells():
            return "vertices"
        if mapper.GetScalarVisibility():
            pd, cd = poly.GetPointData(), poly.GetCellData()
            if pd.GetScalars() is not None or cd.GetScalars() is not None:
                return "colour from scalars"
            if mapper.GetScalarMode() in (3, 4, 5) and (pd.GetNumberOfArrays() or cd.GetNumberOfArrays()):
                return "colour from a field array"  # VTK_SCALAR_MODE_USE_{POINT,CELL,FIELD}_DATA
        prop = p.GetProperty()
        if prop is not None:
            if prop.GetRepresentation() == 0:
                return "points representation"
            has_polys = poly.GetPolys() is not None and poly.GetPolys().GetNumberOfCells() > 0
            if has_polys and prop.GetEdgeVisibility():
                return "polygon edges"
            if has_polys and prop.GetLighting() and prop.GetRepresentation() == 2:
                return "lit polygons"  # the painter fills them flat, in the property's colour
        if p.GetTexture() is not None:
            return "texture"
        return ""
    if "ScalarBar" in name:
        if p.GetOrientation() == 0:
            return "horizontal"
        if p.GetTextPosition() == 0:  # vtkScalarBarActor::PrecedeScalarBar
            return "labels before the bar"
        return ""
    if "TextActor" in name:
        tp = p.GetTextProperty()
        if p.GetOrientation() != 0 or (tp is not None and tp.GetOrientation() != 0):
            return "rotated text"
        if tp is not None and tp.GetFrame():
            return "text frame"
        if p.GetTextScaleMode() != 0:  # vtkTextActor::TEXT_SCALE_MODE_NONE
            return "scaled text"
        return ""
    if name.endswith("ImageActor"):
        img = p.GetMapper().GetInput() if p.GetMapper() is not None else p.GetInput()
        if img is None or img.GetNumberOfPoints() == 0:
            return ""
        if p.GetMapper() is not None and not p.GetMapper().GetBorder():
            return "border off: VTK draws the edge pixels half size"
        if p.GetOrientation() != (0.0, 0.0, 0.0) or p.GetScale() != (1.0, 1.0, 1.0) or \
                (p.GetUserMatrix() is not None and not p.GetUserMatrix().IsIdentity()):
            return "rotated or scaled image"
        ext, whole = tuple(p.GetDisplayExtent()), tuple(img.GetExtent())
        if ext[0] <= ext[1] and ext[:4] != whole[:4]:  # a display extent other than the whole slice
            return "display extent"
        sc = img.GetPointData().GetScalars()
        if sc is None or sc.GetNumberOfComponents() != 3 or sc.GetDataType() != 3:  # VTK_UNSIGNED_CHAR
            return "image not RGB unsigned char"
    return ""


def paint_renderer(painter: QPainter, renderer, size_px: tuple[int, int], images: dict | None = None) -> None:
    """Paint ``renderer``'s visible props onto ``painter`` (device pixels, origin top-left).

    Parameters
    ----------
    painter : QPainter
        Active on the widget or image; its transform maps device pixels (apply
        ``scale(1/ratio)`` first on a high-DPI widget).
    renderer : vtkRenderer
        Attached to a render window of ``size_px`` (it need not have an OpenGL context: only
        its camera and viewport are used).
    size_px : (width, height)
        Device pixels of the view.
    images : dict, optional
        ``id(image_actor) ->`` the picture to draw for that image actor instead of reading its
        ``vtkImageData``: an :class:`ImageCache` holding it (converted and resampled once) or a
        ``(rows, cols, 3)`` uint8 RGB array, row 0 on top (the scene keeps the composed slice).
    """
    w, h = size_px
    painter.fillRect(0, 0, w, h, _qcolor(renderer.GetBackground()))
    m = world_to_device(renderer, h) if renderer.IsActiveCameraCreated() else None
    three, two = [], []
    for i, p in enumerate(_props(renderer)):
        if not p.GetVisibility():
            continue
        name = p.GetClassName()
        if name.endswith("ImageActor"):
            if m is not None:  # no camera yet (nothing loaded): nothing placed in the world
                three.append((float(p.GetPosition()[2]), i, _paint_image, p))
        elif name in ("vtkOpenGLActor", "vtkActor"):
            if m is not None:
                got = _actor_geometry(p, m)
                if got is not None:
                    three.append((got[0], i, _paint_actor, (p, got)))
        elif name in _KINDS:
            two.append(p)
    three.sort(key=lambda t: (t[0], t[1]))  # VTK's depth test: the camera looks down -z
    for _, _, fn, arg in three:
        if fn is _paint_image:
            _paint_image(painter, arg, m, (images or {}).get(id(arg)), w, h)
        else:
            _paint_actor(painter, *arg)
    for p in two:
        if "Text" in p.GetClassName():
            _paint_text(painter, p, renderer, h)
        else:
            _paint_scalar_bar(painter, p, renderer, w, h)


class ImageCache:
    """The composed slice resampled onto the view's device pixels as OpenGL samples a texture
    with ``GL_NEAREST`` (the fragment centre ``X + 0.5`` picks source column
    ``floor((X + 0.5 - x0) / (x1 - x0) * cols)``, rows alike), so the painted picture is the
    one VTK renders, pixel for pixel, and is drawn unscaled (Qt's fastest path). The slice is
    converted to RGB32 once per shown slice (key: the array's identity and the scene's
    ``shown_version``, bumped on every new or edited slice); the resampled picture once per
    slice, zoom, pan and view size, so a repaint that only moves the crosshair reuses both."""

    def __init__(self) -> None:
        self._src_key = None
        self._src: QImage | None = None
        self._src_px: np.ndarray | None = None
        self._placed_key = None
        self._placed = None

    def set_source(self, rgb: np.ndarray, version: int) -> "ImageCache":
        key = (id(rgb), version, rgb.shape)
        if key != self._src_key:
            rgb = np.ascontiguousarray(rgb)
            rows, cols, _ = rgb.shape
            self._src = QImage(rgb.data, cols, rows, 3 * cols, QImage.Format_RGB888).convertToFormat(QImage.Format_RGB32)
            bpl = self._src.bytesPerLine() // 4
            self._src_px = np.frombuffer(self._src.constBits(), np.uint32, count=bpl * rows).reshape(rows, bpl)[:, :cols]
            self._src_key = key
            self._placed_key = None
        return self

    def placed(self, x0: float, y0: float, x1: float, y1: float, w: int, h: int):
        """``(QImage, X, Y)``: the source shown over the device rectangle ``x0..x1`` by
        ``y0..y1`` (top-left origin, continuous) clipped to a ``w`` x ``h`` view, or None."""
        key = (self._src_key, round(x0, 4), round(y0, 4), round(x1, 4), round(y1, 4), w, h)
        if key == self._placed_key:
            return self._placed
        src = self._src_px
        rows, cols = src.shape
        xs = np.arange(max(0, int(np.floor(x0))), min(w, int(np.ceil(x1)) + 1))
        ys = np.arange(max(0, int(np.floor(y0))), min(h, int(np.ceil(y1)) + 1))
        ci = np.floor((xs + 0.5 - x0) / (x1 - x0) * cols).astype(np.int64)
        ri = np.floor((ys + 0.5 - y0) / (y1 - y0) * rows).astype(np.int64)
        xs, ci = xs[(ci >= 0) & (ci < cols)], ci[(ci >= 0) & (ci < cols)]
        ys, ri = ys[(ri >= 0) & (ri < rows)], ri[(ri >= 0) & (ri < rows)]
        if len(xs) == 0 or len(ys) == 0:
            self._placed_key, self._placed = key, None
            return None
        out = np.ascontiguousarray(src[ri[:, None], ci[None, :]])
        img = QImage(out.data, out.shape[1], out.shape[0], 4 * out.shape[1], QImage.Format_RGB32)
        self._placed_key, self._placed = key, (img, int(xs[0]), int(ys[0]), out)  # out keeps the pixels alive
        return self._placed


def _paint_image(painter: QPainter, actor, m: np.ndarray, picture, w: int, h: int) -> None:
    img = actor.GetMapper().GetInput() if actor.GetMapper() is not None else actor.GetInput()
    if img is None:
        return
    cols, rows, _ = img.GetDimensions()
    if cols < 1 or rows < 1:
        return
    if picture is None:
        sc = img.GetPointData().GetScalars()
        if sc is None or sc.GetNumberOfComponents() != 3 or sc.GetDataType() != 3:  # VTK_UNSIGNED_CHAR
            return
        picture = numpy_support.vtk_to_numpy(sc).reshape(rows, cols, 3)[::-1]
    if isinstance(picture, np.ndarray):
        if picture.shape[:2] != (rows, cols):
            return
        picture = ImageCache().set_source(picture, 0)
    elif picture._src_px is None or picture._src_px.shape != (rows, cols):
        return
    ox, oy, _ = img.GetOrigin()
    sx, sy, _ = img.GetSpacing()
    px, py, _ = actor.GetPosition()
    ox, oy = ox + px, oy + py
    (x0, y0), (x1, y1) = _apply(m, np.array([[ox - 0.5 * sx, oy + (rows - 0.5) * sy], [ox + (cols - 0.5) * sx, oy - 0.5 * sy]]))
    if x1 <= x0 or y1 <= y0:  # the scene's camera never mirrors; nothing to show otherwise
        return
    got = picture.placed(x0, y0, x1, y1, w, h)
    if got is None:
        return
    opacity = float(actor.GetProperty().GetOpacity()) if actor.GetProperty() else 1.0
    if opacity < 1.0:
        painter.setOpacity(opacity)
    painter.drawImage(got[1], got[2], got[0])
    if opacity < 1.0:
        painter.setOpacity(1.0)


def _cells(ca) -> list[np.ndarray]:
    if ca is None or ca.GetNumberOfCells() == 0:
        return []
    off = numpy_support.vtk_to_numpy(ca.GetOffsetsArray())
    conn = numpy_support.vtk_to_numpy(ca.GetConnectivityArray())
    return [conn[off[i]:off[i + 1]] for i in range(len(off) - 1)]


def _actor_geometry(actor, m: np.ndarray):
    """``(z_max, device points (n, 2), poly-data)`` of a poly-data actor, or None when empty."""
    mapper = actor.GetMapper()
    if mapper is None:
        return None
    alg = mapper.GetInputAlgorithm()
    if alg is not None:
        alg.Update()
    poly = mapper.GetInput()
    if poly is None or poly.GetPoints() is None or poly.GetNumberOfPoints() == 0:
        return None
    pts = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(float)
    mat = actor.GetMatrix()
    if not mat.IsIdentity():
        a = np.array([[mat.GetElement(r, c) for c in range(4)] for r in range(4)])
        pts = (np.c_[pts, np.ones(len(pts))] @ a.T)[:, :3]
    return float(pts[:, 2].max()), _apply(m, pts[:, :2]), poly


def _paint_actor(painter: QPainter, actor, geometry) -> None:
    _, dev, poly = geometry
    prop = actor.GetProperty()
    color = _qcolor(prop.GetColor(), prop.GetOpacity())
    pen = QPen(color)
    pen.setWidthF(max(1.0, float(prop.GetLineWidth())))
    pen.setCapStyle(Qt.FlatCap)
    pen.setJoinStyle(Qt.MiterJoin)
    painter.setPen(pen)
    painter.setBrush(Qt.NoBrush)
    pts = [QPointF(x, y) for x, y in dev.tolist()]
    for ids in _cells(poly.GetLines()):
        if len(ids) >= 2:
            painter.drawPolyline(QPolygonF([pts[j] for j in ids.tolist()]))
    polys = _cells(poly.GetPolys())
    if polys:
        if prop.GetRepresentation() == 2:  # surface: filled
            painter.setPen(Qt.NoPen)
            painter.setBrush(QBrush(color))
        for ids in polys:
            if len(ids) >= 3:
                painter.drawPolygon(QPolygonF([pts[j] for j in ids.tolist()]))
        painter.setBrush(Qt.NoBrush)


def _font(tp) -> tuple[QFont, QFontMetricsF]:
    key = (tp.GetFontFamilyAsString(), tp.GetFontSize(), bool(tp.GetBold()), bool(tp.GetItalic()))
    got = _FONT_CACHE.get(key)
    if got is None:
        family = {"Arial": "Liberation Sans", "Courier": "Liberation Mono", "Times": "Liberation Serif"}.get(key[0], key[0])
        f = QFont(family)
        f.setStyleHint(QFont.SansSerif if key[0] != "Courier" else QFont.Monospace)
        f.setPixelSize(max(1, int(key[1])))
        f.setBold(key[2])
        f.setItalic(key[3])
        got = (f, QFontMetricsF(f))
        _FONT_CACHE[key] = got
    return got


_LAYOUT_CACHE: dict[tuple, tuple] = {}


def _layout(text: str, tp) -> tuple[QFont, float, float, list[tuple[float, float, str]]]:
    """``(font, block width, block height, [(x offset, baseline offset, line)])`` of ``text``
    laid out as VTK does: lines 1.1 font heights apart (``vtkTextProperty::LineSpacing``),
    each justified inside the block. Cached: the corner texts repeat on every paint."""
    key = (text, tp.GetFontFamilyAsString(), tp.GetFontSize(), bool(tp.GetBold()), bool(tp.GetItalic()),
           tp.GetJustification(), float(tp.GetLineSpacing()))
    got = _LAYOUT_CACHE.get(key)
    if got is None:
        font, fm = _font(tp)
        lines = text.split("\n")
        widths = [fm.horizontalAdvance(s) for s in lines]
        line_h = fm.height() * key[6]
        block_w, block_h = max(widths), line_h * (len(lines) - 1) + fm.height()
        hj = key[5]
        placed = [(((block_w - sw) / 2 if hj == 1 else (block_w - sw) if hj == 2 else 0.0), i * line_h + fm.ascent(), s)
                  for i, (s, sw) in enumerate(zip(lines, widths))]
        got = (font, block_w, block_h, placed)
        if len(_LAYOUT_CACHE) > 4096:
            _LAYOUT_CACHE.clear()
        _LAYOUT_CACHE[key] = got
    return got


def _text_block(painter: QPainter, text: str, tp, x: float, y_up: float, h: int) -> None:
    """Draw ``text`` as VTK places it: anchor ``(x, y_up)`` display pixels (origin bottom-left),
    justified by ``tp`` (horizontal: left / centred / right of the anchor; vertical: the
    block's bottom / centre / top at it), with shadow and background as ``tp`` asks."""
    if not text:
        return
    font, block_w, block_h, placed = _layout(text, tp)
    hj, vj = tp.GetJustification(), tp.GetVerticalJustification()
    left = x - (block_w / 2 if hj == 1 else block_w if hj == 2 else 0.0)
    top = h - (y_up + (block_h / 2 if vj == 1 else 0.0 if vj == 2 else block_h))
    opacity = float(tp.GetOpacity())
    if tp.GetBackgroundOpacity() > 0:
        painter.fillRect(QRectF(left - 1, top - 1, block_w + 2, block_h + 2), _qcolor(tp.GetBackgroundColor(), tp.GetBackgroundOpacity()))
    painter.setFont(font)
    color = tp.GetColor()
    if tp.GetShadow():
        painter.setPen(_qcolor((0, 0, 0) if sum(color) / 3 > 0.5 else (1, 1, 1), opacity))
        for dx, dy, s in placed:
            painter.drawText(QPointF(left + dx + 1, top + dy + 1), s)
    painter.setPen(_qcolor(color, opacity))
    for dx, dy, s in placed:
        painter.drawText(QPointF(left + dx, top + dy), s)


def _paint_text(painter: QPainter, actor, renderer, h: int) -> None:
    text = actor.GetInput()
    if not text:
        return
    x, y = actor.GetPositionCoordinate().GetComputedDisplayValue(renderer)
    _text_block(painter, text, actor.GetTextProperty(), float(x), float(y), h)


def _paint_scalar_bar(painter: QPainter, bar, renderer, w: int, h: int) -> None:
    lut = bar.GetLookupTable()
    if lut is None:
        return
    x0, y0 = bar.GetPositionCoordinate().GetComputedDisplayValue(renderer)
    x1, y1 = bar.GetPosition2Coordinate().GetComputedDisplayValue(renderer)
    if x1 <= x0 or y1 <= y0:
        return
    lo, hi = lut.GetRange()
    strip = _lut_strip(lut)
    ltp, ttp = bar.GetLabelTextProperty(), bar.GetTitleTextProperty()
    _, tfm = _font(ttp)
    title_h = tfm.height() + 2 if bar.GetTitle() else 0.0
    bar_w = max(4.0, (x1 - x0) * float(bar.GetBarRatio()))
    top, bottom = h - y1 + title_h, h - y0
    painter.drawImage(QRectF(x0, top, bar_w, bottom - top), strip)
    k = max(bar.GetNumberOfLabels(), 0)
    fmt = bar.GetLabelFormat() or "%g"
    for i in range(k):
        frac = i / (k - 1) if k > 1 else 0.5
        v = lo + (hi - lo) * frac
        try:
            s = fmt % v
        except (TypeError, ValueError):
            s = f"{v:g}"
        yy = bottom - frac * (bottom - top)
        _, lfm = _font(ltp)
        _text_at(painter, s, ltp, x0 + bar_w + 3, yy + (lfm.ascent() - lfm.descent()) / 2)  # centred on its value
    if bar.GetTitle():
        tw = tfm.horizontalAdvance(bar.GetTitle())
        tx = min(x0 + bar_w / 2 - tw / 2, w - tw - 2)
        _text_at(painter, bar.GetTitle(), ttp, tx, h - y1 + tfm.ascent())


_STRIPS: dict[int, tuple[int, QImage]] = {}


def _lut_strip(lut) -> QImage:
    """The lookup table as a 1-pixel-wide image, highest value on top (cached per table and
    its modification time)."""
    got = _STRIPS.get(id(lut))
    if got is not None and got[0] == lut.GetMTime():
        return got[1]
    lo, hi = lut.GetRange()
    if hasattr(lut, "GetNumberOfTableValues"):
        cols = np.array([lut.GetTableValue(i)[:3] for i in range(lut.GetNumberOfTableValues())])
    else:
        cols = np.array([lut.GetColor(lo + (hi - lo) * i / 255) for i in range(256)])
    strip = np.ascontiguousarray((np.clip(cols[::-1], 0, 1) * 255).astype(np.uint8).reshape(len(cols), 1, 3))
    img = QImage(strip.data, 1, len(cols), 3, QImage.Format_RGB888).convertToFormat(QImage.Format_RGB32)
    if len(_STRIPS) > 64:
        _STRIPS.clear()
    _STRIPS[id(lut)] = (lut.GetMTime(), img)
    return img


def _text_at(painter: QPainter, s: str, tp, x: float, baseline: float) -> None:
    """One line of ``s`` in ``tp``'s font and colour, its baseline at device ``(x, baseline)``."""
    font, _ = _font(tp)
    painter.setFont(font)
    painter.setPen(_qcolor(tp.GetColor(), tp.GetOpacity()))
    painter.drawText(QPointF(x, baseline), s)
