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

from radreview.inference.package import PackageError, list_packages, load_package, models_dir, sha256_file
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
    # voxel entropy in nats: 0 <= H <= ln(7 labels) everywhere (float16, so a rounding margin)
    ent = r.entropy.astype(np.float32)
    assert ent.shape == vol.array.shape and ent.min() >= 0 and ent.max() <= np.log(7) + 2e-3
    # and higher on the liver's boundary than deep inside it (where the model is sure)
    liver_m = r.labels == 3
    core = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(liver_m.astype(np.uint8)), (4, 4, 1))) > 0
    rim = liver_m & ~sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(liver_m.astype(np.uint8)), (1, 1, 0))).astype(bool)
    assert core.sum() > 1000 and rim.sum() > 1000
    assert float(ent[rim].mean()) > 2 * float(ent[core].mean())
    # where the max-softmax probability is near 1, the entropy is near 0 (H <= h(p) + (1-p) ln 6, Fano)
    sure = r.max_prob.astype(np.float32) > 0.999
    assert sure.sum() > 1000 and float(ent[sure].mean()) < 0.05
    c = liver.centroid_lps
    assert vol.lps_to_index(c)[0] < vol.size[0] / 2  # liver is patient-right = low i in LPS


def test_voxel_entropy_closed_form():
    """Shannon entropy in nats over the channel axis 0 of ``(C, z, y, x)`` probabilities:
    binary p = 0.5 is ln 2, a one-hot voxel 0, uniform over C labels ln C, and one
    hand-computed mixed distribution."""
    from radreview.inference.segment import _entropy

    prob = np.zeros((4, 1, 2, 2), np.float32)
    prob[:2, 0, 0, 0] = 0.5  # binary, p = 0.5
    prob[2, 0, 0, 1] = 1.0  # one-hot
    prob[:, 0, 1, 0] = 0.25  # uniform over 4
    prob[:3, 0, 1, 1] = (0.7, 0.2, 0.1)
    h = _entropy(prob)
    assert h.shape == (1, 2, 2) and h.dtype == np.float32
    want = [[np.log(2), 0.0], [np.log(4), -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))]]
    np.testing.assert_allclose(h[0], want, atol=1e-6)


def test_cancel_mid_run_leaves_nothing(pkg, ct_series):
    """Closing the generator during inference stops it there: progress short of the total,
    no later stage reached, no result returned."""
    vol = open_volume(ct_series)
    gen = iter_segment(vol, pkg, "int8", 2)
    steps = [next(gen) for _ in range(3)]
    assert [p.stage for p in steps] == ["pre", "infer", "infer"]
    assert 0 < steps[1].done < steps[2].done < steps[2].total  # cancelled mid-inference
    gen.close()  # cancel
    assert gen.gi_frame is None  # the generator finished at the close, it did not run on
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value is None  # no SegmentationResult


def test_cli_models_list_and_verify():
    p = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "models", "list", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    items = json.loads(p.stdout)
    m = next(x for x in items if x["id"] == MODEL)
    assert set(m) == {"id", "version", "task", "modality", "labels", "source", "path"} and m["task"] == "segmentation"
    assert m["source"] == "shipped"
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
    assert meta["files"]["int8"]["sha256"] == sha256_file(d / "int8.onnx")
    assert meta["files"]["int8"]["sha256"] != old  # the requantized file replaced the shipped one


def test_every_slice_segmented_on_heldout(heldout_results, data_dir):
    """Regression: the last slice (z = 19) came back empty (the model grid's last plane lay
    1 mm past the last slice centre and was resampled as air)."""
    vol, r32, r8 = heldout_results
    ts = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ct-abdomen-dicom/totalsegmentator_labels.nii.gz")))
    assert int((ts[-1] == 5).sum()) > 10000  # the reference has liver on the last slice
    for r in (r32, r8):
        body = [int((r.labels[k] == 1).sum()) for k in range(vol.array.shape[0])]
        assert min(body) > 0.5 * max(body), body
        assert int((r.labels[-1] == 3).sum()) > 5000  # liver found on the last slice too
        assert not np.any(r.max_prob[-1] == 0)


def _geometry_cases():
    rot = sitk.VersorTransform((0, 0, 1), 0.3).GetMatrix()
    return {"identity": np.eye(3), "RAS flips": np.diag([-1.0, -1.0, 1.0]),
            "axes swapped": np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]),
            "oblique": np.array(rot, float).reshape(3, 3)}


