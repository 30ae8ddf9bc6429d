"""The Git LFS basic transfer: PUT and GET of one object, and the verify action.

    PUT  {repo}/.hg/lfs/objects/{oid}   upload: 201 stored, 200 already stored; 422 on mismatch
    GET  {repo}/.hg/lfs/objects/{oid}   download (Range and HEAD too); 404 / 422 when corrupt
    POST {repo}/.hg/lfs/verify          {"oid", "size"}: 200 stored and sound, 404, 422

Callers present either the signed token from a batch action (valid for exactly this object and
operation) or ordinary credentials, checked like any other request to the repository.
"""

from __future__ import annotations

import contextlib
import logging
import re

from aiohttp import web

from ..aio import run_blocking
from ..auth import SIGNED_PREFIX, Permission, Principal
from ..blobstore import BlobError, BlobHandle
from ..kernel import CTX
from ..reqkeys import PRINCIPAL
from ..routing import Target
from . import receive, sendfile
from .errors import LfsError, endpoint
from .keys import LFS_SERVICE
from .request import object_error, read_json
from .service import LfsService, VerifyFailed

__all__ = ["handle_object", "handle_verify"]

log = logging.getLogger(__name__)

_OCTETS = "application/octet-stream"


async def _principal(request: web.Request, svc: LfsService, ns: str, oid: str, operation: str,
                     needed: Permission) -> Principal:
    principal = await svc.auth.authenticate(request.headers, (ns, oid, operation), lfs_repo=ns)
    request[PRINCIPAL] = principal
    if not svc.auth.signed_grants(principal, ns, oid, operation):
        svc.auth.authorize(principal, ns, needed)
    return principal


@endpoint
async def handle_object(request: web.Request, target: Target) -> web.StreamResponse:
    svc = request.app[LFS_SERVICE]
    if request.method == "PUT":
        return await _upload(request, svc, target.repo, target.rest)
    if request.method in ("GET", "HEAD"):
        return await _download(request, svc, target.repo, target.rest)
    raise LfsError(405, f"{request.method} is not an LFS transfer method", headers={"Allow": "GET, HEAD, PUT"})


async def _upload(request: web.Request, svc: LfsService, ns: str, oid: str) -> web.StreamResponse:
    principal = await _principal(request, svc, ns, oid, "upload", Permission.WRITE)
    limit = svc.config.lfs.max_object_size
    if limit and request.content_length is not None and request.content_length > limit:
        raise LfsError(413, f"object larger than this server's limit of {limit} bytes",
                       headers={"Connection": "close"})
    content = request.content
    if content.is_eof():
        # The whole body came with the headers (small objects): one worker job stores it.
        result = await svc.receive_bytes(ns, oid, content.read_nowait(-1))
    elif (request.content_length is not None and request.content_length <= _WHOLE_MAX
          and "Content-Encoding" not in request.headers):
        # A small body that took more than one read (64 KiB and its headers often do): read
        # whole, then stored by one worker job, rather than streamed through two.
        result = await svc.receive_bytes(ns, oid, await content.read())
    elif receive.eligible(request) and (upload := await svc.open_upload(oid)) is not None:
        try:
            await receive.read_into(request, upload, svc.config.limits.idle_timeout)
        except BaseException:
            await svc.upload_failed(upload)
            raise
        result = await svc.complete_upload(ns, oid, upload)
    else:
        result = await svc.receive(ns, oid, content.iter_any())
    hooks = request.app[CTX].webhooks
    if hooks is not None and hooks.targets(ns, "lfs"):
        await run_blocking(hooks.emit_sync, "lfs", ns, principal.name, {"lfs_oids": [oid]})
    return web.Response(status=201 if result.created else 200)


async def _download(request: web.Request, svc: LfsService, ns: str, oid: str) -> web.StreamResponse:
    await _principal(request, svc, ns, oid, "download", Permission.READ)
    # ObjectMissing -> 404, CorruptObject -> 422
    plain = _plain_get(request)
    handle = await svc.open_download(ns, oid, whole=request.method != "HEAD" and "Range" not in request.headers,
                                     inline=_SENDFILE_MIN - 1 if plain else 0)
    headers = {"Content-Type": _OCTETS}
    if handle.data is not None and plain:
        # Small and verified: read with the lookup, sent from memory.
        svc.sent(handle.size)
        return web.Response(body=handle.data, headers=headers)
    if handle.path is not None:
        svc.sent(handle.size)
        if plain and handle.size >= _SENDFILE_MIN:
            response = await sendfile.send(request, handle.path, handle.size, headers)
            if response is not None:
                return response
        # Known good: FileResponse does Range (206), HEAD, conditional requests and 416.
        return web.FileResponse(handle.path, headers=headers, chunk_size=1 << 20)
    return await _stream(request, svc, handle, headers)


