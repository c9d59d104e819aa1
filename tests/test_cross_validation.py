"""K-fold grouped cross-validation: folds keep near-duplicate groups whole and spread classes; the command
trains and scores K models outside the test split (`cmunext evaluate --folds K`)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from cmunext.cross_validation import folds, mean_ci
from conftest import ROOT, VENV_BIN


def test_folds_keep_groups_whole_and_spread_classes():
    groups = [["a1", "a2", "a3"], ["b1", "b2"]] + [[f"s{i}"] for i in range(25)]
    classes = {s: ("m" if s in ("s0", "s1", "s2", "s3", "s4", "s5") else "b") for g in groups for s in g}
    parts = folds(groups, 3, seed=2, classes=classes)
    assert sorted(s for f in parts for s in f) == sorted(s for g in groups for s in g)
    for g in groups:
        assert sum(set(g) <= set(f) for f in parts) == 1  # each group in exactly one fold, whole
    assert [sum(classes[s] == "m" for s in f) for f in parts] == [2, 2, 2]
    assert max(map(len, parts)) - min(map(len, parts)) <= 3
    with pytest.raises(ValueError, match="at least 2 folds"):
        folds(groups, 1)


def test_mean_ci_is_a_t_interval():
    ci = mean_ci([0.5, 0.6, 0.7])
    assert ci["value"] == pytest.approx(0.6)
    assert ci["ci95_low"] == pytest.approx(0.6 - 4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)


def test_cli_cross_validates_outside_the_test_split(synth_dataset, tmp_path):
    split = {"train": [], "val": [], "test": ["synth_00000", "synth_00001", "synth_00002", "synth_00003"]}
    stems = sorted(p.stem for p in (synth_dataset / "images").iterdir())
    split["train"] = [s for s in stems if s not in split["test"]]
    (tmp_path / "split.json").write_text(json.dumps(split))
    proc = subprocess.run([str(VENV_BIN / "cmunext"), "evaluate", "--data", str(synth_dataset), "--folds", "3",
                           "--split", str(tmp_path / "split.json"), "--config", str(ROOT / "configs" / "ci-tiny.yaml"),
                           "--set", "train.epochs=1", "--json", str(tmp_path / "cv.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "CMUNEXT_HOME": str(tmp_path / "state")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cv = json.loads((tmp_path / "cv.json").read_text())
    assert cv["folds"] == 3 and cv["pool_images"] == 20 and len(cv["per_fold"]) == 3
    assert sum(r["images"] for r in cv["per_fold"]) == 20  # every pool image scored once; test images never
    assert cv["iou"]["ci95_low"] <= cv["iou"]["value"] <= cv["iou"]["ci95_high"]
    assert "3-fold CV    : IoU" in proc.stdout and "fold 3:" in proc.stdout
