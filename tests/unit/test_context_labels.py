"""Context structures are not findings (issue 12): the model card's per-label ``role``.

``ct-organs-2p5d`` marks body, lungs and bone ``"role": "context"``: they are drawn, measured and
listed with their volume (``context`` in ``radreview review --json``), never a finding to decide.
Real package, real chest CT (``ct-chest-tumor``), real SQLite store.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from radreview.inference.package import CONTEXT, FINDING, PackageError, label_role, load_package
from radreview.inference.segment import LabelStats, SegmentationResult
from radreview.review.findings import (
    FindingStatus, PackageChanged, ReviewSession, context_from_dict, context_from_segmentation, findings_from_segmentation,
    study_key_info,
)
from radreview.review.store import ReviewStore
from radreview.review.workstation import StudySession
from radreview.studies import open_volume
from radreview.viewer.workflow import run_models, save_ai_run

ORG = "ct-organs-2p5d"


def _toy_result():
    """A 4x8x8 label map with a voxel block of every organ label, confident (0.95)."""
    labels = np.zeros((4, 8, 8), np.uint8)
    stats = []
    for i, name in enumerate(["body", "lungs", "liver", "spleen", "kidneys", "bone"], start=1):
        labels[:, i - 1, :] = i
        stats.append(LabelStats(i, name, 32, 5000.0, 0.95, (1, 2, 3), (0.0, 0.0, float(i))))
    return SegmentationResult(ORG, "fp32", labels, labels * 0.0, labels * 0.0, stats, 0.1)


def _copy_card(tmp_path, edit):
    """A copy of the shipped organ package whose model.json is changed by ``edit(meta)``."""
    src = load_package(ORG)
    dst = tmp_path / ORG
    shutil.copytree(src.root, dst)
    meta = json.loads((dst / "model.json").read_text())
    edit(meta)
    (dst / "model.json").write_text(json.dumps(meta, indent=1))
    return load_package(dst)


# ---------------------------------------------------------------------- the card field
def test_card_role_field_drives_findings(tmp_path):
    pkg = load_package(ORG)
    assert pkg.meta["version"] == "0.1.1"  # 0.1.0 made body/lungs/bone findings: a different package
    assert pkg.context_labels() == ["body", "lungs", "bone"]
    assert pkg.label_role("liver") == FINDING and pkg.label_role("lungs") == CONTEXT and pkg.label_role("nope") == FINDING
    assert label_role({}) == FINDING  # the default for cards without the field (ct-nodule-2p5d, plug-ins)
    res = _toy_result()
    found = {f.name: f for f in findings_from_segmentation(res, pkg)}
    assert set(found) == {"liver", "spleen", "kidneys"}
    assert all(f.status is FindingStatus.AI_POSITIVE for f in found.values())
    ctx = context_from_segmentation(res, pkg)
    assert [c.name for c in ctx] == ["body", "lungs", "bone"]
    d = ctx[1].as_dict()
    assert d["role"] == "context" and d["volume_ml"] == 5000.0 and "status" not in d and d["model_version"] == "0.1.1"
    assert context_from_dict(d).as_dict() == d
    # the field, not a name list in code, decides: the same labels without "role" are findings again
    def no_roles(meta):
        for lab in meta["outputs"]["labels"]:
            lab.pop("role", None)
        meta["review_policy"]["confidence_threshold"].update(body=0.8, lungs=0.85, bone=0.8)

    plain = _copy_card(tmp_path / "a", no_roles)
    assert plain.context_labels() == [] and context_from_segmentation(res, plain) == []
    assert {f.name for f in findings_from_segmentation(res, plain)} == {"body", "lungs", "liver", "spleen", "kidneys", "bone"}
    # and the schema refuses a role it does not know, naming the field
    def bad_role(meta):
        meta["outputs"]["labels"][1]["role"] = "background-ish"

    with pytest.raises(PackageError, match="outputs/labels/1/role"):
        _copy_card(tmp_path / "b", bad_role)


def test_study_reviewed_under_the_old_card_is_not_silently_rebased(tmp_path):
    """A study whose "body" was decided under 0.1.0 (body a finding) refuses the 0.1.1 package:
    the decisions on record would not match its findings (review.findings.check_packages)."""
    def old_card(meta):
        meta["version"] = "0.1.0"
        for lab in meta["outputs"]["labels"]:
            lab.pop("role", None)
        meta["review_policy"]["confidence_threshold"].update(body=0.8, lungs=0.85, bone=0.8)

    old = _copy_card(tmp_path, old_card)
    new = load_package(ORG)
    st = ReviewStore(tmp_path / "r.sqlite")
    old_findings = findings_from_segmentation(_toy_result(), old)
    s = ReviewSession(st, "study:old", old_findings)
    s.check_packages({ORG: ("0.1.0", old.package_sha256)})
    s.decide("body", "accept", "dr old")
    with pytest.raises(PackageChanged, match=r"reviewed with package 0\.1\.0.*installed package is 0\.1\.1"):
        s.check_packages({ORG: ("0.1.1", new.package_sha256)})
    # an unreviewed study simply moves to the new package (recorded in the audit log)
    s2 = ReviewSession(st, "study:fresh", old_findings)
    s2.check_packages({ORG: ("0.1.0", old.package_sha256)})
    s2.check_packages({ORG: ("0.1.1", new.package_sha256)})
    assert st.study_packages("study:fresh")[ORG]["version"] == "0.1.1" and st.verify_audit().ok
    # reopening a study whose stored run came from 0.1.0: its findings as recorded, and a note why
    from pydicom.data import get_testdata_file

    vol = open_volume(get_testdata_file("CT_small.dcm"))
    study = StudySession(st)
    st.save_findings(study_key_info(vol).key, [f.as_dict() for f in old_findings])
    study.open_study(vol)
    assert "body" in {f.name for f in study.pending()}  # decided under 0.1.0 rules, not silently dropped
    assert f"{ORG} 0.1.0 (installed: 0.1.1)" in study.message and "run AI again" in study.message


# ---------------------------------------------------------------------- real chest CT
def test_chest_ct_context_needs_no_decision_and_is_restored(data_dir, tmp_path):
    vol = open_volume(data_dir / "ct-chest-tumor" / "series_B40f")
    run = run_models(vol, [ORG], None, threads=2)
    names = {f.name for f in run.findings}
    assert not names & {"body", "lungs", "bone"}, names
    ctx = {c.name: c for c in run.context}
    assert set(ctx) == {"body", "lungs", "bone"}
    assert ctx["lungs"].not_assessed is None and 1500 < ctx["lungs"].volume_ml < 6000  # adult lungs, chest CT
    assert ctx["body"].volume_ml > ctx["lungs"].volume_ml > ctx["bone"].volume_ml > 100
    st = ReviewStore(tmp_path / "r.sqlite")
    study = StudySession(st)
    study.adopt_run(vol, run, "dr ctx", persist=save_ai_run)
    pend = study.pending()
    assert not {f.name for f in pend} & {"body", "lungs", "bone"}
    assert pend == []  # on a chest CT the organ model leaves nothing to decide (liver/spleen/kidneys: not assessed)
    assert study.context_text() == "Context: body, lungs, bone (not findings)"
    data = study.as_dict()
    assert [c["name"] for c in data["context"]] == ["body", "lungs", "bone"]
    assert not {f["name"] for f in data["findings"]} & {"body", "lungs", "bone"}
    study.sign_off("dr ctx")  # no decision was needed
    row = [r for r in st.audit_rows() if r[3] == "sign-off"][-1]
    payload = json.loads(row[4])
    assert [c["name"] for c in payload["context"]] == ["body", "lungs", "bone"]
    assert not {f["name"] for f in payload["findings"]} & {"body", "lungs", "bone"}
    st.close()
    # reopening restores the context from the saved run (its files checked by SHA-256)
    st2 = ReviewStore(tmp_path / "r.sqlite")
    again = StudySession(st2).open_study(vol)
    assert [c.as_dict() for c in again.context] == [c.as_dict() for c in run.context]
    assert again.locked and again.pending() == []
    assert st2.verify_audit().ok
