"""Quantize, calibrate, evaluate once on the held-out split and package ``ct-nodule-2p5d``.

Usage: ``python -m training.package_nodule --run DIR`` (``DIR`` from ``training.train_nodule``);
``--calibration-only`` reports the calibration split of a run (model choice);
``--refresh-card`` rewrites the shipped package's description (version, data, limits, notes)
and the real-tumour example with the current runtime, keeping its weights and every held-out
number as measured (0.3.1: the 0.3.0 weights and numbers); ``--remeasure-size`` first
re-measures the size section on the held-out detections with the runtime's caliper (the one
held-out measurement of 0.3.1's half-maximum caliper).

1. INT8: static QDQ (percentile), first and last conv kept FP32, calibration views from the
   training bank's backgrounds (training split only).
2. Calibration split (never trained on): calibration LIDC patients pasted into the calibration
   background (C slices 84-111, native, 4.5 and 7.5 mm); every candidate of the screen; temperature
   fitted by NLL on the question logit (Guo et al., ICML 2017).
3. Held-out split, evaluated once for the shipped model: the test LIDC patients pasted into
   the test backgrounds (D40, D70: patient Lung_Dx-A0002, slices >= 24 mm from its tumour),
   4 per case; the raw test slabs (and their halves) as nodule-free scans; the real
   adenocarcinoma of D40 (whole series).
4. Metrics: candidate AUC (solid/part-solid >= 6 mm vs everything else), ECE (15 equal-width
   bins, reliability diagram), FROC (LUNA16: a candidate within the nodule's radius, min 4 mm,
   of a pasted qualifying nodule is a hit; candidates on pasted non-qualifying nodules are
   ignored; others are false positives) with CPM, nodule-free study probabilities, INT8 vs
   FP32 decision agreement, size against LIDC diameters, nodule type, Grad-CAM pointing game
   and weight randomisation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from radreview.inference.classify import (NODULE_TYPES, axial_diameters, classify, detect_candidates, extract_views,
                                          fwhm_axes, probabilities, run_views)
from radreview.inference.lungs import closed_lung_mask
from radreview.inference.package import load_package, sha256_file
from radreview.inference.quantize import edge_convs, quantize_static_int8
from radreview.inference.segment import make_session, to_model_grid
from radreview.studies import Volume, open_volume
from training.nodule_data import CAL_BGS, DATA, TEST_BGS, Case, background, make_case, match, nodules, tumour_boxes
from training.train_nodule import NORM, OFFSETS, PATCH, SPACING, augment_views

OUT = Path("resources/models/ct-nodule-2p5d")
THRESHOLD = 0.5
FROC_RATES = [0.125, 0.25, 0.5, 1, 2, 4, 8]
VERSION = "0.3.1"


def screen(vol: Volume, crop: bool):
    g = to_model_grid(vol, SPACING)
    hu = sitk.GetArrayFromImage(g)
    lungs = closed_lung_mask(hu, g.GetSpacing(), crop=crop)
    _, comps = detect_candidates(hu, g.GetSpacing(), lungs)
    return hu, g, comps


def run_case(case: Case, sessions: dict) -> dict:
    """Every candidate of a case with its truth match and logits per precision."""
    t = time.perf_counter()
    hu, g, comps = screen(case.volume, case.crop)
    views = extract_views(hu, [c["centroid_zyx"] for c in comps], PATCH, OFFSETS)
    logits = {k: run_views(s, views, NORM) for k, s in sessions.items()}
    rows = []
    for k, c in enumerate(comps):
        z, y, x = c["centroid_zyx"]
        lps = g.TransformContinuousIndexToPhysicalPoint([float(x), float(y), float(z)])
        i = match(lps, case.truth)
        la, sa, _, _ = fwhm_axes(hu, c["bbox"], c["mask"], g.GetSpacing())  # the runtime's caliper (0.3.1)
        la0, sa0, _ = axial_diameters(c["mask"], g.GetSpacing())  # 0.3.0's: the screen mask, 1 mm pixels
        rows.append({"lps": lps, "truth": i, "label": int(i is not None and case.truth[i]["qualifies"]),
                     "ignore": int(i is not None and not case.truth[i]["qualifies"]), "long": la, "short": sa,
                     "long_mask": la0, "short_mask": sa0,
                     "logits": {p: logits[p][k] for p in sessions}})
    return {"name": case.name, "truth": case.truth, "rows": rows, "seconds": time.perf_counter() - t, "volume": case.volume,
            "crop": case.crop}


def fit_temperature(q: np.ndarray, y: np.ndarray) -> float:
    best = (1e9, 1.0)
    for T in np.exp(np.linspace(np.log(0.2), np.log(20), 200)):
        p = np.clip(1 / (1 + np.exp(-q / T)), 1e-7, 1 - 1e-7)
        best = min(best, (float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()), float(T)))
    return best[1]


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[float, list[dict]]:
    """ECE (equal-width bins, weighted by count; Guo et al. 2017) and the per-bin table."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    edges = np.linspace(0, 1, bins + 1)
    total, table = 0.0, []
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        sel = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        if sel.any():
            total += sel.mean() * abs(p[sel].mean() - y[sel].mean())
            table.append({"bin": [round(lo, 3), round(hi, 3)], "n": int(sel.sum()), "mean_probability": round(float(p[sel].mean()), 4),
                          "fraction_positive": round(float(y[sel].mean()), 4)})
    return float(total), table