@pytest.mark.parametrize("case", list(_geometry_cases()))
def test_fast_label_mapping_equals_channelwise_resample(case, ct_series):
    """The label map / max probability mapped from the model grid without resampling every
    channel equals the argmax / max of the linearly resampled channels (ITK), whatever the
    study's axis order and flips; an oblique study takes the per-channel path."""
    from radreview.inference import segment as sg
    from radreview.studies.volume import Volume

    src = open_volume(ct_series)
    vol = Volume(np.ascontiguousarray(src.array[:, 150:350, 100:300]), src.spacing, src.origin, _geometry_cases()[case])
    grid = sg.to_model_grid(vol, (2.0, 2.0, 3.0), extrapolate=True)
    shape = sitk.GetArrayViewFromImage(grid).shape
    rng = np.random.default_rng(0)
    # smooth logits from the model-grid intensities plus noise: several labels with boundaries
    hu = sitk.GetArrayFromImage(grid)
    logits = np.stack([-hu / 300.0, hu / 300.0, (hu - 40) ** 2 / -5000.0 + 1, rng.normal(0, 0.7, shape)]).astype(np.float32)
    prob = np.exp(logits - logits.max(axis=0))
    prob /= prob.sum(axis=0)
    lut = np.array([0, 1, 3, 6])
    ref = vol.to_sitk()
    amap = sg._axis_map(vol, grid)
    assert (amap is None) == (case == "oblique")
    lab_s, best_s = drain_gen(sg._map_labels_sitk(prob, grid, ref, lut, np.uint8, vol.array.shape))
    if amap is None:
        return
    cm = sg._CellMap(prob, *amap, lut, np.uint8)
    drain_gen(cm.iter_labels(with_best=True))
    lab_f, best_f = cm.lab, cm.best
    assert (cm.cell == cm.MIXED).any() and (cm.cell != cm.MIXED).any()
    np.testing.assert_array_equal(cm.best_full(), best_f)
    # per-label sums from the model grid equal the direct sums over the study grid
    tab = cm.uniform_stats() + cm.acc
    zz, yy, xx = np.indices(lab_f.shape)
    for c, idx in enumerate(lut):
        m = lab_f == idx
        b = best_f.astype(float)  # float16-rounded: compare with a tolerance
        assert tab[0, c] == pytest.approx(m.sum(), abs=0.5)
        assert tab[1, c] == pytest.approx(b[m].sum(), rel=1e-3, abs=1)
        for row, ix in ((2, zz), (3, yy), (4, xx)):
            assert tab[row, c] == pytest.approx(ix[m].sum(), rel=1e-9, abs=1e-6)
    assert lab_f.shape == vol.array.shape and set(np.unique(lab_f)) <= set(lut.tolist())
    assert (lab_f == lab_s).mean() > 0.9999
    assert len(np.unique(lab_f)) >= 3
    np.testing.assert_allclose(best_f.astype(np.float32), best_s.astype(np.float32), atol=2e-3)


def drain_gen(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_entropy_is_mapped_on_first_read(pkg, data_dir):
    vol = open_volume(data_dir / "ct-abdomen-nifti/ct_30slices.nii.gz")
    r = segment(vol, pkg, "int8", 2)  # segment() defers the entropy and max-probability maps
    assert set(r.sources) == {"entropy", "max_prob"} and r.__dict__.get("_entropy") is None
    e = r.entropy
    assert set(r.sources) == {"max_prob"} and e.shape == vol.array.shape and e.dtype == np.float16
    assert r.entropy is e
    # uncertainty is higher on the body's outline than deep inside it
    body = r.labels > 0
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(body.astype(np.uint8)), (3, 3, 0))) > 0
    assert float(e[body & ~inner].astype(np.float32).mean()) > 2 * float(e[inner].astype(np.float32).mean())
    eager = drain_gen(iter_segment(vol, pkg, "int8", 2))  # the worker-thread form maps it at once
    assert eager.sources == {} and eager.__dict__["_entropy"] is not None
    np.testing.assert_array_equal(eager.labels, r.labels)
    np.testing.assert_array_equal(eager.max_prob, r.max_prob)
    np.testing.assert_array_equal(eager.entropy, r.entropy)
    assert [s.as_dict() for s in eager.stats] == [s.as_dict() for s in r.stats]


def test_label_stats_match_the_label_map(heldout_results):
    """Counts, confidence and centroids (summed on the model grid, LCC-dropped voxels moved
    to the body) equal what the returned label map and max-probability map give."""
    vol, r32, r8 = heldout_results
    for r in (r32, r8):
        mp = r.max_prob.astype(np.float64)
        for st in r.stats:
            m = r.labels == st.index
            assert st.voxels == int(m.sum()), st.name
            if st.voxels:
                assert st.confidence == pytest.approx(float(mp[m].mean()), abs=2e-4), st.name
                zyx = np.argwhere(m).mean(axis=0)
                np.testing.assert_allclose(st.centroid_lps, vol.index_to_lps(zyx[::-1]), atol=1e-3)


def test_oblique_study_takes_the_channelwise_path(pkg, heldout_results):
    """A study whose axes are rotated against LPS is mapped channel by channel (ITK); its
    statistics come from the returned maps and agree with them."""
    from radreview.studies.volume import Volume

    src = heldout_results[0]
    rot = np.array(sitk.VersorTransform((0, 0, 1), 0.3).GetMatrix()).reshape(3, 3)
    vol = Volume(np.ascontiguousarray(src.array[:, 100:400, 100:400]), src.spacing, src.origin, rot, src.info)
    r = segment(vol, pkg, "int8", 2)
    assert r.labels.shape == vol.array.shape and r.sources.keys() == {"entropy"}
    mp = r.max_prob.astype(np.float64)
    found = 0
    for st in r.stats:
        m = r.labels == st.index
        assert st.voxels == int(m.sum()), st.name
        if st.voxels:
            found += 1
            assert st.confidence == pytest.approx(float(mp[m].mean()), abs=2e-4)
            np.testing.assert_allclose(st.centroid_lps, vol.index_to_lps(np.argwhere(m).mean(axis=0)[::-1]), atol=1e-3)
    assert found >= 3
    assert all((r.labels[k] == 1).any() for k in range(vol.array.shape[0]))
