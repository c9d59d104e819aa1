"""Torch datasets: over a project-layout folder (decodes every access) and over a
preprocessed shard artifact (memory-mapped uint8, the fast path for training).

Augmentation is seeded per (seed, epoch, index), so a sample's augmentation does not
depend on worker count or on where a run was resumed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cmunext_serving.imageio import DataError, read_image, read_mask

from .layout import find_file, list_pairs


def _to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if image.ndim == 2:
        image = image[..., None]
    return torch.from_numpy(image.transpose(2, 0, 1).copy()), torch.from_numpy(mask[None].astype(np.float32))


class _Augmented(Dataset):
    def __init__(self, transform, channels: int, seed: int = 0) -> None:
        self.transform, self.channels, self.seed, self.epoch = transform, channels, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _apply(self, index: int, image: np.ndarray, mask: np.ndarray):
        if self.channels == 3 and image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if self.transform is not None:
            self.transform.set_random_seed(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return _to_tensors(image, mask)


class FolderDataset(_Augmented):
    """images/<stem>.png + masks/<stem>.png, any size, decoded on every access."""

    def __init__(self, root: str | Path, stems: list[str] | None = None, transform=None,
                 channels: int = 3, seed: int = 0) -> None:
        super().__init__(transform, channels, seed)
        self.root = Path(root)
        self.stems = list(stems) if stems is not None else list_pairs(self.root)

    def __len__(self) -> int:
        return len(self.stems)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        stem = self.stems[index]
        image = read_image(find_file(self.root / "images", stem), channels=self.channels)
        mask = read_mask(find_file(self.root / "masks", stem))
        if image.shape[:2] != mask.shape:
            raise DataError(f"{stem}: image {image.shape[:2]} and mask {mask.shape} differ in size")
        return image, mask

    def __getitem__(self, index: int):
        return self._apply(index, *self.load(index))


class ShardDataset(_Augmented):
    """One split of a preprocessed artifact (see cmunext.data.preprocess), memory-mapped."""

    def __init__(self, root: str | Path, split: str, transform=None, channels: int = 3, seed: int = 0) -> None:
        super().__init__(transform, channels, seed)
        self.root = Path(root)
        manifest = json.loads((self.root / "manifest.json").read_text())
        if split not in manifest["splits"]:
            raise DataError(f"{self.root}: no split {split!r} in the manifest (has {', '.join(manifest['splits'])})")
        info = manifest["splits"][split]
        self.stems: list[str] = info["stems"]
        self._shards = [
            (np.load(self.root / s["images"], mmap_mode="r"), np.load(self.root / s["masks"], mmap_mode="r"))
            for s in info["shards"]
        ]
        self._index = [(k, i) for k, (imgs, _) in enumerate(self._shards) for i in range(len(imgs))]

    def __len__(self) -> int:
        return len(self._index)

    def has_lesion(self) -> np.ndarray:
        """Per image: whether its mask has any lesion pixel (normal images have none)."""
        return np.array([bool(masks[i].any()) for imgs, masks in self._shards for i in range(len(imgs))])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        k, i = self._index[index]
        images, masks = self._shards[k]
        return np.array(images[i]), np.array(masks[i])

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.channels == 1 and image.ndim == 3:
            image = image.mean(axis=2).round().astype(np.uint8)
        return self._apply(index, image, mask)
