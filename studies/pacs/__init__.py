"""PACS in and out: DICOMweb (QIDO-RS / WADO-RS / STOW-RS, dicomweb-client) and DIMSE
(C-ECHO / C-FIND / C-GET / C-MOVE / C-STORE, pynetdicom), GUI-free.

The functions here dispatch on the node's kind, so the command line and the GUI share one API:

>>> node = resolve_node("ORTHANC@127.0.0.1:4242")
>>> echo(node)                                     # seconds; raises PacsError
>>> find_studies(node, StudyQuery(patient_id="X"))  # list[StudyResult]
>>> for p in iter_retrieve(node, study_uid, series_uid, out_dir): ...   # RetrieveProgress

Every error is a :class:`PacsError` whose message names the node (never its credentials).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from pathlib import Path

from . import dicomweb, dimse
from .cache import CacheEntry, RetrieveCache
from .nodes import (
    DEFAULT_CALLING_AE, DEFAULT_TIMEOUT_S, PacsError, PacsNode, PacsSettings, config_path, load_settings,
    resolve_node, save_settings,
)
from .records import (
    InstanceResult, RetrieveProgress, SeriesResult, StudyQuery, StudyResult, middle_instance, parse_date_range,
)

__all__ = ["PacsNode", "PacsSettings", "PacsError", "StudyQuery", "StudyResult", "SeriesResult", "InstanceResult",
           "RetrieveProgress", "RetrieveCache", "CacheEntry", "config_path", "load_settings", "save_settings",
           "resolve_node", "echo", "find_studies", "find_series", "find_instances", "iter_retrieve", "store",
           "middle_instance", "parse_date_range", "DEFAULT_CALLING_AE", "DEFAULT_TIMEOUT_S", "METHODS"]

#: Retrieve methods: C-GET, C-MOVE to our storage SCP, WADO-RS; ``auto`` = C-GET or WADO-RS.
METHODS = ("auto", "get", "move", "wado")


def echo(node: PacsNode) -> float:
    """C-ECHO (DIMSE) or a QIDO-RS ping (DICOMweb); returns the round trip in seconds.

    Raises
    ------
    PacsError
        Refused, rejected, unauthorised, unreachable or timed out (node named).
    """
    t0 = time.perf_counter()
    if node.kind == "dimse":
        dimse.echo(node)
    else:
        dicomweb.ping(node)
    return time.perf_counter() - t0


def find_studies(node: PacsNode, query: StudyQuery) -> list[StudyResult]:
    """Study-level search (C-FIND or QIDO-RS), each with its series count and modalities."""
    return (dimse if node.kind == "dimse" else dicomweb).find_studies(node, query)


def find_series(node: PacsNode, study_uid: str) -> list[SeriesResult]:
    """Series of one study (C-FIND at SERIES level or QIDO-RS ``/studies/{uid}/series``).

    Raises
    ------
    PacsError
        Connection refused, timeout, association rejected, HTTP error; the message names the node.
    """
    return (dimse if node.kind == "dimse" else dicomweb).find_series(node, study_uid)


def find_instances(node: PacsNode, study_uid: str, series_uid: str) -> list[InstanceResult]:
    """Instances of one series with Instance Number and Image Position (Patient) (LPS mm)
    when the PACS returns them (C-FIND at IMAGE level or QIDO-RS).

    Raises
    ------
    PacsError
        As :func:`find_series`.
    """
    return (dimse if node.kind == "dimse" else dicomweb).find_instances(node, study_uid, series_uid)


def iter_retrieve(node: PacsNode, study_uid: str, series_uid: str | None, out: str | Path, method: str = "auto",
                  settings: PacsSettings | None = None, stream: bool = True) -> Generator[RetrieveProgress, None, int]:
    """Retrieve a study or one series into ``out`` (``out/<Series UID>/<SOP UID>.dcm``).

    ``stream=True`` (a series): an instance-level query first, so the total is known and the
    middle instance (by Image Position (Patient)) arrives first. Yields one
    :class:`RetrieveProgress` per file; closing the generator cancels (the association is
    aborted, the HTTP stream closed). Returns the number of instances written.

    Raises
    ------
    PacsError
        Any query or transfer failure; ValueError for a method that does not fit the node.
    """
    if method not in METHODS:
        raise ValueError(f"retrieve method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "auto":
        method = "get" if node.kind == "dimse" else "wado"
    if (method == "wado") != (node.kind == "dicomweb"):
        raise ValueError(f"{node.label()}: method {method!r} does not fit a {node.kind} node")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    instances = find_instances(node, study_uid, series_uid) if (stream and series_uid) else None
    if method == "wado":
        return (yield from dicomweb.iter_retrieve(node, study_uid, series_uid, out, instances))
    if method == "get":
        return (yield from dimse.iter_get(node, study_uid, series_uid, out, instances))
    settings = settings or load_settings()
    return (yield from dimse.iter_move(node, study_uid, series_uid, out, settings.scp_ae_title, settings.scp_port, instances))


def store(node: PacsNode, paths: list[str | Path]) -> list[str]:
    """C-STORE or STOW-RS the files; returns the SOP Instance UIDs stored.

    Raises
    ------
    PacsError
        A file is unreadable or the PACS refused it (file and node named).
    """
    files = [Path(p) for p in paths]
    for p in files:
        if not p.is_file():
            raise PacsError(f"{p}: no such file")
    return (dimse if node.kind == "dimse" else dicomweb).store(node, files)
