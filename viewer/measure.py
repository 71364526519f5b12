"""Measurements on the MPR views, GUI-free: ruler, angle, ellipse and rectangle ROIs.

Geometry is in LPS millimetres (ITK's patient frame, as everywhere in radreview); ROI
statistics are read from the volume's voxel values (HU for CT) on the slice the ROI was drawn
on, through the same :class:`~viewer.model.PlaneMapping` the views use, so what is measured
is exactly what is shown. Nothing here imports Qt or VTK (import-linter), so every number is
unit-tested against hand-computed values (tests/gui/test_measure.py).

Conventions, as in PACS viewers (OsiriX/Horos ROI tools, 3D Slicer's markups):

* a **ruler** is two LPS points; its length is their Euclidean distance (mm);
* an **angle** is three LPS points ``(a, vertex, b)``; the angle at the vertex is in degrees
  (0..180);
* an **ellipse** or **rectangle** ROI is two opposite corners of its bounding box, drawn on one
  slice of one plane; it covers the slice pixels whose centres fall inside the shape; its
  area is the geometric area (pi/4 * w * h for the ellipse, w * h for the rectangle, mm^2) and
  mean / SD (population, ddof=0) / min / max are over the covered pixels.
"""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radreview.studies.volume import Volume

from .model import PLANES, plane_mapping
from radreview.studies.errors import RadreviewError

__all__ = [
    "KINDS", "Measurement", "ruler_length_mm", "angle_deg", "roi_mask", "roi_stats", "measure",
    "measurement_text", "axis_rulers", "MeasurementError",
]

KINDS = ("ruler", "angle", "ellipse", "rectangle")
_NPOINTS = {"ruler": 2, "angle": 3, "ellipse": 2, "rectangle": 2}


class MeasurementError(ValueError, RadreviewError):
    """A measurement that cannot be computed (wrong number of points, unknown kind or plane)."""


def ruler_length_mm(p0, p1) -> float:
    """Distance (mm) between two LPS points (each shape ``(3,)``, mm)."""
    return float(np.linalg.norm(np.asarray(p1, float) - np.asarray(p0, float)))


def angle_deg(a, vertex, b) -> float:
    """Angle (degrees, 0..180) at ``vertex`` between the rays to ``a`` and ``b`` (LPS mm).

    Raises
    ------
    MeasurementError
        If ``a`` or ``b`` coincides with the vertex (the angle is undefined).
    """
    u = np.asarray(a, float) - np.asarray(vertex, float)
    v = np.asarray(b, float) - np.asarray(vertex, float)
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu < 1e-9 or nv < 1e-9:
        raise MeasurementError("angle: an arm has zero length (a point coincides with the vertex)")
    c = float(np.clip(np.dot(u, v) / (nu * nv), -1.0, 1.0))
    return math.degrees(math.acos(c))


@dataclass
class Measurement:
    """One measurement: ``kind`` in :data:`KINDS`, its LPS points (mm), the plane it was drawn on.

    ``points_lps`` is a list of ``[x, y, z]`` (2 for ruler/ellipse/rectangle, 3 for angle with the
    vertex in the middle). ``source`` is ``"user"`` or, for a nodule axis proposed by the AI,
    ``"ai"`` (the reviewer can edit it; it then becomes ``"user"``). ``finding_id`` links it to a
    finding (e.g. ``ct-nodule-2p5d:candidate-1``) when it measures one.
    """

    kind: str
    points_lps: list[list[float]]
    plane: str = "axial"
    label: str = ""
    source: str = "user"
    finding_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MeasurementError(f"unknown measurement kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.plane not in PLANES:
            raise MeasurementError(f"unknown plane {self.plane!r}; expected one of {', '.join(PLANES)}")
        pts = [[float(v) for v in p] for p in self.points_lps]
        if len(pts) != _NPOINTS[self.kind] or any(len(p) != 3 for p in pts):
            raise MeasurementError(f"a {self.kind} needs {_NPOINTS[self.kind]} LPS points [x, y, z], got {self.points_lps!r}")
        self.points_lps = pts

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "points_lps": self.points_lps, "plane": self.plane,
                "label": self.label, "source": self.source, "finding_id": self.finding_id}

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        """Inverse of :meth:`as_dict`; extra keys (computed values) are ignored.

        Raises
        ------
        MeasurementError
            If a key is missing or the points do not fit the kind.
        """
        try:
            return cls(kind=d["kind"], points_lps=d["points_lps"], plane=d.get("plane", "axial"),
                       label=d.get("label", ""), source=d.get("source", "user"), finding_id=d.get("finding_id"),
                       id=d.get("id") or uuid.uuid4().hex[:12])
        except KeyError as exc:
            raise MeasurementError(f"measurement record lacks {exc.args[0]!r}: {d!r}") from None


