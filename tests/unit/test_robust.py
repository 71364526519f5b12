"""A scan never dies on one bad file: >= 1000 mutants of real CT slices, hostile containers,
and the regressions a hostile test found (each kept here).

Every mutant is built from the sample CT (``../shared/data/ct-abdomen-dicom``), cropped to
64x64 so a thousand of them stay small. The fuzz run happens in a child process under a 2 GiB
address-space limit (``RLIMIT_AS``) and must exit 0 with no traceback, with every file either in
a series or in ``skipped`` with a reason.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from radreview.studies import LoadError, open_volume, scan
from radreview.studies.discovery import check_orientation, check_position, check_spacing, HeaderProblem

CLI = [sys.executable, "-m", "radreview.viewer.cli"]
AS_LIMIT = 2 << 30  # 2 GiB address space for the fuzz run


# ----------------------------------------------------------------------------- building blocks
@pytest.fixture(scope="module")
def small_slices(data_dir):
    """Four real CT slices (sample CT, decoded, cropped to the central 64x64), fresh UIDs."""
    folder = data_dir / "ct-abdomen-dicom" / "series"
    out = []
    series = generate_uid()
    for f in sorted(folder.iterdir())[8:12]:
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array[224:288, 224:288].copy()
        ds.decompress()
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = arr.tobytes()
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.append(ds)
    return out


def _save(ds, path: Path, new_uids: bool = True) -> Path:
    ds = copy.deepcopy(ds)
    if new_uids:
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def _find_tag(data: bytes, group: int, elem: int) -> int:
    """Byte offset of an explicit-VR little-endian element's tag (first occurrence after 132)."""
    return data.index(struct.pack("<HH", group, elem), 132)


# Attribute mutations: (name, function(ds) -> None). Each produces a file the scan must survive.
def _set(keyword, value):
    def f(ds):
        setattr(ds, keyword, value)
    return f


def _delete(keyword):
    def f(ds):
        if keyword in ds:
            delattr(ds, keyword)
    return f


def _raw(keyword, vr, value):
    def f(ds):
        tag = pydicom.datadict.tag_for_keyword(keyword)
        ds[tag] = pydicom.DataElement(tag, vr, value)
    return f


