"""The paper recipe (configs/paper.yaml) on a GPU machine that holds PyTorch but not the MLOps stack.

The project's own code does the work: the pipeline's split (near-duplicate groups, stratified by
mapping.csv, byte-identical conflicting pairs quarantined), its preprocessing, its trainer and its
test scorer (at each image's own size, as the evaluate step does). Only MLflow and the registry are
left out, so the figures are the test figures the pipeline would report for this recipe.

    here:   python scripts/paper_gpu.py pack configs/paper.yaml .gpu
            # .gpu/data: preprocessed shards; .gpu/test: the test split's original images and masks
    there:  python scripts/paper_gpu.py run configs/paper.yaml .gpu OUT --budget 420
            # OUT/results.json, OUT/metrics.json, OUT/training_curves.png, OUT/model.safetensors

--budget caps the training time: two probe epochs time one epoch, and when 300 do not fit, the run
trains the largest number of epochs that do, with the poly schedule over those epochs (results.json
records the epochs trained, so a shortened run is never mistaken for the recipe).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmunext.config import load_config  # noqa: E402
from cmunext.data import duplicates as dup  # noqa: E402
from cmunext.data.layout import find_file, list_pairs  # noqa: E402
from cmunext.data.preprocess import preprocess  # noqa: E402
from cmunext.data.split import make_split, write_split  # noqa: E402

log = logging.getLogger("paper_gpu")


def _quarantined(root: Path, stems: list[str]) -> list[str]:
    """Byte-identical images whose masks or classes disagree (data.duplicates: quarantine)."""
    by_hash: dict[str, list[str]] = {}
    for s in stems:
        by_hash.setdefault(hashlib.sha256(find_file(root / "images", s).read_bytes()).hexdigest(), []).append(s)
    groups = [sorted(g) for g in by_hash.values() if len(g) > 1]
    masks = {s: str(find_file(root / "masks", s).relative_to(root)) for g in groups for s in g}
    return dup.plan(root, groups, masks, "quarantine").removed


def pack(config: str, dest: Path) -> None:
    cfg = load_config(config)
    source = Path(cfg.data.source)
    stems = list_pairs(source)
    out = _quarantined(source, stems)
    # the split machinery reads the folder, so hand it a copy without the quarantined pairs (links, no bytes)
    view = dest / "source"
    shutil.rmtree(dest, ignore_errors=True)
    for sub in ("images", "masks"):
        (view / sub).mkdir(parents=True)
        for s in stems:
            if s not in out:
                f = find_file(source / sub, s)
                (view / sub / f.name).symlink_to(f.resolve())
    split = make_split(view, cfg.data.split_ratios, cfg.data.split_seed, classes=dup.read_classes(source))
    preprocess(view, split, dest / "data", cfg.data.image_size, cfg.model.in_channels)
    write_split(split, dest / "data" / "splits.json")
    for sub in ("images", "masks"):
        (dest / "test" / sub).mkdir(parents=True)
        for s in split["test"]:
            shutil.copy2(find_file(source / sub, s), dest / "test" / sub)
    shutil.copy2(source / "mapping.csv", dest / "test" / "mapping.csv")
    shutil.rmtree(view)
    print(json.dumps({"quarantined": out, "info": split["info"],
                      "counts": {k: len(split[k]) for k in ("train", "val", "test")}}, indent=1))


def run(config: str, packed: Path, out: Path, budget: float, workers: int) -> None:
    import torch

    from cmunext.engine.trainer import train
    from cmunext.evaluation import breakdown, score_images, summarize
    from cmunext.losses import loss_label
    from cmunext.pictures import training_curves
    from cmunext.predict import Predictor

    cfg = load_config(config)
    cfg.train.workers = workers
    torch.backends.cudnn.benchmark = True
    recipe_epochs = cfg.train.epochs
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"

    # probe: two epochs (the first carries cuDNN's autotuning and the workers' start), timed by the trainer
    t0 = time.monotonic()
    probe = cfg.model_copy(deep=True)
    probe.train.epochs = 2
    ends: list[float] = []
    clock = type("EpochClock", (), {"on_epoch_end": lambda self, epoch, metrics: ends.append(time.monotonic())})()
    train(probe, packed / "data", out / "probe", callbacks=[clock], progress=False)
    per_epoch = (ends[1] - ends[0]) * 1.05  # a whole epoch: steps, validation and checkpoint
    spent = time.monotonic() - t0
    epochs = max(1, min(recipe_epochs, int((budget - spent) / per_epoch)))
    cfg.train.epochs = epochs
    log.info("probe: %.2f s per epoch on %s; training %d of the recipe's %d epochs", per_epoch, device, epochs,
             recipe_epochs)

    t1 = time.monotonic()
    result = train(cfg, packed / "data", out / "train", progress=False)
    train_seconds = time.monotonic() - t1
    shutil.copy2(out / "train" / "model.safetensors", out / "model.safetensors")
    shutil.copy2(out / "train" / "metrics.json", out / "metrics.json")
    training_curves(result.history, out / "training_curves.png",
                    loss_label(cfg.train.lovasz_weight, cfg.train.deep_supervision))

    stems = json.loads((packed / "data" / "manifest.json").read_text())["splits"]["test"]["stems"]
    predictor = Predictor(out / "model.safetensors", cfg.eval.threshold, device="cuda" if device != "cpu" else "cpu")
    rows = score_images(predictor.probabilities, packed / "test", stems, cfg.eval.threshold, progress=False)
    results = {
        "config": config, "device": device, "torch": torch.__version__,
        "recipe_epochs": recipe_epochs, "epochs_trained": epochs, "train_seconds": round(train_seconds, 1),
        "images_per_second": round(result.images_per_second, 1), "best_epoch": result.best_epoch,
        "best_val_iou": round(result.best_val_iou, 4), "test_images": len(rows),
        "test": summarize(rows, cfg.eval.bootstrap),
        "breakdown": breakdown(rows, dup.read_classes(packed / "test"), cfg.eval.bootstrap),
        "per_image": rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    shutil.rmtree(out / "probe")
    shutil.rmtree(out / "train")
    print(json.dumps({k: v for k, v in results.items() if k not in ("per_image", "breakdown")}, indent=1))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack")
    a.add_argument("config")
    a.add_argument("dest", type=Path)
    b = sub.add_parser("run")
    b.add_argument("config")
    b.add_argument("packed", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("--budget", type=float, default=420, help="seconds of training, probe included")
    b.add_argument("--workers", type=int, default=6)
    args = p.parse_args()
    if args.command == "pack":
        pack(args.config, args.dest)
    else:
        run(args.config, args.packed, args.out, args.budget, args.workers)


if __name__ == "__main__":
    main()
