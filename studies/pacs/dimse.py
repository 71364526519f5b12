"""DIMSE client (pynetdicom): C-ECHO, C-FIND (Study Root), C-GET, C-MOVE to our own storage SCP
started on demand, and C-STORE.

Every failure raises :class:`~radreview.studies.pacs.nodes.PacsError` naming the node and the
cause — connection refused, no answer within the node's timeout, association rejected (called
or calling AE title not accepted), a refused or failed operation with its DIMSE status (PS3.4
Annex C) — within ``node.timeout`` seconds per step. Retrieval is a generator that yields a
:class:`RetrieveProgress` per file written; closing it aborts the association (cancel).
"""

from __future__ import annotations

import io
import logging
import queue
import socket
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless,
)

from .nodes import PacsError, PacsNode
from .records import InstanceResult, RetrieveProgress, SeriesResult, StudyQuery, StudyResult, middle_instance

__all__ = ["echo", "find_studies", "find_series", "find_instances", "iter_get", "iter_move", "store"]

log = logging.getLogger(__name__)
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its own error lines would duplicate ours

NATIVE = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
COMPRESSED = [JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, RLELossless, JPEG2000, JPEGBaseline8Bit,
              JPEGExtended12Bit, JPEGLSNearLossless, DeflatedExplicitVRLittleEndian]
ALL_TS = NATIVE + COMPRESSED

# SOP classes we ask to receive over C-GET (role selection; at most 128 presentation contexts).
# Image classes get one context per transfer syntax so the PACS can send files as stored.
IMAGE_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.2",      # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",    # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",      # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",    # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.128",    # Positron Emission Tomography Image Storage
    "1.2.840.10008.5.1.4.1.1.1",      # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",    # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.7",      # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.6.1",    # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.20",     # Nuclear Medicine Image Storage
]
OTHER_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.66.4",   # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.30",     # Parametric Map Storage
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR Storage
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR Storage
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR Storage
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document Storage
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set Storage
    "1.2.840.10008.5.1.4.1.1.11.1",   # Grayscale Softcopy Presentation State Storage
]

FIND = "1.2.840.10008.5.1.4.1.2.2.1"   # Study Root Query/Retrieve Information Model - FIND
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"   # ... - MOVE
GET = "1.2.840.10008.5.1.4.1.2.2.3"    # ... - GET
VERIFICATION = "1.2.840.10008.1.1"


def _ae(node: PacsNode, ae_title: str | None = None):
    from pynetdicom import AE

    ae = AE(ae_title=ae_title or node.calling_ae)
    t = node.timeout
    ae.connection_timeout = t
    ae.acse_timeout = t
    ae.dimse_timeout = t
    ae.network_timeout = t
    ae.maximum_pdu_size = 0  # no limit on what we receive: the peer sends PDUs as large as it can (16 KiB default: slow)
    return ae


def _precheck(node: PacsNode) -> None:
    """Fail fast, with the right words, when nothing listens or the host does not answer."""
    try:
        with socket.create_connection((node.host, node.port), timeout=node.timeout):
            pass
    except ConnectionRefusedError:
        raise PacsError(f"{node.label()}: connection refused (no DICOM service listening on {node.host}:{node.port})") from None
    except (socket.timeout, TimeoutError):
        raise PacsError(f"{node.label()}: no answer within {node.timeout:g} s (host unreachable or port filtered)") from None
    except OSError as exc:
        raise PacsError(f"{node.label()}: cannot connect to {node.host}:{node.port} ({exc.strerror or exc})") from None


def _associate(node: PacsNode, ae, **kw):
    _precheck(node)
    t0 = time.monotonic()
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, **kw)
    waited = time.monotonic() - t0
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise PacsError(f"{node.label()}: association rejected (called AE title {node.ae_title!r} or calling AE title "
                        f"{ae.ae_title!r} not accepted by the PACS)")
    if waited >= 0.9 * node.timeout:  # pynetdicom aborts itself when the ACSE timeout expires
        raise PacsError(f"{node.label()}: no association answer within {node.timeout:g} s")
    if assoc.is_aborted:
        # Orthanc closes right after its A-ASSOCIATE-RJ; pynetdicom may see that as an abort
        raise PacsError(f"{node.label()}: association rejected or aborted by the PACS (check called AE title "
                        f"{node.ae_title!r} and calling AE title {ae.ae_title!r})")
    raise PacsError(f"{node.label()}: no association answer within {node.timeout:g} s")


