"""The delivery worker of a server: sends queued webhook events, retries with backoff.

A failed attempt (connection error, timeout, a status outside 2xx) is retried after
webhooks.retry_base seconds, doubling each time, until webhooks.max_attempts; then the delivery
is `failed` and stays in the log (`lfsserve webhooks`). Events queued by other processes (the SSH
command) are found by polling the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from .. import __version__
from ..aio import run_blocking
from . import Webhooks, sign
from .store import Delivery

__all__ = ["WEBHOOKS", "DeliveryWorker", "webhooks_ctx"]

log = logging.getLogger(__name__)

WEBHOOKS = web.AppKey("lfsserve_webhooks", Webhooks)

# Longest sleep between looks at the queue (events queued by another process wait this long).
POLL = 2.0
_BATCH = 16
# How often old deliveries are dropped from the log (webhooks.keep_days).
PRUNE_EVERY = 3600.0


class DeliveryWorker:
    def __init__(self, hooks: Webhooks):
        self.hooks = hooks
        self.config = hooks.config
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._stopping = False

    def wake_threadsafe(self) -> None:
        self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Finish the deliveries under way (their outcome is recorded), then return from run()."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            pruned = 0.0
            while not self._stopping:
                try:
                    if self.config.keep_days and time.monotonic() - pruned > PRUNE_EVERY:
                        pruned = time.monotonic()
                        await self.hooks.queue.prune(time.time() - self.config.keep_days * 86400)
                    batch = await self.hooks.queue.claim(_BATCH, lease=2 * self.config.timeout + 30)
                    if batch:
                        await asyncio.gather(*(self._deliver(session, d) for d in batch))
                        continue
                    due = await self.hooks.queue.next_due()
                except Exception:
                    log.exception("webhook queue failed; trying again shortly")
                    due = None
                wait = POLL if due is None else min(POLL, max(0.0, due - time.time()))
                if self._stopping:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    async def _deliver(self, session: aiohttp.ClientSession, d: Delivery) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"lfsserve/{__version__}",
            "X-Lfsserve-Event": d.event,
            "X-Lfsserve-Delivery": str(d.id),
            "X-Lfsserve-Event-Id": d.event_id,
        }
        secret = self.hooks.secret_for(d.repo, d.url)
        if secret:
            headers["X-Lfsserve-Signature"] = sign(secret, d.payload)
        status: int | None = None
        try:
            async with session.post(d.url, data=d.payload, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                await resp.read()
            if 200 <= status < 300:
                await self.hooks.queue.delivered(d.id, status)
                log.info("webhook %s (%s) delivered to %s: %d", d.id, d.event, d.url, status)
                return
            error = f"HTTP {status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        attempts = d.attempts + 1
        retry_at = None
        if attempts < self.config.max_attempts:
            retry_at = time.time() + self.config.retry_base * (2 ** (attempts - 1))
        log.warning("webhook %s (%s) to %s failed (attempt %d): %s%s", d.id, d.event, d.url, attempts, error,
                    "" if retry_at else "; giving up")
        await self.hooks.queue.failed(d.id, status, error, retry_at)


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the queue and its delivery worker, when targets are configured."""
    hooks = app[WEBHOOKS]
    if not hooks.enabled:
        yield
        return
    await run_blocking(hooks.start)
    worker = DeliveryWorker(hooks)
    hooks.on_queued = worker.wake_threadsafe
    task = asyncio.create_task(worker.run(), name="lfsserve-webhooks")
    try:
        yield
    finally:
        hooks.on_queued = None
        worker.stop()
        # deliveries under way get their attempt's time to finish; a cancelled one is claimed
        # again once its lease ends
        done, _ = await asyncio.wait([task], timeout=hooks.config.timeout + 5)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await run_blocking(hooks.stop)
