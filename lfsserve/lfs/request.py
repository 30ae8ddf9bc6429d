"""Reading LFS API requests: media types and bounded JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .errors import LFS_JSON, LfsError

__all__ = ["check_accept", "read_json"]

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
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LfsError(400, f"request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        raise LfsError(422, "request body must be a JSON object")
    return body