def _signed_token(request: web.Request) -> bool:
    """Whether the request carries a signed action token (rather than ordinary credentials)."""
    scheme, _, cred = request.headers.get("Authorization", "").strip().partition(" ")
    return scheme.lower() == "bearer" and cred.strip().startswith(SIGNED_PREFIX)


# Below this, the thread hand-off costs more than copying through the event loop.
_SENDFILE_MIN = 256 * 1024
# Upload bodies of at most this many bytes (by Content-Length) are received whole before they
# are stored: at most this much memory per upload.
_WHOLE_MAX = 256 * 1024


def _plain_get(request: web.Request) -> bool:
    """A whole-object GET: no Range or conditional headers for FileResponse to handle."""
    h = request.headers
    return request.method == "GET" and not any(
        k in h for k in ("Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since",
                         "If-Unmodified-Since"))


_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")


def _range(request: web.Request, size: int) -> tuple[int, int] | None:
    """The single byte range [start, end) a GET asks for, None for the whole object; LfsError
    416 when it lies outside the object. (Multi-range requests get the whole object, as RFC 9110
    allows; no LFS client sends them.)"""
    header = request.headers.get("Range")
    if header is None or request.method != "GET":
        return None
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # the last N bytes
        start, end = max(0, size - int(m.group(2))), size
    else:
        start = int(m.group(1))
        end = min(size, int(m.group(2)) + 1) if m.group(2) else size
    if start >= size or start >= end:
        raise LfsError(416, f"range {header[:60]!r} is outside the object ({size} bytes)",
                       headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def _stream(request: web.Request, svc: LfsService, handle: BlobHandle, headers: dict[str, str]
                  ) -> web.StreamResponse:
    """Send an object (or the range asked for) while verifying it (backends without a local file,
    or an object that changed); on a mismatch or a backend failure mid-way the connection is cut
    before the end, so the client never takes a partial object for a whole one."""
    wanted = _range(request, handle.size)
    start, end = wanted or (0, handle.size)
    if wanted is None:
        response = web.StreamResponse(status=200, headers=headers)
    else:
        response = web.StreamResponse(status=206, headers={
            **headers, "Content-Range": f"bytes {start}-{end - 1}/{handle.size}"})
    response.headers["Accept-Ranges"] = "bytes"
    response.content_length = end - start
    if request.method == "HEAD":
        await response.prepare(request)
        return response
    chunks = svc.read(handle, start, end)
    async with contextlib.aclosing(chunks):
        first = b""
        if handle.verified:
            # The first chunk before the status line: a backend that fails at once gets its 503.
            # An unverified object's status line goes out first whatever its size: if it turns
            # out corrupt, the client sees the connection cut before the end.
            with contextlib.suppress(StopAsyncIteration):
                first = await chunks.__anext__()
        await response.prepare(request)
        sent = 0
        try:
            if first:
                await response.write(first)
                sent = len(first)
            async for chunk in chunks:
                await response.write(chunk)
                sent += len(chunk)
        except BlobError as exc:
            log.error("LFS download of %s cut after %d of %d bytes: %s", handle.oid, sent, end - start,
                      exc.message)
            # The status line is long gone: the only way left to tell the client is to cut the
            # connection short of Content-Length, so it discards what it received.
            if request.transport is not None:
                request.transport.abort()
            return response
    svc.sent(sent)
    await response.write_eof()
    return response


@endpoint
async def handle_verify(request: web.Request, target: Target) -> web.StreamResponse:
    svc = request.app[LFS_SERVICE]
    if request.method != "POST":
        raise LfsError(405, "the verify action takes POST requests", headers={"Allow": "POST"})
    ns = target.repo
    signed = _signed_token(request)
    if not signed:
        # Ordinary credentials (or none): refuse before reading anything from the client.
        principal = await svc.auth.authenticate(request.headers)
        request[PRINCIPAL] = principal
        svc.auth.authorize(principal, ns, Permission.WRITE)
    # A signed action token is bound to one oid, which only the (small, bounded) body names.
    body = await read_json(request, 4096)
    oid, size = body.get("oid"), body.get("size")
    error = object_error(oid, size)
    if error:
        raise LfsError(422, error)
    assert isinstance(oid, str) and isinstance(size, int)  # object_error accepted them
    if signed:
        await _principal(request, svc, ns, oid, "verify", Permission.WRITE)
    try:
        await svc.verify_uploaded(ns, oid, size)
    except VerifyFailed as exc:
        raise LfsError(exc.status, exc.message) from None
    return web.Response(status=200)
