"""The shadow on Kubernetes (`cmunext deploy --shadow VERSION`): the candidate's serving image as a Deployment of
its own, `cmunext-serving-shadow` (one replica, its prediction log off, behind a ClusterIP Service that the Ingress
does not route to), and the champion's Deployment pointed at it (CMUNEXT_SHADOW_URL). The champion's front sends
it copies off the request path (cmunext_serving/shadow.py); its pods keep app.kubernetes.io/component:
model-server, so the NetworkPolicies treat them as serving pods, and serving pods may reach each other on 3000."""
from __future__ import annotations

import copy
from pathlib import Path

NAME, SHADOW = "cmunext-serving", "cmunext-serving-shadow"
SELECTOR = "app.kubernetes.io/name"


def _renamed(obj: dict) -> dict:
    shadow = copy.deepcopy(obj)
    shadow["metadata"]["name"] = SHADOW
    shadow["metadata"].setdefault("labels", {})[SELECTOR] = SHADOW
    return shadow


def shadow_deployment(champion: dict, image: str) -> dict:
    shadow = _renamed(champion)
    spec = shadow["spec"]
    spec["replicas"] = 1
    spec["selector"]["matchLabels"][SELECTOR] = SHADOW
    spec["template"]["metadata"]["labels"][SELECTOR] = SHADOW
    container = spec["template"]["spec"]["containers"][0]
    container["image"] = image
    container["env"] = [e for e in container.get("env", []) if not e["name"].startswith("CMUNEXT_SHADOW_")
                        and e["name"] != "CMUNEXT_PREDICTION_LOG"] + [{"name": "CMUNEXT_PREDICTION_LOG", "value": "off"}]
    return shadow


def shadow_service(service: dict) -> dict:
    shadow = _renamed(service)
    shadow["spec"]["selector"] = {SELECTOR: SHADOW}
    return shadow


def add_shadow(manifests: Path, image: str, version: str, rate: float = 1.0) -> None:
    """MANIFESTS (the rendered base) with the shadow Deployment and Service, and the champion shadowing them."""
    import yaml

    docs = [d for d in yaml.safe_load_all(manifests.read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == NAME)
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == NAME)
    namespace = deployment["metadata"].get("namespace", "cmunext")
    port = service["spec"]["ports"][0]["port"]
    added = [shadow_deployment(deployment, image), shadow_service(service)]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container.setdefault("env", []).extend([
        {"name": "CMUNEXT_SHADOW_URL", "value": f"http://{SHADOW}.{namespace}.svc.cluster.local:{port}"},
        {"name": "CMUNEXT_SHADOW_VERSION", "value": str(version)},
        {"name": "CMUNEXT_SHADOW_RATE", "value": str(rate)}])
    manifests.write_text(yaml.safe_dump_all(docs + added, sort_keys=False))
