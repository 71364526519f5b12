"""Render ``docs/model-cards/<id>.md`` from a package's ``model.json`` (numbers never retyped).

Usage: ``python -m training.model_card ct-organs-2p5d``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from radreview.inference.package import load_package

ROOT = Path(__file__).resolve().parents[1]


def _fmt(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _met(ok) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def wilson(k: int, n: int) -> str:
    """95 % Wilson score interval of ``k`` successes in ``n`` trials, as ``"lo-hi"`` (scipy's
    ``binomtest(...).proportion_ci(method="wilson")``; Wilson, JASA 1927); ``"n/a"`` when n = 0."""
    from scipy.stats import binomtest

    if not n:
        return "n/a"
    ci = binomtest(int(k), int(n)).proportion_ci(0.95, method="wilson")
    return f"{ci.low:.3f}-{ci.high:.3f}"


def auc_interval(auc: float, n_pos: int, n_neg: int) -> str:
    """95 % interval of an AUC from its Hanley-McNeil standard error (Hanley & McNeil,
    Radiology 143:29-36, 1982), ``"lo-hi"`` clipped to [0, 1]: the per-candidate scores are not kept
    in the card, so no bootstrap."""
    a = float(auc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = ((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)) ** 0.5
    return f"{max(0.0, a - 1.96 * se):.3f}-{min(1.0, a + 1.96 * se):.3f}"


def above_threshold(table: list[dict], threshold: float) -> dict:
    """Reliability bins whose lower edge is at or above ``threshold`` pooled: ``n``, mean
    probability and fraction positive (the candidates the gate calls AI positive)."""
    rows = [b for b in table if b["bin"][0] >= threshold - 1e-9 and b["n"]]
    n = sum(b["n"] for b in rows)
    if not n:
        return {"n": 0, "mean_probability": None, "fraction_positive": None, "from": threshold}
    return {"n": n, "from": min(b["bin"][0] for b in rows),
            "mean_probability": round(sum(b["n"] * b["mean_probability"] for b in rows) / n, 3),
            "fraction_positive": round(sum(b["n"] * b["fraction_positive"] for b in rows) / n, 3)}


def render_classification(m: dict) -> str:
    """Card of the tri-planar nodule model (>= 0.2): every target with its measured value."""
    met = m["metrics"]
    f32, i8 = met["fp32"], met["int8"]
    fr32, fr8 = f32["froc"], i8["froc"]
    ex = met.get("explanations", {})
    pg = ex.get("pointing_game", {})
    rho = ex.get("randomization_spearman", {})
    nf = met.get("nodule_free_summary", {})
    rt = met.get("runtime", {})
    agree = met["int8_vs_fp32"]["decision_agreement"]
    s1 = fr32["sensitivity_at_fp_per_scan"]["1"]
    c = m["candidates"]
    abs_rho = f"; {float(np.median(np.abs(rho['values']))):.3f}" if rho.get("values") else ""
    hot = above_threshold(met["ece"]["reliability_after"], met["threshold"])
    lines = [f"# Model card: {m['id']} {m['version']}", "", m["intended_use"], "", "## Question", "", m["question"], "",
             "## How it answers", "",
             "Two stages (`inference/classify.py`). **Screen**: the study is resampled to 1 mm isotropic; lungs by HU rule "
             "(gas-only components dropped), closed with a 10 mm rolling ball and hole-filled so juxta-pleural nodules stay "
             f"inside; voxels above {c['hu_threshold']} HU in the lungs are opened with balls of {c['open_mm']} mm "
             "(each pass splits what the previous left too large: juxta-vascular nodules come off their vessels), connected "
             f"components of {c['min_diameter_mm']}-{c['max_diameter_mm']} mm equivalent diameter, plus the thick spots "
             f"(distance-map maxima >= {c['blob_radius_mm']} mm) of components >= {c['blob_split_mm']} mm, at most "
             f"{c['max_candidates']}. **Classifier**: nine {m['input']['patch_size'][0]} x {m['input']['patch_size'][1]} mm planes at 1 mm "
             "through each candidate (axial, coronal, sagittal, each at -2, 0, +2 mm) through one shared 2-D CNN "
             "(`TriPlanarNet`, explain/nets.py; 2-D convolutions because ONNX Runtime's INT8 kernels speed them up and 3-D ones "
             "barely), a question head (solid or part-solid nodule >= 6 mm vs everything else) and a type head (solid / "
             "part-solid / ground glass, from the LIDC texture ratings). The question logit is temperature-scaled "
             f"(T = {m['calibration']['temperature']:.3f}, fitted on the calibration split). Per candidate: probability, "
             "centre (LPS mm), long and short axis on the axial image (Lung-RADS v2022), volume (mL), type; per study: the "
             f"largest candidate probability, and the Lung-RADS v2022 size category of the most suspicious candidate (highest "
             f"category, then highest probability) at p >= {met['threshold']} with the rule written out.", "", "## Data and split", "",
             "Fixed split in `training/nodule_split.json` (seeded hash of the LIDC patient id; nodules follow their patient). "
             "Whole-scan cases are real LIDC-IDRI nodules pasted into real nodule-free lungs (`radreview.studies.paste`: "
             "resampled onto the scan grid with the scan's partial volume, blended with a feathered mask).", ""]
    lines += [f"- training: **{t['name']}**: {t['source']}" for t in m["training_data"]]
    lines += [f"- calibration: **{t['name']}**: {t['source']}" for t in m.get("calibration_data", [])]
    lines += [f"- held out: **{t['name']}**: {t['source']}" for t in m["heldout_data"]]
    cal = met.get("calibration_split", {})
    lines += ["", f"Held out: {fr32['scans']} whole-scan cases with {fr32['qualifying_nodules']} qualifying pasted nodules; "
              f"{f32['candidates']} candidates ({f32['positives']} positive). Calibration split: {cal.get('cases')} cases, "
              f"{cal.get('candidates')} candidates. Every held-out number below was measured once, on the shipped weights"
              + (" (see Notes for the split's earlier use)." if m.get("card_notes") else "."), "",
              "## Targets (held-out split)", "", "| target | goal | measured | 95 % interval | |", "|---|---|---|---|---|",
              f"| candidate AUC, solid nodule >= 6 mm vs everything else (FP32 / INT8) | >= 0.95 | {f32['auc']} / {i8['auc']} | "
              f"{auc_interval(f32['auc'], f32['positives'], f32['candidates'] - f32['positives'])} | {_met(f32['auc'] >= 0.95)} |",
              f"| sensitivity per pasted qualifying nodule at <= 1 FP per scan (FROC, FP32) | >= 0.9 | {s1} | "
              f"{wilson(round(s1 * fr32['qualifying_nodules']), fr32['qualifying_nodules'])} | {_met(s1 >= 0.9)} |",
              f"| FROC CPM (mean sensitivity at 1/8-8 FPs per scan) (FP32 / INT8) | report | {fr32['cpm']} / {fr8['cpm']} | | |",
              f"| ECE, 15 bins, after temperature (before) | <= 0.05 | {met['ece']['after_temperature']} ({met['ece']['before_temperature']}) | | {_met(met['ece']['after_temperature'] <= 0.05)} |",
              f"| nodule-free held-out scans with study probability < {met['threshold']} | >= 90 % | {nf.get('below_threshold')}/{nf.get('scans')} = {nf.get('fraction')} | "
              f"{wilson(nf.get('below_threshold', 0), nf.get('scans', 0))} | {_met(nf.get('fraction', 0) >= 0.9)} |",
              f"| Grad-CAM pointing game (peak in the mask dilated 2 mm) | >= 0.9 | {pg.get('hits')}/{pg.get('tried')} = {pg.get('rate')} | "
              f"{wilson(pg.get('hits', 0), pg.get('tried', 0))} | {_met(pg.get('rate', 0) >= 0.9)} |",
              f"| Adebayo randomisation: Spearman shipped vs random weights (median; median of absolute values) | < 0.5 | {rho.get('median')}"
              f"{abs_rho} | | "
              f"{_met(rho.get('median') is not None and rho['median'] < 0.5)} |",
              f"| INT8 vs FP32 decision agreement (held-out candidates) | >= 0.99 | {agree} | "
              f"{wilson(round(agree * met['int8_vs_fp32']['candidates']), met['int8_vs_fp32']['candidates'])} | {_met(agree >= 0.99)} |",
              f"| whole-scan runtime, 512x512x300 CT, 2 threads, median of 3 (INT8 / FP32) | <= 10 s | {rt.get('int8_s', 'n/a')} / {rt.get('fp32_s', 'n/a')} s | | {_met(rt.get('int8_s') is not None and rt['int8_s'] <= 10) if rt else 'n/a'} |",
              "", "Intervals: Wilson score for proportions, Hanley-McNeil for the AUC. They treat nodules, scans and "
              "candidates as independent; the 40 cases share two reconstructions of one background slab, so the real "
              "uncertainty is larger. The pointing game is a weak test here: the explained cube is centred on the "
              "candidate, which lies within the nodule's radius, so it checks that Grad-CAM does not peak elsewhere in "
              "its cube rather than that it finds the nodule unaided.",
              "", "## FROC (LUNA16 protocol on pasted nodules)", "",
              "| FPs per scan | " + " | ".join(fr32["sensitivity_at_fp_per_scan"]) + " | CPM |",
              "|---|" + "---|" * (len(fr32["sensitivity_at_fp_per_scan"]) + 1),
              "| FP32 | " + " | ".join(str(v) for v in fr32["sensitivity_at_fp_per_scan"].values()) + f" | {fr32['cpm']} |",
              "| INT8 | " + " | ".join(str(v) for v in fr8["sensitivity_at_fp_per_scan"].values()) + f" | {fr8['cpm']} |",
              "", f"Operating point (p >= {met['threshold']}): sensitivity {fr32['operating_point']['sensitivity']} at "
              f"{fr32['operating_point']['fp_per_scan']} FPs per scan (FP32); highest sensitivity the screen allows: "
              f"{fr32['max_sensitivity']}. A hit is a candidate within the nodule's radius (at least 4 mm) of a pasted "
              "qualifying nodule; candidates on pasted non-qualifying nodules (small, calcified, ground glass) are ignored, as "
              "LUNA16 ignores irrelevant findings. Setting differs from LUNA16: published systems reach CPM 0.9+ on 888 "
              "whole thin-slice scans with nodules grown in them; here the nodules are pasted, the held-out lungs are one "
              "patient's 8 mm-slice slab, and each case has 4 nodules.", "",
              "## Calibration", "", f"![reliability diagram]({Path(met['ece']['diagram']).name})", "",
              "| bin | n | mean probability | fraction positive |", "|---|---|---|---|"]
    lines += [f"| {b['bin'][0]:.3f}-{b['bin'][1]:.3f} | {b['n']} | {b['mean_probability']} | {b['fraction_positive']} |"
              for b in met["ece"]["reliability_after"]]
    if hot["n"]:
        lines += ["", f"The ECE is low because most candidates are easy negatives in the first bin. Above the decision threshold "
                  f"(bins from {hot['from']:.3f}: the candidates the gate calls AI positive) the probabilities are over-confident: "
                  f"{hot['n']} candidates, mean probability {hot['mean_probability']}, fraction positive {hot['fraction_positive']}."]
    sz, ty = met.get("size_vs_lidc", {}), met.get("nodule_type", {})
    old = sz.get("screen_mask_caliper_0.3.0")

    def size_line(z):
        return (f"median long axis / LIDC diameter {z.get('median_long_over_lidc')}, median mean axial diameter / LIDC diameter "
                f"{z.get('median_mean_axial_over_lidc', 'n/a')}, median |mean axial diameter - LIDC diameter| "
                f"{z.get('median_abs_mean_diameter_error_mm')} mm, Pearson r of the long axis {z.get('pearson_long_vs_lidc')}")

    lines += ["", "## Size and type on held-out detections", "",
              f"{sz.get('nodules')} held-out nodules with a candidate (the candidate nearest each), measured by "
              f"{sz.get('caliper', 'the screen mask on 1 mm pixels')}: {size_line(sz)}."
              + (f" The 0.3.0 caliper (the -600 HU screen mask, 1 mm pixels edge to edge) on the same candidates: {size_line(old)}."
                 if old else "")
              + " LIDC's diameter is about 0.9x the mask's equivalent diameter, and an axial Feret long axis is larger than "
              "both for an irregular nodule; the 8 mm slices of the held-out scans blur the pasted nodules along z.", "",
              f"Nodule type accuracy {ty.get('accuracy')}; confusion (truth -> predicted): `{json.dumps(ty.get('confusion (truth -> predicted)'))}`. "
              "Ground glass is rare in LIDC (67 of 771): no ground-glass detection claim is made.", "",
              "## Nodule-free held-out scans", "", "| scan | slices | candidates | study probability | below threshold |",
              "|---|---|---|---|---|"]
    lines += [f"| {f['scan']} | {f['slices']} | {f['candidates']} | {f['study_probability']} | {f['below_threshold']} |" for f in met.get("nodule_free", [])]
    rtm = met.get("real_tumour", {})
    lines += ["", "## The real adenocarcinoma (not part of the held-out numbers)", "",
              f"{rtm.get('series')}: study probability {rtm.get('study_probability')}, {rtm.get('n_candidates')} candidates "
              f"({rtm.get('n_candidates_above_threshold')} at p >= {met['threshold']}), top candidate inside the annotated boxes: "
              f"{rtm.get('top_candidate_inside_boxes')}; candidates inside the boxes: `{json.dumps(rtm.get('candidates_inside_boxes'))}`; "
              f"Lung-RADS: {rtm.get('lung_rads', {}).get('category')} ({rtm.get('lung_rads', {}).get('rule')})"
              + ("" if rtm.get("lung_rads_candidate_inside_boxes") is None else
                 f"; that candidate is {'inside' if rtm['lung_rads_candidate_inside_boxes'] else 'outside'} the tumour boxes") + ".", "",
              "## Explanations", "",
              f"Grad-CAM (original ReLU formulation, captum LayerGradCam) on the PyTorch twin's `{m['gradcam_layer']}` layer, per view, "
              f"summed into the candidate's cube; median {ex.get('gradcam_seconds_median')} s per finding. Randomisation Spearman values: {rho.get('values')}."
              + (f" Layer chosen on the calibration split (pointing game per layer): `{json.dumps(ex['layer_choice']['pointing_game'])}`."
                 if ex.get("layer_choice") else ""), "",
              "## INT8", "", f"Static QDQ INT8 (percentile calibration on training views, first and last conv FP32): decision agreement "
              f"{agree}, mean |p difference| {met['int8_vs_fp32']['mean_abs_probability_difference']} over "
              f"{met['int8_vs_fp32']['candidates']} held-out candidates."]
    if rt:
        lines += ["", f"Runtime ({rt.get('input')}, {rt.get('threads')} threads, median of {rt.get('repeats')}): INT8 {rt.get('int8_s')} s, "
                  f"FP32 {rt.get('fp32_s')} s; stages {json.dumps(rt.get('int8_stages'))} (`{rt.get('command')}`)."]
    lines += ["", "## Limitations", ""] + [f"- {x}" for x in m["limitations"]]
    if m.get("card_notes"):
        lines += ["", "## Notes", "", m["card_notes"]]
    return "\n".join(lines) + "\n"


def render(model_id: str, notes: str = "") -> str:
    pkg = load_package(model_id, check_hashes=True)
    m = pkg.meta
    if m["task"] == "classification":
        return render_classification(m)
    met = m["metrics"]
    d = m.get("int8_deltas", {})
    lines = [f"# Model card: {m['id']} {m['version']}", "", m["intended_use"], "",
             "## What it does", "",
             f"Task: {m['task']}; modality: {', '.join(m['modality'])} (other modalities are refused); "
             f"input: {m['input']['dimensionality']} with {m['input']['channels']} neighbouring axial slices, "
             f"resampled to {m['input']['spacing_mm']} mm (LPS, axis-aligned), HU clipped to "
             f"{m['input']['normalization']['clip']} and scaled by {m['input']['normalization']['scale']}; "
             f"patches {m['input']['patch_size']} with overlap {m['input']['overlap']} and Gaussian blending; "
             f"output softmax over {len(m['outputs']['labels'])} classes, largest connected component kept for "
             f"{', '.join(m['outputs']['largest_component'])}.", "",
             "| index | label | definition | SNOMED CT |", "|---|---|---|---|"]
    for lab in pkg.labels:
        t = lab["snomed"]["type"]
        lines.append(f"| {lab['index']} | {lab['name']} | {lab.get('definition', '')} | {t['value']} {t['meaning']} |")
    lines += ["", "## Why this architecture", "",
              "A 2.5-D U-Net (2-D convolutions over 3 neighbouring slices as channels, "
              f"{m['architecture']['base']} base channels, depth {m['architecture']['depth']}): ONNX Runtime's CPU "
              "INT8 kernels speed up 2-D convolutions (measured here: "
              f"{d.get('latency_batch8_128x128_2threads_s', {}).get('speedup', 'n/a')}x on this network) while 3-D "
              "convolutions barely gain (about 1.03x on a small 3-D U-Net, DEVELOPERS.md), and the slice context "
              "gives most of the 3-D information at a fraction of the cost.", "",
              "## Training data", ""]
    for t in m["training_data"]:
        lines.append(f"- **{t['name']}**: {t['source']}" + (f" (patient {t['patient']})" if "patient" in t else "") + f"; {t.get('licence', '')}")
    lines += ["", "## Held-out evaluation", "",
              f"Held-out volume: {m['heldout_data'][0]['source']}, {m['heldout_data'][0]['patient']}. "
              f"Reference: {met['reference']}. The full runtime (`radreview infer`) on the original DICOM grid.", "",
              "| label | Dice FP32 | HD95 FP32 (mm) | Dice INT8 | HD95 INT8 (mm) | reference voxels | predicted (FP32) |",
              "|---|---|---|---|---|---|---|"]
    for name, r32 in met["fp32"].items():
        r8 = met["int8"][name]
        lines.append(f"| {name} | {_fmt(r32['dice'])} | {_fmt(r32['hd95_mm'], 1)} | {_fmt(r8['dice'])} | {_fmt(r8['hd95_mm'], 1)} | "
                     f"{r32['reference_voxels']} | {r32['predicted_voxels']} |")
    lines += ["", "Dice is undefined-or-zero where the reference is empty (no lungs or kidneys in this slab): "
              "any predicted voxel there is a false positive, counted in the last column.", "",
              "## FP32 vs INT8", "",
              "Static QDQ INT8 (ONNX Runtime, per-channel weights, percentile (99.999) calibration on patches of the training volumes, first and last convolution kept FP32; recipe chosen on training patient B, see training/quant_select.json).", "",
              "| label | Dice between FP32 and INT8 masks (held-out) | Dice drop vs reference |", "|---|---|---|"]
    for name, v in d.get("dice_fp32_vs_int8_masks", {}).items():
        lines.append(f"| {name} | {_fmt(v, 4)} | {_fmt(d.get('dice_drop_vs_reference', {}).get(name), 4)} |")
    lat = d.get("latency_batch8_128x128_2threads_s", {})
    lines += ["", f"Latency, batch of 8 patches 3x128x128, 2 threads, median of 5: FP32 {_fmt(lat.get('fp32'), 4)} s, "
              f"INT8 {_fmt(lat.get('int8'), 4)} s ({lat.get('speedup', 'n/a')}x). End to end on the held-out series: "
              f"FP32 {met['end_to_end_seconds']['fp32']} s, INT8 {met['end_to_end_seconds']['int8']} s.", "",
              "## Review policy and calibration", "",
              "Confidence thresholds (mean max-softmax probability inside the predicted region): "
              + ", ".join(f"{k} {v}" for k, v in m["review_policy"]["confidence_threshold"].items())
              + f". Temperature {m['calibration']['temperature']} ({m['calibration'].get('note', '')}).", "",
              "## Limitations", ""]
    lines += [f"- {x}" for x in m["limitations"]]
    if notes:
        lines += ["", "## Notes", "", notes]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = argv if argv is not None else sys.argv[1:]
    model_id = argv[0] if argv else "ct-organs-2p5d"
    pkg = load_package(model_id)
    notes = pkg.meta.get("card_notes", "")
    out = ROOT / "docs" / "model-cards" / f"{model_id}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(model_id, notes))
    print(out)


if __name__ == "__main__":
    main()
