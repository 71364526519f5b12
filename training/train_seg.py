"""Train the shipped CT segmentation model ``ct-organs-2p5d`` (2.5-D U-Net) on the shared data.

Usage: ``python -m training.train_seg [--iters 1200] [--out resources/models/ct-organs-2p5d]``

Training volumes: abdB (patient B, 30 slices with TotalSegmentator labels), head, chest crop;
patient A (the DICOM series) is held out and never sampled here (see training/seg_data.py).
Writes ``state_dict.pt`` and ``fp32.onnx``; ``training.package_seg`` then quantizes,
evaluates on the held-out volume and writes ``model.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from radreview.explain.nets import UNet2p5D
from radreview.inference.inputs import context_stack
from training.common import fit_and_save
from training.seg_data import CLASSES, IGNORE, to_grid, volumes

SPACING = (2.0, 2.0, 3.0)
NORM = {"method": "hu_clip_scale", "clip": [-1024, 1500], "offset": 0.0, "scale": 0.001}
CTX = 1
TRAIN = {"abdB": 0.55, "head": 0.15, "chest": 0.30}


def prepare():
    data = {}
    for name, (vol, target) in volumes().items():
        if name not in TRAIN:
            continue  # abdA is held out
        img, lab = to_grid(vol, target, SPACING)
        x = ((np.clip(img, *NORM["clip"]) - NORM["offset"]) * NORM["scale"]).astype(np.float32)
        data[name] = (x, lab)
    return data


def sample(data, rng, patch, batch, zoom=(0.8, 1.25)):
    """A batch of 2.5-D crops. Augmentation: in-plane scale (patients differ in size), +-10 %
    contrast and +-50 HU shift (contrast phases differ); never left-right flips (laterality)."""
    names = list(TRAIN)
    probs = np.array([TRAIN[n] for n in names])
    xs, ys = [], []
    out_patch = patch
    for _ in range(batch):
        s = float(np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1]))))
        patch = int(round(out_patch * s))
        x, lab = data[names[rng.choice(len(names), p=probs / probs.sum())]]
        z, h, w = x.shape
        organ = np.argwhere((lab >= 2) & (lab <= 6))
        if organ.size and rng.random() < 0.6:
            k, cy, cx = organ[rng.integers(len(organ))]
        else:
            k, cy, cx = rng.integers(z), rng.integers(h), rng.integers(w)
        y0 = int(np.clip(cy - patch // 2 + rng.integers(-patch // 4, patch // 4 + 1), 0, max(h - patch, 0)))
        x0 = int(np.clip(cx - patch // 2 + rng.integers(-patch // 4, patch // 4 + 1), 0, max(w - patch, 0)))
        xp = np.full((2 * CTX + 1, patch, patch), x.min(), np.float32)
        yp = np.zeros((patch, patch), np.int64)
        sub = context_stack(x, int(k), CTX, (y0, x0, patch, patch))
        xp[:, : sub.shape[1], : sub.shape[2]] = sub
        ls = lab[k, y0 : y0 + patch, x0 : x0 + patch]
        yp[: ls.shape[0], : ls.shape[1]] = ls
        xt = torch.from_numpy(xp)[None]
        yt = torch.from_numpy(yp)[None, None].float()
        if patch != out_patch:
            xt = F.interpolate(xt, size=(out_patch, out_patch), mode="bilinear", align_corners=False)
            yt = F.interpolate(yt, size=(out_patch, out_patch), mode="nearest")
        xt = xt * (1 + rng.uniform(-0.10, 0.10)) + rng.uniform(-0.05, 0.05)
        xs.append(xt[0])
        ys.append(yt[0, 0].long())
    return torch.stack(xs), torch.stack(ys)


def soft_dice_loss(logits, target, n_cls):
    valid = (target != IGNORE).unsqueeze(1)
    p = logits.softmax(1) * valid
    t = F.one_hot(target.clamp(max=n_cls - 1) * (target != IGNORE), n_cls).permute(0, 3, 1, 2) * valid
    inter = (p * t).sum((0, 2, 3))
    denom = p.sum((0, 2, 3)) + t.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (denom + 1))[1:].mean()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="resources/models/ct-organs-2p5d")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare()
    n_cls = len(CLASSES)
    model = UNet2p5D(in_ch=2 * CTX + 1, n_cls=n_cls, base=16, depth=3)
    fit_and_save(model, lambda: sample(data, rng, args.patch, args.batch),
                 lambda logits, y: F.cross_entropy(logits, y, ignore_index=IGNORE) + soft_dice_loss(logits, y, n_cls),
                 args, out, 2 * CTX + 1)


if __name__ == "__main__":
    main()
