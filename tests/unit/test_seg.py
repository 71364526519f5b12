"""DICOM SEG export (highdicom) checked by dciodvfy (dicom3tools), and the import round trip,
through ``radreview seg export`` / ``radreview seg import`` on real TotalSegmentator labels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radreview.studies import open_volume
from radreview.studies.labels import load_reference
from radreview.studies.seg import SegExportError, export_seg, model_card_codes

from ..conftest import with_fresh_uids, write_series

TS = "ct-abdomen-dicom/totalsegmentator_labels.nii.gz"
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def series(tmp_path_factory, ct_datasets):
    """The sample CT with fresh Study/Series/SOP Instance UIDs (the shared copy has them blank)."""
    dss = with_fresh_uids(ct_datasets)
    folder = tmp_path_factory.mktemp("seg") / "series"
    write_series(folder, dss)
    return folder


@pytest.fixture(scope="module")
def labelmap(tmp_path_factory, data_dir):
    """Real labels (TotalSegmentator spleen 1, liver 5, stomach 6; renumbered to the model card's
    liver 3 / spleen 4 plus stomach 7) as NIfTI with a sidecar JSON."""
    src = sitk.ReadImage(str(data_dir / TS))
    a = sitk.GetArrayFromImage(src)
    out = np.zeros(a.shape, np.uint8)
    out[a == 5], out[a == 1], out[a == 6] = 3, 4, 7
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(src)
    folder = tmp_path_factory.mktemp("lab")
    p = folder / "ai.nii.gz"
    sitk.WriteImage(img, str(p))
    (folder / "ai.json").write_text(json.dumps({"3": "liver", "4": "spleen", "7": "stomach"}))
    return p


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "radreview.viewer.cli", *map(str, args)], capture_output=True, text=True)


def test_model_card_codes_are_snomed():
    codes = model_card_codes()
    assert codes["liver"][1] == ("SCT", "10200004", "Liver")
    assert codes["spleen"][1][1] == "78961009"


def test_seg_export_passes_dciodvfy_and_round_trips(tmp_path, series, labelmap):
    assert DCIODVFY, "dciodvfy (dicom3tools) is not installed: see scripts/setup.sh"
    out = tmp_path / "ai_seg.dcm"
    r = _cli("seg", "export", series, labelmap, "--out", out)
    assert r.returncode == 0, r.stderr
    v = subprocess.run([DCIODVFY, str(out)], capture_output=True, text=True)
    errors = [ln for ln in (v.stdout + v.stderr).splitlines() if ln.startswith("Error")]
    assert errors == [], errors[:10]
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    src = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    segs = {s.SegmentLabel: s for s in ds.SegmentSequence}
    assert set(segs) == {"liver", "spleen", "stomach"}
    assert segs["liver"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert segs["liver"].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segs["stomach"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # not in a card: Tissue
    # import without the study: the SEG's own frames give the grid; identical labels and names
    back = tmp_path / "labels.nii.gz"
    r = _cli("seg", "import", out, "--out", back)
    assert r.returncode == 0, r.stderr
    vol = open_volume(series)
    expect = load_reference(labelmap, vol).array
    got_img = sitk.ReadImage(str(back))
    assert got_img.GetSize() == vol.size and np.allclose(got_img.GetOrigin(), vol.origin)
    assert np.array_equal(sitk.GetArrayFromImage(got_img), expect)
    assert json.loads((tmp_path / "labels.json").read_text()) == {"3": "liver", "4": "spleen", "7": "stomach"}


def test_seg_export_errors(tmp_path, series, ct_series):
    vol = open_volume(series)
    with pytest.raises(SegExportError, match="empty"):
        export_seg(vol, np.zeros(vol.array.shape, np.uint8), None, tmp_path / "x.dcm")
    with pytest.raises(SegExportError, match="differs"):
        export_seg(vol, np.ones((3, 4, 5), np.uint8), None, tmp_path / "x.dcm")
    lab = np.zeros(vol.array.shape, np.uint8)
    lab[5, 100:120, 100:120] = 1
    with pytest.raises(SegExportError, match="name"):
        export_seg(vol, lab, ["a", "b"], tmp_path / "x.dcm")
    # the shared sample has blank Series/SOP Instance UIDs: a SEG could not reference it
    with pytest.raises(SegExportError, match="source image has no StudyInstanceUID, so a SEG cannot reference it"):
        export_seg(ct_series, lab, None, tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())
    r = _cli("seg", "export", ct_series, tmp_path / "missing.nii.gz", "--out", tmp_path / "y.dcm")
    assert r.returncode == 2 and r.stderr.startswith("radreview: error:") and len(r.stderr.strip().splitlines()) == 1
