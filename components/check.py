from kfp import dsl
from kfp.dsl import Markdown, Output

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def check_changes(config_json: str, data_revision: str, data_md5: str, project_root: str, if_changed: bool,
                  measured_md5: dsl.OutputPath(str), champion_version: dsl.OutputPath(str),
                  registry_state: dsl.OutputPath(str), report: Output[Markdown]) -> str:
    """Measure the data (unless the runner already did) and read the champion at run time; with
    `if_changed`, return "skip" when the champion was trained on this data with this code and is not
    too old (recorded in MLflow as "nothing to do"), else "train". Never cached: it is what a scheduled
    run looks at. `registry_state` (the registry's last event) keys infra-validation's cache. (The decision is the single return value: kfp.local cannot branch on a NamedTuple field.)"""
    from cmunext.config import RunConfig
    from cmunext.retrain import decide, measure_data, record

    cfg = RunConfig.model_validate_json(config_json)
    if data_revision:
        cfg.data.revision = data_revision
    md5 = data_md5 or measure_data(cfg, project_root)
    result = decide(cfg, md5)
    if not if_changed and result["decision"] == "skip":
        result.update(decision="train", reasons=["asked to train (if_changed is off); " + result["reasons"][0]])
    if result["decision"] == "skip":
        record(cfg, result, source="pipeline")
    with open(report.path, "w") as f:
        f.write(f"# Retrain check: {result['decision']}\n\n" + "".join(f"- {r}\n" for r in result["reasons"]) +
                f"\nData {md5}, code {result['code_digest']}, champion {result['champion_version']}.\n")
    with open(measured_md5, "w") as f:
        f.write(md5)
    with open(champion_version, "w") as f:
        f.write(result["champion_version"])
    with open(registry_state, "w") as f:
        f.write(result["registry_state"])
    return result["decision"]
