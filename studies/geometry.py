"""Slice ordering and stack geometry from *Image Position/Orientation (Patient)*.

Slices are sorted by the projection of *Image Position (Patient)* (0020,0032) onto the slice
normal ``n = row x col`` of *Image Orientation (Patient)* (0020,0037), never by *Instance
Number* or file name; slice spacing comes from those positions, not from *Slice Thickness*
(PS3.3 C.7.6.2.1.1 and the note on Slice Thickness vs. spacing in C.7.6.2.1.1). This matches
ITK's ``ImageSeriesReader``/GDCM ``IPPSorter`` that SimpleITK uses, which we test against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .discovery import FrameRef

__all__ = ["StackGeometry", "compute_stack_geometry", "split_at_gaps", "GAP_SPLIT_FACTOR"]

#: A gap larger than this many median gaps splits a stack into separate slabs (interpolating
#: across it would invent anatomy); smaller irregularities (missing slices) are resampled.
GAP_SPLIT_FACTOR = 4.0

#: Gaps may vary by this fraction of the mean gap (plus 0.01 mm) before a stack counts as
#: non-uniform; a missing slice doubles one gap and is always caught.
NON_UNIFORM_REL_TOL = 0.01


@dataclass
class StackGeometry:
    """The grid a stack is loaded onto, plus what the loader must do to get there.

    ``size`` is ``(nx, ny, nz)``, ``spacing`` ``(sx, sy, sz)`` mm, ``origin`` LPS mm,
    ``direction`` 3x3 with LPS axis vectors as columns. ``source_positions`` are the slice
    positions along the normal (mm, ascending) of the frames as stored; when
    ``resample_positions`` is set the loader interpolates onto those positions; when
    ``tilt_direction`` is set the stack was acquired with gantry tilt and is resampled onto
    the orthogonal grid described here.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    source_positions: np.ndarray
    resample_positions: np.ndarray | None = None
    tilt_direction: np.ndarray | None = None
    source_spacing_z: float = 1.0
    source_origin: tuple[float, float, float] | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "size": [int(v) for v in self.size],
            "spacing": [float(v) for v in self.spacing],
            "origin": [float(v) for v in self.origin],
            "direction": [float(v) for v in np.asarray(self.direction).ravel()],
        }


def frame_plane(f: "FrameRef") -> tuple[np.ndarray, np.ndarray]:
    """``(position, orientation)`` of a frame: Image Position (Patient) ``(3,)`` in LPS mm and
    the six direction cosines of Image Orientation (Patient) ``(6,)``.

    Raises
    ------
    ValueError
        The frame lacks either (discovery files such frames as 2-D images, never as a stack).
    """
    if f.position is None or f.orientation is None:
        raise ValueError(f"{f.shown_path}: no Image Position/Orientation (Patient)")
    return f.position, f.orientation


def split_at_gaps(frames: list["FrameRef"]) -> list[list["FrameRef"]]:
    """Split frames (any order) into contiguous slabs at gaps > :data:`GAP_SPLIT_FACTOR` x median.

    Returns slabs in ascending position; a stack without such gaps comes back whole.
    """
    if len(frames) < 3:
        return [list(frames)]
    o = np.asarray(frame_plane(frames[0])[1], float)
    normal = np.cross(o[:3], o[3:])
    proj = np.array([float(np.dot(frame_plane(f)[0], normal)) for f in frames])
    order = np.argsort(proj, kind="stable")
    gaps = np.diff(proj[order])
    positive = gaps[gaps > 1e-3]
    if positive.size == 0:
        return [list(frames)]
    med = float(np.median(positive))
    slabs, cur = [], [frames[order[0]]]
    for g, idx in zip(gaps, order[1:]):
        if g > GAP_SPLIT_FACTOR * med:
            slabs.append(cur)
            cur = []
        cur.append(frames[idx])
    slabs.append(cur)
    return slabs


