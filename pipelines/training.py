"""The training pipeline: check -> validate -> preprocess -> train -> evaluate -> gate -> (package ->
infra-validate -> promote): `champion` moves only to a version whose bento booted and served as evaluated.

Parameters named in the issue tracker (variant, size, epochs, batch, lr, seed, gate thresholds)
are pipeline parameters; everything else rides in `base_config`. The first step measures the data
(unless the runner did) and reads the champion at run time: its outputs key the cache of every later
step, so a scheduled run with fixed parameters still sees new data and a new champion. With
`if_changed` it ends there when nothing changed. Each refusal (the gate, infra-validation, a stale
promotion) is a step's output the pipeline branches on, never a failed task.
"""
from types import SimpleNamespace

from kfp import dsl

from components import (check_changes, evaluate_model, gate_model, infra_validate_model, package_model,
                        preprocess_data, promote_model, train_model, validate_data)
from components.image import COMPONENT_IMAGE

from .platform import TrainResources, with_credentials, with_train_resources

PIPELINE_NAME = "cmunext-training"


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
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


def _named(task, name: str):
    return with_credentials(task).set_display_name(name)


def _train_and_gate(cfg, data_revision, project_root, check, resources: TrainResources) -> SimpleNamespace:
    """validate -> preprocess -> train -> evaluate -> gate; the tasks, for the steps that ship the model."""
    md5, champion = check.outputs["measured_md5"], check.outputs["champion_version"]
    # the data digest keys the snapshot's cache; the step re-measures and checks it
    validated = _named(validate_data(config_json=cfg, data_revision=data_revision, expected_md5=md5,
                                     project_root=project_root), "validate data")
    dataset, data_md5 = validated.outputs["dataset"], validated.outputs["data_md5"]
    prep = preprocess_data(config_json=cfg, data_md5=data_md5, dataset=dataset).set_display_name("preprocess")
    trained = _named(train_model(config_json=cfg, data_revision=data_revision, data_md5=data_md5,
                                 preprocessed=prep.outputs["preprocessed"]), "train")
    with_train_resources(trained, resources).set_retry(num_retries=1)
    evaluated = _named(evaluate_model(config_json=cfg, run_id=trained.outputs["run_id"], champion_version=champion,
                                      model=trained.outputs["model"], dataset=dataset,
                                      preprocessed=prep.outputs["preprocessed"]), "evaluate")
    gated = _named(gate_model(config_json=cfg, run_id=trained.outputs["run_id"], champion_version=champion,
                              evaluation=evaluated.outputs["evaluation"]), "gate")
    return SimpleNamespace(dataset=dataset, trained=trained, evaluated=evaluated, gated=gated, champion=champion)


def _ship(cfg, data_revision, check, t: SimpleNamespace) -> None:
    """package -> infra-validate -> [if its bento served as evaluated] promote."""
    run_id, evaluation = t.trained.outputs["run_id"], t.evaluated.outputs["evaluation"]
    artifact, decision = t.evaluated.outputs["serving_artifact"], t.gated.outputs["decision"]
    packaged = _named(package_model(config_json=cfg, run_id=run_id, model_uri=t.trained.outputs["model_uri"],
                                    data_revision=data_revision, model=t.trained.outputs["model"],
                                    serving_artifact=artifact, evaluation=evaluation, decision=decision), "package")
    version = packaged.outputs["version"]
    served = _named(infra_validate_model(config_json=cfg, version=version, run_id=run_id,
                                         registry_state=check.outputs["registry_state"],
                                         bento=packaged.outputs["bento"], serving_artifact=artifact,
                                         dataset=t.dataset, evaluation=evaluation), "infra-validate")
    with dsl.If(served.outputs["Output"] == "passed", name="bento-served"):
        _named(promote_model(config_json=cfg, run_id=run_id, version=version, champion_version=t.champion,
                             decision=decision, validation=served.outputs["validation"]), "promote")


def build_pipeline(resources: TrainResources = TrainResources()):
    """The pipeline, with the train step's resources fixed at compile time (from the config)."""

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Train, evaluate, gate and ship a CMUNeXt lesion-segmentation model")
    def training_pipeline(base_config: str, data_revision: str = "workspace", data_md5: str = "",
                          project_root: str = ".", if_changed: bool = False, variant: str = "cmunext_s",
                          image_size: int = 256, epochs: int = 300, batch_size: int = 8, lr: float = 0.01,
                          seed: int = 41, min_iou: float = 0.5, max_latency_ms: float = 500.0):
        cfg = configure(base_config=base_config, variant=variant, image_size=image_size, epochs=epochs,
                        batch_size=batch_size, lr=lr, seed=seed, min_iou=min_iou,
                        max_latency_ms=max_latency_ms).set_display_name("configure").output
        check = _named(check_changes(config_json=cfg, data_revision=data_revision, data_md5=data_md5,
                                     project_root=project_root, if_changed=if_changed), "check for changes")
        check.set_caching_options(False)
        with dsl.If(check.outputs["Output"] == "train", name="something-changed"):
            tasks = _train_and_gate(cfg, data_revision, project_root, check, resources)
            with dsl.If(tasks.gated.outputs["Output"] == "promote", name="gate-passed"):
                _ship(cfg, data_revision, check, tasks)

    return training_pipeline


training_pipeline = build_pipeline()
