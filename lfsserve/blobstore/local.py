"""Blob store on the local filesystem: `<root>/objects/<oid[0:2]>/<oid[2:4]>/<oid>`.

Uploads stream into `<root>/tmp/` (same filesystem) while being hashed, one MiB at a time in a
worker thread so hashing overlaps with receiving; only a complete, matching upload is fsync'ed
and linked into place. A temp file is flock'ed while its upload runs, so start-up cleanup removes
exactly the abandoned ones, even with another server process sharing the directory.

Integrity is checked cheaply: when an object is verified, its (size, inode, mtime, ctime) stamp is
remembered in `<root>/verified.sqlite3`. An object whose stamp still matches is known good and can
be sent with sendfile; one that changed is re-hashed (in a batch, within a budget) or verified while
it streams out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import sqlite3
import stat as stat_mod
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection
from pathlib import Path

from ..aio import run_blocking, submit_blocking
from ..sqlitedb import SqliteDb, select_in
from .base import (
    MISSING,
    BlobHandle,
    BlobStore,
    CorruptObject,
    DirectUpload,
    HashMismatch,
    InvalidOid,
    ObjectMissing,
    ObjectState,
    PutResult,
    Status,
    StorageFull,
    TooLarge,
    is_oid,
)

__all__ = ["LocalBlobStore"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # hashing and file I/O unit: large enough that hashlib releases the GIL for long
_STAMPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS verified (
    oid      TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ok       INTEGER NOT NULL
) WITHOUT ROWID;
"""
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _classify(st: os.stat_result | None, known: tuple[tuple[int, int, int, int], bool] | None) -> ObjectState:
    """An object's state from its file's stat and the stamp remembered when it was last checked."""
    if st is None:
        return MISSING
    if known is not None and known[0] == _stamp(st):
        return ObjectState(Status.OK if known[1] else Status.CORRUPT, st.st_size)
    return ObjectState(Status.UNVERIFIED, st.st_size)


def _check_oid(oid: str) -> None:
    if not is_oid(oid):
        raise InvalidOid(f"not an object id (64 lowercase hex digits): {str(oid)[:80]!r}")


def _storage_error(exc: OSError, what: str) -> Exception:
    if exc.errno in _NO_SPACE:
        return StorageFull(f"no space left to store {what}")
    return exc


def _load_sync_file_range():
    """libc's sync_file_range (Linux), to start writing an upload to disk while it arrives."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_EVERY = 8 * CHUNK
_IOV_MAX = 1024
_SMALL_STEP = 256 * 1024
_LARGE = 8 * CHUNK


class _Sink:
    """Hashes (and optionally writes) a stream in steps handed to worker threads.

    Each step is hashed in one thread and written in another at the same time (both release
    the GIL), so a step costs the longer of the two, not their sum; meanwhile the event loop
    receives the next step. At most two steps are in memory per upload (256 KiB ones until the
    upload passes 8 MiB, then CHUNK-sized).
    """

    def __init__(self, fd: int | None, max_size: int, writeback: bool = False):
        self.fd = fd
        self.max_size = max_size
        self.hash = hashlib.sha256()
        self.size = 0
        self._parts: list[bytes] = []  # received, not yet handed to the threads (no copying)
        self._held = 0
        # The threads working on the previous step. Concurrent futures, not asyncio ones: they
        # stay pending until the thread is done, even if the request task is cancelled, so
        # abandon() never lets the file descriptor go while a thread may still write to it.
        self._inflight: list[concurrent.futures.Future] = []
        # Start writing to disk as data arrives, so the final fsync has little left to do.
        self._writeback = writeback and _sync_file_range is not None
        self._written = 0
        self._flushed = 0

    def _hash_parts(self, parts: list[bytes]) -> None:
        for part in parts:
            self.hash.update(part)

    def _write_parts(self, parts: list[bytes]) -> None:
        fd = self.fd
        assert fd is not None  # only called for a sink that writes (see _absorb)
        total = 0
        for i in range(0, len(parts), _IOV_MAX):
            group = parts[i:i + _IOV_MAX]
            size = sum(map(len, group))
            done = os.writev(fd, group)
            if done < size:  # short write (rare): finish it piece by piece
                view = memoryview(b"".join(group))[done:]
                while view:
                    view = view[os.write(fd, view):]
            total += size
        self._written += total
        if self._writeback and self._written - self._flushed >= _WRITEBACK_EVERY:
            _sync_file_range(fd, self._flushed, self._written - self._flushed, _SYNC_FILE_RANGE_WRITE)
            self._flushed = self._written

    def _absorb(self, parts: list[bytes]) -> None:
        self._hash_parts(parts)
        if self.fd is not None:
            self._write_parts(parts)

    async def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_size and self.size > self.max_size:
            raise TooLarge(self.max_size)
        self._parts.append(chunk)
        self._held += len(chunk)
        # Small steps while the upload is small (many concurrent small uploads stay light on
        # memory), full CHUNKs once it is large (fewer thread hand-offs per byte).
        if self._held >= (CHUNK if self.size > _LARGE else _SMALL_STEP):
            await self._flush()

    async def _wait_inflight(self) -> None:
        """Wait for the previous step's threads; re-raise the first error they met."""
        error = None
        for fut in self._inflight:
            try:
                await asyncio.wrap_future(fut)
            except Exception as exc:  # a failed write (ENOSPC...), reported after both finish
                error = error or exc
        # Only now: if this task is cancelled above, abandon() still finds them and waits.
        self._inflight = []
        if error is not None:
            raise error

    async def _flush(self) -> None:
        await self._wait_inflight()
        if self._parts:
            parts, self._parts, self._held = self._parts, [], 0
            self._inflight = [submit_blocking(self._hash_parts, parts)]
            if self.fd is not None:
                self._inflight.append(submit_blocking(self._write_parts, parts))

    async def drain(self) -> None:
        """Wait for the step in flight; what is still held is left for absorb_rest()."""
        await self._wait_inflight()

    def release(self) -> None:
        """Once no thread uses the sink any more (after the upload, whatever its outcome): give
        back what the next upload may reuse."""

    def absorb_rest(self) -> None:
        """In a worker thread, after drain(): hash and write what is still held."""
        parts, self._parts, self._held = self._parts, [], 0
        if parts:
            self._absorb(parts)

    async def finish(self) -> str:
        await self._flush()
        await self._wait_inflight()
        return self.hash.hexdigest()

    async def abandon(self) -> None:
        """Wait until no thread touches fd any more (even if cancelled meanwhile); drop the rest."""
        self._parts, self._held = [], 0
        inflight, self._inflight = self._inflight, []
        if inflight:
            # Cancellation cannot stop a running thread: wait for it in a way that outlives
            # the cancellation of this task.
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(
                None, concurrent.futures.wait, inflight))



