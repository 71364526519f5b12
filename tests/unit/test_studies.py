"""Discovery, sorting, geometry and loading against SimpleITK, plus every bad-input case."""

from __future__ import annotations

import copy
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from radreview.studies import LoadError, Volume, load_image_file, load_series, open_volume, scan
from radreview.studies.loader import decode_frame, iter_load
from tests.conftest import write_series


def sitk_series(folder: Path, series_uid: str | None = None):
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    uid = series_uid if series_uid is not None else ids[0]
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def assert_same_as_sitk(vol: Volume, img) -> None:
    arr = sitk.GetArrayFromImage(img)
    assert vol.array.shape == arr.shape
    assert np.array_equal(vol.array, arr), "voxel values differ from SimpleITK"
    np.testing.assert_allclose(vol.spacing, img.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(vol.direction.ravel(), img.GetDirection(), atol=1e-3)


# ----------------------------------------------------------------------------- correctness
def test_sample_ct_equals_simpleitk(ct_series):
    result = scan(ct_series)
    assert not result.skipped
    (entry,) = result.volumes
    vol = load_series(entry)
    assert_same_as_sitk(vol, sitk_series(ct_series))
    # spacing from positions, not from SliceThickness (3 mm)
    assert vol.spacing[2] == pytest.approx(2.0)
    assert any("Slice Thickness is 3 mm" in w for w in vol.warnings)
    # CT values are HU: air about -1000, fat/soft tissue present
    assert vol.array.min() <= -1000 and vol.array.max() > 1000
    # JSON geometry is what SimpleITK reports
    g = entry.as_dict()
    assert g["size"] == [512, 512, 20]
    assert g["sop_class"] == "1.2.840.10008.5.1.4.1.1.2"


def _dicomdir_series_folders():
    root = Path(get_testdata_file("DICOMDIR")).parent
    folders = {}
    for f in root.rglob("*"):
        if not f.is_file() or f.name == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            continue
        if "ImagePositionPatient" in ds:
            folders.setdefault((str(f.parent), ds.SeriesInstanceUID), []).append(f)
    return {k: v for k, v in folders.items() if len(v) > 1}


@pytest.mark.parametrize("key", sorted(_dicomdir_series_folders()), ids=lambda k: Path(k[0]).name + "-" + k[1][-6:])
def test_pydicom_multislice_series_equal_simpleitk(key, tmp_path):
    folder, uid = key
    files = _dicomdir_series_folders()[key]
    for f in files:  # isolate the series in its own folder
        shutil.copy(f, tmp_path / f.name)
    result = scan(tmp_path)
    vols = [v for v in result.volumes if v.series_instance_uid == uid]
    img = sitk_series(tmp_path, uid)
    # the biggest stack of the series is what SimpleITK reads when all share one orientation
    vol = load_series(max(vols, key=lambda v: len(v.frames)))
    if len(vols) == 1:
        assert_same_as_sitk(vol, img)
        return
    # SimpleITK stacks every slice at the mean spacing; we split the series into slabs at
    # large gaps. Every slice must still carry SimpleITK's values at its own position.
    assert sum(len(v.frames) for v in vols) == len(files)
    orientations = {tuple(np.round(v.frames[0].orientation, 3)) for v in vols}
    if len(orientations) > 1:  # scouts in several planes: one stack per plane, never mixed
        assert all(any(p in v.stack_label for p in ("axial", "coronal", "sagittal")) for v in vols)
        return
    assert any("split into separate slabs" in w for v in vols for w in v.warnings)
    ref = sitk.GetArrayFromImage(img)
    ref_z = [img.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(img.GetSize()[2])]
    files_z = sorted(float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files)
    for entry in vols:
        v = load_series(entry)
        for k in range(v.size[2]):
            z = v.index_to_lps([0, 0, k])[2]
            kk = int(np.argmin([abs(z - fz) for fz in files_z]))
            assert np.array_equal(v.array[k], ref[kk])
    assert len(ref_z) == len(files)


def test_dicomdir_is_followed():
    dicomdir = get_testdata_file("DICOMDIR")
    result = scan(dicomdir)
    assert len(result.series) >= 5
    assert result.volumes
    kinds = {s.kind for s in result.series}
    assert "volume" in kinds


def test_sort_ignores_instance_number_and_file_name(uncompressed_ct, tmp_path):
    folder, paths, dss = uncompressed_ct
    # scramble: reverse InstanceNumber and give files names in a random order
    shuffled = tmp_path / "shuffled"
    rng = np.random.default_rng(0)
    order = rng.permutation(len(dss))
    edited = []
    for i, ds in enumerate(dss):
        ds = copy.deepcopy(ds)
        ds.InstanceNumber = 1000 - i
        edited.append(ds)
    write_series(shuffled, edited, names=[f"f{order[i]:03d}" for i in range(len(edited))])
    vol = open_volume(shuffled)
    ref = sitk.GetArrayFromImage(sitk_series(Path(str(folder))))
    assert np.array_equal(vol.array, ref)
    z = [vol.index_to_lps([0, 0, k])[2] for k in range(vol.size[2])]
    assert np.all(np.diff(z) > 0)


def test_enhanced_multiframe_split_into_stacks(uncompressed_ct, tmp_path):
    """A legacy-converted enhanced CT (highdicom) holds per-frame functional groups."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    _, _, dss = uncompressed_ct
    mf = LegacyConvertedEnhancedCTImage(
        legacy_datasets=dss, series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1,
    )
    single = tmp_path / "mf1"
    single.mkdir()
    mf.save_as(single / "enhanced.dcm")
    (entry,) = scan(single).volumes
    vol = load_series(entry)
    ref = open_volume(uncompressed_ct[0])
    assert vol.same_grid(ref)
    assert np.array_equal(vol.array, ref.array)

    # Two stacks in one object: give half the frames another Stack ID and shift them 300 mm.
    ds = pydicom.dcmread(single / "enhanced.dcm")
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        if i % 2:
            item.FrameContentSequence[0].StackID = "2"
            pos = item.PlanePositionSequence[0].ImagePositionPatient
            item.PlanePositionSequence[0].ImagePositionPatient = [pos[0], pos[1], float(pos[2]) + 300]
        else:
            item.FrameContentSequence[0].StackID = "1"
    two = tmp_path / "mf2"
    two.mkdir()
    ds.save_as(two / "enhanced2.dcm")
    result = scan(two)
    assert len(result.volumes) == 2
    assert all(v.stack_label for v in result.volumes)
    for v in result.volumes:
        assert v.geometry.size[2] == 10
        assert v.geometry.spacing[2] == pytest.approx(4.0)


def test_echoes_split_into_stacks(uncompressed_ct, tmp_path):
    _, _, dss = uncompressed_ct
    edited = []
    for echo in (1, 2):
        for ds in dss[:6]:
            ds = copy.deepcopy(ds)
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.EchoNumbers = echo
            edited.append(ds)
    write_series(tmp_path / "echo", edited)
    result = scan(tmp_path / "echo")
    assert len(result.volumes) == 2
    assert {len(v.frames) for v in result.volumes} == {6}
    assert any("echo 2" in v.stack_label for v in result.volumes)
    for v in result.volumes:
        # Echo Numbers (0018,0086) of single-frame images; no Effective Echo Time there
        assert {f.echo_numbers for f in v.frames} in ({1.0}, {2.0})
        assert all(f.effective_echo_time is None for f in v.frames)


def test_effective_echo_time_splits_enhanced_stacks(uncompressed_ct, tmp_path):
    """Enhanced objects carry MR Echo (0018,9114) > Effective Echo Time (0018,9082), in ms."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.dataset import Dataset

    _, _, dss = uncompressed_ct
    mf = LegacyConvertedEnhancedCTImage(
        legacy_datasets=dss, series_instance_uid=generate_uid(), series_number=98,
        sop_instance_uid=generate_uid(), instance_number=1,
    )
    for i, item in enumerate(mf.PerFrameFunctionalGroupsSequence):
        echo = Dataset()
        echo.EffectiveEchoTime = 20.0 if i % 2 else 90.0
        item.MREchoSequence = [echo]
    (tmp_path / "mf").mkdir()
    mf.save_as(tmp_path / "mf" / "enhanced.dcm")
    result = scan(tmp_path / "mf")
    assert len(result.volumes) == 2
    assert sorted({f.effective_echo_time for f in v.frames}.pop() for v in result.volumes) == [20.0, 90.0]
    assert all(f.echo_numbers is None for v in result.volumes for f in v.frames)
    assert any("echo time 20 ms" in v.stack_label for v in result.volumes)


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "693_J2KI.dcm", "MR2_J2KI.dcm",
                                  "J2K_pixelrep_mismatch.dcm"])
