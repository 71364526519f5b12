"""Grad-CAM on the PyTorch twin of a shipped model (captum), mapped onto the study grid.

Grad-CAM (Selvaraju et al., ICCV 2017), original formulation: channel weights are the spatial
mean of the gradients of the target score w.r.t. a convolutional layer's activations; the map
is ReLU(sum_k w_k A_k) (captum ``LayerGradCam`` with ``relu_attributions=True``). The layer is
the card's ``gradcam_layer``. Targets:

* a classification candidate or the study (its top candidate; with no candidate, the lungs):
  the sum of the nodule logit inside the candidate's region, slice by slice;
* a segmentation label: the sum of that label's logit inside its predicted mask
  (Seg-Grad-CAM, Vinogradova et al., AAAI 2020).

Per-slice maps are upsampled (bilinear) to the slice, stacked on the model grid, resampled
(linear) onto the study grid and normalised to 0..1. The twin is loaded with
``torch.load(weights_only=True)`` and must agree with the FP32 ONNX model (max logit
difference <= 1e-3) or the explanation is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from captum.attr import LayerAttribution, LayerGradCam

from radreview.inference.inputs import context_stack
from radreview.inference.package import ModelPackage
from radreview.inference.segment import make_session, normalize
from radreview.studies.volume import Volume

from .nets import build_from_card
from radreview.studies.errors import RadreviewError

__all__ = ["ExplanationRefused", "Explanation", "load_twin", "check_twin", "gradcam_slices", "explain_candidate", "resolve_target",
           "gradcam_views", "explain_triplanar",
           "explain_label", "spearman", "randomized_copy", "MAX_LOGIT_DIFF"]

MAX_LOGIT_DIFF = 1e-3


class ExplanationRefused(RuntimeError, RadreviewError):
    """The explanation cannot be trusted (twin/ONNX disagreement, no target...)."""


@dataclass
class Explanation:
    """``heatmap`` ``(z, y, x)`` float32 0..1 on the study grid; ``peak_lps`` its maximum (LPS mm)."""

    model_id: str
    target: str
    heatmap: np.ndarray
    peak_lps: tuple[float, float, float]
    probability: float | None
    seconds: float
    twin_max_logit_diff: float

    def as_json(self) -> dict:
        return {"model": self.model_id, "target": self.target,
                "probability": None if self.probability is None else round(self.probability, 4),
                "peak_lps": [round(v, 2) for v in self.peak_lps], "seconds": round(self.seconds, 3),
                "twin_max_logit_diff": self.twin_max_logit_diff}


def load_twin(package: ModelPackage) -> torch.nn.Module:
    """The PyTorch twin with the package's verified state_dict (``weights_only=True``)."""
    net = build_from_card(package.meta)
    state = torch.load(package.file("state_dict"), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    return net


def check_twin(net: torch.nn.Module, package: ModelPackage, x: np.ndarray) -> float:
    """Max |logit difference| between the twin and the FP32 ONNX model on ``x`` ``(n, c, h, w)``.

    Raises
    ------
    ExplanationRefused
        If it exceeds :data:`MAX_LOGIT_DIFF`.
    """
    sess = make_session(package.file("fp32"), 1)
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    with torch.no_grad():
        torch_out = net(torch.from_numpy(x.astype(np.float32))).numpy()
    diff = float(np.abs(onnx_out - torch_out).max())
    if diff > MAX_LOGIT_DIFF:
        raise ExplanationRefused(f"{package.id}: PyTorch twin and FP32 ONNX model disagree (max logit difference "
                                 f"{diff:.2e} > {MAX_LOGIT_DIFF}); explanation refused")
    return diff


def _layer(net, name: str):
    mod = net
    for part in name.split("."):
        mod = getattr(mod, part)
    return mod


def _pad8(a: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = a.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    pad = [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(a, pad, mode="edge"), (h, w)


def gradcam_slices(net, layer_name: str, x: np.ndarray, slices: list[int], masks: np.ndarray, class_index: int,
                   context: int = 1) -> np.ndarray:
    """Grad-CAM maps ``(len(slices), y, x)`` for the given model-grid slices.

    ``x`` is the normalised model-grid array ``(z, y, x)``; ``masks`` ``(len(slices), y, x)``
    boolean target regions; the score is the sum of ``class_index`` logits inside each mask.
    """
    layer = _layer(net, layer_name)
    inp = context_stack(x, slices, context)
    inp, (h, w) = _pad8(inp)
    m, _ = _pad8(masks.astype(np.float32))
    current: dict[str, torch.Tensor] = {}  # the mask of the batch being attributed

    def score(t: torch.Tensor) -> torch.Tensor:
        return (net(t)[:, class_index] * current["mask"]).sum(dim=(1, 2))

    cams = []
    with torch.enable_grad():
        gc = LayerGradCam(score, layer)
        for s in range(0, len(slices), 4):
            current["mask"] = torch.from_numpy(m[s : s + 4])
            part = torch.from_numpy(inp[s : s + 4]).requires_grad_(True)
            attr = gc.attribute(part, relu_attributions=True, attr_dim_summation=True)
            up = LayerAttribution.interpolate(attr, (inp.shape[-2], inp.shape[-1]), interpolate_mode="bilinear")
            cams.append(up[:, 0, :h, :w].detach().numpy())
    return np.concatenate(cams, axis=0)


def _to_study(cam_grid: np.ndarray, grid: sitk.Image, volume: Volume) -> np.ndarray:
    im = sitk.GetImageFromArray(cam_grid.astype(np.float32))
    im.CopyInformation(grid)
    out = sitk.GetArrayFromImage(sitk.Resample(im, volume.to_sitk(), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    mx = float(out.max())
    return out / mx if mx > 0 else out


def _finish(package, target, cam_grid, grid, volume, prob, t0, diff, allow_zero: bool = False) -> Explanation:
    heat = _to_study(cam_grid, grid, volume)
    if heat.max() <= 0 and not allow_zero:
        raise ExplanationRefused(f"{package.id}: Grad-CAM is zero everywhere for target {target!r} (no positive evidence)")
    k, j, i = np.unravel_index(int(np.argmax(heat)), heat.shape)
    px, py, pz = (float(v) for v in volume.index_to_lps([i, j, k]))
    peak = (px, py, pz)
    return Explanation(package.id, target, heat.astype(np.float32), peak, prob, time.perf_counter() - t0, diff)


def resolve_target(result, target: str):
    """The candidate and probability a classification target names: ``"study"`` (the top
    candidate, or ``None``, with the study probability) or ``"candidate-N"`` (rank N).

    Raises
    ------
    ExplanationRefused
        For an unknown target or a rank the result does not have.
    """
    if target == "study":
        return (result.candidates[0] if result.candidates else None), result.study_probability
    if target.startswith("candidate-"):
        try:
            rank = int(target.split("-", 1)[1])
        except ValueError:
            rank = None
        cand = next((c for c in result.candidates if c.rank == rank), None)
        if cand is None:
            raise ExplanationRefused(f"no {target}; candidates: {', '.join(f'candidate-{c.rank}' for c in result.candidates) or 'none'}")
        return cand, cand.probability
    raise ExplanationRefused(f"unknown target {target!r}: use 'study' or 'candidate-N'")


def explain_candidate(volume: Volume, package: ModelPackage, result, target: str = "study", net=None,
                      verify: bool = True) -> Explanation:
    """Grad-CAM of a classification result's candidate (``candidate-N``) or of the study.

    ``verify=False`` skips the twin/ONNX agreement gate; only the weight-randomisation sanity
    check uses it (a randomised twin disagrees with the shipped model by construction).

    Raises
    ------
    ExplanationRefused
        Twin disagreement, unknown target, or a map that is zero everywhere.
    """
    if package.meta.get("architecture", {}).get("name") == "TriPlanarNet":
        return explain_triplanar(volume, package, result, target, net, verify)
    t0 = time.perf_counter()
    net = net or load_twin(package)
    spec = package.meta["input"]
    hu = sitk.GetArrayFromImage(result.grid)
    x = normalize(hu, spec["normalization"])
    ctx = int(spec.get("context_slices", 1))
    mid = x.shape[0] // 2
    probe = context_stack(x, [mid], ctx)
    probe, _ = _pad8(probe)
    diff = check_twin(net, package, probe[:, :, :128, :128] if probe.shape[-1] >= 128 and probe.shape[-2] >= 128 else probe) \
        if verify else float("nan")
    cand, prob = resolve_target(result, target)
    if cand is not None:
        region = result.components == cand.label
    else:  # no candidate: where in the lungs did it look for nodules?
        from radreview.inference.lungs import lung_mask

        region = lung_mask(hu, result.grid.GetSpacing())
        top = np.argsort([-(result.prob_map[k][region[k]].max() if region[k].any() else 0) for k in range(x.shape[0])])[:6]
        keep = np.zeros(x.shape[0], bool)
        keep[top] = True
        region = region & keep[:, None, None]
    slices = [int(k) for k in np.flatnonzero(region.any(axis=(1, 2)))]
    if not slices:
        raise ExplanationRefused("nothing to explain: the target region is empty")
    cams = gradcam_slices(net, package.meta.get("gradcam_layer", "bottleneck"), x, slices, region[slices], 1, ctx)
    cam_grid = np.zeros(x.shape, np.float32)
    cam_grid[slices] = cams
    return _finish(package, target, cam_grid, result.grid, volume, prob, t0, diff, allow_zero=not verify)


def gradcam_views(net, x: np.ndarray, layer_name: str = "features") -> tuple[np.ndarray, float]:
    """Grad-CAM of the tri-planar nodule classifier for one candidate (captum ``LayerGradCam``).

    ``x`` ``(1, 9, P, P)`` normalised views (``inference.classify.extract_views``). The score
    is the question logit margin (nodule >= 6 mm minus other); ``layer_name`` names a layer of
    the shared 2-D trunk (the card's ``gradcam_layer``: ``features``, the last stage at P/4, or
    ``stem.2``, the second stage at P/2), which sees the three views as a batch of three.
    Original Grad-CAM (Selvaraju et al., ICCV 2017): channel weights = spatial mean of the
    gradients, map = ReLU(sum_k w_k A_k), per view, upsampled (bilinear) to ``P x P``. Returns
    ``(cams (3, P, P) for axial (y, x), coronal (z, x), sagittal (z, y), score)``.
    """
    layer = _layer(net, layer_name)

    def margin(t: torch.Tensor) -> torch.Tensor:
        out = net(t)
        return out[:, 1] - out[:, 0]

    inp = torch.from_numpy(x.astype(np.float32)).requires_grad_(True)
    with torch.enable_grad():
        attr = LayerGradCam(margin, layer).attribute(inp, relu_attributions=True, attr_dim_summation=True)
    up = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    with torch.no_grad():
        score = float(margin(torch.from_numpy(x.astype(np.float32)))[0].detach())
    return up[:, 0].detach().numpy(), score


def explain_triplanar(volume: Volume, package: ModelPackage, result, target: str = "study", net=None,
                      verify: bool = True) -> Explanation:
    """Grad-CAM of one candidate of the tri-planar nodule model, on the study grid.

    The three per-view maps of :func:`gradcam_views` are summed into the candidate's
    ``P x P x P`` mm cube (axial map broadcast along z, coronal along y, sagittal along x: the
    peak is where the three views agree), placed at the candidate's centre on the model grid
    and resampled (linear) onto the study grid; zero elsewhere. Only the cube is computed, so a
    finding's explanation takes well under a second after the twin check.

    Raises
    ------
    ExplanationRefused
        Twin/ONNX disagreement, unknown target, no candidate, or a map that is zero everywhere.
    """
    from radreview.inference.classify import extract_views

    t0 = time.perf_counter()
    net = net or load_twin(package)
    spec = package.meta["input"]
    if target == "study":
        cand = result.candidates[0] if result.candidates else None
        if cand is None:
            raise ExplanationRefused("nothing to explain: the study has no candidate")
        prob = result.study_probability
    elif target.startswith("candidate-"):
        try:
            rank = int(target.split("-", 1)[1])
        except ValueError:
            rank = -1
        cand = next((c for c in result.candidates if c.rank == rank), None)
        if cand is None:
            raise ExplanationRefused(f"no {target}; candidates: {', '.join(f'candidate-{c.rank}' for c in result.candidates[:20]) or 'none'}")
        prob = cand.probability
    else:
        raise ExplanationRefused(f"unknown target {target!r}: use 'study' or 'candidate-N'")
    grid = result.grid
    P = int(spec["patch_size"][-1])
    c = np.rint(np.asarray(grid.TransformPhysicalPointToContinuousIndex([float(v) for v in cand.center_lps]))[::-1]).astype(int)
    hu = sitk.GetArrayViewFromImage(grid)
    offsets = tuple(spec.get("plane_offsets_mm", (-2, 0, 2)))
    x = normalize(extract_views(hu, [c], P, offsets), spec["normalization"])
    diff = check_twin(net, package, x) if verify else float("nan")
    cams, _ = gradcam_views(net, x, package.meta.get("gradcam_layer", "features"))
    cube = cams[0][None, :, :] + cams[1][:, None, :] + cams[2][:, :, None]  # (z, y, x)
    h = P // 2
    cimg = sitk.GetImageFromArray(cube.astype(np.float32))
    cimg.SetSpacing(grid.GetSpacing())
    cimg.SetOrigin(grid.TransformIndexToPhysicalPoint([int(c[2] - h), int(c[1] - h), int(c[0] - h)]))
    cimg.SetDirection(grid.GetDirection())
    # the study-grid box that the cube covers
    corners = np.array([[i, j, k] for i in (0, P - 1) for j in (0, P - 1) for k in (0, P - 1)], float)
    lps = np.array([cimg.TransformContinuousIndexToPhysicalPoint(v.tolist()) for v in corners])
    idx = volume.lps_to_index(lps)
    lo = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, np.asarray(volume.size))
    heat = np.zeros(volume.array.shape, np.float32)
    if np.all(hi > lo):
        ref = sitk.Image([int(v) for v in hi - lo], sitk.sitkFloat32)
        ref.SetSpacing(volume.spacing)
        ref.SetDirection(tuple(volume.direction.ravel()))
        ref.SetOrigin(tuple(float(v) for v in volume.index_to_lps(lo.astype(float))))
        part = sitk.GetArrayFromImage(sitk.Resample(cimg, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        heat[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = part
    mx = float(heat.max())
    if mx <= 0 and verify:
        raise ExplanationRefused(f"{package.id}: Grad-CAM is zero everywhere for target {target!r} (no positive evidence)")
    if mx > 0:
        heat /= mx
    k, j, i = np.unravel_index(int(np.argmax(heat)), heat.shape)
    px, py, pz = (float(v) for v in volume.index_to_lps([i, j, k]))
    peak = (px, py, pz)
    return Explanation(package.id, target, heat, peak, prob, time.perf_counter() - t0, diff)


def explain_label(volume: Volume, package: ModelPackage, seg_result, label: str, net=None, max_slices: int = 24,
                  verify: bool = True) -> Explanation:
    """Seg-Grad-CAM for a segmentation label (up to ``max_slices`` evenly spaced slices of it).

    ``verify=False``: see :func:`explain_candidate` (randomisation sanity check only).

    Raises
    ------
    ExplanationRefused
        Unknown/absent label or twin disagreement.
    """
    from radreview.inference.segment import to_model_grid

    t0 = time.perf_counter()
    by_name = {lab["name"]: lab["index"] for lab in package.labels}
    if label not in by_name:
        raise ExplanationRefused(f"unknown label {label!r}; labels: {', '.join(by_name)}")
    idx = by_name[label]
    net = net or load_twin(package)
    spec = package.meta["input"]
    grid = to_model_grid(volume, spec["spacing_mm"])
    x = normalize(sitk.GetArrayFromImage(grid), spec["normalization"])
    lab_img = sitk.GetImageFromArray(seg_result.labels)
    lab_img.CopyInformation(volume.to_sitk())
    mask = sitk.GetArrayFromImage(sitk.Resample(lab_img, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) == idx
    present = np.flatnonzero(mask.any(axis=(1, 2)))
    if present.size == 0:
        raise ExplanationRefused(f"label {label!r} is absent from the segmentation")
    ctx = int(spec.get("context_slices", 1))
    mid = int(present[len(present) // 2])
    probe, _ = _pad8(context_stack(x, [mid], ctx))
    diff = check_twin(net, package, probe) if verify else float("nan")
    slices = [int(v) for v in np.unique(present[np.linspace(0, len(present) - 1, min(max_slices, len(present))).astype(int)])]
    cams = gradcam_slices(net, package.meta.get("gradcam_layer", "bottleneck"), x, slices, mask[slices], idx, ctx)
    cam_grid = np.zeros(x.shape, np.float32)
    cam_grid[slices] = cams
    stats = {s.name: s for s in seg_result.stats}
    conf = stats[label].confidence if label in stats else None
    return _finish(package, label, cam_grid, grid, volume, conf, t0, diff, allow_zero=not verify)


def spearman(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """Spearman rank correlation of two maps (scipy.stats.spearmanr) over the explained slices.

    Maps ``(z, y, x)`` are compared on the slices where either is non-zero: slices never
    explained are zero in both and would inflate the correlation with ties. ``region`` (bool,
    same shape): compare only there instead (e.g. the cube a candidate's map covers: outside
    it both maps are zero by construction). A constant map (e.g. all zero after weight
    randomisation) shares no ranking: returned as 0.0, not NaN.
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if region is not None:
        a, b = a[region], b[region]
    elif a.ndim == 3 and a.shape == b.shape:
        keep = (a > 0).any(axis=(1, 2)) | (b > 0).any(axis=(1, 2))
        if keep.any():
            a, b = a[keep], b[keep]
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomized_copy(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The model with every parameter re-drawn (full randomization of Adebayo et al., NeurIPS 2018)."""
    import copy

    g = torch.Generator().manual_seed(seed)
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for p in twin.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (p.std() if p.numel() > 1 else 1.0))
    twin.eval()
    return twin
