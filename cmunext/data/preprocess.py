"""Resize a split dataset into a compact, memory-mappable artifact for fast training.

Layout: OUT/manifest.json plus `<split>-<k>.images.npy` (N x S x S x C uint8) and
`<split>-<k>.masks.npy` (N x S x S uint8 {0,1}) shards. Images stream through one
shard at a time, so memory is bounded by the shard size, not the dataset. No
timestamps or absolute paths are written: the same data and config give the same bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cmunext_serving.imageio import read_image, read_mask

from .layout import find_file

SHARD_SIZE = 256
FORMAT_VERSION = 1


def _resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return image, mask


def _write_shard(out: Path, name: str, images: list, masks: list) -> dict:
    np.save(out / f"{name}.images.npy", np.stack(images))
    np.save(out / f"{name}.masks.npy", np.stack(masks))
    return {"images": f"{name}.images.npy", "masks": f"{name}.masks.npy", "count": len(images)}


def preprocess(root: str | Path, split: dict, out: str | Path, size: int, channels: int = 3,
               data_revision: str = "workspace", shard_size: int = SHARD_SIZE, progress: bool = True) -> dict:
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT_VERSION, "data_revision": data_revision, "image_size": size,
                "channels": channels, "splits": {}}
    for name in ("train", "val", "test"):
        stems = split.get(name, [])
        shards, images, masks = [], [], []
        # running sums for per-split statistics (float64: exact enough, order fixed)
        pix_sum = pix_sq = fg_sum = 0.0
        empty = 0
        for stem in tqdm(stems, desc=f"preprocessing {name}", unit="img", disable=not progress):
            image = read_image(find_file(root / "images", stem), channels=channels)
            mask = read_mask(find_file(root / "masks", stem))
            image, mask = _resize_pair(image, mask, size)
            if image.ndim == 2:
                image = image[..., None]
            images.append(image)
            masks.append(mask)
            f = image.astype(np.float64) / 255
            pix_sum += f.mean()
            pix_sq += (f ** 2).mean()
            fg = float(mask.mean())
            fg_sum += fg
            empty += fg == 0
            if len(images) == shard_size:
                shards.append(_write_shard(out, f"{name}-{len(shards):05d}", images, masks))
                images, masks = [], []
        if images:
            shards.append(_write_shard(out, f"{name}-{len(shards):05d}", images, masks))
        n = max(len(stems), 1)
        mean = pix_sum / n
        manifest["splits"][name] = {
            "stems": list(stems), "shards": shards,
            "stats": {"count": len(stems), "intensity_mean": round(mean, 6),
                      "intensity_std": round(max(pix_sq / n - mean ** 2, 0) ** 0.5, 6),
                      "foreground_ratio_mean": round(fg_sum / n, 6), "empty_masks": int(empty)},
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest
