"""The artifact that will be served, as a callable for latency measurement (batch 1, configured size).

It is exported exactly as the package step exports it (the fastest ONNX Runtime form whose
probabilities match PyTorch within 1e-4), so the gate judges the latency users will see.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def serving_runner(weights: str | Path, workdir: str | Path, tta: str = "none"):
    """Returns (run, artifact_description): `run()` performs one warm batch-1 inference of the serving form TTA."""
    from cmunext_serving.engines import ServedModel

    from .serving.export import export_serving_artifact

    info = export_serving_artifact(weights, workdir, tta=tta)
    model = ServedModel(workdir)
    x = np.zeros((1, model.channels, model.size, model.size), np.float32)
    return (lambda: model.probabilities(x)), f"onnxruntime/fp32:{info['format']}{form_suffix(info)}"


def form_suffix(info: dict) -> str:
    """What an export (its export.json INFO) runs around one network: '+ensemble:N', '+tta:FORM', or nothing."""
    members, tta = info.get("members", 1), info.get("tta", "none")
    return (f"+ensemble:{members}" if members > 1 else "") + (f"+tta:{tta}" if tta != "none" else "")
