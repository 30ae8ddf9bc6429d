"""The aiohttp application: one dispatcher that hands each request to its front door.

Front ends (Mercurial wire v1, v2, Git LFS) register a handler per routing.Kind from their
`setup(app)` function, listed in FRONTENDS. Each front end authenticates, translates its typed
errors into its own body format, and never sees a path that routing.resolve() rejected.
Anything a front end lets escape becomes a logged 500 carrying the request id, and the server
keeps serving.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aiohttp import web

from . import __version__
from .auth import Authenticator
from .config import Config
from .health import healthz, readyz
from .limits import LIMITS, PROBE_PATHS, Limits, limits_middleware, mark_prepared
from .logs import add_request_id_header, request_id_middleware
from .metrics import METRICS, Metrics, metrics_handler
from .repos import RepoRegistry
from .reqkeys import REQUEST_ID, ROUTE_KIND
from .routing import BadPath, Kind, Target, resolve
from .shutdown import DRAIN, Drain, close_while_draining, drain_middleware
from .urls import TrustedProxies, external_base

__all__ = ["CTX", "Handler", "ServerContext", "create_app"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request, Target], Awaitable[web.StreamResponse]]

# Modules with a `setup(app: web.Application) -> None` that registers handlers on the context.
FRONTENDS: list[str] = ["lfsserve.lfs", "lfsserve.wire.v1", "lfsserve.wire.v2", "lfsserve.web"]


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

    def register(self, kind: Kind, handler: Handler) -> None:
        if kind in self.handlers:
            raise RuntimeError(f"two handlers for {kind}")
        self.handlers[kind] = handler

    def base_url(self, request: web.BaseRequest) -> str:
        """scheme://host[/prefix] as the client reached us (see urls.external_base)."""
        return external_base(
            scheme=request.scheme, host=request.host, peer=request.remote, headers=request.headers,
            base_url=self.config.server.base_url, proxies=self.proxies)


# Paths a Git LFS client sends (batch, locks, transfers), for answering path errors in LFS JSON.
_LFS_LOOKING = re.compile(r"/info/lfs/|/\.hg/lfs/|/objects/batch$|/locks(/|$)")

CTX = web.AppKey("lfsserve_ctx", ServerContext)


@web.middleware
async def _error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (ConnectionResetError, ConnectionAbortedError):
        raise
    except Exception:
        log.exception("unhandled error serving %s %s", request.method, request.path_qs)
        rid = request.get(REQUEST_ID, "-")
        return web.Response(status=500, text=f"internal server error (request id {rid})\n")


async def _dispatch(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    try:
        target = resolve(request.path, request.raw_path, "cmd" in request.query)
    except BadPath as exc:
        request[ROUTE_KIND] = "invalid"
        if _LFS_LOOKING.search(request.path):
            # git-lfs shows an error's JSON `message` to its user; give it one.
            body = json.dumps({"message": f"bad request path: {exc}",
                               "request_id": request.get(REQUEST_ID, "-")})
            return web.Response(status=400, body=body.encode("utf-8"),
                                content_type="application/vnd.git-lfs+json")
        return web.Response(status=400, text=f"bad request path: {exc}\n")
    request[ROUTE_KIND] = target.kind.value
    handler = ctx.handlers.get(target.kind)
    if handler is None:
        return web.Response(status=404, text=f"not found: nothing is served at {request.path}\n")
    upload = _upload_protocol(request, target)
    if upload is None:
        return await handler(request, target)
    with request.app[METRICS].upload(upload):
        return await handler(request, target)


def _upload_protocol(request: web.Request, target: Target) -> str | None:
    """Which upload gauge a request counts in: LFS object PUTs, and hg pushes (v1 unbundle)."""
    if target.kind is Kind.LFS_OBJECT and request.method == "PUT":
        return "lfs"
    if target.kind is Kind.HG and request.method == "POST" and request.query.get("cmd") == "unbundle":
        return "hg"
    return None


def _probe(handler):
    async def probe(request: web.Request) -> web.StreamResponse:
        request[ROUTE_KIND] = request.path.lstrip("/")
        return await handler(request)
    return probe


async def _index(request: web.Request, target: Target) -> web.StreamResponse:
    return web.Response(text=f"lfsserve {__version__}\n")


def create_app(config: Config, frontends: list[str] | None = None) -> web.Application:
    ctx = ServerContext(config=config, auth=Authenticator(config),
                        proxies=TrustedProxies(config.server.trusted_proxies),
                        repos=RepoRegistry(config.repos_dir))
    # Bodies a handler reads whole (batch JSON, v1 POST args) are small; everything large streams
    # from request.content, which this limit does not apply to.
    app = web.Application(middlewares=[drain_middleware, request_id_middleware, limits_middleware,
                                       _error_middleware],
                          client_max_size=16 * 1024 * 1024)
    app[CTX] = ctx
    app[METRICS] = Metrics()
    app[LIMITS] = Limits(config.limits, ctx.proxies)
    app.on_response_prepare.append(add_request_id_header)
    app.on_response_prepare.append(mark_prepared)
    app[DRAIN] = drain = Drain()
    app[METRICS].in_flight.set_function(lambda: drain.in_flight)  # read at scrape time
    app.on_response_prepare.append(close_while_draining)
    for name in FRONTENDS if frontends is None else frontends:
        importlib.import_module(name).setup(app)
    if Kind.INDEX not in ctx.handlers:
        ctx.register(Kind.INDEX, _index)
    probes = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics_handler}
    assert probes.keys() == PROBE_PATHS
    for path, handler in probes.items():
        app.router.add_get(path, _probe(handler))
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app
