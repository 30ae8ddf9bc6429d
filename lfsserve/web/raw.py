"""Machine endpoints of the web UI: `raw-file/{rev}/{path}` (a file's exact bytes) and
`raw-rev/{rev}` (a changeset as `hg export` prints it), in hgweb's URL space.

raw-file serves what `hg cat` prints, except that a file stored with Git LFS is resolved to its
blob (hgweb would serve the pointer): through LfsService, the only door to blobs, which checks the
object is visible in this repository's namespace. The router has already applied the read
permission exactly as a clone does. A URL naming its revision by full node can never change:
`Cache-Control: immutable` and an ETag. Content types are guessed from the name, but nothing a
browser would run (HTML, SVG, JavaScript...) is served as such: repository content is untrusted,
so active types go out as text/plain, with `nosniff` and a sandboxing CSP on every raw answer.

Also the LFS helpers the other web modules use (archives, file views): reading a blob from a
worker thread, and `lfs_preview` for the file view.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import mimetypes
import posixpath
import re
import threading
import urllib.parse
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from aiohttp import web

from ..aio import run_blocking
from ..auth import ANONYMOUS, Permission
from ..blobstore.base import BlobError, CorruptObject, ObjectMissing
from ..hg.diff import DiffLimits, DiffTooLarge, export_patch
from ..hg.error import HgError, RepoNotFound
from ..hg.filelog import LfsPointer, parse_lfs_pointer
from ..hg.node import NULLREV
from ..hg.repository import Repository
from ..kernel import ServerContext
from ..lfs.service import LfsService
from ..repos import engine_repo
from . import model
from .router import PageHandler, WebError, WebRequest

__all__ = ["COMMANDS", "LfsBlobReader", "blob_workers", "cache_headers", "lfs_preview", "lfs_service", "raw_file",
           "raw_rev", "with_repo"]

IMMUTABLE = "max-age=31536000, immutable"
# raw-rev builds the patch in memory: bounded like the diff pages, a larger one is refused (413)
RAW_REV_LIMITS = DiffLimits(max_file_bytes=16 << 20, max_output_bytes=16 << 20)
# file contents read whole (raw-file of a non-LFS file); LFS blobs stream whatever their size
CHUNK = 256 << 10
_FULL_NODE = re.compile(r"[0-9a-f]{40}\Z")
# types a browser would render or run: served as text/plain so a repository cannot script the site
_ACTIVE = re.compile(r"(text/html|application/xhtml|image/svg|text/xml|application/xml|.*javascript|"
                     r"text/css|application/x-shockwave|multipart/)", re.I)
_RAW_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}


def lfs_service(ctx: ServerContext) -> LfsService | None:
    """The server's LFS service (the LFS front end registers it as the blob policy), if any."""
    return ctx.lfs_blobs if isinstance(ctx.lfs_blobs, LfsService) else None


# Work that reads LFS blobs from a worker thread (LfsBlobReader) waits there for the event loop,
# whose blob reads need threads of the shared executor in turn. Such work runs on threads of its
# own, so that it can never hold every thread of the shared pool while waiting for a free one.
BLOB_WORKERS = 8
_BLOB_THREAD = "lfsserve-web-blobs"
_blob_pool: concurrent.futures.ThreadPoolExecutor | None = None


def blob_workers() -> concurrent.futures.ThreadPoolExecutor:
    """The threads for work that reads LFS blobs through LfsBlobReader (archives, patches)."""
    global _blob_pool
    if _blob_pool is None:
        _blob_pool = concurrent.futures.ThreadPoolExecutor(BLOB_WORKERS, thread_name_prefix=_BLOB_THREAD)
    return _blob_pool


async def with_repo(wr: WebRequest, fn, *, reads_blobs: bool = False):
    """Run `fn(repo)` in the executor with the repository open; engine errors become 404s.
    `reads_blobs`: fn reads LFS blobs through an LfsBlobReader (see blob_workers)."""
    def work():
        with wr.ctx.repos.open(wr.repo) as served:
            return fn(engine_repo(served))
    try:
        if reads_blobs:
            return await asyncio.wrap_future(blob_workers().submit(work))
        return await run_blocking(work)
    except RepoNotFound:
        raise WebError(404, f"no repository at /{wr.repo}") from None
    except HgError as exc:
        raise WebError(404, exc.message) from None


