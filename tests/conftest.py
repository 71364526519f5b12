"""Shared fixtures. All test data is real: ``../shared/data`` and the files pydicom ships.

If ``../shared/data`` is missing the session fails loudly (never a silent skip).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RADREVIEW_SHARED_DATA", ROOT.parent / "shared" / "data"))
CT_SERIES = DATA / "ct-abdomen-dicom" / "series"


def pytest_sessionstart(session):
    if not CT_SERIES.is_dir():
        raise pytest.UsageError(
            f"test data missing: {CT_SERIES} not found. The tests need ../shared/data beside the "
            "repository (see DEVELOPERS.md); set RADREVIEW_SHARED_DATA to point elsewhere."
        )
    os.environ.setdefault("RADREVIEW_DATA_MIRROR", str(DATA))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def ct_series() -> Path:
    return CT_SERIES


@pytest.fixture(scope="session")
def ct_datasets():
    """The sample CT's 20 slices, decoded, as pydicom datasets (sorted by file name)."""
    out = []
    for f in sorted(CT_SERIES.iterdir()):
        ds = pydicom.dcmread(f)
        ds.decompress()  # JPEG 2000 -> native, so tests can edit pixel data
        out.append(ds)
    return out


def write_series(folder: Path, datasets, names=None) -> list[Path]:
    """Write datasets as Explicit VR Little Endian files; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        ds = copy.deepcopy(ds)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        p = folder / (names[i] if names else f"IM{i:04d}.dcm")
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def with_fresh_uids(datasets, study_uid: str | None = None) -> list:
    """Copies of ``datasets`` as one new series: fresh Series and SOP Instance UIDs, the Study
    Instance UID ``study_uid`` (new when None), SOP Class from the File Meta (the shared sample
    CT has these blank, which a SEG or RTSTRUCT cannot reference)."""
    study, series = study_uid or generate_uid(), generate_uid()
    out = []
    for ds in datasets:
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        out.append(ds)
    return out


@pytest.fixture
def uncompressed_ct(tmp_path, ct_datasets):
    """The sample CT re-written uncompressed with fresh UIDs (so tests may edit files)."""
    dss = with_fresh_uids(ct_datasets, study_uid=ct_datasets[0].StudyInstanceUID or "1.2.3.4")
    folder = tmp_path / "ct"
    paths = write_series(folder, dss)
    return folder, paths, dss


@pytest.fixture(autouse=True)
def _private_review_db(tmp_path_factory, monkeypatch):
    """Every test gets its own review database; the user's is never touched."""
    monkeypatch.setenv("RADREVIEW_DB", str(tmp_path_factory.mktemp("db") / "review.sqlite"))
    # the audit HMAC key and the remembered reviewer live in the user config folder: a private one too
    monkeypatch.setenv("RADREVIEW_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))


@pytest.fixture(autouse=True)
def _private_user_data(tmp_path_factory, monkeypatch):
    """Every test gets its own user data folder (quantized/user model packages); the user's is never touched."""
    monkeypatch.setenv("RADREVIEW_DATA_DIR", str(tmp_path_factory.mktemp("userdata")))
    monkeypatch.delenv("RADREVIEW_MODELS_PATH", raising=False)


@pytest.fixture(autouse=True)
def _collect_cycles_on_the_main_thread():
    """Once a window exists, automatic GC is off (viewer._qt.gc_guard: cyclic garbage is collected
    on the GUI thread only, never in a worker that would destroy Qt/VTK objects off-thread); the
    window's timer does that while a test spins the event loop, this does it between tests."""
    yield
    import gc

    if not gc.isenabled():
        gc.collect()
