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

from cmunext_serving.imageio import read_image, read_mask
from cmunext_serving.lesion_rule import LesionRule

from .data.layout import find_file
from .metrics import ImageMetrics, aggregate, image_metrics, paired_difference


def score_images(probabilities: Callable[[np.ndarray], np.ndarray], root: str | Path, stems: list[str],
                 rule: LesionRule | float = 0.5, progress: bool = True) -> list[dict]:
    """Per-image metrics; `probabilities(image)` returns a map at the image's own size, which RULE (or a plain
    threshold) turns into the mask, as the served form does. An image whose mask the rule emptied or cut also keeps
    its metrics without the rule (`without_rule`), so the rule's effect is known without scoring again."""
    root = Path(root)
    rule = rule if isinstance(rule, LesionRule) else LesionRule(float(rule))
    rows = []
    for stem in tqdm(stems, desc="scoring", unit="img", disable=not progress):
        image = read_image(find_file(root / "images", stem))
        gt = read_mask(find_file(root / "masks", stem))
        prob = probabilities(image)
        mask = rule.mask(prob)
        row = {"stem": stem, **image_metrics(mask, gt).as_dict()}
        if rule.changes_masks and ((plain := prob > rule.threshold) != mask).any():
            row["without_rule"] = image_metrics(plain, gt).as_dict()
        rows.append(row)
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


def _estimate(values: list[float], n_boot: int) -> dict | None:
    from .metrics import bootstrap_mean
    return bootstrap_mean(values, n_boot).as_dict() if values else None


def breakdown(rows: list[dict], classes: dict[str, str] | None = None, n_boot: int = 1000) -> dict:
    """What one mean IoU hides, each with a 95% CI over images:

    - lesion images (non-empty ground truth): IoU and Dice;
    - normal images (empty ground truth): the false-positive area (share of the image predicted lesion) and
      the share predicted empty;
    - image-level detection of "any lesion predicted": sensitivity over lesion images, specificity over
      normal images;
    - per class (from mapping.csv or the import: BUSI's benign and malignant): IoU and Dice.
    """
    lesion = [r for r in rows if r["tp"] + r["fn"] > 0]
    normal = [r for r in rows if r["tp"] + r["fn"] == 0]
    found = [float(r["tp"] + r["fp"] > 0) for r in lesion]
    empty = [float(r["tp"] + r["fp"] == 0) for r in normal]
    out = {
        "lesion": {"images": len(lesion), "iou": _estimate([r["iou"] for r in lesion], n_boot),
                   "dice": _estimate([r["dice"] for r in lesion], n_boot)},
        "normal": {"images": len(normal),
                   "false_positive_area": _estimate([r["fp"] / max(r["fp"] + r["tn"], 1) for r in normal], n_boot),
                   "predicted_empty": _estimate(empty, n_boot)},
        "detection": {"sensitivity": _estimate(found, n_boot), "specificity": _estimate(empty, n_boot)},
        "classes": {},
    }
    by_class: dict[str, list[dict]] = {}
    for r in rows:
        if classes and classes.get(r["stem"]):
            by_class.setdefault(classes[r["stem"]], []).append(r)
    for name, members in sorted(by_class.items()):
        out["classes"][name] = {"images": len(members), "iou": _estimate([r["iou"] for r in members], n_boot),
                                "dice": _estimate([r["dice"] for r in members], n_boot)}
    return out


def compare_class(challenger_rows: list[dict], champion_rows: list[dict], stems: set[str], n_boot: int = 1000) -> dict:
    """The paired IoU difference (challenger - champion) on the images of one class."""
    mine = [r for r in challenger_rows if r["stem"] in stems]
    theirs = [r for r in champion_rows if r["stem"] in stems]
    return compare(mine, theirs, n_boot) if mine else {"iou_diff": None, "images": 0}
