"""Wire protocol v2 over HTTP: the handshake answer and `{repo}/api/exp-http-v2-0003/{ro|rw}/{command}`.

The handshake arrives on v1's `?cmd=capabilities` with `X-HgUpgrade-1: exp-http-v2-0003` and
`X-HgProto-1: cbor`; wire v1 hands such requests to `maybe_upgrade`, which answers the CBOR
capabilities (API descriptor + v1 capabilities) or declines. Commands are POSTs of framed CBOR;
the answer is streamed (chunked) from a worker thread that runs the commands, encodes CBOR,
compresses and frames, with memory bounded by a few frames whatever the repository size.

Errors are translated here, once: URL and header mistakes to 404/405/406/415 (as Mercurial's
server answers them), framing violations to 400, authentication to 401/403, command failures to
command errors / error frames in the stream (commands.classify decides which).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web

from ...aio import iterate_blocking, run_blocking
from ...auth import AuthError, Permission
from ...hg.error import RepoNotFound, UnsupportedRequirement
from ...kernel import CTX, REQUEST_ID, ServerContext
from ...repos import RepoRegistry, engine_repo
from ...routing import Kind, Target
from ..pushenv import push_env
from . import cbor, commands
from .encoding import choose, make_encoder, order_from_config
from .framing import ProtocolError, Request, ResponseWriter, coalesce, read_request

__all__ = ["API_NAME", "maybe_upgrade", "setup"]

log = logging.getLogger(__name__)

API_NAME = "exp-http-v2-0003"
CBOR_MEDIA_TYPE = "application/mercurial-cbor"
MEDIA_TYPE = commands.FRAMING_MEDIA_TYPE
# Requests are command maps and node lists (a manifestdata batch of 100,000 nodes is ~2 MiB);
# anything much larger is not a v2 client.
MAX_REQUEST_BODY = 16 * 1024 * 1024
# Bodies below this are parsed on the loop; larger ones in a worker thread.
_INLINE_PARSE = 64 * 1024


@dataclass
class _State:
    server: ServerContext
    registry: RepoRegistry
    encodings: tuple[bytes, ...]


STATE = web.AppKey("lfsserve_wire_v2", _State)


def setup(app: web.Application) -> None:
    server = app[CTX]
    state = _State(server, server.repos,
                   order_from_config(server.config.hg.compression))
    app[STATE] = state
    server.register(Kind.HG_API, _handle)


def _text(status: int, message: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=message if message.endswith("\n") else message + "\n",
                        headers=headers)


class _Refusal(Exception):
    """An HTTP-level answer (status + plain-text message) decided before any frame is sent."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _concat_headers(request: web.BaseRequest, prefix: str) -> str:
    """X-Foo-1, X-Foo-2, ... joined: how hg splits long header values."""
    parts = []
    i = 1
    while (value := request.headers.get(f"{prefix}-{i}")) is not None:
        parts.append(value)
        i += 1
    return "".join(parts)


def _open_context(state: _State, repo_name: str, request_id: str,
                  stack: contextlib.ExitStack) -> commands.Context:
    """Open the repository through the registry (in a worker thread), into `stack`, which the
    caller closes when the answer is sent; wrap it in a command Context."""
    repo = engine_repo(stack.enter_context(state.registry.open(repo_name)))
    return commands.Context(repo, publishing=repo.publishing, stream_clone=state.server.config.hg.stream_clone,
                            request_id=request_id)


async def _context(state: _State, target: Target, request: web.BaseRequest,
                   stack: contextlib.ExitStack) -> commands.Context:
    rid = request.get(REQUEST_ID, "-")
    try:
        return await run_blocking(_open_context, state, target.repo, rid, stack)
    except RepoNotFound:
        raise _Refusal(404, f"repository not found: {target.repo}") from None
    except UnsupportedRequirement as exc:
        log.error("[%s] cannot serve %s: %s", rid, target.repo, exc.message)
        raise _Refusal(500, f"this server cannot read repository {target.repo}: {exc.message}") from None


async def maybe_upgrade(request: web.Request, target: Target, v1caps: bytes) -> web.StreamResponse | None:
    """The v2 handshake answer to a v1 capabilities request that asks for it; None to let v1 answer.

    Called by wire v1 after it has authorized the request for reading `target.repo`.
    """
    state = request.app.get(STATE)
    if state is None or not state.server.config.hg.wire_v2:
        return None
    if API_NAME not in _concat_headers(request, "X-HgUpgrade").split():
        return None
    if "cbor" not in _concat_headers(request, "X-HgProto").split():
        return None
    with contextlib.ExitStack() as stack:
        try:
            ctx = await _context(state, target, request, stack)
        except _Refusal as exc:
            return _text(exc.status, exc.message, **exc.headers)
        if ctx.repo.has_lfs:
            # v2 carries no revision flags: an lfs pointer would reach the client as file content.
            log.info("[%s] %s uses lfs: answering the v2 handshake with v1", ctx.request_id, target.repo)
            return None
        descriptor = await run_blocking(commands.api_descriptor, ctx)
    body = cbor.encode({b"apibase": b"api/", b"apis": {API_NAME.encode("ascii"): descriptor},
                        b"v1capabilities": v1caps})
    # The same URL answers v1 or CBOR depending on these headers: caches must keep them apart.
    return web.Response(status=200, body=body, headers={"Content-Type": CBOR_MEDIA_TYPE,
                                                        "Vary": "X-HgUpgrade-1, X-HgProto-1"})


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


