"""Training engine behaviour: learning, kill-and-resume equivalence, DDP, prediction, CLI errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, VENV_BIN
from safetensors.torch import load_file

from cmunext.config import load_config
from cmunext.data.layout import list_pairs
from cmunext.data.preprocess import preprocess
from cmunext.engine.checkpoint import CheckpointDir
from cmunext.engine.trainer import train

CI_TINY = ROOT / "configs" / "ci-tiny.yaml"


def cli(*args, env=None, timeout=300):
    return subprocess.run([str(VENV_BIN / "cmunext"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_artifact(synth_dataset, tmp_path_factory) -> Path:
    stems = list_pairs(synth_dataset)
    out = tmp_path_factory.mktemp("pre")
    preprocess(synth_dataset, {"train": stems[:16], "val": stems[16:20], "test": stems[20:]}, out, 64, progress=False)
    return out


def test_overfits_a_few_images(tmp_path):
    """Validating on the training images: loss falls and IoU on them passes 0.9."""
    from cmunext.data.synth import write_synthetic_dataset
    src = write_synthetic_dataset(tmp_path / "data", 4, seed=3, progress=False)
    stems = list_pairs(src)
    preprocess(src, {"train": stems, "val": stems, "test": []}, tmp_path / "pre", 64, progress=False)
    # one batch of all four images: BatchNorm's running statistics converge to the batch's
    cfg = load_config(CI_TINY, ["data.augment=false", "train.epochs=80", "train.lr=0.1", "train.batch_size=4"])
    result = train(cfg, tmp_path / "pre", tmp_path / "out", progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.best_val_iou > 0.9


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_sigkill_mid_run_then_resume_gives_identical_weights(tiny_artifact, tmp_path):
    args = ["-q", "train", "--config", str(CI_TINY), "--data", str(tiny_artifact), "--set", "train.epochs=4"]
    reference = cli(*args, "--out", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([str(VENV_BIN / "cmunext"), *args, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.pt.sha256").exists():  # killed after epoch 1, inside epoch 2
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists()

    resumed = cli(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(tmp_path / "ref" / "model.safetensors"), _weights(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_hist = json.loads((tmp_path / "ref" / "metrics.json").read_text())["history"]
    res_hist = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["val_iou"] for h in ref_hist] == [h["val_iou"] for h in res_hist]


def test_corrupt_checkpoint_falls_back_to_previous(tiny_artifact, tmp_path):
    cfg = load_config(CI_TINY, ["train.epochs=2"])
    train(cfg, tiny_artifact, tmp_path, progress=False)
    ckpt = CheckpointDir(tmp_path / "checkpoints")
    data = ckpt.last.read_bytes()
    ckpt.last.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or a kill during copy
    state = ckpt.load_latest()
    assert state is not None and state["epoch"] == 1


def test_ddp_two_cpu_processes(tiny_artifact, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "cmunext", "-q", "train",
         "--config", str(CI_TINY), "--data", str(tiny_artifact), "--out", str(tmp_path),
         "--set", "train.threads=1", "--set", "train.batch_size=2"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert len(metrics["history"]) == 2
    assert (tmp_path / "model.safetensors").exists()


def test_predict_writes_masks_at_original_size(tiny_artifact, synth_dataset, tmp_path):
    cfg = load_config(CI_TINY, ["train.epochs=1"])
    result = train(cfg, tiny_artifact, tmp_path / "run", progress=False)
    images = sorted((synth_dataset / "images").glob("*.png"))[:2]
    proc = cli("predict", *map(str, images), "--model", str(result.weights), "--out", str(tmp_path / "pred"))
    assert proc.returncode == 0, proc.stderr
    from PIL import Image
    for image in images:
        mask = Image.open(tmp_path / "pred" / f"{image.stem}_mask.png")
        assert mask.size == Image.open(image).size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert (tmp_path / "pred" / f"{image.stem}_overlay.png").exists()


@pytest.mark.parametrize("args,message", [
    (["train", "--config", "nope.yaml", "--out", "x"], "config file not found: nope.yaml"),
    (["train", "--config", str(CI_TINY), "--out", "x", "--set", "train.epoch=1"], "train.epoch: unknown key"),
    (["train", "--config", str(CI_TINY), "--out", "x", "--set", "data.source=/no/such/dir"], "/no/such/dir"),
    (["predict", "missing.png", "--model", "nope.safetensors", "--out", "x"], "nope.safetensors"),
    (["data", "split", "/no/such/dir", "--out", "s.json"], "/no/such/dir"),
])
def test_cli_errors_are_clear(args, message, tmp_path):
    proc = cli(*args, env={"CMUNEXT_HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_normal_images_train_and_are_scored_apart(tmp_path):
    """A set where half the images are normal (empty masks): training is well defined (finite loss; lesions
    still drawn), and `cmunext evaluate` reports lesion and normal images apart."""
    from cmunext.data.synth import write_synthetic_dataset
    data = write_synthetic_dataset(tmp_path / "data", 24, seed=3, empty_fraction=0.5, progress=False)
    stems = list_pairs(data)
    pre = tmp_path / "pre"
    preprocess(data, {"train": stems[:16], "val": stems[16:20], "test": stems[20:]}, pre, 64, progress=False)
    result = train(load_config(CI_TINY, ["train.epochs=2"]), pre, tmp_path / "run", progress=False)
    assert all(np.isfinite(h["train_loss"]) and h["train_loss"] < 2 for h in result.history)
    proc = cli("evaluate", "--model", str(result.weights), "--data", str(data), "--json", str(tmp_path / "ev.json"),
               "--config", str(CI_TINY))
    assert proc.returncode == 0, proc.stderr
    b = json.loads((tmp_path / "ev.json").read_text())["breakdown"]
    normal = sum(1 for s in stems if not np.asarray(__import__("PIL.Image").Image.open(data / "masks" / f"{s}.png")).any())
    assert b["normal"]["images"] == normal and b["lesion"]["images"] == 24 - normal and 0 < normal < 24
    assert 0 <= b["detection"]["specificity"]["value"] <= 1 and b["normal"]["false_positive_area"] is not None
    assert f"normal      : {normal} images, predicted empty" in proc.stdout
