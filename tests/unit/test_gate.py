"""The review gate against hostile use: every way around it that issue 12 names is closed.

Real packages, real studies (``../shared/data``), real SQLite files edited behind the store's
back with the stdlib ``sqlite3`` module, the real command line.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from radreview.inference.package import load_package
from radreview.inference.segment import LabelStats, SegmentationResult
from radreview.review.audit_chain import GENESIS
from radreview.review.findings import (
    Finding, FindingStatus, PackageChanged, ReviewSession, SignOffRefused, StudyLocked, findings_from_classification,
    findings_from_segmentation, study_key_info,
)
from radreview.review.integrity import head_path
from radreview.review.plausibility import scan_coverage
from radreview.review.runs import RunChanged, load_last_run
from radreview.review.settings import remember_reviewer, remembered_reviewer
from radreview.review.store import ReviewStore, StoreLocked, StoreMissing, StoreTampered
from tests.audit_tamper import recompute_chain
from radreview.studies import open_volume
from radreview.review.workstation import StudySession
from radreview.viewer.workflow import encode_run_outputs, open_session, restore_last_run, run_models, save_ai_run

ORG = "ct-organs-2p5d"
NOD = "ct-nodule-2p5d"


def _findings():
    return [
        Finding("m:liver", "m", "segmentation", "liver", 0.95, 0.85, {"volume_ml": 1500.0, "voxels": 9000}),
        Finding("m:lungs", "m", "segmentation", "lungs", 0.70, 0.85, {"voxels": 500}),
        Finding("n:study", "n", "classification", "study", 0.92, 0.9, {"answer_label": "Nodule >= 6 mm"},
                probability=0.92, operating_threshold=0.5),
        Finding("n:candidate-1", "n", "candidate", "candidate-1", 0.97, 0.9, {"size_mm": 4.0}, probability=0.03,
                operating_threshold=0.5),
    ]


def _reviewed_db(tmp_path):
    """A database with a decision, a threshold change and a sign-off; returns its path."""
    db = tmp_path / "r.sqlite"
    st = ReviewStore(db)
    s = ReviewSession(st, "study:1", _findings())
    st.save_findings("study:1", [f.as_dict() for f in s.findings.values()])
    s.set_threshold("m", "liver", 0.9, "dr a", "stricter")
    s.confirm_all_positives("dr a")
    s.decide("lungs", "reject", "dr a", "foam")
    s.sign_off("dr a")
    assert st.verify_audit().ok
    st.close()
    return db


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "radreview.viewer.cli", *args], capture_output=True, text=True)


# ---------------------------------------------------------------------- the four states
def test_states_and_answer_in_words():
    f = {x.id: x for x in _findings()}
    assert f["m:liver"].status is FindingStatus.AI_POSITIVE and f["m:liver"].requires_decision
    assert f["m:lungs"].status is FindingStatus.NEEDS_REVIEW
    assert f["n:study"].status is FindingStatus.AI_POSITIVE  # p 0.92 on the aorta now needs a decision
    assert f["n:candidate-1"].status is FindingStatus.AI_NEGATIVE and not f["n:candidate-1"].requires_decision
    assert f["n:study"].answer == "Nodule >= 6 mm: yes, p 0.92"
    d = f["n:study"].as_dict()
    assert d["status"] == "ai_positive" and d["probability"] == 0.92 and "operating threshold" in d["reason"]
    assert [x.status.label for x in f.values()] == ["AI positive", "Needs review", "AI positive", "AI negative"]


def test_empty_and_non_finite_results_need_review():
    nan = float("nan")
    empty = Finding("m:kidneys", "m", "segmentation", "kidneys", None, 0.85, {"voxels": 0})
    assert empty.status is FindingStatus.NEEDS_REVIEW and "no kidneys voxels" in empty.reason
    nanconf = Finding("m:liver", "m", "segmentation", "liver", nan, 0.85, {"voxels": 10})
    assert nanconf.status is FindingStatus.NEEDS_REVIEW and "not a finite number" in nanconf.reason
    nothr = Finding("m:x", "m", "segmentation", "x", 0.99, None, {"voxels": 10})
    assert nothr.status is FindingStatus.NEEDS_REVIEW and "no review threshold" in nothr.reason
    nanp = Finding("n:study", "n", "classification", "study", 0.99, 0.9, probability=nan)
    assert nanp.status is FindingStatus.NEEDS_REVIEW
    d = json.loads(json.dumps(nanconf.as_dict()))  # JSON-safe, and still Needs review when restored
    from radreview.review.findings import finding_from_dict

    assert finding_from_dict(d).status is FindingStatus.NEEDS_REVIEW
    # through the real builders: a label with 0 voxels that the card expects, a NaN confidence, a NaN probability
    pkg = load_package(ORG)
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1:3, 2:6, 2:6] = 3
    stats = [LabelStats(3, "liver", 32, 400.0, nan), LabelStats(4, "spleen", 0, 0.0, None)]
    fs = {f.name: f for f in findings_from_segmentation(SegmentationResult(ORG, "fp32", labels, labels * 0.0, labels * 0.0,
                                                                           stats, 0.1), pkg)}
    assert fs["liver"].status is FindingStatus.NEEDS_REVIEW and fs["spleen"].status is FindingStatus.NEEDS_REVIEW
    assert fs["spleen"].threshold == pkg.meta["review_policy"]["confidence_threshold"]["spleen"]  # a threshold, not "ok"


def test_classification_states_and_pass_through(data_dir):
    """Study finding and candidates from a real nodule run; unknown candidate keys pass through."""
    from dataclasses import replace

    from radreview.inference.classify import Candidate, ClassificationResult

    pkg = load_package(NOD)
    c = Candidate(1, (1.0, 2.0, 3.0), 12.0, 0.97, 0.97, 0.9, 100, 1)
    # what the retrained model adds (issue 9): long_axis_mm, nodule_type, ... passed into details unchanged
    cands = [replace(c, long_axis_mm=13.1, nodule_type="solid"),
             replace(c, rank=2, size_mm=5.0, probability=0.03, label=2),
             replace(c, rank=3, size_mm=7.0, probability=0.6, label=3)]
    res = ClassificationResult(NOD, "fp32", 0.97, cands, np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), None, 1.0)
    fs = findings_from_classification(res, pkg)
    st = {f.name: f for f in fs}
    assert st["study"].status is FindingStatus.AI_POSITIVE and st["study"].answer.startswith("Nodule >= 6 mm: yes, p 0.97")
    assert st["candidate-1"].details["long_axis_mm"] == 13.1 and st["candidate-1"].details["nodule_type"] == "solid"
    assert st["candidate-1"].details["center_lps"] == [1.0, 2.0, 3.0]
    assert "candidate-2" not in st  # p 0.03 < the card's min_candidate_probability 0.1
    assert st["candidate-3"].status is FindingStatus.NEEDS_REVIEW  # p 0.6: confidence 0.6 < 0.9


# ---------------------------------------------------------------------- sign-off lock, addendum, confirm all
def test_sign_off_closes_the_study_and_addenda_need_a_reason(tmp_path):
    st = ReviewStore(tmp_path / "r.sqlite")
    s = ReviewSession(st, "study:1", _findings())
    with pytest.raises(SignOffRefused) as err:
        s.sign_off("dr a")
    assert {f.id for f in err.value.pending} == {"m:liver", "m:lungs", "n:study"}
    ids = s.confirm_all_positives("dr a")
    assert ids == ["m:liver", "n:study"]
    confirm = [r for r in st.audit_rows() if r[3] == "confirm-all-positives"]
    assert len(confirm) == 1 and json.loads(confirm[0][4])["findings"] == ids  # one explicit, logged action
    s.decide("lungs", "reject", "dr a", "foam")
    s.sign_off("dr a")
    assert s.state() == "signed off"
    with pytest.raises(StudyLocked, match="read-only"):
        s.decide("lungs", "accept", "dr b")
    with pytest.raises(ValueError, match="reason"):
        s.decide("lungs", "accept", "dr b", addendum=True)
    with pytest.raises(StudyLocked):  # the store itself refuses: no caller can bypass the lock
        st.record_decision("study:1", "m:lungs", "accept", "mallory")
    with pytest.raises(SignOffRefused, match="nothing changed"):
        s.sign_off("dr a")
    s.decide("lungs", "accept", "dr b", "re-read: it is lung", addendum=True)
    assert s.state() == "addendum pending sign-off" and s.decisions["m:lungs"]["addendum"] is True
    s.sign_off("dr b")
    assert [x["addendum"] for x in s.signed_off()] == [False, True]
    assert st.verify_audit().ok


# ---------------------------------------------------------------------- store hardening
@pytest.mark.parametrize("sql", [
    "INSERT INTO decisions (study_key, finding_id, decision, reviewer, reason, ts) VALUES "
    "('study:1', 'm:liver', 'reject', 'mallory', '', '2026-01-01T00:00:00+00:00')",
    "INSERT OR REPLACE INTO thresholds (model_id, label, value, reviewer, reason, ts) VALUES "
    "('m', 'lungs', 0.1, 'mallory', '', '2026-01-01T00:00:00+00:00')",
    "INSERT INTO signoffs (study_key, reviewer, findings_json, ts) VALUES ('study:2', 'mallory', '[]', '2026-01-01')",
    "UPDATE decisions SET decision = 'accept' WHERE finding_id = 'm:lungs'",
    "DELETE FROM signoffs",
])
def test_rows_written_past_the_store_are_refused(tmp_path, sql):
    db = _reviewed_db(tmp_path)
    raw = sqlite3.connect(db)
    raw.execute(sql)
    raw.commit()
    raw.close()
    with pytest.raises(StoreTampered, match="not in the audit log|missing|audit log says") as err:
        ReviewStore(db)
    assert "r.sqlite" in str(err.value)
    p = _cli("audit", "verify", "--db", str(db))
    assert p.returncode == 2 and "FAILED" in p.stderr and "table" in p.stderr


def _recompute_chain(raw):
    out = recompute_chain(raw)
    raw.commit()
    return out


def test_recomputed_chain_is_caught_by_the_head_file_and_its_hmac(tmp_path):
    db = _reviewed_db(tmp_path)
    raw = sqlite3.connect(db)
    # rewrite history consistently: the lungs decision becomes an accept, in the table AND the log
    raw.execute("UPDATE decisions SET decision = 'accept' WHERE finding_id = 'm:lungs'")
    raw.execute("UPDATE audit SET payload = replace(payload, '\"reject\"', '\"accept\"') WHERE action = 'decision'")
    n, last = _recompute_chain(raw)
    with pytest.raises(StoreTampered, match="does not match its head file"):
        ReviewStore(db)
    # ...and editing the head file to match is caught by its HMAC (key in the user config folder)
    head = json.loads(head_path(db).read_text())
    head.update(count=n, last_hash=last)
    head_path(db).write_text(json.dumps(head))
    with pytest.raises(StoreTampered, match="fails its HMAC"):
        ReviewStore(db)


def test_trimmed_tail_with_head_fixed_and_wiped_audit_are_caught(tmp_path):
    db = _reviewed_db(tmp_path)
    raw = sqlite3.connect(db)
    last_id, = raw.execute("SELECT MAX(id) FROM audit").fetchone()
    raw.execute("DELETE FROM audit WHERE id = ?", (last_id,))
    raw.execute("DELETE FROM signoffs")
    h, = raw.execute("SELECT hash FROM audit WHERE id = ?", (last_id - 1,)).fetchone()
    raw.execute("UPDATE audit_head SET last_hash = ?, count = ?", (h, last_id - 1))
    raw.commit()
    with pytest.raises(StoreTampered, match="head file"):
        ReviewStore(db)
    # wipe everything the audit and the state tables hold: only the head file remembers
    for t in ("audit", "decisions", "signoffs", "thresholds", "findings", "study_packages", "runs"):
        raw.execute(f"DELETE FROM {t}")
    raw.execute("UPDATE audit_head SET last_hash = ?, count = 0", (GENESIS,))
    raw.commit()
    with pytest.raises(StoreTampered, match="the database has 0"):
        ReviewStore(db)
    p = _cli("audit", "verify", "--db", str(db))
    assert p.returncode == 2 and "FAILED" in p.stderr
    # deleting the database and starting an empty one at the same path is caught as well
    raw.close()
    db.unlink()
    with pytest.raises(StoreTampered, match="head file"):
        ReviewStore(db)


def test_missing_db_is_an_error_unless_create(tmp_path):
    typo = tmp_path / "reveiw.sqlite"
    with pytest.raises(StoreMissing, match="no such review database"):
        ReviewStore(typo, create=False)
    p = _cli("audit", "verify", "--db", str(typo))
    assert p.returncode == 2 and "no such review database" in p.stderr and not typo.exists()
    assert ReviewStore(typo, create=True).verify_audit().ok


def test_locked_database_is_reported_with_advice(tmp_path):
    db = _reviewed_db(tmp_path)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock, as another process would
    try:
        with pytest.raises(StoreLocked, match="locked by another process.*try again"):
            ReviewStore(db, timeout=0.2)
        # a store opened before the lock was taken: the write path reports it the same way
        other.execute("ROLLBACK")
        st = ReviewStore(db, timeout=0.2)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreLocked, match="nothing was saved"):
            st.record_decision("study:9", "m:liver", "accept", "dr a")
        p = _cli("audit", "verify", "--db", str(db))
        assert p.returncode == 2 and "locked by another process" in p.stderr and "Traceback" not in p.stderr
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert ReviewStore(db).decisions("study:9") == {}


def test_study_key_is_never_the_path(tmp_path, data_dir, ct_series):
    src = data_dir / "ct-abdomen-nifti" / "ct_30slices.nii.gz"
    a = tmp_path / "a" / "scan.nii.gz"
    b = tmp_path / "b" / "copy.nii.gz"
    a.parent.mkdir()
    b.parent.mkdir()
    shutil.copy(src, a)
    shutil.copy(src, b)
    ka, kb = study_key_info(open_volume(a)), study_key_info(open_volume(b))
    assert ka.key == kb.key and ka.key.startswith("content:")  # same scan, another path: same study
    assert ka.weak and "no Study Instance UID" in ka.weak  # and the UI is told the key is weak
    shutil.copy(data_dir / "ct-chest-crops" / "chest_crop_1.nii.gz", a)  # another patient at the same path
    assert study_key_info(open_volume(a)).key != ka.key
    # a relative path gives the same key as the absolute one
    import os

    cwd = os.getcwd()
    try:
        os.chdir(b.parent)
        assert study_key_info(open_volume("copy.nii.gz")).key == kb.key
    finally:
        os.chdir(cwd)
    vol = open_volume(data_dir / "ct-chest-tumor" / "series_B40f")
    k = study_key_info(vol)
    assert vol.info.study_instance_uid  # this series has one: the key is the UID, not weak
    assert k.key == f"study:{vol.info.study_instance_uid}" and k.weak is None


def test_changed_package_is_refused_for_a_reviewed_study(tmp_path):
    st = ReviewStore(tmp_path / "r.sqlite")
    shipped = load_package(ORG)
    copy = tmp_path / ORG
    shutil.copytree(shipped.root, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["review_policy"]["confidence_threshold"]["liver"] = 0.1  # a quietly laxer card
    (copy / "model.json").write_text(json.dumps(meta, indent=1))
    edited = load_package(copy)
    assert edited.package_sha256 != shipped.package_sha256  # model.json itself is covered by the hash
    s = ReviewSession(st, "study:1", _findings())
    s.check_packages({ORG: ("0.1.0", shipped.package_sha256)})
    assert st.study_packages("study:1")[ORG]["sha256"] == shipped.package_sha256
    s.check_packages({ORG: ("0.1.0", edited.package_sha256)})  # not reviewed yet: recorded, allowed
    s.check_packages({ORG: ("0.1.0", shipped.package_sha256)})
    s.decide("lungs", "reject", "dr a")
    with pytest.raises(PackageChanged, match="reviewed with package 0.1.0"):
        s.check_packages({ORG: ("0.1.0", edited.package_sha256)})
    assert st.verify_audit().ok and [r[3] for r in st.audit_rows()].count("package") == 3


# ---------------------------------------------------------------------- plausibility (real scans, real model)
def test_chest_ct_organs_outside_the_scan_are_not_assessed(data_dir, tmp_path):
    vol = open_volume(data_dir / "ct-chest-tumor" / "series_B40f")
    cov = scan_coverage(vol.array, vol.spacing, vol.direction)
    assert cov.known and cov.levels.count("chest") >= 15 and "below-chest" in cov.levels
    run = run_models(vol, [ORG], None, threads=2)
    f = {x.name: x for x in run.findings}
    # the heart hatched as liver, a 5-20 mL "spleen" and tiny "kidneys" are not findings
    for name in ("liver", "spleen", "kidneys"):
        assert f[name].status is FindingStatus.NOT_ASSESSED, (name, f[name].reason)
    assert "body region" in f["liver"].reason or "outside" in f["liver"].reason
    # body, lungs and bone are anatomical context (card role "context"), never findings to decide
    assert not {"body", "lungs", "bone"} & set(f)
    ctx = {c.name: c for c in run.context}
    assert set(ctx) == {"body", "lungs", "bone"} and ctx["lungs"].volume_ml > 1000 and ctx["lungs"].not_assessed is None
    assert "below the plausible minimum of 40 mL" in f["kidneys"].reason
    abd, run2 = vol, run
    # reopening restores the run: findings, label map (checked by SHA-256), decisions, reviewer
    st = ReviewStore(tmp_path / "r.sqlite")
    s = open_session(st, abd, run2.findings, run2.package_hashes())
    run2.encoded = encode_run_outputs(run2)  # as the Run AI worker does: the GUI thread only writes bytes
    save_ai_run(st, s, run2)
    s.decide("liver", "reject", "dr restore")
    remember_reviewer("dr restore")
    st.close()
    st2 = ReviewStore(tmp_path / "r.sqlite")
    findings, saved = restore_last_run(st2, abd)
    assert [x.id for x in findings] == [x.id for x in run2.findings]
    assert [x.status for x in findings] == [x.status for x in run2.findings]
    assert np.array_equal(saved[ORG].arrays["labels"], run2.segmentations[ORG].labels)
    assert saved[ORG].package_sha256 == run2.package_hashes()[ORG][1]
    assert st2.decisions(s.key)[f"{ORG}:liver"]["reviewer"] == "dr restore"
    assert [c.as_dict() for c in StudySession(st2).open_study(abd).context] == [c.as_dict() for c in run2.context]
    assert remembered_reviewer() == "dr restore"
    labels_file = saved[ORG].folder / "labels.npz"
    assert labels_file.read_bytes() == run2.encoded[ORG]["labels"]
    np.savez_compressed(labels_file, array=np.zeros_like(saved[ORG].arrays["labels"]))  # swapped on disk
    with pytest.raises(RunChanged, match="changed since it was saved"):
        load_last_run(st2, s.key)


# ---------------------------------------------------------------------- the command line contract
def test_cli_gate_contract(ct_series, tmp_path):
    db = tmp_path / "r.sqlite"
    base = ["review", str(ct_series), "--model", ORG, "--reviewer", "dr cli", "--db", str(db)]
    p = _cli(*base, "--create", "--json", "--sign-off")
    assert p.returncode == 2 and "sign-off refused" in p.stderr and "(AI positive)" in p.stderr
    data = json.loads(p.stdout.strip().splitlines()[-1])
    st = {f["name"]: f for f in data["findings"]}
    assert st["liver"]["status"] == "ai_positive" and not {"body", "lungs", "bone"} & set(st)
    assert {f["status"] for f in data["findings"]} <= {"needs_review", "ai_positive", "ai_negative", "not_assessed"}
    ctx = {c["name"]: c for c in data["context"]}  # anatomical context: listed apart, no status
    assert set(ctx) == {"body", "lungs", "bone"} and all(c["role"] == "context" and "status" not in c for c in ctx.values())
    assert ctx["body"]["volume_ml"] > 1000 and "body region" in ctx["lungs"]["not_assessed"]  # table-foam "lungs"
    assert st["kidneys"]["status"] == "not_assessed" and "40 mL" in st["kidneys"]["reason"]  # 2 mL of "kidneys"
    needs = [f["id"] for f in data["findings"] if f["status"] == "needs_review"]
    decide = sum((["--decide", f"{fid}=accept"] for fid in needs), [])
    base = [*base, "--reuse-last-run"]  # decide on the stored findings; no second inference
    p = _cli(*base, "--confirm-all-positives", *decide, "--reason", "checked", "--sign-off")
    assert p.returncode == 0, p.stderr
    assert "confirmed" in p.stdout and "signed off by dr cli" in p.stdout
    p = _cli(*base, "--decide", "liver=reject")
    assert p.returncode == 2 and "signed off" in p.stderr and "--addendum" in p.stderr
    p = _cli(*base, "--sign-off")
    assert p.returncode == 2 and "nothing changed" in p.stderr
    p = _cli(*base, "--decide", "liver=reject", "--addendum", "--reason", "re-read: not liver", "--sign-off", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    liver = next(f for f in out["findings"] if f["name"] == "liver")
    assert liver["decision"] == "reject" and liver["addendum"] is True
    p = _cli("audit", "verify", "--db", str(db))
    assert p.returncode == 0 and "hash chain intact" in p.stdout
    rows = ReviewStore(db).audit_rows()
    assert [r[3] for r in rows].count("confirm-all-positives") == 1 and [r[3] for r in rows].count("sign-off") == 2
