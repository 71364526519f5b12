"""Pieces shared by the training scripts."""

from __future__ import annotations

from pathlib import Path

import torch


def export_onnx(model: torch.nn.Module, path: Path, in_ch: int) -> None:
    """FP32 ONNX (opset 17, TorchScript exporter) with dynamic batch and spatial size; input
    ``image`` ``(n, in_ch, h, w)``, output ``logits``."""
    model.eval()
    torch.onnx.export(model, torch.zeros(1, in_ch, 128, 128), path, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
                      opset_version=17, dynamo=False)
