"""K-fold grouped cross-validation, the protocol segmentation papers report, beside the held-out test figure.

The pool is every image outside the test split (train + val of the run's split), so the test images stay
unseen. Folds are built like the split itself: near-duplicate groups never cross folds, and classes are
spread evenly. Fold i trains on the other folds, picks its best epoch on fold i, and is scored on fold i at
the images' own size; the figure is the mean over folds with a t-interval (K is small).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
from scipy import stats

from .config import RunConfig

log = logging.getLogger(__name__)


def folds(groups: list[list[str]], k: int, seed: int = 41, classes: dict[str, str] | None = None) -> list[list[str]]:
    """K folds of about equal size, whole groups only, each group to the fold with fewest of its class."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    if sum(map(len, groups)) < k:
        raise ValueError(f"{sum(map(len, groups))} images cannot make {k} folds")
    classes = classes or {}

    def key(g: list[str]) -> str:
        return hashlib.sha256(f"{seed}:{g[0]}".encode()).hexdigest()

    out: list[list[str]] = [[] for _ in range(k)]
    per_class = [dict() for _ in range(k)]
    for g in sorted(groups, key=lambda g: (-len(g), key(g))):
        names = [classes.get(s, "") for s in g]
        c = max(sorted(set(names)), key=names.count)
        i = min(range(k), key=lambda j: (per_class[j].get(c, 0), len(out[j]), j))
        out[i].extend(g)
        per_class[i][c] = per_class[i].get(c, 0) + len(g)
    return [sorted(f) for f in out]


def mean_ci(values: list[float]) -> dict:
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return {"value": float(x.mean()), "ci95_low": float("nan"), "ci95_high": float("nan")}
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return {"value": float(x.mean()), "ci95_low": float(x.mean() - half), "ci95_high": float(x.mean() + half)}


def cross_validate(cfg: RunConfig, data_dir: str | Path, split: dict, k: int, work: str | Path,
                   classes: dict[str, str] | None = None) -> dict:
    """Train and score K models on the pool outside SPLIT's test images; returns per-fold and mean figures."""
    from .data.preprocess import preprocess
    from .data.split import fingerprints, group_stems
    from .engine.launch import train_any
    from .evaluation import score_images, summarize
    from .predict import Predictor

    data_dir, work = Path(data_dir), Path(work)
    pool = sorted(set(split["train"]) | set(split["val"]))
    groups = group_stems(fingerprints(data_dir, pool, progress=False))
    parts = folds(groups, k, cfg.data.split_seed, classes)
    results = []
    for i, held in enumerate(parts):
        rest = [s for j, f in enumerate(parts) if j != i for s in f]
        fold_dir = work / f"fold-{i + 1}"
        shutil.rmtree(fold_dir, ignore_errors=True)
        preprocess(data_dir, {"train": rest, "val": held}, fold_dir / "data", cfg.data.image_size,
                   cfg.model.in_channels, progress=False)
        log.info("cross-validation fold %d/%d: training on %d images, scoring %d", i + 1, k, len(rest), len(held))
        trained = train_any(cfg, fold_dir / "data", fold_dir / "run", resume=False)  # an ensemble recipe: one per fold
        served = Predictor(trained.weights, cfg.eval.threshold, tta=cfg.eval.tta).probabilities
        rows = score_images(served, data_dir, held, cfg.eval.threshold, progress=False)
        m = summarize(rows, cfg.eval.bootstrap)
        results.append({"fold": i + 1, "images": len(held), "iou": m["iou"]["value"], "dice": m["dice"]["value"],
                        "best_epoch": trained.best_epoch})
        log.info("cross-validation fold %d/%d: IoU %.4f, Dice %.4f", i + 1, k, results[-1]["iou"], results[-1]["dice"])
        shutil.rmtree(fold_dir / "data", ignore_errors=True)  # the shards: large, and made again on demand
    out = {"folds": k, "pool_images": len(pool), "per_fold": results,
           "iou": mean_ci([r["iou"] for r in results]), "dice": mean_ci([r["dice"] for r in results])}
    (work / "cross_validation.json").write_text(json.dumps(out, indent=1))
    return out
