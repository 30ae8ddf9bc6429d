"""Keeping the event loop free: run blocking work in the server's executor, stream sync generators.

The storage layers (lfsserve.hg, parts of lfsserve.blobstore) are plain synchronous code. Front
ends call them through `run_blocking` and, for large answers produced by a sync generator (a
changegroup, a stream clone), through `iterate_blocking`, which pulls the generator in a worker
thread and hands chunks to the loop through a bounded queue: memory stays bounded by
`max_pending` chunks whatever the size of the answer, and a slow client slows the producer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import TypeVar

__all__ = ["Executor", "iterate_blocking", "run_blocking", "submit_blocking"]

T = TypeVar("T")


class Executor:
    """The process-wide thread pool for blocking work (file I/O, hashing, zstd, revlog parsing)."""

    def __init__(self, threads: int = 0):
        n = threads or min(32, (os.cpu_count() or 1) + 4)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="lfsserve")

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


_default: Executor | None = None


def set_default_executor(executor: Executor) -> None:
    global _default
    _default = executor


def _pool() -> concurrent.futures.Executor | None:
    return _default.pool if _default is not None else None


_fallback: concurrent.futures.ThreadPoolExecutor | None = None


def submit_blocking(fn: Callable[..., T], *args) -> concurrent.futures.Future[T]:
    """Start fn(*args) in the executor and return its concurrent future.

    Unlike run_blocking's awaitable, this future stays pending until the thread has really
    finished, whatever happens to the coroutines waiting on it: use it when a resource the
    work touches (a file descriptor) must not be released while the thread may still use it.
    Await it with asyncio.wrap_future().
    """
    global _fallback
    pool = _pool()
    if pool is None:
        if _fallback is None:
            _fallback = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="lfsserve-fallback")
        pool = _fallback
    return pool.submit(fn, *args)


async def run_blocking(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run fn(*args, **kwargs) in the executor and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(), functools.partial(fn, *args, **kwargs))


_DONE = object()


async def iterate_blocking(make: Callable[[], Iterator[T]], max_pending: int = 8) -> AsyncGenerator[T, None]:
    """Iterate the sync iterator `make()` in a worker thread, yielding its items on the loop.

    The worker blocks when `max_pending` items wait for the consumer. If the consumer stops early
    (client gone, exception), the worker is told to stop and the generator is closed in its own
    thread, so its `finally` blocks (releasing locks, closing files) run. Consume it under
    `contextlib.aclosing(...)` so that happens at once rather than when the loop collects it.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(max_pending)
    stop = threading.Event()

    def put(item) -> bool:
        """Hand one item to the loop; False when the consumer has gone away."""
        while not room.acquire(timeout=0.5):
            if stop.is_set():
                return False
        if stop.is_set():
            return False
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # loop closed
            return False
        return True

    def work() -> None:
        it = None
        try:
            it = make()
            for item in it:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # delivered to the consumer and re-raised there
            put(exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    task = loop.run_in_executor(_pool(), work)
    try:
        while True:
            item = await queue.get()
            room.release()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        await asyncio.shield(task)
