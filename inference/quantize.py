"""Static INT8 quantization (QDQ format) with ONNX Runtime from real calibration volumes.

Calibration tensors are patches of real CT, preprocessed exactly as at run time (resampled to
the model grid, normalised, 2.5-D stacked). Per-channel weights, QInt8 weights / QUInt8
activations, MinMax calibration: ONNX Runtime's recommended CPU recipe
(onnxruntime.ai/docs/performance/model-optimizations/quantization.html).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import SimpleITK as sitk

from radreview.studies.volume import Volume

from .inputs import context_stack
from .segment import normalize, to_model_grid

__all__ = ["calibration_patches", "quantize_static_int8", "edge_convs"]


def calibration_patches(volumes: Iterable[Volume], spec: dict, per_volume: int = 24, seed: int = 0) -> np.ndarray:
    """``(n, channels, h, w)`` float32 patches drawn from body-containing slices of each volume."""
    rng = np.random.default_rng(seed)
    ctx = int(spec.get("context_slices", 1))
    ph, pw = spec["patch_size"][-2:]
    out = []
    for vol in volumes:
        x = normalize(sitk.GetArrayFromImage(to_model_grid(vol, spec["spacing_mm"])), spec["normalization"])
        x = np.pad(x, ((0, 0), (0, max(0, ph - x.shape[1])), (0, max(0, pw - x.shape[2]))), constant_values=float(x.min()))
        z, y, w = x.shape
        for _ in range(per_volume):
            k = int(rng.integers(0, z))
            y0, x0 = int(rng.integers(0, y - ph + 1)), int(rng.integers(0, w - pw + 1))
            out.append(context_stack(x, k, ctx, (y0, x0, ph, pw)))
    return np.stack(out).astype(np.float32)


def edge_convs(fp32_path: str | Path) -> list[str]:
    """Names of the first and last Conv nodes (often kept in FP32: they see raw inputs/logits)."""
    import onnx

    convs = [n.name for n in onnx.load(str(fp32_path)).graph.node if n.op_type == "Conv"]
    return [convs[0], convs[-1]] if convs else []


def quantize_static_int8(fp32_path: str | Path, int8_path: str | Path, patches: np.ndarray, batch: int = 8,
                         method: str = "minmax", keep_fp32: list[str] | None = None) -> None:
    """Write a static QDQ INT8 model calibrated on ``patches`` (``(n, c, h, w)`` float32).

    ``method``: ``minmax``, ``percentile`` (99.999th) or ``entropy`` calibration; ``keep_fp32``:
    node names left unquantized.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(fp32_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: patches[i : i + batch]} for i in range(0, len(patches), batch)])

        def get_next(self):
            return next(self.it, None)

    pre = Path(int8_path).with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    cal = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}[method]
    quantize_static(str(pre), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cal,
                    nodes_to_exclude=list(keep_fp32 or []),
                    extra_options={"CalibPercentile": 99.999} if method == "percentile" else None)
    pre.unlink(missing_ok=True)