ATTRIBUTE_MUTATIONS = [
    ("ipp_2_values", _raw("ImagePositionPatient", "DS", ["1.0", "2.0"])),
    ("ipp_4_values", _raw("ImagePositionPatient", "DS", ["1", "2", "3", "4"])),
    ("ipp_nan", _raw("ImagePositionPatient", "DS", ["NaN", "0", "0"])),
    ("ipp_inf", _raw("ImagePositionPatient", "DS", ["0", "Inf", "0"])),
    ("ipp_text", _raw("ImagePositionPatient", "LO", "left-ish")),
    ("ipp_empty", _raw("ImagePositionPatient", "DS", "")),
    ("iop_3_values", _raw("ImageOrientationPatient", "DS", ["1", "0", "0"])),
    ("iop_nan", _raw("ImageOrientationPatient", "DS", ["1", "0", "0", "0", "NaN", "0"])),
    ("iop_zero", _raw("ImageOrientationPatient", "DS", ["0"] * 6)),
    ("iop_not_unit", _raw("ImageOrientationPatient", "DS", ["2", "0", "0", "0", "1", "0"])),
    ("iop_not_orthogonal", _raw("ImageOrientationPatient", "DS", ["1", "0", "0", "0.7071", "0.7071", "0"])),
    ("iop_parallel", _raw("ImageOrientationPatient", "DS", ["1", "0", "0", "1", "0", "0"])),
    ("spacing_zero", _raw("PixelSpacing", "DS", ["0", "0.5"])),
    ("spacing_negative", _raw("PixelSpacing", "DS", ["-0.7", "0.7"])),
    ("spacing_nan", _raw("PixelSpacing", "DS", ["NaN", "0.7"])),
    ("spacing_inf", _raw("PixelSpacing", "DS", ["Inf", "Inf"])),
    ("spacing_1_value", _raw("PixelSpacing", "DS", ["0.7"])),
    ("rows_60000", _set("Rows", 60000)),
    ("cols_60000", _set("Columns", 60000)),
    ("rows_cols_60000", lambda ds: (setattr(ds, "Rows", 60000), setattr(ds, "Columns", 60000))),
    ("rows_1", _set("Rows", 1)),
    ("rows_0", _set("Rows", 0)),
    ("frames_3e6", _raw("NumberOfFrames", "IS", "3000000")),
    ("frames_negative", _raw("NumberOfFrames", "IS", "-5")),
    ("frames_text", _raw("NumberOfFrames", "LO", "many")),
    ("bits_12", _set("BitsAllocated", 12)),
    ("bits_64", _set("BitsAllocated", 64)),
    ("bits_stored_over", _set("BitsStored", 31)),
    ("samples_3", _set("SamplesPerPixel", 3)),
    ("slope_nan", _raw("RescaleSlope", "DS", "NaN")),
    ("intercept_inf", _raw("RescaleIntercept", "DS", "Inf")),
    ("thickness_nan", _raw("SliceThickness", "DS", "NaN")),
    ("window_nan", _raw("WindowCenter", "DS", "NaN")),
    ("instance_text", _raw("InstanceNumber", "LO", "seven")),
    ("no_rows", _delete("Rows")),
    ("no_columns", _delete("Columns")),
    ("no_pixel_data", _delete("PixelData")),
    ("no_sop_instance", _delete("SOPInstanceUID")),
    ("no_sop_class", _delete("SOPClassUID")),
    ("no_ipp", _delete("ImagePositionPatient")),
    ("no_iop", _delete("ImageOrientationPatient")),
    ("no_spacing", _delete("PixelSpacing")),
    ("no_bits", _delete("BitsAllocated")),
    ("no_study_series", lambda ds: (_delete("StudyInstanceUID")(ds), _delete("SeriesInstanceUID")(ds))),
    ("pixel_data_short", lambda ds: setattr(ds, "PixelData", ds.PixelData[:1000])),
    ("perframe_garbage", _raw("PerFrameFunctionalGroupsSequence", "SQ", [])),
]


def _byte_mutants(good: bytes, rng, n: int, start: int = 0):
    """(name, bytes) mutants of one encoded file: header byte flips, cuts, VR and length lies."""
    pixel_tag = good.rindex(struct.pack("<HH", 0x7FE0, 0x0010))
    out = []
    for i in range(start, start + n):
        kind = i % 8
        b = bytearray(good)
        if kind in (0, 1, 2):  # flip 1-4 random bytes of the header
            for _ in range(int(rng.integers(1, 5))):
                j = int(rng.integers(128, pixel_tag + 12))
                b[j] ^= 1 << int(rng.integers(0, 8))
            out.append((f"flip{i}", bytes(b)))
        elif kind == 3:  # single-bit VR corruption of a random element
            j = int(rng.integers(132, pixel_tag))
            # walk to something that looks like a VR (two upper-case letters)
            while j < pixel_tag and not (65 <= b[j] <= 90 and 65 <= b[j + 1] <= 90):
                j += 1
            b[j] ^= 1 << int(rng.integers(0, 6))
            out.append((f"vrbit{i}", bytes(b)))
        elif kind == 4:  # cut anywhere
            out.append((f"cut{i}", bytes(b[: int(rng.integers(0, len(b)))])))
        elif kind == 5:  # huge declared length for Pixel Data or a 2-byte-length element
            if i % 16 < 8:
                b[pixel_tag + 8 : pixel_tag + 12] = struct.pack("<I", int(rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 1 << 30])))
            else:
                t = _find_tag(good, 0x0028, 0x0030)  # Pixel Spacing, DS: 2-byte length
                b[t + 6 : t + 8] = struct.pack("<H", 0xFFFF)
            out.append((f"len{i}", bytes(b)))
        elif kind == 6:  # wrong VR on a geometry element
            tag = [(0x0020, 0x0032), (0x0020, 0x0037), (0x0028, 0x0030), (0x0028, 0x0010)][i % 4]
            t = _find_tag(good, *tag)
            b[t + 4 : t + 6] = [b"SQ", b"US", b"UN", b"FD", b"AT"][int(rng.integers(0, 5))]
            out.append((f"vr{i}", bytes(b)))
        else:  # no preamble / no DICM / garbage prefix
            variant = i % 3
            if variant == 0:
                out.append((f"nopre{i}", bytes(b[128:])))
            elif variant == 1:
                out.append((f"nodicm{i}", bytes(b[132:])))
            else:
                out.append((f"zeros{i}", bytes(128) + b"DICM" + bytes(int(rng.integers(0, 400)))))
    return out


