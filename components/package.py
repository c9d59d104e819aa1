from kfp import dsl
from kfp.dsl import Artifact, Model, Input, Output

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def package_model(config_json: str, version: str, run_id: str, data_revision: str, model: Input[Model],
                  evaluation: Input[Artifact], bento: Output[Artifact]) -> str:
    """Export the fastest matching serving artifact, save a BentoML model, build and export the Bento."""
    import json
    import os

    from cmunext.config import RunConfig
    from cmunext.steps import package

    # the evaluate step's exported artifact (work/artifact beside its output), measured by the gate
    exported = os.path.join(os.path.dirname(evaluation.path), "work", "artifact")
    result = package(RunConfig.model_validate_json(config_json), os.path.join(model.path, "model.safetensors"),
                     version, run_id, data_revision, json.load(open(evaluation.path)), bento.path, exported)
    bento.metadata.update(result)
    return result["bento_tag"]
