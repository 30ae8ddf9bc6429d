"""The forced command: check what the client asked for and who it is, then run it."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..auth import Authenticator, AuthError, Permission, Principal
from ..config import Config
from .command import BadCommand, SshCommand, parse_command
from .keys import USER

if TYPE_CHECKING:
    from ..lfs.service import LfsService
    from ..webhooks import Webhooks

__all__ = ["Refused", "admit", "authenticate_answer", "run_forced_command", "serve_transfer"]


class Refused(Exception):
    """The client may not run what it asked for; the message (one line) says why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def admit(auth: Authenticator, user: str, original_command: str | None) -> tuple[SshCommand, Principal]:
    """The command an SSH client asked for and who asks, once the command is one of the accepted
    shapes and the user (the one the key names) may at least read the repository (write, to
    upload); else Refused. The same check whether this process or the server serves the session."""
    if not USER.match(user):
        raise Refused(f"invalid user name {user[:70]!r}")
    try:
        cmd = parse_command(original_command)
    except BadCommand as exc:
        raise Refused(str(exc)) from None
    principal = Principal(user, "ssh")
    needed = Permission.WRITE if cmd.operation == "upload" else Permission.READ
    try:
        auth.authorize(principal, cmd.repo, needed)
    except AuthError as exc:
        raise Refused(exc.message) from None
    return cmd, principal


def _fail(message: str) -> int:
    # One line on stderr: ssh shows it to the user (hg prefixes "remote: ").
    print(f"lfsserve: {message}", file=sys.stderr)
    return 1


def run_forced_command(config: Config, user: str, original_command: str | None) -> int:
    """What `lfsserve ssh --user USER` does with SSH_ORIGINAL_COMMAND when it serves the session
    itself (no server took it over: forward.py); returns the exit status."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="lfsserve: %(message)s")
    auth = Authenticator(config)
    try:
        cmd, principal = admit(auth, user, original_command)
    except Refused as exc:
        return _fail(exc.message)
    if cmd.kind == "hg":
        # hg's session runs without an event loop (one process per hg command: start-up is its
        # cost), so asyncio and the git-lfs modules are imported only on the branches below.
        from .hg import serve_hg_stdio
        return serve_hg_stdio(config, principal, cmd.repo, auth=auth)
    if cmd.kind == "git-lfs-authenticate":
        try:
            answer = authenticate_answer(config, auth, principal, cmd)
        except ValueError as exc:
            return _fail(str(exc))
        sys.stdout.write(json.dumps(answer) + "\n")
        return 0
    if not config.ssh.lfs_transfer:
        return _fail("git-lfs-transfer is turned off on this server (ssh.lfs_transfer); "
                     "git-lfs falls back to git-lfs-authenticate and HTTP")
    import asyncio
    return asyncio.run(_transfer(config, auth, principal, cmd))


def authenticate_answer(config: Config, auth: Authenticator, principal: Principal, cmd: SshCommand) -> dict:
    """git-lfs-authenticate's JSON: the repository's HTTP LFS endpoint and a token for it."""
    base = config.server.base_url.rstrip("/")
    if not base:
        raise ValueError("git-lfs-authenticate needs server.base_url (the public HTTP URL of this "
                         "server) in the configuration")
    assert principal.name is not None
    expires_in = config.lfs.action_expiry
    expires_at = int(time.time()) + expires_in
    token = auth.sign_repo_token(principal.name, cmd.repo, cmd.operation, expires_at)
    return {
        "href": f"{base}/{cmd.repo}.git/info/lfs",
        "header": {"Authorization": f"Bearer {token}"},
        "expires_in": expires_in,
        "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at)),
    }


async def _transfer(config: Config, auth: Authenticator, principal: Principal, cmd: SshCommand) -> int:
    from ..aio import run_blocking
    from ..lfs.service import LfsService
    from ..pgdb import DatabaseUnavailable
    from ..webhooks import Webhooks
    from .pktline import STDIO_REFUSED, stdio_usable

    if not stdio_usable():
        return _fail(f"git-lfs-transfer {STDIO_REFUSED}")
    svc = LfsService.create(config, auth)
    try:
        await svc.start()
    except DatabaseUnavailable as exc:
        return _fail(f"git-lfs-transfer: {exc}; try again later")
    webhooks = Webhooks(config)  # its queue opens at the first upload with a target
    try:
        return await serve_transfer(svc, webhooks, principal, cmd, sys.stdin.fileno(), sys.stdout.fileno(),
                                    lambda text: print(text, file=sys.stderr, flush=True))
    finally:
        await run_blocking(webhooks.stop)
        await svc.stop()


async def serve_transfer(svc: LfsService, webhooks: Webhooks | None, principal: Principal, cmd: SshCommand,
                         stdin: int, stdout: int, say: Callable[[str], None]) -> int:
    """A git-lfs-transfer session on `stdin`/`stdout` (pipes or sockets), on a started LfsService;
    `say` writes a line to the client's stderr. The exit status."""
    from .pktline import PktReader, PktWriter, ProtocolError, open_stdio
    from .transfer import SessionAbort, TransferSession

    reader, writer, read_transport = await open_stdio(stdin, stdout)
    session = TransferSession(svc, principal, cmd.repo, cmd.operation, PktReader(reader), PktWriter(writer),
                              webhooks, say)
    try:
        return await session.run()
    except ProtocolError as exc:
        say(f"lfsserve: git-lfs-transfer: protocol error: {exc}; nothing was stored from this message")
        return 1
    except SessionAbort:
        return 1
    except (BrokenPipeError, ConnectionResetError):
        say("lfsserve: git-lfs-transfer: the client went away")
        return 1
    finally:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await writer.drain()
        writer.close()
        read_transport.close()
