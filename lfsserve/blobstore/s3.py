"""Blob store in an S3-compatible bucket (AWS, MinIO, Ceph RGW, R2...), through aiobotocore.

Layout under the configured prefix, the same content addressing as the local store:

    <prefix>lfs/objects/<oid[0:2]>/<oid[2:4]>/<oid>   objects, each verified before it got there
    <prefix>lfs/incoming/<owner tag>/<oid>           direct-mode uploads not yet checked
    <prefix>lfs/gc-pending/<oid>.<token>             taken aside by a garbage collection
    <prefix>lfs/quarantine/<oid>.<UTC timestamp>     corrupt objects `lfsserve verify` moved away

Proxy uploads are hashed while they stream in. A small one (below one part) is held in memory
and written with a single PUT once its hash matched; a large one goes out as a multipart upload
to the object's final key, a few parts in flight at a time, and is completed (S3 makes it
visible at once, whole) only after the hash matched; otherwise it is aborted and nothing ever
appears. Two uploads of one oid racing both write the same verified bytes, so the last one to
complete changes nothing.

Objects this store installs carry the metadata `lfs-sha256: <oid>`: they are known good. One
found without it (put there by another tool) is UNVERIFIED until re-hashed, and the outcome is
remembered for that ETag in this process. Every S3 failure (unreachable, 5xx, throttled, too
slow) becomes StorageUnavailable, which front ends answer with 503 and Retry-After.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from ..aio import run_blocking
from .base import (
    MISSING,
    BlobHandle,
    BlobStore,
    CorruptObject,
    HashMismatch,
    InvalidOid,
    ObjectMissing,
    ObjectState,
    PutResult,
    Status,
    StorageUnavailable,
    TooLarge,
    is_oid,
)

__all__ = ["S3BlobStore"]

log = logging.getLogger(__name__)

HASH_STEP = 1 << 20        # bytes hashed per worker-thread job
PART = 8 << 20             # multipart part size (S3's minimum is 5 MiB); grows for huge objects
PARTS_IN_FLIGHT = 2        # per upload: memory stays below (PARTS_IN_FLIGHT + 1) * PART
COPY_LIMIT = 5 << 30       # largest single CopyObject; beyond it, multipart copy
COPY_PART = 1 << 30
HEAD_CONCURRENCY = 32      # HEAD requests at once for one states() call
_CHECKED_MAX = 100_000  # re-hash outcomes of foreign objects kept in memory
_META = "lfs-sha256"       # metadata of objects this store verified and installed
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
_CHANGED_CODES = {"412", "PreconditionFailed"}


def _check_oid(oid: str) -> None:
    if not is_oid(oid):
        raise InvalidOid(f"not an object id (64 lowercase hex digits): {str(oid)[:80]!r}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _b64_sha256(oid: str) -> str:
    return base64.b64encode(bytes.fromhex(oid)).decode("ascii")


def owner_tag(owner: str) -> str:
    """The key segment for a namespace's direct uploads (namespaces contain "/" and more)."""
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:32]


