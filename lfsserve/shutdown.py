"""Graceful shutdown: stop accepting, let requests in flight finish (bodies still arriving
included), then close.

aiohttp's own graceful shutdown marks every connection closing first, and from then on drops
whatever bytes arrive, so an upload in flight could never complete. Instead the server stops
listening, waits here until no request is in flight (or the grace period ends), and only then
lets aiohttp close connections and cancel what is left. While draining, every response asks the
client to close its connection, so keep-alive clients go elsewhere.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["DRAIN", "Drain", "close_while_draining", "drain_middleware"]


class Drain:
    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def wait(self, grace: float) -> bool:
        """Start draining; True when every request finished within `grace` seconds."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
            return True
        except TimeoutError:
            return False


DRAIN = web.AppKey("lfsserve_drain", Drain)


@web.middleware
async def drain_middleware(request: web.Request, handler):
    drain = request.app[DRAIN]
    drain.enter()
    try:
        return await handler(request)
    finally:
        drain.leave()


async def close_while_draining(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no keep-alive once shutdown began."""
    if request.app[DRAIN].draining:
        response.force_close()
