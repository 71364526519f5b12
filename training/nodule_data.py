"""Data for ``ct-nodule-2p5d`` 0.2: the fixed patient split, background lungs, pasted cases.

Split (``training/nodule_split.json``, written by ``python -m training.nodule_data``): every
LIDC-IDRI patient goes to ``test`` (held out), ``calibration`` or ``train`` by
``sha256("radreview-nodule-split-v1:" + patient_id)`` mod 100: < 20 test, 20-39 calibration,
else train. Nodules follow their patient, never split by nodule.

Backgrounds (real nodule-free lung, ``../shared/data``):

* train: ``C`` chest CTA crop (ct-chest-crops, slices 0-79 of 112) and ``B`` the abdominal
  scan's lung bases (ct-abdomen-nifti), each also re-sliced to 5 mm and 8 mm thick slices
  (box average) for the slice-thickness gap;
* calibration: ``C`` slices 84-111 (a separate slab of the same crop: the only other chest),
  native, 5 mm and (from 0.3) 8 mm;
* test: ``D40`` and ``D70``, patient Lung_Dx-A0002 of ct-chest-tumor (B40f and B70f
  reconstructions), the slices at least 24 mm from the real adenocarcinoma's annotated boxes.

A case is a background with LIDC nodules of one split pasted at random lung points
(``radreview.studies.paste.paste_nodule``), with the truth of each pasted nodule.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from radreview.inference.lungs import closed_lung_mask
from radreview.studies import Volume, load_image_file, open_volume, scan
from radreview.studies.paste import LidcNodule, lidc_table, load_lidc_nodule, paste_nodule
from training.seg_data import DATA

LIDC = DATA / "ct-lung-nodules-lidc"
SPLIT_FILE = Path(__file__).with_name("nodule_split.json")
SALT = "radreview-nodule-split-v1:"
TUMOUR_MARGIN_MM = 24.0


def split_of(patient: str) -> str:
    """``"test"``, ``"calibration"`` or ``"train"`` for an LIDC patient id (seeded hash)."""
    h = int(hashlib.sha256((SALT + patient).encode()).hexdigest(), 16) % 100
    return "test" if h < 20 else "calibration" if h < 40 else "train"


def write_split(path: Path = SPLIT_FILE) -> dict:
    rows = lidc_table(LIDC)
    pats = sorted({r["patient_id"] for r in rows})
    out = {"rule": f"sha256('{SALT}' + patient_id) mod 100: < 20 test, 20-39 calibration, else train",
           "lidc_patients": {s: [p for p in pats if split_of(p) == s] for s in ("train", "calibration", "test")},
           "backgrounds": {"train": ["C slices 0-79 (ct-chest-crops/chest_crop_1.nii.gz)", "B (ct-abdomen-nifti/ct.nii.gz lung bases)",
                                     "the same re-sliced to 5 mm and 8 mm"],
                           "calibration": ["C slices 84-111"],
                           "test": ["D40 ct-chest-tumor/series_B40f, slices >= 24 mm from the tumour boxes",
                                    "D70 ct-chest-tumor/series_B70f, same slices"]}}
    out["lidc_nodules"] = {s: sum(1 for r in rows if split_of(r["patient_id"]) == s) for s in ("train", "calibration", "test")}
    path.write_text(json.dumps(out, indent=1))
    return out


def nodules(split: str) -> list[LidcNodule]:
    """Every LIDC nodule of a split (loaded)."""
    return [load_lidc_nodule(LIDC, r["patient_id"], int(r["nodule_id"]), r) for r in lidc_table(LIDC)
            if split_of(r["patient_id"]) == split]


def tumour_boxes(folder: Path) -> list[np.ndarray]:
    """Each annotated tumour box of ct-chest-tumor as 4 LPS corners ``(4, 3)``."""
    frames = {f.sop_instance_uid: f for s in scan(folder).volumes for f in s.frames}
    boxes = []
    for xml in sorted((DATA / "ct-chest-tumor/annotations").glob("*.xml")):
        f = frames.get(xml.stem)
        if f is None:
            continue
        for obj in ET.parse(xml).getroot().iter("object"):
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            row, col = np.asarray(f.orientation[:3]), np.asarray(f.orientation[3:])
            sr, sc = f.pixel_spacing
            boxes.append(np.array([np.asarray(f.position) + row * sc * x + col * sr * y
                                   for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]))
    return boxes


def reslice_thick(vol: Volume, thickness_mm: float, phase: int = 0) -> Volume:
    """The volume re-sliced to ``thickness_mm`` slices (box average along k, then every n-th),
    the first thick slice starting at native slice ``phase`` (another phase cuts the same anatomy
    with other partial-volume averages)."""
    n = max(1, int(round(thickness_mm / vol.spacing[2])))
    a = vol.array[phase:].astype(np.float32)
    k = (a.shape[0] // n) * n
    a = a[:k].reshape(k // n, n, *a.shape[1:]).mean(axis=1)
    origin = vol.index_to_lps([0, 0, phase + (n - 1) / 2])
    return Volume(np.rint(a).astype(np.int16), (vol.spacing[0], vol.spacing[1], vol.spacing[2] * n), tuple(origin),
                  vol.direction, vol.info)


def _sub(vol: Volume, k0: int, k1: int) -> Volume:
    return Volume(np.ascontiguousarray(vol.array[k0:k1]), vol.spacing, tuple(vol.index_to_lps([0, 0, k0])), vol.direction, vol.info)


@lru_cache(maxsize=None)
def background(name: str) -> tuple[Volume, bool]:
    """``(volume, crop)`` of a named background (see module doc)."""
    if name.startswith("C"):
        vol = load_image_file(DATA / "ct-chest-crops/chest_crop_1.nii.gz", modality="CT")
        base = _sub(vol, 0, 80) if name.startswith("Ctrain") else _sub(vol, 84, vol.array.shape[0])
        crop = True
    elif name.startswith("B"):
        vol = load_image_file(DATA / "ct-abdomen-nifti/ct.nii.gz", modality="CT")
        base, crop = _sub(vol, 50, vol.array.shape[0]), False
    elif name.startswith("D"):
        folder = DATA / ("ct-chest-tumor/series_B40f" if name.startswith("D40") else "ct-chest-tumor/series_B70f")
        vol = open_volume(folder)
        boxes = tumour_boxes(DATA / "ct-chest-tumor/series_B40f")
        zt = np.array([b[0, 2] for b in boxes])
        zs = np.array([vol.index_to_lps([0, 0, k])[2] for k in range(vol.array.shape[0])])
        keep = np.flatnonzero(np.abs(zs[:, None] - zt[None, :]).min(axis=1) >= TUMOUR_MARGIN_MM)
        # the longest run of kept slices
        runs = np.split(keep, np.flatnonzero(np.diff(keep) > 1) + 1)
        run = max(runs, key=len)
        base, crop = _sub(vol, int(run[0]), int(run[-1]) + 1), False
    else:
        raise KeyError(name)
    stem, _, phase = name.partition("@")  # "B_8mm@1": 8 mm slabs starting at native slice 1
    for suffix, t in (("_5mm", 5.0), ("_8mm", 8.0)):
        if stem.endswith(suffix):
            base = reslice_thick(base, t, int(phase or 0))
    return base, crop


TRAIN_BGS = ["Ctrain", "Ctrain_5mm", "Ctrain_8mm", "B", "B_5mm", "B_8mm"]
#: 0.3: the thick-slice training backgrounds again at other slab phases (hard negatives: vessels
#: averaged into blobs by 8 mm slices look most like nodules)
TRAIN_BGS_EXTRA = ["Ctrain_8mm@2", "Ctrain_8mm@4", "B_8mm@1", "B_8mm@2", "Ctrain_5mm@2", "B_5mm@1"]
CAL_BGS = ["Ccal", "Ccal_5mm", "Ccal_8mm"]
TEST_BGS = ["D40", "D70"]


@lru_cache(maxsize=None)
def paste_points(name: str) -> np.ndarray:
    """LPS points ``(n, 3)`` of lung parenchyma (HU < -700, closed lungs) where nodules may go."""
    vol, crop = background(name)
    lungs = closed_lung_mask(vol.array, vol.spacing, crop=crop)
    ok = lungs & (vol.array < -700)
    idx = np.argwhere(ok)[:, ::-1]
    return vol.index_to_lps(idx.astype(float))


@dataclass
class Case:
    """A background with pasted nodules: ``volume`` (HU), ``crop`` flag, ``truth``: one dict per
    pasted nodule with ``center_lps``, ``diameter_mm``, ``qualifies``, ``nodule_type``,
    ``calcified``, ``patient``, ``nodule_id`` and ``mask`` (bool, on the volume's grid)."""

    name: str
    volume: Volume
    crop: bool
    truth: list = field(default_factory=list)


def make_case(bg: str, nods: list[LidcNodule], rng: np.random.Generator, min_sep_mm: float = 40.0) -> Case:
    """Paste ``nods`` at random parenchyma points of background ``bg``, at least ``min_sep_mm`` apart."""
    vol, crop = background(bg)
    pts = paste_points(bg)
    arr = vol.array.astype(np.float32)
    cur = Volume(arr, vol.spacing, vol.origin, vol.direction, vol.info)
    truth, used = [], []
    for nod in nods:
        for _ in range(50):
            c = pts[rng.integers(len(pts))]
            if all(np.linalg.norm(c - u) >= min_sep_mm for u in used):
                break
        used.append(c)
        arr, m = paste_nodule(cur, nod.image, nod.mask, c)
        cur = Volume(arr, vol.spacing, vol.origin, vol.direction, vol.info)
        for t in truth:
            t["mask"] &= ~m
        truth.append({"center_lps": tuple(float(v) for v in c), "diameter_mm": nod.diameter_mm, "qualifies": nod.qualifies,
                      "nodule_type": nod.nodule_type, "calcified": nod.calcified, "patient": nod.patient,
                      "nodule_id": nod.nodule_id, "mask": m})
    out = Volume(np.rint(arr).astype(np.int16), vol.spacing, vol.origin, vol.direction, vol.info)
    return Case(bg, out, crop, truth)


def match(center_lps, truth: list) -> int | None:
    """Index of the pasted nodule a candidate centre hits (within max(radius, 4 mm)), else None."""
    best = None
    for i, t in enumerate(truth):
        d = float(np.linalg.norm(np.asarray(center_lps) - np.asarray(t["center_lps"])))
        if d <= max(t["diameter_mm"] / 2, 4.0) and (best is None or d < best[0]):
            best = (d, i)
    return None if best is None else best[1]


if __name__ == "__main__":
    print(json.dumps({k: v for k, v in write_split().items() if k != "lidc_patients"}, indent=1))
