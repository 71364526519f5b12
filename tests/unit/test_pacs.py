"""PACS query/retrieve/store against a real Orthanc on loopback ports (DIMSE and DICOMweb),
the command line, the retrieve cache, and every error case: wrong AE title, unknown calling
AE, stopped server, HTTP 401, closed port, timeout."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from radreview.studies.pacs import (
    PacsError, PacsNode, PacsSettings, RetrieveCache, StudyQuery, echo, find_instances, find_series, find_studies,
    iter_retrieve, load_settings, middle_instance, resolve_node, save_settings, store,
)
from tests.pacs_server import PASSWORD, SCP_AET, USER, OrthancServer, free_port, orthanc  # noqa: F401


def dimse(srv, **kw) -> PacsNode:
    return PacsNode(name="orthanc-dimse", kind="dimse", ae_title=kw.pop("ae_title", srv.aet), host="127.0.0.1", port=srv.dicom_port,
                    calling_ae=kw.pop("calling_ae", SCP_AET), timeout=kw.pop("timeout", 5), **kw)


def web(srv, password=PASSWORD, **kw) -> PacsNode:
    return PacsNode(name="orthanc-web", kind="dicomweb", url=srv.dicomweb_url, auth="basic", username=USER,
                    password=password, timeout=kw.pop("timeout", 5), **kw)


def cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "radreview.viewer.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def pixels(folder: Path) -> dict[str, np.ndarray]:
    return {str(ds.SOPInstanceUID): ds.pixel_array for ds in (pydicom.dcmread(f) for f in sorted(Path(folder).rglob("*.dcm")))}


# ---------------------------------------------------------------- nodes and settings
def test_resolve_node_forms_and_settings_roundtrip(tmp_path, monkeypatch):
    cfg = tmp_path / "pacs.json"
    monkeypatch.setenv("RADREVIEW_PACS_CONFIG", str(cfg))
    s = PacsSettings(nodes={"main": PacsNode("main", "dicomweb", url="https://pacs.example/dicom-web/", auth="bearer",
                                             token="s3cret-token")}, cache_limit_mb=123)
    save_settings(s)
    assert cfg.stat().st_mode & 0o077 == 0  # may hold credentials: owner only
    back = load_settings()
    assert back.nodes["main"].url == "https://pacs.example/dicom-web" and back.cache_limit_mb == 123
    assert "s3cret" not in repr(back.nodes["main"]) and "s3cret" not in back.nodes["main"].label()
    n = resolve_node("ORTHANC@127.0.0.1:4242", back)
    assert (n.kind, n.ae_title, n.host, n.port) == ("dimse", "ORTHANC", "127.0.0.1", 4242)
    assert resolve_node("http://127.0.0.1:8042/dicom-web", back).kind == "dicomweb"
    with pytest.raises(PacsError, match="unknown PACS node 'nope'.*main"):
        resolve_node("nope", back)
    with pytest.raises(ValueError, match="AE title"):
        PacsNode("x", "dimse", ae_title="A" * 17, host="h", port=1)
    with pytest.raises(ValueError, match="YYYYMMDD"):
        StudyQuery(study_date="2020-01-01")


def test_middle_instance_by_position():
    from radreview.studies.pacs import InstanceResult

    inst = [InstanceResult(f"1.{k}", number=100 - k, position=(0.0, 0.0, float(-k * 2))) for k in range(9)]
    assert middle_instance(inst).sop_instance_uid == "1.4"
    by_number = [InstanceResult(f"2.{k}", number=n) for k, n in enumerate([5, 1, 3, 2, 4])]
    assert middle_instance(by_number).sop_instance_uid == "2.2"  # number 3 of 1..5


def test_credentials_in_url_move_to_node_keeping_host_as_written():
    """The host part stays as written: an IPv6 literal keeps its brackets, the port stays."""
    n = PacsNode("v6", "dicomweb", url="http://alice:p%40ss@[::1]:8042/dicom-web/")
    assert (n.auth, n.username, n.password) == ("basic", "alice", "p@ss")
    assert n.url == "http://[::1]:8042/dicom-web"
    n = PacsNode("v4", "dicomweb", url="https://bob:pw@pacs.example/dicom-web")
    assert n.url == "https://pacs.example/dicom-web" and n.username == "bob"


# ---------------------------------------------------------------- DIMSE
def test_dimse_echo_find_series_instances(orthanc):
    srv, info = orthanc
    node = dimse(srv)
    assert echo(node) < 5
    studies = find_studies(node, StudyQuery())
    uids = {s.study_instance_uid for s in studies}
    assert {info["abdomen"][0], info["chest"][0]} <= uids
    abd = find_studies(node, StudyQuery(patient_id="RR-ABD-001"))
    assert [s.study_instance_uid for s in abd] == [info["abdomen"][0]]
    assert abd[0].modalities == ["CT"] and abd[0].series_count == 1 and abd[0].study_date
    assert [s.study_instance_uid for s in find_studies(node, StudyQuery(patient_name="Abdo*"))] == [info["abdomen"][0]]
    assert [s.study_instance_uid for s in find_studies(node, StudyQuery(accession="ACC0001"))] == [info["abdomen"][0]]
    chest = find_studies(node, StudyQuery(study_date="20070101-20071231", modality="CT"))
    assert [s.study_instance_uid for s in chest] == [info["chest"][0]]
    assert find_studies(node, StudyQuery(study_date="19990101-19991231")) == []
    series = find_series(node, info["chest"][0])
    assert [s.series_instance_uid for s in series] == [info["chest"][1]] and series[0].instance_count == 30
    inst = find_instances(node, *info["chest"])
    assert len(inst) == 30 and all(i.position is not None for i in inst)


@pytest.mark.parametrize("method", ["get", "move"])
def test_dimse_retrieve_streams_middle_first_and_matches(orthanc, tmp_path, method):
    srv, info = orthanc
    settings = PacsSettings(scp_ae_title=SCP_AET, scp_port=info["scp_port"])
    prog = list(iter_retrieve(dimse(srv), *info["chest"], tmp_path, method=method, settings=settings))
    assert [p.done for p in prog] == list(range(1, 31)) and prog[-1].total == 30
    assert prog[0].middle is not None and prog[0].middle == prog[0].path  # the middle slice arrived first
    mid = middle_instance(find_instances(dimse(srv), *info["chest"]))
    assert prog[0].middle.name == f"{mid.sop_instance_uid}.dcm"
    got = pixels(tmp_path)
    ref = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f).pixel_array for f in info["chest_files"]}
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)


def test_dimse_get_compressed_study(orthanc, tmp_path):
    """The abdomen CT is JPEG 2000 lossless: whole-study C-GET, pixels equal the uploaded files."""
    srv, info = orthanc
    prog = list(iter_retrieve(dimse(srv), info["abdomen"][0], None, tmp_path, method="get"))
    assert prog[-1].done == 20
    got, ref = pixels(tmp_path), pixels(info["abdomen_dir"])
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)


def test_dimse_cancel_aborts(orthanc, tmp_path):
    """Closing the retrieve after the first instance aborts the association: no instance
    arrives afterwards, no partial (``.part``) file is left, and the PACS still answers."""
    srv, info = orthanc
    gen = iter_retrieve(dimse(srv), *info["chest"], tmp_path, method="get")
    first = next(gen)
    gen.close()  # cancel
    assert first.done == 1 and first.total == 30
    n = len(list(tmp_path.rglob("*.dcm")))
    time.sleep(1.0)  # an association left open would keep delivering C-STOREs meanwhile
    assert len(list(tmp_path.rglob("*.dcm"))) == n < 30
    assert not list(tmp_path.rglob("*.part"))
    assert echo(dimse(srv)) < 5


def test_dimse_store_roundtrip(orthanc, tmp_path):
    srv, _ = orthanc
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    p = tmp_path / "ct_small.dcm"
    ds.save_as(p)
    assert store(dimse(srv), [p]) == [str(ds.SOPInstanceUID)]
    found = find_studies(dimse(srv), StudyQuery(study_uid=str(ds.StudyInstanceUID)))
    assert len(found) == 1
    back = list(iter_retrieve(dimse(srv), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), tmp_path / "back"))
    assert np.array_equal(pydicom.dcmread(back[-1].path).pixel_array, ds.pixel_array)


def test_dimse_errors_wrong_ae_unknown_caller_closed_port_timeout(orthanc):
    srv, _ = orthanc
    with pytest.raises(PacsError, match=r"orthanc-dimse .*association rejected.*'WRONG_AE'"):
        echo(dimse(srv, ae_title="WRONG_AE"))
    with pytest.raises(PacsError, match="orthanc-dimse"):
        find_studies(dimse(srv, calling_ae="NOT_KNOWN"), StudyQuery())  # caller not declared in Orthanc
    closed = free_port()
    with pytest.raises(PacsError, match=rf"127.0.0.1:{closed}.*connection refused"):
        echo(PacsNode("closed", "dimse", ae_title="X", host="127.0.0.1", port=closed, timeout=2))
    with socket.socket() as mute:  # accepts TCP but never answers the A-ASSOCIATE-RQ
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        t0 = time.monotonic()
        with pytest.raises(PacsError, match="mute .*within 1 s"):
            echo(PacsNode("mute", "dimse", ae_title="X", host="127.0.0.1", port=mute.getsockname()[1], timeout=1))
        assert time.monotonic() - t0 < 5


def test_move_destination_unknown(orthanc, tmp_path):
    srv, info = orthanc
    settings = PacsSettings(scp_ae_title="UNKNOWN_DEST", scp_port=free_port())
    with pytest.raises(PacsError, match="C-MOVE to 'UNKNOWN_DEST'"):
        list(iter_retrieve(dimse(srv), *info["chest"], tmp_path, method="move", settings=settings))


def test_stopped_server(tmp_path, orthanc):
    srv2 = OrthancServer(tmp_path / "o2").start()
    node_d, node_w = dimse(srv2), web(srv2)
    echo(node_d)
    echo(node_w)
    srv2.stop()
    with pytest.raises(PacsError, match="orthanc-dimse .*connection refused"):
        echo(node_d)
    with pytest.raises(PacsError, match="orthanc-web .*connection refused"):
        find_studies(node_w, StudyQuery())


# ---------------------------------------------------------------- DICOMweb
def test_dicomweb_find_retrieve_store(orthanc, tmp_path):
    srv, info = orthanc
    node = web(srv)
    assert echo(node) < 5
    abd = find_studies(node, StudyQuery(patient_id="RR-ABD-001"))
    assert [s.study_instance_uid for s in abd] == [info["abdomen"][0]] and abd[0].series_count == 1
    assert abd[0].modalities == ["CT"]
    chest = find_studies(node, StudyQuery(study_date="20070101-20071231"))
    assert [s.study_instance_uid for s in chest] == [info["chest"][0]]
    prog = list(iter_retrieve(node, *info["chest"], tmp_path / "chest"))
    assert prog[0].middle is not None and prog[-1].done == 30 and prog[-1].total == 30
    ref = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f).pixel_array for f in info["chest_files"]}
    got = pixels(tmp_path / "chest")
    assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
    # the abdomen is JPEG 2000: WADO-RS keeps the stored transfer syntax
    list(iter_retrieve(node, *info["abdomen"], tmp_path / "abd"))
    f = next((tmp_path / "abd").rglob("*.dcm"))
    assert pydicom.dcmread(f).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    p = tmp_path / "mr_small.dcm"
    ds.save_as(p)
    assert store(node, [p]) == [str(ds.SOPInstanceUID)]
    assert len(find_studies(node, StudyQuery(study_uid=str(ds.StudyInstanceUID)))) == 1


def test_dicomweb_errors_401_closed_timeout(orthanc):
    srv, _ = orthanc
    with pytest.raises(PacsError, match=r"orthanc-web .*HTTP 401"):
        echo(web(srv, password="wrong"))
    closed = free_port()
    with pytest.raises(PacsError, match="connection refused"):
        echo(PacsNode("closed", "dicomweb", url=f"http://127.0.0.1:{closed}/dicom-web", timeout=2))
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(4)
        t0 = time.monotonic()
        with pytest.raises(PacsError, match="mute.*within 1 s"):
            echo(PacsNode("mute", "dicomweb", url=f"http://127.0.0.1:{mute.getsockname()[1]}/dicom-web", timeout=1))
        assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------- cache
def test_cache_lru_eviction(tmp_path):
    cache = RetrieveCache(tmp_path / "cache", limit_bytes=2500)
    for k, uid in enumerate(["1.1", "1.2", "1.3"]):
        d = cache.study_dir(uid) / "9.9"
        d.mkdir()
        (d / "x.dcm").write_bytes(b"\0" * 1000)
        cache.touch(uid, when=1000 + k)
    cache.touch("1.1", when=2000)  # used again: now the most recent
    assert cache.size() == 3000
    assert cache.evict(keep={"1.2"}) == ["1.3"]
    assert sorted(e.study_instance_uid for e in cache.entries()) == ["1.1", "1.2"] and cache.size() == 2000
    with pytest.raises(ValueError, match="not a DICOM UID"):
        cache.study_dir("../etc")


# ---------------------------------------------------------------- command line
def test_cli_echo_find_retrieve_store_and_errors(orthanc, tmp_path):
    srv, info = orthanc
    aet = f"{srv.aet}@127.0.0.1:{srv.dicom_port}"
    r = cli("pacs", "echo", aet)
    assert r.returncode == 0 and "C-ECHO ok" in r.stdout, r.stderr
    r = cli("pacs", "find", aet, "--patient-id", "RR-ABD-001", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows == [{"study_instance_uid": info["abdomen"][0], "patient_id": "RR-ABD-001", "study_date": rows[0]["study_date"],
                     "modalities": ["CT"], "description": "CT abdomen (radreview test)", "series_count": 1}]
    db = tmp_path / "review.sqlite"
    r = cli("pacs", "retrieve", aet, "--study", info["chest"][0], "--series", info["chest"][1], "--out", str(tmp_path / "o"),
            "--db", str(db), "--user", "dr.test")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["instances"] == 30 and len(list((tmp_path / "o").rglob("*.dcm"))) == 30
    from radreview.review.store import ReviewStore

    rows = [row for row in ReviewStore(db).audit_rows() if row[3] == "pacs-retrieve"]
    assert len(rows) == 1 and rows[0][2] == "dr.test" and info["chest"][0] in rows[0][4]
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    p = tmp_path / "c.dcm"
    ds.save_as(p)
    r = cli("pacs", "store", f"{srv.dicomweb_url}".replace("http://", f"http://{USER}:{PASSWORD}@"), str(p))
    # credentials in a URL become the node's basic auth and are never printed
    assert r.returncode == 0 and "stored 1" in r.stdout and PASSWORD not in r.stdout + r.stderr, r.stderr
    r = cli("pacs", "echo", f"{srv.dicomweb_url}".replace("http://", f"http://{USER}:wrong-pw@"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "HTTP 401" in r.stderr and "wrong-pw" not in r.stderr
    r = cli("pacs", "echo", f"WRONG@127.0.0.1:{srv.dicom_port}", "--timeout", "3")
    assert r.returncode == 2 and r.stderr.startswith("radreview: error: WRONG@127.0.0.1") and "rejected" in r.stderr
    closed = free_port()
    t0 = time.monotonic()
    r = cli("pacs", "find", f"X@127.0.0.1:{closed}", "--timeout", "2")
    assert r.returncode == 2 and "connection refused" in r.stderr and time.monotonic() - t0 < 20


def test_cli_store_configured_dicomweb_node(orthanc, tmp_path):
    srv, _ = orthanc
    cfg = tmp_path / "pacs.json"
    save_settings(PacsSettings(nodes={"web": web(srv)}), cfg)
    env = {**__import__("os").environ, "RADREVIEW_PACS_CONFIG": str(cfg)}
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    p = tmp_path / "c2.dcm"
    ds.save_as(p)
    r = cli("pacs", "store", "web", str(p), env=env)
    assert r.returncode == 0 and "stored 1" in r.stdout, r.stderr
    assert len(find_studies(web(srv), StudyQuery(study_uid=str(ds.StudyInstanceUID)))) == 1
