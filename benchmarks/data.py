"""Benchmark inputs built from the shared data (written under ``bench-data/``, git-ignored).

``big_series()``: a 512x512x300 uncompressed (Explicit VR Little Endian) CT series made from
the sample abdominal CT by linear resampling along z (20 slices at 2 mm -> 300 slices), with
the original headers as templates (new SOP Instance UIDs and positions).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RADREVIEW_SHARED_DATA", ROOT.parent / "shared" / "data"))
SAMPLE = SHARED / "ct-abdomen-dicom" / "series"
OUT = ROOT / "bench-data"


def big_series(n_slices: int = 300) -> Path:
    """Write (once) and return the folder of the 512x512x``n_slices`` uncompressed series."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from radreview.studies import open_volume

    folder = OUT / f"ct512x512x{n_slices}"
    if folder.is_dir() and len(list(folder.iterdir())) == n_slices:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    vol = open_volume(SAMPLE)
    z_in = np.arange(vol.size[2]) * vol.spacing[2]
    z_out = np.linspace(0, z_in[-1], n_slices)
    template = None
    for f in sorted(SAMPLE.iterdir()):
        template = pydicom.dcmread(f)
        break
    template.decompress()
    series_uid = generate_uid()
    normal = vol.direction[:, 2]
    for k, z in enumerate(z_out):
        i = min(int(z // vol.spacing[2]), vol.size[2] - 2)
        w = (z - z_in[i]) / vol.spacing[2]
        hu = np.rint(vol.array[i] * (1 - w) + vol.array[i + 1] * w).astype(np.int32)
        ds = copy.deepcopy(template)
        stored = (hu - int(ds.RescaleIntercept)) // int(ds.RescaleSlope)
        ds.PixelData = np.clip(stored, 0, 65535).astype(np.uint16).tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in (np.array(vol.origin) + normal * z)]
        ds.SliceThickness = float(z_out[1] - z_out[0])
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return folder
