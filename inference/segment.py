"""Segmentation runtime: MONAI-Label-style stages on ONNX Runtime, GUI-free.

``iter_segment`` runs the stages of a segmentation package, each timed:

1. **pre**: resample the study to the model grid (SimpleITK, linear, axis-aligned LPS at the
   card's ``spacing_mm``; points up to half a model voxel past the study's edge take the
   nearest study voxel) and normalise intensities (HU clip + scale, or percentile z-score);
2. **infer**: 2.5-D sliding window over axial slices (``2k+1`` neighbouring slices as channels,
   in-plane patches with the card's overlap) blended with a Gaussian importance map (sigma =
   patch/8, as nnU-Net: Isensee et al., Nat Methods 2021), softmax with the card's temperature;
3. **inverse**: probabilities stay on the model grid; the label map (argmax) and max
   probability are mapped onto the study grid exactly as if every channel were resampled
   linearly (:class:`_CellMap`: only voxels between model voxels of different argmax get all
   channels interpolated), so the mask lines up voxel for voxel with the input series; the
   voxel entropy (uncertainty) is computed on the model grid and mapped linearly;
4. **post**: largest connected component for the labels the card lists; per-label voxel
   count, volume (mL), confidence (mean max-softmax probability inside the predicted region)
   and centroid, from sums taken on the model grid.

On the 512x512x300 benchmark CT the first version spent ~2/3 of its time resampling the 7
probability channels onto 78 M voxels and in post-processing; see ``benchmarks/bench_infer``
for the per-stage times now.

The generator yields :class:`SegProgress` (with an ETA) and can be closed to cancel; nothing
is returned until every stage finished, so a cancelled run leaves no partial result.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Generator

import numpy as np
import SimpleITK as sitk

from radreview.studies.jobs import drain
from radreview.studies.volume import Volume

from .inputs import context_stack
from .package import ModelPackage, PackageError

__all__ = ["open_runtime", "SegProgress", "LabelStats", "SegmentationResult", "iter_segment", "segment", "gaussian_importance",
           "make_session", "to_model_grid", "normalize"]


@dataclass
class SegProgress:
    """``done``/``total`` work units of the current ``stage``; ``eta_s`` remaining seconds."""

    stage: str
    done: int
    total: int
    eta_s: float | None = None


@dataclass
class LabelStats:
    index: int
    name: str
    voxels: int
    volume_ml: float
    confidence: float | None
    color: tuple[int, int, int] = (255, 0, 0)
    centroid_lps: tuple[float, float, float] | None = None

    def as_dict(self) -> dict:
        return {"index": self.index, "name": self.name, "voxels": self.voxels,
                "volume_ml": round(self.volume_ml, 3),
                "confidence": None if self.confidence is None else round(self.confidence, 4)}


@dataclass
class SegmentationResult:
    """Labels ``(z, y, x)`` on the input volume's exact grid, plus per-label stats.

    ``max_prob`` is the max-softmax probability per voxel (float16), ``entropy`` the voxel
    entropy in nats (float16, computed on the model grid and mapped linearly); both on the
    same grid. ``sources`` holds, for a field not computed yet, the callable that maps it on its
    first read (see ``iter_segment(lazy_maps=True)``); reading it then takes about as long as
    one pass over the volume.
    """

    model_id: str
    precision: str
    labels: np.ndarray
    max_prob: np.ndarray | None  # None only while ``sources`` holds its mapper (read maps it)
    entropy: np.ndarray | None
    stats: list[LabelStats]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sources: dict[str, Callable[[], np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    def findings_json(self) -> dict:
        return {"model": self.model_id, "precision": self.precision, "seconds": round(self.seconds, 3),
                "labels": [s.as_dict() for s in self.stats], "warnings": self.warnings,
                "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()}}


def _lazy_field(name: str) -> property:
    """A dataclass field computed on first read from ``self.sources[name]`` when present."""

    def get(self):
        src = self.__dict__.get("sources", {}).pop(name, None)
        if src is not None:
            self.__dict__["_" + name] = src()
        return self.__dict__.get("_" + name)

    def set_(self, value) -> None:
        self.__dict__["_" + name] = value

    return property(get, set_)


# setattr: mypy reads a plain assignment of a property over a dataclass field as a type clash
setattr(SegmentationResult, "max_prob", _lazy_field("max_prob"))  # noqa: B010
setattr(SegmentationResult, "entropy", _lazy_field("entropy"))  # noqa: B010


def check_session(session, package: ModelPackage, n_out: int) -> None:
    """Refuse an ONNX model whose input/output shape does not match its card.

    Raises
    ------
    PackageError
        Channels, dimensionality or output classes differ from ``model.json``.
    """
    spec = package.meta["input"]
    inp = session.get_inputs()[0]
    ctx = int(spec.get("context_slices", 1))
    channels = int(spec["channels"])
    if channels != 2 * ctx + 1:
        raise PackageError(f"{package.id}: input.channels {channels} != 2*context_slices+1")
    if len(inp.shape) != 4 or (isinstance(inp.shape[1], int) and inp.shape[1] != channels):
        raise PackageError(f"{package.id}: ONNX input {inp.name} has shape {inp.shape}, card says {channels} channels, 2-D patches")
    out_shape = session.get_outputs()[0].shape
    if isinstance(out_shape[1], int) and out_shape[1] != n_out:
        raise PackageError(f"{package.id}: ONNX output has {out_shape[1]} channels, card lists {n_out} labels")


def open_runtime(volume: Volume, package: ModelPackage, task: str, precision: str, threads: int | None):
    """Checks shared by every runtime, then an ONNX session: ``(session, warnings)``.

    Raises
    ------
    PackageError
        Wrong task, modality refused by the card, file hash failure or a model/card mismatch.
    ValueError
        Unknown precision.
    """
    if package.task != task:
        raise PackageError(f"model {package.id} is a {package.task} model, not {task}")
    if precision not in ("int8", "fp32"):
        raise ValueError(f"precision must be int8 or fp32, not {precision!r}")
    warnings = []
    w = package.check_modality(volume.info.modality)
    if w:
        warnings.append(w)
    session = make_session(package.file(precision), threads)
    check_session(session, package, len(package.labels))
    return session, warnings


def make_session(path, threads: int | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (all cores if ``None``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def gaussian_importance(size: tuple[int, int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """Gaussian weights ``(h, w)`` peaking at the patch centre, minimum clamped above 0."""
    h, w = size
    yy = np.exp(-0.5 * ((np.arange(h) - (h - 1) / 2) / (h * sigma_scale)) ** 2)
    xx = np.exp(-0.5 * ((np.arange(w) - (w - 1) / 2) / (w * sigma_scale)) ** 2)
    g = np.outer(yy, xx).astype(np.float32)
    g /= g.max()
    g[g < 1e-3] = 1e-3
    return g


def to_model_grid(volume: Volume, spacing_mm, default: float = -1024.0, extrapolate: bool = False) -> sitk.Image:
    """Resample to an axis-aligned LPS grid at ``spacing_mm`` covering the volume (linear).

    The output's array ``(z, y, x)`` runs along +S, +P, +L whatever the input's direction.
    The grid spans the volume's corner voxel centres rounded to whole model voxels, so its
    last plane can lie up to half a model voxel beyond the last input voxel centre. ITK counts
    such points as outside when they lie half an *input* voxel or more out, and they would
    get ``default`` (air): with ``extrapolate=True`` they take the nearest input voxel instead
    (``useNearestNeighborExtrapolator``), which is what segmentation uses (an air plane there
    emptied the last slice of the mapped-back mask).
    """
    img = volume.to_sitk()  # interpolated in double, written as float32: no float copy of the input
    nx, ny, nz = volume.size
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
    pts = volume.index_to_lps(corners)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    sp = np.asarray(spacing_mm, float)
    size = np.maximum(np.round((hi - lo) / sp).astype(int) + 1, 1)
    ref = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    ref.SetSpacing(tuple(sp))
    ref.SetOrigin(tuple(lo))
    ref.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    return sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, float(default), sitk.sitkFloat32, bool(extrapolate))


def normalize(arr: np.ndarray, spec: dict) -> np.ndarray:
    """Intensity normalisation from the card (``hu_clip_scale`` or ``percentile_zscore``)."""
    if spec["method"] == "hu_clip_scale":
        lo, hi = spec["clip"]
        return ((np.clip(arr, lo, hi) - spec.get("offset", 0.0)) * spec["scale"]).astype(np.float32)
    lo, hi = np.percentile(arr, spec["percentiles"])
    clipped = np.clip(arr, lo, hi)
    return ((clipped - clipped.mean()) / max(clipped.std(), 1e-6)).astype(np.float32)


def _windows(n: int, patch: int, stride: int) -> list[int]:
    if n <= patch:
        return [0]
    starts = list(range(0, n - patch + 1, stride))
    if starts[-1] != n - patch:
        starts.append(n - patch)
    return starts


def sliding_window(x: np.ndarray, session, spec: dict, n_cls: int, temperature: float = 1.0, batch: int = 8):
    """2.5-D sliding window over a normalised model-grid array ``x`` ``(z, y, x)``.

    Yields :class:`SegProgress` ("infer"); returns softmax probabilities ``(n_cls, z, y, x)``
    blended with a Gaussian importance map. Neighbouring slices (``context_slices`` each side,
    clamped at the ends) form the channels.
    """
    t = time.perf_counter()
    ctx = int(spec.get("context_slices", 1))
    channels = 2 * ctx + 1
    name = session.get_inputs()[0].name
    ph, pw = spec["patch_size"][-2:]
    overlap = float(spec.get("overlap", 0.5))
    nz, ny, nx = x.shape
    pad_y, pad_x = max(0, ph - ny), max(0, pw - nx)
    if pad_y or pad_x:
        x = np.pad(x, ((0, 0), (0, pad_y), (0, pad_x)), mode="constant", constant_values=float(x.min()))
    Z, Y, X = x.shape
    sy, sx = max(1, int(ph * (1 - overlap))), max(1, int(pw * (1 - overlap)))
    ys, xs = _windows(Y, ph, sy), _windows(X, pw, sx)
    g = gaussian_importance((ph, pw))
    prob = np.zeros((n_cls, Z, Y, X), dtype=np.float32)
    norm = np.zeros((Y, X), dtype=np.float32)
    for y0 in ys:
        for x0 in xs:
            norm[y0 : y0 + ph, x0 : x0 + pw] += g
    tiles = [(k, y0, x0) for k in range(Z) for y0 in ys for x0 in xs]
    total = len(tiles)
    for b0 in range(0, total, batch):
        part = tiles[b0 : b0 + batch]
        inp_arr = np.empty((len(part), channels, ph, pw), dtype=np.float32)
        for n, (k, y0, x0) in enumerate(part):
            inp_arr[n] = context_stack(x, k, ctx, (y0, x0, ph, pw))
        logits = session.run(None, {name: inp_arr})[0]
        if temperature != 1.0:
            logits /= temperature
        # softmax times the importance map, in place: exp(l - max) * (g / sum)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        wsum = logits.sum(axis=1, keepdims=True)
        np.divide(g, wsum, out=wsum)
        logits *= wsum
        for n, (k, y0, x0) in enumerate(part):
            prob[:, k, y0 : y0 + ph, x0 : x0 + pw] += logits[n]
        done = min(b0 + batch, total)
        elapsed = time.perf_counter() - t
        yield SegProgress("infer", done, total, eta_s=elapsed / done * (total - done) + 0.3 * elapsed * (done < total))
    prob /= norm[None]
    return prob[:, :, :ny, :nx]


def _axis_map(volume: Volume, grid: sitk.Image):
    """How the study grid sits on the axis-aligned model grid, or ``None`` if it is oblique.

    Returns ``(perm, coords)``: model array axis ``perm[s]`` runs along study array axis ``s``
    (``(z, y, x)`` order both), and ``coords[s]`` holds the continuous model index of every
    study index along that axis (the study's direction must be a signed permutation matrix,
    i.e. axis-aligned with flips or swaps allowed; tolerance 1e-4).
    """
    d = np.asarray(volume.direction, float)
    a = np.abs(d)
    b_of = a.argmax(axis=0)  # study index axis i -> physical (= model index) axis
    if sorted(b_of.tolist()) != [0, 1, 2] or np.abs(a - (a >= 0.5)).max() > 1e-4:
        return None
    origin = np.asarray(volume.origin, float)
    sp = np.asarray(volume.spacing, float)
    lo = np.asarray(grid.GetOrigin(), float)
    msp = np.asarray(grid.GetSpacing(), float)
    perm, coords = [], []
    for s in range(3):  # study array axis z, y, x = index axis k, j, i
        i = 2 - s
        b = int(b_of[i])
        t = np.arange(volume.array.shape[s], dtype=float)
        coords.append((origin[b] + d[b, i] * sp[i] * t - lo[b]) / msp[b])
        perm.append(2 - b)
    return tuple(perm), coords


def _taps(f: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower tap ``i0`` and weight ``w`` of linear interpolation at continuous indices ``f`` on
    ``n >= 2`` samples; ``f`` is clamped to ``[0, n - 1]`` (nearest extrapolation, as ITK's
    linear interpolator inside its half-voxel border)."""
    f = np.clip(f, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(f).astype(np.intp), n - 2)
    return i0, (f - i0).astype(np.float32)


