"""The GUI-free viewer model: plane mapping, W/L, linked cursor, CLI contract."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from radreview.studies import Volume, load_image_file, open_volume
from radreview.studies.volume import StudyInfo
from radreview.viewer.model import PLANES, ViewerModel, apply_window, auto_window, orientation_label, plane_mapping, window_presets


def synthetic(direction=np.eye(3), shape=(5, 6, 7), spacing=(0.5, 0.7, 2.0)):
    arr = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    return Volume(arr, spacing=spacing, origin=(10.0, 20.0, 30.0), direction=direction, info=StudyInfo(modality="CT"))


def test_window_formula_matches_dicom_linear_voi():
    # PS3.3 C.11.2.1.2.1 with c=40, w=400: x <= c-0.5-(w-1)/2 -> 0, x > c-0.5+(w-1)/2 -> 255
    x = np.array([-200, -160.0, -159.0, 40.0, 239.0, 240.0, 1000.0])
    y = apply_window(x, 40, 400)
    assert y[0] == 0 and y[1] == 0
    assert y[-1] == 255 and y[-2] == 255
    assert 126 <= y[3] <= 128
    assert np.all(np.diff(y.astype(int)) >= 0)


def test_presets_cover_issue_list():
    p = window_presets()
    for name in ("brain", "subdural", "stroke", "lung", "mediastinum", "abdomen", "liver", "bone"):
        assert name in p and p[name][1] > 0
    assert p["lung"][0] < 0 < p["bone"][0]


def test_orientation_letters():
    assert orientation_label([1, 0, 0]) == "L"
    assert orientation_label([-1, 0, 0]) == "R"
    assert orientation_label([0, -1, 0]) == "A"
    assert orientation_label([0.8, 0.6, 0]) == "LP"


@pytest.mark.parametrize("plane", PLANES)
def test_screen_index_round_trip_identity(plane):
    vol = synthetic()
    m = plane_mapping(vol, plane)
    for ijk in ([0, 0, 0], [6, 5, 4], [3, 2, 1]):
        k, r, c = m.index_to_screen(np.array(ijk, float))
        assert np.allclose(m.screen_to_index(k, r, c), ijk)
    # extracted pixel equals the voxel it claims to show
    sl = m.extract(vol.array, 2)
    assert sl.shape == m.shape
    for r in range(sl.shape[0]):
        for c in range(sl.shape[1]):
            i, j, k = m.screen_to_index(2, r, c).astype(int)
            assert sl[r, c] == vol.array[k, j, i]


def test_radiological_convention_on_ras_nifti(data_dir):
    """The NIfTI CT is stored RAS (direction diag(-1,-1,1)); screen must still be radiological."""
    vol = load_image_file(data_dir / "ct-abdomen-nifti/ct.nii.gz")
    ax = plane_mapping(vol, "axial")
    assert ax.edge_letters == ("R", "L", "A", "P")
    assert ax.col_flip and ax.row_flip  # i runs right->left, j anterior<-posterior in this file
    model = ViewerModel(vol)
    # moving right on screen moves towards patient Left (+x in LPS)
    a = model.screen_to_lps("axial", 10, 10)
    b = model.screen_to_lps("axial", 10, 50)
    assert b[0] > a[0]
    cor = plane_mapping(vol, "coronal")
    assert cor.edge_letters == ("R", "L", "S", "I")
    sag = plane_mapping(vol, "sagittal")
    assert sag.edge_letters == ("A", "P", "S", "I")


def test_oblique_direction_letters():
    t = np.radians(30)
    d = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    m = plane_mapping(synthetic(direction=d), "axial")
    assert m.edge_letters[1] == "LP"


def test_linked_cursor_and_scroll(ct_series):
    vol = open_volume(ct_series)
    model = ViewerModel(vol)
    seen = []
    model.cursor_changed.connect(lambda lps: seen.append(np.array(lps)))
    target = vol.index_to_lps([100, 200, 5])
    model.set_cursor(target)
    assert model.slice_index("axial") == 5
    assert model.slice_index("coronal") == 200
    assert model.slice_index("sagittal") == 100
    r, c = model.cursor_on_screen("axial")
    assert (r, c) == pytest.approx((200, 100))
    model.scroll("axial", 3)
    assert model.slice_index("axial") == 8
    model.scroll("axial", 100)
    assert model.slice_index("axial") == 19  # clamped
    assert len(seen) == 3
    # outside points are clamped into the volume
    model.set_cursor([1e4, 1e4, 1e4])
    assert model.slice_index("axial") == 19


def test_readout_and_default_window(ct_series):
    vol = open_volume(ct_series)
    model = ViewerModel(vol)
    assert model.preset == "header" and model.window == (40.0, 300.0)
    lps = vol.index_to_lps([256, 256, 10])
    text = model.readout(lps)
    x, y, z = lps
    assert text == f"{int(vol.array[10, 256, 256])} HU   LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm"
    assert model.readout(vol.index_to_lps([-5, 0, 0])).startswith("outside ")
    model.apply_preset("bone")
    assert model.window == window_presets()["bone"]
    with pytest.raises(KeyError, match="unknown W/L preset"):
        model.apply_preset("nonsense")


def test_mr_gets_percentile_window(data_dir):
    vol = load_image_file(data_dir / "mr-brain-label/brain1_image.nrrd")
    model = ViewerModel(vol)
    assert model.preset == "auto"
    c, w = model.window
    lo, hi = np.percentile(vol.array[vol.array > vol.array.min()], [1, 99])
    assert c == pytest.approx((lo + hi) / 2, rel=0.1)
    assert w == pytest.approx(hi - lo, rel=0.1)
    assert tuple(auto_window(vol)) == pytest.approx((c, w))


# ----------------------------------------------------------------------------- CLI contract
def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "radreview.viewer.cli", *args], capture_output=True, text=True, env=env)


def test_cli_info_json(ct_series):
    import SimpleITK as sitk

    p = run_cli("info", str(ct_series), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert set(data) == {"series", "skipped"}
    (s,) = data["series"]
    for key in ("study_instance_uid", "series_instance_uid", "modality", "description", "sop_class", "files",
                "size", "spacing", "origin", "direction", "warnings"):
        assert key in s
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(ct_series)))
    img = r.Execute()
    assert s["size"] == list(img.GetSize())
    assert s["spacing"] == pytest.approx(list(img.GetSpacing()), abs=1e-3)
    assert s["origin"] == pytest.approx(list(img.GetOrigin()), abs=1e-3)
    assert s["direction"] == pytest.approx(list(img.GetDirection()), abs=1e-6)
    assert s["files"] == 20 and s["modality"] == "CT"


def test_cli_info_lists_skipped(tmp_path, ct_series):
    import shutil

    for f in list(ct_series.iterdir())[:3]:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 300)
    p = run_cli("info", str(tmp_path), "--json")
    data = json.loads(p.stdout)
    assert data["skipped"] == [{"path": str(tmp_path / "junk.bin"), "reason": data["skipped"][0]["reason"]}]
    assert "not a DICOM file" in data["skipped"][0]["reason"]


def test_cli_errors_are_one_line(tmp_path):
    p = run_cli("info", str(tmp_path / "missing"))
    assert p.returncode != 0
    assert p.stderr.strip().count("\n") == 0 and "no such file" in p.stderr
    (tmp_path / "empty").mkdir()
    p = run_cli("info", str(tmp_path / "empty"), "--json")
    assert p.returncode == 2 and json.loads(p.stdout) == {"series": [], "skipped": []}
    assert p.stderr.strip().count("\n") == 0 and "no DICOM series found" in p.stderr


def test_sample_data_from_mirror_and_refusal(tmp_path, data_dir, monkeypatch):
    from radreview.studies import sample

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RADREVIEW_DATA_MIRROR", str(data_dir))
    assert sample.sample_ct_path(allow_download=False) == data_dir / "ct-abdomen-dicom/series"
    monkeypatch.setenv("RADREVIEW_DATA_MIRROR", str(tmp_path / "nowhere"))
    with pytest.raises(sample.SampleDataError, match="RADREVIEW_DATA_MIRROR"):
        sample.sample_ct_path(allow_download=False)
    # a corrupted mirror copy is not accepted
    bad = tmp_path / "badmirror" / "ct-abdomen-dicom" / "series"
    bad.mkdir(parents=True)
    for name, _ in sample.MANIFEST:
        (bad / name).write_bytes(b"x")
    monkeypatch.setenv("RADREVIEW_DATA_MIRROR", str(tmp_path / "badmirror"))
    with pytest.raises(sample.SampleDataError):
        sample.sample_ct_path(allow_download=False)
