"""The prediction log's writer: one JSON line per answer, written in batches by a background thread to a folder or
an S3 prefix, under <sink>/<model>/<YYYY-MM-DD>/<time>-<host>-<pid>-<n>.jsonl (one object per batch: S3 objects
cannot be appended to, and a reader never sees a half-written batch of another writer).

The request path only appends to a bounded in-memory buffer: a slow or unreachable sink never slows or fails an
answer. When the buffer is full a record is dropped and counted (ON_DROP, exported on /metrics); the first drop
and the first failed write of a streak are logged once. bentoml.monitor writes through a logging file handler
on the request path, to the local disk only, with no bound: it does not fit, so this is the part written here.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

log = logging.getLogger("cmunext.serving")

ENV = "CMUNEXT_PREDICTION_LOG"


def sink_from_env() -> str | None:
    """$CMUNEXT_PREDICTION_LOG (a folder or s3://bucket/prefix; "off" disables), else <bento store>/predictions."""
    configured = os.environ.get(ENV)
    if configured:
        return None if configured.lower() in ("off", "none", "0", "false") else configured
    store = os.environ.get("CMUNEXT_BENTO_STORE")
    return f"{store.rstrip('/')}/predictions" if store else None


class PredictionLog:
    def __init__(self, sink: str, model: str, capacity: int = 10_000, flush_seconds: float = 5.0,
                 on_write: Callable[[int], None] = lambda n: None, on_drop: Callable[[int], None] = lambda n: None):
        self.sink, self.model, self.capacity, self.flush_seconds = sink.rstrip("/"), model, capacity, flush_seconds
        self.on_write, self.on_drop = on_write, on_drop
        self.written = self.dropped = self._batches = 0
        self._buffer: deque[dict] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
        self._thread.start()

    def add(self, record: dict) -> bool:
        """Buffer RECORD for the next batch; False (and counted) when the buffer is full."""
        with self._lock:
            if len(self._buffer) < self.capacity:
                self._buffer.append(record)
                return True
        self._count_drops(1)
        return False

    def flush(self) -> int:
        """Write what is buffered now; returns how many records were written (0 when the sink failed)."""
        with self._lock:
            batch = list(self._buffer)
            self._buffer.clear()
        if not batch:
            return 0
        try:
            self._write(batch)
        except Exception as exc:  # noqa: BLE001 - any sink failure: keep the records, bounded, and say so once
            self._requeue(batch, exc)
            return 0
        self._failing = False
        self.written += len(batch)
        self.on_write(len(batch))
        return len(batch)

    def close(self, timeout: float = 10.0) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()
        self.flush()

    def _requeue(self, batch: list[dict], exc: Exception) -> None:
        if not self._failing:
            log.warning("prediction log: cannot write to %s (%s: %s); keeping up to %d records in memory and "
                        "retrying every %.0f s", self.sink, type(exc).__name__, exc, self.capacity, self.flush_seconds)
        self._failing = True
        with self._lock:
            room = self.capacity - len(self._buffer)
            kept = batch[-room:] if room > 0 else []
            self._buffer.extendleft(reversed(kept))
        self._count_drops(len(batch) - len(kept))

    def _count_drops(self, n: int) -> None:
        if n <= 0:
            return
        if self.dropped == 0:
            log.warning("prediction log: buffer of %d records full; dropping records (count on /metrics as "
                        "cmunext_prediction_log_dropped_total)", self.capacity)
        self.dropped += n
        self.on_drop(n)

    def _write(self, batch: list[dict]) -> None:
        by_day: dict[str, list[dict]] = {}
        for record in batch:
            by_day.setdefault(record["time"][:10], []).append(record)
        for day, records in by_day.items():
            self._batches += 1
            name = f"{datetime.now(timezone.utc):%H%M%S.%f}-{socket.gethostname()}-{os.getpid()}-{self._batches}.jsonl"
            body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
            put(f"{self.sink}/{self.model}/{day}/{name}", body)


def put(uri: str, body: bytes) -> None:
    """Write BODY to a path or s3:// URI, whole or not at all (a local file appears under its name complete)."""
    if uri.startswith("s3://"):
        import boto3
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".partial")
    tmp.write_bytes(body)
    tmp.replace(path)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
