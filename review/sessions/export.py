"""De-identified export of a reading session's cases (PS3.15 Annex E, :mod:`radreview.studies.deid`).

A reader study's cases often leave the site (a second reading centre, a publication). The
export writes every case under ``out/<case_id>/`` and an index ``out/cases.csv``
(``case_id,path`` relative to ``out``) that ``radreview session create`` reads directly:

- DICOM cases: every file through one :class:`~radreview.studies.deid.Deidentifier`, so UIDs,
  pseudonyms and date shifts stay consistent across all cases of the session (a patient who
  appears in two cases keeps one pseudonym and one shift);
- image files (NIfTI, NRRD, MHA): voxels and geometry only (``image.nii.gz`` written by
  SimpleITK with no metadata dictionary), since those formats carry no standard PHI fields
  but may hold free-text descriptions.

Reads, scores and AI results are not exported: they are the study's data, not the case's.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from radreview.studies import is_image_file
from radreview.studies.deid import DeidOptions, Deidentifier, deidentify_files

from .core import ReadingSession, SessionError

__all__ = ["export_cases_deid"]


def export_cases_deid(session: ReadingSession, out: str | os.PathLike, options: DeidOptions | None = None) -> dict:
    """Write the session's cases de-identified under ``out`` (a new or empty folder).

    Returns ``{"out", "cases": [{"case_id", "path", "files", "kind"}], "warnings",
    "skipped": [{"path", "reason"}]}``, also written as ``out/export.json``.

    Raises
    ------
    SessionError
        ``out`` exists and is not empty, or a case's path no longer exists.
    """
    import SimpleITK as sitk

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SessionError(f"{out}: the export folder exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    deid = Deidentifier(options)
    rows, warnings, skipped = [], [], []
    for case in session.cases():
        cid, src = case["case_id"], Path(case["path"])
        if not src.exists():
            raise SessionError(f"case {cid}: {src} no longer exists")
        dest = out / cid
        if src.is_file() and is_image_file(str(src)):
            dest.mkdir(parents=True, exist_ok=True)
            img = sitk.ReadImage(str(src))
            clean = sitk.Image(img)  # pixels + geometry; the metadata dictionary is not copied
            for key in clean.GetMetaDataKeys():
                clean.EraseMetaData(key)
            sitk.WriteImage(clean, str(dest / "image.nii.gz"), True)
            rows.append({"case_id": cid, "path": f"{cid}/image.nii.gz", "files": 1, "kind": "image"})
            continue
        rep = deidentify_files(src, dest, deidentifier=deid)
        warnings += [f"case {cid}: {w}" for w in rep.warnings]
        skipped += [{"path": p, "reason": r} for p, r in rep.skipped]
        if not rep.written:
            raise SessionError(f"case {cid}: no DICOM file under {src} could be exported")
        rows.append({"case_id": cid, "path": cid, "files": len(rep.written), "kind": "dicom"})
    with open(out / "cases.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "path"])
        for r in rows:
            w.writerow([r["case_id"], r["path"]])
    result = {"out": str(out), "cases": rows, "warnings": warnings, "skipped": skipped,
              "profile": "PS3.15 Annex E Basic Application Level Confidentiality Profile"
                         + (" + Retain Full Dates" if deid.options.keep_dates else " + Modified Dates (shifted)")}
    (out / "export.json").write_text(json.dumps(result, indent=1))
    return result
