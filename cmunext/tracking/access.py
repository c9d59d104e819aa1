"""Who is talking to MLflow, and whether the server lets them: the identity recorded on every
registry decision, a check of credentials and permissions before anything is written, and one
message for MLflow's 401 and 403 answers.

A server started with `mlflow server --app-name basic-auth` answers 401 to missing or wrong
credentials and 403 to a user without the permission; clients send MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD. A server without authentication, and the embedded SQLite store, have no
users: there the check passes and the identity is the local account.
"""
from __future__ import annotations

import functools
import getpass
import os
from dataclasses import dataclass

from ..errors import CmunextError

USERNAME, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
FIX = "an admin grants it with `cmunext registry users apply FILE` (docs/security.md)"
# what each permission level allows (mlflow.server.auth.permissions)
CAN = {"READ": {"read"}, "USE": {"read"}, "EDIT": {"read", "update"},
       "MANAGE": {"read", "update", "delete", "manage"}}


class AccessDenied(CmunextError):
    """MLflow refused the credentials (or got none), or the user lacks a permission."""


def actor() -> str:
    """Who is acting: the MLflow user, else the local account (no MLflow login: nothing verified it)."""
    user = os.environ.get(USERNAME, "").strip()
    if user:
        return user
    try:
        return f"local:{getpass.getuser()}"
    except (KeyError, OSError):  # a container's numeric uid without a passwd entry
        return f"local:uid{os.getuid()}"


def credentials_problem(uri: str) -> str:
    """The sentence for a 401: credentials missing, or refused."""
    user = os.environ.get(USERNAME, "").strip()
    if not user or not os.environ.get(PASSWORD):
        return (f"MLflow at {uri} requires a login and none was given: set {USERNAME} and {PASSWORD} "
                "(on Kubernetes, Secret cmunext-mlflow)")
    return f"MLflow at {uri} refused the credentials of user {user!r}: wrong username or password ({USERNAME}, {PASSWORD})"


def _status(exc: BaseException) -> int | None:
    code, text = getattr(exc, "error_code", None), str(exc)
    if code == "UNAUTHENTICATED" or "error code 401" in text:
        return 401
    if code == "PERMISSION_DENIED" or "error code 403" in text:
        return 403
    return None


def is_refusal(exc: BaseException) -> bool:
    """Whether an MLflow error is the server refusing the credentials or the permission (401/403)."""
    return _status(exc) is not None


def explain(exc: BaseException, uri: str, what: str) -> str | None:
    """A user-facing message for an MLflow 401/403 error, or None for any other error."""
    status = _status(exc)
    if status == 401:
        return f"{what}: {credentials_problem(uri)}. Nothing was changed."
    if status == 403:
        return (f"{what}: MLflow at {uri} denied user {actor()!r} the permission (403); {FIX}. "
                "Nothing was changed.")
    return None


@dataclass(frozen=True)
class Login:
    uri: str
    user: str | None  # None: the server has no authentication
    is_admin: bool = False


def _auth_request(uri: str, path: str, params: dict):
    import requests

    user, password = os.environ.get(USERNAME, "").strip(), os.environ.get(PASSWORD, "")
    auth = (user, password) if user and password else None
    try:
        return requests.get(uri.rstrip("/") + path, params=params, auth=auth, timeout=30)
    except requests.RequestException as exc:
        raise AccessDenied(f"MLflow at {uri} did not answer ({type(exc).__name__}): is it running?") from None


@functools.lru_cache(maxsize=8)
def _login(uri: str, user: str, password_digest: int) -> Login:
    resp = _auth_request(uri, "/api/2.0/mlflow/users/get", {"username": user or "-"})
    if resp.status_code == 401:
        raise AccessDenied(credentials_problem(uri))
    if resp.status_code == 404:  # no users API: the server runs without authentication
        return Login(uri, None)
    if resp.status_code != 200:
        raise AccessDenied(f"MLflow at {uri} answered {resp.status_code} to a login check: {resp.text[:200]}")
    return Login(uri, user, bool(resp.json()["user"].get("is_admin")))


def login(uri: str) -> Login:
    """Check the credentials against an MLflow server (once per process and user); local stores pass."""
    if not uri.startswith(("http://", "https://")):
        return Login(uri, None)
    user = os.environ.get(USERNAME, "").strip()
    return _login(uri, user, hash(os.environ.get(PASSWORD, "")))


def permission(uri: str, resource_type: str, resource_id: str) -> str:
    """The current user's effective permission on a resource ("MANAGE" for admins and servers without auth)."""
    who = login(uri)
    if who.user is None or who.is_admin:
        return "MANAGE"
    resp = _auth_request(uri, "/api/3.0/mlflow/users/permissions/get",
                         {"username": who.user, "resource_type": resource_type, "resource_id": resource_id})
    if resp.status_code != 200:
        raise AccessDenied(f"MLflow at {uri}: could not read the permission of {who.user!r} on "
                           f"{resource_type} {resource_id!r} ({resp.status_code}: {resp.text[:200]})")
    return resp.json()["permission"]


def experiment_id(uri: str, name: str) -> str | None:
    """The id of experiment NAME, None if it does not exist yet; AccessDenied if the user may not see it."""
    resp = _auth_request(uri, "/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": name})
    if resp.status_code == 404:
        return None
    if resp.status_code == 401:
        raise AccessDenied(credentials_problem(uri))
    if resp.status_code == 403:
        raise AccessDenied(f"MLflow at {uri}: user {actor()!r} may not read experiment {name!r}; {FIX}. "
                           "Nothing was changed.")
    resp.raise_for_status()
    return resp.json()["experiment"]["experiment_id"]


def model_exists(uri: str, name: str) -> bool:
    resp = _auth_request(uri, "/api/2.0/mlflow/registered-models/get", {"name": name})
    return resp.status_code != 404


def require_pipeline(uri: str, experiment: str, model: str) -> Login:
    """What a training run needs, checked before it starts: create runs in EXPERIMENT, register versions of
    MODEL and move its aliases."""
    if login(uri).user is None:
        return login(uri)
    return require(uri, [
        ("experiment", experiment_id(uri, experiment), "update", f"create runs in experiment {experiment!r}"),
        ("registered_model", model if model_exists(uri, model) else None, "update",
         f"register versions of {model!r} and move its aliases"),
    ])


def require(uri: str, needs: list[tuple[str, str, str, str]]) -> Login:
    """Refuse (AccessDenied, before anything is written) unless the user may do every one of NEEDS:
    (resource_type, resource_id, capability, what for), e.g. ("registered_model", "cmunext", "update",
    "promote a version"). A resource that does not exist yet needs nothing: creating it is allowed."""
    who = login(uri)
    if who.user is None or who.is_admin:
        return who
    for resource_type, resource_id, capability, purpose in needs:
        if resource_id is None:
            continue
        level = permission(uri, resource_type, resource_id)
        if capability not in CAN.get(level, set()):
            raise AccessDenied(f"MLflow at {uri}: user {who.user!r} has {level} on {resource_type} {resource_id!r}, "
                               f"which does not allow to {purpose}; {FIX}. Nothing was changed.")
    return who
