"""SOP Class bookkeeping (DICOM PS3.4 Annex B.5, *Standard SOP Classes*)."""

from __future__ import annotations

from pydicom.uid import UID

__all__ = ["sop_class_name", "is_non_image", "VOLUME_CLASSES"]

# Image storage classes whose instances carry Image Position/Orientation (Patient), i.e. can be
# stacked into a volume (PS3.3 C.7.6.2 Image Plane Module, C.7.6.16 Multi-frame Functional Groups).
VOLUME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR
    "1.2.840.10008.5.1.4.1.1.128",  # PET Image Storage
    "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET
    "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET
    "1.2.840.10008.5.1.4.1.1.20",  # NM Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (only used when it has plane geometry)
}

# Objects that are not images to stack: they are listed, never decoded.
_NON_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data, Spatial Registration/Fiducials, Segmentation (66.4)
    "1.2.840.10008.5.1.4.1.1.88",  # Structured Reports, KOS (88.59)
    "1.2.840.10008.5.1.4.1.1.11",  # Presentation States
    "1.2.840.10008.5.1.4.1.1.481",  # RT objects (RTSTRUCT 481.3, RT Plan, RT Dose...)
    "1.2.840.10008.5.1.4.1.1.104",  # Encapsulated PDF/CDA
    "1.2.840.10008.5.1.4.1.1.9",  # Waveforms
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
)


def sop_class_name(uid: str) -> str:
    """Human name of a SOP Class UID from pydicom's UID dictionary, or the UID itself."""
    try:
        name = UID(uid).name
    except Exception:  # pragma: no cover - defensive
        name = ""
    return name or str(uid)


def is_non_image(uid: str) -> bool:
    """True for SEG, RTSTRUCT, SR, presentation states, KOS and other non-image SOP Classes."""
    uid = str(uid)
    return any(uid == p or uid.startswith(p + ".") for p in _NON_IMAGE_PREFIXES)
