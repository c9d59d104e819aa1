"""`cmunext evaluate`: metrics and latency of a weights file on a dataset, or K-fold cross-validation."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from .common import EXIT_OK, add_config_args, config
from .summaries import breakdown_lines, ci, cv_line


def evaluate(args) -> int:
    cfg = config(args)
    if args.folds:
        return _folds(cfg, args)
    if not args.model:
        raise ValueError("cmunext evaluate needs --model (or --folds K to cross-validate)")
    result, rows = _score(cfg, args)
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "per_image": rows}, indent=1))
    m, lat = result["metrics"], result["latency"]
    print(f"{len(rows)} images: IoU {ci(m['iou'])}, Dice {ci(m['dice'])}, pooled IoU {m['pooled_iou']['value']:.4f}, "
          f"HD95 {m['hd95']['value']:.1f} px; latency p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms "
          f"({lat['artifact']})")
    for line in breakdown_lines(result["breakdown"]):
        print(line)
    return EXIT_OK


def _score(cfg, args) -> tuple[dict, list[dict]]:
    """Every image of --data (or of --split's list): per-image rows, their summary and the served latency."""
    from ..data.duplicates import read_classes
    from ..data.layout import list_pairs
    from ..evaluation import breakdown, latency_ms, score_images, summarize
    from ..predict import Predictor
    from ..serving_artifact import serving_runner

    stems = json.loads(Path(args.split).read_text())[args.split_name] if args.split else list_pairs(args.data)
    predictor = Predictor(args.model, cfg.eval.threshold)
    rows = score_images(predictor.probabilities, args.data, stems, cfg.eval.threshold, progress=not args.quiet)
    with tempfile.TemporaryDirectory() as tmp:
        run, artifact = serving_runner(args.model, tmp)
        lat = latency_ms(run, cfg.eval.latency_runs, cfg.eval.latency_warmup)
    return {"images": len(rows), "metrics": summarize(rows, cfg.eval.bootstrap), "latency": {**lat, "artifact": artifact},
            "breakdown": breakdown(rows, read_classes(Path(args.data)), cfg.eval.bootstrap)}, rows


def _folds(cfg, args) -> int:
    """K-fold grouped CV on the images outside the test split of --split, DIR/splits.json, or a split made now."""
    from ..cross_validation import cross_validate
    from ..data.duplicates import read_classes
    from ..data.split import make_split, read_split_file
    data = Path(args.data)
    classes = read_classes(data)
    frozen = Path(args.split) if args.split else data / "splits.json"
    split = (read_split_file(frozen) if frozen.is_file() else
             make_split(data, cfg.data.split_ratios, cfg.data.split_seed, progress=False, classes=classes))
    with tempfile.TemporaryDirectory() as tmp:
        cv = cross_validate(cfg, data, split, args.folds, Path(tmp), classes)
    if args.json:
        Path(args.json).write_text(json.dumps(cv, indent=1))
    for r in cv["per_fold"]:
        print(f"  fold {r['fold']}: {r['images']} images, IoU {r['iou']:.4f}, Dice {r['dice']:.4f} (best epoch {r['best_epoch']})")
    print(cv_line(cv))
    return EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics and latency of a model on a dataset, or K-fold cross-validation")
    p.add_argument("--model", help="model.safetensors")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="train and score K models on grouped folds of the images outside the test split (--config's recipe)")
    p.add_argument("--data", required=True, help="dataset folder in the project layout")
    p.add_argument("--split", help="splits.json to take the stems from")
    p.add_argument("--split-name", default="test")
    p.add_argument("--json", help="write the full result (with per-image rows) here")
    add_config_args(p)
    p.set_defaults(func=evaluate)
