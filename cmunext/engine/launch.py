"""Train in one process, or in several under torchrun (DDP) when the config asks for more than one.

The pipeline's train step calls `train_any`: with `train.processes` (or `train.accelerator_count`) above 1
it runs `torchrun --standalone --nproc_per_node=N -m cmunext train ...` in a child and reads the result
back from OUT/metrics.json; the per-epoch callbacks then get the history once the child has finished
(rank 0 is the only writer, and MLflow stays in this process).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..config import RunConfig, config_to_dict
from ..errors import CmunextError
from .trainer import Callback, TrainResult, train

log = logging.getLogger(__name__)


class DistributedTrainingFailed(CmunextError):
    """The torchrun child exited with an error; its last log lines are in the message."""


def processes_for(cfg: RunConfig) -> int:
    tc = cfg.train
    return tc.processes if tc.processes > 1 else max(1, tc.accelerator_count)


def torchrun_command(cfg_path: Path, data_dir: Path, out_dir: Path, nproc: int) -> list[str]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", f"--nproc_per_node={nproc}", "-m", "cmunext", "-q", "train",
            "--config", str(cfg_path), "--data", str(data_dir), "--out", str(out_dir), "--resume"]


def train_any(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, *, resume: bool = True,
              callbacks: list[Callback] | tuple = (), progress: bool = False) -> TrainResult:
    """The train step's model: one network, or an ensemble of fold models (train.ensemble, cmunext/engine/ensemble.py)."""
    if cfg.train.ensemble > 1:
        from .ensemble import train_ensemble
        return train_ensemble(cfg, data_dir, out_dir, resume=resume, callbacks=callbacks, progress=progress)
    return train_network(cfg, data_dir, out_dir, resume=resume, callbacks=callbacks, progress=progress)


def train_network(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, *, resume: bool = True,
                  callbacks: list[Callback] | tuple = (), progress: bool = False) -> TrainResult:
    """One network, in this process or in several under torchrun."""
    nproc = processes_for(cfg)
    if nproc == 1:
        return train(cfg, data_dir, out_dir, resume=resume, callbacks=callbacks, progress=progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = out_dir / "run_config.json"
    cfg_path.write_text(json.dumps(config_to_dict(cfg)))
    cmd = torchrun_command(cfg_path, Path(data_dir), out_dir, nproc)
    log.info("training with %d processes: %s", nproc, " ".join(cmd))
    # each process gets its share of the cores unless the config pins threads
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise DistributedTrainingFailed(f"torchrun with {nproc} processes exited with code {proc.returncode}:\n{tail}")
    summary = json.loads((out_dir / "metrics.json").read_text())
    for metrics in summary["history"]:
        for cb in callbacks:
            cb.on_epoch_end(metrics["epoch"], metrics)
    return TrainResult(out_dir, out_dir / "model.safetensors", summary["best_epoch"], summary["best_val_iou"],
                       summary["history"], images_per_second=summary["images_per_second"],
                       data_wait_share=summary["data_wait_share"])
