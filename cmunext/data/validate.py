"""Dataset validation, the pipeline's first step: one row of facts per sample, checked
by a great-expectations suite, reported as summary.json, samples.csv and Data Docs.

Two halves, kept apart on purpose:

* scanning (`scan_dataset`) turns every file into plain facts (does it decode, its
  size, channels, mask values, hashes). A corrupt or hostile file never raises here:
  it becomes a row whose `error` names the file and the reason. Files are opened
  once, checked on the open descriptor, decoded one at a time and dropped.
* checking (`validate_dataset`) runs the expectations over that table with GX and
  maps every failure back to the files at fault (via the `stem` index column).

great-expectations takes seconds to import, so it is imported inside the function
that needs it, never when this module is imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import pandas as pd

from cmunext_serving.fingerprint import dhash, near_duplicate_groups
from cmunext_serving.imageio import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    DataError,
    open_image,
    to_array,
)

from ..config import VALIDATION_CHECKS
from . import duplicates as dup
from .docs_offline import make_offline

# Ultrasound frames are a few MB at most; anything far larger is refused unread, so a
# huge (or sparse) file cannot stall hashing.
MAX_FILE_BYTES = 512 << 20
# Only these formats are handed to PIL. Sniffing the signature first keeps PIL from
# guessing among all its plugins (some of them, like EPS, call external programs).
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP",
              b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
SITE_NAME = "cmunext_validation"
SUITE_NAME = "cmunext_dataset"

# column -> pandas dtype; nullable dtypes so "not measured" stays distinct from 0/False
COLUMNS = {
    "stem": "str", "image_file": "str", "mask_file": "str",
    "has_image": "boolean", "has_mask": "boolean", "one_file_per_stem": "boolean",
    "image_decodes": "boolean", "mask_decodes": "boolean", "error": "str",
    "width": "Int64", "height": "Int64", "mask_width": "Int64", "mask_height": "Int64",
    "sizes_match": "boolean", "channels": "Int64", "mask_values": "str", "mask_binary": "boolean",
    "foreground_ratio": "float64", "sha256": "str", "phash": "str",
}


# --------------------------------------------------------------------------- scanning

def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DataError(f"{root / sub}: missing folder {sub}/ (expected the project layout images/ + masks/)")


def _printable(name: str) -> str:
    """File names that are not valid UTF-8 or hold control characters (both possible on Linux)
    would break the CSV, JSON and HTML reports: show them escaped (the table is for reporting)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _list_files(folder: Path) -> dict[str, list[Path]]:
    """stem -> candidate files, the one the training loader would pick first (.png first)."""
    order = {s: i for i, s in enumerate((".png",) + IMAGE_SUFFIXES)}
    found: dict[str, list[Path]] = defaultdict(list)
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found[path.stem].append(path)
    return {stem: sorted(paths, key=lambda p: (order[p.suffix.lower()], p.name)) for stem, paths in found.items()}


@contextmanager
def _open_checked(path: Path, rel: str, root_real: Path) -> Iterator[BinaryIO]:
    """Open a dataset file for reading, refusing anything that is not a plain, bounded
    file inside the dataset. Checks run on the opened descriptor, so a file swapped
    between check and read cannot slip through, and a FIFO cannot block the open."""
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise DataError(f"{rel}: broken symlink (its target does not exist)") from None
    except (OSError, RuntimeError) as exc:  # symlink loops: RuntimeError on 3.11, OSError later
        raise DataError(f"{rel}: cannot resolve path ({exc})") from None
    if not real.is_relative_to(root_real):
        raise DataError(f"{rel}: symlink leads outside the dataset (to {real}); refused")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise DataError(f"{rel}: cannot open ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{rel}: not a regular file")
        if st.st_size == 0:
            raise DataError(f"{rel}: empty file (0 bytes)")
        if st.st_size > MAX_FILE_BYTES:
            raise DataError(f"{rel}: {st.st_size:,} bytes exceeds the limit of {MAX_FILE_BYTES:,}")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        head = f.read(8)
        if not any(head.startswith(sig) for sig in SIGNATURES):
            raise DataError(f"{rel}: not a PNG, JPEG, BMP or TIFF file (starts with {head[:8]!r})")
        f.seek(0)
        yield f


def _channels(img) -> int:
    # a palette image decodes to RGB; other modes have one band per channel (RGBA: 4)
    return 3 if img.mode == "P" else len(img.getbands())


