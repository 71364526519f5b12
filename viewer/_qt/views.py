"""Qt hosts for the VTK scenes: linked MPR slice views and the 3D view.

Mouse/keyboard (also listed in the F1 sheet):

* left click/drag: move the crosshair (all views follow to that LPS point)
* wheel, Up/Down arrows: previous/next slice; PageUp/PageDown: 10 slices
* right drag: window (horizontal) / level (vertical)
* middle drag: pan; Ctrl+wheel: zoom; R: reset zoom/pan
* with an interaction tool set (:meth:`SliceView.set_tool`: ruler, ROI, brush...): the left
  button drives the tool instead of the crosshair; Esc clears the tool

Interaction-tool hook
---------------------
A tool is any object with ``press``, ``move`` and ``release`` methods, each called as
``tool.press(view, lps_xyz, index_zyx, event)``: ``view`` is the :class:`SliceView`,
``lps_xyz`` the LPS point (mm, ``np.ndarray`` of shape ``(3,)``) under the mouse on the shown
slice, ``index_zyx`` the continuous voxel index ``(z, y, x)`` (float ``np.ndarray`` ``(3,)``;
``np.rint(...).astype(int)`` for the voxel) and ``event`` the ``QMouseEvent``. ``move`` is
called while the left button is held. Optional methods: ``hover(view, lps, index_zyx, event)``
(mouse moves without a button), ``draw(view)`` (called at the start of every paint of the
view, whoever asked for it, to update the tool's own VTK actors in ``view.scene.renderer``:
poly-data lines or polygons and text actors, which :mod:`.scene_painter` paints; it must not
render or repaint anything itself) and ``deactivate(view)`` (the tool
was replaced or cleared). A tool calls ``view.request_redraw()`` after changing its actors.

Frame time while scrolling
--------------------------
The slice views are plain Qt widgets painted with QPainter from their VTK scene
(:mod:`.scene_painter`; the scene's renderer lives in an offscreen ``vtkRenderWindow`` that
gives it a size and a camera and is never rendered on screen). Under Mesa llvmpipe, with no
GPU, a VTK render of one 484x510 view cost 9-14 ms; the painted view costs 1.5-2.5 ms, flush
to the X server included. The 3D view stays an OpenGL ``QVTKRenderWindowInteractor``.
A linked view whose own slice did not change and whose renders average over
``SLOW_RENDER_MS`` (a slow paint, or the 3D view) re-renders when the scroll pauses
(``SETTLE_MS``) and at least every ``MAX_WAIT_MS`` while it goes on; its scene is updated at
once, so a pixel grab or any other render shows the new position. A jump from a panel
(``cursor_source`` None) or a slice change in that view renders immediately.
``benchmarks/bench_gui.py`` reports both.

Once a slice step is on screen, the view composes the next ``PREFETCH_AHEAD`` slices in the
scroll direction, one per idle event-loop turn, and the scene keeps them with the slices shown
last (``SliceScene.prefetch``, ``KEEP_SLICES``), so a step onto a composed slice only uploads
and renders it. Kept slices are used only under the display state they were composed with
(``ViewerModel.display_key``); every other redraw drops them.
"""

from __future__ import annotations

import time

import numpy as np
import vtkmodules.qt

vtkmodules.qt.PyQtImpl = "PySide6"
import vtk  # noqa: E402
from PySide6.QtCore import Qt, QTimer, Signal  # noqa: E402
from PySide6.QtGui import QImage, QPainter  # noqa: E402
from PySide6.QtWidgets import QWidget  # noqa: E402
from vtkmodules.qt.QVTKRenderWindowInteractor import QVTKRenderWindowInteractor  # noqa: E402

from ..model import ViewerModel  # noqa: E402
from ..render import SliceScene, VolumeScene, grab_window  # noqa: E402
from .scene_painter import ImageCache, paint_renderer  # noqa: E402

__all__ = ["SliceView", "VolumeView", "PREFETCH_AHEAD", "SLOW_RENDER_MS", "SETTLE_MS", "MAX_WAIT_MS"]

