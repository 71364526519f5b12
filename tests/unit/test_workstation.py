"""review.workstation.StudySession without Qt: restore on reopen, decisions, sign-off with measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radreview.review.findings import Finding, SignOffRefused
from radreview.review.store import ReviewStore
from radreview.review.vocabulary import Decision, FindingKind
from radreview.review.workstation import StudySession
from radreview.studies.volume import Volume


def _volume():
    arr = np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8)
    return Volume(arr, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))


def test_study_session_round_trip(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite")
    vol = _volume()
    liver = Finding("m:liver", "m", "segmentation", "liver", 0.95, 0.5, {"voxels": 10, "volume_ml": 1.0})
    assert liver.kind is FindingKind.SEGMENTATION
    s = StudySession(store)
    s.adopt_findings(vol, [liver])
    store.save_findings(s.key, [liver.as_dict()])
    with pytest.raises(SignOffRefused):
        s.sign_off("dr a")
    assert "1 AI positive" in s.pending_summary()
    s.decide("liver", Decision.ACCEPT, "dr a")
    item = {"kind": "ruler", "points_lps": [[0, 0, 0], [3, 4, 0]], "length_mm": 5.0}
    store.save_measurements(s.key, [item], "dr a")
    s.sign_off("dr a")
    payload = json.loads(store.audit_rows()[-1][4])
    assert payload["measurements"] == [item] and payload["findings"][0]["decision"] == "accept"

    again = StudySession(store).open_study(vol)  # reopening restores findings, decisions, sign-off
    assert [f.id for f in again.findings()] == ["m:liver"] and again.locked
    d = again.as_dict()
    assert d["findings"][0]["decision"] == "accept" and d["measurements"] == [item]
    assert d["state"] == "signed off" and again.state_text().startswith("Signed off by dr a")
    with pytest.raises(ValueError):
        again.start_addendum(" ")
    again.start_addendum("typo")
    again.decide("liver", "reject", "dr a")
    assert again.decisions()["m:liver"].label == "reject (addendum)"
    assert store.verify_audit().ok
