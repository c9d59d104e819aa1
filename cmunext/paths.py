"""Where run state lives: one folder, `.cmunext/` in the working directory or `$CMUNEXT_HOME`."""
from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    root = Path(os.environ.get("CMUNEXT_HOME") or Path.cwd() / ".cmunext").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def state_path(*parts: str) -> Path:
    p = state_dir().joinpath(*parts)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p
