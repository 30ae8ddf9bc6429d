"""`archive/{rev}.tar.gz|.tar.bz2|.zip`: a changeset's files as one download, as hgweb serves it.

The content is `hg archive`'s (lfsserve.hg.archive writes it, LFS files resolved to their blobs
through LfsService), under the prefix hgweb uses, `{repo basename}-{short node}/` (or the
symbolic name given, `-v1.0/`). Offered only for the types the repository's `.hg/hgrc`
`[web] allow_archive` lists (lfsserve's `[web] allow_archive` is the default), else 403, as
hgweb does. The archive is written in a worker thread (compression included) into a small
bounded queue the response drains: memory stays flat whatever the size of the repository, and a
slow client slows the writer. Writers run on the web front end's blob threads (raw.blob_workers:
at most BLOB_WORKERS archives are written at once, the others wait their turn). Each archive is
one request in flight for its client, so the per-client concurrency limit
(limits.per_client_concurrency) caps how many one crawler runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from ..aio import run_blocking
from ..hg.archive import ARCHIVE_TYPES, ArchiveError, Sink, archival_metadata, write_archive
from ..hg.node import NULLREV
from ..hg.repository import Repository
from ..kernel import ServerContext
from ..repos import engine_repo
from . import model
from .hgrc import web_items
from .raw import LfsBlobReader, blob_workers, cache_headers, lfs_service, with_repo
from .router import PageHandler, WebError, WebRequest

__all__ = ["COMMANDS", "archive"]

# What the writer thread may get ahead of the client: PENDING pieces of about PIECE bytes.
PIECE = 64 << 10
PENDING = 8
_DONE = object()


class _QueueSink:
    """The archive writer's output: pieces handed to the event loop through a bounded queue.

    write() blocks the worker thread while PENDING pieces wait for the client; it raises
    _Gone when the response has stopped (client gone), which ends the writer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop = loop
        self.queue = queue
        self.room = threading.Semaphore(PENDING)
        self.stop = threading.Event()
        self.buf: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.buf.append(data)
        self.size += len(data)
        if self.size >= PIECE:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.buf:
            piece = b"".join(self.buf)
            self.buf, self.size = [], 0
            self.put(piece)

    def put(self, item: object) -> None:
        while not self.room.acquire(timeout=0.5):
            if self.stop.is_set():
                raise _Gone()
        if self.stop.is_set():
            raise _Gone()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class _Gone(Exception):
    """The response stopped taking the archive."""


def lfs_oids(repo: Repository, rev: int) -> dict[str, str]:
    """oid -> path of the LFS-stored files of changeset `rev` (blocking)."""
    out: dict[str, str] = {}
    for path, (fnode, _) in repo.manifestlog.read(repo.changelog.manifest_node(rev)).items():
        fl = repo.file(path)
        frev = fl.rev(fnode)
        if fl.is_lfs(frev):
            out.setdefault(fl.lfs_pointer(frev).oid, path.decode("utf-8", "replace"))
    return out


