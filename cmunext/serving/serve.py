"""Find a packaged bento and run `bentoml serve` on it (or on a BentoML model, with the same serving code)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from .package import BENTO_NAME, SERVICE, bentoml_home, stage_bundle, stores

log = logging.getLogger(__name__)


def _by_newest(items):
    return sorted(items, key=lambda item: item.info.creation_time, reverse=True)


def find_bento(model_version: str | int | None = None, model_name: str | None = None) -> str:
    """Tag of the newest bento built for MLflow model version MODEL_VERSION (of MODEL_NAME, if given),
    or of the newest bento at all when MODEL_VERSION is None. LookupError when there is none."""
    from bentoml.exceptions import NotFound

    _, bento_store = stores()
    try:
        bentos = bento_store.list(BENTO_NAME)
    except NotFound:
        bentos = []
    matching = [b for b in bentos
                if (model_version is None or b.info.labels.get("mlflow_version") == str(model_version))
                and (model_name is None or b.info.labels.get("mlflow_model") == model_name)]
    if not matching:
        what = "any model" if model_version is None else f"model version {model_version}"
        raise LookupError(f"no {BENTO_NAME} bento for {what}{f' of {model_name}' if model_name else ''} "
                          f"in {bentoml_home()} (run the pipeline's package step first)")
    return str(_by_newest(matching)[0].tag)


def bento_for_version(model_version: str | int, model_name: str) -> str:
    """The bento of MODEL_NAME's version: from the local store, else fetched from the bento store the version
    records (bento_uri, checked against bento_sha256), so a machine with an empty state folder serves it."""
    from . import store
    from ..tracking import registry

    try:
        return find_bento(model_version, model_name)
    except LookupError as missing:
        tags = registry.version_tags(model_name, str(model_version))
        if not tags.get("bento_uri"):
            raise LookupError(f"{missing}; version {model_version} records no bento_uri either") from None
        log.info("fetching version %s's bento from %s", model_version, tags["bento_uri"])
        return store.fetch(tags["bento_uri"], tags["bento_sha256"], bentoml_home())


def resolve(target: str | None = None) -> tuple[str, str]:
    """("bento", tag) or ("model", tag) for a bento tag, a BentoML model tag, or None (the newest bento)."""
    from bentoml.exceptions import BentoMLException

    if target is None:
        return "bento", find_bento()
    model_store, bento_store = stores()
    for kind, store in (("bento", bento_store), ("model", model_store)):
        try:
            return kind, str(store.get(target).tag)
        except (BentoMLException, ValueError):
            continue
    raise LookupError(f"{target!r} is neither a bento nor a BentoML model in {bentoml_home()}")


def serve_command(target: str | None = None, host: str = "127.0.0.1", port: int = 3000) -> tuple[list[str], dict]:
    """The `bentoml serve` command line and environment for TARGET (see `resolve`)."""
    kind, tag = resolve(target)
    from cmunext_serving.prediction_log import ENV as LOG_ENV

    from ..monitoring.records import sink
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home()), "BENTOML_DO_NOT_TRACK": "True", "PYTHONUNBUFFERED": "1"}
    env.setdefault(LOG_ENV, sink(None))  # where `cmunext monitor drift` reads it
    cmd = [sys.executable, "-m", "bentoml", "serve"]
    if kind == "bento":
        env.pop("CMUNEXT_BENTO_MODEL", None)  # a bento serves the model it was built with
        cmd.append(tag)
    else:
        src = stage_bundle(bentoml_home() / "tmp" / "serving-src")
        env["CMUNEXT_BENTO_MODEL"] = tag
        cmd += [SERVICE, "--working-dir", str(src)]
    return cmd + ["--host", host, "--port", str(port)], env


def start_server(target: str | None = None, host: str = "127.0.0.1", port: int = 3000, *,
                 env: dict | None = None, log_file: str | Path | None = None) -> subprocess.Popen:
    """Start `bentoml serve` in the background; ENV adds to (or, with None values, removes from) its environment."""
    cmd, full_env = serve_command(target, host, port)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = str(value)
    out = open(log_file, "ab") if log_file else None
    log.info("starting: %s", " ".join(cmd))
    try:
        return subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True)
    finally:
        if out:
            out.close()


def serve(bento_or_model_tag: str | None = None, host: str = "127.0.0.1", port: int = 3000,
          env: dict | None = None) -> int:
    """Serve a bento (default: the newest) or a BentoML model in the foreground; returns the server's exit code.
    SIGTERM and SIGINT go on to the server (its own process group, workers included), and this process ends
    when the server does: `kill` of `cmunext serve` never leaves a server holding the port."""
    import signal

    proc = start_server(bento_or_model_tag, host, port, env=env)

    def forward(signum, _frame):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            return proc.wait()
        finally:
            if proc.poll() is None:  # interrupted some other way: never leave the server behind
                forward(signal.SIGTERM, None)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
