"""The registry follows Flagger (`cmunext registry follow-canary`, the CronJob cmunext-rollout-follow): when the
Canary of the serving Deployment has failed, the version it refused is the image of the Deployment (Flagger's
target; the primary kept the previous pods). If that version is still the registry's champion, the registry is
rolled back (`previous` becomes champion again) with Flagger's reason, so the registry never names a model the
cluster refused. Anything else (no canary, still progressing, succeeded, already followed) changes nothing."""
from __future__ import annotations

import re
from pathlib import Path

from .canary import NAME, NAMESPACE

TOKEN_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
API = "https://kubernetes.default.svc"


def refused_version(canary: dict, deployment: dict, model_name: str) -> str | None:
    """The version a failed Canary refused, from its target Deployment's image (images.py's tag scheme)."""
    if (canary.get("status") or {}).get("phase") != "Failed":
        return None
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    found = re.search(r":" + re.escape(re.sub(r"[^A-Za-z0-9_.-]", "-", model_name)) + r"-v(\d+)$", image)
    return found.group(1) if found else None


def reason(canary: dict) -> str:
    conditions = (canary.get("status") or {}).get("conditions") or []
    said = "; ".join(c.get("message", "") for c in conditions if c.get("message"))
    return f"Flagger rolled the canary back ({said or 'status Failed'}); the cluster serves the primary"


def follow(model_name: str, canary: dict | None, deployment: dict | None) -> dict:
    """{"action": "rolled_back" | "none", "why", ...}; rolls the registry back when the cluster refused its
    champion."""
    from ..tracking import registry
    if canary is None or deployment is None:
        return {"action": "none", "why": "no Canary in the cluster (deployed without --canary)"}
    phase = (canary.get("status") or {}).get("phase", "unknown")
    version = refused_version(canary, deployment, model_name)
    if version is None:
        return {"action": "none", "why": f"the canary is {phase}: nothing refused"}
    champ = registry.champion(model_name)
    if champ is None or str(champ["version"]) != version:
        return {"action": "none", "why": f"v{version} was refused and is not the champion any more "
                                         f"(champion: {champ and champ['version']}): already followed"}
    entry = registry.rollback(model_name, reason=f"rollback: {reason(canary)}")
    return {"action": "rolled_back", "why": entry["reason"], "refused": version, "champion": entry["version"]}


def read_cluster() -> tuple[dict | None, dict | None]:
    """The Canary and its target Deployment from the API server, as the pod's service account (in the cluster)."""
    import requests
    if not (TOKEN_DIR / "token").is_file():
        raise FileNotFoundError(f"{TOKEN_DIR}/token: not in a Kubernetes pod; pass --from a `kubectl get` JSON file")
    session = requests.Session()
    session.headers["Authorization"] = "Bearer " + (TOKEN_DIR / "token").read_text().strip()
    session.verify = str(TOKEN_DIR / "ca.crt")

    def get(path: str) -> dict | None:
        r = session.get(f"{API}{path}", timeout=30)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()
    return (get(f"/apis/flagger.app/v1beta1/namespaces/{NAMESPACE}/canaries/{NAME}"),
            get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{NAME}"))


def read_file(path: str) -> tuple[dict | None, dict | None]:
    """The Canary and the Deployment from `kubectl get canary/cmunext-serving deploy/cmunext-serving -o json`."""
    import json
    data = json.loads(Path(path).read_text())
    items = data.get("items", [data])
    pick = {kind: next((i for i in items if i.get("kind") == kind), None) for kind in ("Canary", "Deployment")}
    return pick["Canary"], pick["Deployment"]