class ArchiveCache:
    """Finished archives on disk, so that the same archive asked again (crawlers, release links)
    is sent from a file instead of being made again. Keyed by everything the bytes depend on:
    repository, node, type, prefix and the `.hg_archival.txt` text (which moves with new tags);
    files and LFS blobs are fixed by the node and their oids. At most `limit` bytes: the least
    recently used archives go first. Methods block (file I/O): worker threads only."""

    def __init__(self, root: Path, limit: int):
        self.root = root
        self.limit = limit

    @classmethod
    def of(cls, ctx: ServerContext) -> ArchiveCache | None:
        mib = ctx.config.web.archive_cache_mb
        return cls(ctx.config.root / "cache" / "web-archives", mib << 20) if mib > 0 else None

    @staticmethod
    def key(repo: str, node_hex: str, kind: str, name: str, meta: bytes) -> str:
        h = hashlib.sha256("\0".join((repo, node_hex, kind, name)).encode("utf-8") + b"\0" + meta)
        return h.hexdigest()

    def open(self, key: str) -> BinaryIO | None:
        try:
            f = open(self.root / key, "rb")  # noqa: SIM115 - handed to the response, which closes it
        except OSError:
            return None
        os.utime(self.root / key)  # recently used
        return f

    def writer(self, key: str) -> BinaryIO | None:
        """A temporary file for the archive being made (None: the cache cannot be written)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f"{key}.", suffix=".tmp", dir=self.root)
            os.close(fd)
            return open(tmp, "wb")
        except OSError:
            return None

    def commit(self, f: BinaryIO) -> None:
        """Keep a finished archive (unless it alone is over the limit), then make room."""
        f.close()
        tmp = Path(f.name)
        try:
            if tmp.stat().st_size > self.limit:
                tmp.unlink()
                return
            os.replace(tmp, self.root / tmp.name.split(".", 1)[0])
            self._evict()
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def discard(self, f: BinaryIO) -> None:
        f.close()
        with contextlib.suppress(OSError):
            os.unlink(f.name)

    def _evict(self) -> None:
        files = []
        stale = time.time() - 86400
        for p in self.root.iterdir():
            with contextlib.suppress(OSError):
                st = p.stat()
                if not p.name.endswith(".tmp"):
                    files.append((st.st_mtime, st.st_size, p))
                elif st.st_mtime < stale:
                    p.unlink()  # left by a process that died while writing it
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total <= self.limit:
                break
            with contextlib.suppress(OSError):
                p.unlink()
            total -= size


class _Tee:
    """Writes to the cache file and to the client's queue."""

    def __init__(self, f: BinaryIO, sink: Sink):
        self.f = f
        self.sink = sink

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.sink.write(data)
        return len(data)


async def _send_cached(wr: WebRequest, f: BinaryIO, headers: dict[str, str]) -> web.StreamResponse:
    """A cached archive, read in pieces in the executor (memory stays flat)."""
    try:
        size = await run_blocking(lambda: os.fstat(f.fileno()).st_size)
        resp = web.StreamResponse(headers=headers)
        resp.content_length = size
        await resp.prepare(wr.request)
        while piece := await run_blocking(f.read, 4 * PIECE):
            await resp.write(piece)
        await resp.write_eof()
        return resp
    finally:
        await run_blocking(f.close)


def archive_allowed(ctx: ServerContext, repo: str, kind: str) -> bool:
    """Whether `kind` (gz, bz2, zip) may be downloaded, as hgweb decides: listed in the
    repository's `[web] allow-archive` (or its older spelling allow_archive; without either,
    lfsserve's `[web] allow_archive`), or its `allow<kind>` switch on. Blocking (reads .hg/hgrc)."""
    items = web_items(ctx.repos.path_of(repo)) if ctx.config.hg.repo_hgrc else {}
    listed = items.get("allow-archive", items.get("allow_archive"))
    allowed = re.split(r"[\s,]+", listed) if listed is not None else list(ctx.config.web.allow_archive)
    return kind in allowed or items.get("allow" + kind, "").strip().lower() in ("1", "yes", "true", "on", "always")


def _archive_name(repo: str, rev_arg: str, node_hex: str) -> str:
    """hgweb's `{basename with non-word runs as -}-{the revision as the URL names it}` (`tip`
    becomes the short node; so does a full node here, where hgweb keeps all 40 digits)."""
    base = re.sub(r"\W+", "-", repo.rsplit("/", 1)[-1])
    version = node_hex[:12] if rev_arg in (node_hex, "tip") else rev_arg
    return f"{base}-{version}"


