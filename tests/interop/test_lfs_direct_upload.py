"""Large LFS uploads read straight from the socket (lfs/receive.py), over raw sockets.

The body of a large PUT bypasses aiohttp's parser: the connection must come back exactly at the
end of the body (keep-alive, a pipelined request right behind it), and every way an upload can
go wrong (wrong content, a client that stalls, a client that goes away) must leave nothing
stored, no temp file, and a server that keeps serving.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest

from ..support import oid_of
from .lfs_util import object_path, temp_files

pytestmark = pytest.mark.interop

IDLE = 1.5
WAIT = 60  # far beyond IDLE: only a server that never answers reaches it
OBJ = "/team/app/.hg/lfs/objects/"


def read_response(sock: socket.socket, buf: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """(head, body, what follows) of one response with a Content-Length."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"connection closed before a response: {buf[:200]!r}"
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    n = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
    while len(rest) < n:
        data = sock.recv(1 << 20)
        assert data, "connection closed inside a response body"
        rest += data
    return head, rest[:n], rest[n:]


def put_head(oid: str, size: int) -> bytes:
    return f"PUT {OBJ}{oid} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()


def test_large_uploads_keep_the_connection_and_never_leave_a_partial_object(lfsserve):
    server = lfsserve(config=f"[limits]\nidle_timeout = {IDLE}\n")
    # More than the upload's buffers (written while the next ones are received into, then
    # reused), and not a whole number of blocks: the tail takes the other path.
    data = os.urandom((17 << 20) + 12345)
    oid = oid_of(data)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        # The body and a pipelined request in one write: the request must not be eaten as body.
        sock.sendall(put_head(oid, len(data)) + data + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, rest = read_response(sock)
        assert head.startswith(b"HTTP/1.1 201 "), head
        head, body, rest = read_response(sock, rest)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"ok\n", (head, body)
        assert object_path(server.root, oid).read_bytes() == data
        # The same object again, dribbled in: already stored, checked, 200; same connection.
        sock.sendall(put_head(oid, len(data)))
        for i in range(0, len(data), 1 << 20):
            sock.sendall(data[i:i + (1 << 20)])
            time.sleep(0.05)
        head, _, rest = read_response(sock, rest)
        assert head.startswith(b"HTTP/1.1 200 "), head
        # Wrong content for its oid: 422 naming the real hash, nothing stored, connection reusable.
        wrong = oid_of(b"something else")
        sock.sendall(put_head(wrong, len(data)) + data)
        head, body, rest = read_response(sock, rest)
        assert head.startswith(b"HTTP/1.1 422 ") and oid.encode() in body, (head, body)
        assert not object_path(server.root, wrong).exists()
        sock.sendall(f"GET {OBJ}{oid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, body, rest = read_response(sock, rest)
        assert head.startswith(b"HTTP/1.1 200 ") and body == data
    part = data[:2 << 20]
    # A client that stops sending: 408 in LFS JSON naming the option, then the connection closes.
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(put_head(oid_of(data[:-1]), len(data) - 1) + part)
        head, body, rest = read_response(sock)
        assert head.startswith(b"HTTP/1.1 408 ") and b"limits.idle_timeout" in body, (head, body)
        assert rest == b"" and sock.recv(100) == b""
    # A client that goes away half-way.
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(put_head(oid_of(data[:-2]), len(data) - 2) + part)
        time.sleep(0.3)
    deadline = time.monotonic() + WAIT
    while temp_files(server.root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert temp_files(server.root) == []
    assert {p.name for p in (server.root / "lfs" / "objects").glob("*/*/*")} == {oid}
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0].startswith(b"HTTP/1.1 200 ")
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_a_slow_upload_is_not_an_idle_one_and_the_connection_serves_on(lfsserve):
    """The receiver sleeps until megabytes are waiting (SO_RCVLOWAT): a client sending small
    pieces, each well within limits.idle_timeout but together far longer, must still get its
    object stored; and the connection's next, small request must be read at once."""
    server = lfsserve(config=f"[limits]\nidle_timeout = {IDLE}\n")
    data = os.urandom((3 << 20) + 777)
    oid = oid_of(data)
    piece = 256 << 10
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(put_head(oid, len(data)))
        for i in range(0, len(data), piece):  # ~13 pieces, IDLE / 4 apart: 3 * IDLE in all
            time.sleep(IDLE / 4)
            sock.sendall(data[i:i + piece])
        head, body, rest = read_response(sock)
        assert head.startswith(b"HTTP/1.1 201 "), (head, body)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body, rest = read_response(sock, rest)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"ok\n", (head, body)
    assert object_path(server.root, oid).read_bytes() == data
    assert temp_files(server.root) == []


def test_shutdown_mid_body_leaves_nothing(lfsserve):
    """SIGTERM while buffers of a large upload are being hashed and written in other threads:
    after the grace period the upload is dropped, its temp file removed once those threads are
    done, and the server exits cleanly."""
    server = lfsserve(config="[server]\nshutdown_grace = 0.5\n")
    data = os.urandom(24 << 20)
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        sock.sendall(put_head(oid_of(data + b"more"), len(data) + 4) + data)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:  # until several buffers have reached the disk
            temps = temp_files(server.root)
            if temps and temps[0].stat().st_size >= 8 << 20:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the upload never reached its temp file")
        assert server.stop(signal.SIGTERM) == 0, server.log()[-3000:]
    assert temp_files(server.root) == []
    assert not list((server.root / "lfs" / "objects").glob("*/*/*"))
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
