"""hg over SSH: `hg -R REPO serve --stdio`, the stdio transport of wire protocol v1.

The command line is parsed and checked in command.py and the user's read permission in
session.py; this module speaks the protocol on stdin/stdout, running the transport-free commands
of lfsserve/wire/v1/commands.py (one implementation of each command for HTTP and SSH):

    client: <command>\\n, then per declared argument `<name> <len>\\n<value>`
            (`* <count>\\n` then `<name> <len>\\n<value>` pairs for a command's dict argument)
    server: `<len>\\n<bytes>` for a bytes answer; a streamed answer (getbundle, stream_out,
            changegroup) raw, unframed; an unknown command gets an empty answer (`0\\n`)
    unbundle: server `0\\n` (go on), client the bundle as `<len>\\n<chunk>` frames ending with
            `0\\n`; server the bundle2 reply raw (bundle1: an empty frame, then the result frame)
    errors hg shows (out of band): `<message>\\n-\\n` on stderr, `\\n` on stdout
    an empty line or end of input ends the session

The handshake (`hello`, `between` with the null pair) is two ordinary commands. Writes need
write permission (checked per command: the user is the one the key names), take the same engine
transaction and Mercurial's on-disk repository lock as HTTP pushes (which keeps this process, the
HTTP server and `hg` apart), and spool the bundle to a temporary file first, within
hg.max_push_size. Broken framing (garbage, truncated arguments, an absurd length, end of input
inside a push) cannot be answered in step: it is said on stderr and the process exits non-zero,
having written nothing to the repository.

One process serves one session of strictly sequential commands, as `hg serve --stdio` does, and
it starts once per hg command (clone, pull, push): start-up and per-chunk overhead are most of its
CPU (bench/ssh_bench.py). So it runs synchronously, without an event loop: blocking reads on
stdin, answers written straight to stdout, commands run in this thread. Only what a write needs
asynchronously (the hooks' subprocesses, the LFS service that vouches for pushed lfs blobs, and
PostgreSQL metadata behind it) gets an event loop, in a thread, started at the first write
command of the session (_WriteLoop); asyncio is not even imported before then.

When an lfsserve server runs on the same data directory, the forced command hands its session to
it instead (handoff.py): the same _HgServer then runs in a thread of the server, on the client's
stdin, stdout and stderr passed over a Unix socket, with the server's warm revlog caches, its
event loop for what writes need, and its LFS service and webhook queue (_ServerWrites).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar

from ..auth import Authenticator, AuthError, Permission, Principal
from ..config import Config
from ..hg.bundle2 import Bundle2Error
from ..hg.error import HgError, RepoNotFound
from ..pgdb import DatabaseUnavailable
from ..repos import CannotCreate, RepoRegistry, RepoSettings
from ..webhooks import Webhooks
from ..wire.v1.commands import COMMANDS, Command, Session, Stream, bind_args
from ..wire.v1.transport import (
    SPOOL_CHUNK,
    BadRequest,
    BundleRequired,
    PushEnv,
    PushReply,
    PushTooLarge,
    lfs_checker,
    may_create,
    open_spool,
    push_env,
    refused_reply,
    spool_dir,
)
from .stdio import STDIO_REFUSED, stdio_usable

if TYPE_CHECKING:
    import asyncio
    import threading

    from ..kernel import LfsBlobPolicy
    from ..lfs.service import LfsService

__all__ = ["Channel", "WriteServices", "serve_hg_stdio"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A command name or an argument header line (`<name> <len>`); hg's are a few dozen bytes.
MAX_LINE = 1024
# All the argument bytes of one command, as HTTP's X-HgArgs-Post limit.
MAX_ARGS_BYTES = 16 * 1024 * 1024
# Pairs in a command's dict argument (getbundle sends about ten).
MAX_PAIRS = 1024
# stdout's buffer: small answers and the small chunks of a changegroup leave in few writes.
OUT_BUFFER = 256 * 1024
_NAME = re.compile(rb"[A-Za-z0-9_]{1,64}\Z")
_DIGITS = re.compile(rb"[0-9]{1,19}\Z")

Args = dict[str, bytes | dict[str, bytes]]


class ChannelError(Exception):
    """The client broke the framing: nothing more can be read in step."""


@dataclass
class Channel:
    """What one session talks over: the client's input and output (pipes or sockets, as sshd gives
    them), the stream hg shows as `remote: ...` (stderr) and the client's address (SSH_CLIENT's
    first word, for HG_URL)."""
    stdin: int
    stdout: int
    stderr: BinaryIO
    client: str

    @classmethod
    def of_process(cls) -> Channel:
        """This process's own stdio (the forced command serving the session itself)."""
        return cls(sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.buffer,
                   os.environ.get("SSH_CLIENT", "").split(" ", 1)[0])

    def say(self, text: str | bytes) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ValueError):
            self.stderr.write(text if isinstance(text, bytes) else text.encode("utf-8", "replace"))
            self.stderr.flush()


