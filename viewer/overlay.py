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

__all__ = ["LabelOverlay", "outline"]


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
    mappings: dict[str, PlaneMapping] = field(default_factory=dict)

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

    def slice_labels(self, mapping: PlaneMapping, index: int) -> np.ndarray:
        return mapping.extract(self.labels, index)

    def compose(self, rgb: np.ndarray, mapping: PlaneMapping, index: int) -> np.ndarray:
        """Blend the overlay into ``rgb`` ``(rows, cols, 3)`` uint8 for slice ``index`` of ``mapping``."""
        lab = self.slice_labels(mapping, index)
        lab = np.minimum(lab, len(self._lut) - 1)
        show = self._on[lab]
        if self.mode == "outline":
            show &= outline(lab)
            alpha = 1.0
        else:
            alpha = float(np.clip(self.opacity, 0, 1))
        if not show.any():
            return rgb
        out = rgb.astype(np.float32, copy=True)
        col = self._lut[lab]
        out[show] = out[show] * (1 - alpha) + col[show] * alpha
        return out.astype(np.uint8)
