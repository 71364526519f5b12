"""Grad-CAM checks of ``ct-nodule-2p5d`` on the held-out cases (re-built exactly as
``training.package_nodule`` builds them: same seed, same order); updates ``metrics.explanations``.

Usage: ``python -m training.nodule_xai [--n 40]``

* pointing game: the Grad-CAM maximum inside the pasted nodule's mask dilated by 2 mm, for
  held-out qualifying nodules with a matching candidate;
* randomisation (Adebayo et al., NeurIPS 2018): Spearman between the shipped map and the map
  of a fully re-drawn twin, compared inside the candidate's cube (where the map is defined);
  the whole-slice comparison of 0.1 is kept as ``randomization_spearman_slices``: outside the
  cube both maps are zero by construction, which inflates it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import SimpleITK as sitk

from radreview.explain.gradcam import explain_candidate, load_twin, randomized_copy, spearman
from radreview.inference.classify import classify
from radreview.inference.package import load_package, write_manifest
from training.nodule_data import TEST_BGS, make_case, match, nodules
from training.package_nodule import OUT


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--per-case", type=int, default=4)
    args = ap.parse_args(argv)
    pkg = load_package(OUT, check_hashes=True)
    net = load_twin(pkg)
    test = nodules("test")
    rng = np.random.default_rng(99)
    order = rng.permutation(len(test))
    hits = tried = 0
    rho, rho_s, times = [], [], []
    for j in range(0, len(order), args.per_case):
        case = make_case(TEST_BGS[(j // args.per_case) % 2], [test[i] for i in order[j:j + args.per_case]], rng, 40.0)
        if tried >= args.n:
            continue  # keep drawing cases so the sequence matches package_nodule
        rr = classify(case.volume, pkg, "fp32", 2, crop=case.crop)
        for i, t in enumerate(case.truth):
            if not t["qualifies"] or tried >= args.n:
                continue
            hit = [c for c in rr.candidates if match(c.center_lps, case.truth) == i]
            if not hit:
                continue
            ex = explain_candidate(case.volume, pkg, rr, f"candidate-{hit[0].rank}", net)
            sp = case.volume.spacing
            m = sitk.GetImageFromArray(t["mask"].astype(np.uint8))
            m.SetSpacing(sp)
            m = sitk.GetArrayFromImage(sitk.BinaryDilate(m, [int(round(2.0 / s)) for s in sp], sitk.sitkBall)) > 0
            ii, jj, kk = np.rint(case.volume.lps_to_index(ex.peak_lps)).astype(int)
            hits += bool(m[kk, jj, ii])
            tried += 1
            times.append(ex.seconds)
            if len(rho) < 10:
                ex_r = explain_candidate(case.volume, pkg, rr, f"candidate-{hit[0].rank}", randomized_copy(net, len(rho)), verify=False)
                cube = ex.heatmap > 0
                rho.append(spearman(ex.heatmap, ex_r.heatmap, region=cube))
                rho_s.append(spearman(ex.heatmap, ex_r.heatmap))
            print(json.dumps({"tried": tried, "hits": hits}), flush=True)
    path = OUT / "model.json"
    meta = json.loads(path.read_text())
    meta["metrics"]["explanations"] = {
        "pointing_game": {"hits": hits, "tried": tried, "rate": round(hits / max(tried, 1), 3),
                          "definition": "Grad-CAM maximum inside the pasted real nodule's mask dilated by 2 mm, held-out "
                                        "qualifying nodules with a matching candidate"},
        "randomization_spearman": {"values": [round(v, 3) for v in rho], "median": round(float(np.median(rho)), 3),
                                   "region": "inside the candidate's cube (where the shipped map is non-zero)"},
        "randomization_spearman_slices": {"values": [round(v, 3) for v in rho_s], "median": round(float(np.median(rho_s)), 3),
                                          "region": "whole explained slices (0.1's definition; zeros outside the cube inflate it)"},
        "gradcam_seconds_median": round(float(np.median(times)), 3)}
    path.write_text(json.dumps(meta, indent=1))
    write_manifest()
    print(json.dumps(meta["metrics"]["explanations"], indent=1))


if __name__ == "__main__":
    main()
