"""The choices around the network that a recipe makes (train.* in the config), each measured in the BUSI ablation
(benchmarks/busi_ablation.py): the optimiser, the learning-rate schedule with its warm-up, and an exponential moving
average of the weights. The paper's recipe is the default: SGD, poly schedule, no warm-up, no average."""
from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..config import TrainConfig


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)


def learning_rate(tc: TrainConfig, iteration: int, max_iter: int, iters_per_epoch: int) -> float:
    """The rate of step ITERATION of MAX_ITER: linear warm-up over train.warmup_epochs, then poly or cosine decay."""
    warmup = min(tc.warmup_epochs * iters_per_epoch, max_iter - 1)
    if iteration < warmup:
        return tc.lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(max_iter - warmup, 1)
    if tc.schedule == "cosine":
        return tc.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return tc.lr * (1 - progress) ** tc.poly_power


def weight_average(model: torch.nn.Module, tc: TrainConfig) -> AveragedModel | None:
    """An exponential moving average of MODEL's weights and BatchNorm statistics (train.ema_decay; 0: none). When
    there is one, it is what is validated, kept as the best epoch and shipped."""
    if not tc.ema_decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
