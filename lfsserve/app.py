"""The aiohttp application: one dispatcher that hands each request to its front door.

Front ends (Mercurial wire v1, v2, Git LFS) register a handler per routing.Kind on the kernel's
ServerContext from their `setup(app)` function; FRONTENDS below is the table of them. Each front
end authenticates, translates its typed errors into its own body format, and never sees a path
that routing.resolve() rejected. Anything a front end lets escape becomes a logged 500 carrying
the request id, and the server keeps serving.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from aiohttp import web

from . import __version__, lfs
from . import web as web_ui
from .auth import Authenticator
from .config import Config
from .health import healthz, readyz
from .kernel import CTX, REQUEST_ID, ROUTE_KIND, ServerContext, Setup, lfs_error
from .limits import LIMITS, PROBE_PATHS, Limits, limits_middleware, mark_prepared
from .logs import add_request_id_header, client_gone, request_id_middleware
from .metrics import METRICS, Metrics, metrics_handler
from .pgdb import RETRY_AFTER as DB_RETRY_AFTER
from .pgdb import DatabaseUnavailable
from .repos import RepoRegistry, RepoSettings
from .routing import BadPath, Kind, Target, resolve
from .shutdown import DRAIN, Drain, close_while_draining, drain_middleware
from .urls import TrustedProxies
from .webhooks import Webhooks
from .webhooks.delivery import WEBHOOKS, webhooks_ctx
from .wire import v1, v2

__all__ = ["CTX", "FRONTENDS", "create_app"]

log = logging.getLogger(__name__)

# Every front door of the server: each `setup(app)` registers its handlers (and policies) on the
# app's ServerContext (lfsserve.kernel). LFS comes first: it registers the LFS blob policy that
# wire v1's push path asks.
FRONTENDS: tuple[Setup, ...] = (
    lfs.setup,      # Git LFS: batch API, basic transfer, verify, locks
    v1.setup,       # Mercurial wire protocol v1 (?cmd=)
    v2.setup,       # Mercurial wire protocol v2 (/api/exp-http-v2-0003/...)
    web_ui.setup,   # the web UI: the index at /, hgweb's pages and JSON under each repository
)


# Paths a Git LFS client sends (batch, locks, transfers), for answering path errors in LFS JSON.
_LFS_LOOKING = re.compile(r"/info/lfs/|/\.hg/lfs/|/objects/batch$|/locks(/|$)")


@web.middleware
async def _error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except DatabaseUnavailable as exc:
        # The shared metadata database is down or restarting: nothing was changed; try again.
        log.error("%s %s: %s", request.method, request.path, exc)
        return web.Response(status=503, text="the metadata database is unavailable; try again later\n",
                            headers={"Retry-After": str(DB_RETRY_AFTER)})
    except Exception as exc:
        if isinstance(exc, ConnectionError) and client_gone(request):
            raise  # the client went away: logs.request_id_middleware records it (499)
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
            return lfs_error(request, 400, f"bad request path: {exc}")
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


def create_app(config: Config, frontends: Sequence[Setup] = FRONTENDS) -> web.Application:
    webhooks = Webhooks(config)
    ctx = ServerContext(config=config, auth=Authenticator(config),
                        proxies=TrustedProxies(config.server.trusted_proxies),
                        repos=RepoRegistry(config.repos_dir, RepoSettings.from_config(config)),
                        webhooks=webhooks)
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
    app[WEBHOOKS] = webhooks
    app.cleanup_ctx.append(webhooks_ctx)
    app[DRAIN] = drain = Drain()
    app[METRICS].in_flight.set_function(lambda: drain.in_flight)  # read at scrape time
    app.on_response_prepare.append(close_while_draining)
    for setup in frontends:
        setup(app)
    if Kind.INDEX not in ctx.handlers:
        ctx.register(Kind.INDEX, _index)
    probes = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics_handler}
    assert probes.keys() == PROBE_PATHS
    for path, handler in probes.items():
        app.router.add_get(path, _probe(handler))
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app