def test_jpeg2000_decode_is_identical_to_pydicom(name):
    """JPEG 2000 goes through imagecodecs (GIL released); values and dtype are pydicom's,
    including where the J2K header's signedness disagrees with Pixel Representation."""
    from pydicom.pixels import pixel_array

    ours = _decode_ours(name)
    ref = pixel_array(get_testdata_file(name))
    assert ours.dtype == ref.dtype and np.array_equal(ours, ref)


def test_sample_ct_jpeg2000_uses_threaded_decoder(ct_series):
    from radreview.studies.loader import _decode_j2k, _threadable

    (entry,) = scan(ct_series).volumes
    for f in entry.frames:
        assert _threadable(f)
        fast = _decode_j2k(f)
        assert fast is not None  # decoded by imagecodecs, not handed back to pydicom
        assert np.array_equal(fast, pydicom.dcmread(f.path).pixel_array)


def test_jpeg2000_size_checked_before_decoding(ct_series, tmp_path):
    """A codestream whose SIZ size disagrees with Rows/Columns is not handed to OpenJPEG."""
    from radreview.studies.loader import _decode_j2k

    src = sorted(ct_series.iterdir())[0]
    ds = pydicom.dcmread(src)
    ds.Rows = 256  # the JPEG 2000 codestream still says 512 x 512
    (tmp_path / "lie").mkdir()
    ds.save_as(tmp_path / "lie" / "one.dcm")
    result = scan(tmp_path / "lie")
    frames = [f for e in result.series for f in e.frames]
    assert len(frames) == 1 and frames[0].rows == 256
    assert _decode_j2k(frames[0]) is None
    with pytest.raises(ValueError):  # pydicom refuses it; the loader then skips the slice with the reason
        decode_frame(frames[0])