def _status_text(status: Dataset) -> str:
    if "Status" not in status:
        return "no response (connection closed or DIMSE timeout)"
    code = int(status.Status)
    known = {0xA700: "out of resources", 0xA701: "out of resources (sub-operations)", 0xA702: "out of resources (sub-operations)",
             0xA801: "move destination unknown", 0xA900: "identifier does not match SOP class",
             0xC000: "unable to process", 0xFE00: "cancelled", 0x0122: "SOP class not supported",
             0x0124: "refused: not authorised", 0xB000: "sub-operations completed with failures"}
    text = known.get(code, "failed")
    comment = status.get("ErrorComment", "")
    return f"{text} (status 0x{code:04X}{': ' + str(comment) if comment else ''})"


def echo(node: PacsNode) -> None:
    """C-ECHO ("Test connection").

    Raises
    ------
    PacsError
        Connection refused, timeout, association rejected or a non-success status.
    """
    ae = _ae(node)
    ae.add_requested_context(VERIFICATION)
    assoc = _associate(node, ae)
    try:
        status = assoc.send_c_echo()
        if "Status" not in status or int(status.Status) != 0:
            raise PacsError(f"{node.label()}: C-ECHO {_status_text(status)}")
    finally:
        assoc.release()


def _find(node: PacsNode, ident: Dataset) -> list[Dataset]:
    ae = _ae(node)
    ae.add_requested_context(FIND)
    assoc = _associate(node, ae)
    out = []
    try:
        if not any(cx.abstract_syntax == FIND for cx in assoc.accepted_contexts):
            raise PacsError(f"{node.label()}: the PACS does not accept Study Root C-FIND from {node.calling_ae!r}")
        for status, found in assoc.send_c_find(ident, FIND):
            code = int(status.Status) if "Status" in status else None
            if code in (0xFF00, 0xFF01):
                if found is not None:
                    out.append(found)
            elif code == 0x0000:
                break
            else:
                raise PacsError(f"{node.label()}: C-FIND {_status_text(status)}")
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _s(ds: Dataset, kw: str) -> str:
    v = ds.get(kw, "")
    return "" if v is None else str(v)


def find_studies(node: PacsNode, q: StudyQuery) -> list[StudyResult]:
    """C-FIND at STUDY level; series counts from Number of Study Related Series, or a SERIES-level
    C-FIND per study when the PACS does not return it."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = q.study_uid
    ident.PatientID = q.patient_id
    ident.PatientName = q.patient_name
    ident.AccessionNumber = q.accession
    ident.StudyDate = q.study_date
    ident.StudyTime = ""
    ident.ModalitiesInStudy = q.modality
    ident.StudyDescription = ""
    ident.NumberOfStudyRelatedSeries = None
    out = []
    for ds in _find(node, ident):
        mods = ds.get("ModalitiesInStudy", "") or ""
        mods = [str(m) for m in mods] if isinstance(mods, MultiValue) else ([str(mods)] if mods else [])
        n = ds.get("NumberOfStudyRelatedSeries", None)
        out.append(StudyResult(_s(ds, "StudyInstanceUID"), _s(ds, "PatientID"), _s(ds, "PatientName"), _s(ds, "StudyDate"),
                               _s(ds, "AccessionNumber"), mods, _s(ds, "StudyDescription"), int(n) if n not in (None, "") else None))
    for r in out:
        if r.series_count is None or not r.modalities:
            series = find_series(node, r.study_instance_uid)
            r.series_count = len(series)
            r.modalities = r.modalities or sorted({s.modality for s in series if s.modality})
    return out


def find_series(node: PacsNode, study_uid: str) -> list[SeriesResult]:
    """C-FIND at SERIES level within one study."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = study_uid
    ident.SeriesInstanceUID = ""
    ident.Modality = ""
    ident.SeriesDescription = ""
    ident.SeriesNumber = None
    ident.NumberOfSeriesRelatedInstances = None
    out = []
    for ds in _find(node, ident):
        n, num = ds.get("NumberOfSeriesRelatedInstances", None), ds.get("SeriesNumber", None)
        out.append(SeriesResult(study_uid, _s(ds, "SeriesInstanceUID"), _s(ds, "Modality"), _s(ds, "SeriesDescription"),
                                int(num) if num not in (None, "") else None, int(n) if n not in (None, "") else None))
    return out


