"""Reading the prediction log (written by cmunext_serving/prediction_log.py) from a folder or an S3 prefix: every
complete record is read; a torn line (a writer killed mid-line, a truncated copy) is skipped and reported."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import CmunextError


class LogUnreadable(CmunextError, OSError):
    """The prediction log's folder or prefix cannot be listed or read; the message names it."""


@dataclass
class Window:
    records: list[dict]
    files: int = 0
    torn: list[str] = field(default_factory=list)  # "file:line" of each line that is not a complete record


def sink(configured: str | None) -> str:
    """The prediction log's root: monitoring.prediction_log, else what the server uses (same rule)."""
    from cmunext_serving.prediction_log import sink_from_env

    from ..serving import store
    found = configured or sink_from_env() or f"{store.root()}/predictions"
    return found.rstrip("/")


def read(root: str, model: str, version: str | None = None, since: datetime | None = None,
         last: int | None = None) -> Window:
    """Records of MODEL (served by VERSION, if given) from ROOT, newer than SINCE, at most the LAST newest."""
    window = Window(records=[])
    for name, text in _files(f"{root}/{model}", since):
        window.files += 1
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                window.torn.append(f"{name}:{i}")
                continue
            if version and str(record.get("version")) != str(version):
                continue
            if since and _when(record) < since:
                continue
            window.records.append(record)
    window.records.sort(key=lambda r: r.get("time", ""))
    if last:
        window.records = window.records[-last:]
    return window


def _when(record: dict) -> datetime:
    return datetime.fromisoformat(record["time"])


def _files(prefix: str, since: datetime | None):
    """(name, text) of each .jsonl under PREFIX/<date>/, skipping the days before SINCE."""
    first_day = since.astimezone(timezone.utc).strftime("%Y-%m-%d") if since else ""
    if prefix.startswith("s3://"):
        yield from _s3_files(prefix, first_day)
        return
    folder = Path(prefix)
    if not folder.is_dir():
        return
    try:
        for day in sorted(p for p in folder.iterdir() if p.is_dir() and p.name >= first_day):
            for path in sorted(day.glob("*.jsonl")):
                yield str(path), path.read_text(errors="replace")
    except OSError as exc:
        raise LogUnreadable(f"cannot read the prediction log at {prefix}: {exc}") from exc


def _s3_files(prefix: str, first_day: str):
    import boto3
    bucket, _, key = prefix.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/"):
            for obj in page.get("Contents", []):
                day = obj["Key"][len(key) + 1:].split("/")[0]
                if obj["Key"].endswith(".jsonl") and day >= first_day:
                    body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                    yield f"s3://{bucket}/{obj['Key']}", body.decode(errors="replace")
    except Exception as exc:  # noqa: BLE001 - botocore's many error types: one message naming the prefix
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS's S3")
        raise LogUnreadable(f"cannot read the prediction log at {prefix} (endpoint {endpoint}): "
                            f"{type(exc).__name__}: {exc}") from exc
