"""Train the candidate classifier of ``ct-nodule-2p5d`` (0.2, 0.3) on real LIDC-IDRI nodules.

Usage: ``python -m training.train_nodule [--iters 2000] [--out DIR] [--bank FILE.npz]``; 0.3.0 was
``--iters 8000 --extra-reps 4 --noise`` (hard negatives on by default).

Data (training split only, ``training/nodule_data.py``): the training LIDC patients' nodules
pasted into the training background lungs (C slices 0-79, B, both also re-sliced to 5 and
8 mm), through the shipped preprocessing (1 mm grid, closed lungs, the candidate screen):

* **scan samples**: each background twice, with 5 pasted nodules each; every candidate of the screen
  is a sample, labelled positive when it hits a pasted solid/part-solid non-calcified nodule
  >= 6 mm (``nodule_data.match``), negative otherwise (vessels, pleura, small and calcified
  nodules, ground glass);
* **nodule samples**: every training nodule pasted 3 more times at random points of random
  backgrounds (a 64 mm box around the point), centred on the pasted centroid.

A sample is a 40 mm cube at 1 mm; training draws a random 32 mm sub-cube (centre jitter
+-4 mm), random flips along x/y/z and x/y transposition, a small HU gain/offset, and feeds the
nine planes (``inference.classify.views_of_cube``) to ``TriPlanarNet``. Loss: cross-entropy of
the question (positives drawn 40 % of the time) + 0.5 x cross-entropy of the nodule type on
samples that are nodules (LIDC texture: solid / part-solid / ground glass). AdamW, one-cycle.

0.3 adds: scan samples of the thick-slice backgrounds at other slab phases
(``nodule_data.TRAIN_BGS_EXTRA``, ``--extra-reps`` cases each, their own seeded generator);
hard-negative mining (every ``--hard-every`` iterations from ``--hard-from``, every negative is
re-scored at its centre views and ``--hard-frac`` of each batch's negatives are drawn from the
highest-scoring quarter: bootstrapping, Sung & Poggio 1998; OHEM, Shrivastava et al., CVPR 2016);
``--noise``: Gaussian noise of a random 5-40 HU SD on half the samples.
Writes ``state_dict.pt``, ``fp32.onnx``, ``train_log.json`` and the sample bank summary.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from radreview.explain.nets import TriPlanarNet
from radreview.inference.classify import NODULE_TYPES, detect_candidates, views_of_cube
from radreview.inference.lungs import closed_lung_mask
from radreview.inference.segment import normalize, to_model_grid
from radreview.studies import Volume
from radreview.studies.paste import paste_nodule
from training.nodule_data import TRAIN_BGS, TRAIN_BGS_EXTRA, background, make_case, match, nodules, paste_points

SPACING = (1.0, 1.0, 1.0)
PATCH = 32
CUBE = 40
OFFSETS = (-2, 0, 2)
NORM = {"method": "hu_clip_scale", "clip": [-1000, 400], "offset": -300.0, "scale": 1 / 700}
TYPE_INDEX = {t: i for i, t in enumerate(NODULE_TYPES)}


def cube_at(hu: np.ndarray, c_zyx, size: int = CUBE, fill: float = -1024.0) -> np.ndarray:
    """``(size,)*3`` int16 cube of ``hu`` ``(z, y, x)`` centred on voxel ``c_zyx`` (padded with ``fill``)."""
    c = np.rint(np.asarray(c_zyx, float)).astype(int)
    h = size // 2
    out = np.full((size,) * 3, fill, np.float32)
    a, b = c - h, c - h + size
    sa, sb = np.maximum(a, 0), np.minimum(b, hu.shape)
    if np.all(sb > sa):
        d = sa - a
        out[d[0]:d[0] + sb[0] - sa[0], d[1]:d[1] + sb[1] - sa[1], d[2]:d[2] + sb[2] - sa[2]] = hu[sa[0]:sb[0], sa[1]:sb[1], sa[2]:sb[2]]
    return np.rint(out).astype(np.int16)


def candidates_of(vol: Volume, crop: bool):
    """``(model-grid HU, grid, comps)`` through the shipped screen."""
    g = to_model_grid(vol, SPACING)
    hu = sitk.GetArrayFromImage(g)
    lungs = closed_lung_mask(hu, g.GetSpacing(), crop=crop)
    _, comps = detect_candidates(hu, g.GetSpacing(), lungs)
    return hu, g, comps


def scan_samples(bg: str, nods, rng):
    """Cubes, labels and types of every screen candidate of one pasted case; plus recall counts."""
    case = make_case(bg, nods, rng, min_sep_mm=30.0)
    hu, g, comps = candidates_of(case.volume, case.crop)
    cubes, ys, ts, hit = [], [], [], set()
    for c in comps:
        z, y, x = c["centroid_zyx"]
        lps = g.TransformContinuousIndexToPhysicalPoint([float(x), float(y), float(z)])
        i = match(lps, case.truth)
        t = case.truth[i] if i is not None else None
        cubes.append(cube_at(hu, c["centroid_zyx"]))
        ys.append(int(bool(t and t["qualifies"])))
        ts.append(TYPE_INDEX[t["nodule_type"]] if t else -1)
        if t is not None:
            hit.add(i)
    q = [i for i, t in enumerate(case.truth) if t["qualifies"]]
    return cubes, ys, ts, (len(set(q) & hit), len(q)), len(comps)


def nodule_sample(nod, bg: str, rng, half_mm: float = 32.0):
    """One cube of ``nod`` pasted at a random point of ``bg`` (a box around it only)."""
    vol, _ = background(bg)
    pts = paste_points(bg)
    p = pts[rng.integers(len(pts))]
    ijk = np.rint(vol.lps_to_index(p)).astype(int)
    h = np.ceil(half_mm / np.asarray(vol.spacing)).astype(int)
    lo = np.maximum(ijk - h, 0)
    hi = np.minimum(ijk + h + 1, vol.size)
    sub = Volume(np.ascontiguousarray(vol.array[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]), vol.spacing,
                 tuple(vol.index_to_lps(lo.astype(float))), vol.direction, vol.info)
    arr, _ = paste_nodule(sub, nod.image, nod.mask, p)
    sub = Volume(arr, sub.spacing, sub.origin, sub.direction, sub.info)
    g = to_model_grid(sub, SPACING)
    hu = sitk.GetArrayFromImage(g)
    c = np.asarray(g.TransformPhysicalPointToContinuousIndex([float(v) for v in p]))[::-1]
    return cube_at(hu, c)


def build_bank(rng, scan_reps: int = 3, per_nodule: int = 4, log=print, bgs=TRAIN_BGS):
    """The training sample bank: ``(cubes (n, 40, 40, 40) int16, y (n,), type (n,), stats)``:
    ``scan_reps`` pasted cases per background of ``bgs`` (every screen candidate a sample) and
    ``per_nodule`` pasted cubes of every training nodule (none when 0)."""
    train = nodules("train")
    cubes, ys, ts = [], [], []
    rec, ncand = [0, 0], []
    t0 = time.time()
    for bg in bgs:
        for _ in range(scan_reps):
            pick = [train[i] for i in rng.choice(len(train), 5, replace=False)]
            c, y, t, (h, n), k = scan_samples(bg, pick, rng)
            cubes += c
            ys += y
            ts += t
            rec[0] += h
            rec[1] += n
            ncand.append(k)
        log(json.dumps({"bank": bg, "samples": len(cubes), "seconds": round(time.time() - t0, 1)}))
    for j, nod in enumerate(train):
        for _ in range(per_nodule):
            cubes.append(nodule_sample(nod, TRAIN_BGS[int(rng.integers(len(TRAIN_BGS)))], rng))
            ys.append(int(nod.qualifies))
            ts.append(TYPE_INDEX[nod.nodule_type])
        if j % 100 == 0:
            log(json.dumps({"bank": "nodules", "done": j, "samples": len(cubes), "seconds": round(time.time() - t0, 1)}))
    stats = {"samples": len(cubes), "positives": int(np.sum(ys)), "nodule_samples": int(np.sum(np.asarray(ts) >= 0)),
             "train_nodules": len(train), "train_qualifying": sum(n.qualifies for n in train),
             "screen_recall_on_training_cases": [rec[0], rec[1]], "candidates_per_case_mean": float(np.mean(ncand)),
             "seconds": round(time.time() - t0, 1)}
    return np.stack(cubes), np.asarray(ys, np.int64), np.asarray(ts, np.int64), stats


def augment_views(cube: np.ndarray, rng, train: bool = True, noise: bool = False) -> np.ndarray:
    """Nine normalised planes ``(9, 32, 32)`` from a 40 mm cube (random sub-cube/flips when
    training; with ``noise``, half the time Gaussian noise of a random 5-40 HU SD, as 0.3 trains)."""
    m = (CUBE - PATCH) // 2
    if train:
        o = rng.integers(0, 2 * m + 1, size=3)
        c = cube[o[0]:o[0] + PATCH, o[1]:o[1] + PATCH, o[2]:o[2] + PATCH].astype(np.float32)
        for ax in range(3):
            if rng.random() < 0.5:
                c = c[(slice(None),) * ax + (slice(None, None, -1),)]
        if rng.random() < 0.5:
            c = c.transpose(0, 2, 1)
        c = c * (1 + rng.uniform(-0.05, 0.05)) + rng.uniform(-20, 20)
        if noise and rng.random() < 0.5:  # sharp kernels (B70f) are noisier than the training scans
            c = c + rng.normal(0.0, rng.uniform(5.0, 40.0), c.shape).astype(np.float32)
    else:
        c = cube[m:m + PATCH, m:m + PATCH, m:m + PATCH].astype(np.float32)
    return normalize(views_of_cube(np.ascontiguousarray(c), OFFSETS), NORM)


def export_onnx(model: torch.nn.Module, path: Path) -> None:
    """FP32 ONNX (opset 17) with dynamic batch: ``image`` ``(n, 9, 32, 32)`` -> ``logits`` ``(n, 5)``."""
    model.eval()
    torch.onnx.export(model, torch.zeros(2, 3 * len(OFFSETS), PATCH, PATCH), path, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, opset_version=17,
                      dynamo=False)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scan-reps", type=int, default=2)
    ap.add_argument("--per-nodule", type=int, default=3)
    ap.add_argument("--out", default="resources/models/ct-nodule-2p5d")
    ap.add_argument("--bank", default="", help="cache the sample bank in this .npz (reused when present)")
    ap.add_argument("--extra-bank", default="", help="0.3: cache of the extra thick-slice scan samples (TRAIN_BGS_EXTRA)")
    ap.add_argument("--extra-reps", type=int, default=2, help="pasted cases per extra background (0: none, as 0.2)")
    ap.add_argument("--hard-every", type=int, default=100, help="re-score every negative each N iterations (0: off, as 0.2)")
    ap.add_argument("--hard-from", type=int, default=200, help="first iteration that samples hard negatives")
    ap.add_argument("--hard-frac", type=float, default=0.5, help="share of a batch's negatives drawn from the hardest quarter")
    ap.add_argument("--noise", action="store_true", help="Gaussian noise augmentation (0.3)")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_lines = []

    def log(s):
        print(s, flush=True)
        log_lines.append(s)

    bank = Path(args.bank) if args.bank else None
    if bank is not None and bank.is_file():
        z = np.load(bank, allow_pickle=False)
        cubes, y, types, stats = z["cubes"], z["y"], z["types"], json.loads(str(z["stats"]))
    else:
        cubes, y, types, stats = build_bank(rng, args.scan_reps, args.per_nodule, log)
        if bank is not None:
            np.savez(bank, cubes=cubes, y=y, types=types, stats=json.dumps(stats))
    log(json.dumps(stats))
    if args.extra_reps:  # its own seeded generator: the same bank whether cached or built
        xb = Path(args.extra_bank) if args.extra_bank else None
        if xb is not None and xb.is_file():
            z = np.load(xb, allow_pickle=False)
            xc, xy, xt, xs = z["cubes"], z["y"], z["types"], json.loads(str(z["stats"]))
        else:
            xc, xy, xt, xs = build_bank(np.random.default_rng(args.seed + 1000), args.extra_reps, 0, log, TRAIN_BGS_EXTRA)
            if xb is not None:
                np.savez(xb, cubes=xc, y=xy, types=xt, stats=json.dumps(xs))
        xs["backgrounds"] = TRAIN_BGS_EXTRA
        log(json.dumps({"extra": xs}))
        cubes, y, types = np.concatenate([cubes, xc]), np.concatenate([y, xy]), np.concatenate([types, xt])
        stats = {**stats, "extra_scan_samples": xs, "samples_total": int(len(y)), "positives_total": int(y.sum())}
    rng = np.random.default_rng(args.seed + 2000)  # training draws: independent of how the bank was obtained
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    hard = neg
    neg_views = None
    model = TriPlanarNet(in_ch=3 * len(OFFSETS), views=3, base=16, n_types=len(NODULE_TYPES))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.iters, pct_start=0.1)
    t0, hist = time.time(), []
    for it in range(1, args.iters + 1):
        model.train()
        npos = int(round(args.batch * 0.4))
        nneg = args.batch - npos
        if args.hard_every and it >= args.hard_from and (it - args.hard_from) % args.hard_every == 0:
            # hard-negative mining (bootstrapping, Sung & Poggio 1998; OHEM, Shrivastava et al. 2016):
            # re-score every negative at its centre views and sample from the hardest quarter
            if neg_views is None:
                neg_views = torch.from_numpy(np.stack([augment_views(cubes[i], rng, train=False) for i in neg]))
            model.eval()
            with torch.no_grad():
                s_neg = torch.cat([F.softmax(model(neg_views[j:j + 512])[:, :2], 1)[:, 1] for j in range(0, len(neg), 512)]).numpy()
            hard = neg[np.argsort(-s_neg)[: max(1, len(neg) // 4)]]
            model.train()
            hist.append({"iter": it, "hard_negatives_p_median": round(float(np.median(np.sort(s_neg)[-len(hard):])), 4),
                         "negatives_above_0.5": int((s_neg >= 0.5).sum())})
            print(json.dumps(hist[-1]), flush=True)
        nhard = int(round(nneg * args.hard_frac)) if args.hard_every and it >= args.hard_from else 0
        idx = np.concatenate([rng.choice(pos, npos), rng.choice(hard, nhard), rng.choice(neg, nneg - nhard)])
        x = torch.from_numpy(np.stack([augment_views(cubes[i], rng, noise=args.noise) for i in idx]))
        yq = torch.from_numpy(y[idx])
        yt = torch.from_numpy(types[idx])
        logits = model(x)
        loss = F.cross_entropy(logits[:, :2], yq)
        if (yt >= 0).any():
            loss = loss + 0.5 * F.cross_entropy(logits[:, 2:], yt, ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 100 == 0:
            hist.append({"iter": it, "loss": round(float(loss.detach()), 4), "seconds": round(time.time() - t0, 1)})
            print(json.dumps(hist[-1]), flush=True)
    model.eval()
    torch.save(model.state_dict(), out / "state_dict.pt")
    export_onnx(model, out / "fp32.onnx")
    (out / "train_log.json").write_text(json.dumps({"iters": args.iters, "batch": args.batch, "seed": args.seed,
                                                     "hard_negatives": {"every": args.hard_every, "from": args.hard_from,
                                                                        "fraction": args.hard_frac} if args.hard_every else None,
                                                     "noise": args.noise, "bank": stats, "log": hist}, indent=1))
    print("wrote", out, flush=True)


if __name__ == "__main__":
    main()
