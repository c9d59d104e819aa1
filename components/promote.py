from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def promote_model(config_json: str, run_id: str, version: str, champion_version: str, decision: Input[Artifact],
                  validation: Input[Artifact], promotion: Output[Artifact], report: Output[Markdown]) -> str:
    """Move the `champion` alias to the validated version (compare-and-set against the gated champion); returns
    the outcome: "promoted", "already_registered", or "stale" (the champion moved while the run decided: a
    refusal, recorded on the version). `champion_version` (the champion when the run started) keys the cache."""
    from cmunext.config import RunConfig
    from cmunext.contracts import GateDecision, InfraValidation
    from cmunext.steps import promote

    result = promote(RunConfig.model_validate_json(config_json),
                     GateDecision.model_validate_json(open(decision.path).read()), version, run_id,
                     InfraValidation.model_validate_json(open(validation.path).read()))
    with open(promotion.path, "w") as f:
        f.write(result.model_dump_json())
    promotion.metadata.update({"event": result.event, "version": version, "champion": result.champion or ""})
    with open(report.path, "w") as f:
        f.write(f"# Promotion: {result.event}\n\nversion {version}: {result.reason}\n")
    return result.event
