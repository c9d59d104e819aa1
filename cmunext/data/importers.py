"""Import a segmentation dataset into the project layout.

Accepted sources (detected from the folder's shape, never from its name):

- ``busi``: the original BUSI release, class folders ``benign/ malignant/ normal/`` holding
  ``benign (1).png`` with ``benign (1)_mask.png`` and possibly ``benign (1)_mask_1.png`` ...
  (several masks of one image are merged by union; ``normal`` images are kept only on request,
  with an empty mask when they have none);
- ``cmunext``: the upstream CMUNeXt layout ``images/`` + ``masks/0/``;
- ``project``: ``images/`` + ``masks/``.

Output: ``out/images/<stem>.png``, ``out/masks/<stem>.png`` (0/255, uint8, one channel) and
``out/mapping.csv`` (stem, original image, original mask(s), class). Stems are made safe:
lowercase, ``[a-z0-9_-]`` only, ``name (12)`` becomes ``name_0012``. The output is built in a
temporary sibling folder and moved into place only when complete, so a failed import leaves
nothing behind; importing the same source again into the same folder is a no-op.
"""
from __future__ import annotations

import csv
import filecmp
import io
import os
import re
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cmunext_serving.imageio import (
    IMAGE_SUFFIXES,
    DataError,
    open_image,
    read_mask,
    to_array,
    write_png,
)

BUSI_CLASSES = ("benign", "malignant", "normal")
MAPPING_FIELDS = ("stem", "image", "masks", "class")
_MASK_RE = re.compile(r"^(?P<base>.+?)_mask(?:_(?P<k>\d+))?$", re.IGNORECASE)
_NUMBERED_RE = re.compile(r"^(?P<name>.*?)\s*\((?P<num>\d+)\)$")


@dataclass
class _Pair:
    stem: str
    image: Path
    masks: list[Path]
    cls: str = ""


@dataclass
class _Plan:
    layout: str
    pairs: list[_Pair] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


def safe_stem(name: str) -> str:
    """`Benign (12)` -> `benign_0012`; anything else: lowercase, runs of other characters -> `_`."""
    m = _NUMBERED_RE.match(name.strip())
    if m:
        prefix = safe_stem(m["name"]) if m["name"].strip() else ""
        return f"{prefix}_{int(m['num']):04d}" if prefix else f"{int(m['num']):04d}"
    stem = re.sub(r"[^a-z0-9_-]+", "_", name.strip().lower()).strip("_-")
    return stem


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except PermissionError:
        raise DataError(f"{folder}: cannot read the folder (permission denied)") from None
    except OSError as exc:
        raise DataError(f"{folder}: cannot read the folder ({exc.strerror or exc})") from None


def _image_files(folder: Path, skipped: list[dict], src: Path) -> dict[str, Path]:
    """Image files in a folder by stem; hidden files ignored, other files recorded as skipped."""
    files: dict[str, Path] = {}
    for p in _listdir(folder):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append({"file": _rel(p, src), "reason": "not an image file"})
            continue
        _check_file(p, src)
        if p.stem in files:
            raise DataError(f"{folder}: two files with stem {p.stem!r} ({files[p.stem].name}, {p.name}); "
                            "keep one")
        files[p.stem] = p
    return files


def _check_file(path: Path, src: Path) -> None:
    """Refuse what the validator refuses too: a symlink out of the source folder (it would import a file from
    elsewhere) and anything but a regular file (opening a FIFO blocks forever)."""
    try:
        real = path.resolve(strict=True)
        st = real.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: broken symlink (its target does not exist)") from None
    except (OSError, RuntimeError) as exc:  # symlink loops, permissions
        raise DataError(f"{path}: cannot resolve path ({exc})") from None
    if not real.is_relative_to(src.resolve()):
        raise DataError(f"{path}: symlink leads outside the source folder (to {real}); refused")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: not a regular file (a FIFO, socket or device); refused")


def _rel(path: Path, src: Path) -> str:
    try:
        return path.relative_to(src).as_posix()
    except ValueError:
        return str(path)


def _subdirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in _listdir(folder) if p.is_dir() and not p.name.startswith(".")}


