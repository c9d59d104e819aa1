"""Real data through the pipeline: a BUSI subset holding its byte-identical pair (benign_0433 and
malignant_0145: one image, two masks, two classes) under each `data.duplicates` policy, with what the policy
did recorded with the run. Skipped where ../shared/datasets/busi is absent."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BUSI, ROOT, VENV_BIN, busi

PAIR = ["benign_0433", "malignant_0145"]
pytestmark = [busi, pytest.mark.slow]


@pytest.fixture(scope="module")
def busi_subset(tmp_path_factory) -> Path:
    """The pair plus 11 benign and 11 malignant images, with their mapping.csv rows (project layout)."""
    out = tmp_path_factory.mktemp("busi-subset") / "busi"
    rows = list(csv.DictReader((BUSI / "mapping.csv").open(newline="")))
    chosen = PAIR + [r["stem"] for r in rows if r["class"] == "benign" and r["stem"] not in PAIR][:11] \
        + [r["stem"] for r in rows if r["class"] == "malignant" and r["stem"] not in PAIR][:11]
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True)
        for stem in chosen:
            shutil.copy(BUSI / sub / f"{stem}.png", out / sub / f"{stem}.png")
    with (out / "mapping.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["stem"] in chosen)
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real-data-state")


def run(home: Path, data: Path, policy: str, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(CMUNEXT_HOME=str(home), TQDM_DISABLE="1")
    summary = tmp_path / "summary.json"
    proc = subprocess.run([str(VENV_BIN / "cmunext"), "pipeline", "run", "--config", str(ROOT / "configs" / "ci-tiny.yaml"),
                           "--set", f"data.source={data}", "--set", f"data.duplicates={policy}",
                           "--set", f"registry.model_name=busi-{policy}", "--json", str(summary)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    return proc, (json.loads(summary.read_text()) if summary.exists() else None)


def _check_policy_on_the_snapshot(snapshot: Path, shards: Path, busi_subset: Path, removed: list[str],
                                  policy: str, merged: dict) -> dict:
    """What every policy must do: the removed images quarantined in the run's snapshot (never in the source
    folder), none of them in any split, and the plan travelling with the shards for the train step to record."""
    assert sorted(p.stem for p in (snapshot / "quarantine" / "images").iterdir()) == sorted(removed)
    assert not (busi_subset / "quarantine").exists() and len(list((busi_subset / "images").iterdir())) == 24
    splits = json.loads((shards / "splits.json").read_text())
    used = set(splits["train"]) | set(splits["val"]) | set(splits["test"])
    assert not used & set(removed) and len(used) == 24 - len(removed)
    plan = json.loads((shards / "duplicates.json").read_text())
    assert plan["policy"] == policy and sorted(plan["removed"]) == sorted(removed) and plan["merged"] == merged
    return splits


def test_busi_duplicate_pair_quarantined_through_the_pipeline(busi_subset, home, tmp_path):
    """The whole pipeline on real scans, its duplicates policy recorded with the run (tags, artifact) and its
    figures per BUSI class in the summary, on the screen and in MLflow."""
    proc, summary = run(home, busi_subset, "quarantine", tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert summary["promoted"]
    run_dir = Path(summary["outputs"])
    splits = _check_policy_on_the_snapshot(run_dir / "validate-data" / "dataset",
                                           run_dir / "preprocess-data" / "preprocessed", busi_subset, PAIR,
                                           "quarantine", {})

    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run_id = json.loads((run_dir / "train-model" / "executor_output.json").read_text())["parameterValues"]["run_id"]
    data = client.get_run(run_id).data
    tags = data.tags
    classes = summary["breakdown"]["classes"]
    assert set(classes) <= {"benign", "malignant"} and sum(c["images"] for c in classes.values()) == len(splits["test"])
    for name in classes:
        assert f"test_iou_{name}" in data.metrics and f"test_iou_{name}_ci95_low" in data.metrics
        assert f"    {name:<11} : {classes[name]['images']} images, IoU" in proc.stdout
    assert data.metrics["test_lesion_images"] == len(splits["test"]) and data.metrics["test_normal_images"] == 0
    assert tags["data_duplicates_policy"] == "quarantine" and tags["data_duplicates_removed"] == "2"
    assert json.loads(tags["data_duplicates_merged"]) == {}
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="data/duplicates.json",
                                                dst_path=str(tmp_path / "dl"))
    recorded = json.loads(Path(local).read_text())
    [group] = recorded["groups"]
    assert group["stems"] == PAIR and group["conflict"] and group["classes"] == {
        "benign_0433": "benign", "malignant_0145": "malignant"}


@pytest.mark.parametrize("policy,removed,merged", [
    ("merge", ["malignant_0145"], {"benign_0433": ["malignant_0145"]}),
    ("keep-one", ["malignant_0145"], {}),
])
def test_busi_duplicate_pair_under_the_other_policies(busi_subset, tmp_path, monkeypatch, policy, removed, merged):
    """merge and keep-one through the pipeline's own data steps (what they change ends there; recording the plan
    with the run is the quarantine test's): one image of the pair left, its masks merged or not."""
    from cmunext.config import load_config
    from cmunext.steps.data import preprocess, snapshot_data, validate

    monkeypatch.setenv("CMUNEXT_HOME", str(tmp_path / "home"))
    cfg = load_config(ROOT / "configs" / "ci-tiny.yaml", [f"data.source={busi_subset}", f"data.duplicates={policy}"])
    snapshot, shards = tmp_path / "dataset", tmp_path / "preprocessed"
    snapshot_data(cfg, "workspace", ROOT, snapshot)
    validate(cfg, snapshot, tmp_path / "report")
    preprocess(cfg, snapshot, shards, "workspace")
    _check_policy_on_the_snapshot(snapshot, shards, busi_subset, removed, policy, merged)


def test_busi_duplicate_pair_fails_with_the_fix_under_fail(busi_subset, home, tmp_path):
    proc, _ = run(home, busi_subset, "fail", tmp_path)
    assert proc.returncode == 2
    error = proc.stderr.split("cmunext: error:")[-1]
    assert "validate-data" in error and "Traceback" not in error
    log = proc.stdout + proc.stderr
    assert "no exact duplicate images" in log and "images/benign_0433.png" in log
    assert "fix: set data.duplicates to quarantine, merge or keep-one" in log
