"""Torch-free pre- and post-processing for the served model: decoding, the Predictor's preprocessing,
resize-back, mask statistics, overlays and the artifact's integrity check (the runtimes: engines.py).

The serving image has no torch (and no albumentations), so the steps of `cmunext.predict.Predictor`
are repeated here with numpy and OpenCV only; tests check that both give the same numbers.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .fingerprint import sha256_file
from .imageio import DataError, open_image, to_array

THRESHOLD = 0.5
EXPORT_JSON = "export.json"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"

__all__ = ["DataError", "UnsupportedImage", "TooLarge", "decode_image", "preprocess", "resize_back", "sigmoid",
           "mask_summary", "overlay", "png_bytes", "sha256_file", "verify_artifact", "demo_image"]


class UnsupportedImage(DataError):
    """The bytes are not a PNG or JPEG file."""


class TooLarge(DataError):
    """The image has more pixels than allowed (or declares so many that it is a decompression bomb)."""


def decode_image(data: bytes, max_pixels: int, name: str = "upload") -> np.ndarray:
    """PNG/JPEG bytes -> uint8 HxW (grayscale) or HxWx3 (colour); a DataError subclass says what is wrong.

    The size in the header is checked before any pixel is decoded."""
    if not data:
        raise DataError(f"{name}: empty file")
    if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
        raise UnsupportedImage(f"{name}: not a PNG or JPEG image (starts with {data[:8]!r})")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as probe:
                w, h = probe.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise TooLarge(f"{name}: refused as a decompression bomb ({exc})") from None
        except Exception as exc:  # PIL raises several types for broken headers
            raise DataError(f"{name}: cannot decode image ({type(exc).__name__}: {exc})") from None
    if w * h > max_pixels:
        raise TooLarge(f"{name}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,}")
    return to_array(open_image(io.BytesIO(data), name=name, max_pixels=max_pixels))


def resize_input(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Same as cmunext.predict.resize_input."""
    if channels == 3 and image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif channels == 1 and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def normalize(image: np.ndarray, channels: int) -> np.ndarray:
    """Same as cmunext.data.transforms.normalize_array: HxW(xC) uint8 -> CxHxW float32."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GRAY_MEAN, GRAY_STD)
    x = image.astype(np.float32) / 255.0
    if x.ndim == 2:
        x = x[..., None]
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    return normalize(resize_input(image, size, channels), channels)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function in float32."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def resize_back(prob: np.ndarray, height: int, width: int) -> np.ndarray:
    """Probabilities at the model's size -> the input's size (bilinear, as the Predictor does)."""
    return cv2.resize(np.ascontiguousarray(prob, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def mask_summary(prob: np.ndarray, mask: np.ndarray) -> dict:
    """Lesion area, connected components (8-connected, with bounding boxes) and mean probability inside."""
    m = mask.astype(bool)
    pixels = int(m.sum())
    count, _, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    boxes = [{"x": int(s[cv2.CC_STAT_LEFT]), "y": int(s[cv2.CC_STAT_TOP]),
              "width": int(s[cv2.CC_STAT_WIDTH]), "height": int(s[cv2.CC_STAT_HEIGHT]),
              "pixels": int(s[cv2.CC_STAT_AREA])} for s in stats[1:count]]
    boxes.sort(key=lambda b: -b["pixels"])
    return {
        "height": int(mask.shape[0]), "width": int(mask.shape[1]),
        "lesion_pixels": pixels, "lesion_fraction": pixels / float(m.size),
        "components": boxes,
        "mean_probability": float(prob[m].mean()) if pixels else None,
    }


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 64, 32)) -> np.ndarray:
    """Same as cmunext.predict.overlay: RGB image with the lesion tinted and its outline drawn."""
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image.copy()
    m = mask.astype(bool)
    tint = np.array(color, dtype=np.float32)
    rgb[m] = (0.7 * rgb[m] + 0.3 * tint).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(rgb.shape[:2]) / 300))
    cv2.drawContours(rgb, contours, -1, color, thickness)
    return rgb


def png_bytes(array: np.ndarray) -> bytes:
    # the settings of cmunext.data.imageio.write_png, so the same array gives the same bytes
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def session_options(settings: dict, threads: int | None = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    level = settings.get("graph_optimization_level", "ORT_ENABLE_ALL")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.intra_op_num_threads = int(threads or settings.get("intra_op_num_threads") or 0)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def verify_artifact(folder: str | Path, recorded: dict[str, str | None] | None = None) -> str:
    """sha256 of FOLDER's artifact; RuntimeError when it differs from export.json's or from any RECORDED one
    ({where it was recorded: sha256})."""
    folder = Path(folder)
    info = json.loads((folder / EXPORT_JSON).read_text())
    path = folder / info["file"]
    actual = sha256_file(path)
    for where, want in {"export.json": info.get("sha256"), **(recorded or {})}.items():
        if want and want != actual:
            raise RuntimeError(f"refusing to serve {path}: its sha256 {actual} differs from the one recorded in "
                               f"{where} ({want}); the artifact was changed or corrupted")
    return actual


def demo_image(height: int = 288, width: int = 352, seed: int = 7) -> np.ndarray:
    """A speckled, ultrasound-like grayscale frame with one dark oval lesion (for the web page's demo)."""
    rng = np.random.default_rng(seed)
    depth = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    tissue = (0.6 + 0.2 * np.sin(2 * np.pi * depth * 3)) * np.exp(-0.8 * depth) * np.ones((1, width), np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    lesion = ((yy - 0.45 * height) / (0.16 * height)) ** 2 + ((xx - 0.5 * width) / (0.2 * width)) ** 2 <= 1
    soft = cv2.GaussianBlur(lesion.astype(np.float32), (0, 0), 2)
    tissue *= 1 - 0.75 * soft
    speckle = cv2.GaussianBlur(rng.rayleigh(0.8, (height, width)).astype(np.float32), (0, 0), 0.8)
    image = tissue * speckle
    return np.clip(image / np.percentile(image, 99.5) * 220, 0, 255).astype(np.uint8)