# A DirectUpload's buffers, received into, hashed as they fill, written when full (4 MiB: measured
# ~15% less CPU per GiB than 1 MiB; 256 KiB was worse still).
_STAGE = 4 << 20
# How many per upload writing O_DIRECT: one being received into while the others are hashed and
# written (measured on the 2-core VM, 1 GiB: 4 buffers with hashing in its own thread ~910 MiB/s
# median against ~775 for 3 hashed by the receiver, same CPU). Memory per upload: fixed.
_STAGES = 4
_ALIGN = 4096     # O_DIRECT writes: whole blocks from an aligned buffer (mmap'ed: page-aligned)


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for `fd`; False when the filesystem does not take it (tmpfs...)."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | direct) if on else (flags & ~direct))
    except OSError:
        return False
    return True


_HUGE = 2 << 20  # a transparent huge page (x86-64)


def _huge_aligned(size: int) -> tuple[mmap.mmap, int]:
    """Anonymous memory of `size` bytes starting at a huge-page boundary: (mapping, offset of
    the start). With transparent huge pages, an O_DIRECT write of a buffer pins two 2 MiB pages
    instead of a thousand 4 KiB ones (perf, 1 GiB upload: pinning the written pages went from
    3.5-6% of the server's CPU with mmap's default shared 4 KiB pages to ~0.1%). The slack
    before the start is never touched, so never allocated."""
    # Private: mmap's default for anonymous memory is shared (shmem), which gets no huge pages.
    region = mmap.mmap(-1, size + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    address = ctypes.addressof(ctypes.c_char.from_buffer(region))
    start = -address % _HUGE
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            region.madvise(mmap.MADV_HUGEPAGE, start, size)
        except OSError:
            pass  # no transparent huge pages here: 4 KiB pages work too
    return region, start


# Buffer regions of finished uploads, for the next ones (at most _SPARE kept, 16 MiB each): on
# this VM a freshly allocated huge page costs ~3 ms per MiB at first touch (perf: ~4% of a 1 GiB
# upload's CPU, far more of a 20 MiB one's), a reused one nothing.
_SPARE = 2
_spare: list[tuple[int, mmap.mmap, int]] = []
_spare_lock = threading.Lock()


def _take_region(size: int) -> tuple[mmap.mmap, int]:
    with _spare_lock:
        for i, (n, region, start) in enumerate(_spare):
            if n == size:
                del _spare[i]
                return region, start
    return _huge_aligned(size)


def _give_back(size: int, region: mmap.mmap, start: int) -> None:
    with _spare_lock:
        if len(_spare) < _SPARE:
            _spare.append((size, region, start))


class _Staged(_Sink):
    """The sink of a DirectUpload: the caller receives into space() and reports filled(n).

    Bytes are hashed as they arrive and written a whole buffer at a time, with O_DIRECT when the
    filesystem allows. Going through the page cache costs far more (measured on the 2-core VM:
    buffered writes of fresh pages 0.3-2.3 CPU-s per GiB, O_DIRECT ~0.1; without lfs.fsync a
    1 GiB upload went from 3.5 CPU-s and 52 MiB/s buffered to ~1 CPU-s and ~300 MiB/s, since
    buffered writers get throttled once dirty memory piles up), and with lfs.fsync the bytes
    must reach the disk before the upload is acknowledged anyway: the final fsync then has only
    the metadata, the last partial block and the device cache to flush. The price: a download
    right after the upload reads the disk instead of the page cache.

    An O_DIRECT write waits for the device (about as long as receiving and hashing the same
    bytes here), and hashing costs about three times what receiving does, so with a `pool` each
    full buffer is hashed there (one buffer after the other, in order) and written there at the
    same time (pwrite at its offset), while the caller receives into the next one: _STAGES
    buffers in rotation, the caller waiting only when the buffer it needs next is still being
    hashed or written. Without a pool (or O_DIRECT) one buffer, hashed as it fills and written
    when full by the caller. A failed write is raised in the caller at the next hand-off (or by
    drain()); nothing is closed while a write may still run (drain(), abandon()), and the last
    partial buffer is hashed and written by absorb_rest() after drain()."""

    def __init__(self, fd: int | None, max_size: int, durable: bool,
                 pool: concurrent.futures.Executor | None = None):
        super().__init__(fd, max_size, writeback=durable)
        self._direct = fd is not None and _set_direct(fd, True)
        self._pool = pool if self._direct else None
        count = _STAGES if self._pool is not None else 1
        self._region: mmap.mmap | None
        self._region, self._start = _take_region(count * _STAGE)
        self._region_size = count * _STAGE
        self._views = [memoryview(self._region)[self._start + i * _STAGE:self._start + (i + 1) * _STAGE]
                       for i in range(count)]
        # The hashing and writing of each buffer, possibly still running, by buffer index.
        self._busy: list[tuple[concurrent.futures.Future, ...]] = [()] * count
        self._hashed: concurrent.futures.Future | None = None  # the last buffer's hashing
        self._cur = 0
        self._view = self._views[0]
        self._pos = 0

    def space(self) -> memoryview:
        return self._view[self._pos:]

    def filled(self, n: int) -> None:
        self.size += n
        if self.max_size and self.size > self.max_size:
            raise TooLarge(self.max_size)
        if self._pool is None:
            self.hash.update(self._view[self._pos:self._pos + n])
        self._pos += n
        if self._pos == _STAGE:
            self._write_stage()

    def copy_in(self, data: memoryview) -> None:
        while data:
            space = self.space()
            n = min(len(space), len(data))
            space[:n] = data[:n]
            self.filled(n)
            data = data[n:]

    def _write_stage(self) -> None:
        """Hand the current buffer's bytes to disk and move on to the next buffer."""
        fd, n, offset = self.fd, self._pos, self._written
        self._pos = 0
        if fd is None or not n:
            return
        self._written += n
        view = self._view[:n]
        if self._pool is None:
            self._write_at(fd, view, offset)
            return
        if n < _STAGE:  # the last, partial buffer (absorb_rest, after drain)
            self.hash.update(view)
            self._write_at(fd, view, offset)
            return
        self._hashed = self._pool.submit(self._hash_after, self._hashed, view)
        self._busy[self._cur] = (self._hashed,)  # tracked before anything else can fail
        self._busy[self._cur] += (self._pool.submit(self._write_at, fd, view, offset),)
        for jobs in self._busy:
            for job in jobs:
                if job.done() and job.exception() is not None:
                    raise job.exception()  # type: ignore[misc]  # fail fast (ENOSPC...)
        self._cur = (self._cur + 1) % len(self._views)
        self._view = self._views[self._cur]
        jobs, self._busy[self._cur] = self._busy[self._cur], ()
        for job in jobs:
            job.result()  # that buffer must be hashed and written before it is received into again

    def _hash_after(self, previous: concurrent.futures.Future | None, view: memoryview) -> None:
        """In a pool thread: hash `view` once the buffer before it is hashed (the order matters;
        that job was queued first, so it is already running or done)."""
        if previous is not None:
            previous.result()
        self.hash.update(view)

    def _write_at(self, fd: int, view: memoryview, offset: int) -> None:
        """Write `view` at `offset` (in the caller's thread or a writer's)."""
        while view:
            direct = self._direct
            if direct and len(view) % _ALIGN:
                direct = self._direct = not _set_direct(fd, False)  # not whole blocks (a tail)
            try:
                done = os.pwrite(fd, view, offset)
            except OSError as exc:
                if not direct or exc.errno != errno.EINVAL:
                    raise
                self._direct = not _set_direct(fd, False)  # refused after all: go buffered
                continue
            view = view[done:]
            offset += done
            if view and self._direct:
                self._direct = not _set_direct(fd, False)  # a short write leaves us unaligned
        if not self._direct and self._writeback and self._written - self._flushed >= _WRITEBACK_EVERY:
            _sync_file_range(fd, self._flushed, self._written - self._flushed, _SYNC_FILE_RANGE_WRITE)
            self._flushed = self._written

    def _writes(self) -> list[concurrent.futures.Future]:
        busy = [job for jobs in self._busy for job in jobs]
        self._busy = [()] * len(self._views)
        self._hashed = None
        return busy

    async def drain(self) -> None:
        """Wait for the hashing and writes on their way; re-raise the first error they met."""
        self._inflight = self._inflight + self._writes()
        await self._wait_inflight()

    async def abandon(self) -> None:
        self._inflight = self._inflight + self._writes()
        await super().abandon()

    def absorb_rest(self) -> None:
        """After drain(): hash and write the last, partial buffer."""
        assert not any(self._busy), "drain() first"
        self._write_stage()

    def release(self) -> None:
        region, self._region = self._region, None
        if region is not None:
            assert not any(self._busy), "drain() or abandon() first"
            self._views = []
            _give_back(self._region_size, region, self._start)


class _DirectPut(DirectUpload):
    """LocalBlobStore.direct_upload(): the temp file written straight from the caller's thread."""

    def __init__(self, store: LocalBlobStore, oid: str, sink: _Staged, tmp: Path | None):
        self._store, self._oid, self._sink, self._tmp = store, oid, sink, tmp
        self._ended = False

    def buffer(self) -> memoryview:
        return self._sink.space()

    def filled(self, n: int) -> None:
        try:
            self._sink.filled(n)
        except OSError as exc:
            raise _storage_error(exc, self._oid)

    def write(self, data: memoryview) -> None:
        try:
            self._sink.copy_in(data)
        except OSError as exc:
            raise _storage_error(exc, self._oid)

    async def finish(self) -> PutResult:
        assert not self._ended
        sink, oid = self._sink, self._oid
        try:
            await sink.drain()  # the last full buffers' writes (on error abort() cleans up)
        except OSError as exc:
            raise _storage_error(exc, oid)
        self._ended = True
        if sink.fd is None or self._tmp is None:
            # Already stored and sound: only checked against the client's content.
            sink.release()
            digest = sink.hash.hexdigest()
            if digest != oid:
                raise HashMismatch(oid, digest, sink.size)
            return PutResult(created=False, size=sink.size)
        try:
            # The sync-pool job owns the temp file from here, even if this task is cancelled.
            created = await asyncio.get_running_loop().run_in_executor(
                self._store._sync_pool, self._store._complete, sink, oid, sink.fd, self._tmp)
        except OSError as exc:
            raise _storage_error(exc, oid)
        return PutResult(created=created, size=sink.size)

    async def abort(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._sink.fd is not None and self._tmp is not None:
            # Runs to its end even if this task is cancelled: no write may outlive the file.
            await asyncio.shield(_discard(self._sink, self._sink.fd, self._tmp))
        else:
            self._sink.release()


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path | str, *, durable: bool = True):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        # Objects garbage collection has taken out of place while it re-checks their references
        # (delete_unless); anything left here by a crash is put back at the next open().
        self.gc_pending = self.root / "gc-pending"
        # Corrupt objects `lfsserve verify` moved out of service, as <oid>.<UTC timestamp>.
        self.quarantine_dir = self.root / "quarantine"
        self._objects_str = str(self.objects)
        # fsync objects and directories before an upload is acknowledged (lfs.fsync).
        self.durable = durable
        self._stamps = SqliteDb(self.root / "verified.sqlite3", _STAMPS_SCHEMA, durable=False, name="stamps")
        # Installing an upload waits on fsync, which costs no CPU but can take milliseconds: it gets
        # its own threads, so that concurrent uploads wait on the disk together (the journal
        # commits their fsyncs as a group) without starving the shared executor's hashing.
        # Large uploads (direct_upload) hash and write their buffers here too: jobs that must
        # not be cancelled at shutdown while the upload still owns its file (unlike the shared
        # executor's queued ones); a hashing job waits only for one queued before it, so the
        # pool's threads cannot all wait on jobs still queued.
        self._sync_pool: concurrent.futures.ThreadPoolExecutor | None = None

    def path(self, oid: str) -> Path:
        _check_oid(oid)
        return self.objects / oid[0:2] / oid[2:4] / oid

    def _fspath(self, oid: str) -> str:
        """path() as a string, for hot loops (pathlib objects cost microseconds each)."""
        return f"{self._objects_str}/{oid[0:2]}/{oid[2:4]}/{oid}"

    # -- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        self._sync_pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="lfsserve-fsync")
        await run_blocking(self._prepare)
        await self._stamps.astart()
        removed = await run_blocking(self.clean_temps)
        if removed:
            log.info("removed %d abandoned upload(s) from %s", removed, self.tmp)

    async def close(self) -> None:
        await self._stamps.astop()
        if self._sync_pool is not None:
            pool, self._sync_pool = self._sync_pool, None
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)

    def _prepare(self) -> None:
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.gc_pending.mkdir(parents=True, exist_ok=True)
        self._restore_gc_pending()

    def _restore_gc_pending(self) -> None:
        """Put back objects a garbage collection took aside and did not finish with (a crash)."""
        for entry in os.scandir(self.gc_pending):
            oid = entry.name.split(".", 1)[0]
            if not is_oid(oid):
                continue
            final = self._fspath(oid)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            try:
                os.rename(entry.path, final)  # same bytes if an upload re-created it meanwhile
                log.info("restored object %s left aside by an interrupted garbage collection", oid)
            except FileNotFoundError:
                pass

    def clean_temps(self) -> int:
        """Delete temp files no upload holds a lock on (left by a crash or a killed process)."""
        removed = 0
        for entry in os.scandir(self.tmp):
            try:
                fd = os.open(entry.path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # an upload in progress (maybe in another process)
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        return removed

    # -- stamps --------------------------------------------------------------------------------
    @staticmethod
    def _stamps_query(oids: list[str]):
        def q(conn: sqlite3.Connection) -> dict[str, tuple[tuple[int, int, int, int], bool]]:
            rows = select_in(conn, "SELECT oid, size, ino, mtime_ns, ctime_ns, ok FROM verified WHERE oid IN ({})",
                             oids)
            return {oid: ((size, ino, mtime, ctime), bool(ok)) for oid, size, ino, mtime, ctime, ok in rows}
        return q

    def _lookup(self, oids: list[str]):
        """(stat results, remembered stamps) for `oids`, in one worker-thread job."""
        stats = self._stat_many(oids)
        stamps = self._stamps.read_here(self._stamps_query(list(stats))) if stats else {}
        return stats, stamps

    def _lookup_on(self, oids: list[str]):
        """_lookup() as a job for the stamps database's own thread.

        states() runs here rather than in the shared executor: each stat() and each row
        releases and retakes the GIL, and with many batch requests at once several executor
        threads doing that starve the event loop (measured: p99 of 64 concurrent batches of 100
        went from ~240 ms to ~130 ms). One thread serialises the lookups instead.
        """
        def job(conn: sqlite3.Connection):
            stats = self._stat_many(oids)
            return stats, (self._stamps_query(list(stats))(conn) if stats else {})
        return job

    @staticmethod
    def _stamp_writer(oid: str, stamp: tuple[int, int, int, int], ok: bool):
        def w(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO verified VALUES (?,?,?,?,?,?)", (oid, *stamp, int(ok)))
        return w

    async def _record(self, oid: str, stamp: tuple[int, int, int, int], ok: bool) -> None:
        try:
            await self._stamps.write(self._stamp_writer(oid, stamp, ok))
        except sqlite3.Error as exc:  # only a cache: the object will be re-hashed next time
            log.warning("could not record verification of %s: %s", oid, exc)

    # -- state ---------------------------------------------------------------------------------
    def _stat_many(self, oids: list[str]) -> dict[str, os.stat_result]:
        out = {}
        path = self._fspath
        for oid in oids:  # validated by the caller
            try:
                st = os.stat(path(oid))
            except FileNotFoundError:
                continue
            if stat_mod.S_ISREG(st.st_mode):
                out[oid] = st
        return out

    def _hash_file(self, oid: str) -> tuple[str, os.stat_result] | None:
        """(sha256 hex, stat before hashing) or None if the file vanished or changed meanwhile."""
        try:
            fd = os.open(self.path(oid), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            before = os.fstat(fd)
            h = hashlib.sha256()
            while True:
                data = os.read(fd, CHUNK)
                if not data:
                    break
                h.update(data)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        if _stamp(before) != _stamp(after):
            return None
        return h.hexdigest(), before

    async def _rehash(self, oid: str) -> ObjectState:
        res = await run_blocking(self._hash_file, oid)
        if res is None:
            return MISSING if not await run_blocking(self.path(oid).exists) else ObjectState(Status.UNVERIFIED)
        digest, st = res
        ok = digest == oid
        await self._record(oid, _stamp(st), ok)
        if not ok:
            log.error("LFS object %s is corrupt: its content hashes to %s", oid, digest)
        return ObjectState(Status.OK if ok else Status.CORRUPT, st.st_size)

    async def states(self, oids: Collection[str], *, rehash_budget: int = 0) -> dict[str, ObjectState]:
        unique = list(dict.fromkeys(oids))
        for oid in unique:
            _check_oid(oid)
        stats, stamps = await self._stamps.read(self._lookup_on(unique))
        out = {oid: _classify(stats.get(oid), stamps.get(oid)) for oid in unique}
        budget = rehash_budget
        if budget:
            for oid, state in out.items():
                if state.status is Status.UNVERIFIED and state.size <= budget:
                    budget -= state.size
                    out[oid] = await self._rehash(oid)
        return out

    async def verify(self, oid: str) -> ObjectState:
        _check_oid(oid)
        return await self._rehash(oid)

    # -- writing -------------------------------------------------------------------------------
    def _open_temp(self, oid: str) -> tuple[int, Path]:
        path = self.tmp / f"{oid}.{secrets.token_hex(8)}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, path

    def _ensure_dir(self, path: Path) -> None:
        """mkdir -p, fsync'ing the parent of every directory created so the new entries last."""
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            if self.durable:
                _fsync_dir(d.parent)

    def _install(self, oid: str, fd: int, tmp: Path, on_verified: Callable[[], None] | None = None) -> bool:
        """Make the verified temp file the object. False when an intact copy got there first.

        The content is on disk before its name is, and the name before the upload is
        acknowledged. (Linking first and syncing after was measured: ext4 still commits its
        journal once per fsync, so nothing is saved by the weaker order.) New shard directories
        are made first: they expose nothing, and on a journalling filesystem the content's
        fsync then commits them too, so their own fsyncs find nothing left to do (one journal
        commit less for most small uploads, which mostly land in a new shard).
        """
        final = self.path(oid)
        if not os.path.isdir(os.path.dirname(final)):  # (pathlib's exists() costs more per upload)
            self._ensure_dir(final.parent)
        if self.durable:
            os.fsync(fd)
        os.fchmod(fd, 0o444)
        try:
            os.link(tmp, final)
        except FileExistsError:
            # A concurrent upload finished first, or a damaged copy is in place: keep a good one.
            res = self._hash_file(oid)
            if res is not None and res[0] == oid:
                return False
            os.replace(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            os.replace(tmp, final)  # no hard links here: rename (may replace a concurrent copy: same bytes)
        if on_verified is not None:
            on_verified()  # the caller's commit and the sync below wait on the disk together
        if self.durable:
            _fsync_dir(final.parent)
        return True

    def _begin(self, oid: str) -> tuple[ObjectState, int | None, Path | None]:
        """First step of an upload, in a worker thread: the object's state and, unless it is
        already stored and sound, a locked temp file to receive it."""
        stats, stamps = self._lookup([oid])
        state = _classify(stats.get(oid), stamps.get(oid))
        if state.status is Status.OK:
            return state, None, None
        fd, tmp = self._open_temp(oid)
        return state, fd, tmp

    def _complete(self, sink: _Sink, oid: str, fd: int, tmp: Path,
                  on_verified: Callable[[], None] | None = None) -> bool:
        """Last step of an upload, in a sync-pool thread: hash and write what is left, check the
        oid, install, remember it as verified; the temp file is closed and removed in any case."""
        try:
            sink.absorb_rest()
            digest = sink.hash.hexdigest()
            if digest != oid:
                raise HashMismatch(oid, digest, sink.size)
            created = self._install(oid, fd, tmp, on_verified)
        finally:
            _close_and_unlink(fd, tmp)
            sink.release()
        if created:
            self._stamp_new(oid)
        return created

    def _stamp_new(self, oid: str) -> None:
        """Remember a just-installed upload as verified (in its job, after the temp file's
        name is gone: unlinking it changes the file's ctime)."""
        if self.durable:
            # Without fsync a crash could leave the blocks unwritten under unchanged metadata,
            # so a non-durable store leaves new objects unverified until first checked.
            # Committed from this thread (the stamps database does not fsync its commits):
            # cheaper than waking the stamps thread, and a lookup made after this upload is
            # acknowledged finds the stamp.
            stamp = _stamp(os.stat(self._fspath(oid)))
            try:
                self._stamps.write_here(self._stamp_writer(oid, stamp, True))
            except sqlite3.Error as exc:  # only a cache: the object gets re-hashed later
                log.warning("could not record verification of %s: %s", oid, exc)

    async def direct_upload(self, oid: str, *, max_size: int = 0) -> DirectUpload:
        _check_oid(oid)
        try:
            _current, fd, tmp = await run_blocking(self._begin, oid)
        except OSError as exc:
            raise _storage_error(exc, oid)
        return _DirectPut(self, oid, _Staged(fd, max_size, self.durable, self._sync_pool), tmp)

    def _put_whole(self, oid: str, data: bytes, max_size: int, on_verified: Callable[[], None] | None) -> PutResult:
        """put_bytes() in one sync-pool job: look up, hash, write, sync and install together."""
        if max_size and len(data) > max_size:
            raise TooLarge(max_size)
        # Checked before anything is looked up or written: a wrong body costs no file.
        digest = hashlib.sha256(data).hexdigest()
        if digest != oid:
            raise HashMismatch(oid, digest, len(data))
        stats, stamps = self._lookup([oid])
        if _classify(stats.get(oid), stamps.get(oid)).status is Status.OK:
            return PutResult(created=False, size=len(data))  # already stored and sound
        fd, tmp = self._open_temp(oid)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            created = self._install(oid, fd, tmp, on_verified)
        finally:
            _close_and_unlink(fd, tmp)
        if created:
            self._stamp_new(oid)
        return PutResult(created=created, size=len(data))

    async def put_bytes(self, oid: str, data: bytes, *, max_size: int = 0,
                        on_verified: Callable[[], None] | None = None) -> PutResult:
        _check_oid(oid)
        try:
            # One thread hop for the whole upload; the job cleans up after itself if this task
            # is cancelled meanwhile (_complete removes the temp file in any case).
            return await asyncio.get_running_loop().run_in_executor(
                self._sync_pool, self._put_whole, oid, data, max_size, on_verified)
        except OSError as exc:
            raise _storage_error(exc, oid)

    async def put(self, oid: str, chunks: AsyncIterator[bytes], *, max_size: int = 0) -> PutResult:
        _check_oid(oid)
        try:
            _current, fd, tmp = await run_blocking(self._begin, oid)
        except OSError as exc:
            raise _storage_error(exc, oid)
        if fd is None or tmp is None:
            # Already stored and sound: check the client really has the content (it may be
            # claiming it to gain access), without writing it again.
            sink = _Sink(None, max_size)
            try:
                async for chunk in chunks:
                    await sink.feed(chunk)
                digest = await sink.finish()
            except BaseException:
                await sink.abandon()
                raise
            if digest != oid:
                raise HashMismatch(oid, digest, sink.size)
            return PutResult(created=False, size=sink.size)

        sink = _Sink(fd, max_size, writeback=self.durable)
        handed_over = False
        try:
            try:
                async for chunk in chunks:
                    await sink.feed(chunk)
                await sink.drain()
            except OSError as exc:
                raise _storage_error(exc, oid)
            # From here the sync-pool job owns the temp file, even if this task is cancelled.
            handed_over = True
            try:
                created = await asyncio.get_running_loop().run_in_executor(
                    self._sync_pool, self._complete, sink, oid, fd, tmp)
            except OSError as exc:
                raise _storage_error(exc, oid)
        finally:
            if not handed_over:
                # Runs to completion even if this task is cancelled (client gone): let the chunk
                # in flight finish with the fd, then close and unlink off the loop.
                await asyncio.shield(asyncio.ensure_future(_discard(sink, fd, tmp)))
        return PutResult(created=created, size=sink.size)

    # -- reading -------------------------------------------------------------------------------
    def _get_on(self, oid: str, inline: int, visible: Callable[[], bool] | None = None):
        """A job for the stamps thread: the object's state and, if it is verified and at most
        `inline` bytes, its content (one hop for a small download); None when `visible()` says
        the caller may not see it (asked first: nothing else is looked at then)."""
        def job(conn: sqlite3.Connection) -> tuple[ObjectState, bytes | None] | None:
            if visible is not None and not visible():
                return None
            stats = self._stat_many([oid])
            stamps = self._stamps_query(list(stats))(conn) if stats else {}
            state = _classify(stats.get(oid), stamps.get(oid))
            if state.status is not Status.OK or state.size > inline:
                return state, None
            try:
                fd = os.open(self._fspath(oid), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return MISSING, None
            try:
                data = os.read(fd, state.size + 1)
                # The content read is the verified one only if the file is still the one stamped.
                same = _stamp(os.fstat(fd)) == _stamp(stats[oid]) and len(data) == state.size
            finally:
                os.close(fd)
            return state, (data if same else None)
        return job

    async def get(self, oid: str, *, inline: int = 0) -> BlobHandle:
        _check_oid(oid)
        found = await self._stamps.read(self._get_on(oid, inline))
        assert found is not None  # no visibility check asked
        return self._handle(oid, *found)

    async def get_visible(self, oid: str, visible: Callable[[], bool], *, inline: int = 0) -> BlobHandle | None:
        _check_oid(oid)
        found = await self._stamps.read(self._get_on(oid, inline, visible))
        return None if found is None else self._handle(oid, *found)

    def _handle(self, oid: str, state: ObjectState, data: bytes | None) -> BlobHandle:
        if state.status is Status.MISSING:
            raise ObjectMissing(f"object {oid} does not exist")
        if state.status is Status.CORRUPT:
            raise CorruptObject(f"object {oid} is corrupt")
        ok = state.status is Status.OK
        return BlobHandle(oid, state.size, ok, Path(self._fspath(oid)) if ok else None, data=data)  # oid checked

    async def read(self, handle: BlobHandle, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        oid = handle.oid
        end = handle.size if end is None else min(end, handle.size)
        whole = start == 0 and end == handle.size
        check = not handle.verified
        if check and not whole:
            # A part cannot be checked on its own: check everything first.
            state = await self._rehash(oid)
            if state.status is Status.CORRUPT:
                raise CorruptObject(f"object {oid} is corrupt")
            if state.status is not Status.OK:
                raise ObjectMissing(f"object {oid} changed while being read; try again")
            check = False
        try:
            fd = await run_blocking(os.open, self.path(oid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectMissing(f"object {oid} does not exist")
        try:
            st = await run_blocking(os.fstat, fd)
            if st.st_size != handle.size:
                raise ObjectMissing(f"object {oid} changed while being read; try again")
            h = hashlib.sha256() if check else None

            def chunk_at(pos: int, n: int) -> bytes:
                data = os.pread(fd, n, pos)
                if h is not None:
                    h.update(data)
                return data

            pos = start
            held: bytes | None = None
            while pos < end:
                data = await run_blocking(chunk_at, pos, min(CHUNK, end - pos))
                if not data:
                    raise CorruptObject(f"object {oid} is shorter than its recorded size")
                pos += len(data)
                if held is not None:
                    yield held
                held = data
            if h is not None:
                ok = h.hexdigest() == oid
                await self._record(oid, _stamp(st), ok)
                if not ok:
                    log.error("LFS object %s is corrupt (found while sending it)", oid)
                    raise CorruptObject(f"object {oid} is corrupt")
            if held is not None:
                yield held
        finally:
            await asyncio.shield(run_blocking(os.close, fd))

    # -- maintenance ---------------------------------------------------------------------------
    async def delete(self, oid: str) -> bool:
        path = self.path(oid)

        def rm() -> bool:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            return True

        removed = await run_blocking(rm)
        await self._forget_stamp(oid)
        return removed

    async def _forget_stamp(self, oid: str) -> None:
        def forget(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM verified WHERE oid = ?", (oid,))
        await self._stamps.write(forget)

    async def delete_unless(self, oid: str, keep) -> bool:
        final = self._fspath(oid)
        aside = f"{self.gc_pending}/{oid}.{os.getpid()}.{secrets.token_hex(4)}"

        def take_aside() -> bool:
            try:
                os.rename(final, aside)
            except FileNotFoundError:
                return False
            return True

        if not await run_blocking(take_aside):
            return False
        try:
            kept = await keep()
        except BaseException:
            await run_blocking(os.rename, aside, final)
            raise
        if kept:
            await run_blocking(os.rename, aside, final)
            return False
        await run_blocking(os.unlink, aside)
        await self._forget_stamp(oid)
        return True

    async def quarantine(self, oid: str) -> str:
        source = self.path(oid)
        target = self.quarantine_dir / f"{oid}.{time.strftime('%Y%m%dT%H%M%S')}"

        def move() -> None:
            self.quarantine_dir.mkdir(exist_ok=True)
            try:
                os.rename(source, target)
            except FileNotFoundError:
                raise ObjectMissing(f"object {oid} is not stored") from None

        await run_blocking(move)
        await self._forget_stamp(oid)
        return str(target)

    def _list_shard(self, shard: str) -> list[tuple[str, int, float]]:
        out = []
        for sub in os.scandir(self.objects / shard):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                if is_oid(entry.name) and entry.name.startswith(shard + sub.name):
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat_mod.S_ISREG(st.st_mode):
                        out.append((entry.name, st.st_size, st.st_mtime))
        return out

    async def list(self) -> AsyncIterator[tuple[str, int, float]]:
        shards = await run_blocking(
            lambda: sorted(e.name for e in os.scandir(self.objects)
                           if len(e.name) == 2 and e.is_dir(follow_symlinks=False)))
        for shard in shards:
            for item in await run_blocking(self._list_shard, shard):
                yield item


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _discard(sink: _Sink, fd: int, tmp: Path) -> None:
    await sink.abandon()
    await run_blocking(_close_and_unlink, fd, tmp)
    sink.release()


def _close_and_unlink(fd: int, path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)
