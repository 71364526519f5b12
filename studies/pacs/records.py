"""Query keys, query results and retrieve progress shared by the DIMSE and DICOMweb clients."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["StudyQuery", "StudyResult", "SeriesResult", "InstanceResult", "RetrieveProgress", "middle_instance",
           "parse_date_range"]


def parse_date_range(text: str | None) -> str:
    """``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, ``YYYYMMDD-`` or ``-YYYYMMDD`` (DICOM range matching,
    PS3.4 C.2.2.2.5); returns it unchanged after checking.

    Raises
    ------
    ValueError
        Anything else.
    """
    if not text:
        return ""
    if not re.fullmatch(r"(\d{8})?(-(\d{8})?)?", text) or text == "-":
        raise ValueError(f"study date must be YYYYMMDD or YYYYMMDD-YYYYMMDD, got {text!r}")
    return text


@dataclass
class StudyQuery:
    """Study-level matching keys (empty = universal match). ``patient_name`` may use ``*`` and
    ``?`` wildcards; ``study_date`` is a DICOM date range; ``modality`` matches Modalities in Study."""

    patient_id: str = ""
    patient_name: str = ""
    accession: str = ""
    study_date: str = ""
    modality: str = ""
    study_uid: str = ""

    def __post_init__(self) -> None:
        self.study_date = parse_date_range(self.study_date)


@dataclass
class StudyResult:
    """One study-level match (C-FIND or QIDO-RS): its UID, patient, ``study_date``
    (``YYYYMMDD``), accession, modalities in the study, description and ``series_count``
    (None when the PACS did not say)."""

    study_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    accession: str = ""
    modalities: list[str] = field(default_factory=list)
    description: str = ""
    series_count: int | None = None

    def as_dict(self) -> dict:
        """The ``radreview pacs find --json`` row."""
        return {"study_instance_uid": self.study_instance_uid, "patient_id": self.patient_id,
                "study_date": self.study_date, "modalities": self.modalities, "description": self.description,
                "series_count": self.series_count, "patient_name": self.patient_name, "accession": self.accession}


@dataclass
class SeriesResult:
    """One series-level match: UIDs, modality, description, Series Number (``number``) and
    ``instance_count`` (None when the PACS did not say)."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    instance_count: int | None = None


@dataclass
class InstanceResult:
    """One instance; ``position`` is Image Position (Patient) in LPS mm when the PACS returns it."""

    sop_instance_uid: str
    sop_class_uid: str = ""
    number: int | None = None
    position: tuple[float, float, float] | None = None


def middle_instance(instances: list[InstanceResult]) -> InstanceResult | None:
    """The instance in the middle of the stack: sorted by Image Position (Patient) along the
    dominant axis when every instance has one, else by Instance Number, else as listed."""
    if not instances:
        return None
    pts = [i.position for i in instances if i.position is not None]
    nums = [i.number for i in instances if i.number is not None]
    if len(pts) == len(instances):
        spread = [max(p[a] for p in pts) - min(p[a] for p in pts) for a in range(3)]
        axis = spread.index(max(spread))
        ordered = [i for _, i in sorted(zip((p[axis] for p in pts), instances), key=lambda t: t[0])]
    elif len(nums) == len(instances):
        ordered = [i for _, i in sorted(zip(nums, instances), key=lambda t: t[0])]
    else:
        ordered = list(instances)
    return ordered[len(ordered) // 2]


@dataclass
class RetrieveProgress:
    """Yielded once per file received: ``done`` of ``total`` (None when unknown) instances, the
    file just written, and ``middle`` (the middle instance's file) on the first progress after it
    arrived, so a viewer can show it before the rest."""

    done: int
    total: int | None
    path: Path | None = None
    middle: Path | None = None
    bytes: int = 0
