"""DICOMweb client (dicomweb-client): QIDO-RS search, WADO-RS retrieve, STOW-RS store.

Authentication is HTTP basic or bearer (from the node), TLS verification as configured, and
every request is bounded by ``node.timeout`` seconds. Failures raise
:class:`~radreview.studies.pacs.nodes.PacsError` naming the node and cause (HTTP status such as
401, connection refused, timeout) and never the credentials. Instances are requested in the
transfer syntax the PACS stores (``transfer-syntax=*``), so nothing is transcoded on the way.
"""

from __future__ import annotations

import io
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom import Dataset

from .nodes import PacsError, PacsNode
from .records import InstanceResult, RetrieveProgress, SeriesResult, StudyQuery, StudyResult, middle_instance

__all__ = ["client", "ping", "find_studies", "find_series", "find_instances", "iter_retrieve", "store"]

AS_STORED = (("application/dicom", "*"),)


def client(node: PacsNode):
    """A ``dicomweb_client.DICOMwebClient`` for the node (session with auth and TLS settings)."""
    import requests
    from dicomweb_client import DICOMwebClient

    s = requests.Session()
    s.verify = node.verify_tls
    s.trust_env = False  # never route a configured PACS through an environment proxy
    if node.auth == "basic":
        s.auth = (node.username, node.password)
    elif node.auth == "bearer":
        s.headers["Authorization"] = f"Bearer {node.token}"
    c = DICOMwebClient(node.url, session=s, timeout=node.timeout)
    c.set_http_retry_params(retry=False)  # its default retries 5x with back-off: errors must come within the timeout
    return c


@contextmanager
def _errors(node: PacsNode, what: str):
    import requests

    try:
        yield
    except requests.exceptions.HTTPError as exc:
        code: int | str = exc.response.status_code if exc.response is not None else "?"
        reason = exc.response.reason if exc.response is not None else ""
        hints: dict[int | str, str] = {401: " (authentication required or wrong credentials)",
                                       403: " (not allowed for this user)", 404: " (not found on the PACS)"}
        hint = hints.get(code, "")
        raise PacsError(f"{node.label()}: {what} failed: HTTP {code} {reason}{hint}") from None
    except requests.exceptions.Timeout:
        raise PacsError(f"{node.label()}: {what}: no answer within {node.timeout:g} s") from None
    except requests.exceptions.SSLError as exc:
        raise PacsError(f"{node.label()}: {what}: TLS verification failed ({type(exc).__name__})") from None
    except requests.exceptions.ConnectionError as exc:
        text = str(exc)
        why = "connection refused" if "refused" in text.lower() else "cannot connect"
        raise PacsError(f"{node.label()}: {what}: {why}") from None
    except (ValueError, KeyError) as exc:  # malformed DICOM JSON / multipart from the server
        raise PacsError(f"{node.label()}: {what}: unexpected answer from the server ({exc})") from None


def _ds(d: dict) -> Dataset:
    return Dataset.from_json(d)


def _s(ds: Dataset, kw: str) -> str:
    v = ds.get(kw, "")
    return "" if v is None else str(v)


def ping(node: PacsNode) -> None:
    """A QIDO-RS study search with ``limit=1`` ("Test connection")."""
    with _errors(node, "QIDO-RS ping"):
        client(node).search_for_studies(limit=1)


def find_studies(node: PacsNode, q: StudyQuery) -> list[StudyResult]:
    """QIDO-RS ``/studies`` with the query's matching keys."""
    filters = {k: v for k, v in (("PatientID", q.patient_id), ("PatientName", q.patient_name),
                                 ("AccessionNumber", q.accession), ("StudyDate", q.study_date),
                                 ("ModalitiesInStudy", q.modality), ("StudyInstanceUID", q.study_uid)) if v}
    fields = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "PatientName", "AccessionNumber"]
    with _errors(node, "QIDO-RS study search"):
        rows = client(node).search_for_studies(search_filters=filters, fields=fields)
    out = []
    for d in rows:
        ds = _ds(d)
        mods = ds.get("ModalitiesInStudy", "") or ""
        mods = [mods] if isinstance(mods, str) else [str(m) for m in mods]
        n = ds.get("NumberOfStudyRelatedSeries", None)
        out.append(StudyResult(_s(ds, "StudyInstanceUID"), _s(ds, "PatientID"), _s(ds, "PatientName"), _s(ds, "StudyDate"),
                               _s(ds, "AccessionNumber"), [m for m in mods if m], _s(ds, "StudyDescription"),
                               int(n) if n not in (None, "") else None))
    for r in out:
        if r.series_count is None:
            r.series_count = len(find_series(node, r.study_instance_uid))
    return out


