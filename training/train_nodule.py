"""Train the nodule screen of ``ct-nodule-2p5d`` on real CT lungs with synthetic nodules.

Usage: ``python -m training.train_nodule [--iters 1500]``

Backgrounds (training only): the chest CTA crop (patient C) and patient B's lung bases
(ct-abdomen-nifti). The chest-tumour patient (D, ct-chest-tumor) is never used here: it is
the held-out background and holds the real adenocarcinoma. Each sample inserts a nodule
(60 %), a vessel-like distractor (20 %) or nothing (20 %) at a random lung position
(training/nodules.py) and trains a 2.5-D U-Net to segment the nodule on the middle slice.
Run 2 (shipped) samples 50 % nodules / 25 % distractors / 25 % nothing and, half of the time,
averages 2-3 neighbouring slices to mimic thick (5-7.5 mm) reconstructions; run 1 used
60/20/20 and no thick slices (its held-out figures are kept in the model card).
Writes ``state_dict.pt`` and ``fp32.onnx`` under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from radreview.explain.nets import UNet2p5D
from training.common import fit_and_save
from radreview.inference.segment import normalize, to_model_grid
from radreview.studies import load_image_file
from training.nodules import insert_nodule, insert_vessel, lung_mask, random_nodule_params
from training.seg_data import DATA

SPACING = (1.0, 1.0, 2.5)  # (x, y, z) mm
NORM = {"method": "hu_clip_scale", "clip": [-1024, 500], "offset": -262.0, "scale": 0.002}
CTX = 1


def background(name: str):
    """``(hu (z, y, x) on the model grid, lung mask, grid image)`` of a training/eval background."""
    if name == "C":
        vol = load_image_file(DATA / "ct-chest-crops/chest_crop_1.nii.gz", modality="CT")
        crop = True
    elif name == "B":
        vol = load_image_file(DATA / "ct-abdomen-nifti/ct.nii.gz", modality="CT")
        crop = False
    else:
        raise KeyError(name)
    grid = to_model_grid(vol, SPACING)
    hu = sitk.GetArrayFromImage(grid)
    return hu, lung_mask(hu, SPACING, crop=crop), grid


def make_case(hu, lungs, rng, block_xy=112, block_z=9, kind=None, params=None, center=None):
    """A block around a lung position with an insertion; returns (block HU, nodule mask, kind, params, centre)."""
    Z, Y, X = hu.shape
    if center is None:
        pts = np.argwhere(lungs)
        center = pts[rng.integers(len(pts))]
    cz, cy, cx = (int(v) for v in center)
    hz, hy = block_z // 2, block_xy // 2
    zs = np.clip(np.arange(cz - hz, cz + hz + 1), 0, Z - 1)
    ys = np.clip(np.arange(cy - hy, cy + hy), 0, Y - 1)
    xs = np.clip(np.arange(cx - hy, cx + hy), 0, X - 1)
    block = hu[np.ix_(zs, ys, xs)].astype(np.float32)
    c = (hz, hy, hy)
    sp_zyx = (SPACING[2], SPACING[1], SPACING[0])
    kind = kind or rng.choice(["nodule", "vessel", "none"], p=[0.6, 0.2, 0.2])
    mask = np.zeros(block.shape, bool)
    if kind == "nodule":
        params = params or random_nodule_params(rng)
        mask = insert_nodule(block, c, sp_zyx, params, rng)
    elif kind == "vessel":
        insert_vessel(block, c, sp_zyx, rng)
    return block, mask, kind, params, c


def thick_slices(block: np.ndarray, n: int) -> np.ndarray:
    """Average ``n`` neighbouring slices (a box filter along z): a thicker reconstruction."""
    pad = np.pad(block, ((n // 2, n - 1 - n // 2), (0, 0), (0, 0)), mode="edge")
    c = np.cumsum(pad, axis=0, dtype=np.float64)
    c = np.concatenate([np.zeros((1, *block.shape[1:])), c], axis=0)
    return ((c[n:] - c[:-n]) / n).astype(np.float32)


def sample(bgs, rng, patch, batch):
    xs, ys = [], []
    names = list(bgs)
    for _ in range(batch):
        hu, lungs, _ = bgs[names[rng.choice(len(names), p=[0.7, 0.3])]]
        block, mask, kind, params, c = make_case(hu, lungs, rng, kind=rng.choice(["nodule", "vessel", "none"], p=[0.5, 0.25, 0.25]))
        if rng.random() < 0.5:  # thick-slice reconstruction (2-3 slices = 5-7.5 mm): the held-out gap
            block = thick_slices(block, int(rng.integers(2, 4)))
        # slice through the lesion (any of its slices) or anywhere
        zs = np.flatnonzero(mask.any(axis=(1, 2))) if mask.any() else np.arange(1, block.shape[0] - 1)
        k = int(np.clip(rng.choice(zs), 1, block.shape[0] - 2))
        off = rng.integers(-(block.shape[1] - patch) // 2, (block.shape[1] - patch) // 2 + 1, size=2)
        y0 = int(np.clip((block.shape[1] - patch) // 2 + off[0], 0, block.shape[1] - patch))
        x0 = int(np.clip((block.shape[2] - patch) // 2 + off[1], 0, block.shape[2] - patch))
        x = normalize(block[k - 1 : k + 2, y0 : y0 + patch, x0 : x0 + patch], NORM)
        x = x * (1 + rng.uniform(-0.08, 0.08)) + rng.uniform(-0.04, 0.04)
        xs.append(x)
        ys.append(mask[k, y0 : y0 + patch, x0 : x0 + patch].astype(np.int64))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="resources/models/ct-nodule-2p5d")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bgs = {n: background(n) for n in ("C", "B")}
    model = UNet2p5D(in_ch=2 * CTX + 1, n_cls=2, base=16, depth=3)
    weight = torch.tensor([1.0, 4.0])

    def loss_fn(logits, y):
        p = logits.softmax(1)[:, 1]
        yt = (y == 1).float()
        dice = 1 - (2 * (p * yt).sum() + 1) / (p.sum() + yt.sum() + 1)
        return F.cross_entropy(logits, y, weight=weight) + dice

    fit_and_save(model, lambda: sample(bgs, rng, args.patch, args.batch), loss_fn, args, out, 2 * CTX + 1)


if __name__ == "__main__":
    main()
