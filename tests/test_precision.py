"""The served form: the evaluate step times every runtime and precision here, scores the reduced precisions on
the test split as they run, and ships the fastest within the IoU budget; what ships is what is served; a CPU
without bf16 serves the recorded fp32 fallback and says so."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT

from cmunext.config import SERVING_FORMS

CI_TINY = ROOT / "configs" / "ci-tiny.yaml"
ALL_FORMS = f"eval.serving_forms=[{','.join(SERVING_FORMS)}]"
BASE = ["train.epochs=2", "eval.bootstrap=100", "eval.gallery_size=0", "eval.latency_runs=5"]


@pytest.fixture(scope="module")
def trained(synth_dataset, tmp_path_factory):
    from cmunext.config import load_config
    from cmunext.engine.trainer import train
    from cmunext.steps import preprocess
    work = tmp_path_factory.mktemp("precision")
    cfg = load_config(CI_TINY, BASE)
    preprocess(cfg, synth_dataset, work / "pre", "test")
    result = train(cfg, work / "pre", work / "run", progress=False)
    return result.weights, work / "pre"


def _evaluate(trained, data, out, *overrides):
    from cmunext.config import load_config
    from cmunext.steps import evaluate
    weights, pre = trained
    return evaluate(load_config(CI_TINY, [*BASE, *overrides]), weights, data, pre, out)


def test_the_rule_ships_the_fastest_form_within_budget_and_says_why_others_were_not():
    from cmunext.serving.precision import decide
    table = {"onnxruntime/fp32": {"available": True, "ms_b1": 10.0, "iou_drop_points": 0.0},
             "openvino/fp32": {"available": True, "ms_b1": 9.0, "iou_drop_points": 0.0},
             "openvino/bf16": {"available": True, "ms_b1": 5.0, "iou_drop_points": 0.3},
             "openvino/int8": {"available": True, "ms_b1": 4.0, "iou_drop_points": 0.8}}
    assert decide(table, 0.005) == ("openvino/bf16", "openvino/fp32")
    assert not table["openvino/int8"]["within_budget"]
    assert table["openvino/int8"]["reason"] == "IoU drops 0.80 points (> 0.50)"
    assert table["onnxruntime/fp32"]["reason"].startswith("slower than openvino/bf16")
    assert decide(table, 0.002) == ("openvino/fp32", None)  # bf16 refused too: fp32 has no fallback
    assert "IoU drops 0.30 points" in table["openvino/bf16"]["reason"]
    table["openvino/bf16"] = {"available": False, "reason": "this CPU has neither AVX512-BF16 nor AMX"}
    assert decide(table, 0.01) == ("openvino/int8", None)


def test_every_form_is_measured_and_the_choice_is_recorded(trained, synth_dataset, tmp_path, state_home):
    from cmunext_serving.engines import cpu_bf16
    from cmunext_serving.runtime import verify_artifact
    result = _evaluate(trained, synth_dataset, tmp_path / "ev", ALL_FORMS)  # ci-tiny times one form only
    choice = result["precision"]
    forms = choice["forms"]
    assert set(forms) == {"onnxruntime/fp32", "openvino/fp32", "openvino/bf16", "openvino/int8"}
    assert forms["openvino/bf16"]["available"] == cpu_bf16()[0]
    measured = {f: r for f, r in forms.items() if r["available"]}
    within = {f: r for f, r in measured.items() if r["iou_drop_points"] <= 0.5}
    assert choice["chosen"] == min(within, key=lambda f: within[f]["ms_b1"])
    assert all(r["reason"] for f, r in forms.items() if f != choice["chosen"])  # each refusal says why
    assert all(0 <= r["mask_pixels_changed"] <= 1 and 0 <= r["test_iou"] <= 1 for r in measured.values())
    info = json.loads((tmp_path / "ev" / "artifact" / "export.json").read_text())
    assert f"{info['serving']['runtime']}/{info['serving']['precision']}" == choice["chosen"]
    assert verify_artifact(tmp_path / "ev" / "artifact") == info["sha256"]
    assert result["latency"]["artifact"].startswith(choice["chosen"])  # the gate's latency is the shipped form's


def test_a_form_over_the_iou_budget_is_refused_with_its_reason(trained, synth_dataset, tmp_path, state_home):
    result = _evaluate(trained, synth_dataset, tmp_path / "ev", "eval.max_precision_iou_drop=0",
                       "eval.serving_forms=[onnxruntime/fp32,openvino/int8]")
    forms = result["precision"]["forms"]
    int8 = forms["openvino/int8"]
    if int8["iou_drop_points"] > 0:
        assert result["precision"]["chosen"] == "onnxruntime/fp32"
        assert int8["reason"] == f"IoU drops {int8['iou_drop_points']:.2f} points (> 0.00)"
    else:  # int8 changed no test IoU on this model: it is refused only if slower
        assert int8["within_budget"]


def test_the_shipped_int8_form_is_what_the_bento_holds(trained, synth_dataset, tmp_path, state_home, monkeypatch):
    """Forced through (the only form, any IoU drop): the artifact, its sha, the bento and its pins say int8."""
    from cmunext.serving.package import package_model, stores
    from cmunext_serving.engines import ServedModel
    from cmunext_serving.runtime import verify_artifact
    monkeypatch.setenv("BENTOML_HOME", str(state_home / "bentoml"))
    weights, _ = trained
    result = _evaluate(trained, synth_dataset, tmp_path / "ev", "eval.max_precision_iou_drop=1",
                       "eval.serving_forms=[openvino/int8]")
    assert result["precision"]["chosen"] == "openvino/int8"
    artifact = tmp_path / "ev" / "artifact"
    info = json.loads((artifact / "export.json").read_text())
    assert verify_artifact(artifact) == info["sha256"] and info["format"].endswith("_int8")
    import onnx
    graph = onnx.load(str(artifact / info["file"])).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    model = ServedModel(artifact)
    assert (model.runtime, model.precision) == ("openvino", "int8")
    assert model.probabilities(np.zeros((2, 3, model.size, model.size), "float32")).shape == (2, model.size, model.size)
    packaged = package_model(weights, model_name="int8-test", model_version="1", run_id="r", data_revision="test",
                             metrics={}, exported=artifact)
    assert (packaged["runtime"], packaged["precision"], packaged["sha256"]) == ("openvino", "int8", info["sha256"])
    _, bento_store = stores()
    bento = bento_store.get(packaged["bento_tag"])
    pins = (bento.path_of("env/python/requirements.txt") and
            open(bento.path_of("env/python/requirements.txt")).read())
    assert "openvino==" in pins and "onnxruntime" not in pins and "torch" not in pins
    assert bento.info.labels["precision"] == "int8"


def test_without_bf16_the_model_runs_its_fp32_fallback_and_says_so(tmp_path, monkeypatch):
    """A bf16 choice on a CPU without bf16 (simulated: CMUNEXT_CPU_BF16=0) runs the recorded fp32 fallback, with
    the same masks as fp32 and the reason in describe()."""
    from cmunext.models import create_model
    from cmunext.serving.export import export_onnx
    from cmunext_serving.engines import ServedModel
    from cmunext_serving.runtime import EXPORT_JSON, sha256_file
    path = export_onnx(create_model("cmunext_s"), tmp_path / "model.onnx", 64, 3)
    info = {"file": "model.onnx", "sha256": sha256_file(path), "image_size": 64, "in_channels": 3,
            "session": {"graph_optimization_level": "ORT_ENABLE_ALL"},
            "serving": {"runtime": "openvino", "precision": "bf16",
                        "fallback": {"runtime": "onnxruntime", "precision": "fp32"}}}
    (tmp_path / EXPORT_JSON).write_text(json.dumps(info))
    monkeypatch.setenv("CMUNEXT_CPU_BF16", "0")
    model = ServedModel(tmp_path)
    ran = model.describe()
    assert (ran["runtime"], ran["precision"], ran["requested"]) == ("onnxruntime", "fp32", "openvino/bf16")
    assert "CMUNEXT_CPU_BF16" in ran["fallback_reason"]
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    info["serving"] = {"runtime": "onnxruntime", "precision": "fp32"}
    (tmp_path / EXPORT_JSON).write_text(json.dumps(info))
    assert np.abs(model.probabilities(x) - ServedModel(tmp_path).probabilities(x)).max() == 0
