"""The BentoML service: lesion masks, numbers and overlays for uploaded ultrasound images.

One service, `Segmenter`, served by `bentoml serve`: it checks and decodes uploads, preprocesses them exactly
as `cmunext.predict.Predictor` does, runs the exported artifact in the runtime and precision the evaluate step
chose (ONNX Runtime or OpenVINO; fp32, bf16 or int8: engines.py) with adaptive batching in its own process
(concurrent requests run as one batch: batcher.py; the batch sizes are in /metrics as
`cmunext_inference_batch_size`), and turns probabilities into masks, numbers and overlays.
POST /segment (mask PNG, 0/255, at the input's size), POST /segment_json, POST /overlay (PNG);
GET / is a web page; BentoML's /healthz /livez /readyz /metrics stay. Every answer carries a request id
(header X-Request-ID; `request_id` in /segment_json) and adds one record, without pixels, to the
prediction log (prediction_log.py; features: observe.py).

The model is a BentoML model made by `cmunext.serving.package`: `$CMUNEXT_BENTO_MODEL` if set, else
the one a bento was built for, else `cmunext-segmenter:latest`. Start-up is refused when the
artifact's sha256 differs from the one recorded when it was packaged.

Settings (environment): CMUNEXT_API_TOKEN (bearer token; unset = no auth; health endpoints and the
page stay open), CMUNEXT_REQUIRE_AUTH (true: refuse to start without a token of 16+ characters), CMUNEXT_MAX_UPLOAD_BYTES (default 20 MiB), CMUNEXT_MAX_PIXELS (default 25 M),
CMUNEXT_MAX_BATCH (default 8), CMUNEXT_THREADS (inference threads, default: as exported),
CMUNEXT_CPU_BF16=0 (serve the fp32 fallback even where the CPU has bf16), CMUNEXT_CPU_THREADS
(decoding and drawing threads of the front, default 4), CMUNEXT_PREDICTION_LOG (a folder or s3://bucket/prefix;
default <CMUNEXT_BENTO_STORE>/predictions; "off" disables), CMUNEXT_PREDICTION_LOG_CAPACITY (records held in
memory while the sink is slow, default 10000), CMUNEXT_PREDICTION_LOG_FLUSH_SECONDS (default 5),
CMUNEXT_DRIFT_REFRESH_SECONDS (how often the latest drift verdict is read back for /metrics, default 60).

No torch here: the serving image has none.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
import uuid
from pathlib import Path

import anyio
import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import NotFound
from PIL import Image as PILImage
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .canary import Canary, canary_from_env
from .drift_verdict import VerdictGauge
from .batcher import MicroBatcher
from .engines import ServedModel
from .feedback import CaptureStore, FeedbackRefused, feedback_root, get
from .guard import RequestGuard, api_token
from .lesion_rule import LesionRule
from .observe import features
from .prediction_log import PredictionLog, now_iso, sink_from_env
from .runtime import (
    PNG_MAGIC,
    THRESHOLD,
    DataError,
    TooLarge,
    UnsupportedImage,
    decode_image,
    demo_image,
    mask_summary,
    overlay,
    png_bytes,
    preprocess,
    resize_back,
    verify_artifact,
)
from .shadow import Shadow, shadow_from_env
from .ui import PAGE

log = logging.getLogger("cmunext.serving")

MODEL_NAME = "cmunext-segmenter"
MODEL_ENV = "CMUNEXT_BENTO_MODEL"
MAX_BATCH = int(os.environ.get("CMUNEXT_MAX_BATCH", "8"))
MAX_UPLOAD_BYTES = int(os.environ.get("CMUNEXT_MAX_UPLOAD_BYTES", str(20 * 1024 * 1024)))
MAX_PIXELS = int(os.environ.get("CMUNEXT_MAX_PIXELS", "25000000"))
CPU_THREADS = int(os.environ.get("CMUNEXT_CPU_THREADS", "4"))
API_PATHS = ("/segment", "/segment_json", "/overlay")
LOG_CAPACITY = int(os.environ.get("CMUNEXT_PREDICTION_LOG_CAPACITY", "10000"))
LOG_FLUSH_SECONDS = float(os.environ.get("CMUNEXT_PREDICTION_LOG_FLUSH_SECONDS", "5"))
VERDICT_REFRESH_SECONDS = float(os.environ.get("CMUNEXT_DRIFT_REFRESH_SECONDS", "60"))
REQUEST_ID = "X-Request-ID"

_ARGS = bentoml.use_arguments()  # a bento records {model, sha256, threshold} at build time
MODEL_TAG = os.environ.get(MODEL_ENV) or getattr(_ARGS, "model", None) or f"{MODEL_NAME}:latest"
# the threshold the gate's evaluation used (eval.threshold), so the served masks are the evaluated ones
SERVED_THRESHOLD = float(getattr(_ARGS, "threshold", None) or THRESHOLD)
# the bento's own record of the artifact counts only for the model it was built with
_BENTO_SHA = getattr(_ARGS, "sha256", None) if MODEL_TAG == getattr(_ARGS, "model", None) else None


def records(stored) -> dict:
    """Where the artifact's sha256 was recorded when it was packaged."""
    return {f"the metadata of model {stored.tag}": stored.info.metadata.get("sha256"), "the bento's arguments": _BENTO_SHA}


