"""Installable as a real package: model search paths (never the current directory), where each
package came from, ``package_sha256`` and the shipped manifest, quantize into the user folder;
and the headless commands neither import Qt/VTK nor open a network connection."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from radreview.inference.package import (MANIFEST_NAME, PackageError, list_packages, load_package, models_dir,
                                         read_manifest, user_models_dir, write_manifest)

CLI = [sys.executable, "-m", "radreview.viewer.cli"]
SEG, NOD = "ct-organs-2p5d", "ct-nodule-2p5d"


def _cli(*args, **kw):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


def _copy_as(dst_folder: Path, new_id: str, src_id: str = SEG) -> Path:
    """A copy of a shipped package under another id (files and their hashes unchanged)."""
    dst = dst_folder / new_id
    shutil.copytree(models_dir() / src_id, dst)
    meta = json.loads((dst / "model.json").read_text())
    meta["id"] = new_id
    (dst / "model.json").write_text(json.dumps(meta, indent=1))
    return dst


# ----------------------------------------------------------------------------- search path and source
def test_models_list_shows_the_shipped_packages_and_where_they_came_from():
    p = _cli("models", "list", "--json")
    assert p.returncode == 0, p.stderr
    items = {m["id"]: m for m in json.loads(p.stdout)}
    assert set(items) == {SEG, NOD}
    for m in items.values():
        assert m["source"] == "shipped" and Path(m["path"]) == models_dir() / m["id"]
    p = _cli("models", "list")
    assert f"[shipped: {models_dir() / SEG}]" in p.stdout


def test_a_same_name_folder_in_the_current_directory_is_not_used(tmp_path, monkeypatch):
    fake = tmp_path / SEG
    shutil.copytree(models_dir() / SEG, fake)
    meta = json.loads((fake / "model.json").read_text())
    meta["version"] = "9.9.9"
    (fake / "model.json").write_text(json.dumps(meta))
    p = _cli("models", "list", "--json", cwd=tmp_path)
    seg = next(m for m in json.loads(p.stdout) if m["id"] == SEG)
    assert seg["version"] != "9.9.9" and seg["source"] == "shipped"
    p = _cli("models", "verify", SEG, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    monkeypatch.chdir(tmp_path)
    pkg = load_package(SEG)
    assert pkg.root == models_dir() / SEG and pkg.meta["version"] != "9.9.9"
    assert load_package(fake).meta["version"] == "9.9.9"  # an explicit folder is still loadable


def test_models_path_adds_folders_that_shadow_in_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    _copy_as(a, "ct-organs-copy")
    _copy_as(b, "ct-organs-copy")
    _copy_as(b, "ct-organs-other")
    monkeypatch.setenv("RADREVIEW_MODELS_PATH", os.pathsep.join([str(a), str(b)]))
    items = {p.id: p for p in list_packages()}
    assert items["ct-organs-copy"].root == a / "ct-organs-copy" and items["ct-organs-copy"].source == "env"
    assert items["ct-organs-other"].root == b / "ct-organs-other"
    assert items[SEG].source == "shipped"
    p = _cli("models", "list", "--json")
    sources = {m["id"]: m["source"] for m in json.loads(p.stdout)}
    assert sources == {SEG: "shipped", NOD: "shipped", "ct-organs-copy": "env", "ct-organs-other": "env"}
    p = _cli("models", "verify", "no-such-model")
    assert p.returncode == 2 and str(a) in p.stderr and "searched" in p.stderr


# ----------------------------------------------------------------------------- package_sha256 and manifests
def test_shipped_manifest_pins_every_shipped_package():
    pins = read_manifest(models_dir())
    assert pins is not None, f"{models_dir() / MANIFEST_NAME} missing: run python -m radreview.inference.package --write-manifest"
    shipped = sorted(d.name for d in models_dir().iterdir() if (d / "model.json").is_file())
    assert sorted(pins) == shipped
    for mid, pin in pins.items():
        pkg = load_package(mid)
        assert pkg.package_sha256 == pin, f"{mid} changed since the manifest was written"
        assert re.fullmatch("[0-9a-f]{64}", pin)


def test_package_sha256_covers_model_json_bytes_and_files(tmp_path):
    d = _copy_as(tmp_path, "ct-organs-copy")
    pkg = load_package(d)
    h0 = pkg.package_sha256
    assert h0 == load_package(d).package_sha256  # deterministic
    (d / "model.json").write_bytes((d / "model.json").read_bytes() + b"\n")  # same JSON, other bytes
    h1 = load_package(d).package_sha256
    assert h1 != h0
    (d / "train_log.json").write_text("{}")  # not a package file: no change
    assert load_package(d).package_sha256 == h1
    sd = d / pkg.meta["files"]["state_dict"]["path"]
    sd.write_bytes(sd.read_bytes() + b"x")
    assert load_package(d).package_sha256 != h1


def test_an_edited_shipped_model_json_is_refused(tmp_path, monkeypatch):
    """A copy of the whole shipped folder (with its manifest) stands in for the installed one."""
    import radreview.inference.package as pk

    base = tmp_path / "models"
    shutil.copytree(models_dir(), base)
    monkeypatch.setattr(pk, "models_dir", lambda: base)
    assert load_package(SEG, check_hashes=True).source == "shipped"
    meta = json.loads((base / SEG / "model.json").read_text())
    meta["review_policy"]["confidence_threshold"] = {k: 0.0 for k in meta["review_policy"]["confidence_threshold"]}
    (base / SEG / "model.json").write_text(json.dumps(meta, indent=1))  # valid schema, hashes of files intact
    with pytest.raises(PackageError, match="model.json or a model file changed after packaging"):
        load_package(SEG)
    assert [p.id for p in list_packages()] == [NOD]
    # regenerating the manifest (what a retrained package does) accepts it again
    p = subprocess.run([sys.executable, "-m", "radreview.inference.package", "--write-manifest", "--dir", str(base)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and SEG in p.stdout
    assert load_package(SEG).package_sha256 == read_manifest(base)[SEG]


def test_models_verify_reports_a_changed_model_json(tmp_path, monkeypatch):
    folder = tmp_path / "env"
    d = _copy_as(folder, "ct-organs-copy")
    write_manifest(folder)
    monkeypatch.setenv("RADREVIEW_MODELS_PATH", str(folder))
    assert _cli("models", "verify", "ct-organs-copy").returncode == 0
    (d / "model.json").write_bytes((d / "model.json").read_bytes().replace(b'"version": "', b'"version":  "', 1))
    p = _cli("models", "verify", "ct-organs-copy")
    assert p.returncode == 2 and "changed after packaging" in p.stderr and p.stderr.count("\n") == 1


def test_quantize_a_shipped_model_writes_into_the_user_folder(data_dir, tmp_path):
    import SimpleITK as sitk

    from radreview.inference.cli_ops import models_quantize
    from radreview.inference.package import sha256_file

    img = sitk.ReadImage(str(data_dir / "ct-chest-crops/chest_crop_1.nii.gz"))
    nx, ny, nz = img.GetSize()
    calib = tmp_path / "calib.nii.gz"  # a real chest CT slab, small so the test stays fast
    sitk.WriteImage(img[:, :, nz // 2 - 4 : nz // 2 + 4], str(calib))
    shipped = models_dir() / SEG
    before = {f.name: sha256_file(f) for f in shipped.iterdir()}
    rec = models_quantize(SEG, [str(calib)], threads=2)
    assert {f.name: sha256_file(f) for f in shipped.iterdir()} == before, "the shipped package was modified"
    user = user_models_dir() / SEG
    pkg = load_package(SEG, check_hashes=True)
    assert pkg.root == user and pkg.source == "user"
    assert pkg.meta["int8_deltas"]["requantized"] == rec
    assert read_manifest(user_models_dir())[SEG] == pkg.package_sha256
    assert not (models_dir() / SEG / "int8.onnx").samefile(user / "int8.onnx")


# ----------------------------------------------------------------------------- headless and offline
WRAPPER = """
import json, os, sys
from radreview.viewer.cli import main
rc = main(sys.argv[1:])
gui = sorted(m for m in sys.modules if m.split(".")[0] in ("PySide6", "vtk", "vtkmodules", "superqt"))
print("HEADLESS-CHECK " + json.dumps({"rc": rc, "gui": gui, "ort": os.environ.get("ORT_DISABLE_TELEMETRY"),
                                       "onnxruntime": "onnxruntime" in sys.modules}), file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.parametrize("commands", [
    [["info", "{ct}"], ["info", "--json", "{ct}"]],
    [["models", "list", "--json"], ["models", "verify", SEG]],
    [["infer", "{ct}", "--model", SEG, "--out", "{out}"]],
    [["review", "{ct}", "--json", "--db", "{db}", "--create"], ["audit", "verify", "--db", "{db}"]],
], ids=lambda cmds: "+".join(c[0] for c in cmds))
def test_headless_commands_import_no_gui_and_connect_nowhere(commands, ct_series, tmp_path):
    """Each command under ``strace -f -e trace=connect`` (no AF_INET/AF_INET6 connect, C++
    libraries included) and with ``sys.modules`` checked for Qt/VTK after it ran."""
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "DISPLAY")}
    for n, args in enumerate(commands):
        args = [a.format(ct=ct_series, out=tmp_path / "out", db=tmp_path / "review.sqlite") for a in args]
        trace = tmp_path / f"strace{n}.txt"
        p = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace),
                            sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, timeout=300, env=env)
        line = next((x for x in p.stderr.splitlines() if x.startswith("HEADLESS-CHECK ")), None)
        assert line, p.stderr[-2000:]
        res = json.loads(line.split(" ", 1)[1])
        assert res["rc"] == 0, p.stderr[-2000:]
        assert res["gui"] == [], f"{args[0]} imported {res['gui'][:5]}"
        if res["onnxruntime"]:
            assert res["ort"] == "1"
        inet = [x for x in trace.read_text().splitlines() if "AF_INET" in x]
        assert not inet, f"{' '.join(args[:2])} opened network connections: {inet[:3]}"


def test_importing_inference_turns_off_ort_telemetry():
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    code = ("import os, sys; import radreview.inference; assert 'onnxruntime' not in sys.modules; "
            "import radreview.inference.segment; print(os.environ.get('ORT_DISABLE_TELEMETRY'))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0 and p.stdout.strip() == "1", p.stderr
