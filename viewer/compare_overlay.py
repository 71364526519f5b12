"""Comparison overlays for the MPR views, GUI-free (numpy only).

* :class:`DisagreementOverlay` draws :func:`review.compare.disagreement_map` output: agreement,
  AI-only (false positive with respect to the reference) and reference-only (false negative)
  in three colours of the Okabe–Ito palette, which stay distinct for colour-blind readers.
* :class:`OutlinePairOverlay` draws the outlines of two label maps together: the AI (test)
  solid, the reference dashed, each in its label's colour.

Both follow :class:`viewer.overlay.LabelOverlay`'s contract: ``shape`` is the volume's
``(z, y, x)`` and ``compose(rgb, mapping, index)`` blends into the windowed RGB slice through
the same :class:`~viewer.model.PlaneMapping` as the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model import PlaneMapping
from .overlay import outline

__all__ = ["DisagreementOverlay", "OutlinePairOverlay", "DISAGREEMENT_CLASSES", "dashed"]

#: (value in the disagreement map, legend text, RGB) — Okabe & Ito (2008) colour-blind-safe colours.
DISAGREEMENT_CLASSES = (
    (1, "agreement", (240, 228, 66)),  # yellow
    (2, "AI only (false positive)", (213, 94, 0)),  # vermillion
    (3, "reference only (false negative)", (86, 180, 233)),  # sky blue
)


def dashed(edge: np.ndarray, period: int = 6) -> np.ndarray:
    """Keep the outline pixels on the "black" squares of a checkerboard of ``period // 2`` pixel
    blocks: any curve through it alternates on/off (a dashed line on the raster)."""
    rr, cc = np.indices(edge.shape)
    b = max(1, period // 2)
    return edge & (((rr // b + cc // b) % 2) == 0)


@dataclass
class DisagreementOverlay:
    """A disagreement map ``(z, y, x)`` uint8 (0 none, 1 both, 2 AI only, 3 reference only).

    Raises
    ------
    ValueError
        If ``dmap`` is not 3-D integer data.
    """

    dmap: np.ndarray
    opacity: float = 0.55
    visible: dict[int, bool] = field(default_factory=lambda: {1: True, 2: True, 3: True})

    def __post_init__(self) -> None:
        if self.dmap.ndim != 3 or not np.issubdtype(self.dmap.dtype, np.integer):
            raise ValueError(f"disagreement map must be 3-D integer (z, y, x), got {self.dmap.dtype} {self.dmap.shape}")
        self._lut = np.zeros((256, 3), np.float32)
        for v, _name, rgb in DISAGREEMENT_CLASSES:
            self._lut[v] = rgb

    @property
    def shape(self):
        return self.dmap.shape

    @staticmethod
    def legend() -> list[tuple[str, tuple[int, int, int]]]:
        """``[(text, rgb)]`` for the view legend, in map-value order."""
        return [(name, rgb) for _v, name, rgb in DISAGREEMENT_CLASSES]

    def compose(self, rgb: np.ndarray, mapping: PlaneMapping, index: int) -> np.ndarray:
        """Blend into ``rgb`` ``(rows, cols, 3)`` uint8; each class is filled and outlined."""
        d = np.asarray(mapping.extract(self.dmap, index))
        on = np.zeros(256, bool)
        for v, shown in self.visible.items():
            on[v] = shown
        show = on[d]
        if not show.any():
            return rgb
        edge = outline(d) & show
        out = rgb.astype(np.float32, copy=True)
        col = self._lut[d]
        a = float(np.clip(self.opacity, 0, 1))
        out[show] = out[show] * (1 - a) + col[show] * a
        out[edge] = col[edge]
        return out.astype(np.uint8)


@dataclass
class OutlinePairOverlay:
    """Outlines of the AI (``test``, solid) and ``reference`` (dashed) label maps together.

    ``test_colors`` / ``reference_colors`` map label values to RGB; a label without a colour is
    not drawn. Both arrays are ``(z, y, x)`` on the volume grid.
    """

    test: np.ndarray
    reference: np.ndarray
    test_colors: dict[int, tuple[int, int, int]]
    reference_colors: dict[int, tuple[int, int, int]]

    def __post_init__(self) -> None:
        if self.test.shape != self.reference.shape:
            raise ValueError(f"AI {self.test.shape} and reference {self.reference.shape} label maps differ in shape")
        self._luts = []
        for arr, colors in ((self.test, self.test_colors), (self.reference, self.reference_colors)):
            n = max(int(arr.max()) + 1 if arr.size else 1, max(colors, default=0) + 1)
            lut = np.zeros((n, 3), np.uint8)
            on = np.zeros(n, bool)
            for v, c in colors.items():
                if 0 < v < n:
                    lut[v], on[v] = c, True
            self._luts.append((lut, on))

    @property
    def shape(self):
        return self.test.shape

    def compose(self, rgb: np.ndarray, mapping: PlaneMapping, index: int) -> np.ndarray:
        out = rgb
        for k, arr in enumerate((self.test, self.reference)):
            lut, on = self._luts[k]
            lab = np.minimum(np.asarray(mapping.extract(arr, index)), len(lut) - 1)
            edge = outline(lab) & on[lab]
            if k == 1:
                edge = dashed(edge)
            if edge.any():
                if out is rgb:
                    out = rgb.copy()
                out[edge] = lut[lab][edge]
        return out