def make_mutants(folder: Path, slices, n_bytes: int = 900) -> list[Path]:
    """Write the attribute mutants (each on each base slice) and ``n_bytes`` byte mutants."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values we write on purpose
        return _make_mutants(folder, slices, n_bytes)


def _make_mutants(folder: Path, slices, n_bytes: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(20261201)
    for k, base in enumerate(slices):
        for name, mutate in ATTRIBUTE_MUTATIONS:
            ds = copy.deepcopy(base)
            mutate(ds)
            paths.append(_save(ds, folder / f"a{k}_{name}.dcm"))
    per = n_bytes // len(slices) + 1
    tmp = folder / "_base.dcm"
    for k, base in enumerate(slices):
        for i in range(per):
            _save(base, tmp)  # fresh UIDs: no mutant is skipped merely as a duplicate
            ((name, data),) = _byte_mutants(tmp.read_bytes(), rng, 1, i)
            p = folder / f"b{k}_{name}.dcm"
            p.write_bytes(data)
            paths.append(p)
    tmp.unlink()
    # the unmodified slices: one 4-slice series that must load
    for k, base in enumerate(slices):
        paths.append(_save(base, folder / f"good{k}.dcm", new_uids=False))
    return paths


FUZZ_CHILD = textwrap.dedent(r"""
    import io, json, resource, sys, contextlib, traceback
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    from radreview.studies import LoadError, load_series, scan
    from radreview.viewer.cli import main
    folder = sys.argv[1]
    result = scan(folder)
    accounted = set()
    for s in result.series:
        accounted.update(s.files)
    reasons = {}
    for sk in result.skipped:
        accounted.add(sk.path.split(" [frame ")[0])
        assert sk.reason, sk
        reasons[sk.path] = sk.reason
    loaded = refused = 0
    for entry in result.volumes[:12]:
        try:
            v = load_series(entry)
            assert v.array.ndim == 3 and min(v.spacing) > 0
            loaded += 1
        except LoadError as exc:
            assert str(exc)
            refused += 1
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["info", "--json", folder])
    data = json.loads(buf.getvalue(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    print(json.dumps({"rc": rc, "series": len(result.series), "volumes": len(result.volumes),
                      "skipped": len(result.skipped), "loaded": loaded, "refused": refused,
                      "accounted": sorted(accounted), "info_series": len(data["series"]),
                      "reasons": sorted(set(r.split(":")[0][:50] for r in reasons.values())),
                      "unusable": sorted(set(r[:90] for r in reasons.values() if r.startswith("unusable")))[:12]}))
""").replace("AS_LIMIT", str(AS_LIMIT))


# ----------------------------------------------------------------------------- the fuzz run
def test_fuzz_thousand_mutants_never_kill_the_scan(tmp_path, small_slices, capsys):
    folder = tmp_path / "mutants"
    paths = make_mutants(folder, small_slices)
    assert len(paths) >= 1000
    (tmp_path / "tmp").mkdir()
    outside_before = set(os.listdir(tmp_path))
    t0 = time.monotonic()
    env = {**os.environ, "RADREVIEW_NO_PROCESS_POOL": "1", "TMPDIR": str(tmp_path / "tmp")}
    p = subprocess.run([sys.executable, "-c", FUZZ_CHILD, str(folder)], capture_output=True, text=True, timeout=120, env=env)
    seconds = time.monotonic() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    missing = {str(x) for x in paths} - set(res["accounted"])
    assert not missing, f"{len(missing)} file(s) neither in a series nor skipped, e.g. {sorted(missing)[:3]}"
    assert res["rc"] == 0 and res["info_series"] == res["series"]
    assert res["loaded"] >= 1  # the 4 good slices (and harmless mutants) still load
    assert res["skipped"] >= 500
    assert set(os.listdir(tmp_path)) == outside_before  # nothing written beside the input
    assert not list((tmp_path / "tmp").iterdir())
    with capsys.disabled():  # the counts are part of the test output, not only on failure
        print(f"\nfuzz: {len(paths)} files, {res['series']} series ({res['volumes']} volumes), {res['skipped']} skipped, "
              f"{res['loaded']} of a sample loaded, {res['refused']} refused, {seconds:.1f} s under RLIMIT_AS 2 GiB")
    print("fuzz: skip reasons seen:", "; ".join(res["reasons"][:40]))
    print("fuzz: generic reasons:", "\n".join(res["unusable"]))
    assert seconds < 60


# ----------------------------------------------------------------------------- the regressions
def test_validators_name_the_attribute():
    assert check_position(["1", "2", "3"]).tolist() == [1, 2, 3]
    with pytest.raises(HeaderProblem, match=r"Image Position \(Patient\) \(0020,0032\) has 2 value"):
        check_position(["1", "2"])
    with pytest.raises(HeaderProblem, match="has 3 value"):
        check_orientation([1, 0, 0])
    with pytest.raises(HeaderProblem, match="not orthogonal"):
        check_orientation([1, 0, 0, 0.7071, 0.7071, 0])
    with pytest.raises(HeaderProblem, match="not unit"):
        check_orientation([0] * 6)
    with pytest.raises(HeaderProblem, match="non-finite"):
        check_orientation([1, 0, 0, 0, float("nan"), 0])
    with pytest.raises(HeaderProblem, match="positive"):
        check_spacing([0, 0.5])
    with pytest.raises(HeaderProblem, match="positive"):
        check_spacing([-0.7, 0.7])
    assert check_spacing(["0.5", "0.7"]) == (0.5, 0.7)


def _one(tmp_path, slices, mutate, name="x.dcm"):
    ds = copy.deepcopy(slices[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mutate(ds)
    folder = tmp_path / name.replace(".dcm", "")
    folder.mkdir(exist_ok=True)
    return _save(ds, folder / name), folder


@pytest.mark.parametrize("name,reason", [
    ("spacing_zero", "Pixel Spacing (0028,0030) must be two positive"),
    ("spacing_negative", "Pixel Spacing (0028,0030) must be two positive"),
    ("iop_3_values", "Image Orientation (Patient) (0020,0037) has 3 value"),
    ("ipp_2_values", "Image Position (Patient) (0020,0032) has 2 value"),
    ("ipp_nan", "non-finite"),
    ("rows_cols_60000", "Pixel Data (7FE0,0010) holds"),
])
def test_bad_geometry_is_skipped_with_its_reason(tmp_path, small_slices, name, reason):
    mutate = dict(ATTRIBUTE_MUTATIONS)[name]
    path, folder = _one(tmp_path, small_slices, mutate)
    r = scan(folder)
    assert not r.volumes
    (sk,) = r.skipped
    assert sk.path == str(path) and reason in sk.reason
    with pytest.raises(LoadError, match="no image volume"):  # never a bare ValueError
        open_volume(folder)


def test_huge_compressed_image_is_refused_before_allocating(tmp_path, data_dir):
    """Rows = Columns = 60000 in a JPEG 2000 file: skipped at scan with the sizes, no MemoryError."""
    src = sorted((data_dir / "ct-abdomen-dicom" / "series").iterdir())[0]
    ds = pydicom.dcmread(src)
    ds.Rows = ds.Columns = 60000
    (tmp_path / "big").mkdir()
    ds.save_as(tmp_path / "big" / "big.dcm")
    (sk,) = scan(tmp_path / "big").skipped
    assert "60000x60000x1 would decode to 6866 MiB" in sk.reason
    p = subprocess.run([*CLI, "snapshot", str(tmp_path / "big"), "--out", str(tmp_path / "x.png")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "60000x60000" in p.stderr and "Traceback" not in p.stderr


LOAD_UNDER_LIMIT = textwrap.dedent("""
    import resource, sys
    from radreview.studies import LoadError, load_series, scan
    (entry,) = scan(sys.argv[1]).volumes
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (150 << 20), resource.RLIM_INFINITY))
    try:
        load_series(entry)
    except LoadError as exc:
        print("refused:", exc)
