"""Request limits with clear answers: per-client concurrency (429 + Retry-After), request timeouts,
and an idle timeout on request bodies (408).

The client is the TCP peer, or the address a trusted proxy forwarded (urls.client_address): behind
nginx every request comes from 127.0.0.1, and one busy user must not lock out the others.
Health, readiness and metrics probes are never limited. Answers to LFS endpoints are LFS JSON
(`{"message": ...}`, which git-lfs prints); answers to hg endpoints are plain text. git-lfs waits
for Retry-After before retrying a 429.

Sizes are limited where they are known: `lfs.max_object_size` and `lfs.max_batch_objects` by the
LFS front end (413 / 422 in the batch answer), small whole-read bodies by the app's client_max_size.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .config import LimitsConfig
from .kernel import lfs_error
from .metrics import METRICS
from .reqkeys import BODY_WATCH, CLIENT, RESPONSE_PREPARED, ROUTE_KIND
from .routing import BadPath, Kind, resolve
from .urls import TrustedProxies, client_address

__all__ = ["LIMITS", "PROBE_PATHS", "ClientIdle", "Limits", "limits_middleware"]

log = logging.getLogger(__name__)

# Paths that must answer even when a client is over its limit (orchestrators, Prometheus).
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Seconds a client over its concurrency limit is asked to wait: long enough for one of its
# requests to finish on a busy server, short enough not to stall a transfer.
RETRY_AFTER = 1
_LFS_KINDS = {Kind.LFS_BATCH, Kind.LFS_LOCKS, Kind.LFS_OBJECT, Kind.LFS_VERIFY}


class Limits:
    """Counts each client's requests in flight."""

    def __init__(self, config: LimitsConfig, proxies: TrustedProxies):
        self.config = config
        self.proxies = proxies
        self._in_flight: dict[str, int] = {}

    def acquire(self, client: str) -> bool:
        limit = self.config.per_client_concurrency
        n = self._in_flight.get(client, 0)
        if limit and n >= limit:
            return False
        self._in_flight[client] = n + 1
        return True

    def release(self, client: str) -> None:
        n = self._in_flight[client] - 1
        if n:
            self._in_flight[client] = n
        else:
            del self._in_flight[client]


LIMITS = web.AppKey("lfsserve_limits", Limits)


