"""Import of datasets in the three accepted layouts into the project layout."""
from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import BUSI, busi
from PIL import Image

from cmunext.data.importers import detect_layout, import_dataset, safe_stem
from cmunext.data.layout import list_pairs
from cmunext_serving.imageio import DataError


def _image(h=20, w=24, seed=0, rgb=False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    return np.repeat(a[..., None], 3, axis=2) if rgb else a


def _mask(h=20, w=24, box=(2, 2, 10, 10)) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    y0, x0, y1, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


def _save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img)


def _mapping(out: Path) -> dict[str, dict]:
    with open(out / "mapping.csv", newline="") as f:
        return {r["stem"]: r for r in csv.DictReader(f)}


@pytest.fixture
def busi_release(tmp_path) -> Path:
    """The original BUSI release's shape: class folders, `name (n).png`, `_mask`, `_mask_1`."""
    src = tmp_path / "Dataset_BUSI_with_GT"
    _save(src / "benign" / "benign (1).png", _image(seed=1, rgb=True))  # grey stored as RGB, like BUSI
    _save(src / "benign" / "benign (1)_mask.png", _mask())
    _save(src / "benign" / "benign (2).png", _image(seed=2))
    _save(src / "benign" / "benign (2)_mask.png", _mask(box=(5, 5, 15, 20)))
    _save(src / "benign" / "benign (3).png", _image(seed=3))  # no mask: skipped
    _save(src / "malignant" / "malignant (1).png", _image(seed=4))
    _save(src / "malignant" / "malignant (1)_mask.png", _mask(box=(0, 0, 5, 5)))
    _save(src / "malignant" / "malignant (1)_mask_1.png", _mask(box=(10, 10, 20, 24)))
    _save(src / "normal" / "normal (1).png", _image(seed=5))
    _save(src / "normal" / "normal (1)_mask.png", np.zeros((20, 24), np.uint8))
    _save(src / "normal" / "normal (2).png", _image(seed=6))  # normal without a mask file
    (src / "benign" / "Thumbs.db").write_bytes(b"junk")
    return src


def test_busi_release(busi_release, tmp_path):
    out = tmp_path / "out"
    summary = import_dataset(busi_release, out, progress=False)
    assert summary["layout"] == "busi"
    assert summary["pairs"] == 3
    assert summary["classes"] == {"benign": 2, "malignant": 1}
    assert summary["merged_masks"] == 1
    reasons = {s["file"]: s["reason"] for s in summary["skipped"]}
    assert reasons["benign/benign (3).png"] == "no mask"
    assert "normal" in reasons["normal/normal (1).png"] and "normal" in reasons["normal/normal (2).png"]
    assert reasons["benign/Thumbs.db"] == "not an image file"
    assert list_pairs(out) == ["benign_0001", "benign_0002", "malignant_0001"]

    image = _png(out / "images" / "benign_0001.png")
    assert image.shape == (20, 24) and np.array_equal(image, _image(seed=1))  # RGB grey -> one channel
    merged = _png(out / "masks" / "malignant_0001.png")
    assert merged.dtype == np.uint8 and merged.ndim == 2 and set(np.unique(merged)) == {0, 255}
    assert np.array_equal(merged, np.maximum(_mask(box=(0, 0, 5, 5)), _mask(box=(10, 10, 20, 24))))

    rows = _mapping(out)
    assert rows["malignant_0001"] == {"stem": "malignant_0001", "image": "malignant/malignant (1).png",
                                      "masks": "malignant/malignant (1)_mask.png;malignant/malignant (1)_mask_1.png",
                                      "class": "malignant"}
    assert rows["benign_0002"]["class"] == "benign"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.import-")]  # temp folder gone


def test_busi_include_normal(busi_release, tmp_path):
    summary = import_dataset(busi_release, tmp_path / "out", include_normal=True, progress=False)
    assert summary["classes"] == {"benign": 2, "malignant": 1, "normal": 2}
    for stem in ("normal_0001", "normal_0002"):
        mask = _png(tmp_path / "out" / "masks" / f"{stem}.png")
        assert mask.shape == (20, 24) and not mask.any()
    assert _mapping(tmp_path / "out")["normal_0002"]["masks"] == ""


