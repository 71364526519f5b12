"""Manual label tools on the real sample CT and its TotalSegmentator labels (viewer.editing)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from radreview.review.store import ReviewStore
from radreview.studies import open_volume
from radreview.studies.labels import load_reference
from radreview.viewer.editing import LabelEditor, dice, save_edited_mask


@pytest.fixture(scope="module")
def ct(ct_series):
    return open_volume(ct_series)


@pytest.fixture(scope="module")
def ts_labels(data_dir, ct):
    arr = load_reference(data_dir / "ct-abdomen-dicom" / "totalsegmentator_labels.nii.gz", ct).array.astype(np.uint8)
    assert arr.shape == ct.array.shape
    return arr


def editor_on(ct, labels=None):
    lab = np.zeros(ct.array.shape, np.uint8) if labels is None else labels
    return LabelEditor(lab, ct.spacing[::-1], ct.array)


def test_disc_brush_is_round_in_mm_and_stays_on_its_slice(ct):
    ed = editor_on(ct)
    c = (10, 256, 256)
    n = ed.paint(c, 10.0, 3, mode="disc2d", plane="axial")
    zs, ys, xs = np.nonzero(ed.labels)
    assert set(zs) == {10}
    d = np.hypot((ys - 256) * ct.spacing[1], (xs - 256) * ct.spacing[0])
    assert d.max() <= 10.0
    # area of a 10 mm disc / pixel area (0.977 mm pixels), within 3 %
    expect = np.pi * 100 / (ct.spacing[0] * ct.spacing[1])
    assert abs(n - expect) / expect < 0.03
    assert ed.labels.max() == 3


def test_sphere_brush_spans_slices_by_mm(ct):
    ed = editor_on(ct)
    ed.paint((10, 256, 256), 5.0, 1, mode="sphere3d")
    zs = np.unique(np.nonzero(ed.labels)[0])
    # 5 mm radius with 2 mm slices: slices 8..12 (|dz| <= 4 mm)
    assert list(zs) == [8, 9, 10, 11, 12]


def test_threshold_limited_paint_only_touches_voxels_in_the_hu_range(ct):
    ed = editor_on(ct)
    center = (10, 256, 256)
    n_all = LabelEditor(np.zeros(ct.array.shape, np.uint8), ct.spacing[::-1], ct.array).paint(center, 40, 1)
    n = ed.paint(center, 40, 1, hu_range=(0, 100))
    assert 0 < n < n_all
    vals = ct.array[ed.labels == 1]
    assert vals.min() >= 0 and vals.max() <= 100


def test_eraser_and_only_label(ct, ts_labels):
    ed = editor_on(ct, ts_labels)
    liver = ts_labels == 5
    z, y, x = [int(np.median(a)) for a in np.nonzero(liver)]
    before = ed.labels.copy()
    ed.erase((z, y, x), 30.0, only_label=5)
    changed = before != ed.labels
    assert changed.any()
    assert np.all(before[changed] == 5) and np.all(ed.labels[changed] == 0)
    assert np.all(ts_labels[changed] == 5)  # the input array itself is untouched (the editor copies)
    assert np.array_equal(ts_labels == 5, liver)


def test_fill_closed_contour_on_one_slice(ct):
    ed = editor_on(ct)
    k = 7
    yy, xx = np.mgrid[0:512, 0:512]
    r = np.hypot(yy - 200, xx - 300)
    ed.labels[k][(r >= 20) & (r < 22)] = 2  # a drawn ring
    inside = (r < 20)
    n = ed.fill((k, 200, 300), 2, plane="axial")
    assert n == int(inside.sum())
    assert np.all(ed.labels[k][inside] == 2)
    assert not ed.labels[k - 1].any() and not ed.labels[k + 1].any()
    assert (ed.labels[k] == 2).sum() == int((r < 22).sum())


def test_remove_small_islands(ct, ts_labels):
    lab = (ts_labels == 5).astype(np.uint8)
    lab[2, 10:12, 10:12] = 1  # 4-voxel island
    lab[15, 500, 500] = 1  # 1-voxel island
    ed = editor_on(ct, lab)
    n = ed.remove_islands(50)
    assert n >= 5
    assert ed.labels[2, 10, 10] == 0 and ed.labels[15, 500, 500] == 0
    assert (ed.labels == 1).sum() >= (ts_labels == 5).sum() - 50 * 10


def test_interpolation_between_drawn_slices_matches_the_reference(ct, ts_labels):
    """Draw the TotalSegmentator liver on every 4th slice, interpolate, compare to the full mask."""
    liver = ts_labels == 5
    zs = np.nonzero(liver.any(axis=(1, 2)))[0]
    drawn = np.zeros_like(ts_labels)
    keep = zs[::4]
    drawn[keep] = np.where(liver[keep], 5, 0)
    ed = editor_on(ct, drawn)
    n = ed.interpolate(5, plane="axial")
    assert n > 0
    lo, hi = keep.min(), keep.max()
    sl = slice(lo, hi + 1)
    d_interp = dice(ed.labels[sl], np.where(liver[sl], 5, 0), 5)
    d_drawn = dice(drawn[sl], np.where(liver[sl], 5, 0), 5)
    assert d_interp > 0.9 and d_interp > d_drawn + 0.05
    ed.undo()
    assert np.array_equal(ed.labels, drawn)


def test_stroke_is_one_undo_step_and_redo_restores(ct):
    ed = editor_on(ct)
    ed.begin_stroke()
    for x in range(150, 351, 40):  # gaps of 40 px are bridged by stroke_to
        ed.stroke_to((10, 256, x), 5.0, 4)
    ed.end_stroke()
    row = ed.labels[10, 256]
    assert np.all(row[150:350] == 4)  # continuous line
    after = ed.labels.copy()
    assert ed.undo_steps == 1
    assert ed.undo() and not ed.labels.any()
    assert ed.redo() and np.array_equal(ed.labels, after)
    assert not ed.redo()


def test_undo_memory_after_50_strokes_is_sparse(ct):
    """50 strokes on a 512x512x300 label map (the issue's CT size, sample CT spacing)."""
    ed = LabelEditor(np.zeros((300, 512, 512), np.uint8), ct.spacing[::-1], copy=False)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ed.begin_stroke()
        z = int(rng.integers(0, 300))
        y0, x0 = rng.integers(100, 400, size=2)
        for t in range(10):
            ed.stroke_to((z, y0 + 3 * t, x0 + 5 * t), 8.0, 1)
        d = ed.end_stroke()
        assert d is not None and len(d) > 0
    assert ed.undo_steps == 50
    vol_bytes = ed.labels.nbytes
    # O(voxels changed): 4 (int32 index) + 1 + 1 bytes per changed voxel and step, never a copy
    assert ed.undo_bytes <= 6 * sum(len(d) for d in ed._undo)
    assert ed.undo_bytes < 0.05 * vol_bytes, (ed.undo_bytes, vol_bytes)
    for _ in range(50):
        assert ed.undo()
    assert not ed.labels.any()


def test_undo_keeps_at_least_50_steps(ct):
    assert editor_on(ct).max_undo >= 50
    ed = LabelEditor(np.zeros(ct.array.shape, np.uint8), ct.spacing[::-1], max_undo=50)
    for i in range(60):
        ed.paint((i % 20, 100 + 4 * i, 100), 2.0, 1)
    assert ed.undo_steps == 50
    for _ in range(50):
        assert ed.undo()
    assert not ed.undo()
    # the 10 oldest dabs, beyond the limit, remain
    assert np.array_equal(np.nonzero(ed.labels[:, :, 100].any(axis=0))[0].min(), 98)
    assert (ed.labels[:, 100 + 4 * 9 + 3:, :] == 0).all()


def test_bad_input_is_named(ct):
    ed = editor_on(ct)
    with pytest.raises(ValueError, match="radius"):
        ed.paint((0, 0, 0), 0, 1)
    with pytest.raises(ValueError, match="plane"):
        ed.paint((0, 0, 0), 3, 1, plane="oblique")
    with pytest.raises(ValueError, match="outside"):
        ed.fill((99, 0, 0), 1)
    with pytest.raises(ValueError, match="3-D integer"):
        LabelEditor(np.zeros((4, 4)), (1, 1, 1))


def test_edited_mask_is_a_new_version_with_dice_in_the_audit_log(ct, ts_labels, tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    ai = ts_labels.copy()
    ed = editor_on(ct, ai)
    z, y, x = [int(np.median(a)) for a in np.nonzero(ai == 1)]
    ed.erase((z, y, x), 15.0, mode="sphere3d", only_label=1)
    res = save_edited_mask(store, ct, "study-A", "ct-organs-2p5d:spleen", ai, ed.labels, "dr. test", label_value=1,
                           folder=tmp_path / "masks")
    assert res["version"] == 1
    assert 0 < res["dice_vs_ai"] < 1
    assert res["dice_vs_ai"] == pytest.approx(dice(ai, ed.labels, 1))
    assert res["path"] != res["ai_path"]
    back = sitk.GetArrayFromImage(sitk.ReadImage(res["path"]))
    assert np.array_equal(back, ed.labels)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(res["ai_path"])), ai)
    res2 = save_edited_mask(store, ct, "study-A", "ct-organs-2p5d:spleen", ai, ed.labels, "dr. test", label_value=1,
                            folder=tmp_path / "masks")
    assert res2["version"] == 2
    rows = [r for r in store.audit_rows() if r[3] == "mask-edit"]
    assert len(rows) == 2 and '"dice_vs_ai"' in rows[0][4] and rows[0][2] == "dr. test"
    assert store.verify_audit().ok
    n = store.conn.execute("SELECT COUNT(*) FROM mask_versions WHERE study_key = 'study-A'").fetchone()[0]
    assert n == 2
    with pytest.raises(ValueError, match="reviewer"):
        save_edited_mask(store, ct, "study-A", "x", ai, ed.labels, " ", folder=tmp_path / "masks")


