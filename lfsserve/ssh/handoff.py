"""The server's side of SSH session handoff: run the hg sessions of forced commands in this process.

`lfsserve serve` listens on a Unix socket (`ssh.handoff_socket`, default <root>/run/ssh.sock,
mode 0600 in a 0700 directory). A forced command (`lfsserve ssh`, forward.py) connects and sends
its stdin, stdout and stderr with a JSON header; each connection gets a thread that:

  - accepts only peers running as this server's user or root (SO_PEERCRED), the forced command's
    configuration file and data directory being this server's (else `fallback`: the forced
    command serves the session itself, with its own configuration);
  - checks the command and the user with session.admit, as the forced command would, and says a
    refusal on the client's stderr (`exit 1`);
  - serves an hg session (hg.serve_hg_stdio) on the passed descriptors with this server's
    Authenticator, RepoRegistry (its revlog caches are process-wide and warm), event loop (hooks),
    LFS policy and webhook queue; a git-lfs-transfer session on this server's event loop and
    LfsService (session.serve_transfer); git-lfs-authenticate's answer;
  - closes its copies of the descriptors, then answers `exit N`.

At most ssh.handoff_sessions run at once; a forced command beyond that serves its session itself
(its own process, so sessions still spread over the cores). On shutdown the socket is closed
first; sessions in progress get server.shutdown_grace to end.

A socket left by a server that died is replaced; one that still answers belongs to another live
server on this data directory (several instances sharing it), which then keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ..kernel import LfsBlobPolicy, ServerContext
from ..lfs.service import LfsService
from .forward import HEADER, MAX_HELLO
from .hg import Channel, serve_hg_stdio
from .session import Refused, admit, authenticate_answer, serve_transfer
from .stdio import stdio_usable

__all__ = ["HandoffListener"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seconds a connected forced command has to send its message (it sends it at once).
HELLO_TIMEOUT = 10.0
_PEERCRED = struct.Struct("3i")


class _ServerWrites:
    """hg.WriteServices of a handed-off session: this server's loop, LFS policy and webhooks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ctx: ServerContext):
        self._loop = loop
        self._ctx = ctx
        self.webhooks = ctx.webhooks

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def lfs_policy(self) -> LfsBlobPolicy | None:
        return self._ctx.lfs_blobs

    def close(self) -> None:
        pass   # the server's own: they outlive the session


