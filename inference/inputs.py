"""The 2.5-D input builder, shared by the runtime, INT8 calibration, Grad-CAM and training.

A 2.5-D network sees one axial slice of the model grid together with ``context`` neighbouring
slices on each side as its ``2 * context + 1`` input channels (ordered inferior to superior
along the model grid's +S axis). At the ends of the volume the slice index is clamped, so the
first and last slices repeat (edge padding along z). Every place that feeds a 2.5-D model goes
through :func:`context_stack`, so training, calibration, inference and explanation see the same
tensors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["context_indices", "context_stack"]


def context_indices(k: int, context: int, n: int) -> np.ndarray:
    """Slice indices ``(2 * context + 1,)`` around slice ``k`` of ``n``, clamped to ``[0, n - 1]``."""
    return np.clip(np.arange(k - context, k + context + 1), 0, n - 1)


def context_stack(x: np.ndarray, slices, context: int, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """2.5-D inputs of the model-grid array ``x`` ``(z, y, x)`` for axial ``slices``.

    Parameters
    ----------
    x : numpy.ndarray
        ``(z, y, x)`` normalised model-grid array.
    slices : int or sequence of int
        One slice index, or several.
    context : int
        Neighbouring slices each side (the card's ``input.context_slices``).
    window : (y0, x0, h, w), optional
        In-plane crop (a sliding-window tile); the whole slice when ``None``.

    Returns
    -------
    numpy.ndarray
        ``(2 * context + 1, h, w)`` for one slice, ``(len(slices), 2 * context + 1, h, w)`` for
        several; same dtype as ``x``.
    """
    ys = xs = slice(None)
    if window is not None:
        y0, x0, h, w = window
        ys, xs = slice(y0, y0 + h), slice(x0, x0 + w)
    if np.ndim(slices) == 0:
        return x[context_indices(int(slices), context, x.shape[0]), ys, xs]
    return np.stack([x[context_indices(int(k), context, x.shape[0]), ys, xs] for k in slices])