def test_cmunext_layout_converts_formats(tmp_path):
    src = tmp_path / "busi"
    images = {"Case 1.jpg": _image(seed=1, rgb=True), "case_2.bmp": _image(seed=2),
              "CASE (3).tiff": _image(seed=3), "case-4.png": _image(seed=4, rgb=True)}
    images["case-4.png"][0, 0] = (255, 0, 0)  # really colour: stays RGB
    for name, a in images.items():
        _save(src / "images" / name, a)
        stem = Path(name).stem
        mask = (_mask() > 0).astype(np.uint8)  # 0/1 masks come out as 0/255
        _save(src / "masks" / "0" / (stem + (".bmp" if stem == "case_2" else ".png")), mask)
    assert detect_layout(src) == "cmunext"
    summary = import_dataset(src, tmp_path / "out", progress=False)
    assert summary["layout"] == "cmunext" and summary["pairs"] == 4
    assert summary["converted"] == 3  # jpg, bmp, tiff (the colour PNG is copied as it is)
    assert list_pairs(tmp_path / "out") == ["case-4", "case_0003", "case_1", "case_2"]
    out = tmp_path / "out"
    assert np.array_equal(_png(out / "images" / "case_2.png"), images["case_2.bmp"])  # lossless formats: exact
    assert np.array_equal(_png(out / "images" / "case_0003.png"), images["CASE (3).tiff"])
    with Image.open(src / "images" / "Case 1.jpg") as jpg:  # JPEG: the decoded pixels, as decoded
        decoded = np.asarray(jpg.convert("RGB"))
    got = _png(out / "images" / "case_1.png")
    assert got.shape[:2] == (20, 24)
    assert np.array_equal(got, decoded) or np.array_equal(got, decoded[..., 0])
    assert _png(out / "images" / "case-4.png").shape == (20, 24, 3)
    for stem in ("case-4", "case_0003", "case_1", "case_2"):
        assert np.array_equal(_png(out / "masks" / f"{stem}.png"), _mask())


def test_project_layout_copies_clean_pngs_and_keeps_classes(dataset_copy, tmp_path):
    src = dataset_copy
    (src / "images" / "extra_00099.png").write_bytes((src / "images" / "synth_00000.png").read_bytes())
    (src / "mapping.csv").write_text("stem,class\nsynth_00000,benign\n")
    summary = import_dataset(src, tmp_path / "out", progress=False)
    assert summary["layout"] == "project" and summary["pairs"] == 24 and summary["converted"] == 0
    assert summary["skipped"] == [{"file": "images/extra_00099.png", "reason": "no mask"}]
    for sub in ("images", "masks"):
        for p in (src / sub).glob("synth_*.png"):
            assert (tmp_path / "out" / sub / p.name).read_bytes() == p.read_bytes()
    rows = _mapping(tmp_path / "out")
    assert rows["synth_00000"]["class"] == "benign" and rows["synth_00001"]["class"] == ""
    assert summary["classes"] == {"benign": 1, "unknown": 23}


def test_reimport_is_a_noop_but_different_data_is_refused(dataset_copy, tmp_path):
    out = tmp_path / "out"
    assert import_dataset(dataset_copy, out, progress=False)["unchanged"] is False
    assert import_dataset(dataset_copy, out, progress=False)["unchanged"] is True
    changed = dataset_copy / "masks" / "synth_00003.png"
    _save(changed, 255 - _png(changed))
    with pytest.raises(DataError, match=r"already holds different data.*masks/synth_00003.png") as e:
        import_dataset(dataset_copy, out, progress=False)
    assert str(out) in str(e.value)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="already holds different data"):
        import_dataset(dataset_copy, other, progress=False)
    assert (other / "notes.txt").read_text() == "mine"


def test_safe_stem():
    assert safe_stem("benign (1)") == "benign_0001"
    assert safe_stem("Malignant (210)") == "malignant_0210"
    assert safe_stem("Case 7 [left].v2") == "case_7_left_v2"
    assert safe_stem("already_safe-01") == "already_safe-01"


