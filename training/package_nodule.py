"""Quantize, calibrate, evaluate and package ``ct-nodule-2p5d`` after ``training.train_nodule``.

Usage: ``python -m training.package_nodule [--cases 160]``

* INT8: static QDQ, percentile calibration, first/last conv FP32 (the segmentation model's
  recipe), calibration patches from the training backgrounds with insertions.
* Temperature scaling (Guo et al., ICML 2017): T fitted by NLL on validation cases built on the
  *training* backgrounds with a fresh seed.
* Held-out: cases are 128 x 128 mm x 25-slice crops of patient D (ct-chest-tumor, B40f; never
  trained on), centred in lung at least 40 mm from the real tumour's annotated boxes, with a
  nodule (>= 6 mm: positive; 3-6 mm: negative for the question), a vessel-like distractor or
  nothing. Each crop runs through the shipped runtime (``inference.classify``).
* Metrics: AUC, sensitivity/specificity and confusion matrix at the shipped threshold 0.5, ECE
  (10 equal-width bins) before/after temperature scaling, sensitivity by size band, FP32 vs
  INT8, Grad-CAM pointing game on detected positives, weight-randomisation sanity check, and the
  real adenocarcinoma of patient D (probability, Grad-CAM peak inside its boxes).
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radreview.inference.classify import classify, size_gate
from radreview.inference.package import ModelPackage, load_package, sha256_file
from radreview.inference.quantize import edge_convs, quantize_static_int8
from radreview.inference.segment import normalize, to_model_grid
from radreview.studies import Volume, open_volume, scan
from training.seg_data import DATA
from training.train_nodule import CTX, NORM, SPACING, background, make_case

OUT = Path("resources/models/ct-nodule-2p5d")
THRESHOLD = 0.5
SIZE_BANDS = [(3, 6), (6, 10), (10, 20), (20, 50)]


def heldout_background():
    """Patient D (B40f) on the model grid, its lung mask, grid, the volume and tumour boxes (LPS)."""
    from radreview.inference.lungs import lung_mask

    folder = DATA / "ct-chest-tumor/series_B40f"
    vol = open_volume(folder)
    grid = to_model_grid(vol, SPACING)
    hu = sitk.GetArrayFromImage(grid)
    return hu, lung_mask(hu, SPACING), grid, vol, tumour_boxes(folder)


def tumour_boxes(folder: Path) -> list[np.ndarray]:
    """Each annotated box as 4 LPS corners ``(4, 3)`` (Pascal VOC pixel boxes on their slices)."""
    frames = {f.sop_instance_uid: f for s in scan(folder).volumes for f in s.frames}
    boxes = []
    for xml in sorted((DATA / "ct-chest-tumor/annotations").glob("*.xml")):
        f = frames.get(xml.stem)
        if f is None:
            continue
        root = ET.parse(xml).getroot()
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            row, col = np.asarray(f.orientation[:3]), np.asarray(f.orientation[3:])
            sr, sc = f.pixel_spacing
            pts = [np.asarray(f.position) + row * sc * x + col * sr * y for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
            boxes.append(np.array(pts))
    return boxes


def inside_boxes(lps, boxes, slice_tol_mm: float = 4.0, margin_mm: float = 0.0) -> bool:
    p = np.asarray(lps)
    for b in boxes:
        if abs(p[2] - b[0, 2]) > slice_tol_mm:
            continue
        lo, hi = b.min(axis=0) - margin_mm, b.max(axis=0) + margin_mm
        if lo[0] <= p[0] <= hi[0] and lo[1] <= p[1] <= hi[1]:
            return True
    return False


def case_volume(block: np.ndarray, grid: sitk.Image, center_idx_zyx, c_block) -> Volume:
    """The crop as a Volume on the model grid (identity direction) at its true LPS position."""
    z, y, x = (int(v) for v in center_idx_zyx)
    cz, cy, cx = c_block
    origin = grid.TransformIndexToPhysicalPoint((x - cx, y - cy, z - cz))
    from radreview.studies.volume import StudyInfo

    return Volume(block.astype(np.int16), spacing=SPACING, origin=origin, info=StudyInfo(modality="CT"))


def build_cases(hu, lungs, grid, rng, n, boxes=None):
    """``n`` evaluation cases: list of dicts with the crop Volume, truth and insertion data."""
    cases = []
    pts = np.argwhere(lungs)
    kinds = ["pos"] * (n // 2) + ["small"] * (n // 8) + ["vessel"] * (n // 8)
    kinds += ["none"] * (n - len(kinds))
    for kind in kinds:
        for _ in range(200):
            center = pts[rng.integers(len(pts))]
            if boxes is not None:
                lps = grid.TransformIndexToPhysicalPoint([int(center[2]), int(center[1]), int(center[0])])
                if any(np.linalg.norm(np.asarray(lps)[:2] - b.mean(axis=0)[:2]) < 40 + np.ptp(b[:, :2], axis=0).max() / 2
                       and abs(lps[2] - b[0, 2]) < 60 for b in boxes):
                    continue
            break
        if kind == "pos":
            params = {"diameter_mm": float(np.exp(rng.uniform(np.log(6), np.log(50)))),
                      "style": str(rng.choice(["spherical", "lobulated", "spiculated"])), "hu": float(rng.uniform(20, 60))}
            block, mask, _, params, c = make_case(hu, lungs, rng, 128, 25, "nodule", params, center)
        elif kind == "small":
            params = {"diameter_mm": float(rng.uniform(3, 6)), "style": "spherical", "hu": float(rng.uniform(20, 60))}
            block, mask, _, params, c = make_case(hu, lungs, rng, 128, 25, "nodule", params, center)
        else:
            block, mask, _, params, c = make_case(hu, lungs, rng, 128, 25, "vessel" if kind == "vessel" else "none", None, center)
        cases.append({"kind": kind, "label": int(kind == "pos"), "d": (params or {}).get("diameter_mm"),
                      "volume": case_volume(block, grid, center, c), "mask": mask})
    return cases


def score_cases(cases, pkg, precision):
    out = []
    for case in cases:
        r = classify(case["volume"], pkg, precision, threads=2, crop=True)
        out.append({"p": r.study_probability, "cands": [(c.raw_max, c.size_mm) for c in r.candidates], "result": r})
    return out


def study_prob(cands, T):
    best = 0.0
    for raw, d in cands:
        p = float(np.clip(raw, 1e-6, 1 - 1e-6))
        best = max(best, 1 / (1 + np.exp(-np.log(p / (1 - p)) / T)) * size_gate(d))
    return best


def fit_temperature(scores, labels):
    y = np.asarray(labels)
    best = (1e9, 1.0)
    for T in np.exp(np.linspace(np.log(0.05), np.log(10), 80)):
        p = np.clip([study_prob(s["cands"], T) for s in scores], 1e-6, 1 - 1e-6)
        nll = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
        best = min(best, (nll, float(T)))
    return best[1]


def ece(p, y, bins=10):
    p, y = np.asarray(p), np.asarray(y)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if sel.any():
            total += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(total)


def metrics(ps, cases):
    from sklearn.metrics import confusion_matrix, roc_auc_score

    y = np.array([c["label"] for c in cases])
    p = np.array(ps)
    pred = (p >= THRESHOLD).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    bands = {}
    for lo, hi in SIZE_BANDS:
        sel = [i for i, c in enumerate(cases) if c["d"] is not None and lo <= c["d"] < hi]
        if sel:
            key = f"{lo}-{hi} mm"
            rate = float(pred[sel].mean())
            bands[key] = {"n": len(sel), ("positive_rate" if lo < 6 else "sensitivity"): round(rate, 3)}
    for kind in ("vessel", "none"):
        sel = [i for i, c in enumerate(cases) if c["kind"] == kind]
        bands[kind] = {"n": len(sel), "false_positive_rate": round(float(pred[sel].mean()), 3)}
    return {"n": int(len(y)), "positives": int(y.sum()), "auc": round(float(roc_auc_score(y, p)), 4),
            "sensitivity": round(float(tp / max(tp + fn, 1)), 4), "specificity": round(float(tn / max(tn + fp, 1)), 4),
            "confusion_matrix": {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}, "by_size_band": bands}


RUN_HISTORY = (
    "Two training runs were evaluated on the held-out patient. Run 1 (60/20/20 nodule/distractor/none sampling, "
    "no thick-slice augmentation): FP32 AUC 0.899, sensitivity 0.963, specificity 0.375 (TP 77, FP 50, TN 30, "
    "FN 3), ECE 0.305 -> 0.309, pointing game 0.90, randomisation Spearman median 0.04; the real tumour was "
    "candidate 3 (p 0.9997) among 58. Run 2 (shipped) adds thick-slice augmentation for the known slice-thickness "
    "gap (held-out series: 8 mm) and more negatives; it was committed to before seeing its held-out numbers."
)


def card(metrics_block, deltas, T, real, xai) -> dict:
    return {
        "id": "ct-nodule-2p5d", "version": "0.1.0", "task": "classification",
        "question": "Does this chest CT contain a solid pulmonary nodule or mass of at least 6 mm (Lung-RADS size threshold)?",
        "modality": ["CT"], "modality_mismatch": "refuse", "body_part": ["CHEST"],
        "input": {"dimensionality": "2.5D", "channels": 2 * CTX + 1, "context_slices": CTX, "spacing_mm": list(SPACING),
                  "patch_size": [128, 128], "overlap": 0.25, "orientation": "LPS", "normalization": NORM},
        "outputs": {"activation": "softmax", "labels": [
            {"index": 0, "name": "background", "color": [0, 0, 0],
             "snomed": {"category": {"scheme": "SCT", "value": "85756007", "meaning": "Tissue"}, "type": {"scheme": "SCT", "value": "85756007", "meaning": "Tissue"}}},
            {"index": 1, "name": "nodule", "color": [255, 64, 64],
             "snomed": {"category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
                        "type": {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"}}}]},
        "architecture": {"name": "UNet2p5D", "in_ch": 2 * CTX + 1, "n_cls": 2, "base": 16, "depth": 3},
        "gradcam_layer": "bottleneck",
        "files": {k: {"path": f, "sha256": sha256_file(OUT / f)} for k, f in
                  (("fp32", "fp32.onnx"), ("int8", "int8.onnx"), ("state_dict", "state_dict.pt"))},
        "calibration": {"temperature": T, "method": "temperature scaling of the candidate logit, NLL on validation cases "
                        "built on the training backgrounds (fresh seed)"},
        "review_policy": {"confidence_threshold": {"study": 0.9, "candidate": 0.9}, "decision_threshold": THRESHOLD,
                          "max_candidates": 10, "min_candidate_probability": 0.1},
        "training_data": [
            {"name": "C", "source": "shared/data/ct-chest-crops/chest_crop_1.nii.gz (chest CTA crop) + synthetic nodules/vessels"},
            {"name": "B", "source": "shared/data/ct-abdomen-nifti/ct.nii.gz lung bases + synthetic nodules/vessels"},
            {"name": "generator", "source": "training/nodules.py (3-50 mm solid nodules: spherical, lobulated, spiculated; partial volume)"}],
        "heldout_data": [{"name": "D", "source": "shared/data/ct-chest-tumor/series_B40f (Lung-PET-CT-Dx A0002), crops >= 40 mm from the real tumour, never trained on"}],
        "metrics": metrics_block, "int8_deltas": deltas, "real_tumour": real, "explanations": xai,
        "card_notes": RUN_HISTORY,
        "intended_use": "Research and demonstration of radreview's confidence gate and explanations; not for clinical use.",
        "limitations": [
            "Every lesion it was trained and tested on is synthetic; performance on real nodules is unknown beyond the single real tumour reported.",
            "Training lungs come from two patients (one a contrast CT angiogram crop); the held-out patient's series has 8 mm slices.",
            "Held-out metrics are per 128 mm x 62.5 mm crop, not per whole study; the real tumour's neighbourhood is excluded from them.",
            "Ground-glass and part-solid nodules, calcification and nodule growth are not modelled.",
        ],
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=160)
    ap.add_argument("--val-cases", type=int, default=96)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(2024)
    bgs = {n: background(n) for n in ("C", "B")}
    # INT8 calibration patches (training backgrounds only)
    patches = []
    for i in range(96):
        hu, lungs, _ = bgs["C" if i % 3 else "B"]
        block, _, _, _, c = make_case(hu, lungs, rng, 128, 3, None)
        patches.append(normalize(block, NORM))
    quantize_static_int8(OUT / "fp32.onnx", OUT / "int8.onnx", np.stack(patches).astype(np.float32),
                         method="percentile", keep_fp32=edge_convs(OUT / "fp32.onnx"))
    (OUT / "model.json").write_text(json.dumps(card({}, {}, 1.0, {}, {}), indent=1))
    pkg = load_package(OUT, check_hashes=True)
    # temperature on validation cases from the training backgrounds
    val = []
    for name in ("C", "B"):
        hu, lungs, grid = bgs[name]
        val += build_cases(hu, lungs, grid, np.random.default_rng(7 if name == "C" else 8), args.val_cases // 2)
    vs = score_cases(val, pkg, "fp32")
    T = fit_temperature(vs, [c["label"] for c in val])
    print("temperature", T, flush=True)
    # held-out
    hu, lungs, grid, vol_d, boxes = heldout_background()
    cases = build_cases(hu, lungs, grid, np.random.default_rng(99), args.cases, boxes)
    s32 = score_cases(cases, pkg, "fp32")
    s8 = score_cases(cases, pkg, "int8")
    y = [c["label"] for c in cases]
    before = [study_prob(s["cands"], 1.0) for s in s32]
    after32 = [study_prob(s["cands"], T) for s in s32]
    after8 = [study_prob(s["cands"], T) for s in s8]
    m32, m8 = metrics(after32, cases), metrics(after8, cases)
    met = {"heldout": "D crops", "threshold": THRESHOLD, "fp32": m32, "int8": m8,
           "ece": {"before_temperature": round(ece(before, y), 4), "after_temperature": round(ece(after32, y), 4), "bins": 10},
           "validation_for_temperature": {"cases": len(val), "backgrounds": "C, B (training patients, fresh insertions)"}}
    deltas = {"auc_fp32_minus_int8": round(m32["auc"] - m8["auc"], 4),
              "mean_abs_probability_difference": round(float(np.mean(np.abs(np.array(after32) - np.array(after8)))), 4),
              "decision_agreement": round(float(np.mean((np.array(after32) >= THRESHOLD) == (np.array(after8) >= THRESHOLD))), 4)}
    # write the calibrated card before explanations (they load the package)
    (OUT / "model.json").write_text(json.dumps(card(met, deltas, T, {}, {}), indent=1))
    pkg = load_package(OUT, check_hashes=True)
    from radreview.explain.gradcam import explain_candidate, load_twin, randomized_copy, spearman

    net = load_twin(pkg)
    hits, tried, times, fwd, rho = 0, 0, [], [], []
    for case, sc in zip(cases, s32):
        if case["label"] != 1 or not sc["result"].candidates:
            continue
        r = classify(case["volume"], pkg, "fp32", threads=2, crop=True)
        ex = explain_candidate(case["volume"], pkg, r, "study", net)
        idx = np.rint(case["volume"].lps_to_index(ex.peak_lps)).astype(int)
        m = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(case["mask"].astype(np.uint8)), [2, 2, 1])) > 0
        hits += bool(m[idx[2], idx[1], idx[0]])
        tried += 1
        times.append(ex.seconds)
        fwd.append(r.seconds)
        if len(rho) < 8:
            ex_r = explain_candidate(case["volume"], pkg, r, "study", randomized_copy(net, len(rho)), verify=False)
            rho.append(spearman(ex.heatmap, ex_r.heatmap))
    # the real adenocarcinoma (patient D, whole series)
    rd = classify(vol_d, pkg, "int8", threads=2)
    real = {"series": "ct-chest-tumor/series_B40f", "study_probability": round(rd.study_probability, 4),
            "top_candidate": None if not rd.candidates else {"center_lps": [round(v, 1) for v in rd.candidates[0].center_lps],
                                                             "size_mm": round(rd.candidates[0].size_mm, 1),
                                                             "probability": round(rd.candidates[0].probability, 4),
                                                             "inside_boxes": inside_boxes(rd.candidates[0].center_lps, boxes, 8.0, 5.0)}}
    try:
        exd = explain_candidate(vol_d, pkg, rd, "study", net)
        real["gradcam_peak_lps"] = [round(v, 1) for v in exd.peak_lps]
        real["gradcam_peak_inside_boxes"] = inside_boxes(exd.peak_lps, boxes, 8.0, 5.0)
    except Exception as exc:  # reported, not hidden
        real["gradcam_error"] = str(exc)
    inside = [c for c in rd.candidates if inside_boxes(c.center_lps, boxes, 8.0, 5.0)]
    real["n_candidates"] = len(rd.candidates)
    real["candidates_inside_boxes"] = [{"rank": c.rank, "probability": round(c.probability, 4), "size_mm": round(c.size_mm, 1)}
                                       for c in inside]
    if inside:
        exi = explain_candidate(vol_d, pkg, rd, f"candidate-{inside[0].rank}", net)
        real["tumour_candidate_gradcam_peak_inside_boxes"] = inside_boxes(exi.peak_lps, boxes, 8.0, 5.0)
    xai = {"pointing_game": {"hits": hits, "tried": tried, "rate": round(hits / max(tried, 1), 3),
                             "definition": "Grad-CAM maximum inside the inserted nodule (dilated 2 voxels in-plane), held-out positives with a candidate"},
           "randomization_spearman": {"values": [round(v, 3) for v in rho], "median": round(float(np.median(rho)), 3) if rho else None},
           "gradcam_seconds_median": round(float(np.median(times)), 3) if times else None,
           "forward_seconds_median": round(float(np.median(fwd)), 3) if fwd else None}
    (OUT / "model.json").write_text(json.dumps(card(met, deltas, T, real, xai), indent=1))
    load_package(OUT, check_hashes=True)
    print(json.dumps({"temperature": T, "metrics": met, "int8": deltas, "real": real, "xai": xai}, indent=1))


if __name__ == "__main__":
    main()
