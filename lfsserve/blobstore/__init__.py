"""Content-addressed storage of LFS objects behind a small interface (local filesystem now, S3-compatible later)."""

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
    "TooLarge",
    "UploadRaced",
    "is_oid",
]
