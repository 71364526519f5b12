"""Qt hosts for the VTK scenes: linked MPR slice views and the 3D view.

Mouse/keyboard (also listed in the F1 sheet):

* left click/drag: move the crosshair (all views follow to that LPS point)
* wheel, Up/Down arrows: previous/next slice; PageUp/PageDown: 10 slices
* right drag: window (horizontal) / level (vertical)
* middle drag: pan; Ctrl+wheel: zoom; R: reset zoom/pan
"""

from __future__ import annotations

import numpy as np
import vtkmodules.qt

vtkmodules.qt.PyQtImpl = "PySide6"
from PySide6.QtCore import Qt, Signal  # noqa: E402
from vtkmodules.qt.QVTKRenderWindowInteractor import QVTKRenderWindowInteractor  # noqa: E402

from ..model import ViewerModel  # noqa: E402
from ..render import SliceScene, VolumeScene, grab_window  # noqa: E402

__all__ = ["SliceView", "VolumeView"]


class _VTKHost(QVTKRenderWindowInteractor):
    """QVTK widget whose Qt events we handle ourselves (no VTK interactor style)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setMinimumSize(160, 160)
        self.setFocusPolicy(Qt.StrongFocus)
        # no multisampling: 1-px crosshair lines stay crisp (and exactly coloured for tests)
        self.GetRenderWindow().SetMultiSamples(0)

    def render_now(self) -> None:
        if self.isVisible():
            self.GetRenderWindow().Render()

    def _display_xy(self, pos) -> tuple[float, float]:
        ratio = self.devicePixelRatioF()
        return pos.x() * ratio, (self.height() - pos.y() - 1) * ratio

    def paintEvent(self, ev):  # noqa: N802 - Qt naming
        self.GetRenderWindow().Render()

    def resizeEvent(self, ev):  # noqa: N802
        super().resizeEvent(ev)
        self._after_resize()

    def _after_resize(self) -> None:
        pass


class SliceView(_VTKHost):
    """One linked MPR plane. Emits ``readout(str)`` with HU/LPS under the mouse."""

    readout = Signal(str)

    def __init__(self, model: ViewerModel, plane: str, parent=None) -> None:
        super().__init__(parent)
        self.model = model
        self.plane = plane
        self.scene = SliceScene(model, plane)
        self.GetRenderWindow().AddRenderer(self.scene.renderer)
        self.setMouseTracking(True)
        self._drag = None
        self._last_index = None
        model.volume_changed.connect(self._on_volume)
        model.cursor_changed.connect(self._on_cursor)
        model.window_changed.connect(self._on_window)
        model.overlays_changed.connect(self.refresh)
        if model.volume is not None:
            self._on_volume(model.volume)

    # ---------------------------------------------------------------- model -> view
    def _on_volume(self, _vol) -> None:
        self.scene._shape = None
        self.scene.update_image()
        self._last_index = self.model.slice_index(self.plane)
        self.render_now()

    def _on_cursor(self, _lps) -> None:
        if self.model.volume is None:
            return
        k = self.model.slice_index(self.plane)
        if k != self._last_index:
            self._last_index = k
            self.scene.update_image()
        else:
            self.scene.update_cursor()
            self.scene.update_text()
        self.render_now()

    def _on_window(self, *_):
        if self.model.volume is not None:
            self.scene.update_image()
            self.render_now()

    def _after_resize(self) -> None:
        if self.model.volume is not None:
            self.scene.reset_camera()

    def refresh(self) -> None:
        """Re-draw the slice (after an overlay changed)."""
        if self.model.volume is not None:
            self.scene.update_image()
            self.render_now()

    # ---------------------------------------------------------------- events
    def screen_point(self, pos) -> tuple[float, float]:
        """Image ``(row, col)`` under a widget position (QPoint, logical pixels)."""
        return self.scene.display_to_screen(*self._display_xy(pos))

    def widget_pos_of(self, row: float, col: float) -> tuple[int, int]:
        """Widget position (logical pixels, origin top-left) of image ``(row, col)``."""
        x, y = self.scene.screen_to_display(row, col)
        ratio = self.devicePixelRatioF()
        return int(round(x / ratio)), int(round(self.height() - 1 - y / ratio))

    def _set_cursor_at(self, pos) -> None:
        row, col = self.screen_point(pos)
        self.model.set_cursor(self.model.screen_to_lps(self.plane, row, col))

    def mousePressEvent(self, ev):  # noqa: N802
        if self.model.volume is None:
            return
        self.setFocus()
        b = ev.button()
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
            self.scene.pan(pos.x() - prev.x(), -(pos.y() - prev.y()))
            self._drag = (button, pos, self._drag[2])
            self.render_now()

    def mouseReleaseEvent(self, ev):  # noqa: N802
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
        else:
            ev.ignore()

    def keyReleaseEvent(self, ev):  # noqa: N802
        ev.ignore()

    def enterEvent(self, ev):  # noqa: N802
        pass

    def leaveEvent(self, ev):  # noqa: N802
        pass


class VolumeView(_VTKHost):
    """3D volume rendering; left-drag rotates (VTK trackball camera style)."""

    def __init__(self, model: ViewerModel, parent=None) -> None:
        super().__init__(parent)
        import vtk

        self.model = model
        self.scene = VolumeScene(model)
        self.GetRenderWindow().AddRenderer(self.scene.renderer)
        self.GetRenderWindow().GetInteractor().SetInteractorStyle(vtk.vtkInteractorStyleTrackballCamera())
        self.Initialize()
        self._volume_id = None
        model.volume_changed.connect(self._on_volume)
        model.cursor_changed.connect(self._on_cursor)
        if model.volume is not None:
            self._on_volume(model.volume)

    def _on_volume(self, vol) -> None:
        if vol.size[2] < 2:  # a preview slice: nothing to render in 3D yet
            return
        self.scene.set_volume(vol)
        self.render_now()

    def _on_cursor(self, _lps) -> None:
        self.scene.update_cursor()
        self.render_now()

    def set_preset(self, name: str) -> None:
        self.scene.apply_preset(name)
        self.render_now()


def grab_pixels(view: _VTKHost) -> np.ndarray:
    """RGB pixels ``(h, w, 3)`` of a view's render window (top row first)."""
    return grab_window(view.GetRenderWindow())