def check_at_start(tag: str) -> None:
    """Refuse to start with a changed artifact. Runs when `bentoml serve` (or build) imports this module, so the
    server exits at once; a failure inside a worker would only make it restart, again and again."""
    try:
        stored = bentoml.models.get(tag)
    except NotFound:
        log.warning("model %s not found in the model store (yet); not checked at import", tag)
        return
    verify_artifact(stored.path, records(stored))


def model_card(stored) -> dict:
    meta, labels = stored.info.metadata, stored.info.labels
    return {"tag": str(stored.tag), "mlflow_model": labels.get("mlflow_model"),
            "mlflow_version": labels.get("mlflow_version"), "run_id": labels.get("run_id"),
            "data_revision": labels.get("data_revision"), "format": meta.get("format"), "sha256": meta.get("sha256")}


def _png(out: tuple) -> Response:
    # Server-Timing: the time spent here, comparable across servers (a shadowing champion reads it)
    return Response(out[0], media_type="image/png",
                    headers={REQUEST_ID: out[2], "Server-Timing": f"total;dur={out[1]['total']:.2f}"})


def checked_mask(data: bytes, captured: dict) -> bytes:
    """A corrected mask as a 0/255 PNG; FeedbackRefused naming what is wrong (not a PNG, another size)."""
    if not data.startswith(PNG_MAGIC):
        raise FeedbackRefused(415, f"mask: not a PNG file (starts with {data[:8]!r})")
    try:
        mask = decode_image(data, MAX_PIXELS, name="mask")
    except DataError as exc:
        raise FeedbackRefused(400, str(exc)) from None
    height, width = mask.shape[:2]
    if (width, height) != (captured["width"], captured["height"]):
        raise FeedbackRefused(422, f"mask is {width}x{height}, the captured image is "
                                   f"{captured['width']}x{captured['height']}")
    gray = mask if mask.ndim == 2 else mask.max(axis=2)
    return png_bytes((gray > 0).astype(np.uint8) * 255)


def _capture_store(card: dict) -> CaptureStore | None:
    sink = sink_from_env()
    if not sink:
        return None
    rate = float(os.environ.get("CMUNEXT_CAPTURE_RATE", "0"))
    root = feedback_root(sink)
    if rate:
        print(f"cmunext.serving: capturing {rate:.0%} of the images to {root} (CMUNEXT_CAPTURE_RATE)", file=sys.stderr,
              flush=True)
    return CaptureStore(root, card.get("mlflow_model") or MODEL_NAME, card.get("mlflow_version") or "", rate,
                        float(os.environ.get("CMUNEXT_CAPTURE_RETENTION_DAYS", "30")))


def _prediction_log(card: dict) -> PredictionLog | None:
    """The prediction log of this process, or None when it is off (said once, at start)."""
    sink = sink_from_env()
    if not sink:
        print("cmunext.serving: no prediction log (set CMUNEXT_PREDICTION_LOG or CMUNEXT_BENTO_STORE)",
              file=sys.stderr, flush=True)
        return None
    name = card.get("mlflow_model") or MODEL_NAME
    written = bentoml.metrics.Counter(name="cmunext_prediction_log_written_total",
                                      documentation="prediction-log records written to the sink")
    dropped = bentoml.metrics.Counter(name="cmunext_prediction_log_dropped_total",
                                      documentation="prediction-log records dropped: buffer full while the sink "
                                                    "was slow or unreachable")
    print(f"cmunext.serving: prediction log to {sink}/{name}/<date>/", file=sys.stderr, flush=True)
    return PredictionLog(sink, name, capacity=LOG_CAPACITY, flush_seconds=LOG_FLUSH_SECONDS, on_write=written.inc,
                         on_drop=dropped.inc)


