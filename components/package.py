from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def package_model(config_json: str, run_id: str, model_uri: str, data_revision: str, model: Input[Model],
                  serving_artifact: Input[Model], evaluation: Input[Artifact], decision: Input[Artifact],
                  bento: Output[Artifact]) -> NamedTuple("PackageOutputs", [("version", str), ("bento_tag", str)]):
    """Register the gated run as an MLflow version (no alias moves) and build its bento from the serving
    artifact the evaluate step timed; the .bento archive is this step's output."""
    import os
    from collections import namedtuple

    from cmunext.config import RunConfig
    from cmunext.contracts import Evaluation, GateDecision
    from cmunext.steps import package, register

    cfg = RunConfig.model_validate_json(config_json)
    ev = Evaluation.model_validate_json(open(evaluation.path).read())
    gated = GateDecision.model_validate_json(open(decision.path).read())
    version = register(cfg, gated, ev, run_id, model_uri, data_revision)
    result = package(cfg, os.path.join(model.path, "model.safetensors"), version, run_id, data_revision, ev,
                     bento.path, serving_artifact.path)
    bento.metadata.update({"version": version, "bento_tag": result.bento_tag, "bento_uri": result.bento_uri,
                           "bento_sha256": result.bento_sha256, "artifact_sha256": result.sha256})
    return namedtuple("PackageOutputs", ["version", "bento_tag"])(version, result.bento_tag)
