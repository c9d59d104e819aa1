"""Training throughput per CMUNeXt variant at 256x256, batch 8, and the share of step time spent waiting for
data, for two input paths measured in the same process on the same images:

- baseline: a plain loop that decodes the PNGs from disk on every step, as the reference code does
  (FolderDataset: decode, resize, augment, normalise per access);
- ours: the pipeline's preprocessed, memory-mapped shards (ShardDataset: resized once, augment per access).

Each step is forward + BCE-Dice loss + backward + SGD, after warm-up; the data share is the time spent in
`next(loader)` over the whole step time. Images: BUSI when ../shared/datasets/busi exists, else synthetic
ones of BUSI-like size.

    python benchmarks/training_throughput.py [--steps 4] [--variants cmunext_s,cmunext,cmunext_l] [--json F]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import cmunext
from cmunext.data.dataset import FolderDataset, ShardDataset
from cmunext.data.layout import list_pairs
from cmunext.data.preprocess import preprocess
from cmunext.data.split import make_split
from cmunext.data.synth import write_synthetic_dataset
from cmunext.data.transforms import train_transform
from cmunext.losses import BCEDiceLoss

BUSI = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "busi"


def dataset(tmp: Path, n: int) -> tuple[Path, str]:
    if (BUSI / "images").is_dir():
        return BUSI, "BUSI"
    return write_synthetic_dataset(tmp / "synth", n, seed=0, progress=False), "synthetic"


def measure(variant: str, loaders: dict[str, DataLoader], steps: int, warmup: int = 1) -> dict:
    """Steps alternate between the loaders (same model and optimiser), so a busy moment slows both alike."""
    torch.manual_seed(0)
    model = cmunext.create_model(variant).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = BCEDiceLoss()
    iters = {name: iter(loader) for name, loader in loaders.items()}
    step_times = {name: [] for name in loaders}
    wait_times = {name: [] for name in loaders}
    for i in range(warmup + steps):
        for name, loader in loaders.items():
            t0 = time.perf_counter()
            try:
                x, y = next(iters[name])[:2]
            except StopIteration:
                iters[name] = iter(loader)
                x, y = next(iters[name])[:2]
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            if i >= warmup:
                step_times[name].append(time.perf_counter() - t0)
                wait_times[name].append(t1 - t0)
    out = {}
    for name, loader in loaders.items():
        step = statistics.median(step_times[name])
        out[name] = {"images_per_s": round(loader.batch_size / step, 2), "step_s": round(step, 3),
                     "data_share": round(sum(wait_times[name]) / sum(step_times[name]), 4),
                     "data_ms_per_batch": round(statistics.median(wait_times[name]) * 1000, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variants", default=",".join(cmunext.list_models()))
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cmunext-bench-train-") as tmp:
        tmp = Path(tmp)
        root, source = dataset(tmp, 64)
        stems = list_pairs(root)
        split = make_split(root, (0.8, 0.1, 0.1), 0, progress=False)
        t0 = time.perf_counter()
        preprocess(root, split, tmp / "shards", args.size, 3, progress=False)
        prep_s = time.perf_counter() - t0
        aug = train_transform(args.size, 3, augment=True)
        loaders = {
            "baseline_png": DataLoader(FolderDataset(root, split["train"], aug), batch_size=args.batch, shuffle=True,
                                       num_workers=0),
            "shards": DataLoader(ShardDataset(tmp / "shards", "train", aug), batch_size=args.batch, shuffle=True,
                                 num_workers=0),
        }
        rows = {}
        for variant in args.variants.split(","):
            rows[variant] = measure(variant, loaders, args.steps)
            r = rows[variant]
            r["speedup"] = round(r["shards"]["images_per_s"] / r["baseline_png"]["images_per_s"], 3)
            print(f"{variant:>10}: shards {r['shards']['images_per_s']:.2f} img/s (data {100 * r['shards']['data_share']:.1f}%)"
                  f" | PNG loop {r['baseline_png']['images_per_s']:.2f} img/s (data {100 * r['baseline_png']['data_share']:.1f}%)"
                  f" | x{r['speedup']:.2f}", flush=True)
    result = {"images": source, "train_images": len(split["train"]), "of": len(stems), "size": args.size,
              "batch": args.batch, "threads": torch.get_num_threads(), "preprocess_s": round(prep_s, 1),
              "variants": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
