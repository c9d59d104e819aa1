"""Training throughput (images/s) per CMUNeXt variant at 256x256, batch 8, on this machine:
forward + BCE-Dice loss + backward + SGD step, after warm-up, on in-memory tensors.

    python benchmarks/training_throughput.py [--steps 5] [--size 256] [--batch 8]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import cmunext
from cmunext.losses import BCEDiceLoss


def images_per_second(variant: str, size: int, batch: int, steps: int, warmup: int = 2) -> float:
    torch.manual_seed(0)
    model = cmunext.create_model(variant).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = BCEDiceLoss()
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.7).float()
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    return batch / times[len(times) // 2]  # median step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    rows = {}
    for variant in cmunext.list_models():
        rows[variant] = images_per_second(variant, args.size, args.batch, args.steps)
        print(f"{variant:>10}: {rows[variant]:.2f} images/s (batch {args.batch}, {args.size}x{args.size}, "
              f"{torch.get_num_threads()} threads)", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