""")


def test_a_volume_larger_than_memory_is_refused_before_allocating(tmp_path, data_dir):
    """12000x12000 JPEG 2000 (275 MiB decoded) with 150 MiB of address space left: LoadError."""
    src = sorted((data_dir / "ct-abdomen-dicom" / "series").iterdir())[0]
    ds = pydicom.dcmread(src)
    ds.Rows = ds.Columns = 12000
    (tmp_path / "big").mkdir()
    ds.save_as(tmp_path / "big" / "big.dcm")
    p = subprocess.run([sys.executable, "-c", LOAD_UNDER_LIMIT, str(tmp_path / "big")], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "RADREVIEW_NO_PROCESS_POOL": "1"})
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "refused:" in p.stdout and "12000x12000 need 0.27 GiB" in p.stdout, p.stdout


def test_three_million_frames_in_a_small_file_is_fast(tmp_path, small_slices, data_dir):
    _, folder = _one(tmp_path, small_slices, dict(ATTRIBUTE_MUTATIONS)["frames_3e6"])
    src = sorted((data_dir / "ct-abdomen-dicom" / "series").iterdir())[0]  # encapsulated too
    ds = pydicom.dcmread(src)
    ds.NumberOfFrames = 3_000_000
    ds.save_as(folder / "jp2k.dcm")
    t0 = time.monotonic()
    p = subprocess.run([*CLI, "info", "--json", str(folder)], capture_output=True, text=True, timeout=60)
    seconds = time.monotonic() - t0
    data = json.loads(p.stdout)
    reasons = " ".join(s["reason"] for s in data["skipped"])
    assert len(data["skipped"]) == 2 and "Number of Frames" in reasons and "holds" in reasons
    assert seconds < 15, f"info took {seconds:.1f} s"


def test_fifo_and_special_files_do_not_hang(tmp_path, small_slices):
    folder = tmp_path / "f"
    folder.mkdir()
    _save(small_slices[0], folder / "good.dcm")
    os.mkfifo(folder / "pipe.dcm")
    os.symlink("loop_b", folder / "loop_a")
    os.symlink("loop_a", folder / "loop_b")
    os.symlink("/nonexistent/x", folder / "dangling")
    os.symlink(".", folder / "self_dir")  # a folder link loop: not followed
    p = subprocess.run([*CLI, "info", "--json", str(folder)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    reasons = {Path(s["path"]).name: s["reason"] for s in data["skipped"]}
    assert "FIFO" in reasons["pipe.dcm"]
    assert "symbolic link" in reasons["loop_a"] and "symbolic link" in reasons["dangling"]
    assert "not followed" in reasons["self_dir"]
    assert len(data["series"]) == 1
    p = subprocess.run([*CLI, "info", str(folder / "pipe.dcm")], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "FIFO" in p.stdout


def test_unreadable_files_and_folders_are_reported(tmp_path, small_slices):
    folder = tmp_path / "u"
    (folder / "locked").mkdir(parents=True)
    _save(small_slices[0], folder / "good.dcm")
    _save(small_slices[1], folder / "locked" / "in_locked.dcm")
    _save(small_slices[2], folder / "secret.dcm")
    os.chmod(folder / "secret.dcm", 0)
    os.chmod(folder / "locked", 0)
    cmd = [*CLI, "info", "--json", str(folder)]
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that bypass permissions
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *cmd]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    finally:
        os.chmod(folder / "locked", 0o755)
        os.chmod(folder / "secret.dcm", 0o644)
    assert p.returncode == 0, p.stderr
    reasons = {Path(s["path"]).name: s["reason"] for s in json.loads(p.stdout)["skipped"]}
    assert "unreadable folder" in reasons["locked"]
    assert "Permission denied" in reasons["secret.dcm"] or "unreadable" in reasons["secret.dcm"]


def test_non_utf8_names(tmp_path, small_slices):
    folder = tmp_path / "n"
    folder.mkdir()
    bad = os.fsencode(str(folder)) + b"/\xff\xfe-slice.dcm"
    _save(small_slices[0], Path(os.fsdecode(bad)))
    with open(os.fsdecode(os.fsencode(str(folder)) + b"/\xe9t\xe9.txt"), "w") as fh:
        fh.write("not dicom")
    for args in (["info", "--json", str(folder)], ["info", str(folder)]):
        p = subprocess.run([*CLI, *args], capture_output=True, timeout=30)
        assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr
    assert b"\\xe9t\\xe9.txt" in p.stdout  # shown, escaped
    assert b"1 file(s)" in p.stdout  # the DICOM file with the undecodable name is a series


def test_two_patients_without_uids_are_not_merged(tmp_path, small_slices):
    folder = tmp_path / "p"
    folder.mkdir()
    for k, ds in enumerate(small_slices):
        ds = copy.deepcopy(ds)
        del ds.StudyInstanceUID, ds.SeriesInstanceUID
        ds.PatientID = "A" if k % 2 else "B"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    vols = scan(folder).volumes
    assert sorted(v.info.patient_id for v in vols) == ["A", "B"]
    assert all(len(v.frames) == 2 for v in vols)
    assert all("split by Patient ID" in v.warnings[0] for v in vols)


def test_several_series_warn_which_one_is_used(tmp_path, small_slices, ct_series):
    folder = tmp_path / "two"
    for k, ds in enumerate(small_slices):
        _save(ds, (folder / "small").mkdir(parents=True, exist_ok=True) or folder / "small" / f"{k}.dcm", new_uids=False)
    for f in ct_series.iterdir():
        (folder / "ct").mkdir(exist_ok=True)
        (folder / "ct" / f.name).write_bytes(f.read_bytes())
    vol = open_volume(folder)
    assert vol.array.shape == (20, 512, 512)
    (w,) = [w for w in vol.warnings if "image volumes found" in w]
    assert "2 image volumes found; using series" in w and small_slices[0].SeriesInstanceUID in w
    p = subprocess.run([*CLI, "snapshot", str(folder), "--out", str(tmp_path / "x.png"), "--layout", "axial",
                        "--size", "64x64"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "radreview: warning: 2 image volumes found; using series" in p.stderr


def test_a_bad_stack_is_reported_and_the_rest_loads(tmp_path, small_slices):
    from radreview.studies import discovery

    folder = tmp_path / "s"
    for k, ds in enumerate(small_slices):
        _save(ds, (folder.mkdir(exist_ok=True) or folder) / f"{k}.dcm", new_uids=False)
    other = copy.deepcopy(small_slices[0])
    other.SeriesInstanceUID = generate_uid()
    for k in range(2):
        other.SOPInstanceUID = generate_uid()
        other.ImagePositionPatient = [0, 0, 5 * k]
        _save(other, folder / f"o{k}.dcm", new_uids=False)
    real = discovery.compute_stack_geometry

    def broken(frames):  # a geometry step failing for one series only
        if frames[0].path.endswith(("o0.dcm", "o1.dcm")):
            raise ArithmeticError("boom")
        return real(frames)

    discovery.compute_stack_geometry = broken
    try:
        r = scan(folder)
    finally:
        discovery.compute_stack_geometry = real
    assert len(r.volumes) == 1 and len(r.volumes[0].frames) == 4
    assert sorted(Path(s.path).name for s in r.skipped) == ["o0.dcm", "o1.dcm"]
    assert all("unusable geometry: ArithmeticError: boom" in s.reason for s in r.skipped)


# ----------------------------------------------------------------------------- hostile containers
def test_hostile_zip(tmp_path, small_slices):
    good = _save(small_slices[0], tmp_path / "g.dcm").read_bytes()
    z = tmp_path / "hostile.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("../../escaped.dcm", good)
        zf.writestr("/tmp/absolute-radreview-test.dcm", good)
        zf.writestr("ok/slice.dcm", good)
        zf.writestr("bomb.bin", bytes(300 << 20))  # 300 MiB of zeros, ~300 KB compressed
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    p = subprocess.run([*CLI, "info", "--json", str(z)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    reasons = {s["path"].split("!")[1]: s["reason"] for s in data["skipped"]}
    assert "zip bomb" in reasons["bomb.bin"]
    assert sum("duplicate SOP" in r for r in reasons.values()) == 2  # the same file three times
    assert not (tmp_path.parent / "escaped.dcm").exists() and not Path("/tmp/absolute-radreview-test.dcm").exists()
    assert not list(tmpdir.iterdir()), "extraction folder left behind"
    # a cap on the total extracted
    env["RADREVIEW_ZIP_MAX_MB"] = "0.01"
    p = subprocess.run([*CLI, "info", "--json", str(z)], capture_output=True, text=True, timeout=60, env=env)
    assert "extraction limit" in p.stdout
    # commands that load (snapshot fails here on purpose, after extraction) remove it too
    p = subprocess.run([*CLI, "snapshot", str(z), "--out", str(tmp_path / "nowhere" / "x.png")],
                       capture_output=True, text=True, timeout=60, env={**env, "RADREVIEW_ZIP_MAX_MB": "64"})
    assert p.returncode == 2
    vol_env = {**env, "RADREVIEW_ZIP_MAX_MB": "64"}
    code = "from radreview.studies import open_volume; v = open_volume(%r); print(v.array.shape)" % str(z)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=vol_env)
    assert p.returncode == 0 and "(1, 64, 64)" in p.stdout, p.stderr
    assert not list(tmpdir.iterdir()), "open_volume left its extraction folder"


def test_stale_extraction_folders_of_dead_processes_are_removed(tmp_path, small_slices):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.dcm", _save(small_slices[0], tmp_path / "g.dcm").read_bytes())
    # a command killed mid-scan leaves its folder: SIGKILL a child while it holds one
    code = ("import os, time; from radreview.studies import scan; r = scan(%r); print(r._tempdir, flush=True); "
            "time.sleep(60)") % str(z)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(tmpdir)})
    left = Path(child.stdout.readline().strip())
    child.kill()
    child.wait()
    assert left.is_dir()
    p = subprocess.run([*CLI, "info", str(z)], capture_output=True, text=True, timeout=60, env={**os.environ, "TMPDIR": str(tmpdir)})
    assert p.returncode == 0
    assert not left.exists() and not list(tmpdir.iterdir())


def test_dicomdir_pointing_outside_its_folder(tmp_path, small_slices):
    """pydicom's DICOMDIR test tree, one record edited to reference ``../outside.dcm``."""
    import shutil

    from pydicom.data import get_testdata_file

    root = tmp_path / "media"
    shutil.copytree(Path(get_testdata_file("DICOMDIR")).parent, root)
    (tmp_path / "OUTSIDE").mkdir()
    outside_file = _save(small_slices[0], tmp_path / "OUTSIDE" / "615400")
    # 1. a Referenced File ID with '..' (same length, so the record offsets still hold)
    raw = (root / "DICOMDIR").read_bytes()
    old = b"77654033\\CR1\\6154"
    assert raw.count(old) == 1
    (root / "DICOMDIR").write_bytes(raw.replace(old, b"..\\OUTSIDE\\615400"))
    r = scan(root)
    assert "must be inside the DICOMDIR root" in r.skipped[0].reason  # refused; its own folder is scanned
    assert r.volumes and all(str(outside_file) not in f for s in r.series for f in s.files)
    # 2. a referenced file that is a symbolic link to a file outside the folder
    (root / "DICOMDIR").write_bytes(raw)
    target = root / "77654033" / "CR1" / "6154"
    target.unlink()
    target.symlink_to(outside_file)
    r = scan(root)
    outside = [s for s in r.skipped if "outside" in s.reason and s.path.endswith("6154")]
    assert len(outside) == 1, r.skipped[:3]
    assert r.volumes  # the rest of the media still loads
    assert all(not f.endswith("CR1/6154") for s in r.series for f in s.files)