class _Mapper:
    """Trilinear mapping from the (axis-aligned) model grid to the study grid, separable.

    ``arrs`` are model arrays ``(z, y, x)`` already transposed to the study's axis order and
    padded to >= 2 samples per axis; ``taps`` the ``(i0, w)`` per study axis. Equivalent to
    ``sitk.Resample(..., sitkLinear)`` for study points inside the model grid.
    """

    def __init__(self, taps):
        self.taps = taps

    def slab(self, m: np.ndarray, s0: int, s1: int) -> np.ndarray:
        """Interpolate model array ``m`` (``(..., N0, N1, N2)``) onto study slices ``s0:s1``."""
        (z0, wz), (y0, wy), (x0, wx) = self.taps
        z0, wz = z0[s0:s1], wz[s0:s1]
        a = m[..., z0, :, :] * (1 - wz)[:, None, None] + m[..., z0 + 1, :, :] * wz[:, None, None]
        a = a[..., y0, :] * (1 - wy)[:, None] + a[..., y0 + 1, :] * wy[:, None]
        return a[..., x0] * (1 - wx) + a[..., x0 + 1] * wx

    def full(self, m: np.ndarray, dtype=np.float16, chunk: int = 16) -> np.ndarray:
        n0 = len(self.taps[0][0])
        out = np.empty((n0, len(self.taps[1][0]), len(self.taps[2][0])), dtype=dtype)
        for s0 in range(0, n0, chunk):
            out[s0 : s0 + chunk] = self.slab(m, s0, min(s0 + chunk, n0))
        return out