def detect_layout(src: str | Path) -> str:
    """'busi', 'cmunext' or 'project'; DataError naming the folder when it is none or several."""
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: source folder not found")
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    dirs = _subdirs(src)
    classes = sorted(set(dirs) & set(BUSI_CLASSES))
    has_images = "images" in dirs
    if classes and has_images:
        raise DataError(f"{src}: mixed layouts: BUSI class folders ({', '.join(c + '/' for c in classes)}) "
                        "beside images/; import one layout at a time")
    if classes:
        return "busi"
    if has_images:
        if "masks" not in dirs:
            raise DataError(f"{src}: has images/ but no masks/ folder")
        masks = dirs["masks"]
        mask_dirs = sorted(_subdirs(masks))
        mask_files = [p for p in _listdir(masks) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if mask_dirs and mask_files:
            raise DataError(f"{masks}: mixed layouts: mask files beside subfolders ({', '.join(d + '/' for d in mask_dirs)})")
        if mask_dirs:
            if mask_dirs != ["0"]:
                raise DataError(f"{masks}: unknown layout: subfolders {', '.join(d + '/' for d in mask_dirs)}; "
                                "only masks/0/ (the single-class CMUNeXt layout) is supported")
            return "cmunext"
        return "project"
    hint = ""
    if len(dirs) == 1:
        hint = f"; did you mean {src / next(iter(dirs.values())).name}?"
    found = ", ".join(sorted(d + "/" for d in dirs)) or "no folders"
    raise DataError(f"{src}: unknown layout (found {found}); expected BUSI class folders benign/ malignant/ "
                    f"normal/, or images/ + masks/0/, or images/ + masks/{hint}")


def _known_classes(src: Path) -> dict[str, str]:
    """stem -> class from a mapping.csv in the source (as this importer writes), if any."""
    path = src / "mapping.csv"
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}
    return {r["stem"]: r["class"] for r in rows if r.get("stem") and r.get("class")}


def _plan_busi(src: Path, include_normal: bool) -> _Plan:
    plan = _Plan("busi")
    for cls, folder in sorted(_subdirs(src).items()):
        if cls not in BUSI_CLASSES:
            continue
        files = _image_files(folder, plan.skipped, src)
        masks: dict[str, list[Path]] = {}
        images: dict[str, Path] = {}
        for stem, p in files.items():
            m = _MASK_RE.match(stem)
            if m:
                masks.setdefault(m["base"], []).append(p)
            else:
                images[stem] = p
        orphans = sorted(p.name for base, ps in masks.items() if base not in images for p in ps)
        if orphans:
            raise DataError(f"{folder}: {len(orphans)} mask(s) without an image: {', '.join(orphans[:10])}"
                            + (" ..." if len(orphans) > 10 else ""))
        for stem, image in images.items():
            ms = sorted(masks.get(stem, []), key=lambda p: (len(p.stem), p.stem))  # _mask before _mask_1
            if cls == "normal" and not include_normal:
                plan.skipped.append({"file": _rel(image, src), "reason": "normal class (pass include_normal)"})
            elif not ms and cls != "normal":
                plan.skipped.append({"file": _rel(image, src), "reason": "no mask"})
            else:
                plan.pairs.append(_Pair(safe_stem(stem), image, ms, cls))
    return plan


def _plan_folders(src: Path, layout: str) -> _Plan:
    plan = _Plan(layout)
    mask_dir = src / "masks" / "0" if layout == "cmunext" else src / "masks"
    images = _image_files(src / "images", plan.skipped, src)
    masks = _image_files(mask_dir, plan.skipped, src)
    orphans = sorted(p.name for stem, p in masks.items() if stem not in images)
    if orphans:
        raise DataError(f"{mask_dir}: {len(orphans)} mask(s) without an image: {', '.join(orphans[:10])}"
                        + (" ..." if len(orphans) > 10 else ""))
    classes = _known_classes(src)
    for stem, image in images.items():
        if stem not in masks:
            plan.skipped.append({"file": _rel(image, src), "reason": "no mask"})
            continue
        safe = safe_stem(stem)
        cls = classes.get(stem) or next((c for c in BUSI_CLASSES if safe.split("_")[0] == c), "")
        plan.pairs.append(_Pair(safe, image, [masks[stem]], cls))
    return plan


def _check_stems(pairs: list[_Pair], src: Path) -> None:
    seen: dict[str, _Pair] = {}
    for pair in pairs:
        if not pair.stem:
            raise DataError(f"{pair.image}: no usable characters in the file name for a stem")
        if pair.stem in seen:
            raise DataError(f"{seen[pair.stem].image} and {pair.image} both become stem {pair.stem!r}; rename one")
        seen[pair.stem] = pair


