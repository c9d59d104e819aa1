"""`cmunext train`: train a model outside the pipeline, with the pipeline's engine."""
from __future__ import annotations

import json
from pathlib import Path

from .common import EXIT_OK, add_config_args, config


def train(args) -> int:
    from ..engine.trainer import train as run_training
    from ..prepare import prepare
    cfg = config(args)
    data_dir = Path(args.data) if args.data else prepare(cfg)[0]
    result = run_training(cfg, data_dir, args.out, resume=args.resume)
    print(json.dumps({"weights": str(result.weights), "best_epoch": result.best_epoch,
                      "best_val_iou": round(result.best_val_iou, 4),
                      "images_per_second": round(result.images_per_second, 2)}, indent=1))
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model outside the pipeline (same engine)")
    add_config_args(p, required=True)
    p.add_argument("--out", required=True, help="output folder: checkpoints/, model.safetensors, metrics.json")
    p.add_argument("--data", help="a preprocessed artifact folder (default: prepare the config's data.source)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.set_defaults(func=train)
