"""The reduced-precision serving option: the evaluate step quantises the served artifact to int8, scores the
test split with it, and ships it only within the IoU and speed budget; what ships is what is checked."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT

CI_TINY = ROOT / "configs" / "ci-tiny.yaml"


@pytest.fixture(scope="module")
def trained(synth_dataset, tmp_path_factory):
    from cmunext.config import load_config
    from cmunext.engine.trainer import train
    from cmunext.steps import preprocess
    work = tmp_path_factory.mktemp("int8")
    cfg = load_config(CI_TINY, ["train.epochs=2", "eval.bootstrap=100", "eval.gallery_size=0", "eval.latency_runs=5"])
    preprocess(cfg, synth_dataset, work / "pre", "test")
    result = train(cfg, work / "pre", work / "run", progress=False)
    return cfg, result.weights, work / "pre"


def _evaluate(cfg, weights, data, pre, out, *overrides):
    from cmunext.config import load_config
    from cmunext.steps import evaluate
    cfg = load_config(CI_TINY, ["train.epochs=2", "eval.bootstrap=100", "eval.gallery_size=0", "eval.latency_runs=5",
                                "eval.int8=true", *overrides])
    return evaluate(cfg, weights, data, pre, out)


def test_int8_is_measured_and_shipped_only_within_budget(trained, synth_dataset, tmp_path, state_home):
    cfg, weights, pre = trained
    result = _evaluate(cfg, weights, synth_dataset, pre, tmp_path / "ev")
    trade = result["int8"]
    within = trade["iou_drop_points"] <= 0.5 and trade["speedup"] >= 1.0
    assert trade["shipped"] == ("int8" if within else "fp32")
    assert trade["bytes"]["int8"] < trade["bytes"]["fp32"] / 2  # int8 weights: about a quarter of the size
    info = json.loads((tmp_path / "ev" / "artifact" / "export.json").read_text())
    assert info["format"].endswith("_int8") == (trade["shipped"] == "int8")
    assert not (tmp_path / "ev" / "artifact" / "model.int8.onnx.tmp").exists()


def test_shipped_int8_is_what_the_package_serves(trained, synth_dataset, tmp_path, state_home, monkeypatch):
    """Forced through (no speed requirement, any IoU drop): the artifact, its sha and the bento say int8."""
    from cmunext.serving.package import package_model
    from cmunext.serving.runtime import OnnxModel, verify_artifact
    monkeypatch.setenv("BENTOML_HOME", str(state_home / "bentoml"))
    cfg, weights, pre = trained
    result = _evaluate(cfg, weights, synth_dataset, pre, tmp_path / "ev", "eval.int8_min_speedup=0",
                       "eval.int8_max_iou_drop=1")
    assert result["int8"]["shipped"] == "int8" and result["latency"]["artifact"].endswith("_int8")
    artifact = tmp_path / "ev" / "artifact"
    info = json.loads((artifact / "export.json").read_text())
    assert verify_artifact(artifact) == info["sha256"] and info["int8"]["shipped"] == "int8"
    model = OnnxModel(artifact)
    probs = model.probabilities(__import__("numpy").zeros((2, 3, model.size, model.size), "float32"))
    assert probs.shape == (2, model.size, model.size)
    packaged = package_model(weights, model_name="int8-test", model_version="1", run_id="r", data_revision="test",
                             metrics={}, exported=artifact)
    assert packaged["format"].endswith("_int8") and packaged["sha256"] == info["sha256"]
