"""Label-map overlays for the MPR views, GUI-free (numpy only).

A :class:`LabelOverlay` holds a label map ``(z, y, x)`` on the displayed volume's exact grid
and how to draw it: per-label colour and visibility, fill opacity and fill/outline mode. Its
:meth:`compose` is the hook :class:`viewer.render.SliceScene` calls with the windowed RGB
slice, so the overlay is cut by the same :class:`~viewer.model.PlaneMapping` as the image and
cannot drift from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model import PLANES, PlaneMapping

__all__ = ["LabelOverlay", "HeatmapOverlay", "MarkerOverlay", "Marker", "outline", "heat_lut"]


def outline(mask2d: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2-D label slice: pixels whose 4-neighbour has another label."""
    m = mask2d
    edge = np.zeros(m.shape, dtype=bool)
    edge[:-1, :] |= m[:-1, :] != m[1:, :]
    edge[1:, :] |= m[1:, :] != m[:-1, :]
    edge[:, :-1] |= m[:, :-1] != m[:, 1:]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    return edge & (m > 0)


@dataclass
class LabelOverlay:
    """Label map + display state. ``labels`` shape must equal the volume array's ``(z, y, x)``.

    Raises
    ------
    ValueError
        If ``labels`` is not 3-D integer data.
    """

    labels: np.ndarray
    colors: dict[int, tuple[int, int, int]]
    names: dict[int, str] = field(default_factory=dict)
    opacity: float = 0.4
    mode: str = "fill"  # "fill" | "outline"
    visible: dict[int, bool] = field(default_factory=dict)
    flagged: set[int] = field(default_factory=set)  # drawn hatched + outlined: "Needs review"

    def __post_init__(self) -> None:
        if self.labels.ndim != 3 or not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(f"label map must be a 3-D integer array, got {self.labels.dtype} {self.labels.shape}")
        for idx in self.colors:
            self.visible.setdefault(idx, True)
        n = int(self.labels.max()) + 1 if self.labels.size else 1
        self._lut = np.zeros((max(n, max(self.colors, default=0) + 1), 3), dtype=np.float32)
        self._refresh_lut()

    def _refresh_lut(self) -> None:
        self._lut[:] = 0
        self._on = np.zeros(len(self._lut), dtype=bool)
        for idx, col in self.colors.items():
            if idx < len(self._lut) and idx > 0:
                self._lut[idx] = col
                self._on[idx] = self.visible.get(idx, True)

    def set_visible(self, index: int, on: bool) -> None:
        self.visible[index] = bool(on)
        self._refresh_lut()

    def set_color(self, index: int, rgb) -> None:
        self.colors[index] = tuple(int(c) for c in rgb)
        self._refresh_lut()

    @property
    def shape(self):
        return self.labels.shape

    def slice_labels(self, mapping: PlaneMapping, index: int) -> np.ndarray:
        return mapping.extract(self.labels, index)

    def compose(self, rgb: np.ndarray, mapping: PlaneMapping, index: int) -> np.ndarray:
        """Blend the overlay into ``rgb`` ``(rows, cols, 3)`` uint8 for slice ``index`` of ``mapping``."""
        lab = self.slice_labels(mapping, index)
        lab = np.minimum(lab, len(self._lut) - 1)
        show = self._on[lab]
        edge = outline(lab)
        if self.mode == "outline":
            show &= edge
            alpha = 1.0
        else:
            alpha = float(np.clip(self.opacity, 0, 1))
        if self.flagged:
            flag = np.isin(lab, list(self.flagged)) & self._on[lab]
            if flag.any():  # hatched fill + solid outline for findings that need review
                rr, cc = np.indices(lab.shape)
                hatch = ((rr + cc) % 6) < 2
                show = (show & ~flag) | (flag & (hatch | edge))
        if not show.any():
            return rgb
        out = rgb.astype(np.float32, copy=True)
        col = self._lut[lab]
        out[show] = out[show] * (1 - alpha) + col[show] * alpha
        if self.flagged:
            strong = show & np.isin(lab, list(self.flagged))
            out[strong] = out[strong] * 0.3 + col[strong] * 0.7
        return out.astype(np.uint8)


def heat_lut() -> np.ndarray:
    """256x3 uint8 colour table for heatmaps: dark blue -> cyan -> yellow -> red (jet-like)."""
    stops = [(0.0, (0, 0, 140)), (0.3, (0, 160, 255)), (0.55, (80, 255, 120)), (0.75, (255, 230, 0)), (1.0, (230, 0, 0))]
    x = np.linspace(0, 1, 256)
    out = np.zeros((256, 3), np.float32)
    for c in range(3):
        out[:, c] = np.interp(x, [s[0] for s in stops], [s[1][c] for s in stops])
    return out.astype(np.uint8)


@dataclass
class HeatmapOverlay:
    """A 0..1 map ``(z, y, x)`` on the volume grid drawn with a colour table above ``cutoff``."""

    heat: np.ndarray
    opacity: float = 0.5
    cutoff: float = 0.2

    def __post_init__(self) -> None:
        if self.heat.ndim != 3:
            raise ValueError(f"heatmap must be 3-D (z, y, x), got {self.heat.shape}")
        self._lut = heat_lut().astype(np.float32)

    @property
    def shape(self):
        return self.heat.shape

    def compose(self, rgb: np.ndarray, mapping: PlaneMapping, index: int) -> np.ndarray:
        h = np.asarray(mapping.extract(self.heat, index), dtype=np.float32)
        show = h >= self.cutoff
        if not show.any():
            return rgb
        col = self._lut[np.clip((h * 255).astype(int), 0, 255)]
        out = rgb.astype(np.float32, copy=True)
        a = float(np.clip(self.opacity, 0, 1))
        out[show] = out[show] * (1 - a) + col[show] * a
        return out.astype(np.uint8)


@dataclass
class Marker:
    """A candidate drawn as a ring: centre (continuous voxel index i, j, k), radius (mm)."""

    ijk: tuple[float, float, float]
    radius_mm: float
    color: tuple[int, int, int] = (255, 64, 64)
    flagged: bool = False
    name: str = ""


@dataclass
class MarkerOverlay:
    """Rings around candidate regions in every plane; flagged ones are dashed amber."""

    markers: list[Marker]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def compose(self, rgb: np.ndarray, mapping: PlaneMapping, index: int) -> np.ndarray:
        rows, cols = mapping.shape
        sr, sc = mapping.pixel_spacing
        sp = self.spacing
        out = rgb
        for m in self.markers:
            k, r, c = mapping.index_to_screen(np.asarray(m.ijk, float))
            dz = (index - k) * sp[mapping.normal_axis]
            radius = m.radius_mm + 3.0  # ring just outside the lesion
            if abs(dz) >= radius:
                continue
            rr = float(np.sqrt(radius**2 - dz**2))
            r0, r1 = int(max(0, r - rr / sr - 2)), int(min(rows, r + rr / sr + 3))
            c0, c1 = int(max(0, c - rr / sc - 2)), int(min(cols, c + rr / sc + 3))
            if r0 >= r1 or c0 >= c1:
                continue
            yy, xx = np.mgrid[r0:r1, c0:c1]
            d = np.hypot((yy - r) * sr, (xx - c) * sc)
            ring = np.abs(d - rr) <= max(sr, sc) * 0.75
            color = (255, 190, 0) if m.flagged else m.color
            if m.flagged:
                ang = np.arctan2(yy - r, xx - c)
                ring &= np.sin(ang * 12) > 0  # dashed
            if out is rgb:
                out = rgb.copy()
            out[r0:r1, c0:c1][ring] = color
        return out
