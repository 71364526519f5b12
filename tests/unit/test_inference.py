"""Model packages, the segmentation runtime and the CLI around it (no display needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from radreview.inference.package import PackageError, list_packages, load_package, models_dir
from radreview.inference.segment import gaussian_importance, iter_segment, segment
from radreview.studies import load_image_file, open_volume
from radreview.review.metrics import dice, hd95

MODEL = "ct-organs-2p5d"


@pytest.fixture(scope="module")
def pkg():
    return load_package(MODEL, check_hashes=True)


@pytest.fixture(scope="module")
def heldout_results(pkg, ct_series):
    vol = open_volume(ct_series)
    return vol, segment(vol, pkg, "fp32", 2), segment(vol, pkg, "int8", 2)


def copy_package(tmp_path) -> Path:
    dst = tmp_path / MODEL
    shutil.copytree(models_dir() / MODEL, dst)
    return dst


def test_shipped_package_is_sound(pkg):
    assert pkg.verify() == []
    assert pkg.label_names() == ["background", "body", "lungs", "liver", "spleen", "kidneys", "bone"]
    total = sum(p.stat().st_size for p in (models_dir() / MODEL).iterdir())
    assert total < 20 * 2**20
    assert pkg.meta["metrics"]["heldout_volume"] == "abdA"


def test_schema_error_names_the_field(tmp_path):
    d = copy_package(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    meta["input"]["spacing_mm"] = [2.0, -1, 3.0]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match=r"input/spacing_mm/1"):
        load_package(d)
    del meta["outputs"]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="'outputs' is a required property"):
        load_package(d)


def test_hash_mismatch_is_refused(tmp_path, ct_series):
    d = copy_package(tmp_path)
    with open(d / "int8.onnx", "ab") as fh:
        fh.write(b"tampered")
    p = load_package(d)
    assert any("SHA-256" in x for x in p.verify())
    with pytest.raises(PackageError, match="fails its SHA-256 check"):
        segment(open_volume(ct_series), p, "int8")
    with pytest.raises(PackageError, match="fails its SHA-256"):
        load_package(d, check_hashes=True)


def test_wrong_modality_is_refused(pkg, data_dir):
    mr = load_image_file(data_dir / "mr-brain-label/brain1_image.nrrd")
    with pytest.raises(PackageError, match="accepts CT studies; this study is MR"):
        segment(mr, pkg)


def test_wrong_model_shape_is_refused(tmp_path, ct_series):
    d = copy_package(tmp_path)
    meta = json.loads((d / "model.json").read_text())
    meta["outputs"]["labels"] = meta["outputs"]["labels"][:4]  # card no longer matches the network
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="ONNX output has 7 channels, card lists 4 labels"):
        segment(open_volume(ct_series), load_package(d))


def test_gaussian_importance_is_centre_weighted():
    g = gaussian_importance((128, 128))
    assert g.shape == (128, 128) and g.max() == pytest.approx(1.0)
    assert g[64, 64] > g[0, 0] and g.min() > 0


@pytest.mark.parametrize("rel", ["ct-abdomen-dicom/series", "ct-abdomen-nifti/ct.nii.gz", "ct-chest-crops/chest_crop_1.nii.gz"])
def test_mask_on_exact_input_grid(rel, data_dir, tmp_path):
    src = data_dir / rel
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "infer", str(src), "--model", MODEL, "--out", str(out),
                        "--threads", "2"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    seg = sitk.ReadImage(str(out / "segmentation.nii.gz"))
    vol = open_volume(src)
    ref = vol.to_sitk()
    assert seg.GetSize() == ref.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(seg.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(seg.GetDirection(), ref.GetDirection(), atol=1e-6)
    assert seg.GetPixelID() in (sitk.sitkUInt8, sitk.sitkUInt16)
    findings = json.loads((out / "findings.json").read_text())
    assert findings["model"] == MODEL and findings["precision"] == "int8" and findings["seconds"] > 0
    labels = {f["name"]: f for f in findings["labels"]}
    assert set(labels) == {"body", "lungs", "liver", "spleen", "kidneys", "bone"}
    arr = sitk.GetArrayFromImage(seg)
    for f in findings["labels"]:
        assert f["voxels"] == int((arr == f["index"]).sum())
        assert f["volume_ml"] == pytest.approx(f["voxels"] * np.prod(ref.GetSpacing()) / 1000, rel=1e-3)
    hu = vol.array
    if "crop" in rel:  # a crop inside the chest (CT angiogram: dense contrast is not bone)
        assert (arr[hu < -900] == 2).mean() > 0.8  # the air is lung
    else:
        assert (arr[hu < -900] == 0).mean() > 0.8  # air outside the patient is background
        assert (arr[hu > 700] == 6).mean() > 0.8  # dense bone is bone


def test_liver_and_spleen_found_on_heldout_patient(heldout_results, data_dir):
    vol, r32, _ = heldout_results
    ts = sitk.ReadImage(str(data_dir / "ct-abdomen-dicom/totalsegmentator_labels.nii.gz"))
    ref = sitk.GetArrayFromImage(sitk.Resample(ts, vol.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    d_liver = dice(r32.labels == 3, ref == 5)
    d_spleen = dice(r32.labels == 4, ref == 1)
    # what the model card reports must be what the runtime produces
    card = load_package(MODEL).meta["metrics"]["fp32"]
    assert d_liver == pytest.approx(card["liver"]["dice"], abs=2e-3)
    assert d_spleen == pytest.approx(card["spleen"]["dice"], abs=2e-3)
    assert d_liver > 0.5  # far from chance on a patient never seen in training
    # HD95 hangs on a few boundary voxels; ORT thread scheduling moves them slightly between runs
    assert hd95(r32.labels == 3, ref == 5, vol.spacing) == pytest.approx(card["liver"]["hd95_mm"], rel=0.1)


def test_int8_agrees_with_fp32_on_heldout(heldout_results):
    _, r32, r8 = heldout_results
    for idx, name in ((1, "body"), (3, "liver"), (4, "spleen"), (6, "bone")):
        d = dice(r32.labels == idx, r8.labels == idx)
        assert d is not None and d >= 0.98, (name, d)


def test_stats_confidence_and_uncertainty(heldout_results):
    vol, r, _ = heldout_results
    liver = next(s for s in r.stats if s.name == "liver")
    assert 0.3 < liver.confidence <= 1.0
    assert liver.confidence == pytest.approx(float(r.max_prob[r.labels == 3].astype(np.float32).mean()), abs=1e-3)
    assert r.entropy.shape == vol.array.shape and float(r.entropy.max()) > 0
    # entropy is higher on label boundaries than deep inside the liver
    assert r.max_prob.shape == vol.array.shape
    c = liver.centroid_lps
    assert vol.lps_to_index(c)[0] < vol.size[0] / 2  # liver is patient-right = low i in LPS


def test_cancel_mid_run_leaves_nothing(pkg, ct_series):
    vol = open_volume(ct_series)
    gen = iter_segment(vol, pkg, "int8", 2)
    stages = [next(gen).stage for _ in range(3)]
    assert "infer" in stages or "pre" in stages
    gen.close()  # cancel
    with pytest.raises(StopIteration):
        next(gen)


def test_cli_models_list_and_verify():
    p = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "models", "list", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    items = json.loads(p.stdout)
    m = next(x for x in items if x["id"] == MODEL)
    assert set(m) == {"id", "version", "task", "modality", "labels"} and m["task"] == "segmentation"
    p = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "models", "verify", MODEL], capture_output=True, text=True)
    assert p.returncode == 0 and "OK" in p.stdout
    p = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "models", "verify", "no-such-model"], capture_output=True, text=True)
    assert p.returncode != 0 and "no model package" in p.stderr


def test_cli_infer_refuses_mr(data_dir, tmp_path):
    p = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "infer", str(data_dir / "mr-brain-label/brain1_image.nrrd"),
                        "--model", MODEL, "--out", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode != 0
    assert "accepts CT" in p.stderr and p.stderr.count("\n") == 1
    assert not (tmp_path / "segmentation.nii.gz").exists()


def test_list_packages_skips_broken(tmp_path, monkeypatch):
    import radreview.inference.package as pk

    base = tmp_path / "models"
    shutil.copytree(models_dir() / MODEL, base / MODEL)
    (base / "broken").mkdir()
    (base / "broken" / "model.json").write_text("{not json")
    monkeypatch.setattr(pk, "models_dir", lambda: base)
    assert [p.id for p in list_packages()] == [MODEL]


def test_models_quantize_records_measured_deltas(tmp_path, data_dir):
    from radreview.inference.cli_ops import models_quantize

    d = copy_package(tmp_path)
    old = json.loads((d / "model.json").read_text())["files"]["int8"]["sha256"]
    rec = models_quantize(str(d), [str(data_dir / "ct-chest-crops/chest_crop_1.nii.gz")], threads=2)
    meta = json.loads((d / "model.json").read_text())
    assert meta["int8_deltas"]["requantized"] == rec
    assert rec["patches"] == 32 and rec["latency"]["int8_speedup"] > 0
    (agree,) = rec["dice_fp32_vs_int8_on_calibration"].values()
    assert agree["lungs"] >= 0.95
    assert load_package(d, check_hashes=True).verify() == []  # new INT8 file, hash recorded
    assert len(old) == 64
