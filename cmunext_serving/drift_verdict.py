"""The served model's latest drift verdict as a gauge on its own /metrics. `cmunext monitor drift` writes the verdict
beside the prediction log (<sink>/_verdicts/<model>.json); the server reads it back every REFRESH seconds. The
verdict then reaches Prometheus where it already scrapes the server: a Pushgateway would be one more service to
run and secure, for one number a day. Only a verdict about the version this server serves is exported, so an
alert on `cmunext_drift_detected == 1` never fires for a model that no longer serves."""
from __future__ import annotations

import json
import logging
import threading

log = logging.getLogger("cmunext.serving")


def verdict_uri(sink: str, model: str) -> str:
    return f"{sink.rstrip('/')}/_verdicts/{model}.json"


def verdict_record(result: dict, checked_at: float) -> dict:
    """What the server needs of a `monitor drift` result."""
    return {"model": result["model"], "version": str(result["version"]), "drift": bool(result["drift"]),
            "requests": result["requests"], "checked_at": checked_at, "mlflow_run": result.get("mlflow_run")}


class VerdictGauge:
    """Reads the verdict of MODEL at SINK every REFRESH seconds into two gauges labelled with VERSION."""

    def __init__(self, sink: str, model: str, version: str, refresh_seconds: float = 60.0) -> None:
        import bentoml

        self.uri, self.version, self.refresh = verdict_uri(sink, model), str(version), refresh_seconds
        self.drifted = bentoml.metrics.Gauge(
            name="cmunext_drift_detected", labelnames=["version"], multiprocess_mode="livemostrecent",
            documentation="1 when the latest `cmunext monitor drift` of this served version found drift, 0 when not")
        self.checked = bentoml.metrics.Gauge(
            name="cmunext_drift_checked_timestamp_seconds", labelnames=["version"], multiprocess_mode="livemostrecent",
            documentation="when that drift check ran (Unix time): alert when it grows old")
        self._failing = False
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name="drift-verdict", daemon=True).start()

    def read(self) -> dict | None:
        """The verdict now at the sink, exported when it is about this version; None when there is none."""
        from .feedback import get
        try:
            body = get(self.uri)
        except Exception as exc:  # noqa: BLE001 - an unreachable store: keep the last value, say so once
            if not self._failing:
                log.warning("drift verdict: cannot read %s (%s: %s); keeping the last value", self.uri,
                            type(exc).__name__, exc)
            self._failing = True
            return None
        self._failing = False
        verdict = json.loads(body) if body else None
        if verdict and str(verdict.get("version")) == self.version:
            self.drifted.labels(version=self.version).set(1.0 if verdict["drift"] else 0.0)
            self.checked.labels(version=self.version).set(float(verdict["checked_at"]))
        return verdict

    def close(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while True:
            try:
                self.read()
            except (ValueError, KeyError) as exc:  # a file that is not a verdict: said, never fatal
                log.warning("drift verdict: %s is not a verdict (%s)", self.uri, exc)
            if self._stop.wait(self.refresh):
                return
