"""The artifact that will be served, as a callable for latency measurement (batch 1, configured size)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .engine.weights import load_weights


def serving_runner(weights: str | Path, workdir: str | Path):
    """Returns (run, artifact_name): `run()` performs one warm batch-1 inference."""
    model, meta = load_weights(weights)
    x = torch.from_numpy(np.zeros((1, meta["in_channels"], meta["image_size"], meta["image_size"]), np.float32))

    def run():
        with torch.inference_mode():
            return model(x)

    return run, "pytorch-eager"
