"""De-identification (PS3.15 Annex E Basic Profile) on a real CT series (ct-chest-tumor, 30 slices),
with every attribute of the profile's table planted in one slice."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from radreview.studies.deid import PROFILE_TABLE, DeidOptions, Deidentifier, deidentify_files

SKIP_GROUPS = {0x0000, 0x0002, 0x0004, 0xFFFA, 0xFFFC}


def _value(tag: int, vr: str):
    hx = f"{tag:08X}"
    return {"PN": f"PHI^T{hx}", "LO": f"PHI{hx}", "SH": f"PHI{hx}", "LT": f"PHI{hx}", "ST": f"PHI{hx}", "UT": f"PHI{hx}",
            "UC": f"PHI{hx}", "CS": f"PHI{hx}", "DA": "20200315", "TM": "101010", "DT": "20200315101010",
            "UI": f"1.2.3.999.{tag}", "IS": "7", "DS": "1.5", "AS": "042Y", "US": 7, "UL": 7, "SS": 7, "SL": 7,
            "FL": 7.0, "FD": 7.0, "OB": b"PHIPHI", "OW": b"PHIPHI", "UN": b"PHIPHI", "UR": "http://phi.invalid/x"}.get(vr)


def plant(ds: Dataset) -> dict[int, object]:
    """Give every table attribute ``ds`` lacks a recognisable value; returns all table attributes' originals."""
    planted = {}
    for tag in PROFILE_TABLE:
        if tag >> 16 in SKIP_GROUPS:
            continue
        if tag in ds:  # keep the real value (Study/Series/SOP UIDs, names, dates...): it must go too
            planted[tag] = ds[tag].value
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr == "SQ":
            item = Dataset()
            item.PersonName = "PHI^SEQ"
            item.ReferencedSOPInstanceUID = "1.2.3.999.77"
            ds.add_new(tag, "SQ", Sequence([item]))
            planted[tag] = "SQ"
            continue
        val = _value(tag, vr)
        if val is None:
            continue
        ds.add_new(tag, vr, val)
        planted[tag] = ds[tag].value
    ds.add_new(0x00090010, "LO", "PHI PRIVATE CREATOR")
    ds.add_new(0x00091001, "LO", "PHI private value")
    ds.add_new(0x50000010, "US", 3)      # curve group
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)  # overlay data
    return planted


@pytest.fixture(scope="module")
def chest(data_dir, tmp_path_factory):
    src = sorted((data_dir / "ct-chest-tumor" / "series_B40f").iterdir())
    folder = tmp_path_factory.mktemp("phi")
    dss = [pydicom.dcmread(f) for f in src]
    first = dss[0]
    planted = plant(first)
    first.BurnedInAnnotation = "YES"
    # a second file references the first (Source Image Sequence): the reference must follow the remap
    ref = Dataset()
    ref.ReferencedSOPClassUID = first.SOPClassUID
    ref.ReferencedSOPInstanceUID = dss[1].SOPInstanceUID
    dss[2].SourceImageSequence = Sequence([ref])
    for i, ds in enumerate(dss):
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    (folder / "notes.txt").write_text("not DICOM")
    return folder, dss, planted


