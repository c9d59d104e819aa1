"""The promotion lease: one writer at a time for a model's aliases and history, across machines that share only
MLflow and the bento store (pods with their own disks). It lives beside the model's archives in the bento store
(cmunext/serving/store.py): <store>/<model>/promotion.lease.

- s3:// stores: conditional writes. Acquire: PUT If-None-Match: * (one creator wins). A lease past its expiry
  (its holder crashed) or released is taken over with PUT If-Match: <its ETag> (one taker wins). Release: PUT
  If-Match: <own ETag> of a released lease, so a holder whose lease expired and was taken cannot undo the taker's.
- folders: an exclusive flock on the lease file (the kernel releases it when the holder dies), which serialises
  the processes of every machine that mounts the folder.

The lease serialises; the compare-and-set against the champion a gate saw (registry.promote) still decides
whether a promotion may happen at all.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CmunextError

TTL_S = 120.0   # a holder that crashed blocks the others this long at most
WAIT_S = 180.0  # how long to wait for another holder before giving up


class LeaseTimeout(CmunextError, TimeoutError):
    """Another process held the lease for longer than we may wait; the message names it."""


def _holder() -> str:
    from . import access
    return f"{access.actor()}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _body(holder: str, ttl: float, released: bool = False) -> bytes:
    return json.dumps({"holder": holder, "expires": 0 if released else time.time() + ttl,
                       "released": released}).encode()


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


@contextmanager
def _s3_lease(uri: str, ttl: float, wait: float) -> Iterator[dict]:
    import boto3
    from botocore.exceptions import ClientError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    client, holder = boto3.client("s3"), _holder()
    deadline, seen, waited_on = time.monotonic() + wait, None, None
    while True:
        try:
            if seen is None:
                etag = client.put_object(Bucket=bucket, Key=key, Body=_body(holder, ttl), IfNoneMatch="*")["ETag"]
            else:  # take over an expired or released lease, only if nobody changed it since we read it
                etag = client.put_object(Bucket=bucket, Key=key, Body=_body(holder, ttl), IfMatch=seen)["ETag"]
            break
        except ClientError as exc:
            if _code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409", "NoSuchKey"):
                raise
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
            current = json.loads(obj["Body"].read())
            seen = obj["ETag"] if current["released"] or current["expires"] < time.time() else None
            waited_on = current["holder"]
        except ClientError as exc:
            if _code(exc) != "NoSuchKey":
                raise
            seen = None  # released by deletion in between: create it again
        if seen is None and time.monotonic() > deadline:
            raise LeaseTimeout(f"the promotion lease {uri} is held by {waited_on}; waited {wait:.0f} s (it expires "
                               f"{TTL_S:.0f} s after its holder's last renewal)")
        if seen is None:
            time.sleep(0.5)
    try:
        yield {"uri": uri, "holder": holder}
    finally:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=_body(holder, ttl, released=True), IfMatch=etag)
        except ClientError:
            pass  # ours expired and another process holds it now: leave theirs alone


@contextmanager
def _file_lease(path: Path, wait: float) -> Iterator[dict]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    with open(path, "a+") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    f.seek(0)
                    raise LeaseTimeout(f"the promotion lease {path} is held by {f.read().strip() or 'another process'}"
                                       f"; waited {wait:.0f} s") from None
                time.sleep(0.2)
        holder = _holder()
        f.seek(0)
        f.truncate()
        f.write(holder)
        f.flush()
        try:
            yield {"uri": str(path), "holder": holder}
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def held(model_name: str, ttl: float = TTL_S, wait: float = WAIT_S) -> Iterator[dict]:
    """Hold MODEL_NAME's promotion lease in the bento store for the block."""
    from ..serving import store

    root = store.root(None)
    if root.startswith("s3://"):
        with _s3_lease(f"{root.rstrip('/')}/{model_name}/promotion.lease", ttl, wait) as lease:
            yield lease
    else:
        with _file_lease(Path(root) / model_name / "promotion.lease", wait) as lease:
            yield lease