def test_disagreement_and_outline_overlays_draw_three_classes(ct, ts_labels):
    from radreview.review.compare import disagreement_map
    from radreview.viewer.compare_overlay import DISAGREEMENT_CLASSES, DisagreementOverlay, OutlinePairOverlay
    from radreview.viewer.model import plane_mapping

    ref = np.where(ts_labels == 5, 5, 0).astype(np.uint8)
    ai = np.roll(ref, 12, axis=2)  # a shifted liver: agreement, AI-only and reference-only voxels
    dmap = disagreement_map(ai, ref, [("liver", 5, 5)])
    m = plane_mapping(ct, "axial")
    k = 10
    gray = np.full(m.shape + (3,), 60, np.uint8)
    out = DisagreementOverlay(dmap, opacity=1.0).compose(gray, m, k)
    sl = m.extract(dmap, k)
    for v, _name, rgb in DISAGREEMENT_CLASSES:
        assert np.all(out[sl == v] == rgb)
    assert np.all(out[sl == 0] == 60)
    pair = OutlinePairOverlay(ai, ref, {5: (255, 0, 0)}, {5: (0, 0, 255)}).compose(gray, m, k)
    red = np.all(pair == (255, 0, 0), axis=2).sum()
    blue = np.all(pair == (0, 0, 255), axis=2).sum()
    # solid AI outline vs dashed reference outline of the same shape: about half the pixels
    assert red > 200 and 0.3 * red < blue < 0.7 * red


def test_version_counts_every_change_in_place_and_only_changes():
    """``LabelEditor.version`` (part of the edited overlay's display key: views never reuse a
    slice composed before an edit) moves on paint, undo and redo, not on a no-op dab."""
    ed = LabelEditor(np.zeros((5, 40, 40), np.uint8), (2.0, 1.0, 1.0))
    v0 = ed.version
    assert ed.paint((2, 20, 20), 5.0, 1) > 0 and ed.version > v0
    v1 = ed.version
    assert ed.paint((2, 20, 20), 5.0, 1) == 0 and ed.version == v1  # same voxels, same value
    assert ed.undo() and ed.version > v1
    v2 = ed.version
    assert ed.redo() and ed.version > v2
