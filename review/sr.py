"""Results back to the PACS: DICOM SR (TID 1500 Measurement Report, Comprehensive 3D SR), the
DICOM SEG of accepted or edited segmentations, and a Grad-CAM heatmap as a DICOM Parametric
Map — all with highdicom.

Per finding the SR holds one measurement group (TID 1410 volumetric ROI, or TID 1501 where
there is no image region) with: tracking identifier (the finding id) and UID, finding type
(SNOMED CT where known), the model as Algorithm Identification (name, version), the AI
probability and the review threshold (UCUM ``1``), the volume (mL) and diameters (mm) the
finding carries, the reviewer's decision as a qualitative evaluation (accept / reject / edit;
private coding scheme ``99RADREVIEW``) with the reviewer (PNAME, HAS OBS CONTEXT), the time
(DATETIME) and the reason (TEXT). Segmentation findings reference their SEG segment; candidates
their centre as a 3-D point (SCOORD3D POINT, LPS mm, Frame of Reference of the images).

The review store is read in one function, :func:`study_findings`, so a change of the store's
layout touches only it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from radreview.studies.errors import RadreviewError

__all__ = ["study_findings", "read_series", "build_sr", "export_sr", "export_accepted_seg", "export_parametric_map",
           "DECISION_CODES", "SRExportError"]

SCHEME = "99RADREVIEW"
MANUFACTURER = "radreview"
SOFTWARE_VERSION = "0.1.0"


class SRExportError(ValueError, RadreviewError):
    """The SR/SEG/Parametric Map cannot be written; the message names the input and the problem."""


def _cc(value: str, scheme: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value, scheme, meaning)


def _decision_codes() -> dict:
    return {d: _cc(f"RR-{d.upper()}", SCHEME, m) for d, m in
            (("accept", "AI finding accepted"), ("reject", "AI finding rejected"), ("edit", "AI finding edited"))}


DECISION_CODES = ("accept", "reject", "edit")


def _finding_code(name: str, kind: str):
    from pydicom.sr.codedict import codes

    known = {"liver": codes.SCT.Liver, "spleen": codes.SCT.Spleen, "kidneys": codes.SCT.Kidney, "kidney": codes.SCT.Kidney,
             "lungs": codes.SCT.Lung, "lung": codes.SCT.Lung, "bone": codes.SCT.Bone}
    if kind == "candidate":
        return codes.SCT.Nodule
    if kind == "classification":
        return codes.SCT.Finding
    return known.get(name.lower(), _cc(f"RR-{name.upper()[:12]}", SCHEME, name))


def _pn(name: str) -> str:
    """A reviewer name as a DICOM PN: a single-component name gets its trailing caret (PS3.5 6.2.1.2)."""
    name = str(name).strip()
    return name if "^" in name else name + "^"


# ---------------------------------------------------------------- the store (one coupling point)
def study_findings(store, study_instance_uid: str) -> list[dict]:
    """The study's stored AI findings, each with its latest decision (or None) under ``"review"``.

    Reads ``ReviewStore.load_findings("study:<UID>")`` and ``ReviewStore.decisions(...)``
    (public API). Each dict has ``id, model, kind, name, confidence, threshold`` and the
    finding's details (``volume_ml``, ``center_lps``, ``size_mm``, ``probability``...).
    """
    key = f"study:{study_instance_uid}"
    decisions = store.decisions(key)
    out = []
    for f in store.load_findings(key):
        out.append({**f, "review": decisions.get(f["id"])})
    return out


def _model_version(model_id: str, finding: dict) -> str:
    if finding.get("model_version"):
        return str(finding["model_version"])
    import json

    from radreview.inference.package import load_package, model_search_path

    try:
        return str(load_package(model_id).meta.get("version", "unknown"))
    except Exception:  # noqa: BLE001 - refused (hash, schema) or gone: the version is still what it declares
        pass
    for _, folder in model_search_path():
        meta = Path(folder) / model_id / "model.json"
        try:
            return str(json.loads(meta.read_text()).get("version", "unknown"))
        except (OSError, ValueError, AttributeError):
            continue
    return "unknown"


# ---------------------------------------------------------------- images
def read_series(path: str | os.PathLike | list[str | os.PathLike] | tuple[str | os.PathLike, ...]) -> list[Dataset]:
    """The image datasets of one series (folder or files), sorted along the slice normal
    (ascending Image Position (Patient) projected on the normal of Image Orientation (Patient)),
    i.e. in the ``z`` order of the viewer's ``(z, y, x)`` arrays.

    Raises
    ------
    SRExportError
        No DICOM image with pixel data, several series, or no Study Instance UID.
    """
    if isinstance(path, (list, tuple)):
        p, files = Path(path[0]).parent if path else Path("."), [Path(f) for f in path]
    else:
        p = Path(path)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    dss = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception:  # noqa: BLE001 - not DICOM
            continue
        if "PixelData" in ds and "ImagePositionPatient" in ds:
            dss.append(ds)
    if not dss:
        raise SRExportError(f"{p}: no DICOM image with pixel data and Image Position (Patient)")
    series = {str(d.get("SeriesInstanceUID", "")) for d in dss}
    if len(series) > 1:
        biggest = max(series, key=lambda s: sum(1 for d in dss if str(d.SeriesInstanceUID) == s))
        dss = [d for d in dss if str(d.SeriesInstanceUID) == biggest]
    if not dss[0].get("StudyInstanceUID"):
        raise SRExportError(f"{p}: the images have no Study Instance UID; an SR cannot reference them")
    iop = np.array(dss[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(dss, key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))


# ---------------------------------------------------------------- SR
def _group(f: dict, images: list[Dataset], seg: Dataset | None):
    import highdicom as hd
    from highdicom.sr import RelationshipTypeValues as Rel
    from pydicom.sr.codedict import codes

    one = _cc("1", "UCUM", "no units")
    algo = hd.sr.AlgorithmIdentification(name=str(f["model"]), version=_model_version(f["model"], f))
    ms = []
    prob = f.get("probability", f.get("confidence"))
    if prob is not None:
        ms.append(hd.sr.Measurement(name=_cc("RR-PROB", SCHEME, "AI probability"), value=float(prob), unit=one, algorithm_id=algo))
    if f.get("confidence") is not None and f.get("probability") is not None:
        ms.append(hd.sr.Measurement(name=_cc("RR-CONF", SCHEME, "AI calibrated confidence"), value=float(f["confidence"]),
                                    unit=one, algorithm_id=algo))
    if f.get("threshold") is not None:
        ms.append(hd.sr.Measurement(name=_cc("RR-THRESH", SCHEME, "Review threshold"), value=float(f["threshold"]), unit=one))
    if f.get("volume_ml") is not None:
        ms.append(hd.sr.Measurement(name=codes.SCT.Volume, value=float(f["volume_ml"]), unit=_cc("ml", "UCUM", "milliliter"),
                                    algorithm_id=algo))
    for key, meaning in (("size_mm", "Diameter"), ("diameter_mm", "Diameter"), ("long_axis_mm", "Long axis"),
                         ("short_axis_mm", "Short axis")):
        if f.get(key) is not None:
            name = codes.SCT.Diameter if meaning == "Diameter" else _cc(f"RR-{key.upper()[:10]}", SCHEME, meaning)
            ms.append(hd.sr.Measurement(name=name, value=float(f[key]), unit=_cc("mm", "UCUM", "millimeter"), algorithm_id=algo))
    review = f.get("review")
    evals = []
    if review:
        evals.append(hd.sr.QualitativeEvaluation(_cc("RR-DECISION", SCHEME, "Review decision"),
                                                 _decision_codes()[review["decision"]]))
    tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=str(f["id"])[:64])
    ftype = _finding_code(str(f["name"]), str(f["kind"]))
    for_uid = str(images[0].FrameOfReferenceUID)
    group: hd.sr.templates.Template | None = None
    if f["kind"] == "segmentation" and seg is not None:
        num = next((int(s.SegmentNumber) for s in seg.SegmentSequence if str(s.SegmentLabel) == str(f["name"])), None)
        if num is not None:
            ref = hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=num,
                                          source_series=hd.sr.SourceSeriesForSegmentation(str(images[0].SeriesInstanceUID)))
            group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_segment=ref, finding_type=ftype, algorithm_id=algo,
                measurements=ms, qualitative_evaluations=evals or None)
    if group is None and f.get("center_lps") is not None and f["kind"] == "candidate":
        region = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                     graphic_data=np.array([f["center_lps"]], dtype=float), frame_of_reference_uid=for_uid)
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region, finding_type=ftype, algorithm_id=algo,
            measurements=ms, qualitative_evaluations=evals or None)
    if group is None:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=ftype, algorithm_id=algo, measurements=ms,
            qualitative_evaluations=evals or None)
    container = group[0]
    extra: list[hd.sr.ContentItem] = []
    if review:
        extra.append(hd.sr.PnameContentItem(name=codes.DCM.PersonObserverName, value=_pn(review["reviewer"]),
                                            relationship_type=Rel.HAS_OBS_CONTEXT))
        ts = datetime.fromisoformat(str(review["ts"]))
        extra.append(hd.sr.DateTimeContentItem(name=_cc("RR-DECTIME", SCHEME, "Review decision time"),
                                               value=ts.replace(tzinfo=None), relationship_type=Rel.CONTAINS))
        if review.get("reason"):
            extra.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=str(review["reason"])[:1024],
                                               relationship_type=Rel.CONTAINS))
    elif f.get("needs_review"):
        extra.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value="flagged: needs review, no decision recorded",
                                           relationship_type=Rel.CONTAINS))
    # observer context must come before the other children (PS3.3 C.17.3.2.1: by-reference order is free,
    # but TID 1500 puts observation context first)
    obs = [e for e in extra if e.RelationshipType == "HAS OBS CONTEXT"]
    rest = [e for e in extra if e.RelationshipType != "HAS OBS CONTEXT"]
    container.ContentSequence = pydicom.sequence.Sequence(obs + list(container.ContentSequence) + rest)
    return group


def build_sr(images: Sequence[Dataset], findings: list[dict], seg: Dataset | None = None, reviewer: str | None = None):
    """A Comprehensive 3D SR (TID 1500) of ``findings`` (from :func:`study_findings`) on the
    series ``images`` (from :func:`read_series`); ``seg`` is the DICOM SEG the segmentation
    findings reference (by segment label). Returns the ``highdicom.sr.Comprehensive3DSR``.

    Raises
    ------
    SRExportError
        No findings.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not findings:
        raise SRExportError("no AI findings stored for this study: run the models (radreview review) first")
    images = list(images)
    reviewers = [f["review"]["reviewer"] for f in findings if f.get("review")]
    person = reviewer or (reviewers[-1] if reviewers else None)
    device = hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=
                                   hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name="radreview",
                                                                            manufacturer_name=MANUFACTURER))
    pctx = None
    if person:
        pctx = hd.sr.ObserverContext(observer_type=codes.DCM.Person,
                                     observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=_pn(person)))
    ctx = hd.sr.ObservationContext(observer_person_context=pctx, observer_device_context=device)
    groups = [_group(f, images, seg) for f in findings]
    report = hd.sr.MeasurementReport(observation_context=ctx, procedure_reported=codes.SCT.ImagingProcedure,
                                     imaging_measurements=groups, referenced_images=None)
    evidence = images + ([seg] if seg is not None else [])
    all_done = all(f.get("review") or not f.get("needs_review") for f in findings)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=generate_uid(), series_number=901,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER, is_complete=all_done,
        is_final=False, is_verified=False, series_description="radreview AI findings (TID 1500)")