def froc(results: list[dict], prec: str, T: float) -> dict:
    """LUNA16 FROC over cases: sensitivity at each FP rate in :data:`FROC_RATES`, CPM, and the
    operating point at :data:`THRESHOLD`."""
    n_scans = len(results)
    n_pos = sum(1 for r in results for t in r["truth"] if t["qualifies"])
    events = []  # (p, kind, key)
    for ci, r in enumerate(results):
        for row in r["rows"]:
            p = float(1 / (1 + np.exp(-(row["logits"][prec][1] - row["logits"][prec][0]) / T)))
            if row["label"]:
                events.append((p, "tp", (ci, row["truth"])))
            elif not row["ignore"]:
                events.append((p, "fp", None))
    events.sort(key=lambda e: -e[0])
    found, fps, curve = set(), 0, []
    for p, kind, key in events:
        if kind == "tp":
            found.add(key)
        else:
            fps += 1
        curve.append((fps / n_scans, len(found) / max(n_pos, 1), p))
    sens = {}
    for rate in FROC_RATES:
        ok = [s for f, s, _ in curve if f <= rate]
        sens[str(rate)] = round(max(ok) if ok else 0.0, 4)
    op = [(f, s) for f, s, p in curve if p >= THRESHOLD]
    f_op, s_op = op[-1] if op else (0.0, 0.0)
    return {"scans": n_scans, "qualifying_nodules": n_pos, "sensitivity_at_fp_per_scan": sens,
            "cpm": round(float(np.mean(list(sens.values()))), 4),
            "max_sensitivity": round(curve[-1][1] if curve else 0.0, 4),
            "operating_point": {"threshold": THRESHOLD, "sensitivity": round(s_op, 4), "fp_per_scan": round(f_op, 3)}}


def candidate_arrays(results, prec):
    q = np.array([row["logits"][prec][1] - row["logits"][prec][0] for r in results for row in r["rows"]])
    y = np.array([row["label"] for r in results for row in r["rows"]])
    return q, y


