"""No request waits forever on a client (issue 10, part 1): limits.idle_timeout, over raw sockets.

A client that stops sending in the middle of a body gets a 408 naming the option, logged with its
request id; one that stops in the middle of its headers is disconnected; a slow client that keeps
sending is never cut, however long its upload takes; and the server keeps serving throughout.
The socket timeouts are only there so that a regression fails instead of hanging.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from .lfs_util import object_path, oid_of, request

pytestmark = pytest.mark.interop

IDLE = 1.5
WAIT = 60  # far beyond IDLE: only a server that never answers reaches it


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def stalled_body(server, head: str, sent: bytes) -> bytes:
    """Send `head` and part of a body, then nothing; return everything the server answers."""
    with connect(server) as sock:
        sock.sendall(head.encode("latin-1") + sent)
        return read_all(sock)


@pytest.fixture
def server(lfsserve):
    return lfsserve(config=f"[limits]\nidle_timeout = {IDLE}\n")


def test_stalled_bodies_get_408_and_the_server_keeps_serving(server):
    # An hg push whose bundle stops arriving (the case of the push hang: the server read the
    # X-HgArgs-Post prefix of a body that never came).
    answer = stalled_body(server, "POST /team/app?cmd=unbundle HTTP/1.1\r\nHost: x\r\n"
                                  "X-HgArgs-Post: 14\r\nContent-Type: application/mercurial-0.1\r\n"
                                  "Content-Length: 5000\r\n\r\n", b"heads=666f72")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"limits.idle_timeout" in answer and b"Connection: close" in answer
    rid = re.search(rb"X-Request-Id: (\S+)", answer).group(1).decode()
    # An LFS upload that stops half-way: 408 in LFS JSON, nothing stored.
    data = b"x" * 100_000
    oid = oid_of(data)
    answer = stalled_body(server, f"PUT /team/app/.hg/lfs/objects/{oid} HTTP/1.1\r\nHost: x\r\n"
                                  f"Content-Length: {len(data)}\r\n\r\n", data[:40_000])
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b'"message"' in answer and b"limits.idle_timeout" in answer
    assert not object_path(server.root, oid).exists()
    # Chunked bodies too (no Content-Length to go by).
    answer = stalled_body(server, "POST /team/app.git/info/lfs/objects/batch HTTP/1.1\r\nHost: x\r\n"
                                  "Content-Type: application/vnd.git-lfs+json\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n", b"5\r\n{\"ope\r\n")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    # Logged with the request id, as a warning, not an error with a traceback.
    log = server.log()
    assert re.search(rf"WARNING \[{re.escape(rid)}\] .*limits.idle_timeout", log), log[-3000:]
    assert "Traceback" not in log and " ERROR " not in log
    assert request(f"{server.url}/healthz")[0] == 200


def test_stalled_headers_are_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /team/app?cmd=capabilities HTTP/1.1\r\nHost: x\r\nAccept: ")
        assert read_all(sock) == b""  # closed by the server, no answer to a half request
    with connect(server) as sock:  # a connection that never sends anything is closed as well
        assert read_all(sock) == b""
    assert request(f"{server.url}/healthz")[0] == 200


def test_a_slow_upload_that_keeps_sending_is_not_cut(server):
    """It is an idle timeout, not a total: 4 x IDLE in all, a little every IDLE / 6."""
    data = bytes(range(256)) * 400
    oid = oid_of(data)
    pieces = [data[i:i + 4000] for i in range(0, len(data), 4000)]
    deadline = time.monotonic() + 4 * IDLE
    with connect(server) as sock:
        sock.sendall(f"PUT /team/app/.hg/lfs/objects/{oid} HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode())
        for i, piece in enumerate(pieces):
            sock.sendall(piece)
            if time.monotonic() < deadline:
                time.sleep(IDLE / 6)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:300]
    assert object_path(server.root, oid).read_bytes() == data