def test_no_profile_attribute_survives(chest, tmp_path):
    folder, dss, planted = chest
    rep = deidentify_files(folder, tmp_path / "out", DeidOptions(key="k1"))
    assert len(rep.written) == 30 and rep.skipped[0][0].endswith("notes.txt") and rep.studies == 1
    assert any("000.dcm" in w and "Burned In Annotation (0028,0301) is YES" in w for w in rep.warnings)
    d = Deidentifier(DeidOptions(key="k1"))
    new_first = d.uid(str(dss[0].SOPInstanceUID))
    out_first = next(p for p in rep.written if p.stem == new_first)
    raw = out_first.read_bytes()
    assert b"PHI" not in raw  # no planted text anywhere: top level, sequences, private, file meta
    out = pydicom.dcmread(out_first)
    checked = 0
    for tag, orig in planted.items():
        action = PROFILE_TABLE[tag]
        vr = dictionary_VR(tag)
        if vr in ("DA", "DT", "TM") and tag not in (0x00100030, 0x00100032):
            continue  # kept or shifted by the Retain Longitudinal Temporal Information option (tested below)
        checked += 1
        if tag in (0x00100010, 0x00100020):
            assert str(out[tag].value).startswith("ANON-")
        elif action == "X" or tag not in out:
            assert tag not in out, f"{tag:08X} ({action}) survived"
        elif vr == "SQ":
            assert all("PersonName" not in it or it.PersonName != "PHI^SEQ" for it in out[tag].value)
        elif action == "U":
            assert out[tag].value != orig, f"{tag:08X} UID not replaced"
        elif action in ("Z", "X/Z"):
            assert out[tag].value in (None, "", b""), f"{tag:08X} not emptied"
        else:
            assert out[tag].value != orig, f"{tag:08X} ({action}) kept its value"
    assert checked > 350
    assert not [e for e in out if e.tag.is_private] and 0x50000010 not in out and 0x60003000 not in out
    assert out.PatientIdentityRemoved == "YES" and out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == new_first


def test_uids_consistent_and_dates_shifted(chest, tmp_path):
    folder, dss, _ = chest
    rep = deidentify_files(folder, tmp_path / "out", DeidOptions(key="k2", date_shift_days=-1000))
    outs = [pydicom.dcmread(p) for p in rep.written]
    assert len({str(o.StudyInstanceUID) for o in outs}) == 1 and len({str(o.SeriesInstanceUID) for o in outs}) == 1
    assert len({str(o.FrameOfReferenceUID) for o in outs}) == 1
    orig_uids = {str(ds.SOPInstanceUID) for ds in dss} | {str(dss[0].StudyInstanceUID), str(dss[0].SeriesInstanceUID)}
    assert not orig_uids & ({str(o.SOPInstanceUID) for o in outs} | {str(outs[0].StudyInstanceUID)})
    d = Deidentifier(DeidOptions(key="k2"))
    by_sop = {str(o.SOPInstanceUID): o for o in outs}
    third = by_sop[d.uid(str(dss[2].SOPInstanceUID))]
    assert third.SourceImageSequence[0].ReferencedSOPInstanceUID == d.uid(str(dss[1].SOPInstanceUID))
    assert third.SourceImageSequence[0].ReferencedSOPInstanceUID in by_sop  # the reference still resolves
    assert third.SourceImageSequence[0].ReferencedSOPClassUID == dss[0].SOPClassUID  # registered UID kept
    want = (date(2007, 4, 25) + timedelta(days=-1000)).strftime("%Y%m%d")
    assert dss[2].StudyDate == "20070425" and third.StudyDate == want and third.StudyTime == dss[2].StudyTime
    assert len({o.PatientID for o in outs}) == 1 and outs[0].PatientID != dss[0].PatientID
    assert all(o.pixel_array.tobytes() == dss[i].pixel_array.tobytes()
               for i, o in enumerate(sorted(outs, key=lambda o: int(o.InstanceNumber)))
               if int(dss[i].InstanceNumber) == int(o.InstanceNumber))


def test_cli_keep_dates(chest, tmp_path):
    folder, dss, _ = chest
    r = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "deid", str(folder), "--out", str(tmp_path / "o"),
                        "--keep-dates", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["files"] == 30 and "Burned In Annotation" in r.stderr
    o = pydicom.dcmread(next(Path(tmp_path / "o").rglob("*.dcm")))
    assert o.StudyDate == "20070425" and o.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert o.DeidentificationMethodCodeSequence[1].CodeValue == "113106" and o.PatientBirthDate in ("", None)
    r = subprocess.run([sys.executable, "-m", "radreview.viewer.cli", "deid", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "o2")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("radreview: error:") and "missing" in r.stderr
