"""`make images`: the component and MLflow images, tagged with images.conf's registry and tag and `latest`.

The base is the Dockerfiles' pinned public Python image where a registry answers; otherwise (these machines,
air-gapped sites) one built from Debian packages by infra/containers/base-image.sh, reused while it exists.
The build installs the lock (constraints.txt): CPU torch, from a local wheel folder ($PIP_FIND_LINKS) when
there is one; a CUDA torch by build arguments (infra/docker/README.md).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .engine import ContainerError, Engine
from .images import BASE_IMAGE, image_names

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"components": REPO / "infra" / "docker" / "Dockerfile.components",
               "mlflow": REPO / "infra" / "docker" / "Dockerfile.mlflow"}
BASE_SCRIPT = REPO / "infra" / "containers" / "base-image.sh"


def default_base(dockerfile: Path) -> str:
    match = re.search(r"^ARG BASE=(\S+)", dockerfile.read_text(), re.M)
    if not match:
        raise ContainerError(f"{dockerfile}: no `ARG BASE=` default")
    return match.group(1)


def choose_base(engine: Engine, requested: str | None = None) -> str:
    """REQUESTED, else the pinned public base if present or pullable, else the Debian-built base (built once)."""
    if requested:
        if not engine.image_exists(requested) and engine.run("pull", requested, check=False, timeout=300).returncode:
            raise ContainerError(f"base image {requested} is neither in {engine.name}'s store nor pullable")
        return requested
    public = default_base(DOCKERFILES["components"])
    for candidate in (public, BASE_IMAGE):
        if engine.image_exists(candidate):
            return candidate
    pulled = engine.run("pull", public, check=False, timeout=300)
    if pulled.returncode == 0:
        return public
    reason = (pulled.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
    print(f"images: cannot pull {public.split('@')[0]} ({reason[:160]}); building the base from Debian packages",
          flush=True)
    if not BASE_SCRIPT.exists():
        raise ContainerError(f"no base image: {public} cannot be pulled and {BASE_SCRIPT} is missing")
    proc = subprocess.run(["bash", str(BASE_SCRIPT), BASE_IMAGE], env={**engine.env(), "CONTAINER_ENGINE": engine.exe})
    if proc.returncode != 0:
        raise ContainerError(f"no base image: {public} cannot be pulled and {BASE_SCRIPT.name} failed "
                             f"(exit {proc.returncode}; it needs root, debootstrap and a Debian mirror)")
    return BASE_IMAGE


def host_build_options(engine: Engine) -> tuple[dict[str, str], list[str]]:
    """Build arguments and podman build volumes for this host: its local wheels (the CPU torch wheel, so the
    PyTorch index is not needed) and the CA bundle pip trusts here (a TLS-inspecting proxy's)."""
    args: dict[str, str] = {}
    volumes: list[str] = []
    if engine.name != "podman":  # `docker build` mounts nothing: the public indexes must be reachable
        return args, volumes
    links = os.environ.get("PIP_FIND_LINKS", "")
    if links and Path(links).is_dir():
        volumes += ["-v", f"{Path(links).resolve()}:/wheels:ro"]
        args.update(PIP_FIND_LINKS="/wheels", TORCH_INDEX="")
    cert = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    if cert and Path(cert).is_file():
        volumes += ["-v", f"{Path(cert).resolve()}:/etc/cmunext-build-ca.crt:ro"]
        args["PIP_CERT"] = "/etc/cmunext-build-ca.crt"
    return args, volumes


def git_commit() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def build_image(engine: Engine, dockerfile: Path, context: Path, tags: list[str], build_args: dict[str, str],
                volumes: list[str] = (), label: str = "", verbose: bool = False) -> float:
    """Build DOCKERFILE in CONTEXT with TAGS (applied only on success: a failed build keeps earlier images).
    Prints its steps; returns the seconds it took."""
    cmd = ["build", "--network=host"]
    if engine.name == "podman":
        cmd += ["--format", "docker", *volumes]  # docker format: SHELL and HEALTHCHECK are kept
    for key, value in build_args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    for tag in tags:
        cmd += ["-t", tag]
    cmd += ["-f", str(dockerfile), str(context)]
    started, tail = time.monotonic(), []
    proc = subprocess.Popen([engine.exe, *cmd], env=engine.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        if verbose or re.match(r"^(\[\d+/\d+\] )?STEP \d+/\d+", line):
            print(f"  {label}{line.rstrip()[:150]}", flush=True)
    if proc.wait() != 0:
        raise ContainerError(f"building {tags[0]} from {dockerfile.relative_to(REPO) if dockerfile.is_relative_to(REPO) else dockerfile} "
                             f"failed (exit {proc.returncode}); images built before are unchanged. Last lines:\n"
                             + "\n".join(tail[-15:]))
    return time.monotonic() - started


@contextmanager
def _one_build_at_a_time() -> Iterator[None]:
    """The engine's image store is the machine's: concurrent builds of the same tags wait for each other (`make
    test` starts one in the background while the other tests run; the container tests then find it done)."""
    import fcntl
    with open(Path(tempfile.gettempdir()) / "cmunext-images.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_images(engine: Engine, only: list[str] | None = None, base: str | None = None,
                 extra_args: dict[str, str] | None = None, verbose: bool = False) -> list[dict]:
    with _one_build_at_a_time():
        return _build_images(engine, only, base, extra_args, verbose)


def _build_images(engine: Engine, only: list[str] | None, base: str | None, extra_args: dict[str, str] | None,
                  verbose: bool) -> list[dict]:
    names = image_names()
    chosen = choose_base(engine, base)
    args, volumes = host_build_options(engine)
    args.update(BASE=chosen, GIT_COMMIT=git_commit(), **(extra_args or {}))
    results = []
    for which in only or list(DOCKERFILES):
        if which not in DOCKERFILES:
            raise ContainerError(f"unknown image {which!r}; the images are {', '.join(DOCKERFILES)}")
        image = getattr(names, which)
        latest = image.rsplit(":", 1)[0] + ":latest"
        print(f"images: building {image} on {chosen.split('@')[0]}", flush=True)
        seconds = build_image(engine, DOCKERFILES[which], REPO, [image, latest], args, volumes, f"{which}: ", verbose)
        size = engine.image_size(image)
        results.append({"image": image, "latest": latest, "base": chosen, "seconds": round(seconds, 1),
                        "size_mb": round(size / 1e6)})
        print(f"images: {image} (+ :latest) {size / 1e6:,.0f} MB, built in {seconds:.0f} s", flush=True)
    return results

