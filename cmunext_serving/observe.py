"""What the served model sees and answers, as numbers without pixels: the features of one prediction-log record,
and of the reference the evaluate step logs with each model (cmunext/monitoring/reference.py). One function for
both, so that the served window and the reference are measured alike. Torch-free: it runs in the serving image.
"""
from __future__ import annotations

import numpy as np

HISTOGRAM_BINS = 8  # coarse: a gain or probe change moves mass between bins; fine bins only add noise
UNCERTAIN = (0.3, 0.7)  # probabilities in this band count as uncertain


def image_features(image: np.ndarray) -> dict[str, float]:
    """Size and intensity summary of a uint8 image (HxW or HxWx3): width, height, mean, std, hist_0..7 (shares)."""
    gray = image if image.ndim == 2 else image.mean(axis=2)
    counts = np.bincount((np.asarray(gray, np.uint8) >> 5).ravel(), minlength=HISTOGRAM_BINS)
    shares = counts / max(int(counts.sum()), 1)
    out = {"width": float(image.shape[1]), "height": float(image.shape[0]),
           "intensity_mean": float(gray.mean()), "intensity_std": float(gray.std())}
    out.update({f"hist_{i}": float(s) for i, s in enumerate(shares)})
    return out


def prediction_features(prob: np.ndarray, threshold: float) -> dict[str, float]:
    """lesion_fraction (share of pixels above the threshold) and uncertainty: the share of the pixels the model
    leans towards lesion (p > 0.3) whose probability lies between 0.3 and 0.7 (0 when it sees no lesion)."""
    low, high = UNCERTAIN
    leaning = prob > low
    n = int(leaning.sum())
    unsure = int((leaning & (prob < high)).sum())
    return {"lesion_fraction": float((prob > threshold).mean()), "uncertainty": unsure / n if n else 0.0}


def features(image: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    return {**image_features(image), **prediction_features(prob, threshold)}


FEATURES = tuple(image_features(np.zeros((2, 2), np.uint8))) + ("lesion_fraction", "uncertainty")
