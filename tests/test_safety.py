"""Hostile input beyond what test_validate.py and test_import.py cover, safe loading, and secrets.

- hostile files given to the importer and the validator's scan: 0-byte files, FIFOs, symlinks out of the folder,
  symlink loops, decompression bombs (pixel data and a compressed text chunk), headers that declare huge sizes,
  a folder named like an image: each refused with a message naming the file, never a crash or a hang;
- nothing untrusted is unpickled: an AST check of the code base (every torch.load is weights_only=True, no
  pickle/joblib/dill/unsafe YAML loads), and hostile checkpoints and weights files are refused without running
  their payload;
- secrets: distinctive fake credentials in the environment do not reach the compiled pipeline YAML; no key,
  private key or filled-in env file is in git. (The full search of logs, MLflow and the state folder after real
  pipeline runs is in test_faults.py, where those runs happen.)
"""
from __future__ import annotations

import ast
import hashlib
import io
import os
import pickle
import re
import shutil
import struct
import subprocess
import tempfile
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, VENV_BIN
from PIL import Image

from cmunext_serving.imageio import DataError

pytestmark = pytest.mark.timeout(120)  # a hang (a FIFO opened for reading) fails instead of blocking CI


# ---- hostile files ------------------------------------------------------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _gray_png(width: int, height: int, extra: bytes = b"", idat: bytes | None = None) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def text_chunk_bomb() -> bytes:
    """A valid 32x32 PNG carrying a zTXt chunk that inflates to 64 MB (PIL's limit for text is 1 MB)."""
    z = zlib.compressobj(9)
    block = bytes(1 << 20)
    payload = b"".join(z.compress(block) for _ in range(64)) + z.flush()
    return _gray_png(32, 32, _chunk(b"zTXt", b"Comment\0\0" + payload))


def pixel_bomb(side: int = 8000) -> bytes:
    """A valid side x side PNG of zeros (64 Mpixel) in ~60 kB, built row by row."""
    z = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    return _gray_png(side, side, idat=b"".join(z.compress(row) for _ in range(side)) + z.flush())


def huge_header_png() -> bytes:
    return _gray_png(2**31 - 1, 2**31 - 1, idat=zlib.compress(b""))


def huge_header_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + struct.pack(">HH", 60000, 60000) + data[sof + 9:]


def _plant(kind: str, path: Path, outside: Path) -> None:
    """Replace PATH (an image file of a dataset) by a hostile thing of KIND."""
    path.unlink()
    if kind == "empty file":
        path.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink out of the folder":
        outside.mkdir(exist_ok=True)
        target = outside / "secret.png"
        Image.fromarray(np.full((40, 40), 7, np.uint8)).save(target)
        path.symlink_to(target)
    elif kind == "broken symlink":
        path.symlink_to(path.parent / "does-not-exist.png")
    elif kind == "symlink loop":
        path.symlink_to(path)
    elif kind == "folder named like an image":
        path.mkdir()
    elif kind == "pixel bomb":
        path.write_bytes(pixel_bomb())
    elif kind == "text chunk bomb":
        path.write_bytes(text_chunk_bomb())
    elif kind == "PNG declaring 2^31-1 squared":
        path.write_bytes(huge_header_png())
    elif kind == "JPEG declaring 60000x60000":
        path.write_bytes(huge_header_jpeg())
    else:
        raise AssertionError(kind)


