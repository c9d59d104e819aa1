"""The MLflow model registry as the project uses it: alias `champion` marks the served
version, `previous` the one before; every decision is tagged on its version, and the
champion history (promotions, rollbacks, rejections, each with who made it and why) is kept
on the registered model.

Alias moves and history writes happen under the model's promotion lease, held in the bento store that
every machine shares (lease.py), and re-check the champion they were decided against (compare-and-set), so
two overlapping promotions, from one machine or several, cannot both win on a stale view. On a server
with authentication, the user's permission is checked before the first write, so a refused
promotion or rollback changes nothing.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager

import mlflow
from mlflow.exceptions import MlflowException

from ..errors import CmunextError
from . import access
from .mlflow_runs import setup, tracking_uri

CHAMPION, PREVIOUS, CANDIDATE = "champion", "previous", "candidate"
HISTORY_TAG = "champion_history"
# alias moves are kept longer than rejections, so weekly rejections never push out what rollback reads
KEEP = {"moves": 40, "other": 20}
MOVES = ("promoted", "rolled_back")


class RegistryError(CmunextError):
    pass


class StaleChampion(RegistryError):
    """The champion moved since the decision was made; decide again against the new one."""


@contextmanager
def _answered(what: str):
    """MLflow's 401/403 as one message naming the server and the fix (no traceback in the CLI)."""
    try:
        yield
    except MlflowException as exc:
        message = access.explain(exc, tracking_uri(), what)
        if message is None:
            raise
        raise access.AccessDenied(message) from None


def _client() -> mlflow.MlflowClient:
    access.login(tracking_uri())  # missing or wrong credentials fail here, before any request that writes
    with _answered("reading the registry"):
        setup()
    return mlflow.MlflowClient()


@contextmanager
def _locked(model_name: str):
    from .lease import held
    with held(model_name):
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
    client = _client()
    with _answered(f"reading the champion of {model_name}"):
        v = _version_by_alias(client, model_name, CHAMPION)
    return _describe(v) if v is not None else None


def history(model_name: str) -> list[dict]:
    client = _client()
    try:
        with _answered(f"reading the history of {model_name}"):
            tags = client.get_registered_model(model_name).tags or {}
    except access.AccessDenied:
        raise
    except MlflowException:
        return []
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _trimmed(entries: list[dict]) -> list[dict]:
    moves = [i for i, h in enumerate(entries) if h.get("event") in MOVES][-KEEP["moves"]:]
    other = [i for i, h in enumerate(entries) if h.get("event") not in MOVES][-KEEP["other"]:]
    return [entries[i] for i in sorted(moves + other)]


def _append_history(client, model_name: str, entry: dict) -> None:
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(_trimmed(history(model_name) + [entry])))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def show(model_name: str) -> dict:
    return {"model": model_name, "champion": champion(model_name), "history": history(model_name)}


def _ensure_model(client, model_name: str) -> None:
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        if access.is_refusal(exc):
            raise
        client.create_registered_model(model_name, description="CMUNeXt lesion segmentation; alias 'champion' is served")


def register(model_uri: str, model_name: str, tags: dict[str, str]) -> str:
    client = _client()
    with _answered(f"registering a version of {model_name}"):
        _ensure_model(client, model_name)
        # register_model resolves `models:/m-<id>` sources to their logged model (a server insists on it)
        mv = mlflow.register_model(model_uri, model_name, tags={**tags, "registered_by": access.actor()})
    return str(mv.version)


def version_for_run(model_name: str, run_id: str) -> str | None:
    """The version already registered from this training run, if any."""
    client = _client()
    with _answered(f"searching the versions of {model_name}"):
        for v in client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'"):
            return str(v.version)
    return None


def _record(client, model_name: str, version: str, event: str, reason: str, replaced: str | None) -> dict:
    entry = {"version": version, "event": event, "reason": reason, "replaced": replaced, "at": _now(),
             "user": access.actor()}
    _append_history(client, model_name, entry)
    client.set_model_version_tag(model_name, version, f"{event}_at", entry["at"])
    client.set_model_version_tag(model_name, version, f"{event}_by", entry["user"])
    return entry


def _check_champion(client, model_name: str, expected: str | None) -> str | None:
    current = _version_by_alias(client, model_name, CHAMPION)
    current_version = str(current.version) if current is not None else None
    if current_version != expected:
        raise StaleChampion(f"{model_name}: champion is now version {current_version}, not {expected}")
    return current_version


