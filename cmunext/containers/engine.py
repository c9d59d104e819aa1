"""The container engine: podman (daemonless; preferred) or docker, with the project's settings.

podman reads CONTAINERS_CONF=infra/containers/containers.conf (runc, container limits below the host's), so
nothing is configured in /etc. kfp.local's DockerRunner speaks the Docker API: `docker_api()` serves it from
podman for the length of a run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import CmunextError

PROJECT_CONF = Path(__file__).resolve().parents[2] / "infra" / "containers" / "containers.conf"
INSTALL_HINT = "install podman (Debian/Ubuntu: `make containers`, or apt-get install podman runc) or docker"


class ContainerError(CmunextError, RuntimeError):
    """No engine, no image, or a build or run that failed; the message names which and why."""


@dataclass(frozen=True)
class Engine:
    name: str  # "podman" or "docker"
    exe: str

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.name == "podman" and "CONTAINERS_CONF" not in env and PROJECT_CONF.exists():
            env["CONTAINERS_CONF"] = str(PROJECT_CONF)
        return env

    def run(self, *args: str, check: bool = True, capture: bool = True, timeout: float | None = None,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.exe, *args], env=self.env(), capture_output=capture, timeout=timeout,
                              input=input)
        if check and proc.returncode != 0:
            err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
            raise ContainerError(f"{self.name} {args[0]} failed (exit {proc.returncode}): "
                                 + (err[-1] if err else "no message"))
        return proc

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def image_size(self, ref: str) -> int:
        """Bytes, as the engine reports them (uncompressed layers)."""
        return int(self.run("image", "inspect", "--format", "{{.Size}}", ref).stdout.decode().strip())

    def require_image(self, ref: str, hint: str = "build it with `make images`") -> str:
        if not self.image_exists(ref):
            raise ContainerError(f"image {ref} is not in {self.name}'s store: {hint}")
        return ref


def find_engine(prefer: str | None = None) -> Engine:
    """podman, else docker with a reachable daemon (CMUNEXT_CONTAINER_ENGINE chooses). ContainerError if none works."""
    prefer = prefer or os.environ.get("CMUNEXT_CONTAINER_ENGINE")
    names = [prefer] if prefer else ["podman", "docker"]
    problems = []
    for name in names:
        exe = shutil.which(name)
        if exe is None:
            problems.append(f"{name}: not installed")
            continue
        engine = Engine(name, exe)
        try:
            proc = engine.run("info", check=False, timeout=60)
        except subprocess.TimeoutExpired:
            problems.append(f"{name}: `{name} info` did not answer in 60 s")
            continue
        if proc.returncode == 0:
            return engine
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        problems.append(f"{name}: `{name} info` failed: {last}")
    raise ContainerError("no working container engine (" + "; ".join(problems) + f"): {INSTALL_HINT}")


@contextmanager
def docker_api(engine: Engine) -> Iterator[str]:
    """A DOCKER_HOST for the engine: docker's own, or podman's Docker-compatible service on a private socket,
    started here and stopped on exit."""
    if engine.name == "docker":
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    folder = Path(tempfile.mkdtemp(prefix="cmunext-podman-"))
    sock = folder / "podman.sock"
    log = folder / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([engine.exe, "system", "service", "--time=0", f"unix://{sock}"], env=engine.env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ContainerError(f"podman's Docker-compatible API did not start: {log.read_text()[-500:]}")
            time.sleep(0.1)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)
