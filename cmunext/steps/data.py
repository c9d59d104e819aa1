"""The validate and preprocess steps: the run's own snapshot of one dataset version, checked, split and sharded."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..config import RunConfig
from .common import DUPLICATES_REPORT, StepFailed


def snapshot_data(cfg: RunConfig, revision: str, project_root: str | Path, dest: str | Path) -> dict:
    """Copy exactly the requested dataset version into `dest`; returns {revision, md5, files}, with
    the md5 DVC records for a folder (so a workspace snapshot of data/ matches data.dvc)."""
    from ..data.versioning import dataset_md5
    from ..prepare import resolve_source

    dest = Path(dest)
    if revision not in ("", "workspace"):
        from ..data.source_repo import local_checkout
        from ..data.versioning import materialize
        with local_checkout(project_root) as root:  # a path, or a git URL on a cluster
            return materialize(root, revision, dest)
    source = resolve_source(cfg, progress=False)
    shutil.rmtree(dest, ignore_errors=True)
    # symlinks are copied as links: the validator refuses those that lead outside the dataset
    shutil.copytree(source, dest, symlinks=True)
    digest = dataset_md5(dest)
    return {"revision": "workspace", "md5": digest["md5"], "files": digest["files"], "source": str(source)}


def validate(cfg: RunConfig, data_dir: str | Path, report_dir: str | Path) -> dict:
    from ..data.validate import format_summary, validate_dataset

    d = cfg.data
    # the duplicates policy is carried out here, on the run's snapshot (never on the source folder)
    summary = validate_dataset(data_dir, report_dir, min_samples=d.min_samples, min_side=d.min_side,
                               max_side=d.max_side, allow_empty_masks=d.allow_empty_masks,
                               max_foreground=d.max_foreground, duplicates=d.duplicates, severity=d.severity,
                               apply_duplicates=True, progress=False)
    if not summary["success"]:
        raise StepFailed("data validation failed; the run stops before training:\n" + format_summary(summary))
    # what the duplicates policy did travels with the data, so the train step records it with the run
    shutil.copyfile(Path(report_dir) / "duplicates.json", Path(data_dir) / DUPLICATES_REPORT)
    return summary



def frozen_split(cfg: RunConfig, data_dir: Path) -> tuple[dict | None, str]:
    """The split the data carries (data.split_file, else DIR/splits.json), and where it came from."""
    from ..data.layout import list_pairs
    from ..data.split import read_split_file

    if cfg.data.split_file:
        path = Path(cfg.data.split_file)
        path = path if path.is_absolute() else data_dir / path
        return read_split_file(path, list_pairs(data_dir), cfg.data.split_fold), f"data.split_file {cfg.data.split_file}"
    if (data_dir / "splits.json").is_file():
        return read_split_file(data_dir / "splits.json"), "splits.json of the dataset"
    return None, "made now (no splits.json in the dataset: `cmunext data split DIR` freezes one)"


def preprocess(cfg: RunConfig, data_dir: str | Path, out_dir: str | Path, data_revision: str) -> dict:
    from ..data.duplicates import read_classes
    from ..data.preprocess import preprocess as write_shards
    from ..data.split import make_split, write_split

    data_dir = Path(data_dir)
    existing, source = frozen_split(cfg, data_dir)
    split = make_split(data_dir, cfg.data.split_ratios, cfg.data.split_seed, progress=False, existing=existing,
                       classes=read_classes(data_dir))
    split["info"]["source"] = source
    manifest = write_shards(data_dir, split, out_dir, cfg.data.image_size, cfg.model.in_channels,
                            data_revision=data_revision, progress=False)
    write_split(split, Path(out_dir) / "splits.json")
    if (data_dir / DUPLICATES_REPORT).is_file():
        shutil.copyfile(data_dir / DUPLICATES_REPORT, Path(out_dir) / DUPLICATES_REPORT)
    return {"split": split["info"], "stats": {k: v["stats"] for k, v in manifest["splits"].items()}}


