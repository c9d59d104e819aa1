"""Dataset validation with real great-expectations runs: a clean set passes, and every
kind of defect (corrupt, hostile, inconsistent, duplicated) fails with its file named."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BUSI, busi
from PIL import Image

from cmunext.data.validate import format_summary, scan_dataset, validate_dataset
from cmunext_serving.imageio import DataError

# ------------------------------------------------------------------ hand-made bad files

def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png(width: int, height: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def huge_header_png(side: int = 100_000) -> bytes:
    """A PNG whose header claims side x side pixels, with (almost) no data behind it."""
    return _png(side, side, zlib.compress(b""))


def bomb_png(side: int = 8000) -> bytes:
    """A valid side x side PNG of zeros (64 Mpixel) that compresses to ~60 kB, built row by
    row so the test never holds the decoded image."""
    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    return _png(side, side, b"".join(z.compress(row) for _ in range(side)) + z.flush())


def _edit_mask(path: Path, change) -> None:
    mask = np.array(Image.open(path))
    Image.fromarray(change(mask)).save(path)


def break_dataset(data: Path, outside: Path) -> None:
    """One defect per sample of the 24-pair synthetic set (stems synth_00000..23)."""
    im, ms = data / "images", data / "masks"
    (im / "synth_00001.png").write_bytes(b"")
    (im / "synth_00002.png").write_bytes(b"this is not an image, whatever the suffix says")
    (im / "synth_00003.png").write_bytes((im / "synth_00003.png").read_bytes()[:400])
    (im / "synth_00004.png").write_bytes(huge_header_png())
    (im / "synth_00005.png").write_bytes(bomb_png())
    outside.mkdir()
    shutil.move(im / "synth_00006.png", outside / "elsewhere.png")
    (im / "synth_00006.png").symlink_to(outside / "elsewhere.png")
    (ms / "synth_00007.png").unlink()
    os.mkfifo(ms / "synth_00007.png")  # opening it for reading would block forever
    _edit_mask(ms / "synth_00008.png", lambda m: np.where(np.arange(m.shape[1]) < 8, 128, m).astype(np.uint8))
    _edit_mask(ms / "synth_00009.png", lambda m: m[:-16])
    (ms / "synth_00010.png").unlink()
    (im / "synth_00011.png").unlink()
    shutil.copy(im / "synth_00012.png", im / "synth_dup.png")
    shutil.copy(ms / "synth_00012.png", ms / "synth_dup.png")
    Image.open(im / "synth_00014.png").convert("RGBA").save(im / "synth_00014.png")
    _edit_mask(ms / "synth_00015.png", lambda m: np.full_like(m, 255))
    Image.open(im / "synth_00016.png").save(im / "synth_00016.jpg")
    (im / "synth_00017.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2)
    # a symlink that stays inside the dataset is fine
    (data / "originals").mkdir()
    shutil.move(im / "synth_00018.png", data / "originals" / "synth_00018.png")
    (im / "synth_00018.png").symlink_to(Path("..") / "originals" / "synth_00018.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(im / "synth_tiny.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(ms / "synth_tiny.png")


@pytest.fixture(scope="module")
def broken(synth_dataset, tmp_path_factory):
    """The broken dataset, validated once: (summary, samples table, dataset root)."""
    work = tmp_path_factory.mktemp("broken")
    data = work / "data"
    shutil.copytree(synth_dataset, data)
    break_dataset(data, work / "outside")
    summary = validate_dataset(data, work / "report", progress=False)
    return summary, pd.read_csv(work / "report" / "samples.csv"), data


# ------------------------------------------------------------------------------ tests

def test_clean_dataset_passes_and_writes_reports(dataset_copy, tmp_path):
    report = tmp_path / "report"
    summary = validate_dataset(dataset_copy, report, progress=False)
    assert summary["success"], format_summary(summary)
    assert summary["samples"] == 24 and summary["failed"] == [] and summary["errors"] == []
    assert all(c["success"] and c["files"] == [] for c in summary["expectations"])
    assert summary["exact_duplicate_groups"] == [] and summary["near_duplicate_groups"] == []
    assert json.loads((report / "summary.json").read_text()) == summary
    assert Path(summary["data_docs"]) == (report / "data_docs" / "index.html").resolve()
    assert Path(summary["data_docs"]).is_file()
    table = pd.read_csv(report / "samples.csv")
    assert len(table) == 24 and table["error"].isna().all()
    assert "PASSED" in format_summary(summary)


def test_table_records_the_facts(dataset_copy):
    table = scan_dataset(dataset_copy)
    for column in ("stem", "image_file", "mask_file", "has_image", "has_mask", "image_decodes", "mask_decodes",
                   "error", "width", "height", "mask_width", "mask_height", "sizes_match", "channels",
                   "mask_values", "mask_binary", "foreground_ratio", "sha256", "phash"):
        assert column in table.columns
    row = table.iloc[0]
    assert row["image_file"] == "images/synth_00000.png" and row["mask_file"] == "masks/synth_00000.png"
    assert row["channels"] == 1 and row["mask_values"] == "0,255" and row["mask_binary"]
    assert 0 < row["foreground_ratio"] < 1 and row["sizes_match"]
    assert len(row["sha256"]) == 64 and len(row["phash"]) == 16
    int(row["phash"], 16)


DEFECTS = {  # name: (file at fault, column of the failing expectation, reason in the row's error)
    "empty file": ("images/synth_00001.png", "image_decodes", "empty file (0 bytes)"),
    "non-image bytes": ("images/synth_00002.png", "image_decodes", "not a PNG, JPEG, BMP or TIFF"),
    "truncated png": ("images/synth_00003.png", "image_decodes", "truncated"),
    "huge declared size": ("images/synth_00004.png", "image_decodes", "decompression bomb"),
    "decompression bomb": ("images/synth_00005.png", "image_decodes", "exceeds the limit"),
    "symlink outside": ("images/synth_00006.png", "image_decodes", "symlink leads outside the dataset"),
    "fifo": ("masks/synth_00007.png", "mask_decodes", "not a regular file"),
    "non-binary mask": ("masks/synth_00008.png", "mask_binary", None),
    "size mismatch": ("masks/synth_00009.png", "sizes_match", "masks/synth_00009.png is 384x208"),
    "image without mask": ("images/synth_00010.png", "has_mask", "image without a mask"),
    "mask without image": ("masks/synth_00011.png", "has_image", "mask without an image"),
    "exact duplicate": ("images/synth_dup.png", "sha256", None),
    "rgba image": ("images/synth_00014.png", "channels", None),
    "mask all lesion": ("masks/synth_00015.png", "foreground_ratio", None),
    "two files, one stem": ("images/synth_00016.png", "one_file_per_stem", "synth_00016.jpg"),
    "png signature, garbage body": ("images/synth_00017.png", "image_decodes", "cannot decode image"),
    "image too small": ("images/synth_tiny.png", "width", None),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_defect_fails_and_names_the_file(broken, defect):
    summary, table, _ = broken
    file, column, reason = DEFECTS[defect]
    assert not summary["success"]
    hits = [c for c in summary["failed"] if c["column"] == column and file in c["files"]]
    assert hits, f"{defect}: no failure on {column} names {file}: {summary['failed']}"
    stem = Path(file).stem
    assert stem in table["stem"].tolist()  # orphans and broken files keep their row
    if reason:
        error = table.set_index("stem").loc[stem, "error"]
        assert file in error and reason in error, error


def test_only_the_defective_files_are_blamed(broken):
    summary, table, _ = broken
    blamed = {f for c in summary["failed"] for f in c["files"]}
    expected = {file for file, _, _ in DEFECTS.values()} | {
        "images/synth_00012.png",  # the original of the duplicate
        "images/synth_00009.png",  # size mismatch names both files of the pair
        "masks/synth_00016.png",   # so does the ambiguous stem
    }
    assert blamed == expected
    inside = table.set_index("stem").loc["synth_00018"]  # symlink within the dataset: followed
    assert inside["image_decodes"] and pd.isna(inside["error"])


def test_broken_dataset_reports(broken):
    summary, _, _ = broken
    assert summary["exact_duplicate_groups"] == [["synth_00012", "synth_dup"]]
    assert ["synth_00012", "synth_dup"] in summary["near_duplicate_groups"]  # reported, not failed
    assert json.loads((Path(summary["report_dir"]) / "summary.json").read_text())["success"] is False
    assert Path(summary["data_docs"]).is_file()
    text = format_summary(summary)
    assert "FAILED" in text and "images/synth_00006.png" in text and "exact-duplicate groups: 1" in text
    width = next(c for c in summary["failed"] if c["expectation"] == "expect_column_values_to_be_between"
                 and c["column"] == "width")
    assert "[32, 4096]" in width["message"] and "observed 16.." in width["message"]


def test_too_few_samples(dataset_copy, tmp_path):
    summary = validate_dataset(dataset_copy, tmp_path / "report", min_samples=25, progress=False)
    assert not summary["success"]
    [failure] = summary["failed"]
    assert failure["expectation"] == "expect_table_row_count_to_be_between" and "found 24" in failure["message"]


def test_empty_masks_fail_only_when_not_allowed(dataset_copy, tmp_path):
    _edit_mask(dataset_copy / "masks" / "synth_00000.png", np.zeros_like)
    assert validate_dataset(dataset_copy, tmp_path / "allowed", progress=False)["success"]
    summary = validate_dataset(dataset_copy, tmp_path / "refused", allow_empty_masks=False, progress=False)
    [failure] = summary["failed"]
    assert failure["column"] == "foreground_ratio" and failure["files"] == ["masks/synth_00000.png"]


def test_missing_folders_raise(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        validate_dataset(tmp_path / "nowhere", tmp_path / "report")
    (tmp_path / "data" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"masks"):
        validate_dataset(tmp_path / "data", tmp_path / "report")


def test_import_stays_light():
    code = "import sys, cmunext.data.validate; assert 'great_expectations' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@busi
@pytest.mark.slow
def test_busi_reports_near_duplicates(tmp_path):
    summary = validate_dataset(BUSI, tmp_path / "report", progress=False)
    assert summary["samples"] == 647
    # every file is sound; what BUSI gets wrong is duplication (Pawłowska et al. 2023)
    assert {c["column"] for c in summary["failed"]} <= {"sha256"}
    assert summary["near_duplicate_groups"] and all(len(g) > 1 for g in summary["near_duplicate_groups"])
    duplicated = {s for g in summary["exact_duplicate_groups"] for s in g}
    assert {Path(f).stem for c in summary["failed"] for f in c["files"]} == duplicated
    assert Path(summary["data_docs"]).is_file()


# ------------------------------------------------------------------ duplicates policy (data.duplicates)

def _annotate_twice(data: Path) -> None:
    """synth_00003 filed again as synth_twice with a different lesion (one image, one mask per lesion), and
    synth_00005 copied as synth_copy with the same mask (a plain copy)."""
    im, ms = data / "images", data / "masks"
    shutil.copy(im / "synth_00003.png", im / "synth_twice.png")
    other = np.zeros_like(np.array(Image.open(ms / "synth_00003.png")))
    other[:8, :8] = 255
    Image.fromarray(other).save(ms / "synth_twice.png")
    shutil.copy(im / "synth_00005.png", im / "synth_copy.png")
    shutil.copy(ms / "synth_00005.png", ms / "synth_copy.png")


@pytest.mark.parametrize("policy,kept,gone", [
    ("merge", {"synth_00003", "synth_00005"}, {"synth_twice", "synth_copy"}),
    ("keep-one", {"synth_00003", "synth_00005"}, {"synth_twice", "synth_copy"}),
    ("quarantine", {"synth_00005"}, {"synth_00003", "synth_twice", "synth_copy"}),
])
def test_duplicates_policy_on_a_snapshot(dataset_copy, tmp_path, policy, kept, gone):
    """On a run's snapshot the policy is carried out: removed pairs move to quarantine/, merged masks are the
    union; plain copies (same mask) keep one under every policy."""
    _annotate_twice(dataset_copy)
    first = np.array(Image.open(dataset_copy / "masks" / "synth_00003.png")) > 0
    second = np.array(Image.open(dataset_copy / "masks" / "synth_twice.png")) > 0
    summary = validate_dataset(dataset_copy, tmp_path / "report", duplicates=policy, apply_duplicates=True,
                               progress=False)
    assert summary["success"], format_summary(summary)
    stems = {p.stem for p in (dataset_copy / "images").iterdir()}
    assert kept <= stems and not (gone & stems) and summary["samples"] == 24 + 2 - len(gone)
    assert {p.stem for p in (dataset_copy / "quarantine" / "images").iterdir()} == gone
    assert summary["exact_duplicate_groups"] == []
    mask = np.array(Image.open(dataset_copy / "masks" / "synth_00003.png")) > 0 if "synth_00003" in stems else None
    if policy == "merge":
        assert np.array_equal(mask, first | second) and summary["duplicates"]["merged"] == {"synth_00003": ["synth_twice"]}
    elif policy == "keep-one":
        assert np.array_equal(mask, first)
    else:
        assert summary["duplicates"]["quarantined"] == ["synth_00003", "synth_twice"]
    report = json.loads((tmp_path / "report" / "duplicates.json").read_text())
    assert report["policy"] == policy and set(report["removed"]) == gone
    assert {tuple(g["stems"]): g["conflict"] for g in report["groups"]} == {
        ("synth_00003", "synth_twice"): True, ("synth_00005", "synth_copy"): False}
    assert f"policy {policy}" in format_summary(summary)


def test_duplicates_fail_names_the_fix_and_a_dry_run_changes_nothing(dataset_copy, tmp_path):
    _annotate_twice(dataset_copy)
    before = sorted(p.name for p in (dataset_copy / "masks").iterdir())
    summary = validate_dataset(dataset_copy, tmp_path / "fail", duplicates="fail", progress=False)
    [failure] = summary["failed"]
    assert failure["name"] == "unique_images" and "images/synth_twice.png" in failure["files"]
    text = format_summary(summary)
    assert "fix: set data.duplicates to quarantine, merge or keep-one" in text
    assert "data.severity.unique_images=warn" in text
    # without apply (what `cmunext data validate` does on a source folder): the verdict of a run, nothing moved
    dry = validate_dataset(dataset_copy, tmp_path / "dry", duplicates="merge", progress=False)
    assert dry["success"] and dry["duplicates"]["merged"] == {"synth_00003": ["synth_twice"]}
    assert sorted(p.name for p in (dataset_copy / "masks").iterdir()) == before
    assert not (dataset_copy / "quarantine").exists()


def test_severity_warn_reports_without_failing(dataset_copy, tmp_path):
    _edit_mask(dataset_copy / "masks" / "synth_00002.png",
               lambda m: np.where(np.arange(m.shape[1]) < 4, 128, m).astype(np.uint8))  # a third value
    blocked = validate_dataset(dataset_copy, tmp_path / "b", progress=False)
    assert not blocked["success"] and blocked["failed"][0]["name"] == "mask_binary"
    warned = validate_dataset(dataset_copy, tmp_path / "w", severity={"mask_binary": "warn"}, progress=False)
    assert warned["success"] and warned["failed"] == []
    assert [w["name"] for w in warned["warnings"]] == ["mask_binary"]
    assert "1 only warned" in format_summary(warned) and "! masks are binary" in format_summary(warned)


def test_unknown_severity_key_is_refused():
    from cmunext.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="unknown check.*mask_binary"):
        load_config(None, ["data.severity.mask_binaryy=warn"])
    with pytest.raises(ConfigError, match="data.duplicates"):
        load_config(None, ["data.duplicates=unite"])


# ------------------------------------------------------------------ Data Docs offline

def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless browser: install Debian's `chromium` (make test does) to check the Data Docs")
    # every host name fails to resolve: the page gets nothing from the network, as in a closed hospital network
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=120)


def test_data_docs_render_offline(broken, tmp_path):
    """No page loads anything from the network, and in a browser with no network the validation page is
    styled (Bootstrap's colours) and its tables are built (bootstrap-table's JavaScript ran)."""
    from cmunext.data.docs_offline import external_resources
    summary, _, _ = broken
    site = Path(summary["data_docs"]).parent
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 3 and summary["data_docs_external"] == []
    assert {p.name: external_resources(p.read_text()) for p in pages} == {p.name: [] for p in pages}
    page = next(p for p in pages if "validations" in p.parts)
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'class="bootstrap-table' in dom.stdout and "fixed-table-container" in dom.stdout
    assert "every sample has a decodable mask" in dom.stdout
    shot = tmp_path / "data_docs.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1000", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    bootstrap_blue = (np.abs(pixels.astype(int) - (0, 123, 255)).sum(axis=1) < 30).sum()
    assert bootstrap_blue > 500, "the page is not styled: Bootstrap's CSS did not load"
