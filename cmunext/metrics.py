"""Segmentation metrics per image, and dataset aggregates with bootstrap confidence intervals.

Defined values for empty masks (the reference's `GT == max(GT)` bug is not copied):

- IoU = (|P∩G| + 1e-5) / (|P∪G| + 1e-5): both empty gives 1, exactly one empty gives ~0.
- Dice = 2·IoU / (1 + IoU).
- sensitivity = TP / (TP + FN), and 1 when the ground truth is empty (nothing to miss).
- specificity = TN / (TN + FP), and 1 when the ground truth covers the whole image.
- precision = TP / (TP + FP); with no predicted foreground it is 1 if the ground truth is
  empty too, else 0.
- accuracy = (TP + TN) / pixels.
- HD95 (pixels): 95th percentile of the symmetric boundary distances; 0 when both masks are
  empty, and the image diagonal (the largest possible distance) when exactly one is empty.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

SMOOTH = 1e-5
METRIC_NAMES = ("iou", "dice", "sensitivity", "specificity", "precision", "accuracy", "hd95")


@dataclass(frozen=True)
class ImageMetrics:
    iou: float
    dice: float
    sensitivity: float
    specificity: float
    precision: float
    accuracy: float
    hd95: float
    tp: int
    fp: int
    fn: int
    tn: int

    def as_dict(self) -> dict:
        return asdict(self)


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = pred.astype(bool), gt.astype(bool)
    if not pred.any() and not gt.any():
        return 0.0
    if not pred.any() or not gt.any():
        return float(np.hypot(*pred.shape))
    bp, bg = _boundary(pred), _boundary(gt)
    # distance from every pixel to the nearest boundary pixel of the other mask
    d_to_g = ndimage.distance_transform_edt(~bg)
    d_to_p = ndimage.distance_transform_edt(~bp)
    distances = np.concatenate([d_to_g[bp], d_to_p[bg]])
    return float(np.percentile(distances, 95))


def image_metrics(prob_or_pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> ImageMetrics:
    """Metrics of one image; `prob_or_pred` is a probability map (binarised at `threshold`) or a bool mask."""
    pred = prob_or_pred if prob_or_pred.dtype == bool else prob_or_pred > threshold
    gt = gt.astype(bool)  # masks are {0, 1} or {0, 255}: any non-zero pixel is lesion
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    tn = int(pred.size - tp - fp - fn)
    iou = (tp + SMOOTH) / (tp + fp + fn + SMOOTH)
    return ImageMetrics(
        iou=iou,
        dice=2 * iou / (1 + iou),
        sensitivity=tp / (tp + fn) if tp + fn else 1.0,
        specificity=tn / (tn + fp) if tn + fp else 1.0,
        precision=tp / (tp + fp) if tp + fp else float(tp + fn == 0),
        accuracy=(tp + tn) / pred.size,
        hd95=hd95(pred, gt),
        tp=tp, fp=fp, fn=fn, tn=tn,
    )


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"value": self.value, "ci95_low": self.low, "ci95_high": self.high}


def _ci(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    if n == 0:
        raise ValueError("cannot aggregate metrics over zero images")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_mean(values, n_boot: int = 1000, seed: int = 0) -> Estimate:
    x = np.asarray(values, dtype=np.float64)
    boot = x[_indices(len(x), n_boot, seed)].mean(axis=1)
    return Estimate(float(x.mean()), *_ci(boot))


def pooled_iou_dice(per_image: list[ImageMetrics], n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """IoU and Dice over all pixels of all images (large lesions weigh more), with image-level bootstrap."""
    c = np.array([[m.tp, m.fp, m.fn] for m in per_image], dtype=np.float64)

    def iou_of(counts: np.ndarray) -> np.ndarray:
        tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
        return (tp + SMOOTH) / (tp + fp + fn + SMOOTH)

    idx = _indices(len(c), n_boot, seed)
    boot_iou = iou_of(c[idx].sum(axis=1))
    iou = float(iou_of(c.sum(axis=0)))
    return {
        "pooled_iou": Estimate(iou, *_ci(boot_iou)),
        "pooled_dice": Estimate(2 * iou / (1 + iou), *_ci(2 * boot_iou / (1 + boot_iou))),
    }


def aggregate(per_image: list[ImageMetrics], n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Mean over images of every metric (the paper's convention) plus pooled IoU/Dice, all with 95% CIs."""
    out = {
        name: bootstrap_mean([getattr(m, name) for m in per_image], n_boot, seed) for name in METRIC_NAMES
    }
    out.update(pooled_iou_dice(per_image, n_boot, seed))
    return out


def paired_difference(a, b, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean of (a - b) over the same images, with a paired bootstrap 95% CI."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same images: {a.shape} vs {b.shape}")
    return bootstrap_mean(a - b, n_boot, seed)
