"""The blob store interface: content-addressed (SHA-256) objects that are never served unverified.

A backend stores immutable objects named by the SHA-256 of their content (the LFS oid). Writes
are verified while they stream in and become visible only once complete and correct. Reads of an
object whose integrity is not known (it changed since it was last checked) are verified while they
stream out: the final chunk is only released once the whole content hashed to the oid.

Backends raise the typed errors below; front ends translate them.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import (
    NamedTuple,
)

__all__ = [
    "BlobError",
    "BlobHandle",
    "BlobStore",
    "CorruptObject",
    "DirectUpload",
    "HashMismatch",
    "InvalidOid",
    "ObjectMissing",
    "ObjectState",
    "PutResult",
    "Status",
    "StorageFull",
    "StorageUnavailable",
    "TooLarge",
    "UploadRaced",
    "get_if_visible",
    "is_oid",
]

_OID = re.compile(r"[0-9a-f]{64}\Z")


def is_oid(value: object) -> bool:
    """Whether `value` is an LFS object id: 64 lowercase hex digits (a SHA-256)."""
    return isinstance(value, str) and _OID.match(value) is not None


class BlobError(Exception):
    """Base of the blob store's errors; `message` is fit to show a client."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidOid(BlobError):
    pass


class ObjectMissing(BlobError):
    pass


class CorruptObject(BlobError):
    """The stored content no longer hashes to its oid."""


class HashMismatch(BlobError):
    """An upload's content does not hash to the oid it was sent for; nothing was stored."""

    def __init__(self, oid: str, actual: str, size: int):
        super().__init__(f"content does not match oid {oid}: its SHA-256 is {actual} ({size} bytes)")
        self.oid, self.actual, self.size = oid, actual, size


class TooLarge(BlobError):
    def __init__(self, limit: int):
        super().__init__(f"object larger than this server's limit of {limit} bytes")
        self.limit = limit


class StorageFull(BlobError):
    """The backend ran out of space (or quota)."""


class StorageUnavailable(BlobError):
    """The backend cannot be reached or answers with a server error (S3 down, overloaded or
    slow); nothing was stored or served partially, and the same request may succeed later."""

    def __init__(self, message: str, retry_after: int = 10):
        super().__init__(message)
        self.retry_after = retry_after


class UploadRaced(BlobError):
    """The stored copy an upload was checked against was garbage-collected before the upload
    could reference it; the client should upload again (nothing was lost: it still has it)."""


class Status(enum.Enum):
    MISSING = "missing"
    OK = "ok"                  # verified against its oid and unchanged since
    UNVERIFIED = "unverified"  # present, changed since last checked, not re-hashed yet
    CORRUPT = "corrupt"        # present, but its content does not hash to its oid


class ObjectState(NamedTuple):  # a tuple: batch answers build hundreds of these
    status: Status
    size: int = 0

    @property
    def present(self) -> bool:
        return self.status is not Status.MISSING

    @property
    def servable(self) -> bool:
        """May be handed to a client (UNVERIFIED objects are checked while they stream)."""
        return self.status in (Status.OK, Status.UNVERIFIED)


MISSING = ObjectState(Status.MISSING)


@dataclass(frozen=True)
class PutResult:
    created: bool  # False: the object was already stored (the upload was verified, not stored again)
    size: int


@dataclass(frozen=True)
class BlobHandle:
    """An object ready to be read: its size, and whether its content is known to be good."""

    oid: str
    size: int
    verified: bool
    # A local file with exactly this content that may be handed to the kernel (sendfile), only
    # when `verified`. None for remote backends, or when the content must be checked on the way.
    path: Path | None = None
    # The backend's version of the object this handle describes (an S3 ETag), so that read()
    # notices when the object was replaced meanwhile; "" when the backend needs none.
    tag: str = ""
    # The whole content, when get(inline=...) could read it in the same step (small and verified).
    data: bytes | None = None


class DirectUpload(abc.ABC):
    """An upload fed synchronously from one worker thread (BlobStore.direct_upload).

    The feeder receives straight into buffer() and reports filled(n), or hands over bytes it
    already has with write(); each call hashes (and stores) the bytes at once. Then exactly one
    of finish() or abort() ends it. Nothing becomes visible before finish() has checked the
    content against the oid."""

    @abc.abstractmethod
    def buffer(self) -> memoryview:
        """In the worker thread: where the next bytes go (never empty; reused)."""

    @abc.abstractmethod
    def filled(self, n: int) -> None:
        """In the worker thread: the first `n` bytes of buffer() are the content's next bytes
        (TooLarge past the size limit)."""

    @abc.abstractmethod
    def write(self, data: memoryview) -> None:
        """In the worker thread: `data` are the content's next bytes."""

    @abc.abstractmethod
    async def finish(self) -> PutResult:
        """Check the content hashes to the oid (HashMismatch otherwise) and store it, as put() does."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Drop what was written; nothing is left behind."""


async def get_if_visible(visible: Awaitable[object], get: Awaitable[BlobHandle]) -> BlobHandle | None:
    """Both lookups at once: get's handle if `visible` comes out true, else None; get's error
    (missing, corrupt, storage down) counts only for a caller who may see the object."""
    import asyncio

    seen, got = await asyncio.gather(visible, get, return_exceptions=True)
    if isinstance(seen, BaseException):
        raise seen
    if not seen:
        return None
    if isinstance(got, BaseException):
        raise got
    return got


