"""A model version's serving image (`cmunext containerize`) and running it (`cmunext serve --container`).

The image is built from infra/docker/Dockerfile.serving over a context made here: the version's bento, exported
as a .bento archive (so it holds the model) and unpacked, plus the lock. The plain engine line is

    podman run --rm --pull=never --read-only --tmpfs /tmp -p 3000:3000 IMAGE      # or docker run ...
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .build import REPO, build_image, choose_base, git_commit, host_build_options
from .engine import ContainerError, Engine
from .images import image_names

DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile.serving"
CONTAINER_PORT = 3000


def build_context(bento_tag: str, folder: Path) -> Path:
    """FOLDER/bento (the unpacked .bento archive: code, models, pinned requirements) and FOLDER/constraints.txt."""
    from ..serving.package import export_archive

    archive = Path(export_archive(bento_tag, str(folder / "bento.bento")))
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "bento", filter="data")
    archive.unlink()
    shutil.copyfile(REPO / "constraints.txt", folder / "constraints.txt")
    if not (folder / "bento" / "env" / "python" / "requirements.txt").exists():
        raise ContainerError(f"bento {bento_tag} has no env/python/requirements.txt: rebuild it with the package step")
    return folder


def containerize(engine: Engine, bento_tag: str, model_name: str, version: str | int, base: str | None = None,
                 verbose: bool = False) -> dict:
    """Build REGISTRY/cmunext-serving:<model>-v<version> from BENTO_TAG; returns its tag, size and build time."""
    tag = image_names().serving(model_name, version)
    chosen = choose_base(engine, base)
    args, volumes = host_build_options(engine)
    args.update(BASE=chosen, MODEL=f"{model_name} v{version} ({bento_tag}) @ {git_commit()[:12]}")
    with tempfile.TemporaryDirectory(prefix="cmunext-serving-image-") as tmp:
        ctx = build_context(bento_tag, Path(tmp))
        print(f"containerize: building {tag} from bento {bento_tag} on {chosen.split('@')[0]}", flush=True)
        seconds = build_image(engine, DOCKERFILE, ctx, [tag], args, volumes, "serving: ", verbose)
    size = engine.image_size(tag)
    return {"image": tag, "bento": bento_tag, "seconds": round(seconds, 1), "size_mb": round(size / 1e6)}


def run_command(engine: Engine, image: str, port: int, host: str = "127.0.0.1", name: str | None = None,
                env: dict[str, str] | None = None) -> list[str]:
    cmd = [engine.exe, "run", "--rm", "--name", name or f"cmunext-serve-{port}", "--read-only",
           "--tmpfs", "/tmp:rw,mode=1777", "-p", f"{host}:{port}:{CONTAINER_PORT}"]
    if engine.name == "podman":
        cmd.insert(2, "--pull=never")  # a local image: never ask a registry
    for key, value in (env or {}).items():
        cmd += ["-e", f"{key}={value}"]
    return cmd + [image]


def serve_container(engine: Engine, image: str, port: int, host: str = "127.0.0.1",
                    env: dict[str, str] | None = None) -> int:
    """Run IMAGE in the foreground, published on HOST:PORT; SIGTERM or SIGINT stops the container."""
    engine.require_image(image, "build it with `cmunext containerize`")
    name = f"cmunext-serve-{port}"
    proc = subprocess.Popen(run_command(engine, image, port, host, name, env), env=engine.env())

    def stop(signum, _frame):
        engine.run("stop", "--time", "10", name, check=False)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