def export_sr(study: str | os.PathLike, store, out: str | os.PathLike, seg_path: str | os.PathLike | None = None,
              reviewer: str | None = None) -> Path:
    """Write the SR of the study at ``study`` (a series folder) from ``store``'s findings; returns ``out``.

    Raises
    ------
    SRExportError
        Unreadable study or SEG, no findings for the study.
    """
    images = read_series(study)
    uid = str(images[0].StudyInstanceUID)
    findings = study_findings(store, uid)
    if not findings:
        raise SRExportError(f"{study}: no AI findings stored for study {uid} in {getattr(store, 'path', 'the store')}")
    seg = None
    if seg_path:
        try:
            seg = pydicom.dcmread(seg_path)
        except Exception as exc:  # noqa: BLE001
            raise SRExportError(f"{seg_path}: not a readable DICOM SEG ({exc})") from None
        if str(seg.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.66.4":
            raise SRExportError(f"{seg_path}: not a DICOM SEG (SOP Class {seg.get('SOPClassUID', '?')})")
    sr = build_sr(images, findings, seg, reviewer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out, enforce_file_format=True)
    return out


# ---------------------------------------------------------------- SEG and Parametric Map
def export_accepted_seg(images: Sequence[Dataset], labelmap: np.ndarray, names: dict[int, str], findings: list[dict],
                        out: str | os.PathLike, model: str = "radreview") -> Path | None:
    """DICOM SEG (binary, one segment per label) of the segmentation findings whose decision is
    accept or edit, from ``labelmap`` (``(z, y, x)`` integer labels on the grid of ``images``,
    which are sorted as :func:`read_series` sorts them). Returns ``out``, or None when no
    segmentation is accepted or edited.

    Raises
    ------
    SRExportError
        Label map shape does not match the images.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    images = list(images)
    if labelmap.shape != (len(images), int(images[0].Rows), int(images[0].Columns)):
        raise SRExportError(f"label map shape {labelmap.shape} does not match the series "
                            f"({len(images)}, {images[0].Rows}, {images[0].Columns}) (z, y, x)")
    ok = {str(f["name"]): f for f in findings if f.get("kind") == "segmentation" and f.get("review")
          and f["review"]["decision"] in ("accept", "edit")}
    chosen = [(v, n) for v, n in sorted(names.items()) if n in ok and np.any(labelmap == v)]
    if not chosen:
        return None
    arr = np.zeros(labelmap.shape, np.uint8)
    descs = []
    for k, (v, n) in enumerate(chosen, start=1):
        arr[labelmap == v] = k
        f = ok[n]
        algo = hd.AlgorithmIdentificationSequence(name=str(f.get("model", model)), version=_model_version(str(f.get("model", model)), f),
                                                  family=codes.cid7162.ArtificialIntelligence)
        edited = f["review"]["decision"] == "edit"
        descs.append(hd.seg.SegmentDescription(
            segment_number=k, segment_label=n, segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=_finding_code(n, "segmentation"),
            algorithm_type="SEMIAUTOMATIC" if edited else "AUTOMATIC", algorithm_identification=algo,
            tracking_uid=generate_uid(), tracking_id=str(f["id"])[:64]))
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=arr, segmentation_type="BINARY", segment_descriptions=descs,
        series_instance_uid=generate_uid(), series_number=902, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name="radreview", software_versions=SOFTWARE_VERSION,
        device_serial_number="0", series_description="radreview accepted segmentations")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out, enforce_file_format=True)
    return out


def export_parametric_map(images: Sequence[Dataset], heatmap: np.ndarray, out: str | os.PathLike, model: str,
                          target: str = "study") -> Path:
    """The Grad-CAM heatmap (``(z, y, x)`` float, 0..1, on the grid of ``images``) as a DICOM
    Parametric Map (float pixels, real world value mapping "Grad-CAM relevance", unit ``1``).

    Raises
    ------
    SRExportError
        Shape mismatch or values outside 0..1.
    """
    import highdicom as hd

    images = list(images)
    h = np.asarray(heatmap, dtype=np.float32)
    if h.shape != (len(images), int(images[0].Rows), int(images[0].Columns)):
        raise SRExportError(f"heatmap shape {h.shape} does not match the series "
                            f"({len(images)}, {images[0].Rows}, {images[0].Columns}) (z, y, x)")
    if not np.isfinite(h).all() or h.min() < 0 or h.max() > 1:
        raise SRExportError(f"heatmap values must be finite within 0..1 (got {np.nanmin(h):.3g}..{np.nanmax(h):.3g})")
    rwvm = hd.pm.RealWorldValueMapping(lut_label="GRADCAM", lut_explanation=f"Grad-CAM relevance, {model}, {target}"[:64],
                                       unit=_cc("1", "UCUM", "no units"), value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
    pm = hd.pm.ParametricMap(
        source_images=images, pixel_array=h, series_instance_uid=generate_uid(), series_number=903,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name="radreview",
        software_versions=SOFTWARE_VERSION, device_serial_number="0", contains_recognizable_visual_features=False,
        real_world_value_mappings=[rwvm], voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="GRADCAM", content_description=f"Grad-CAM {model} {target}"[:64],
        series_description=f"radreview Grad-CAM {target}"[:64])
    if "Laterality" not in pm:
        pm.Laterality = None  # General Series Type 2C: present, empty (laterality not known for a heatmap)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.save_as(out, enforce_file_format=True)
    return out
