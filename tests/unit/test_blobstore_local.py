"""LocalBlobStore: the shared contract, plus what is specific to files on disk."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import resource
import signal
import threading
from pathlib import Path

import pytest

from lfsserve.blobstore import HashMismatch, LocalBlobStore, Status, open_store
from lfsserve.blobstore.local import _STAGE, _STAGES
from lfsserve.config import load_config

from .blobstore_contract import BlobStoreContract, chunks_of, oid_of


@pytest.fixture(params=[True, False], ids=["fsync", "no-fsync"])
async def store(tmp_path, request):
    s = LocalBlobStore(tmp_path / "lfs", durable=request.param)
    await s.open()
    yield s
    await s.close()
    assert list((tmp_path / "lfs" / "tmp").iterdir()) == []  # no test leaves a temp file behind


@pytest.fixture
def damage(store):
    def corrupt(oid: str) -> None:
        path = store.path(oid)
        st = path.stat()
        os.chmod(path, 0o644)
        with open(path, "r+b") as fh:
            fh.seek(st.st_size // 2)
            b = fh.read(1)
            fh.seek(st.st_size // 2)
            fh.write(bytes([b[0] ^ 0xFF]))
        # Bit rot does not announce itself: put the old size and mtime back.
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return corrupt


@pytest.fixture
def touch(store):
    def change_metadata(oid: str) -> None:
        st = store.path(oid).stat()
        os.utime(store.path(oid), ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    return change_metadata


class TestLocalBlobStore(BlobStoreContract):
    pass


async def test_layout_permissions_and_sendfile_path(tmp_path):
    store = LocalBlobStore(tmp_path / "lfs")
    await store.open()
    try:
        data = b"layout"
        oid = oid_of(data)
        await store.put(oid, chunks_of(data))
        path = tmp_path / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        assert path.read_bytes() == data
        assert path.stat().st_mode & 0o777 == 0o444
        handle = await store.get(oid)
        assert handle.verified and handle.path == path  # known good: may go out with sendfile
    finally:
        await store.close()


async def test_startup_removes_abandoned_temps_but_not_live_ones(tmp_path):
    root = tmp_path / "lfs"
    (root / "tmp").mkdir(parents=True)
    abandoned = root / "tmp" / ("0" * 64 + ".dead.tmp")
    abandoned.write_bytes(b"half an upload")
    live = root / "tmp" / ("1" * 64 + ".live.tmp")
    live.write_bytes(b"being uploaded by another process")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        s = LocalBlobStore(root)
        await s.open()
        await s.close()
        assert not abandoned.exists() and live.exists()
    finally:
        os.close(fd)
        live.unlink()


async def test_verification_stamps_survive_restart(tmp_path):
    data = os.urandom(10_000)
    oid = oid_of(data)
    s = LocalBlobStore(tmp_path / "lfs")
    await s.open()
    await s.put(oid, chunks_of(data))
    await s.close()
    s = LocalBlobStore(tmp_path / "lfs")
    await s.open()
    try:
        assert (await s.state(oid)).status is Status.OK  # no budget needed: the stamp was kept
    finally:
        await s.close()


async def test_unsynced_uploads_are_verified_before_first_use(tmp_path):
    s = LocalBlobStore(tmp_path / "lfs", durable=False)
    await s.open()
    try:
        data = os.urandom(10_000)
        oid = oid_of(data)
        await s.put(oid, chunks_of(data))
        assert (await s.state(oid)).status is Status.UNVERIFIED
        assert not (await s.get(oid)).verified
        assert (await s.state(oid, rehash_budget=10_000)).status is Status.OK
    finally:
        await s.close()


async def test_object_replaced_behind_our_back_is_rechecked(store):
    """A restore from backup (new inode, same bytes) costs one re-hash, then is trusted again."""
    data = os.urandom(50_000)
    oid = oid_of(data)
    await store.put(oid, chunks_of(data))
    path = store.path(oid)
    copy = path.with_name("copy")
    copy.write_bytes(data)
    os.replace(copy, path)
    assert (await store.state(oid)).status is Status.UNVERIFIED
    assert (await store.state(oid, rehash_budget=1 << 20)).status is Status.OK
    assert (await store.state(oid)).status is Status.OK


async def test_abandon_waits_for_a_writing_thread_even_after_cancellation(tmp_path):
    """A cancelled upload (client gone) must not let its file descriptor be closed while a
    worker thread is still writing to it: abandon() waits for the thread itself."""
    import asyncio
    import threading

    from lfsserve.blobstore.local import CHUNK, _Sink

    fd = os.open(tmp_path / "upload.tmp", os.O_WRONLY | os.O_CREAT, 0o600)
    sink = _Sink(fd, 0)
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_write(parts):
        started.set()
        release.wait(10)
        finished.set()

    sink._write_parts = slow_write

    async def upload():
        for _ in range(3):
            await sink.feed(b"x" * CHUNK)

    task = asyncio.create_task(upload())
    assert await asyncio.to_thread(started.wait, 10)
    await asyncio.sleep(0.05)  # the upload task now waits on the writing thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    abandoning = asyncio.create_task(sink.abandon())
    await asyncio.sleep(0.2)
    assert not abandoning.done() and not finished.is_set()  # still waiting for the thread
    release.set()
    await asyncio.wait_for(abandoning, 10)
    assert finished.is_set()
    os.close(fd)


async def _feed(upload, data: bytes, piece: int = (1 << 20) + 17) -> None:
    """Feed a DirectUpload as lfs/receive.py does, from a worker thread: a few bytes that came
    with the headers, then pieces received into its buffer (not block-sized)."""
    def run() -> None:
        view = memoryview(data)
        upload.write(view[:1000])
        view = view[1000:]
        while view:
            space = upload.buffer()
            n = min(len(space), piece, len(view))
            space[:n] = view[:n]
            upload.filled(n)
            view = view[n:]
    await asyncio.to_thread(run)


def _temps(store: LocalBlobStore) -> list[Path]:
    return list(store.tmp.iterdir())


async def test_direct_upload_longer_than_its_buffers_stores_exactly_its_content(store):
    """Every buffer is written while the next ones are received into, then reused: the file
    must be the content, byte for byte, and a wrong content must leave nothing."""
    data = os.urandom((_STAGES + 2) * _STAGE + 12345)
    oid = oid_of(data)
    upload = await store.direct_upload(oid)
    await _feed(upload, data)
    result = await upload.finish()
    assert result.created and result.size == len(data)
    assert store.path(oid).read_bytes() == data
    assert (await store.state(oid)).status in (Status.OK, Status.UNVERIFIED)

    wrong = oid_of(b"not this content")
    upload = await store.direct_upload(wrong)
    await _feed(upload, data)
    with pytest.raises(HashMismatch):
        await upload.finish()
    await upload.abort()
    assert not store.path(wrong).exists() and _temps(store) == []


async def test_a_write_failing_mid_upload_is_raised_and_leaves_nothing(tmp_path):
    """A write that fails in a writer thread (here the file size limit, EFBIG; ENOSPC alike)
    reaches the feeding thread or finish(); abort() then removes the temp file."""
    store = LocalBlobStore(tmp_path / "lfs")
    await store.open()
    data = os.urandom((_STAGES + 2) * _STAGE)
    oid = oid_of(data)
    upload = await store.direct_upload(oid)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (_STAGE + _STAGE // 2, old_limit[1]))
    try:
        with pytest.raises(OSError) as info:
            await _feed(upload, data)
            await upload.finish()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert info.value.errno == errno.EFBIG
    await upload.abort()
    assert _temps(store) == [] and not store.path(oid).exists()
    # The store goes on: the same upload succeeds once the disk takes it.
    upload = await store.direct_upload(oid)
    await _feed(upload, data)
    assert (await upload.finish()).created
    assert store.path(oid).read_bytes() == data
    await store.close()


async def test_abort_waits_for_the_writes_on_their_way(tmp_path):
    """A client gone while full buffers are still being written: the temp file is closed and
    removed only once those writes are done (never a write into a closed descriptor)."""
    store = LocalBlobStore(tmp_path / "lfs")
    await store.open()
    data = os.urandom(2 * _STAGE + 100)
    upload = await store.direct_upload(oid_of(data))
    sink = upload._sink
    real_write = sink._write_at
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def held_write(fd, view, offset):
        started.set()
        release.wait(10)
        try:
            real_write(fd, view, offset)
        except BaseException as exc:
            errors.append(exc)
            raise

    sink._write_at = held_write
    await _feed(upload, data)  # two full buffers handed to writers, the rest in the third
    assert await asyncio.to_thread(started.wait, 10)
    aborting = asyncio.create_task(upload.abort())
    await asyncio.sleep(0.2)
    assert not aborting.done() and _temps(store) != []  # still waiting for the writers
    release.set()
    await asyncio.wait_for(aborting, 10)
    assert errors == [] and _temps(store) == []
    await store.close()


async def test_buffers_are_reused_only_once_their_upload_is_over(tmp_path, monkeypatch):
    """Uploads at the same time have buffers of their own; a finished or aborted upload's
    buffers go to the next one, whose content must come out intact, as the earlier ones'."""
    from lfsserve.blobstore import local

    monkeypatch.setattr(local, "_spare", [])
    store = LocalBlobStore(tmp_path / "lfs")
    await store.open()
    a, b, c = (os.urandom(3 * _STAGE + i) for i in (5, 6, 7))
    first = await store.direct_upload(oid_of(a))
    second = await store.direct_upload(oid_of(b))
    regions = {id(first._sink._region), id(second._sink._region)}
    assert len(regions) == 2
    await _feed(first, a)
    await _feed(second, b)
    assert (await first.finish()).created
    await second.abort()
    third = await store.direct_upload(oid_of(c))
    assert id(third._sink._region) in regions
    await _feed(third, c)
    assert (await third.finish()).created
    assert store.path(oid_of(a)).read_bytes() == a and store.path(oid_of(c)).read_bytes() == c
    assert not store.path(oid_of(b)).exists() and _temps(store) == []
    await store.close()


async def test_quarantine_keeps_the_bytes_under_the_store(tmp_path):
    s = LocalBlobStore(tmp_path / "lfs")
    await s.open()
    try:
        data = b"kept for inspection"
        oid = oid_of(data)
        await s.put(oid, chunks_of(data))
        where = Path(await s.quarantine(oid))
        assert where.parent == tmp_path / "lfs" / "quarantine" and where.name.startswith(oid + ".")
        assert where.read_bytes() == data
    finally:
        await s.close()


def test_open_store_builds_the_configured_backend(tmp_path):
    config = load_config(env={"LFSSERVE_ROOT": str(tmp_path), "LFSSERVE_STORAGE_BACKEND": "local",
                              "LFSSERVE_LFS_FSYNC": "false"})
    store = open_store(config)
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "lfs" and not store.durable
