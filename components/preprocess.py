from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def preprocess_data(config_json: str, data_md5: str, dataset: Input[Dataset], preprocessed: Output[Dataset],
                    stats: Output[Metrics]):
    """Grouped split and resize into memory-mapped shards (byte-identical for the same data and config)."""
    from cmunext.config import RunConfig
    from cmunext.kfp_artifacts import write_metrics
    from cmunext.steps import preprocess

    result = preprocess(RunConfig.model_validate_json(config_json), dataset.path, preprocessed.path, data_md5)
    preprocessed.metadata.update({"data_md5": data_md5, **result["split"]})
    values = {"near_duplicate_groups": result["split"]["near_duplicate_groups"]}
    for split, s in result["stats"].items():
        values.update({f"{split}_images": s["count"], f"{split}_foreground_ratio_mean": s["foreground_ratio_mean"]})
    write_metrics(stats, values)