class HandoffListener:
    def __init__(self, ctx: ServerContext):
        self.ctx = ctx
        self.path: Path = ctx.config.handoff_socket
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inode = 0   # of the socket file this server bound
        self._sessions = 0
        self._idle = threading.Condition()

    # -- life cycle -----------------------------------------------------------------------------
    async def start(self) -> bool:
        """Listen (False, after saying why in the log, when this server cannot)."""
        self._loop = asyncio.get_running_loop()
        try:
            sock = await self._loop.run_in_executor(None, self._bind)
        except OSError as exc:
            log.warning("SSH sessions are not handed to this server (each forced command serves its own): "
                        "cannot listen on %s: %s", self.path, exc)
            return False
        if sock is None:
            log.info("SSH sessions: another live server on this data directory listens on %s", self.path)
            return False
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept())
        log.info("SSH sessions of forced commands are handed to this server at %s", self.path)
        return True

    def _bind(self) -> socket.socket | None:
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if len(os.fsencode(path)) >= 108:
            raise OSError(errno.ENAMETOOLONG, "the path is too long for a Unix socket (set ssh.handoff_socket)")
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(errno.EEXIST, "something other than a socket is there")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                return None    # a live server answers there
            except OSError:
                path.unlink()  # left by a server that died
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Bound under a private name, restricted, then renamed into place: never connectable
            # with looser permissions, even for a moment.
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
            self._inode = os.stat(path).st_ino
            sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def stop(self, grace: float) -> None:
        """Stop accepting, remove the socket, give sessions in progress up to `grace` seconds."""
        if self._sock is None:
            return
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        with contextlib.suppress(OSError):
            # Only our own socket: another server may have replaced a path it thought stale.
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._sock.close()
        self._sock = None
        assert self._loop is not None
        left = await self._loop.run_in_executor(None, self._wait_idle, grace)
        if left:
            log.warning("shutdown grace period over: %d SSH session(s) still running are cut", left)

    def _wait_idle(self, grace: float) -> int:
        deadline = time.monotonic() + grace
        with self._idle:
            while self._sessions and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            return self._sessions

    async def _accept(self) -> None:
        assert self._loop is not None and self._sock is not None
        while True:
            try:
                conn, _ = await self._loop.sock_accept(self._sock)
            except OSError as exc:   # e.g. out of descriptors: the next connection may do
                log.warning("SSH handoff: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            threading.Thread(target=self._connection, args=(conn,), name="lfsserve-ssh", daemon=True).start()

    # -- one forced command ---------------------------------------------------------------------
    def _connection(self, conn: socket.socket) -> None:
        fds: list[int] = []
        answer = b"fallback\n"   # until a session starts, the forced command can still serve it
        try:
            conn.setblocking(True)
            conn.settimeout(HELLO_TIMEOUT)
            pid, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            if uid not in (os.getuid(), 0):
                # (the socket's mode keeps others out; root aside, this is a misconfiguration)
                log.warning("SSH handoff: a connection from uid %d (pid %d) served by itself", uid, pid)
                return
            hello, fds = self._receive(conn)
            if hello is None or len(fds) != 3:
                # (`fallback` all the same: a forced command of another lfsserve version serves itself)
                log.warning("SSH handoff: a message this server does not understand from pid %d", pid)
                return
            conn.settimeout(None)
            answer = self._session(hello, fds, pid)
        except (OSError, ValueError) as exc:
            log.warning("SSH handoff: %s", exc)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                conn.sendall(answer)
            conn.close()

    def _receive(self, conn: socket.socket) -> tuple[dict | None, list[int]]:
        """The header and the descriptors; (None, fds) when it is not a handoff message."""
        want = len(HEADER) + 4
        data, fds, _, _ = socket.recv_fds(conn, want + MAX_HELLO, 3)
        fds = list(fds)
        while len(data) < want:
            more = conn.recv(want - len(data))
            if not more:
                return None, fds
            data += more
        if not data.startswith(HEADER):
            return None, fds
        (size,) = struct.unpack("!I", data[len(HEADER):want])
        if size > MAX_HELLO:
            return None, fds
        body = data[want:]
        while len(body) < size:
            more = conn.recv(size - len(body))
            if not more:
                return None, fds
            body += more
        try:
            hello = json.loads(body[:size])
        except ValueError:
            return None, fds
        return (hello if isinstance(hello, dict) else None), fds

    def _session(self, hello: dict, fds: list[int], pid: int) -> bytes:
        config = self.ctx.config
        if hello.get("config") != config.source or hello.get("root") != str(config.root):
            return b"fallback\n"   # another configuration: the forced command applies its own
        user, command = hello.get("user"), hello.get("command")
        if not isinstance(user, str) or not (command is None or isinstance(command, str)):
            return b"fallback\n"
        with self._idle:
            if self._sessions >= config.ssh.handoff_sessions:
                return b"fallback\n"
            self._sessions += 1
        try:
            stderr = open(fds[2], "wb", buffering=0, closefd=False)  # noqa: SIM115
            client = str(hello.get("client") or "").split(" ", 1)[0]
            channel = Channel(fds[0], fds[1], stderr, client)
            try:
                cmd, principal = admit(self.ctx.auth, user, command)
            except Refused as exc:
                channel.say(f"lfsserve: {exc.message}\n")
                return b"exit 1\n"
            assert self._loop is not None
            if cmd.kind == "hg":
                log.info("SSH session handed over: %s, hg -R %s (forced command pid %d)", user, cmd.repo, pid)
                status = serve_hg_stdio(config, principal, cmd.repo, auth=self.ctx.auth, registry=self.ctx.repos,
                                        channel=channel, services=_ServerWrites(self._loop, self.ctx))
                return b"exit %d\n" % status
            if cmd.kind == "git-lfs-authenticate":
                try:
                    answer = authenticate_answer(config, self.ctx.auth, principal, cmd)
                except ValueError as exc:
                    channel.say(f"lfsserve: {exc}\n")
                    return b"exit 1\n"
                log.info("SSH session handed over: %s, git-lfs-authenticate %s %s (forced command pid %d)",
                         user, cmd.repo, cmd.operation, pid)
                with open(fds[1], "wb", closefd=False) as out:
                    out.write(json.dumps(answer).encode("utf-8") + b"\n")
                return b"exit 0\n"
            svc = self.ctx.lfs_blobs
            if not isinstance(svc, LfsService) or not config.ssh.lfs_transfer:
                return b"fallback\n"   # no LFS here, or the forced command's refusal to give
            if not stdio_usable(fds[0], fds[1]):
                return b"fallback\n"
            log.info("SSH session handed over: %s, git-lfs-transfer %s %s (forced command pid %d)",
                     user, cmd.repo, cmd.operation, pid)
            session = serve_transfer(svc, self.ctx.webhooks, principal, cmd, fds[0], fds[1],
                                     lambda text: channel.say(text + "\n"))
            status = asyncio.run_coroutine_threadsafe(session, self._loop).result()
            return b"exit %d\n" % status
        except Exception:
            log.exception("SSH session of %s failed", user)
            return b"exit 1\n"
        finally:
            with self._idle:
                self._sessions -= 1
                self._idle.notify_all()