PREFETCH_AHEAD = 2  # slices composed ahead of a scroll, in its direction, when the event loop is idle
SLOW_RENDER_MS = 5.0  # a view rendering slower than this defers linked-crosshair renders
SETTLE_MS = 120  # ... until the scroll in the other view pauses this long
MAX_WAIT_MS = 500  # ... and at least this often while it goes on
WARM_UP_DELAY_MS = 250  # the 3D view's volume mapper set-up runs this long after it is first shown


class _Deferred:
    """Render scheduling shared by the view hosts: a render posted to the event loop
    (:meth:`render_later`, coalesced) and one deferred until a scroll elsewhere pauses
    (:meth:`_render_settled`). Hosts define ``render_now``."""

    _settle: QTimer | None = None
    _settle_since: float | None = None
    _render_posted = False

    def render_now(self) -> None:  # pragma: no cover - defined by the hosts
        raise NotImplementedError

    def _render_settled(self) -> None:
        """Render once a scroll in another view pauses for ``SETTLE_MS``, and at least every
        ``MAX_WAIT_MS`` while it goes on, so the scrolled view keeps its frame time (a linked
        view's crosshair; the 3D cursor). The scene is already updated: a pixel grab
        (``grab_pixels``) or any other render shows the new position at once."""
        now = time.perf_counter()
        if self._settle_since is None:
            self._settle_since = now
        if self._settle is None:
            self._settle = QTimer(self)
            self._settle.setSingleShot(True)
            self._settle.timeout.connect(self._settled)
        if (now - self._settle_since) * 1000.0 >= MAX_WAIT_MS:
            self._settled()
            return
        self._settle.start(SETTLE_MS)

    def _settled(self) -> None:
        self._settle_since = None
        if self._settle is not None:
            self._settle.stop()
        self.render_later()

    def render_later(self) -> None:
        """Render once when control returns to the event loop (coalesces the several model
        signals of one change, e.g. a new volume emits volume, window and cursor changes)."""
        if not self._render_posted:
            self._render_posted = True
            QTimer.singleShot(0, self._posted_render)

    def _posted_render(self) -> None:
        self._render_posted = False
        try:
            self.flush()
            self.render_now()
        except RuntimeError:  # the widget was deleted meanwhile
            pass

    def flush(self) -> None:
        """Apply deferred scene updates now (before grabbing pixels)."""

    def _after_resize(self) -> None:
        pass

    def _display_xy(self, pos) -> tuple[float, float]:
        """VTK display coordinates (device pixels, origin bottom-left) of a widget position:
        the centre of the logical pixel, so on a high-DPI screen (ratio 2: a logical pixel is
        2 x 2 device pixels) a click lands between its device pixels, not on the first one."""
        ratio = self.devicePixelRatioF()
        return (pos.x() + 0.5) * ratio - 0.5, (self.height() - pos.y() - 0.5) * ratio - 0.5


