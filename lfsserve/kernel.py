"""The server kernel: what front ends share and import, and what imports none of them.

Front ends (`wire/`, `lfs/`) reach the server through the ServerContext under `CTX`: the
configuration, authentication, the repository registry, the handler table they register into,
and the policies one front end provides for another (the hg push path asks the LFS front end,
through `LfsBlobPolicy`, whether a push's blobs are present). `app.py` builds the context and
composes the front ends; nothing here knows which front ends exist.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from .auth import Authenticator, Principal
from .config import Config
from .repos import RepoRegistry
from .reqkeys import CLIENT, PRINCIPAL, REQUEST_ID, RESPONSE_PREPARED, ROUTE_KIND
from .routing import Kind, Target
from .urls import TrustedProxies, external_base
from .webhooks import Webhooks

__all__ = [
    "CLIENT",
    "CTX",
    "LFS_JSON",
    "PRINCIPAL",
    "REQUEST_ID",
    "RESPONSE_PREPARED",
    "ROUTE_KIND",
    "Handler",
    "LfsBlobPolicy",
    "ServerContext",
    "Setup",
    "lfs_error",
]

# What a front end registers for a routing.Kind.
Handler = Callable[[web.Request, Target], Awaitable[web.StreamResponse]]
# A front end's `setup(app)`: registers its handlers on the app's ServerContext.
Setup = Callable[[web.Application], None]

LFS_JSON = "application/vnd.git-lfs+json"


class LfsBlobPolicy(Protocol):
    """Whether the LFS blobs an hg push points to are present; registered by the LFS front end."""

    def accept_pushed_pointers_sync(self, namespace: str, oids: Iterable[str], principal: Principal) -> set[str]:
        """The oids NOT acceptable in repository `namespace` (the acceptable ones become visible
        there). Called from a worker thread, never from the event loop."""
        ...


@dataclass
class ServerContext:
    """What every front end shares. Front ends keep their own state under their own AppKeys."""

    config: Config
    auth: Authenticator
    proxies: TrustedProxies
    # One registry for every front end, so pushes through v1 and pushkey through v2 queue on the
    # same per-repository lock.
    repos: RepoRegistry
    handlers: dict[Kind, Handler] = field(default_factory=dict)
    # None: no LFS front end in this server, so nothing can vouch for a pushed blob.
    lfs_blobs: LfsBlobPolicy | None = None
    # The webhook targets and their durable queue (events are queued from worker threads).
    webhooks: Webhooks | None = None

    def register(self, kind: Kind, handler: Handler) -> None:
        if kind in self.handlers:
            raise RuntimeError(f"two handlers for {kind}")
        self.handlers[kind] = handler

    def register_lfs_blobs(self, policy: LfsBlobPolicy) -> None:
        if self.lfs_blobs is not None:
            raise RuntimeError("two LFS blob policies")
        self.lfs_blobs = policy

    def base_url(self, request: web.BaseRequest) -> str:
        """scheme://host[/prefix] as the client reached us (see urls.external_base)."""
        return external_base(
            scheme=request.scheme, host=request.host, peer=request.remote, headers=request.headers,
            base_url=self.config.server.base_url, proxies=self.proxies)


CTX = web.AppKey("lfsserve_ctx", ServerContext)


def lfs_error(request: web.BaseRequest, status: int, message: str, headers: Mapping[str, str] | None = None,
              extra: Mapping[str, Any] | None = None) -> web.Response:
    """An error in the Git LFS format: `{"message": ..., "request_id": ...}` (git-lfs shows the
    message to its user) as application/vnd.git-lfs+json; no body for HEAD."""
    body = {"message": message, **(extra or {}), "request_id": request.get(REQUEST_ID, "-")}
    response = web.Response(body=json.dumps(body, separators=(",", ":")).encode("utf-8"), status=status,
                            content_type=LFS_JSON, headers=headers)
    if request.method == "HEAD":
        response.body = b""
    return response
