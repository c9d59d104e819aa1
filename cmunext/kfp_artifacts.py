"""Small helpers the kfp components share (duck-typed on kfp artifacts; no kfp import here)."""
from __future__ import annotations

import json
import os


def write_metrics(artifact, metrics: dict[str, float]) -> None:
    """Log metrics for the Kubeflow UI and also write them to the artifact's path: kfp.local's
    cache treats an artifact without a file as missing, so metadata-only Metrics never cache."""
    for name, value in metrics.items():
        artifact.log_metric(name, float(value))
    os.makedirs(os.path.dirname(artifact.path), exist_ok=True)
    with open(artifact.path, "w") as f:
        json.dump(metrics, f, indent=1)


def embed_png_html(path: str, title: str, png_file: str | None) -> None:
    """A self-contained HTML page (the Kubeflow UI renders HTML artifacts inline)."""
    import base64
    body = "<p>(no picture)</p>"
    if png_file and os.path.exists(png_file):
        with open(png_file, "rb") as f:
            body = f"<img style='max-width:100%' src='data:image/png;base64,{base64.b64encode(f.read()).decode()}'/>"
    with open(path, "w") as f:
        f.write(f"<html><body><h3>{title}</h3>{body}</body></html>")
