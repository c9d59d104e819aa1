"""Deterministic, near-duplicate-grouped, class-stratified train/val/test split, frozen once made.

Near-duplicates (perceptual-hash neighbours, and exact copies) form groups, and a
group always lands in one split, so a test image never has a twin in training. The
split is a pure function of the images' content, their classes and the seed. Once written
(`cmunext data split DIR` makes DIR/splits.json, versioned with the data), an image's split
never changes: as the data grows only the new images are assigned.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tqdm import tqdm

from cmunext_serving.fingerprint import dhash, near_duplicate_groups, sha256_file
from cmunext_serving.imageio import DataError, read_image

from .layout import find_file, list_pairs

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


def assign(groups: list[list[str]], ratios=(0.7, 0.1, 0.2), seed: int = 41, classes: dict[str, str] | None = None,
           start: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Groups in a seed-determined order; each goes to the split furthest below its target size, counted
    within the group's class (its members' most common class) when CLASSES are known: stratified. START holds
    stems already assigned (they count toward the targets and stay where they are)."""
    def key(g: list[str]) -> str:
        return hashlib.sha256(f"{seed}:{g[0]}".encode()).hexdigest()

    classes = classes or {}

    def group_class(g: list[str]) -> str:
        names = [classes.get(s, "") for s in g]
        return max(sorted(set(names)), key=names.count)

    out: dict[str, list[str]] = {name: list((start or {}).get(name, [])) for name in SPLITS}
    size: dict[str, int] = {}
    for stem in [s for g in groups for s in g] + [s for v in out.values() for s in v]:
        size[classes.get(stem, "")] = size.get(classes.get(stem, ""), 0) + 1
    have = {(name, c): 0 for name in SPLITS for c in size}
    for name, members in out.items():
        for stem in members:
            have[(name, classes.get(stem, ""))] += 1
    targets = {(name, c): r * n for name, r in zip(SPLITS, ratios) for c, n in size.items()}
    for g in sorted(groups, key=lambda g: (-len(g), key(g))):  # big groups first: they are hardest to fit
        c = group_class(g)
        name = max(SPLITS, key=lambda s: (targets[(s, c)] - have[(s, c)]) / max(targets[(s, c)], 1e-9)
                   if targets[(s, c)] else -1)
        out[name].extend(g)
        have[(name, c)] += len(g)
    return {name: sorted(v) for name, v in out.items()}


def make_split(root: str | Path, ratios=(0.7, 0.1, 0.2), seed: int = 41, progress: bool = True,
               existing: dict | None = None, classes: dict[str, str] | None = None) -> dict:
    """The split of ROOT's pairs. With EXISTING ({train, val, test} lists of stems: a frozen split) every stem it
    names keeps its split and only new stems are assigned: a new near-duplicate of an assigned image joins that
    image's split (test first, so no new image ever brings a test image's twin into training), the rest are
    spread to keep the ratios, stratified by class when CLASSES are known."""
    stems = list_pairs(root)
    prints = fingerprints(root, stems, progress)
    groups = group_stems(prints)
    present = set(stems)
    frozen = {s: name for name in SPLITS for s in (existing or {}).get(name, []) if s in present}
    start: dict[str, list[str]] = {name: [] for name in SPLITS}
    fresh = []
    for g in groups:
        placed = [frozen[s] for s in g if s in frozen]
        if not placed:
            fresh.append(g)
            continue
        target = next(name for name in ("test", "val", "train") if name in placed)
        for s in g:
            start[frozen.get(s, target)].append(s)
    split = assign(fresh, ratios, seed, classes, start)
    dup_groups = [g for g in groups if len(g) > 1]
    named = {s for name in SPLITS for s in (existing or {}).get(name, [])}
    split["info"] = {
        "seed": seed, "ratios": list(ratios), "samples": len(stems), "groups": len(groups),
        "near_duplicate_groups": len(dup_groups), "images_in_near_duplicate_groups": sum(map(len, dup_groups)),
        "kept": len(frozen), "assigned": len(stems) - len(frozen), "gone": sorted(named - present),
        "stratified": bool(classes),
    }
    return split


def read_split_file(path: str | Path, stems: list[str] | None = None, fold: int = 0) -> dict[str, list[str]]:
    """A split from a file: {"train": [...], "val": [...], "test": [...]} (this project's, or any JSON with those
    lists), or nnU-Net's splits_final.json (a list of folds of {"train", "val"}: FOLD is used, and every other
    stem of STEMS is test, as nnU-Net keeps its test images apart)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"split file {path} not found (data.split_file)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"split file {path} is not JSON: {exc}") from None
    if isinstance(data, list):  # nnU-Net
        if not (0 <= fold < len(data)) or not all(isinstance(f, dict) and {"train", "val"} <= set(f) for f in data):
            raise DataError(f"split file {path}: nnU-Net format needs folds of {{train, val}}; fold {fold} of {len(data)}")
        chosen = {"train": list(data[fold]["train"]), "val": list(data[fold]["val"])}
        used = set(chosen["train"]) | set(chosen["val"])
        chosen["test"] = [s for s in (stems or []) if s not in used]
        return chosen
    if not isinstance(data, dict) or not any(k in data for k in SPLITS):
        raise DataError(f"split file {path}: expected lists 'train', 'val', 'test' of stems (or nnU-Net's folds)")
    bad = [k for k in SPLITS if not isinstance(data.get(k, []), list)]
    if bad:
        raise DataError(f"split file {path}: {', '.join(bad)} must be lists of stems")
    seen: dict[str, str] = {}
    for name in SPLITS:
        for stem in data.get(name, []):
            if stem in seen:
                raise DataError(f"split file {path}: {stem!r} is in both {seen[stem]} and {name}")
            seen[stem] = name
    return {name: list(data.get(name, [])) for name in SPLITS}


def write_split(split: dict, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(split, indent=1, sort_keys=True) + "\n")
    return out
