"""Grad-CAM: twin/ONNX gate, safe loading, Seg-Grad-CAM on the organ model, sanity check, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from radreview.explain.gradcam import ExplanationRefused, check_twin, explain_label, load_twin, randomized_copy, spearman
from radreview.inference.package import load_package, models_dir, sha256_file
from radreview.inference.segment import segment
from radreview.studies import open_volume

SEG = "ct-organs-2p5d"


@pytest.fixture(scope="module")
def seg_case(ct_series):
    vol = open_volume(ct_series)
    pkg = load_package(SEG, check_hashes=True)
    return vol, pkg, segment(vol, pkg, "fp32", 2)


def test_twin_matches_fp32_onnx(seg_case):
    _, pkg, _ = seg_case
    x = np.random.default_rng(0).normal(size=(2, 3, 128, 128)).astype(np.float32)
    assert check_twin(load_twin(pkg), pkg, x) <= 1e-3


def _package_copy(tmp_path, state):
    d = tmp_path / SEG
    shutil.copytree(models_dir() / SEG, d)
    torch.save(state, d / "state_dict.pt")
    meta = json.loads((d / "model.json").read_text())
    meta["files"]["state_dict"]["sha256"] = sha256_file(d / "state_dict.pt")
    (d / "model.json").write_text(json.dumps(meta))
    return load_package(d, check_hashes=True)


def test_twin_disagreement_refuses_explanation(seg_case, tmp_path):
    vol, pkg, res = seg_case
    state = torch.load(pkg.file("state_dict"), weights_only=True)
    key = next(k for k in state if k.endswith("head.weight"))
    state[key] = state[key] * 1.01  # a 1 % drift: no longer the model that ran
    bad = _package_copy(tmp_path, state)
    with pytest.raises(ExplanationRefused, match="disagree"):
        explain_label(vol, bad, res, "liver")


class Payload:  # an arbitrary object: unpickling it would run code in a malicious file
    pass


def test_state_dict_is_loaded_weights_only(tmp_path, seg_case):
    _, pkg, _ = seg_case
    state = dict(torch.load(pkg.file("state_dict"), weights_only=True))
    state["evil"] = Payload()
    bad = _package_copy(tmp_path, state)
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported global"):
        load_twin(bad)


def test_seg_gradcam_on_liver_and_randomization(seg_case):
    vol, pkg, res = seg_case
    ex = explain_label(vol, pkg, res, "liver")
    assert ex.heatmap.shape == vol.array.shape
    assert ex.heatmap.min() >= 0 and ex.heatmap.max() == pytest.approx(1.0)
    k, j, i = np.rint(vol.lps_to_index(ex.peak_lps)[::-1]).astype(int)
    near = res.labels[max(k - 2, 0) : k + 3, max(j - 15, 0) : j + 16, max(i - 15, 0) : i + 16]
    assert (near == 3).any(), "Grad-CAM peak far from the liver"
    # sanity check (Adebayo et al., NeurIPS 2018): random weights give an unrelated map
    net = load_twin(pkg)
    ex_r = explain_label(vol, pkg, res, "liver", net=randomized_copy(net), verify=False)
    rho = spearman(ex.heatmap, ex_r.heatmap)
    assert rho < 0.5, rho


def test_cli_explain_writes_heatmap_on_input_grid(ct_series, tmp_path):
    p = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "explain", str(ct_series), "--model", SEG,
                        "--out", str(tmp_path), "--target", "spleen"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    data = json.loads((tmp_path / "explanation.json").read_text())
    assert set(data) >= {"model", "target", "probability", "peak_lps", "seconds"} and data["target"] == "spleen"
    img = sitk.ReadImage(str(tmp_path / "heatmap.nii.gz"))
    ref = open_volume(ct_series).to_sitk()
    assert img.GetSize() == ref.GetSize() and img.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(img.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(img.GetDirection(), ref.GetDirection(), atol=1e-6)
    arr = sitk.GetArrayFromImage(img)
    assert 0 <= arr.min() and arr.max() <= 1.0 + 1e-6
    p = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "explain", str(ct_series), "--model", SEG,
                        "--out", str(tmp_path), "--target", "pancreas"], capture_output=True, text=True)
    assert p.returncode != 0 and "unknown label" in p.stderr


def test_nodule_twin_matches_fp32_onnx_on_real_views(data_dir):
    """The tri-planar nodule classifier's twin agrees with its FP32 ONNX model on views of real
    lung candidates, and a 1 % weight drift is refused."""
    from radreview.inference.classify import detect_candidates, extract_views
    from radreview.inference.lungs import closed_lung_mask
    from radreview.inference.segment import normalize, to_model_grid
    from radreview.studies import load_image_file

    pkg = load_package("ct-nodule-2p5d", check_hashes=True)
    vol = load_image_file(data_dir / "ct-chest-crops/chest_crop_1.nii.gz", modality="CT")
    g = to_model_grid(vol, pkg.meta["input"]["spacing_mm"])
    hu = sitk.GetArrayFromImage(g)
    _, comps = detect_candidates(hu, g.GetSpacing(), closed_lung_mask(hu, g.GetSpacing(), crop=True))
    x = normalize(extract_views(hu, [c["centroid_zyx"] for c in comps[:16]], 32), pkg.meta["input"]["normalization"])
    net = load_twin(pkg)
    assert check_twin(net, pkg, x) <= 1e-3
    with torch.no_grad():
        net.head[-1].weight.mul_(1.01)
    with pytest.raises(ExplanationRefused, match="disagree"):
        check_twin(net, pkg, x)