class BlobStore(abc.ABC):
    """Content-addressed object storage. All methods are safe to call concurrently."""

    # Whether an upload that stored a new object must still check, after granting it to a
    # namespace, that the object is there: true for backends whose delete_unless() cannot take
    # an object aside atomically (S3: copy, then delete), where a garbage collection running at
    # that moment may delete an object that was just written.
    recheck_after_grant = False

    async def open(self) -> None:
        """Prepare the store (create directories, open indexes, clean up after a crash)."""

    async def close(self) -> None:
        """Release resources; the store is not used afterwards."""

    @abc.abstractmethod
    async def states(self, oids: Collection[str], *, rehash_budget: int = 0) -> dict[str, ObjectState]:
        """State of each oid. Objects changed since they were last verified are re-hashed, up to
        `rehash_budget` bytes in all; the rest are reported UNVERIFIED."""

    async def state(self, oid: str, *, rehash_budget: int = 0) -> ObjectState:
        return (await self.states([oid], rehash_budget=rehash_budget))[oid]

    @abc.abstractmethod
    async def put(self, oid: str, chunks: AsyncIterator[bytes], *, max_size: int = 0) -> PutResult:
        """Store the object whose content `chunks` yields, verifying it hashes to `oid`.

        Raises HashMismatch (nothing stored), TooLarge (`max_size` > 0 exceeded), StorageFull.
        If the object is already stored and sound the content is verified but not stored again.
        If `chunks` raises (client gone), nothing is left behind.
        """

    async def put_bytes(self, oid: str, data: bytes, *, max_size: int = 0,
                        on_verified: Callable[[], None] | None = None) -> PutResult:
        """put() of a content already in memory (a small upload received whole).

        A backend may call `on_verified()` (from any thread) once the content is checked and in
        place but before its last sync, so that the caller's own durable record can be written
        meanwhile; when it does, put_bytes() still returns only after that sync."""
        async def one() -> AsyncIterator[bytes]:
            yield data
        return await self.put(oid, one(), max_size=max_size)

    async def direct_upload(self, oid: str, *, max_size: int = 0) -> DirectUpload | None:
        """An upload to be fed from a worker thread (no per-chunk hand-offs), or None when this
        backend only takes put()."""
        return None

    @abc.abstractmethod
    async def get(self, oid: str, *, inline: int = 0) -> BlobHandle:
        """Raises ObjectMissing, or CorruptObject if the object is known to be corrupt. A backend
        may fill in `data` of a verified object of at most `inline` bytes (saving a read())."""

    async def get_visible(self, oid: str, visible: Callable[[], bool], *, inline: int = 0) -> BlobHandle | None:
        """get(), for a caller allowed to see the object only if `visible()` (a blocking check,
        run in a worker thread) says so: None when it does not, whatever is stored. A backend
        that looks objects up in a worker thread runs the check in the same job."""
        from ..aio import run_blocking

        return await get_if_visible(run_blocking(visible), self.get(oid, inline=inline))

    @abc.abstractmethod
    def read(self, handle: BlobHandle, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes [start, end) of the object. Reading the whole of an unverified object verifies
        it: the last chunk is withheld and CorruptObject raised if it does not match."""

    @abc.abstractmethod
    async def verify(self, oid: str) -> ObjectState:
        """Re-hash the stored object now, remember the outcome, and return it."""

    @abc.abstractmethod
    async def delete(self, oid: str) -> bool:
        """Remove the object; False when it was not there."""

    @abc.abstractmethod
    async def delete_unless(self, oid: str, keep: Callable[[], Awaitable[bool]]) -> bool:
        """Remove the object unless `keep()`, asked once the object is out of sight, says to keep it.

        For garbage collection racing uploads in another process: the object is first taken out
        of place, then `keep()` re-checks whether anything references it; if so it is put back.
        An uploader that grants a reference and then sees the object present is therefore never
        left with a reference to nothing, and one that sees it absent retries. True if deleted.
        """

    @abc.abstractmethod
    async def quarantine(self, oid: str) -> str:
        """Take a (corrupt) object out of service but keep its bytes for inspection; the oid then
        reads as missing, so a client that still has the content can upload it again. Returns
        where the bytes went, for the operator. Raises ObjectMissing when it is not stored."""

    async def promote_staged(self, oids: Collection[str], owner: str) -> dict[str, ObjectState]:
        """Check and install objects clients uploaded straight to the backend for `owner` (a
        namespace) and never confirmed (presigned uploads; see S3BlobStore). The state of each
        oid that had such an upload: OK (installed now), or MISSING (it did not match and was
        discarded). Backends without direct uploads have none."""
        return {}

    async def clean_abandoned(self, older_than: float) -> int:
        """Remove uploads started before `older_than` (Unix time) that never completed and never
        will (their process died; a direct upload never confirmed). How many were removed."""
        return 0

    @abc.abstractmethod
    def list(self) -> AsyncIterator[tuple[str, int, float]]:
        """Every stored object as (oid, size, modification time)."""
