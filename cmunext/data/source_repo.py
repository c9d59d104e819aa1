"""The project repository a data revision is read from: a local checkout, or a git URL (on a cluster the
component image has the code but not the repository's history, so the run names the repository to read
data.dvc from; DVC then fetches the files from the remote recorded at that revision)."""
from __future__ import annotations

import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .versioning import NotAGitRepoError


def is_remote(project_root: str | Path) -> bool:
    text = str(project_root)
    return "://" in text or text.startswith("git@")


@contextmanager
def local_checkout(project_root: str | Path) -> Iterator[Path]:
    """Yield a local path for `project_root`: itself, or a temporary clone of a git URL (history
    included: revisions may be any branch, tag or commit)."""
    if not is_remote(project_root):
        yield Path(project_root)
        return
    with tempfile.TemporaryDirectory(prefix="cmunext-repo-") as tmp:
        proc = subprocess.run(["git", "clone", "--quiet", str(project_root), tmp],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise NotAGitRepoError(f"cannot clone the project repository {project_root}: "
                                   f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'git failed'}")
        yield Path(tmp)