def test_parallel_scan_matches_inline_scan(uncompressed_ct, tmp_path, monkeypatch):
    """A folder over PARALLEL_SCAN_MIN_FILES parsed on the process pool gives the same series,
    frames and skipped files (with reasons, in order) as parsing in this process."""
    import time

    from radreview.studies.discovery import PARALLEL_SCAN_MIN_FILES
    from radreview.studies.parallel import ready_pool, warm_pool
    from tests.conftest import with_fresh_uids

    _, paths, dss = uncompressed_ct
    folder = tmp_path / "many"
    for k in range(PARALLEL_SCAN_MIN_FILES // len(dss) + 1):
        write_series(folder / f"s{k}", with_fresh_uids(dss, study_uid=dss[0].StudyInstanceUID))
    shutil.copy(folder / "s0" / "IM0003.dcm", folder / "s0" / "zz_duplicate.dcm")
    (folder / "s1" / "notes.txt").write_text("not DICOM")
    raw = paths[5].read_bytes()
    (folder / "s2" / "zz_truncated.dcm").write_bytes(raw[: len(raw) // 2])

    monkeypatch.setenv("RADREVIEW_NO_PROCESS_POOL", "1")
    inline = scan(folder)
    assert ready_pool() is None
    monkeypatch.delenv("RADREVIEW_NO_PROCESS_POOL")
    warm_pool()
    for _ in range(600):
        if ready_pool() is not None:
            break
        time.sleep(0.05)
    assert ready_pool() is not None  # the next scan parses on the pool
    pooled = scan(folder)
    assert pooled.as_dict() == inline.as_dict()
    assert len(inline.volumes) == len(list(folder.iterdir())) and len(inline.skipped) == 3
    assert any("duplicate SOP Instance UID" in s.reason for s in inline.skipped)
    for a, b in zip(inline.volumes, pooled.volumes):
        assert [f.path for f in a.frames] == [f.path for f in b.frames]
        assert a.info == b.info


def _decode_ours(name: str) -> np.ndarray:
    from radreview.studies.discovery import _frames_from_single

    path = Path(get_testdata_file(name))
    ds = pydicom.dcmread(path, defer_size=1024)
    return decode_frame(_frames_from_single(ds, path, str(path))[0])


def _decode_gdcm(name: str) -> np.ndarray:
    """An independent decoder: GDCM inside SimpleITK."""
    img = sitk.ReadImage(get_testdata_file(name))
    return sitk.GetArrayFromImage(img)[0]


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "MR_small_RLE.dcm",  # RLE Lossless
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_implicit.dcm",  # Implicit VR Little Endian
        "MR_small_bigendian.dcm",  # Explicit VR Big Endian
        "JPEG-LL.dcm",  # JPEG Lossless, process 14
        "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG Lossless SV1, 8-bit
    ],
)
def test_lossless_transfer_syntaxes_decode_exactly(name):
    ours = _decode_ours(name)
    assert np.array_equal(ours, _decode_gdcm(name).reshape(ours.shape))
    if name.startswith("MR_small"):
        assert np.array_equal(ours, _decode_ours("MR_small.dcm"))


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "MR2_J2KI.dcm", "JPEGLSNearLossless_16.dcm"])
def test_lossy_transfer_syntaxes_decode(name):
    """JPEG extended (12-bit), lossy JPEG 2000 and near-lossless JPEG-LS: agree with GDCM."""
    ours = _decode_ours(name).astype(float)
    ref = _decode_gdcm(name).astype(float).reshape(ours.shape)
    assert ours.std() > 10
    # GDCM may apply the modality LUT; compare the images up to a linear map
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.999