@pytest.mark.parametrize("setup, match", [
    (lambda s: None, "source folder not found"),
    (lambda s: s.write_text("x"), "not a folder"),
    (lambda s: s.mkdir(), "unknown layout"),
    (lambda s: (s / "Dataset_BUSI_with_GT").mkdir(parents=True), "did you mean .*Dataset_BUSI_with_GT"),
    (lambda s: [(s / d).mkdir(parents=True) for d in ("benign", "images")], "mixed layouts"),
    (lambda s: [(s / d).mkdir(parents=True) for d in ("images",)], "no masks/ folder"),
    (lambda s: [(s / d).mkdir(parents=True) for d in ("images", "masks/1")], r"unknown layout.*masks/0/"),
], ids=["missing", "file", "empty", "nested", "mixed", "no-masks", "multiclass"])
def test_bad_sources(tmp_path, setup, match):
    src = tmp_path / "src"
    setup(src)
    with pytest.raises(DataError, match=match) as e:
        import_dataset(src, tmp_path / "out", progress=False)
    assert str(src) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_mixed_mask_folder(tmp_path):
    src = tmp_path / "src"
    _save(src / "images" / "a.png", _image())
    _save(src / "masks" / "a.png", _mask())
    _save(src / "masks" / "0" / "a.png", _mask())
    with pytest.raises(DataError, match=r"masks: mixed layouts"):
        import_dataset(src, tmp_path / "out", progress=False)


def test_masks_without_images_are_named(tmp_path, busi_release):
    src = tmp_path / "src"
    _save(src / "images" / "a.png", _image())
    _save(src / "masks" / "a.png", _mask())
    _save(src / "masks" / "ghost.png", _mask())
    with pytest.raises(DataError, match=r"1 mask\(s\) without an image: ghost.png"):
        import_dataset(src, tmp_path / "out", progress=False)
    _save(busi_release / "benign" / "benign (9)_mask_2.png", _mask())
    with pytest.raises(DataError, match=r"benign: 1 mask\(s\) without an image: benign \(9\)_mask_2.png"):
        import_dataset(busi_release, tmp_path / "out", progress=False)


def test_size_mismatch_names_both_files(busi_release, tmp_path):
    _save(busi_release / "malignant" / "malignant (1)_mask_1.png", _mask(h=21))
    with pytest.raises(DataError, match=r"malignant \(1\)_mask_1.png: mask size 24x21 differs from image "
                                        r".*malignant \(1\).png size 24x20"):
        import_dataset(busi_release, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unreadable_image_and_colliding_stems(tmp_path):
    src = tmp_path / "src"
    _save(src / "masks" / "a.png", _mask())
    (src / "images").mkdir(parents=True)
    (src / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"images/a.png: cannot decode image"):
        import_dataset(src, tmp_path / "out", progress=False)
    _save(src / "images" / "a.png", _image())
    _save(src / "images" / "A.png", _image())
    _save(src / "masks" / "A.png", _mask())
    with pytest.raises(DataError, match=r"both become stem 'a'"):
        import_dataset(src, tmp_path / "out", progress=False)
    (src / "images" / "A.png").unlink()
    (src / "masks" / "A.png").unlink()
    _save(src / "images" / "a.jpg", _image())
    with pytest.raises(DataError, match=r"two files with stem 'a'"):
        import_dataset(src, tmp_path / "out", progress=False)


def test_output_inside_source_is_refused(dataset_copy):
    with pytest.raises(DataError, match="must not be the source folder or inside it"):
        import_dataset(dataset_copy, dataset_copy / "imported", progress=False)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder(tmp_path):
    src = tmp_path / "src"
    _save(src / "images" / "a.png", _image())
    _save(src / "masks" / "a.png", _mask())
    (src / "images").chmod(0)
    try:
        with pytest.raises(DataError, match=r"images: cannot read the folder"):
            import_dataset(src, tmp_path / "out", progress=False)
    finally:
        (src / "images").chmod(0o755)


@busi
def test_import_shared_busi_is_byte_identical(tmp_path):
    summary = import_dataset(BUSI, tmp_path / "busi", progress=False)
    assert summary["layout"] == "project" and summary["pairs"] == 647 and summary["skipped"] == []
    assert summary["classes"] == {"benign": 437, "malignant": 210}
    for line in (BUSI / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((tmp_path / "busi" / name).read_bytes()).hexdigest() == digest, name