def _roi_screen_box(volume: Volume, plane: str, p0, p1):
    m = plane_mapping(volume, plane)
    k0, r0, c0 = m.index_to_screen(volume.lps_to_index(np.asarray(p0, float)))
    _, r1, c1 = m.index_to_screen(volume.lps_to_index(np.asarray(p1, float)))
    k = int(np.clip(np.rint(k0), 0, m.n_slices - 1))
    return m, k, (min(r0, r1), max(r0, r1)), (min(c0, c1), max(c0, c1))


def roi_mask(volume: Volume, plane: str, p0, p1, shape: str = "ellipse") -> tuple[np.ndarray, int]:
    """``(mask, slice_index)``: the slice pixels of ``plane`` covered by an ROI.

    ``p0``/``p1`` are opposite corners (LPS mm) of the ROI's bounding box; the slice is the one
    nearest to ``p0``. ``mask`` has the slice's screen shape ``(rows, cols)``; a pixel is in when
    its centre is inside the ellipse / rectangle (edges included).

    Raises
    ------
    MeasurementError
        For a shape other than ``"ellipse"`` or ``"rectangle"``.
    """
    if shape not in ("ellipse", "rectangle"):
        raise MeasurementError(f"ROI shape must be 'ellipse' or 'rectangle', not {shape!r}")
    m, k, (ra, rb), (ca, cb) = _roi_screen_box(volume, plane, p0, p1)
    rows, cols = m.shape
    rr, cc = np.mgrid[0:rows, 0:cols].astype(float)
    if shape == "rectangle":
        mask = (rr >= ra - 1e-9) & (rr <= rb + 1e-9) & (cc >= ca - 1e-9) & (cc <= cb + 1e-9)
    else:
        cr, ccn = (ra + rb) / 2, (ca + cb) / 2
        hr, hc = max((rb - ra) / 2, 1e-9), max((cb - ca) / 2, 1e-9)
        mask = ((rr - cr) / hr) ** 2 + ((cc - ccn) / hc) ** 2 <= 1.0 + 1e-9
    return mask, k


def roi_stats(volume: Volume, plane: str, p0, p1, shape: str = "ellipse") -> dict[str, float | int | None]:
    """Statistics of an ROI on one slice: ``{"mean", "sd", "min", "max", "pixels", "area_mm2",
    "width_mm", "height_mm", "slice"}``.

    Values are in the volume's units (HU for CT); ``sd`` is the population standard deviation;
    ``area_mm2`` is the shape's geometric area from its in-plane width and height (mm), not the
    pixel count times the pixel area (both are reported: ``pixels``). With no pixel centre inside,
    mean/sd/min/max are ``None``.
    """
    mask, k = roi_mask(volume, plane, p0, p1, shape)
    m = plane_mapping(volume, plane)
    values = m.extract(volume.array, k)[mask].astype(np.float64)
    _, (ra, rb), (ca, cb) = _roi_screen_box(volume, plane, p0, p1)[1:]
    sr, sc = m.pixel_spacing
    h, w = (rb - ra) * sr, (cb - ca) * sc
    area = w * h * (math.pi / 4 if shape == "ellipse" else 1.0)
    out: dict[str, float | int | None] = {"pixels": int(values.size), "area_mm2": float(area), "width_mm": float(w),
                                          "height_mm": float(h), "slice": int(k)}
    if values.size:
        out.update(mean=float(values.mean()), sd=float(values.std()), min=float(values.min()), max=float(values.max()))
    else:
        out.update(mean=None, sd=None, min=None, max=None)
    return out


def measure(m: Measurement, volume: Volume | None = None) -> dict[str, Any]:
    """Computed values of a measurement: ruler ``{"length_mm"}``, angle ``{"angle_deg"}``,
    ROI :func:`roi_stats` (needs ``volume``).

    Raises
    ------
    MeasurementError
        An ROI without a volume, or a degenerate angle.
    """
    p = m.points_lps
    if m.kind == "ruler":
        return {"length_mm": ruler_length_mm(p[0], p[1])}
    if m.kind == "angle":
        return {"angle_deg": angle_deg(p[0], p[1], p[2])}
    if volume is None:
        raise MeasurementError(f"{m.kind} ROI statistics need the volume")
    return roi_stats(volume, m.plane, p[0], p[1], m.kind)


