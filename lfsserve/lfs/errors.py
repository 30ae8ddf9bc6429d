"""LFS errors, and the one place where every error of the LFS front end becomes an HTTP answer.

Handlers raise LfsError (or let auth / blob store errors escape); `endpoint` turns them into the
Git LFS error format: a JSON body `{"message": ..., "request_id": ...}` with
`Content-Type: application/vnd.git-lfs+json`, and on 401 the challenges hg and git-lfs understand.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import ClientPayloadError, web

from ..auth import AuthError
from ..blobstore import (
    BlobError,
    CorruptObject,
    HashMismatch,
    InvalidOid,
    ObjectMissing,
    StorageFull,
    StorageUnavailable,
    TooLarge,
    UploadRaced,
)
from ..kernel import CTX, LFS_JSON, Handler, lfs_error
from ..routing import Target

__all__ = ["LFS_JSON", "LfsError", "blob_status", "endpoint", "json_response"]

log = logging.getLogger(__name__)


class LfsError(Exception):
    """A request the LFS front end refuses; `status` and `message` go to the client."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                 body: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.body = dict(body or {})


_BLOB_STATUS: list[tuple[type[BlobError], int]] = [
    (HashMismatch, 422),
    (CorruptObject, 422),
    (TooLarge, 413),
    (ObjectMissing, 404),
    (InvalidOid, 422),
    (StorageFull, 507),
    (UploadRaced, 503),
    (StorageUnavailable, 503),
]


def blob_status(exc: BlobError) -> int:
    for cls, status in _BLOB_STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def json_response(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode("utf-8"), status=status,
                        content_type=LFS_JSON, headers=headers)


def _error_response(request: web.Request, status: int, message: str, headers: Mapping[str, str] | None = None,
                    extra: Mapping[str, Any] | None = None) -> web.Response:
    if status >= 500:
        log.error("LFS %s %s: %d %s", request.method, request.path, status, message)
    else:
        log.info("LFS %s %s: %d %s", request.method, request.path, status, message)
    return lfs_error(request, status, message, headers, extra)


def endpoint(handler: Handler) -> Handler:
    """Wrap an LFS handler so that its typed errors become LFS JSON error answers."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request, target: Target) -> web.StreamResponse:
        try:
            return await handler(request, target)
        except LfsError as exc:
            return _error_response(request, exc.status, exc.message, exc.headers, exc.body)
        except AuthError as exc:
            headers = request.app[CTX].auth.challenge() if exc.status == 401 else None
            return _error_response(request, exc.status, exc.message, headers)
        except StorageUnavailable as exc:
            # The client retries on its own after Retry-After (git-lfs and hg both honour 503).
            return _error_response(request, 503, exc.message, {"Retry-After": str(exc.retry_after)})
        except BlobError as exc:
            return _error_response(request, blob_status(exc), exc.message)
        except (ClientPayloadError, asyncio.IncompleteReadError) as exc:
            # The client stopped sending mid-body; it is probably gone, but say why if it is not.
            return _error_response(request, 400, f"request body incomplete: {exc}",
                                   {"Connection": "close"})

    return wrapped
