"""De-identified export: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

Implemented with pydicom and the profile's own table (:mod:`radreview.studies._annex_e`,
PS3.15 Table E.1-1, 456 attributes plus the repeating curve/overlay groups), applied at every
nesting level:

- ``X`` remove; ``Z`` zero length (Patient's Name and Patient ID get a pseudonym instead, which
  the profile allows); ``D`` dummy value of the element's VR; the combinations ``X/Z``,
  ``X/D``, ``Z/D``, ``X/Z/D`` are applied as their strongest *kept* form (zero length or dummy),
  so Type 1/2 attributes stay valid; sequences marked ``D`` or ``X/Z/U*`` are kept and their
  items de-identified recursively.
- ``U``: every UID is replaced by a ``2.25.`` UID derived from a secret key and the original
  (SHA-256), so the same original maps to the same new UID across a study, a series of calls
  and the file meta (Media Storage SOP Instance UID); references stay consistent. Beyond the
  table, any other UI element whose value is not a registered UID (SOP classes, transfer
  syntaxes and coding schemes are kept) is remapped, and any other PN element is emptied.
- Private attributes (odd groups) are removed.
- Dates: **Retain Longitudinal Temporal Information** — *Modified Dates* option by default
  (every DA/DT value shifted by a per-patient number of days derived from the key; times
  kept), or *Full Dates* with ``keep_dates=True``. Patient's Birth Date is always emptied.
- Patient Identity Removed (0012,0062) = YES, De-identification Method (0012,0063) and its
  code sequence (0012,0064: DCM 113100 plus 113106 or 113107), Longitudinal Temporal
  Information Modified (0028,0303).
- Burned In Annotation (0028,0301) = YES (or absent on modalities that often burn text in)
  gives a warning naming the file: pixel data are **not** cleaned.

Not implemented: the Clean Pixel Data, Clean Descriptors and Clean Structured Content options
(free text inside SR content items is kept).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, UID_dictionary

from ._annex_e import parse

__all__ = ["DeidOptions", "DeidReport", "Deidentifier", "deidentify_files", "PROFILE_TABLE", "PROFILE_MASKED",
           "REMOVE_OR_REPLACE"]

PROFILE_TABLE, PROFILE_MASKED = parse()
#: Every tag the Basic Profile removes or replaces (all rows of Table E.1-1 but none is ``K``).
REMOVE_OR_REPLACE = frozenset(PROFILE_TABLE)

BIRTH = {0x00100030, 0x00100032}  # Patient's Birth Date / Time: never kept by a dates option
PATIENT_NAME, PATIENT_ID = 0x00100010, 0x00100020
BURNED_IN_RISK = {"US", "SC", "XA", "RF", "OT", "ES", "XC", "DOC"}

CODES = {"basic": ("113100", "Basic Application Confidentiality Profile"),
         "full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
         "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")}


@dataclass
class DeidOptions:
    """``keep_dates``: Full Dates option (else Modified Dates: shifted). ``key``: secret for the
    UID remapping and pseudonyms (random per run when empty; pass the same key to keep UIDs and
    pseudonyms consistent across runs). ``date_shift_days``: fixed shift (default: per patient,
    -365..-3999 days, from the key)."""

    keep_dates: bool = False
    key: str = ""
    date_shift_days: int | None = None

    def __post_init__(self) -> None:
        if not self.key:
            self.key = secrets.token_hex(16)


@dataclass
class DeidReport:
    """What :func:`deidentify_files` did: the files ``written``, ``warnings`` (e.g. Burned In
    Annotation YES: pixels may still show identifying text), ``skipped`` ``(path, reason)``
    pairs (not DICOM, unreadable) and the number of ``studies`` written."""

    written: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    studies: int = 0

    def as_dict(self) -> dict:
        return {"files": len(self.written), "studies": self.studies, "warnings": self.warnings,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def _dummy(vr: str):
    return {"PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000", "IS": "0", "DS": "0",
            "AS": "000Y", "UI": None, "SQ": None, "CS": "ANON", "US": 0, "SS": 0, "UL": 0, "SL": 0,
            "FL": 0.0, "FD": 0.0, "OB": b"", "OW": b"", "UN": b""}.get(vr, "ANONYMOUS")


class Deidentifier:
    """Applies the profile to datasets; one instance per export keeps UIDs consistent."""

    def __init__(self, options: DeidOptions | None = None) -> None:
        self.options = options or DeidOptions()
        self._key = self.options.key.encode()
        self.uid_map: dict[str, str] = {}
        self.patients: dict[str, str] = {}

    # ------------------------------------------------------------------ derived values
    def _h(self, *parts: str) -> bytes:
        return hmac.new(self._key, "\x00".join(parts).encode(), hashlib.sha256).digest()

    def uid(self, old: str) -> str:
        """The consistent replacement of a UID: ``2.25.<128-bit integer from HMAC-SHA-256(key, uid)>``."""
        old = str(old)
        if old not in self.uid_map:
            self.uid_map[old] = "2.25." + str(int.from_bytes(self._h("uid", old)[:16], "big"))
        return self.uid_map[old]

    def pseudonym(self, patient_id: str) -> str:
        if patient_id not in self.patients:
            self.patients[patient_id] = "ANON-" + self._h("patient", patient_id).hex()[:10].upper()
        return self.patients[patient_id]

    def shift_days(self, patient_id: str) -> int:
        if self.options.date_shift_days is not None:
            return int(self.options.date_shift_days)
        return -(365 + int.from_bytes(self._h("shift", patient_id)[:4], "big") % 3635)

    # ------------------------------------------------------------------ values
    @staticmethod
    def _shift_one(v: str, days: int, vr: str) -> str:
        v = str(v)
        if len(v) < 8 or not v[:8].isdigit():
            return "" if vr == "DA" else v
        try:
            d = date(int(v[:4]), int(v[4:6]), int(v[6:8])) + timedelta(days=days)
        except ValueError:
            return ""
        return d.strftime("%Y%m%d") + v[8:]

    def _shift(self, elem, days: int) -> None:
        if elem.value in (None, ""):
            return
        if isinstance(elem.value, MultiValue):
            elem.value = [self._shift_one(v, days, elem.VR) for v in elem.value]
        elif elem.VR == "DA" and "-" in str(elem.value):  # a range in a query-like dataset
            elem.value = "-".join(self._shift_one(p, days, "DA") if p else "" for p in str(elem.value).split("-"))
        else:
            elem.value = self._shift_one(elem.value, days, elem.VR)

    def _remap(self, elem) -> None:
        if elem.value in (None, ""):
            return
        if isinstance(elem.value, MultiValue):
            elem.value = [self.uid(v) if v else v for v in elem.value]
        else:
            elem.value = self.uid(elem.value)

    @staticmethod
    def _registered(v) -> bool:
        vals = v if isinstance(v, MultiValue) else [v]
        return all(str(x) in UID_dictionary for x in vals if x)

    # ------------------------------------------------------------------ dataset
    def _action(self, tag: int) -> str | None:
        a = PROFILE_TABLE.get(tag)
        if a is not None:
            return a
        for mask, value, _, act in PROFILE_MASKED:
            if tag & mask == value:
                return act
        return None

    def _clean(self, ds: Dataset, days: int, top: bool) -> None:
        for tag in list(ds.keys()):
            elem = ds[tag]
            t = int(tag)
            if elem.tag.is_private:
                del ds[tag]
                continue
            action = self._action(t)
            vr = elem.VR
            if vr in ("DA", "DT", "TM") and t not in BIRTH and (action is not None or vr != "TM"):
                # Retain Longitudinal Temporal Information: full dates kept, or modified (shifted)
                if not self.options.keep_dates and vr in ("DA", "DT"):
                    self._shift(elem, days)
                continue
            if action is None:
                if vr == "SQ":
                    for item in elem.value:
                        self._clean(item, days, False)
                elif vr == "UI" and not self._registered(elem.value):
                    self._remap(elem)
                elif vr == "PN":
                    elem.value = ""
                continue
            if top and t in (PATIENT_NAME, PATIENT_ID):
                continue  # pseudonymised after the walk
            if action == "X":
                del ds[tag]
            elif action == "U":
                self._remap(elem)
            elif vr == "SQ":
                if action in ("D", "X/Z/U*", "X/Z/D", "X/D", "Z/D"):
                    for item in elem.value:
                        self._clean(item, days, False)
                else:  # Z, X/Z
                    elem.value = Sequence([])
            elif action in ("Z", "X/Z"):
                elem.value = None if vr not in ("OB", "OW", "UN") else b""
            else:  # D and the combinations that end in D
                d = _dummy(vr)
                elem.value = self.uid("dummy") if vr == "UI" else d

    def dataset(self, ds: Dataset, source: str = "") -> tuple[Dataset, list[str]]:
        """A de-identified deep copy of ``ds`` and the warnings for it (burned-in annotation)."""
        out = copy.deepcopy(ds)
        warnings = []
        name = source or str(ds.get("SOPInstanceUID", "dataset"))
        burned = str(ds.get("BurnedInAnnotation", "")).upper()
        if burned == "YES":
            warnings.append(f"{name}: Burned In Annotation (0028,0301) is YES: the pixel data may show identifying "
                            "text and were NOT cleaned")
        elif not burned and str(ds.get("Modality", "")) in BURNED_IN_RISK and "PixelData" in ds:
            warnings.append(f"{name}: Burned In Annotation (0028,0301) is absent on a {ds.Modality} image: "
                            "check the pixel data for identifying text")
        pid = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "unknown")
        days = self.shift_days(pid)
        self._clean(out, days, True)
        pseudo = self.pseudonym(pid)
        out.PatientName = pseudo
        out.PatientID = pseudo
        out.PatientIdentityRemoved = "YES"
        opt = "full_dates" if self.options.keep_dates else "modified_dates"
        out.DeidentificationMethod = "radreview PS3.15 E Basic; " + ("Full Dates" if self.options.keep_dates else "Modified Dates")
        seq = []
        for k in ("basic", opt):
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = CODES[k][0], "DCM", CODES[k][1]
            seq.append(item)
        out.DeidentificationMethodCodeSequence = Sequence(seq)
        out.LongitudinalTemporalInformationModified = "UNMODIFIED" if self.options.keep_dates else "MODIFIED"
        if hasattr(out, "file_meta") and out.file_meta is not None:
            fm = out.file_meta
            if "MediaStorageSOPInstanceUID" in fm:
                fm.MediaStorageSOPInstanceUID = UID(out.SOPInstanceUID if "SOPInstanceUID" in out else self.uid(fm.MediaStorageSOPInstanceUID))
            for t in [t for t in fm.keys() if t.element in (0x0016, 0x0100, 0x0102) or t.is_private]:
                del fm[t]  # Source AE Title and private meta: who sent it
        return out, warnings


def _iter_files(inputs: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for i in inputs:
        p = Path(i)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            yield p
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")


def deidentify_files(inputs: Iterable[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike,
                     options: DeidOptions | None = None, deidentifier: Deidentifier | None = None) -> DeidReport:
    """De-identify every DICOM file under ``inputs`` (files or folders) into
    ``out/<new Study UID>/<new Series UID>/<new SOP UID>.dcm``; non-DICOM files are skipped
    with a reason. Pass one ``deidentifier`` to several calls (e.g. the cases of a reading
    session) to keep UIDs and pseudonyms consistent across them.

    Raises
    ------
    FileNotFoundError
        An input does not exist.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    deid = deidentifier or Deidentifier(options)
    out = Path(out)
    rep = DeidReport()
    studies = set()
    for f in _iter_files(inputs):
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:  # noqa: BLE001 - not DICOM: skipped with its reason
            rep.skipped.append((str(f), f"not DICOM ({type(exc).__name__})"))
            continue
        if "SOPInstanceUID" not in ds or not ds.SOPInstanceUID:
            rep.skipped.append((str(f), "no SOP Instance UID"))
            continue
        new, warns = deid.dataset(ds, str(f))
        rep.warnings.extend(warns)
        st = str(new.get("StudyInstanceUID", "") or "nostudy")
        studies.add(st)
        folder = out / st / str(new.get("SeriesInstanceUID", "") or "noseries")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{new.SOPInstanceUID}.dcm"
        new.save_as(path, enforce_file_format=True)
        rep.written.append(path)
    rep.studies = len(studies)
    return rep
