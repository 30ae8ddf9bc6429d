"""LfsService: what the hg push path and operations rely on (see LFS_API.md)."""

from __future__ import annotations

import asyncio
import os

import pytest

from lfsserve.auth import Principal
from lfsserve.lfs import LFS_SERVICE
from tests.support import oid_of

from .lfs_support import ALICE, upload

BOB = Principal("bob", "basic")      # reads shared/**, nothing in team/**
CAROL = Principal("carol", "bearer")  # reads and writes shared/** and team/**


@pytest.fixture
async def setup(make_client):
    client = await make_client()
    return client, client.server.app[LFS_SERVICE]


async def test_pushed_pointers_only_expose_what_the_pusher_can_read(setup):
    client, svc = setup
    secret = os.urandom(1000)
    await upload(client, "team/app", secret)
    oid, absent = oid_of(secret), oid_of(b"never uploaded")
    # bob cannot read team/app: pushing a pointer to its object into shared/ must not expose it.
    assert await svc.accept_pushed_pointers("shared/x", [oid, absent, "not-an-oid"], BOB) == {
        oid, absent, "not-an-oid"}
    assert await svc.namespaces.visible("shared/x", [oid]) == set()
    # carol can read team/app: the pointer is accepted and the object becomes visible in shared/x.
    assert await svc.accept_pushed_pointers("shared/x", [oid], CAROL) == set()
    assert await svc.namespaces.visible("shared/x", [oid]) == {oid}
    # Now it is in shared/x, bob may push it there again (and into nothing he cannot read from).
    assert await svc.accept_pushed_pointers("shared/x", [oid], BOB) == set()
    assert svc.stats.pushed_pointers_refused == 3 and svc.stats.pushed_pointers_accepted == 2


async def test_sync_faces_work_from_a_worker_thread(setup):
    client, svc = setup
    await upload(client, "team/app", b"sync")
    oid = oid_of(b"sync")
    missing = await asyncio.to_thread(svc.missing_sync, [oid, oid_of(b"absent")])
    assert missing == {oid_of(b"absent")}
    refused = await asyncio.to_thread(svc.accept_pushed_pointers_sync, "team/app", [oid], CAROL)
    assert refused == set()
    with pytest.raises(RuntimeError):
        svc.missing_sync([oid])  # on the loop thread it would deadlock: refused instead


async def test_gc_and_verify_all(setup):
    client, svc = setup
    await upload(client, "team/app", b"keep me")
    await upload(client, "team/gone", b"orphan")
    assert await svc.forget_namespace("team/gone") == 1
    report = await svc.gc(grace_seconds=3600)
    assert report.deleted == [] and report.kept == 2  # too young to collect
    report = await svc.gc(grace_seconds=0, dry_run=True)
    assert report.deleted == [oid_of(b"orphan")]
    assert (await svc.store.state(oid_of(b"orphan"))).present
    report = await svc.gc(grace_seconds=0)
    assert report.deleted == [oid_of(b"orphan")] and report.freed_bytes == 6
    assert not (await svc.store.state(oid_of(b"orphan"))).present
    path = svc.store.path(oid_of(b"keep me"))
    os.chmod(path, 0o644)
    path.write_bytes(b"keep mE")
    report = await svc.verify_all()
    assert report.checked == 1 and report.corrupt == [oid_of(b"keep me")]


async def test_stats_count_transfers(setup):
    client, svc = setup
    await upload(client, "team/app", b"12345")
    r = await client.get(f"/team/app/.hg/lfs/objects/{oid_of(b'12345')}", headers=ALICE)
    assert await r.read() == b"12345"
    s = svc.stats.as_dict()
    assert s["uploads"] == 1 and s["upload_bytes"] == 5 and s["downloads"] == 1 and s["download_bytes"] == 5
    assert s["batch_requests"] == 1 and s["batch_objects"] == 1


@pytest.mark.parametrize("fsync, synchronous", [(True, 2), (False, 1)])  # PRAGMA synchronous FULL / NORMAL
async def test_visibility_records_are_as_durable_as_objects(make_client, fsync, synchronous):
    """With lfs.fsync an acknowledged upload's visibility grant is committed to disk too (else a
    power loss could hide an object the client was told is stored)."""
    client = await make_client(extra=f"[lfs]\nfsync = {str(fsync).lower()}\n")
    svc = client.server.app[LFS_SERVICE]
    assert await svc.db.write(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) == synchronous


async def test_download_lookup_follows_visibility_and_store_changes(setup):
    """A GET looks visibility and the object up afresh each time: an object quarantined or
    collected, or a namespace forgotten, reads as missing at once, and a namespace never granted
    an object gets 404 whatever is stored."""
    client, svc = setup
    kept, quarantined, other = b"kept object", b"to be quarantined", b"in another namespace only"
    for data in (kept, quarantined):
        await upload(client, "team/app", data)
    await upload(client, "team/other", other)

    async def get(ns: str, data: bytes) -> int:
        r = await client.get(f"/{ns}/.hg/lfs/objects/{oid_of(data)}", headers=ALICE)
        if r.status == 200:
            assert await r.read() == data
        return r.status

    assert [await get("team/app", d) for d in (kept, quarantined, other)] == [200, 200, 404]
    assert await get("team/other", kept) == 404
    await svc.quarantine(oid_of(quarantined))
    assert await get("team/app", quarantined) == 404
    assert await svc.forget_namespace("team/other") == 1
    assert await get("team/other", other) == 404
    assert (await svc.gc(grace_seconds=0)).deleted == [oid_of(other)]
    await svc.namespaces.grant("team/other", [oid_of(other)])  # a grant left without its object
    assert await get("team/other", other) == 404
    assert await get("team/app", kept) == 200


async def test_small_body_in_several_reads_is_stored_whole(setup):
    """A small PUT whose body arrives after its headers, in pieces, is stored (one worker job);
    one cut short stores nothing and leaves no temp file."""
    client, svc = setup
    data = os.urandom(100_000)
    oid = oid_of(data)
    head = (f"PUT /team/app/.hg/lfs/objects/{oid} HTTP/1.1\r\nHost: x\r\nAuthorization: {ALICE['Authorization']}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()

    async def send(parts: list[bytes], close: bool = False) -> bytes:
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        try:
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(0.05)
            if close:
                return b""
            return await reader.read()
        finally:
            writer.close()

    await send([head, data[:30_000]], close=True)
    await asyncio.sleep(0.2)
    assert not (await svc.store.state(oid)).present
    assert list((svc.store.root / "tmp").iterdir()) == []
    answer = await send([head, data[:30_000], data[30_000:]])
    assert answer.startswith(b"HTTP/1.1 201")
    r = await client.get(f"/team/app/.hg/lfs/objects/{oid}", headers=ALICE)
    assert r.status == 200 and await r.read() == data
