"""An S3 that misbehaves on demand: a small HTTP proxy on loopback in front of moto.

    proxy = FaultProxy.start(moto.url)          # its own thread and event loop
    proxy.fault(status=503)                     # every request answered 503 (an S3-style error)
    proxy.fault(status=500, method="PUT", query="partNumber=2")   # only the second part of uploads
    proxy.fault(delay=5, method="GET")          # GETs forwarded 5 s late (as a slow S3, they may
                                                # still take effect after the client gave up)
    proxy.clear(); proxy.stop()

Requests are forwarded as they came (Host header included, so SigV4 signatures still match) and
answered with moto's response, so lfsserve talks real HTTP to a real S3 API with its real client
(aiobotocore). `hits` counts the requests each fault answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from .support import require_interop_marker

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "trailer",
        "proxy-connection"}
_CODES = {500: "InternalError", 503: "SlowDown"}


@dataclass
class Fault:
    status: int = 0          # answer this instead of forwarding (0: forward)
    delay: float = 0.0       # seconds to wait before doing so
    method: str = ""         # match only this method ("" any)
    query: str = ""          # match only requests whose query string contains this
    hits: int = 0

    def matches(self, request: web.Request) -> bool:
        return (not self.method or request.method == self.method) and self.query in request.query_string


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.faults: list[Fault] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="s3-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, upstream: str) -> FaultProxy:
        require_interop_marker("an S3 fault proxy")
        proxy = cls(upstream)
        proxy._thread.start()
        asyncio.run_coroutine_threadsafe(proxy._serve(), proxy._loop).result(30)
        return proxy

    async def _serve(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=300))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def fault(self, *, status: int = 0, delay: float = 0.0, method: str = "", query: str = "") -> Fault:
        f = Fault(status, delay, method, query)
        self.faults.append(f)
        return f

    def clear(self) -> None:
        self.faults = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = next((f for f in list(self.faults) if f.matches(request)), None)
        if fault is not None:
            fault.hits += 1
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status:
                code = _CODES.get(fault.status, "InternalError")
                xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                       f"<Message>injected by the test proxy</Message></Error>")
                return web.Response(status=fault.status, text=xml, content_type="application/xml")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                         data=body if body else None, allow_redirects=False) as up:
            data = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD":
                # no body, but the object's length is what HEAD is asked for
                resp = web.StreamResponse(status=up.status, headers=out)
                resp.content_length = int(up.headers.get("Content-Length", 0))
                with contextlib.suppress(ConnectionResetError):  # the client gave up waiting
                    await resp.prepare(request)
                    await resp.write_eof()
                return resp
            return web.Response(status=up.status, body=data, headers=out)

    def stop(self) -> None:
        async def close() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
