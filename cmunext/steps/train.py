"""The train step: one MLflow run per training, with the split and the duplicates policy it trained under."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import RunConfig
from .common import DUPLICATES_REPORT, SPLIT_ARTIFACT, log_to_stderr


def train(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, data_revision: str, data_md5: str,
          pipeline_run: str = "") -> dict:
    """Train with MLflow tracking; returns {run_id, model_uri, weights, best_epoch, best_val_iou}."""
    from ..engine.launch import train_any
    from ..losses import loss_label
    from ..pictures import training_curves
    from ..tracking import mlflow_runs

    log_to_stderr()
    out_dir = Path(out_dir)
    from ..retrain import CODE_TAG, code_digest
    # A retried step resumes from the checkpoints in out_dir; it also continues the MLflow run it started there,
    # so one run holds every epoch (not a second, partial run beside an orphan).
    marker = out_dir / "mlflow_run_id"
    run_id = mlflow_runs.existing_run(marker.read_text().strip()) if marker.is_file() else None
    if run_id is None:
        run_id = mlflow_runs.start(cfg, data_revision, data_md5,
                                   tags={"pipeline_run": pipeline_run, CODE_TAG: code_digest()})
        out_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(run_id + "\n")
    mlflow_runs.set_tags(run_id, {"status_detail": "training"})
    _record_duplicates(run_id, Path(data_dir) / DUPLICATES_REPORT)
    _record_split(run_id, Path(data_dir) / "splits.json")
    # one log line per epoch is the progress in the task's log (a bar per batch floods it)
    result = train_any(cfg, data_dir, out_dir, resume=True, callbacks=[mlflow_runs.EpochLogger(run_id)],
                       progress=False)
    # epochs whose metrics never reached MLflow (it was down past the client's retries, or the step was killed
    # between checkpoint and logging) are in the resumed history: log them now
    mlflow_runs.log_missing_epochs(run_id, result.history)
    curves = training_curves(result.history, out_dir / "training_curves.png",
                             loss_label(cfg.train.lovasz_weight, cfg.train.deep_supervision))
    mlflow_runs.log_pictures(run_id, {"plots": curves})
    mlflow_runs.log_metrics(run_id, {"best_val_iou": result.best_val_iou, "best_epoch": result.best_epoch,
                                     "train_images_per_second": result.images_per_second})
    model_uri = mlflow_runs.log_model(run_id, result.weights, cfg.data.image_size, cfg.model.in_channels)
    mlflow_runs.set_tags(run_id, {"status_detail": "trained", "model_uri": model_uri})
    return {"run_id": run_id, "model_uri": model_uri, "weights": str(result.weights),
            "best_epoch": result.best_epoch, "best_val_iou": result.best_val_iou}


def _record_split(run_id: str, path: Path) -> None:
    """The run's split, with it: a later run's evaluate reads it to never score this model on its training images."""
    from ..tracking import mlflow_runs
    if not path.is_file():
        return
    split = json.loads(path.read_text())
    info = split.get("info", {})
    mlflow_runs.set_tags(run_id, {"split_source": str(info.get("source", "made now")),
                                  "split_sizes": json.dumps({k: len(split.get(k, [])) for k in ("train", "val", "test")})})
    mlflow_runs.log_json(run_id, split, SPLIT_ARTIFACT)


def _record_duplicates(run_id: str, report: Path) -> None:
    """The duplicates policy and its effect, with the run: nothing left out or merged goes unrecorded."""
    from ..tracking import mlflow_runs
    if not report.is_file():
        return
    plan = json.loads(report.read_text())
    mlflow_runs.set_tags(run_id, {"data_duplicates_policy": plan["policy"],
                                  "data_duplicates_removed": str(len(plan["removed"])),
                                  "data_duplicates_merged": json.dumps(plan["merged"])[:4000],
                                  "data_duplicates_quarantined": json.dumps(plan["quarantined"])[:4000]})
    mlflow_runs.log_json(run_id, plan, "data/duplicates.json")