class _VTKHost(_Deferred, QVTKRenderWindowInteractor):
    """QVTK widget (OpenGL) whose Qt events we handle ourselves (no VTK interactor style): the 3D view."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumSize(160, 160)
        self.setFocusPolicy(Qt.StrongFocus)
        # no multisampling: 1-px crosshair lines stay crisp (and exactly coloured for tests)
        self.GetRenderWindow().SetMultiSamples(0)
        self._painted = False
        self._expose_timer = QTimer(self)
        self._expose_timer.setSingleShot(True)
        self._expose_timer.setInterval(self.EXPOSE_COALESCE_MS)
        self._expose_timer.timeout.connect(self.render_now)

    #: Qt's expose paints within this many ms of each other cost one render (a layout pass
    #: that resizes the docks, e.g. when the AI tables fill, exposes the GL window several
    #: times in a row; each was a full volume render, 20-45 ms on llvmpipe)
    EXPOSE_COALESCE_MS = 30

    def render_now(self) -> None:
        if self.isVisible():
            self._expose_timer.stop()
            self.GetRenderWindow().Render()

    def paintEvent(self, ev):  # noqa: N802 - Qt naming
        if self._painted:
            self._expose_timer.start()
            return
        self._painted = True  # the first paint: at once
        self.GetRenderWindow().Render()

    def resizeEvent(self, ev):  # noqa: N802
        super().resizeEvent(ev)
        self._after_resize()


class _RasterHost(_Deferred, QWidget):
    """A plain (raster) Qt widget that paints the renderers of an offscreen ``vtkRenderWindow``
    with QPainter (:mod:`.scene_painter`): the 2-D slice views. The render window is never
    rendered on screen: it gives the scene its size and camera (so display/world mapping,
    zoom and pan are VTK's) and can still be rendered offscreen by VTK for a comparison."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumSize(160, 160)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setAttribute(Qt.WA_OpaquePaintEvent)  # the painter fills every pixel
        self._window = vtk.vtkRenderWindow()
        self._window.SetOffScreenRendering(1)
        self._window.SetMultiSamples(0)
        self._size_window()

    def GetRenderWindow(self):  # noqa: N802 - the QVTK name, kept for the scene and tools
        """The offscreen ``vtkRenderWindow`` holding this view's renderer (size in device pixels)."""
        return self._window

    def _size_window(self) -> None:
        r = self.devicePixelRatioF()
        self._window.SetSize(max(1, round(self.width() * r)), max(1, round(self.height() * r)))

    def render_now(self) -> None:
        """Paint now (synchronously, as a VTK ``Render()`` does) when the view is visible."""
        if self.isVisible():
            self.repaint()

    def _images(self) -> dict:
        return {}

    def paintEvent(self, ev):  # noqa: N802 - Qt naming
        p = QPainter(self)
        try:
            r = self.devicePixelRatioF()
            if r != 1.0:
                p.scale(1.0 / r, 1.0 / r)
            size = tuple(self._window.GetSize())
            rens = self._window.GetRenderers()
            rens.InitTraversal()
            for _ in range(rens.GetNumberOfItems()):
                paint_renderer(p, rens.GetNextItem(), size, self._images())
        finally:
            p.end()

    def resizeEvent(self, ev):  # noqa: N802
        super().resizeEvent(ev)
        self._size_window()
        self._after_resize()


class SliceView(_RasterHost):
    """One linked MPR plane. Emits ``readout(str)`` with HU/LPS under the mouse.

    ``tool_changed(object)`` is emitted with the new tool (or ``None``) by :meth:`set_tool`.
    """

    readout = Signal(str)
    tool_changed = Signal(object)

    def __init__(self, model: ViewerModel, plane: str, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.plane = plane
        self.scene = SliceScene(model, plane)
        self._image_cache = ImageCache()
        self.GetRenderWindow().AddRenderer(self.scene.renderer)
        self.setMouseTracking(True)
        self._drag = None
        self._last_index = None
        self.tool = None
        self._tool_drag = False
        self._painters: list = []
        self._render_ms = 0.0  # running mean of this view's render time (ms)
        self._step = 1  # direction of the last slice step (+1 / -1)
        self._prefetch_wanted = False
        self.rendered_at = 0.0  # perf_counter() when this view's last render ended
        self._prefetch_timer = QTimer(self)
        self._prefetch_timer.setSingleShot(True)
        self._prefetch_timer.setInterval(0)
        self._prefetch_timer.timeout.connect(self._prefetch)
        model.volume_changed.connect(self._on_volume)
        model.cursor_changed.connect(self._on_cursor)
        model.window_changed.connect(self._on_window)
        model.overlays_changed.connect(self.refresh)
        model.overlay_changed.connect(self._on_overlay_changed)
        if model.volume is not None:
            self._on_volume(model.volume)

    # ---------------------------------------------------------------- model -> view
    def _on_overlay_changed(self, name: str) -> None:
        """One evented overlay's look changed (``ViewerModel.overlay_changed``): re-compose this
        plane only if the overlay may draw on its shown slice (``shows_on``)."""
        m = self.model
        ov = m.overlays.get(name)
        if ov is None or m.volume is None:
            return
        shows_on = getattr(ov, "shows_on", None)
        if shows_on is not None and not shows_on(m.mappings[self.plane], m.slice_index(self.plane)):
            return
        self.refresh()

    def _on_volume(self, _vol) -> None:
        self.scene._shape = None
        if not self.isVisible():  # hidden (other layout): set up when shown, at its size (a
            self._stale = True  # hidden view's camera reset would use a wrong aspect, and the
            return  # compare layout's views share their camera with the main ones)
        self.scene.update_image()
        self._last_index = self.model.slice_index(self.plane)
        self.render_later()

    def _on_cursor(self, _lps) -> None:
        if self.model.volume is None:
            return
        if not self.isVisible():  # hidden (other layout): redrawn when shown
            self._stale = True
            return
        k = self.model.slice_index(self.plane)
        if k != self._last_index:
            if self._last_index is not None:
                self._step = 1 if k > self._last_index else -1
            self._last_index = k
            self.scene.update_image(slice_step=True)
            self._prefetch_wanted = True
        else:
            self.scene.update_cursor()
            self.scene.update_text()
            src = self.model.cursor_source
            if src is not None and src != self.plane and self._render_ms > SLOW_RENDER_MS:
                self._render_settled()  # only this view's crosshair moved, by a scroll elsewhere
                return
        self.render_later()

    def _on_window(self, *_):
        if self.model.volume is not None:
            if not self.isVisible():
                self._stale = True
                return
            self.scene.update_image()
            self.render_later()

    def showEvent(self, ev):  # noqa: N802
        super().showEvent(ev)
        if getattr(self, "_stale", False) and self.model.volume is not None:
            self._stale = False
            self._last_index = self.model.slice_index(self.plane)
            self.scene.update_image()
            self.render_now()

    def _after_resize(self) -> None:
        if self.model.volume is not None:
            self.scene.reset_camera()

    def refresh(self) -> None:
        """Re-draw the slice (after an overlay changed); deferred to the event loop, so several
        overlay changes in one turn cost one re-slice and one render."""
        if self.model.volume is not None:
            if not self.isVisible():
                self._stale = True
                return
            self._dirty = True
            self.render_later()

    def flush(self) -> None:
        if getattr(self, "_dirty", False) and self.model.volume is not None:
            self._dirty = False
            self.scene.update_image()

    # ---------------------------------------------------------------- interaction tools
    def set_tool(self, tool) -> None:
        """Route left-button press/move/release to ``tool`` (see the module docstring); ``None`` clears it."""
        if tool is self.tool:
            return
        old, self.tool = self.tool, tool
        self._tool_drag = False
        if old is not None and hasattr(old, "deactivate"):
            old.deactivate(self)
        self.setCursor(Qt.CrossCursor if tool is not None else Qt.ArrowCursor)
        self.tool_changed.emit(tool)
        self.request_redraw()

    def request_redraw(self) -> None:
        """Re-render the view (the tool's actors included), without re-slicing the image."""
        self.render_now()

    def _images(self) -> dict:
        rgb = self.scene.shown_rgb
        if rgb is None:
            return {}
        return {id(self.scene.actor): self._image_cache.set_source(rgb, self.scene.shown_version)}

    def add_painter(self, painter) -> None:
        """Call ``painter.draw(view)`` before every paint of this view, whoever asked for it (a
        render, a grab, or Qt: an expose, resize or layout change), so persistent annotations
        (measurements, titles, legends) are never stale on screen. ``draw`` only updates this
        view's scene. A painter may also have ``after_render(view)``, called after each
        explicit render (:meth:`render_now`; e.g. render the partner of a linked pair, which
        a paint event must not do)."""
        if painter not in self._painters:
            self._painters.append(painter)

    def paintEvent(self, ev):  # noqa: N802 - Qt naming
        for p in self._painters:
            p.draw(self)
        if self.tool is not None and hasattr(self.tool, "draw"):
            self.tool.draw(self)
        super().paintEvent(ev)

    def render_now(self) -> None:
        t = time.perf_counter()
        super().render_now()
        self.rendered_at = time.perf_counter()
        ms = (self.rendered_at - t) * 1000.0
        self._render_ms = ms if self._render_ms == 0.0 else 0.7 * self._render_ms + 0.3 * ms
        for p in self._painters:
            after = getattr(p, "after_render", None)
            if after is not None:
                after(self)
        if self._prefetch_wanted:
            self._prefetch_wanted = False
            self._prefetch_timer.start()

    def _prefetch(self) -> None:
        """After a slice step is on screen: compose the next slice in the scroll direction
        (``PREFETCH_AHEAD`` at most, one per event-loop turn) while the user has not scrolled
        on, so the next step only uploads and renders (``SliceScene.prefetch``)."""
        if self.model.volume is None or not self.isVisible():
            return
        k = self.model.slice_index(self.plane)
        for n in range(1, PREFETCH_AHEAD + 1):
            if self.scene.prefetch(k + n * self._step):
                if n < PREFETCH_AHEAD:
                    self._prefetch_timer.start()
                return

    def event_lps_index(self, pos) -> tuple[np.ndarray, np.ndarray]:
        """``(lps_xyz, index_zyx)`` under a widget position: LPS mm and continuous voxel index (z, y, x)."""
        row, col = self.screen_point(pos)
        m = self.model.mappings[self.plane]
        ijk = m.screen_to_index(self.model.slice_index(self.plane), row, col)
        return self.model.volume.index_to_lps(ijk), np.asarray(ijk[::-1], dtype=float)

    def lps_to_world(self, lps) -> tuple[float, float, float]:
        """Scene world point ``(x, y, dist)`` of an LPS point (mm): ``x, y`` in the slice plane's
        scene coordinates (where actors are drawn), ``dist`` the distance in slices from the shown one."""
        m = self.model.mappings[self.plane]
        k, r, c = m.index_to_screen(self.model.lps_to_index(lps))
        x, y = self.scene.screen_to_world(r, c)
        return x, y, k - self.model.slice_index(self.plane)

    # ---------------------------------------------------------------- events
    def screen_point(self, pos) -> tuple[float, float]:
        """Image ``(row, col)`` under a widget position (QPoint, logical pixels)."""
        return self.scene.display_to_screen(*self._display_xy(pos))

    def widget_pos_of(self, row: float, col: float) -> tuple[int, int]:
        """Widget position (logical pixels, origin top-left) of image ``(row, col)``."""
        x, y = self.scene.screen_to_display(row, col)
        ratio = self.devicePixelRatioF()  # the inverse of _display_xy
        return int(round((x + 0.5) / ratio - 0.5)), int(round(self.height() - 0.5 - (y + 0.5) / ratio))

    def _set_cursor_at(self, pos) -> None:
        row, col = self.screen_point(pos)
        self.model.set_cursor(self.model.screen_to_lps(self.plane, row, col), source=self.plane)

    def mousePressEvent(self, ev):  # noqa: N802
        if self.model.volume is None:
            return
        self.setFocus()
        b = ev.button()
        if b == Qt.LeftButton and self.tool is not None:
            self._tool_drag = True
            self.tool.press(self, *self.event_lps_index(ev.position().toPoint()), ev)
            return
        self._drag = (b, ev.position().toPoint(), self.model.window)
        if b == Qt.LeftButton:
            self._set_cursor_at(ev.position().toPoint())

    def mouseMoveEvent(self, ev):  # noqa: N802
        if self.model.volume is None:
            return
        pos = ev.position().toPoint()
        row, col = self.screen_point(pos)
        lps = self.model.screen_to_lps(self.plane, row, col)
        self.readout.emit(self.model.readout(lps))
        if self.tool is not None and not self._drag:
            if self._tool_drag:
                self.tool.move(self, *self.event_lps_index(pos), ev)
            elif hasattr(self.tool, "hover"):
                self.tool.hover(self, *self.event_lps_index(pos), ev)
            return
        if not self._drag:
            return
        button, start, (c0, w0) = self._drag
        if button == Qt.LeftButton:
            self._set_cursor_at(pos)
        elif button == Qt.RightButton:
            dx, dy = pos.x() - start.x(), pos.y() - start.y()
            k = max(w0, 20.0) / 250.0
            self.model.set_window(c0 - dy * k, max(1.0, w0 + dx * k), preset="")
        elif button == Qt.MiddleButton:
            prev = self._drag[1]
            ratio = self.devicePixelRatioF()  # the scene pans by device pixels
            self.scene.pan((pos.x() - prev.x()) * ratio, -(pos.y() - prev.y()) * ratio)
            self._drag = (button, pos, self._drag[2])
            self.render_now()

    def mouseReleaseEvent(self, ev):  # noqa: N802
        if self._tool_drag and ev.button() == Qt.LeftButton and self.tool is not None:
            self._tool_drag = False
            if self.model.volume is not None:
                self.tool.release(self, *self.event_lps_index(ev.position().toPoint()), ev)
            return
        self._drag = None

    def wheelEvent(self, ev):  # noqa: N802
        if self.model.volume is None:
            return
        steps = 1 if ev.angleDelta().y() > 0 else -1
        if ev.modifiers() & Qt.ControlModifier:
            self.scene.zoom(1.1 if steps > 0 else 1 / 1.1)
            self.render_now()
        else:
            self.model.scroll(self.plane, steps)

    def keyPressEvent(self, ev):  # noqa: N802
        if self.model.volume is None:
            return
        key = ev.key()
        steps = {Qt.Key_Up: 1, Qt.Key_Down: -1, Qt.Key_PageUp: 10, Qt.Key_PageDown: -10}.get(key)
        if steps:
            self.model.scroll(self.plane, steps)
        elif key == Qt.Key_R:
            self.scene.reset_camera()
            self.render_now()
        elif key == Qt.Key_Escape and self.tool is not None:
            self.set_tool(None)
        else:
            ev.ignore()

    def keyReleaseEvent(self, ev):  # noqa: N802
        ev.ignore()

    def enterEvent(self, ev):  # noqa: N802
        pass

    def leaveEvent(self, ev):  # noqa: N802
        pass


class VolumeView(_VTKHost):
    """3D volume rendering; left-drag rotates (VTK trackball camera style).

    Never freezes the window: the scene is built lazily, once the view is shown and the full
    volume is loaded; the strided copy for the 3D view is made on a worker thread; under a
    software OpenGL (Mesa llvmpipe) the CPU ray caster with automatic sample distances is used
    (much faster there than GPU ray casting emulated on the CPU). A crosshair move in the 2-D
    views does not re-render the 3D view unless its cursor is shown (:meth:`set_cursor_shown`),
    and then a scroll re-renders it when it pauses (at least every ``MAX_WAIT_MS``) and a jump
    within 80 ms. ``built`` says whether the scene
    holds the current volume; ``scene_built`` is emitted when it does.
    """

    scene_built = Signal()

    def __init__(self, model: ViewerModel, parent=None) -> None:
        super().__init__(parent)
        import vtk

        self.model = model
        self.scene = VolumeScene(model, max_dim=128)  # an overview: 128 voxels per axis at most
        self.GetRenderWindow().AddRenderer(self.scene.renderer)
        self.GetRenderWindow().GetInteractor().SetInteractorStyle(vtk.vtkInteractorStyleTrackballCamera())
        self.Initialize()
        self.built = False
        self.cursor_shown = False
        self._pending = None  # (volume, strided array, spacing) waiting to be shown
        self._worker = None
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(80)
        self._render_timer.timeout.connect(self.render_now)
        self._build_timer = QTimer(self)
        self._build_timer.setSingleShot(True)
        self._build_timer.setInterval(50)
        self._build_timer.timeout.connect(self._build)
        self.scene.cursor_actor.SetVisibility(False)
        model.volume_changed.connect(self._on_volume)
        model.cursor_changed.connect(self._on_cursor)
        if model.volume is not None:
            self._on_volume(model.volume)

    def _on_volume(self, vol) -> None:
        self.built = False
        self._pending = None
        self.scene.clear()
        if vol.size[2] < 2:  # a preview slice: nothing to render in 3D yet
            return
        from .workers import stride_worker

        if self._worker is not None:
            self._worker.quit()
        w = stride_worker(vol, self.scene.max_dim)
        self._stride_volume = vol
        w.returned.connect(self._strided)
        self._worker = w
        w.start()

    def _strided(self, res) -> None:
        self._worker = None
        vol = self._stride_volume
        if vol is not self.model.volume:
            return
        self._pending = (vol, *res)
        if self.isVisible():
            self._build_timer.start()

    def showEvent(self, ev):  # noqa: N802
        super().showEvent(ev)
        if self._pending is not None:
            self._build_timer.start()
        elif not self._warmed:  # after the window's first paints, not chained to them
            QTimer.singleShot(WARM_UP_DELAY_MS, self._warm_up)

    _warmed = False
    warm_up_s = 0.0

    def _warm_up(self) -> None:
        """Once, while no study is shown yet: pay the volume mapper's one-off set-up with a
        stand-in volume (:meth:`VolumeScene.warm_up`), so opening a study does not."""
        if self._warmed or self.built or self._pending is not None or not self.isVisible():
            return
        self._warmed = True
        self.scene.use_cpu_raycast(_software_gl(self.GetRenderWindow()))
        self.warm_up_s = self.scene.warm_up(self.GetRenderWindow())

    def _build(self) -> None:
        if self._pending is None or not self.isVisible():
            return
        vol, arr, spacing = self._pending
        self._pending = None
        if vol is not self.model.volume:
            return
        self.scene.use_cpu_raycast(_software_gl(self.GetRenderWindow()))
        self.scene.set_volume(vol, strided=(arr, spacing))
        self.built = True
        self.render_now()
        self.scene_built.emit()

    def set_cursor_shown(self, on: bool) -> None:
        """Show the crosshair point in 3D (then crosshair moves re-render it, coalesced)."""
        self.cursor_shown = bool(on)
        self.scene.cursor_actor.SetVisibility(self.cursor_shown)
        self.scene.update_cursor()
        self._render_timer.start()

    def _on_cursor(self, _lps) -> None:
        """Move the 3D cursor. A jump (from a panel: no ``cursor_source``) renders within 80 ms;
        during a scroll or drag in a 2-D view the 3D view renders when it pauses for
        ``SETTLE_MS`` and at least every ``MAX_WAIT_MS`` (the policy of the linked 2-D views:
        a 3D render costs 30 ms on llvmpipe, more than a slice step's whole frame)."""
        if not self.cursor_shown or not self.built:
            return
        self.scene.update_cursor()
        if self.model.cursor_source is None:
            if not self._render_timer.isActive():
                self._render_timer.start()
            return
        self._render_settled()

    def set_preset(self, name: str) -> None:
        self.scene.apply_preset(name)
        self.render_now()


def _software_gl(win) -> bool:
    """Whether the render window's OpenGL is a software rasteriser (Mesa llvmpipe/softpipe/swrast)."""
    try:
        caps = win.ReportCapabilities() or ""
    except Exception:  # noqa: BLE001 - no context yet: assume hardware
        return False
    low = caps.lower()
    return any(k in low for k in ("llvmpipe", "softpipe", "swrast", "software rasterizer"))


def grab_pixels(view) -> np.ndarray:
    """RGB pixels ``(h, w, 3)`` uint8 of a view as drawn (top row first, device pixels),
    pending updates applied: a slice view's QPainter picture (``QWidget.grab``), the 3D view's
    OpenGL render window."""
    view.flush()
    if isinstance(view, _RasterHost):  # the grab runs paintEvent (painters and tool included)
        img = view.grab().toImage().convertToFormat(QImage.Format_RGB888)
        w, h = img.width(), img.height()
        arr = np.frombuffer(img.constBits(), np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())
        return arr[:, : 3 * w].reshape(h, w, 3).copy()
    return grab_window(view.GetRenderWindow())
