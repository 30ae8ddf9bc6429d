"""The one Git LFS HTTP client of the interop tests: raw requests, the batch API and basic transfers
against a real server process, for what git-lfs is too coarse to drive or to observe."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from typing import Any

from ..support import oid_of

LFS = "application/vnd.git-lfs+json"


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
            timeout: float = 30) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTP request on a fresh connection; (status, headers, body) whatever the status.

    The headers are case-insensitive; redirects are not followed (a test sees what was answered).
    """
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        path = u.path + (f"?{u.query}" if u.query else "")
        headers = headers or {}
        conn.request(method, path, body=body, headers=headers,
                     encode_chunked=headers.get("Transfer-Encoding") == "chunked")
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def batch(base: str, operation: str, objects: list[dict], headers: dict | None = None,
          **extra: Any) -> tuple[int, http.client.HTTPMessage, Any]:
    """POST {base}/objects/batch; (status, headers, parsed JSON body or None).

    Like git-lfs, a 429 means "wait Retry-After seconds and try again".
    """
    body = json.dumps({"operation": operation, "objects": objects, **extra}).encode()
    for _ in range(20):
        status, hdrs, raw = request(f"{base}/objects/batch", "POST", body,
                                    {"Accept": LFS, "Content-Type": LFS, **(headers or {})})
        if status != 429:
            break
        time.sleep(float(hdrs.get("Retry-After", "1")))
    return status, hdrs, json.loads(raw) if raw else None


def objects(*blobs: tuple[str, int]) -> list[dict]:
    """The batch request's `objects` list for (oid, size) pairs."""
    return [{"oid": oid, "size": size} for oid, size in blobs]


def upload(base: str, data: bytes) -> str:
    """Upload `data` through the batch API and its upload action (and verify, if offered); returns the oid."""
    oid = oid_of(data)
    status, _, answer = batch(base, "upload", objects((oid, len(data))), transfers=["basic"])
    assert status == 200, answer
    (obj,) = answer["objects"]
    assert "error" not in obj, obj
    actions = obj.get("actions") or {}
    if "upload" in actions:
        up = actions["upload"]
        status, _, body = request(up["href"], "PUT", data,
                                  {**up.get("header", {}), "Content-Type": "application/octet-stream"})
        assert status in (200, 201), (status, body)
    if "verify" in actions:
        v = actions["verify"]
        status, _, body = request(v["href"], "POST", json.dumps({"oid": oid, "size": len(data)}).encode(),
                                  {**v.get("header", {}), "Content-Type": LFS, "Accept": LFS})
        assert status == 200, (status, body)
    return oid


def download(base: str, oid: str, size: int) -> tuple[int, bytes | dict]:
    """(200, content) or (error code, error object) from the batch API / download action."""
    status, _, answer = batch(base, "download", objects((oid, size)), transfers=["basic"])
    assert status == 200, answer
    (obj,) = answer["objects"]
    if "error" in obj:
        return obj["error"]["code"], obj["error"]
    down = obj["actions"]["download"]
    status, _, body = request(down["href"], "GET", None, down.get("header", {}))
    return status, body
