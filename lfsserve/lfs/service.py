"""LfsService: the blob store seen through namespaces, shared by the LFS front end, the hg push
path (which must accept only pointers to blobs the server has) and operations (gc, verify, metrics).

It is the one door to LFS storage: uploads, downloads, the batch API's states and actions (its
transfer adapter), pushed pointers, verification, quarantine and gc all go through it, so a new
backend (`[storage] backend`, built by blobstore.open_store) or a new rule changes one place.
Its public methods are the whole interface the other front ends use; each says what it promises.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field

from ..auth import Authenticator, Permission, Principal
from ..blobstore import (
    BlobHandle,
    BlobStore,
    CorruptObject,
    DirectUpload,
    ObjectMissing,
    ObjectState,
    PutResult,
    Status,
    UploadRaced,
    get_if_visible,
    is_oid,
    open_store,
)
from ..config import Config
from ..pgdb import PgDb
from ..sqlitedb import SqliteDb
from . import locks, namespaces
from .adapters import TransferAdapter, open_adapter
from .locks import Lock, LockExists, LockStore, PgLockStore, SqliteLockStore
from .namespaces import NamespaceIndex, PgNamespaceIndex, SqliteNamespaceIndex

# Lock and LockExists are what LfsService.locks hands out and raises, for front ends (ssh/) that
# reach LFS storage through this module only.
__all__ = ["PG_MIGRATIONS", "GcReport", "LfsService", "LfsStats", "Lock", "LockExists", "VerifyFailed",
           "VerifyReport"]

log = logging.getLogger(__name__)

# The PostgreSQL schema, one migration per entry, applied in order once each (pgdb.PgDb). Append
# new entries; never edit one that has shipped.
PG_MIGRATIONS = [namespaces.PG_SCHEMA + locks.PG_SCHEMA]


@dataclass
class LfsStats:
    """Counters since start-up (the ops front end exports them as metrics)."""

    batch_requests: int = 0
    batch_objects: int = 0
    uploads: int = 0              # PUTs that stored or confirmed an object
    uploads_rejected: int = 0     # content did not match its oid, too large, interrupted
    upload_bytes: int = 0
    downloads: int = 0
    download_bytes: int = 0       # bytes handed to clients (sendfile or streamed)
    corrupt_detected: int = 0     # objects found not to match their oid
    pushed_pointers_accepted: int = 0
    pushed_pointers_refused: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)


@dataclass
class GcReport:
    deleted: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    kept: int = 0


class VerifyFailed(Exception):
    """A verify action that fails: `status` (404 or 422, as the Git LFS API answers) and why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class LfsService:
    def __init__(self, config: Config, auth: Authenticator, store: BlobStore, db: SqliteDb | PgDb):
        self.config = config
        self.auth = auth
        self.store = store
        self.db = db
        self.namespaces: NamespaceIndex
        self.locks: LockStore
        # A small upload's grant committed by the worker job that stores the object, when that
        # commit costs no fsync (SQLite without lfs.fsync): no hop to the database thread.
        self._grant_here: Callable[[str, Collection[str]], None] | None = None
        if isinstance(db, PgDb):
            self.namespaces, self.locks = PgNamespaceIndex(db), PgLockStore(db)
        else:
            index = SqliteNamespaceIndex(db)
            self.namespaces, self.locks = index, SqliteLockStore(db)
            if not db.durable:
                self._grant_here = index.grant_here
        self.stats = LfsStats()
        # Where batch answers send clients to transfer objects: chosen with the backend.
        self.transfer: TransferAdapter = open_adapter(config, auth, store)
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def create(cls, config: Config, auth: Authenticator, store: BlobStore | None = None) -> LfsService:
        store = store or open_store(config)
        if config.database.url:
            # Shared by every instance using this database. Migrations only ever get appended.
            return cls(config, auth, store, PgDb(config.database.url, PG_MIGRATIONS, name="lfs-meta"))
        root = config.lfs_dir
        # With lfs.fsync the visibility grants and locks are as durable as the objects: an
        # acknowledged upload is still visible to its repository after a power loss. (SqliteDb
        # commits concurrent writes together, so one fsync covers a burst of uploads.) Without
        # it a power loss may drop the latest grants, which fails closed: the object is hidden
        # from that repository until uploaded again. A process crash loses nothing either way.
        db = SqliteDb(root / "meta.sqlite3", namespaces.SCHEMA + locks.SCHEMA, durable=config.lfs.fsync,
                      name="lfs-meta")
        return cls(config, auth, store, db)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.store.open()
        try:
            await self.db.astart()
        except BaseException:  # e.g. the shared database is unreachable: nothing stays open
            await self.store.close()
            raise

    async def stop(self) -> None:
        await self.db.astop()
        await self.store.close()

    # -- uploads -------------------------------------------------------------------------------
    async def receive(self, namespace: str, oid: str, chunks: AsyncIterator[bytes]) -> PutResult:
        """Store an uploaded object and make it visible in `namespace` (the upload proved the
        client has the content, so no object is leaked by granting it)."""
        try:
            result = await self.store.put(oid, chunks, max_size=self.config.lfs.max_object_size)
        except BaseException:
            self.stats.uploads_rejected += 1
            raise
        return await self._granted(namespace, oid, result)

    async def receive_bytes(self, namespace: str, oid: str, data: bytes) -> PutResult:
        """receive() of a body already received whole (a small upload: one worker job).

        The grant is committed while the store syncs the object's name (both wait on the disk
        at once): it is only started once the content is checked and in place, so it never
        exposes content the client did not prove it has; a crash before the name is synced
        leaves a grant without an object, which reads as missing (the upload was not
        acknowledged, and is repeated). Without lfs.fsync (SQLite commits that do not fsync) the
        store's job commits the grant itself, sparing two thread wake-ups per upload."""
        # The grant's future, or None once it is committed here; empty if never started.
        granting: list[concurrent.futures.Future | None] = []
        grant_here = self._grant_here

        def verified() -> None:  # in the store's thread
            if grant_here is not None:
                grant_here(namespace, [oid])  # an error fails the upload, as a failed future does
                granting.append(None)
            else:
                granting.append(self.namespaces.grant_nowait(namespace, [oid]))

        try:
            result = await self.store.put_bytes(oid, data, max_size=self.config.lfs.max_object_size,
                                                on_verified=verified)
        except BaseException:
            self.stats.uploads_rejected += 1
            if granting and granting[0] is not None:
                await asyncio.wait([asyncio.wrap_future(granting[0])])
            raise
        if not granting:
            return await self._granted(namespace, oid, result)
        pending = granting[0]  # None: already committed by the store's job
        if pending is not None and pending.done():
            pending.result()  # committed while the store synced (raises what the commit raised)
        elif pending is not None:
            await asyncio.wrap_future(pending)
        self.stats.uploads += 1
        self.stats.upload_bytes += result.size
        return result

    async def open_upload(self, oid: str) -> DirectUpload | None:
        """An upload a front end feeds from one worker thread (large bodies read straight from
        the socket), or None when the backend has no such path; end it with complete_upload()."""
        return await self.store.direct_upload(oid, max_size=self.config.lfs.max_object_size)

    async def complete_upload(self, namespace: str, oid: str, upload: DirectUpload) -> PutResult:
        """Finish an open_upload() whose whole body was written: checked, stored and granted as
        by receive(); on any error nothing is left behind."""
        try:
            result = await upload.finish()
        except BaseException:
            await self.upload_failed(upload)
            raise
        return await self._granted(namespace, oid, result)

    async def upload_failed(self, upload: DirectUpload) -> None:
        """Drop an open_upload() that could not be completed."""
        self.stats.uploads_rejected += 1
        await upload.abort()

    async def _granted(self, namespace: str, oid: str, result: PutResult) -> PutResult:
        await self.namespaces.grant(namespace, [oid])
        if (not result.created or self.store.recheck_after_grant) and not (await self.store.state(oid)).present:
            # put() found the object already stored and only checked the upload against it; an
            # `lfsserve gc` in another process may have deleted that unreferenced copy before
            # the grant above made it referenced. gc checks references before deleting, so
            # checking existence after granting closes the race.
            self.stats.uploads_rejected += 1
            raise UploadRaced(f"object {oid} was garbage-collected while this upload was checked; upload it again")
        self.stats.uploads += 1
        self.stats.upload_bytes += result.size
        return result

    # -- downloads -----------------------------------------------------------------------------
    async def open_download(self, namespace: str, oid: str, *, whole: bool, inline: int = 0) -> BlobHandle:
        """A handle on object `oid` as repository `namespace` sees it, ready to be sent (with
        its content in `data` when it is verified and at most `inline` bytes).

        Raises ObjectMissing when it is not visible there (or not stored), CorruptObject when it
        is known or found to be corrupt. A whole read verifies an object that changed on disk as
        it streams (read()); for a part of one, or only its headers (`whole` false), that is
        impossible, so it is re-hashed first."""
        got = await self._get_visible(namespace, oid, inline)
        if got is None:
            if not await self._promote(namespace, [oid]):
                raise ObjectMissing("The object does not exist")
            got = await self.store.get(oid, inline=inline)  # installed just now: look again
        handle = got
        if not handle.verified and not whole:
            state = await self.store.verify(oid)
            if state.status is Status.CORRUPT:
                self.stats.corrupt_detected += 1
                raise CorruptObject("The object is corrupt")
            handle = await self.store.get(oid)
        return handle

    async def _get_visible(self, namespace: str, oid: str, inline: int) -> BlobHandle | None:
        """store.get() of `oid` if it is visible in `namespace`, else None (whatever is stored)."""
        if isinstance(self.namespaces, SqliteNamespaceIndex):
            # Visibility and the object looked up in one worker job (the store's).
            return await self.store.get_visible(
                oid, functools.partial(self.namespaces.visible_here, namespace, oid), inline=inline)
        return await get_if_visible(self.namespaces.visible(namespace, [oid]), self.store.get(oid, inline=inline))

    async def read(self, handle: BlobHandle, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes [start, end) of an opened download (BlobStore.read: an unverified object is
        verified on the way, its last chunk withheld and CorruptObject raised on a mismatch)."""
        try:
            async with contextlib.aclosing(self.store.read(handle, start, end)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except CorruptObject:
            self.stats.corrupt_detected += 1
            raise

    async def _promote(self, namespace: str, oids: list[str]) -> dict[str, ObjectState]:
        """Install the direct uploads (presigned, straight to the backend) made for `namespace`
        and never confirmed; those that matched their oid become visible there. Their states
        (only the installed ones are present)."""
        if not oids:
            return {}
        states = await self.store.promote_staged(oids, namespace)
        installed = [oid for oid, st in states.items() if st.present]
        if installed:
            await self.namespaces.grant(namespace, installed)
            self.stats.uploads += len(installed)
            self.stats.upload_bytes += sum(states[oid].size for oid in installed)
        return {oid: st for oid, st in states.items() if st.present}

    def sent(self, size: int) -> None:
        """Count a download of `size` bytes handed to a client."""
        self.stats.downloads += 1
        self.stats.download_bytes += size

    async def visible_states(self, namespace: str, oids: Iterable[str]) -> dict[str, ObjectState]:
        """The stored state of each of `oids` visible in `namespace` (the others are left out).

        Objects whose files changed on disk since last verified are re-hashed first, within
        lfs.batch_rehash_bytes. Both lookups run at once; only visible objects are re-hashed, so
        answers never depend on what another namespace stored."""
        wanted = list(dict.fromkeys(oids))
        visible, states = await asyncio.gather(self.namespaces.visible(namespace, wanted),
                                               self.store.states(wanted))
        promoted = await self._promote(namespace, [oid for oid in wanted if oid not in visible])
        states.update(promoted)
        visible = set(visible) | promoted.keys()
        states = {oid: st for oid, st in states.items() if oid in visible}
        stale = [oid for oid, st in states.items() if st.status is Status.UNVERIFIED]
        budget = self.config.lfs.batch_rehash_bytes
        if stale and budget:
            states.update(await self.store.states(stale, rehash_budget=budget))
        return states

    async def verify_uploaded(self, namespace: str, oid: str, size: int) -> None:
        """The verify action's check, for every transport: `oid` was uploaded to (or is visible
        in) `namespace`, is intact and has `size` bytes; else VerifyFailed saying which."""
        state = (await self.visible_states(namespace, [oid])).get(oid)
        if state is None or not state.present:
            raise VerifyFailed(404, f"object {oid} was not uploaded to {namespace}")
        if state.status is Status.CORRUPT:
            raise VerifyFailed(422, f"object {oid} is corrupt on the server; upload it again")
        if state.size != size:
            raise VerifyFailed(422, f"object {oid} is stored with size {state.size}, not {size}")

    # -- the hg push path ----------------------------------------------------------------------
    async def accept_pushed_pointers(self, namespace: str, oids: Iterable[str], principal: Principal) -> set[str]:
        """The oids of a push's lfs pointers that are NOT acceptable for repository `namespace`.

        Acceptable: stored and sound, and visible in `namespace` or readable by `principal`
        through some namespace it may read; those not yet visible in `namespace` become visible.
        A push therefore only exposes what the pusher could already read.
        """
        wanted = list(dict.fromkeys(oids))
        bad = {oid for oid in wanted if not is_oid(oid)}
        candidates = [oid for oid in wanted if oid not in bad]
        # Blobs hg uploaded straight to the backend (it never calls verify) are checked now.
        await self._promote(namespace, candidates)
        states = await self.store.states(candidates, rehash_budget=self.config.lfs.batch_rehash_bytes)
        present = [oid for oid in candidates if states[oid].servable]
        bad.update(oid for oid in candidates if not states[oid].servable)
        already = await self.namespaces.visible(namespace, present)
        others = [oid for oid in present if oid not in already]
        grant = []
        if others:
            where = await self.namespaces.namespaces_of(others)
            for oid in others:
                if any(self.auth.permission(principal, ns) >= Permission.READ for ns in where.get(oid, ())):
                    grant.append(oid)
                else:
                    bad.add(oid)
        await self.namespaces.grant(namespace, grant)
        self.stats.pushed_pointers_accepted += len(wanted) - len(bad)
        self.stats.pushed_pointers_refused += len(bad)
        return bad

    def accept_pushed_pointers_sync(self, namespace: str, oids: Iterable[str], principal: Principal) -> set[str]:
        """accept_pushed_pointers() from a worker thread (never from the event loop thread)."""
        return self._call_sync(self.accept_pushed_pointers(namespace, list(oids), principal))

    async def missing(self, oids: Iterable[str]) -> set[str]:
        """The oids the store does not hold intact, whatever the namespace."""
        wanted = [oid for oid in dict.fromkeys(oids)]
        bad = {oid for oid in wanted if not is_oid(oid)}
        states = await self.store.states([o for o in wanted if o not in bad])
        return bad | {oid for oid, st in states.items() if not st.servable}

    def missing_sync(self, oids: Iterable[str]) -> set[str]:
        return self._call_sync(self.missing(list(oids)))

    def _call_sync(self, coro):
        if self._loop is None:
            coro.close()
            raise RuntimeError("LfsService is not started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            coro.close()
            raise RuntimeError("a *_sync method was called on the event loop thread; await the async one")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- operations ----------------------------------------------------------------------------
    async def stored(self) -> tuple[int, int]:
        """(objects, bytes) in the store, whatever the namespace (walks the whole store)."""
        objects = size = 0
        async for _, n, _ in self.store.list():
            objects += 1
            size += n
        return objects, size

    async def namespace_usage(self, namespace: str) -> tuple[int, int]:
        """(objects, bytes) stored and visible in `namespace`."""
        states = await self.store.states(await self.namespaces.oids(namespace))
        present = [s for s in states.values() if s.present]
        return len(present), sum(s.size for s in present)

    async def verify_all(self, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Re-hash every stored object (slow: reads everything); remembers the outcomes.
        `progress(size)` is called after each object."""
        report = VerifyReport()
        async for oid, size, _ in self.store.list():
            state = await self.store.verify(oid)
            report.checked += 1
            report.bytes += size
            if progress is not None:
                progress(size)
            if state.status is Status.CORRUPT:
                report.corrupt.append(oid)
                self.stats.corrupt_detected += 1
        return report

    async def quarantine(self, oid: str) -> str:
        """Take a corrupt object out of service, its bytes kept for inspection; returns where
        they went. The oid then reads as missing, so a client that has the content can upload it
        again."""
        return await self.store.quarantine(oid)

    async def forget_namespace(self, namespace: str) -> int:
        """The repository is gone: its objects stop being visible through it (gc may then free them)."""
        removed = await self.namespaces.forget_namespace(namespace)
        await self.locks.forget_namespace(namespace)
        return removed

    async def gc(self, grace_seconds: float = 86400.0, dry_run: bool = False,
                 progress: Callable[[int], None] | None = None,
                 disregard: Collection[str] = ()) -> GcReport:
        """Delete objects no namespace can see, once older than `grace_seconds` (an upload's
        object exists a moment before its grant is recorded, so young objects are kept).
        `progress(n)` is called as objects are examined; references from the `disregard`
        namespaces do not count (a dry run of forgetting them)."""
        report = GcReport()
        cutoff = time.time() - grace_seconds
        batch: list[tuple[str, int, float]] = []

        def referenced(seen: dict, oid: str) -> bool:
            return any(ns not in disregard for ns in seen.get(oid, ()))

        async def sweep() -> None:
            seen = await self.namespaces.namespaces_of([oid for oid, _, _ in batch])
            for oid, size, mtime in batch:
                if referenced(seen, oid) or mtime > cutoff:
                    report.kept += 1
                    continue
                if not dry_run:
                    async def still_referenced(oid: str = oid) -> bool:
                        # An upload may have granted it since the check above (the server runs
                        # while gc does); asked again with the object out of place.
                        return referenced(await self.namespaces.namespaces_of([oid]), oid)

                    if not await self.store.delete_unless(oid, still_referenced):
                        report.kept += 1
                        continue
                report.deleted.append(oid)
                report.freed_bytes += size
            if progress is not None:
                progress(len(batch))
            batch.clear()

        async for item in self.store.list():
            batch.append(item)
            if len(batch) >= 500:
                await sweep()
        await sweep()
        if not dry_run:
            abandoned = await self.store.clean_abandoned(cutoff)
            if abandoned:
                log.info("removed %d abandoned upload(s) older than the grace period", abandoned)
        return report
