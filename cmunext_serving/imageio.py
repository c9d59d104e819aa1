"""Safe image decoding: every failure becomes a DataError that names the file.

Decompression bombs are refused before decoding (PIL's pixel limit is raised to an
error), and truncated files are never silently padded.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from .errors import CmunextError

MAX_PIXELS = 50_000_000  # ~7000x7000; far above any ultrasound frame
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DataError(CmunextError, ValueError):
    """A data file or folder is unusable; the message names it and says why."""


def open_image(source, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image from a path or file object."""
    label = name or str(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
            w, h = img.size
            if w * h > max_pixels:
                raise DataError(f"{label}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,}")
            img.load()
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{label}: refused as a decompression bomb ({exc})") from None
        except FileNotFoundError:
            raise DataError(f"{label}: file not found") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise DataError(f"{label}: cannot decode image ({type(exc).__name__}: {exc})") from None
    return img


def to_array(img: Image.Image, channels: int | None = None) -> np.ndarray:
    """uint8 array, HxW for grayscale or HxWx3 for colour; `channels` forces 1 or 3."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        a = (a / max(a.max(), 1) * 255).round().astype(np.uint8)
        img = Image.fromarray(a, mode="L")
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB") if img.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr", "PA") else img.convert("L")
    if channels == 1 and img.mode != "L":
        img = img.convert("L")
    elif channels == 3 and img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_image(path: str | Path, channels: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    return to_array(open_image(path, max_pixels=max_pixels), channels)


def read_mask(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A binary mask as uint8 {0, 1}; any non-zero pixel counts as lesion."""
    return (read_image(path, channels=1, max_pixels=max_pixels) > 0).astype(np.uint8)


def write_png(path: str | Path, array: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fixed compression settings so the same array gives the same bytes
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=6)