def compute_stack_geometry(frames: list["FrameRef"]):
    """Order ``frames`` along the normal and work out the output grid.

    Returns
    -------
    geometry : StackGeometry
    ordered : list of FrameRef
        Frames in slice order (ascending position along the normal), duplicates removed.
    duplicates : list of (FrameRef, reason)
        Frames at the same position as an earlier one; not used.
    """
    ori0 = frame_plane(frames[0])[1]
    row = np.asarray(ori0[:3], dtype=float)
    col = np.asarray(ori0[3:], dtype=float)
    row /= np.linalg.norm(row)
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    warnings: list[str] = []

    proj = np.array([float(np.dot(frame_plane(f)[0], normal)) for f in frames])
    order = sorted(range(len(frames)), key=lambda i: (proj[i], frames[i].instance_number or 0, frames[i].frame or 0))
    ordered: list = []
    positions: list[float] = []
    duplicates = []
    for i in order:
        if positions and abs(proj[i] - positions[-1]) < 1e-3:
            first = ordered[-1]
            duplicates.append(
                (frames[i], f"duplicate slice position {proj[i]:.3f} mm along the normal (same as {first.shown_path})")
            )
            continue
        ordered.append(frames[i])
        positions.append(proj[i])
    pos = np.array(positions)
    sy, sx = ordered[0].pixel_spacing  # (row spacing, column spacing)
    ny, nx = ordered[0].rows, ordered[0].cols
    origin = np.asarray(ordered[0].position, dtype=float)
    direction = np.column_stack([row, col, normal])

    if len(ordered) == 1:
        # As ITK/GDCM: Spacing Between Slices (0018,0088) if present, else 1 mm.
        sbs = ordered[0].spacing_between_slices
        sz = float(sbs) if sbs and sbs > 0 else 1.0
        warnings.append(f"single-slice series: slice spacing {'from Spacing Between Slices' if sbs else 'unknown, 1 mm used'}")
        geom = StackGeometry((nx, ny, 1), (sx, sy, sz), tuple(origin), direction, pos, warnings=warnings)
        return geom, ordered, duplicates

    first, last = np.asarray(ordered[0].position, float), np.asarray(ordered[-1].position, float)
    span = last - first
    gaps = np.diff(pos)
    mean_gap = float((pos[-1] - pos[0]) / (len(pos) - 1))
    sz = mean_gap
    geom = StackGeometry((nx, ny, len(ordered)), (sx, sy, sz), tuple(origin), direction, pos,
                         source_spacing_z=mean_gap, warnings=warnings)

    thick = ordered[0].slice_thickness
    if thick and abs(thick - mean_gap) > 0.01 * mean_gap + 1e-3:
        warnings.append(
            f"Slice Thickness is {thick:g} mm but slices are {mean_gap:.4g} mm apart; spacing taken from Image Position (Patient)"
        )

    # Gantry tilt: slices are stacked along a direction that is not the image normal.
    perp = span - np.dot(span, normal) * normal
    if np.linalg.norm(perp) > 0.5 * min(sx, sy):
        stack_dir = span / np.linalg.norm(span)
        angle = float(np.degrees(np.arccos(min(1.0, abs(np.dot(stack_dir, normal))))))
        geom.tilt_direction = stack_dir
        geom.source_origin = tuple(origin)
        geom.source_spacing_z = float(np.linalg.norm(span) / (len(ordered) - 1))
        # Output grid: orthogonal (row, col, normal) frame that covers every input voxel.
        src_dir = np.column_stack([row, col, stack_dir])
        corners = []
        for i in (0, nx - 1):
            for j in (0, ny - 1):
                for k in (0, len(ordered) - 1):
                    corners.append(origin + src_dir @ (np.array([sx, sy, geom.source_spacing_z]) * [i, j, k]))
        local = (np.array(corners) - origin) @ direction  # coordinates in the output frame
        lo, hi = local.min(axis=0), local.max(axis=0)
        out_sp = np.array([sx, sy, mean_gap])
        out_size = np.floor((hi - lo) / out_sp + 1e-6).astype(int) + 1
        geom.origin = tuple(origin + direction @ lo)
        geom.size = (int(out_size[0]), int(out_size[1]), int(out_size[2]))
        geom.spacing = (sx, sy, mean_gap)
        warnings.append(
            f"gantry tilt of {angle:.2f} degrees: resampled onto an orthogonal grid "
            f"({geom.size[0]}x{geom.size[1]}x{geom.size[2]}, linear interpolation)"
        )
        return geom, ordered, duplicates

    if np.max(np.abs(gaps - mean_gap)) > NON_UNIFORM_REL_TOL * mean_gap + 0.01:
        step = float(np.median(gaps))
        nz = int(round((pos[-1] - pos[0]) / step)) + 1
        target = np.linspace(pos[0], pos[-1], nz)
        geom.resample_positions = target
        geom.size = (nx, ny, nz)
        geom.spacing = (sx, sy, float((pos[-1] - pos[0]) / (nz - 1)))
        warnings.append(
            f"non-uniform slice spacing ({gaps.min():.3g}-{gaps.max():.3g} mm; missing slices?): "
            f"resampled to a uniform {geom.spacing[2]:.4g} mm grid ({len(pos)} -> {nz} slices, "
            "linear interpolation along the normal)"
        )
    else:
        # ITK's reader takes the slice axis from first->last position (equal to the normal here).
        geom.direction = np.column_stack([row, col, span / np.linalg.norm(span)])
    return geom, ordered, duplicates
