"""VTK scenes for the MPR and 3D views, and the offscreen snapshot.

A scene owns a ``vtkRenderer`` and its actors and knows nothing about Qt: the Qt widgets in
:mod:`viewer._qt` host the renderers, and :func:`snapshot` puts the same scenes into an
offscreen render window. Everything here runs on the GUI thread only.

World coordinates of a 2-D scene are millimetres in the slice plane: screen pixel
``(row, col)`` of the slice image is drawn at ``x = col * col_spacing``,
``y = (rows - 1 - row) * row_spacing`` (VTK's y axis points up, image rows go down).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import vtk
from vtk.util import numpy_support

from radreview.studies.volume import Volume

from .model import PLANES, ViewerModel, volume_render_presets
from .overlay import FLAGGED_RGB, MARKER_RGB

__all__ = ["volume_to_vtk", "strided_array", "label_surfaces", "SliceScene", "VolumeScene", "snapshot", "grab_window", "LAYOUTS", "layout_viewports"]

CROSSHAIR_RGB = (0.0, 1.0, 0.0)  # pure green: render tests look for it
LAYOUTS = ("2x2", "1x3", "axial", "coronal", "sagittal", "3d")


def strided_array(array: np.ndarray, spacing, max_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(array, spacing)`` strided so no axis of the ``(z, y, x)`` array exceeds ``max_dim``;
    spacing ``(sx, sy, sz)`` mm grows accordingly. Pure numpy (safe on a worker thread)."""
    spacing = np.array(spacing, dtype=float)
    if max_dim:
        steps = [max(1, int(np.ceil(n / max_dim))) for n in array.shape]  # (z, y, x)
        if any(s > 1 for s in steps):
            array = array[:: steps[0], :: steps[1], :: steps[2]]
            spacing = spacing * np.array(steps[::-1])
    return np.ascontiguousarray(array), spacing


def _image_from_array(arr: np.ndarray, spacing, volume: Volume) -> vtk.vtkImageData:
    img = vtk.vtkImageData()
    img.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    img.SetSpacing(*[float(v) for v in spacing])
    img.SetOrigin(*volume.origin)
    img.SetDirectionMatrix(*[float(v) for v in volume.direction.ravel()])
    vtk_arr = numpy_support.numpy_to_vtk(arr.ravel(), deep=True)
    vtk_arr.SetName("values")
    img.GetPointData().SetScalars(vtk_arr)
    return img


def label_surfaces(labels, spacing, origin, direction, indices, max_dim: int | None = 128):
    """Surface meshes of label values, computed with a worker-owned VTK pipeline (no GUI object).

    ``labels`` ``(z, y, x)`` on the study grid (strided to ``max_dim`` per axis first); returns
    ``{index: (points (n, 3) float32 LPS mm, triangles (m, 3) int64, normals (n, 3) float32)}``
    from ``vtkSurfaceNets3D`` (smoothed, triangles) and ``vtkPolyDataNormals``, ready for :meth:`VolumeScene.add_surface`.
    Only plain arrays leave this function: it runs on a worker or in a pool process (VTK
    filters hold the GIL, so the Run AI worker sends it to the process pool).
    """
    arr, sp = strided_array(labels, spacing, max_dim)
    img = vtk.vtkImageData()
    img.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    img.SetSpacing(*[float(v) for v in sp])
    img.SetOrigin(*[float(v) for v in origin])
    img.SetDirectionMatrix(*[float(v) for v in np.asarray(direction).ravel()])
    va = numpy_support.numpy_to_vtk(arr.ravel(), deep=True)
    img.GetPointData().SetScalars(va)
    out = {}
    for idx in indices:
        if not (arr == idx).any():
            continue
        nets = vtk.vtkSurfaceNets3D()
        nets.SetInputData(img)
        nets.SetValue(0, int(idx))
        nets.SetOutputMeshTypeToTriangles()
        nets.SmoothingOn()
        normals = vtk.vtkPolyDataNormals()  # shading normals here too, not on the GUI thread
        normals.SetInputConnection(nets.GetOutputPort())
        normals.SplittingOff()
        normals.Update()
        poly = normals.GetOutput()
        if poly.GetNumberOfPoints() == 0:
            continue
        pts = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float32)
        conn = numpy_support.vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).astype(np.int64)
        nrm = poly.GetPointData().GetNormals()
        nrm = numpy_support.vtk_to_numpy(nrm).astype(np.float32).copy() if nrm is not None else None
        out[int(idx)] = (pts.copy(), conn.reshape(-1, 3).copy(), nrm)
    return out


