"""Reference import (label map, SEG, RTSTRUCT), label matching, comparison metrics and the
``radreview compare`` command, on real labels from ../shared/data.

Metrics are checked against seg-metrics (an independent implementation on SimpleITK distance
maps) and against a brute-force MONAI-style computation (scipy EDT over the whole grid).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid
from scipy import ndimage

from radreview.review.compare import (BOTH, REFERENCE_ONLY, TEST_ONLY, compare_labels, disagreement_map,
                                      match_labels)
from radreview.review.metrics import bounding_box, hd95, lesion_counts, mask_metrics, surface_mask
from radreview.studies import Volume, open_volume
from radreview.studies.labels import LabelImportError, load_reference

from ..conftest import with_fresh_uids, write_series

TS = "ct-abdomen-dicom/totalsegmentator_labels.nii.gz"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ct(ct_series) -> Volume:
    return open_volume(ct_series)


@pytest.fixture(scope="module")
def ts_labels(data_dir, ct):
    """TotalSegmentator labels of the sample CT on its grid (uint16 (z, y, x))."""
    return load_reference(data_dir / TS, ct).array


@pytest.fixture(scope="module")
def brain(data_dir):
    img = sitk.ReadImage(str(data_dir / "mr-brain-label" / "brain1_label.nrrd"))
    return sitk.GetArrayFromImage(img) > 0, tuple(img.GetSpacing()[::-1])


@pytest.fixture(scope="module")
def ct_uid_series(tmp_path_factory, ct_datasets):
    """The sample CT rewritten uncompressed with fresh Study/Series/SOP Instance UIDs (the
    shared files have them blank, which a SEG or RTSTRUCT cannot reference)."""
    dss = with_fresh_uids(ct_datasets)
    folder = tmp_path_factory.mktemp("ct_uids") / "series"
    write_series(folder, dss)
    return folder


@pytest.fixture(scope="module")
def ct_uid_vol(ct_uid_series) -> Volume:
    return open_volume(ct_uid_series)


def monai_style(t: np.ndarray, r: np.ndarray, sp) -> np.ndarray:
    """Brute force: EDT of the complement of each surface over the whole grid (MONAI's
    ``get_surface_distance``), sampled at the other surface; both directions concatenated."""
    st, sr = surface_mask(t), surface_mask(r)
    d_tr = ndimage.distance_transform_edt(~sr, sampling=sp)[st]
    d_rt = ndimage.distance_transform_edt(~st, sampling=sp)[sr]
    return np.concatenate([d_tr, d_rt])


def segmetrics(t: np.ndarray, r: np.ndarray, sp) -> dict:
    import seg_metrics.seg_metrics as sg

    out = sg.write_metrics(labels=[1], gdth_img=r.astype(np.uint8), pred_img=t.astype(np.uint8), spacing=sp,
                           metrics=["dice", "jaccard", "precision", "recall", "hd", "hd95", "msd"], fully_connected=False)
    return {k: float(v[0]) for k, v in out[0].items() if k != "label"}


# ----------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("case", ["ct_liver_dilated", "ct_aorta_shifted", "mr_tumour_eroded"])
def test_metrics_match_independent_implementations(case, ts_labels, ct, brain):
    if case.startswith("ct"):
        sp = tuple(ct.spacing[::-1])
        r = ts_labels == (5 if "liver" in case else 52)  # TotalSegmentator 5 liver, 52 aorta
    else:
        r, sp = brain
    # crop to the label and pad with background, so that the test runs fast and no mask touches
    # the grid edge (seg-metrics' SimpleITK contour does not count edge voxels as surface; MONAI
    # and we do)
    r = np.pad(r[bounding_box(r)], 6)
    if case == "ct_liver_dilated":
        t = ndimage.binary_dilation(r, iterations=2)
    elif case == "ct_aorta_shifted":
        t = np.roll(r, (1, 4, -3), axis=(0, 1, 2))
    else:
        t = ndimage.binary_erosion(r, iterations=1) | np.roll(r, 3, axis=2)
    m = mask_metrics(t, r, sp)
    # exact against the brute-force MONAI definition
    d = monai_style(t, r, sp)
    assert m["hd95_mm"] == pytest.approx(np.percentile(d, 95), abs=1e-9)
    assert m["hd_mm"] == pytest.approx(d.max(), abs=1e-9)
    assert m["assd_mm"] == pytest.approx(d.mean(), abs=1e-9)
    if case == "ct_liver_dilated":
        return  # seg-metrics needs ~15 s CPU on this large surface (Python lists); the others suffice
    # against seg-metrics: overlap measures exactly; distances within one voxel (it measures to
    # the mask boundary through a Maurer distance map, we to surface-voxel centres)
    s = segmetrics(t, r, sp)
    for ours, theirs in (("dice", "dice"), ("jaccard", "jaccard"), ("precision", "precision"), ("sensitivity", "recall")):
        assert m[ours] == pytest.approx(s[theirs], abs=1e-9), ours
    for ours, theirs in (("hd95_mm", "hd95"), ("hd_mm", "hd"), ("assd_mm", "msd")):
        assert abs(m[ours] - s[theirs]) <= max(sp) + 1e-6, (ours, m[ours], s[theirs])
    vox_ml = np.prod(sp) / 1000
    assert m["volume_test_ml"] == pytest.approx(t.sum() * vox_ml)
    assert m["volume_diff_pct"] == pytest.approx(100 * (t.sum() - r.sum()) / r.sum())


def test_hd95_on_real_mr_labels_does_not_crash(brain):
    """The old ``surface_distances`` read a NumPy view of a freed SimpleITK image (segfault)."""
    r, sp = brain
    t = ndimage.binary_dilation(r, iterations=1)
    values = {hd95(t, r, sp[::-1]) for _ in range(5)}
    assert len(values) == 1
    # and the value is the brute-force one (MONAI's definition) on the cropped, padded masks
    box = bounding_box(t)
    d = monai_style(np.pad(t[box], 2), np.pad(r[box], 2), sp)
    assert values.pop() == pytest.approx(np.percentile(d, 95), abs=1e-9)


def test_signed_distance_sign(ts_labels, ct):
    sp = tuple(ct.spacing[::-1])
    r = ts_labels == 5
    assert mask_metrics(ndimage.binary_dilation(r, iterations=2), r, sp)["mssd_mm"] > 0.5
    assert mask_metrics(ndimage.binary_erosion(r, iterations=2), r, sp)["mssd_mm"] < -0.5


def test_empty_cases(ts_labels, ct):
    sp = tuple(ct.spacing[::-1])
    liver = (ts_labels == 5).astype(np.uint8)
    zero = np.zeros_like(liver)
    pairs = [("liver", 1, 1)]
    both = compare_labels(zero, zero, sp, pairs)[0].as_dict()
    assert both["empty"] == "both"
    for k in ("dice", "jaccard", "hd95_mm", "hd_mm", "assd_mm", "mssd_mm", "sensitivity", "precision", "volume_diff_pct"):
        assert both[k] is None, k
    assert both["worst_slice"] is None
    t_empty = compare_labels(zero, liver, sp, pairs)[0].as_dict()
    assert t_empty["empty"] == "test" and t_empty["dice"] == 0 and t_empty["hd95_mm"] is None
    assert t_empty["sensitivity"] == 0 and t_empty["precision"] is None and t_empty["volume_diff_pct"] == -100
    r_empty = compare_labels(liver, zero, sp, pairs)[0].as_dict()
    assert r_empty["empty"] == "reference" and r_empty["dice"] == 0 and r_empty["assd_mm"] is None
    assert r_empty["precision"] == 0 and r_empty["volume_diff_pct"] is None


def test_lesion_counts_on_real_components(ts_labels):
    ref = np.isin(ts_labels, np.arange(92, 117))  # TotalSegmentator ribs: many separate components
    lab, n = ndimage.label(ref, structure=np.ones((3, 3, 3)))
    assert n >= 4
    sizes = np.bincount(lab.ravel())[1:]
    drop = np.argsort(sizes)[-2:] + 1  # the AI misses the two largest
    test = ref & ~np.isin(lab, drop)
    test[0:2, 10:20, 10:20] = True  # and finds one thing that is not there
    got = lesion_counts(test, ref)
    assert got == {"reference": n, "detected": n - 2, "missed": 2, "test_only": 1}


def test_worst_slice_and_disagreement_map(ts_labels, ct):
    sp = tuple(ct.spacing[::-1])
    ref = np.where(np.isin(ts_labels, [1, 5]), ts_labels, 0).astype(np.uint8)
    test = ref.copy()
    test[12][ref[12] == 5] = 0  # slice 12: the AI misses the whole liver section
    test[3, 400:420, 400:420] = 1  # a spleen false positive
    pairs = [("spleen", 1, 1), ("liver", 5, 5)]
    rows = {r.name: r for r in compare_labels(test, ref, sp, pairs, volume=ct)}
    assert rows["liver"].worst_slice == 12
    assert rows["spleen"].worst_slice == 3
    lps = np.array(rows["spleen"].worst_slice_lps)
    assert np.allclose(lps, ct.index_to_lps([409.5, 409.5, 3]), atol=1e-6)
    d = disagreement_map(test, ref, pairs)
    assert d.dtype == np.uint8 and d.shape == ref.shape
    assert (d == BOTH).sum() == ((test == ref) & (ref > 0)).sum()
    assert (d == REFERENCE_ONLY).sum() == (ref[12] == 5).sum()
    assert (d == TEST_ONLY).sum() == 400 - (ref[3, 400:420, 400:420] == 1).sum()


def test_match_labels_names_synonyms_and_values():
    test = {1: "body", 2: "lungs", 3: "Liver", 4: "spleen", 5: "kidneys", 6: "bone"}
    ref = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left", 10: "lung_upper_lobe_left",
           11: "lung_lower_lobe_left", 12: "Lung"}
    pairs = match_labels(test, ref)
    assert ("liver", 3, 5) in pairs and ("spleen", 4, 1) in pairs
    assert ("kidneys", 5, (2, 3)) in pairs
    assert ("lungs", 2, 12) in pairs  # "Lung" = "lungs" by synonym, before parts
    assert not any(p[0] == "body" for p in pairs)
    assert match_labels({1: "label 1", 2: "label 2"}, {2: "liver", 3: "spleen"}) == [("liver", 2, 2)]
    assert match_labels({1: "tumour"}, {1: "label 1"}) == [("tumour", 1, 1)]
    assert match_labels({7: "Nodule"}, {1: "GTV"}) == [("gtv", 7, 1)]  # one label each side
    assert match_labels({1: "kidney_left", 2: "kidney_right"}, {4: "kidneys"}) == [("kidneys", (1, 2), 4)]


# ----------------------------------------------------------------------------- import
def _write_like(arr, ref_img, path):
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref_img)
    sitk.WriteImage(img, str(path))


def test_labelmap_sidecar_names_and_list(tmp_path, data_dir, ct):
    src = sitk.ReadImage(str(data_dir / TS))
    arr = sitk.GetArrayFromImage(src)
    arr = np.where(np.isin(arr, [1, 5]), arr, 0).astype(np.uint8)
    p = tmp_path / "ref.nii.gz"
    _write_like(arr, src, p)
    assert load_reference(p, ct).names == {1: "label 1", 5: "label 5"}
    (tmp_path / "ref.json").write_text(json.dumps({"1": "spleen", "5": "liver"}))
    got = load_reference(p, ct)
    assert got.names == {1: "spleen", 5: "liver"} and got.kind == "labelmap"
    assert load_reference(p, ct, names="a,b").names == {1: "a", 5: "b"}
    with pytest.raises(LabelImportError, match="2 label value"):
        load_reference(p, ct, names=["only_one"])
    # NIfTI stores the grid in RAS with flipped axes: same voxel centres, so no resampling warning
    assert got.warnings == []
    assert got.array.shape == ct.array.shape and (got.array == 5).sum() == (arr == 5).sum()


def test_labelmap_on_another_grid_is_resampled_with_warning(tmp_path, data_dir, ct, ts_labels):
    src = sitk.ReadImage(str(data_dir / TS))
    coarse = sitk.Resample(src, [256, 256, 20], sitk.Transform(), sitk.sitkNearestNeighbor, src.GetOrigin(),
                           [s * f for s, f in zip(src.GetSpacing(), (2, 2, 1))], src.GetDirection(), 0, src.GetPixelID())
    p = tmp_path / "coarse.nrrd"
    sitk.WriteImage(coarse, str(p))
    got = load_reference(p, ct)
    assert any("nearest neighbour" in w for w in got.warnings)
    a, b = got.array == 5, ts_labels == 5
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95


def test_labelmap_without_overlap_is_refused(tmp_path, data_dir, ct):
    src = sitk.ReadImage(str(data_dir / TS))
    src.SetOrigin([o + 1000 for o in src.GetOrigin()])
    p = tmp_path / "far.mha"
    sitk.WriteImage(src, str(p))
    with pytest.raises(LabelImportError, match="does not overlap"):
        load_reference(p, ct)


def _seg_from(series_folder, labels: dict[int, np.ndarray], fractional: bool = False, for_uid: str | None = None,
              vol: Volume | None = None):
    """A highdicom SEG of masks ``(z, y, x)`` (segment number -> mask or float fraction)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    files = sorted(series_folder.iterdir())
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    vol = vol or open_volume(series_folder)
    order = [int(round(vol.lps_to_index(np.asarray(d.ImagePositionPatient, float))[2])) for d in dss]
    dss = [d for _, d in sorted(zip(order, dss), key=lambda x: x[0])]
    stack = np.stack([labels[n] for n in sorted(labels)], axis=-1)
    descs = [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=name, segmented_property_category=codes.SCT.Organ,
                                       segmented_property_type=codes.SCT.Organ, algorithm_type="MANUAL")
             for i, name in enumerate(["spleen", "liver", "stomach"][: stack.shape[-1]])]
    seg = hd.seg.Segmentation(
        source_images=dss, pixel_array=stack.astype(np.float32 if fractional else np.uint8),
        segmentation_type="FRACTIONAL" if fractional else "BINARY", segment_descriptions=descs,
        series_instance_uid=hd.UID(), series_number=50, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1",
        max_fractional_value=200)
    if for_uid:
        seg.FrameOfReferenceUID = for_uid
    return seg