def plot_reliability(table_before, table_after, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for tab, lab, m in ((table_before, "before temperature", "s"), (table_after, "after temperature", "o")):
        ax.plot([b["mean_probability"] for b in tab], [b["fraction_positive"] for b in tab], marker=m, label=lab)
    ax.set_xlabel("predicted probability (15 bins)")
    ax.set_ylabel("fraction of candidates that are nodules >= 6 mm")
    ax.set_title(f"ct-nodule-2p5d {VERSION}, held-out candidates")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def card(T: float, metrics: dict, cparams: dict, out: Path | None = None, layer: str = "features") -> dict:
    out = out or OUT
    return {
        "id": "ct-nodule-2p5d", "version": VERSION, "task": "classification",
        "question": "Does this chest CT contain a solid (or part-solid) pulmonary nodule of at least 6 mm (Lung-RADS size threshold)?",
        "modality": ["CT"], "modality_mismatch": "refuse", "body_part": ["CHEST"],
        "fit": {"body_region": ["chest"], "min_coverage_mm": 30.0},  # about a 32 mm view cube
        "input": {"dimensionality": "2.5D", "channels": 3 * len(OFFSETS), "spacing_mm": list(SPACING), "patch_size": [PATCH, PATCH],
                  "plane_offsets_mm": list(OFFSETS), "views": ["axial", "coronal", "sagittal"], "orientation": "LPS",
                  "normalization": NORM},
        "candidates": cparams,
        "nodule_types": list(NODULE_TYPES),
        "outputs": {"activation": "softmax", "labels": [
            {"index": 0, "name": "background", "color": [0, 0, 0], "body_region": "any", "min_volume_ml": 0.0,
             "snomed": {"category": {"scheme": "SCT", "value": "85756007", "meaning": "Tissue"}, "type": {"scheme": "SCT", "value": "85756007", "meaning": "Tissue"}}},
            {"index": 1, "name": "nodule", "color": [255, 64, 64], "body_region": "chest", "min_volume_ml": 0.0,
             "snomed": {"category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Altered Structure"},
                        "type": {"scheme": "SCT", "value": "27925004", "meaning": "Nodule"}}}],
            "logits": "(n, 5): question pair (other, solid/part-solid nodule >= 6 mm), then nodule type (solid, part-solid, ground glass)"},
        "architecture": {"name": "TriPlanarNet", "in_ch": 3 * len(OFFSETS), "views": 3, "base": 16, "n_types": len(NODULE_TYPES), "hidden": 64},
        "gradcam_layer": layer,
        "files": {k: {"path": f, "sha256": sha256_file(out / f)} for k, f in
                  (("fp32", "fp32.onnx"), ("int8", "int8.onnx"), ("state_dict", "state_dict.pt"))},
        "calibration": {"temperature": T, "method": "temperature scaling of the question logit margin, NLL on every candidate of the "
                        "calibration split (calibration LIDC patients pasted into the calibration background; never trained on)"},
        "review_policy": {"confidence_threshold": {"study": 0.9, "candidate": 0.9}, "decision_threshold": THRESHOLD,
                          "max_candidates": 10, "min_candidate_probability": 0.1, "answer_label": "Nodule >= 6 mm"},
        "training_data": [
            {"name": "LIDC-IDRI train", "source": "shared/data/ct-lung-nodules-lidc: the training patients of training/nodule_split.json (real nodules and consensus masks, pasted)"},
            {"name": "C", "source": "shared/data/ct-chest-crops/chest_crop_1.nii.gz slices 0-79 (chest CTA crop), native (1.5 mm), "
                                    "and re-sliced to the '5 mm' and '8 mm' settings, which are whole native slices: 4.5 and 7.5 mm"},
            {"name": "B", "source": "shared/data/ct-abdomen-nifti/ct.nii.gz lung bases, native (3 mm), and re-sliced to the '5 mm' "
                                    "and '8 mm' settings: 6 and 9 mm"},
            {"name": "C, B thick-slice phases (0.3)", "source": "the same C and B slabs re-sliced to 8 mm (and 5 mm) starting at other "
                                                                  "native slices (training/nodule_data.py TRAIN_BGS_EXTRA): more hard negatives"}],
        "calibration_data": [{"name": "LIDC-IDRI calibration patients + C slices 84-111", "source": "training/nodule_split.json; "
                              "C slices 84-111 native (1.5 mm), 4.5 mm and 7.5 mm (the '5 mm' and '8 mm' settings; 7.5 mm added in 0.3). The same "
                              "crop and patient as training background C, 6 mm below it: the calibration split is independent of "
                              "training in its nodules (LIDC patients), not in its lungs"}],
        "heldout_data": [{"name": "LIDC-IDRI test patients + D", "source": "test patients of training/nodule_split.json pasted into "
                          "shared/data/ct-chest-tumor series_B40f and series_B70f (Lung-PET-CT-Dx A0002), slices >= 24 mm from the tumour; never trained on and never used for a choice within a "
                          "version, but 0.2.0's held-out misses are why 0.3 was made (see Notes)"}],
        "metrics": metrics,
        "card_notes": CARD_NOTES,
        "intended_use": "Research and demonstration of radreview's confidence gate and explanations; not for clinical use.",
        "limitations": [
            "Nodules are real (LIDC-IDRI crops from one public collection), but every whole-scan positive is a pasted nodule: its edge, "
            "its surroundings and its position are not those of a nodule grown in that lung.",
            "Background lungs come from three patients only (C, B and D; D40 and D70 are two reconstructions of one scan); the held-out "
            "one is a thick-slice (8 mm) scan, the training ones a CTA crop and lung bases.",
            "The question's 6 mm is LIDC's diameter_mm (about 0.9x the consensus mask's equivalent diameter), not the Lung-RADS mean "
            "axial diameter: by an edge-to-edge caliper on the 771 consensus masks' pixels (0.5-0.9 mm; axial_diameters), 175 of the "
            "284 nodules under 6 mm by diameter_mm measure >= 6 mm mean axial diameter. Such nodules are negatives for the question "
            "though their measured size can put them in Lung-RADS category 3.",
            "Sizes are measured at half maximum on the 1 mm grid, sub-voxel (0.3.1, inference.classify.fwhm_axes): on solid spheres "
            "with partial volume in real lung (tests/unit/test_nodule.py test_size_of_known_spheres_in_real_lung) the mean axial "
            "diameter is 0.0 / -0.2 / -0.2 mm off for 10 / 7 / 5.2 mm and the volume -6 / -10 / -16 %; 0.3.0's caliper (the -600 HU "
            "screen mask, 1 mm pixels) read them 1.3 / 1.2 / 0.8 mm large (the 5.2 mm sphere 6.0 mm: Lung-RADS 3 instead of 2) and "
            "their volumes 15-24 % large. Thick slices blur a nodule along z, which no in-plane caliper undoes; and where that blur "
            "leaves a candidate's own density low (peaks near -350 HU: mostly vessels in 8 mm slices), half maximum lies below the "
            "screen's -600 HU and the edge moves out by up to the one voxel allowed: on the 200 candidates of ct-chest-tumor B40f "
            "(8 mm) the mean diameter is a median 1.15 mm larger than 0.3.0's caliper gave, on the 1.5 mm chest crop 0.23 mm.",
            "Part-solid is not recognised: the type head called none of the 11 held-out part-solid nodules part-solid, so the "
            "part-solid Lung-RADS rule (solid component above -300 HU, a heuristic) is never exercised; the -600 HU candidate mask "
            "also leaves out faint ground-glass rims, so a part-solid nodule's total diameter reads small.",
            "The study probability is the largest candidate probability, not calibrated at study level; above the decision "
            "threshold the held-out candidate probabilities are over-confident (see Calibration).",
            "A large component and a thick spot inside it can both be candidates a few mm apart: two rows for one structure.",
            "Ground-glass nodules are negatives for the question and the type head is trained on few of them (67 in LIDC); no ground-glass detection claim is made.",
            "Lung-RADS category is size only (baseline, mean diameter on the axial image): no growth, no prior, no morphology; calcified nodules are not recognised as benign.",
            "Held-out numbers come from one held-out patient's lungs: thin evidence.",
        ],
    }


