"""Typed keys for what lfsserve keeps on a request (aiohttp's per-request storage).

Set by the middlewares and handlers that learn each fact, read by the access log and metrics.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from .auth import Principal

__all__ = ["BODY_SENT", "BODY_WATCH", "CLIENT", "PRINCIPAL", "REQUEST_ID", "RESPONSE_PREPARED", "ROUTE_KIND",
           "BodyWatch"]

# The id sent back as X-Request-Id and written on every log line about the request.
REQUEST_ID = web.RequestKey("request_id", str)
# Who the request was authenticated as (absent until a handler has checked).
PRINCIPAL = web.RequestKey("principal", Principal)
# The client address the limits count against (behind a trusted proxy, the forwarded one).
CLIENT = web.RequestKey("client", str)
# Which kind of route answered: the `route` label of the request metrics.
ROUTE_KIND = web.RequestKey("route_kind", str)
# Set once a streamed response has started (a late error can then only cut it).
RESPONSE_PREPARED = web.RequestKey("response_prepared", bool)
# Response body bytes that left the server (headers and chunk framing not counted; a file sent
# by the kernel counted too): the access log's size and the sent-bytes metric.
BODY_SENT = web.RequestKey("body_sent", int)


class BodyWatch(Protocol):
    """The idle timeout on a request body (limits.py), for a handler that reads the body itself."""

    def handed_off(self) -> None:
        """The handler reads the socket itself from now on and times the client out itself."""

    def expired(self) -> None:
        """The handler found the client idle for limits.idle_timeout: answer as for any body."""


# Set on requests whose body is watched for idleness (limits.idle_timeout).
BODY_WATCH = web.RequestKey("body_watch", BodyWatch)
