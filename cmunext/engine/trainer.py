"""The training engine: the reference recipe, checkpoint/resume, callbacks, and DDP under torchrun.

The best epoch is chosen on the validation split; the test split is never seen here.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from ..config import RunConfig, TrainConfig, config_to_dict
from ..data.dataset import ShardDataset
from ..data.transforms import eval_transform, train_transform
from ..losses import BCEDiceLoss
from ..models import count_parameters, create_model
from ..models.deep_supervision import DeeplySupervised
from .checkpoint import CheckpointDir
from .recipe import learning_rate, make_optimizer, weight_average
from .weights import save_weights

log = logging.getLogger(__name__)


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: dict) -> None: ...


@dataclass
class TrainResult:
    out_dir: Path
    weights: Path
    best_epoch: int
    best_val_iou: float
    history: list[dict] = field(default_factory=list)
    images_per_second: float = 0.0
    data_wait_share: float = 0.0


class EpochSampler(Sampler[int]):
    """A fresh permutation each epoch, a pure function of (seed, epoch): resumable. Given which images have a
    lesion and a MIN_LESION_SHARE that they fall short of, it draws N images with replacement instead, lesion
    images weighted up to that share, so that a set of mostly normal images still shows lesions."""

    def __init__(self, n: int, seed: int, has_lesion=None, min_lesion_share: float = 0.0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0
        self.weights = None
        if has_lesion is not None and 0 < int(has_lesion.sum()) < n:
            share = float(has_lesion.mean())
            if share < min_lesion_share:
                lesion_w, normal_w = min_lesion_share / share, (1 - min_lesion_share) / (1 - share)
                self.weights = torch.tensor(np.where(has_lesion, lesion_w, normal_w), dtype=torch.double)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            return iter(torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist())
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


@torch.no_grad()
def validate(model, loader, device, threshold: float, loss_fn) -> dict:
    """Mean per-image IoU/Dice and loss at the training resolution."""
    model.eval()
    logit_t = math.log(threshold / (1 - threshold))
    ious, losses = [], []
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        logits = model(images).float()
        losses.append(loss_fn(logits, masks).item() * len(images))
        pred, gt = (logits > logit_t).flatten(1), masks.flatten(1) > 0.5
        inter = (pred & gt).sum(1).double()
        union = (pred | gt).sum(1).double()
        ious.append((inter + 1e-5) / (union + 1e-5))
    iou = torch.cat(ious).mean().item()
    return {"val_loss": sum(losses) / len(loader.dataset), "val_iou": iou, "val_dice": 2 * iou / (1 + iou)}


@dataclass
class _Data:
    """The two splits and their loaders; the sampler is re-seeded every epoch (`set_epoch`)."""
    train_ds: ShardDataset
    val_ds: ShardDataset
    sampler: DistributedSampler | EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader


@dataclass
class _Session:
    """What one `train` call builds once and every epoch then uses."""
    cfg: RunConfig
    world: int
    main: bool  # rank 0: logs, checkpoints, callbacks and the final files
    device: torch.device
    data: _Data
    model: torch.nn.Module  # the bare model: validation, state dicts, the saved weights
    trained: torch.nn.Module  # what the optimizer trains and a checkpoint holds: `model`, or it with side heads
    net: torch.nn.Module  # what the training step runs: `trained`, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    use_amp: bool
    amp_dtype: torch.dtype
    ema: torch.nn.Module | None = None  # the weights' moving average (train.ema_decay), validated and shipped

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights that are validated, kept as the best epoch and saved."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class _RunState:
    """Where training stands: what a checkpoint carries (`epoch` is the next one to run), plus this process's
    throughput counters, which start afresh on resume."""
    epoch: int = 0
    iteration: int = 0
    best_iou: float = -1.0
    best_epoch: int = -1
    best_state: dict | None = None
    history: list[dict] = field(default_factory=list)
    lr: float | None = None  # the last step's learning rate
    seen: int = 0
    step_time: float = 0.0
    wait_time: float = 0.0


def _setup_device(tc: TrainConfig, local_rank: int) -> torch.device:
    """Threads, the device (this process's own GPU under torchrun) and the seed, before anything draws from it."""
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(tc.seed)
    return device


def _build_data(cfg: RunConfig, data_dir: str | Path, device: torch.device, rank: int, world: int) -> _Data:
    """Train (augmented, resumably shuffled or lesion-weighted, sharded under DDP) and val (plain) loaders."""
    tc, channels = cfg.train, cfg.model.in_channels
    augmented = train_transform(cfg.data.image_size, channels, cfg.data.augment, cfg.data.augment_policy)
    train_ds = ShardDataset(data_dir, "train", augmented, channels=channels, seed=tc.seed)
    val_ds = ShardDataset(data_dir, "val", eval_transform(cfg.data.image_size, channels), channels=channels)
    sampler = (DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=tc.seed)
               if world > 1 else EpochSampler(len(train_ds), tc.seed, train_ds.has_lesion(), tc.min_lesion_share))
    loader_kw = dict(num_workers=tc.workers, persistent_workers=tc.workers > 0, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_ds, batch_size=tc.batch_size, sampler=sampler, **loader_kw)
    val_loader = DataLoader(val_ds, batch_size=max(1, tc.batch_size), shuffle=False, **loader_kw)
    return _Data(train_ds, val_ds, sampler, train_loader, val_loader)


