"""A minimal Git LFS basic-transfer client over urllib, to drive a real server where git-lfs is too coarse."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request

LFS_JSON = "application/vnd.git-lfs+json"


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None,
            timeout: float = 60):
    """(status, headers, body) without raising on HTTP errors."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def oid_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def batch(endpoint: str, operation: str, objects: list[tuple[str, int]], headers: dict | None = None):
    """POST {endpoint}/objects/batch; returns (status, parsed JSON body)."""
    body = json.dumps({"operation": operation, "transfers": ["basic"],
                       "objects": [{"oid": o, "size": s} for o, s in objects]}).encode()
    for _ in range(20):  # like git-lfs: a 429 means "wait Retry-After seconds and try again"
        status, answer_headers, raw = request(endpoint + "/objects/batch", body,
                                              {"Accept": LFS_JSON, "Content-Type": LFS_JSON, **(headers or {})})
        if status != 429:
            break
        time.sleep(float(answer_headers.get("Retry-After", "1")))
    return status, json.loads(raw) if raw else None


def upload(endpoint: str, data: bytes) -> str:
    """Upload `data` through the batch API and its upload action (and verify, if offered); returns the oid."""
    oid = oid_of(data)
    status, answer = batch(endpoint, "upload", [(oid, len(data))])
    assert status == 200, answer
    (obj,) = answer["objects"]
    assert "error" not in obj, obj
    actions = obj.get("actions") or {}
    if "upload" in actions:
        up = actions["upload"]
        status, _, body = request(up["href"], data, {**up.get("header", {}), "Content-Type": "application/octet-stream"},
                                  method="PUT")
        assert status in (200, 201), (status, body)
    if "verify" in actions:
        v = actions["verify"]
        status, _, body = request(v["href"], json.dumps({"oid": oid, "size": len(data)}).encode(),
                                  {**v.get("header", {}), "Content-Type": LFS_JSON, "Accept": LFS_JSON})
        assert status == 200, (status, body)
    return oid


def download(endpoint: str, oid: str, size: int) -> tuple[int, bytes | dict]:
    """(200, content) or (error code, error object) from the batch API / download action."""
    status, answer = batch(endpoint, "download", [(oid, size)])
    assert status == 200, answer
    (obj,) = answer["objects"]
    if "error" in obj:
        return obj["error"]["code"], obj["error"]
    down = obj["actions"]["download"]
    status, _, body = request(down["href"], None, down.get("header", {}))
    return status, body