@contextlib.contextmanager
def _s3_errors(what: str):
    """Turn S3 and transport failures into StorageUnavailable (the caller handles the S3
    answers it expects, such as 404, before they get here)."""
    try:
        yield
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        log.error("S3 %s failed: %s %s", what, status or "", exc)
        raise StorageUnavailable(f"object storage failed ({what}); try again later") from exc
    except (TimeoutError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
        log.error("S3 %s failed: %s", what, exc)
        raise StorageUnavailable(f"object storage unreachable ({what}); try again later") from exc


class S3BlobStore(BlobStore):
    recheck_after_grant = True

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str = "", region: str = "",
                 addressing_style: str = "auto", transfer: str = "proxy", presign_expires: int = 3600,
                 access_key_id: str = "", secret_access_key: str = "", read_timeout: float = 15.0):
        self.bucket = bucket
        self.prefix = prefix
        self.transfer = transfer
        self.presign_expires = presign_expires
        self._objects = f"{prefix}lfs/objects/"
        self._incoming = f"{prefix}lfs/incoming/"
        self._pending = f"{prefix}lfs/gc-pending/"
        self._quarantine = f"{prefix}lfs/quarantine/"
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint_url or None,
            "region_name": region or None,
            "config": AioConfig(
                signature_version="s3v4",
                s3={"addressing_style": addressing_style,
                    # The content is hashed by this store anyway; signing each body would hash
                    # it a second time on the event loop (botocore does so over plain http).
                    "payload_signing_enabled": False},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                # Fail over to the client quickly: it retries, and a 503 is better than a hang
                # (git-lfs gives up on a server silent for 30 s). read_timeout is per read, not
                # per object: a large download takes as long as it needs.
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5, read_timeout=read_timeout, max_pool_connections=64),
        }
        if access_key_id:
            self._client_args["aws_access_key_id"] = access_key_id
            self._client_args["aws_secret_access_key"] = secret_access_key
        self._client_cm: Any = None
        self.client: Any = None
        # oid -> (ETag, good): outcomes of re-hashing objects that lack this store's metadata.
        self._checked: dict[str, tuple[str, bool]] = {}

    @classmethod
    def from_config(cls, st: Any) -> S3BlobStore:
        return cls(st.bucket, prefix=st.prefix, endpoint_url=st.endpoint_url, region=st.region,
                   addressing_style=st.addressing_style, transfer=st.transfer,
                   presign_expires=st.presign_expires, access_key_id=st.access_key_id,
                   secret_access_key=st.secret_access_key, read_timeout=st.read_timeout)

    def key(self, oid: str) -> str:
        _check_oid(oid)
        return f"{self._objects}{oid[0:2]}/{oid[2:4]}/{oid}"

    def incoming_key(self, oid: str, owner: str) -> str:
        _check_oid(oid)
        return f"{self._incoming}{owner_tag(owner)}/{oid}"

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        self._client_cm = get_session().create_client("s3", **self._client_args)
        self.client = await self._client_cm.__aenter__()
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError) as exc:
            # Serve anyway (503s until it is reachable): S3 may come back before clients do.
            log.error("S3 bucket %s is not reachable yet: %s", self.bucket, exc)

    async def close(self) -> None:
        if self._client_cm is not None:
            cm, self._client_cm, self.client = self._client_cm, None, None
            await cm.__aexit__(None, None, None)

    # -- state ---------------------------------------------------------------------------------
    async def _head(self, key: str) -> dict | None:
        with _s3_errors("HEAD"):
            try:
                return await self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _MISSING_CODES:
                    return None
                raise

    def _classify(self, oid: str, head: dict | None) -> ObjectState:
        if head is None:
            return MISSING
        size = head["ContentLength"]
        if head.get("Metadata", {}).get(_META) == oid:
            return ObjectState(Status.OK, size)
        known = self._checked.get(oid)
        if known is not None and known[0] == head["ETag"]:
            return ObjectState(Status.OK if known[1] else Status.CORRUPT, size)
        return ObjectState(Status.UNVERIFIED, size)

    async def _heads(self, oids: list[str]) -> dict[str, dict | None]:
        sem = asyncio.Semaphore(HEAD_CONCURRENCY)

        async def one(oid: str) -> tuple[str, dict | None]:
            async with sem:
                return oid, await self._head(self.key(oid))

        return dict(await asyncio.gather(*(one(oid) for oid in oids)))

    async def states(self, oids: Collection[str], *, rehash_budget: int = 0) -> dict[str, ObjectState]:
        unique = list(dict.fromkeys(oids))
        for oid in unique:
            _check_oid(oid)
        heads = await self._heads(unique)
        out = {oid: self._classify(oid, heads[oid]) for oid in unique}
        budget = rehash_budget
        for oid, state in out.items():
            if state.status is Status.UNVERIFIED and state.size <= budget:
                budget -= state.size
                out[oid] = await self.verify(oid)
        return out

    async def _hash_key(self, key: str, if_match: str | None = None) -> tuple[str, int, str] | None:
        """(sha256 hex, size, ETag) of the object at `key`, or None when it is not there."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if if_match:
            args["IfMatch"] = if_match
        h = hashlib.sha256()
        size = 0
        with _s3_errors("GET"):
            try:
                resp = await self.client.get_object(**args)
            except ClientError as exc:
                if _code(exc) in _MISSING_CODES | _CHANGED_CODES:
                    return None
                raise
            async with resp["Body"] as body:
                pending: list[bytes] = []
                held = 0
                async for chunk in body.iter_chunks(HASH_STEP):
                    pending.append(chunk)
                    held += len(chunk)
                    size += len(chunk)
                    if held >= HASH_STEP:
                        await run_blocking(_update, h, pending)
                        pending, held = [], 0
                await run_blocking(_update, h, pending)
        return h.hexdigest(), size, resp["ETag"]

    async def verify(self, oid: str) -> ObjectState:
        res = await self._hash_key(self.key(oid))
        if res is None:
            return MISSING
        digest, size, etag = res
        ok = digest == oid
        self._remember(oid, etag, ok)
        if not ok:
            log.error("LFS object %s is corrupt: its content hashes to %s", oid, digest)
        return ObjectState(Status.OK if ok else Status.CORRUPT, size)

    def _remember(self, oid: str, etag: str, ok: bool) -> None:
        if len(self._checked) >= _CHECKED_MAX:
            self._checked.clear()  # only a cache: forgotten objects are re-hashed when next used
        self._checked[oid] = (etag, ok)

    # -- writing -------------------------------------------------------------------------------
    async def put(self, oid: str, chunks: AsyncIterator[bytes], *, max_size: int = 0) -> PutResult:
        key = self.key(oid)
        current = self._classify(oid, await self._head(key))
        upload = _Upload(self, key, oid, max_size, store_it=current.status is not Status.OK)
        try:
            async for chunk in chunks:
                await upload.feed(chunk)
            created = await upload.finish()
        except BaseException:
            await asyncio.shield(upload.abort())
            raise
        return PutResult(created=created, size=upload.size)

    async def _copy(self, source: str, target: str, size: int, *, metadata: dict[str, str] | None = None,
                    if_match: str | None = None) -> bool:
        """Server-side copy; False when the source is gone (or changed, with `if_match`)."""
        src: dict[str, Any] = {"Bucket": self.bucket, "Key": source}
        extra: dict[str, Any] = {}
        if if_match:
            extra["CopySourceIfMatch"] = if_match
        if metadata is not None:
            extra["Metadata"] = metadata
            extra["MetadataDirective"] = "REPLACE"
        with _s3_errors("copy"):
            try:
                if size <= COPY_LIMIT:
                    await self.client.copy_object(Bucket=self.bucket, Key=target, CopySource=src, **extra)
                    return True
                await self._multipart_copy(src, target, size, metadata, if_match)
                return True
            except ClientError as exc:
                if _code(exc) in _MISSING_CODES | _CHANGED_CODES:
                    return False
                raise

    async def _multipart_copy(self, src: dict, target: str, size: int, metadata: dict[str, str] | None,
                              if_match: str | None) -> None:
        if metadata is None:
            head = await self._head(src["Key"])
            metadata = head.get("Metadata", {}) if head else {}
        mp = await self.client.create_multipart_upload(Bucket=self.bucket, Key=target, Metadata=metadata)
        upload_id = mp["UploadId"]
        try:
            parts = []
            for n, start in enumerate(range(0, size, COPY_PART), 1):
                extra = {"CopySourceIfMatch": if_match} if if_match else {}
                r = await self.client.upload_part_copy(
                    Bucket=self.bucket, Key=target, UploadId=upload_id, PartNumber=n, CopySource=src,
                    CopySourceRange=f"bytes={start}-{min(size, start + COPY_PART) - 1}", **extra)
                parts.append({"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]})
            await self.client.complete_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload_id,
                                                        MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):
                await self.client.abort_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload_id)
            raise

    async def _delete_key(self, key: str) -> None:
        with _s3_errors("DELETE"):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    # -- direct uploads ------------------------------------------------------------------------
    async def presign_download(self, oid: str) -> str:
        with _s3_errors("presign"):
            return await self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(oid)},
                ExpiresIn=self.presign_expires)

    async def presign_upload(self, oid: str, size: int, owner: str) -> tuple[str, dict[str, str]]:
        """A presigned PUT of exactly `size` bytes to `owner`'s staging key for `oid`, and the
        headers the client must send with it (S3 checks the SHA-256 where it supports that)."""
        checksum = _b64_sha256(oid)
        with _s3_errors("presign"):
            url = await self.client.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": self.incoming_key(oid, owner),
                                      "ContentLength": size, "ChecksumSHA256": checksum},
                ExpiresIn=self.presign_expires)
        return url, {"x-amz-checksum-sha256": checksum}

    async def promote_staged(self, oids: Collection[str], owner: str) -> dict[str, ObjectState]:
        if self.transfer != "direct":
            return {}
        # One LIST of the owner's staging area (usually nearly empty) instead of a request per oid:
        # batch requests name up to thousands of objects, few of which are staged.
        wanted = set(oids)
        folder = f"{self._incoming}{owner_tag(owner)}/"
        staged = []
        with _s3_errors("LIST"):
            async for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
                staged += [item["Key"][len(folder):] for item in page.get("Contents", ())]
        staged = [oid for oid in staged if oid in wanted and is_oid(oid)]
        if not staged:
            return {}
        sem = asyncio.Semaphore(HEAD_CONCURRENCY)

        async def one(oid: str) -> tuple[str, ObjectState | None]:
            async with sem:
                return oid, await self._promote(oid, self.incoming_key(oid, owner))

        results = await asyncio.gather(*(one(oid) for oid in staged))
        return {oid: state for oid, state in results if state is not None}

    async def _promote(self, oid: str, staged: str) -> ObjectState | None:
        """Hash the staged upload; install it if it matches, drop it either way. None when no
        upload is staged there."""
        for _attempt in range(3):  # another PUT of the same upload may replace it meanwhile
            res = await self._hash_key(staged)
            if res is None:
                return None
            digest, size, etag = res
            if digest != oid:
                log.info("direct upload of %s discarded: its content hashes to %s", oid, digest)
                await self._delete_key(staged)
                return MISSING
            # Copy exactly the version that was hashed.
            if await self._copy(staged, self.key(oid), size, metadata={_META: oid}, if_match=etag):
                with contextlib.suppress(StorageUnavailable):
                    await self._delete_key(staged)  # left over: the next promotion re-checks and drops it
                return ObjectState(Status.OK, size)
        return None

    # -- reading -------------------------------------------------------------------------------
    async def get(self, oid: str, *, inline: int = 0) -> BlobHandle:
        head = await self._head(self.key(oid))
        state = self._classify(oid, head)
        if state.status is Status.MISSING:
            raise ObjectMissing(f"object {oid} does not exist")
        if state.status is Status.CORRUPT:
            raise CorruptObject(f"object {oid} is corrupt")
        assert head is not None
        return BlobHandle(oid, state.size, state.status is Status.OK, None, head["ETag"])

    async def read(self, handle: BlobHandle, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        oid = handle.oid
        end = handle.size if end is None else min(end, handle.size)
        if start >= end:
            return
        whole = start == 0 and end == handle.size
        check = not handle.verified
        tag = handle.tag
        if check and not whole:
            state = await self.verify(oid)
            if state.status is Status.CORRUPT:
                raise CorruptObject(f"object {oid} is corrupt")
            if state.status is not Status.OK:
                raise ObjectMissing(f"object {oid} changed while being read; try again")
            check, tag = False, self._checked[oid][0]
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(oid)}
        if tag:
            args["IfMatch"] = tag
        if not whole:
            args["Range"] = f"bytes={start}-{end - 1}"
        h = hashlib.sha256() if check else None
        with _s3_errors("GET"):
            try:
                resp = await self.client.get_object(**args)
            except ClientError as exc:
                if _code(exc) in _MISSING_CODES | _CHANGED_CODES:
                    raise ObjectMissing(f"object {oid} changed while being read; try again") from None
                raise
            async with resp["Body"] as body:
                held: bytes | None = None
                got = 0
                async for data in body.iter_chunks(HASH_STEP):
                    got += len(data)
                    if h is not None:
                        await run_blocking(h.update, data)
                    if held is not None:
                        yield held
                    held = data
                if got != end - start:
                    raise StorageUnavailable(f"object storage sent {got} of {end - start} bytes; try again")
                if h is not None:
                    ok = h.hexdigest() == oid
                    self._remember(oid, resp["ETag"], ok)
                    if not ok:
                        log.error("LFS object %s is corrupt (found while sending it)", oid)
                        raise CorruptObject(f"object {oid} is corrupt")
                if held is not None:
                    yield held

    # -- maintenance ---------------------------------------------------------------------------
    async def delete(self, oid: str) -> bool:
        key = self.key(oid)
        if await self._head(key) is None:
            return False
        await self._delete_key(key)
        self._checked.pop(oid, None)
        return True

    async def delete_unless(self, oid: str, keep: Callable[[], Awaitable[bool]]) -> bool:
        key = self.key(oid)
        head = await self._head(key)
        if head is None:
            return False
        aside = f"{self._pending}{oid}.{secrets.token_hex(6)}"
        if not await self._copy(key, aside, head["ContentLength"], if_match=head["ETag"]):
            return False
        await self._delete_key(key)
        try:
            kept = await keep()
        except BaseException:
            await asyncio.shield(self._put_back(aside, key, head["ContentLength"]))
            raise
        if kept:
            await self._put_back(aside, key, head["ContentLength"])
            return False
        await self._delete_key(aside)
        self._checked.pop(oid, None)
        return True

    async def _put_back(self, aside: str, key: str, size: int) -> None:
        await self._copy(aside, key, size)
        await self._delete_key(aside)

    async def quarantine(self, oid: str) -> str:
        key = self.key(oid)
        head = await self._head(key)
        if head is None:
            raise ObjectMissing(f"object {oid} is not stored")
        target = f"{self._quarantine}{oid}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        if not await self._copy(key, target, head["ContentLength"]):
            raise ObjectMissing(f"object {oid} is not stored")
        await self._delete_key(key)
        self._checked.pop(oid, None)
        return self.where(target)

    async def list(self) -> AsyncIterator[tuple[str, int, float]]:
        paginator = self.client.get_paginator("list_objects_v2")
        with _s3_errors("LIST"):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._objects):
                for item in page.get("Contents", ()):
                    name = item["Key"][len(self._objects):]
                    oid = name[6:]
                    if is_oid(oid) and name[:6] == f"{oid[0:2]}/{oid[2:4]}/":
                        yield oid, item["Size"], item["LastModified"].timestamp()

    async def clean_abandoned(self, older_than: float) -> int:
        """Direct uploads never confirmed nor used, and multipart uploads of a killed process
        (S3 keeps and bills their parts until aborted), started before `older_than`."""
        removed = 0
        with _s3_errors("LIST"):
            async for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self._incoming):
                for item in page.get("Contents", ()):
                    if item["LastModified"].timestamp() < older_than:
                        await self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                        removed += 1
            async for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=self._objects):
                for up in page.get("Uploads", ()):
                    if up["Initiated"].timestamp() < older_than:
                        await self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"],
                                                                 UploadId=up["UploadId"])
                        removed += 1
        return removed


def _update(h: Any, parts: list[bytes]) -> None:
    for part in parts:
        h.update(part)


class _Upload:
    """One proxy upload: hashed on the way in, written only once it is known to match.

    Below PART bytes the content is held and written with one PUT after the hash matched;
    beyond, parts go out as a multipart upload to the final key (at most PARTS_IN_FLIGHT at a
    time) that is completed only after the hash matched, else aborted.
    """

    def __init__(self, store: S3BlobStore, key: str, oid: str, max_size: int, *, store_it: bool = True):
        self.s3 = store
        self.key = key
        self.oid = oid
        self.max_size = max_size
        self.write = store_it  # False: already stored and sound, only check the content
        self.hash = hashlib.sha256()
        self.size = 0
        self._unhashed: list[bytes] = []
        self._unhashed_size = 0
        self._part: list[bytes] = []
        self._part_size = 0
        self._upload_id: str | None = None
        self._parts: list[dict] = []
        self._next = 1  # number of the next part
        self._tasks: set[asyncio.Task] = set()
        self._slots = asyncio.Semaphore(PARTS_IN_FLIGHT)

    async def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_size and self.size > self.max_size:
            raise TooLarge(self.max_size)
        self._unhashed.append(chunk)
        self._unhashed_size += len(chunk)
        if self._unhashed_size >= HASH_STEP:
            await self._hash_pending()
        if self.write:
            self._part.append(chunk)
            self._part_size += len(chunk)
            if self._part_size >= _part_size(self._next):
                await self._send_part()

    async def _hash_pending(self) -> None:
        parts, self._unhashed, self._unhashed_size = self._unhashed, [], 0
        await run_blocking(_update, self.hash, parts)

    async def _send_part(self) -> None:
        data = b"".join(self._part)
        self._part, self._part_size = [], 0
        if self._upload_id is None:
            with _s3_errors("start upload"):
                mp = await self.s3.client.create_multipart_upload(
                    Bucket=self.s3.bucket, Key=self.key, Metadata={_META: self.oid})
            self._upload_id = mp["UploadId"]
        number, self._next = self._next, self._next + 1
        await self._slots.acquire()  # bounded: a slow S3 slows the client, memory stays put
        self._reap()
        task = asyncio.ensure_future(self._upload_part(number, data))
        self._tasks.add(task)

    async def _upload_part(self, number: int, data: bytes) -> None:
        try:
            with _s3_errors("upload part"):
                r = await self.s3.client.upload_part(Bucket=self.s3.bucket, Key=self.key, UploadId=self._upload_id,
                                                     PartNumber=number, Body=data)
            self._parts.append({"PartNumber": number, "ETag": r["ETag"]})
        finally:
            self._slots.release()

    def _reap(self) -> None:
        """Raise the error of a part upload that failed."""
        for task in [t for t in self._tasks if t.done()]:
            self._tasks.discard(task)
            task.result()

    async def finish(self) -> bool:
        """Check the hash; write (or complete) the object. True if stored, False if it already was."""
        await self._hash_pending()
        digest = self.hash.hexdigest()
        if self._tasks:
            await asyncio.wait(self._tasks)
            self._reap()
        if digest != self.oid:
            raise HashMismatch(self.oid, digest, self.size)
        if not self.write:
            return False
        client, bucket = self.s3.client, self.s3.bucket
        if self._upload_id is None:
            with _s3_errors("PUT"):
                await client.put_object(Bucket=bucket, Key=self.key, Body=b"".join(self._part),
                                        Metadata={_META: self.oid}, ChecksumSHA256=_b64_sha256(self.oid))
            self._part = []
            return True
        if self._part:
            await self._slots.acquire()
            await self._upload_part(self._next, b"".join(self._part))
            self._part = []
        parts = sorted(self._parts, key=lambda p: p["PartNumber"])
        with _s3_errors("complete upload"):
            await client.complete_multipart_upload(Bucket=bucket, Key=self.key, UploadId=self._upload_id,
                                                   MultipartUpload={"Parts": parts})
        self._upload_id = None
        return True

    async def abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        for task in self._tasks:
            if not task.cancelled():
                task.exception()  # retrieved: the upload failed for another reason already
        self._tasks.clear()
        self._part = []
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                await self.s3.client.abort_multipart_upload(Bucket=self.s3.bucket, Key=self.key, UploadId=upload_id)
            except Exception as exc:  # S3 gone: the parts are invisible; abandoned_multipart() reaps them
                log.warning("could not abort multipart upload of %s: %s", self.oid, exc)


def _part_size(number: int) -> int:
    """Size of part `number`: PART, doubling every 1,000 parts (S3 allows 10,000 per upload)."""
    return PART << ((number - 1) // 1000)
