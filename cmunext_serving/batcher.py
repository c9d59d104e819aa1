"""Adaptive batching inside the serving process: concurrent requests' images run as one inference call.

One inference thread takes whatever is waiting when the engine becomes free (up to MAX_BATCH images) and runs it
as one batch; there is no fixed wait, so a lone request runs at once and requests that arrive during an
inference run together next. The model lives in the HTTP front's own process: no second service, no tensors
serialised between processes (that hop cost a third of the throughput: docs/results.md).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("cmunext.serving")

_STOP = object()


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away (cancelled): nothing to hand over
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class MicroBatcher:
    """`await batcher(x)` for one C x S x S image returns its S x S output, computed in a batch of up to
    MAX_BATCH images by INFER (N x C x S x S -> N x S x S); OBSERVE is told each batch's size."""

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch: int,
                 observe: Callable[[int], None] = lambda size: None) -> None:
        self._infer, self._max_batch, self._observe = infer, max(1, int(max_batch)), observe
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="cmunext-inference", daemon=True)
        self._thread.start()

    async def __call__(self, image: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.put((image, future, loop))
        return await future

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._waiting.put(_STOP)
        self._thread.join(timeout=60)

    def _next_batch(self) -> list | None:
        """Block for one request, then take whatever else is already waiting; None once closed."""
        first = self._waiting.get()
        if first is _STOP:
            return None
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                item = self._waiting.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._waiting.put(_STOP)  # seen after this batch
                break
            batch.append(item)
        return batch

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                outputs, error = self._infer(np.stack([image for image, _, _ in batch])), None
                self._observe(len(batch))
            except Exception as exc:  # every caller of the batch gets it; the thread goes on
                log.exception("inference failed for a batch of %d", len(batch))
                outputs, error = [None] * len(batch), exc
            for (_, future, loop), output in zip(batch, outputs):
                try:
                    loop.call_soon_threadsafe(_settle, future, output, error)
                except RuntimeError:  # that request's event loop is closed: the server is stopping
                    pass