def _verdict_gauge(card: dict) -> VerdictGauge | None:
    """The latest drift verdict of this version on /metrics, read from beside the prediction log."""
    sink = sink_from_env()
    if not sink:
        return None
    return VerdictGauge(sink, card.get("mlflow_model") or MODEL_NAME, card.get("mlflow_version") or "",
                        VERDICT_REFRESH_SECONDS)


def _shadow(card: dict) -> Shadow | None:
    """The candidate this server shadows (CMUNEXT_SHADOW_URL), with its figures on /metrics; None when none."""
    if not os.environ.get("CMUNEXT_SHADOW_URL"):
        return None
    metrics = {
        "requests": bentoml.metrics.Counter(
            name="cmunext_shadow_requests_total", labelnames=["candidate", "outcome"],
            documentation="copies of served requests sent to the shadowed candidate: answered, error, skipped "
                          "(queue full: the candidate fell behind)"),
        "iou": bentoml.metrics.Histogram(
            name="cmunext_shadow_mask_iou", labelnames=["candidate"],
            buckets=(0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            documentation="IoU of the candidate's mask with the champion's, per shadowed request"),
        "latency": bentoml.metrics.Histogram(
            name="cmunext_shadow_candidate_latency_seconds", labelnames=["candidate"],
            documentation="the candidate's answer time, seen from this server")}
    return shadow_from_env(card.get("mlflow_model") or MODEL_NAME, card.get("mlflow_version") or "",
                           sink_from_env(), api_token(), metrics)


def _canary(card: dict) -> Canary | None:
    """The candidate this server canaries (CMUNEXT_CANARY_URL), with its weight and outcomes on /metrics."""
    if not os.environ.get("CMUNEXT_CANARY_URL"):
        return None
    metrics = {
        "requests": bentoml.metrics.Counter(
            name="cmunext_canary_requests_total", labelnames=["candidate", "outcome"],
            documentation="requests sent to the canary: answered (its answer returned) or error (the champion's)"),
        "weight": bentoml.metrics.Gauge(
            name="cmunext_canary_weight", labelnames=["candidate"], multiprocess_mode="livemostrecent",
            documentation="share of the requests sent to the canary; 0 once rolled back")}
    return canary_from_env(card.get("mlflow_model") or MODEL_NAME, card.get("mlflow_version") or "",
                           sink_from_env(), api_token(), metrics)


def _canary_response(answered: tuple, candidate: str) -> Response:
    status, body, media_type, ms, request_id = answered  # the candidate logged it under its request id
    return Response(body, status_code=status, media_type=media_type,
                    headers={"X-Served-By": f"canary v{candidate}", "Server-Timing": f"total;dur={ms:.2f}",
                             REQUEST_ID: request_id})


def _error(exc: Exception) -> JSONResponse:
    status = 415 if isinstance(exc, UnsupportedImage) else 413 if isinstance(exc, TooLarge) else 400
    return JSONResponse({"error": str(exc), "status": status}, status_code=status)


def _served_model(stored) -> ServedModel:
    """The artifact in the runtime and precision export.json records (or its fallback, said at start)."""
    threads = int(os.environ.get("CMUNEXT_THREADS") or "0") or None
    runtime = ServedModel(stored.path, records(stored), threads=threads)
    ran = runtime.describe()
    print(f"cmunext.serving: model {stored.tag} runs in {ran['runtime']} at {ran['precision']}"
          + (f" instead of {ran['requested']}: {ran['fallback_reason']}" if ran["fallback_reason"] else "")
          + f" (sha256 {runtime.sha256[:12]})", file=sys.stderr, flush=True)
    return runtime


def _batcher(runtime: ServedModel) -> MicroBatcher:
    sizes = bentoml.metrics.Histogram(name="cmunext_inference_batch_size", documentation="images per inference call",
                                      buckets=tuple(float(2 ** i) for i in range(8)))
    return MicroBatcher(runtime.probabilities, MAX_BATCH, observe=sizes.observe)


@functools.lru_cache(maxsize=1)
def _demo_png() -> bytes:
    return png_bytes(demo_image())


ui = Starlette(routes=[
    Route("/", lambda request: HTMLResponse(PAGE)),
    Route("/ui", lambda request: HTMLResponse(PAGE)),
    Route("/ui/demo.png", lambda request: Response(_demo_png(), media_type="image/png")),
])


@bentoml.asgi_app(ui, path="/")
# BentoML's access log decodes the request's Content-Type as UTF-8 after the response headers went out: a
# non-UTF-8 byte there broke the connection mid-response (found by fuzzing), so that field is not logged
@bentoml.service(workers=1, traffic={"timeout": 120, "max_concurrency": 64},
                 logging={"access": {"request_content_type": False}})
class Segmenter:
    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        stored = self.bento_model
        meta = stored.info.metadata
        self.size, self.channels = int(meta["image_size"]), int(meta["in_channels"])
        self.card = model_card(stored)
        # how probabilities become masks: the evaluated rule, recorded with the model when it was packaged
        self.rule = LesionRule.from_dict(meta.get("lesion_rule"), SERVED_THRESHOLD)
        self.runtime = _served_model(stored)
        self.infer = _batcher(self.runtime)
        self._ran = self.runtime.describe()
        self._limiter: anyio.CapacityLimiter | None = None
        self.predictions = _prediction_log(self.card)
        self.captures = _capture_store(self.card)
        self.verdict = _verdict_gauge(self.card)
        self.shadow = _shadow(self.card)
        self.canary = _canary(self.card)

    @bentoml.on_shutdown
    def _flush_predictions(self) -> None:
        """What is still buffered goes out before the worker ends (a rolling update loses no records)."""
        if self.predictions:
            self.predictions.close()
        if self.verdict:
            self.verdict.close()
        if self.shadow:
            self.shadow.close()
        self.infer.close()

    def _prepare(self, path: Path) -> tuple[bytes, np.ndarray, np.ndarray]:
        data = Path(path).read_bytes()
        return (data, *self._prepare_bytes(data))

    async def _work(self, fn, *args):
        """CPU work off the event loop, at most CMUNEXT_CPU_THREADS at a time (bounds memory for large images)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(CPU_THREADS)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def _run(self, path: Path, render, route: str):
        """Decode, preprocess, infer (batched), resize back, threshold, then RENDER(image, prob, mask) in a
        worker thread. Returns (rendered, timings in ms, request id), a 4xx JSONResponse saying what is wrong, or
        a canary's answer (a Response) when a canary runs and this valid request went to it."""
        t0 = time.perf_counter()
        try:
            data, image, x = await self._work(self._prepare, path)
        except DataError as exc:
            return _error(exc)
        if self.canary and self.canary.routes():
            answered = await self.canary.answer(route, data, Path(path).name)
            if answered is not None:  # else: the candidate failed (counted) and the champion answers
                return _canary_response(answered, self.canary.candidate)
        t1 = time.perf_counter()
        small = await self.infer(x)
        t2 = time.perf_counter()

        def finish():
            prob = resize_back(small, image.shape[0], image.shape[1])
            mask = self.rule.mask(prob).astype(np.uint8)
            return render(image, prob, mask), features(image, prob, self.rule.threshold) if self.predictions else {}, mask

        result, seen, mask = await self._work(finish)
        timing = {"total": (time.perf_counter() - t0) * 1000, "decode": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000}
        if self.canary:
            self.canary.champion_answered(timing["total"])
        request_id = uuid.uuid4().hex
        captured = bool(self.captures and self.captures.wants(request_id))
        if captured:  # queued for the capture thread; a full queue skips it
            self.captures.capture(request_id, data, image.shape[1], image.shape[0])
        await self._record(request_id, {**seen, "captured": captured}, timing["total"])
        if self.shadow and self.shadow.wants(request_id):  # after the answer is ready: never waits for the candidate
            self.shadow.submit(request_id, data, mask, timing["total"])
        return result, timing, request_id

    async def _record(self, request_id: str, seen: dict, latency_ms: float) -> None:
        """The answer's record in the prediction log (never waits for the sink)."""
        if self.predictions:
            ran = self._ran
            self.predictions.add({"request_id": request_id, "time": now_iso(), "model": self.card["mlflow_model"],
                                  "version": self.card["mlflow_version"], "bento_model": self.card["tag"],
                                  "form": f"{ran['runtime']}/{ran['precision']}",
                                  "latency_ms": round(latency_ms, 2), **seen})

    @bentoml.api(route="/segment")
    async def segment(self, image: Path) -> PILImage.Image:
        """The lesion mask (PNG, 0 = background, 255 = lesion) at the uploaded image's size."""
        out = await self._run(image, lambda img, prob, mask: png_bytes(mask * 255), "/segment")
        return out if isinstance(out, Response) else _png(out)

    @bentoml.api(route="/segment_json")
    async def segment_json(self, image: Path) -> dict:
        """Lesion area (pixels, fraction), bounding boxes of connected regions, mean probability inside the
        mask, the model, the server-side latency and the request id."""
        out = await self._run(image, lambda img, prob, mask: mask_summary(prob, mask), "/segment_json")
        if isinstance(out, Response):
            return out
        summary, timing, request_id = out
        # a Response, not a context: seen twice in thousands, a request of an API with a context parameter
        # never answered under concurrent load
        return JSONResponse({**summary, "threshold": self.rule.threshold, "lesion_rule": self.rule.as_dict(), "model": {**self.card, **self._ran},
                             "latency_ms": timing, "request_id": request_id}, headers={REQUEST_ID: request_id})

    @bentoml.api(route="/feedback")
    async def feedback(self, request_id: str, mask: Path = None,  # noqa: RUF013 (optional)
                       correct: bool = False) -> dict:
        """For a captured request: its corrected mask (field `mask`, PNG at the image's size, non-zero = lesion)
        or `correct=true`; 201 with what was stored."""
        try:
            label = await self._feedback(request_id, mask, correct)
        except FeedbackRefused as exc:
            return JSONResponse({"error": str(exc), "status": exc.status}, status_code=exc.status)
        return JSONResponse(label, status_code=201)

    async def _feedback(self, request_id: str, mask: Path | None, correct: bool) -> dict:
        if self.captures is None:
            raise FeedbackRefused(503, "no feedback store: this server keeps no prediction log (CMUNEXT_PREDICTION_LOG)")
        if (mask is None) == (not correct):
            raise FeedbackRefused(400, "send either a corrected mask (field 'mask', a PNG) or correct=true, not both")
        if not re.fullmatch(r"[0-9a-f]{32}", request_id):
            raise FeedbackRefused(400, f"request_id {request_id[:40]!r} is not a request id (32 hex digits, header X-Request-ID)")
        captured = await anyio.to_thread.run_sync(self.captures.lookup, request_id)
        if captured is None:
            raise FeedbackRefused(404, f"unknown request id {request_id}: not captured (capture rate "
                                       f"{self.captures.rate:g}: CMUNEXT_CAPTURE_RATE) or not stored yet")
        if correct:
            image = await anyio.to_thread.run_sync(get, f"{self.captures.prefix}/images/{captured['image']}")
            png, verdict = await self._served_mask(image), "correct"
        else:
            png, verdict = await self._work(checked_mask, Path(mask).read_bytes(), captured), "corrected"
        return await anyio.to_thread.run_sync(self.captures.store, request_id, verdict, png)

    async def _served_mask(self, data: bytes) -> bytes:
        """The mask this server answers for DATA (0/255 PNG): what a reviewer called correct."""
        image, x = await self._work(self._prepare_bytes, data)
        small = await self.infer(x)
        return await self._work(lambda: png_bytes(self.rule.mask(resize_back(small, *image.shape[:2]))
                                                  .astype(np.uint8) * 255))

    def _prepare_bytes(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        image = decode_image(data, MAX_PIXELS)
        return image, preprocess(image, self.size, self.channels)

    @bentoml.api(route="/overlay")
    async def overlay(self, image: Path) -> PILImage.Image:
        """The image (RGB PNG) with the lesion tinted and outlined."""
        out = await self._run(image, lambda img, prob, mask: png_bytes(overlay(img, mask)), "/overlay")
        return out if isinstance(out, Response) else _png(out)


check_at_start(MODEL_TAG)
API_TOKEN = api_token()  # refuses the start when a token is required and missing
print("cmunext.serving: the API " + ("requires 'Authorization: Bearer <CMUNEXT_API_TOKEN>'" if API_TOKEN else
      "is open: no CMUNEXT_API_TOKEN set (anyone who reaches this port may send images)"), file=sys.stderr, flush=True)
Segmenter.add_asgi_middleware(RequestGuard, api_paths=API_PATHS, token=API_TOKEN, max_bytes=MAX_UPLOAD_BYTES)
