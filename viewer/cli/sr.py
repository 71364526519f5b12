"""``radreview sr export STUDY --db DB --out sr.dcm [--seg SEG | --labels INFER_DIR --seg-out SEG]``
and ``radreview sr pmap STUDY --explanation EXPLAIN_DIR --out pm.dcm``: results back in DICOM."""

from __future__ import annotations

import json
from pathlib import Path

from . import CliError


def on_series_grid(image, images):
    """Resample a SimpleITK image (nearest neighbour) onto the grid of the sorted DICOM ``images``;
    returns the ``(z, y, x)`` array in their order."""
    import numpy as np
    import SimpleITK as sitk

    iop = np.array(images[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    ipp = [np.array(d.ImagePositionPatient, float) for d in images]
    dz = float(np.dot(ipp[-1] - ipp[0], normal) / max(len(images) - 1, 1)) or 1.0
    ref = sitk.Image(int(images[0].Columns), int(images[0].Rows), len(images), sitk.sitkUInt8)
    ref.SetOrigin(tuple(ipp[0]))
    ref.SetSpacing((float(images[0].PixelSpacing[1]), float(images[0].PixelSpacing[0]), dz))
    ref.SetDirection(tuple(np.column_stack([iop[:3], iop[3:], normal]).ravel()))
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def _labels(infer_dir: Path, images):
    import SimpleITK as sitk

    seg, meta = infer_dir / "segmentation.nii.gz", infer_dir / "findings.json"
    if not seg.is_file() or not meta.is_file():
        raise CliError(f"{infer_dir}: expected segmentation.nii.gz and findings.json (the output of radreview infer)")
    names = {int(lab["index"]): str(lab["name"]) for lab in json.loads(meta.read_text())["labels"]}
    return on_series_grid(sitk.ReadImage(str(seg)), images), names


def _export(args) -> int:
    from radreview.review.sr import SRExportError, export_accepted_seg, export_sr, read_series, study_findings
    from radreview.review.store import ReviewStore, StoreCorrupt

    try:
        store = ReviewStore(args.db)
    except StoreCorrupt as exc:
        raise CliError(str(exc)) from None
    seg = args.seg
    try:
        if args.labels:
            if not args.seg_out:
                raise CliError("--labels needs --seg-out (where to write the DICOM SEG of accepted segmentations)")
            images = read_series(args.study)
            arr, names = _labels(Path(args.labels), images)
            seg = export_accepted_seg(images, arr, names, study_findings(store, str(images[0].StudyInstanceUID)), args.seg_out)
            print(f"SEG: {seg}" if seg else "SEG: none (no segmentation accepted or edited)")
        out = export_sr(args.study, store, args.out, seg_path=seg, reviewer=args.reviewer)
    except SRExportError as exc:
        raise CliError(str(exc)) from None
    print(f"SR: {out}")
    return 0


def _pmap(args) -> int:
    import SimpleITK as sitk

    from radreview.review.sr import SRExportError, export_parametric_map, read_series

    d = Path(args.explanation)
    hm, meta = d / "heatmap.nii.gz", d / "explanation.json"
    if not hm.is_file() or not meta.is_file():
        raise CliError(f"{d}: expected heatmap.nii.gz and explanation.json (the output of radreview explain)")
    info = json.loads(meta.read_text())
    try:
        images = read_series(args.study)
        out = export_parametric_map(images, on_series_grid(sitk.ReadImage(str(hm), sitk.sitkFloat32), images), args.out,
                                    str(info.get("model", "model")), str(info.get("target", "study")))
    except SRExportError as exc:
        raise CliError(str(exc)) from None
    print(f"Parametric Map: {out}")
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser("sr", help="DICOM SR (TID 1500), SEG and Parametric Map of a study's reviewed AI findings")
    ps = p.add_subparsers(dest="sr_cmd", required=True)
    e = ps.add_parser("export", help="Comprehensive 3D SR of the stored findings and decisions")
    e.add_argument("study", metavar="STUDY", help="the study's DICOM series folder")
    e.add_argument("--db", default=None, help="review database (default $RADREVIEW_DB)")
    e.add_argument("--out", required=True)
    e.add_argument("--seg", default=None, help="existing DICOM SEG the segmentation findings reference")
    e.add_argument("--labels", default=None, help="radreview infer output folder: write the SEG of accepted labels")
    e.add_argument("--seg-out", default=None)
    e.add_argument("--reviewer", default=None, help="person observer of the report (default: the last decision's)")
    e.set_defaults(func=_export)
    m = ps.add_parser("pmap", help="Grad-CAM heatmap as a DICOM Parametric Map")
    m.add_argument("study", metavar="STUDY")
    m.add_argument("--explanation", required=True, help="radreview explain output folder")
    m.add_argument("--out", required=True)
    m.set_defaults(func=_pmap)
