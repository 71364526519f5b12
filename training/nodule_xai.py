"""Grad-CAM checks of ``ct-nodule-2p5d`` on the held-out cases (re-built exactly as
``training.package_nodule`` builds them: same seed, same order); updates ``metrics.explanations``.

Usage: ``python -m training.nodule_xai [--n 40]``

* pointing game: the Grad-CAM maximum inside the pasted nodule's mask dilated by 2 mm, for
  held-out qualifying nodules with a matching candidate;
* randomisation (Adebayo et al., NeurIPS 2018): Spearman between the shipped map and the map
  of a fully re-drawn twin, compared inside the candidate's cube (where the map is defined);
  (0.2 also reported a whole-slice comparison: outside the cube both maps are zero by
  construction, which inflates it; dropped in 0.3).

Re-running it on the shipped model is a second look at the held-out split: say so where it is reported.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from radreview.explain.gradcam import load_twin
from radreview.inference.package import load_package, write_manifest
from training.nodule_data import TEST_BGS, make_case, nodules
from training.package_nodule import OUT, pointing_game


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
    cases = []
    for j in range(0, len(order), args.per_case):  # every case drawn, so the sequence matches package_nodule
        case = make_case(TEST_BGS[(j // args.per_case) % 2], [test[i] for i in order[j:j + args.per_case]], rng, 40.0)
        cases.append({"volume": case.volume, "crop": case.crop, "truth": case.truth})
    hits, tried, rho, times = pointing_game(cases, pkg, net, args.n, n_random=10)
    path = OUT / "model.json"
    meta = json.loads(path.read_text())
    ex = meta["metrics"].setdefault("explanations", {})
    ex.update({
        "pointing_game": {"hits": hits, "tried": tried, "rate": round(hits / max(tried, 1), 3),
                          "definition": "Grad-CAM maximum inside the pasted real nodule's mask dilated by 2 mm, held-out "
                                        "qualifying nodules with a matching candidate"},
        "randomization_spearman": {"values": [round(v, 3) for v in rho], "median": round(float(np.median(rho)), 3),
                                   "region": "inside the candidate's cube (where the shipped map is non-zero)"},
        "gradcam_seconds_median": round(float(np.median(times)), 3)})
    path.write_text(json.dumps(meta, indent=1))
    write_manifest()
    print(json.dumps(meta["metrics"]["explanations"], indent=1))


if __name__ == "__main__":
    main()