def _answer(request: web.Request, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    try:
        kind = resolve(request.path, request.raw_path, "cmd" in request.query).kind
    except BadPath:
        kind = None
    request[ROUTE_KIND] = kind.value if kind else "invalid"  # for the request metrics
    if kind in _LFS_KINDS:
        return lfs_error(request, status, message, headers)
    return web.Response(status=status, headers=headers, text=message + "\n")


class ClientIdle(web.HTTPRequestTimeout, TimeoutError):
    """Set on a request body that stopped arriving (limits.idle_timeout).

    An HTTPException, so that the handlers' and the error middleware's generic handling lets it
    through to limits_middleware; a TimeoutError, so that aiohttp, draining the unread rest of
    the body after the answer, takes it for the end of that wait rather than an internal error."""


class _BodyWatch:
    """Fails the body of `request` with ClientIdle once the client has sent nothing for `timeout`
    seconds while nothing it sent is waiting to be read.

    Idle means the server has room and the client sends nothing: when the handler is slow to
    read, the unread bytes keep the watch quiet (it is the server's pace, not the client's). Bytes
    are counted every quarter of the timeout, so the answer comes between 1 and 1.25 timeouts
    after the last byte."""

    def __init__(self, request: web.Request, timeout: float):
        self.content = request.content
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.fired = False
        self.seen = self.content.total_bytes
        self.since = self.loop.time()
        self.handle: asyncio.TimerHandle | None = self.loop.call_later(timeout / 4, self.check)

    def check(self) -> None:
        content = self.content
        if content.is_eof() or content.exception() is not None:
            self.handle = None
            return
        now = self.loop.time()
        # `_size` is what arrived and was not read yet (aiohttp has no public accessor for it).
        if content.total_bytes != self.seen or getattr(content, "_size", False):
            self.seen, self.since = content.total_bytes, now
        elif now - self.since >= self.timeout:
            self.fired = True
            self.handle = None
            content.set_exception(ClientIdle(text="request body stopped arriving"))
            return
        self.handle = self.loop.call_later(self.timeout / 4, self.check)

    def handed_off(self) -> None:
        """BodyWatch: the handler reads the rest from the socket and keeps the timeout itself."""
        self.stop()

    def expired(self) -> None:
        """BodyWatch: the handler saw the client idle for the timeout (answered as 408 below)."""
        self.fired = True

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


def _prepared(request: web.Request) -> bool:
    return request.get(RESPONSE_PREPARED, False)


async def mark_prepared(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: after this, a limit can only cut the connection, not answer."""
    request[RESPONSE_PREPARED] = True


@web.middleware
async def limits_middleware(request: web.Request, handler):
    limits = request.app[LIMITS]
    client = client_address(request.remote, request.headers, limits.proxies)
    request[CLIENT] = client
    if request.path in PROBE_PATHS:
        return await handler(request)
    metrics = request.app[METRICS]
    if not limits.acquire(client):
        metrics.rejected.labels("concurrency").inc()
        limit = limits.config.per_client_concurrency
        return _answer(request, 429,
                       f"too many concurrent requests from {client} (limit {limit}); retry in {RETRY_AFTER}s",
                       {"Retry-After": str(RETRY_AFTER)})
    idle = limits.config.idle_timeout
    watch = _BodyWatch(request, idle) if idle and not request.content.is_eof() else None
    if watch is not None:
        request[BODY_WATCH] = watch
    timeout = limits.config.request_timeout
    try:
        try:
            if not timeout:
                response = await handler(request)
            else:
                async with asyncio.timeout(timeout):
                    response = await handler(request)
        except ClientIdle:
            response = None
        except TimeoutError:
            return _request_timeout(request, timeout)
        if watch is None or not watch.fired:
            return response
        return _client_idle(request, idle)
    finally:
        if watch is not None:
            watch.stop()
        limits.release(client)


def _client_idle(request: web.Request, idle: float) -> web.Response:
    """The body stopped arriving. Whatever the handler made of the failed read (most let ClientIdle
    through), the answer is a 408, and the connection is not reused: the rest may still come."""
    request.app[METRICS].rejected.labels("idle").inc()
    length = request.content_length
    log.warning("%s %s: the client sent nothing for %gs (limits.idle_timeout) after %d byte(s) of the "
                "request body%s; answering 408", request.method, request.path, idle, request.content.total_bytes,
                f" (of {length})" if length is not None else "")
    if _prepared(request):
        # Too late to answer: cut the connection; the 408 is what the access log records.
        if request.transport is not None:
            request.transport.abort()
        response = web.Response(status=408)
        response.force_close()
        return response
    return _answer(request, 408, f"the request body stopped arriving: nothing for {idle:g}s "
                                 "(limits.idle_timeout)", {"Connection": "close"})


def _request_timeout(request: web.Request, timeout: float) -> web.Response:
    request.app[METRICS].rejected.labels("timeout").inc()
    if _prepared(request):
        # The status line is gone already: all that is left is to cut the response short,
        # which the client sees as a truncated transfer and retries. The 503 below is what
        # the access log records (the server gave up; not a client disconnect), never sent.
        log.warning("%s %s: request_timeout (%gs) hit while sending; closing the connection",
                    request.method, request.path, timeout)
        if request.transport is not None:
            request.transport.abort()
        response = web.Response(status=503)
        response.force_close()
        return response
    body_done = request.content.is_eof()  # all of it received, read or not
    log.warning("%s %s: gave up after limits.request_timeout (%gs)%s", request.method, request.path,
                timeout, "" if body_done else " while the request body was still arriving")
    if body_done:
        return _answer(request, 503, f"the server gave up on this request after {timeout:g}s "
                                     "(limits.request_timeout)", {"Retry-After": str(RETRY_AFTER)})
    return _answer(request, 408, f"the request body did not arrive within {timeout:g}s "
                                 "(limits.request_timeout)", {"Connection": "close"})