def test_seg_import_binary_and_fractional(tmp_path, ct_uid_series, ct_uid_vol, ts_labels):
    vol = ct_uid_vol
    masks = {1: ts_labels == 1, 2: ts_labels == 5, 3: ts_labels == 6}
    p = tmp_path / "bin.dcm"
    _seg_from(ct_uid_series, masks, vol=vol).save_as(p)
    got = load_reference(p, vol)
    assert got.kind == "seg" and got.names == {1: "spleen", 2: "liver", 3: "stomach"}
    expect = np.zeros(ts_labels.shape, np.uint16)
    for n, m in masks.items():
        expect[m] = n
    assert np.array_equal(got.array, expect)
    # fractional: a soft border (distance-based fraction) from the real masks; >= 0.5 is inside
    frac = {}
    for n, m in list(masks.items())[:2]:
        inside = ndimage.distance_transform_edt(m)
        outside = ndimage.distance_transform_edt(~m)
        frac[n] = np.clip(0.5 + 0.25 * (inside - outside), 0, 1).astype(np.float32)
    p2 = tmp_path / "frac.dcm"
    _seg_from(ct_uid_series, frac, fractional=True, vol=vol).save_as(p2)
    got2 = load_reference(p2, vol)
    assert any("fractional" in w for w in got2.warnings)
    quantised = {n: np.rint(f * 200) / 200 >= 0.5 for n, f in frac.items()}
    expect2 = np.zeros(ts_labels.shape, np.uint16)
    for n, m in quantised.items():
        expect2[m] = n
    assert np.array_equal(got2.array, expect2)


