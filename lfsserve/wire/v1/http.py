"""Mercurial wire protocol v1 over HTTP: the aiohttp front door for `{repo}?cmd=NAME`.

Authenticates (read for every command, write and POST for push commands), gathers the
arguments (query string, X-HgArg-N headers, X-HgArgs-Post body prefix), runs the command from
the registry in the executor, and writes the answer: plain bytes (application/mercurial-0.1),
or a stream compressed as negotiated (application/mercurial-0.2) and produced with bounded
memory. Pushes spool their body to a temporary file, then apply it under the repository's write
lock. This module is the one place where wire v1 errors become HTTP: permission errors are
401/403/405 with hg's `0\\n<message>\\n` body, malformed requests 400, repository-level refusals
`application/hg-error`.

A repository URL without `cmd` is handed to the web front end's page (Kind.REPO_PAGE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiohttp import hdrs, web

from ...aio import iterate_blocking, run_blocking
from ...auth import AuthError, Forbidden, Permission, Principal, Unauthorized
from ...hg.bundle2 import Bundle2Error
from ...hg.error import HgError, RepoNotFound
from ...kernel import CTX, PRINCIPAL
from ...metrics import metrics_of
from ...repos import CannotCreate, how_to_create
from ...routing import Kind, Target
from .. import v2
from ..capabilities import BundleRequired
from ..compression import MEDIA_01, compress_stream, negotiate
from ..protocol import BadRequest, header_args, parse_client_proto, parse_qs_bytes
from ..pushenv import push_env
from ..unbundle import LfsCheck, PushReply
from .commands import COMMANDS, Command, Result, Session, Stream, bind_args
from .transport import SPOOL_CHUNK, PushTooLarge, lfs_checker, may_create, spool, spool_dir

__all__ = ["V1", "V1State", "handle", "setup"]

log = logging.getLogger(__name__)

HG_ERROR = "application/hg-error"
SCRIPT_OK = "Script output follows"
MAX_POST_ARGS = 16 * 1024 * 1024

# Decoded arguments of a command, as bind_args gives them.
Args = dict[str, bytes | dict[str, bytes]]


@dataclass
class V1State:
    spool_dir: Path   # where pushes are spooled before they are applied


V1 = web.AppKey("lfsserve_wire_v1", V1State)


def setup(app: web.Application) -> None:
    ctx = app[CTX]
    app[V1] = V1State(spool_dir(ctx.config))
    ctx.register(Kind.HG, handle)


# -- responses --------------------------------------------------------------------------------------

class _BareResponse(web.Response):
    """hg serve sends permission errors without a Content-Type; aiohttp would add one."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self._headers.popall(hdrs.CONTENT_TYPE, None)


def _reason(message: str) -> str:
    """A message made safe for an HTTP reason phrase (hg shows the reason of 401/403/405)."""
    text = re.sub(r"[^\x20-\x7e]", "?", message.splitlines()[0] if message else "error")
    return text[:200] or "error"


def _perm_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _BareResponse(status=status, reason=_reason(message), headers=headers,
                         body=b"0\n%s\n" % message.encode("utf-8"))


def _bytes(body: bytes) -> web.Response:
    return web.Response(status=200, reason=SCRIPT_OK, body=body, content_type=MEDIA_01)


def _hg_error(message: str, hint: str | None = None) -> web.Response:
    text = message if message.endswith("\n") else message + "\n"
    if hint:
        text += f"({hint})\n"
    return web.Response(status=200, reason=SCRIPT_OK, body=text.encode("utf-8"), content_type=HG_ERROR)


def _bad_request(message: str) -> web.Response:
    return web.Response(status=400, reason=_reason(message), text=message + "\n")


def _not_found(message: str) -> web.Response:
    return web.Response(status=404, reason=_reason(message), body=b"0\n%s\n" % message.encode("utf-8"),
                        content_type=MEDIA_01)


# -- arguments --------------------------------------------------------------------------------------

def _query(request: web.Request) -> dict[str, bytes]:
    """Query-string arguments with raw byte values (aiohttp's parsed query would decode them)."""
    raw = request.raw_path.partition("?")[2]
    return parse_qs_bytes(raw.encode("latin-1", "replace"))


async def _request_args(request: web.Request, query: dict[str, bytes]) -> dict[str, bytes]:
    """Query arguments, then either the X-HgArgs-Post body prefix or the X-HgArg-N headers."""
    args = dict(query)
    post = request.headers.get("X-HgArgs-Post")
    if post is not None:
        try:
            n = int(post)
        except ValueError:
            raise BadRequest(f"X-HgArgs-Post is not a number: {post[:40]!r}")
        if not 0 <= n <= MAX_POST_ARGS:
            raise BadRequest(f"X-HgArgs-Post out of range (at most {MAX_POST_ARGS})")
        if n:
            try:
                data = await request.content.readexactly(n)
            except asyncio.IncompleteReadError:
                raise BadRequest("request body shorter than X-HgArgs-Post says")
            args.update(parse_qs_bytes(data))
        return args
    args.update(parse_qs_bytes(header_args(request.headers)))
    return args



