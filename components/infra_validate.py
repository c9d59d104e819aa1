from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def infra_validate_model(config_json: str, version: str, run_id: str, registry_state: str, bento: Input[Artifact],
                         serving_artifact: Input[Model], dataset: Input[Dataset], evaluation: Input[Artifact],
                         validation: Output[Artifact], report: Output[Markdown]) -> str:
    """Boot the bento from its archive and check canary masks and HTTP latency before promotion; returns
    "passed" or "failed" (the pipeline's condition). A failure is a recorded rejection and the champion stays.
    `registry_state` (the registry's last event, read by the check step) keys the cache: a re-run after a
    rejection boots the bento again."""
    import os

    from cmunext.config import RunConfig
    from cmunext.contracts import Evaluation
    from cmunext.steps import infra_validate

    cfg = RunConfig.model_validate_json(config_json)
    workdir = os.path.join(os.path.dirname(validation.path), "work")
    result = infra_validate(cfg, version, run_id, os.path.join(bento.path, "bento.bento"), serving_artifact.path,
                            dataset.path, Evaluation.model_validate_json(open(evaluation.path).read()), workdir)
    with open(validation.path, "w") as f:
        f.write(result.model_dump_json())
    validation.metadata.update({"passed": result.passed, "summary": result.summary or "; ".join(result.reasons)})
    with open(report.path, "w") as f:
        f.write(f"# Infra-validation passed\n\nversion {version}: {result.summary}\n" if result.passed else
                f"# Infra-validation FAILED: version {version} is not promoted\n\n"
                + "".join(f"- {r}\n" for r in result.reasons))
    return "passed" if result.passed else "failed"