def measurement_text(m: Measurement, values: dict[str, Any], unit: str = "HU") -> str:
    """One line for the measurements table, e.g. ``"Ruler 23.4 mm"``, ``"Angle 92.0°"``,
    ``"Ellipse 314 mm² mean 40.2 SD 5.1 min 20 max 61 HU"``."""
    name = m.label or m.kind.capitalize()
    if m.kind == "ruler":
        return f"{name} {values['length_mm']:.1f} mm"
    if m.kind == "angle":
        return f"{name} {values['angle_deg']:.1f}\N{DEGREE SIGN}"
    if values.get("mean") is None:
        return f"{name} {values['area_mm2']:.0f} mm\N{SUPERSCRIPT TWO} (no pixel inside)"
    return (f"{name} {values['area_mm2']:.0f} mm\N{SUPERSCRIPT TWO} mean {values['mean']:.1f} SD {values['sd']:.1f} "
            f"min {values['min']:.0f} max {values['max']:.0f}{(' ' + unit) if unit else ''}")


def _farthest_pair(pts: np.ndarray) -> tuple[int, int, float]:
    best = (0, 0, -1.0)
    if len(pts) > 600:  # keep the pairwise search small: boundary points are enough for a Feret diameter
        pts = pts[:: int(np.ceil(len(pts) / 600))]
    d = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    best = (int(i), int(j), float(d[i, j]))
    return best


def axis_rulers(finding: dict, volume: Volume | None = None, mask_zyx: np.ndarray | None = None) -> list[Measurement]:
    """Long- and short-axis rulers (RECIST-style, axial plane) for a nodule finding.

    Sources, in order: ``finding["long_axis_lps"]``/``["short_axis_lps"]`` (two LPS points
    each) when the nodule model provides end points; else ``mask_zyx`` (a boolean nodule mask on
    ``volume``'s grid): the longest in-plane diameter on the axial slice with the largest area
    (maximum Feret diameter) and the longest chord within 10 degrees of perpendicular to it;
    else ``finding["long_axis_mm"]``/``["short_axis_mm"]`` drawn through ``center_lps`` along
    patient x (long) and y (short) for the reviewer to adjust. Returns ``[]`` when none applies.
    The rulers are ``source="ai"`` and carry the finding's id.
    """
    fid = finding.get("id")
    out: list[Measurement] = []
    if finding.get("long_axis_lps"):
        out.append(Measurement("ruler", finding["long_axis_lps"], "axial", "Long axis", "ai", fid))
        if finding.get("short_axis_lps"):
            out.append(Measurement("ruler", finding["short_axis_lps"], "axial", "Short axis", "ai", fid))
        return out
    if mask_zyx is not None and volume is not None and mask_zyx.any():
        z = int(np.argmax(mask_zyx.reshape(mask_zyx.shape[0], -1).sum(axis=1)))
        sl = mask_zyx[z]
        edge = sl & ~(np.roll(sl, 1, 0) & np.roll(sl, -1, 0) & np.roll(sl, 1, 1) & np.roll(sl, -1, 1))
        yx = np.argwhere(edge if edge.any() else sl)
        ijk = np.column_stack([yx[:, 1], yx[:, 0], np.full(len(yx), z)]).astype(float)
        lps = volume.index_to_lps(ijk)
        i, j, dmax = _farthest_pair(lps)
        if dmax <= 0:
            return out
        out.append(Measurement("ruler", [lps[i].tolist(), lps[j].tolist()], "axial", "Long axis", "ai", fid))
        u = (lps[j] - lps[i]) / dmax
        best = (-1.0, None)
        for a, b in itertools.combinations(range(len(lps)), 2):
            v = lps[b] - lps[a]
            n = np.linalg.norm(v)
            if n > best[0] and abs(np.dot(v / max(n, 1e-9), u)) < math.sin(math.radians(10)):
                best = (float(n), (a, b))
        if best[1] is not None:
            a, b = best[1]
            out.append(Measurement("ruler", [lps[a].tolist(), lps[b].tolist()], "axial", "Short axis", "ai", fid))
        return out
    c = finding.get("center_lps")
    if c is not None and finding.get("long_axis_mm"):
        c = np.asarray(c, float)
        half = float(finding["long_axis_mm"]) / 2
        out.append(Measurement("ruler", [(c - [half, 0, 0]).tolist(), (c + [half, 0, 0]).tolist()], "axial",
                               "Long axis", "ai", fid))
        if finding.get("short_axis_mm"):
            half = float(finding["short_axis_mm"]) / 2
            out.append(Measurement("ruler", [(c - [0, half, 0]).tolist(), (c + [0, half, 0]).tolist()], "axial",
                                   "Short axis", "ai", fid))
    return out
