"""Git LFS front end: batch API, basic transfer, file locking.

`setup(app)` registers the handlers for the LFS routing kinds and puts an LfsService under the
`LFS_SERVICE` AppKey, started and stopped with the application. The service is also the
server's LFS blob policy (lfsserve.kernel.LfsBlobPolicy), which the hg push path asks whether a
push's blobs are present; operations use it directly; see LfsService.
"""

from __future__ import annotations

from aiohttp import web

from ..kernel import CTX
from ..metrics import metrics_of, scan_blob_store
from ..routing import Kind
from .keys import LFS_SERVICE
from .service import GcReport, LfsService, LfsStats, VerifyReport

__all__ = ["LFS_SERVICE", "GcReport", "LfsService", "LfsStats", "VerifyReport", "setup"]


def setup(app: web.Application) -> None:
    from .batch import handle_batch
    from .locks import handle_locks
    from .transfer import handle_object, handle_verify

    ctx = app[CTX]
    service = LfsService.create(ctx.config, ctx.auth)
    app[LFS_SERVICE] = service
    ctx.register_lfs_blobs(service)
    metrics = metrics_of(app)
    metrics.set_store_scanner(lambda: scan_blob_store(service.store))
    metrics.add_counters("lfsserve_lfs", service.stats.as_dict, "Git LFS activity since start-up")
    ctx.register(Kind.LFS_BATCH, handle_batch)
    ctx.register(Kind.LFS_OBJECT, handle_object)
    ctx.register(Kind.LFS_VERIFY, handle_verify)
    ctx.register(Kind.LFS_LOCKS, handle_locks)

    async def start(app: web.Application) -> None:
        await service.start()

    async def stop(app: web.Application) -> None:
        await service.stop()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
