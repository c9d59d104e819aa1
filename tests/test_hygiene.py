"""What is committed: no build outputs, archives, weights or data, and no large binaries outside the folders
that hold them on purpose (the offline Data Docs assets, the result plots); and no function in the shipped
code longer than a screen."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEVER = (".whl", ".tar.gz", ".tgz", ".zip", ".bento", ".pt", ".pth", ".ckpt", ".onnx", ".safetensors", ".db")
ON_PURPOSE = ("cmunext/data/docs_assets/", "docs/results/", "docs/images/")  # vendored web assets, plots
MAX_BINARY = 64 * 1024      # a binary this large outside ON_PURPOSE is an accident
MAX_ANY = 1024 * 1024       # nothing this large belongs in git: data goes through DVC, models through MLflow
SHIPPED = ("cmunext", "cmunext_serving", "pipelines", "components")
MAX_FUNCTION_LINES = 60     # a screen: longer functions are split along the steps they already have


def committed() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing committed to check")
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def is_binary(path: Path) -> bool:
    with path.open("rb") as f:
        return b"\0" in f.read(8192)


def offending(paths: list[str]) -> list[str]:
    found = []
    for rel in paths:
        path, size = ROOT / rel, (ROOT / rel).stat().st_size
        if rel.endswith(NEVER):
            found.append(f"{rel}: a build output, archive, model or database (kept out by .gitignore)")
        elif size > MAX_ANY:
            found.append(f"{rel}: {size:,} bytes (data goes through DVC, models through MLflow)")
        elif size > MAX_BINARY and not rel.startswith(ON_PURPOSE) and is_binary(path):
            found.append(f"{rel}: a {size:,}-byte binary outside {', '.join(ON_PURPOSE)}")
    return found


def test_nothing_committed_by_accident():
    assert offending(committed()) == []


def test_the_check_catches_a_stray_wheel_and_a_large_binary(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "pyflakes-4.1.0-py2.py3-none-any.whl").write_bytes(b"PK\0")
    (tmp_path / "blob.bin").write_bytes(b"\0" * (MAX_BINARY + 1))
    (tmp_path / "docs/results").mkdir(parents=True)
    (tmp_path / "docs/results/curve.png").write_bytes(b"\0" * (MAX_BINARY + 1))
    (tmp_path / "notes.md").write_text("x" * (MAX_BINARY + 1))
    found = offending(["pyflakes-4.1.0-py2.py3-none-any.whl", "blob.bin", "docs/results/curve.png", "notes.md"])
    assert [f.split(":")[0] for f in found] == ["pyflakes-4.1.0-py2.py3-none-any.whl", "blob.bin"]


def long_functions(files: list[Path]) -> list[str]:
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    return found


def test_no_function_is_longer_than_a_screen():
    files = [p for package in SHIPPED for p in sorted((ROOT / package).rglob("*.py"))]
    assert files and long_functions(files) == []
