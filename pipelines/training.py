"""The training pipeline: check -> validate -> preprocess -> train -> evaluate -> gate -> (package ->
infra-validate -> promote): `champion` moves only to a version whose bento booted and served as evaluated.

Parameters named in the issue tracker (variant, size, epochs, batch, lr, seed, gate thresholds)
are pipeline parameters; everything else rides in `base_config`. The first step measures the data
(unless the runner did) and reads the champion at run time: its outputs key the cache of every later
step, so a scheduled run with fixed parameters still sees new data and a new champion. With
`if_changed` it ends there when nothing changed.
"""
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


def build_pipeline(resources: TrainResources = TrainResources()):
    """The pipeline, with the train step's resources fixed at compile time (from the config)."""

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Train, evaluate, gate and ship a CMUNeXt lesion-segmentation model")
    def training_pipeline(
        base_config: str,
        data_revision: str = "workspace",
        data_md5: str = "",
        project_root: str = ".",
        if_changed: bool = False,
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

        check = with_credentials(check_changes(config_json=cfg, data_revision=data_revision, data_md5=data_md5,
                                               project_root=project_root, if_changed=if_changed))
        check.set_display_name("check for changes").set_caching_options(False)
        md5, champion = check.outputs["measured_md5"], check.outputs["champion_version"]

        with dsl.If(check.outputs["Output"] == "train", name="something-changed"):
            # the data digest keys the snapshot's cache; the step re-measures and checks it
            validated = with_credentials(validate_data(config_json=cfg, data_revision=data_revision,
                                                       expected_md5=md5, project_root=project_root))
            validated.set_display_name("validate data")

            prep = preprocess_data(config_json=cfg, data_md5=validated.outputs["data_md5"],
                                   dataset=validated.outputs["dataset"])
            prep.set_display_name("preprocess")

            trained = with_credentials(train_model(config_json=cfg, data_revision=data_revision,
                                                   data_md5=validated.outputs["data_md5"],
                                                   preprocessed=prep.outputs["preprocessed"]))
            with_train_resources(trained, resources)
            trained.set_display_name("train").set_retry(num_retries=1)

            evaluated = with_credentials(evaluate_model(
                config_json=cfg, run_id=trained.outputs["run_id"], champion_version=champion,
                model=trained.outputs["model"], dataset=validated.outputs["dataset"],
                preprocessed=prep.outputs["preprocessed"]))
            evaluated.set_display_name("evaluate")

            gated = with_credentials(gate_model(config_json=cfg, run_id=trained.outputs["run_id"],
                                                champion_version=champion, evaluation=evaluated.outputs["evaluation"]))
            gated.set_display_name("gate")

            with dsl.If(gated.outputs["Output"] == "promote", name="gate-passed"):
                packaged = with_credentials(package_model(
                    config_json=cfg, run_id=trained.outputs["run_id"], model_uri=trained.outputs["model_uri"],
                    data_revision=data_revision, model=trained.outputs["model"],
                    serving_artifact=evaluated.outputs["serving_artifact"], evaluation=evaluated.outputs["evaluation"],
                    decision=gated.outputs["decision"]))
                packaged.set_display_name("package")
                validated_serving = with_credentials(infra_validate_model(
                    config_json=cfg, version=packaged.outputs["version"], run_id=trained.outputs["run_id"],
                    bento=packaged.outputs["bento"], serving_artifact=evaluated.outputs["serving_artifact"],
                    dataset=validated.outputs["dataset"], evaluation=evaluated.outputs["evaluation"]))
                validated_serving.set_display_name("infra-validate")
                promoted = with_credentials(promote_model(
                    config_json=cfg, run_id=trained.outputs["run_id"], version=packaged.outputs["version"],
                    champion_version=champion, decision=gated.outputs["decision"],
                    validation=validated_serving.outputs["validation"]))
                promoted.set_display_name("promote")

    return training_pipeline


training_pipeline = build_pipeline()
