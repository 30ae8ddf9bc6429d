"""Operations features in-process: metrics, limits (429/408/503), readiness, request ids, client addresses."""

import asyncio
import json
import logging
import re
import shutil

import os

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from lfsserve.app import create_app
from lfsserve.config import load_config
from lfsserve.kernel import CTX
from lfsserve.logs import JsonFormatter
from lfsserve.metrics import METRICS, StoreStats
from lfsserve.routing import Kind
from lfsserve.server import runner_options
from lfsserve.urls import TrustedProxies, client_address

OID = "b" * 64


def make_app(tmp_path, **sections):
    env = {"LFSSERVE_ROOT": str(tmp_path / "data")}
    for section, values in sections.items():
        for key, value in values.items():
            env[f"LFSSERVE_{section.upper()}_{key.upper()}"] = str(value)
    (tmp_path / "data").mkdir(parents=True, exist_ok=True)
    return create_app(load_config(env=env), frontends=[])


async def client_for(aiohttp_client, app):
    """A client of `app` served with the product's runner options (access-log hook included)."""
    server = TestServer(app)
    await server.start_server(**runner_options(app, app[CTX].config))
    return await aiohttp_client(server)


def sample(app, name, **labels):
    return app[METRICS].registry.get_sample_value(name, labels or None)


async def test_metrics_count_requests_by_kind_status_and_bytes(tmp_path, aiohttp_client):
    app = make_app(tmp_path)

    async def batch(request, target):
        body = await request.read()
        return web.json_response({"got": len(body)}, status=200 if body else 422)

    app[CTX].register(Kind.LFS_BATCH, batch)
    client = await client_for(aiohttp_client, app)
    for payload in (b"x" * 1000, b"", b"y" * 500):
        r = await client.post("/team/repo.git/info/lfs/objects/batch", data=payload)
        await r.read()
    r = await client.get("/no/handler/here/.hg/lfs/verify")
    assert r.status == 404
    await asyncio.sleep(0.05)  # the access-log hook runs after the response is written
    assert sample(app, "lfsserve_http_requests_total", kind="lfs-batch", method="POST", status="200") == 2
    assert sample(app, "lfsserve_http_requests_total", kind="lfs-batch", method="POST", status="422") == 1
    assert sample(app, "lfsserve_http_requests_total", kind="lfs-verify", method="GET", status="404") == 1
    assert sample(app, "lfsserve_http_received_bytes_total", kind="lfs-batch") == 1500
    # Body bytes only, not headers.
    assert sample(app, "lfsserve_http_sent_bytes_total", kind="lfs-batch") == len('{"got": 1000}{"got": 0}{"got": 500}')

    r = await client.get("/metrics")
    text = await r.text()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert 'lfsserve_http_requests_total{kind="lfs-batch",method="POST",status="200"} 2.0' in text
    assert "lfsserve_lfs_objects" not in text  # no store scanner: nothing invented


async def test_metrics_hooks_uploads_pushes_and_store_scan(tmp_path, aiohttp_client):
    app = make_app(tmp_path)
    metrics = app[METRICS]
    seen = {}

    async def put(request, target):
        seen["during"] = sample(app, "lfsserve_uploads_in_flight", protocol="lfs")
        await request.read()
        return web.Response(status=200)

    app[CTX].register(Kind.LFS_OBJECT, put)
    client = await client_for(aiohttp_client, app)
    r = await client.put(f"/r/.hg/lfs/objects/{OID}", data=b"z" * 10)
    assert r.status == 200 and seen["during"] == 1
    assert sample(app, "lfsserve_uploads_in_flight", protocol="lfs") == 0

    with metrics.push():
        pass
    with metrics.push() as push:
        push.result = "refused"
    with pytest.raises(RuntimeError):
        with metrics.push():
            raise RuntimeError("boom")
    assert [sample(app, "lfsserve_hg_pushes_total", result=r) for r in ("accepted", "refused", "error")] == [1, 1, 1]
    assert sample(app, "lfsserve_hg_push_duration_seconds_count") == 3

    scans = []

    async def scan():
        scans.append(1)
        return StoreStats(objects=len(scans) * 2, bytes=1234)

    metrics.set_store_scanner(scan)
    text = await (await client.get("/metrics")).text()
    assert "lfsserve_lfs_objects 2.0" in text and "lfsserve_lfs_stored_bytes 1234.0" in text
    await client.get("/metrics")
    assert len(scans) == 1  # cached within store_scan_interval
    metrics.store_scan_interval = 0
    text = await (await client.get("/metrics")).text()
    assert len(scans) == 2 and "lfsserve_lfs_objects 4.0" in text


