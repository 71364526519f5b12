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


def fit_and_save(model: torch.nn.Module, batch_fn, loss_fn, args, out: Path, in_ch: int) -> None:
    """AdamW + one-cycle schedule for ``args.iters`` steps on ``batch_fn()`` batches, a JSON log line
    every 50 steps; then ``state_dict.pt``, ``fp32.onnx`` and ``train_log.json`` under ``out``."""
    import json
    import time

    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.iters, pct_start=0.1)
    t0, log = time.time(), []
    for it in range(1, args.iters + 1):
        model.train()
        x, y = batch_fn()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 50 == 0:
            log.append({"iter": it, "loss": round(float(loss.detach()), 4), "seconds": round(time.time() - t0, 1)})
            print(json.dumps(log[-1]), flush=True)
    model.eval()
    torch.save(model.state_dict(), out / "state_dict.pt")
    export_onnx(model, out / "fp32.onnx", in_ch)
    (out / "train_log.json").write_text(json.dumps({"iters": args.iters, "patch": args.patch, "batch": args.batch,
                                                     "seed": args.seed, "log": log}, indent=1))
    print("wrote", out)
