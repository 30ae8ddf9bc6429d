"""The forced command's first step: hand the session to the lfsserve server of this data directory.

A forced command runs once per hg command (clone, pull, push): as a process of its own it pays the
interpreter's start-up, lfsserve's imports and cold revlog indexes every time. When `lfsserve
serve` runs on the same data directory with the same configuration file, this module (standard
library only: it runs before anything else of lfsserve is imported) connects to the server's Unix
socket (`ssh.handoff_socket`, default <root>/run/ssh.sock) and sends, in one message, a small
JSON header (user, SSH_ORIGINAL_COMMAND, SSH_CLIENT, the configuration file and data directory it
would use) together with its stdin, stdout and stderr (SCM_RIGHTS). The server checks the command
and the user exactly as the forced command would (session.admit) and serves the session on those
descriptors (handoff.py); this process only waits for the exit status and exits with it.

The server answers one line: `exit N` once the session is over (it closed its copies of the
descriptors first, so the client sees the end of the output when this process exits), or
`fallback` when it does not take the session (another configuration, too many sessions, a
message it does not understand): it has not touched the descriptors, and the forced command serves the session itself.
No server, a stale socket, or handoff disabled: the same fallback, without a word.

The data directory and socket are found from the command line, the TOML file and the environment
with the precedence config.load_config uses; should they ever disagree with the server's, the
server answers `fallback`, so a mistake here costs speed, never correctness.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from collections.abc import Mapping

__all__ = ["HEADER", "MAX_HELLO", "forward", "handoff_target"]

# The first bytes of the message: protocol name and version, then the JSON header's length.
HEADER = b"lfsserve-ssh-handoff 1\n"
MAX_HELLO = 16 * 1024
_TRUE = ("1", "true", "yes", "on")


def _options(argv: list[str]) -> dict[str, str] | None:
    """`--config FILE --root DIR --user NAME` (any order, `--opt=value` too); None for anything
    else, which the full command line parser then answers."""
    out: dict[str, str] = {}
    it = iter(argv)
    for word in it:
        name, eq, value = word.partition("=")
        if name not in ("--config", "--root", "--user") or name in out:
            return None
        if not eq:
            value = next(it, "")
        if not value:
            return None
        out[name] = value
    return out if "--user" in out else None


def handoff_target(config_file: str | None, root_flag: str | None,
                   env: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(socket path, resolved config file or "", resolved data directory) as `load_config` would
    find them for this command line and environment, or None when handoff is turned off."""
    data: dict = {}
    if config_file:
        import tomllib

        with open(config_file, "rb") as fh:
            data = tomllib.load(fh)
    server, ssh = data.get("server") or {}, data.get("ssh") or {}
    enabled = env.get("LFSSERVE_SSH_HANDOFF")
    if enabled is not None:
        if enabled.strip().lower() not in _TRUE:
            return None
    elif ssh.get("handoff", True) is not True:
        return None
    root = env.get("LFSSERVE_ROOT") or env.get("LFSSERVE_SERVER_ROOT") or root_flag or server.get("root") or "./data"
    root = os.path.realpath(os.path.expanduser(str(root)))
    path = env.get("LFSSERVE_SSH_HANDOFF_SOCKET") or ssh.get("handoff_socket") or ""
    path = os.path.realpath(os.path.expanduser(str(path))) if path else os.path.join(root, "run", "ssh.sock")
    return path, os.path.realpath(config_file) if config_file else "", root


def forward(argv: list[str], env: Mapping[str, str] | None = None) -> int | None:
    """Hand this `lfsserve ssh ARGV` session to the server: its exit status, or None when this
    process must serve the session itself."""
    env = os.environ if env is None else env
    opts = _options(argv)
    if opts is None:
        return None
    config_file = opts.get("--config") or env.get("LFSSERVE_CONFIG") or None
    try:
        target = handoff_target(config_file, opts.get("--root"), env)
    except (OSError, ValueError):
        return None   # an unreadable or invalid file: the full configuration loader says what is wrong
    if target is None:
        return None
    path, config, root = target
    hello = json.dumps({
        "user": opts["--user"], "command": env.get("SSH_ORIGINAL_COMMAND"),
        "client": env.get("SSH_CLIENT", ""), "config": config, "root": root,
    }).encode("utf-8")
    if len(hello) > MAX_HELLO:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
            message = HEADER + struct.pack("!I", len(hello)) + hello
            socket.send_fds(sock, [message], [0, 1, 2])
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return None   # no server here (or it went away before it read anything)
        answer = b""
        while not answer.endswith(b"\n") and len(answer) < 64:
            try:
                got = sock.recv(64)
            except OSError:
                got = b""
            if not got:
                break
            answer += got
    finally:
        sock.close()
    if answer == b"fallback\n":
        return None
    if answer.startswith(b"exit ") and answer[5:-1].isdigit():
        return int(answer[5:-1])
    # The server ended without an answer after it took the descriptors (it was stopped or
    # killed mid-session): the session cannot be taken back.
    sys.stderr.write("lfsserve: the server ended this session before it was over; try again\n")
    return 1
