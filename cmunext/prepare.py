"""From a config to a preprocessed training artifact: the steps `cmunext train` runs by itself
(the pipeline runs the same functions as separate, cached steps)."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from cmunext_serving.imageio import DataError

from .config import RunConfig
from .data.preprocess import preprocess
from .data.split import make_split, write_split
from .paths import state_path

log = logging.getLogger(__name__)


def resolve_source(cfg: RunConfig, progress: bool = True) -> Path:
    """The raw dataset folder for a config: generated once per (n, seed, normal share) for `synth`, else the given
    folder."""
    if cfg.data.source == "synth":
        normal = f"-normal{cfg.data.synth_normal_fraction:g}" if cfg.data.synth_normal_fraction else ""
        style = "" if cfg.data.synth_style == "linear" else f"-{cfg.data.synth_style}"
        folder = state_path("datasets", f"synth-n{cfg.data.synth_n}-s{cfg.data.synth_seed}{normal}{style}")
        done = folder.with_name(folder.name + ".complete")  # beside, not inside: it is not data
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            from .data.synth import (
                write_synthetic_dataset,  # scipy: only when synthesizing
            )
            write_synthetic_dataset(folder, cfg.data.synth_n, cfg.data.synth_seed, cfg.data.synth_normal_fraction,
                                    progress=progress, style=cfg.data.synth_style)
            done.touch()
        return folder
    folder = Path(cfg.data.source).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.source {cfg.data.source!r} is not a folder (use 'synth' or a dataset in the project layout)")
    return folder


def prepare(cfg: RunConfig, progress: bool = True) -> tuple[Path, dict]:
    """Split and preprocess the config's dataset; cached in the state folder by content of split and settings."""
    source = resolve_source(cfg, progress)
    split = make_split(source, cfg.data.split_ratios, cfg.data.split_seed, progress)
    key = hashlib.sha256(json.dumps(
        [str(source.resolve()), split, cfg.data.image_size, cfg.model.in_channels], sort_keys=True).encode()
    ).hexdigest()[:16]
    out = state_path("preprocessed", key)
    if not (out / "manifest.json").exists():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        preprocess(source, split, tmp, cfg.data.image_size, cfg.model.in_channels, progress=progress)
        write_split(split, tmp / "splits.json")
        tmp.rename(out)
    log.info("data: %s -> %s (%s)", source, out, json.dumps(split["info"]))
    return out, split
