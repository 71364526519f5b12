"""Which body regions a scan covers, and which segmented labels cannot be in it (GUI-free).

A label that cannot be in the scan is not a finding: the model card gives each label a
``body_region`` (``any``, ``head``, ``neck``, ``chest``, ``abdomen``, ``pelvis``) and a
``min_volume_ml``. A label whose voxels lie mostly outside its region's levels, or whose volume
is below that minimum, is listed as **Not assessed** with the reason (:func:`implausible`).

Coverage (:func:`scan_coverage`) is an HU rule per axial slice, on CT:

* body: the largest 2-D component of HU > -500, holes filled (as the organ model's ``body``
  label rule);
* a slice is at **chest** level when aerated tissue (HU < -400 inside the body) fills at least
  :data:`CHEST_LUNG_FRACTION` of the body cross-section. Measured on the shipped data: 0.16-0.31
  on the chest slices of ``ct-chest-tumor``, at most 0.03 on the abdominal series (bowel gas,
  lung bases), 0.00-0.07 in the head CT;
* body slices inferior to the chest levels are **abdomen/pelvis** levels, superior ones
  **head/neck**; in a scan without chest levels the side is unknown, so every body slice
  counts for abdomen, pelvis, head and neck.

Coverage is *unknown* (no region check, only the volume check) when the slice normal is more
than ~37 degrees from the patient's S axis, or when the body touches three or more image
borders on most slices (a crop inside the body, e.g. ``ct-chest-crops``). The heuristic is
for adult CT; a paediatric chest may fall under the lung fraction at its bases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ScanCoverage", "scan_coverage", "implausible", "CHEST_LUNG_FRACTION", "MIN_REGION_FRACTION", "REGIONS"]

#: Aerated fraction of the body cross-section at or above which a slice is at chest level.
CHEST_LUNG_FRACTION = 0.15
#: A label must have at least this fraction of its voxels at its region's levels.
MIN_REGION_FRACTION = 0.5
#: Body regions a model card may name for a label.
REGIONS = ("any", "head", "neck", "chest", "abdomen", "pelvis")

_LEVELS_FOR = {"chest": {"chest"}, "abdomen": {"below-chest", "no-chest"}, "pelvis": {"below-chest", "no-chest"},
               "head": {"above-chest", "no-chest"}, "neck": {"above-chest", "no-chest"}}


@dataclass
class ScanCoverage:
    """Per axial slice ``k`` (the volume's z axis), the level it shows.

    ``levels[k]`` is ``"chest"``, ``"below-chest"``, ``"above-chest"``, ``"no-chest"`` or
    ``"none"`` (no body in the slice). ``lung_fraction[k]`` is the aerated fraction of the body
    cross-section. ``known`` is False when coverage cannot be judged (``note`` says why).
    """

    levels: list[str]
    lung_fraction: np.ndarray
    known: bool = True
    note: str = ""
    slice_mm: float = 1.0
    extra: dict = field(default_factory=dict)

    def covers(self, region: str) -> bool:
        """Whether any slice is at a level of ``region`` (always True for ``any`` or unknown coverage)."""
        if region == "any" or not self.known:
            return True
        want = _LEVELS_FOR.get(region, set())
        return any(lv in want for lv in self.levels)

    def fraction_at(self, region: str, per_slice_counts: np.ndarray) -> float:
        """Fraction of a label's voxels (``per_slice_counts[k]`` voxels on slice ``k``) at ``region``'s levels."""
        total = float(np.sum(per_slice_counts))
        if region == "any" or not self.known or total == 0:
            return 1.0
        want = _LEVELS_FOR.get(region, set())
        mask = np.array([lv in want for lv in self.levels])
        return float(np.sum(np.asarray(per_slice_counts)[mask])) / total

    def describe(self) -> str:
        if not self.known:
            return f"coverage unknown ({self.note})"
        n = {lv: self.levels.count(lv) for lv in set(self.levels)}
        parts = [f"{n[k]} slice(s) {k}" for k in ("above-chest", "chest", "below-chest", "no-chest") if n.get(k)]
        return ", ".join(parts) or "no body in the scan"


def _body_and_air(sl: np.ndarray):
    from scipy import ndimage as ndi

    m = sl > -500
    lab, n = ndi.label(m)
    if n == 0:
        return None, 0
    sizes = ndi.sum_labels(m, lab, range(1, n + 1))
    body = ndi.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
    return body, int((body & (sl < -400)).sum())


def scan_coverage(hu: np.ndarray, spacing_xyz, direction=None) -> ScanCoverage:
    """Body-region levels of each axial slice of a CT (see the module docstring).

    Parameters
    ----------
    hu : numpy.ndarray
        ``(z, y, x)`` HU values.
    spacing_xyz : sequence of 3 floats
        Voxel spacing ``(sx, sy, sz)`` in mm.
    direction : 3x3 array, optional
        The volume's direction matrix (columns: LPS unit vectors of i, j, k); decides which
        end is superior. Without it, superior/inferior are unknown (levels ``no-chest``).
    """
    hu = np.asarray(hu)
    nz = hu.shape[0]
    step = max(1, int(round(max(hu.shape[1:]) / 256)))  # 256 px in-plane is plenty for areas
    frac = np.zeros(nz)
    has_body = np.zeros(nz, bool)
    border_hits = 0
    for k in range(nz):
        body, air = _body_and_air(hu[k, ::step, ::step])
        if body is None or body.sum() < 50:
            continue
        has_body[k] = True
        frac[k] = air / float(body.sum())
        border_hits += int(sum(bool(b.any()) for b in (body[0], body[-1], body[:, 0], body[:, -1])) >= 3)
    cov_note = ""
    known = True
    if direction is not None and abs(float(np.asarray(direction, float).reshape(3, 3)[2, 2])) < 0.8:
        known, cov_note = False, "slices are not axial"
    elif has_body.sum() and border_hits > 0.5 * has_body.sum():
        known, cov_note = False, "the image is a crop inside the body"
    chest = has_body & (frac >= CHEST_LUNG_FRACTION)
    levels = ["none"] * nz
    sup_sign = None
    if direction is not None:
        d = float(np.asarray(direction, float).reshape(3, 3)[2, 2])
        sup_sign = 1.0 if d > 0 else -1.0  # +k goes superior when the k axis points to +S (LPS z)
    ks = np.nonzero(chest)[0]
    for k in range(nz):
        if not has_body[k]:
            continue
        if chest[k]:
            levels[k] = "chest"
        elif len(ks) == 0 or sup_sign is None:
            levels[k] = "no-chest"
        elif ks.min() < k < ks.max():
            levels[k] = "chest"  # a low-air slice between chest slices is still at chest level
        else:
            above = (k > ks.max()) if sup_sign > 0 else (k < ks.min())
            levels[k] = "above-chest" if above else "below-chest"
    return ScanCoverage(levels, frac, known, cov_note, float(spacing_xyz[2]))


def implausible(name: str, index: int, voxels: int, volume_ml: float, card_label: dict, labels: np.ndarray | None,
                coverage: ScanCoverage | None) -> str | None:
    """Why label ``name`` (value ``index`` in ``labels`` ``(z, y, x)``) cannot be in this scan, or ``None``.

    ``card_label`` is the label's entry in the model card (``body_region``, ``min_volume_ml``).
    The region check needs ``coverage``; the volume check (mL) does not. An empty label (0
    voxels) in a covered region is *not* implausible: it stays a finding (Needs review).
    """
    region = card_label.get("body_region")
    min_ml = card_label.get("min_volume_ml")
    if coverage is not None and coverage.known and region and region != "any":
        if voxels == 0:
            if not coverage.covers(region):
                return f"the scan does not cover the {region} ({coverage.describe()})"
        elif labels is not None:
            per = (labels == index).sum(axis=(1, 2))
            frac = coverage.fraction_at(region, per)
            if frac < MIN_REGION_FRACTION:
                where: dict[str, int] = {}  # voxels of the label per body level
                for k in np.nonzero(per)[0]:
                    where[coverage.levels[k]] = where.get(coverage.levels[k], 0) + int(per[k])
                main = max(where, key=where.__getitem__)
                return (f"{name} is outside its body region: only {frac:.0%} of its {voxels} voxels lie at {region} levels "
                        f"(most at {main} levels); the scan shows {coverage.describe()}")
    if voxels > 0 and min_ml is not None and float(volume_ml) < float(min_ml):
        return f"volume {float(volume_ml):.1f} mL is below the plausible minimum of {float(min_ml):g} mL for {name} (model card)"
    return None
