"""Where a shadow deployment's studies come from, and the series attributes its rules and
subgroups use.

Sources (``radreview shadow run --source``):

``DIR`` (:class:`FolderSource`)
    Every DICOM series under a folder (recursive), found with :func:`radreview.studies.scan`;
    files that are not DICOM, or not usable, are recorded as skipped with their reason. A worker
    reads the series' files from the same path (a folder shared between machines).
``orthanc+http://HOST:PORT`` (:class:`OrthancSource`)
    Orthanc's REST changes feed (``GET /changes?since=N``, ``StableSeries`` events), resumed after
    a restart from the last sequence number, kept in the ledger. Credentials come from
    ``RADREVIEW_ORTHANC_USER`` / ``RADREVIEW_ORTHANC_PASSWORD`` (never from the command line, never
    stored). A worker downloads the series itself (``GET /series/{id}/archive``).
``dicom://AET@HOST:PORT`` (:class:`DicomNodeSource`)
    A DICOM node over a date range (``--since``): C-FIND of the studies, then of their series; a
    worker retrieves its series with C-GET. Series-level C-FIND returns Modality, Series
    Description and the number of instances only, so a rule on body part or slice thickness does
    not match a series from such a source (the reason says the attribute is missing).

Each source yields :class:`Arrival` items: a series (UIDs, attributes, where a worker fetches it)
or a skipped file or series with its reason.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Iterator

from radreview.studies.errors import RadreviewError

__all__ = ["Arrival", "SourceError", "FolderSource", "OrthancSource", "DicomNodeSource", "open_source",
           "attrs_from_dataset", "orthanc_request"]


class SourceError(RuntimeError, RadreviewError):
    """A source that cannot be read now (unreachable, refused); the message names it."""


@dataclass
class Arrival:
    """One item from a source: a series to consider (``series_uid`` set), or something skipped
    (``skip_reason`` set, ``ident`` the series UID or path)."""

    series_uid: str = ""
    study_uid: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    ident: str = ""
    kind: str = "series"
    skip_reason: str = ""


def _num(v) -> float | None:
    try:
        f = float(v if not isinstance(v, (list, tuple)) else v[0])
    except (TypeError, ValueError, IndexError):
        return None
    return f if f == f else None


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def attrs_from_dataset(ds, slices: int) -> dict[str, Any]:
    """The attributes rules and report subgroups use, from one image's header (a pydicom
    Dataset, or a dict of keyword -> value as Orthanc's simplified tags give).

    Keys: ``modality``, ``body_part``, ``slices``, ``slice_thickness_mm``, ``description``,
    ``manufacturer``, ``scanner`` (Manufacturer's Model Name), ``kernel`` (Convolution Kernel),
    ``site`` (Institution Name), ``study_date`` (YYYYMMDD), ``contrast`` (Contrast/Bolus Agent
    present), ``pixel_spacing_mm`` (row spacing).
    """
    get = ds.get if hasattr(ds, "get") else (lambda k, d=None: getattr(ds, k, d))
    return {
        "modality": _text(get("Modality", "")), "body_part": _text(get("BodyPartExamined", "")).upper(),
        "slices": int(slices), "slice_thickness_mm": _num(get("SliceThickness")),
        "description": _text(get("SeriesDescription", "")), "manufacturer": _text(get("Manufacturer", "")),
        "scanner": _text(get("ManufacturerModelName", "")), "kernel": _text(get("ConvolutionKernel", "")),
        "site": _text(get("InstitutionName", "")), "study_date": _text(get("StudyDate", "")),
        "contrast": bool(_text(get("ContrastBolusAgent", ""))), "pixel_spacing_mm": _num(get("PixelSpacing")),
    }


class FolderSource:
    """Every DICOM series under ``path`` (one pass per :meth:`poll`)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.label = self.path
        if not os.path.isdir(self.path):
            raise SourceError(f"{path}: no such folder")

    def poll(self, ledger=None) -> Iterator[Arrival]:
        import pydicom

        from radreview.studies import scan

        result = scan(self.path)
        try:
            for sk in result.skipped:
                yield Arrival(ident=str(sk.path), kind="path", skip_reason=sk.reason)
            for e in result.series:
                ident = e.series_instance_uid or (e.files[0] if e.files else self.path)
                if not e.series_instance_uid:
                    yield Arrival(ident=str(ident), kind="path", skip_reason="no Series Instance UID (0020,000E)")
                    continue
                uid = e.series_instance_uid + (f"#{e.stack_label}" if e.stack_label else "")
                if not e.is_volume:
                    yield Arrival(ident=uid, skip_reason=f"not an image volume ({e.sop_class_name or e.kind})")
                    continue
                ds = pydicom.dcmread(e.files[0], stop_before_pixels=True)
                yield Arrival(series_uid=uid, study_uid=e.study_instance_uid, attrs=attrs_from_dataset(ds, len(e.frames)),
                              source={"kind": "files", "files": [os.path.abspath(f) for f in e.files],
                                      "series_uid": e.series_instance_uid})
        finally:
            result.cleanup()


def _orthanc_auth() -> dict[str, str]:
    user = os.environ.get("RADREVIEW_ORTHANC_USER", "")
    if not user:
        return {}
    tok = base64.b64encode(f"{user}:{os.environ.get('RADREVIEW_ORTHANC_PASSWORD', '')}".encode()).decode()
    return {"Authorization": f"Basic {tok}"}


def orthanc_request(base: str, path: str, timeout: float = 30.0, data: bytes | None = None) -> bytes:
    """GET ``base + path`` from Orthanc's REST API, or POST ``data`` there (basic authentication
    from the environment).

    Raises
    ------
    SourceError
        Unreachable, timed out, or an HTTP error (status named).
    """
    req = urllib.request.Request(base.rstrip("/") + path, data=data, headers=_orthanc_auth(),
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as exc:
        raise SourceError(f"Orthanc {base}{path}: HTTP {exc.code} {exc.reason}") from None
    except (OSError, TimeoutError) as exc:
        raise SourceError(f"Orthanc {base}: unreachable ({exc})") from None


class OrthancSource:
    """Orthanc's changes feed; the cursor (last ``Seq`` done) lives in the ledger's meta table."""

    def __init__(self, url: str) -> None:
        base = url[len("orthanc+"):] if url.startswith("orthanc+") else url
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"{url}: expected orthanc+http://HOST:PORT")
        self.base = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") + parts.path.rstrip("/")
        self.label = f"orthanc+{self.base}"
        self.cursor_key = f"cursor:{self.label}"

    def _json(self, path: str) -> Any:
        return json.loads(orthanc_request(self.base, path))

    def poll(self, ledger) -> Iterator[Arrival]:
        """Every ``StableSeries`` change after the stored cursor; the cursor advances after each
        page of changes has been handed over (so a restart resumes where it stopped)."""
        since = int(ledger.get_meta(self.cursor_key, "0") or 0)
        while True:
            page = self._json(f"/changes?since={since}&limit=100")
            for ch in page.get("Changes", []):
                if ch.get("ChangeType") == "StableSeries":
                    yield self._arrival(ch["ID"])
            last = int(page.get("Last", since))
            if last != since:
                ledger.set_meta(self.cursor_key, str(last))
                since = last
            if page.get("Done", True):
                return

    def _arrival(self, orthanc_id: str) -> Arrival:
        s = self._json(f"/series/{orthanc_id}")
        uid = s.get("MainDicomTags", {}).get("SeriesInstanceUID", "")
        study = self._json(f"/studies/{s['ParentStudy']}")
        study_uid = study.get("MainDicomTags", {}).get("StudyInstanceUID", "")
        if not uid:
            return Arrival(ident=f"orthanc series {orthanc_id}", kind="path",
                           skip_reason="no Series Instance UID (0020,000E)")
        inst = s.get("Instances") or []
        tags = self._json(f"/instances/{inst[0]}/simplified-tags") if inst else {}
        attrs = attrs_from_dataset(tags, len(inst))
        return Arrival(series_uid=uid, study_uid=study_uid, attrs=attrs,
                       source={"kind": "orthanc", "url": self.base, "id": orthanc_id, "series_uid": uid})


_DICOM_RE = re.compile(r"^dicom://(?P<node>[^@/]+@[^:/]+:\d+)/?$")


class DicomNodeSource:
    """A DICOM node's studies from ``since`` (YYYY-MM-DD or YYYYMMDD) to today (one pass)."""

    def __init__(self, url: str, since: str | None = None) -> None:
        m = _DICOM_RE.match(url)
        if not m:
            raise SourceError(f"{url}: expected dicom://AET@HOST:PORT")
        self.node_text = m["node"]
        self.label = url
        self.since = (since or "").replace("-", "")
        if self.since and not re.fullmatch(r"\d{8}", self.since):
            raise SourceError(f"--since {since!r}: expected a date YYYY-MM-DD")

    def poll(self, ledger=None) -> Iterator[Arrival]:
        from radreview.studies.pacs import PacsError, StudyQuery, find_series, find_studies, resolve_node

        try:
            node = resolve_node(self.node_text)
            rng = f"{self.since}-{date.today():%Y%m%d}" if self.since else ""
            studies = find_studies(node, StudyQuery(study_date=rng))
            for st in studies:
                for se in find_series(node, st.study_instance_uid):
                    attrs = {"modality": se.modality, "description": se.description, "slices": se.instance_count or 0,
                             "study_date": getattr(st, "study_date", "") or ""}
                    yield Arrival(series_uid=se.series_instance_uid, study_uid=st.study_instance_uid, attrs=attrs,
                                  source={"kind": "dicom", "node": self.node_text, "study_uid": st.study_instance_uid,
                                          "series_uid": se.series_instance_uid})
        except PacsError as exc:
            raise SourceError(f"{self.label}: {exc}") from None


def open_source(text: str, since: str | None = None):
    """The source object for a ``--source`` value (a folder, ``orthanc+http://...`` or
    ``dicom://AET@HOST:PORT``).

    Raises
    ------
    SourceError
        Not one of those forms, or a folder that does not exist.
    """
    if text.startswith("orthanc+"):
        return OrthancSource(text)
    if text.startswith("dicom://"):
        return DicomNodeSource(text, since)
    if "://" in text:
        raise SourceError(f"{text}: a source is a folder, orthanc+http://HOST:PORT or dicom://AET@HOST:PORT")
    return FolderSource(text)
