"""The nodule classifier: generator, package card, runtime on held-out lungs and the real tumour."""

from __future__ import annotations

import numpy as np
import pytest

from radreview.inference.classify import classify, size_gate
from radreview.inference.package import load_package
from radreview.review.findings import findings_from_classification
from radreview.studies import open_volume
from tests.nodule_case import inserted_nodule_volume
from training.nodules import insert_nodule

NOD = "ct-nodule-2p5d"


@pytest.fixture(scope="module")
def pkg():
    return load_package(NOD, check_hashes=True)


def test_generator_size_and_partial_volume():
    rng = np.random.default_rng(0)
    for d in (4.0, 12.0, 30.0):
        block = np.full((31, 96, 96), -850.0, np.float32)
        mask = insert_nodule(block, (15, 48, 48), (1.0, 1.0, 1.0), {"diameter_mm": d, "style": "spherical", "hu": 40.0}, rng)
        d_eq = (6 * mask.sum() / np.pi) ** (1 / 3)
        assert abs(d_eq - d) / d < 0.25
        edge = (block > -700) & (block < -100)  # voxels mixing lung and lesion
        assert edge.sum() > 0.2 * mask.sum() ** (2 / 3)
        assert abs(np.median(block[mask]) - 40) < 60


def test_card_reports_what_the_issue_asks(pkg):
    m = pkg.meta
    assert m["task"] == "classification" and "6 mm" in m["question"]
    met = m["metrics"]
    for prec in ("fp32", "int8"):
        for k in ("auc", "sensitivity", "specificity", "confusion_matrix", "by_size_band"):
            assert k in met[prec]
    assert {"before_temperature", "after_temperature"} <= set(met["ece"])
    assert m["calibration"]["temperature"] > 0
    assert "pointing_game" in m["explanations"] and "randomization_spearman" in m["explanations"]
    assert "study_probability" in m["real_tumour"]
    assert any("synthetic" in lim for lim in m["limitations"])


def test_size_gate_is_the_6mm_question():
    assert size_gate(3.0) < 0.01 and size_gate(6.0) == pytest.approx(0.5) and size_gate(9.0) > 0.99


def test_inserted_nodule_is_found_in_held_out_lungs(pkg):
    vol, mask, _ = inserted_nodule_volume(18.0)
    res = classify(vol, pkg, "int8", 2, crop=True)
    assert res.candidates, "no candidate for an 18 mm nodule"
    top = res.candidates[0]
    i, j, k = np.rint(vol.lps_to_index(top.center_lps)).astype(int)
    assert mask[k, j, i], "top candidate is not the inserted nodule"
    assert 10 < top.size_mm < 30
    assert res.study_probability > 0.5
    fs = findings_from_classification(res, pkg)
    assert fs[0].id == f"{NOD}:study" and fs[1].id == f"{NOD}:candidate-1"
    assert fs[1].details["center_lps"] == [round(v, 2) for v in top.center_lps]


def test_real_tumour_probability_matches_card(pkg, data_dir):
    vol = open_volume(data_dir / "ct-chest-tumor/series_B40f")
    res = classify(vol, pkg, "int8", 2)
    assert res.study_probability == pytest.approx(pkg.meta["real_tumour"]["study_probability"], abs=0.02)


def test_pointing_game_on_held_out_nodules(pkg):
    """Grad-CAM's maximum falls inside the inserted nodule (held-out lungs, 3 cases)."""
    import SimpleITK as sitk

    from radreview.explain.gradcam import explain_candidate, load_twin

    net = load_twin(pkg)
    hits = 0
    for seed, d in ((21, 14.0), (22, 24.0), (23, 9.0)):
        vol, mask, _ = inserted_nodule_volume(d, seed=seed)
        res = classify(vol, pkg, "fp32", 2, crop=True)
        ex = explain_candidate(vol, pkg, res, "study", net)
        i, j, k = np.rint(vol.lps_to_index(ex.peak_lps)).astype(int)
        near = sitk.GetArrayFromImage(sitk.BinaryDilate(sitk.GetImageFromArray(mask.astype(np.uint8)), [2, 2, 1])) > 0
        hits += bool(near[k, j, i])
    assert hits >= 2