def _inspect_image(path: Path, rel: str, root_real: Path) -> dict:
    with _open_checked(path, rel, root_real) as f:
        sha = hashlib.file_digest(f, "sha256").hexdigest()
        f.seek(0)
        img = open_image(f, name=rel, max_pixels=MAX_PIXELS)
        width, height = img.size
        facts = {"width": width, "height": height, "channels": _channels(img), "sha256": sha,
                 "phash": f"{dhash(to_array(img)):016x}"}
        img.close()
    return facts


def _inspect_mask(path: Path, rel: str, root_real: Path) -> dict:
    with _open_checked(path, rel, root_real) as f:
        img = open_image(f, name=rel, max_pixels=MAX_PIXELS)
        pixels = to_array(img, channels=1)
        img.close()
    counts = np.bincount(pixels.ravel(), minlength=256)
    values = np.flatnonzero(counts)
    # binary: at most two levels, and if two, one of them is background (0)
    binary = len(values) == 1 or (len(values) == 2 and values[0] == 0)
    return {"mask_width": pixels.shape[1], "mask_height": pixels.shape[0],
            "mask_values": ",".join(str(v) for v in values), "mask_binary": bool(binary),
            "foreground_ratio": float(1 - counts[0] / pixels.size)}


def _inspect(kind: str, paths: list[Path], root: Path, root_real: Path, row: dict, errors: list[str]) -> None:
    """Fill the row's facts for one side (image or mask); failures become error text."""
    if not paths:
        return
    rel = _printable(paths[0].relative_to(root).as_posix())
    row[f"{kind}_file"] = rel
    if len(paths) > 1:
        row["one_file_per_stem"] = False
        errors.append(f"{rel}: stem also used by {', '.join(_printable(p.name) for p in paths[1:])}")
    inspect = _inspect_image if kind == "image" else _inspect_mask
    try:
        row.update(inspect(paths[0], rel, root_real))
        row[f"{kind}_decodes"] = True
    except DataError as exc:
        row[f"{kind}_decodes"] = False
        errors.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - a hostile file must become a failed row, never a crash
        row[f"{kind}_decodes"] = False
        errors.append(f"{rel}: unexpected failure ({type(exc).__name__}: {exc})")


def _sample_row(stem: str, images: list[Path], masks: list[Path], root: Path, root_real: Path) -> dict:
    row: dict = {"stem": _printable(stem), "has_image": bool(images), "has_mask": bool(masks),
                 "one_file_per_stem": True}
    errors: list[str] = []
    _inspect("image", images, root, root_real, row, errors)
    _inspect("mask", masks, root, root_real, row, errors)
    if not images:
        errors.append(f"{row['mask_file']}: mask without an image")
    if not masks:
        errors.append(f"{row['image_file']}: image without a mask")
    if row.get("image_decodes") and row.get("mask_decodes"):
        row["sizes_match"] = (row["width"], row["height"]) == (row["mask_width"], row["mask_height"])
        if not row["sizes_match"]:
            errors.append(f"{row['image_file']} is {row['width']}x{row['height']} but "
                          f"{row['mask_file']} is {row['mask_width']}x{row['mask_height']}")
    row["error"] = "; ".join(errors) or None
    return row


def scan_dataset(root: str | Path, progress: bool = False) -> pd.DataFrame:
    """One row per stem found in root/images or root/masks (the union, so orphans show)."""
    from tqdm import tqdm

    root = Path(root)
    _check_root(root)
    root_real = root.resolve()
    images, masks = _list_files(root / "images"), _list_files(root / "masks")
    stems = sorted(set(images) | set(masks))
    rows = [_sample_row(stem, images.get(stem, []), masks.get(stem, []), root, root_real)
            for stem in tqdm(stems, desc="validating", unit="sample", disable=not progress)]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype(COLUMNS)


# ------------------------------------------------------------------------ expectations

