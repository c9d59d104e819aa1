"""Synthetic ultrasound-like images with lesion masks, for demos and tests.

Each image: layered tissue with depth attenuation and multiplicative (Rayleigh)
speckle; one hypoechoic lesion with an irregular border, of varied size and
contrast; often a posterior acoustic shadow or enhancement below it. Deterministic
for a given seed.

Two styles, so that a recipe can be checked on data made differently from the data it was tuned on
(data.synth_style): "linear" (a linear probe's rectangular field, fine speckle, one star-shaped lesion) and
"convex" (a curved probe's fan with black outside it, coarser and stronger speckle, lower gain, lobulated
lesions made of overlapping ellipses, some nearly isoechoic).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from cmunext_serving.imageio import write_png


def _lesion_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    cy, cx = rng.uniform(0.3, 0.65) * h, rng.uniform(0.25, 0.75) * w
    radius = rng.uniform(0.06, 0.2) * min(h, w)
    aspect, angle = rng.uniform(0.5, 1.0), rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    ry = dx * np.sin(angle) + dy * np.cos(angle)
    rx = dx * np.cos(angle) - dy * np.sin(angle)
    theta = np.arctan2(ry / aspect, rx)
    r = np.hypot(rx, ry / aspect)
    border = np.ones_like(theta)
    irregularity = rng.uniform(0.03, 0.25)  # benign-smooth to spiculated
    for k in range(2, 9):
        border += irregularity / k ** 0.7 * rng.normal() * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    return r <= radius * border


def _lobulated_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Two to four overlapping ellipses around one centre: a lobulated lesion."""
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.3, 0.7) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(2, 5))):
        r = rng.uniform(0.04, 0.12) * min(h, w)
        oy, ox = rng.normal(0, r * 0.6, 2)
        a, b, t = r, r * rng.uniform(0.5, 1.0), rng.uniform(0, np.pi)
        dy, dx = yy - cy - oy, xx - cx - ox
        u, v = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
        mask |= (u / a) ** 2 + (v / b) ** 2 <= 1
    return mask


def _fan(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A convex probe's field of view: an annular sector whose apex is above the image's top centre."""
    apex = -rng.uniform(0.15, 0.4) * h
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r, angle = np.hypot(yy - apex, xx - w / 2), np.arctan2(xx - w / 2, yy - apex)
    half = rng.uniform(0.4, 0.6)
    return (np.abs(angle) <= half) & (r >= -apex + 0.02 * h) & (r <= h - apex - 0.03 * h)


def synth_sample(rng: np.random.Generator, empty: bool = False, style: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    if style == "convex":
        return _convex_sample(rng, empty)
    h, w = int(rng.integers(12, 21)) * 16, int(rng.integers(14, 25)) * 16
    depth = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    tissue = 0.55 + 0.25 * np.sin(2 * np.pi * (depth * rng.uniform(1.5, 4) + rng.uniform(0, 1)))
    tissue = tissue + 0.15 * ndimage.gaussian_filter(rng.normal(size=(h, w)).astype(np.float32), 8) * 6
    tissue *= np.exp(-rng.uniform(0.5, 1.5) * depth)  # attenuation with depth
    mask = np.zeros((h, w), bool) if empty else _lesion_mask(h, w, rng)
    if mask.any():
        contrast = rng.uniform(0.15, 0.7)  # how dark the lesion is relative to tissue
        soft = ndimage.gaussian_filter(mask.astype(np.float32), rng.uniform(0.5, 2.5))
        tissue = tissue * (1 - (1 - contrast) * soft)
        cols = np.flatnonzero(mask.any(axis=0))
        bottom = np.flatnonzero(mask.any(axis=1)).max()
        effect = rng.choice(["shadow", "enhancement", "none"], p=[0.45, 0.25, 0.3])
        if effect != "none":
            band = np.zeros((h, w), np.float32)
            band[bottom:, cols.min():cols.max() + 1] = 1
            band = ndimage.gaussian_filter(band, 4)
            tissue *= 1 - 0.6 * band if effect == "shadow" else 1 + 0.4 * band
    speckle = rng.rayleigh(scale=0.8, size=(h, w)).astype(np.float32)
    speckle = ndimage.gaussian_filter(speckle, 0.8)
    image = ndimage.gaussian_filter(tissue * speckle, 0.6)
    image = image / np.percentile(image, 99.5) * rng.uniform(180, 240)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def _convex_sample(rng: np.random.Generator, empty: bool) -> tuple[np.ndarray, np.ndarray]:
    h, w = int(rng.integers(14, 23)) * 16, int(rng.integers(16, 27)) * 16
    depth = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    tissue = 0.5 + 0.2 * ndimage.gaussian_filter(rng.normal(size=(h, w)).astype(np.float32), 12) * 8
    tissue *= np.exp(-rng.uniform(1.0, 2.0) * depth)
    fan = _fan(h, w, rng)
    mask = np.zeros((h, w), bool) if empty else _lobulated_mask(h, w, rng) & fan
    if mask.any():
        contrast = rng.uniform(0.2, 0.85)  # up to nearly isoechoic
        tissue *= 1 - (1 - contrast) * ndimage.gaussian_filter(mask.astype(np.float32), rng.uniform(1, 3))
    speckle = ndimage.gaussian_filter(rng.rayleigh(scale=1.0, size=(h, w)).astype(np.float32), 1.4)
    image = ndimage.gaussian_filter(tissue * speckle ** 1.5, 0.8) * fan
    image = image / np.percentile(image[fan], 99.5) * rng.uniform(120, 200)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def write_synthetic_dataset(out: str | Path, n: int, seed: int = 0, empty_fraction: float = 0.0,
                            progress: bool = True, style: str = "linear") -> Path:
    """Write `n` pairs into OUT/images and OUT/masks (stems `synth_00000` ...)."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n), desc="synthesising", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, i])  # each sample independent of n
        image, mask = synth_sample(rng, empty=rng.random() < empty_fraction, style=style)
        write_png(out / "images" / f"synth_{i:05d}.png", image)
        write_png(out / "masks" / f"synth_{i:05d}.png", mask)
    return out
