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

from ..config import RunConfig, config_to_dict
from ..data.dataset import ShardDataset
from ..data.transforms import eval_transform, train_transform
from ..losses import BCEDiceLoss
from ..models import count_parameters, create_model
from .checkpoint import CheckpointDir
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


def train(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False,
          callbacks: list[Callback] | tuple = (), progress: bool = True) -> TrainResult:
    """Train on a preprocessed artifact (cmunext.data.preprocess) and write OUT/model.safetensors + metrics.json."""
    out_dir = Path(out_dir)
    rank, world, local_rank = _distributed()
    main = rank == 0
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(tc.seed)

    channels = cfg.model.in_channels
    train_ds = ShardDataset(data_dir, "train", train_transform(cfg.data.image_size, channels, cfg.data.augment),
                            channels=channels, seed=tc.seed)
    val_ds = ShardDataset(data_dir, "val", eval_transform(cfg.data.image_size, channels), channels=channels)
    sampler = (DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=tc.seed)
               if world > 1 else EpochSampler(len(train_ds), tc.seed, train_ds.has_lesion(), tc.min_lesion_share))
    loader_kw = dict(num_workers=tc.workers, persistent_workers=tc.workers > 0, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_ds, batch_size=tc.batch_size, sampler=sampler, **loader_kw)
    val_loader = DataLoader(val_ds, batch_size=max(1, tc.batch_size), shuffle=False, **loader_kw)

    model = create_model(cfg.model.variant, channels, cfg.model.num_classes).to(device)
    net = model
    if world > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    loss_fn = BCEDiceLoss()
    use_amp = tc.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    ckpt = CheckpointDir(out_dir / "checkpoints")
    start_epoch, iteration, best_iou, best_epoch, best_state, history = 0, 0, -1.0, -1, None, []
    if resume and (state := ckpt.load_latest()) is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, iteration = state["epoch"], state["iteration"]
        best_iou, best_epoch, best_state, history = state["best_val_iou"], state["best_epoch"], state["best_model"], state["history"]

    max_iter = tc.epochs * len(train_loader)
    if main:
        log.info("training %s (%s parameters) on %d images, validating on %d; %d epochs x %d iterations",
                 cfg.model.variant, f"{count_parameters(model):,}", len(train_ds), len(val_ds), tc.epochs, len(train_loader))
    seen, step_time, wait_time = 0, 0.0, 0.0
    for epoch in range(start_epoch, tc.epochs):
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        net.train()
        total_loss, n_images, t_epoch = 0.0, 0, time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="batch", leave=False,
                   disable=not (progress and main), dynamic_ncols=True)
        t_wait = time.perf_counter()
        for images, masks in bar:
            wait_time += time.perf_counter() - t_wait
            lr = tc.lr * (1 - iteration / max_iter) ** tc.poly_power
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext():
                loss = loss_fn(net(images).float(), masks)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            iteration += 1
            total_loss += loss.item() * len(images)
            n_images += len(images)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
            t_wait = time.perf_counter()
        epoch_seconds = time.perf_counter() - t_epoch
        step_time += epoch_seconds
        seen += n_images
        metrics = {"epoch": epoch + 1, "train_loss": total_loss / max(n_images, 1), "lr": lr,
                   "epoch_seconds": epoch_seconds, "train_images_per_second": n_images * world / epoch_seconds}
        t_val = time.perf_counter()
        metrics.update(validate(model, val_loader, device, cfg.eval.threshold, loss_fn))
        metrics["val_seconds"] = time.perf_counter() - t_val
        if metrics["val_iou"] > best_iou:
            best_iou, best_epoch = metrics["val_iou"], epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        history.append(metrics)
        if main:
            log.info("epoch %d/%d: train_loss %.4f val_loss %.4f val_iou %.4f (best %.4f @ %d) %.1f img/s",
                     epoch + 1, tc.epochs, metrics["train_loss"], metrics["val_loss"], metrics["val_iou"],
                     best_iou, best_epoch, metrics["train_images_per_second"])
            ckpt.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                       "epoch": epoch + 1, "iteration": iteration, "best_val_iou": best_iou,
                       "best_epoch": best_epoch, "best_model": best_state, "history": history})
            for cb in callbacks:
                cb.on_epoch_end(epoch + 1, metrics)

    weights = out_dir / "model.safetensors"
    result = TrainResult(out_dir, weights, best_epoch, best_iou, history,
                         images_per_second=seen * world / step_time if step_time else 0.0,
                         data_wait_share=wait_time / step_time if step_time else 0.0)
    if main:
        model.load_state_dict(best_state)
        save_weights(model, weights, cfg.model.variant, cfg.data.image_size,
                     extra={"best_epoch": best_epoch, "best_val_iou": best_iou})
        summary = {"variant": cfg.model.variant, "parameters": count_parameters(model), "best_epoch": best_epoch,
                   "best_val_iou": best_iou, "best_val_dice": 2 * best_iou / (1 + best_iou),
                   "epochs": tc.epochs, "world_size": world, "images_per_second": result.images_per_second,
                   "data_wait_share": result.data_wait_share, "history": history, "config": config_to_dict(cfg)}
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    if world > 1:
        dist.barrier()
    return result