HOSTILE = {  # kind: words the importer's message must contain (besides the file's name)
    "empty file": "cannot decode image",
    "fifo": "not a regular file",
    "symlink out of the folder": "symlink leads outside the source folder",
    "broken symlink": "broken symlink",
    "symlink loop": "cannot resolve path",
    "pixel bomb": "exceeds the limit",
    "text chunk bomb": "cannot decode image",
    "PNG declaring 2^31-1 squared": "decompression bomb",
    "JPEG declaring 60000x60000": "decompression bomb",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_import_refuses_hostile_files(kind, synth_dataset, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_dataset, src)
    name = "synth_00003.jpg" if kind.startswith("JPEG") else "synth_00003.png"
    victim = src / "images" / name
    if victim.suffix == ".jpg":
        (src / "images" / "synth_00003.png").rename(victim)
    _plant(kind, victim, tmp_path / "outside")
    with pytest.raises(DataError) as e:
        from cmunext.data.importers import import_dataset
        import_dataset(src, tmp_path / "out", progress=False)
    message = str(e.value)
    assert name in message and HOSTILE[kind] in message, message
    assert "Traceback" not in message
    assert not (tmp_path / "out").exists()  # nothing half-imported
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.import-")]


SCAN_HOSTILE = {  # kind: words in the row's error
    "text chunk bomb": "cannot decode image",
    "symlink loop": "cannot resolve path",
    "broken symlink": "broken symlink",
    "folder named like an image": "not a regular file",
    "PNG declaring 2^31-1 squared": "decompression bomb",
    "JPEG declaring 60000x60000": "decompression bomb",
}


def test_validator_scan_turns_more_hostile_files_into_failed_rows(synth_dataset, tmp_path):
    """The cases test_validate.py does not plant: each becomes a row whose error names the file (no exception)."""
    from cmunext.data.validate import scan_dataset

    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    planted = {}
    for i, kind in enumerate(SCAN_HOSTILE):
        stem = f"synth_{i:05d}"
        victim = data / "images" / f"{stem}.png"
        if kind.startswith("JPEG"):
            victim.unlink()
            victim = victim.with_suffix(".jpg")
            victim.write_bytes(b"x")
        _plant(kind, victim, tmp_path / "outside")
        planted[stem] = (kind, f"images/{victim.name}")
    table = scan_dataset(data).set_index("stem")
    for stem, (kind, rel) in planted.items():
        error = table.loc[stem, "error"]
        assert isinstance(error, str) and rel in error and SCAN_HOSTILE[kind] in error, (kind, error)
        assert not table.loc[stem, "image_decodes"]
    assert table["error"].isna().sum() == len(table) - len(planted)  # the others are untouched


def test_read_image_refuses_bombs_without_decoding(tmp_path):
    import resource

    from cmunext_serving.imageio import read_image

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for name, data in {"pixels.png": pixel_bomb(), "text.png": text_chunk_bomb(), "header.png": huge_header_png()}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=re.escape(name)):
            read_image(tmp_path / name)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 48, f"peak RSS grew by {grown_mib:.0f} MiB while refusing bombs"  # 64 MB never inflated


# ---- nothing untrusted is unpickled ------------------------------------------------------------------------

SOURCE_DIRS = ("cmunext", "pipelines", "components", "benchmarks", "tests")
FORBIDDEN_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads", "dill.load", "dill.loads",
    "cloudpickle.load", "cloudpickle.loads", "joblib.load", "pd.read_pickle", "pandas.read_pickle",
    "marshal.load", "marshal.loads", "shelve.open", "yaml.unsafe_load", "yaml.full_load",
    "mlflow.pytorch.load_model", "mlflow.sklearn.load_model", "torch.jit.load",
}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.append(node.id if isinstance(node, ast.Name) else "?")  # x().eval() is not eval()
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _instantiates(node) -> bool:
    """`python_model=Model()`: an instance MLflow would cloudpickle (a path, `str(path)` or `x.__file__` is code)."""
    return isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1][:1].isupper()


