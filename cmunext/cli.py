"""The `cmunext` command. Each subcommand imports its heavy dependencies lazily, so
`cmunext --help` and `import cmunext` stay fast."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_config
from .data.imageio import DataError

log = logging.getLogger("cmunext")


def _config(args):
    return load_config(args.config, args.set)


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML run configuration (configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")


# ---- data -------------------------------------------------------------------------------------

def cmd_data_synth(args) -> int:
    from .data.synth import write_synthetic_dataset
    out = write_synthetic_dataset(args.out, args.n, args.seed, args.empty_fraction)
    print(f"wrote {args.n} synthetic image/mask pairs to {out}")
    return 0


def cmd_data_split(args) -> int:
    from .data.split import make_split, write_split
    split = make_split(args.dir, tuple(args.ratios), args.seed)
    write_split(split, args.out)
    info = split["info"]
    print(f"{args.out}: train {len(split['train'])}, val {len(split['val'])}, test {len(split['test'])} "
          f"({info['groups']} groups, {info['near_duplicate_groups']} near-duplicate groups "
          f"holding {info['images_in_near_duplicate_groups']} images)")
    return 0


# ---- train / predict --------------------------------------------------------------------------

def cmd_train(args) -> int:
    from .engine.trainer import train
    from .prepare import prepare
    cfg = _config(args)
    data_dir = Path(args.data) if args.data else prepare(cfg)[0]
    result = train(cfg, data_dir, args.out, resume=args.resume)
    print(json.dumps({"weights": str(result.weights), "best_epoch": result.best_epoch,
                      "best_val_iou": round(result.best_val_iou, 4),
                      "images_per_second": round(result.images_per_second, 2)}, indent=1))
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_files
    written = predict_files(args.images, args.model, args.out, args.threshold)
    print(f"wrote {len(written)} masks and overlays to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmunext", description="CMUNeXt lesion segmentation: data, training, pipeline, serving")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset import, synthesis, validation, splitting, versioning")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("synth", help="write a synthetic ultrasound-like dataset")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--empty-fraction", type=float, default=0.0, help="share of images without a lesion")
    p.set_defaults(func=cmd_data_synth)
    p = dsub.add_parser("split", help="deterministic, near-duplicate-grouped train/val/test split")
    p.add_argument("dir")
    p.add_argument("--out", required=True)
    p.add_argument("--ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=41)
    p.set_defaults(func=cmd_data_split)

    p = sub.add_parser("train", help="train a model outside the pipeline (same engine)")
    _add_config_args(p, required=True)
    p.add_argument("--out", required=True, help="output folder: checkpoints/, model.safetensors, metrics.json")
    p.add_argument("--data", help="a preprocessed artifact folder (default: prepare the config's data.source)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="masks and overlays for images")
    p.add_argument("images", nargs="+")
    p.add_argument("--model", required=True, help="model.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, default=0.5)
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"cmunext: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cmunext: interrupted", file=sys.stderr)
        return 130
