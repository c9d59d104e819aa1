from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Output

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def gate_model(config_json: str, run_id: str, champion_version: str, evaluation: Input[Artifact],
               decision: Output[Artifact], report: Output[Markdown]) -> str:
    """Promote only if IoU, latency and the comparison with the champion all pass; returns
    "promote" or "reject" (the pipeline's condition), with the checks in `decision`."""
    from cmunext.config import RunConfig
    from cmunext.contracts import Evaluation
    from cmunext.gate import report_markdown
    from cmunext.steps import gate

    ev = Evaluation.model_validate_json(open(evaluation.path).read())
    result = gate(RunConfig.model_validate_json(config_json), ev, run_id)
    with open(decision.path, "w") as f:
        f.write(result.model_dump_json())
    decision.metadata.update({"decision": result.decision, "reasons": result.reasons})
    with open(report.path, "w") as f:
        f.write(report_markdown(result, ev))
    return result.decision
