"""The training pipeline: validate -> preprocess -> train -> evaluate -> gate -> (promote -> package).

Parameters named in the issue tracker (variant, size, epochs, batch, lr, seed, gate thresholds)
are pipeline parameters; everything else rides in `base_config`. The data revision and its
content digest are parameters of every data-dependent step, so they key each step's cache.
"""
from kfp import dsl

from components import (evaluate_model, gate_model, package_model, preprocess_data, promote_model, train_model,
                        validate_data)
from components.image import COMPONENT_IMAGE

PIPELINE_NAME = "cmunext-training"


@dsl.component(base_image=COMPONENT_IMAGE)
def configure(base_config: str, variant: str, image_size: int, epochs: int, batch_size: int, lr: float, seed: int,
              min_iou: float, max_latency_ms: float) -> str:
    """The effective run configuration: the base config with the pipeline's parameters applied."""
    from cmunext.config import RunConfig

    cfg = RunConfig.model_validate_json(base_config).model_dump()
    cfg["model"]["variant"] = variant
    cfg["data"]["image_size"] = image_size
    cfg["train"].update(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    cfg["gate"].update(min_iou=min_iou, max_latency_ms=max_latency_ms)
    return RunConfig.model_validate(cfg).model_dump_json()


@dsl.pipeline(name=PIPELINE_NAME, description="Train, evaluate, gate and ship a CMUNeXt lesion-segmentation model")
def training_pipeline(
    base_config: str,
    data_revision: str = "workspace",
    data_md5: str = "",
    project_root: str = ".",
    champion_version: str = "none",
    variant: str = "cmunext_s",
    image_size: int = 256,
    epochs: int = 300,
    batch_size: int = 8,
    lr: float = 0.01,
    seed: int = 41,
    min_iou: float = 0.5,
    max_latency_ms: float = 500.0,
):
    config = configure(base_config=base_config, variant=variant, image_size=image_size, epochs=epochs,
                       batch_size=batch_size, lr=lr, seed=seed, min_iou=min_iou, max_latency_ms=max_latency_ms)
    config.set_display_name("configure")
    cfg = config.output

    # data_md5 (measured by the runner) keys the snapshot's cache; the step re-measures and checks it
    validated = validate_data(config_json=cfg, data_revision=data_revision, expected_md5=data_md5,
                              project_root=project_root)
    validated.set_display_name("validate data")

    prep = preprocess_data(config_json=cfg, data_md5=validated.outputs["data_md5"],
                           dataset=validated.outputs["dataset"])
    prep.set_display_name("preprocess")

    trained = train_model(config_json=cfg, data_revision=data_revision, data_md5=validated.outputs["data_md5"],
                          preprocessed=prep.outputs["preprocessed"])
    trained.set_display_name("train").set_retry(num_retries=1)

    evaluated = evaluate_model(config_json=cfg, run_id=trained.outputs["run_id"], champion_version=champion_version,
                               model=trained.outputs["model"], dataset=validated.outputs["dataset"],
                               preprocessed=prep.outputs["preprocessed"])
    evaluated.set_display_name("evaluate")

    gated = gate_model(config_json=cfg, run_id=trained.outputs["run_id"], champion_version=champion_version,
                       evaluation=evaluated.outputs["evaluation"])
    gated.set_display_name("gate")

    with dsl.If(gated.outputs["Output"] == "promote", name="gate-passed"):
        promoted = promote_model(config_json=cfg, run_id=trained.outputs["run_id"],
                                 model_uri=trained.outputs["model_uri"], data_revision=data_revision,
                                 decision=gated.outputs["decision"], champion_version=champion_version,
                                 evaluation=evaluated.outputs["evaluation"])
        promoted.set_display_name("promote")
        packaged = package_model(config_json=cfg, version=promoted.output, run_id=trained.outputs["run_id"],
                                 data_revision=data_revision, model=trained.outputs["model"],
                                 evaluation=evaluated.outputs["evaluation"])
        packaged.set_display_name("package")
