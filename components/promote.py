from kfp import dsl
from kfp.dsl import Artifact, Input

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def promote_model(config_json: str, run_id: str, version: str, champion_version: str, decision: Input[Artifact],
                  validation: Input[Artifact]) -> str:
    """Move the `champion` alias to the validated version (compare-and-set against the gated champion).
    `champion_version` (the champion when the run started) is here to key the cache."""
    from cmunext.config import RunConfig
    from cmunext.contracts import GateDecision, InfraValidation
    from cmunext.steps import promote

    result = promote(RunConfig.model_validate_json(config_json),
                     GateDecision.model_validate_json(open(decision.path).read()), version, run_id,
                     InfraValidation.model_validate_json(open(validation.path).read()))
    return result["version"]