def find_series(node: PacsNode, study_uid: str) -> list[SeriesResult]:
    """QIDO-RS ``/studies/{uid}/series``."""
    with _errors(node, "QIDO-RS series search"):
        rows = client(node).search_for_series(study_uid, fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"])
    out = []
    for d in rows:
        ds = _ds(d)
        n, num = ds.get("NumberOfSeriesRelatedInstances", None), ds.get("SeriesNumber", None)
        out.append(SeriesResult(study_uid, _s(ds, "SeriesInstanceUID"), _s(ds, "Modality"), _s(ds, "SeriesDescription"),
                                int(num) if num not in (None, "") else None, int(n) if n not in (None, "") else None))
    return out


def find_instances(node: PacsNode, study_uid: str, series_uid: str) -> list[InstanceResult]:
    """QIDO-RS ``/studies/{uid}/series/{uid}/instances`` with Image Position (Patient)."""
    with _errors(node, "QIDO-RS instance search"):
        rows = client(node).search_for_instances(study_uid, series_uid, fields=["ImagePositionPatient"])
    out = []
    for d in rows:
        ds = _ds(d)
        pos = ds.get("ImagePositionPatient", None)
        num = ds.get("InstanceNumber", None)
        out.append(InstanceResult(_s(ds, "SOPInstanceUID"), _s(ds, "SOPClassUID"), int(num) if num not in (None, "") else None,
                                  (float(pos[0]), float(pos[1]), float(pos[2])) if pos and len(pos) == 3 else None))
    return out


def _write(out: Path, ds: Dataset) -> tuple[Path, int]:
    folder = Path(out) / str(ds.get("SeriesInstanceUID", "series"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    tmp = path.with_suffix(".part")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path, path.stat().st_size


def _write_raw(out: Path, series_uid: str, sop_uid: str, raw: bytes) -> Path:
    folder = Path(out) / series_uid
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sop_uid}.dcm"
    tmp = path.with_suffix(".part")
    tmp.write_bytes(raw)
    tmp.replace(path)
    return path


def _iter_series_raw(c, node: PacsNode, study_uid: str, series_uid: str) -> Iterator[bytes]:
    """The series' instances as the PACS sends them (Part 10 bytes, streamed multipart), written
    without a decode/re-encode round trip. Uses dicomweb-client's multipart decoder; falls back
    to its public ``iter_series`` (decoded datasets, re-encoded) if that is unavailable."""
    if hasattr(c, "_http_get") and hasattr(c, "_decode_multipart_message"):
        url = f"{node.url}/studies/{study_uid}/series/{series_uid}"
        headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        resp = c._http_get(url, headers=headers, stream=True)
        if resp.headers.get("Content-Type", "").startswith("application/dicom"):
            yield resp.content
            return
        yield from c._decode_multipart_message(resp, stream=True)
        return
    for ds in c.iter_series(study_uid, series_uid, media_types=AS_STORED):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        yield buf.getvalue()


def iter_retrieve(node: PacsNode, study_uid: str, series_uid: str | None, out: Path,
                  instances: list[InstanceResult] | None = None) -> Generator[RetrieveProgress, None, int]:
    """WADO-RS a series (streamed multipart, one progress per instance) or a whole study
    (series by series). With ``instances`` the middle one is fetched first so it can be shown
    at once. Returns the number of instances written."""
    c = client(node)
    done, seen = 0, set()
    total = len(instances) if instances is not None else None
    mid = middle_instance(instances) if instances else None
    if series_uid is None:
        series_list = [s.series_instance_uid for s in find_series(node, study_uid)]
    else:
        series_list = [series_uid]
    middle_sent = False
    if mid is not None and series_uid:
        with _errors(node, "WADO-RS instance retrieve"):
            ds = c.retrieve_instance(study_uid, series_uid, mid.sop_instance_uid, media_types=AS_STORED)
        path, n = _write(out, ds)
        seen.add(mid.sop_instance_uid)
        done += 1
        middle_sent = True
        yield RetrieveProgress(done, total, path, path, n)
    for suid in series_list:
        with _errors(node, "WADO-RS series retrieve"):
            for raw in _iter_series_raw(c, node, study_uid, suid):
                hdr = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True,
                                      specific_tags=["SOPInstanceUID", "SeriesInstanceUID"])
                if hdr.SOPInstanceUID in seen:
                    continue
                seen.add(hdr.SOPInstanceUID)
                path = _write_raw(out, str(hdr.get("SeriesInstanceUID", suid)), str(hdr.SOPInstanceUID), raw)
                done += 1
                first = not middle_sent
                middle_sent = True
                yield RetrieveProgress(done, total, path, path if first else None, len(raw))
    return done


def store(node: PacsNode, paths: list[Path]) -> list[str]:
    """STOW-RS the files (one request); returns the SOP Instance UIDs the PACS reports stored.

    Raises
    ------
    PacsError
        A file is not DICOM, the request failed, or the PACS lists failed instances.
    """
    import pydicom

    dss = []
    for p in paths:
        try:
            dss.append(pydicom.dcmread(p))
        except Exception as exc:  # noqa: BLE001
            raise PacsError(f"{p}: not a DICOM file that can be stored ({exc})") from None
    with _errors(node, "STOW-RS store"):
        resp = client(node).store_instances(dss)
    failed = resp.get("FailedSOPSequence", None) if resp is not None else None
    if failed:
        uids = ", ".join(str(it.get("ReferencedSOPInstanceUID", "?")) for it in failed)
        raise PacsError(f"{node.label()}: STOW-RS refused {len(failed)} instance(s): {uids}")
    ok = resp.get("ReferencedSOPSequence", []) if resp is not None else []
    return [str(it.ReferencedSOPInstanceUID) for it in ok] or [str(d.SOPInstanceUID) for d in dss]
