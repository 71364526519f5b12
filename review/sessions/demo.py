"""``radreview session demo``: a small reading session from real data with known truth.

Cases are real chest CT slabs from ``../shared/data``: the chest CT crop
(``ct-chest-crops/chest_crop_1.nii.gz``, 1.5 mm, cut into 42 mm slabs) and the Lung-PET-CT-Dx
chest CT (``ct-chest-tumor/series_B40f``, 8 mm slices; only slabs at least 16 mm away from every
slice with an annotated tumour box, so no real tumour is in them). Half of the cases, drawn from
the seed, get one real LIDC-IDRI nodule (solid or part-solid, not calcified, 6-20 mm: the
session question's "positive") pasted into the lungs with :func:`radreview.studies.paste.paste_nodule`
at a point at least 8 mm inside the HU-rule lung mask; the truth file holds each case's answer
and the pasted nodule's centre (LPS mm).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .core import ReadingSession
from radreview.studies.errors import RadreviewError

__all__ = ["DemoError", "build_demo", "demo_backgrounds"]


class DemoError(RuntimeError, RadreviewError):
    """The shared data folder is missing or incomplete (the message names what is missing)."""


def _data_dir(data_dir) -> Path:
    if data_dir:
        d = Path(data_dir)
    elif os.environ.get("RADREVIEW_DATA_MIRROR"):
        d = Path(os.environ["RADREVIEW_DATA_MIRROR"])
    else:
        d = Path.cwd().parent / "shared" / "data"
    need = [d / "ct-chest-crops" / "chest_crop_1.nii.gz", d / "ct-chest-tumor" / "series_B40f",
            d / "ct-lung-nodules-lidc" / "nodules.csv"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise DemoError(f"demo data missing: {', '.join(missing)} (pass --data or set RADREVIEW_DATA_MIRROR)")
    return d


def _tumour_z(series: Path, annotations: Path) -> list[float]:
    """LPS z (mm) of the slices of ``series`` that have a tumour box in ``annotations``."""
    import pydicom

    boxed = {p.stem for p in annotations.glob("*.xml")}
    zs = []
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if str(ds.SOPInstanceUID) in boxed:
            zs.append(float(ds.ImagePositionPatient[2]))
    return zs


def demo_backgrounds(data_dir=None) -> list[tuple[str, sitk.Image]]:
    """``[(name, image)]``: the tumour-free chest slabs the demo cases are made of (HU, int16)."""
    from radreview.studies import open_volume

    d = _data_dir(data_dir)
    out = []
    crop = sitk.ReadImage(str(d / "ct-chest-crops" / "chest_crop_1.nii.gz"))
    n = 28  # 42 mm at 1.5 mm
    for i in range(crop.GetSize()[2] // n):
        out.append((f"chestcrop-slab{i + 1}", crop[:, :, i * n:(i + 1) * n]))
    series = d / "ct-chest-tumor" / "series_B40f"
    vol = open_volume(series)
    img = vol.to_sitk()
    tz = _tumour_z(series, d / "ct-chest-tumor" / "annotations")
    zs = np.array([img.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(img.GetSize()[2])])
    free = np.array([all(abs(z - t) >= 16.0 for t in tz) for z in zs]) if tz else np.ones(len(zs), bool)
    k, slab = 0, 6  # 48 mm at 8 mm
    j = 1
    while k + slab <= len(zs):
        if free[k:k + slab].all():
            out.append((f"chesttumour-B40f-slab{j}", sitk.Cast(img[:, :, k:k + slab], sitk.sitkInt16)))
            j += 1
            k += slab
        else:
            k += 1
    return out


def _deep_lung_point(img: sitk.Image, rng: np.random.Generator, depth_mm: float = 8.0):
    from radreview.inference.lungs import lung_mask

    hu = sitk.GetArrayFromImage(img)
    lungs = lung_mask(hu, img.GetSpacing(), crop=True)
    rad = [max(1, int(round(depth_mm / s))) for s in img.GetSpacing()]
    m = sitk.GetImageFromArray(lungs.astype(np.uint8))
    deep = sitk.GetArrayFromImage(sitk.BinaryErode(m, rad, sitk.sitkBall)) > 0
    pts = np.argwhere(deep)
    if len(pts) == 0:
        return None
    z, y, x = pts[rng.integers(len(pts))]
    return img.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))


def build_demo(db, data_dir=None, readers=("reader1", "reader2"), mode: str = "sequential", seed: int = 7,
               n_cases: int = 6, folder=None) -> dict:
    """Write the demo cases (NIfTI, int16 HU), ``cases.csv`` and ``truth.csv`` into ``folder``
    (default: ``<db stem>_cases`` beside a SQLite ``db``, or ``./radreview-demo-cases``) and create
    the session in ``db``. Returns ``{"db", "folder", "cases", "positives", "readers", "mode"}``.

    Raises
    ------
    DemoError
        Missing shared data, or fewer usable slabs than ``n_cases``.
    """
    from radreview.studies.paste import lidc_table, load_lidc_nodule, nodule_type_of, paste_nodule

    from .core import read_cases_csv, read_truth_csv

    d = _data_dir(data_dir)
    rng = np.random.default_rng(seed)
    bgs = demo_backgrounds(d)
    if len(bgs) < n_cases:
        raise DemoError(f"only {len(bgs)} tumour-free chest slabs in {d}; ask for at most that many cases")
    pick = rng.choice(len(bgs), n_cases, replace=False)
    positive = set(rng.choice(n_cases, n_cases // 2, replace=False).tolist())
    if folder is None:
        s = str(db)
        folder = (Path(s).with_name(Path(s).stem + "_cases") if "://" not in s else Path.cwd() / "radreview-demo-cases")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lidc = d / "ct-lung-nodules-lidc"
    rows = [r for r in lidc_table(lidc) if 6.0 <= float(r["diameter_mm"]) <= 20.0
            and r["Calcification"] == "Absent" and nodule_type_of(int(r["Texture_value"])) != "ground glass"
            and (lidc / "image" / f"{r['patient_id']}_R_{int(r['nodule_id'])}.nii.gz").is_file()]
    cases, truth = [], []
    for i, bi in enumerate(pick):
        name, img = bgs[int(bi)]
        cid = f"case{i + 1:02d}"
        out = img
        lesion = None
        if i in positive:
            for _ in range(20):
                r = rows[int(rng.integers(len(rows)))]
                c = _deep_lung_point(img, rng)
                if c is None:
                    break
                nod = load_lidc_nodule(lidc, r["patient_id"], int(r["nodule_id"]), r)
                try:
                    arr, mask = paste_nodule(img, nod.image, nod.mask, c)
                except ValueError:
                    continue
                out = sitk.GetImageFromArray(np.rint(arr).astype(np.int16))
                out.CopyInformation(img)
                lesion = (c, nod.patient, nod.nodule_id, nod.diameter_mm)
                break
        p = folder / f"{cid}.nii.gz"
        sitk.WriteImage(sitk.Cast(out, sitk.sitkInt16), str(p), True)
        cases.append((cid, p.name, name))
        if lesion:
            (x, y, z), pat, nid, diam = lesion
            truth.append((cid, 1, f"{x:.2f}", f"{y:.2f}", f"{z:.2f}", f"{pat} nodule {nid}, {diam:.1f} mm"))
        else:
            truth.append((cid, 0, "", "", "", ""))
    with open(folder / "cases.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "path", "source"])
        w.writerows(cases)
    with open(folder / "truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "positive", "x", "y", "z", "lesion"])
        w.writerows(truth)
    t, les = read_truth_csv(folder / "truth.csv")
    session = ReadingSession.create(db, read_cases_csv(folder / "cases.csv"), list(readers), mode, truth=t, lesions=les,
                                    seed=seed)
    info = {"db": session.store.name, "folder": str(folder), "cases": len(cases), "positives": sum(v for v in t.values()),
            "readers": list(readers), "mode": mode}
    session.close()
    return info