def _expectations(min_samples: int, min_side: int, max_side: int, allow_empty_masks: bool,
                  max_foreground: float) -> list:
    """The suite. `meta`: `name` (the key of data.severity), `blame` (which file of a failing row is at
    fault) and `fix` (what to do about it)."""
    import great_expectations as gx

    E = gx.expectations

    def meta(name: str, blame: str, fix: str) -> dict:
        return {"name": name, "blame": blame, "fix": fix}

    def ok(name: str, column: str, blame: str, what: str, fix: str):
        return E.ExpectColumnValuesToBeInSet(column=column, value_set=[True], description=what,
                                             meta=meta(name, blame, fix))

    def within(name: str, column: str, lo, hi, blame: str, what: str, fix: str, strict_min: bool = False):
        return E.ExpectColumnValuesToBeBetween(column=column, min_value=lo, max_value=hi, strict_min=strict_min,
                                               description=what, meta=meta(name, blame, fix))

    def measured(name: str, column: str, blame: str, what: str, fix: str):
        # range and set expectations skip nulls: this keeps "not measured" from passing silently
        return E.ExpectColumnValuesToNotBeNull(column=column, description=what, meta=meta(name, blame, fix))

    replace = "replace or remove the files named"
    suite = [
        E.ExpectTableRowCountToBeBetween(min_value=min_samples, description=f"at least {min_samples} samples",
                                         meta=meta("min_samples", "none", "add data, or lower data.min_samples")),
        ok("has_mask", "has_mask", "image", "every image has a mask", "add masks/<stem>.png or remove the image"),
        ok("has_image", "has_image", "mask", "every mask has an image", "add images/<stem>.png or remove the mask"),
        ok("one_file_per_stem", "one_file_per_stem", "pair", "one file per stem in images/ and in masks/",
           "keep one file per stem (e.g. not both x.png and x.jpg)"),
        ok("image_decodes", "image_decodes", "image", "image files decode", replace),
        ok("mask_decodes", "mask_decodes", "mask", "mask files decode", replace),
        measured("image_measured", "width", "image", "every sample has a decodable image", replace),
        measured("mask_measured", "foreground_ratio", "mask", "every sample has a decodable mask", replace),
        ok("sizes_match", "sizes_match", "pair", "image and mask sizes agree", "re-export the mask at its image's size"),
        ok("mask_binary", "mask_binary", "mask", "masks are binary (background 0 and one lesion value)",
           "save masks as 0/255 (`cmunext data import` converts them)"),
        E.ExpectColumnValuesToBeInSet(column="channels", value_set=[1, 3], description="images have 1 or 3 channels",
                                      meta=meta("channels", "image", "convert the images to grayscale or RGB")),
        within("width", "width", min_side, max_side, "image", f"image width within [{min_side}, {max_side}]",
               "set data.min_side / data.max_side, or remove the files"),
        within("height", "height", min_side, max_side, "image", f"image height within [{min_side}, {max_side}]",
               "set data.min_side / data.max_side, or remove the files"),
        within("lesion_fraction", "foreground_ratio", 0, max_foreground, "mask",
               f"lesion fraction of the mask in {'[' if allow_empty_masks else '('}0, {max_foreground}]",
               "set data.allow_empty_masks=true to accept normal images (empty masks), data.max_foreground for "
               "larger lesions", strict_min=not allow_empty_masks),
        E.ExpectColumnValuesToBeUnique(column="sha256", description="no exact duplicate images",
                                       meta=meta("unique_images", "image", dup.FIX)),
    ]
    assert [e.meta["name"] for e in suite] == list(VALIDATION_CHECKS)
    for rank, expectation in enumerate(suite):  # GX returns results in its own order; report in ours
        expectation.meta["rank"] = rank
    return suite


