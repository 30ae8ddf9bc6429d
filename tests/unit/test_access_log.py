"""Access log and request metrics for the requests that used to escape them: what aiohttp's parser
refuses, clients that go away, and bodies aiohttp does not write itself (sendfile)."""

import asyncio
import json
import logging
import os

import pytest
from aiohttp import ClientSession, web

from lfsserve.app import CTX, create_app
from lfsserve.config import load_config
from lfsserve.lfs import sendfile
from lfsserve.logs import setup_logging
from lfsserve.metrics import METRICS
from lfsserve.routing import Kind
from lfsserve.server import runner_options

OID = "c" * 64


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def logs():
    """The product's logging set-up (JSON access lines), with every record also collected here."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("info", "text")
    diag, access = Records(), Records()
    root.addHandler(diag)
    logging.getLogger("lfsserve.access").addHandler(access)
    yield diag, access
    root.handlers[:], level = saved
    root.setLevel(level)
    logging.getLogger("lfsserve.access").removeHandler(access)


class Served:
    """The app run as `lfsserve serve` runs it (AppRunner + TCPSite; aiohttp's TestServer would
    cancel handlers on disconnect, which the product does not)."""

    def __init__(self, runner: web.AppRunner, port: int):
        self.runner, self.host, self.port = runner, "127.0.0.1", port

    def make_url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(tmp_path, handlers, access_format="json"):
    env = {"LFSSERVE_ROOT": str(tmp_path / "data"), "LFSSERVE_LOG_ACCESS_FORMAT": access_format}
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    app = create_app(load_config(env=env), frontends=[])
    for kind, handler in handlers.items():
        app[CTX].register(kind, handler)
    runner = web.AppRunner(app, handle_signals=False, **runner_options(app, app[CTX].config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return app, Served(runner, site._server.sockets[0].getsockname()[1])


async def raw(server, data: bytes, read: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read() if read else b""
    writer.close()
    return answer


async def access_entries(access, n):
    for _ in range(200):
        if len(access.records) >= n:
            break
        await asyncio.sleep(0.02)
    return [json.loads(r.getMessage()) for r in access.records]


def requests_total(app, **labels):
    return app[METRICS].registry.get_sample_value("lfsserve_http_requests_total", labels)


async def test_requests_the_parser_refuses_are_logged_and_counted(tmp_path, logs):
    diag, access = logs
    app, server = await serve(tmp_path, {})
    try:
        junk = await raw(server, b"GET / " + b"x" * 10_000 + b"\r\n\r\n")
        long_header = await raw(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n")
        assert junk.startswith(b"HTTP/1.0 400") and long_header.startswith(b"HTTP/1.0 400")
        entries = await access_entries(access, 2)
    finally:
        await server.close()
    assert [(e["status"], e["method"], e["path"]) for e in entries] == [(400, "-", "-")] * 2
    assert all(len(e["request_id"]) == 16 for e in entries) and entries[0]["request_id"] != entries[1]["request_id"]
    assert requests_total(app, kind="invalid", method="-", status="400") == 2
    warnings = [r for r in diag.records if r.levelno == logging.WARNING and "malformed HTTP request" in r.getMessage()]
    assert [w.request_id for w in warnings] == [e["request_id"] for e in entries]
    assert "Got more than 8190 bytes" in warnings[1].getMessage()
    # No traceback, no error: a client's junk is not a server failure.
    assert not [r for r in diag.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_access_log_off_still_counts_every_request(tmp_path, logs):
    """`access_format = "off"` takes the short path (metrics only): same counts and sizes, no
    lines, and a request the parser refused still gets its WARNING."""
    diag, access = logs

    async def put(request, target):
        await request.read()
        return web.Response(status=201, body=b"stored")

    app, server = await serve(tmp_path, {Kind.LFS_OBJECT: put}, access_format="off")
    try:
        async with ClientSession() as session:
            for _ in range(3):
                async with session.put(server.make_url(f"/r/.hg/lfs/objects/{OID}"), data=b"x" * 1000) as r:
                    assert r.status == 201 and await r.read() == b"stored"
        junk = await raw(server, b"GET / " + b"x" * 10_000 + b"\r\n\r\n")
        assert junk.startswith(b"HTTP/1.0 400")
        for _ in range(200):
            if requests_total(app, kind="invalid", method="-", status="400"):
                break
            await asyncio.sleep(0.02)
    finally:
        await server.close()
    assert requests_total(app, kind="lfs-object", method="PUT", status="201") == 3
    value = app[METRICS].registry.get_sample_value
    assert value("lfsserve_http_received_bytes_total", {"kind": "lfs-object"}) == 3000
    assert value("lfsserve_http_sent_bytes_total", {"kind": "lfs-object"}) == 18
    assert value("lfsserve_http_request_duration_seconds_count", {"kind": "lfs-object"}) == 3
    assert requests_total(app, kind="invalid", method="-", status="400") == 1
    assert not access.records
    assert [r for r in diag.records if r.levelno == logging.WARNING and "malformed HTTP request" in r.getMessage()]


async def test_client_disconnect_is_a_499_one_liner_with_the_request_id(tmp_path, logs):
    diag, access = logs
    got_some = asyncio.Event()

    async def slow_reader(request, target):
        await request.content.read(100)
        got_some.set()
        await request.read()
        return web.Response(text="never")

    app, server = await serve(tmp_path, {Kind.HG: slow_reader})
    try:
        _reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"POST /r?cmd=unbundle HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000)
        await writer.drain()
        await asyncio.wait_for(got_some.wait(), 30)
        writer.close()
        (entry,) = await access_entries(access, 1)
    finally:
        await server.close()
    assert entry["status"] == 499 and entry["path"] == "/r?cmd=unbundle" and entry["bytes_in"] == 1000
    assert requests_total(app, kind="hg", method="POST", status="499") == 1
    (line,) = [r for r in diag.records if "client closed the connection" in r.getMessage()]
    assert line.levelno == logging.INFO and line.request_id == entry["request_id"] and not line.exc_info
    assert not [r for r in diag.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_logged_size_is_the_body_sent_streamed_or_by_sendfile(tmp_path, logs):
    _, access = logs
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3_000_000))

    async def streamed(request, target):
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(5):
            await response.write(b"s" * 100_000)
        await response.write_eof()
        return response

    async def download(request, target):
        response = await sendfile.send(request, blob, 3_000_000, {"Content-Type": "application/octet-stream"})
        assert response is not None  # plain TCP: the kernel sends it
        return response

    async def file_response(request, target):
        return web.FileResponse(blob)  # loop.sendfile() on this (stdlib) event loop

    app, server = await serve(tmp_path, {Kind.HG: streamed, Kind.LFS_OBJECT: download,
                                         Kind.LFS_BATCH: file_response})
    try:
        async with ClientSession() as session:
            async with session.get(server.make_url("/r?cmd=getbundle")) as r:
                assert len(await r.read()) == 500_000
            async with session.get(server.make_url(f"/r/.hg/lfs/objects/{OID}")) as r:
                assert await r.read() == blob.read_bytes()
            async with session.get(server.make_url("/r.git/info/lfs/objects/batch")) as r:
                assert len(await r.read()) == 3_000_000
            async with session.head(server.make_url("/r.git/info/lfs/objects/batch")) as r:
                assert r.status == 200
        entries = await access_entries(access, 4)
    finally:
        await server.close()
    assert [(e["path"].split("?")[0], e["bytes_out"]) for e in entries] == [
        ("/r", 500_000), (f"/r/.hg/lfs/objects/{OID}", 3_000_000),
        ("/r.git/info/lfs/objects/batch", 3_000_000), ("/r.git/info/lfs/objects/batch", 0)]
    sent = app[METRICS].registry.get_sample_value
    assert sent("lfsserve_http_sent_bytes_total", {"kind": "lfs-object"}) == 3_000_000
    assert sent("lfsserve_http_sent_bytes_total", {"kind": "hg"}) == 500_000


async def test_download_cut_by_the_client_is_a_499_with_the_bytes_that_left(tmp_path, logs):
    _, access = logs
    size = 32 * 1024 * 1024  # far more than socket buffers hold: the client must hang up mid-way
    blob = tmp_path / "blob"
    with open(blob, "wb") as fh:
        fh.truncate(size)

    async def download(request, target):
        return await sendfile.send(request, blob, size, {"Content-Type": "application/octet-stream"})

    app, server = await serve(tmp_path, {Kind.LFS_OBJECT: download})
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(f"GET /r/.hg/lfs/objects/{OID} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await reader.readexactly(100_000)
        writer.transport.abort()  # hang up with the rest unread
        (entry,) = await access_entries(access, 1)
    finally:
        await server.close()
    assert entry["status"] == 499 and 0 < entry["bytes_out"] < size
    assert requests_total(app, kind="lfs-object", method="GET", status="499") == 1


async def test_a_connection_error_of_the_servers_own_is_a_500_not_a_499(tmp_path, logs):
    diag, access = logs

    async def backend_down(request, target):
        raise ConnectionRefusedError("some backend refused")

    _app, server = await serve(tmp_path, {Kind.HG: backend_down})
    try:
        async with ClientSession() as session:
            async with session.get(server.make_url("/r?cmd=heads")) as r:
                assert r.status == 500
        (entry,) = await access_entries(access, 1)
    finally:
        await server.close()
    assert entry["status"] == 500
    assert [r for r in diag.records if r.levelno == logging.ERROR and r.exc_info]
