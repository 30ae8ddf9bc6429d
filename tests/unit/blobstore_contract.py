"""The blob store contract, written once and run against every backend.

A backend's test module subclasses BlobStoreContract and provides two fixtures: `store` (an opened
BlobStore) and `damage` (a function `damage(oid)` that corrupts the stored bytes behind the
store's back, the way a disk or an operator would).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from lfsserve.blobstore import (
    CorruptObject,
    HashMismatch,
    InvalidOid,
    ObjectMissing,
    Status,
    TooLarge,
)
from tests.support import oid_of


async def chunks_of(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]
        await asyncio.sleep(0)


async def collect(store, handle, start=0, end=None) -> bytes:
    out = bytearray()
    async for chunk in store.read(handle, start, end):
        out += chunk
    return bytes(out)


class ClientGone(Exception):
    pass


async def broken_stream(data: bytes, after: int):
    yield data[:after]
    raise ClientGone()


class BlobStoreContract:
    async def listed(self, store) -> dict[str, int]:
        return {oid: size for oid, size, _ in [x async for x in store.list()]}

    async def test_roundtrip_and_dedup(self, store):
        data = os.urandom(3 * 1024 * 1024 + 17)  # several internal chunks, odd tail
        oid = oid_of(data)
        first = await store.put(oid, chunks_of(data))
        assert first.created and first.size == len(data)
        second = await store.put(oid, chunks_of(data, 1000))
        assert not second.created and second.size == len(data)
        handle = await store.get(oid)
        assert handle.size == len(data)
        assert await collect(store, handle) == data
        assert (await store.state(oid)).status is Status.OK
        assert await self.listed(store) == {oid: len(data)}

    async def test_empty_object(self, store):
        oid = oid_of(b"")
        assert (await store.put(oid, chunks_of(b""))).created
        handle = await store.get(oid)
        assert handle.size == 0 and await collect(store, handle) == b""

    async def test_ranges(self, store):
        data = os.urandom(2 * 1024 * 1024 + 5)
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        handle = await store.get(oid)
        assert await collect(store, handle, 10, 20) == data[10:20]
        assert await collect(store, handle, 1024 * 1024 - 3, None) == data[1024 * 1024 - 3:]

    async def test_mismatch_stores_nothing(self, store):
        data = b"the real content\n"
        claimed = oid_of(b"something else")
        with pytest.raises(HashMismatch) as info:
            await store.put(claimed, chunks_of(data))
        assert info.value.actual == oid_of(data) and info.value.size == len(data)
        assert (await store.state(claimed)).status is Status.MISSING
        assert (await store.state(oid_of(data))).status is Status.MISSING
        assert await self.listed(store) == {}

    async def test_too_large_stores_nothing(self, store):
        data = os.urandom(5000)
        with pytest.raises(TooLarge):
            await store.put(oid_of(data), chunks_of(data, 1000), max_size=4999)
        assert (await store.state(oid_of(data))).status is Status.MISSING
        assert (await store.put(oid_of(data), chunks_of(data), max_size=5000)).created

    async def test_interrupted_upload_leaves_nothing(self, store):
        data = os.urandom(2 * 1024 * 1024)
        oid = oid_of(data)
        with pytest.raises(ClientGone):
            await store.put(oid, broken_stream(data, 1024 * 1024 + 100))
        assert (await store.state(oid)).status is Status.MISSING
        assert await self.listed(store) == {}
        assert (await store.put(oid, chunks_of(data))).created

    async def test_cancelled_upload_leaves_nothing(self, store):
        data = os.urandom(1024 * 1024)
        oid = oid_of(data)
        started = asyncio.Event()

        async def stalls():
            yield data[:1000]
            started.set()
            await asyncio.sleep(3600)
            yield data[1000:]

        task = asyncio.ensure_future(store.put(oid, stalls()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await store.state(oid)).status is Status.MISSING

    async def test_concurrent_uploads_of_one_object(self, store):
        data = os.urandom(1024 * 1024 + 3)
        oid = oid_of(data)
        bad = bytearray(data)
        bad[-1] ^= 1
        results = await asyncio.gather(
            *[store.put(oid, chunks_of(data, 4096 * (i + 1))) for i in range(6)],
            store.put(oid, chunks_of(bytes(bad))), return_exceptions=True)
        good, failed = results[:6], results[6]
        assert isinstance(failed, HashMismatch)
        assert all(not isinstance(r, BaseException) for r in good), good
        assert any(r.created for r in good)
        assert await collect(store, await store.get(oid)) == data
        assert await self.listed(store) == {oid: len(data)}

    async def test_existing_object_is_not_overwritten_by_a_liar(self, store):
        data = b"precious" * 1000
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        with pytest.raises(HashMismatch):
            await store.put(oid, chunks_of(b"fake" * 2000))
        assert await collect(store, await store.get(oid)) == data

    async def test_states(self, store):
        a, b = b"a" * 100, b"b" * 200
        await store.put(oid_of(a), chunks_of(a))
        missing = oid_of(b)
        states = await store.states([oid_of(a), missing, oid_of(a)])
        assert states[oid_of(a)].servable and states[oid_of(a)].size == 100
        assert states[missing].status is Status.MISSING and not states[missing].present

    async def test_get_visible_answers_only_when_visible(self, store):
        data = b"visible?" * 100
        oid, absent = oid_of(data), oid_of(b"never stored")
        await store.put(oid, chunks_of(data))
        asked = []

        def no() -> bool:
            asked.append(False)
            return False

        assert await store.get_visible(oid, no) is None  # stored, but not for this caller
        assert await store.get_visible(absent, no) is None  # the same answer: nothing told
        assert asked == [False, False]
        handle = await store.get_visible(oid, lambda: True)
        assert handle is not None and handle.size == len(data)
        assert await collect(store, handle) == data
        with pytest.raises(ObjectMissing):
            await store.get_visible(absent, lambda: True)

    async def test_missing_and_invalid(self, store):
        with pytest.raises(ObjectMissing):
            await store.get(oid_of(b"never stored"))
        for bad in ("", "A" * 64, "g" * 64, "0" * 63, "../" + "0" * 61):
            with pytest.raises(InvalidOid):
                await store.state(bad)
        assert not await store.delete(oid_of(b"never stored"))

    async def test_corruption_detected_in_states_within_budget(self, store, damage):
        data = os.urandom(100_000)
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        damage(oid)
        assert (await store.state(oid)).status is Status.UNVERIFIED  # no budget: not re-hashed
        assert (await store.state(oid, rehash_budget=99_999)).status is Status.UNVERIFIED
        assert (await store.state(oid, rehash_budget=100_000)).status is Status.CORRUPT
        # Remembered: no budget needed any more, and it is never served.
        assert (await store.state(oid)).status is Status.CORRUPT
        with pytest.raises(CorruptObject):
            await store.get(oid)

    async def test_corruption_found_while_streaming_withholds_the_end(self, store, damage):
        data = os.urandom(3 * 1024 * 1024)
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        damage(oid)
        handle = await store.get(oid)
        assert not handle.verified and handle.path is None
        received = bytearray()
        with pytest.raises(CorruptObject):
            async for chunk in store.read(handle):
                received += chunk
        assert len(received) < len(data)  # the client sees a short body, never a complete bad one
        assert (await store.state(oid)).status is Status.CORRUPT

    async def test_partial_read_of_damaged_object_is_refused(self, store, damage):
        data = os.urandom(300_000)
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        damage(oid)
        handle = await store.get(oid)
        with pytest.raises(CorruptObject):
            await collect(store, handle, 0, 10)

    async def test_unverified_but_intact_object_is_served_and_reverified(self, store, touch):
        data = os.urandom(200_000)
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        touch(oid)  # changed metadata, same bytes
        handle = await store.get(oid)
        assert not handle.verified
        assert await collect(store, handle) == data
        assert (await store.state(oid)).status is Status.OK

    async def test_reupload_repairs_a_corrupt_object(self, store, damage):
        data = os.urandom(70_000)
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        damage(oid)
        assert (await store.verify(oid)).status is Status.CORRUPT
        assert (await store.put(oid, chunks_of(data))).created
        assert (await store.verify(oid)).status is Status.OK
        assert await collect(store, await store.get(oid)) == data

    async def test_delete_unless(self, store):
        data = b"maybe" * 10
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        asked = []

        async def keep():
            asked.append((await store.state(oid)).status)
            return True

        assert not await store.delete_unless(oid, keep)
        assert asked == [Status.MISSING]  # asked while the object was out of sight
        assert await collect(store, await store.get(oid)) == data

        async def drop():
            return False

        assert await store.delete_unless(oid, drop)
        assert (await store.state(oid)).status is Status.MISSING
        assert not await store.delete_unless(oid, drop)  # nothing left to delete

    async def test_delete(self, store):
        data = b"bye" * 10
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        assert await store.delete(oid)
        assert (await store.state(oid)).status is Status.MISSING
        assert await self.listed(store) == {}

    async def test_quarantine_takes_an_object_out_of_service(self, store, damage):
        data = os.urandom(5000)
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        damage(oid)
        assert await store.quarantine(oid)  # says where the bytes went
        assert (await store.state(oid)).status is Status.MISSING
        with pytest.raises(ObjectMissing):
            await store.get(oid)
        assert await self.listed(store) == {}
        with pytest.raises(ObjectMissing):
            await store.quarantine(oid)
        # A client that still has the content can upload it again.
        assert (await store.put(oid, chunks_of(data))).created
        assert (await store.state(oid, rehash_budget=1 << 20)).status is Status.OK
