"""``radreview compare`` outputs: ``comparison.json``, ``disagreement.nii.gz``, ``report.html``.

:func:`run_compare` is the headless pipeline (open the study, read both segmentations onto
its grid, match labels, metrics, disagreement map, report) used by the command line; the
viewer's comparison panel calls :mod:`radreview.review.compare` directly. Key images are drawn
with matplotlib's Agg backend (no display, no VTK): the study slice with most disagreement of
each label, reference contour green, test contour red, test-only voxels red and
reference-only voxels green (translucent).

Everything is written into a temporary folder beside ``out_dir`` and renamed into place at
the end, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .compare import LabelComparison, compare_labels, disagreement_map, label_boxes, match_labels
from radreview.studies.errors import RadreviewError

__all__ = ["run_compare", "write_report", "key_image", "CompareError"]


class CompareError(ValueError, RadreviewError):
    """A comparison that cannot be made (no label in common...); the message says why."""


def _window(volume) -> tuple[float, float]:
    info = volume.info
    if info.window_center is not None and info.window_width:
        return float(info.window_center), float(info.window_width)
    if (info.modality or "").upper() == "CT":
        return 40.0, 400.0  # soft-tissue window (HU)
    lo, hi = np.percentile(volume.array[:: max(1, volume.array.shape[0] // 8)], [1, 99])
    return float((lo + hi) / 2), float(max(hi - lo, 1e-6))


def key_image(volume, test_mask: np.ndarray, ref_mask: np.ndarray, z: int, path: Path, title: str) -> None:
    """Write a PNG of axial slice ``z`` of ``volume`` with the two masks of that slice (boolean
    ``(y, x)``) drawn over it: test contour/only-voxels red, reference green. matplotlib Agg,
    no display."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    c, w = _window(volume)
    img = np.clip((volume.array[z].astype(np.float32) - (c - w / 2)) / w, 0, 1)
    if volume.info.invert_grayscale:
        img = 1 - img
    t, r = np.asarray(test_mask, bool), np.asarray(ref_mask, bool)
    ny, nx = img.shape
    sx, sy = volume.spacing[0], volume.spacing[1]
    fig = Figure(figsize=(4, 4 * (ny * sy) / (nx * sx)), dpi=100)
    ax = fig.add_axes((0, 0, 1, 0.93))
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect=sy / sx)
    over = np.zeros((ny, nx, 4), np.float32)
    over[t & ~r] = (1, 0.1, 0.1, 0.45)
    over[r & ~t] = (0.1, 1, 0.1, 0.45)
    ax.imshow(over, interpolation="nearest", aspect=sy / sx)
    if r.any():
        ax.contour(r.astype(np.uint8), levels=[0.5], colors=["#30ff30"], linewidths=0.8)
    if t.any():
        ax.contour(t.astype(np.uint8), levels=[0.5], colors=["#ff3030"], linewidths=0.8)
    ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)