def _postargs_safe(request: web.Request, repo_name: str, principal: Principal) -> bool:
    """Whether this client may be offered httppostargs: only when no 401 can follow.

    With httppostargs, hg sends a push's arguments and bundle as one body that it cannot rewind
    (its _multifile); when that request gets a 401, hg retries with credentials but without
    the body, and the push fails or hangs. hg only learns credentials from a 401 and then sends
    them with every request, so a client that authenticated before this capabilities request
    never gets another 401, and neither does an anonymous one that may already write here.
    Everyone else sends arguments in X-HgArg headers, whose requests hg replays whole
    (httpsendfile is rewound), as against hg serve, which does not offer httppostargs."""
    if principal.authenticated:
        return True
    return request.app[CTX].auth.permission(principal, repo_name) >= Permission.WRITE


# -- the handler ------------------------------------------------------------------------------------

async def handle(request: web.Request, target: Target) -> web.StreamResponse:
    ctx = request.app[CTX]
    try:
        query = _query(request)
    except BadRequest as exc:
        return _bad_request(exc.message)
    name = query.pop("cmd", None)
    if name is None:
        page = ctx.handlers.get(Kind.REPO_PAGE)
        if page is None:
            return _bad_request("missing wire protocol command (cmd=)")
        return await page(request, target)
    cmd = COMMANDS.get(name.decode("latin-1"))
    if cmd is None:
        return _bad_request(f"unknown wire protocol command {name.decode('latin-1')[:60]!r}")
    try:
        principal = await ctx.auth.require(request.headers, target.repo, Permission.READ)
        request[PRINCIPAL] = principal
        if cmd.permission == "push":
            if request.method != "POST":
                return _perm_error(405, "push requires POST request")
            ctx.auth.authorize(principal, target.repo, Permission.WRITE)
        args = bind_args(cmd, await _request_args(request, query))
        if cmd.kind == "push":
            return await _push(request, target, principal, cmd, args)
        return await _run(request, target, principal, cmd, args)
    except Unauthorized as exc:
        await _drain(request, ctx.config.hg.max_push_size)
        return _perm_error(401, exc.message, ctx.auth.challenge())
    except (Forbidden, AuthError) as exc:
        return _perm_error(exc.status, exc.message)
    except BadRequest as exc:
        return _bad_request(exc.message)
    except RepoNotFound as exc:
        asking = request.get(PRINCIPAL)
        if ctx.config.hg.create_on_push and asking is not None and not asking.authenticated:
            # hg sends credentials only when challenged: an anonymous 404 would keep a user who
            # may create this repository (hg.create_on_push) from ever pushing to it.
            await _drain(request, ctx.config.hg.max_push_size)
            return _perm_error(401, f"{exc.message}; log in to create it by pushing", ctx.auth.challenge())
        return _not_found(f"{exc.message}; {how_to_create(ctx.config.hg.create_on_push, target.repo)}")
    except CannotCreate as exc:
        return _perm_error(409, str(exc))
    except BundleRequired as exc:
        return _hg_error(exc.message)
    except (HgError, Bundle2Error) as exc:
        log.info("%s on %s refused: %s", cmd.name, target.repo, exc)
        return _hg_error(exc.message, getattr(exc, "hint", None))


async def _drain(request: web.Request, limit: int) -> None:
    """Read and drop what is left of the request body before a 401 (at most `limit` bytes, 0 = all).

    hg sends a whole push before it reads the answer, then resends it with credentials. aiohttp's
    own draining after an early answer gives up after 10 s and closes the connection, so a push
    that takes longer to upload would fail on a reset instead of being retried. The body stays
    under limits.idle_timeout while it is drained."""
    seen = 0
    while request.can_read_body:
        chunk = await request.content.read(SPOOL_CHUNK)
        if not chunk:
            return
        seen += len(chunk)
        if limit and seen > limit:
            return


def _may_create(request: web.Request, repo_name: str, principal: Principal) -> bool:
    ctx = request.app[CTX]
    return may_create(ctx.config, ctx.auth, principal, repo_name)


