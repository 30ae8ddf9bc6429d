"""Running the server: event loop (uvloop when installed), executor, listening sockets, signals.

Besides HTTP, the server listens on a Unix socket for the hg sessions of SSH forced commands
(ssh/handoff.py, `ssh.handoff`). On SIGTERM or SIGINT it stops accepting connections on both,
gives in-flight requests and sessions up to `server.shutdown_grace` seconds to finish, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from . import __version__
from .aio import Executor, set_default_executor
from .app import create_app
from .config import Config
from .kernel import CTX
from .logs import access_logger_class, setup_logging
from .metrics import METRICS
from .pgdb import DatabaseUnavailable, SchemaTooNew
from .shutdown import DRAIN
from .ssh.handoff import HandoffListener

__all__ = ["run", "runner_options", "serve"]

log = logging.getLogger(__name__)


def runner_options(app: web.Application, config: Config) -> dict:
    """AppRunner arguments that belong to the product (tests running the app in-process use them too)."""
    # The access logger also feeds the request metrics, so it runs even when lines are "off".
    return {
        "access_log_class": access_logger_class(config.log.access_format, app[METRICS]),
        "access_log": logging.getLogger("lfsserve.access"),
        # Requests in flight were already given server.shutdown_grace (see shutdown.py); what is
        # still running after that is cancelled almost at once.
        "shutdown_timeout": 1.0,
        # Unfinished request headers, like idle keep-alive connections, are closed after
        # limits.idle_timeout (aiohttp's default is an hour); bodies are watched in limits.py.
        **({"keepalive_timeout": config.limits.idle_timeout} if config.limits.idle_timeout else {}),
    }


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT arrives)."""
    executor = Executor(config.server.executor_threads)
    set_default_executor(executor)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(executor.pool)
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass

    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, **runner_options(app, config))
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
    await site.start()
    port = config.server.port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    host = config.server.host
    shown = f"[{host}]" if ":" in host else host
    handoff = HandoffListener(app[CTX]) if config.ssh.handoff else None
    if handoff is not None:
        await handoff.start()
    for line in app[CTX].auth.describe():
        print(line, flush=True)
    # Tests and scripts wait for this exact line (and read the port from it when --port 0).
    print(f"lfsserve {__version__}: listening on http://{shown}:{port} (data in {config.root})", flush=True)
    try:
        await stop.wait()
        drain = app[DRAIN]
        log.info("shutting down: no new connections, up to %gs for %d request(s) in flight",
                 config.server.shutdown_grace, drain.in_flight)
        await site.stop()
        grace = config.server.shutdown_grace
        drained, _ = await asyncio.gather(drain.wait(grace),
                                          handoff.stop(grace) if handoff is not None else asyncio.sleep(0))
        if not drained:
            log.warning("shutdown grace period over: cancelling %d request(s) still in flight", drain.in_flight)
    finally:
        if handoff is not None:
            await handoff.stop(0)
        await runner.cleanup()
        executor.shutdown()


def run(config: Config) -> int:
    setup_logging(config.log.level, config.log.format)
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    try:
        if uvloop is not None and sys.platform != "win32":
            uvloop.run(serve(config))
        else:
            asyncio.run(serve(config))
    except (DatabaseUnavailable, SchemaTooNew) as exc:  # at start-up: say why, no traceback
        print(f"lfsserve: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