def test_jpeg_baseline_decodes():
    # 8-bit JPEG baseline (process 1), colour: through the same plugin set, close to GDCM's decode
    from pydicom.pixels import pixel_array

    name = "SC_rgb_jpeg_gdcm.dcm"
    ours = pixel_array(get_testdata_file(name)).astype(float)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(get_testdata_file(name))).astype(float).reshape(ours.shape)
    assert ours.std() > 10
    assert np.abs(ours - ref).mean() < 3


def test_rescale_applied_per_frame(uncompressed_ct, tmp_path):
    _, _, dss = uncompressed_ct
    edited = []
    for i, ds in enumerate(dss):
        ds = copy.deepcopy(ds)
        if i % 2:  # store (HU + 1024) / 2 with slope 2 on odd slices
            hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
            stored = np.clip((hu + 1024) // 2, 0, 65535).astype(np.uint16)
            ds.PixelData = stored.tobytes()
            ds.RescaleSlope = 2
            ds.RescaleIntercept = -1024
        edited.append(ds)
    write_series(tmp_path / "rs", edited)
    vol = open_volume(tmp_path / "rs")
    ref = open_volume(uncompressed_ct[0])
    diff = np.abs(vol.array.astype(np.int32) - ref.array.astype(np.int32))
    assert diff.max() <= 1  # slices stored with slope 2 lose the lowest bit only
    exact = [k for k in range(diff.shape[0]) if diff[k].max() == 0]
    assert len(exact) == 10  # the other half is untouched


def test_monochrome1_flagged_values_kept(uncompressed_ct, tmp_path):
    _, _, dss = uncompressed_ct
    edited = []
    for ds in dss:
        ds = copy.deepcopy(ds)
        ds.PhotometricInterpretation = "MONOCHROME1"
        edited.append(ds)
    write_series(tmp_path / "m1", edited)
    vol = open_volume(tmp_path / "m1")
    assert vol.info.invert_grayscale
    assert np.array_equal(vol.array, open_volume(uncompressed_ct[0]).array)


# ----------------------------------------------------------------------------- spacing, tilt
def test_missing_slice_is_resampled_and_reported(uncompressed_ct):
    folder, paths, _ = uncompressed_ct
    result = scan(folder)
    entry = result.volumes[0]
    victim = entry.frames[7].path
    os.remove(victim)
    result = scan(folder)
    (entry,) = result.volumes
    assert any("non-uniform slice spacing" in w for w in entry.warnings)
    vol = load_series(entry)
    assert vol.size[2] == 20 and vol.spacing[2] == pytest.approx(2.0)
    assert np.isfinite(vol.array).all()


def test_gantry_tilt_detected_and_resampled(uncompressed_ct, tmp_path):
    _, _, dss = uncompressed_ct
    edited = []
    tilt = np.tan(np.radians(15))
    for ds in dss:
        ds = copy.deepcopy(ds)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (z + 766.5) * tilt, z]  # slices shift along y with z
        edited.append(ds)
    write_series(tmp_path / "tilt", edited)
    (entry,) = scan(tmp_path / "tilt").volumes
    assert any("gantry tilt of 15.00 degrees" in w for w in entry.warnings)
    vol = load_series(entry)
    assert vol.size == tuple(entry.geometry.size)
    assert vol.size[1] > 512  # the orthogonal grid covers the sheared extent
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-6)
    # a voxel in the middle of the first input slice keeps its HU at its LPS position
    src = edited[10]
    hu = src.pixel_array[256, 256] * src.RescaleSlope + src.RescaleIntercept
    lps = np.array([float(v) for v in src.ImagePositionPatient]) + np.array([256 * 0.9765625, 256 * 0.9765625, 0])
    assert vol.value_at_lps(lps) == pytest.approx(hu, abs=60)