def _opened(request: web.Request, target: Target, principal: Principal, stack: contextlib.ExitStack,
            payload: BinaryIO | None = None, push: bool = False) -> Callable[[Command, Args], Result]:
    """A function for the executor that runs a command on the repository of `target`, opened
    through the registry into `stack` (which the caller closes once the answer is sent: a Stream
    reads the repository while it goes out)."""
    ctx = request.app[CTX]
    may_create = _may_create(request, target.repo, principal)
    check_lfs = _lfs_checker(request, target.repo, principal) if payload is not None else None
    postargs = _postargs_safe(request, target.repo, principal)

    def work(cmd: Command, args: Args) -> Result:
        repo = stack.enter_context(ctx.repos.open(target.repo, may_create=may_create))
        return cmd.func(Session(ctx.config, repo, payload, check_lfs, offer_postargs=postargs, push=env), **args)
    env = None
    if push:
        env = push_env(ctx.config, ctx.auth, ctx.webhooks, target.repo, principal, request.scheme,
                       request.remote or "")
    return work


async def _run(request: web.Request, target: Target, principal: Principal, cmd: Command,
               args: Args) -> web.StreamResponse:
    ctx = request.app[CTX]
    config = ctx.config
    with contextlib.ExitStack() as stack:
        work = _opened(request, target, principal, stack, push=cmd.permission == "push")
        if cmd.name == "capabilities" and config.hg.wire_v2 and request.headers.get("X-HgUpgrade-1"):
            caps = await run_blocking(work, cmd, args)
            assert isinstance(caps, bytes)
            upgraded = await v2.maybe_upgrade(request, target, caps)
            return upgraded if upgraded is not None else _bytes(caps)
        if cmd.permission == "push":
            async with ctx.repos.write_lock(target.repo):
                result = await run_blocking(work, cmd, args)
        else:
            result = await run_blocking(work, cmd, args)
        if isinstance(result, Stream):
            return await _stream(request, result)
        assert isinstance(result, bytes), f"{cmd.name} is a bytes command"
        return _bytes(result)


async def _stream(request: web.Request, result: Stream) -> web.StreamResponse:
    """Send a streamed answer. The first chunk is produced before the status line, so an error at
    the very start still becomes a proper hg-error; a later one can only cut the stream."""
    config = request.app[CTX].config
    if result.raw:
        media, prefix, make = MEDIA_01, b"", result.chunks
    else:
        choice = negotiate(parse_client_proto(request.headers), config.hg.compression,
                           prefer_uncompressed=result.prefer_uncompressed)
        media, prefix = choice.media_type, choice.prefix

        def make() -> Iterator[bytes]:
            return compress_stream(result.chunks(), choice.engine, zstd_level=config.hg.zstd_level)

    async with contextlib.aclosing(iterate_blocking(make)) as chunks:
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = b""
        response = web.StreamResponse(status=200, reason=SCRIPT_OK, headers={hdrs.CONTENT_TYPE: media})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await response.write(prefix + first)
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("stream answer failed after it started; closing the connection")
            if request.transport is not None:
                request.transport.close()
        return response


async def _spool(request: web.Request, directory: Path, limit: int = 0) -> BinaryIO:
    """The request body into a spool file; a body announced larger than `limit` is refused before
    anything is read."""
    if limit and request.content_length is not None and request.content_length > limit:
        raise PushTooLarge(limit)
    return await spool(request.content.iter_chunked(SPOOL_CHUNK), directory, limit)


def _lfs_checker(request: web.Request, repo_name: str, principal: Principal) -> LfsCheck:
    ctx = request.app[CTX]
    return lfs_checker(ctx.config, ctx.lfs_blobs, repo_name, principal)


async def _push(request: web.Request, target: Target, principal: Principal, cmd: Command,
                args: Args) -> web.StreamResponse:
    """A command that reads the request body (unbundle): spooled first, then applied under the
    repository's write lock."""
    ctx = request.app[CTX]
    state = request.app[V1]
    config = ctx.config
    try:
        body = await _spool(request, state.spool_dir, config.hg.max_push_size)
    except PushTooLarge as exc:
        log.info("push to %s by %s refused: %s", target.repo, principal, exc)
        # The reason phrase is what hg prints ("abort: HTTP Error 413: push larger than ...").
        # aiohttp reads and drops the rest of the body for a while after this answer, so the
        # client gets to read it instead of failing on a reset connection.
        return web.Response(status=413, reason=str(exc), text=f"{exc}\n")
    try:
        with metrics_of(request.app).push() as observed, contextlib.ExitStack() as stack:
            work = _opened(request, target, principal, stack, body, push=True)
            async with ctx.repos.write_lock(target.repo):
                reply = await run_blocking(work, cmd, args)
            assert isinstance(reply, PushReply), f"{cmd.name} is a push command"
            if not reply.changed:
                observed.result = "refused"
    finally:
        await run_blocking(body.close)
    if reply.changed:
        log.info("push to %s by %s applied", target.repo, principal)
    return _bytes(reply.body)
