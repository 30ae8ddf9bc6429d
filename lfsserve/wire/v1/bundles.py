"""Clone bundles over HTTP: the signed URLs the manifest hands out, serving those files (sendfile,
Range), and building bundles in the background after pushes.

Builds are debounced per repository (clonebundles.delay after the last push), run one at a time
in their own thread (never on the event loop, never starving request threads), and never two for
one repository: the bundle store's lock also keeps an `lfsserve clonebundles build` in another
process apart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import urllib.parse

from aiohttp import hdrs, web

from ...aio import run_blocking
from ...blobstore.base import BlobError
from ...blobstore.bundles import BundleStore, BundleStoreBusy, bundle_key
from ...kernel import CTX, ServerContext
from ...repos import engine_repo
from ...routing import Kind, Target
from .. import clonebundles as cb

__all__ = ["BUNDLES", "BundleJobs", "setup"]

log = logging.getLogger(__name__)


class BundleJobs:
    """The per-server state of clone bundles: the store, and the background builds."""

    def __init__(self, ctx: ServerContext):
        self.ctx = ctx
        self.store: BundleStore = cb.open_bundle_store(ctx.config)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # -- URLs ---------------------------------------------------------------------------------------
    def url_maker(self, request: web.Request, repo_name: str):
        """`key -> URL` for the manifest of this request: the store's presigned URL where it has
        one (the bytes then never pass through lfsserve), else a signed URL served below."""
        cfg = self.ctx.config.clonebundles
        if cfg.inline:
            return None
        auth = self.ctx.auth
        store = self.store

        def url_for(key: str) -> str:
            presigned = store.presigned_url(key, cfg.url_expiry)
            if presigned is not None:
                return presigned
            base = self.ctx.base_url(request)
            expires = int(time.time()) + cfg.url_expiry
            name = key.rsplit("/", 1)[1]
            sig = auth.sign_bundle_url(key, expires)
            return (f"{base}/{urllib.parse.quote(repo_name)}/.hg/clonebundles/{name}"
                    f"?expires={expires}&sig={sig}")
        return url_for

    # -- background builds ---------------------------------------------------------------------------
    def pushed(self, repo_name: str) -> None:
        """A push changed `repo_name`: (re)start its debounce timer."""
        cfg = self.ctx.config.clonebundles
        if not cfg.auto_generate:
            return
        timer = self._timers.pop(repo_name, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._timers[repo_name] = loop.call_later(cfg.delay, self._start, repo_name)

    def manifest_read(self, repo_name: str) -> None:
        """A client read the manifest: unless a build is already pending, look (after the delay)
        whether the bundles are stale, so that changes that did not come through this server's
        HTTP pushes (SSH sessions are processes of their own; hg run on the server) are picked up
        too. The build itself decides, cheaply, whether anything needs building."""
        cfg = self.ctx.config.clonebundles
        if not cfg.auto_generate or repo_name in self._timers or repo_name in self._running:
            return
        self._timers[repo_name] = asyncio.get_running_loop().call_later(cfg.delay, self._start, repo_name)

    def _start(self, repo_name: str) -> None:
        self._timers.pop(repo_name, None)
        if repo_name in self._running:
            self._again.add(repo_name)  # the running build may have missed the last push
            return
        self._running[repo_name] = asyncio.get_running_loop().create_task(self._run(repo_name))

    async def _run(self, repo_name: str) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clonebundles")
        try:
            while True:
                self._again.discard(repo_name)
                try:
                    await loop.run_in_executor(self._executor, self._build, repo_name)
                except BundleStoreBusy as exc:
                    log.info("%s", exc)
                except Exception:
                    log.exception("%s: building clone bundles failed", repo_name)
                if repo_name not in self._again:
                    break
        finally:
            self._running.pop(repo_name, None)

    def _build(self, repo_name: str) -> None:
        with self.ctx.repos.open(repo_name) as repo:
            cb.build(self.ctx.config, self.store, repo_name, engine_repo(repo))

    async def idle(self) -> None:
        """Wait until no build is pending or running (tests, shutdown)."""
        while self._timers or self._running:
            tasks = list(self._running.values())
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0.05)

    async def close(self, app: web.Application | None = None) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._running.values():
            task.cancel()
        if self._executor is not None:
            # a build cut short leaves only its temporary file, removed by the next build
            self._executor.shutdown(wait=False, cancel_futures=True)


BUNDLES = web.AppKey("lfsserve_clonebundles", BundleJobs)


def setup(app: web.Application) -> None:
    ctx = app[CTX]
    app[BUNDLES] = jobs = BundleJobs(ctx)
    app.on_cleanup.append(jobs.close)
    ctx.register(Kind.HG_CLONEBUNDLE, serve_bundle)


async def serve_bundle(request: web.Request, target: Target) -> web.StreamResponse:
    """GET/HEAD of a bundle file by its signed URL (the signature is the permission: it was
    handed to a reader of the repository with the manifest)."""
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, headers={hdrs.ALLOW: "GET, HEAD"}, text="use GET\n")
    ctx = request.app[CTX]
    jobs = request.app[BUNDLES]
    key = bundle_key(target.repo, target.rest)
    expires = request.query.get("expires", "")
    sig = request.query.get("sig", "")
    if not ctx.auth.bundle_url_valid(key, expires, sig):
        return web.Response(status=403, text="clone bundle URL invalid or expired: clone again to get a new one\n")
    path = await run_blocking(jobs.store.local_path, key)
    if path is None:
        presigned = jobs.store.presigned_url(key, ctx.config.clonebundles.url_expiry)
        if presigned is not None:
            raise web.HTTPFound(presigned)
        return await _stream_bundle(request, jobs.store, key)
    # FileResponse: sendfile, Range, If-Modified-Since; the name is content-addressed, so
    # the bytes under it never change
    media = "application/mercurial-cbor" if path.suffix == ".cbor" else "application/mercurial-bundle"
    return web.FileResponse(path, chunk_size=256 * 1024,
                            headers={hdrs.CONTENT_TYPE: media,
                                     hdrs.CACHE_CONTROL: "private, max-age=31536000, immutable"})


async def _stream_bundle(request: web.Request, store: BundleStore, key: str) -> web.StreamResponse:
    """A bundle the store keeps elsewhere (S3 in proxy mode), streamed through in chunks read in
    the executor (constant memory)."""
    try:
        opened = await run_blocking(store.open_read, key)
    except BlobError as exc:
        return web.Response(status=503, headers={hdrs.RETRY_AFTER: "5"}, text=f"{exc}\n")
    if opened is None:
        return web.Response(status=404, text="clone bundle gone (a newer one replaced it): clone again\n")
    body, size = opened
    try:
        media = "application/mercurial-cbor" if key.endswith(".cbor") else "application/mercurial-bundle"
        resp = web.StreamResponse(headers={hdrs.CONTENT_TYPE: media, hdrs.CONTENT_LENGTH: str(size),
                                           hdrs.CACHE_CONTROL: "private, max-age=31536000, immutable"})
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        sent = 0
        try:
            while True:
                chunk = await run_blocking(body.read, 256 * 1024)
                if not chunk:
                    break
                sent += len(chunk)
                await resp.write(chunk)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # the store failed mid-body: the answer can only be cut short
            log.warning("clone bundle %s: the store failed after %d of %d bytes: %s", key, sent, size, exc)
            if request.transport is not None:
                request.transport.close()
            return resp
        await resp.write_eof()
        return resp
    finally:
        await run_blocking(body.close)
