"""Compare an AI label map ("test") with a reference (manual) label map on the same grid.

GUI-free core of ``radreview compare`` and of the viewer's comparison panel:

* :func:`match_labels` pairs labels by name (case-insensitive, with a small synonym table,
  and left/right parts merged into their pair: ``kidney_left`` + ``kidney_right`` =
  ``kidneys``), else by value;
* :func:`compare_labels` gives one :class:`LabelComparison` per pair (metrics of
  :mod:`radreview.review.metrics`, lesion counts, the slice with most disagreement);
* :func:`disagreement_map` is the uint8 map written as ``disagreement.nii.gz``.

Label maps are integer arrays ``(z, y, x)``; work is done on each label's bounding box
(``scipy.ndimage.find_objects``), never on the whole grid per label.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np

from .metrics import lesion_counts, mask_metrics

__all__ = [
    "LabelComparison", "compare_labels", "disagreement_map", "match_labels", "normalise_name", "label_boxes",
    "SYNONYMS", "GROUPS", "BOTH", "TEST_ONLY", "REFERENCE_ONLY",
]

LabelValue = Union[int, tuple[int, ...]]

#: Values of :func:`disagreement_map`.
BOTH, TEST_ONLY, REFERENCE_ONLY = 1, 2, 3

#: Aliases: normalised name -> canonical name (TotalSegmentator and model-card spellings).
SYNONYMS: dict[str, str] = {
    "lung": "lungs", "lung_both": "lungs",
    "kidney": "kidneys", "kidney_both": "kidneys",
    "bones": "bone", "skeleton": "bone",
    "adrenal_gland": "adrenal_glands",
    "tumor": "tumour", "lesion": "tumour", "lesions": "tumour", "tumors": "tumour", "tumours": "tumour",
    "vessels": "vessel", "hepatic_liver": "liver", "body_outline": "body", "skin": "body",
}

#: Canonical paired structure -> the parts that together make it (TotalSegmentator "total" names).
GROUPS: dict[str, tuple[str, ...]] = {
    "kidneys": ("kidney_left", "kidney_right"),
    "lungs": ("lung_left", "lung_right", "lung_upper_lobe_left", "lung_lower_lobe_left",
              "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "adrenal_glands": ("adrenal_gland_left", "adrenal_gland_right"),
}

_GENERIC = re.compile(r"^(label|segment|roi|value)?_?\d*$")


def normalise_name(name: str) -> str:
    """Lower case, spaces/hyphens as ``_``, then the :data:`SYNONYMS` canonical name."""
    n = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    return SYNONYMS.get(n, n)


def _generic(name: str) -> bool:
    return bool(_GENERIC.match(re.sub(r"[\s\-]+", "_", str(name).strip().lower())))


def _as_tuple(v: LabelValue) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),)


def _plain(v: LabelValue) -> LabelValue:
    t = _as_tuple(v)
    return t[0] if len(t) == 1 else t


def match_labels(test_names: dict[int, str], ref_names: dict[int, str]) -> list[tuple[str, LabelValue, LabelValue]]:
    """Pair test and reference labels.

    Parameters
    ----------
    test_names, ref_names : dict
        Label value (> 0) -> name, for the test (AI) and reference label maps.

    Returns
    -------
    list of ``(name, test_value, reference_value)``
        In test-value order. A value is an ``int``, or a tuple of ints when parts are merged
        (``kidney_left`` + ``kidney_right`` against ``kidneys``). Rules, in order: equal
        normalised names (:func:`normalise_name`); a :data:`GROUPS` name on one side against its
        parts on the other; then equal values where one side has no real name (``"label 3"``,
        ``"3"``, ``""``); finally, if nothing matched and each side has exactly one label, those
        two. Labels left unmatched are not compared.
    """
    t_by: dict[str, list[int]] = {}
    r_by: dict[str, list[int]] = {}
    for v, n in sorted(test_names.items()):
        t_by.setdefault(normalise_name(n), []).append(int(v))
    for v, n in sorted(ref_names.items()):
        r_by.setdefault(normalise_name(n), []).append(int(v))
    pairs: list[tuple[str, LabelValue, LabelValue]] = []
    used_t: set[int] = set()
    used_r: set[int] = set()

    def add(name: str, tv: Sequence[int], rv: Sequence[int]) -> None:
        pairs.append((name, _plain(tuple(sorted(tv))), _plain(tuple(sorted(rv)))))
        used_t.update(tv)
        used_r.update(rv)

    for n, tv in t_by.items():
        if n in r_by and not _generic(n):
            add(n, tv, r_by[n])
    for group, parts in GROUPS.items():
        for mine, other, flip in ((t_by, r_by, False), (r_by, t_by, True)):
            if group in mine and not set(mine[group]) & (used_r if flip else used_t):
                got = [v for p in parts for v in other.get(p, []) if v not in (used_t if flip else used_r)]
                if got:
                    if flip:
                        add(group, got, mine[group])
                    else:
                        add(group, mine[group], got)
    for v, n in sorted(test_names.items()):
        if v in used_t or v not in ref_names or v in used_r:
            continue
        if _generic(n) or _generic(ref_names[v]):
            name = ref_names[v] if _generic(n) else n
            add(normalise_name(name) if not _generic(name) else f"label {v}", [v], [v])
    if not pairs and len(test_names) == 1 and len(ref_names) == 1:
        (t_only, tn), = test_names.items()
        (r_only, rn), = ref_names.items()
        name = rn if not _generic(rn) else (tn if not _generic(tn) else f"label {t_only}")
        add(normalise_name(name) if not _generic(name) else name, [t_only], [r_only])
    pairs.sort(key=lambda p: _as_tuple(p[1])[0])
    return pairs


@dataclass
class LabelComparison:
    """Metrics of one matched label (see :func:`radreview.review.metrics.mask_metrics`).

    ``worst_slice`` is the z index (axis 0 of the arrays) with the most disagreeing voxels of
    this label (the slice with most voxels of the label when they agree everywhere; ``None``
    when both are empty) and ``worst_slice_lps`` the LPS centre (mm) of those voxels in that
    slice (needs the volume's geometry).
    """

    name: str
    test_value: LabelValue
    reference_value: LabelValue
    metrics: dict[str, Any]
    lesions: dict[str, int]
    worst_slice: int | None = None
    worst_slice_lps: list[float] | None = None
    disagreement_voxels: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The ``comparison.json`` entry: ``name``, ``test_value``, ``reference_value`` (int, or
        list for merged parts), the metrics, ``lesions``, ``worst_slice``, ``worst_slice_lps``."""
        tv, rv = self.test_value, self.reference_value
        d: dict[str, Any] = {
            "name": self.name,
            "test_value": list(tv) if isinstance(tv, tuple) else tv,
            "reference_value": list(rv) if isinstance(rv, tuple) else rv,
        }
        for k in ("dice", "jaccard", "hd95_mm", "hd_mm", "assd_mm", "mssd_mm", "volume_test_ml",
                  "volume_reference_ml", "volume_diff_ml", "volume_diff_pct", "sensitivity", "precision", "empty"):
            v = self.metrics.get(k)
            d[k] = float(v) if isinstance(v, (float, np.floating)) else v
        d["lesions"] = dict(self.lesions)
        d["worst_slice"] = self.worst_slice
        d["worst_slice_lps"] = self.worst_slice_lps
        return d


def _boxes(labels: np.ndarray) -> list:
    from scipy import ndimage

    if labels.dtype.kind not in "iu":
        raise ValueError(f"label maps must be integer arrays, got {labels.dtype}")
    return ndimage.find_objects(labels)


def _union_box(boxes: list, values: Sequence[int]) -> tuple[slice, ...] | None:
    got = [boxes[v - 1] for v in values if 0 < v <= len(boxes) and boxes[v - 1] is not None]
    if not got:
        return None
    return tuple(slice(min(b[a].start for b in got), max(b[a].stop for b in got)) for a in range(3))


def _merge(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _mask(arr: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    return arr == values[0] if len(values) == 1 else np.isin(arr, values)


def label_boxes(labels: np.ndarray) -> list:
    """Bounding box (tuple of 3 slices, or ``None``) of every value ``1..max`` of an integer
    label map (``scipy.ndimage.find_objects``); pass it to :func:`compare_labels` and
    :func:`disagreement_map` to scan each label map once."""
    return _boxes(np.asarray(labels))


def compare_labels(test: np.ndarray, reference: np.ndarray, spacing_zyx: tuple[float, float, float],
                   pairs: list[tuple[str, LabelValue, LabelValue]], volume=None, boxes=None,
                   workers: int | None = None) -> list[LabelComparison]:
    """One :class:`LabelComparison` per pair.

    Parameters
    ----------
    test, reference : numpy.ndarray
        Integer label maps ``(z, y, x)`` on the same grid (AI output and reference).
    spacing_zyx : tuple of 3 floats
        Voxel spacing ``(sz, sy, sx)`` in mm (a :class:`~radreview.studies.Volume`'s ``spacing``
        reversed).
    pairs : list of ``(name, test_value, reference_value)``
        From :func:`match_labels`; a value may be a tuple of values (merged).
    volume : radreview.studies.Volume, optional
        The study; when given, ``worst_slice_lps`` is filled from its geometry.
    boxes : (list, list), optional
        :func:`label_boxes` of ``test`` and ``reference`` if already computed.
    workers : int, optional
        Labels computed in parallel on this many threads (default: CPU count, at most 4).

    Raises
    ------
    ValueError
        If the maps differ in shape, are not 3-D or not integer.
    """
    test = np.asarray(test)
    reference = np.asarray(reference)
    if test.shape != reference.shape or test.ndim != 3:
        raise ValueError(f"label maps must be 3-D with equal shapes, got {test.shape} and {reference.shape}")
    bt, br = boxes if boxes is not None else (_boxes(test), _boxes(reference))

    def one(pair) -> LabelComparison:
        name, tv, rv = pair
        tvs, rvs = _as_tuple(tv), _as_tuple(rv)
        box = _merge(_union_box(bt, tvs), _union_box(br, rvs))
        if box is None:
            m = mask_metrics(np.zeros((1, 1, 1), bool), np.zeros((1, 1, 1), bool), spacing_zyx)
            return LabelComparison(name, tv, rv, m, {"reference": 0, "detected": 0, "missed": 0, "test_only": 0})
        t = _mask(test[box], tvs)
        r = _mask(reference[box], rvs)
        m = mask_metrics(t, r, spacing_zyx, cropped=True)
        les = lesion_counts(t, r, cropped=True)
        diff = t ^ r
        per_z = diff.sum(axis=(1, 2))
        src = diff if per_z.any() else (t | r)
        per_z = src.sum(axis=(1, 2))
        kz = int(np.argmax(per_z))
        jj, ii = np.nonzero(src[kz])
        z = kz + box[0].start
        lps = None
        if volume is not None:
            c = [float(ii.mean()) + box[2].start, float(jj.mean()) + box[1].start, float(z)]
            lps = [float(v) for v in volume.index_to_lps(c)]
        return LabelComparison(name, tv, rv, m, les, worst_slice=z, worst_slice_lps=lps,
                               disagreement_voxels=int(diff.sum()))

    workers = min(len(pairs), workers or min(os.cpu_count() or 1, 4))
    if workers <= 1:
        return [one(p) for p in pairs]
    # labels in parallel: NumPy, SimpleITK and the k-d tree queries release the GIL
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, pairs))


def disagreement_map(test: np.ndarray, reference: np.ndarray,
                     pairs: list[tuple[str, LabelValue, LabelValue]], boxes=None) -> np.ndarray:
    """Where test and reference agree, over all matched labels: uint8 ``(z, y, x)``.

    0 background (no matched label in either), 1 (:data:`BOTH`) the same matched label in
    both, 2 (:data:`TEST_ONLY`) a matched label in the test that the reference does not have
    there, 3 (:data:`REFERENCE_ONLY`) a matched label in the reference only. Where the two name
    different labels (confusion) the voxel is 2.
    """
    test = np.asarray(test)
    reference = np.asarray(reference)
    if test.shape != reference.shape:
        raise ValueError(f"label maps must have equal shapes, got {test.shape} and {reference.shape}")
    out = np.zeros(test.shape, dtype=np.uint8)
    bt, br = boxes if boxes is not None else (_boxes(test), _boxes(reference))
    for _name, tv, rv in pairs:
        tvs, rvs = _as_tuple(tv), _as_tuple(rv)
        box = _merge(_union_box(bt, tvs), _union_box(br, rvs))
        if box is None:
            continue
        t = _mask(test[box], tvs)
        r = _mask(reference[box], rvs)
        o = out[box]
        o[t & r & (o == 0)] = BOTH
        o[t & ~r] = TEST_ONLY
        o[r & ~t & (o != TEST_ONLY)] = REFERENCE_ONLY
    return out