class WriteServices(Protocol):
    """What a session's write commands need beyond the repository: an event loop to run the
    hooks' subprocesses (and build the push environment) on, the LFS policy that vouches for a
    push's lfs blobs, and the webhook queue."""

    webhooks: Webhooks | None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for its result (from the session's thread)."""
        ...

    def lfs_policy(self) -> LfsBlobPolicy | None:
        ...

    def close(self) -> None:
        ...


def _fail(channel: Channel, message: str) -> int:
    channel.say(f"lfsserve: {message}\n")
    return 1


def serve_hg_stdio(config: Config, principal: Principal, repo: str, *, auth: Authenticator | None = None,
                   registry: RepoRegistry | None = None, channel: Channel | None = None,
                   services: WriteServices | None = None) -> int:
    """Serve Mercurial's SSH protocol for `repo` to `principal` (who may at least read it), on
    `channel` (default: this process's stdio); the exit status. Without `services`, writes get
    their own event loop and LFS service (_ProcessWrites), closed at the end."""
    auth = auth or Authenticator(config)
    registry = registry or RepoRegistry(config.repos_dir, RepoSettings.from_config(config))
    channel = channel or Channel.of_process()
    creatable = may_create(config, auth, principal, repo)
    try:
        with registry.open(repo, may_create=creatable):
            pass
    except CannotCreate as exc:
        return _fail(channel, str(exc))
    except HgError as exc:
        # as `hg serve --stdio` does, a missing (or unreadable) repository is an abort before the
        # handshake
        channel.say(f"abort: {exc.message}\n")
        return 255
    if not stdio_usable(channel.stdin, channel.stdout):
        return _fail(channel, f"hg serve --stdio {STDIO_REFUSED}")
    reader = open(channel.stdin, "rb", buffering=SPOOL_CHUNK, closefd=False)  # noqa: SIM115
    writer = open(channel.stdout, "wb", buffering=OUT_BUFFER, closefd=False)  # noqa: SIM115
    own = services is None
    server = _HgServer(config, auth, registry, principal, repo, creatable, reader, writer, channel,
                       services or _ProcessWrites(config, auth))
    try:
        return server.run()
    except ChannelError as exc:
        return _fail(channel, f"hg protocol error: {exc}; nothing was written to the repository by this request")
    except PushTooLarge as exc:
        return _fail(channel, f"abort: {exc}")
    except (BrokenPipeError, ConnectionResetError):
        return _fail(channel, "the client went away")
    finally:
        server.close(own)


class _WriteLoop:
    """An event loop in a thread, for what a write needs asynchronously: the hooks' subprocesses
    (HookRunner.run_sync), the LFS service (its *_sync calls) and its metadata store. Started at
    the first write command: reads never pay for asyncio."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self._asyncio = asyncio
        self.loop: asyncio.AbstractEventLoop = asyncio.new_event_loop()
        self._thread: threading.Thread = threading.Thread(target=self.loop.run_forever, name="lfsserve-write",
                                                          daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for its result (from this session's thread)."""
        return self._asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _ProcessWrites:
    """WriteServices of a forced command serving its session itself: a _WriteLoop started at the
    first write, an LFS service started at the first push, a webhook queue opened at the first
    event; all closed with the session."""

    def __init__(self, config: Config, auth: Authenticator) -> None:
        self._config = config
        self._auth = auth
        self._loop: _WriteLoop | None = None
        self._lfs: LfsService | None = None
        self.webhooks: Webhooks | None = Webhooks(config)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            self._loop = _WriteLoop()
        return self._loop.call(coro)

    def lfs_policy(self) -> LfsBlobPolicy | None:
        if self._lfs is None:
            from ..lfs.service import LfsService  # only pushes need the LFS store

            async def start() -> LfsService:
                svc = LfsService.create(self._config, self._auth)
                await svc.start()
                return svc
            self._lfs = self.call(start())
        return self._lfs

    def close(self) -> None:
        if self.webhooks is not None:
            self.webhooks.stop()
        if self._loop is not None:
            try:
                if self._lfs is not None:
                    self._loop.call(self._lfs.stop())
            finally:
                self._loop.stop()


class _HgServer:
    """One `hg serve --stdio` session: one user, one repository, commands one after the other."""

    def __init__(self, config: Config, auth: Authenticator, registry: RepoRegistry, principal: Principal,
                 repo: str, creatable: bool, reader: BinaryIO, writer: BinaryIO, channel: Channel,
                 services: WriteServices):
        self.config = config
        self.auth = auth
        self.registry = registry
        self.principal = principal
        self.repo = repo
        self.creatable = creatable
        self.r = reader
        self.w = writer
        self.channel = channel
        self.services = services
        self._lfs: LfsBlobPolicy | None = None  # asked for at the first push (it vouches for lfs blobs)

    def close(self, services_too: bool) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ValueError):
            self.w.flush()
        if services_too:
            self.services.close()

    # -- framing --------------------------------------------------------------------------------
    def _line(self, what: str, *, eof_ok: bool = False) -> bytes | None:
        line = self.r.readline(MAX_LINE + 1)
        if not line.endswith(b"\n"):
            if len(line) > MAX_LINE:
                raise ChannelError(f"{what} is longer than {MAX_LINE} bytes")
            if eof_ok and not line:
                return None
            raise ChannelError(f"input ended in the middle of {what}")
        return line[:-1]

    def _exactly(self, n: int, what: str) -> bytes:
        data = self.r.read(n)
        if len(data) != n:
            raise ChannelError(f"input ended in the middle of {what}")
        return data

    def _header(self, what: str) -> tuple[bytes, int]:
        """An argument header `<name> <len>`."""
        line = self._line(what)
        assert line is not None
        parts = line.split(b" ")
        if len(parts) != 2 or not _DIGITS.match(parts[1]):
            raise ChannelError(f"expected `<name> <length>` for {what}, got {line[:60]!r}")
        return parts[0], int(parts[1])

    def _args(self, cmd: Command) -> dict[str, bytes]:
        """The arguments hg sends for `cmd`: one header per declared name, in any order."""
        out: dict[str, bytes] = {}
        budget = MAX_ARGS_BYTES
        declared = set(cmd.args)

        def value(name: bytes, n: int) -> bytes:
            nonlocal budget
            what = f"argument {name[:40].decode('latin-1')!r} of {cmd.name}"
            if n > budget:
                raise ChannelError(f"{what} declares {n} bytes; the arguments of one command may take at "
                                   f"most {MAX_ARGS_BYTES}")
            budget -= n
            return self._exactly(n, what)

        for _ in cmd.args:
            name, n = self._header(f"an argument of {cmd.name}")
            key = name.decode("latin-1")
            if key not in declared:
                raise ChannelError(f"unexpected argument {key[:40]!r} for {cmd.name}")
            declared.discard(key)
            if key != "*":
                out[key] = value(name, n)
                continue
            if n > MAX_PAIRS:
                raise ChannelError(f"{n} pairs in the dict argument of {cmd.name} (at most {MAX_PAIRS})")
            for _ in range(n):
                sub, m = self._header(f"a dict argument of {cmd.name}")
                out.setdefault(sub.decode("latin-1"), value(sub, m))
        return out

    def _send(self, data: bytes) -> None:
        self.w.write(data)
        self.w.flush()

    def _respond(self, value: bytes) -> None:
        self._send(b"%d\n%s" % (len(value), value))

    def _out_of_band(self, message: str, hint: str | None = None) -> None:
        """An error hg shows as `remote: <message>` then `abort: remote error`: the message on
        stderr, an empty line where the answer's length would be."""
        text = message.rstrip("\n") + (f"\n({hint})" if hint else "")
        self.channel.say(f"{text}\n-\n")
        self._send(b"\n")

    # -- the session ----------------------------------------------------------------------------
    def run(self) -> int:
        while True:
            line = self._line("a command name", eof_ok=True)
            if not line:
                return 0   # end of input or an empty line: the client is done
            if not _NAME.match(line):
                raise ChannelError(f"expected a command name, got {line[:60]!r}")
            cmd = COMMANDS.get(line.decode("ascii"))
            if cmd is None:
                self._respond(b"")   # as the protocol says: an unknown command, an empty answer
                continue
            given = self._args(cmd)
            try:
                if cmd.permission == "push":
                    self.auth.authorize(self.principal, self.repo, Permission.WRITE)
                args = bind_args(cmd, given)
                if cmd.kind == "push":
                    self._push(cmd, args)
                else:
                    self._run(cmd, args)
            except AuthError as exc:
                self._out_of_band(exc.message)
            except BadRequest as exc:
                self._out_of_band(f"bad request: {exc.message}")
            except RepoNotFound as exc:
                self._out_of_band(exc.message)
            except CannotCreate as exc:
                self._out_of_band(str(exc))
            except BundleRequired as exc:
                self._out_of_band(exc.message)
            except (HgError, Bundle2Error) as exc:
                log.info("%s on %s refused: %s", cmd.name, self.repo, exc)
                self._out_of_band(exc.message, getattr(exc, "hint", None))
            except DatabaseUnavailable as exc:  # nothing was applied
                log.error("%s on %s: %s", cmd.name, self.repo, exc)
                self._out_of_band(f"{exc}; try again later")

    def _session(self, stack: contextlib.ExitStack, payload: BinaryIO | None = None,
                 push: PushEnv | None = None) -> Session:
        """A Session on the repository, opened into `stack`."""
        repo = stack.enter_context(self.registry.open(self.repo, may_create=self.creatable))
        check = lfs_checker(self.config, self._lfs, self.repo, self.principal) if payload is not None else None
        return Session(self.config, repo, payload, check, transport="ssh", push=push)

    def _push_env(self) -> PushEnv:
        """Built on the write loop (the hooks run on it). HG_URL as hg's SSH server gives it."""
        async def build() -> PushEnv:
            return push_env(self.config, self.auth, self.services.webhooks, self.repo, self.principal, "ssh",
                            self.channel.client)
        return self.services.call(build())

    def _run(self, cmd: Command, args: Args) -> None:
        with contextlib.ExitStack() as stack:
            # A write (pushkey) is serialized with other writers by the engine's on-disk lock.
            env = self._push_env() if cmd.permission == "push" else None
            result = cmd.func(self._session(stack, push=env), **args)
            if isinstance(result, Stream):
                self._stream(result)
                return
            assert isinstance(result, bytes), f"{cmd.name} is a bytes command"
            self._respond(result)

    def _stream(self, result: Stream) -> None:
        """A streamed answer, raw (no compression over SSH: hg leaves that to ssh). The first chunk
        is produced before anything is written, so an error at the start is still an error hg
        shows; a later one can only cut the session."""
        chunks = iter(result.chunks())
        try:
            first = next(chunks, b"")
            self.w.write(first)
            try:
                for chunk in chunks:
                    self.w.write(chunk)
            except (HgError, Bundle2Error, OSError) as exc:
                raise ChannelError(f"the answer failed after it started: {exc}") from exc
            self.w.flush()
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _push(self, cmd: Command, args: Args) -> None:
        """unbundle: `0\\n` (send the bundle), the bundle into a spool file, then applied (under
        the repository's on-disk lock, which the engine takes)."""
        if self._lfs is None:
            self._lfs = self.services.lfs_policy()
        self._respond(b"")
        frames = _Frames(self)
        reply: bytes | Stream | PushReply
        try:
            body = self._spool(frames)
        except PushTooLarge as exc:
            # The rest of the bundle is read and dropped, so that the client reads hg's own form of
            # the refusal instead of failing on a closed channel.
            for _ in frames:
                pass
            log.info("push to %s by %s refused: %s", self.repo, self.principal, exc)
            reply = refused_reply(frames.magic, exc)
        else:
            try:
                with contextlib.ExitStack() as stack:
                    reply = cmd.func(self._session(stack, body, self._push_env()), **args)
            finally:
                body.close()
        assert isinstance(reply, PushReply), f"{cmd.name} is a push command"
        if reply.changed:
            log.info("push to %s by %s applied", self.repo, self.principal)
        if reply.body.startswith(b"HG20"):
            self._send(reply.body)   # a bundle2 reply, read as a stream
            return
        # bundle1: `<result>\n<output>`; the output goes where hg's does, to stderr
        result, _, output = reply.body.partition(b"\n")
        if output:
            self.channel.say(output)
        self._respond(b"")
        self._respond(result)

    def _spool(self, frames: _Frames) -> BinaryIO:
        """The pushed bundle into a new spool file (never held in memory), rewound; over
        hg.max_push_size, PushTooLarge (the file is dropped)."""
        limit = self.config.hg.max_push_size
        fh = open_spool(spool_dir(self.config))
        size = 0
        try:
            for chunk in frames:
                size += len(chunk)
                if limit and size > limit:
                    raise PushTooLarge(limit)
                fh.write(chunk)
            fh.seek(0)
        except BaseException:
            fh.close()
            raise
        return fh


class _Frames:
    """The chunks of a pushed bundle as it arrives (`<length>\\n<bytes>` frames ended by `0\\n`);
    `magic` keeps its first bytes (which bundle format the client sent, for the answer to a
    refused push)."""

    def __init__(self, server: _HgServer) -> None:
        self._server = server
        self._it = self._chunks()
        self.magic = b""

    def __iter__(self) -> _Frames:
        return self

    def __next__(self) -> bytes:
        chunk = next(self._it)
        if len(self.magic) < 4:
            self.magic += chunk[:4 - len(self.magic)]
        return chunk

    def _chunks(self) -> Iterator[bytes]:
        server = self._server
        while True:
            line = server._line("the pushed bundle")
            assert line is not None
            if not _DIGITS.match(line):
                raise ChannelError(f"expected a frame length in the pushed bundle, got {line[:60]!r}")
            n = int(line)
            if n == 0:
                return
            while n:
                chunk = server._exactly(min(n, SPOOL_CHUNK), "the pushed bundle")
                n -= len(chunk)
                yield chunk