def _pad2(m: np.ndarray, axes) -> np.ndarray:
    """Repeat the edge so each of ``axes`` has at least 2 samples (linear taps need two)."""
    pad = [(0, 0)] * m.ndim
    for ax in axes:
        if m.shape[ax] < 2:
            pad[ax] = (0, 2 - m.shape[ax])
    return np.pad(m, pad, mode="edge") if any(p != (0, 0) for p in pad) else m


class _CellMap:
    """Label map, max probability and label statistics on the study grid, from model-grid
    probabilities ``prob`` ``(C, z, y, x)`` (axis-aligned study, see :func:`_axis_map`).

    Equal to the argmax / max over channels of the trilinearly interpolated probabilities (what
    resampling every channel back with ``sitk.Resample(..., sitkLinear)`` gives, the method of
    the first version) without interpolating every channel everywhere: where the 8 model voxels
    around a study voxel (its *cell*) share one argmax ``c``, any convex combination of them has
    argmax ``c`` too, and its maximum is the interpolated model-grid maximum; only study voxels
    in *mixed* cells get all channels interpolated. Per-label counts and sums (of the max
    probability and of the voxel indices) over the uniform cells are separable sums done on the
    model grid; the mixed voxels are added one by one.
    """

    MIXED = 255

    def __init__(self, prob: np.ndarray, perm, coords, lut: np.ndarray, lab_dtype):
        self.C = prob.shape[0]
        pt = _pad2(np.ascontiguousarray(prob.transpose(0, *(p + 1 for p in perm))), (1, 2, 3))
        self.pt = pt
        self.N = pt.shape[1:]
        ch = pt.argmax(axis=0).astype(np.uint8)  # model-grid argmax channel
        self.mx = pt.max(axis=0)
        c000 = ch[:-1, :-1, :-1]
        same = np.ones(c000.shape, bool)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    if dz or dy or dx:
                        same &= ch[dz : dz + c000.shape[0], dy : dy + c000.shape[1], dx : dx + c000.shape[2]] == c000
        self.cell = np.where(same, c000, np.uint8(self.MIXED))
        self.taps = [_taps(f, n) for f, n in zip(coords, self.N)]
        self.mapper = _Mapper(self.taps)
        self.shape = tuple(len(t[0]) for t in self.taps)
        self.lut = np.asarray(lut).astype(lab_dtype)
        self.lab_dtype = lab_dtype
        # per channel: voxel count, sum of max prob, sums of z, y, x study indices (mixed voxels)
        self.acc = np.zeros((5, self.C))

    def _mixed(self, c: np.ndarray, s0: int, s1: int):
        """Interpolate all channels at the mixed voxels of study slices ``s0:s1``; returns
        ``(mz, my, mx, channel, max prob)`` (``mz`` relative to ``s0``)."""
        (z0, wz), (y0, wy), (x0, wx) = self.taps
        flat = np.flatnonzero(c == self.MIXED)  # one index array: cheaper than np.nonzero's three
        if not flat.size:
            e = np.zeros(0, np.intp)
            return e, e, e, np.zeros(0, np.uint8), np.zeros(0, np.float32)
        mz, rest = np.divmod(flat, c.shape[1] * c.shape[2])
        my, mx = np.divmod(rest, c.shape[2])
        zz, wzz = z0[s0:s1], wz[s0:s1][:, None, None]
        a = self.pt[:, zz] * (1 - wzz) + self.pt[:, zz + 1] * wzz  # (C, k, N1, N2)
        n1, n2 = self.N[1], self.N[2]
        a = a.reshape(self.C, -1)
        f = (mz * n1 + y0[my]) * n2 + x0[mx]
        wyy, wxx = wy[my], wx[mx]
        t0 = a.take(f, axis=1)
        r0 = t0 + (a.take(f + 1, axis=1) - t0) * wxx
        t1 = a.take(f + n2, axis=1)
        r1 = t1 + (a.take(f + n2 + 1, axis=1) - t1) * wxx
        v = r0 + (r1 - r0) * wyy
        return mz, my, mx, v.argmax(axis=0).astype(np.uint8), v.max(axis=0)

    def iter_labels(self, with_best: bool, chunk: int = 8):
        """Fill ``self.lab`` (and ``self.best`` float16 if ``with_best``) slab by slab; yields
        ``(done, total)`` study slices; accumulates the mixed voxels' statistics."""
        (z0, _), (y0, _), (x0, _) = self.taps
        n0 = self.shape[0]
        self.lab = np.empty(self.shape, dtype=self.lab_dtype)
        best = np.empty(self.shape, dtype=np.float16) if with_best else None
        self.best = best
        for s0 in range(0, n0, chunk):
            s1 = min(s0 + chunk, n0)
            c = self.cell.take(z0[s0:s1], axis=0).take(y0, axis=1).take(x0, axis=2)
            mz, my, mx, mc, mv = self._mixed(c, s0, s1)
            c[mz, my, mx] = mc
            self.lab[s0:s1] = self.lut[c]
            if best is not None:
                b = self.mapper.slab(self.mx, s0, s1)
                b[mz, my, mx] = mv
                best[s0:s1] = b
            for row, w in enumerate((None, mv, mz + s0, my, mx)):
                self.acc[row] += np.bincount(mc, weights=None if w is None else w.astype(float), minlength=self.C)
            yield s1, n0

    def best_full(self) -> np.ndarray:
        """Max probability ``(z, y, x)`` float16 on the study grid (a pass without the labels)."""
        (z0, _), (y0, _), (x0, _) = self.taps
        out = np.empty(self.shape, dtype=np.float16)
        for s0 in range(0, self.shape[0], 8):
            s1 = min(s0 + 8, self.shape[0])
            c = self.cell.take(z0[s0:s1], axis=0).take(y0, axis=1).take(x0, axis=2)
            mz, my, mx, _, mv = self._mixed(c, s0, s1)
            b = self.mapper.slab(self.mx, s0, s1)
            b[mz, my, mx] = mv
            out[s0:s1] = b
        return out

    def uniform_stats(self) -> np.ndarray:
        """Per channel ``(5, C)``: count, sum of max prob, sums of z, y, x over uniform cells."""
        n, a0, a1, s = [], [], [], []
        for (i0, w), N in zip(self.taps, self.N):
            n.append(np.bincount(i0, minlength=N - 1)[: N - 1].astype(float))
            a0.append(np.bincount(i0, weights=1.0 - w.astype(float), minlength=N - 1)[: N - 1])
            a1.append(np.bincount(i0, weights=w.astype(float), minlength=N - 1)[: N - 1])
            s.append(np.bincount(i0, weights=np.arange(len(i0), dtype=float), minlength=N - 1)[: N - 1])
        outer = lambda p, q, r: p[:, None, None] * q[None, :, None] * r[None, None, :]  # noqa: E731
        cnt = outer(n[0], n[1], n[2])
        sb = np.zeros(cnt.shape)
        m = self.mx.astype(float)
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    corner = m[dz : dz + cnt.shape[0], dy : dy + cnt.shape[1], dx : dx + cnt.shape[2]]
                    sb += corner * outer((a0, a1)[dz][0], (a0, a1)[dy][1], (a0, a1)[dx][2])
        sz, sy, sx = outer(s[0], n[1], n[2]), outer(n[0], s[1], n[2]), outer(n[0], n[1], s[2])
        key = self.cell.ravel()
        uni = key != self.MIXED
        k = key[uni]
        return np.stack([np.bincount(k, weights=v.ravel()[uni], minlength=self.C)[: self.C] for v in (cnt, sb, sz, sy, sx)])

    def best_at(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Max over channels of the interpolated probabilities at study voxels ``(z, y, x)``."""
        (z0, wz), (y0, wy), (x0, wx) = self.taps
        iz, iy, ix = z0[z], y0[y], x0[x]
        v = np.zeros((), dtype=self.pt.dtype)  # broadcasts to (C, N) on the first term
        for dz, fz in ((0, 1 - wz[z]), (1, wz[z])):
            for dy, fy in ((0, 1 - wy[y]), (1, wy[y])):
                for dx, fx in ((0, 1 - wx[x]), (1, wx[x])):
                    v = v + self.pt[:, iz + dz, iy + dy, ix + dx] * (fz * fy * fx)
        return v.max(axis=0)


def _label_stats(lab: np.ndarray, best: np.ndarray, n_bins: int, chunk: int = 16):
    """Per label index: voxel count, sum of ``best`` and of the (z, y, x) indices (float64)."""
    cnt = np.zeros(n_bins)
    sp = np.zeros(n_bins)
    sz, sy, sx = np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins)
    n0, n1, n2 = lab.shape
    yy = np.broadcast_to(np.arange(n1, dtype=float)[:, None], (n1, n2)).ravel()
    xx = np.broadcast_to(np.arange(n2, dtype=float)[None, :], (n1, n2)).ravel()
    for s0 in range(0, n0, chunk):
        k = min(s0 + chunk, n0) - s0
        key = lab[s0 : s0 + k].ravel().astype(np.intp)
        per = np.bincount(key + n_bins * np.repeat(np.arange(k), n1 * n2), minlength=n_bins * k).reshape(k, n_bins)
        cnt += per.sum(axis=0)
        sz += (per * (s0 + np.arange(k))[:, None]).sum(axis=0)
        sp += np.bincount(key, weights=best[s0 : s0 + k].ravel(), minlength=n_bins)
        sy += np.bincount(key, weights=np.tile(yy, k), minlength=n_bins)
        sx += np.bincount(key, weights=np.tile(xx, k), minlength=n_bins)
    return cnt, sp, sz, sy, sx


def iter_segment(volume: Volume, package: ModelPackage, precision: str = "int8", threads: int | None = None,
                 batch: int = 8, lazy_maps: bool = False) -> Generator[SegProgress, None, SegmentationResult]:
    """Run a segmentation package on ``volume``; yields progress, returns the result.

    Probabilities stay on the model grid. The label map ``(z, y, x)`` and the max-softmax
    probability are mapped to the study grid exactly as if every channel were resampled
    linearly and the argmax / max taken (:class:`_CellMap`; an oblique study falls back to
    per-channel ``sitk.Resample``); the voxel entropy is computed on the model grid and mapped
    linearly. Confidence per label = mean of that mapped max-softmax probability over the
    label's study voxels after post-processing (computed from model-grid sums, no pass over
    the study grid). ``lazy_maps=True`` defers mapping ``max_prob`` and ``entropy`` until they
    are first read (:func:`segment` does this; keep the default in a worker thread so the GUI
    thread never maps them).

    Raises
    ------
    PackageError
        Wrong task, modality refused by the card, file hash failure, or an ONNX model whose
        input/output shape does not match the card.
    ValueError
        Unknown precision.
    """
    t_start = time.perf_counter()
    session, warnings = open_runtime(volume, package, "segmentation", precision, threads)
    spec = package.meta["input"]
    labels_meta = package.labels
    n_cls = len(labels_meta)
    temperature = float(package.meta["calibration"]["temperature"])
    stage = {}

    # ---------------------------------------------------------------- pre
    t = time.perf_counter()
    yield SegProgress("pre", 0, 1)
    grid = to_model_grid(volume, spec["spacing_mm"], extrapolate=True)
    x = normalize(sitk.GetArrayViewFromImage(grid), spec["normalization"])  # (z, y, x) on the model grid
    stage["pre"] = time.perf_counter() - t

    # ---------------------------------------------------------------- infer
    t = time.perf_counter()
    gen = sliding_window(x, session, spec, n_cls, temperature, batch)
    while True:
        try:
            yield next(gen)
        except StopIteration as stop:
            prob = stop.value
            break
    stage["infer"] = time.perf_counter() - t

    # ---------------------------------------------------------------- inverse
    t = time.perf_counter()
    lut = np.array([lm["index"] for lm in labels_meta])
    n_bins = int(lut.max()) + 1
    lab_dtype = np.uint8 if n_bins <= 256 else np.uint16
    amap = _axis_map(volume, grid)
    tab = None  # (5, n_bins): count, sum of max prob, sums of z, y, x indices per label index
    if amap is not None:
        perm, coords = amap
        cm = _CellMap(prob, perm, coords, lut, lab_dtype)
        for done, total in cm.iter_labels(with_best=not lazy_maps):
            yield SegProgress("inverse", done, total)
        lab, best = cm.lab, cm.best
        tab = np.zeros((5, n_bins))
        tab[:, lut] = cm.uniform_stats() + cm.acc
        best_fn = cm.best_full

        def entropy_fn(cm=cm):  # model-grid entropy (nats) of the (transposed, padded) probabilities
            return cm.mapper.full(_entropy(cm.pt), np.float16)
    else:
        cm = None
        ent_model = _entropy(prob)
        ref = volume.to_sitk()
        lab, best = yield from _map_labels_sitk(prob, grid, ref, lut, lab_dtype, volume.array.shape)
        best_fn = None

        def entropy_fn(ent_model=ent_model):
            return _resample_sitk(ent_model, grid, ref).astype(np.float16)
    del prob
    entropy = None if lazy_maps else entropy_fn()
    stage["inverse"] = time.perf_counter() - t

    # ---------------------------------------------------------------- post
    t = time.perf_counter()
    lcc = package.meta["outputs"].get("largest_component", [])
    by_name = {lm["name"]: lm["index"] for lm in labels_meta}
    fill = by_name.get("body", 0)
    for name in lcc:
        idx = by_name.get(name)
        if idx is None:
            continue
        to = fill if idx != fill else 0
        dz, dy, dx = _keep_largest_component(lab, idx, to)
        if tab is not None and cm is not None and dz.size:  # move the dropped voxels' share to the fill label
            moved = np.array([dz.size, float(cm.best_at(dz, dy, dx).astype(float).sum()),
                              float(dz.sum()), float(dy.sum()), float(dx.sum())])
            tab[:, idx] -= moved
            tab[:, to] += moved
    yield SegProgress("post", 1, 2)
    if tab is None:
        assert best is not None, "the SimpleITK path always maps max_prob"
        tab = np.stack(_label_stats(lab, best, n_bins))
    cnt, sp_sum, sz, sy, sx = tab
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    stats = []
    for lm in labels_meta:
        if lm["index"] == 0:
            continue
        i = lm["index"]
        n = int(round(cnt[i]))
        if n:
            cen = volume.index_to_lps(np.array([sx[i], sy[i], sz[i]]) / n)
            stats.append(LabelStats(i, lm["name"], n, n * voxel_ml, float(sp_sum[i] / n), tuple(lm["color"]),
                                    (float(cen[0]), float(cen[1]), float(cen[2]))))
        else:
            stats.append(LabelStats(i, lm["name"], 0, 0.0, None, tuple(lm["color"]), None))
    stage["post"] = time.perf_counter() - t
    yield SegProgress("post", 2, 2, eta_s=0.0)
    res = SegmentationResult(package.id, precision, lab, best, entropy, stats,
                             time.perf_counter() - t_start, stage, warnings)
    if lazy_maps:
        res.sources["entropy"] = entropy_fn
        if best is None and best_fn is not None:
            res.sources["max_prob"] = best_fn
    return res


def _entropy(prob: np.ndarray) -> np.ndarray:
    """Voxel entropy in nats of probabilities ``(C, z, y, x)`` (float32 ``(z, y, x)``)."""
    return -(prob * np.log(np.clip(prob, 1e-8, 1))).sum(axis=0).astype(np.float32)


def _resample_sitk(arr: np.ndarray, grid: sitk.Image, ref: sitk.Image) -> np.ndarray:
    im = sitk.GetImageFromArray(arr)
    im.CopyInformation(grid)
    return sitk.GetArrayFromImage(sitk.Resample(im, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))


def _map_labels_sitk(prob, grid, ref, lut, lab_dtype, shape):
    """Oblique studies: every channel resampled (linear) with a running argmax; yields progress."""
    best = np.full(shape, -1.0, dtype=np.float32)
    lab = np.zeros(shape, dtype=lab_dtype)
    upd = np.empty(shape, dtype=bool)
    lut = np.asarray(lut).astype(lab_dtype)
    for c in range(prob.shape[0]):
        pc = _resample_sitk(np.ascontiguousarray(prob[c]), grid, ref)
        np.greater(pc, best, out=upd)
        np.copyto(best, pc, where=upd)
        np.copyto(lab, lut[c], where=upd)
        del pc
        yield SegProgress("inverse", c + 1, prob.shape[0])
    return lab, best.astype(np.float16)


def _keep_largest_component(lab: np.ndarray, idx: int, fill: int):
    """Keep the largest 3-D connected component of label ``idx`` (in place); others become ``fill``.

    Returns the ``(z, y, x)`` index arrays of the voxels changed to ``fill``.

    Works on the label's bounding box only (SimpleITK ConnectedComponent + RelabelComponent).
    """
    zs = np.flatnonzero((lab == idx).any(axis=(1, 2)))
    if zs.size == 0:
        e = np.zeros(0, np.intp)
        return e, e, e
    sub = lab[zs[0] : zs[-1] + 1]
    mask2 = (sub == idx).any(axis=0)
    ys, xs = np.flatnonzero(mask2.any(axis=1)), np.flatnonzero(mask2.any(axis=0))
    box = sub[:, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
    mask = box == idx
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))), sortByObjectSize=True)
    drop = mask & (sitk.GetArrayViewFromImage(cc) != 1)
    box[drop] = fill
    dz, dy, dx = np.nonzero(drop)
    return dz + zs[0], dy + ys[0], dx + xs[0]


def segment(volume: Volume, package: ModelPackage, precision: str = "int8", threads: int | None = None) -> SegmentationResult:
    """Blocking form of :func:`iter_segment` (``max_prob`` and ``entropy`` are mapped on first read)."""
    return drain(iter_segment(volume, package, precision, threads, lazy_maps=True))
