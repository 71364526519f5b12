"""Findings as a radiologist reads them, GUI-free: place in the lungs and one-line row text.

``finding_row_text`` turns a finding (``Finding.as_dict()``) into the row of a findings list,
e.g. ``"Nodule 1 - 22 mm - right lung, lower half - slice 33/64 - p 0.92 - AI positive"``,
instead of an internal id. ``describe_location`` names where an LPS point lies: the lung lobe
when a lobe label map is given (TotalSegmentator's lobes), else the side and the upper/lower
half of that lung from the lung mask's extent, else the side of the scan.

LPS: +x is the patient's left, +y posterior, +z superior (DICOM PS3.3 C.7.6.2.1.1), so a point
at smaller x than the lungs' midline lies in the **right** lung.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from radreview.studies.volume import Volume

from .model import plane_mapping

__all__ = ["describe_location", "finding_row_text", "status_text", "LOBE_NAMES", "STATUS_TEXT"]

# TotalSegmentator "total" class map, values 10-14
LOBE_NAMES = {10: "left upper lobe", 11: "left lower lobe", 12: "right upper lobe", 13: "right middle lobe",
              14: "right lower lobe"}

STATUS_TEXT = {"needs_review": "needs review", "ai_positive": "AI positive", "ai_negative": "AI negative",
               "not_assessed": "not assessed"}

_cache: dict[tuple, tuple] = {}


def _patient_axes(volume: Volume) -> tuple[int, int, float, float]:
    """Voxel axes (0=i, 1=j, 2=k) most along patient x and z, and the signs of those axes."""
    d = np.abs(volume.direction)
    ax_x = int(np.argmax(d[0]))
    ax_z = int(np.argmax(np.where(np.arange(3) == ax_x, -1, d[2])))
    return ax_x, ax_z, float(np.sign(volume.direction[0, ax_x]) or 1), float(np.sign(volume.direction[2, ax_z]) or 1)


def _lung_extents(volume: Volume, mask: np.ndarray):
    """``(mid_x_index, {side: (z_lo, z_hi)})`` in voxel indices, cached for the last masks."""
    key = (id(mask), mask.shape, id(volume))
    hit = _cache.get(key)
    if hit is not None and hit[0] is mask:
        return hit[1]
    ax_x, ax_z, sx, sz = _patient_axes(volume)
    np_x, np_z = 2 - ax_x, 2 - ax_z  # numpy axes of (z, y, x) arrays
    cols = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != np_x)))
    if cols.size == 0:
        res = None
    else:
        mid = (cols[0] + cols[-1]) / 2
        sides = {}
        for name, sel in (("low", slice(0, int(np.floor(mid)) + 1)), ("high", slice(int(np.ceil(mid)), None))):
            part = np.take(mask, np.arange(mask.shape[np_x])[sel], axis=np_x)
            zs = np.flatnonzero(part.any(axis=tuple(a for a in range(3) if a != np_z)))
            sides[name] = (float(zs[0]), float(zs[-1])) if zs.size else None
        # "low" index side is patient right when the x axis runs to the patient's left (+x)
        right, left = ("low", "high") if sx > 0 else ("high", "low")
        res = (mid, {"right": sides[right], "left": sides[left]}, ax_x, ax_z, sz)
    if len(_cache) > 4:
        _cache.clear()
    _cache[key] = (mask, res)
    return res


def describe_location(center_lps, volume: Volume, lung_mask: np.ndarray | None = None,
                      lobe_labels: np.ndarray | None = None) -> str:
    """Where an LPS point (mm, shape ``(3,)``) lies, in words.

    Parameters
    ----------
    center_lps : sequence of 3 float
        The point (e.g. a candidate's probability-weighted centre), LPS mm.
    volume : Volume
        The study; masks are on its ``(z, y, x)`` grid.
    lung_mask : ndarray of bool, shape (z, y, x), optional
        Both lungs (e.g. the organ model's ``lungs`` label). Gives ``"right lung, lower half"``:
        the side from the mask's left-right midline, the half from that lung's cranio-caudal
        extent (upper = above its middle).
    lobe_labels : ndarray of int, shape (z, y, x), optional
        Lobe labels with TotalSegmentator's values 10-14 (:data:`LOBE_NAMES`); when the point's
        voxel (or, outside, the nearest labelled voxel within 10 voxels) has a lobe, its name is
        returned, e.g. ``"right lower lobe"``.

    Returns ``"right side"`` / ``"left side"`` of the scan when no mask is given or the mask is
    empty.

    Raises
    ------
    ValueError
        If a mask does not have the volume's shape.
    """
    c = np.asarray(center_lps, dtype=float)
    ijk = volume.lps_to_index(c)
    shape = volume.array.shape
    for name, m in (("lung_mask", lung_mask), ("lobe_labels", lobe_labels)):
        if m is not None and m.shape != shape:
            raise ValueError(f"{name} shape {m.shape} does not match the volume {shape}")
    if lobe_labels is not None:
        name = _lobe_at(lobe_labels, ijk)
        if name:
            return name
    res = _lung_extents(volume, lung_mask) if lung_mask is not None else None
    if res is None:
        side = "right" if c[0] < volume.center_lps()[0] else "left"
        return f"{side} side"
    mid, z_ext, ax_x, ax_z, sz = res
    _, _, sx, _ = _patient_axes(volume)
    x_idx = ijk[ax_x]
    side = ("right" if x_idx <= mid else "left") if sx > 0 else ("right" if x_idx >= mid else "left")
    ext = z_ext[side]
    if ext is None:
        return f"{side} lung"
    zmid = (ext[0] + ext[1]) / 2
    upper = (ijk[ax_z] > zmid) if sz > 0 else (ijk[ax_z] < zmid)
    return f"{side} lung, {'upper' if upper else 'lower'} half"


def _lobe_at(lobes: np.ndarray, ijk) -> str | None:
    i, j, k = (int(v) for v in np.rint(ijk))
    z0, y0, x0 = max(k - 10, 0), max(j - 10, 0), max(i - 10, 0)
    box = lobes[z0:k + 11, y0:j + 11, x0:i + 11]
    hits = np.argwhere(np.isin(box, list(LOBE_NAMES)))
    if hits.size == 0:
        return None
    d = np.linalg.norm(hits - [k - z0, j - y0, i - x0], axis=1)
    z, y, x = hits[int(np.argmin(d))]
    return LOBE_NAMES[int(box[z, y, x])]


def status_text(finding: dict[str, Any]) -> str:
    """The review status in words: ``finding["status"]`` (needs_review / ai_positive /
    ai_negative / not_assessed) when present, else from ``needs_review`` and the probability
    (>= 0.5 is AI positive)."""
    st = finding.get("status")
    if st:
        return STATUS_TEXT.get(st, str(st).replace("_", " "))
    if finding.get("needs_review"):
        return "needs review"
    p = finding.get("probability")
    if p is None:
        return "ok"
    return "AI positive" if p >= 0.5 else "AI negative"


def finding_row_text(finding: dict[str, Any], volume: Volume, lung_mask: np.ndarray | None = None,
                     number: int | None = None, lobe_labels: np.ndarray | None = None) -> str:
    """One line of a findings list, as a radiologist reads it.

    ``finding`` is ``Finding.as_dict()``. Candidates read
    ``"Nodule 1 - 22 mm - right lung, lower half - slice 33/64 - p 0.92 - AI positive"`` (size:
    ``long_axis_mm`` when the model gives it, else the equivalent-sphere ``size_mm``; slice: the
    axial slice through ``center_lps``, 1-based, as the views show it; ``number`` defaults to
    the candidate rank); segmented structures ``"Liver - 746.9 mL - slice 12/30 - conf 0.87 -
    ok"``; the study-level answer ``"Study - p 0.85 - needs review - 10 of 51 candidates
    listed"``.
    """
    kind = finding.get("kind")
    status = status_text(finding)
    center = finding.get("center_lps")
    parts: list[str] = []
    if kind == "candidate":
        n = number if number is not None else _rank(finding.get("name", ""))
        parts.append(f"Nodule {n}" if n is not None else "Nodule")
        size = finding.get("long_axis_mm") or finding.get("size_mm")
        if size is not None:
            parts.append(f"{float(size):.0f} mm")
        if center is not None:
            parts.append(describe_location(center, volume, lung_mask, lobe_labels))
            parts.append(_slice_text(center, volume))
        if finding.get("probability") is not None:
            parts.append(f"p {float(finding['probability']):.2f}")
        parts.append(status)
    elif kind == "segmentation":
        parts.append(str(finding.get("name", "")).replace("_", " ").capitalize())
        if finding.get("volume_ml") is not None:
            parts.append(f"{float(finding['volume_ml']):.1f} mL")
        if center is not None:
            parts.append(_slice_text(center, volume))
        if finding.get("confidence") is not None:
            parts.append(f"conf {float(finding['confidence']):.2f}")
        parts.append(status)
    else:
        parts.append(str(finding.get("name", "finding")).capitalize())
        p = finding.get("probability", finding.get("confidence"))
        if p is not None:
            parts.append(f"p {float(p):.2f}")
        parts.append(status)
        if finding.get("candidates_total") is not None:
            parts.append(f"{finding.get('candidates_listed', 0)} of {finding['candidates_total']} candidates listed")
    return " - ".join(parts)


def _rank(name: str) -> int | None:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _slice_text(center_lps, volume: Volume) -> str:
    m = plane_mapping(volume, "axial")
    k, _, _ = m.index_to_screen(volume.lps_to_index(np.asarray(center_lps, float)))
    k = int(np.clip(np.rint(k), 0, m.n_slices - 1))
    return f"slice {k + 1}/{m.n_slices}"
