"""Synthetic solid pulmonary nodules inserted into real CT lungs (training and evaluation data).

Real nodule labels are not available here, so lesions are simulated — the model card says so.

Generator (all sizes in mm, on an anisotropic voxel grid ``(z, y, x)`` with spacing ``sp``):

* **shape**: a sphere of radius ``R = d / 2`` (``d`` log-uniform in 3-50 mm) whose radius varies
  with direction ``u``: ``R(u) = R (1 + sum_j a_j max(0, u.v_j)^4)`` with 0-4 random lobes
  (``a_j`` up to 0.35: spherical -> lobulated), plus 0-8 spicules for "spiculated" lesions: thin
  cylinders (radius 0.5-1 mm) from the surface outwards, 0.3-1.2 ``R`` long;
* **attenuation**: soft tissue, 20-60 HU (solid nodules), with 8 HU Gaussian texture;
* **partial volume**: the signed distance ``s`` to the surface gives the voxel fraction
  ``a = clip(0.5 - s / h, 0, 1)`` with ``h`` the mean voxel size, so edge voxels mix lesion
  and lung HU linearly (a first-order partial-volume model);
* **placement**: the centre lies in lung parenchyma (HU rule: HU < -400 inside the body,
  components >= 10 mL), at least ``R/2`` deep;
* **negatives**: no insertion, or a vessel-like distractor: a gently curved tube of radius
  0.8-2.5 mm, 20-60 mm long, 20-60 HU (non-contrast vessel) — elongated, unlike a nodule.

The target is the lesion mask ``a >= 0.5``. A case is *positive* for the product's question when
the inserted nodule's diameter ``d`` is at least 6 mm (the Lung-RADS size threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radreview.inference.lungs import lung_mask  # noqa: F401  (the runtime's rule, re-exported)

__all__ = ["Insertion", "lung_mask", "insert_nodule", "insert_vessel", "random_nodule_params"]


@dataclass
class Insertion:
    kind: str  # "nodule" | "vessel" | "none"
    center_zyx: tuple[int, int, int]
    diameter_mm: float
    mask: np.ndarray | None  # boolean, same shape as the block


def random_nodule_params(rng: np.random.Generator, d_range=(3.0, 50.0)) -> dict:
    d = float(np.exp(rng.uniform(np.log(d_range[0]), np.log(d_range[1]))))
    style = rng.choice(["spherical", "lobulated", "spiculated"], p=[0.35, 0.4, 0.25])
    return {"diameter_mm": d, "style": str(style), "hu": float(rng.uniform(20, 60))}


def _unit(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def insert_nodule(block: np.ndarray, center_zyx, spacing_zyx, params: dict, rng: np.random.Generator) -> np.ndarray:
    """Insert a nodule into ``block`` (HU, ``(z, y, x)``, modified in place); returns its mask."""
    sp = np.asarray(spacing_zyx, float)
    R = params["diameter_mm"] / 2
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(block.shape, center_zyx, sp)], indexing="ij")
    pos = np.stack([zz, yy, xx], axis=-1)
    r = np.linalg.norm(pos, axis=-1)
    u = pos / np.maximum(r, 1e-6)[..., None]
    radius = np.full(r.shape, R)
    if params["style"] in ("lobulated", "spiculated"):
        for v in _unit(rng, int(rng.integers(1, 5))):
            radius = radius + R * rng.uniform(0.1, 0.35) * np.clip(u @ v, 0, None) ** 4
    sdf = r - radius
    if params["style"] == "spiculated":
        for v in _unit(rng, int(rng.integers(3, 9))):
            length = R * rng.uniform(1.3, 2.2)
            w = rng.uniform(0.5, 1.0)
            t = np.clip(pos @ v, 0, length)
            dist = np.linalg.norm(pos - t[..., None] * v, axis=-1) - w * (1 - t / length) - 0.2
            sdf = np.minimum(sdf, dist)
    h = float(sp.mean())
    a = np.clip(0.5 - sdf / h, 0.0, 1.0)
    lesion = params["hu"] + rng.normal(0, 8, block.shape)
    block[...] = block * (1 - a) + lesion * a
    return a >= 0.5


def insert_vessel(block: np.ndarray, center_zyx, spacing_zyx, rng: np.random.Generator) -> np.ndarray:
    """Insert a curved vessel-like tube through ``center_zyx``; returns its mask (not a target)."""
    sp = np.asarray(spacing_zyx, float)
    length = rng.uniform(20, 60)
    radius = rng.uniform(0.8, 2.5)
    d0 = _unit(rng, 1)[0]
    bend = _unit(rng, 1)[0] * rng.uniform(0.0, 0.4)
    ts = np.linspace(-length / 2, length / 2, 40)
    pts = np.array([t * d0 + (t / length) ** 2 * length * bend for t in ts])
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(block.shape, center_zyx, sp)], indexing="ij")
    pos = np.stack([zz, yy, xx], axis=-1)
    dist = np.full(block.shape, np.inf)
    for p in pts:
        dist = np.minimum(dist, np.linalg.norm(pos - p, axis=-1))
    a = np.clip(0.5 - (dist - radius) / float(sp.mean()), 0, 1)
    block[...] = block * (1 - a) + (rng.uniform(20, 60) + rng.normal(0, 8, block.shape)) * a
    return a >= 0.5
