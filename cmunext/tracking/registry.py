"""The MLflow model registry as the project uses it: alias `champion` marks the served
version, `previous` the one before; every decision is tagged on its version, and the
champion history is kept on the registered model.

Alias moves happen under a lock and re-check the champion they were decided against
(compare-and-set), so two overlapping promotions cannot both win on a stale view.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException

from ..errors import CmunextError
from ..paths import state_path
from .mlflow_runs import setup

CHAMPION, PREVIOUS = "champion", "previous"
HISTORY_TAG, HISTORY_LIMIT = "champion_history", 40


class RegistryError(CmunextError):
    pass


class StaleChampion(RegistryError):
    """The champion moved since the decision was made; decide again against the new one."""


def _client() -> mlflow.MlflowClient:
    setup()
    return mlflow.MlflowClient()


@contextmanager
def _locked(model_name: str):
    with FileLock(str(state_path("locks", f"registry-{model_name}.lock")), timeout=120):
        yield


def _version_by_alias(client, model_name: str, alias: str):
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def _describe(v) -> dict:
    return {"version": str(v.version), "run_id": v.run_id, "source": v.source,
            "created": v.creation_timestamp, "tags": dict(v.tags or {})}


def champion(model_name: str) -> dict | None:
    v = _version_by_alias(_client(), model_name, CHAMPION)
    return _describe(v) if v is not None else None


def history(model_name: str) -> list[dict]:
    client = _client()
    try:
        tags = client.get_registered_model(model_name).tags or {}
    except MlflowException:
        return []
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def show(model_name: str) -> dict:
    return {"model": model_name, "champion": champion(model_name), "history": history(model_name)}


def register(model_uri: str, model_name: str, tags: dict[str, str]) -> str:
    client = _client()
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="CMUNeXt lesion segmentation; alias 'champion' is served")
    # register_model resolves `models:/m-<id>` sources to their logged model (a server insists on it)
    mv = mlflow.register_model(model_uri, model_name, tags=tags)
    return str(mv.version)


def version_for_run(model_name: str, run_id: str) -> str | None:
    """The version already registered from this training run, if any."""
    for v in _client().search_model_versions(f"name='{model_name}' and run_id='{run_id}'"):
        return str(v.version)
    return None


def _move(client, model_name: str, version: str, event: str, reason: str, expected: str | None) -> dict:
    current = _version_by_alias(client, model_name, CHAMPION)
    current_version = str(current.version) if current is not None else None
    if current_version != expected:
        raise StaleChampion(f"{model_name}: champion is now version {current_version}, not {expected}")
    if current_version is not None and current_version != version:
        client.set_registered_model_alias(model_name, PREVIOUS, current_version)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    entry = {"version": version, "event": event, "reason": reason, "replaced": current_version,
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    hist = (history(model_name) + [entry])[-HISTORY_LIMIT:]
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(hist))
    client.set_model_version_tag(model_name, version, f"{event}_at", entry["at"])
    return entry


def promote(model_name: str, version: str, reason: str, expected_champion: str | None = "__any__") -> dict:
    """Make `version` the champion. With `expected_champion`, refuse (StaleChampion) if the
    champion changed since the caller looked; the default accepts whatever is there."""
    client = _client()
    with _locked(model_name):
        try:
            client.get_model_version(model_name, version)
        except MlflowException:
            raise RegistryError(f"{model_name} has no version {version!r}") from None
        current = _version_by_alias(client, model_name, CHAMPION)
        expected = (str(current.version) if current else None) if expected_champion == "__any__" else expected_champion
        client.set_model_version_tag(model_name, version, "promotion_reason", reason)
        return _move(client, model_name, str(version), "promoted", reason, expected)


def rollback(model_name: str, reason: str = "rollback") -> dict:
    """Champion back to `previous`; `previous` then points at the champion before that, if any."""
    client = _client()
    with _locked(model_name):
        current = _version_by_alias(client, model_name, CHAMPION)
        prev = _version_by_alias(client, model_name, PREVIOUS)
        if current is None or prev is None:
            raise RegistryError(f"{model_name}: nothing to roll back to (champion {current and current.version}, "
                                f"previous {prev and prev.version})")
        # `previous` becomes whatever `prev` replaced when it was last promoted
        earlier = [h["replaced"] for h in history(model_name)
                   if h["event"] == "promoted" and h["version"] == str(prev.version) and h["replaced"]]
        entry = _move(client, model_name, str(prev.version), "rolled_back", reason, str(current.version))
        if earlier and earlier[-1] != str(current.version):
            client.set_registered_model_alias(model_name, PREVIOUS, earlier[-1])
        else:
            client.delete_registered_model_alias(model_name, PREVIOUS)
        return entry


def version_tags(model_name: str, version: str) -> dict[str, str]:
    return dict(_client().get_model_version(model_name, version).tags or {})


def tag_version(model_name: str, version: str, tags: dict[str, object]) -> None:
    client = _client()
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, v if isinstance(v, str) else json.dumps(v))
