"""The reference a served model is compared with, computed by the evaluate step and logged with the model's run
(MLflow artifact monitoring/reference.json): the image features (cmunext_serving/observe.py) of its training
images, and the prediction features of its answers on the test split. Prediction features come from held-out
images because on its own training images a model is more certain than it will ever be on new scans; the
reference would then call every served window drifted."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from cmunext_serving.imageio import read_image
from cmunext_serving.observe import FEATURES, image_features, prediction_features

from ..data.layout import find_file
from ..errors import CmunextError

ARTIFACT = "monitoring/reference.json"
MAX_IMAGES = 2000  # a KS test's power hardly grows past this; the file stays small


class NoReference(CmunextError, LookupError):
    """The model version has no reference: the message names it and says how to make one."""


def compute(data_dir: str | Path, train: list[str], predictions: list[dict], threshold: float) -> dict:
    """{"features": {name: [values]}, "sources": ...}: image features over TRAIN's images, and PREDICTIONS (the
    prediction features of the test split's answers, kept by `observing` while the evaluate step scores them)."""
    root = Path(data_dir) / "images"
    columns: dict[str, list[float]] = {name: [] for name in FEATURES}
    for stem in _spread(train):
        for name, value in image_features(read_image(find_file(root, stem))).items():
            columns[name].append(value)
    for seen in _spread(predictions):
        for name, value in seen.items():
            columns[name].append(value)
    return {"format": 1, "threshold": threshold, "features": columns,
            "sources": {"image": f"training split, {min(len(train), MAX_IMAGES)} images",
                        "prediction": f"test split, {min(len(predictions), MAX_IMAGES)} images"}}


def observing(probabilities: Callable[[np.ndarray], np.ndarray], threshold: float,
              into: list[dict]) -> Callable[[np.ndarray], np.ndarray]:
    """PROBABILITIES, also keeping the prediction features of each answer in INTO: the reference's prediction half
    comes out of the pass that scores the test split, not a second pass over it."""
    def run(image: np.ndarray) -> np.ndarray:
        prob = probabilities(image)
        into.append(prediction_features(prob, threshold))
        return prob
    return run


def _spread(items: list) -> list:
    """At most MAX_IMAGES items, evenly spread (deterministic)."""
    if len(items) <= MAX_IMAGES:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, MAX_IMAGES).astype(int)]


def log(run_id: str, reference: dict) -> None:
    from ..tracking import mlflow_runs
    mlflow_runs.log_json(run_id, reference, ARTIFACT)


def load(model_name: str, version: str, run_id: str, dest: str | Path) -> dict:
    """The reference logged with VERSION's run; NoReference when there is none."""
    import mlflow
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT, dst_path=str(dest))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing artifact
        raise NoReference(f"{model_name} v{version} has no drift reference ({ARTIFACT} in run {run_id}: "
                          f"{type(exc).__name__}). Models evaluated before monitoring existed have none: retrain "
                          "(`cmunext pipeline run`), whose evaluate step logs it") from None
    return json.loads(Path(path).read_text())