def unsafe_loads(root: Path) -> list[str]:
    problems = []
    files = [p for d in SOURCE_DIRS for p in (root / d).rglob("*.py") if (root / d).is_dir()]
    for path in files:
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text(), str(rel))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            where = f"{rel}:{node.lineno}"
            if name in FORBIDDEN_CALLS:
                problems.append(f"{where}: {name}")
            elif name == "torch.load" and not _is_true(_kw(node, "weights_only")):
                problems.append(f"{where}: torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and _is_true(_kw(node, "allow_pickle")):
                problems.append(f"{where}: {name}(allow_pickle=True)")
            elif name == "yaml.load" and "Safe" not in _dotted(_kw(node, "Loader") or ast.Name("none")):
                problems.append(f"{where}: yaml.load without a SafeLoader")
            elif name in ("eval", "exec"):
                problems.append(f"{where}: {name}()")
            elif name.endswith("pyfunc.log_model") and _instantiates(_kw(node, "python_model")):
                problems.append(f"{where}: pyfunc model logged as an object (cloudpickled), not from code")
    return problems


def test_nothing_untrusted_is_unpickled_in_the_code_base():
    problems = unsafe_loads(ROOT)
    assert problems == [], "\n".join(problems)
    # the check itself bites
    fake = Path(tempfile.mkdtemp()) / "proj"
    (fake / "cmunext").mkdir(parents=True)
    (fake / "cmunext" / "bad.py").write_text(
        "import torch, pickle, yaml, numpy as np\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\npickle.loads(b'')\nyaml.load('a')\n"
        "np.load('x', allow_pickle=True)\ntorch.load('x', map_location='cpu', weights_only=True)\n"
        "import mlflow\nmlflow.pyfunc.log_model(name='m', python_model=Model())\n"
        "mlflow.pyfunc.log_model(name='m', python_model=str(path))\n")
    found = unsafe_loads(fake)
    shutil.rmtree(fake.parent)
    assert len(found) == 6, found


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_checkpoint_and_weights_are_refused_without_running_them(tmp_path):
    """A checkpoint whose sidecar checksum matches (so it passes the integrity check) but whose pickle carries a
    payload, and a pickle renamed to .safetensors: both refused, and the payload never runs."""
    import torch

    from cmunext.engine.checkpoint import CheckpointDir
    from cmunext.engine.weights import load_weights

    marker = tmp_path / "pwned"
    ckpt = CheckpointDir(tmp_path / "checkpoints")
    ckpt.folder.mkdir()
    torch.save({"epoch": 1, "payload": _Payload(marker)}, ckpt.last)
    ckpt.last.with_suffix(".pt.sha256").write_text(hashlib.sha256(ckpt.last.read_bytes()).hexdigest() + "\n")
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        ckpt.load_latest()
    assert not marker.exists()

    fake = tmp_path / "model.safetensors"
    fake.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_weights(fake)
    header_bomb = tmp_path / "bomb.safetensors"  # a header length of 2^63: must not allocate it
    header_bomb.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_weights(header_bomb)
    assert not marker.exists()


# ---- secrets -------------------------------------------------------------------------------------------------

def fake_credentials() -> dict[str, str]:
    """Distinctive values made at run time, so that no source file contains them."""
    tag = uuid.uuid4().hex
    return {"AWS_ACCESS_KEY_ID": f"AKIAFAKE{tag[:12].upper()}", "AWS_SECRET_ACCESS_KEY": f"fake-aws-secret-{tag}",
            "MLFLOW_TRACKING_USERNAME": "ci-user", "MLFLOW_TRACKING_PASSWORD": f"fake-mlflow-password-{tag}",
            "CMUNEXT_API_TOKEN": f"fake-api-token-{tag}"}


SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "CMUNEXT_API_TOKEN")


def test_compiled_pipeline_yaml_holds_no_credentials(tmp_path):
    creds = fake_credentials()
    out = tmp_path / "pipeline.yaml"
    proc = subprocess.run([str(VENV_BIN / "cmunext"), "pipeline", "compile", "--out", str(out)], cwd=ROOT,
                          env={**os.environ, **creds, "CMUNEXT_HOME": str(tmp_path / "state")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text() + proc.stdout + proc.stderr
    leaked = [k for k in SECRET_KEYS if creds[k] in text]
    assert leaked == [], f"the values of {leaked} are in the compiled YAML or the command's output"


ALLOWED_FAKE_KEYS = {"AKIAUNKNOWNKEY000000"}  # tests/test_versioning.py: a key moto's IAM has never issued


def _repo_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def test_no_credentials_in_git():
    """Tracked files and files git would pick up: no AWS key ids, no private keys, no filled-in env files, and the
    DVC config (committed) names remotes without credentials."""
    problems = []
    key_id = re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
    private_key = re.compile(rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----")
    secret_line = re.compile(r"^\s*([A-Z0-9_]*(?:PASSWORD|SECRET|TOKEN|ACCESS_KEY)[A-Z0-9_]*)\s*=\s*(.*?)\s*$")
    for name in _repo_files():
        data = (ROOT / name).read_bytes()
        for m in key_id.finditer(data):
            if m.group().decode() not in ALLOWED_FAKE_KEYS:
                problems.append(f"{name}: AWS access key id {m.group().decode()}")
        if private_key.search(data):
            problems.append(f"{name}: a private key")
        base = Path(name).name
        if base == ".env" or base.endswith(".env"):
            problems.append(f"{name}: an env file in git (keep it git-ignored; commit a .env.example)")
        if base.endswith(".env.example"):
            for line in data.decode(errors="replace").splitlines():
                m = secret_line.match(line)
                if m and m.group(2) not in ("", "CHANGE_ME") and not m.group(2).startswith("<"):
                    problems.append(f"{name}: {m.group(1)} has a value in the example file")
    dvc_config = (ROOT / ".dvc" / "config").read_text()
    for key in ("access_key_id", "secret_access_key", "session_token", "password"):
        if key in dvc_config:
            problems.append(f".dvc/config: {key} (credentials belong in .dvc/config.local or the environment)")
    assert problems == [], "\n".join(problems)
