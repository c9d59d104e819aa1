"""`cmunext deploy`: make the Kubernetes serving Deployment serve the registry's champion (after a promotion or
a rollback), in one command: the champion's serving image (built by `containerize` if missing, pushed with
--push), then the manifests of infra/k8s/base rendered with that image (kustomize, images.conf's SERVING_TAG set
in a copy, never in the repository) and, with --apply, applied."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .build import REPO
from .engine import ContainerError, Engine
from .images import IMAGES_CONF, image_names

K8S = REPO / "infra" / "k8s"


def _kustomize() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    raise ContainerError("rendering the manifests needs kubectl (or kustomize) on PATH")


def render(serving_image: str, out: Path, k8s: Path = K8S) -> Path:
    """K8S/base (infra/k8s: its secrets' .env files made, docs/deploy.md step 3) rendered with SERVING_IMAGE's
    tag; its registry must be images.conf's REGISTRY."""
    names = image_names()
    repo, _, tag = serving_image.rpartition(":")
    if repo != f"{names.registry}/cmunext-serving":
        raise ContainerError(f"{serving_image} is not under images.conf's registry {names.registry}")
    with tempfile.TemporaryDirectory(prefix="cmunext-deploy-") as tmp:
        tree = Path(tmp) / "k8s"
        shutil.copytree(k8s, tree)
        conf = tree / IMAGES_CONF.relative_to(K8S)
        conf.write_text("".join(f"SERVING_TAG={tag}\n" if line.startswith("SERVING_TAG=") else line
                                for line in conf.read_text().splitlines(keepends=True)))
        proc = subprocess.run([*_kustomize(), str(tree / "base")], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise ContainerError(f"rendering infra/k8s/base failed (a secret's .env file missing? docs/deploy.md "
                             f"step 3): {proc.stderr.strip()[-600:]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(proc.stdout)
    return out


def _image(engine: Engine, bento_tag: str, model_name: str, version: str, push: bool) -> tuple[str, bool]:
    """VERSION's serving image, built by `containerize` when missing, pushed with PUSH; (image, built)."""
    from .serving import containerize

    image = image_names().serving(model_name, version)
    built = not engine.image_exists(image)
    if built:
        containerize(engine, bento_tag, model_name, version)
    if push:
        engine.run("push", image, timeout=1800)
    return image, built


def deploy(engine: Engine, bento_tag: str, model_name: str, version: str, out: Path, push: bool = False,
           apply: bool = False, k8s: Path = K8S, canary=None, shadow: tuple[str, str] | None = None) -> dict:
    """CANARY: the config's GateConfig, to add Flagger's canary resources (containers/canary.py). SHADOW: (version,
    bento tag) of a candidate the champion shadows (containers/shadow.py)."""
    image, built = _image(engine, bento_tag, model_name, version, push)
    render(image, out, k8s)
    if canary is not None:
        from .canary import add_canary
        add_canary(out, canary)
    if shadow is not None:
        from .shadow import add_shadow
        add_shadow(out, _image(engine, shadow[1], model_name, shadow[0], push)[0], shadow[0])
    if apply:
        proc = subprocess.run(["kubectl", "apply", "-f", str(out)], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise ContainerError(f"kubectl apply failed: {proc.stderr.strip()[-600:]}")
    return {"image": image, "built": built, "pushed": push, "manifests": str(out), "applied": apply,
            "canary": canary is not None}