# ----------------------------------------------------------------------------- bad input
def test_bad_files_are_skipped_with_reasons(uncompressed_ct):
    folder, paths, dss = uncompressed_ct
    # 1 truncated file
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])
    # 2 non-DICOM files
    (folder / "notes.txt").write_text("not dicom")
    (folder / "empty.dcm").write_bytes(b"")
    # 3 no pixel data
    nopix = copy.deepcopy(dss[5])
    del nopix.PixelData
    nopix.SOPInstanceUID = generate_uid()
    nopix.file_meta.MediaStorageSOPInstanceUID = nopix.SOPInstanceUID
    write_series(folder, [nopix], names=["nopixel.dcm"])
    # 4 a slice with another size
    small = copy.deepcopy(dss[6])
    half = small.pixel_array[::2, ::2].copy()
    small.Rows = small.Columns = 256
    small.PixelData = half.tobytes()
    small.SOPInstanceUID = generate_uid()
    small.file_meta.MediaStorageSOPInstanceUID = small.SOPInstanceUID
    small.ImagePositionPatient = [float(v) for v in small.ImagePositionPatient[:2]] + [-900.0]
    write_series(folder, [small], names=["small.dcm"])
    # 5 duplicate SOP Instance UID (a copy of a file)
    shutil.copy(paths[8], folder / "copy_of_8.dcm")

    result = scan(folder)
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert "truncated" in reasons[paths[3].name]
    assert "not a DICOM file" in reasons["notes.txt"]
    assert "empty.dcm" in reasons
    assert "no Pixel Data" in reasons["nopixel.dcm"]
    assert "differs from the rest" in reasons["small.dcm"]
    dup = [n for n in ("copy_of_8.dcm", paths[8].name) if n in reasons]
    assert len(dup) == 1 and "duplicate SOP Instance UID" in reasons[dup[0]]  # one of the two copies kept
    (entry,) = result.volumes
    assert len(entry.frames) == 19  # 20 - truncated
    vol = load_series(entry)
    assert vol.size[2] == 20  # resampled across the gap left by the truncated slice
    assert any("non-uniform" in w for w in vol.warnings)


def test_corrupt_pixel_data_skips_slice_not_series(uncompressed_ct):
    folder, paths, _ = uncompressed_ct
    (entry,) = scan(folder).volumes
    victim = Path(entry.frames[10].path)
    # keep the header, corrupt the pixel data after scanning (file shrinks under our feet)
    data = victim.read_bytes()
    victim.write_bytes(data[:-1000])
    vol = load_series(entry)
    skipped = vol.skipped
    assert len(skipped) == 1 and skipped[0].path == str(victim)
    assert "cannot decode" in skipped[0].reason
    assert vol.size[2] == 20
    assert any("could not be decoded" in w for w in vol.warnings)


def test_single_slice_series_matches_simpleitk():
    path = get_testdata_file("CT_small.dcm")
    vol = open_volume(path)
    img = sitk.ReadImage(path)
    assert_same_as_sitk(vol, img)
    assert any("single-slice" in w for w in vol.warnings)


