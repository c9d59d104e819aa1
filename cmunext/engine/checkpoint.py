"""Checkpoints that survive a kill: written atomically with a sha256 sidecar, loaded weights-only.

A truncated or corrupted checkpoint fails its checksum and the previous good one is used.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from cmunext_serving.fingerprint import sha256_file

log = logging.getLogger(__name__)


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, fsync, checksum sidecar, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    sidecar = path.with_suffix(path.suffix + ".sha256")
    sidecar_tmp = sidecar.with_suffix(".tmp")
    sidecar_tmp.write_text(digest + "\n")
    os.replace(sidecar_tmp, sidecar)


def verified_load(path: Path):
    """Load a checkpoint if its checksum matches, else None (and say why)."""
    sidecar = path.with_suffix(path.suffix + ".sha256")
    if not path.exists() or not sidecar.exists():
        return None
    if sha256_file(path) != sidecar.read_text().strip():
        log.warning("checkpoint %s fails its checksum (truncated or corrupted); ignoring it", path)
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointDir:
    """`last.pt` and `previous.pt` in a folder: resume from the newest one that verifies."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.last, self.previous = self.folder / "last.pt", self.folder / "previous.pt"

    def save(self, state: dict) -> None:
        if self.last.exists():
            os.replace(self.last, self.previous)
            sidecar = self.last.with_suffix(".pt.sha256")
            if sidecar.exists():
                os.replace(sidecar, self.previous.with_suffix(".pt.sha256"))
        atomic_save(state, self.last)

    def load_latest(self):
        for path in (self.last, self.previous):
            state = verified_load(path)
            if state is not None:
                log.info("resuming from %s (epoch %d done)", path, state["epoch"])
                return state
        return None
