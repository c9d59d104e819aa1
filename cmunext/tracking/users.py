"""`cmunext registry users apply FILE`: the MLflow users of the project and what each may do, applied
idempotently by an MLflow admin. A user's permissions come from their role:

- pipeline: creates runs in the experiment, registers versions of the model and moves its aliases (EDIT);
- reviewer: reads the runs; promotes and rolls back the model (MANAGE: rollback may delete an alias);
- reader: reads the experiment and the model, to serve the champion (READ).

Everyone else gets the server's default permission, which docs/security.md sets to NO_PERMISSIONS.
Passwords never sit in FILE: each user names an environment variable (`password_env`) or a file
(`password_file`, e.g. a mounted Secret) that holds it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import CmunextError
from . import access

ROLES: dict[str, dict[str, str]] = {
    "pipeline": {"experiment": "EDIT", "registered_model": "EDIT"},
    "reviewer": {"experiment": "READ", "registered_model": "MANAGE"},
    "reader": {"experiment": "READ", "registered_model": "READ"},
}


class UsersFileError(CmunextError):
    pass


class User(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    role: Literal["pipeline", "reviewer", "reader"]
    password_env: str | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _one_password_source(self):
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        return self

    def password(self, base: Path) -> str | None:
        if self.password_env:
            return os.environ.get(self.password_env) or None
        if self.password_file:
            path = (base / self.password_file) if not Path(self.password_file).is_absolute() else Path(self.password_file)
            return (path.read_text().strip() or None) if path.is_file() else None
        return None

    def source(self) -> str:
        return f"${self.password_env}" if self.password_env else (self.password_file or "no password source")


class UsersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    experiment: str = "cmunext"
    model: str = "cmunext"
    users: list[User]


def load(path: str | Path) -> UsersFile:
    path = Path(path)
    try:
        parsed = UsersFile.model_validate(yaml.safe_load(path.read_text()) or {})
    except FileNotFoundError:
        raise UsersFileError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise UsersFileError(f"{path}: not valid YAML ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise UsersFileError(f"{path}: {problems}") from None
    names = [u.name for u in parsed.users]
    if len(set(names)) != len(names):
        raise UsersFileError(f"{path}: a user is listed twice ({sorted({n for n in names if names.count(n) > 1})})")
    return parsed


def _code(exc: Exception) -> str | None:
    return getattr(exc, "error_code", None)


def _ensure_user(client, uri: str, user: User, base: Path) -> str:
    from mlflow.exceptions import MlflowException

    password = user.password(base)
    try:
        client.get_user(user.name)
    except MlflowException as exc:
        if _code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        if password is None:
            raise UsersFileError(f"user {user.name!r} does not exist yet and {user.source()} gives no password") from None
        client.create_user(user.name, password)
        return "created"
    if password is None or _password_works(uri, user.name, password):
        return "exists"
    client.update_user_password(user.name, password)
    return "password updated"


def _password_works(uri: str, name: str, password: str) -> bool:
    import requests
    resp = requests.get(uri.rstrip("/") + "/api/2.0/mlflow/users/get", params={"username": name},
                        auth=(name, password), timeout=30)
    return resp.status_code == 200


def _grant(client, name: str, resource_type: str, resource_id: str, level: str) -> str:
    from mlflow.exceptions import MlflowException
    try:
        client.grant_user_permission(name, resource_type, resource_id, level)
        return "granted"
    except MlflowException as exc:
        if _code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
    if client.get_user_permission(name, resource_type, resource_id).permission == level:
        return "unchanged"
    client.revoke_user_permission(name, resource_type, resource_id)
    client.grant_user_permission(name, resource_type, resource_id, level)
    return "changed"


def apply(path: str | Path) -> list[str]:
    """Create the users of PATH, set their passwords and grant their roles' permissions; returns a line
    per change or check. Running it twice changes nothing the second time."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from .mlflow_runs import setup, tracking_uri

    spec = load(path)
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        raise UsersFileError(f"users live on an MLflow server with authentication; MLFLOW_TRACKING_URI is {uri}")
    who = access.login(uri)
    if who.user is None:
        raise UsersFileError(f"MLflow at {uri} runs without authentication (start it with --app-name basic-auth)")
    if not who.is_admin:
        raise access.AccessDenied(f"MLflow at {uri}: user {who.user!r} is not an admin; "
                                  "`registry users apply` runs with the admin's credentials")
    client = get_app_client("basic-auth", tracking_uri=uri)
    lines = []
    try:
        experiment_id = setup(spec.experiment)
        registry = mlflow.MlflowClient()
        try:
            registry.get_registered_model(spec.model)
        except MlflowException:
            registry.create_registered_model(spec.model, description="CMUNeXt lesion segmentation; alias 'champion' is served")
            lines.append(f"registered model {spec.model!r}: created")
        ids = {"experiment": experiment_id, "registered_model": spec.model}
        for user in spec.users:
            state = _ensure_user(client, uri, user, Path(path).parent)
            grants = [f"{kind} {ids[kind]!r} {level} ({_grant(client, user.name, kind, ids[kind], level)})"
                      for kind, level in ROLES[user.role].items()]
            lines.append(f"{user.name} ({user.role}): {state}; " + ", ".join(grants))
    except MlflowException as exc:
        raise UsersFileError(f"{path}: MLflow at {uri} refused a change: {str(getattr(exc, 'message', exc))[:300]}") from None
    return lines
