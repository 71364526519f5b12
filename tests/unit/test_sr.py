"""SR (TID 1500), SEG of accepted segmentations and Grad-CAM Parametric Map: written from a real
review store and the real abdominal CT with its TotalSegmentator labels, checked by dciodvfy
(dicom3tools) and round-tripped through Orthanc."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radreview.review.findings import Finding
from radreview.review.sr import export_accepted_seg, export_parametric_map, export_sr, read_series, study_findings
from radreview.review.store import ReviewStore
from radreview.studies.pacs import PacsNode, StudyQuery, find_series, iter_retrieve, store
from tests.pacs_server import PASSWORD, SCP_AET, USER, abdomen_with_uids, orthanc  # noqa: F401

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_errors(path: Path) -> list[str]:
    # never skipped: without the validator the export would pass unchecked (as in test_seg)
    assert DCIODVFY, "dciodvfy (dicom3tools) is not installed: apt-get install dicom3tools (scripts/setup.sh does)"
    r = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


def findings():
    return [
        Finding("ct-organs-2p5d:liver", "ct-organs-2p5d", "segmentation", "liver", 0.93, 0.8,
                {"volume_ml": 412.3, "voxels": 1000, "center_lps": [60.1, 10.2, -420.0]}),
        Finding("ct-organs-2p5d:spleen", "ct-organs-2p5d", "segmentation", "spleen", 0.61, 0.8,
                {"volume_ml": 98.7, "voxels": 100, "center_lps": [-80.0, 30.0, -415.0]}),
        Finding("ct-organs-2p5d:bone", "ct-organs-2p5d", "segmentation", "bone", 0.66, 0.8, {"volume_ml": 300.0, "voxels": 10}),
        Finding("ct-nodule-2p5d:study", "ct-nodule-2p5d", "classification", "study", 0.71, 0.5, {"probability": 0.83}),
        Finding("ct-nodule-2p5d:candidate-1", "ct-nodule-2p5d", "candidate", "candidate-1", 0.41, 0.5,
                {"probability": 0.46, "center_lps": [-20.5, 10.0, -410.0], "size_mm": 8.5}),
    ]


@pytest.fixture
def reviewed(tmp_path, data_dir):
    """The abdomen CT (with UIDs) and a review store holding its findings and decisions."""
    folder, study, _ = abdomen_with_uids(data_dir, tmp_path / "ct")
    db = tmp_path / "review.sqlite"
    st = ReviewStore(db)
    key = f"study:{study}"
    st.save_findings(key, [f.as_dict() for f in findings()])
    st.record_decision(key, "ct-organs-2p5d:liver", "accept", "Doe^Jane")
    st.record_decision(key, "ct-organs-2p5d:spleen", "edit", "Doe^Jane", "tip of the spleen added")
    st.record_decision(key, "ct-organs-2p5d:bone", "reject", "Doe^Jane", "wrong structure")
    st.record_decision(key, "ct-nodule-2p5d:candidate-1", "reject", "Roe^Rick", "vessel")
    infer = tmp_path / "infer"  # what radreview infer writes: TotalSegmentator's labels stand in for a model's
    infer.mkdir()
    shutil.copy(data_dir / "ct-abdomen-dicom" / "totalsegmentator_labels.nii.gz", infer / "segmentation.nii.gz")
    (infer / "findings.json").write_text(json.dumps({"labels": [{"index": 5, "name": "liver"}, {"index": 1, "name": "spleen"},
                                                                {"index": 2, "name": "bone"}]}))
    return folder, study, db, st, infer


def _walk(items):
    for it in items:
        yield it
        yield from _walk(it.get("ContentSequence", []))


def test_sr_and_seg_export_valid_and_complete(reviewed, tmp_path, data_dir):
    folder, study, db, st, infer = reviewed
    r = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "sr", "export", str(folder), "--db", str(db),
                        "--out", str(tmp_path / "sr.dcm"), "--labels", str(infer), "--seg-out", str(tmp_path / "seg.dcm")],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    assert sorted(labels.values()) == ["liver", "spleen"]  # accepted + edited; the rejected bone is not sent
    assert {str(s.SegmentLabel): str(s.SegmentAlgorithmType) for s in seg.SegmentSequence} == \
        {"liver": "AUTOMATIC", "spleen": "SEMIAUTOMATIC"}
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(infer / "segmentation.nii.gz")))
    liver_no = next(k for k, v in labels.items() if v == "liver")
    vol = seg.get_volume(segment_numbers=[liver_no], combine_segments=False)
    assert int(vol.array.sum()) == int((ref == 5).sum()) > 0  # every liver voxel, none lost in resampling

    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.StudyInstanceUID == study
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    items = list(_walk(sr.ContentSequence))
    ids = [str(i.TextValue) for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"]
    assert sorted(ids) == sorted(f.id for f in findings())
    decisions = [str(i.ConceptCodeSequence[0].CodeMeaning) for i in items
                 if i.ConceptNameCodeSequence[0].CodeValue == "RR-DECISION"]
    assert sorted(decisions) == ["AI finding accepted", "AI finding edited", "AI finding rejected", "AI finding rejected"]
    pnames = {str(i.PersonName) for i in items if i.ValueType == "PNAME"}
    assert {"Doe^Jane", "Roe^Rick"} <= pnames
    vols = sorted(float(i.MeasuredValueSequence[0].NumericValue) for i in items
                  if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeMeaning == "Volume")
    assert vols == [98.7, 300.0, 412.3]
    assert any(i.ValueType == "SCOORD3D" and list(map(float, i.GraphicData)) == [-20.5, 10.0, -410.0] for i in items)
    segrefs = [i for i in items if i.ValueType == "IMAGE" and "ReferencedSegmentNumber" in i.ReferencedSOPSequence[0]]
    assert {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in segrefs} == {str(seg.SOPInstanceUID)}
    algos = {str(i.TextValue) for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Name"}
    assert algos == {"ct-organs-2p5d", "ct-nodule-2p5d"}
    versions = {str(i.TextValue) for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Version"}
    from radreview.inference.package import load_package

    # read from the installed model packages
    assert versions == {load_package(m).meta["version"] for m in ("ct-organs-2p5d", "ct-nodule-2p5d")}


def test_sr_export_errors(reviewed, tmp_path):
    folder, study, db, st, _ = reviewed
    empty = ReviewStore(tmp_path / "empty.sqlite")
    with pytest.raises(ValueError, match="no AI findings stored"):
        export_sr(folder, empty, tmp_path / "x.dcm")
    r = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "sr", "export", str(tmp_path / "nowhere"), "--db", str(db),
                        "--out", str(tmp_path / "x.dcm")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("radreview: error:") and "nowhere" in r.stderr


def test_parametric_map_of_heatmap(reviewed, tmp_path):
    folder, *_ = reviewed
    images = read_series(folder)
    z, y, x = np.mgrid[0:len(images), 0:int(images[0].Rows), 0:int(images[0].Columns)]
    heat = np.exp(-(((z - 10) / 4.0) ** 2 + ((y - 300) / 40.0) ** 2 + ((x - 200) / 40.0) ** 2)).astype(np.float32)
    out = export_parametric_map(images, heat, tmp_path / "pm.dcm", "ct-nodule-2p5d", "candidate-1")
    assert dciodvfy_errors(out) == []
    pm = pydicom.dcmread(out)
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    back = pm.pixel_array.reshape(heat.shape)
    slice_of = {tuple(round(float(v), 3) for v in d.ImagePositionPatient): k for k, d in enumerate(images)}
    frames = pm.PerFrameFunctionalGroupsSequence
    order = [slice_of[tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient)] for f in frames]
    assert sorted(order) == list(range(len(images)))  # one frame on each slice
    assert np.allclose(back, heat[order], atol=1e-6)  # and each frame holds that slice's values
    with pytest.raises(ValueError, match="0..1"):
        export_parametric_map(images, heat * 2, tmp_path / "bad.dcm", "m")


def test_sr_seg_roundtrip_through_orthanc(orthanc, tmp_path):
    srv, info = orthanc
    folder = info["abdomen_dir"]
    study = info["abdomen"][0]
    st = ReviewStore(tmp_path / "r.sqlite")
    key = f"study:{study}"
    st.save_findings(key, [f.as_dict() for f in findings()[:2]])
    st.record_decision(key, "ct-organs-2p5d:liver", "accept", "Doe^Jane")
    images = read_series(folder)
    lab = np.zeros((len(images), int(images[0].Rows), int(images[0].Columns)), np.uint8)
    lab[4:9, 200:260, 150:230] = 1
    seg_path = export_accepted_seg(images, lab, {1: "liver"}, study_findings(st, study), tmp_path / "seg.dcm")
    sr_path = export_sr(folder, st, tmp_path / "sr.dcm", seg_path=seg_path)
    dimse = PacsNode("orthanc", "dimse", ae_title=srv.aet, host="127.0.0.1", port=srv.dicom_port, calling_ae=SCP_AET, timeout=5)
    web = PacsNode("orthanc-web", "dicomweb", url=srv.dicomweb_url, auth="basic", username=USER, password=PASSWORD, timeout=5)
    assert len(store(dimse, [seg_path])) == 1  # C-STORE
    assert len(store(web, [sr_path])) == 1     # STOW-RS
    series = {s.modality: s for s in find_series(dimse, study)}
    assert {"CT", "SEG", "SR"} <= set(series)
    for mod, path, node in (("SEG", seg_path, dimse), ("SR", sr_path, web)):
        prog = list(iter_retrieve(node, study, series[mod].series_instance_uid, tmp_path / mod))
        assert len(prog) == 1
        back, orig = pydicom.dcmread(prog[0].path), pydicom.dcmread(path)
        assert back == orig  # every element, pixel data included
    assert len(find_series(web, study)) == len(series)
    assert [s.study_instance_uid for s in __import__("radreview.studies.pacs", fromlist=["find_studies"]).find_studies(
        web, StudyQuery(study_uid=study))][0] == study
