"""The runtime registry (``radreview.inference.runtime``): a third model task added in this
test only (a ``ct-threshold`` task whose model is a one-node ONNX graph built here) runs end
to end through ``radreview infer`` and the Run AI workflow, with no other module changed; model
fit comes from ``model.json``; the shipped tasks keep their outputs through the registry."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from pydicom.data import get_testdata_file

from radreview.inference.inputs import context_indices, context_stack
from radreview.inference.package import PackageError, load_package
from radreview.inference.runtime import (
    InferTask,
    Precision,
    Task,
    make_task,
    model_fits,
    models_for_study,
    register_task,
    registered_tasks,
    run_task,
    study_facts,
    task_class,
    unregister_task,
)
from radreview.inference.segment import segment
from radreview.studies import open_volume
from radreview.studies.jobs import drain
from radreview.viewer.cli import main as cli_main
from radreview.viewer.workflow import default_models, iter_run_models

THRESHOLD_HU = 200.0


class ThresholdTask(InferTask):
    """Toy task: voxels above a HU threshold, by an ONNX ``Greater`` node slice by slice."""

    task = "ct-threshold"

    def pre(self, volume, data):
        return volume.array.astype(np.float32)  # (z, y, x) HU, study grid = model grid

    def infer(self, volume, x):
        name = self.session.get_inputs()[0].name
        for k in range(x.shape[0]):
            yield self.progress(k, x.shape[0])
        return np.concatenate([self.session.run(None, {name: context_stack(x, [k], 0)})[0] for k in range(x.shape[0])])

    def post(self, volume, mask):
        mask = mask[:, 0] > 0.5
        return {"model": self.package.id, "precision": self.precision, "voxels": int(mask.sum()),
                "volume_ml": round(float(mask.sum() * np.prod(volume.spacing)) / 1000, 3), "warnings": self.warnings}

    @staticmethod
    def progress(done, total):
        from radreview.inference.runtime import Progress

        return Progress("infer", done, total)


def _toy_package(folder, fit=True, task="ct-threshold"):
    """A valid package folder whose fp32/int8 model is ``image > THRESHOLD_HU`` (float 0/1)."""
    folder.mkdir(parents=True)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "h", "w"])
    y = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", 1, "h", "w"])
    thr = helper.make_tensor("thr", TensorProto.FLOAT, [], [THRESHOLD_HU])
    graph = helper.make_graph([helper.make_node("Greater", ["image", "thr"], ["gt"]),
                               helper.make_node("Cast", ["gt"], ["mask"], to=TensorProto.FLOAT)],
                              "threshold", [x], [y], [thr])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    files = {}
    for kind, name, data in (("fp32", "fp32.onnx", model.SerializeToString()), ("int8", "int8.onnx", model.SerializeToString()),
                             ("state_dict", "weights.txt", b"no weights: a fixed threshold\n")):
        (folder / name).write_bytes(data)
        files[kind] = {"path": name, "sha256": hashlib.sha256(data).hexdigest()}
    card = {
        "id": folder.name, "version": "0.0.1", "task": task, "modality": ["CT"], "body_part": ["ANY"],
        "input": {"dimensionality": "2.5D", "channels": 1, "context_slices": 0, "spacing_mm": [1.0, 1.0, 1.0],
                  "patch_size": [64, 64], "orientation": "LPS",
                  "normalization": {"method": "hu_clip_scale", "clip": [-1024, 3071], "scale": 1.0}},
        "outputs": {"activation": "sigmoid", "labels": [{"index": 1, "name": "dense", "color": [255, 255, 0], "snomed": {
            "category": {"scheme": "SCT", "value": "85756007", "meaning": "Tissue"},
            "type": {"scheme": "SCT", "value": "85756007", "meaning": "Tissue"}}}]},
        "files": files, "calibration": {"temperature": 1.0}, "review_policy": {"confidence_threshold": {}},
        "training_data": [{"note": "none: a fixed HU rule"}], "metrics": {},
        "intended_use": "test of the runtime registry only", "limitations": ["not a medical device"],
    }
    if fit:
        card["fit"] = {"body_region": ["any"], "min_coverage_mm": 10.0}
    (folder / "model.json").write_text(json.dumps(card, indent=1))
    return folder


@pytest.fixture
def toy_task():
    register_task(ThresholdTask)  # the whole "integration" of the new task
    yield ThresholdTask
    unregister_task("ct-threshold")


@pytest.fixture(scope="module")
def ct(ct_series):
    return open_volume(ct_series)


def test_enums_are_plain_strings():
    assert Task.SEGMENTATION == "segmentation" and json.dumps([Task.CLASSIFICATION, Precision.INT8]) == '["classification", "int8"]'
    assert registered_tasks()[:2] == ["segmentation", "classification"]
    with pytest.raises(PackageError, match="no runtime for task 'ct-threshold'"):
        task_class("ct-threshold")
    with pytest.raises(ValueError, match="already registered"):
        register_task(type("Other", (InferTask,), {"task": "segmentation"}))


def test_context_stack_clamps_at_the_ends():
    x = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    assert context_indices(0, 1, 5).tolist() == [0, 0, 1] and context_indices(4, 2, 5).tolist() == [2, 3, 4, 4, 4]
    one = context_stack(x, 4, 1, (1, 1, 1, 2))
    assert one.shape == (3, 1, 2) and np.array_equal(one, x[[3, 4, 4], 1:2, 1:3])
    many = context_stack(x, [0, 2], 1)
    assert many.shape == (2, 3, 2, 3) and np.array_equal(many[0], x[[0, 0, 1]])


def test_toy_task_through_radreview_infer(toy_task, tmp_path, ct, ct_series, capsys):
    pkg_dir = _toy_package(tmp_path / "ct-threshold-toy")
    out = tmp_path / "out"
    assert cli_main(["infer", str(ct_series), "--model", str(pkg_dir), "--out", str(out), "--precision", "fp32"]) == 0
    findings = json.loads((out / "findings.json").read_text())
    want = int((ct.array > THRESHOLD_HU).sum())
    assert findings["voxels"] == want > 1000
    assert findings["volume_ml"] == round(want * float(np.prod(ct.spacing)) / 1000, 3)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == findings
    run = make_task(load_package(pkg_dir), "int8").run(ct)
    assert list(run.stage_seconds) == ["pre", "infer", "inverse", "post", "findings"]
    assert all(v >= 0 for v in run.stage_seconds.values()) and run.seconds >= sum(run.stage_seconds.values()) - 1e-6
    assert run.findings["voxels"] == want and run.task == "ct-threshold"


def test_toy_task_through_the_workflow_and_model_fit(toy_task, tmp_path, ct, monkeypatch):
    models = tmp_path / "models"
    _toy_package(models / "ct-threshold-toy")
    _toy_package(models / "ct-nofit-toy", fit=False)
    _toy_package(models / "ct-unknown-toy", task="ct-unregistered")
    monkeypatch.setenv("RADREVIEW_MODELS_PATH", str(models))
    ids = default_models(ct)
    # the shipped organ model (any CT), the toy task (fit block, >= 10 mm); never the card without
    # a fit block nor the one whose task has no runtime; this abdomen holds no chest: no nodule model
    assert ids == ["ct-organs-2p5d", "ct-threshold-toy"]
    run = drain(iter_run_models(ct, ["ct-threshold-toy", "ct-unknown-toy"]))
    assert run.runs["ct-threshold-toy"].findings["voxels"] == int((ct.array > THRESHOLD_HU).sum())
    assert "no runtime for task 'ct-unregistered'" in run.refused["ct-unknown-toy"]
    assert run.findings == [] and set(run.packages) == {"ct-threshold-toy"}


def test_model_fit_reasons(ct, tmp_path):
    facts = study_facts(ct)
    assert facts.modality == "CT" and "chest" not in facts.regions
    assert facts.coverage_mm == pytest.approx(20 * abs(float(np.diff(ct.index_to_lps([[0, 0, 0], [0, 0, 1]])[:, 2])[0])),
                                              rel=1e-6)
    nodule, organs = load_package("ct-nodule-2p5d"), load_package("ct-organs-2p5d")
    assert "needs chest" in model_fits(nodule, facts)
    assert model_fits(organs, facts) is None
    thin = type(facts)("CT", 3.0, frozenset({"any", "chest"}))
    assert model_fits(organs, thin) is None and "needs 30 mm along z" in model_fits(nodule, thin)
    ct_small = open_volume(get_testdata_file("CT_small.dcm"))  # one slice: organs run (context clamps), never nodules
    assert [p.id for p in models_for_study(ct_small)] == ["ct-organs-2p5d"]
    assert "accepts CT" in model_fits(organs, type(facts)("MR", 100.0, frozenset({"any"})))
    mr = open_volume(get_testdata_file("MR_small.dcm"))
    assert models_for_study(mr) == []


def test_shipped_segmentation_through_the_registry_is_unchanged(ct):
    pkg = load_package("ct-organs-2p5d")
    direct = segment(ct, pkg, "int8", 2)
    run = run_task(ct, pkg, Precision.INT8, 2, lazy_maps=True)
    assert np.array_equal(run.result.labels, direct.labels)
    assert np.array_equal(run.result.max_prob, direct.max_prob)
    assert [s.as_dict() for s in run.result.stats] == [s.as_dict() for s in direct.stats]
    assert list(run.stage_seconds) == ["pre", "infer", "inverse", "post", "findings"]
    assert run.findings["labels"] == direct.findings_json()["labels"] and run.precision == "int8"
    assert make_task(pkg).supports_explain
    with pytest.raises(PackageError, match="is a segmentation model, not classification"):
        task_class("classification")(pkg)
