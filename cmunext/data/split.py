"""Deterministic, near-duplicate-grouped train/val/test split.

Near-duplicates (perceptual-hash neighbours, and exact copies) form groups, and a
group always lands in one split, so a test image never has a twin in training. The
split is a pure function of the images' content and the seed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm import tqdm

from .dataset import find_file, list_pairs
from .fingerprint import dhash, near_duplicate_groups, sha256_file
from .imageio import read_image

SPLITS = ("train", "val", "test")


def fingerprints(root: str | Path, stems: list[str], progress: bool = True) -> dict[str, dict]:
    root = Path(root)
    out = {}
    for stem in tqdm(stems, desc="fingerprinting", unit="img", disable=not progress):
        path = find_file(root / "images", stem)
        out[stem] = {"sha256": sha256_file(path), "dhash": dhash(read_image(path))}
    return out


def group_stems(prints: dict[str, dict]) -> list[list[str]]:
    stems = sorted(prints)
    labels = near_duplicate_groups([prints[s]["dhash"] for s in stems])
    by_sha: dict[str, int] = {}
    for i, s in enumerate(stems):  # exact copies join the same group even if their hashes were far apart
        first = by_sha.setdefault(prints[s]["sha256"], i)
        if labels[i] != labels[first]:
            old, new = labels[i], labels[first]
            labels = [new if label == old else label for label in labels]
    groups: dict[int, list[str]] = {}
    for s, label in zip(stems, labels):
        groups.setdefault(label, []).append(s)
    return sorted(groups.values())


def assign(groups: list[list[str]], ratios=(0.7, 0.1, 0.2), seed: int = 41) -> dict[str, list[str]]:
    """Groups in a seed-determined order; each goes to the split furthest below its target size."""
    def key(g: list[str]) -> str:
        return hashlib.sha256(f"{seed}:{g[0]}".encode()).hexdigest()

    total = sum(len(g) for g in groups)
    targets = {name: r * total for name, r in zip(SPLITS, ratios)}
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for g in sorted(groups, key=lambda g: (-len(g), key(g))):  # big groups first: they are hardest to fit
        name = max(SPLITS, key=lambda s: (targets[s] - len(out[s])) / max(targets[s], 1e-9) if targets[s] else -1)
        out[name].extend(g)
    return {name: sorted(v) for name, v in out.items()}


def make_split(root: str | Path, ratios=(0.7, 0.1, 0.2), seed: int = 41, progress: bool = True) -> dict:
    stems = list_pairs(root)
    prints = fingerprints(root, stems, progress)
    groups = group_stems(prints)
    split = assign(groups, ratios, seed)
    dup_groups = [g for g in groups if len(g) > 1]
    split["info"] = {
        "seed": seed, "ratios": list(ratios), "samples": len(stems), "groups": len(groups),
        "near_duplicate_groups": len(dup_groups), "images_in_near_duplicate_groups": sum(map(len, dup_groups)),
    }
    return split


def write_split(split: dict, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(split, indent=1, sort_keys=True) + "\n")
    return out