def cache_headers(wr: WebRequest, rev_arg: str, node: str, etag_extra: str = "") -> dict[str, str]:
    """Caching headers: immutable (with an ETag) when the URL names the full node, else none."""
    if rev_arg.lower() != node or not _FULL_NODE.match(node):
        return {}
    public = wr.ctx.auth.permission(ANONYMOUS, wr.repo) >= Permission.READ
    path = "/".join(wr.args[1:])
    # a digest, not hash(): every instance behind a balancer must give the same tag
    digest = hashlib.sha256(f"{path}\0{etag_extra}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    tag = f'"{node}-{wr.command}-{digest}"'
    return {"ETag": tag, "Cache-Control": ("public, " if public else "private, ") + IMMUTABLE}


def _not_modified(wr: WebRequest, headers: dict[str, str]) -> web.Response | None:
    if "ETag" in headers and wr.request.headers.get("If-None-Match") == headers["ETag"]:
        return web.Response(status=304, headers=headers)
    return None


def content_type(path: str, head: bytes) -> str:
    """The media type for a raw file: guessed from its name, else text or binary from its bytes;
    never an active type (see the module's doc)."""
    guess, _ = mimetypes.guess_type(path, strict=False)
    if guess is None:
        guess = "application/octet-stream" if b"\0" in head else "text/plain"
    if _ACTIVE.match(guess):
        guess = "text/plain"
    if guess.startswith("text/"):
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not only a character cut at the end of the sample
                return guess
        return guess + "; charset=utf-8"
    return guess


def _disposition(path: str) -> str:
    name = posixpath.basename(path)
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    return f'inline; filename="{ascii_name}"; filename*=UTF-8\'\'{urllib.parse.quote(name, safe="")}'


@dataclass
class _RawFile:
    node: str
    data: bytes | None  # None: an LFS file, see `pointer`
    pointer: LfsPointer | None
    link: bool


async def raw_file(wr: WebRequest) -> web.StreamResponse:
    """raw-file/{rev}/{path}: the file's exact bytes (an LFS file's blob)."""
    if len(wr.args) < 2 or not wr.args[0]:
        raise WebError(400, "raw-file needs a revision and a file path: raw-file/{rev}/{path}")
    rev_arg = wr.args[0]
    path = model.parse_path(wr.args[1:])
    if not path:
        raise WebError(400, "raw-file needs a file path: raw-file/{rev}/{path}")

    def read(repo: Repository) -> _RawFile:
        r = model.resolve_rev(repo, rev_arg)
        cl = repo.changelog
        found = None if r == NULLREV else repo.manifestlog.find(cl.manifest_node(r), path.encode())
        if found is None:
            raise WebError(404, f"no file {path!r} at revision {rev_arg}")
        fnode, flags = found
        fl = repo.file(path.encode())
        frev = fl.rev(fnode)
        if fl.is_lfs(frev):
            return _RawFile(cl.node(r).hex(), None, fl.lfs_pointer(frev), False)
        return _RawFile(cl.node(r).hex(), fl.read(fnode), None, b"l" in flags)

    f = await with_repo(wr, read)
    headers = {**_RAW_HEADERS, **cache_headers(wr, rev_arg, f.node), "Content-Disposition": _disposition(path)}
    if (nm := _not_modified(wr, headers)) is not None:
        return nm
    if f.data is not None:
        ctype = "text/plain" if f.link else content_type(path, f.data[:8192])
        resp = web.Response(body=f.data, headers={**headers, "Content-Type": ctype})
        return resp
    assert f.pointer is not None
    return await _send_blob(wr, path, f.pointer, headers)


async def _send_blob(wr: WebRequest, path: str, pointer: LfsPointer, headers: dict[str, str]) -> web.StreamResponse:
    svc = lfs_service(wr.ctx)
    if svc is None:
        raise WebError(404, f"{path} is stored with Git LFS and this server has no LFS store")
    try:
        handle = await svc.open_download(wr.repo, pointer.oid, whole=wr.request.method != "HEAD")
    except ObjectMissing:
        raise WebError(404, f"the LFS object of {path} ({pointer.oid}) is not in this server's store") from None
    except CorruptObject:
        raise WebError(404, f"the LFS object of {path} ({pointer.oid}) is corrupt on this server") from None
    resp = web.StreamResponse(headers=headers)
    resp.content_length = handle.size
    first = True
    async with contextlib.aclosing(svc.read(handle)) as chunks:
        if wr.request.method == "HEAD":
            resp.content_type = content_type(path, b"")
            await resp.prepare(wr.request)
            return resp
        sent = 0
        try:
            async for chunk in chunks:
                if first:
                    resp.headers["Content-Type"] = content_type(path, chunk[:8192])
                    await resp.prepare(wr.request)
                    first = False
                await resp.write(chunk)
                sent += len(chunk)
        except BlobError:
            if first:
                raise WebError(404, f"the LFS object of {path} ({pointer.oid}) cannot be read") from None
            # the status line is gone: cut the transfer short, the client sees a truncated body
            if wr.request.transport is not None:
                wr.request.transport.abort()
            return resp
        if first:  # an empty blob
            resp.headers["Content-Type"] = content_type(path, b"")
            await resp.prepare(wr.request)
        svc.sent(sent)
    await resp.write_eof()
    return resp


async def raw_rev(wr: WebRequest) -> web.StreamResponse:
    """raw-rev/{rev}: the changeset as `hg export` prints it (`?git=1` or `style=gitraw`: git style)."""
    if not wr.args or not wr.args[0]:
        raise WebError(400, "raw-rev needs a revision: raw-rev/{rev}")
    if len(wr.args) > 1:
        raise WebError(404, "raw-rev takes only a revision: raw-rev/{rev}")
    rev_arg = wr.args[0]
    git = wr.request.query.get("git", "") in ("1", "true", "yes", "on")
    loop = asyncio.get_running_loop()
    svc = lfs_service(wr.ctx)
    reader = LfsBlobReader(loop, svc, wr.repo, RAW_REV_LIMITS.max_file_bytes) if svc is not None else None

    def read(repo: Repository) -> tuple[str, bytes]:
        r = model.resolve_changed_rev(repo, rev_arg)
        node = repo.changelog.node(r)
        try:
            return node.hex(), b"".join(export_patch(repo, node, git=git, limits=RAW_REV_LIMITS,
                                                     lfs=reader.read_sync if reader else None))
        except DiffTooLarge as exc:
            raise WebError(413, exc.message) from None

    node, patch = await with_repo(wr, read, reads_blobs=reader is not None)
    headers = {**_RAW_HEADERS, **cache_headers(wr, rev_arg, node, "git" if git else "")}
    if (nm := _not_modified(wr, headers)) is not None:
        return nm
    return web.Response(body=patch, headers={**headers, "Content-Type": "text/plain"})


class LfsBlobReader:
    """Reads LFS blobs of one repository from a worker thread (the engine's diff and archive code
    runs there), through LfsService on the event loop. Only from a thread of blob_workers():
    never from the loop itself, nor from the shared executor."""

    def __init__(self, loop: asyncio.AbstractEventLoop, svc: LfsService, namespace: str, max_whole: int):
        self.loop = loop
        self.svc = svc
        self.namespace = namespace
        self.max_whole = max_whole

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    @staticmethod
    def _safe() -> bool:
        """Whether this thread may wait for blob reads: only threads of blob_workers() may (on
        the shared executor, waiting could hold the very threads those reads need)."""
        return threading.current_thread().name.startswith(_BLOB_THREAD)

    def read_sync(self, path: bytes, pointer_text: bytes) -> bytes | None:
        """The whole content of a small blob (None: not a pointer, too large, not available, or
        called outside blob_workers(), where waiting for it could deadlock)."""
        try:
            pointer = parse_lfs_pointer(pointer_text)
        except ValueError:
            return None
        if pointer.size > self.max_whole or not self._safe():
            return None
        stream = self.open_sync(path, pointer)
        if stream is None:
            return None
        try:
            return stream.read()
        finally:
            stream.close()

    def open_sync(self, path: bytes, pointer: LfsPointer) -> _BlobStream | None:
        """A blocking reader of the blob's content, or None when it is not visible/stored."""
        if not self._safe():
            raise RuntimeError("LfsBlobReader used outside raw.blob_workers()")
        try:
            handle = self._call(self.svc.open_download(self.namespace, pointer.oid, whole=True))
        except BlobError:
            return None
        return _BlobStream(self, self.svc.read(handle))


class _BlobStream:
    """read(n) over an async chunk generator, from a worker thread."""

    def __init__(self, owner: LfsBlobReader, chunks: AsyncGenerator[bytes, None]):
        self.owner = owner
        self.chunks = chunks
        self.chunk = memoryview(b"")
        self.done = False

    async def _next(self) -> bytes | None:
        try:
            return await self.chunks.__anext__()
        except StopAsyncIteration:
            return None

    def read(self, n: int = -1) -> bytes:
        out: list[bytes] = []
        want = n
        while want != 0:
            if not self.chunk:
                if self.done:
                    break
                chunk = self.owner._call(self._next())
                if chunk is None:
                    self.done = True
                    break
                self.chunk = memoryview(chunk)
            take = len(self.chunk) if want < 0 else min(want, len(self.chunk))
            out.append(bytes(self.chunk[:take]))
            self.chunk = self.chunk[take:]
            if want > 0:
                want -= take
        return b"".join(out)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.owner._call(self.chunks.aclose())


async def lfs_preview(wr: WebRequest, oid: str, size: int) -> bytes | None:
    """An LFS file's content for the file view (pages.LFS_PREVIEW_HOOK), None if not available."""
    svc = lfs_service(wr.ctx)
    if svc is None:
        return None
    try:
        handle = await svc.open_download(wr.repo, oid, whole=True)
        parts = []
        async with contextlib.aclosing(svc.read(handle)) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
        return b"".join(parts)
    except BlobError:
        return None


COMMANDS: dict[str, PageHandler] = {
    "raw-file": raw_file,
    "raw-rev": raw_rev,
}
