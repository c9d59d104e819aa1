"""Final model weights as safetensors (no pickle), with what is needed to rebuild the model."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from ..models import create_model
from ..models.ensemble import LogitAveraged, member_count


def save_weights(model: torch.nn.Module, path: str | Path, variant: str, image_size: int, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "variant": variant,
        "in_channels": str(model.in_channels),
        "num_classes": str(model.num_classes),
        "image_size": str(image_size),
        "extra": json.dumps(extra or {}, sort_keys=True),
        "members": str(member_count(model)),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    missing = {"variant", "in_channels", "num_classes", "image_size"} - meta.keys()
    if missing:
        raise ValueError(f"{path}: not a cmunext weights file (metadata lacks {', '.join(sorted(missing))})")
    return {
        "variant": meta["variant"],
        "in_channels": int(meta["in_channels"]),
        "num_classes": int(meta["num_classes"]),
        "image_size": int(meta["image_size"]),
        "members": int(meta.get("members", "1")),  # files written before ensembles: one network
        "extra": json.loads(meta.get("extra", "{}")),
    }


def load_weights(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from a weights file (one network, or an ensemble of them: metadata `members`); returns
    (model in eval mode, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path}")
    try:
        meta = read_metadata(path)
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path}: not a readable safetensors weights file ({exc})") from None
    networks = [create_model(meta["variant"], meta["in_channels"], meta["num_classes"]) for _ in range(meta["members"])]
    model = networks[0] if len(networks) == 1 else LogitAveraged(networks)
    model.load_state_dict(load_file(str(path)))
    return model.eval(), meta
