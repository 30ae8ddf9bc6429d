"""Clone bundles (and wire protocol v2 content-redirect answers) in the S3 bucket of the blob store.

Keys: `<prefix>clonebundles/<repo>/.clonebundles/<name>`, beside `<prefix>lfs/`. A bundle is built
in a local temporary directory, uploaded whole (one PUT, or a multipart upload completed only at
the end: S3 makes an object visible at once and whole), and only then named by the repository's
index object, which is itself replaced with one PUT. The manifest hands out presigned GETs, so a
cloning client fetches the bytes from the bucket and they never pass through lfsserve.

The build lock stays a file lock in the data directory (`<root>/clonebundles/<repo>/.clonebundles/
lock`), as for the local store: instances that share the data directory (the several-instances
deployment shares it for the repositories anyway) never build one repository's bundles twice at
once, and a crashed builder's lock is released by the kernel.

The bundle store interface blocks (it runs in worker threads), so this uses botocore's own
synchronous, thread-safe client rather than the blob store's asyncio one: same signing, same
credential chain. Failures become StorageUnavailable.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import botocore.session
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from .base import StorageUnavailable
from .bundles import BundleStore, LocalBundleStore

__all__ = ["S3BundleStore"]

SINGLE_PUT_LIMIT = 4 << 30   # below: one PUT (S3 allows up to 5 GiB); above: multipart
PART = 256 << 20             # multipart part size (read from the file as it goes)
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError, OSError) as exc:
        raise StorageUnavailable(f"object storage failed ({what} of a clone bundle): {exc}") from exc


class _Window:
    """A file-like view of `size` bytes of `fh` from `start` (one multipart part, streamed)."""

    def __init__(self, fh: BinaryIO, start: int, size: int):
        self.fh, self.start, self.size, self.pos = fh, start, size, 0

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.pos
        n = left if n < 0 else min(n, left)
        self.fh.seek(self.start + self.pos)
        data = self.fh.read(n)
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: self.size + pos}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def __len__(self) -> int:
        return self.size


class S3BundleStore(BundleStore):
    def __init__(self, storage: Any, local_root: Path | str):
        self.bucket = storage.bucket
        self._root = f"{storage.prefix}clonebundles/"
        # Clients are sent to the bucket itself only in direct mode: in proxy mode they may not
        # reach it (an internal MinIO...), so lfsserve serves the bundles (presigned_url None).
        self.direct = storage.transfer == "direct"
        # local: the build's temporary files and the build lock (never bundle contents)
        self._local = LocalBundleStore(local_root, durable=False)
        args: dict[str, Any] = {
            "endpoint_url": storage.endpoint_url or None,
            "region_name": storage.region or None,
            "config": BotoConfig(signature_version="s3v4", s3={"addressing_style": storage.addressing_style},
                                 retries={"max_attempts": 2, "mode": "standard"},
                                 connect_timeout=5, read_timeout=storage.read_timeout,
                                 max_pool_connections=16),
        }
        if storage.access_key_id:
            args["aws_access_key_id"] = storage.access_key_id
            args["aws_secret_access_key"] = storage.secret_access_key
        self.client = botocore.session.get_session().create_client("s3", **args)

    def _key(self, key: str) -> str:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"bad bundle key {key!r}")
        return self._root + key

    def temp_dir(self, repo: str) -> Path:
        return self._local.temp_dir(repo)

    def install(self, key: str, src: Path) -> None:
        target = self._key(key)
        try:
            size = os.path.getsize(src)
            with open(src, "rb") as fh, _s3_errors("upload"):
                if size <= SINGLE_PUT_LIMIT:
                    self.client.put_object(Bucket=self.bucket, Key=target, Body=fh, ContentLength=size,
                                           ContentType="application/mercurial-bundle")
                else:
                    self._multipart(target, fh, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(src)

    def _multipart(self, target: str, fh: BinaryIO, size: int) -> None:
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=target,
                                                        ContentType="application/mercurial-bundle")["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, PART), 1):
                window = _Window(fh, start, min(PART, size - start))
                r = self.client.upload_part(Bucket=self.bucket, Key=target, UploadId=upload_id,
                                            PartNumber=number, Body=window, ContentLength=len(window))
                parts.append({"PartNumber": number, "ETag": r["ETag"]})
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            with contextlib.suppress(Exception):  # else the blob store's gc reaps abandoned uploads
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload_id)
            raise

    def local_path(self, key: str) -> Path | None:
        return None

    def exists(self, key: str) -> bool:
        with _s3_errors("HEAD"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if _missing(exc):
                    return False
                raise

    def open_read(self, key: str) -> tuple[BinaryIO, int] | None:
        with _s3_errors("GET"):
            try:
                resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if _missing(exc):
                    return None
                raise
        return resp["Body"], resp["ContentLength"]

    def presigned_url(self, key: str, expires_in: int) -> str | None:
        if not self.direct:
            return None
        # signing only: no request to S3
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                                                  ExpiresIn=expires_in)

    def read_small(self, key: str) -> bytes | None:
        opened = self.open_read(key)
        if opened is None:
            return None
        body, _ = opened
        with _s3_errors("GET"), contextlib.closing(body):
            return body.read()

    def write_small(self, key: str, data: bytes) -> None:
        with _s3_errors("PUT"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def delete(self, key: str) -> None:
        with _s3_errors("DELETE"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def names(self, repo: str) -> list[tuple[str, float]]:
        folder = self._key(f"{repo}/.clonebundles/")
        out = []
        with _s3_errors("LIST"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
                for item in page.get("Contents", ()):
                    name = item["Key"][len(folder):]
                    if name and "/" not in name:
                        out.append((name, item["LastModified"].timestamp()))
        return out

    def exclusive(self, repo: str) -> contextlib.AbstractContextManager[None]:
        return self._local.exclusive(repo)


_stores: dict[tuple, S3BundleStore] = {}
_stores_lock = threading.Lock()


def shared_store(storage: Any, local_root: Path) -> S3BundleStore:
    """One store (one client: creating one loads botocore's service model) per configuration."""
    ident = (storage.bucket, storage.prefix, storage.endpoint_url, storage.region, storage.addressing_style,
             storage.access_key_id, storage.secret_access_key, storage.read_timeout, str(local_root))
    with _stores_lock:
        store = _stores.get(ident)
        if store is None:
            store = _stores[ident] = S3BundleStore(storage, local_root)
        return store
