"""The names of the images this project builds and runs, from one place: infra/k8s/components/images/images.conf.

kustomize reads the same file (replacements in that folder), so a registry changes in one value. Inside an
image, where the repository's infra/ is absent, the registry is `localhost` and the tag the package version.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

IMAGES_CONF = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "components" / "images" / "images.conf"
BASE_IMAGE = "localhost/cmunext-base:bookworm"  # infra/containers/base-image.sh (Debian packages only)


def read_conf(path: Path = IMAGES_CONF) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#") and "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass(frozen=True)
class ImageNames:
    registry: str
    tag: str

    @property
    def components(self) -> str:
        return f"{self.registry}/cmunext-components:{self.tag}"

    @property
    def mlflow(self) -> str:
        return f"{self.registry}/cmunext-mlflow:{self.tag}"

    def serving(self, model_name: str, version: str | int) -> str:
        return f"{self.registry}/cmunext-serving:{re.sub(r'[^A-Za-z0-9_.-]', '-', model_name)}-v{version}"


def image_names() -> ImageNames:
    """images.conf, overridden by $CMUNEXT_REGISTRY and $CMUNEXT_IMAGE_TAG."""
    conf = read_conf()
    try:
        version = metadata.version("cmunext")
    except metadata.PackageNotFoundError:
        version = "latest"
    return ImageNames(registry=os.environ.get("CMUNEXT_REGISTRY") or conf.get("REGISTRY", "localhost"),
                      tag=os.environ.get("CMUNEXT_IMAGE_TAG") or conf.get("TAG", version))


def component_image() -> str:
    """The image every pipeline task runs in: $CMUNEXT_COMPONENT_IMAGE, else images.conf's."""
    return os.environ.get("CMUNEXT_COMPONENT_IMAGE") or image_names().components
