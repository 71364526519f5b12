"""A real Orthanc PACS on loopback ports for the PACS tests and the benchmark.

:class:`OrthancServer` writes a temporary configuration (storage and index in a temp folder,
``RemoteAccessAllowed: false``, the DICOMweb plugin, HTTP basic authentication, called-AE
checking, our storage SCP declared as a C-MOVE destination), starts ``/usr/sbin/Orthanc``,
waits for ``/system`` and always stops it (context manager). Nothing but 127.0.0.1 is used.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "radreview", "loopback-test-secret"


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (binary or DICOMweb plugin absent), else None."""
    if not Path(ORTHANC).is_file():
        return f"Orthanc binary not found ({ORTHANC}); install the Debian packages orthanc and orthanc-dicomweb"
    if not Path(DICOMWEB_PLUGIN).is_file():
        return f"Orthanc DICOMweb plugin not found ({DICOMWEB_PLUGIN}); install orthanc-dicomweb"
    return None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test/benchmark process dies, even if it crashes
    (Linux ``prctl(PR_SET_PDEATHSIG)``), so no Orthanc outlives its run."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """Orthanc on 127.0.0.1 with its own temp folder. Use as ``with OrthancServer(tmp) as srv:``.

    ``modalities`` maps an AE title to its loopback port (C-MOVE destinations, and callers
    allowed to C-FIND / C-GET / C-MOVE).
    """

    def __init__(self, folder: Path, aet: str = "ORTHANC", modalities: dict[str, int] | None = None) -> None:
        self.folder = Path(folder)
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.modalities = modalities or {}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        return {
            "Name": "radreview-test", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": self.aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD}, "DicomCheckCalledAet": True,
            "DicomModalities": {aet: [aet, "127.0.0.1", port] for aet, port in self.modalities.items()},
            "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
            "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StorageCompression": False, "HttpCompressionEnabled": False, "ConcurrentJobs": 2,
            "HttpsCACertificates": "", "StableAge": 1, "LogExportedResources": False,
        }

    def _auth(self) -> dict:
        tok = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return {"Authorization": f"Basic {tok}"}

    def request(self, path: str, data: bytes | None = None, method: str | None = None, timeout: float = 30) -> bytes:
        req = urllib.request.Request(self.url + path, data=data, headers=self._auth(), method=method)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def start(self, timeout: float = 30.0) -> "OrthancServer":
        why = orthanc_missing()
        if why:
            raise RuntimeError(why)
        self.folder.mkdir(parents=True, exist_ok=True)
        cfg = self.folder / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        self.log = open(self.folder / "orthanc.log", "wb")
        self.proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=self.log, stderr=subprocess.STDOUT, cwd=self.folder,
                                     preexec_fn=_die_with_parent)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.folder / 'orthanc.log'}")
            try:
                self.request("/system", timeout=2)
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer /system within {timeout} s; see {self.folder / 'orthanc.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def upload(self, paths) -> list[str]:
        """POST each file to ``/instances`` (Orthanc's REST API); returns the Orthanc instance ids."""
        ids = []
        for p in paths:
            ids.append(json.loads(self.request("/instances", Path(p).read_bytes()))["ID"])
        return ids

    def studies(self) -> list[str]:
        return json.loads(self.request("/studies"))

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- pytest fixtures (import them)
import pytest  # noqa: E402

SCP_AET = "RADREVIEW"
CHEST = "ct-chest-tumor/series_B40f"


def abdomen_with_uids(data_dir: Path, out: Path) -> tuple[Path, str, str]:
    """The sample abdominal CT (JPEG 2000 lossless, as shipped) with the Study/Series Instance
    UIDs, Patient ID, name and Accession Number it lacks, written to ``out``."""
    import pydicom
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted((data_dir / "ct-abdomen-dicom" / "series").iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        if not ds.get("SOPInstanceUID"):  # the shipped files carry it only in their names
            ds.SOPInstanceUID = f.name.removeprefix("CT.")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID = ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID
        ds.PatientID, ds.PatientName, ds.AccessionNumber = "RR-ABD-001", "Abdomen^Test", "ACC0001"
        ds.StudyDescription, ds.SeriesDescription = "CT abdomen (radreview test)", "abdomen 2 mm"
        ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return out, study, series


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, data_dir):
    """A running loopback Orthanc holding the abdomen CT and the chest CT (series B40f).

    Yields ``(server, info)``; ``info`` has ``scp_port`` (our C-MOVE destination, AE
    ``RADREVIEW``), ``abdomen`` (study, series UIDs) and ``chest`` (study, series UIDs).
    Module-scoped (each test module that imports it gets its own server, stopped after the
    module). Skips with a clear message only when the Orthanc binary or plugin is missing.
    """
    why = orthanc_missing()
    if why:  # the issue allows a clear skip where Orthanc is missing, but never in CI, which installs it
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    import pydicom

    root = tmp_path_factory.mktemp("orthanc")
    scp_port = free_port()
    srv = OrthancServer(root / "server", modalities={SCP_AET: scp_port, "RRMOVE2": free_port()})
    srv.start()
    try:
        abd_dir, abd_study, abd_series = abdomen_with_uids(data_dir, root / "abdomen")
        srv.upload(sorted(abd_dir.iterdir()))
        chest_files = sorted((data_dir / CHEST).iterdir())
        srv.upload(chest_files)
        c = pydicom.dcmread(chest_files[0], stop_before_pixels=True)
        info = {"scp_port": scp_port, "abdomen": (abd_study, abd_series), "abdomen_dir": abd_dir,
                "chest": (str(c.StudyInstanceUID), str(c.SeriesInstanceUID)), "chest_files": chest_files}
        yield srv, info
    finally:
        srv.stop()