def _build_session(cfg: RunConfig, data: _Data, device: torch.device, world: int, local_rank: int,
                   main: bool) -> _Session:
    """Model (its training-only side heads, SyncBatchNorm + DDP when asked for), the optimizer, the loss, and AMP on CUDA:
    bfloat16 where supported, else float16 with a gradient scaler (a disabled no-op scaler otherwise)."""
    tc = cfg.train
    model = create_model(cfg.model.variant, cfg.model.in_channels, cfg.model.num_classes).to(device)
    if world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    trained = DeeplySupervised(model).to(device) if tc.deep_supervision else model
    net = trained
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(trained, device_ids=[local_rank] if device.type == "cuda" else None)
    optimizer = make_optimizer(trained, tc)
    loss_fn = BCEDiceLoss(lovasz_weight=tc.lovasz_weight)
    use_amp = tc.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return _Session(cfg, world, main, device, data, model, trained, net, optimizer, scaler, loss_fn, use_amp, amp_dtype,
                    weight_average(model, tc))


def _resume_state(ckpt: CheckpointDir, s: _Session) -> _RunState:
    """Load the latest good checkpoint into the model, optimizer and scaler; a fresh state when there is none."""
    if (state := ckpt.load_latest()) is None:
        return _RunState()
    s.trained.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scaler.load_state_dict(state["scaler"])
    if s.ema is not None and state.get("ema"):
        s.ema.load_state_dict(state["ema"])
    return _RunState(epoch=state["epoch"], iteration=state["iteration"], best_iou=state["best_val_iou"],
                     best_epoch=state["best_epoch"], best_state=state["best_model"], history=state["history"])


def _loss(s: _Session, output, masks: torch.Tensor) -> torch.Tensor:
    """The loss of the network's logits, plus train.deep_supervision times the side heads' mean loss when it has them."""
    if isinstance(output, torch.Tensor):
        return s.loss_fn(output.float(), masks)
    logits, sides = output
    side_loss = sum(s.loss_fn(side.float(), masks) for side in sides) / len(sides)
    return s.loss_fn(logits.float(), masks) + s.cfg.train.deep_supervision * side_loss


def train_step(s: _Session, images: torch.Tensor, masks: torch.Tensor, lr: float) -> torch.Tensor:
    """One optimizer step on a batch at learning rate LR; returns the batch's loss."""
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    images, masks = images.to(s.device, non_blocking=True), masks.to(s.device, non_blocking=True)
    with torch.autocast(s.device.type, dtype=s.amp_dtype) if s.use_amp else nullcontext():
        loss = _loss(s, s.net(images), masks)
    s.optimizer.zero_grad(set_to_none=True)
    s.scaler.scale(loss).backward()
    s.scaler.step(s.optimizer)
    s.scaler.update()
    if s.ema is not None:
        s.ema.update_parameters(s.model)
    return loss


def train_epoch(s: _Session, run: _RunState, epoch: int, max_iter: int, progress: bool) -> dict:
    """One pass over the training split at the recipe's learning rates (engine/recipe.py); returns the epoch's training
    metrics and adds to RUN's iteration and throughput counters (time waiting for data counted apart)."""
    tc = s.cfg.train
    s.data.sampler.set_epoch(epoch)
    s.data.train_ds.set_epoch(epoch)
    s.net.train()
    total_loss, n_images, t_epoch = 0.0, 0, time.perf_counter()
    bar = tqdm(s.data.train_loader, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="batch", leave=False,
               disable=not (progress and s.main), dynamic_ncols=True)
    t_wait = time.perf_counter()
    for images, masks in bar:
        run.wait_time += time.perf_counter() - t_wait
        run.lr = learning_rate(tc, run.iteration, max_iter, len(s.data.train_loader))
        loss = train_step(s, images, masks, run.lr)
        run.iteration += 1
        total_loss += loss.item() * len(images)
        n_images += len(images)
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{run.lr:.2e}")
        t_wait = time.perf_counter()
    epoch_seconds = time.perf_counter() - t_epoch
    run.step_time += epoch_seconds
    run.seen += n_images
    return {"epoch": epoch + 1, "train_loss": total_loss / max(n_images, 1), "lr": run.lr,
            "epoch_seconds": epoch_seconds, "train_images_per_second": n_images * s.world / epoch_seconds}


