"""Nodule classification runtime: a fast candidate screen on the whole scan, then a 2.5-D
classifier per candidate (model ``ct-nodule-2p5d`` >= 0.2).

Stages (timed):

1. **pre**: resample the study to the card's grid (1 mm isotropic, axis-aligned LPS, linear;
   ``inference.segment.to_model_grid``) and build the closed lung mask
   (``inference.lungs.closed_lung_mask``: HU rule, 10 mm rolling-ball close and 3-D hole
   filling, so juxta-pleural nodules stay inside);
2. **candidates**: voxels above ``candidates.hu_threshold`` inside the lungs, opened with a
   ball of ``candidates.open_mm`` (this cuts vessels thinner than the ball from the nodules they
   touch: juxta-vascular nodules become their own component), 3-D connected components with an
   equivalent-sphere diameter between ``min_diameter_mm`` and ``max_diameter_mm``, the
   ``max_candidates`` largest kept; a component of ``blob_split_mm`` or more (a nodule merged
   with a vessel or the chest wall) also gives up to 6 sub-candidates at the local maxima
   (>= ``blob_radius_mm``, 8 mm apart) of the distance to its surface, each the ball of that
   radius + 1.5 mm inside it;
3. **classify**: per candidate, nine 32 x 32 mm planes at 1 mm through its centre (axial,
   coronal and sagittal, each at -2, 0, +2 mm) go through the 2.5-D network on ONNX Runtime;
   the question logit pair is temperature-scaled (Guo et al., ICML 2017; ``calibration``) into
   ``probability`` = P(solid or part-solid nodule >= 6 mm), the type head gives ``nodule_type``;
4. **measure**: long-axis and short-axis diameters (mm) on the axial slice of the candidate
   mask where the long axis is largest (Lung-RADS v2022: long axis = maximum Feret diameter,
   short axis = the largest width perpendicular to it, same image), volume (mL), and the
   Lung-RADS v2022 baseline size category with the rule used.

The study ``probability`` is the largest candidate probability (0 without candidates); its
``lung_rads`` comes from the largest candidate at or above the card's decision threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Generator

import numpy as np
import SimpleITK as sitk

from radreview.studies.jobs import drain
from radreview.studies.volume import Volume

from .lungs import closed_lung_mask
from .package import ModelPackage, PackageError
from .segment import SegProgress, make_session, normalize, to_model_grid

__all__ = ["Candidate", "ClassificationResult", "iter_classify", "classify", "detect_candidates", "extract_views",
           "axial_diameters", "fwhm_axes", "lung_rads_category", "mean_diameter_mm", "study_lung_rads",
           "LUNG_RADS_ORDER", "SIZE_THRESHOLD_MM", "SOLID_COMPONENT_HU", "NODULE_TYPES", "size_gate"]

SIZE_THRESHOLD_MM = 6.0
#: HU above which a part-solid candidate's voxel counts as its solid component (heuristic)
SOLID_COMPONENT_HU = -300.0
#: Order of the type head's outputs.
NODULE_TYPES = ("solid", "part-solid", "ground glass")
DEFAULT_CANDIDATES = {"hu_threshold": -600.0, "open_mm": [1.0, 2.0, 3.0], "min_diameter_mm": 3.0,
                      "split_diameter_mm": 35.0, "max_diameter_mm": 60.0, "max_candidates": 200,
                      "blob_split_mm": 12.0, "blob_radius_mm": 2.5}


def size_gate(d_mm: float) -> float:
    """Soft step at 6 mm (kept for callers of 0.1): ``sigmoid((d - 6) / 0.5)``."""
    return float(1.0 / (1.0 + np.exp(-(d_mm - SIZE_THRESHOLD_MM) / 0.5)))


@dataclass
class Candidate:
    """One candidate region.

    ``probability``: calibrated P(solid or part-solid nodule >= 6 mm); ``confidence``: the
    same probability (0.1 kept a separate "nodule at all" probability here; the review derives
    its confidence as ``max(p, 1 - p)``); ``raw_max``: the uncalibrated logit margin;
    ``center_lps`` (x, y, z) mm; ``voxels``: the screen mask's voxels (1 mm grid);
    ``long_axis_mm``/``short_axis_mm`` on the axial image at half maximum (:func:`fwhm_axes`;
    ``size_mm`` = long axis, the name of 0.1); ``volume_ml`` at half maximum; ``nodule_type``
    (solid / part-solid / ground glass, argmax of the type head) with ``type_probabilities``;
    ``lung_rads`` ``{"category", "rule"}``; ``label`` its value in
    ``ClassificationResult.components`` (a sub-candidate, the thick spot of a big component, is not
    drawn there: its parent is);
    ``long_axis_lps``/``short_axis_lps`` the axes' end points ``[[x, y, z], [x, y, z]]`` (mm).
    """

    rank: int
    center_lps: tuple[float, float, float]
    size_mm: float
    probability: float
    confidence: float
    raw_max: float
    voxels: int
    label: int
    long_axis_mm: float = 0.0
    short_axis_mm: float = 0.0
    volume_ml: float = 0.0
    nodule_type: str = "solid"
    type_probabilities: dict = field(default_factory=dict)
    lung_rads: dict = field(default_factory=dict)
    long_axis_lps: list | None = None  # [[x, y, z], [x, y, z]] end points (LPS mm), axial image
    short_axis_lps: list | None = None

    @property
    def diameter_mm(self) -> float:
        return self.long_axis_mm

    def as_dict(self) -> dict:
        return {"rank": self.rank, "probability": round(self.probability, 4), "confidence": round(self.confidence, 4),
                "center_lps": [round(v, 2) for v in self.center_lps], "diameter_mm": round(self.long_axis_mm, 1),
                "long_axis_mm": round(self.long_axis_mm, 1), "short_axis_mm": round(self.short_axis_mm, 1),
                "volume_ml": round(self.volume_ml, 3), "nodule_type": self.nodule_type, "size_mm": round(self.size_mm, 1),
                "lung_rads": self.lung_rads, "long_axis_lps": self.long_axis_lps, "short_axis_lps": self.short_axis_lps}


@dataclass
class ClassificationResult:
    """Output of :func:`iter_classify`. Arrays are on the model grid ``grid`` (1 mm, LPS,
    identity direction; ``grid`` holds the resampled HU): ``components`` ``(z, y, x)`` uint8
    candidate labels; ``prob_map`` ``(z, y, x)`` float32, each candidate's voxels set to its
    probability (uncalibrated 0.1 semantics dropped)."""

    model_id: str
    precision: str
    study_probability: float
    candidates: list[Candidate]
    prob_map: np.ndarray
    components: np.ndarray
    grid: sitk.Image
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    lung_rads: dict = field(default_factory=dict)

    @property
    def study_confidence(self) -> float:
        return max(self.study_probability, 1 - self.study_probability)

    def as_dict(self) -> dict:
        return {"model": self.model_id, "precision": self.precision, "probability": round(self.study_probability, 4),
                "lung_rads": self.lung_rads, "seconds": round(self.seconds, 3),
                "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
                "candidates": [c.as_dict() for c in self.candidates]}


# ----------------------------------------------------------------------------- candidates
def detect_candidates(hu: np.ndarray, spacing_xyz, lungs: np.ndarray, params: dict | None = None):
    """Candidate components of a model-grid HU array.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(z, y, x)`` HU on an axis-aligned grid.
    spacing_xyz : sequence of 3 floats
        Voxel spacing (mm).
    lungs : numpy.ndarray
        ``(z, y, x)`` bool lung mask (closed).
    params : dict
        ``hu_threshold`` (HU; -600 keeps solid and part-solid tissue and the denser half of a
        partial-volume edge, not faint ground glass: a screen setting of this project, not a
        published constant), ``open_mm`` (ball radii of the successive openings, mm),
        ``min_diameter_mm``, ``split_diameter_mm`` (components larger than this after an
        opening that is not the last are opened again), ``max_diameter_mm``,
        ``max_candidates``, ``blob_split_mm``, ``blob_radius_mm`` (defaults
        :data:`DEFAULT_CANDIDATES`).

    Returns
    -------
    (labels, comps) : numpy.ndarray, list of dict
        ``labels`` ``(z, y, x)`` uint8 (0 = none, ``k`` = ``comps[k-1]``; a thick-spot candidate
        has its own mask but no label here); each comp has ``centroid_zyx`` (continuous
        index), ``voxels``, ``eq_diameter_mm``, ``bbox`` (z0, y0, x0, z1, y1, x1, exclusive
        ends, full-array indices) and ``mask`` (bool, the shape of ``bbox``: the candidate's
        voxels inside its box). A thick spot of a large component and that component can both
        be candidates, a few mm apart (counted as two in the card's FROC).
    """
    p = dict(DEFAULT_CANDIDATES, **(params or {}))
    sp = np.asarray(spacing_xyz, float)
    out = np.zeros(hu.shape, np.uint8)
    if not lungs.any():
        return out, []
    nz = np.nonzero(lungs.any(axis=(1, 2)))[0], np.nonzero(lungs.any(axis=(0, 2)))[0], np.nonzero(lungs.any(axis=(0, 1)))[0]
    lo = [int(a[0]) for a in nz]
    hi = [int(a[-1]) + 1 for a in nz]
    sub = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    dense = (hu[sub] > p["hu_threshold"]) & lungs[sub]
    voxel_mm3 = float(np.prod(sp))
    remaining = sitk.GetImageFromArray(dense.astype(np.uint8))
    remaining.SetSpacing(tuple(sp))
    ccarr = np.zeros(dense.shape, np.int32)
    rows: list[tuple[int, int, float, tuple[int, int, int, int, int, int]]] = []  # (voxels, key, diameter mm, bbox)
    radii = [float(r) for r in p["open_mm"]] if isinstance(p["open_mm"], (list, tuple)) else [float(p["open_mm"])]
    for step, r_mm in enumerate(radii):
        last = step == len(radii) - 1
        rad = [max(1, int(round(r_mm / s))) for s in sp]
        opened = sitk.BinaryMorphologicalOpening(remaining, rad, sitk.sitkBall)
        cc = sitk.ConnectedComponent(opened)
        st = sitk.LabelShapeStatisticsImageFilter()
        st.Execute(cc)
        arr = sitk.GetArrayViewFromImage(cc)
        big = []
        dmax = p["max_diameter_mm"] if last else p["split_diameter_mm"]
        for lab in st.GetLabels():
            n = st.GetNumberOfPixels(lab)
            d = float((6 * n * voxel_mm3 / np.pi) ** (1 / 3))
            if d > dmax and not last:
                big.append(lab)
            elif p["min_diameter_mm"] <= d <= dmax:
                x0, y0, z0, sx, sy, sz = st.GetBoundingBox(lab)
                bb = (z0, y0, x0, z0 + sz, y0 + sy, x0 + sx)
                key = len(rows) + 1
                region = arr[bb[0]:bb[3], bb[1]:bb[4], bb[2]:bb[5]] == lab
                ccarr[bb[0]:bb[3], bb[1]:bb[4], bb[2]:bb[5]][region] = key
                rows.append((n, key, d, bb))
        if not big:
            break
        keep = np.isin(arr, big)
        remaining = sitk.GetImageFromArray(keep.astype(np.uint8))
        remaining.SetSpacing(tuple(sp))
    # a nodule merged with a vessel or the wall: the big component's thick spots become
    # candidates of their own (local maxima of the distance to its surface, >= blob_radius_mm)
    from scipy.ndimage import maximum_filter

    extra = []
    blobs = {lab: bb for n, lab, d, bb in rows if d >= p["blob_split_mm"]}
    if blobs:
        union = np.isin(ccarr, list(blobs))
        uz, uy, ux = (np.flatnonzero(union.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1)))
        ub = (slice(uz[0], uz[-1] + 1), slice(uy[0], uy[-1] + 1), slice(ux[0], ux[-1] + 1))
        rimg = sitk.GetImageFromArray(np.pad(union[ub], 1).astype(np.uint8))
        rimg.SetSpacing(tuple(sp))
        dist = -sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(rimg, insideIsPositive=False, squaredDistance=False,
                                                                   useImageSpacing=True))[1:-1, 1:-1, 1:-1]
        cand = dist >= p["blob_radius_mm"]
        peaks = np.argwhere(cand & (dist == maximum_filter(np.where(cand, dist, 0), size=7)))
        peaks = peaks[np.argsort(-dist[tuple(peaks.T)])]
        off = np.array([ub[0].start, ub[1].start, ub[2].start])
        kept: dict[int, list] = {}
        for q in peaks:
            lab = int(ccarr[tuple(q + off)])
            ks = kept.setdefault(lab, [])
            if len(ks) < 6 and all(np.linalg.norm((q - k) * sp[::-1]) >= 8.0 for k in ks):
                ks.append(q)
        for lab, ks in kept.items():
            for q in ks:
                r = float(dist[tuple(q)]) + 1.5
                h = np.ceil(r / sp[::-1]).astype(int)
                c = q + off
                s0 = np.maximum(c - h, 0)
                s1 = np.minimum(c + h + 1, ccarr.shape)
                zz, yy, xx = np.ogrid[s0[0]:s1[0], s0[1]:s1[1], s0[2]:s1[2]]
                ball = (((zz - c[0]) * sp[2]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((xx - c[2]) * sp[0]) ** 2) <= r * r
                sub_r = (ccarr[s0[0]:s1[0], s0[1]:s1[1], s0[2]:s1[2]] == lab) & ball
                extra.append((int(sub_r.sum()), sub_r, (int(s0[0]), int(s0[1]), int(s0[2]), int(s1[0]), int(s1[1]), int(s1[2]))))
    # (voxels, key or None, diameter mm, bbox, own mask or None): components, then the thick spots
    found: list[tuple[int, int | None, float, tuple[int, int, int, int, int, int], np.ndarray | None]] = (
        [(n, lab, d, bb, None) for n, lab, d, bb in rows] + [(n, None, 0.0, bb, m) for n, m, bb in extra])
    found.sort(key=lambda r: -r[0])
    found = found[: int(p["max_candidates"])]
    comps = []
    for k, (n, lab, d, bb, m) in enumerate(found, 1):
        region = ccarr[bb[0]:bb[3], bb[1]:bb[4], bb[2]:bb[5]] == lab if m is None else m
        if m is None:
            out[sub][bb[0]:bb[3], bb[1]:bb[4], bb[2]:bb[5]][region] = k
        d = d or float((6 * n * voxel_mm3 / np.pi) ** (1 / 3))
        cz, cy, cx = (np.argwhere(region).mean(axis=0) + np.array(bb[:3])).tolist()
        comps.append({"centroid_zyx": (cz + lo[0], cy + lo[1], cx + lo[2]), "voxels": int(n), "eq_diameter_mm": d,
                      "bbox": (bb[0] + lo[0], bb[1] + lo[1], bb[2] + lo[2], bb[3] + lo[0], bb[4] + lo[1], bb[5] + lo[2]),
                      "mask": region})
    return out, comps


def extract_views(hu: np.ndarray, centers_zyx, patch: int = 32, offsets=(-2, 0, 2), fill: float = -1024.0) -> np.ndarray:
    """Nine orthogonal planes per centre: ``(n, 3 * len(offsets), patch, patch)`` float32 HU.

    ``hu`` ``(z, y, x)`` on a 1 mm isotropic grid; ``centers_zyx`` ``(n, 3)`` voxel indices
    (rounded). Channels: axial planes ``(y, x)`` at ``z + o``, then coronal ``(z, x)`` at
    ``y + o``, then sagittal ``(z, y)`` at ``x + o``, for ``o`` in ``offsets`` (voxels = mm).
    Outside the array: ``fill``.
    """
    h = patch // 2
    out = np.empty((len(centers_zyx), 3 * len(offsets), patch, patch), np.float32)
    shape = np.asarray(hu.shape)
    for n, c in enumerate(np.rint(np.asarray(centers_zyx, float)).astype(int)):
        cube = np.full((patch, patch, patch), fill, np.float32)
        a = c - h
        b = c + h
        sa, sb = np.maximum(a, 0), np.minimum(b, shape)
        if np.all(sb > sa):
            da = sa - a
            cube[da[0]:da[0] + sb[0] - sa[0], da[1]:da[1] + sb[1] - sa[1], da[2]:da[2] + sb[2] - sa[2]] = \
                hu[sa[0]:sb[0], sa[1]:sb[1], sa[2]:sb[2]]
        out[n] = views_of_cube(cube, offsets)
    return out


def views_of_cube(cube: np.ndarray, offsets=(-2, 0, 2)) -> np.ndarray:
    """The nine planes of a ``(P, P, P)`` cube ``(z, y, x)``: ``(9, P, P)`` (see :func:`extract_views`)."""
    h = cube.shape[0] // 2
    ax = [cube[h + o] for o in offsets]
    co = [cube[:, h + o, :] for o in offsets]
    sa = [cube[:, :, h + o] for o in offsets]
    return np.stack(ax + co + sa)


def _directions(sx: float, sy: float, factor: int = 1):
    """The 180 caliper directions ``(180, 2)`` (1 degree apart) and the half extent ``(180,)``
    (mm) along each of a pixel ``sx / factor`` x ``sy / factor`` mm."""
    th = np.deg2rad(np.arange(180.0))
    u = np.stack([np.cos(th), np.sin(th)], axis=1)
    return u, 0.5 * np.sqrt((u[:, 0] * sx / factor) ** 2 + (u[:, 1] * sy / factor) ** 2)


def _caliper(pts: np.ndarray, half: np.ndarray, u: np.ndarray):
    """Widths ``(180,)`` of 2-D points ``pts`` (mm) along the unit directions ``u`` ``(180, 2)``,
    each point a pixel whose half extent along ``u`` is ``half`` ``(180,)`` (edge to edge), and
    the projections ``(n, 180)``."""
    proj = pts @ u.T
    return proj.max(axis=0) - proj.min(axis=0) + 2 * half, proj


def axial_diameters(mask: np.ndarray, spacing_xyz) -> tuple[float, float, int]:
    """Long and short axis (mm) of a 3-D mask ``(z, y, x)`` on its axial slices, and that slice.

    Long axis: the maximum Feret diameter (caliper width over 180 directions, 1 degree apart,
    of the pixel centres plus one pixel) over all axial slices; short axis: the caliper width
    perpendicular to it on the same slice (Lung-RADS v2022 measures both on the same axial
    image). The caliper of 0.3.0 on the screen mask; the runtime measures with
    :func:`fwhm_axes`, which uses this on the mask to pick its slices.
    """
    sx, sy = float(spacing_xyz[0]), float(spacing_xyz[1])
    u, half = _directions(sx, sy)
    best = (0.0, 0.0, -1)
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        yy, xx = np.nonzero(mask[k])
        width, _ = _caliper(np.stack([xx * sx, yy * sy], axis=1), half, u)
        i = int(np.argmax(width))
        if width[i] > best[0]:
            best = (float(width[i]), float(width[(i + 90) % 180]), int(k))
    return best


def _round_half_up(v: float, ndigits: int = 1) -> float:
    """``v`` rounded half up to ``ndigits`` decimals, a binary-float hair below the half counted as
    the half (``5.949999999999999`` -> 6.0, as 5.95 is)."""
    q = 10.0 ** ndigits
    return float(np.floor(float(v) * q + 0.5 + 1e-6) / q)


def mean_diameter_mm(long_mm: float, short_mm: float) -> float:
    """Lung-RADS v2022 mean diameter (mm): ``(long + short) / 2`` of the axial long and short
    axis, rounded half up to 0.1 mm, so 5.95 mm is 6.0 mm (category 3 when solid) however the
    two axes sum in binary floating point."""
    return _round_half_up((float(long_mm) + float(short_mm)) / 2, 1)


#: Lung-RADS categories from least to most suspicious (the exam takes the most suspicious nodule)
LUNG_RADS_ORDER = ("1", "2", "3", "4A", "4B")


def study_lung_rads(candidates, threshold: float) -> dict:
    """The study's suggested Lung-RADS v2022 size category from its candidates.

    The exam category is that of the most suspicious nodule (ACR Lung-RADS v2022 categorises
    an exam by its most suspicious finding, not its largest): among candidates
    with ``probability >= threshold``, the highest size category (ties: the higher
    probability). ``candidates`` are :class:`Candidate` with their ``lung_rads`` dict. Returns
    the category dict with ``candidate_rank``; category 1 with its rule when none qualifies.
    """
    above = [c for c in candidates if c.probability >= threshold and c.lung_rads]
    if not above:
        return {"category": "1", "rule": f"Lung-RADS v2022: no candidate at probability >= {threshold} (size category 1, "
                                         "negative; calcified or sub-threshold nodules are not reported)"}
    top = max(above, key=lambda c: (LUNG_RADS_ORDER.index(c.lung_rads["category"]), c.probability))
    return dict(top.lung_rads, candidate_rank=top.rank,
                rule=top.lung_rads["rule"] + f"; candidate {top.rank}, the most suspicious of {len(above)} at p >= {threshold}")


def fwhm_axes(hu: np.ndarray, bbox, mask: np.ndarray, spacing_xyz, factor: int = 4, lung_hu: float = -850.0):
    """Sub-voxel long and short axis (mm) of a candidate on its axial images, and its volume
    (voxels), at half maximum.

    The candidate mask of the screen (voxels above -600 HU) takes in the partial-volume rim of a
    solid nodule, and a caliper on 1 mm pixels adds up to a pixel: both read small nodules large.
    Here each axial slice of the candidate is resampled ``factor`` times finer in-plane
    (bilinear) and cut at half maximum between the candidate's own density (90th percentile of
    its voxels) and the lung around it (25th percentile of the box outside the mask, clipped to
    -950..-700 HU; ``lung_hu`` when there is none), so a blurred edge is measured at its
    middle (full width at half maximum). Only pixels within one voxel of the mask count, so touching
    vessels stay out. Long axis: the maximum Feret diameter (180 directions, 1 degree apart,
    edge to edge on the fine grid) over all axial slices; short axis: the width perpendicular
    to it on the same slice (Lung-RADS v2022 measures both on the same axial image). Volume:
    the voxels at or above half maximum within one voxel (in-plane) of the mask.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(z, y, x)`` HU of the model grid.
    bbox : tuple of 6 ints
        The candidate's ``(z0, y0, x0, z1, y1, x1)`` in ``hu`` (exclusive ends).
    mask : numpy.ndarray
        ``(z1 - z0, y1 - y0, x1 - x0)`` bool, the candidate's voxels.
    spacing_xyz : sequence of 3 floats
        Voxel spacing (mm).

    Returns
    -------
    (long_mm, short_mm, ends, voxels) : float, float, tuple or None, int
        ``ends`` = ``((long_a, long_b), (short_a, short_b))`` as continuous voxel indices
        ``(i, j, k)`` of ``hu``; the short axis through the slice's centroid. ``voxels``: the
        count at half maximum (the mask's own count when none reaches it). ``(0, 0, None, 0)``
        for an empty mask; a slice where nothing reaches half maximum falls back to the mask.
    """
    from scipy.ndimage import binary_dilation, binary_erosion, generate_binary_structure, map_coordinates
    from scipy.spatial import ConvexHull, QhullError

    sx, sy = float(spacing_xyz[0]), float(spacing_xyz[1])
    z0, y0, x0, z1, y1, x1 = (int(v) for v in bbox)
    if not mask.any():
        return 0.0, 0.0, None, 0
    pad = 2
    ya, yb = max(y0 - pad, 0), min(y1 + pad, hu.shape[1])
    xa, xb = max(x0 - pad, 0), min(x1 + pad, hu.shape[2])
    box = hu[z0:z1, ya:yb, xa:xb].astype(np.float32)
    m = np.zeros(box.shape, bool)
    m[:, y0 - ya:y0 - ya + mask.shape[1], x0 - xa:x0 - xa + mask.shape[2]] = mask
    near = binary_dilation(m, structure=generate_binary_structure(2, 1)[None])  # one voxel in-plane
    peak = float(np.percentile(box[m], 90))
    out = box[~binary_dilation(near, iterations=1)]
    bg = float(np.clip(np.percentile(out, 25), -950.0, -700.0)) if out.size else float(lung_hu)
    level = (peak + bg) / 2
    voxels = int(((box >= level) & near).sum()) or int(m.sum())
    f = int(factor)
    u, half = _directions(sx, sy, f)
    best: tuple | None = None  # (long, short, slice, hull points, projections, direction, fine mask)
    hh, ww = box.shape[1:]
    fy = (np.arange(hh * f) + 0.5) / f - 0.5  # fine pixel centres in coarse index units
    fx = (np.arange(ww * f) + 0.5) / f - 0.5
    gy, gx = np.meshgrid(fy, fx, indexing="ij")
    ny = np.clip(np.rint(gy).astype(int), 0, hh - 1)
    nx = np.clip(np.rint(gx).astype(int), 0, ww - 1)
    ks = np.flatnonzero(m.any(axis=(1, 2)))
    if len(ks) > 2:  # the fine caliper on the two slices widest on the coarse mask (cost: 200 candidates a scan)
        coarse = [axial_diameters(m[k:k + 1], spacing_xyz)[0] for k in ks]
        ks = ks[np.argsort(coarse)[-2:]]
    for k in ks:
        fine = map_coordinates(box[k], [gy, gx], order=1, mode="nearest")
        fm = (fine >= level) & near[k][ny, nx]
        if not fm.any():
            fm = m[k][ny, nx]  # nothing reaches half maximum here: the mask itself
        edge = fm & ~binary_erosion(fm)
        ey, ex = np.nonzero(edge)
        pts = np.stack([fx[ex] * sx, fy[ey] * sy], axis=1)
        if len(pts) > 8:  # Feret diameters are those of the convex hull
            try:
                pts = pts[ConvexHull(pts).vertices]
            except QhullError:  # collinear points: keep them all
                pass
        width, proj = _caliper(pts, half, u)
        i = int(np.argmax(width))
        if best is None or width[i] > best[0]:
            best = (float(width[i]), float(width[(i + 90) % 180]), int(k), pts, proj, i, fm)
    assert best is not None  # the mask has at least one slice
    long_mm, short_mm, kb, pts, proj, i, fm = best
    ua, va = u[i], u[(i + 90) % 180]
    hu_, hv = float(half[i]), float(half[(i + 90) % 180])
    a, b = pts[int(np.argmin(proj[:, i]))] - hu_ * ua, pts[int(np.argmax(proj[:, i]))] + hu_ * ua
    cy, cx = np.nonzero(fm)
    c = np.array([fx[cx].mean() * sx, fy[cy].mean() * sy])
    pv = (pts - c) @ va
    sa, sb = c + (pv.min() - hv) * va, c + (pv.max() + hv) * va

    def idx(q):
        return (float(q[0] / sx + xa), float(q[1] / sy + ya), float(kb + z0))

    return long_mm, short_mm, ((idx(a), idx(b)), (idx(sa), idx(sb))), voxels


def lung_rads_category(long_mm: float, short_mm: float, nodule_type: str, solid_mean_mm: float | None = None) -> dict:
    """Lung-RADS v2022 baseline size category of one nodule and the rule used.

    Mean diameter = (long + short) / 2 on the same axial image (mm), rounded half up to 0.1 mm
    (:func:`mean_diameter_mm`). Solid: < 6 mm 2, 6 to < 8 mm 3, 8 to < 15 mm 4A, >= 15 mm 4B.
    Part-solid: total < 6 mm 2; >= 6 mm with solid component < 6 mm 3, 6 to < 8 mm 4A,
    >= 8 mm 4B. Ground glass: < 30 mm 2, >= 30 mm 3 (ACR Lung-RADS v2022). Size only: no
    growth, morphology or prior exam considered.

    Returns ``{"category", "rule", "mean_diameter_mm"}``.

    Raises
    ------
    ValueError
        ``nodule_type`` is not one of :data:`NODULE_TYPES`.
    """
    if nodule_type not in NODULE_TYPES:
        raise ValueError(f"nodule type must be one of {NODULE_TYPES}, not {nodule_type!r}")
    mean = mean_diameter_mm(long_mm, short_mm)
    if nodule_type == "ground glass":
        cat = "2" if mean < 30 else "3"
        rule = f"ground glass, mean diameter {mean} mm {'<' if mean < 30 else '>='} 30 mm (baseline)"
    elif nodule_type == "part-solid":
        s = _round_half_up(solid_mean_mm) if solid_mean_mm is not None else 0.0
        if mean < 6:
            cat, rule = "2", f"part-solid, mean diameter {mean} mm < 6 mm (baseline)"
        elif s < 6:
            cat, rule = "3", f"part-solid, mean diameter {mean} mm >= 6 mm, solid component {s} mm < 6 mm (baseline)"
        elif s < 8:
            cat, rule = "4A", f"part-solid, solid component {s} mm 6 to < 8 mm (baseline)"
        else:
            cat, rule = "4B", f"part-solid, solid component {s} mm >= 8 mm (baseline)"
    else:
        for lim, c in ((6, "2"), (8, "3"), (15, "4A")):
            if mean < lim:
                cat = c
                break
        else:
            cat = "4B"
        band = {"2": "< 6 mm", "3": "6 to < 8 mm", "4A": "8 to < 15 mm", "4B": ">= 15 mm"}[cat]
        rule = f"solid, mean diameter {mean} mm {band} (baseline)"
    return {"category": cat, "rule": f"Lung-RADS v2022 size category: {rule}", "mean_diameter_mm": mean}


# ----------------------------------------------------------------------------- runtime
def open_nodule_runtime(volume: Volume | None, package: ModelPackage, precision: str, threads: int | None):
    """Checks and an ONNX session for the nodule classifier: ``(session, warnings)``.

    Raises
    ------
    PackageError
        Wrong task, modality refused, hash failure, or an ONNX input/output shape that is not
        the card's ``(n, channels, patch, patch)`` -> ``(n, 2 + len(types))``.
    ValueError
        Unknown precision.
    """
    if package.task != "classification":
        raise PackageError(f"model {package.id} is a {package.task} model, not classification")
    if precision not in ("int8", "fp32"):
        raise ValueError(f"precision must be int8 or fp32, not {precision!r}")
    warnings = []
    if volume is not None:
        w = package.check_modality(volume.info.modality)
        if w:
            warnings.append(w)
    session = make_session(package.file(precision), threads)
    spec = package.meta["input"]
    inp, out = session.get_inputs()[0].shape, session.get_outputs()[0].shape
    want = 2 + len(package.meta.get("nodule_types", NODULE_TYPES))
    if len(inp) != 4 or (isinstance(inp[1], int) and inp[1] != int(spec["channels"])) or \
            (isinstance(out[1], int) and out[1] != want):
        raise PackageError(f"{package.id}: ONNX input {inp} / output {out} do not match the card "
                           f"({spec['channels']} channels, {want} outputs)")
    return session, warnings


def run_views(session, views_hu: np.ndarray, norm: dict, batch: int = 64) -> np.ndarray:
    """Raw logits ``(n, 5)`` of the classifier for HU views ``(n, 9, P, P)``."""
    if len(views_hu) == 0:
        return np.zeros((0, 5), np.float32)
    name = session.get_inputs()[0].name
    x = normalize(views_hu, norm)
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)], axis=0)


def probabilities(logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated question probability ``(n,)`` and type probabilities ``(n, 3)`` from logits."""
    q = (logits[:, 1] - logits[:, 0]) / float(temperature)
    p = 1.0 / (1.0 + np.exp(-np.clip(q, -60, 60)))
    t = logits[:, 2:] - logits[:, 2:].max(axis=1, keepdims=True)
    t = np.exp(t)
    return p, t / t.sum(axis=1, keepdims=True)


def iter_classify(volume: Volume, package: ModelPackage, precision: str = "int8", threads: int | None = None,
                  crop: bool = False) -> Generator[SegProgress, None, ClassificationResult]:
    """Run the nodule package on a CT volume; yields progress, returns the result.

    Parameters
    ----------
    volume : Volume
        CT in HU, any orientation (resampled to the card's 1 mm grid, LPS, axis-aligned).
    package : ModelPackage
        A classification package (``ct-nodule-2p5d``).
    precision : str
        ``"int8"`` or ``"fp32"``.
    threads : int or None
        ONNX Runtime intra-op threads (None: its default).
    crop : bool
        The volume is a crop inside the chest (lung air may touch its border).

    Yields :class:`SegProgress` (stages pre, candidates, classify, measure); returns a
    :class:`ClassificationResult`: candidates ranked by calibrated probability, each with its
    centre (LPS mm), axial long/short axis (mm), volume (mL), type and Lung-RADS size category;
    the study probability (the largest candidate probability) and the study's category
    (:func:`study_lung_rads`).

    Raises
    ------
    PackageError
        Wrong task, modality refused, hash failure or a model/card mismatch.
    ValueError
        Unknown precision.
    """
    t0 = time.perf_counter()
    session, warnings = open_nodule_runtime(volume, package, precision, threads)
    spec = package.meta["input"]
    T = float(package.meta["calibration"]["temperature"])
    cparams = package.meta.get("candidates", {})
    types = tuple(package.meta.get("nodule_types", NODULE_TYPES))
    thr = float(package.meta["review_policy"].get("decision_threshold", 0.5))
    stage = {}
    t = time.perf_counter()
    yield SegProgress("pre", 0, 4)
    grid = to_model_grid(volume, spec["spacing_mm"])
    hu = sitk.GetArrayViewFromImage(grid)
    sp = grid.GetSpacing()
    lungs = closed_lung_mask(hu, sp, crop=crop)
    stage["pre"] = time.perf_counter() - t
    t = time.perf_counter()
    yield SegProgress("candidates", 1, 4)
    comp, comps = detect_candidates(hu, sp, lungs, cparams)
    stage["candidates"] = time.perf_counter() - t
    t = time.perf_counter()
    yield SegProgress("classify", 2, 4)
    views = extract_views(hu, [c["centroid_zyx"] for c in comps], int(spec["patch_size"][-1]),
                          tuple(spec.get("plane_offsets_mm", (-2, 0, 2))))
    logits = run_views(session, views, spec["normalization"])
    p, tp = probabilities(logits, T)
    stage["classify"] = time.perf_counter() - t
    t = time.perf_counter()
    yield SegProgress("measure", 3, 4)
    cands = []
    voxel_ml = float(np.prod(sp)) / 1000
    for k, c in enumerate(comps):
        z0, y0, x0, z1, y1, x1 = c["bbox"]
        m = c["mask"]
        long_mm, short_mm, ends, n_half = fwhm_axes(hu, c["bbox"], m, sp)
        ntype = types[int(np.argmax(tp[k]))]
        solid = None
        if ntype == "part-solid":
            # solid component: voxels above SOLID_COMPONENT_HU (a heuristic of this project, not
            # validated: the type head has not called a held-out nodule part-solid, see the card)
            sm = m & (hu[z0:z1, y0:y1, x0:x1] > SOLID_COMPONENT_HU)
            sl, ss, _ = axial_diameters(sm, sp) if sm.any() else (0.0, 0.0, -1)
            solid = (sl + ss) / 2
        centre = grid.TransformContinuousIndexToPhysicalPoint([float(c["centroid_zyx"][2]), float(c["centroid_zyx"][1]),
                                                               float(c["centroid_zyx"][0])])
        pk = float(p[k])
        if ends is not None:
            ends = [[[round(float(v), 2) for v in grid.TransformContinuousIndexToPhysicalPoint(list(q))] for q in pair]
                    for pair in ends]
        cands.append(Candidate(0, (float(centre[0]), float(centre[1]), float(centre[2])), long_mm, pk, pk, float(logits[k, 1] - logits[k, 0]),
                               c["voxels"], k + 1, long_mm, short_mm, n_half * voxel_ml, ntype,
                               {n: round(float(v), 4) for n, v in zip(types, tp[k])},
                               lung_rads_category(long_mm, short_mm, ntype, solid),
                               ends[0] if ends else None, ends[1] if ends else None))
    cands.sort(key=lambda c: -c.probability)
    for r, c in enumerate(cands, 1):
        c.rank = r
    prob_map = np.zeros(comp.shape, np.float32)
    if cands:
        lut = np.zeros(len(comps) + 1, np.float32)
        for c in cands:
            lut[c.label] = c.probability
        prob_map = lut[comp]
    study = max((c.probability for c in cands), default=0.0)
    lr = study_lung_rads(cands, thr)
    stage["measure"] = time.perf_counter() - t
    yield SegProgress("measure", 4, 4, eta_s=0.0)
    return ClassificationResult(package.id, precision, study, cands, prob_map, comp, grid, time.perf_counter() - t0, stage,
                                warnings, lr)


def classify(volume: Volume, package: ModelPackage, precision: str = "int8", threads: int | None = None,
             crop: bool = False) -> ClassificationResult:
    """Blocking form of :func:`iter_classify`."""
    return drain(iter_classify(volume, package, precision, threads, crop))
