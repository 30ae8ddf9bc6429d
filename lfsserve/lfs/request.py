"""Reading LFS API requests: media types and bounded JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..blobstore import is_oid
from .errors import LFS_JSON, LfsError

__all__ = ["MAX_SIZE", "check_accept", "check_ref", "decode_json", "object_error", "read_json"]

# Largest object size a client may name: Git LFS sizes are int64.
MAX_SIZE = (1 << 63) - 1
_JSON_TYPES = (LFS_JSON, "application/json")
_ACCEPTABLE = (LFS_JSON, "application/json", "application/*", "*/*")


def check_accept(request: web.Request) -> None:
    """406 unless the client accepts the LFS JSON type (a missing Accept accepts anything)."""
    accept = request.headers.get("Accept")
    if not accept:
        return
    for item in accept.split(","):
        media = item.split(";", 1)[0].strip().lower()
        if media in _ACCEPTABLE:
            return
    raise LfsError(406, f"responses are {LFS_JSON}; the request's Accept header does not allow it")


async def read_json(request: web.Request, limit: int = 64 * 1024) -> dict[str, Any]:
    """The request's JSON object body, at most `limit` bytes; a 4xx LfsError otherwise."""
    ctype = request.headers.get("Content-Type")
    if ctype is not None and ctype.split(";", 1)[0].strip().lower() not in _JSON_TYPES:
        raise LfsError(415, f"send the request body as {LFS_JSON}, not {ctype[:80]!r}")
    if request.content_length is not None and request.content_length > limit:
        raise LfsError(413, f"request body larger than {limit} bytes")
    data = bytearray()
    while True:
        chunk = await request.content.read(limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise LfsError(413, f"request body larger than {limit} bytes")
    return decode_json(bytes(data))


def decode_json(data: bytes) -> dict[str, Any]:
    """A JSON object from a request body; LfsError (400/422) for anything else."""
    try:
        body = json.loads(data)
    except RecursionError:
        raise LfsError(400, "request body is not valid JSON: nested too deeply")
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, and the int-string conversion limit (a number of
        # thousands of digits) are all ValueErrors
        raise LfsError(400, f"request body is not valid JSON: {str(exc)[:200]}")
    if not isinstance(body, dict):
        raise LfsError(422, "request body must be a JSON object")
    return body


def object_error(oid: Any, size: Any) -> str | None:
    """What is wrong with an object's `oid` and `size` as a client sent them, or None."""
    if not is_oid(oid):
        return "invalid oid: it must be a SHA-256 as 64 lowercase hex digits"
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        return "invalid size: it must be a non-negative 64-bit integer"
    return None


def check_ref(body: dict[str, Any]) -> None:
    """422 unless the optional `ref` is an object with a string `name` (batch and locks requests)."""
    ref = body.get("ref")
    if ref is not None and not (isinstance(ref, dict) and isinstance(ref.get("name", ""), str)):
        raise LfsError(422, "ref must be an object with a string name")
