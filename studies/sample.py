"""The sample study behind ``radreview demo``: a 20-slice abdominal CT (JPEG 2000 lossless).

Source: TotalSegmentator repository, ``tests/reference_files/example_ct_dicom`` (Apache-2.0).
Fetch order (the only network access radreview ever makes, and only when asked to):

1. the user cache (``$XDG_CACHE_HOME/radreview/sample-ct`` or ``~/.cache/...``);
2. a mirror folder named by ``RADREVIEW_DATA_MIRROR`` (tests and offline machines point it at
   ``../shared/data``; the series is looked up at ``ct-abdomen-dicom/series`` below it);
3. download from :data:`BASE_URL`.

Every file is checked against its SHA-256 in :data:`MANIFEST` whichever way it came.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path
from .hashing import sha256_file
from radreview.studies.errors import RadreviewError

__all__ = ["SampleDataError", "sample_ct_path", "cache_dir", "MANIFEST", "BASE_URL"]

BASE_URL = "https://raw.githubusercontent.com/wasserth/TotalSegmentator/master/tests/reference_files/example_ct_dicom/"
MIRROR_SUBDIR = "ct-abdomen-dicom/series"

#: (file name, SHA-256) of the 20 slices.
MANIFEST: tuple[tuple[str, str], ...] = (
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573", "4c5633409fa4d3edf6871e5684e9e1b10325b4d0949997582f43b23a684d0dc4"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016574", "9148f91127145497f4d6c6f0780f9452504cd7fe5088ec8f2bf2b21800c731ff"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016575", "3edaccec892e0821440cbefe3d5465923bb5146c316cbaf58f578d962f120484"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016576", "9b68685f0c5f9bfcfc2c397f4fadf431da288d7422ca72e7d9031d4e039418cd"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016577", "c8d2c0dc05e414d47d3652c658d8fecc20c3cf7ce106c10d84ad033d39700bcc"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016578", "0ee2c1d58e06cedd91483ca35c04da3c26fea0dbe88aaf1eaa950b57f38357d6"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016579", "c76cf0818d4215b92883d109b8a0b62ae0a4d81637eed98738f9c62b6f49bb72"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016580", "106e20514fd3ca66895e14dbfba96c01c1195e4ed890c035d4368dd71f3ee116"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016581", "5804e6c4a50f4d5b20040ac82a1c6d79cba5f7267d71f10b0a1b49eda1bc13ff"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016582", "bef219a16b22949224de4581a2d288863b2585d29556ac24021f03307378cb39"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016583", "9de5a49e880417d5330fe299115fdb95831a98234216a31c5c0e9a0be9a6dcd3"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016584", "fa00c8d81ec8aa0d0cfc4e05343782c3a75a4c60df8cccf9ff5db42ac454e61d"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016585", "ebba0900b0f728db0c94c769db3e5ca38a0cd916386a727541eb3e56350770e5"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016586", "f084ec95cfba25efb7cbe86e8b4966b051904037e8385f58fe398c5475693b89"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016587", "20a9b88a30ea8a824ac65cb19c1ebf80964b41ff476497706ff2a286e5f27a25"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016588", "2a515d3b60f3ff733aac1fc5414206c331e3ed2ccef8c2e0c30b844c538e3ed8"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016589", "5880669f1bc36b09cad4bdf487992ec415da0afa014e927efc282e612f467574"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016590", "7af4dd5b5766a87368939116b91f90d989820e7b2237fb9bcd10d47db0960875"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016591", "671306f4462ae881976c18c6a2d8a1567279fb0166ef0e9e8a41271fac9c1cbb"),
    ("CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016592", "fdb76ad5272f074e07cc81509604fd163f2f8a9903d34b16ba6f078250373c51"),
)


class SampleDataError(RuntimeError, RadreviewError):
    """The sample study is not in the cache or mirror and could not be downloaded."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "radreview" / "sample-ct"




def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() and sha256_file(folder / name) == digest for name, digest in MANIFEST)


def sample_ct_path(allow_download: bool = True, timeout: float = 30.0) -> Path:
    """Folder holding the verified sample CT series.

    Raises
    ------
    SampleDataError
        If no verified copy is found and the download is disallowed or fails; the message says
        how to provide the data (``RADREVIEW_DATA_MIRROR``).
    """
    cache = cache_dir()
    if _complete(cache):
        return cache
    mirror = os.environ.get("RADREVIEW_DATA_MIRROR")
    if mirror:
        src = Path(mirror) / MIRROR_SUBDIR
        if _complete(src):
            return src
    problems = []
    if allow_download:
        tmp = cache.with_name(cache.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            for name, digest in MANIFEST:
                target = tmp / name
                with urllib.request.urlopen(BASE_URL + name, timeout=timeout) as resp, open(target, "wb") as out:
                    shutil.copyfileobj(resp, out)
                got = sha256_file(target)
                if got != digest:
                    raise SampleDataError(f"{name}: SHA-256 mismatch (expected {digest}, got {got})")
            shutil.rmtree(cache, ignore_errors=True)
            tmp.rename(cache)
            return cache
        except Exception as exc:  # network down, proxy, checksum
            problems.append(f"download failed: {exc}")
            shutil.rmtree(tmp, ignore_errors=True)
    raise SampleDataError(
        "sample CT not available"
        + (f" ({'; '.join(problems)})" if problems else "")
        + f". Put the 20 files of {BASE_URL} in {cache}, or set RADREVIEW_DATA_MIRROR to a folder "
        f"containing {MIRROR_SUBDIR}/ (e.g. the project's ../shared/data)."
    )