def volume_to_vtk(volume: Volume, max_dim: int | None = None) -> vtk.vtkImageData:
    """A ``vtkImageData`` with the volume's origin, spacing and direction (LPS world, mm).

    ``max_dim`` strides the array so no axis exceeds it (the spacing grows accordingly), used
    for the 3D view on large series. Scalars are copied, array order ``(z, y, x)`` maps to VTK's
    x-fastest point order.
    """
    arr, spacing = strided_array(volume.array, volume.spacing, max_dim)
    img = vtk.vtkImageData()
    img.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    img.SetSpacing(*spacing)
    img.SetOrigin(*volume.origin)
    img.SetDirectionMatrix(*[float(v) for v in volume.direction.ravel()])
    vtk_arr = numpy_support.numpy_to_vtk(arr.ravel(), deep=True)
    vtk_arr.SetName("values")
    img.GetPointData().SetScalars(vtk_arr)
    return img


class SliceScene:
    """One MPR plane: the windowed slice, crosshair, orientation letters and corner text.

    Parameters
    ----------
    model : ViewerModel
    plane : {"axial", "coronal", "sagittal"}
    """

    def __init__(self, model: ViewerModel, plane: str) -> None:
        if plane not in PLANES:
            raise ValueError(f"unknown plane {plane!r}")
        self.model = model
        self.plane = plane
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetBackground(0, 0, 0)
        self.image = vtk.vtkImageData()
        self.actor = vtk.vtkImageActor()
        self.actor.GetMapper().SetInputData(self.image)
        # each pixel drawn whole (VTK's default draws the edge rows and columns half size, from
        # the first to the last pixel centre: a thick-slice coronal view lost half a slice at
        # each end, and the Qt-painted view, which draws whole pixels, differed from it)
        self.actor.GetMapper().BorderOn()
        self.actor.InterpolateOff()
        self.renderer.AddActor(self.actor)
        #: the composed slice shown, ``(rows, cols, 3)`` uint8 RGB, row 0 on top (what a QPainter
        #: view draws); copied into ``image`` only when VTK itself renders (``_sync_texture``)
        self.shown_rgb: np.ndarray | None = None
        self.shown_version = 0  # bumped whenever shown_rgb is replaced or edited in place
        self._texture_stale = False
        self.renderer.AddObserver("StartEvent", self._sync_texture)
        self.lines = []
        for _ in range(2):
            src = vtk.vtkLineSource()
            mapper = vtk.vtkPolyDataMapper()
            mapper.SetInputConnection(src.GetOutputPort())
            actor = vtk.vtkActor()
            actor.SetMapper(mapper)
            prop = actor.GetProperty()
            prop.SetColor(*CROSSHAIR_RGB)
            prop.SetLineWidth(1.0)
            prop.LightingOff()
            self.renderer.AddActor(actor)
            self.lines.append((src, actor))
        # corner text: 0 lower-left, 1 lower-right, 2 upper-left, 3 upper-right (fixed 11 pt, so it
        # stays readable in small views, where vtkCornerAnnotation hides its text)
        self.corners = []
        for x, y, hj, vj in ((0.006, 0.006, 0, 0), (0.994, 0.006, 2, 0), (0.006, 0.994, 0, 2), (0.994, 0.994, 2, 2)):
            t = vtk.vtkTextActor()
            t.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
            t.GetPositionCoordinate().SetValue(x, y)
            tp = t.GetTextProperty()
            tp.SetFontSize(11)
            tp.SetColor(0.9, 0.9, 0.6)
            tp.SetJustification(hj)
            tp.SetVerticalJustification(vj)
            self.renderer.AddViewProp(t)
            self.corners.append(t)
        self.letters = []
        for pos in ((0.01, 0.5), (0.975, 0.5), (0.5, 0.965), (0.5, 0.01)):
            t = vtk.vtkTextActor()
            t.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
            t.GetPositionCoordinate().SetValue(*pos)
            tp = t.GetTextProperty()
            tp.SetFontSize(15)
            tp.SetBold(True)
            tp.SetColor(1.0, 0.8, 0.2)
            self.renderer.AddViewProp(t)
            self.letters.append(t)
        self._shape: tuple[int, int] | None = None
        self._kept: OrderedDict[int, np.ndarray] = OrderedDict()  # slice index -> composed RGB
        self._kept_key: tuple | None = None  # the display state they were composed under
        # finding markers: one polyline actor per style (listed / needs review), numbers as text
        self._marker_polys = {}
        for flagged in (False, True):
            poly = vtk.vtkPolyData()
            mapper = vtk.vtkPolyDataMapper()
            mapper.SetInputData(poly)
            actor = vtk.vtkActor()
            actor.SetMapper(mapper)
            prop = actor.GetProperty()
            prop.SetColor(*[c / 255 for c in (FLAGGED_RGB if flagged else MARKER_RGB)])
            prop.SetLineWidth(3.0 if flagged else 2.0)
            prop.LightingOff()
            actor.SetVisibility(False)
            self.renderer.AddActor(actor)
            self._marker_polys[flagged] = (poly, actor)
        self._marker_texts: list = []
        self.legend = []
        for i, (text, rgb) in enumerate((("red ring n: AI finding n of the list", MARKER_RGB), ("amber ring n: needs review", FLAGGED_RGB))):
            t = vtk.vtkTextActor()
            t.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
            t.GetPositionCoordinate().SetValue(0.006, 0.085 + 0.035 * (1 - i))
            tp = t.GetTextProperty()
            tp.SetFontSize(12)
            tp.SetBold(bool(i))
            tp.SetColor(*[c / 255 for c in rgb])
            t.SetInput(text)
            t.SetVisibility(False)
            self.renderer.AddViewProp(t)
            self.legend.append(t)
        self.colorbar = vtk.vtkScalarBarActor()
        self.colorbar.SetOrientationToVertical()
        self.colorbar.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
        self.colorbar.GetPositionCoordinate().SetValue(0.90, 0.18)
        self.colorbar.SetWidth(0.08)
        self.colorbar.SetHeight(0.55)
        self.colorbar.SetNumberOfLabels(3)
        self.colorbar.SetLabelFormat("%.2g")
        self.colorbar.UnconstrainedFontSizeOn()
        for tp in (self.colorbar.GetLabelTextProperty(), self.colorbar.GetTitleTextProperty()):
            tp.SetFontSize(11)
            tp.SetColor(0.9, 0.9, 0.9)
            tp.ShadowOff()
            tp.ItalicOff()
        self.colorbar.SetVisibility(False)
        self.renderer.AddViewProp(self.colorbar)
        self._colorbar_key = None

    # ------------------------------------------------------------------ content
    #: composed slices kept per plane for a slice step back or ahead: at most 24 and 32 MB
    #: (24 axial 512 x 512 RGB slices are 19 MB; a coronal slice of a 1000-slice CT is 1.5 MB)
    KEEP_SLICES = 24
    KEEP_BYTES = 32 * 2**20

    def update_image(self, slice_step: bool = False) -> None:
        """Show the current slice. ``slice_step``: only the slice index changed since the last
        call, so a slice composed before (shown or prefetched, :meth:`prefetch`) under the same
        display state (``ViewerModel.display_key``) is reused; any other call is a redraw
        because something changed (window, overlays, an edit in place) and drops what was kept."""
        m = self.model
        if m.volume is None:
            return
        mapping = m.mappings[self.plane]
        k = m.slice_index(self.plane)
        key = m.display_key()
        rgb = self._kept_slice(k, key) if slice_step else None
        if not slice_step:
            self._kept.clear()
        if rgb is None:
            rgb = m.compose_slice(self.plane, k)
            self._keep(k, rgb, key)
        self._upload(rgb, mapping.pixel_spacing)
        if self._shape != mapping.shape:
            self._shape = mapping.shape
            for t, letter in zip(self.letters, mapping.edge_letters):
                t.SetInput(letter)
            self.reset_camera()
        self.update_cursor()
        self.update_text()
        self.update_markers()
        self.update_colorbar()

    def _kept_slice(self, k: int, key: tuple | None) -> np.ndarray | None:
        """Slice ``k`` kept under display state ``key`` (``ViewerModel.display_key``), if any;
        what was kept under another state is dropped."""
        if key is None or key != self._kept_key:
            self._kept.clear()
            self._kept_key = key
            return None
        rgb = self._kept.get(k)
        if rgb is not None:
            self._kept.move_to_end(k)
        return rgb

    def _keep(self, k: int, rgb: np.ndarray, key: tuple | None) -> None:
        if key is None:
            return
        if key != self._kept_key:
            self._kept.clear()
            self._kept_key = key
        self._kept[k] = rgb
        while len(self._kept) > max(1, min(self.KEEP_SLICES, self.KEEP_BYTES // max(rgb.nbytes, 1))):
            self._kept.popitem(last=False)

    def prefetch(self, k: int) -> bool:
        """Compose slice ``k`` ahead of a scroll and keep it (the next :meth:`update_image` with
        ``slice_step`` shows it without composing). Returns whether it composed anything (not
        when ``k`` is outside the volume, already kept, or the display state is not cacheable)."""
        m = self.model
        if m.volume is None or not 0 <= k < m.mappings[self.plane].n_slices:
            return False
        key = m.display_key()
        if key is None or self._kept_slice(k, key) is not None:
            return False
        self._keep(k, m.compose_slice(self.plane, k), key)
        return True

    def _upload(self, rgb: np.ndarray, spacing_rc: tuple[float, float]) -> None:
        """Show the composed slice ``rgb`` ``(rows, cols, 3)`` uint8 (row 0 on top): kept as
        ``shown_rgb``; the image geometry (``image`` dimensions and spacing, mm) is set when it
        changes; the pixels are copied into VTK's image when VTK renders this renderer."""
        rows, cols, _ = rgb.shape
        self.shown_rgb = rgb
        self.shown_changed()
        self._set_geometry(rows, cols, spacing_rc)

    def shown_changed(self) -> None:
        """``shown_rgb`` was replaced or changed in place (a brush stroke's preview): the next
        paint or VTK render takes it up again."""
        self.shown_version += 1
        self._texture_stale = True

    def _set_geometry(self, rows: int, cols: int, spacing_rc: tuple[float, float]) -> None:
        buf = getattr(self, "_rgb_buf", None)
        geom = (rows, cols, float(spacing_rc[0]), float(spacing_rc[1]))
        if buf is None or buf.shape != (rows * cols, 3) or getattr(self, "_geom", None) != geom:
            buf = np.empty((rows * cols, 3), np.uint8)
            arr = numpy_support.numpy_to_vtk(buf, deep=False, array_type=vtk.VTK_UNSIGNED_CHAR)
            arr.SetName("rgb")
            self._rgb_buf, self._rgb_vtk, self._geom = buf, arr, geom  # the buffer outlives the array
            self.image.SetDimensions(cols, rows, 1)
            self.image.SetSpacing(geom[3], geom[2], 1.0)
            self.image.SetOrigin(0.0, 0.0, 0.0)
            self.image.GetPointData().SetScalars(arr)
            self.image.Modified()

    def _sync_texture(self, *_args) -> None:
        """Before VTK renders this scene (offscreen snapshot, a comparison): copy ``shown_rgb``
        into the image, flipped to VTK's bottom-up rows, once per shown slice (one copy into a
        kept buffer that the VTK array shares: no new VTK array)."""
        rgb = self.shown_rgb
        if not self._texture_stale or rgb is None:
            return
        self._texture_stale = False
        rows, cols, _ = rgb.shape
        np.copyto(self._rgb_buf.reshape(rows, cols, 3), rgb[::-1])
        self._rgb_vtk.Modified()
        self.image.Modified()

    def update_markers(self) -> None:
        """Numbered circles of the listed findings cut by this slice (vector graphics above the image)."""
        m = self.model
        mapping = m.mappings[self.plane]
        k = m.slice_index(self.plane)
        circles = []
        any_markers = False
        for ov in m.visible_overlays():
            if hasattr(ov, "circles"):
                any_markers = any_markers or bool(ov.markers)
                circles += ov.circles(mapping, k)
        n_seg = 48
        ang = np.linspace(0, 2 * np.pi, n_seg, endpoint=False)
        for flagged, (poly, actor) in self._marker_polys.items():
            mine = [c for c in circles if c["flagged"] == flagged]
            if not mine:
                actor.SetVisibility(False)
                continue
            pts = np.zeros((len(mine) * n_seg, 3))
            for i, c in enumerate(mine):
                x, y = self.screen_to_world(c["row"], c["col"])
                pts[i * n_seg:(i + 1) * n_seg, 0] = x + c["radius_mm"] * np.cos(ang)
                pts[i * n_seg:(i + 1) * n_seg, 1] = y + c["radius_mm"] * np.sin(ang)
            pts[:, 2] = 0.7
            vpts = vtk.vtkPoints()
            vpts.SetData(numpy_support.numpy_to_vtk(pts, deep=True))
            cells = vtk.vtkCellArray()
            for i in range(len(mine)):
                ids = list(range(i * n_seg, (i + 1) * n_seg)) + [i * n_seg]
                cells.InsertNextCell(len(ids), ids)
            poly.SetPoints(vpts)
            poly.SetLines(cells)
            poly.Modified()
            actor.SetVisibility(True)
        labelled = [c for c in circles if c["number"] is not None]
        while len(self._marker_texts) < len(labelled):
            t = vtk.vtkTextActor()
            t.GetPositionCoordinate().SetCoordinateSystemToWorld()
            tp = t.GetTextProperty()
            tp.SetFontSize(14)
            tp.SetBold(True)
            tp.SetShadow(True)
            self.renderer.AddViewProp(t)
            self._marker_texts.append(t)
        for i, t in enumerate(self._marker_texts):
            if i >= len(labelled):
                t.SetVisibility(False)
                continue
            c = labelled[i]
            x, y = self.screen_to_world(c["row"], c["col"])
            d = c["radius_mm"] * 0.72
            t.GetPositionCoordinate().SetValue(x + d + 1.0, y + d + 1.0, 0.7)
            t.SetInput(str(c["number"]))
            t.GetTextProperty().SetColor(*[v / 255 for v in c["color"]])
            t.SetVisibility(True)
        for t in self.legend:
            t.SetVisibility(any_markers)

    def update_colorbar(self) -> None:
        """A colour bar for the topmost visible heatmap (Grad-CAM, uncertainty), hidden when none."""
        bars = [ov for ov in self.model.visible_overlays() if hasattr(ov, "colorbar")]
        if not bars:
            self.colorbar.SetVisibility(False)
            self._colorbar_key = None
            return
        lut_rgb, lo, hi, title = bars[-1].colorbar()
        key = (id(bars[-1]), lo, hi, title)
        if key != self._colorbar_key:
            lut = vtk.vtkLookupTable()
            lut.SetNumberOfTableValues(len(lut_rgb))
            lut.SetRange(lo, hi if hi > lo else lo + 1)
            for i, (r, g, b) in enumerate(lut_rgb):
                lut.SetTableValue(i, r / 255, g / 255, b / 255, 1.0)
            lut.Build()
            self.colorbar.SetLookupTable(lut)
            self.colorbar.SetTitle(title)
            self._colorbar_key = key
        self.colorbar.SetVisibility(True)

    def update_cursor(self) -> None:
        m = self.model
        if m.volume is None:
            return
        mapping = m.mappings[self.plane]
        rows, cols = mapping.shape
        sr, sc = mapping.pixel_spacing
        r, c = m.cursor_on_screen(self.plane)
        x, y = self.screen_to_world(r, c)
        z = 0.5
        (h, _), (v, _) = self.lines
        h.SetPoint1(-0.5 * sc, y, z)
        h.SetPoint2((cols - 0.5) * sc, y, z)
        v.SetPoint1(x, -0.5 * sr, z)
        v.SetPoint2(x, (rows - 0.5) * sr, z)
        h.Modified()
        v.Modified()

    def update_text(self) -> None:
        m = self.model
        vol = m.volume
        info = vol.info
        mapping = m.mappings[self.plane]
        k = m.slice_index(self.plane)
        c, w = m.window
        ul = "\n".join(x for x in (info.patient_name or "anonymous", info.patient_id, _date(info.study_date)) if x)
        self.corners[2].SetInput(ul)
        self.corners[3].SetInput(f"{info.modality} {info.series_number}".strip() + f"\n{info.series_description}\n{self.plane}")
        self.corners[0].SetInput(f"Slice {k + 1}/{mapping.n_slices}\n{_pos_label(self.plane)} {m.slice_position_mm(self.plane):.1f} mm")
        self.corners[1].SetInput(f"W {w:.0f}  L {c:.0f}" + (f"\n{m.preset}" if m.preset else ""))

    # ------------------------------------------------------------------ camera / coordinates
    def reset_camera(self) -> None:
        mapping = self.model.mappings[self.plane]
        rows, cols = mapping.shape
        sr, sc = mapping.pixel_spacing
        cx, cy = (cols - 1) * sc / 2, (rows - 1) * sr / 2
        cam = self.renderer.GetActiveCamera()
        cam.ParallelProjectionOn()
        cam.SetFocalPoint(cx, cy, 0)
        cam.SetPosition(cx, cy, 1000)
        cam.SetViewUp(0, 1, 0)
        cam.SetClippingRange(1, 2000)
        aspect = self._aspect()
        half_h, half_w = rows * sr / 2, cols * sc / 2
        cam.SetParallelScale(max(half_h, half_w / aspect) * 1.02)

    def _aspect(self) -> float:
        win = self.renderer.GetRenderWindow()
        if win is None:
            return 1.0
        w, h = win.GetSize()
        vp = self.renderer.GetViewport()
        pw, ph = (vp[2] - vp[0]) * w, (vp[3] - vp[1]) * h
        return pw / ph if ph > 0 and pw > 0 else 1.0

    def screen_to_world(self, row: float, col: float) -> tuple[float, float]:
        mapping = self.model.mappings[self.plane]
        rows, _ = mapping.shape
        sr, sc = mapping.pixel_spacing
        return col * sc, (rows - 1 - row) * sr

    def world_to_screen(self, x: float, y: float) -> tuple[float, float]:
        mapping = self.model.mappings[self.plane]
        rows, _ = mapping.shape
        sr, sc = mapping.pixel_spacing
        return (rows - 1) - y / sr, x / sc

    def display_to_screen(self, x: float, y: float) -> tuple[float, float]:
        """Image ``(row, col)`` under display pixel ``(x, y)`` (VTK display coords, origin bottom-left)."""
        ren = self.renderer
        ren.SetDisplayPoint(x, y, 0)
        ren.DisplayToWorld()
        wx, wy, _, w = ren.GetWorldPoint()
        if w:
            wx, wy = wx / w, wy / w
        return self.world_to_screen(wx, wy)

    def screen_to_display(self, row: float, col: float) -> tuple[float, float]:
        """Display pixel ``(x, y)`` (origin bottom-left) of image ``(row, col)``."""
        wx, wy = self.screen_to_world(row, col)
        ren = self.renderer
        ren.SetWorldPoint(wx, wy, 0, 1)
        ren.WorldToDisplay()
        x, y, _ = ren.GetDisplayPoint()
        return x, y

    def zoom(self, factor: float) -> None:
        self.renderer.GetActiveCamera().Zoom(factor)

    def pan(self, dx_display: float, dy_display: float) -> None:
        """Move the image by a display-pixel delta."""
        cam = self.renderer.GetActiveCamera()
        win = self.renderer.GetRenderWindow()
        h = win.GetSize()[1] * (self.renderer.GetViewport()[3] - self.renderer.GetViewport()[1]) if win else 512
        mm_per_px = 2 * cam.GetParallelScale() / max(h, 1)
        fx, fy, fz = cam.GetFocalPoint()
        px, py, pz = cam.GetPosition()
        ddx, ddy = -dx_display * mm_per_px, -dy_display * mm_per_px
        cam.SetFocalPoint(fx + ddx, fy + ddy, fz)
        cam.SetPosition(px + ddx, py + ddy, pz)


def _pos_label(plane: str) -> str:
    return {"axial": "z", "coronal": "y", "sagittal": "x"}[plane]


def _date(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else d


class VolumeScene:
    """3D view: GPU/CPU ray casting with ``vtkSmartVolumeMapper`` and CT transfer-function presets.

    Large series are strided to at most ``max_dim`` voxels per axis for interactivity (the
    2-D views always show full resolution).
    """

    def __init__(self, model: ViewerModel, preset: str = "bone", max_dim: int = 256) -> None:
        self.model = model
        self.max_dim = max_dim
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetBackground(0.08, 0.08, 0.1)
        self.mapper = vtk.vtkSmartVolumeMapper()
        self.prop = vtk.vtkVolumeProperty()
        self.prop.ShadeOn()
        self.prop.SetInterpolationTypeToLinear()
        self.prop.SetAmbient(0.3)
        self.prop.SetDiffuse(0.7)
        self.prop.SetSpecular(0.2)
        self.volume = vtk.vtkVolume()
        self.volume.SetMapper(self.mapper)
        self.volume.SetProperty(self.prop)
        sphere = vtk.vtkSphereSource()
        sphere.SetRadius(3.0)
        cm = vtk.vtkPolyDataMapper()
        cm.SetInputConnection(sphere.GetOutputPort())
        self.cursor_actor = vtk.vtkActor()
        self.cursor_actor.SetMapper(cm)
        self.cursor_actor.GetProperty().SetColor(*CROSSHAIR_RGB)
        self.renderer.AddActor(self.cursor_actor)
        self.label = vtk.vtkCornerAnnotation()
        self.label.SetMaximumFontSize(14)
        self.renderer.AddViewProp(self.label)
        self.preset = preset
        self._data: vtk.vtkImageData | None = None

    def set_labels(self, labels: np.ndarray | None, colors: dict[int, tuple[int, int, int]] | None = None,
                   skip: tuple[int, ...] = ()) -> int:
        """Show label surfaces (vtkSurfaceNets3D, one per label, on the volume's grid); returns how many.

        ``labels`` is ``(z, y, x)`` on the current volume's grid; ``None`` removes the surfaces.
        """
        for actor in getattr(self, "_surfaces", []):
            self.renderer.RemoveActor(actor)
        self._surfaces = []
        self._surface_index = {}
        self._surfaces_volume = None
        if labels is None:
            return 0
        self._surfaces_volume = self.model.volume
        vol = self.model.volume
        img = volume_to_vtk(Volume(labels, vol.spacing, vol.origin, vol.direction), self.max_dim)
        present = [int(v) for v in np.unique(labels) if v != 0 and int(v) not in skip]
        for idx in present:
            nets = vtk.vtkSurfaceNets3D()
            nets.SetInputData(img)
            nets.SetValue(0, idx)
            nets.SetOutputMeshTypeToTriangles()
            nets.SmoothingOn()
            mapper = vtk.vtkPolyDataMapper()
            mapper.SetInputConnection(nets.GetOutputPort())
            mapper.ScalarVisibilityOff()
            actor = vtk.vtkActor()
            actor.SetMapper(mapper)
            r, g, b = (colors or {}).get(idx, (255, 0, 0))
            actor.GetProperty().SetColor(r / 255, g / 255, b / 255)
            self.renderer.AddActor(actor)
            self._surfaces.append(actor)
        if present:  # surfaces replace the volume rendering while shown
            self.volume.SetVisibility(False)
        return len(present)

    def clear_surfaces(self) -> None:
        """Remove every label surface (the volume rendering comes back)."""
        self.set_labels(None)
        self.volume.SetVisibility(True)

    def add_surface(self, index: int, points: np.ndarray, triangles: np.ndarray, rgb,
                    normals: np.ndarray | None = None) -> vtk.vtkActor:
        """Add one label's surface from arrays (points ``(n, 3)`` LPS mm, triangles ``(m, 3)``),
        e.g. computed on a worker by ``viewer._qt.workers.label_surfaces``; hides the volume
        rendering (surfaces replace it while shown)."""
        if not hasattr(self, "_surfaces"):
            self._surfaces = []
        pts = vtk.vtkPoints()
        pts.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float32), deep=True))
        tri = np.ascontiguousarray(triangles, dtype=np.int64)
        cells = vtk.vtkCellArray()
        offsets = numpy_support.numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(tri) + 1, 3, dtype=np.int64), deep=True)
        conn = numpy_support.numpy_to_vtkIdTypeArray(tri.ravel(), deep=True)
        cells.SetData(offsets, conn)
        poly = vtk.vtkPolyData()
        poly.SetPoints(pts)
        poly.SetPolys(cells)
        if normals is not None and len(normals) == len(points):
            poly.GetPointData().SetNormals(numpy_support.numpy_to_vtk(np.ascontiguousarray(normals, np.float32), deep=True))
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(poly)
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        r, g, b = rgb
        actor.GetProperty().SetColor(r / 255, g / 255, b / 255)
        self.renderer.AddActor(actor)
        self._surfaces.append(actor)
        self._surface_index = getattr(self, "_surface_index", {})
        self._surface_index[int(index)] = actor
        self._surfaces_volume = self.model.volume  # what they were made for (kept by set_volume)
        self.volume.SetVisibility(False)
        return actor

    def surface_of(self, index: int):
        """The surface actor of a label added with :meth:`add_surface`, or ``None``."""
        return getattr(self, "_surface_index", {}).get(int(index))

    def show_volume_rendering(self, on: bool) -> None:
        self.volume.SetVisibility(bool(on))

    def clear(self) -> None:
        """Drop the volume and surfaces (e.g. while the next volume loads)."""
        self.set_labels(None)
        if self.renderer.HasViewProp(self.volume):
            self.renderer.RemoveVolume(self.volume)
        self._data = None

    def use_cpu_raycast(self, on: bool) -> None:
        """CPU ray casting with automatic sample distances (for software OpenGL) instead of the
        smart mapper's default (GPU when available)."""
        if on:
            self.mapper.SetRequestedRenderModeToRayCast()
            self.mapper.SetAutoAdjustSampleDistances(1)
            win = self.renderer.GetRenderWindow()
            if win is not None:
                win.SetDesiredUpdateRate(20.0)
        else:
            self.mapper.SetRequestedRenderModeToDefault()

    def warm_up(self, window) -> float:
        """Render a 16 x 16 x 16 stand-in volume once through this scene's mapper and property,
        buffers not swapped (nothing shows), then remove it; returns the seconds it took.

        Why: the first volume render of a mapper pays a one-off set-up besides the ray
        casting: on Mesa llvmpipe with the CPU ray caster about 60 ms of the 115 ms the first
        128 x 128 x 30 render took (the next one 55 ms), measured with ``/tmp`` scripts on
        ``ct-chest-tumor`` B70f. Paid while no study is open (the window was just shown), it
        is no longer part of the stall when a study opens. Does nothing once a volume is set."""
        if self._data is not None or self.renderer.HasViewProp(self.volume):
            return 0.0
        import time

        img = vtk.vtkImageData()
        img.SetDimensions(16, 16, 16)
        img.SetSpacing(8.0, 8.0, 8.0)
        ramp = np.linspace(-1000, 1500, 16**3).astype(np.int16)
        img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(ramp, deep=True))
        self.mapper.SetInputData(img)
        self.renderer.AddVolume(self.volume)
        self.apply_preset(self.preset)
        t = time.perf_counter()
        window.SwapBuffersOff()
        try:
            window.Render()
        finally:
            window.SwapBuffersOn()
            self.renderer.RemoveVolume(self.volume)
        return time.perf_counter() - t

    def set_volume(self, volume: Volume, strided: tuple | None = None) -> None:
        """Show ``volume``; ``strided`` = ``(array (z, y, x), spacing (sx, sy, sz) mm)`` from
        :func:`strided_array` computed beforehand (on a worker) to skip that copy here.
        Surfaces already added for this same volume stay (a restored run's surfaces can
        arrive before the lazily built volume rendering); any others are removed."""
        keep = bool(getattr(self, "_surfaces", None)) and getattr(self, "_surfaces_volume", None) is volume
        if not keep:
            self.set_labels(None)
        self.volume.SetVisibility(not keep)
        if strided is not None:
            self._data = _image_from_array(strided[0], strided[1], volume)
        else:
            self._data = volume_to_vtk(volume, self.max_dim)
        self.mapper.SetInputData(self._data)
        if not self.renderer.HasViewProp(self.volume):
            self.renderer.AddVolume(self.volume)
        self.apply_preset(self.preset)
        self.reset_camera()
        self.update_cursor()

    def apply_preset(self, name: str) -> None:
        """Apply a 3D preset (``bone``, ``soft tissue``, ``lung``).

        Raises
        ------
        KeyError
            If the preset is unknown.
        """
        presets = volume_render_presets()
        if name not in presets:
            raise KeyError(f"unknown 3D preset {name!r}; known: {', '.join(presets)}")
        p = presets[name]
        otf = vtk.vtkPiecewiseFunction()
        for hu, a in p["opacity"]:
            otf.AddPoint(hu, a)
        ctf = vtk.vtkColorTransferFunction()
        for hu, r, g, b in p["color"]:
            ctf.AddRGBPoint(hu, r, g, b)
        self.prop.SetScalarOpacity(otf)
        self.prop.SetColor(ctf)
        self.preset = name
        self.label.SetText(3, f"3D: {name}")

    def reset_camera(self) -> None:
        vol = self.model.volume
        c = vol.center_lps()
        nx, ny, nz = vol.size
        diag = float(np.linalg.norm(np.array([nx, ny, nz]) * np.array(vol.spacing)))
        cam = self.renderer.GetActiveCamera()
        cam.ParallelProjectionOff()
        cam.SetFocalPoint(*c)
        cam.SetPosition(c[0], c[1] - 2.2 * diag, c[2])  # anterior view: camera at -y (anterior)
        cam.SetViewUp(0, 0, 1)
        self.renderer.ResetCameraClippingRange()
        self.renderer.ResetCamera()

    def update_cursor(self) -> None:
        self.cursor_actor.SetPosition(*self.model.cursor)


