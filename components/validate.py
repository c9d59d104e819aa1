from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Markdown, Metrics, Output

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def validate_data(config_json: str, data_revision: str, expected_md5: str, project_root: str, dataset: Output[Dataset],
                  data_docs: Output[Artifact], report: Output[Markdown], summary: Output[Metrics]
                  ) -> NamedTuple("ValidateOutputs", [("data_md5", str), ("samples", int)]):
    """Snapshot the dataset version, then check it with great-expectations; fails the run on bad data."""
    import json
    from collections import namedtuple

    from cmunext.config import RunConfig
    from cmunext.data.validate import format_summary
    from cmunext.kfp_artifacts import write_metrics
    from cmunext.steps import StepFailed, snapshot_data, validate

    cfg = RunConfig.model_validate_json(config_json)
    snap = snapshot_data(cfg, data_revision, project_root, dataset.path)
    if expected_md5 and snap["md5"] != expected_md5:
        raise StepFailed(f"the dataset changed while the run started (expected digest {expected_md5}, "
                         f"found {snap['md5']}); start the run again")
    dataset.metadata.update({"data_revision": data_revision, "md5": snap["md5"], "files": snap["files"]})
    try:
        result = validate(cfg, dataset.path, data_docs.path)
    except StepFailed as exc:
        with open(report.path, "w") as f:
            f.write(f"# Data validation FAILED\n\n```\n{exc}\n```\n")
        raise
    with open(report.path, "w") as f:
        f.write("# Data validation passed\n\n```\n" + format_summary(result) + "\n```\n")
    write_metrics(summary, {"samples": result["samples"],
                            "near_duplicate_groups": len(result["near_duplicate_groups"]),
                            "exact_duplicate_groups": len(result["exact_duplicate_groups"]),
                            "duplicates_removed": len(result["duplicates"]["removed"])})
    dataset.metadata.update({"duplicates_policy": result["duplicates"]["policy"],
                             "duplicates": result["duplicates"]["description"]})
    data_docs.metadata["summary"] = json.dumps({k: result[k] for k in ("success", "samples")})
    return namedtuple("ValidateOutputs", ["data_md5", "samples"])(snap["md5"], result["samples"])