def test_seg_with_other_frame_of_reference_is_refused(tmp_path, ct_uid_series, ct_uid_vol, ts_labels):
    vol = ct_uid_vol
    p = tmp_path / "other_for.dcm"
    _seg_from(ct_uid_series, {1: ts_labels == 5}, for_uid=generate_uid(), vol=vol).save_as(p)
    with pytest.raises(LabelImportError, match="Frame of Reference UID"):
        load_reference(p, vol)


def _rtstruct(series_folder, mask_zyx: np.ndarray, vol: Volume, name: str, path):
    from rt_utils import RTStructBuilder

    rt = RTStructBuilder.create_new(str(series_folder))
    # rt-utils wants (rows, columns, slices) in its own slice order (ascending along the normal)
    ks = [int(round(vol.lps_to_index(np.asarray(d.ImagePositionPatient, float))[2])) for d in rt.series_data]
    rt.add_roi(mask=np.stack([mask_zyx[k] for k in ks], axis=-1), name=name)
    rt.save(str(path))


def test_rtstruct_import(tmp_path, ct_uid_series, ct_uid_vol, ts_labels):
    vol = ct_uid_vol
    liver = ts_labels == 5
    p = tmp_path / "rt.dcm"
    _rtstruct(ct_uid_series, liver, vol, "Liver", p)
    got = load_reference(p, vol)
    assert got.kind == "rtstruct" and got.names == {1: "Liver"}
    m = got.array == 1
    assert 2 * (m & liver).sum() / (m.sum() + liver.sum()) > 0.97  # contour round trip: polygon approximation
    assert [k for k in range(m.shape[0]) if m[k].any()] == [k for k in range(liver.shape[0]) if liver[k].any()]
    # another Frame of Reference
    ds = pydicom.dcmread(p)
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = generate_uid()
    ds.save_as(tmp_path / "rt_other.dcm")
    with pytest.raises(LabelImportError, match="Frame of Reference UID"):
        load_reference(tmp_path / "rt_other.dcm", vol)