def _write_pair(pair: _Pair, out: Path) -> bool:
    """Write one pair; True when a file was converted (format or colour) rather than copied."""
    img = open_image(pair.image)
    image = to_array(img)
    if image.ndim == 3 and (image == image[..., :1]).all():
        image = image[..., 0]  # grey stored as RGB: one channel, lossless
    if pair.masks:
        mask = np.zeros(image.shape[:2], np.uint8)
        for m in pair.masks:
            part = read_mask(m)
            if part.shape != image.shape[:2]:
                raise DataError(f"{m}: mask size {part.shape[1]}x{part.shape[0]} differs from image "
                                f"{pair.image} size {image.shape[1]}x{image.shape[0]}")
            mask |= part
    else:  # a normal image without a mask file: no lesion
        mask = np.zeros(image.shape[:2], np.uint8)
    mask = mask * np.uint8(255)

    converted = False
    copy_image = img.format == "PNG" and img.mode in ("L", "RGB") and image.ndim == (2 if img.mode == "L" else 3)
    if copy_image:
        shutil.copyfile(pair.image, out / "images" / f"{pair.stem}.png")
    else:
        write_png(out / "images" / f"{pair.stem}.png", image)
        converted = True
    src_mask = pair.masks[0] if len(pair.masks) == 1 else None
    if src_mask is not None and src_mask.suffix.lower() == ".png" and _is_clean_png_mask(src_mask, mask):
        shutil.copyfile(src_mask, out / "masks" / f"{pair.stem}.png")
    else:
        write_png(out / "masks" / f"{pair.stem}.png", mask)
    return converted


def _is_clean_png_mask(path: Path, mask: np.ndarray) -> bool:
    img = open_image(path)
    return img.format == "PNG" and img.mode == "L" and np.array_equal(np.asarray(img), mask)


def _write_mapping(pairs: list[_Pair], src: Path, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(MAPPING_FIELDS)
    for p in sorted(pairs, key=lambda p: p.stem):
        w.writerow([p.stem, _rel(p.image, src), ";".join(_rel(m, src) for m in p.masks), p.cls])
    path.write_text(buf.getvalue())


def _tree(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def _same_tree(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two folders (empty when identical)."""
    ta, tb = _tree(a), _tree(b)
    diff = sorted(set(ta) ^ set(tb))
    diff += sorted(k for k in set(ta) & set(tb) if not filecmp.cmp(ta[k], tb[k], shallow=False))
    return diff


def import_dataset(src: str | Path, out: str | Path, *, include_normal: bool = False,
                   progress: bool = True) -> dict:
    """Convert SRC (BUSI release, CMUNeXt layout or project layout) into OUT in the project layout.

    Returns a summary: layout, source, out, pairs, classes (count per class), converted (images
    re-encoded to PNG or to one channel), merged_masks (images whose several masks were merged),
    skipped (list of {file, reason}), unchanged (OUT already held exactly this import).
    Raises DataError naming the path for unreadable or inconsistent sources and for an OUT that
    already holds different data.
    """
    src, out = Path(src).absolute(), Path(out).absolute()
    layout = detect_layout(src)
    if out == src or src in out.parents:
        raise DataError(f"{out}: the output folder must not be the source folder or inside it ({src})")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    plan = _plan_busi(src, include_normal) if layout == "busi" else _plan_folders(src, layout)
    if not plan.pairs:
        raise DataError(f"{src}: no image/mask pairs found ({layout} layout, {len(plan.skipped)} files skipped)")
    _check_stems(plan.pairs, src)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.import-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        # decoding dominates and PIL releases the GIL while decoding: threads are enough
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = pool.map(lambda pair: _write_pair(pair, tmp), plan.pairs)
            converted = sum(tqdm(results, total=len(plan.pairs), desc="importing", unit="img",
                                 disable=not progress))
        _write_mapping(plan.pairs, src, tmp / "mapping.csv")

        unchanged = False
        if out.exists() and any(out.iterdir()):
            diff = _same_tree(tmp, out)
            if diff:
                raise DataError(f"{out}: already holds different data ({len(diff)} file(s) differ, e.g. "
                                f"{', '.join(diff[:5])}); choose an empty output folder or remove it")
            unchanged = True
        else:
            if out.exists():
                out.rmdir()
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    classes: dict[str, int] = {}
    for p in plan.pairs:
        classes[p.cls or "unknown"] = classes.get(p.cls or "unknown", 0) + 1
    return {
        "layout": layout, "source": str(src), "out": str(out), "pairs": len(plan.pairs),
        "classes": dict(sorted(classes.items())), "converted": converted,
        "merged_masks": sum(len(p.masks) > 1 for p in plan.pairs),
        "skipped": plan.skipped, "unchanged": unchanged,
    }
