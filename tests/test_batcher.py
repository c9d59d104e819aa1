"""The serving process's adaptive batching (cmunext_serving/batcher.py), without a server: what is waiting runs
as one batch, each caller gets its own row, a failed batch fails only its callers, and a gone caller costs
nothing."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from cmunext_serving.batcher import MicroBatcher


class _GatedModel:
    """Doubles its input; the first call waits for OPEN, so that the next requests queue up behind it."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.open, self.sizes, self.fail_on = threading.Event(), [], fail_on

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.sizes:
            self.open.wait(10)
        self.sizes.append(len(batch))
        if self.fail_on is not None and len(self.sizes) == self.fail_on:
            raise RuntimeError("engine broke")
        return batch[:, 0] * 2


async def _send(batcher: MicroBatcher, model: _GatedModel, count: int) -> list:
    first = asyncio.ensure_future(batcher(np.full((1, 2, 2), -1.0)))
    await asyncio.sleep(0.05)  # the first call is in the engine, held at the gate
    rest = [asyncio.ensure_future(batcher(np.full((1, 2, 2), float(i)))) for i in range(count)]
    await asyncio.sleep(0.05)
    model.open.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_what_waits_runs_as_one_batch_and_each_caller_gets_its_row():
    model, observed = _GatedModel(), []
    batcher = MicroBatcher(model, max_batch=4, observe=observed.append)
    try:
        results = asyncio.run(_send(batcher, model, 6))
    finally:
        batcher.close()
    assert model.sizes == [1, 4, 2] and observed == [1, 4, 2]  # no fixed wait: the lone first call ran alone
    assert [float(r[0, 0]) for r in results] == [-2.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0]


def test_a_failed_batch_fails_its_callers_only():
    model = _GatedModel(fail_on=2)
    batcher = MicroBatcher(model, max_batch=8)
    try:
        results = asyncio.run(_send(batcher, model, 3))
        after = asyncio.run(batcher(np.ones((1, 2, 2))))  # the thread goes on
    finally:
        batcher.close()
    assert isinstance(results[0], np.ndarray)
    assert all(isinstance(r, RuntimeError) and "engine broke" in str(r) for r in results[1:])
    assert float(after[0, 0]) == 2.0


def test_a_cancelled_caller_is_skipped():
    model = _GatedModel()
    batcher = MicroBatcher(model, max_batch=8)

    async def scenario():
        first = asyncio.ensure_future(batcher(np.zeros((1, 2, 2))))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher(np.ones((1, 2, 2))))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.open.set()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await first

    try:
        assert float(asyncio.run(scenario())[0, 0]) == 0.0
    finally:
        batcher.close()
    assert sum(model.sizes) == 2  # the cancelled image was still computed (it was in the queue): no error raised
