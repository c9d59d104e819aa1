"""Shadow traffic: a candidate version answers a copy of the live requests, and only how it compares with the
champion is kept. The champion's answer never waits for the candidate: the copy is queued after the answer is
ready, a bounded queue drops copies when the candidate falls behind (counted), and a dead, slow or failing
candidate only adds to an error count. Per copy: mask IoU and Dice against the champion's mask, whether both
see a lesion, both servers' own times (Server-Timing) and the round trip, the error if any. Records go to the prediction log's sink under
`_shadow/<model>/v<candidate>/<date>/` (read by `cmunext registry shadow`), and the counts and distributions to
/metrics.

Settings (environment, written by `cmunext serve --shadow` and `cmunext deploy --shadow`): CMUNEXT_SHADOW_URL (the
candidate's base URL), CMUNEXT_SHADOW_VERSION (its registry version), CMUNEXT_SHADOW_RATE (share of requests
copied, default 1), CMUNEXT_SHADOW_TIMEOUT (seconds, default 30), CMUNEXT_SHADOW_WORKERS (default 2).
"""
from __future__ import annotations

import io
import logging
import os
import queue
import threading
import time

import numpy as np

from .prediction_log import PredictionLog, now_iso

log = logging.getLogger("cmunext.serving")

QUEUE_SIZE = 64


def shadow_root(sink: str, model: str) -> str:
    return f"{sink.rstrip('/')}/_shadow/{model}"


def agreement(champion: np.ndarray, candidate: np.ndarray) -> dict:
    """IoU and Dice of two binary masks (1.0 when both are empty), and whether both see a lesion or both not."""
    a, b = champion > 0, candidate > 0
    inter, union, total = int((a & b).sum()), int((a | b).sum()), int(a.sum() + b.sum())
    return {"iou": inter / union if union else 1.0, "dice": 2 * inter / total if total else 1.0,
            "champion_lesion": bool(a.any()), "candidate_lesion": bool(b.any()),
            "lesion_agrees": bool(a.any()) == bool(b.any())}


class Shadow:
    """Copies of the served requests to the candidate at URL, compared off the request path."""

    def __init__(self, url: str, model: str, champion: str, candidate: str, sink: str | None, *, rate: float = 1.0,
                 timeout: float = 30.0, workers: int = 2, token: str | None = None, metrics: dict | None = None):
        self.url, self.model, self.champion, self.candidate = url.rstrip("/"), model, champion, candidate
        self.rate, self.timeout, self.token = rate, timeout, token
        self.metrics = metrics or {}
        self.log = PredictionLog(shadow_root(sink, model), f"v{candidate}") if sink else None
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._failing = False
        for i in range(workers):
            threading.Thread(target=self._work, name=f"shadow-{i}", daemon=True).start()

    def wants(self, request_id: str) -> bool:
        """A stable draw from the request id, at the shadow rate."""
        return self.rate > 0 and int(request_id[-8:], 16) / 0xFFFFFFFF < self.rate

    def submit(self, request_id: str, data: bytes, mask: np.ndarray, champion_ms: float) -> None:
        """Queue a copy; a full queue skips it (counted), so the caller never waits."""
        try:
            self._queue.put_nowait((request_id, data, mask, champion_ms))
        except queue.Full:
            self._count("skipped")

    def close(self) -> None:
        if self.log:
            self.log.close()

    def _work(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with httpx.Client(timeout=self.timeout, headers=headers) as client:
            while True:
                self._compare(client, *self._queue.get())

    def _compare(self, client, request_id: str, data: bytes, mask: np.ndarray, champion_ms: float) -> None:
        record = {"request_id": request_id, "time": now_iso(), "model": self.model, "champion": self.champion,
                  "candidate": self.candidate, "champion_ms": round(champion_ms, 2)}
        t0 = time.perf_counter()
        try:
            answer = client.post(f"{self.url}/segment", files={"image": ("image", data, "application/octet-stream")})
            answer.raise_for_status()
            record.update(agreement(mask, _png_mask(answer.content)))
            record["candidate_ms"] = _server_time(answer.headers.get("Server-Timing"))
            outcome = "answered"
        except Exception as exc:  # noqa: BLE001 - whatever the candidate does wrong is its error, never the caller's
            record["error"] = f"{type(exc).__name__}: {exc}"[:300]
            outcome = "error"
            self._say_once(exc)
        record["roundtrip_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        record.setdefault("candidate_ms", None)
        self._count(outcome)
        if outcome == "answered":
            self._observe("iou", record["iou"])
            self._observe("latency", (record["candidate_ms"] or record["roundtrip_ms"]) / 1000)
        if self.log:
            self.log.add(record)

    def _say_once(self, exc: Exception) -> None:
        if not self._failing:
            log.warning("shadow: candidate v%s at %s failed (%s: %s); counting its errors, the champion keeps "
                        "answering", self.candidate, self.url, type(exc).__name__, exc)
        self._failing = True

    def _count(self, outcome: str) -> None:
        if "requests" in self.metrics:
            self.metrics["requests"].labels(candidate=self.candidate, outcome=outcome).inc()

    def _observe(self, name: str, value: float) -> None:
        if name in self.metrics:
            self.metrics[name].labels(candidate=self.candidate).observe(value)


def _server_time(header: str | None) -> float | None:
    """The `total` duration (ms) of a Server-Timing header: the candidate's own time, like the champion's."""
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        if name == "total" and params.startswith("dur="):
            return float(params[4:])
    return None


def _png_mask(data: bytes) -> np.ndarray:
    from PIL import Image
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"))


def shadow_from_env(model: str, champion: str, sink: str | None, token: str | None, metrics: dict) -> Shadow | None:
    url = os.environ.get("CMUNEXT_SHADOW_URL")
    if not url:
        return None
    candidate = os.environ.get("CMUNEXT_SHADOW_VERSION", "unknown")
    rate = float(os.environ.get("CMUNEXT_SHADOW_RATE", "1"))
    print(f"cmunext.serving: shadowing {rate:.0%} of the requests to candidate v{candidate} at {url}", flush=True)
    return Shadow(url, model, champion, candidate, sink, rate=rate,
                  timeout=float(os.environ.get("CMUNEXT_SHADOW_TIMEOUT", "30")),
                  workers=int(os.environ.get("CMUNEXT_SHADOW_WORKERS", "2")), token=token, metrics=metrics)