def calibration_cases(sessions: dict, per_case: int = 4, max_nodules: int = 0) -> list[dict]:
    """Every calibration case, always the same (seed 11): the calibration LIDC patients' nodules,
    ``per_case`` at a time, pasted 25 mm apart into the calibration backgrounds in turn, through
    :func:`run_case` with ``sessions`` (``max_nodules``: smoke runs only)."""
    return pasted_cases("calibration", CAL_BGS, 11, 25.0, sessions, per_case, max_nodules)


def pasted_cases(split: str, bgs, seed: int, sep_mm: float, sessions: dict, per_case: int = 4, max_nodules: int = 0,
                 log=None) -> list[dict]:
    """The nodules of LIDC ``split``, in an order drawn with ``seed``, ``per_case`` at a time,
    pasted at least ``sep_mm`` apart into the backgrounds ``bgs`` in turn, each case through
    :func:`run_case` with ``sessions``; the same seed gives the same cases."""
    nods = nodules(split)
    if max_nodules:
        nods = nods[:max_nodules]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(nods))
    out = []
    for j in range(0, len(order), per_case):
        case = make_case(bgs[(j // per_case) % len(bgs)], [nods[i] for i in order[j:j + per_case]], rng, sep_mm)
        out.append(run_case(case, sessions))
        if log:
            log(f"{split} case {len(out)}: {out[-1]['seconds']:.1f} s, {len(out[-1]['rows'])} candidates")
    return out


def calibration_report(run: Path, per_case: int = 4) -> dict:
    """Model choice on the calibration split only (never the held-out one): FP32 of a training run
    on the calibration cases (AUC, FROC, CPM after the temperature fitted on them) and the study
    probability of the nodule-free calibration scans (each calibration background unpasted).
    ``python -m training.package_nodule --run DIR --calibration-only``."""
    from sklearn.metrics import roc_auc_score

    sess = {"fp32": make_session(run / "fp32.onnx", 2)}
    res = calibration_cases(sess, per_case)
    q, y = candidate_arrays(res, "fp32")
    T = fit_temperature(q, y)
    free = []
    for bg in CAL_BGS:
        vol, crop = background(bg)
        r = run_case(Case(bg, vol, crop, []), sess)
        top = max((row["logits"]["fp32"][1] - row["logits"]["fp32"][0] for row in r["rows"]), default=None)
        free.append({"scan": bg, "candidates": len(r["rows"]),
                     "study_probability": None if top is None else round(float(1 / (1 + np.exp(-top / T))), 4)})
    return {"run": str(run), "temperature": round(T, 4), "cases": len(res), "candidates": int(len(y)), "positives": int(y.sum()),
            "auc": round(float(roc_auc_score(y, q)), 4), "froc": froc(res, "fp32", T), "nodule_free": free}


CARD_NOTES = (
    "0.3.0 is the second model evaluated on this held-out split: 0.2.0 (900 iterations, uniform negatives) was evaluated "
    "on it once and missed three targets (sensitivity at 1 FP per scan 0.723, nodule-free scans 0/6 below 0.5, pointing "
    "game 0.775). Those misses are why 0.3 exists, so the split is no longer untouched; every 0.3 choice was made on the "
    "calibration split only. Changes: hard-negative mining (every 100 iterations from iteration 200, half of each batch's "
    "negatives drawn from the highest-scoring quarter), more thick-slice training backgrounds (other slab phases), Gaussian "
    "noise augmentation (5-40 HU), 8000 iterations instead of 900 (the extra thick-slice backgrounds 4 pasted cases each), an 8 mm calibration background, and the Grad-CAM layer "
    "picked by the pointing game on the calibration split. Runs compared on the calibration split only "
    "(training/package_nodule.py --calibration-only; sensitivity at 1 FP per scan / CPM / nodule-free calibration scans "
    "below 0.5): 0.2.0 0.750 / 0.733 / 1 of 3; 1200 iterations 0.809 / 0.769 / 1 of 3; 4000 iterations 0.868 / 0.836 / "
    "2 of 3; 8000 iterations, extra backgrounds twice as many cases (shipped) 0.897 / 0.864 / 3 of 3. The held-out split was then evaluated once for the shipped 0.3.0 by "
    "training/package_nodule.py.\n\n"
    "0.3.1 has the 0.3.0 weights, candidates and probabilities, so every held-out number above is 0.3.0's, measured once and "
    "not re-measured, except the size section. 0.3.1 measures long and short axes and volume at half maximum with a sub-voxel "
    "caliper (designed and checked on spheres of known size, not on the held-out split), and that one new measurement was "
    "taken once on the held-out detections (`--remeasure-size`: the same cases, checked by their AUC, with both calipers on "
    "the same candidates; no choice was made from it). 0.3.1 also takes the study's Lung-RADS category from the most "
    "suspicious candidate at p >= 0.5, not the largest one, rounds the mean diameter half up, and corrects this card (slice "
    "thicknesses, patient count, the limits above, the intervals, the calibration above the threshold) via "
    "`python -m training.package_nodule --refresh-card`. "
    "No 0.4 was trained. On the calibration split the missed targets are met or nearly met (3 of 3 nodule-free calibration "
    "scans below 0.5, sensitivity 0.897 at 1 FP per scan, pointing game 0.967 in the layer choice), so that split cannot tell "
    "a better model from this one on them. A choice made on the held-out split would turn it into a tuning set. What would "
    "close the misses is real nodule-free chest CT from more patients, thin-slice, for training, calibration and a fresh held-out split; ../shared/data has no more than these "
    "three patients' lungs."
)
GRADCAM_LAYERS = ("features", "stem.2")  # the trunk's last stage (P/4) and the one before it (P/2)


def pointing_game(results: list[dict], pkg, net, limit: int, n_random: int = 0) -> tuple[int, int, list[float], list[float]]:
    """Grad-CAM pointing game on the qualifying pasted nodules of ``results`` (``run_case`` output)
    that have a matching candidate, at most ``limit``: a hit when the map's maximum lies inside the
    nodule's mask dilated by 2 mm (Zhang et al., ECCV 2016). For the first ``n_random`` the
    Adebayo et al. (NeurIPS 2018) check: Spearman between the map and that of a fully
    re-initialised twin, inside the candidate's cube. Returns ``(hits, tried, spearman values,
    seconds per map)``."""
    from radreview.explain.gradcam import explain_candidate, randomized_copy, spearman

    hits = tried = 0
    rho, times = [], []
    for r in results:
        if tried >= limit:
            break
        rr = classify(r["volume"], pkg, "fp32", 2, crop=r["crop"])
        for i, t in enumerate(r["truth"]):
            if not t["qualifies"] or tried >= limit:
                continue
            hit = [c for c in rr.candidates if match(c.center_lps, r["truth"]) == i]
            if not hit:
                continue
            ex = explain_candidate(r["volume"], pkg, rr, f"candidate-{hit[0].rank}", net)
            sp = r["volume"].spacing
            m = sitk.GetImageFromArray(t["mask"].astype(np.uint8))
            m.SetSpacing(sp)
            m = sitk.GetArrayFromImage(sitk.BinaryDilate(m, [int(round(2.0 / s)) for s in sp], sitk.sitkBall)) > 0
            ii, jj, kk = np.rint(r["volume"].lps_to_index(ex.peak_lps)).astype(int)
            hits += bool(m[kk, jj, ii])
            tried += 1
            times.append(ex.seconds)
            if len(rho) < n_random:
                ex_r = explain_candidate(r["volume"], pkg, rr, f"candidate-{hit[0].rank}", randomized_copy(net, len(rho)), verify=False)
                rho.append(spearman(ex.heatmap, ex_r.heatmap, region=ex.heatmap > 0))
    return hits, tried, rho, times


def size_report(res: list[dict], T: float, keys=("long", "short")) -> tuple[dict, list]:
    """Size against the LIDC diameters on the detected nodules of cases ``res`` (the candidate
    nearest each matched nodule), with the caliper whose ``(long, short)`` row ``keys`` are
    given; and ``(truth type, predicted type)`` per nodule."""
    size_rows, type_rows = [], []
    for r in res:
        best = {}
        for row in r["rows"]:
            if row["truth"] is not None:
                i = row["truth"]
                d = np.linalg.norm(np.asarray(row["lps"]) - np.asarray(r["truth"][i]["center_lps"]))
                if i not in best or d < best[i][0]:
                    best[i] = (d, row)
        for i, (_, row) in best.items():
            t = r["truth"][i]
            size_rows.append((t["diameter_mm"], row[keys[0]], row[keys[1]]))
            _, tp = probabilities(row["logits"]["fp32"][None, :], T)
            type_rows.append((t["nodule_type"], NODULE_TYPES[int(np.argmax(tp[0]))]))
    s = np.array(size_rows)
    mean = (s[:, 1] + s[:, 2]) / 2
    return {"nodules": int(len(s)), "median_long_over_lidc": round(float(np.median(s[:, 1] / s[:, 0])), 3),
            "median_mean_axial_over_lidc": round(float(np.median(mean / s[:, 0])), 3),
            "median_abs_mean_diameter_error_mm": round(float(np.median(np.abs(mean - s[:, 0]))), 2),
            "pearson_long_vs_lidc": round(float(np.corrcoef(s[:, 0], s[:, 1])[0, 1]), 3),
            "pearson_mean_axial_vs_lidc": round(float(np.corrcoef(s[:, 0], mean)[0, 1]), 3)}, type_rows


def heldout_cases(sessions: dict, per_case: int = 4, max_nodules: int = 0, log=lambda s: print(s, flush=True)) -> list[dict]:
    """The held-out cases, always the same (seed 99): the test LIDC patients' nodules,
    ``per_case`` at a time, pasted 40 mm apart into D40 and D70 in turn, through :func:`run_case`."""
    return pasted_cases("test", TEST_BGS, 99, 40.0, sessions, per_case, max_nodules, log)


def remeasure_size(out: Path = OUT) -> dict:
    """Size against LIDC on the held-out detections with the runtime's caliper (0.3.1: half
    maximum, sub-voxel) and 0.3.0's (screen mask, 1 mm pixels) on the same candidates: a new
    measurement method measured once, no choice made from it. The candidates and probabilities
    are recomputed by the same code and seeds as the held-out evaluation; the AUC is checked
    against the card's to show they are the same cases (``SystemExit`` if not)."""
    from sklearn.metrics import roc_auc_score

    m = json.loads((out / "model.json").read_text())
    pkg = load_package(out, check_hashes=True)
    res = heldout_cases({"fp32": make_session(pkg.file("fp32"), 2)})
    T = float(m["calibration"]["temperature"])
    q, y = candidate_arrays(res, "fp32")
    auc = round(float(roc_auc_score(y, 1 / (1 + np.exp(-q / T)))), 4)
    if auc != m["metrics"]["fp32"]["auc"] or len(y) != m["metrics"]["fp32"]["candidates"]:
        raise SystemExit(f"not the evaluated cases: AUC {auc} / {len(y)} candidates vs the card's "
                         f"{m['metrics']['fp32']['auc']} / {m['metrics']['fp32']['candidates']}")
    new, _ = size_report(res, T)
    old, _ = size_report(res, T, ("long_mask", "short_mask"))
    new["caliper"] = "half maximum, sub-voxel (inference.classify.fwhm_axes), 0.3.1"
    new["screen_mask_caliper_0.3.0"] = old
    return new


def real_tumour_report(pkg) -> dict:
    """The shipped runtime (INT8, 2 threads) on the real adenocarcinoma (ct-chest-tumor B40f,
    whole series; not part of any held-out number): study probability, Lung-RADS, and which
    candidates lie inside the annotated tumour boxes (within 8 mm of a box's slice, 5 mm margin)."""
    vol_d = open_volume(DATA / "ct-chest-tumor/series_B40f")
    boxes = tumour_boxes(DATA / "ct-chest-tumor/series_B40f")
    rd = classify(vol_d, pkg, "int8", 2)

    def inside(lps, tol=8.0, margin=5.0):
        p = np.asarray(lps)
        for b in boxes:
            if abs(p[2] - b[0, 2]) <= tol:
                lo, hi = b.min(axis=0) - margin, b.max(axis=0) + margin
                if lo[0] <= p[0] <= hi[0] and lo[1] <= p[1] <= hi[1]:
                    return True
        return False

    ins = [c for c in rd.candidates if inside(c.center_lps)]
    lr_c = next((c for c in rd.candidates if c.rank == rd.lung_rads.get("candidate_rank")), None)
    return {"series": "ct-chest-tumor/series_B40f (whole, tumour included; not part of the held-out numbers)",
            "study_probability": round(rd.study_probability, 4), "lung_rads": rd.lung_rads,
            "lung_rads_candidate_inside_boxes": None if lr_c is None else bool(inside(lr_c.center_lps)),
            "seconds": round(rd.seconds, 2), "n_candidates": len(rd.candidates),
            "n_candidates_above_threshold": sum(c.probability >= THRESHOLD for c in rd.candidates),
            "top_candidate_inside_boxes": bool(rd.candidates and inside(rd.candidates[0].center_lps)),
            "candidates_inside_boxes": [{"rank": c.rank, "probability": round(c.probability, 4),
                                         "long_axis_mm": round(c.long_axis_mm, 1), "nodule_type": c.nodule_type} for c in ins[:5]]}


def refresh_card(out: Path = OUT) -> dict:
    """Rewrite the shipped package's ``model.json`` from :func:`card` with its own temperature,
    candidate settings, Grad-CAM layer and held-out metrics (kept as measured: no held-out case
    is run), the real-tumour example re-run with the current runtime; then the manifest pins
    and the rendered card. Returns the new ``model.json`` dict."""
    from radreview.inference.package import write_manifest
    from training.model_card import ROOT, render

    old = json.loads((out / "model.json").read_text())
    met = dict(old["metrics"])
    new = card(float(old["calibration"]["temperature"]), met, old["candidates"], out, old["gradcam_layer"])
    (out / "model.json").write_text(json.dumps(new, indent=1))  # description first: the runtime reads the card
    met["real_tumour"] = real_tumour_report(load_package(out, check_hashes=True))
    new = card(float(old["calibration"]["temperature"]), met, old["candidates"], out, old["gradcam_layer"])
    (out / "model.json").write_text(json.dumps(new, indent=1))
    load_package(out, check_hashes=True)
    if out.resolve().parent == (ROOT / "resources/models").resolve():
        write_manifest()
        (ROOT / "docs/model-cards" / f"{new['id']}.md").write_text(render(new["id"]))
    return new


def main(argv=None):
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="training output folder (state_dict.pt, fp32.onnx)")
    ap.add_argument("--bank", default="/tmp/nodule_bank2.npz", help="training sample bank (INT8 calibration views)")
    ap.add_argument("--per-case", type=int, default=4)
    ap.add_argument("--gradcam", type=int, default=60, help="held-out detections explained for the pointing game")
    ap.add_argument("--out", default="resources/models/ct-nodule-2p5d")
    ap.add_argument("--max-nodules", type=int, default=0, help="smoke runs only: cap the calibration/test nodules")
    ap.add_argument("--calibration-only", action="store_true", help="report the calibration split only (model choice)")
    ap.add_argument("--remeasure-size", action="store_true",
                    help="re-measure size against LIDC on the held-out detections with the runtime's caliper, then --refresh-card")
    ap.add_argument("--refresh-card", action="store_true",
                    help="rewrite the package at --out (description, real-tumour example) keeping its weights and held-out numbers")
    args = ap.parse_args(argv)
    if args.remeasure_size:
        size = remeasure_size(Path(args.out))
        m = json.loads((Path(args.out) / "model.json").read_text())
        m["metrics"]["size_vs_lidc"] = size
        (Path(args.out) / "model.json").write_text(json.dumps(m, indent=1))
        print(json.dumps(size, indent=1))
        args.refresh_card = True
    if args.refresh_card:
        new = refresh_card(Path(args.out))
        print(json.dumps({"version": new["version"], "real_tumour": new["metrics"]["real_tumour"]}, indent=1))
        return
    if not args.run:
        ap.error("--run is required (except with --refresh-card or --remeasure-size)")
    if args.calibration_only:
        rep = calibration_report(Path(args.run), args.per_case)
        (Path(args.run) / "calibration_report.json").write_text(json.dumps(rep, indent=1))
        print(json.dumps(rep, indent=1))
        return
    OUT = Path(args.out)
    run = Path(args.run)
    t_all = time.time()
    OUT.mkdir(parents=True, exist_ok=True)
    for f in ("state_dict.pt", "fp32.onnx", "train_log.json"):
        shutil.copy(run / f, OUT / f)
    # 1. INT8 from training-bank views
    bank = np.load(args.bank) if Path(args.bank).is_file() else None
    rng = np.random.default_rng(2024)
    if bank is not None:
        cubes = bank["cubes"]
        pick = rng.choice(len(cubes), 256, replace=False)
        cal = np.stack([augment_views(cubes[i], rng, train=False) for i in pick]).astype(np.float32)
    else:
        raise SystemExit("no training bank for INT8 calibration")
    quantize_static_int8(OUT / "fp32.onnx", OUT / "int8.onnx", cal, batch=32, method="percentile",
                         keep_fp32=edge_convs(OUT / "fp32.onnx"))
    from radreview.inference.classify import DEFAULT_CANDIDATES

    cparams = dict(DEFAULT_CANDIDATES)
    (OUT / "model.json").write_text(json.dumps(card(1.0, {}, cparams), indent=1))
    pkg = load_package(OUT, check_hashes=True)
    sessions = {"fp32": make_session(pkg.file("fp32"), 2), "int8": make_session(pkg.file("int8"), 2)}
    # 2. calibration split
    cal_res = calibration_cases(sessions, args.per_case, args.max_nodules)
    qc, yc = candidate_arrays(cal_res, "fp32")
    T = fit_temperature(qc, yc)
    print("temperature", T, "calibration candidates", len(qc), "positives", int(yc.sum()), flush=True)
    # Grad-CAM layer chosen on the calibration split (pointing game), before any held-out case
    from radreview.explain.gradcam import load_twin

    net_c = load_twin(pkg)
    layer_choice = {}
    for lay in GRADCAM_LAYERS:
        pkg.meta["gradcam_layer"] = lay
        h, n, _, _ = pointing_game(cal_res, pkg, net_c, args.gradcam)
        layer_choice[lay] = {"hits": h, "tried": n, "rate": round(h / max(n, 1), 3)}
    layer = max(GRADCAM_LAYERS, key=lambda lay: (layer_choice[lay]["rate"], lay == GRADCAM_LAYERS[0]))
    layer_choice = {"split": "calibration", "chosen": layer, "pointing_game": layer_choice}
    print("Grad-CAM layer", json.dumps(layer_choice), flush=True)
    # 3. held-out split (once)
    res = heldout_cases(sessions, args.per_case, args.max_nodules)
    from sklearn.metrics import roc_auc_score

    met = {"split": "training/nodule_split.json (test patients, test backgrounds)", "threshold": THRESHOLD}
    for prec in ("fp32", "int8"):
        q, y = candidate_arrays(res, prec)
        p = 1 / (1 + np.exp(-q / T))
        met[prec] = {"candidates": int(len(y)), "positives": int(y.sum()), "auc": round(float(roc_auc_score(y, p)), 4),
                     "froc": froc(res, prec, T)}
    q32, y = candidate_arrays(res, "fp32")
    q8, _ = candidate_arrays(res, "int8")
    p_before, p_after = 1 / (1 + np.exp(-q32)), 1 / (1 + np.exp(-q32 / T))
    e_b, tab_b = reliability(p_before, y)
    e_a, tab_a = reliability(p_after, y)
    met["ece"] = {"bins": 15, "before_temperature": round(e_b, 4), "after_temperature": round(e_a, 4), "reliability_after": tab_a,
                  "reliability_before": tab_b, "diagram": "docs/model-cards/ct-nodule-2p5d-reliability.png"}
    plot_reliability(tab_b, tab_a, Path("docs/model-cards/ct-nodule-2p5d-reliability.png") if not args.max_nodules
                     else OUT / "reliability.png")
    p8 = 1 / (1 + np.exp(-q8 / T))
    met["int8_vs_fp32"] = {"decision_agreement": round(float(np.mean((p_after >= THRESHOLD) == (p8 >= THRESHOLD))), 4),
                           "mean_abs_probability_difference": round(float(np.mean(np.abs(p_after - p8))), 4),
                           "candidates": int(len(y))}
    met["calibration_split"] = {"cases": len(cal_res), "candidates": int(len(qc)), "positives": int(yc.sum())}
    # size and type on detected held-out nodules (best-matching candidate per nodule)
    met["size_vs_lidc"], type_rows = size_report(res, T)
    conf = {a: {b: 0 for b in NODULE_TYPES} for a in NODULE_TYPES}
    for a, b in type_rows:
        conf[a][b] += 1
    met["nodule_type"] = {"confusion (truth -> predicted)": conf,
                          "accuracy": round(float(np.mean([a == b for a, b in type_rows])), 3) if type_rows else None}
    # nodule-free held-out scans: the raw slabs and their halves
    free = []
    for bg in TEST_BGS:
        vol, crop = background(bg)
        k = vol.array.shape[0]
        for name, (k0, k1) in ((bg, (0, k)), (bg + " upper half", (k // 2, k)), (bg + " lower half", (0, k // 2))):
            sub = Volume(np.ascontiguousarray(vol.array[k0:k1]), vol.spacing, tuple(vol.index_to_lps([0, 0, k0])), vol.direction, vol.info)
            rr = classify(sub, pkg, "int8", 2)
            free.append({"scan": name, "slices": k1 - k0, "study_probability_uncalibrated_card": None,
                         "candidates": len(rr.candidates), "top_logit": rr.candidates[0].raw_max if rr.candidates else None})
    met["nodule_free"] = free  # probabilities filled once T is in the card (below)
    # 4. card with T, then Grad-CAM and the real tumour through the shipped runtime
    (OUT / "model.json").write_text(json.dumps(card(T, met, cparams, layer=layer), indent=1))
    pkg = load_package(OUT, check_hashes=True)
    for f in free:
        f["study_probability"] = round(float(1 / (1 + np.exp(-f["top_logit"] / T))) if f["top_logit"] is not None else 0.0, 4)
        f["below_threshold"] = f["study_probability"] < THRESHOLD
        del f["study_probability_uncalibrated_card"], f["top_logit"]
    met["nodule_free_summary"] = {"scans": len(free), "below_threshold": sum(f["below_threshold"] for f in free),
                                  "fraction": round(sum(f["below_threshold"] for f in free) / len(free), 3)}
    from radreview.explain.gradcam import load_twin

    net = load_twin(pkg)
    pkg.meta["gradcam_layer"] = layer
    hits, tried, rho, times = pointing_game(res, pkg, net, args.gradcam, n_random=10)
    met["explanations"] = {"pointing_game": {"hits": hits, "tried": tried, "rate": round(hits / max(tried, 1), 3),
                                             "definition": "Grad-CAM maximum inside the pasted real nodule's mask dilated by 2 mm, "
                                                           "held-out qualifying nodules with a matching candidate"},
                           "layer": layer, "layer_choice": layer_choice,
                           "randomization_spearman": {"values": [round(v, 3) for v in rho],
                                                      "median": round(float(np.median(rho)), 3) if rho else None,
                                                      "region": "inside the candidate's cube (where the shipped map is non-zero)"},
                           "gradcam_seconds_median": round(float(np.median(times)), 3) if times else None}
    met["real_tumour"] = real_tumour_report(pkg)
    met["seconds_total"] = round(time.time() - t_all, 1)
    (OUT / "model.json").write_text(json.dumps(card(T, met, cparams, layer=layer), indent=1))
    load_package(OUT, check_hashes=True)
    from radreview.inference.package import write_manifest

    if OUT.resolve().parent == Path("resources/models").resolve():
        write_manifest()  # the shipped packages' pins (a rebuilt package is refused until re-pinned)
    print(json.dumps({k: v for k, v in met.items() if k != "ece"}, indent=1, default=str))


if __name__ == "__main__":
    main()
