"""Whether an image shows a lesion at all, and so the mask it gets: the same rule in evaluation and in the served form.

A segmentation network trained mostly on lesion images leaves specks of probability on most normal scans; one
speck above the pixel threshold makes a "lesion found" answer. The rule calls an image lesion-free (an empty mask)
unless its highest probability reaches `min_peak` and its largest region above `threshold` covers at least
`min_area` of the image; otherwise the mask is the thresholded map, or with `largest_only` its largest connected
region alone (most scans show one lesion, and stray specks cost IoU). Its values are chosen on the validation split
(cmunext/no_lesion.py), recorded with the model and shipped in its metadata.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class LesionRule:
    threshold: float = 0.5  # a pixel is lesion above this probability
    min_peak: float = 0.0   # the image is lesion-free unless its highest probability reaches this ...
    min_area: float = 0.0   # ... and its largest lesion region covers this share of the image
    largest_only: bool = False  # a lesion image's mask is its largest region alone

    @property
    def active(self) -> bool:
        """Whether the image-level decision does anything beyond the threshold."""
        return self.min_peak > self.threshold or self.min_area > 0

    @property
    def changes_masks(self) -> bool:
        return self.active or self.largest_only

    def mask(self, prob: np.ndarray) -> np.ndarray:
        """The bool mask of a probability map at the image's own size."""
        pred = prob > self.threshold
        if self.active and not self.lesion_present(prob, pred):
            return np.zeros_like(pred)
        return largest_region(pred) if self.largest_only else pred

    def lesion_present(self, prob: np.ndarray, pred: np.ndarray) -> bool:
        return self.calls_lesion(*evidence(prob, pred))

    def calls_lesion(self, peak: float, largest: float) -> bool:
        """The decision from an image's evidence (see `evidence`)."""
        return largest > 0 and (not self.active or (peak >= self.min_peak and largest >= self.min_area))

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None, threshold: float = 0.5) -> LesionRule:
        """A recorded rule; a model recorded before rules existed gets the plain threshold."""
        if not values:
            return cls(threshold=threshold)
        return cls(float(values["threshold"]), float(values.get("min_peak", 0.0)), float(values.get("min_area", 0.0)),
                   bool(values.get("largest_only", False)))


def evidence(prob: np.ndarray, pred: np.ndarray | None = None, threshold: float = 0.5) -> tuple[float, float]:
    """(highest probability, share of the image covered by the largest connected region above the threshold)."""
    pred = prob > threshold if pred is None else pred
    if not pred.any():
        return float(prob.max(initial=0.0)), 0.0
    count, _, stats, _ = cv2.connectedComponentsWithStats(pred.astype(np.uint8), connectivity=8)
    largest = int(stats[1:count, cv2.CC_STAT_AREA].max())
    return float(prob.max()), largest / pred.size


def largest_region(pred: np.ndarray) -> np.ndarray:
    """PRED's largest 8-connected region alone (PRED itself when it has at most one)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(pred.astype(np.uint8), connectivity=8)
    if count <= 2:
        return pred
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
