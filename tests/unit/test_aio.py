import asyncio
import contextlib
import threading

import pytest

from lfsserve.aio import iterate_blocking, run_blocking


async def test_run_blocking_runs_off_loop():
    main = threading.get_ident()
    assert await run_blocking(threading.get_ident) != main


async def test_iterate_blocking_order_and_exhaustion():
    got = [x async for x in iterate_blocking(lambda: iter(range(1000)), max_pending=3)]
    assert got == list(range(1000))


async def test_iterate_blocking_error_propagates():
    def gen():
        yield 1
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"):
        async for x in iterate_blocking(gen):
            got.append(x)
    assert got == [1]


async def test_iterate_blocking_early_stop_closes_generator():
    closed = threading.Event()
    produced = []

    def gen():
        try:
            for i in range(10**9):
                produced.append(i)
                yield i
        finally:
            closed.set()

    async with contextlib.aclosing(iterate_blocking(gen, max_pending=2)) as it:
        async for x in it:
            if x == 5:
                break
    assert await asyncio.to_thread(closed.wait, 5)
    assert len(produced) <= 5 + 1 + 2 + 1  # bounded read-ahead