def promote(model_name: str, version: str, reason: str, expected_champion: str | None = "__any__") -> dict:
    """Make `version` the champion. With `expected_champion`, refuse (StaleChampion) if the
    champion changed since the caller looked; the default accepts whatever is there."""
    client = _client()
    nominated = _version_by_alias(client, model_name, CANDIDATE)
    ends_candidacy = nominated is not None and str(nominated.version) == str(version)
    access.require(tracking_uri(), [("registered_model", model_name, "update", f"promote a version of {model_name}")]
                   + ([("registered_model", model_name, "delete", f"delete the alias '{CANDIDATE}' of {model_name}")]
                      if ends_candidacy else []))
    with _locked(model_name), _answered(f"promoting {model_name} version {version}"):
        try:
            client.get_model_version(model_name, version)
        except MlflowException as exc:
            if access.is_refusal(exc):
                raise
            raise RegistryError(f"{model_name} has no version {version!r}") from None
        current = _version_by_alias(client, model_name, CHAMPION)
        expected = (str(current.version) if current else None) if expected_champion == "__any__" else expected_champion
        current_version = _check_champion(client, model_name, expected)
        version = str(version)
        if ends_candidacy:  # the one write that needs more than EDIT goes first: refused, nothing moved
            client.delete_registered_model_alias(model_name, CANDIDATE)
        client.set_model_version_tag(model_name, version, "promotion_reason", reason)
        if current_version is not None and current_version != version:
            client.set_registered_model_alias(model_name, PREVIOUS, current_version)
        client.set_registered_model_alias(model_name, CHAMPION, version)
        return _record(client, model_name, version, "promoted", reason, current_version)


def rollback(model_name: str, reason: str = "rollback") -> dict:
    """Champion back to `previous`; `previous` then points at the champion before that, if any."""
    client = _client()
    with _locked(model_name), _answered(f"rolling back {model_name}"):
        current = _version_by_alias(client, model_name, CHAMPION)
        prev = _version_by_alias(client, model_name, PREVIOUS)
        if current is None or prev is None:
            raise RegistryError(f"{model_name}: nothing to roll back to (champion {current and current.version}, "
                                f"previous {prev and prev.version})")
        # `previous` becomes whatever `prev` replaced when it was last promoted
        earlier = [h["replaced"] for h in history(model_name)
                   if h["event"] == "promoted" and h["version"] == str(prev.version) and h["replaced"]]
        next_previous = earlier[-1] if earlier and earlier[-1] != str(current.version) else None
        needs = [("registered_model", model_name, "update", f"move the aliases of {model_name}")]
        if next_previous is None:
            needs.append(("registered_model", model_name, "delete", f"delete the alias '{PREVIOUS}' of {model_name}"))
        access.require(tracking_uri(), needs)
        target, current_version = str(prev.version), str(current.version)
        _check_champion(client, model_name, current_version)
        if next_previous is None:  # the one write that needs more than EDIT goes first: refused, nothing moved
            client.delete_registered_model_alias(model_name, PREVIOUS)
        client.set_registered_model_alias(model_name, CHAMPION, target)
        if next_previous is not None:
            client.set_registered_model_alias(model_name, PREVIOUS, next_previous)
        return _record(client, model_name, target, "rolled_back", reason, current_version)


def nominate(model_name: str, version: str, reason: str) -> dict:
    """Make VERSION the `candidate` (the live gate: it is shadowed before it may become champion)."""
    client = _client()
    access.require(tracking_uri(), [("registered_model", model_name, "update", f"nominate a version of {model_name}")])
    with _locked(model_name), _answered(f"nominating {model_name} version {version}"):
        client.set_registered_model_alias(model_name, CANDIDATE, str(version))
        current = _version_by_alias(client, model_name, CHAMPION)
        return _record(client, model_name, str(version), "candidate", reason, None if current is None else
                       str(current.version))


def candidate(model_name: str) -> dict | None:
    with _answered(f"reading the candidate of {model_name}"):
        v = _version_by_alias(_client(), model_name, CANDIDATE)
    return _describe(v) if v else None


def record_refusal(model_name: str, version: str, event: str, reasons: list[str]) -> dict:
    """A refusal of a candidate in the history, with who decided: the live gate's (event "shadow_refused": it
    stays candidate) or a canary's rollback ("canary_rolled_back": the champion kept serving)."""
    client = _client()
    with _locked(model_name), _answered(f"recording the {event} of {model_name} version {version}"):
        current = _version_by_alias(client, model_name, CHAMPION)
        return _record(client, model_name, str(version), event, "; ".join(reasons),
                       None if current is None else str(current.version))


def record_rejection(model_name: str, run_id: str, reasons: list[str]) -> dict:
    """A gate's rejection of a training run, in the model's history with who decided (no version exists)."""
    client = _client()
    entry = {"version": None, "run_id": run_id, "event": "rejected", "reason": "; ".join(reasons), "replaced": None,
             "at": _now(), "user": access.actor()}
    with _locked(model_name), _answered(f"recording the rejection of run {run_id} in {model_name}'s history"):
        _ensure_model(client, model_name)
        _append_history(client, model_name, entry)
    return entry


def describe_version(model_name: str, version: str) -> dict:
    """{version, run_id, source, created, tags} of VERSION; RegistryError naming it when there is none."""
    client = _client()
    try:
        with _answered(f"reading {model_name} version {version}"):
            return _describe(client.get_model_version(model_name, version))
    except MlflowException:
        raise RegistryError(f"{model_name} has no version {version} (`cmunext registry show` lists them)") from None


def version_tags(model_name: str, version: str) -> dict[str, str]:
    client = _client()
    with _answered(f"reading {model_name} version {version}"):
        return dict(client.get_model_version(model_name, version).tags or {})


def tag_version(model_name: str, version: str, tags: dict[str, object]) -> None:
    client = _client()
    with _answered(f"tagging {model_name} version {version}"):
        for k, v in tags.items():
            client.set_model_version_tag(model_name, version, k, v if isinstance(v, str) else json.dumps(v))
