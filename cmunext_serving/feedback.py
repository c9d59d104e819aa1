"""Captured images and the corrections that come back for them, in the store the prediction log uses:

    <root>/<model>/images/<sha256>.<png|jpg>     the uploaded bytes, content-addressed (opt-in: capture rate)
    <root>/<model>/requests/<request id>.json    which capture a request was, its size, model and version
    <root>/<model>/masks/<request id>.png        the mask that came back (0/255), or the served one when the
                                                 reviewer said "prediction correct"
    <root>/<model>/labels/<request id>.json      the feedback: verdict, time, capture, model, version

<root> is the prediction log's root with /predictions replaced by /feedback. Captures are written off the request
path (a bounded queue: a full one skips the capture, never the answer); feedback is written at once (a 201 means
it is stored). Nothing is overwritten: a second feedback for one request is refused. Retention: captures and
their request records older than CMUNEXT_CAPTURE_RETENTION_DAYS are deleted by the writer (local folders; on S3,
a lifecycle rule on the prefix does it: docs/security.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from pathlib import Path

from .prediction_log import now_iso, put

log = logging.getLogger("cmunext.serving")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FeedbackRefused(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def feedback_root(predictions_root: str) -> str:
    root = predictions_root.rstrip("/")
    return root[: -len("/predictions")] + "/feedback" if root.endswith("/predictions") else root + "-feedback"


def get(uri: str) -> bytes | None:
    """The bytes at a path or s3:// URI, None when there is nothing there."""
    if uri.startswith("s3://"):
        import boto3
        from botocore.exceptions import ClientError
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
    path = Path(uri)
    return path.read_bytes() if path.is_file() else None


def listing(prefix: str, suffix: str) -> list[str]:
    """The URIs under PREFIX (a folder or s3:// prefix) that end with SUFFIX, sorted."""
    if prefix.startswith("s3://"):
        import boto3
        bucket, _, key = prefix.removeprefix("s3://").partition("/")
        pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key.rstrip("/") + "/")
        return sorted(f"s3://{bucket}/{o['Key']}" for page in pages for o in page.get("Contents", [])
                      if o["Key"].endswith(suffix))
    folder = Path(prefix)
    return sorted(str(p) for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []


class CaptureStore:
    def __init__(self, root: str, model: str, version: str, rate: float, retention_days: float = 30.0,
                 queue_size: int = 32) -> None:
        self.prefix, self.model, self.version = f"{root.rstrip('/')}/{model}", model, version
        self.rate, self.retention_days = rate, retention_days
        self.skipped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._last_sweep = 0.0
        threading.Thread(target=self._loop, name="captures", daemon=True).start()

    def wants(self, request_id: str) -> bool:
        """Whether to capture this request: a stable draw from its id, at the capture rate."""
        return self.rate > 0 and int(request_id[:8], 16) / 0xFFFFFFFF < self.rate

    def capture(self, request_id: str, data: bytes, width: int, height: int) -> None:
        try:
            self._queue.put_nowait((request_id, data, width, height))
        except queue.Full:
            self.skipped += 1

    def lookup(self, request_id: str) -> dict | None:
        body = get(f"{self.prefix}/requests/{request_id}.json")
        return json.loads(body) if body else None

    def store(self, request_id: str, verdict: str, mask_png: bytes) -> dict:
        """Keep MASK_PNG and the feedback for REQUEST_ID; FeedbackRefused when there is feedback already."""
        if get(f"{self.prefix}/labels/{request_id}.json") is not None:
            raise FeedbackRefused(409, f"request {request_id} already has feedback; nothing is overwritten")
        captured = self.lookup(request_id) or {}
        label = {"request_id": request_id, "verdict": verdict, "time": now_iso(), "model": self.model,
                 "version": captured.get("version", self.version), "image": captured.get("image"),
                 "width": captured.get("width"), "height": captured.get("height")}
        put(f"{self.prefix}/masks/{request_id}.png", mask_png)
        put(f"{self.prefix}/labels/{request_id}.json", json.dumps(label).encode())
        return label

    def _loop(self) -> None:
        while True:
            request_id, data, width, height = self._queue.get()
            try:
                self._write(request_id, data, width, height)
                self._sweep()
            except Exception as exc:  # noqa: BLE001 - a capture is best effort: the answer went out already
                log.warning("capture of request %s not stored (%s: %s)", request_id, type(exc).__name__, exc)

    def _write(self, request_id: str, data: bytes, width: int, height: int) -> None:
        suffix = "png" if data.startswith(PNG_MAGIC) else "jpg"
        name = f"{hashlib.sha256(data).hexdigest()}.{suffix}"
        if get(f"{self.prefix}/images/{name}") is None:
            put(f"{self.prefix}/images/{name}", data)
        record = {"request_id": request_id, "image": name, "width": width, "height": height, "time": now_iso(),
                  "model": self.model, "version": self.version}
        put(f"{self.prefix}/requests/{request_id}.json", json.dumps(record).encode())

    def _sweep(self) -> None:
        """Delete local captures (and their request records) past the retention, at most once an hour."""
        if self.prefix.startswith("s3://") or time.time() - self._last_sweep < 3600:
            return
        self._last_sweep = time.time()
        cutoff = time.time() - self.retention_days * 86400
        labelled = {json.loads(p.read_text()).get("image") for p in Path(self.prefix, "labels").glob("*.json")}
        for folder in ("images", "requests"):
            for path in Path(self.prefix, folder).glob("*"):
                if path.stat().st_mtime < cutoff and path.name not in labelled:  # a corrected image stays
                    path.unlink(missing_ok=True)
