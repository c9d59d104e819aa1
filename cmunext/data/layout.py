"""The project's data layout, images/<stem>.<ext> beside masks/<stem>.<ext>: which stems it holds and where
each file is. Torch-free, so the steps that only read files (validate, split, preprocess, infra-validate) do not
import torch."""
from __future__ import annotations

from pathlib import Path

from cmunext_serving.imageio import IMAGE_SUFFIXES, DataError


def list_pairs(root: str | Path) -> list[str]:
    """Stems present in both root/images and root/masks (PNG, JPEG, BMP or TIFF)."""
    root = Path(root)
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DataError(f"{root}: missing folder {sub}/ (expected the project layout images/ + masks/)")
    images = {p.stem: p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem for p in (root / "masks").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    return sorted(set(images) & masks)


def find_file(folder: Path, stem: str) -> Path:
    for suffix in (".png",) + IMAGE_SUFFIXES:
        p = folder / f"{stem}{suffix}"
        if p.exists():
            return p
    raise DataError(f"{folder}: no image file for stem {stem!r}")
