"""The BentoML service: lesion masks, numbers and overlays for uploaded ultrasound images.

Two services, served together by `bentoml serve`:

- `Segmenter` (the HTTP front): checks and decodes uploads, preprocesses them exactly as
  `cmunext.predict.Predictor` does, and turns probabilities into masks, numbers and overlays.
  POST /segment (mask PNG, 0/255, at the input's size), POST /segment_json, POST /overlay (PNG);
  GET / is a web page; BentoML's /healthz /livez /readyz /metrics stay.
- `SegmentationModel`: the exported artifact in the runtime and precision the evaluate step chose (ONNX
  Runtime or OpenVINO; fp32, bf16 or int8: engines.py), with adaptive batching
  (`infer` is batchable: concurrent requests are run as one batch; the batch sizes are in /metrics as
  `bentoml_service_adaptive_batch_size` and `cmunext_inference_batch_size`).

The model is a BentoML model made by `cmunext.serving.package`: `$CMUNEXT_BENTO_MODEL` if set, else
the one a bento was built for, else `cmunext-segmenter:latest`. Start-up is refused when the
artifact's sha256 differs from the one recorded when it was packaged.

Settings (environment): CMUNEXT_API_TOKEN (bearer token; unset = no auth; health endpoints and the
page stay open), CMUNEXT_REQUIRE_AUTH (true: refuse to start without a token of 16+ characters), CMUNEXT_MAX_UPLOAD_BYTES (default 20 MiB), CMUNEXT_MAX_PIXELS (default 25 M),
CMUNEXT_MAX_BATCH (default 8), CMUNEXT_THREADS (inference threads, default: as exported),
CMUNEXT_CPU_BF16=0 (serve the fp32 fallback even where the CPU has bf16), CMUNEXT_CPU_THREADS
(decoding and drawing threads of the front, default 4).

No torch here: the serving image has none.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import time
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

from .engines import ServedModel
from .guard import RequestGuard, api_token
from .runtime import (
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
from .ui import PAGE

log = logging.getLogger("cmunext.serving")

MODEL_NAME = "cmunext-segmenter"
MODEL_ENV = "CMUNEXT_BENTO_MODEL"
MAX_BATCH = int(os.environ.get("CMUNEXT_MAX_BATCH", "8"))
MAX_UPLOAD_BYTES = int(os.environ.get("CMUNEXT_MAX_UPLOAD_BYTES", str(20 * 1024 * 1024)))
MAX_PIXELS = int(os.environ.get("CMUNEXT_MAX_PIXELS", "25000000"))
CPU_THREADS = int(os.environ.get("CMUNEXT_CPU_THREADS", "4"))
API_PATHS = ("/segment", "/segment_json", "/overlay")

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


def _error(exc: Exception) -> JSONResponse:
    status = 415 if isinstance(exc, UnsupportedImage) else 413 if isinstance(exc, TooLarge) else 400
    return JSONResponse({"error": str(exc), "status": status}, status_code=status)


@bentoml.service(workers=1, traffic={"timeout": 120, "concurrency": MAX_BATCH})
class SegmentationModel:
    bento_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        stored = self.bento_model
        threads = int(os.environ.get("CMUNEXT_THREADS") or "0") or None
        self.runtime = ServedModel(stored.path, records(stored), threads=threads)
        self.batch_sizes = bentoml.metrics.Histogram(
            name="cmunext_inference_batch_size", documentation="images per inference call",
            buckets=tuple(float(2 ** i) for i in range(8)))
        ran = self.runtime.describe()
        print(f"cmunext.serving: model {stored.tag} runs in {ran['runtime']} at {ran['precision']}"
              + (f" instead of {ran['requested']}: {ran['fallback_reason']}" if ran["fallback_reason"] else "")
              + f" (sha256 {self.runtime.sha256[:12]})", file=sys.stderr, flush=True)

    @bentoml.api
    def describe(self) -> dict:
        """The runtime and precision in use, and why it is not the recorded one when it fell back."""
        return self.runtime.describe()

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=60_000)
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N x C x S x S normalised images -> N x S x S lesion probabilities."""
        self.batch_sizes.observe(len(batch))
        return self.runtime.probabilities(batch)


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
    model = bentoml.depends(SegmentationModel)

    def __init__(self) -> None:
        stored = self.bento_model
        meta = stored.info.metadata
        self.size, self.channels = int(meta["image_size"]), int(meta["in_channels"])
        self.card = model_card(stored)
        self._limiter: anyio.CapacityLimiter | None = None
        self._ran: dict | None = None  # the model service's runtime and precision, asked once

    def _prepare(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        image = decode_image(Path(path).read_bytes(), MAX_PIXELS)
        return image, preprocess(image, self.size, self.channels)

    async def _work(self, fn, *args):
        """CPU work off the event loop, at most CMUNEXT_CPU_THREADS at a time (bounds memory for large images)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(CPU_THREADS)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def _infer(self, batch: np.ndarray) -> np.ndarray:
        # BentoML 1.4.40 replaces its client session to the model service every 100 requests and closes the
        # old one under the requests still in flight (bentoml/BentoML#5698, #4971): retry those (inference
        # is idempotent); anything else propagates.
        import aiohttp
        for attempt in range(3):
            try:
                return await self.model.to_async.infer(batch)
            except (aiohttp.ClientConnectionError, RuntimeError) as exc:
                if attempt == 2 or (isinstance(exc, RuntimeError) and "closed" not in str(exc).lower()):
                    raise
                log.info("model service connection dropped (%s: %s); retrying", type(exc).__name__, exc)

    async def _run(self, path: Path, render):
        """Decode, preprocess, infer (batched), resize back, threshold, then RENDER(image, prob, mask) in a
        worker thread. Returns (rendered, timings in ms) or a 4xx JSONResponse saying what is wrong."""
        t0 = time.perf_counter()
        try:
            image, x = await self._work(self._prepare, path)
        except DataError as exc:
            return _error(exc)
        t1 = time.perf_counter()
        small = (await self._infer(x[None]))[0]
        t2 = time.perf_counter()

        def finish():
            prob = resize_back(small, image.shape[0], image.shape[1])
            return render(image, prob, (prob > SERVED_THRESHOLD).astype(np.uint8))

        result = await self._work(finish)
        timing = {"total": (time.perf_counter() - t0) * 1000, "decode": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000}
        return result, timing

    @bentoml.api(route="/segment")
    async def segment(self, image: Path) -> PILImage.Image:
        """The lesion mask (PNG, 0 = background, 255 = lesion) at the uploaded image's size."""
        out = await self._run(image, lambda img, prob, mask: png_bytes(mask * 255))
        return out if isinstance(out, Response) else Response(out[0], media_type="image/png")

    @bentoml.api(route="/segment_json")
    async def segment_json(self, image: Path) -> dict:
        """Lesion area (pixels, fraction), bounding boxes of connected regions, mean probability inside the
        mask, the model and the server-side latency."""
        out = await self._run(image, lambda img, prob, mask: mask_summary(prob, mask))
        if isinstance(out, Response):
            return out
        summary, timing = out
        if self._ran is None:
            self._ran = await self.model.to_async.describe()
        return {**summary, "threshold": SERVED_THRESHOLD, "model": {**self.card, **self._ran}, "latency_ms": timing}

    @bentoml.api(route="/overlay")
    async def overlay(self, image: Path) -> PILImage.Image:
        """The image (RGB PNG) with the lesion tinted and outlined."""
        out = await self._run(image, lambda img, prob, mask: png_bytes(overlay(img, mask)))
        return out if isinstance(out, Response) else Response(out[0], media_type="image/png")


check_at_start(MODEL_TAG)
API_TOKEN = api_token()  # refuses the start when a token is required and missing
print("cmunext.serving: the API " + ("requires 'Authorization: Bearer <CMUNEXT_API_TOKEN>'" if API_TOKEN else
      "is open: no CMUNEXT_API_TOKEN set (anyone who reaches this port may send images)"), file=sys.stderr, flush=True)
Segmenter.add_asgi_middleware(RequestGuard, api_paths=API_PATHS, token=API_TOKEN, max_bytes=MAX_UPLOAD_BYTES)