def _fmt(v, nd=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def write_report(folder: Path, volume, test: np.ndarray, reference: np.ndarray, rows: list[LabelComparison],
                 meta: dict) -> Path:
    """Write ``folder/report.html``: the metrics table and one key image per label (PNG beside it).

    ``test`` and ``reference`` are integer label maps ``(z, y, x)`` on ``volume``'s grid; ``rows``
    the :func:`~radreview.review.compare.compare_labels` results (distances in mm, volumes in
    mL); ``meta`` the file names and timing shown in the header. Returns the HTML path.
    """
    from .compare import _as_tuple, _mask

    cols = [("dice", "Dice", 3), ("jaccard", "Jaccard", 3), ("hd95_mm", "HD95 mm", 1), ("hd_mm", "HD mm", 1),
            ("assd_mm", "ASSD mm", 2), ("mssd_mm", "MSSD mm", 2), ("volume_test_ml", "V test mL", 2),
            ("volume_reference_ml", "V ref mL", 2), ("volume_diff_ml", "ΔV mL", 2), ("volume_diff_pct", "ΔV %", 1),
            ("sensitivity", "Sens.", 3), ("precision", "Prec.", 3)]
    head = "".join(f"<th>{h}</th>" for _, h, _ in cols)
    body, figs = [], []
    for n, row in enumerate(rows):
        d = row.as_dict()
        les = d["lesions"]
        cells = "".join(f"<td>{_fmt(d[k], nd)}</td>" for k, _, nd in cols)
        body.append(f"<tr><td>{html.escape(d['name'])}</td>{cells}<td>{_fmt(d['empty'])}</td>"
                    f"<td>{les['reference']} / {les['detected']} / {les['missed']} / {les['test_only']}</td>"
                    f"<td>{_fmt(d['worst_slice'])}</td></tr>")
        if row.worst_slice is not None:
            safe = re.sub(r"[^A-Za-z0-9_]+", "_", row.name)[:40] or "label"
            png = f"key_{n:02d}_{safe}.png"
            tm = _mask(test[row.worst_slice], _as_tuple(row.test_value))
            rm = _mask(reference[row.worst_slice], _as_tuple(row.reference_value))
            key_image(volume, tm, rm, row.worst_slice, folder / png,
                      f"{row.name}: slice {row.worst_slice} (most disagreement), Dice {_fmt(d['dice'])}")
            figs.append(f"<figure><img src='{png}' alt='{html.escape(row.name)}'><figcaption>{html.escape(row.name)}: "
                        f"z = {row.worst_slice}; red = test only / test contour, green = reference only / reference "
                        "contour</figcaption></figure>")
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>radreview comparison</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:2px 6px;text-align:right}} td:first-child{{text-align:left}}
figure{{display:inline-block;margin:6px}} img{{max-width:420px}}</style></head><body>
<h1>Segmentation comparison</h1>
<p>Image: {html.escape(str(meta['image']))}<br>Test: {html.escape(str(meta['test']))}<br>
Reference: {html.escape(str(meta['reference']))}</p>
<p>Surface distances as in the Medical Segmentation Decathlon / MONAI (face-connected surface voxels, mm);
HD95 = 95th percentile of both directed sets; MSSD &gt; 0 where the test surface lies outside the reference.
Lesions: reference / detected (Dice &gt; 0.1) / missed / test-only components.</p>
<table><tr><th>label</th>{head}<th>empty</th><th>lesions</th><th>worst z</th></tr>
{''.join(body)}
</table>
{''.join(f'<p>{html.escape(w)}</p>' for w in meta.get('warnings', []))}
{''.join(figs)}
</body></html>
"""
    out = folder / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


def _atomic_dir(out_dir: Path):
    out_dir = Path(out_dir)
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    return tmp


def _commit_dir(tmp: Path, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_compare(image, test_path, reference_path, out_dir, names=None) -> dict:
    """Compare two segmentations of ``image``; write ``comparison.json``, ``disagreement.nii.gz``
    and ``report.html`` (+ key-image PNGs) into ``out_dir``.

    Parameters
    ----------
    image : path-like
        Any study :func:`radreview.studies.open_volume` opens.
    test_path, reference_path : path-like
        Label map (NIfTI/NRRD/MHA), DICOM SEG or RTSTRUCT files.
    names : list of str or "a,b", optional
        Names for a label map that has no sidecar JSON (see
        :func:`radreview.studies.labels.load_reference`).

    Returns
    -------
    dict
        The ``comparison.json`` content.

    Raises
    ------
    FileNotFoundError, radreview.studies.LoadError, radreview.studies.labels.LabelImportError,
    CompareError
        Missing or unreadable inputs, different Frame of Reference, no overlap, no label in
        common. Nothing is left in ``out_dir`` then.
    """
    from radreview.studies import open_volume, save_label_file
    from radreview.studies import is_image_file
    from radreview.studies.labels import load_reference, read_sidecar_names

    t0 = time.perf_counter()
    for p in (image, test_path, reference_path):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: no such file or folder")
    volume = open_volume(image)
    study = image if os.path.isdir(image) else None

    def read(p):  # --names is for label maps that carry no names of their own (sidecar JSON)
        own = not is_image_file(p) or read_sidecar_names(p) is not None
        return load_reference(p, volume, names=None if own else names, study_path=study)

    test, ref = read(test_path), read(reference_path)
    pairs = match_labels(test.names, ref.names)
    if not pairs:
        raise CompareError(f"no label in common: test has {sorted(test.names.values())[:12]}, reference has "
                           f"{sorted(ref.names.values())[:12]} (give --names, or sidecar JSON files)")
    spacing_zyx = (float(volume.spacing[2]), float(volume.spacing[1]), float(volume.spacing[0]))
    boxes = (label_boxes(test.array), label_boxes(ref.array))
    rows = compare_labels(test.array, ref.array, spacing_zyx, pairs, volume=volume, boxes=boxes)
    dmap = disagreement_map(test.array, ref.array, pairs, boxes=boxes)
    tmp = _atomic_dir(Path(out_dir))
    try:
        save_label_file(dmap, volume, tmp / "disagreement.nii.gz")
        result = {
            "image": str(image), "test": str(test_path), "reference": str(reference_path),
            "seconds": 0.0,
            "labels": [r.as_dict() for r in rows],
            "warnings": list(test.warnings) + list(ref.warnings),
        }
        write_report(tmp, volume, test.array, ref.array, rows, result)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        (tmp / "comparison.json").write_text(json.dumps(result, indent=1))
        _commit_dir(tmp, Path(out_dir))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
