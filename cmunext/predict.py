"""Masks and overlays for images of any size, from a trained weights file."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from cmunext_serving.imageio import read_image, write_png

# the served path's own (torch-free) steps, so the two cannot drift apart
from cmunext_serving.runtime import overlay, preprocess  # noqa: F401  (overlay is part of this module's API)

from .engine.weights import load_weights
from .models.tta import served_network


class Predictor:
    """Eager PyTorch inference: resize to the trained size, normalise, sigmoid, resize back."""

    def __init__(self, weights: str | Path, threshold: float = 0.5, device: str = "cpu", tta: str = "none") -> None:
        self.model, self.meta = load_weights(weights)  # the network itself (its parameters and MACs)
        self.model.to(device)
        self.network = served_network(self.model, tta)  # what runs: the network in its serving form
        self.device, self.threshold = device, threshold
        self.size, self.channels = self.meta["image_size"], self.meta["in_channels"]

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        return preprocess(image, self.size, self.channels)

    @torch.inference_mode()
    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Lesion probability at the input's own height and width."""
        x = torch.from_numpy(self.preprocess(image))[None].to(self.device)
        prob = torch.sigmoid(self.network(x))[0, 0].float().cpu().numpy()
        h, w = image.shape[:2]
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)

    def mask(self, image: np.ndarray) -> np.ndarray:
        return (self.probabilities(image) > self.threshold).astype(np.uint8)


def predict_files(paths: list[str | Path], weights: str | Path, out: str | Path, threshold: float = 0.5) -> list[Path]:
    """Write OUT/<stem>_mask.png (0/255, original size) and OUT/<stem>_overlay.png for each image."""
    predictor = Predictor(weights, threshold)
    out = Path(out)
    written = []
    for path in paths:
        image = read_image(path)
        mask = predictor.mask(image)
        stem = Path(path).stem
        write_png(out / f"{stem}_mask.png", mask * 255)
        write_png(out / f"{stem}_overlay.png", overlay(image, mask))
        written.append(out / f"{stem}_mask.png")
    return written