# ----------------------------------------------------------------------------- children die with their parent
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids, seconds=10.0) -> list[int]:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def test_decode_pool_workers_die_with_a_killed_command():
    code = textwrap.dedent("""
        import os, time
        from radreview.studies.parallel import decode_pool
        pool = decode_pool()
        pids = set(pool.submit(os.getpid).result() for _ in range(8))
        print(" ".join(map(str, pids)), flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in child.stdout.readline().split()]
    assert pids and all(_alive(p) for p in pids)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _wait_gone(pids) == [], "decode workers outlived their parent"


def test_xvfb_dies_with_a_killed_command():
    code = textwrap.dedent("""
        import os, time
        os.environ.pop("DISPLAY", None)
        from radreview.viewer import xvfb
        print(xvfb.ensure_display(), xvfb._started[0].pid, flush=True)
        time.sleep(60)
    """)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    display, pid = child.stdout.readline().split()
    assert display.startswith(":") and _alive(int(pid))
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _wait_gone([int(pid)]) == [], "Xvfb outlived its parent"


def test_failed_snapshot_leaves_no_xvfb(tmp_path, ct_series):
    mark = f"RADREVIEW_TEST_MARK_{os.getpid()}_{time.time_ns()}"
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env[mark] = "1"
    p = subprocess.run([*CLI, "snapshot", str(ct_series), "--out", str(tmp_path / "x.png"), "--preset", "no-such-preset"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    time.sleep(0.5)
    left = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if mark.encode() in (d / "environ").read_bytes() and _alive(int(d.name)):
                    left.append(d.name)
            except OSError:
                continue
    assert not left, f"processes left running: {left}"


# ----------------------------------------------------------------------------- CLI argument errors
@pytest.mark.parametrize("extra,message", [
    (["--size", "big"], "--size takes WxH"),
    (["--size", "0x100"], "16-8192 pixels"),
    (["--cursor", "1,2"], "--cursor takes three finite numbers"),
    (["--cursor", "a,b,c"], "--cursor takes x,y,z"),
    (["--cursor", "nan,0,0"], "finite"),
    (["--preset3d", "skin"], "unknown --preset3d 'skin'"),
])
def test_snapshot_argument_errors_are_one_line(tmp_path, ct_series, extra, message, capsys):
    from radreview.viewer.cli import main

    assert main(["snapshot", str(ct_series), "--out", str(tmp_path / "x.png"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radreview: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()


def test_snapshot_into_a_missing_folder_fails(tmp_path, ct_series, capsys):
    from radreview.viewer.cli import main

    assert main(["snapshot", str(ct_series), "--out", str(tmp_path / "missing" / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "output folder" in err and "does not exist" in err


def test_info_json_on_a_folder_without_images_fails_like_info(tmp_path, capsys):
    from radreview.viewer.cli import main

    (tmp_path / "notes.txt").write_text("no images here")
    for args in (["info", str(tmp_path)], ["info", "--json", str(tmp_path)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "no DICOM series found" in err and err.count("\n") == 1


def test_info_json_is_strict_json(tmp_path, small_slices, capsys):
    """NaN in non-geometry numbers (Slice Thickness, window) never reaches the JSON as bare NaN."""
    from radreview.viewer.cli.info import json_safe

    assert json_safe({"a": [1.0, float("nan"), {"b": float("inf")}]}) == {"a": [1.0, None, {"b": None}]}
    folder = tmp_path / "nan"
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, ds in enumerate(small_slices):
            ds = copy.deepcopy(ds)
            dict(ATTRIBUTE_MUTATIONS)["thickness_nan"](ds)
            dict(ATTRIBUTE_MUTATIONS)["window_nan"](ds)
            _save(ds, folder / f"{k}.dcm", new_uids=False)
    from radreview.viewer.cli import main

    assert main(["info", "--json", str(folder)]) == 0
    data = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert data["series"][0]["size"] == [64, 64, 4]
