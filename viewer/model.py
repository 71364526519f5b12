"""GUI-free viewer model: MPR plane mapping, window/level, linked cursor state.

Nothing here imports Qt or VTK (an import-linter contract enforces it), so every rule of the
views (which voxel axis is shown where, what a click means in LPS, what W/L does) is unit
tested without a display. The Qt widgets and VTK scenes only subscribe to :class:`ViewerModel`.

Screen conventions (radiological, as in every PACS viewer and 3D Slicer's default):

* axial: screen right = patient Left (+x in LPS), screen down = Posterior (+y);
* coronal: screen right = Left (+x), screen down = Inferior (-z);
* sagittal: screen right = Posterior (+y), screen down = Inferior (-z).

Slices are voxel-aligned (no oblique reformatting): each plane shows the voxel axis closest to
its patient axis, flipped where needed, like ITK-SNAP. Orientation letters are computed from
the real direction cosines, so an oblique acquisition shows e.g. "LP" rather than a lie.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from radreview.studies.volume import Volume

__all__ = [
    "PLANES", "PlaneMapping", "plane_mapping", "apply_window", "window_presets",
    "auto_window", "ViewerModel", "orientation_label", "volume_render_presets", "resources_dir",
]

PLANES = ("axial", "coronal", "sagittal")

# (normal patient axis, screen-right LPS vector, screen-down LPS vector)
_PLANE_AXES = {
    "axial": (2, np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),
    "coronal": (1, np.array([1.0, 0, 0]), np.array([0, 0, -1.0])),
    "sagittal": (0, np.array([0, 1.0, 0]), np.array([0, 0, -1.0])),
}


def resources_dir() -> Path:
    """The shipped ``radreview.resources`` folder (presets, models), found with importlib.resources."""
    from importlib.resources import files

    return Path(str(files("radreview.resources")))


def window_presets() -> dict[str, tuple[float, float]]:
    """CT W/L presets ``{name: (centre, width)}`` in HU from ``resources/presets/window_level.json``."""
    data = json.loads((resources_dir() / "presets" / "window_level.json").read_text())
    return {k: (float(v["center"]), float(v["width"])) for k, v in data["ct"].items()}


def volume_render_presets() -> dict[str, dict]:
    """3D transfer-function presets ``{name: {"opacity": [[HU, a]...], "color": [[HU, r, g, b]...]}}``."""
    data = json.loads((resources_dir() / "presets" / "window_level.json").read_text())
    return {k: v for k, v in data["volume_rendering"].items() if not k.startswith("_")}


def auto_window(volume: Volume, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Window ``(centre, width)`` from the ``low``/``high`` percentiles of the non-background voxels.

    Used for MR (no calibrated units) and for CT without a usable header window. Sampled on a
    strided subset (at most ~1e6 voxels) so it is fast on large volumes.
    """
    a = volume.array
    step = max(1, int(round((a.size / 1e6) ** (1 / 3))))
    sample = a[::step, ::step, ::step].ravel()
    fg = sample[sample > sample.min()]
    if fg.size < 16:
        fg = sample
    lo, hi = np.percentile(fg, [low, high])
    width = max(float(hi - lo), 1.0)
    return float((hi + lo) / 2), width


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear VOI LUT of DICOM PS3.3 C.11.2.1.2.1, output uint8 0..255, same shape as input.

    ``y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255`` clipped to 0..255; ``w`` < 1 is treated as 1.
    """
    w = max(float(width), 1.0)
    c = float(center)
    if w <= 1.0:
        return np.where(values > c - 0.5, 255, 0).astype(np.uint8)
    scale = np.float32(255.0 / (w - 1.0))
    offset = np.float32(-(c - 0.5) * 255.0 / (w - 1.0) + 127.5)
    out = values.astype(np.float32, copy=False) * scale + offset
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def _letters(vec: np.ndarray) -> str:
    names = (("R", "L"), ("A", "P"), ("I", "S"))
    order = np.argsort(-np.abs(vec))
    out = ""
    for ax in order:
        if abs(vec[ax]) > 0.25:
            out += names[ax][1] if vec[ax] > 0 else names[ax][0]
    return out


def orientation_label(vec) -> str:
    """Patient-direction letters of an LPS vector (e.g. ``[1, 0, 0]`` -> ``"L"``, oblique -> ``"LP"``)."""
    return _letters(np.asarray(vec, dtype=float))


@dataclass(frozen=True)
class PlaneMapping:
    """How a plane is cut from a volume's voxel grid and laid on screen.

    ``normal_axis``, ``col_axis`` and ``row_axis`` are voxel axes (0=i/x, 1=j/y, 2=k/z);
    ``col_flip``/``row_flip`` say whether screen columns/rows run against the voxel axis.
    ``pixel_spacing`` is ``(row spacing, column spacing)`` in mm. ``edge_letters`` are
    ``(left, right, top, bottom)`` patient-direction letters.
    """

    plane: str
    normal_axis: int
    col_axis: int
    row_axis: int
    col_flip: bool
    row_flip: bool
    shape: tuple[int, int]  # (rows, cols) on screen
    n_slices: int
    pixel_spacing: tuple[float, float]
    edge_letters: tuple[str, str, str, str]

    # ------------------------------------------------------------------ slicing
    def extract(self, array: np.ndarray, index: int) -> np.ndarray:
        """The slice at voxel ``index`` along :attr:`normal_axis`, shape ``(rows, cols)`` (a view).

        ``array`` is ``(z, y, x)``; numpy axis of voxel axis ``a`` is ``2 - a``.
        """
        index = int(np.clip(index, 0, self.n_slices - 1))
        sl = np.take(array, index, axis=2 - self.normal_axis)
        # remaining numpy axes, in (z, y, x) order minus the normal
        remaining = [2 - a for a in (2, 1, 0) if a != self.normal_axis]
        order = [remaining.index(2 - self.row_axis), remaining.index(2 - self.col_axis)]
        sl = np.transpose(sl, order)
        if self.row_flip:
            sl = sl[::-1, :]
        if self.col_flip:
            sl = sl[:, ::-1]
        return sl

    def screen_to_index(self, index: float, row: float, col: float) -> np.ndarray:
        """Continuous voxel index ``(i, j, k)`` of screen pixel ``(row, col)`` on slice ``index``."""
        rows, cols = self.shape
        ijk = np.zeros(3)
        ijk[self.normal_axis] = index
        ijk[self.row_axis] = (rows - 1 - row) if self.row_flip else row
        ijk[self.col_axis] = (cols - 1 - col) if self.col_flip else col
        return ijk

    def index_to_screen(self, ijk) -> tuple[float, float, float]:
        """``(slice index, row, col)`` of continuous voxel index ``ijk``."""
        rows, cols = self.shape
        r = ijk[self.row_axis]
        c = ijk[self.col_axis]
        return (
            float(ijk[self.normal_axis]),
            float((rows - 1 - r) if self.row_flip else r),
            float((cols - 1 - c) if self.col_flip else c),
        )


def _axis_assignment(direction: np.ndarray) -> list[int]:
    """For each patient axis (x, y, z) the voxel axis that points most along it (a permutation)."""
    d = np.abs(np.asarray(direction))
    assign = [-1, -1, -1]
    used: set[int] = set()
    for _ in range(3):
        best = None
        for p in range(3):
            if assign[p] >= 0:
                continue
            for v in range(3):
                if v in used:
                    continue
                if best is None or d[p, v] > best[0]:
                    best = (d[p, v], p, v)
        _, p, v = best
        assign[p] = v
        used.add(v)
    return assign


def plane_mapping(volume: Volume, plane: str) -> PlaneMapping:
    """The :class:`PlaneMapping` of ``plane`` (axial/coronal/sagittal) for ``volume``.

    Raises
    ------
    ValueError
        If ``plane`` is not one of :data:`PLANES`.
    """
    if plane not in _PLANE_AXES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}")
    normal_p, right, down = _PLANE_AXES[plane]
    d = volume.direction
    assign = _axis_assignment(d)
    normal_axis = assign[normal_p]
    col_p = int(np.argmax(np.abs(right)))
    row_p = int(np.argmax(np.abs(down)))
    col_axis, row_axis = assign[col_p], assign[row_p]
    col_flip = float(np.dot(d[:, col_axis], right)) < 0
    row_flip = float(np.dot(d[:, row_axis], down)) < 0
    size = volume.size
    sp = volume.spacing
    right_vec = d[:, col_axis] * (-1 if col_flip else 1)
    down_vec = d[:, row_axis] * (-1 if row_flip else 1)
    letters = (_letters(-right_vec), _letters(right_vec), _letters(-down_vec), _letters(down_vec))
    return PlaneMapping(
        plane=plane,
        normal_axis=normal_axis,
        col_axis=col_axis,
        row_axis=row_axis,
        col_flip=col_flip,
        row_flip=row_flip,
        shape=(size[row_axis], size[col_axis]),
        n_slices=size[normal_axis],
        pixel_spacing=(sp[row_axis], sp[col_axis]),
        edge_letters=letters,
    )


class _Emitter:
    """A minimal callback list (napari's EventEmitter idea without the dependency)."""

    def __init__(self) -> None:
        self._cbs: list[Callable] = []

    def connect(self, cb: Callable) -> None:
        if cb not in self._cbs:
            self._cbs.append(cb)

    @property
    def n_connected(self) -> int:
        return len(self._cbs)

    def disconnect(self, cb: Callable) -> None:
        if cb in self._cbs:
            self._cbs.remove(cb)

    def emit(self, *args) -> None:
        for cb in list(self._cbs):
            cb(*args)


class ViewerModel:
    """State shared by the linked views: the volume, the cursor (LPS mm) and the window.

    Setters validate, then emit ``cursor_changed(lps)``, ``window_changed(center, width)`` or
    ``volume_changed(volume)``. Views subscribe; nothing here knows about Qt or VTK.
    """

    def __init__(self, volume: Volume | None = None) -> None:
        self.volume_changed = _Emitter()
        self.cursor_changed = _Emitter()
        self.window_changed = _Emitter()
        self.overlays_changed = _Emitter()  # the set of overlays or their shown state changed
        self.overlay_changed = _Emitter()  # overlay_changed(name): one evented overlay's look changed
        self._overlay_cbs: dict[str, tuple[object, Callable]] = {}
        self.cursor_source: str | None = None  # plane whose scroll/click moved the cursor last
        self.overlays: dict[str, object] = {}  # name -> object with compose(rgb, mapping, index)
        self.overlays_shown = True  # O toggles every overlay
        self.heatmaps_shown = True  # H toggles heatmaps (overlays whose ``kind`` is "heatmap")
        self.volume: Volume | None = None
        self.cursor = np.zeros(3)
        self.window = (40.0, 400.0)
        self.preset = ""
        self.mappings: dict[str, PlaneMapping] = {}
        if volume is not None:
            self.set_volume(volume)

    # ------------------------------------------------------------------ volume
    def set_volume(self, volume: Volume) -> None:
        self.volume = volume
        for name in list(self._overlay_cbs):
            self._unsubscribe(name)
        self.overlays = {}  # overlays belong to the previous grid
        self.mappings = {p: plane_mapping(volume, p) for p in PLANES}
        self.cursor = volume.center_lps()
        self.window, self.preset = self.default_window(volume)
        self.volume_changed.emit(volume)
        self.window_changed.emit(*self.window)
        self.cursor_changed.emit(self.cursor)

    @staticmethod
    def default_window(volume: Volume) -> tuple[tuple[float, float], str]:
        """CT: the header window if present, else the abdomen preset; MR/other: percentiles."""
        info = volume.info
        if info.modality == "CT":
            if info.window_center is not None and info.window_width and info.window_width > 1:
                return (info.window_center, info.window_width), "header"
            return window_presets()["abdomen"], "abdomen"
        return auto_window(volume), "auto"

    # ------------------------------------------------------------------ overlays
    def set_overlay(self, name: str, overlay) -> None:
        """Show ``overlay`` (e.g. a :class:`viewer.overlay.LabelOverlay`) in every MPR view.

        Raises
        ------
        ValueError
            If its ``shape`` is not the volume's ``(z, y, x)`` grid.
        """
        shape = tuple(getattr(overlay, "shape", ()) or ())
        if self.volume is None or shape != self.volume.array.shape:
            raise ValueError(f"overlay {name!r} shape {shape or None} does not match the volume "
                             f"{None if self.volume is None else self.volume.array.shape}")
        self._unsubscribe(name)
        self.overlays[name] = overlay
        ev = getattr(overlay, "changed", None)
        if ev is not None and hasattr(ev, "connect"):  # an evented overlay (viewer.overlay.Evented)
            def cb(*_args, _name=name):
                self.overlay_changed.emit(_name)
            ev.connect(cb)
            self._overlay_cbs[name] = (overlay, cb)
        self.overlays_changed.emit()

    def remove_overlay(self, name: str) -> None:
        self._unsubscribe(name)
        if self.overlays.pop(name, None) is not None:
            self.overlays_changed.emit()

    def _unsubscribe(self, name: str) -> None:
        ov_cb = self._overlay_cbs.pop(name, None)
        if ov_cb is not None:
            ov_cb[0].changed.disconnect(ov_cb[1])

    def visible_overlays(self) -> list:
        """The overlays drawn now, in drawing order (``z_order``: label maps, heatmaps, markers)."""
        if not self.overlays_shown:
            return []
        ovs = [ov for ov in self.overlays.values() if self.heatmaps_shown or getattr(ov, "kind", "") != "heatmap"]
        return sorted(ovs, key=lambda ov: getattr(ov, "z_order", 0))

    def compose_overlays(self, rgb: np.ndarray, plane: str, index: int | None = None) -> np.ndarray:
        """Blend every visible overlay into ``rgb`` ``(rows, cols, 3)`` uint8 for slice ``index``
        of ``plane`` (default: the shown one), in drawing order."""
        k = self.slice_index(plane) if index is None else int(index)
        for ov in self.visible_overlays():
            rgb = ov.compose(rgb, self.mappings[plane], k)
        return rgb

    def compose_slice(self, plane: str, index: int | None = None) -> np.ndarray:
        """Slice ``index`` of ``plane`` (default: the shown one) as the views draw it: windowed
        (DICOM PS3.3 C.11.2.1.2 linear VOI LUT, :func:`apply_window`), inverted for MONOCHROME1,
        every visible overlay blended in. Returns ``(rows, cols, 3)`` uint8, row 0 on top."""
        k = self.slice_index(plane) if index is None else int(index)
        gray = apply_window(self.mappings[plane].extract(self.volume.array, k), *self.window)
        if self.volume.info.invert_grayscale:
            gray = 255 - gray
        return self.compose_overlays(np.repeat(gray[:, :, None], 3, axis=2), plane, k)

    def display_key(self) -> tuple | None:
        """What the composed slices depend on besides the slice index and the pixel data:
        volume, window, shown flags and each visible overlay's ``display_key()``. ``None`` when a
        visible overlay has no ``display_key`` (its look cannot be told apart: do not cache).
        Label edits in place are not part of it: whoever edits asks the views to redraw, which
        drops what they kept (``SliceScene.update_image``)."""
        keys = []
        for ov in self.visible_overlays():
            fn = getattr(ov, "display_key", None)
            if fn is None:
                return None
            keys.append((id(ov), fn()))
        return (id(self.volume), self.window, bool(self.volume.info.invert_grayscale) if self.volume is not None else None,
                self.overlays_shown, self.heatmaps_shown, tuple(keys))

    def set_overlays_shown(self, on: bool) -> None:
        """Show or hide every overlay at once (the O key); the overlays are kept."""
        self.overlays_shown = bool(on)
        self.overlays_changed.emit()

    def set_heatmaps_shown(self, on: bool) -> None:
        """Show or hide heatmaps (Grad-CAM, uncertainty; the H key); the maps are kept."""
        self.heatmaps_shown = bool(on)
        self.overlays_changed.emit()

    # ------------------------------------------------------------------ window
    def set_window(self, center: float, width: float, preset: str = "") -> None:
        width = max(float(width), 1.0)
        self.window = (float(center), width)
        self.preset = preset
        self.window_changed.emit(*self.window)

    def apply_preset(self, name: str) -> None:
        """Apply a CT preset by name, or ``"auto"`` for the percentile window.

        Raises
        ------
        KeyError
            If the name is unknown (the message lists the presets).
        """
        if name == "auto":
            if self.volume is not None:
                self.set_window(*auto_window(self.volume), preset="auto")
            return
        presets = window_presets()
        if name not in presets:
            raise KeyError(f"unknown W/L preset {name!r}; known: {', '.join(sorted(presets))}, auto")
        self.set_window(*presets[name], preset=name)

    # ------------------------------------------------------------------ cursor
    def set_cursor(self, lps, source: str | None = None) -> None:
        """Move the linked cursor to an LPS point (mm), clamped to the volume's extent.

        ``source`` is the plane whose interaction moved it (a scroll or a click in that view),
        ``None`` for a jump from a panel; kept in :attr:`cursor_source` so linked views can tell
        "my slice follows a scroll elsewhere" from "jump here".
        """
        self.cursor_source = source
        lps = np.asarray(lps, dtype=float)
        if self.volume is not None:
            ijk = self.volume.lps_to_index(lps)
            nx, ny, nz = self.volume.size
            clamped = np.clip(ijk, 0, [nx - 1, ny - 1, nz - 1])
            if not np.allclose(clamped, ijk):
                lps = self.volume.index_to_lps(clamped)
        self.cursor = lps
        self.cursor_changed.emit(self.cursor)

    def lps_to_index(self, lps) -> np.ndarray:
        """``volume.lps_to_index`` with the inverse matrix cached per volume (called many times
        per slice step by every view)."""
        vol = self.volume
        cache = getattr(self, "_inv_cache", None)
        if cache is None or cache[0] is not vol:
            m = vol.direction * np.asarray(vol.spacing)[None, :]
            cache = (vol, np.linalg.inv(m).T, np.asarray(vol.origin, dtype=float))
            self._inv_cache = cache
        return (np.asarray(lps, dtype=float) - cache[2]) @ cache[1]

    def slice_index(self, plane: str) -> int:
        """Voxel slice index shown by ``plane`` (nearest to the cursor)."""
        m = self.mappings[plane]
        ijk = self.lps_to_index(self.cursor)
        return int(np.clip(np.rint(ijk[m.normal_axis]), 0, m.n_slices - 1))

    def scroll(self, plane: str, steps: int) -> None:
        """Move the cursor ``steps`` slices along ``plane``'s normal (clamped)."""
        m = self.mappings[plane]
        ijk = self.lps_to_index(self.cursor)
        ijk[m.normal_axis] = np.clip(np.rint(ijk[m.normal_axis]) + steps, 0, m.n_slices - 1)
        self.set_cursor(self.volume.index_to_lps(ijk), source=plane)

    def screen_to_lps(self, plane: str, row: float, col: float) -> np.ndarray:
        """LPS (mm) of screen pixel ``(row, col)`` on the current ``plane`` slice."""
        m = self.mappings[plane]
        return self.volume.index_to_lps(m.screen_to_index(self.slice_index(plane), row, col))

    def cursor_on_screen(self, plane: str) -> tuple[float, float]:
        """``(row, col)`` of the cursor in ``plane``'s slice image."""
        m = self.mappings[plane]
        _, r, c = m.index_to_screen(self.lps_to_index(self.cursor))
        return r, c

    def slice_image(self, plane: str) -> np.ndarray:
        """The current slice of ``plane`` as values, shape ``(rows, cols)``."""
        return self.mappings[plane].extract(self.volume.array, self.slice_index(plane))

    def slice_position_mm(self, plane: str) -> float:
        """Position of the current slice along its patient axis (LPS mm of the slice centre)."""
        m = self.mappings[plane]
        ijk = self.lps_to_index(self.cursor)
        ijk[m.normal_axis] = self.slice_index(plane)
        normal_p = _PLANE_AXES[plane][0]
        return float(self.volume.index_to_lps(ijk)[normal_p])

    def readout(self, lps) -> str:
        """Cursor readout text: value (HU for CT) and LPS coordinate."""
        v = self.volume.value_at_lps(lps)
        unit = " HU" if self.volume.info.modality == "CT" else ""
        val = "outside" if v is None else f"{v:.0f}{unit}" if float(v).is_integer() else f"{v:.2f}{unit}"
        x, y, z = lps
        return f"{val}   LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm"
