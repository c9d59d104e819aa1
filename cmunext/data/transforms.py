"""Albumentations pipelines. Normalisation happens once (the reference divides by 255 twice)."""
from __future__ import annotations

import albumentations as A

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)


def _normalize(channels: int) -> A.Normalize:
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GRAY_MEAN, GRAY_STD)
    return A.Normalize(mean=mean, std=std, max_pixel_value=255.0)


def _reference_ops() -> list:
    """The reference's rotate-90 and flip, plus mild ultrasound-plausible changes: gain (brightness/contrast),
    gamma, speckle-like noise and slight blur. No elastic warps: lesion border shape is diagnostic."""
    return [A.RandomRotate90(p=1.0), A.HorizontalFlip(p=0.5), *_gain_and_speckle()]


def _ultrasound_ops() -> list:
    """Only what a scanner produces: the probe stays at the top and shadows fall downward, so no rotation beyond a
    few degrees and no vertical flip; small shifts and zoom (depth and field-of-view settings), a mirrored probe."""
    return [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.7),
            A.HorizontalFlip(p=0.5), *_gain_and_speckle()]


def _gain_and_speckle() -> list:
    return [A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
            A.RandomGamma(gamma_limit=(80, 120), p=0.3),
            A.MultiplicativeNoise(multiplier=(0.9, 1.1), per_channel=False, p=0.2),
            A.GaussianBlur(blur_limit=(3, 3), p=0.1)]


def train_transform(size: int, channels: int = 3, augment: bool = True, policy: str = "reference") -> A.Compose:
    """Resize, the augmentation POLICY (data.augment_policy: "reference" or "ultrasound"), normalise."""
    ops: list = [A.Resize(size, size)]
    if augment:
        ops += _ultrasound_ops() if policy == "ultrasound" else _reference_ops()
    return A.Compose(ops + [_normalize(channels)])


def eval_transform(size: int, channels: int = 3) -> A.Compose:
    return A.Compose([A.Resize(size, size), _normalize(channels)])

