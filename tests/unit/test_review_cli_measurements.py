"""``radreview review`` lists the study's saved measurements in ``--json`` and in the sign-off text.

The real command line on the sample CT (``../shared/data``) with the real organ package; the
measurement is saved through the real store, as the viewer's measure tools save it.
"""

from __future__ import annotations

import json
import subprocess
import sys

from radreview.review.store import ReviewStore

ORG = "ct-organs-2p5d"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "radreview.viewer.cli", *args], capture_output=True, text=True)


def _json(p):
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])


def test_review_json_and_sign_off_list_measurements(ct_series, tmp_path):
    db = tmp_path / "r.sqlite"
    base = ["review", str(ct_series), "--model", ORG, "--reviewer", "dr measure", "--db", str(db)]
    p = _cli(*base, "--create", "--json")
    assert p.returncode == 0, p.stderr
    data = _json(p)
    assert data["measurements"] == []
    ruler = {"id": "m1", "kind": "ruler", "points_lps": [[0.0, 0.0, 0.0], [30.0, 40.0, 0.0]], "plane": "axial",
             "label": "liver span", "source": "reviewer", "finding_id": None, "values": {"length_mm": 50.0}}
    angle = {"id": "m2", "kind": "angle", "points_lps": [[0.0, 10.0, 0.0], [0.0, 0.0, 0.0], [10.0, 0.0, 0.0]],
             "plane": "axial", "label": "", "source": "reviewer", "finding_id": None, "angle_deg": 90.0}
    st = ReviewStore(db)
    st.save_measurements(data["study"], [ruler, angle], "dr measure")
    st.close()

    base = [*base, "--reuse-last-run"]
    p = _cli(*base, "--json")
    assert p.returncode == 0, p.stderr
    assert _json(p)["measurements"] == [ruler, angle]
    flagged = [f["id"] for f in data["findings"] if f["status"] in ("needs_review", "ai_positive")]
    assert flagged
    decide = sum((["--decide", f"{fid}=accept"] for fid in flagged), [])
    p = _cli(*base, *decide, "--reason", "checked", "--sign-off")
    assert p.returncode == 0, p.stderr
    assert "signed off by dr measure" in p.stdout and "with 2 measurement(s)" in p.stdout
    assert 'ruler m1 (axial) "liver span": length_mm 50.0' in p.stdout and "angle m2 (axial): angle_deg 90.0" in p.stdout
    rows = ReviewStore(db).audit_rows()
    signoff = json.loads(next(r for r in reversed(rows) if r[3] == "sign-off")[4])
    assert signoff["measurements"] == [ruler, angle]
