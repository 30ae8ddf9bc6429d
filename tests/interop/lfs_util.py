"""Helpers for the LFS interop tests: raw HTTP against a server process, reading its store and log."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import urllib.parse
from pathlib import Path

LFS = "application/vnd.git-lfs+json"


def oid_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
            timeout: float = 30) -> tuple[int, dict, bytes]:
    """One HTTP request on a fresh connection; (status, headers, body) whatever the status."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        path = u.path + (f"?{u.query}" if u.query else "")
        headers = headers or {}
        conn.request(method, path, body=body, headers=headers,
                     encode_chunked=headers.get("Transfer-Encoding") == "chunked")
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def batch(base: str, operation: str, objects: list[dict], headers: dict | None = None, **extra):
    body = json.dumps({"operation": operation, "objects": objects, **extra}).encode()
    status, hdrs, raw = request(f"{base}/objects/batch", "POST", body,
                                {"Accept": LFS, "Content-Type": LFS, **(headers or {})})
    return status, hdrs, json.loads(raw) if raw else None


def object_path(root: Path, oid: str) -> Path:
    return root / "lfs" / "objects" / oid[:2] / oid[2:4] / oid


def stored_oids(root: Path) -> set[str]:
    return {p.name for p in (root / "lfs" / "objects").glob("*/*/*")}


def temp_files(root: Path) -> list[Path]:
    tmp = root / "lfs" / "tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def corrupt(path: Path) -> None:
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def count_in_log(server, needle: str, settle: float = 0.3) -> int:
    """Occurrences of `needle` in the server's output, once the access log has caught up."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        n = server.log().count(needle)
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since >= settle:
            break
        time.sleep(0.05)
    return last
