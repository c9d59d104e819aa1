"""A canary on one machine: the serving front sends a share of the valid requests to the candidate and returns its
answer, watches the candidate against the champion every analysis interval, and on a breach sends everything back
to the champion at once. On Kubernetes, Flagger does this (infra/k8s/rollout, docs/rollout.md); this is the same
rule where there is no cluster.

A candidate's failure (connection refused, timeout, any non-2xx answer to a request the champion could decode) is
counted and never shown to the caller: the champion answers that request. A breach is an error rate above
CMUNEXT_CANARY_MAX_ERROR_RATE or a p95 latency above CMUNEXT_CANARY_MAX_LATENCY_RATIO times the champion's (each
server's own time, from Server-Timing), over at least CMUNEXT_CANARY_MIN_REQUESTS candidate requests of one
interval (CMUNEXT_CANARY_INTERVAL seconds). The decision is written to <log>/_canary/<model>/v<candidate>.json
(`cmunext serve --canary` records it in the registry history) and shown on /metrics.
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .prediction_log import now_iso, put

log = logging.getLogger("cmunext.serving")


def decision_uri(sink: str, model: str, candidate: str) -> str:
    return f"{sink.rstrip('/')}/_canary/{model}/v{candidate}.json"


@dataclass
class Rule:
    weight: float
    interval_s: float = 60.0
    max_error_rate: float = 0.05
    max_latency_ratio: float = 1.5
    min_requests: int = 10
    timeout_s: float = 5.0


@dataclass
class Window:
    started: float = field(default_factory=time.monotonic)
    candidate_ms: list[float] = field(default_factory=list)
    champion_ms: list[float] = field(default_factory=list)
    errors: int = 0


def breach(window: Window, rule: Rule) -> str | None:
    """Why WINDOW breaks RULE, or None (also when it holds too few candidate requests to judge)."""
    n = len(window.candidate_ms) + window.errors
    if n < rule.min_requests:
        return None
    if window.errors / n > rule.max_error_rate:
        return f"error rate {window.errors}/{n} = {window.errors / n:.1%} > {rule.max_error_rate:.1%}"
    if window.candidate_ms and window.champion_ms:
        ratio = float(np.percentile(window.candidate_ms, 95) / np.percentile(window.champion_ms, 95))
        if ratio > rule.max_latency_ratio:
            return f"p95 latency {ratio:.2f}x the champion's > {rule.max_latency_ratio:g}x"
    return None


class Canary:
    def __init__(self, url: str, model: str, champion: str, candidate: str, rule: Rule, sink: str | None,
                 token: str | None = None, metrics: dict | None = None) -> None:
        self.url, self.model, self.champion, self.candidate = url.rstrip("/"), model, champion, candidate
        self.rule, self.sink, self.token, self.metrics = rule, sink, token, metrics or {}
        self.rolled_back: str | None = None  # the reason, once rolled back
        self._window = Window()
        self._lock = threading.Lock()
        self._set_gauges()

    def routes(self) -> bool:
        return self.rolled_back is None and random.random() < self.rule.weight

    async def answer(self, route: str, data: bytes, filename: str):
        """The candidate's answer (status, body, content type, its own ms, its request id), or None when it failed
        (counted)."""
        import httpx
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        t0 = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=self.rule.timeout_s, headers=headers) as client:
                r = await client.post(f"{self.url}{route}", files={"image": (filename, data)})
            if not r.is_success:
                raise RuntimeError(f"HTTP {r.status_code}")
        except Exception as exc:  # noqa: BLE001 - the candidate's failure is counted, never the caller's
            self._observe(error=f"{type(exc).__name__}: {exc}")
            return None
        ms = _server_ms(r.headers.get("Server-Timing")) or (time.perf_counter() - t0) * 1000
        self._observe(candidate_ms=ms)
        return (r.status_code, r.content, r.headers.get("content-type", "application/octet-stream"), ms,
                r.headers.get("X-Request-ID", ""))

    def champion_answered(self, ms: float) -> None:
        self._observe(champion_ms=ms)

    def _observe(self, candidate_ms: float | None = None, champion_ms: float | None = None,
                 error: str | None = None) -> None:
        """Add one answer to this interval's window; at the interval's end, judge it and start the next."""
        if error or candidate_ms is not None:
            self._count("error" if error else "answered")
        with self._lock:
            w = self._window
            if error:
                w.errors += 1
            if candidate_ms is not None:
                w.candidate_ms.append(candidate_ms)
            if champion_ms is not None:
                w.champion_ms.append(champion_ms)
            if time.monotonic() - w.started < self.rule.interval_s or self.rolled_back:
                return
            reason, self._window = breach(w, self.rule), Window()
        if reason:
            self._roll_back(reason)

    def _roll_back(self, reason: str) -> None:
        self.rolled_back = reason
        log.warning("canary: candidate v%s rolled back, all traffic on champion v%s: %s", self.candidate,
                    self.champion, reason)
        self._set_gauges()
        if self.sink:
            record = {"model": self.model, "candidate": self.candidate, "champion": self.champion,
                      "event": "rolled_back", "reason": reason, "at": now_iso(), "rule": self.rule.__dict__}
            uri = decision_uri(self.sink, self.model, self.candidate)
            threading.Thread(target=_write, args=(uri, record), daemon=True).start()

    def _set_gauges(self) -> None:
        if "weight" in self.metrics:
            self.metrics["weight"].labels(candidate=self.candidate).set(0.0 if self.rolled_back else self.rule.weight)

    def _count(self, outcome: str) -> None:
        if "requests" in self.metrics:
            self.metrics["requests"].labels(candidate=self.candidate, outcome=outcome).inc()


def _write(uri: str, record: dict) -> None:
    try:
        put(uri, json.dumps(record).encode())
    except Exception as exc:  # noqa: BLE001 - the rollback stands; only its record is missing, and said so
        log.warning("canary: rolled back, but the decision could not be written to %s (%s)", uri, exc)


def _server_ms(header: str | None) -> float | None:
    from .shadow import _server_time
    return _server_time(header)


def canary_from_env(model: str, champion: str, sink: str | None, token: str | None, metrics: dict) -> Canary | None:
    url = os.environ.get("CMUNEXT_CANARY_URL")
    if not url:
        return None
    env = os.environ.get
    rule = Rule(weight=float(env("CMUNEXT_CANARY_WEIGHT", "0.1")),
                interval_s=float(env("CMUNEXT_CANARY_INTERVAL", "60")),
                max_error_rate=float(env("CMUNEXT_CANARY_MAX_ERROR_RATE", "0.05")),
                max_latency_ratio=float(env("CMUNEXT_CANARY_MAX_LATENCY_RATIO", "1.5")),
                min_requests=int(env("CMUNEXT_CANARY_MIN_REQUESTS", "10")),
                timeout_s=float(env("CMUNEXT_CANARY_TIMEOUT", "5")))
    candidate = env("CMUNEXT_CANARY_VERSION", "unknown")
    print(f"cmunext.serving: canary: {rule.weight:.0%} of the requests to candidate v{candidate} at {url}; "
          f"rolled back on a breach ({rule})", flush=True)
    return Canary(url, model, champion, candidate, rule, sink, token, metrics)