def eval_epoch(s: _Session, run: _RunState, epoch: int, metrics: dict) -> None:
    """Validate into METRICS, keep a CPU copy of the weights if this epoch is the best so far, and record it."""
    t_val = time.perf_counter()
    metrics.update(validate(s.evaluated, s.data.val_loader, s.device, s.cfg.eval.threshold, s.loss_fn))
    metrics["val_seconds"] = time.perf_counter() - t_val
    if metrics["val_iou"] > run.best_iou:
        run.best_iou, run.best_epoch = metrics["val_iou"], epoch + 1
        run.best_state = {k: v.detach().cpu().clone() for k, v in s.evaluated.state_dict().items()}
    run.history.append(metrics)


def _end_epoch(s: _Session, run: _RunState, epoch: int, metrics: dict, ckpt: CheckpointDir,
               callbacks: list[Callback] | tuple) -> None:
    """On rank 0: log the epoch, checkpoint everything a resume needs, then run the callbacks."""
    if not s.main:
        return
    log.info("epoch %d/%d: train_loss %.4f val_loss %.4f val_iou %.4f (best %.4f @ %d) %.1f img/s",
             epoch + 1, s.cfg.train.epochs, metrics["train_loss"], metrics["val_loss"], metrics["val_iou"],
             run.best_iou, run.best_epoch, metrics["train_images_per_second"])
    ckpt.save({"model": s.trained.state_dict(), "optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(),
               "epoch": epoch + 1, "iteration": run.iteration, "best_val_iou": run.best_iou,
               "best_epoch": run.best_epoch, "best_model": run.best_state, "history": run.history,
               "ema": s.ema.state_dict() if s.ema is not None else None})
    for cb in callbacks:
        cb.on_epoch_end(epoch + 1, metrics)


def _finish(s: _Session, run: _RunState, out_dir: Path) -> TrainResult:
    """Rank 0 writes the best epoch's weights and metrics.json; every rank then waits for it."""
    cfg, world = s.cfg, s.world
    weights = out_dir / "model.safetensors"
    result = TrainResult(out_dir, weights, run.best_epoch, run.best_iou, run.history,
                         images_per_second=run.seen * world / run.step_time if run.step_time else 0.0,
                         data_wait_share=run.wait_time / run.step_time if run.step_time else 0.0)
    if s.main:
        best_iou = run.best_iou
        s.model.load_state_dict(run.best_state)
        save_weights(s.model, weights, cfg.model.variant, cfg.data.image_size,
                     extra={"best_epoch": run.best_epoch, "best_val_iou": best_iou})
        summary = {"variant": cfg.model.variant, "parameters": count_parameters(s.model), "best_epoch": run.best_epoch,
                   "best_val_iou": best_iou, "best_val_dice": 2 * best_iou / (1 + best_iou),
                   "epochs": cfg.train.epochs, "world_size": world, "images_per_second": result.images_per_second,
                   "data_wait_share": result.data_wait_share, "history": run.history, "config": config_to_dict(cfg)}
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    if world > 1:
        dist.barrier()
    return result


def train(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
          callbacks: list[Callback] | tuple = (), progress: bool = True) -> TrainResult:
    """Train on a preprocessed artifact (cmunext.data.preprocess) and write OUT/model.safetensors + metrics.json."""
    out_dir = Path(out_dir)
    rank, world, local_rank = _distributed()
    tc = cfg.train
    device = _setup_device(tc, local_rank)
    data = _build_data(cfg, data_dir, device, rank, world)
    s = _build_session(cfg, data, device, world, local_rank, main=rank == 0)

    ckpt = CheckpointDir(out_dir / "checkpoints")
    run = _resume_state(ckpt, s) if resume else _RunState()

    max_iter = tc.epochs * len(data.train_loader)
    if s.main:
        log.info("training %s (%s parameters) on %d images, validating on %d; %d epochs x %d iterations",
                 cfg.model.variant, f"{count_parameters(s.model):,}", len(data.train_ds), len(data.val_ds), tc.epochs,
                 len(data.train_loader))
    for epoch in range(run.epoch, tc.epochs):
        metrics = train_epoch(s, run, epoch, max_iter, progress)
        eval_epoch(s, run, epoch, metrics)
        _end_epoch(s, run, epoch, metrics, ckpt, callbacks)
    return _finish(s, run, out_dir)