def layout_viewports(layout: str) -> dict[str, tuple[float, float, float, float]]:
    """Viewport rectangles ``(xmin, ymin, xmax, ymax)`` of each view for a layout.

    Raises
    ------
    ValueError
        If the layout is unknown.
    """
    if layout == "2x2":
        return {"axial": (0, 0.5, 0.5, 1), "coronal": (0.5, 0.5, 1, 1), "sagittal": (0, 0, 0.5, 0.5), "3d": (0.5, 0, 1, 0.5)}
    if layout == "1x3":
        return {"axial": (0, 0, 1 / 3, 1), "coronal": (1 / 3, 0, 2 / 3, 1), "sagittal": (2 / 3, 0, 1, 1)}
    if layout in ("axial", "coronal", "sagittal", "3d"):
        return {layout: (0, 0, 1, 1)}
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def grab_window(win: vtk.vtkRenderWindow, png_path: str | None = None) -> np.ndarray:
    """Render ``win`` and return its RGB pixels ``(h, w, 3)``, top row first; optionally write a PNG."""
    win.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(win)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    if png_path:
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(png_path)
        writer.SetInputConnection(grab.GetOutputPort())
        writer.Write()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    return numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, 3)[::-1].copy()


def snapshot(model: ViewerModel, out_path: str, layout: str = "2x2", size: tuple[int, int] | None = None,
             preset3d: str = "bone", cursor_lps=None, scenes_out: list | None = None) -> np.ndarray:
    """Render ``model`` offscreen in ``layout`` and write a PNG; returns the RGB pixels ``(h, w, 3)``.

    Needs an X display or an offscreen-capable OpenGL (the CLI starts Xvfb when none is set).
    ``scenes_out``, if given, receives the scenes (to map image positions to pixels in tests).

    Raises
    ------
    ValueError
        For an unknown layout.
    """
    ports = layout_viewports(layout)
    if size is None:
        size = {"2x2": (1024, 1024), "1x3": (1536, 512)}.get(layout, (768, 768))
    win = vtk.vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.SetSize(*size)
    win.SetMultiSamples(0)
    scenes = []
    if cursor_lps is not None:
        model.set_cursor(cursor_lps)
    for name, vp in ports.items():
        if name == "3d":
            scene = VolumeScene(model, preset=preset3d)
            scene.set_volume(model.volume)
        else:
            scene = SliceScene(model, name)
        scene.renderer.SetViewport(*vp)
        win.AddRenderer(scene.renderer)
        scenes.append(scene)
    win.Render()
    for scene in scenes:
        if isinstance(scene, SliceScene):
            scene._shape = None
            scene.update_image()
    pixels = grab_window(win, png_path=str(out_path))
    if scenes_out is not None:  # the caller keeps the window alive to map coordinates
        scenes_out.extend(scenes)
        scenes_out.append(win)
    else:
        win.Finalize()
    return pixels