async def test_per_client_concurrency_429_with_retry_after(tmp_path, aiohttp_client):
    app = make_app(tmp_path, limits={"per_client_concurrency": 2}, server={"trusted_proxies": "127.0.0.1"})
    release = asyncio.Event()
    started = 0

    async def slow(request, target):
        nonlocal started
        started += 1
        await release.wait()
        return web.Response(text="done")

    app[CTX].register(Kind.LFS_BATCH, slow)
    app[CTX].register(Kind.HG, slow)
    client = await client_for(aiohttp_client, app)
    url = "/r.git/info/lfs/objects/batch"
    held = [asyncio.create_task(client.post(url, data=b"{}")) for _ in range(2)]
    while started < 2:
        await asyncio.sleep(0.01)
    r = await client.post(url, data=b"{}")
    assert r.status == 429 and r.headers["Retry-After"] == "1"
    assert r.headers["Content-Type"] == "application/vnd.git-lfs+json"
    body = await r.json(content_type=None)
    assert "too many concurrent requests" in body["message"] and body["request_id"] == r.headers["X-Request-Id"]
    r = await client.get("/r?cmd=capabilities")
    assert r.status == 429 and r.headers["Content-Type"].startswith("text/plain")
    # probes are never limited; another client behind the trusted proxy is its own client
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics")).status == 200
    other = asyncio.create_task(client.post(url, data=b"{}", headers={"X-Forwarded-For": "203.0.113.9"}))
    while started < 3:
        await asyncio.sleep(0.01)
    release.set()
    for t in held + [other]:
        assert (await t).status == 200
    assert sample(app, "lfsserve_limit_rejections_total", limit="concurrency") == 2
    assert sample(app, "lfsserve_http_requests_total", kind="lfs-batch", method="POST", status="429") == 1
    # the slots were given back
    assert (await client.post(url, data=b"{}")).status == 200


async def test_request_timeout_503_408_and_cut_stream(tmp_path, aiohttp_client):
    app = make_app(tmp_path, limits={"request_timeout": 0.3})

    async def stuck(request, target):
        await asyncio.sleep(10)

    async def reads_body(request, target):
        await request.read()
        return web.Response(text="read")

    async def streams_forever(request, target):
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:
            await resp.write(b"x" * 1024)
            await asyncio.sleep(0.05)

    app[CTX].register(Kind.LFS_BATCH, stuck)
    app[CTX].register(Kind.LFS_OBJECT, reads_body)
    app[CTX].register(Kind.HG, streams_forever)
    client = await client_for(aiohttp_client, app)
    r = await client.post("/r.git/info/lfs/objects/batch", data=b"{}")
    assert r.status == 503 and r.headers["Retry-After"] == "1"
    assert "limits.request_timeout" in (await r.json(content_type=None))["message"]

    async def trickle():
        for _ in range(20):
            yield b"a"
            await asyncio.sleep(0.05)

    r = await client.put(f"/r/.hg/lfs/objects/{OID}", data=trickle())
    assert r.status == 408 and "did not arrive" in (await r.json(content_type=None))["message"]

    r = await client.get("/r?cmd=getbundle")
    assert r.status == 200 and "X-Request-Id" in r.headers  # streamed responses carry the id too
    with pytest.raises(Exception):
        await r.read()  # the connection was cut: the client sees a truncated body, not a clean end
    assert sample(app, "lfsserve_limit_rejections_total", limit="timeout") == 3


async def test_readyz(tmp_path, aiohttp_client):
    app = make_app(tmp_path)
    client = await client_for(aiohttp_client, app)
    r = await client.get("/readyz")
    assert (r.status, await r.text()) == (200, "ready\n")
    (tmp_path / "data" / "repos").write_text("a file where the repositories directory should be")
    r = await client.get("/readyz")
    text = await r.text()
    assert r.status == 503 and "repositories directory" in text and "cannot be read" in text

    app = make_app(tmp_path / "sub")
    shutil.rmtree(tmp_path / "sub" / "data")
    (tmp_path / "sub" / "data").write_text("not a directory")
    client = await client_for(aiohttp_client, app)
    r = await client.get("/readyz")
    assert r.status == 503 and "data directory" in await r.text()
    assert (await client.get("/healthz")).status == 200  # alive, just not ready


async def test_500_keeps_traceback_server_side(tmp_path, aiohttp_client, caplog):
    app = make_app(tmp_path)

    async def broken(request, target):
        raise KeyError("secret internal detail")

    app[CTX].register(Kind.HG, broken)
    client = await client_for(aiohttp_client, app)
    with caplog.at_level(logging.ERROR):
        r = await client.get("/repo?cmd=heads")
    text = await r.text()
    rid = r.headers["X-Request-Id"]
    assert r.status == 500 and rid in text and "secret" not in text and "Traceback" not in text
    assert any("secret internal detail" in (rec.exc_text or "") or rec.exc_info for rec in caplog.records)


