"""Render ``docs/model-cards/<id>.md`` from a package's ``model.json`` (numbers never retyped).

Usage: ``python -m training.model_card ct-organs-2p5d``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from radreview.inference.package import load_package

ROOT = Path(__file__).resolve().parents[1]


def _fmt(v, nd=3):
    return "n/a" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def render_classification(m: dict) -> str:
    met, d = m["metrics"], m.get("int8_deltas", {})
    f32, i8 = met["fp32"], met["int8"]
    cm = f32["confusion_matrix"]
    lines = [f"# Model card: {m['id']} {m['version']}", "", m["intended_use"], "", "## Question", "", m["question"], "",
             "## How it answers", "",
             f"A 2.5-D U-Net screen ({m['architecture']['base']} base channels, depth {m['architecture']['depth']}, "
             f"{m['input']['channels']} neighbouring axial slices at {m['input']['spacing_mm']} mm) gives a per-voxel "
             "nodule probability over every slice; 3-D connected components above 0.5 inside the HU-rule lungs "
             "become candidates with a centre (LPS mm) and an equivalent-sphere diameter. Candidate probability = "
             "temperature-scaled maximum probability x a soft 6 mm size gate; study probability = the maximum over "
             "candidates. 2-D convolutions because ONNX Runtime's CPU INT8 kernels speed them up and 3-D ones barely "
             "(DEVELOPERS.md); the slice context plus 3-D candidate grouping is the two-stage pattern used for lung nodules.",
             "", "## Data", ""]
    lines += [f"- training: **{t['name']}** {t['source']}" for t in m["training_data"]]
    lines += [f"- held out: **{t['name']}** {t['source']}" for t in m["heldout_data"]]
    lines += ["", "## Held-out results (synthetic lesions in a held-out patient's real lungs)", "",
              f"{f32['n']} crops, {f32['positives']} positive (nodule >= 6 mm). Threshold {met['threshold']} on the calibrated probability.", "",
              "| | FP32 | INT8 |", "|---|---|---|",
              f"| AUC | {f32['auc']} | {i8['auc']} |",
              f"| sensitivity | {f32['sensitivity']} | {i8['sensitivity']} |",
              f"| specificity | {f32['specificity']} | {i8['specificity']} |", "",
              f"Confusion matrix (FP32): TP {cm['tp']}, FP {cm['fp']}, TN {cm['tn']}, FN {cm['fn']}.", "",
              f"ECE (10 bins): {met['ece']['before_temperature']} before temperature scaling, {met['ece']['after_temperature']} "
              f"after (T = {m['calibration']['temperature']:.3f}, fitted on {met['validation_for_temperature']['cases']} "
              "validation crops of the training patients).", "", "| band | n | rate (FP32) |", "|---|---|---|"]
    for band, v in f32["by_size_band"].items():
        rate = next(x for k, x in v.items() if k != "n")
        kind = next(k for k in v if k != "n")
        lines.append(f"| {band} | {v['n']} | {kind.replace('_', ' ')} {rate} |")
    bands = f32["by_size_band"]
    big = [v.get("sensitivity") for k, v in bands.items() if k in ("10-20 mm", "20-50 mm")]
    fpr = [v["false_positive_rate"] for k, v in bands.items() if k in ("vessel", "none")]
    e = met["ece"]
    lines += ["", f"What these numbers mean: on lungs it never saw, the screen finds synthetic nodules of 10 mm and more "
              f"(sensitivity {min(big):.2f}-{max(big):.2f} in those bands), but it also fires on the held-out patient's own "
              f"anatomy: {min(fpr):.0%}-{max(fpr):.0%} of crops without a nodule get a candidate above the threshold. The "
              "held-out series has 8 mm slices while the training lungs had 1.5 and 3 mm. Temperature scaling fitted on the "
              f"training patients moved held-out ECE from {e['before_temperature']} to {e['after_temperature']}. In radreview "
              "this model demonstrates the review gate, which flags exactly such uncertain output for a human decision; "
              "it is not a detector to rely on.",
              "", "## FP32 vs INT8", "",
              f"AUC difference {d.get('auc_fp32_minus_int8')}, mean |probability difference| {d.get('mean_abs_probability_difference')}, "
              f"decision agreement {d.get('decision_agreement')}.", "", "## The real tumour (patient D)", ""]
    r = m.get("real_tumour", {})
    lines.append("```\n" + json.dumps(r, indent=1) + "\n```")
    x = m.get("explanations", {})
    lines += ["", "## Explanations (Grad-CAM)", "", "```\n" + json.dumps(x, indent=1) + "\n```", "", "## Limitations", ""]
    lines += [f"- {v}" for v in m["limitations"]]
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
              f"Confidence thresholds (mean max-softmax probability inside the predicted region): "
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