def find_instances(node: PacsNode, study_uid: str, series_uid: str) -> list[InstanceResult]:
    """C-FIND at IMAGE level: SOP Instance UID, Instance Number and Image Position (Patient)."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = study_uid
    ident.SeriesInstanceUID = series_uid
    ident.SOPInstanceUID = ""  # no SOP Class UID: Orthanc would read every file for it (+0.4 s / 300 instances)
    ident.InstanceNumber = None
    ident.ImagePositionPatient = None
    out = []
    for ds in _find(node, ident):
        pos = ds.get("ImagePositionPatient", None)
        num = ds.get("InstanceNumber", None)
        out.append(InstanceResult(_s(ds, "SOPInstanceUID"), _s(ds, "SOPClassUID"), int(num) if num not in (None, "") else None,
                                  (float(pos[0]), float(pos[1]), float(pos[2])) if pos and len(pos) == 3 else None))
    return out


def _retrieve_requests(study_uid: str, series_uid: str | None, mid) -> list:
    """C-GET/C-MOVE identifiers of one retrieve: the middle instance first (IMAGE level, so the
    viewer can show it while the rest arrives) when the series and its instances are known,
    then the whole SERIES (or STUDY)."""
    requests = []
    if mid is not None and series_uid:
        requests.append(_ident("IMAGE", study_uid, series_uid, mid.sop_instance_uid))
    requests.append(_ident("SERIES" if series_uid else "STUDY", study_uid, series_uid))
    return requests


def _ident(level: str, study_uid: str, series_uid: str | None, sop_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study_uid
    if series_uid:
        ds.SeriesInstanceUID = series_uid
    if sop_uid:
        ds.SOPInstanceUID = sop_uid
    return ds


class _Receiver:
    """C-STORE handler: writes each received dataset as ``out/<SeriesUID>/<SOPInstanceUID>.dcm``."""

    def __init__(self, out: Path, series_uid: str | None = None) -> None:
        self.out = Path(out)
        self.series_uid = series_uid
        self.files: queue.Queue = queue.Queue()
        self.lock = threading.Lock()

    def handle(self, event) -> int:
        sop = event.request.AffectedSOPInstanceUID
        try:
            raw = event.encoded_dataset()
            series = self.series_uid
            if not series:  # a study-level retrieve: read just that element, not the whole dataset
                hdr = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
                series = str(hdr.get("SeriesInstanceUID", "series"))
            folder = self.out / series
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{sop}.dcm"
            tmp = path.with_suffix(".part")
            with open(tmp, "wb") as fh:
                fh.write(raw)
            tmp.replace(path)
        except OSError as exc:
            log.error("could not write received instance %s: %s", sop, exc)
            return 0xA700
        self.files.put((sop, path, len(raw)))
        return 0x0000


def _storage_roles(ae):
    from pynetdicom import build_role

    roles = []
    for uid in IMAGE_CLASSES:
        ae.add_requested_context(uid, NATIVE)
        for ts in COMPRESSED[:5]:
            ae.add_requested_context(uid, [ts])
        roles.append(build_role(uid, scp_role=True))
    for uid in OTHER_CLASSES:
        ae.add_requested_context(uid, NATIVE)
        roles.append(build_role(uid, scp_role=True))
    return roles


@dataclass
class _DrainState:
    """What one retrieve has received so far (shared by the IMAGE- and SERIES-level requests)."""

    seen: set[str] = field(default_factory=set)
    done: int = 0
    middle_sent: bool = False


def _drain(rx: _Receiver, state: _DrainState, middle_uid: str | None, total: int | None) -> Iterator[RetrieveProgress]:
    while True:
        try:
            sop, path, n = rx.files.get_nowait()
        except queue.Empty:
            return
        if sop in state.seen:
            continue
        state.seen.add(sop)
        state.done += 1
        mid = None
        if not state.middle_sent and (middle_uid is None or sop == middle_uid):
            state.middle_sent = True
            mid = path
        yield RetrieveProgress(state.done, total, path, mid, n)


def iter_get(node: PacsNode, study_uid: str, series_uid: str | None, out: Path,
             instances: list[InstanceResult] | None = None) -> Generator[RetrieveProgress, None, int]:
    """C-GET a study or series into ``out`` (one folder per series). With ``instances`` (from
    :func:`find_instances`) the middle instance is fetched first (IMAGE-level C-GET) so it can be
    shown at once; then the rest. Returns the number of instances received.

    Raises
    ------
    PacsError
        Association or C-GET failure (status and node named).
    """
    from pynetdicom import evt

    rx = _Receiver(out, series_uid)
    ae = _ae(node)
    ae.add_requested_context(GET)
    roles = _storage_roles(ae)
    assoc = _associate(node, ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, rx.handle)])
    total = len(instances) if instances is not None else None
    mid = middle_instance(instances) if instances else None
    state = _DrainState()
    try:
        for ident in _retrieve_requests(study_uid, series_uid, mid):
            for status, _ in assoc.send_c_get(ident, GET):
                yield from _drain(rx, state, mid.sop_instance_uid if mid else None, total)
                if "Status" not in status:
                    raise PacsError(f"{node.label()}: C-GET {_status_text(status)}")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01):
                    if total is None and "NumberOfRemainingSuboperations" in status:
                        total = int(status.NumberOfRemainingSuboperations) + int(status.get("NumberOfCompletedSuboperations", 0) or 0)
                    continue
                if code == 0x0000:
                    break
                if code == 0xB000:
                    raise PacsError(f"{node.label()}: C-GET {_status_text(status)}: "
                                    f"{int(status.get('NumberOfFailedSuboperations', 0) or 0)} instance(s) failed")
                raise PacsError(f"{node.label()}: C-GET {_status_text(status)}")
        yield from _drain(rx, state, None, total)
    finally:
        if assoc.is_established:
            if state.done and (total is None or state.done >= total):
                assoc.release()
            else:
                assoc.abort()  # cancelled or failed midway
    return state.done


def iter_move(node: PacsNode, study_uid: str, series_uid: str | None, out: Path, scp_ae_title: str,
              scp_port: int, instances: list[InstanceResult] | None = None) -> Generator[RetrieveProgress, None, int]:
    """C-MOVE to our own storage SCP (``scp_ae_title`` on ``scp_port``, started for this
    retrieve and stopped after). The PACS must know that AE title as a move destination.

    Raises
    ------
    PacsError
        SCP port busy, association failure, "move destination unknown" or another status.
    """
    from pynetdicom import AllStoragePresentationContexts, evt

    rx = _Receiver(out, series_uid)
    scp = _ae(node, scp_ae_title)
    for cx in AllStoragePresentationContexts:
        scp.add_supported_context(cx.abstract_syntax, ALL_TS)
    bind = "127.0.0.1" if node.host in ("127.0.0.1", "localhost", "::1") else ""
    try:
        server = scp.start_server((bind, scp_port), block=False, evt_handlers=[(evt.EVT_C_STORE, rx.handle)])
    except OSError as exc:
        raise PacsError(f"{node.label()}: cannot start our storage SCP {scp_ae_title}@{bind or '*'}:{scp_port} ({exc})") from None
    try:
        ae = _ae(node)
        ae.add_requested_context(MOVE)
        assoc = _associate(node, ae)
        total = len(instances) if instances is not None else None
        mid = middle_instance(instances) if instances else None
        state = _DrainState()
        try:
            for ident in _retrieve_requests(study_uid, series_uid, mid):
                for status, _ in assoc.send_c_move(ident, scp_ae_title, MOVE):
                    code = int(status.Status) if "Status" in status else None
                    if total is None and code == 0xFF00 and "NumberOfRemainingSuboperations" in status:
                        total = int(status.NumberOfRemainingSuboperations) + int(status.get("NumberOfCompletedSuboperations", 0) or 0)
                    yield from _drain(rx, state, mid.sop_instance_uid if mid else None, total)
                    if code in (0xFF00, 0xFF01):
                        continue
                    if code == 0x0000:
                        break
                    raise PacsError(f"{node.label()}: C-MOVE to {scp_ae_title!r} {_status_text(status)}")
            yield from _drain(rx, state, None, total)
        finally:
            if assoc.is_established:
                assoc.release() if state.done else assoc.abort()
    finally:
        server.shutdown()
    return state.done


def store(node: PacsNode, paths: list[Path]) -> list[str]:
    """C-STORE each file (its own transfer syntax, Explicit VR Little Endian as fallback);
    returns the SOP Instance UIDs stored.

    Raises
    ------
    PacsError
        A file is not DICOM, or the PACS refused an instance (status and file named).
    """
    import pydicom

    metas = []
    for p in paths:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            metas.append((Path(p), str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
            raise PacsError(f"{p}: not a DICOM file that can be stored ({exc})") from None
    ae = _ae(node)
    pairs = sorted({(c, t) for _, c, _, t in metas})
    seen = set()
    for c, t in pairs:
        ts = [t] + [x for x in NATIVE if x != t]
        if (c, tuple(ts)) not in seen:
            ae.add_requested_context(c, ts)
            seen.add((c, tuple(ts)))
    if len(seen) > 128:
        raise PacsError(f"{node.label()}: too many SOP class / transfer syntax combinations ({len(seen)}) for one association")
    assoc = _associate(node, ae)
    stored = []
    try:
        for p, _, sop, _ in metas:
            status = assoc.send_c_store(p)
            code = int(status.Status) if "Status" in status else None
            if code is None or not (code == 0 or 0xB000 <= code <= 0xB007):
                raise PacsError(f"{node.label()}: C-STORE of {p} {_status_text(status) if code is not None else 'got no response'}")
            stored.append(sop)
    finally:
        if assoc.is_established:
            assoc.release()
    return stored
