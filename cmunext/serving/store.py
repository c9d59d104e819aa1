"""The bento store: where each registered version's .bento archive is kept for deployments, so any machine
that reaches MLflow and the store can serve the champion (nothing depends on the disk that built it).

`registry.bento_store`, or $CMUNEXT_BENTO_STORE, names it: a folder (default: <state folder>/bento-store) or
s3://bucket/prefix, with the S3 endpoint and credentials from the standard AWS_* variables (AWS_ENDPOINT_URL
included). The package step puts the archive there and records its URI and sha256 on the MLflow version;
`fetch` downloads it, checks the sha256 and imports it into the local BentoML store.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cmunext_serving.fingerprint import sha256_file

from ..errors import CmunextError
from ..paths import state_dir

ENV = "CMUNEXT_BENTO_STORE"


class BentoStoreError(CmunextError, RuntimeError):
    """The store could not be written or read, or an archive is not the one recorded; the message says which."""


def root(configured: str | None = None) -> str:
    return os.environ.get(ENV) or configured or str(state_dir() / "bento-store")


def use(configured: str | None) -> None:
    """Make a config's registry.bento_store this process's store (the registry's lease lives there too), unless
    $CMUNEXT_BENTO_STORE already names one."""
    if configured and not os.environ.get(ENV):
        os.environ[ENV] = configured


def archive_uri(store: str, model_name: str, version: str | int, bento_tag: str) -> str:
    return f"{store.rstrip('/')}/{model_name}/v{version}/{bento_tag.replace(':', '-')}.bento"


def _s3(uri: str):
    import boto3
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return boto3.client("s3"), bucket, key  # endpoint and credentials: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...


def _failure(action: str, uri: str, exc: Exception) -> BentoStoreError:
    from ..storage_errors import classify
    from .package import STORAGE_CAUSES

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS's S3"
    where = f"{uri} (endpoint {endpoint})" if uri.startswith("s3://") else uri
    kind, _ = classify(exc)
    cause = STORAGE_CAUSES.get(kind) if uri.startswith("s3://") else None
    return BentoStoreError(f"cannot {action} {where}: " + (f"{cause} " if cause else "")
                           + f"({type(exc).__name__}: {exc})")


def put(archive: str | Path, uri: str) -> str:
    """Copy ARCHIVE to URI; returns its sha256."""
    digest = sha256_file(archive)
    try:
        if uri.startswith("s3://"):
            client, bucket, key = _s3(uri)
            client.upload_file(str(archive), bucket, key)
        else:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(uri).with_suffix(".partial")
            shutil.copyfile(archive, tmp)
            tmp.replace(uri)
    except Exception as exc:  # botocore and OS errors alike: one message naming the store
        raise _failure("write the bento archive to", uri, exc) from exc
    return digest


def download(uri: str, sha256: str, dest: str | Path) -> Path:
    """Copy URI to DEST and check it is the archive recorded (SHA256); DEST is removed when it is not."""
    dest = Path(dest)
    try:
        if uri.startswith("s3://"):
            client, bucket, key = _s3(uri)
            client.download_file(bucket, key, str(dest))
        else:
            shutil.copyfile(uri, dest)
    except Exception as exc:
        raise _failure("read the bento archive", uri, exc) from exc
    found = sha256_file(dest)
    if found != sha256:
        dest.unlink()
        raise BentoStoreError(f"{uri} is not the archive the package step recorded (sha256 {found[:12]}…, "
                              f"recorded {sha256[:12]}…): refusing to serve it")
    return dest


def fetch(uri: str, sha256: str, home: str | Path) -> str:
    """Download URI, check it is the archive recorded (SHA256) and import it into the BentoML store at HOME;
    returns the bento's tag."""
    with tempfile.TemporaryDirectory(prefix="cmunext-bento-fetch-") as tmp:
        return import_archive(download(uri, sha256, Path(tmp) / Path(uri).name), home, uri)


def import_archive(archive: str | Path, home: str | Path, name: str | None = None) -> str:
    """Import a .bento archive into the BentoML store at HOME (its model with it); returns the bento's tag."""
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("CMUNEXT_BENTO_MODEL", None)
    proc = subprocess.run([sys.executable, "-m", "bentoml", "import", str(archive)], env=env,
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 and "already exists" not in output:
        raise BentoStoreError(f"cannot import {name or archive}: {(proc.stderr or proc.stdout)[-500:]}")
    tags = [w.rstrip(").,") for w in output.replace('"', " ").replace("'", " ").split() if w.startswith("cmunext-service:")]
    if not tags:
        raise BentoStoreError(f"imported {name or archive} but bentoml named no bento: {proc.stdout[-300:]}")
    return tags[0]