def _docs_site(base_directory: Path) -> dict:
    return {"class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(base_directory)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}


def _run_suite(table: pd.DataFrame, expectations: list, docs_dir: Path):
    """Run the suite through a Checkpoint that also builds Data Docs; returns the GX results."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    # the ephemeral context's own site points at a random temp folder: publish to ours
    context.add_data_docs_site(site_name=SITE_NAME, site_config=_docs_site(docs_dir))
    batch = (context.data_sources.add_pandas("dataset").add_dataframe_asset("samples")
             .add_batch_definition_whole_dataframe("all_samples"))
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="dataset", data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="validate_dataset", validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME])],
        # COMPLETE + the stem as index column: every failing value maps back to its sample
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["stem"]}))
    result = checkpoint.run(batch_parameters={"dataframe": table})
    return [r for run in result.run_results.values() for r in run.results]


# ----------------------------------------------------------------------------- report

def _files_at_fault(table: pd.DataFrame, stems: list[str], blame: str) -> list[str]:
    """The files of the failing rows that carry the blame, falling back to whichever exists."""
    rows = table.set_index("stem").loc[stems]
    files: list[str] = []
    for stem, row in rows.iterrows():
        image, mask = row["image_file"], row["mask_file"]
        preferred = {"image": [image], "mask": [mask], "pair": [image, mask]}.get(blame, [])
        named = [f for f in preferred if isinstance(f, str)] or [f for f in (image, mask) if isinstance(f, str)]
        files.extend(named or [str(stem)])
    return files


def _plain(value):
    """numpy/pandas scalars to JSON-friendly Python."""
    return value.item() if hasattr(value, "item") else value


def _exception(res) -> str | None:
    """The error GX caught while evaluating an expectation (one dict, or one per metric)."""
    info = res.exception_info or {}
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    return next((i.get("exception_message") or "unknown error" for i in infos if i.get("raised_exception")), None)


def _message(res, config, table: pd.DataFrame) -> str:
    kwargs, r = config.kwargs, res.result or {}
    what = config.description or config.type
    if error := _exception(res):
        return f"{what}: could not be evaluated ({error})"
    if config.type == "expect_table_row_count_to_be_between":
        return f"{what}: found {r.get('observed_value')}"
    bad, total = r.get("unexpected_count", 0), r.get("element_count", 0)
    text = f"{what}: {bad} of {total} samples fail"
    column = kwargs.get("column")
    if config.type == "expect_column_values_to_be_between":
        values = table[column].dropna()
        observed = f"observed {values.min():g}..{values.max():g}" if len(values) else "nothing measured"
        bracket = "(" if kwargs.get("strict_min") else "["
        text += f" (allowed {bracket}{kwargs.get('min_value'):g}, {kwargs.get('max_value'):g}], {observed})"
    elif config.type == "expect_column_values_to_be_in_set" and list(kwargs.get("value_set", [])) != [True]:
        seen = ", ".join(f"{_plain(c['value'])} x{c['count']}" for c in r.get("partial_unexpected_counts", []))
        text += f" (allowed {list(kwargs.get('value_set', []))}" + (f"; unexpected: {seen})" if seen else ")")
    elif config.type == "expect_column_values_to_not_be_null" and bad:
        text += " (value missing: file absent or not decodable)"
    elif config.type == "expect_column_values_to_be_unique" and bad:
        text += " (their image bytes are identical to another sample's)"
    return text


def _describe(res, table: pd.DataFrame) -> dict:
    config = res.expectation_config
    stems = [str(i["stem"]) for i in (res.result or {}).get("unexpected_index_list") or []]
    meta = config.meta or {}
    return {"name": meta.get("name"), "expectation": config.type, "column": config.kwargs.get("column"),
            "success": bool(res.success), "message": _message(res, config, table), "fix": meta.get("fix", ""),
            "files": _files_at_fault(table, stems, (config.meta or {}).get("blame", "pair")) if stems else []}


def _duplicate_groups(table: pd.DataFrame) -> tuple[list[list[str]], list[list[str]]]:
    """Exact (same file bytes) and near (dHash within a few bits) groups of stems, 2+ members each."""
    hashed = table.dropna(subset=["sha256"])
    exact = [sorted(g) for g in hashed.groupby("sha256")["stem"].apply(list) if len(g) > 1]
    with_phash = table.dropna(subset=["phash"])
    labels = near_duplicate_groups([int(h, 16) for h in with_phash["phash"]])
    groups: dict[int, list[str]] = defaultdict(list)
    for label, stem in zip(labels, with_phash["stem"]):
        groups[label].append(str(stem))
    near = [sorted(g) for g in groups.values() if len(g) > 1]
    return sorted(exact), sorted(near)


def _resolve_duplicates(root: Path, table: pd.DataFrame, policy: str, apply: bool) -> tuple[pd.DataFrame, dup.Plan]:
    """The duplicates policy: carried out on ROOT (a run's snapshot) with APPLY, else only taken out of the
    table, so that `cmunext data validate` on a source folder gives the verdict a run would. Either way the
    removed stems leave the table; with APPLY the united masks are inspected again (only those)."""
    exact, _ = _duplicate_groups(table)
    decodable = set(table.loc[table["mask_decodes"].fillna(False).astype(bool), "stem"])
    groups = [g for g in exact if set(g) <= decodable]  # an undecodable mask fails its own check
    files = table.set_index("stem")
    plan = dup.plan(root, groups, files["mask_file"].to_dict(), policy)
    table = table[~table["stem"].isin(plan.removed)]
    if apply and (plan.removed or plan.merged):
        dup.apply(root, plan, files["image_file"].to_dict(), files["mask_file"].to_dict())
    if apply and plan.merged:
        images, masks = _list_files(root / "images"), _list_files(root / "masks")
        merged = [_sample_row(s, images[s], masks[s], root, root.resolve()) for s in plan.merged]
        table = pd.concat([table[~table["stem"].isin(plan.merged)],
                           pd.DataFrame(merged, columns=list(COLUMNS)).astype(COLUMNS)]).sort_values("stem")
    return table.reset_index(drop=True), plan


def validate_dataset(root, report_dir, *, min_samples=10, min_side=32, max_side=4096,
                     allow_empty_masks=True, max_foreground=0.9, duplicates="fail", severity=None,
                     apply_duplicates=False, progress=True) -> dict:
    """Validate ROOT (images/ + masks/) and write summary.json, samples.csv, duplicates.json and Data Docs
    into REPORT_DIR. Returns the summary; its "success" is False when a blocking expectation fails (SEVERITY
    maps a check's name to "warn" to only report it). DUPLICATES is the policy for byte-identical images
    (cmunext/data/duplicates.py), carried out on ROOT only with APPLY_DUPLICATES (a run's snapshot).
    Near-duplicates are reported, not failed. Raises DataError only for a missing folder."""
    root, report_dir = Path(root), Path(report_dir)
    severity = severity or {}
    table = scan_dataset(root, progress=progress)
    table, plan = _resolve_duplicates(root, table, duplicates, apply_duplicates)
    report_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(report_dir / "samples.csv", index=False)
    (report_dir / "duplicates.json").write_text(json.dumps(plan.to_dict(), indent=1) + "\n")

    docs_dir = (report_dir / "data_docs").resolve()
    suite = _expectations(min_samples, min_side, max_side, allow_empty_masks, max_foreground)
    results = sorted(_run_suite(table, suite, docs_dir), key=lambda r: r.expectation_config.meta["rank"])
    external = make_offline(docs_dir)  # the report must render where no CDN is reachable
    checks = [_describe(res, table) | {"severity": severity.get(c, "block")}
              for res, c in ((res, res.expectation_config.meta["name"]) for res in results)]
    exact, near = _duplicate_groups(table)
    failed = [c for c in checks if not c["success"]]
    summary = {
        "success": not any(c["severity"] == "block" for c in failed),
        "samples": len(table),
        "expectations": checks,
        "failed": [c for c in failed if c["severity"] == "block"],
        "warnings": [c for c in failed if c["severity"] == "warn"],
        "duplicates": {"policy": plan.policy, "description": plan.describe(), "removed": plan.removed,
                       "merged": plan.merged, "quarantined": plan.quarantined},
        "errors": [{"stem": s, "error": e} for s, e in zip(table["stem"], table["error"]) if isinstance(e, str)],
        "exact_duplicate_groups": exact,
        "near_duplicate_groups": near,
        "data_docs": str(docs_dir / "index.html"),
        "data_docs_external": external,
        "report_dir": str(report_dir.resolve()),
    }
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict, max_files: int = 10) -> str:
    """A short text for the terminal: verdict, each failure with its files, duplicate counts."""
    checks, failed, warnings = summary["expectations"], summary["failed"], summary.get("warnings", [])
    verdict = "PASSED" if summary["success"] else "FAILED"
    met = len(checks) - len(failed) - len(warnings)
    lines = [f"Dataset validation {verdict}: {summary['samples']} samples, {met}/{len(checks)} expectations met"
             + (f", {len(warnings)} only warned" if warnings else "")]
    for mark, check in [("x", c) for c in failed] + [("!", c) for c in warnings]:
        lines.append(f"  {mark} {check['message']}")
        files = check["files"]
        if files:
            more = f" ... and {len(files) - max_files} more" if len(files) > max_files else ""
            lines.append(f"      files: {', '.join(files[:max_files])}{more}")
        if mark == "x" and check.get("fix"):
            lines.append(f"      fix: {check['fix']}, or set data.severity.{check['name']}=warn to accept it")
    errors = summary.get("errors", [])
    if errors:
        lines.append(f"  reasons ({len(errors)} samples with problems):")
        lines += [f"    {e['error']}" for e in errors[:max_files]]
        if len(errors) > max_files:
            lines.append(f"    ... and {len(errors) - max_files} more (see samples.csv)")
    if "duplicates" in summary:
        lines.append(f"  duplicates: {summary['duplicates']['description']}")
    for kind in ("exact", "near"):
        groups = summary[f"{kind}_duplicate_groups"]
        lines.append(f"  {kind}-duplicate groups: {len(groups)} ({sum(map(len, groups))} images)")
    lines.append(f"  report: {summary['report_dir']}  (Data Docs: {summary['data_docs']})")
    return "\n".join(lines)
