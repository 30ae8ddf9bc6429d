"""Content-addressed storage of LFS objects behind a small interface (local filesystem, S3-compatible).

`open_store(config)` builds the backend `[storage] backend` names; nothing else constructs one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import Config, ConfigError
from .base import (
    BlobError,
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
    StorageUnavailable,
    TooLarge,
    UploadRaced,
    get_if_visible,
    is_oid,
)

if TYPE_CHECKING:
    from .local import LocalBlobStore

__all__ = [
    "BlobError",
    "BlobHandle",
    "BlobStore",
    "CorruptObject",
    "DirectUpload",
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
    "get_if_visible",
    "is_oid",
    "open_store",
]


def open_store(config: Config) -> BlobStore:
    """The blob store `[storage] backend` names, not yet opened (see BlobStore.open)."""
    backend = config.storage.backend
    if backend == "local":
        from .local import LocalBlobStore

        return LocalBlobStore(config.lfs_dir, durable=config.lfs.fsync)
    if backend == "s3":
        from .s3 import S3BlobStore  # imports aiobotocore: only when configured

        return S3BlobStore.from_config(config.storage)
    raise ConfigError(f"storage.backend: unknown backend {backend!r}")


def __getattr__(name: str) -> Any:
    # The local backend (asyncio and its executors) is imported when used: hg over SSH imports
    # this package for bundle_key() only, and runs without asyncio.
    if name == "LocalBlobStore":
        from .local import LocalBlobStore
        return LocalBlobStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