def test_json_log_formatter_carries_request_id_and_traceback():
    try:
        raise ValueError("kaput")
    except ValueError:
        import sys
        rec = logging.LogRecord("lfsserve.x", logging.ERROR, __file__, 1, "failed %s", ("op",), sys.exc_info())
    rec.request_id = "abc123"
    out = json.loads(JsonFormatter().format(rec))
    assert out["message"] == "failed op" and out["request_id"] == "abc123" and out["level"] == "error"
    assert "ValueError: kaput" in out["exc"] and re.match(r"\d{4}-\d\d-\d\dT", out["ts"])


@pytest.mark.parametrize("peer, headers, expected", [
    ("198.51.100.7", {"X-Forwarded-For": "203.0.113.1"}, "198.51.100.7"),  # untrusted peer: header ignored
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.1"}, "203.0.113.1"),
    ("127.0.0.1", {"X-Forwarded-For": "1.2.3.4, 203.0.113.1"}, "203.0.113.1"),  # a client can't spoof past the proxy
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.1, 10.0.0.5"}, "203.0.113.1"),  # trusted hops skipped
    ("127.0.0.1", {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}, "2001:db8::1"),
    ("127.0.0.1", {"X-Forwarded-For": "garbage"}, "127.0.0.1"),
    ("127.0.0.1", {}, "127.0.0.1"),
])
def test_client_address(peer, headers, expected):
    assert client_address(peer, headers, TrustedProxies(["127.0.0.1", "10.0.0.0/8"])) == expected


async def test_upload_checked_against_a_copy_gc_deleted_is_refused_not_lost(tmp_path):
    """gc (another process) deletes an unreferenced copy between put() finding it and the
    upload's grant: the upload must fail (and be retried), not be acknowledged with no data."""
    from lfsserve.auth import Authenticator
    from lfsserve.blobstore import UploadRaced
    from lfsserve.lfs import LfsService

    config = load_config(env={"LFSSERVE_ROOT": str(tmp_path / "data")})
    svc = LfsService.create(config, Authenticator(config))
    await svc.start()
    try:
        data = b"orphaned content" * 100
        oid = __import__("hashlib").sha256(data).hexdigest()

        async def body():
            yield data

        await svc.store.put(oid, body())  # stored, referenced by no namespace
        real_grant = svc.namespaces.grant

        async def grant_after_gc(namespace, oids):
            assert (await svc.gc(grace_seconds=0)).deleted == [oid]  # gc runs "between"
            await real_grant(namespace, oids)

        svc.namespaces.grant = grant_after_gc
        with pytest.raises(UploadRaced):
            await svc.receive("team/app", oid, body())
        svc.namespaces.grant = real_grant
        assert (await svc.receive("team/app", oid, body())).created  # the retry stores it again
        assert (await svc.store.state(oid)).present
    finally:
        await svc.stop()


async def test_gc_rechecks_references_after_taking_the_object_aside(tmp_path):
    """An upload grants an orphan to a namespace just after gc found it unreferenced (the server
    runs while `lfsserve gc` does): gc must keep it, or the namespace would see nothing."""
    from lfsserve.auth import Authenticator
    from lfsserve.lfs import LfsService

    config = load_config(env={"LFSSERVE_ROOT": str(tmp_path / "data")})
    svc = LfsService.create(config, Authenticator(config))
    await svc.start()
    try:
        data = b"claimed at the last moment" * 100
        oid = __import__("hashlib").sha256(data).hexdigest()

        async def body():
            yield data

        await svc.store.put(oid, body())  # stored, referenced by no namespace
        real_lookup = svc.namespaces.namespaces_of
        calls = []

        async def lookup_then_upload_grants(oids):
            seen = await real_lookup(oids)
            if not calls:  # gc's first check has been answered "unreferenced"; now the grant lands
                await svc.namespaces.grant("team/app", [oid])
            calls.append(list(oids))
            return seen

        svc.namespaces.namespaces_of = lookup_then_upload_grants
        report = await svc.gc(grace_seconds=0)
        svc.namespaces.namespaces_of = real_lookup
        assert report.deleted == [] and report.kept == 1 and len(calls) == 2
        assert (await svc.store.state(oid)).present
        assert await svc.namespaces.visible("team/app", [oid]) == {oid}
    finally:
        await svc.stop()


async def test_objects_left_aside_by_a_crashed_gc_are_restored(tmp_path):
    from lfsserve.blobstore import LocalBlobStore

    store = LocalBlobStore(tmp_path / "lfs")
    await store.open()
    data = b"survivor" * 50
    oid = __import__("hashlib").sha256(data).hexdigest()

    async def body():
        yield data

    await store.put(oid, body())
    os.rename(store.path(oid), store.gc_pending / f"{oid}.12345.abcd")  # gc died right here
    await store.close()
    store = LocalBlobStore(tmp_path / "lfs")
    await store.open()
    try:
        assert (await store.state(oid)).present and not list(store.gc_pending.iterdir())
    finally:
        await store.close()
