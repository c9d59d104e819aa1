from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def evaluate_model(config_json: str, run_id: str, champion_version: str, model: Input[Model], dataset: Input[Dataset],
                   preprocessed: Input[Dataset], evaluation: Output[Artifact], metrics: Output[Metrics],
                   gallery: Output[HTML], serving_artifact: Output[Model]):
    """Test-split metrics with CIs, served-artifact latency, and the champion scored on the same images. The
    serving artifact it timed is an output: the package step ships exactly that one."""
    import json
    import os

    from cmunext.config import RunConfig
    from cmunext.contracts import Evaluation
    from cmunext.kfp_artifacts import embed_png_html, write_metrics
    from cmunext.steps import evaluate

    cfg = RunConfig.model_validate_json(config_json)
    workdir = os.path.join(os.path.dirname(evaluation.path), "work")
    result = evaluate(cfg, os.path.join(model.path, "model.safetensors"), dataset.path, preprocessed.path,
                      workdir, run_id, artifact_dir=serving_artifact.path)
    choice = result["precision"]
    serving_artifact.metadata.update({"format": result["latency"].get("artifact", ""), "form": choice["chosen"],
                                      "p95_ms": result["latency"]["p95_ms"],
                                      "forms": {f: r.get("ms_b1") for f, r in choice["forms"].items()}})
    Evaluation.model_validate(result)  # the contract the gate, package and infra-validate read
    with open(evaluation.path, "w") as f:
        json.dump(result, f)
    values = {f"test_{name}": est["value"] for name, est in result["metrics"].items()}
    values["latency_p95_ms"] = result["latency"]["p95_ms"]
    if result["champion"]:
        values["iou_diff_vs_champion_ci95_low"] = result["champion"]["comparison"]["iou_diff"]["ci95_low"]
    write_metrics(metrics, values)
    embed_png_html(gallery.path, "Best and worst test images", os.path.join(workdir, "gallery.png"))