async def archive(wr: WebRequest) -> web.StreamResponse:
    """archive/{rev}.{tar.gz|tar.bz2|zip}."""
    if not wr.args or not wr.args[0]:
        raise WebError(400, "archive needs a revision and a type: archive/{rev}.tar.gz|.tar.bz2|.zip")
    if len(wr.args) > 1:
        raise WebError(404, "archives of a part of the repository are not supported: archive/{rev}.{type}")
    spec = wr.args[0]
    suffix = next((s for s in ARCHIVE_TYPES if spec.endswith(s) and len(spec) > len(s)), None)
    if suffix is None:
        raise WebError(404, "Unsupported archive type")  # hgweb's words; the type is not echoed
    rev_arg = spec[:-len(suffix)]
    kind, media = ARCHIVE_TYPES[suffix]
    if not await run_blocking(archive_allowed, wr.ctx, wr.repo, kind):
        raise WebError(403, "Archive type not allowed")

    def resolve(repo: Repository) -> tuple[str, dict[str, str], bytes]:
        r = model.resolve_rev(repo, rev_arg)
        if r == NULLREV:
            raise WebError(404, "the null revision has no files")
        return repo.changelog.node(r).hex(), lfs_oids(repo, r) if repo.has_lfs else {}, archival_metadata(repo, r)

    node_hex, oids, meta = await with_repo(wr, resolve)
    if oids:
        # every blob must be there before the first byte goes out: a missing one found half-way
        # could only cut the download short
        svc = lfs_service(wr.ctx)
        states = await svc.visible_states(wr.repo, oids) if svc is not None else {}
        missing = [oid for oid in oids if oid not in states or not states[oid].present]
        if missing:
            raise WebError(404, f"the LFS object of {oids[missing[0]]} ({missing[0]}) is not in this server's "
                                "store: no archive")
    name = _archive_name(wr.repo, rev_arg, node_hex)
    headers = {**cache_headers(wr, rev_arg, node_hex, kind), "Content-Type": media,
               "Content-Disposition": 'attachment; filename="%s"' % re.sub(r'["\\\x00-\x1f]', "_", name + suffix)}
    if "ETag" in headers and wr.request.headers.get("If-None-Match") == headers["ETag"]:
        return web.Response(status=304, headers=headers)
    if wr.request.method == "HEAD":
        return web.Response(headers=headers)

    cache = ArchiveCache.of(wr.ctx)
    key = cache.key(wr.repo, node_hex, kind, name, meta) if cache is not None else ""
    if cache is not None and (cached := await run_blocking(cache.open, key)) is not None:
        return await _send_cached(wr, cached, headers)

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    sink = _QueueSink(loop, queue)
    svc = lfs_service(wr.ctx)
    lfs = LfsBlobReader(loop, svc, wr.repo, 0).open_sync if svc is not None else None
    node = bytes.fromhex(node_hex)

    def work() -> None:
        keep = cache.writer(key) if cache is not None else None
        out: Sink = sink if keep is None else _Tee(keep, sink)
        try:
            with wr.ctx.repos.open(wr.repo) as served:
                repo = engine_repo(served)
                write_archive(repo, repo.changelog.rev(node), kind, name, out, lfs=lfs)
            sink.flush()
            if keep is not None and cache is not None:
                cache.commit(keep)
                keep = None
            sink.put(_DONE)
        except _Gone:
            pass
        except BaseException as exc:  # handed to the response, which decides what the client sees
            try:
                sink.put(exc)
            except _Gone:
                pass
        finally:
            if keep is not None and cache is not None:
                cache.discard(keep)

    future = blob_workers().submit(work)
    resp = web.StreamResponse(headers=headers)
    try:
        item = await queue.get()
        sink.room.release()
        if isinstance(item, BaseException):
            if isinstance(item, ArchiveError):
                raise WebError(404, item.message)
            raise item
        await resp.prepare(wr.request)
        while item is not _DONE:
            if isinstance(item, BaseException):
                # the status line is gone: cut the transfer, the client sees a truncated archive
                if wr.request.transport is not None:
                    wr.request.transport.abort()
                if isinstance(item, ArchiveError):
                    return resp
                raise item
            await resp.write(item)
            item = await queue.get()
            sink.room.release()
        await resp.write_eof()
        return resp
    finally:
        sink.stop.set()
        await asyncio.shield(asyncio.wrap_future(future))


COMMANDS: dict[str, PageHandler] = {"archive": archive}
