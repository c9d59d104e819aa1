from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from .image import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train_model(config_json: str, data_revision: str, data_md5: str, preprocessed: Input[Dataset],
                model: Output[Model], curves: Output[HTML]
                ) -> NamedTuple("TrainOutputs", [("run_id", str), ("model_uri", str)]):
    """Train CMUNeXt (tracked in MLflow); resumes from its own checkpoints if retried."""
    import os
    from collections import namedtuple

    from cmunext.config import RunConfig
    from cmunext.kfp_artifacts import embed_png_html
    from cmunext.steps import train

    cfg = RunConfig.model_validate_json(config_json)
    result = train(cfg, preprocessed.path, model.path, data_revision, data_md5,
                   pipeline_run=os.environ.get("KFP_RUN_ID", ""))
    model.metadata.update({k: result[k] for k in ("run_id", "model_uri", "best_epoch", "best_val_iou")})
    embed_png_html(curves.path, f"Training curves ({cfg.model.variant})",
                   os.path.join(model.path, "training_curves.png"))
    return namedtuple("TrainOutputs", ["run_id", "model_uri"])(result["run_id"], result["model_uri"])
