"""One MLflow run per pipeline run: params, per-epoch metrics, the data revision as a dataset
input, git commit, config, pictures, and the model as a pyfunc that loads from safetensors."""
from __future__ import annotations

import json
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric, RunTag

from ..config import RunConfig, config_to_dict, flatten
from ..errors import CmunextError
from ..paths import state_dir
from ..storage_errors import classify
from . import access

EXPERIMENT = "cmunext"


class TrackingError(CmunextError):
    """MLflow (or the artifact store behind it) failed; the message names the tracking URI and the likely cause."""


def _answers(uri: str) -> bool:
    """Whether an MLflow server at URI answers its health check now."""
    if not uri.startswith(("http://", "https://")):
        return False
    import requests
    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _explain(what: str, exc: Exception, artifacts: bool = False) -> str:
    uri, text = tracking_uri(), str(exc)
    refused = access.explain(exc, uri, what)  # 401/403: credentials or permissions, not an outage
    if refused:
        return refused
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    kind, _ = classify(exc)
    if artifacts and _answers(uri):  # the server is up: what failed is the store it proxies artifacts to
        cause = ("the tracking server answers, but storing the artifact behind it failed: its artifact store "
                 "(S3 or similar) is down or refuses the server's credentials; the server's log names which")
    elif kind == "server":
        cause = "the tracking server answered HTTP 5xx; its log says why"
    elif kind == "unreachable":
        cause = (f"the tracking server did not answer after {retries} retries with backoff "
                 "(MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR): is it running? "
                 "Training checkpoints are kept: run the step again to resume")
    else:
        cause = type(exc).__name__
    return f"{what}: MLflow at {uri} failed ({cause}). {text}"


@contextmanager
def _tracking(what: str, artifacts: bool = False):
    """Turn MLflow client errors (after its own retries) into one message naming the server and the cause."""
    try:
        yield
    except TrackingError:
        raise
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise TrackingError(_explain(what, exc, artifacts)) from exc


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store in the state folder (no server to start)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir() / 'mlflow.db'}"


def setup(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; returns its id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    # Local stores keep artifacts in the state folder; a server decides for itself.
    location = (state_dir() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    try:
        return mlflow.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another step
        return mlflow.get_experiment_by_name(experiment).experiment_id


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=cwd, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=cwd, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def start(cfg: RunConfig, data_revision: str, data_md5: str, run_name: str | None = None,
          tags: dict | None = None) -> str:
    """Create the run and log what defines it; returns the run id."""
    with _tracking("creating the MLflow run"):
        return _start(cfg, data_revision, data_md5, run_name, tags)


def _start(cfg: RunConfig, data_revision: str, data_md5: str, run_name: str | None, tags: dict | None) -> str:
    experiment_id = setup()
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or cfg.name) as run:
        mlflow.log_params({k: v for k, v in flatten(config_to_dict(cfg)).items()})
        mlflow.set_tags({"git_commit": git_commit(Path(__file__).parents[2]), "data_revision": data_revision,
                         "data_md5": data_md5, "config_name": cfg.name, **(tags or {})})
        mlflow.log_dict(config_to_dict(cfg), "config.json")
        where = cfg.data.source if cfg.data.source == "synth" else Path(cfg.data.source).resolve().as_uri()
        source = LocalArtifactDatasetSource(uri=f"{where}@{data_revision}")
        mlflow.log_input(MetaDataset(source=source, name=f"{Path(cfg.data.source).name}@{data_revision}",
                                     digest=data_md5[:36]), context="training")
        return run.info.run_id


def existing_run(run_id: str) -> str | None:
    """RUN_ID if the tracking store has that run, else None (a step resuming in its own folder continues its run)."""
    if not run_id:
        return None
    with _tracking(f"looking up run {run_id}"):
        setup()
    try:
        return mlflow.MlflowClient().get_run(run_id).info.run_id
    except mlflow.exceptions.MlflowException:
        return None


def log_missing_epochs(run_id: str, history: list[dict]) -> list[int]:
    """Log the epochs of HISTORY that the run lacks (cut off by an outage or a kill before a resume); returns them."""
    client = mlflow.MlflowClient()
    with _tracking(f"reading the epochs logged to run {run_id}"):
        logged = {m.step for m in client.get_metric_history(run_id, "val_iou")}
    missing = [h for h in history if int(h["epoch"]) not in logged]
    for h in missing:
        log_metrics(run_id, {k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]), client=client)
    return [int(h["epoch"]) for h in missing]


class EpochLogger:
    """Training callback: per-epoch metrics into the run, stepped by epoch."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.client = mlflow.MlflowClient()

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        log_metrics(self.run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch, client=self.client)


def log_model(run_id: str, weights: str | Path, image_size: int, in_channels: int) -> str:
    """Log the weights as a pyfunc model (models-from-code: nothing pickled); returns the model URI."""
    import cmunext
    from mlflow.models import infer_signature
    from . import pyfunc_model

    example = np.zeros((2, in_channels, image_size, image_size), np.float32)  # batch 2: no frozen batch dim
    signature = infer_signature(example, np.zeros((2, 1, image_size, image_size), np.float32))
    with _tracking(f"logging the model of run {run_id}", artifacts=True), mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=pyfunc_model.__file__, artifacts={"weights": str(weights)},
            code_paths=[str(Path(cmunext.__file__).parent)], signature=signature, input_example=example,
            pip_requirements=_requirements(),
        )
    return info.model_uri


def _requirements() -> list[str]:
    """Exact pins of what the logged model imports, as public indexes name them: without a local version label
    (torch's `+cpu` exists only on PyTorch's own index), so `pip install -r` works on any machine with PyPI."""
    from importlib.metadata import version
    return [f"{p}=={version(p).split('+')[0]}" for p in ("torch", "numpy", "safetensors", "scipy", "pillow",
                                                         "opencv-python-headless", "albumentations", "pydantic",
                                                         "pyyaml", "tqdm")]


# The client's calls, not `mlflow.start_run(run_id)`: re-entering a run flips its status and costs round trips.
def log_pictures(run_id: str, files: dict[str, str | Path]) -> None:
    client = mlflow.MlflowClient()
    with _tracking(f"uploading pictures of run {run_id}", artifacts=True):
        for folder, path in files.items():
            client.log_artifact(run_id, str(path), artifact_path=folder)


def log_json(run_id: str, data: dict, name: str) -> None:
    with _tracking(f"uploading {name} of run {run_id}", artifacts=True):
        mlflow.MlflowClient().log_dict(run_id, data, name)


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0, client=None) -> None:
    ts = int(time.time() * 1000)
    with _tracking(f"logging metrics of run {run_id} (step {step})"):
        (client or mlflow.MlflowClient()).log_batch(
            run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])


def set_tags(run_id: str, tags: dict[str, object]) -> None:
    """All TAGS in one request (a request per tag costs a round trip, and a server's a transaction, each)."""
    with _tracking(f"tagging run {run_id}"):
        mlflow.MlflowClient().log_batch(run_id, tags=[RunTag(k, v if isinstance(v, str) else json.dumps(v))
                                                      for k, v in tags.items()])
