"""Scoring a model on a dataset split: per-image metrics at each image's own size, aggregates
with CIs, latency of the artifact as served, parameters and MACs, and a paired comparison
against the champion on the same images."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data.dataset import find_file
from .data.imageio import read_image, read_mask
from .metrics import ImageMetrics, aggregate, image_metrics, paired_difference


def score_images(probabilities: Callable[[np.ndarray], np.ndarray], root: str | Path, stems: list[str],
                 threshold: float = 0.5, progress: bool = True) -> list[dict]:
    """Per-image metrics; `probabilities(image)` returns a map at the image's own size."""
    root = Path(root)
    rows = []
    for stem in tqdm(stems, desc="scoring", unit="img", disable=not progress):
        image = read_image(find_file(root / "images", stem))
        gt = read_mask(find_file(root / "masks", stem))
        m = image_metrics(probabilities(image), gt, threshold)
        rows.append({"stem": stem, **m.as_dict()})
    return rows


def summarize(rows: list[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    per = [ImageMetrics(**{k: r[k] for k in ImageMetrics.__dataclass_fields__}) for r in rows]
    return {name: est.as_dict() for name, est in aggregate(per, n_boot, seed).items()}


def latency_ms(run: Callable[[], object], runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """Warm wall-clock latency of one call: p50, p95, mean over `runs`."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000)
    t = np.array(times)
    return {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)),
            "mean_ms": float(t.mean()), "runs": runs}


def count_macs(model: torch.nn.Module, height: int, width: int) -> int:
    """Multiply-accumulates of the convolutions for one image (the reference's 'conv only' count)."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() // output.shape[0] * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, model.in_channels, height, width))
    finally:
        for h in handles:
            h.remove()
    return total


def compare(challenger_rows: list[dict], champion_rows: list[dict], n_boot: int = 1000) -> dict:
    """Paired bootstrap of the per-image IoU difference (challenger - champion) on the same images."""
    champ = {r["stem"]: r["iou"] for r in champion_rows}
    stems = [r["stem"] for r in challenger_rows if r["stem"] in champ]
    if len(stems) != len(challenger_rows):
        raise ValueError("champion and challenger were not scored on the same images")
    ch = {r["stem"]: r["iou"] for r in challenger_rows}
    diff = paired_difference([ch[s] for s in stems], [champ[s] for s in stems], n_boot)
    return {"iou_diff": diff.as_dict(), "images": len(stems)}