def test_non_image_objects_listed_not_crashing(tmp_path):
    for name in ("rtstruct.dcm", "liver_1frame.dcm", "emri_small.dcm", "CT_small.dcm", "no_meta.dcm", "badVR.dcm"):
        shutil.copy(get_testdata_file(name), tmp_path / name)
    result = scan(tmp_path)
    by_class = {s.sop_class_name: s for s in result.series}
    assert by_class["Segmentation Storage"].kind == "non-image"
    assert by_class["CT Image Storage"].kind == "volume"
    # emri_small has no functional groups: listed as 2-D images, not stacked
    assert by_class["Enhanced MR Image Storage"].kind == "image"
    assert by_class["RT Dose Storage"].kind == "non-image"
    skipped = {Path(s.path).name: s.reason for s in result.skipped}
    # no File Meta (pydicom's rtstruct.dcm lacks it too): reported, not guessed
    assert set(skipped) == {"no_meta.dcm", "rtstruct.dcm"}
    assert all(r.startswith("not a DICOM file") and "File Meta" in r for r in skipped.values())


def test_zip_archive(ct_series, tmp_path):
    z = tmp_path / "study.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(ct_series.iterdir()):
            zf.write(f, f"study/{f.name}")
        zf.writestr("study/readme.txt", "hello")
    result = scan(z)
    try:
        (entry,) = result.volumes
        assert len(entry.frames) == 20
        assert any("readme.txt" in s.path for s in result.skipped)
        vol = load_series(entry)
        assert_same_as_sitk(vol, sitk_series(ct_series))
    finally:
        result.cleanup()


def test_missing_path_raises():
    with pytest.raises(FileNotFoundError, match="no such file"):
        scan("/nonexistent/folder")


def test_folder_without_dicom_raises_load_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(LoadError, match="no image volume found"):
        open_volume(tmp_path)


def test_load_is_a_cancellable_generator_with_preview(ct_series):
    """The first step carries the decoded middle slice (SimpleITK's values); closing the
    generator there stops the load: 1 of 20 frames done, no Volume returned."""
    (entry,) = scan(ct_series).volumes
    gen = iter_load(entry)
    first = next(gen)
    assert first.preview is not None and (first.done, first.total) == (1, 20)
    k, sl = first.preview
    assert k == 10 and np.array_equal(sl, sitk.GetArrayFromImage(sitk_series(ct_series))[10])
    gen.close()  # cancel
    assert gen.gi_frame is None  # finished at the close, no frames decoded after it
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value is None  # no Volume


# ----------------------------------------------------------------------------- image files
@pytest.mark.parametrize("rel", ["ct-abdomen-nifti/ct.nii.gz", "ct-chest-crops/chest_crop_1.nii.gz",
                                 "mr-brain-label/brain1_image.nrrd", "ct-head/head_ct.nii.gz"])
def test_image_files_keep_geometry(data_dir, rel, tmp_path):
    path = data_dir / rel
    vol = load_image_file(path)
    img = sitk.ReadImage(str(path))
    assert_same_as_sitk(vol, img)
    back = vol.to_sitk()
    assert back.GetOrigin() == img.GetOrigin() and back.GetDirection() == img.GetDirection()
    mha = tmp_path / "x.mha"
    sitk.WriteImage(back, str(mha))
    assert load_image_file(mha).same_grid(vol)


def test_nifti_modality_guess_is_stated(data_dir):
    ct = load_image_file(data_dir / "ct-abdomen-nifti/ct.nii.gz")
    mr = load_image_file(data_dir / "mr-brain-label/brain1_image.nrrd")
    assert ct.info.modality == "CT" and mr.info.modality == "MR"
    assert any("assumed CT" in w for w in ct.warnings)


def test_bad_image_file_message_names_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        load_image_file(bad)


def test_index_lps_round_trip(data_dir):
    vol = load_image_file(data_dir / "ct-abdomen-nifti/ct.nii.gz")
    img = vol.to_sitk()
    for ijk in ([0, 0, 0], [10, 20, 30], [121, 100, 111]):
        lps = vol.index_to_lps(ijk)
        np.testing.assert_allclose(lps, img.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]), atol=1e-6)
        np.testing.assert_allclose(vol.lps_to_index(lps), ijk, atol=1e-9)
