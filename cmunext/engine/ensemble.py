"""An ensemble of fold models (train.ensemble, train.folds), trained as the train step's one model.

The train split is cut into `folds` folds, whole near-duplicate groups only and lesion/normal images spread evenly
(as the split itself is made). Member i trains on every fold but fold i and picks its best epoch on fold i; the
first `ensemble` folds make members. The validation split stays unseen by every member, so the ensemble's own
validation figure and the lesion-free rule chosen on it (cmunext/no_lesion.py) mean what they mean for one model.
The members' weights go into one file (cmunext/models/ensemble.py): evaluated, exported and served as one network.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from cmunext_serving.fingerprint import dhash

from ..config import RunConfig
from ..data.dataset import ShardDataset
from ..data.transforms import eval_transform
from ..models.ensemble import LogitAveraged
from .trainer import Callback, TrainResult, validate
from .weights import load_weights, save_weights

log = logging.getLogger(__name__)


def _groups(ds: ShardDataset) -> list[list[str]]:
    """The train split's indices (as strings) grouped as the split groups stems: identical pixels or near-duplicates."""
    from ..data.split import group_stems

    images = {str(i): ds.load(i)[0] for i in range(len(ds))}
    return group_stems({k: {"sha256": hashlib.sha256(im.tobytes()).hexdigest(), "dhash": dhash(im)}
                        for k, im in images.items()})


def member_folds(data_dir: str | Path, k: int, seed: int) -> list[list[int]]:
    """K folds of the train split's indices: whole groups, lesion and normal images spread evenly."""
    from ..cross_validation import folds

    ds = ShardDataset(data_dir, "train")
    lesion = ds.has_lesion()
    groups = _groups(ds)
    kinds = {str(i): "lesion" if lesion[i] else "normal" for i in range(len(ds))}
    return [[int(i) for i in f] for f in folds(groups, k, seed, kinds)]


def fold_shards(data_dir: str | Path, held: list[int], out: str | Path) -> Path:
    """A shards folder whose train split is the train split less HELD and whose val split is HELD."""
    src, out = ShardDataset(data_dir, "train"), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    held_out = set(held)
    parts = {"train": [i for i in range(len(src)) if i not in held_out], "val": sorted(held_out)}
    manifest["splits"] = {}
    for name, idx in parts.items():
        pairs = [src.load(i) for i in idx]
        np.save(out / f"{name}-00000.images.npy", np.stack([p[0] for p in pairs]))
        np.save(out / f"{name}-00000.masks.npy", np.stack([p[1] for p in pairs]))
        shard = {"images": f"{name}-00000.images.npy", "masks": f"{name}-00000.masks.npy", "count": len(idx)}
        manifest["splits"][name] = {"shards": [shard], "stems": [src.stems[i] for i in idx],
                                    "stats": {"count": len(idx)}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


class _Stepped:
    """Member I's epochs on one continuous axis (step I * epochs + epoch), so one run holds every member's curve."""

    def __init__(self, callback: Callback, offset: int, member: int) -> None:
        self.callback, self.offset, self.member = callback, offset, member

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.callback.on_epoch_end(self.offset + epoch, {**metrics, "member": self.member})


def save_ensemble(members: list[Path], out: Path, cfg: RunConfig, extra: dict) -> Path:
    networks = [load_weights(p)[0] for p in members]
    return save_weights(LogitAveraged(networks), out, cfg.model.variant, cfg.data.image_size, extra=extra)


def ensemble_val_iou(weights: Path, cfg: RunConfig, data_dir: str | Path) -> float:
    """The ensemble's IoU on the validation split, measured as the trainer measures one model's."""
    from torch.utils.data import DataLoader

    from ..losses import BCEDiceLoss
    model, _ = load_weights(weights)
    ds = ShardDataset(data_dir, "val", eval_transform(cfg.data.image_size, cfg.model.in_channels),
                      channels=cfg.model.in_channels)
    with torch.inference_mode():
        return validate(model, DataLoader(ds, batch_size=cfg.train.batch_size), torch.device("cpu"),
                        cfg.eval.threshold, BCEDiceLoss())["val_iou"]


def train_ensemble(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, *, resume: bool = True,
                   callbacks: list[Callback] | tuple = (), progress: bool = False) -> TrainResult:
    """Train train.ensemble fold models (each resumable on its own) and write OUT/model.safetensors, their ensemble."""
    from .launch import train_network

    tc, out_dir = cfg.train, Path(out_dir)
    parts = member_folds(data_dir, tc.folds, tc.seed)
    results = []
    for i, held in enumerate(parts[:tc.ensemble]):
        member_dir = out_dir / f"member-{i + 1}"
        shards = fold_shards(data_dir, held, member_dir / "data")
        log.info("ensemble member %d/%d: training on %d images, choosing its epoch on %d (fold %d of %d)",
                 i + 1, tc.ensemble, len(ShardDataset(shards, "train")), len(held), i + 1, tc.folds)
        member_cfg = cfg.model_copy(update={"train": tc.model_copy(update={"seed": tc.seed + i})})
        stepped = [_Stepped(cb, i * tc.epochs, i + 1) for cb in callbacks]
        results.append(train_network(member_cfg, shards, member_dir, resume=resume, callbacks=stepped,
                                     progress=progress))
        shutil.rmtree(member_dir / "data", ignore_errors=True)  # made again from the train split on a resume
    weights = save_ensemble([r.weights for r in results], out_dir / "model.safetensors", cfg,
                            extra={"members": [{"best_epoch": r.best_epoch, "fold_val_iou": r.best_val_iou}
                                               for r in results], "folds": tc.folds})
    val_iou = ensemble_val_iou(weights, cfg, data_dir)
    log.info("ensemble of %d: validation IoU %.4f (members on their own folds: %s)", len(results), val_iou,
             ", ".join(f"{r.best_val_iou:.4f}" for r in results))
    history = [{**h, "epoch": i * tc.epochs + h["epoch"], "member": i + 1}
               for i, r in enumerate(results) for h in r.history]
    return TrainResult(out_dir, weights, results[0].best_epoch, val_iou, history,
                       images_per_second=float(np.mean([r.images_per_second for r in results])),
                       data_wait_share=float(np.mean([r.data_wait_share for r in results])))