# ----------------------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "radreview.viewer.cli", *map(str, args)], capture_output=True, text=True)


def test_compare_cli_outputs(tmp_path, data_dir, ct_series, ts_labels):
    src = sitk.ReadImage(str(data_dir / TS))
    arr = sitk.GetArrayFromImage(src)
    ref = np.where(np.isin(arr, [1, 5, 6]), arr, 0).astype(np.uint8)
    test = np.zeros_like(ref)
    for v in (1, 5, 6):
        m = ref == v
        test[(ndimage.binary_dilation(m, iterations=2) if v != 6 else ndimage.binary_erosion(m)) & (test == 0)] = v
    _write_like(ref, src, tmp_path / "ref.nii.gz")
    _write_like(test, src, tmp_path / "test.nii.gz")
    (tmp_path / "ref.json").write_text(json.dumps({"1": "spleen", "5": "liver", "6": "stomach"}))
    (tmp_path / "test.json").write_text(json.dumps({"1": "Spleen", "5": "LIVER", "6": "stomach"}))
    out = tmp_path / "out"
    r = _cli("compare", ct_series, "--test", tmp_path / "test.nii.gz", "--reference", tmp_path / "ref.nii.gz", "--out", out)
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "comparison.json").read_text())
    assert set(data) >= {"image", "test", "reference", "seconds", "labels"}
    keys = {"name", "test_value", "reference_value", "dice", "jaccard", "hd95_mm", "hd_mm", "assd_mm", "mssd_mm",
            "volume_test_ml", "volume_reference_ml", "volume_diff_ml", "volume_diff_pct", "sensitivity", "precision",
            "empty", "lesions", "worst_slice"}
    assert [d["name"] for d in data["labels"]] == ["spleen", "liver", "stomach"]
    for d in data["labels"]:
        assert keys <= set(d) and set(d["lesions"]) == {"reference", "detected", "missed", "test_only"}
        assert 0.7 < d["dice"] < 1
    assert data["labels"][1]["mssd_mm"] > 0 and data["labels"][2]["mssd_mm"] < 0
    dimg = sitk.ReadImage(str(out / "disagreement.nii.gz"))
    vol = open_volume(ct_series)
    assert dimg.GetSize() == vol.size and np.allclose(dimg.GetOrigin(), vol.origin)
    assert np.allclose(np.array(dimg.GetDirection()).reshape(3, 3), vol.direction)
    dm = sitk.GetArrayFromImage(dimg)
    assert dm.dtype == np.uint8 and set(np.unique(dm)) == {0, 1, 2, 3}
    t_on, r_on = load_reference(tmp_path / "test.nii.gz", vol).array, load_reference(tmp_path / "ref.nii.gz", vol).array
    assert np.array_equal(dm, disagreement_map(t_on, r_on, [("spleen", 1, 1), ("liver", 5, 5), ("stomach", 6, 6)]))
    html = (out / "report.html").read_text()
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 3 and all(p.name in html for p in pngs) and "HD95" in html
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_compare_cli_errors_leave_nothing(tmp_path, data_dir, ct_series):
    out = tmp_path / "out"
    r = _cli("compare", ct_series, "--test", tmp_path / "missing.nii.gz", "--reference", data_dir / TS, "--out", out)
    assert r.returncode == 2 and r.stderr.startswith("radreview: error:") and len(r.stderr.strip().splitlines()) == 1
    src = sitk.ReadImage(str(data_dir / TS))
    src.SetOrigin([o + 1000 for o in src.GetOrigin()])
    sitk.WriteImage(src, str(tmp_path / "far.nii.gz"))
    r = _cli("compare", ct_series, "--test", data_dir / TS, "--reference", tmp_path / "far.nii.gz", "--out", out)
    assert r.returncode == 2 and "does not overlap" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "far.nii.gz"]
