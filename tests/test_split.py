"""The split: near-duplicate groups never cross splits, classes are stratified, and once frozen an image's split
never changes as the data grows; user split files and nnU-Net's format."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, VENV_BIN, grown_dataset

from cmunext.data.split import assign, make_split, read_split_file
from cmunext_serving.imageio import DataError


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> tuple[Path, Path]:
    """v1: 40 synthetic pairs; v2: the same 40 plus 20 new ones (different seed)."""
    return grown_dataset(tmp_path_factory.mktemp("grow"), 40, 20, seed=5)


def test_groups_never_cross_splits_and_ratios_hold():
    groups = [["a1", "a2", "a3"]] + [[f"s{i}"] for i in range(37)]
    split = assign(groups, (0.7, 0.1, 0.2), seed=1)
    assert sum(map(len, split.values())) == 40
    assert [name for name, v in split.items() if "a1" in v] == [name for name, v in split.items() if "a3" in v]
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (28, 4, 8)


def test_stratified_by_class():
    groups = [[f"b{i}"] for i in range(30)] + [[f"m{i}"] for i in range(10)]
    classes = {s: ("benign" if s[0] == "b" else "malignant") for g in groups for s in g}
    split = assign(groups, (0.7, 0.1, 0.2), seed=3, classes=classes)
    count = {name: sum(classes[s] == "malignant" for s in v) for name, v in split.items()}
    assert count == {"train": 7, "val": 1, "test": 2}  # each class in the ratios, not by chance


def test_frozen_split_keeps_every_assignment_as_data_grows(grown, tmp_path):
    v1, v2 = grown
    first = make_split(v1, progress=False)
    second = make_split(v2, progress=False, existing=first)
    for name in ("train", "val", "test"):
        assert set(first[name]) <= set(second[name]), name  # every v1 image stays where it was
    assert second["info"]["kept"] == 40 and second["info"]["assigned"] == 20
    new_test = [s for s in second["test"] if s.startswith("new_")]
    assert 0 < len(new_test) < 20  # new images are assigned too, toward the ratios
    assert make_split(v2, progress=False, existing=first) == second  # deterministic


def test_a_new_near_duplicate_joins_its_twin(grown, tmp_path):
    v1, _ = grown
    data = tmp_path / "d"
    shutil.copytree(v1, data)
    first = make_split(data, progress=False)
    twin = first["test"][0]
    for sub in ("images", "masks"):
        shutil.copy(data / sub / f"{twin}.png", data / sub / "zz_twin.png")
    again = make_split(data, progress=False, existing=first)
    assert "zz_twin" in again["test"]


def test_cli_writes_then_updates_dir_splits_json(grown, tmp_path):
    _, v2 = grown
    data = tmp_path / "data"
    shutil.copytree(v2, data)
    for sub in ("images", "masks"):
        for f in (data / sub).glob("new_*"):
            f.rename(tmp_path / f"{sub}-{f.name}")  # v1 first

    def split():
        proc = subprocess.run([str(VENV_BIN / "cmunext"), "data", "split", str(data)], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, json.loads((data / "splits.json").read_text())

    out1, s1 = split()
    assert "0 kept where they were, 40 assigned now" in out1
    for f in tmp_path.glob("*-new_*"):  # v2: the new images arrive
        sub, name = f.name.split("-", 1)
        f.rename(data / sub / name)
    out2, s2 = split()
    assert "40 kept where they were, 20 assigned now" in out2
    assert all(set(s1[k]) <= set(s2[k]) for k in ("train", "val", "test"))


def test_split_files(tmp_path):
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"train": ["a", "b"], "val": ["c"], "test": ["d"]}))
    assert read_split_file(own) == {"train": ["a", "b"], "val": ["c"], "test": ["d"]}
    nnunet = tmp_path / "splits_final.json"
    nnunet.write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}]))
    assert read_split_file(nnunet, ["a", "b", "c", "d", "e"], fold=1) == {
        "train": ["a", "c"], "val": ["b"], "test": ["d", "e"]}  # nnU-Net keeps its test images apart
    with pytest.raises(DataError, match="fold 5 of 2"):
        read_split_file(nnunet, ["a"], fold=5)
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"train": ["a"], "test": ["a"]}))
    with pytest.raises(DataError, match="'a' is in both train and test"):
        read_split_file(both)
    with pytest.raises(DataError, match="not found"):
        read_split_file(tmp_path / "missing.json")