async def _handle(request: web.Request, target: Target) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        return await _serve(state, request, target)
    except _Refusal as exc:
        return _text(exc.status, exc.message, **exc.headers)
    except AuthError as exc:
        headers = state.server.auth.challenge() if exc.status == 401 else {}
        return _text(exc.status, f"permission denied: {exc.message}", **headers)


async def _serve(state: _State, request: web.Request, target: Target) -> web.StreamResponse:
    if not state.server.config.hg.wire_v2:
        raise _Refusal(404, "wire protocol v2 is not enabled on this server (hg.wire_v2)")
    parts = target.rest.split("/") if target.rest else []
    if not parts:
        await state.server.auth.require(request.headers, target.repo, Permission.READ)
        return _text(200, f"APIs of this repository, under {target.repo}/api/<name>:\n\n{API_NAME}")
    if parts[0] != API_NAME:
        raise _Refusal(404, f"unknown API {parts[0]!r} (this server offers {API_NAME})")
    if len(parts) == 1:
        await state.server.auth.require(request.headers, target.repo, Permission.READ)
        return _text(200, f"Mercurial wire protocol v2 ({API_NAME}): POST framed requests to "
                          "ro/<command> or rw/<command>")
    if len(parts) != 3 or not parts[2]:
        raise _Refusal(404, f"not a command URL: {request.path} (expected .../{API_NAME}/ro|rw/<command>)")
    access, name = parts[1], parts[2]
    if access not in ("ro", "rw"):
        raise _Refusal(404, f"unknown permission: {access} (ro or rw)")
    if request.method != "POST":
        raise _Refusal(405, "commands require POST requests", {"Allow": "POST"})
    needed = Permission.READ if access == "ro" else Permission.WRITE
    principal = await state.server.auth.require(request.headers, target.repo, needed)

    bname = name.encode("utf-8", "surrogateescape")
    multi = name == "multirequest"
    cmd = commands.COMMANDS.get(bname)
    if cmd is None and not multi:
        raise _Refusal(404, f"unknown wire protocol command: {name}")
    if cmd is not None and cmd.permission == "push" and access == "ro":
        raise _Refusal(403, f"command {name} needs push permission: send it to rw/{name}")
    accepts = {_media_type(v) for v in request.headers.get("Accept", "").split(",")}
    if MEDIA_TYPE not in accepts:
        raise _Refusal(406, f"client MUST specify Accept header with value: {MEDIA_TYPE}")
    if _media_type(request.headers.get("Content-Type", "")) != MEDIA_TYPE:
        raise _Refusal(415, f"client MUST send Content-Type header with value: {MEDIA_TYPE}")

    body = await _read_body(request)
    try:
        parsed = read_request(body) if len(body) < _INLINE_PARSE else await run_blocking(read_request, body)
    except ProtocolError as exc:
        raise _Refusal(400, f"bad framed request: {exc}") from None
    _check_commands(parsed, name, access)
    encoding = choose(parsed.encodings, state.encodings)
    writes = any(commands.COMMANDS.get(c.name) is not None and commands.COMMANDS[c.name].permission == "push"
                 for c in parsed.commands)
    async with contextlib.AsyncExitStack() as stack:
        if writes:
            await stack.enter_async_context(state.registry.write_lock(target.repo))
        opened = stack.enter_context(contextlib.ExitStack())
        ctx = await _context(state, target, request, opened)
        if writes:
            ctx.push = push_env(state.server.config, state.server.auth, state.server.webhooks, target.repo,
                                principal, request.scheme,
                                request.remote or "")
        return await _stream(request, ctx, parsed, encoding)


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_REQUEST_BODY:
        raise _Refusal(413, f"request body larger than {MAX_REQUEST_BODY} bytes")
    chunks = []
    total = 0
    async for chunk in request.content.iter_chunked(65536):
        total += len(chunk)
        if total > MAX_REQUEST_BODY:
            raise _Refusal(413, f"request body larger than {MAX_REQUEST_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_commands(parsed: Request, url_command: str, access: str) -> None:
    if not parsed.commands:
        raise _Refusal(400, "the request contains no command")
    if url_command == "multirequest":
        for c in parsed.commands:
            cmd = commands.COMMANDS.get(c.name)
            if cmd is not None and cmd.permission == "push" and access == "ro":
                raise _Refusal(403, f"command {c.name.decode('utf-8', 'replace')} needs push permission: "
                                    "send the multirequest to rw/multirequest")
        return
    if len(parsed.commands) > 1:
        raise _Refusal(400, f"{url_command} takes one command per request; use multirequest for several")
    frame_name = parsed.commands[0].name
    if parsed.commands[0].error is None and frame_name != url_command.encode("utf-8", "surrogateescape"):
        raise _Refusal(400, f"command in frame ({frame_name.decode('utf-8', 'replace')}) must match "
                            f"command in URL ({url_command})")


def _produce(ctx: commands.Context, parsed: Request, encoding: bytes) -> Iterator[bytes]:
    writer = ResponseWriter(make_encoder(encoding))

    def classify(exc: BaseException):
        return commands.classify(exc, ctx.request_id)

    def frames() -> Iterator[bytes]:
        last = len(parsed.commands) - 1
        for i, req in enumerate(parsed.commands):
            yield from writer.respond(req.request_id, commands.run(ctx, req), classify, last=i == last)

    return coalesce(frames())


async def _stream(request: web.Request, ctx: commands.Context, parsed: Request,
                  encoding: bytes) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": MEDIA_TYPE})
    response.enable_chunked_encoding()
    await response.prepare(request)
    async with contextlib.aclosing(iterate_blocking(lambda: _produce(ctx, parsed, encoding))) as chunks:
        async for chunk in chunks:
            await response.write(chunk)
    await response.write_eof()
    return response
