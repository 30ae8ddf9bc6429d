"""Content-addressed storage of LFS objects behind a small interface (local filesystem, S3-compatible).

`open_store(config)` builds the backend `[storage] backend` names; nothing else constructs one.
"""

from __future__ import annotations

from ..config import Config, ConfigError
from .base import (
    BlobError,
    BlobHandle,
    BlobStore,
    CorruptObject,
    HashMismatch,
    InvalidOid,
    ObjectMissing,
    ObjectState,
    PutResult,
    Status,
    StorageFull,
    StorageUnavailable,
    TooLarge,
    UploadRaced,
    is_oid,
)
from .local import LocalBlobStore

__all__ = [
    "BlobError",
    "BlobHandle",
    "BlobStore",
    "CorruptObject",
    "HashMismatch",
    "InvalidOid",
    "LocalBlobStore",
    "ObjectMissing",
    "ObjectState",
    "PutResult",
    "Status",
    "StorageFull",
    "StorageUnavailable",
    "TooLarge",
    "UploadRaced",
    "is_oid",
    "open_store",
]


def open_store(config: Config) -> BlobStore:
    """The blob store `[storage] backend` names, not yet opened (see BlobStore.open)."""
    backend = config.storage.backend
    if backend == "local":
        return LocalBlobStore(config.lfs_dir, durable=config.lfs.fsync)
    if backend == "s3":
        from .s3 import S3BlobStore  # imports aiobotocore: only when configured

        return S3BlobStore.from_config(config.storage)
    raise ConfigError(f"storage.backend: unknown backend {backend!r}")
